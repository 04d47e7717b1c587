"""The reward scorer: every verifier of a recipe on a batch of completions, as one weighted sum.

:class:`Scorer` takes :class:`RewardSpec` terms (a verifier spec, its weight, its keyword arguments, an
optional route) and returns a :class:`ScoreBatch`: the weighted sum per sample, each reward's raw scores,
per-sample infos and failure counts.

Execution model. With ``num_workers >= 1`` the verifiers run in a small pool of long-lived worker processes
(:mod:`rlvr.scoring.pool`), every call under a deadline. A call that raises, returns something that is not a
finite number (or one beyond +-``MAX_ABS_SCORE``), overruns the deadline, or kills its worker scores
``failure_score`` and records the reason under ``infos[i][reward]["error"]``; the rest of the batch and later
batches are unaffected. Each failure has a kind (:data:`~rlvr.scoring.api.FAILURE_KINDS`: timeout, exception,
exit, bad_value), counted in :meth:`ScoreBatch.metrics`; the first failure of each kind in a scorer's life is
logged as an example (verifier and reason), later ones only at debug level.

:class:`FailureTally` adds the failures of several batches up (a training step, over processes) and decides
when they are too many: a warning above a fraction of the calls, :class:`ScoringError` when a verifier failed
on every call.

``num_workers=0`` calls the verifiers inline in the calling process. That is handy for debugging (breakpoints
and tracebacks work), but there is no timeout and a verifier that exits or crashes takes the caller down.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from rlvr.scoring.api import FAILURE_KINDS, MAX_ABS_SCORE, Outcome, call_verifier
from rlvr.scoring.pool import WorkerPool
from rlvr.scoring.resolve import canonical_spec, resolve_verifier, unique_names

logger = logging.getLogger(__name__)

# Characters of a failure reason shown in a log line (the info keeps up to 500).
_LOGGED_REASON_CHARS = 200


class ScoringError(RuntimeError):
    """Scoring cannot meaningfully go on: a verifier failed on every sample of a training step (a broken
    verifier, not a flaky one). ``rlvr train`` reports it like a recipe error, with exit code 2."""


class VerifierFailure(NamedTuple):
    """One failed verifier call of a :class:`ScoreBatch`."""

    sample: int
    """Index of the sample in the batch."""
    reward: str
    """The reward's name (:attr:`Scorer.names`)."""
    kind: str
    """One of :data:`~rlvr.scoring.api.FAILURE_KINDS`."""
    reason: str
    """What happened (also in ``infos[sample][reward]["error"]``)."""


def _short(reason: str) -> str:
    return reason if len(reason) <= _LOGGED_REASON_CHARS else reason[:_LOGGED_REASON_CHARS] + "..."


@dataclass
class RewardSpec:
    """One reward term of a recipe: a verifier spec, its weight in the sum, and keyword arguments."""

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    route: dict[str, list[Any]] | None = None
    """Score only rows whose column ``key`` holds one of the listed values (e.g. ``{"task": ["code"]}``);
    other rows get no term from this reward. None: every row."""

    def applies_to(self, example: dict) -> bool:
        if self.route is None:
            return True
        return all(example.get(column) in values for column, values in self.route.items())


@dataclass
class ScoreBatch:
    """Scores of one batch.

    ``scores[i]`` is the weighted sum over rewards for sample ``i``; ``per_reward[name][i]`` is each
    reward's raw score (``failure_score`` where it failed, None where the reward's ``route`` excludes the
    row); ``infos[i][name]`` is the info dict that reward
    returned for sample ``i`` (``{"error": reason}`` on failure); ``failed`` lists the failed verifier calls
    (``failures`` counts them).
    """

    scores: list[float]
    per_reward: dict[str, list[float | None]]
    infos: list[dict[str, dict[str, Any]]]
    failed: list[VerifierFailure] = field(default_factory=list)

    @property
    def failures(self) -> int:
        """Number of failed verifier calls."""
        return len(self.failed)

    def failure_counts(self) -> dict[str, int]:
        """Failed calls by kind, every kind of :data:`~rlvr.scoring.api.FAILURE_KINDS` present."""
        counts = dict.fromkeys(FAILURE_KINDS, 0)
        for failure in self.failed:
            counts[failure.kind] += 1
        return counts

    def metrics(self) -> dict[str, float]:
        """``reward/<name>/mean`` for every reward (when the batch is not empty), ``reward/failures`` and
        ``reward/failures/<kind>``."""
        out = {}
        for name, values in self.per_reward.items():
            scored = [v for v in values if v is not None]
            if scored:
                out[f"reward/{name}/mean"] = sum(scored) / len(scored)
        out["reward/failures"] = float(self.failures)
        out.update({f"reward/failures/{kind}": float(n) for kind, n in self.failure_counts().items()})
        return out


MIN_CALLS_TO_STOP = 16
"""A verifier that failed on every call stops the run only when it was called at least this often in the
step (:meth:`FailureTally.check`)."""


@dataclass
class FailureTally:
    """Verifier failures summed over several :class:`ScoreBatch` es (one training step, every process).

    Counts failed calls by kind, and per reward the calls made (rows its route covers) and failed, plus the
    first reason of each reward. :meth:`vector` and :meth:`with_counts` carry the counts through one
    all-reduce (``rlvr.trainer.distributed.global_sums``); reasons stay local until :meth:`add_reasons`.
    """

    names: list[str]
    """The rewards' names, in the scorer's order."""
    specs: dict[str, str] = field(default_factory=dict)
    """Each reward's spec as the recipe wrote it (named in messages when it differs from the name)."""
    kinds: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)
    """Per reward, ``"<kind>: <reason>"`` of its first failure."""

    def __post_init__(self) -> None:
        self.kinds = {kind: self.kinds.get(kind, 0) for kind in FAILURE_KINDS}
        self.calls = {name: self.calls.get(name, 0) for name in self.names}
        self.failed = {name: self.failed.get(name, 0) for name in self.names}

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def add(self, batch: ScoreBatch) -> None:
        """Count the calls and failures of ``batch``."""
        for name, values in batch.per_reward.items():
            self.calls[name] += sum(v is not None for v in values)
        for failure in batch.failed:
            self.kinds[failure.kind] += 1
            self.failed[failure.reward] += 1
            self.first.setdefault(failure.reward, f"{failure.kind}: {failure.reason}")

    def vector(self) -> list[float]:
        """The counts as one flat list: by kind, then calls and failures per reward."""
        counts = [*self.kinds.values(), *self.calls.values(), *self.failed.values()]
        return [float(c) for c in counts]

    def with_counts(self, vector: Sequence[float]) -> FailureTally:
        """A tally of the same rewards holding the counts of ``vector`` (e.g. summed over processes), laid
        out as :meth:`vector` writes them; no reasons (:meth:`add_reasons` brings them)."""
        k, n = len(FAILURE_KINDS), len(self.names)
        if len(vector) != k + 2 * n:
            raise ValueError(f"expected {k + 2 * n} counts, got {len(vector)}")
        counts = [int(round(v)) for v in vector]
        return FailureTally(
            list(self.names),
            dict(self.specs),
            kinds=dict(zip(FAILURE_KINDS, counts[:k], strict=True)),
            calls=dict(zip(self.names, counts[k : k + n], strict=True)),
            failed=dict(zip(self.names, counts[k + n :], strict=True)),
        )

    def add_reasons(self, firsts: Iterable[dict[str, str]]) -> None:
        """Take a first reason for each reward that has none yet from ``firsts`` (e.g. every process's
        :attr:`first`, in process order)."""
        for first in firsts:
            for name, reason in first.items():
                self.first.setdefault(name, reason)

    def metrics(self) -> dict[str, float]:
        """``reward/failures`` (all kinds) and ``reward/failures/<kind>``."""
        out = {"reward/failures": float(self.total)}
        out.update({f"reward/failures/{kind}": float(n) for kind, n in self.kinds.items()})
        return out

    def over(self, fraction: float) -> list[str]:
        """Rewards that failed on more than ``fraction`` of their calls."""
        return [n for n in self.names if self.calls[n] and self.failed[n] > fraction * self.calls[n]]

    def all_failed(self, min_calls: int = 1) -> list[str]:
        """Rewards that were called at least ``min_calls`` times and failed every time."""
        return [n for n in self.names if self.calls[n] >= min_calls and self.failed[n] == self.calls[n]]

    def describe(self, name: str, where: str = "") -> str:
        """``verifier NAME (SPEC) failed on F of C calls[ in WHERE] (first: KIND: REASON)``, for a log line
        or an error."""
        spec = self.specs.get(name)
        label = f"{name} ({spec})" if spec and spec != name else name
        at = f" in {where}" if where else ""
        first = self.first.get(name)
        tail = f" (first: {_short(first)})" if first else ""
        return f"verifier {label} failed on {self.failed[name]} of {self.calls[name]} calls{at}{tail}"

    def check(
        self,
        max_fraction: float,
        stop_when_all_fail: bool = True,
        where: str = "",
        min_calls: int = MIN_CALLS_TO_STOP,
    ) -> list[str]:
        """Warnings for the rewards that failed on more than ``max_fraction`` of their calls; raises
        :class:`ScoringError` naming the first reward that failed on all of at least ``min_calls`` calls
        (``stop_when_all_fail``: a routed verifier that saw one row, or one unlucky timeout, only warns).
        ``where`` (e.g. ``"step 3"``) goes into the messages."""
        if stop_when_all_fail:
            for name in self.all_failed(min_calls):
                raise ScoringError(
                    f"{self.describe(name, where)}: every call failed, so its reward carries no signal. Run "
                    "the verifier by hand on a completion and an example row (docs/verifiers.md, 'Testing "
                    "it'), or set rewards.stop_when_all_fail=false to go on with rewards.failure_score"
                )
        return [
            f"{self.describe(name, where)}; more than rewards.max_failure_frac={max_fraction:g}"
            for name in self.over(max_fraction)
        ]


class Scorer:
    """Scores completions with a weighted sum of verifiers (see the module docstring for the execution model).

    Specs are resolved when the scorer is built, so a bad spec fails fast with
    :class:`~rlvr.scoring.resolve.VerifierSpecError`. Rewards are reported under their short name
    (:func:`~rlvr.scoring.resolve.short_name`); a repeated name gets ``_2``, ``_3``...
    Use as a context manager, or call :meth:`close`, to stop the worker processes.
    """

    def __init__(
        self,
        specs: Sequence[RewardSpec],
        num_workers: int = 2,
        timeout_s: float = 10.0,
        failure_score: float = 0.0,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not specs:
            raise ValueError("Scorer needs at least one RewardSpec")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if not (math.isfinite(failure_score) and abs(failure_score) <= MAX_ABS_SCORE):
            raise ValueError(f"failure_score must be finite, within +-{MAX_ABS_SCORE:g}, got {failure_score}")
        self.specs = list(specs)
        self.timeout_s = float(timeout_s)
        self.failure_score = float(failure_score)
        self.num_workers = num_workers
        canonical = [canonical_spec(s.name.strip(), base_dir) for s in self.specs]
        self._fns = [resolve_verifier(c) for c in canonical]
        self.names = unique_names([s.name for s in self.specs])
        self._weights = [float(s.weight) for s in self.specs]
        self._kwargs = [dict(s.kwargs) for s in self.specs]
        self._lock = threading.Lock()
        self._reported: set[str] = set()  # failure kinds already logged with an example
        self._pool: WorkerPool | None = None
        if num_workers > 0:
            self._pool = WorkerPool(num_workers, list(zip(canonical, self._kwargs, strict=True)), timeout_s)

    def score(self, completions: Sequence[str], examples: Sequence[dict]) -> ScoreBatch:
        """Score ``completions[i]`` against ``examples[i]`` with every reward."""
        if len(completions) != len(examples):
            raise ValueError(f"got {len(completions)} completions but {len(examples)} examples")
        pairs = [
            (i, j)
            for i, ex in enumerate(examples)
            for j, spec in enumerate(self.specs)
            if spec.applies_to(ex)
        ]
        tasks = [(j, completions[i], examples[i]) for i, j in pairs]
        with self._lock:
            if self._pool is not None:
                outcomes = self._pool.run(tasks)
            elif self.num_workers == 0:
                outcomes = [call_verifier(self._fns[j], c, ex, self._kwargs[j]) for j, c, ex in tasks]
            else:
                raise RuntimeError("Scorer is closed")
        return self._assemble(len(completions), pairs, outcomes)

    def _assemble(self, n: int, pairs: list[tuple[int, int]], outcomes: list[Outcome]) -> ScoreBatch:
        per_reward: dict[str, list[float | None]] = {name: [None] * n for name in self.names}
        infos: list[dict[str, dict[str, Any]]] = [{} for _ in range(n)]
        scores = [0.0] * n
        failed: list[VerifierFailure] = []
        for (i, j), (score, info, error, kind) in zip(pairs, outcomes, strict=True):
            name = self.names[j]
            if error is not None or score is None:
                failure = VerifierFailure(i, name, kind or "bad_value", str(error or "no score"))
                failed.append(failure)
                self._report(failure)
                score, info = self.failure_score, {"error": failure.reason}
            per_reward[name][i] = score
            infos[i][name] = dict(info)
            scores[i] += self._weights[j] * score
        return ScoreBatch(scores=scores, per_reward=per_reward, infos=infos, failed=failed)

    def _report(self, failure: VerifierFailure) -> None:
        """Log the first failure of each kind as an example; later ones are counted, and logged at debug."""
        if failure.kind in self._reported:
            logger.debug("verifier %s failed (%s): %s", failure.reward, failure.kind, failure.reason)
            return
        self._reported.add(failure.kind)
        logger.warning(
            "verifier %s failed (%s, scored %g; the first %s failure, later ones are counted in "
            "reward/failures/%s): %s",
            failure.reward,
            failure.kind,
            self.failure_score,
            failure.kind,
            failure.kind,
            _short(failure.reason),
        )

    def failure_tally(self) -> FailureTally:
        """An empty :class:`FailureTally` for this scorer's rewards."""
        return FailureTally(
            list(self.names), {n: s.name for n, s in zip(self.names, self.specs, strict=True)}
        )

    def close(self) -> None:
        """Stop the worker processes; the scorer cannot score afterwards (unless ``num_workers == 0``)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_pool", None) is not None:
                self.close()
        except Exception:  # interpreter shutdown; orphaned workers exit on their own (see pool)
            pass

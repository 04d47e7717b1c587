"""The reward scorer: every verifier of a recipe on a batch of completions, as one weighted sum.

:class:`Scorer` takes :class:`RewardSpec` terms (a verifier spec, its weight, its keyword arguments, an
optional route) and returns a :class:`ScoreBatch`: the weighted sum per sample, each reward's raw scores,
per-sample infos and failure counts.

Execution model. With ``num_workers >= 1`` the verifiers run in a small pool of long-lived worker processes
(:mod:`rlvr.scoring.pool`), every call under a deadline. A call that raises, returns something that is not a
finite number, overruns the deadline, or kills its worker scores ``failure_score`` and records the reason
under ``infos[i][reward]["error"]``; the rest of the batch and later batches are unaffected.

``num_workers=0`` calls the verifiers inline in the calling process. That is handy for debugging (breakpoints
and tracebacks work), but there is no timeout and a verifier that exits or crashes takes the caller down.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlvr.scoring.api import Outcome, call_verifier
from rlvr.scoring.pool import WorkerPool
from rlvr.scoring.resolve import canonical_spec, resolve_verifier, unique_names

logger = logging.getLogger(__name__)


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
    returned for sample ``i`` (``{"error": reason}`` on failure); ``failures`` counts failed verifier calls.
    """

    scores: list[float]
    per_reward: dict[str, list[float | None]]
    infos: list[dict[str, dict[str, Any]]]
    failures: int = 0

    def metrics(self) -> dict[str, float]:
        """``reward/<name>/mean`` for every reward (when the batch is not empty) and ``reward/failures``."""
        out = {}
        for name, values in self.per_reward.items():
            scored = [v for v in values if v is not None]
            if scored:
                out[f"reward/{name}/mean"] = sum(scored) / len(scored)
        out["reward/failures"] = float(self.failures)
        return out


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
        if not math.isfinite(failure_score):
            raise ValueError(f"failure_score must be finite, got {failure_score}")
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
        self._warned: set[str] = set()
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
        failures = 0
        for (i, j), (score, info, error) in zip(pairs, outcomes, strict=True):
            name = self.names[j]
            if error is not None or score is None:
                failures += 1
                score, info = self.failure_score, {"error": error or "no score"}
                self._warn_once(name, info["error"])
            per_reward[name][i] = score
            infos[i][name] = dict(info)
            scores[i] += self._weights[j] * score
        return ScoreBatch(scores=scores, per_reward=per_reward, infos=infos, failures=failures)

    def _warn_once(self, name: str, reason: str) -> None:
        if name in self._warned:
            logger.debug("verifier %s failed: %s", name, reason)
            return
        self._warned.add(name)
        logger.warning("verifier %s failed (scored %g): %s", name, self.failure_score, reason)

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

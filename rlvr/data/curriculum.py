"""Curriculum samplers: prompt selection that follows what the policy can and cannot solve yet.

Each sampler is a :data:`rlvr.data.sampler.SAMPLERS` entry with the common contract of
:class:`rlvr.data.sampler.Sampler` and reads the trainer's global per-prompt statistics
(:class:`rlvr.data.stats.PromptStats`). Recipe keys: ``sampler.name`` and ``sampler.kwargs`` (the keyword
arguments of the class below, checked when the recipe loads). Pass rates are the fraction of a prompt's G
samples that the verifiers score as correct; ``estimate`` picks the moving average (``ema``), the mean of
the last ``sampler.window`` rounds (``window``) or the last round (``last``).

* ``pass_rate_filter``: stop sampling solved / hopeless prompts (Polaris; open-instruct's no-resampling).
* ``learnability``: sample in proportion to p(1 - p) (Learning to Reason at the Frontier of Learnability).
* ``hard_focus``: keep the hardest prompts the policy still sometimes solves (DRIVE).
* ``difficulty_schedule``: easy-to-hard pacing over a difficulty column (competence-based curricula).
* ``alp``: a teacher over buckets (task / difficulty) by absolute learning progress (ALP-GMM).
* ``mixture``: data sources with fixed weights, or adaptive weights by learning progress (UCB bandit).

DAPO's dynamic sampling works on top of any of them: its extra rounds are further draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from rlvr.data.sampler import SAMPLERS, RandomSampler, Sampler, WeightedSampler, entropy
from rlvr.data.stats import Estimate, PromptStats

Fraction = Annotated[float, Field(ge=0, le=1)]
"""A probability or pass rate in [0, 1] (checked when the recipe loads, like every annotation here)."""
Count = Annotated[int, Field(ge=1)]
"""A count or a number of steps, >= 1."""


def _column(dataset: Sequence[dict[str, Any]], field: str, sampler: str) -> list[Any]:
    """Every row's ``field``; a row without it is a ValueError naming the key and the row."""
    values = []
    for i, row in enumerate(dataset):
        value = row.get(field)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(
                f"sampler.kwargs.field: {sampler} groups prompts by the column {field!r}, but prompt {i} "
                f"(source row {row.get('index', i)}) has {value!r} there; expected a number or a string "
                "in every row"
            )
        values.append(value)
    return values


@SAMPLERS.register("pass_rate_filter")
class PassRateFilterSampler(RandomSampler):
    """Epoch-wise shuffling that skips solved and hopeless prompts.

    A prompt seen at least ``min_seen`` times is skipped when its estimated pass rate is ``>= hi`` (solved)
    or ``<= lo`` (hopeless; ``lo: null`` keeps them). With ``cooldown: N`` it comes back N steps after it was
    last sampled; without, it is dropped for the rest of the run (open-instruct's no-resampling rule; Polaris
    drops prompts the policy has solved, An et al. 2025). If every prompt is skipped, all are handed out
    again rather than stop the run (``curriculum/active_prompts`` then shows the whole dataset).
    """

    def __init__(
        self,
        dataset: Sequence[dict[str, Any]],
        stats: PromptStats,
        *,
        seed: int = 0,
        hi: Fraction = 1.0,
        lo: Fraction | None = None,
        min_seen: Count = 1,
        cooldown: Count | None = None,
        estimate: Estimate = "last",
    ) -> None:
        super().__init__(dataset, stats, seed=seed)
        if lo is not None and lo >= hi:
            raise ValueError(f"sampler.kwargs.lo: must be below hi={hi}, got {lo}")
        self.hi, self.lo, self.min_seen, self.cooldown, self.estimate = hi, lo, min_seen, cooldown, estimate

    def active(self, step: int) -> np.ndarray:
        p = self.stats.estimate(self.estimate)
        known = self.stats.times_sampled >= self.min_seen
        with np.errstate(invalid="ignore"):
            out = known & (p >= self.hi)
            if self.lo is not None:
                out |= known & (p <= self.lo)
        if self.cooldown is not None:
            out &= step < self.stats.last_step + self.cooldown
        return ~out


@SAMPLERS.register("learnability")
class LearnabilitySampler(WeightedSampler):
    """Sample prompts in proportion to their learnability p(1 - p).

    p is the estimated pass rate (``prior`` for a prompt not seen yet: 0.5, the most learnable value, is an
    optimistic prior that tries every prompt early). The distribution is mixed with a uniform floor:
    ``P(i) = (1 - floor) * w_i / sum(w) + floor / N``, so that solved and hopeless prompts keep a small chance
    to be re-measured. p(1 - p) is the variance of a prompt's reward, which is what a group-relative
    advantage needs ("Learning to Reason at the Frontier of Learnability", Foster & Foerster, 2025).
    """

    def __init__(
        self,
        dataset: Sequence[dict[str, Any]],
        stats: PromptStats,
        *,
        seed: int = 0,
        prior: Fraction = 0.5,
        floor: Fraction = 0.05,
        estimate: Estimate = "ema",
    ) -> None:
        super().__init__(dataset, stats, seed=seed)
        self.prior, self.floor, self.estimate = prior, floor, estimate

    def weights(self, step: int) -> np.ndarray:
        p = self.stats.estimate(self.estimate)
        p = np.where(np.isnan(p), self.prior, p)
        w = p * (1 - p)
        size = len(w)
        if w.sum() <= 0:
            return np.full(size, 1.0 / size)
        return (1 - self.floor) * w / w.sum() + self.floor / size


@SAMPLERS.register("hard_focus")
class HardFocusSampler(WeightedSampler):
    """Sample uniformly among the hardest prompts the policy still sometimes solves.

    Eligible: prompts whose estimated pass rate p satisfies ``min_pass_rate < p <= max_pass_rate``, plus the
    prompts not seen yet while ``explore_unseen`` (so the first pass measures them). Solved, easy and
    never-solved prompts drop out. DRIVE's second stage trains on exactly this set with many samples per
    prompt (n = 64); pair it with a large ``rollout.num_generations``.
    """

    def __init__(
        self,
        dataset: Sequence[dict[str, Any]],
        stats: PromptStats,
        *,
        seed: int = 0,
        max_pass_rate: Fraction = 0.5,
        min_pass_rate: Fraction = 0.0,
        explore_unseen: bool = True,
        estimate: Estimate = "ema",
    ) -> None:
        super().__init__(dataset, stats, seed=seed)
        if min_pass_rate >= max_pass_rate:
            raise ValueError(
                f"sampler.kwargs.min_pass_rate: must be below max_pass_rate={max_pass_rate}, got "
                f"{min_pass_rate}"
            )
        self.max_pass_rate, self.min_pass_rate = max_pass_rate, min_pass_rate
        self.explore_unseen, self.estimate = explore_unseen, estimate

    def weights(self, step: int) -> np.ndarray:
        p = self.stats.estimate(self.estimate)
        with np.errstate(invalid="ignore"):
            hard = (p > self.min_pass_rate) & (p <= self.max_pass_rate)
        if self.explore_unseen:
            hard |= np.isnan(p)
        return hard.astype(np.float64)


Pacing = Literal["linear", "root", "step"]


def competence(step: int, pace_steps: int, start: float, pacing: Pacing, levels: int) -> float:
    """The fraction of the difficulty-sorted prompts available at ``step`` (Platanios et al. 2019).

    ``linear``: ``start + (1 - start) t / T``; ``root``: ``sqrt(start^2 + (1 - start^2) t / T)``;
    ``step``: the first of ``levels`` difficulty levels at t = 0, one more every ``T / (levels - 1)`` steps,
    all at T, as a fraction of levels (the caller unlocks whole levels; ``start`` is not used).
    ``t / T`` is capped at 1.
    """
    frac = min(1.0, step / pace_steps)
    if pacing == "linear":
        return start + (1 - start) * frac
    if pacing == "root":
        return math.sqrt(start**2 + (1 - start**2) * frac)
    return (1 + math.floor(frac * (levels - 1) + 1e-9)) / levels


@SAMPLERS.register("difficulty_schedule")
class DifficultyScheduleSampler(WeightedSampler):
    """Easy-to-hard pacing over a difficulty column: uniform over the easiest prompts, a growing share.

    Prompts are sorted by ``row[field]`` (numbers ascending, or strings in the order of ``levels``; ties in
    a seeded random order). At step t the first ``ceil(c(t) N)`` are available (``linear`` / ``root``), with
    the competence c(t) of :func:`competence` reaching 1 at ``pace_steps``; ``step`` pacing unlocks whole
    levels instead, the last one at ``pace_steps``
    (curriculum learning's pacing functions: Bengio et al. 2009; Hacohen & Weinshall 2019; Platanios et al.
    2019).
    """

    def __init__(
        self,
        dataset: Sequence[dict[str, Any]],
        stats: PromptStats,
        *,
        seed: int = 0,
        pace_steps: Count,
        field: str = "difficulty",
        pacing: Pacing = "linear",
        start: Annotated[float, Field(gt=0, le=1)] = 0.25,
        levels: list[str | int | float] | None = None,
    ) -> None:
        super().__init__(dataset, stats, seed=seed)
        values = _column(dataset, field, "difficulty_schedule")
        if levels is not None:
            order = {str(v): k for k, v in enumerate(levels)}
            unknown = sorted({str(v) for v in values} - set(order))
            if unknown:
                raise ValueError(
                    f"sampler.kwargs.levels: the column {field!r} holds {unknown[:5]} that levels "
                    f"{levels} does not list"
                )
            rank = np.array([order[str(v)] for v in values])
        elif all(isinstance(v, (int, float)) for v in values):
            rank = np.array(values, dtype=np.float64)
        else:
            raise ValueError(
                f"sampler.kwargs.levels: the column {field!r} holds strings; list them from easiest to "
                "hardest in levels"
            )
        tiebreak = np.random.default_rng([self.seed, 7]).permutation(len(values))
        self.order = np.lexsort((tiebreak, rank))
        self.level_of = np.unique(rank, return_inverse=True)[1]
        self.num_levels = int(self.level_of.max()) + 1
        self.pace_steps, self.pacing, self.start = pace_steps, pacing, start

    def weights(self, step: int) -> np.ndarray:
        c = competence(step, self.pace_steps, self.start, self.pacing, self.num_levels)
        w = np.zeros(len(self.order))
        if self.pacing == "step":
            unlocked = round(c * self.num_levels)
            w[self.level_of < unlocked] = 1.0
        else:
            available = max(1, math.ceil(c * len(self.order) - 1e-9))  # no extra prompt from rounding
            w[self.order[:available]] = 1.0
        return w


class BucketSampler(Sampler):
    """A teacher over buckets of prompts (the values of ``row[field]``): each batch draws how many prompts
    come from each bucket (a multinomial over :meth:`bucket_probabilities`), then that many prompts from the
    bucket, uniformly and without replacement as far as the bucket allows.

    It keeps each bucket's mean pass rate per step it was sampled at (the last ``2 * window`` such steps) for
    the learning progress ``LP_b = |mean of the last window step means - mean of the window before|``,
    unknown (None) until a bucket has ``2 * window`` of them (Portelas et al. 2019).
    """

    def __init__(
        self,
        dataset: Sequence[dict[str, Any]],
        stats: PromptStats,
        *,
        seed: int,
        field: str,
        window: int,
        name: str,
    ) -> None:
        super().__init__(dataset, stats, seed=seed)
        values = [str(v) for v in _column(dataset, field, name)]
        self.buckets = sorted(set(values))
        index = {b: k for k, b in enumerate(self.buckets)}
        self.bucket_of = np.array([index[v] for v in values])
        self.members = [np.flatnonzero(self.bucket_of == k) for k in range(len(self.buckets))]
        self.window = window
        self.history: list[list[list[float]]] = [[] for _ in self.buckets]
        """Per bucket: ``[step, sum of pass rates, prompts]`` of the latest steps it was sampled at."""
        self.measured = [0] * len(self.buckets)
        """Per bucket: the number of steps it was sampled at."""

    def update(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            bucket = int(self.bucket_of[int(r["prompt_id"])])
            history = self.history[bucket]
            if not history or history[-1][0] != r["step"]:
                history.append([int(r["step"]), 0.0, 0])
                self.measured[bucket] += 1
                del history[: -2 * self.window]
            history[-1][1] += float(r["pass_rate"])
            history[-1][2] += 1

    def learning_progress(self) -> list[float | None]:
        out: list[float | None] = []
        for history in self.history:
            if len(history) < 2 * self.window:
                out.append(None)
                continue
            means = [s / n for _, s, n in history]
            out.append(abs(float(np.mean(means[self.window :])) - float(np.mean(means[: self.window]))))
        return out

    def bucket_probabilities(self, step: int) -> np.ndarray:
        raise NotImplementedError

    def draw(self, n: int, step: int) -> list[int]:
        probs = self.bucket_probabilities(step)
        rng = self.rng()
        counts = rng.multinomial(n, probs)
        batch: list[int] = []
        for members, count in zip(self.members, counts, strict=True):
            if count:
                batch.extend(members[uniform_draw(rng, len(members), int(count))].tolist())
        batch = [batch[i] for i in rng.permutation(len(batch))]  # mixed, so every process gets all buckets
        sizes = np.array([len(m) for m in self.members], dtype=np.float64)
        per_prompt = np.repeat(probs / sizes, sizes.astype(int))  # uniform within a bucket
        self.last_metrics = {
            "active_prompts": float(sizes[probs > 0].sum()),
            "entropy": entropy(per_prompt),
            **{f"weight/{b}": float(p) for b, p in zip(self.buckets, probs, strict=True)},
        }
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "buckets": self.buckets,
            "history": [[list(entry) for entry in h] for h in self.history],
            "measured": list(self.measured),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state["buckets"] != self.buckets:
            raise ValueError(f"sampler state has buckets {state['buckets']}, the data has {self.buckets}")
        self.history = [[[int(s), float(t), int(n)] for s, t, n in h] for h in state["history"]]
        self.measured = [int(m) for m in state["measured"]]


def uniform_draw(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """``n`` of ``range(size)`` uniformly: without replacement while they last, then again."""
    picks = [rng.permutation(size) for _ in range(-(-n // size))]
    return np.concatenate(picks)[:n]


@SAMPLERS.register("alp")
class ALPSampler(BucketSampler):
    """Absolute-learning-progress teacher over buckets of prompts (tasks, difficulty levels).

    Bucket b is drawn with probability ``(1 - explore) * LP_b / sum(LP) + explore / B``
    (:class:`BucketSampler` defines LP). A bucket whose LP is still unknown counts as the largest known LP
    (1 when none is known), so every bucket is measured early; all LP zero is uniform. This is ALP-GMM's
    learning-progress signal with an epsilon-greedy bandit over discrete buckets instead of a Gaussian
    mixture over continuous task parameters (Portelas et al., "Teacher algorithms for curriculum learning of
    Deep RL in continuously parameterized environments", CoRL 2019).
    """

    def __init__(
        self,
        dataset: Sequence[dict[str, Any]],
        stats: PromptStats,
        *,
        seed: int = 0,
        field: str = "difficulty",
        window: Count = 2,
        explore: Fraction = 0.2,
    ) -> None:
        super().__init__(dataset, stats, seed=seed, field=field, window=window, name="alp")
        self.explore = explore

    def bucket_probabilities(self, step: int) -> np.ndarray:
        lp = self.learning_progress()
        known = [v for v in lp if v is not None]
        fill = max(known) if known else 1.0
        score = np.array([fill if v is None else v for v in lp])
        size = len(score)
        greedy = score / score.sum() if score.sum() > 0 else np.full(size, 1.0 / size)
        return (1 - self.explore) * greedy + self.explore / size


@SAMPLERS.register("mixture")
class MixtureSampler(BucketSampler):
    """Several data sources (the values of ``row[field]``, by default each row's ``data_source``), mixed.

    Fixed (``adaptive: false``): source b is drawn with probability ``weights[b] / sum(weights)``; every
    source must have a weight. Adaptive: a UCB-style bandit over sources,
    ``score_b = LP_b + c * sqrt(log(1 + T) / (1 + n_b))`` (LP as in :class:`BucketSampler`, 0 while unknown;
    n_b the steps source b was measured at, T their sum), and
    ``P(b) = (1 - floor) * score_b / sum(score) + floor * prior_b``, with ``prior`` the normalised
    ``weights`` (uniform without). To send each source to its own verifier, give the verifiers a ``route``
    on the same column (docs/curriculum.md).
    """

    def __init__(
        self,
        dataset: Sequence[dict[str, Any]],
        stats: PromptStats,
        *,
        seed: int = 0,
        weights: dict[str, Annotated[float, Field(ge=0)]] | None = None,
        adaptive: bool = False,
        field: str = "data_source",
        window: Count = 2,
        ucb_c: Annotated[float, Field(ge=0)] = 0.5,
        floor: Fraction = 0.1,
    ) -> None:
        super().__init__(dataset, stats, seed=seed, field=field, window=window, name="mixture")
        if weights is None and not adaptive:
            raise ValueError("sampler.kwargs.weights: required unless adaptive: true")
        if weights is not None:
            unknown = sorted(set(weights) - set(self.buckets))
            missing = sorted(set(self.buckets) - set(weights))
            if unknown or (missing and not adaptive):
                raise ValueError(
                    f"sampler.kwargs.weights: the data's {field!r} values are {self.buckets}; "
                    + (f"unknown: {unknown}" if unknown else f"no weight for: {missing}")
                )
            if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError("sampler.kwargs.weights: expected non-negative weights, not all zero")
        raw = np.array([(weights or {}).get(b, 0.0 if weights else 1.0) for b in self.buckets])
        self.prior = raw / raw.sum()
        self.adaptive, self.ucb_c, self.floor = adaptive, ucb_c, floor

    def bucket_probabilities(self, step: int) -> np.ndarray:
        if not self.adaptive:
            return self.prior
        lp = np.array([v or 0.0 for v in self.learning_progress()])
        measured = np.array(self.measured, dtype=np.float64)
        score = lp + self.ucb_c * np.sqrt(np.log1p(measured.sum()) / (1 + measured))
        greedy = score / score.sum() if score.sum() > 0 else self.prior
        return (1 - self.floor) * greedy + self.floor * self.prior

"""Evaluation statistics: pass@k, maj@k, avg@n and bootstrap confidence intervals.

Pure functions over per-sample records; nothing here generates, verifies or reads files. The inputs are,
per problem, the correctness of each of its ``n`` samples (``correct[p][i]``, bool or 0/1) and, for maj@k,
the *normalised* extracted answer of each sample (``answers[p][i]``, ``None`` when nothing was extracted).
Problems may have different ``n``.

Metrics (every one is first a per-problem score in [0, 1]; the benchmark value is the mean over problems):

* **pass@k**: the unbiased estimator of Chen et al. 2021 (Codex, arXiv 2107.03374) from ``n >= k``
  samples of which ``c`` are correct, ``1 - C(n - c, k) / C(n, k)``: the probability that a uniformly
  random ``k``-subset of the ``n`` samples contains a correct one. Computed in the numerically stable
  product form ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``. pass@1 equals the per-problem accuracy.
* **maj@k**: majority vote over ``k`` extracted answers; the problem counts as solved if the winning
  answer is correct. Rules (chosen so that the result never depends on dict ordering or on chance):

  - ``None`` (no extracted answer) casts no vote, so any extracted answer beats any number of ``None``;
    if all ``k`` samples are ``None`` the vote is incorrect (score 0).
  - Ties between answers with equally many votes go to the answer that appears earliest among the
    voting samples (in sample order).
  - The winning answer's correctness is the fraction of its voting samples that are correct. Answers
    are normalised strings, so equal answers should be judged alike and this is 0 or 1; if the verifier
    disagrees with itself (say one check timed out) the score is the chance that a representative drawn
    from the winning answer's samples is correct, rather than an error at the end of a long run.
  - Which ``k`` samples vote: by default the **first k** (deterministic and what most papers report;
    with ``k = n`` it is the vote over all samples). With ``samples=S`` it is instead the average over
    ``S`` uniformly random ``k``-subsets (seeded, reproducible), a Monte-Carlo estimate of the expected
    maj@k over subsets, which is less noisy when ``n`` is much larger than ``k``.
* **avg@n**: per-problem mean accuracy over all of its samples, averaged over problems (so each problem
  weighs the same whatever its ``n``). Equal to the mean of pass@1.

Uncertainty: :func:`bootstrap_ci` is a percentile bootstrap over *problems* (problems are resampled with
replacement; samples within a problem stay together), vectorised with numpy and deterministic given the
seed. :func:`paired_bootstrap_diff` compares two evaluations of the same problems (``rlvr eval
--compare``) by resampling the same problem indices for both, i.e. bootstrapping per-problem differences.

``k > n`` is never silently computed: the per-problem functions raise :class:`ValueError`, and
:func:`summarize` skips such a ``k`` and reports it under ``"skipped"``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BootstrapDiff",
    "accuracy_per_problem",
    "avg_at_n",
    "bootstrap_ci",
    "maj_at_k",
    "maj_at_k_per_problem",
    "metric_per_problem",
    "paired_bootstrap_diff",
    "pass_at_k",
    "pass_at_k_per_problem",
    "summarize",
]

# Upper bound on the number of elements in one temporary array (bootstrap index matrices, maj@k one-hot
# tensors): big evaluations are processed in chunks so memory stays bounded (~32 MiB of int64).
_CHUNK_ELEMENTS = 4_000_000


# ----------------------------------------------------------------------------------------------- helpers
def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool ({value!r})")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} ({value!r})") from None


def _check_k(k: Any) -> int:
    k = _as_int(k, "k")
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    return k


def _as_correct_row(row: Any, where: str) -> np.ndarray:
    """One problem's per-sample correctness as a 1-D bool array (bools, or numbers that are exactly 0/1)."""
    arr = np.asarray(row)
    if arr.ndim != 1:
        raise ValueError(f"{where}: correctness must be a 1-D sequence of samples, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.size == 0:
        return arr.astype(bool)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{where}: correctness must be bool or 0/1, got dtype {arr.dtype}")
    if not np.all((arr == 0) | (arr == 1)):
        bad = arr[(arr != 0) & (arr != 1)][0].item()
        raise ValueError(
            f"{where}: correctness must be bool or 0/1, got {bad!r}; threshold graded rewards "
            "into correct/incorrect before computing pass@k / maj@k / avg@n"
        )
    return arr == 1


def _as_correct_rows(correct: Any) -> list[np.ndarray]:
    """``correct`` as a list of per-problem bool arrays (accepts a list of lists or a 2-D array)."""
    if isinstance(correct, np.ndarray):
        if correct.ndim != 2:
            raise ValueError(f"correct must be 2-D [problems, samples], got shape {correct.shape}")
        rows = list(correct)
    else:
        rows = list(correct)
    if not rows:
        raise ValueError("correct is empty: need at least one problem")
    return [_as_correct_row(row, f"problem {p}") for p, row in enumerate(rows)]


def _answer_codes(answers: Sequence[str | None]) -> tuple[np.ndarray, int]:
    """Integer code per sample (first-appearance order), -1 for ``None``; and the number of answers."""
    ids: dict[str, int] = {}
    codes = np.empty(len(answers), dtype=np.int64)
    for i, a in enumerate(answers):
        if a is None:
            codes[i] = -1
        else:
            codes[i] = ids.setdefault(a, len(ids))
    return codes, len(ids)


def _vote(codes: np.ndarray, correct: np.ndarray, num_answers: int) -> np.ndarray:
    """Majority-vote score of each row of ``codes`` ([R, k], -1 = no answer) with ``correct`` ([R, k]).

    Winner: most votes, ties to the answer whose first vote comes earliest in the row; score: fraction of
    the winner's voting samples that are correct; rows with no answer at all score 0.
    """
    rows, k = codes.shape
    out = np.zeros(rows, dtype=np.float64)
    if num_answers == 0 or rows == 0:
        return out
    step = max(1, _CHUNK_ELEMENTS // (k * num_answers))
    labels = np.arange(num_answers)
    for start in range(0, rows, step):
        c = codes[start : start + step]
        onehot = c[:, :, None] == labels[None, None, :]  # [r, k, U]
        counts = onehot.sum(axis=1)  # [r, U]
        first = np.where(counts > 0, onehot.argmax(axis=1), k)  # [r, U] position of the first vote
        # More votes dominate; among equal counts an earlier first vote wins. Absent answers score 0,
        # present ones at least k + 2, so argmax never picks an absent answer when any is present.
        key = counts * (k + 1) + (k - first)
        winner = key.argmax(axis=1)  # [r]
        voted = c == winner[:, None]  # [r, k]
        n_win = voted.sum(axis=1)
        score = (voted & correct[start : start + step]).sum(axis=1) / np.maximum(n_win, 1)
        out[start : start + step] = np.where(counts.max(axis=1) > 0, score, 0.0)
    return out


# ----------------------------------------------------------------------------------------------- pass@k
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n - c, k) / C(n, k)``.

    Chen et al. 2021 (arXiv 2107.03374), product form ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never
    forms the huge binomials. Raises ``ValueError`` if ``k > n`` (the estimator needs at least ``k``
    samples; reporting something else under the name pass@k would be wrong) or ``c`` is outside [0, n].
    """
    n, c, k = _as_int(n, "n"), _as_int(c, "c"), _check_k(k)
    if k > n:
        raise ValueError(
            f"pass@{k} needs at least k={k} samples per problem, but this problem has n={n}; "
            f"sample more (n >= {k}) or ask for a smaller k"
        )
    if not 0 <= c <= n:
        raise ValueError(f"number correct c={c} must be between 0 and n={n}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_per_problem(correct: Sequence[Sequence[bool]] | np.ndarray, k: int) -> np.ndarray:
    """pass@k of each problem, shape ``[problems]``; ``correct[p]`` holds problem ``p``'s samples.

    Problems may have different numbers of samples; any problem with fewer than ``k`` raises ``ValueError``.
    """
    k = _check_k(k)
    rows = _as_correct_rows(correct)
    out = np.empty(len(rows), dtype=np.float64)
    for p, row in enumerate(rows):
        try:
            out[p] = pass_at_k(row.size, int(row.sum()), k)
        except ValueError as e:
            raise ValueError(f"problem {p}: {e}") from None
    return out


# ------------------------------------------------------------------------------------------------ maj@k
def maj_at_k(
    answers: Sequence[str | None],
    correct: Sequence[bool] | np.ndarray,
    k: int,
    *,
    samples: int | None = None,
    seed: int | Sequence[int] = 0,
) -> float:
    """maj@k of one problem: majority vote over ``k`` of its extracted answers (rules in the module doc).

    ``answers[i]`` is sample ``i``'s normalised answer (``None`` = none extracted) and ``correct[i]``
    whether it is correct. ``samples=None`` votes with the first ``k`` samples; ``samples=S`` returns the
    average over ``S`` random ``k``-subsets drawn with ``numpy.random.default_rng(seed)`` (within a subset
    the samples keep their original order, which is what the tie rule looks at). ``k > n`` raises.
    """
    k = _check_k(k)
    corr = _as_correct_row(correct, "maj@k")
    n = len(answers)
    if corr.size != n:
        raise ValueError(f"answers has {n} samples but correct has {corr.size}")
    if k > n:
        raise ValueError(
            f"maj@{k} needs at least k={k} samples per problem, but this problem has n={n}; "
            f"sample more (n >= {k}) or ask for a smaller k"
        )
    codes, num_answers = _answer_codes(answers)
    if samples is None:
        return float(_vote(codes[None, :k], corr[None, :k], num_answers)[0])
    samples = _as_int(samples, "samples")
    if samples < 1:
        raise ValueError(f"samples must be >= 1 (or None for the first k), got {samples}")
    rng = np.random.default_rng(seed)
    # A uniformly random k-subset per row: the k smallest of n uniform keys; sorted to keep sample order.
    subsets = np.sort(np.argsort(rng.random((samples, n)), axis=1)[:, :k], axis=1)
    return float(_vote(codes[subsets], corr[subsets], num_answers).mean())


def maj_at_k_per_problem(
    answers: Sequence[Sequence[str | None]],
    correct: Sequence[Sequence[bool]] | np.ndarray,
    k: int,
    *,
    samples: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """maj@k of each problem, shape ``[problems]`` (see :func:`maj_at_k`).

    With ``samples`` set, problem ``p`` draws its subsets from ``default_rng([seed, p])``, so its score
    does not depend on the other problems.
    """
    rows = _as_correct_rows(correct)
    answers = list(answers)
    if len(answers) != len(rows):
        raise ValueError(f"answers has {len(answers)} problems but correct has {len(rows)}")
    out = np.empty(len(rows), dtype=np.float64)
    for p, (ans, row) in enumerate(zip(answers, rows, strict=True)):
        try:
            out[p] = maj_at_k(
                ans, row, k, samples=samples, seed=seed if samples is None else [_as_int(seed, "seed"), p]
            )
        except ValueError as e:
            raise ValueError(f"problem {p}: {e}") from None
    return out


# ------------------------------------------------------------------------------------------------ avg@n
def accuracy_per_problem(correct: Sequence[Sequence[bool]] | np.ndarray) -> np.ndarray:
    """Mean correctness of each problem's samples, shape ``[problems]`` (raises on a problem with none)."""
    rows = _as_correct_rows(correct)
    for p, row in enumerate(rows):
        if row.size == 0:
            raise ValueError(f"problem {p} has no samples")
    return np.array([row.mean() for row in rows], dtype=np.float64)


def avg_at_n(correct: Sequence[Sequence[bool]] | np.ndarray) -> float:
    """avg@n: mean over problems of the per-problem accuracy (each problem weighs the same)."""
    return float(accuracy_per_problem(correct).mean())


# -------------------------------------------------------------------------------------------- bootstrap
def _check_scores(scores: Any, name: str) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per problem), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: need at least one problem")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite scores")
    return arr


def _check_bootstrap_args(confidence: float, resamples: int) -> int:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    resamples = _as_int(resamples, "resamples")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    return resamples


def _bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` with-replacement resamples of ``values``, in chunks of bounded memory."""
    rng = np.random.default_rng(seed)
    size = values.size
    step = max(1, _CHUNK_ELEMENTS // size)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, step):
        rows = min(step, resamples - start)
        idx = rng.integers(0, size, size=(rows, size))
        means[start : start + rows] = values[idx].mean(axis=1)
    return means


def _percentiles(means: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def bootstrap_ci(
    per_problem_scores: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval ``(low, high)`` for the mean of per-problem scores.

    Problems are resampled with replacement ``resamples`` times (``numpy.random.default_rng(seed)``); the
    interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled means.
    It reflects the finite benchmark (which problems were drawn), not the sampling noise within a problem
    beyond what the per-problem scores carry. The same seed resamples the same problem indices for every
    metric of a benchmark, so intervals of different metrics are computed on common resamples.
    """
    scores = _check_scores(per_problem_scores, "per_problem_scores")
    resamples = _check_bootstrap_args(confidence, resamples)
    return _percentiles(_bootstrap_means(scores, resamples, seed), confidence)


class BootstrapDiff(NamedTuple):
    """Result of :func:`paired_bootstrap_diff`: mean of ``a - b``, its CI, and whether 0 is outside it."""

    mean_diff: float
    ci_low: float
    ci_high: float
    significant: bool


def paired_bootstrap_diff(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> BootstrapDiff:
    """Compare two evaluations of the *same* problems (same order): mean ``a - b`` with a paired bootstrap CI.

    Each resample draws one set of problem indices and uses it for both ``a`` and ``b`` (equivalently,
    bootstraps the per-problem differences), which removes the between-problem variance that an unpaired
    comparison would carry. ``significant`` is True when 0 lies outside the interval.
    """
    a_arr = _check_scores(a, "a")
    b_arr = _check_scores(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(
            f"paired comparison needs the same problems: a has {a_arr.size} scores, b has {b_arr.size}"
        )
    resamples = _check_bootstrap_args(confidence, resamples)
    diff = a_arr - b_arr
    low, high = _percentiles(_bootstrap_means(diff, resamples, seed), confidence)
    return BootstrapDiff(float(diff.mean()), low, high, bool(low > 0.0 or high < 0.0))


class MeanOverRuns(NamedTuple):
    """Result of :func:`mean_over_runs`: the mean difference, its Student t interval, the runs' spread."""

    mean_diff: float
    ci_low: float
    ci_high: float
    sd: float
    runs: int
    significant: bool


def mean_over_runs(diffs: Sequence[float] | np.ndarray, *, confidence: float = 0.95) -> MeanOverRuns:
    """Mean of per-run differences (one ``B - A`` per pair of training runs, e.g. per seed) with a
    Student t interval over the runs: ``mean +/- t_{(1 + confidence) / 2, r - 1} * sd / sqrt(r)``.

    A paired bootstrap over problems (:func:`paired_bootstrap_diff`) only covers which problems the
    benchmark drew; two training runs of one method already differ by more than that. Each run's
    difference carries both noises, so the spread of the differences over runs, and this interval,
    cover the training runs' noise too. Needs at least two runs; with few runs the interval is wide
    (t has ``r - 1`` degrees of freedom), as it should be.
    """
    from scipy import stats

    arr = _check_scores(diffs, "diffs")
    if arr.size < 2:
        raise ValueError(f"a mean over runs needs at least 2 runs, got {arr.size}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean, sd = float(arr.mean()), float(arr.std(ddof=1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, arr.size - 1)) * sd / np.sqrt(arr.size)
    low, high = float(mean - half), float(mean + half)
    return MeanOverRuns(mean, low, high, sd, int(arr.size), bool(low > 0.0 or high < 0.0))


# ------------------------------------------------------------------------------------------------ summary
def _parse_metric(name: str) -> tuple[str, int | None]:
    if name == "avg@n":
        return "avg", None
    kind, sep, k = name.partition("@")
    if sep and kind in ("pass", "maj") and k.isdigit():
        return kind, int(k)
    raise ValueError(f"unknown metric {name!r}: expected 'pass@K', 'maj@K' or 'avg@n'")


def metric_per_problem(
    name: str,
    correct: Sequence[Sequence[bool]] | np.ndarray,
    answers: Sequence[Sequence[str | None]] | None = None,
    *,
    maj_samples: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Per-problem scores of the metric named ``'pass@K'``, ``'maj@K'`` or ``'avg@n'``.

    The scores feed :func:`bootstrap_ci` and :func:`paired_bootstrap_diff` (e.g. ``rlvr eval --compare``
    recomputes one metric for two runs and compares them problem by problem).
    """
    kind, k = _parse_metric(name)
    if kind == "avg":
        return accuracy_per_problem(correct)
    if kind == "pass":
        return pass_at_k_per_problem(correct, k)
    if answers is None:
        raise ValueError(f"{name} needs the extracted answers of every sample (answers=None)")
    return maj_at_k_per_problem(answers, correct, k, samples=maj_samples, seed=seed)


def summarize(
    correct: Sequence[Sequence[bool]] | np.ndarray,
    answers: Sequence[Sequence[str | None]] | None = None,
    ks: Sequence[int] = (1,),
    *,
    maj_samples: int | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """All metrics of one evaluation, each with a bootstrap CI over problems.

    Returns::

        {
          "problems": P, "n": smallest samples per problem, "n_max": largest,
          "avg@n":  {"value", "ci_low", "ci_high"},
          "pass@K": {"value", "ci_low", "ci_high"},    # for each K in ks with K <= n
          "maj@K":  {"value", "ci_low", "ci_high"},    # same, only when answers are given
          "skipped": {"pass@K": "reason", ...},        # every K > n, never computed on fewer samples
          "confidence": confidence, "resamples": resamples,
        }

    ``value`` is the mean of the per-problem scores. A ``k`` larger than the smallest ``n`` is skipped and
    reported rather than computed on the problems that happen to have enough samples. All intervals use
    the same ``seed``, i.e. the same resampled problem sets.
    """
    rows = _as_correct_rows(correct)
    ks = list(dict.fromkeys(_check_k(k) for k in ks))  # validated, de-duplicated, order kept
    resamples = _check_bootstrap_args(confidence, resamples)
    if answers is not None and len(answers) != len(rows):
        raise ValueError(f"answers has {len(answers)} problems but correct has {len(rows)}")
    sizes = [row.size for row in rows]
    n_min, n_max = min(sizes), max(sizes)
    if n_min == 0:
        raise ValueError(f"problem {sizes.index(0)} has no samples")

    def entry(scores: np.ndarray) -> dict[str, float]:
        low, high = bootstrap_ci(scores, confidence=confidence, resamples=resamples, seed=seed)
        return {"value": float(scores.mean()), "ci_low": low, "ci_high": high}

    out: dict[str, Any] = {"problems": len(rows), "n": n_min, "n_max": n_max}
    out["avg@n"] = entry(accuracy_per_problem(rows))
    skipped: dict[str, str] = {}
    kinds = ["pass"] + (["maj"] if answers is not None else [])
    for kind in kinds:
        for k in ks:
            name = f"{kind}@{k}"
            if k > n_min:
                short = sum(size < k for size in sizes)
                skipped[name] = (
                    f"k={k} > n={n_min} (smallest samples per problem; {short} of {len(rows)} problems "
                    f"have fewer than {k})"
                )
                continue
            scores = metric_per_problem(name, rows, answers, maj_samples=maj_samples, seed=seed)
            out[name] = entry(scores)
    out["skipped"] = skipped
    out["confidence"] = confidence
    out["resamples"] = resamples
    return out

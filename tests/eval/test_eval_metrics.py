"""Tests for rlvr.eval.metrics (pass@k, maj@k, avg@n, bootstrap CIs, summarize)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from rlvr.eval import metrics
from rlvr.eval.metrics import (
    BootstrapDiff,
    accuracy_per_problem,
    avg_at_n,
    bootstrap_ci,
    maj_at_k,
    maj_at_k_per_problem,
    mean_over_runs,
    metric_per_problem,
    paired_bootstrap_diff,
    pass_at_k,
    pass_at_k_per_problem,
    summarize,
)

T, F = True, False


# --------------------------------------------------------------------------------------- references
def _pass_brute_force(correct: list[bool], k: int) -> float:
    """Average over every k-subset of the samples of 'the subset contains a correct sample'."""
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def _maj_reference(answers: list[str | None], correct: list[bool]) -> float:
    """Plain-Python vote with the documented rules, over all the given samples in order."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    best = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == best)  # earliest among the tied
    mine = [c for a, c in zip(answers, correct, strict=True) if a == winner]
    return sum(mine) / len(mine)


def _maj_subset_expectation(answers: list[str | None], correct: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(range(len(answers)), k))
    return sum(_maj_reference([answers[i] for i in s], [correct[i] for i in s]) for s in subsets) / len(
        subsets
    )


# ------------------------------------------------------------------------------------------- pass@k
def test_pass_at_k_by_hand() -> None:
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    # product form: 1 - (1 - 2/4)(1 - 2/5) = 1 - 0.5 * 0.6 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)
    # n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252 = 11/12
    assert pass_at_k(10, 3, 5) == pytest.approx(11 / 12, abs=1e-12)
    # k=1 is the plain accuracy c/n: 3/8
    assert pass_at_k(8, 3, 1) == pytest.approx(0.375, abs=1e-12)


def test_pass_at_k_edge_cases() -> None:
    # n = k: one subset, the full set -> 1 iff any sample is correct
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(4, 0, 4) == 0.0
    # all correct -> 1 for every k; none correct -> 0 for every k
    assert all(pass_at_k(10, 10, k) == 1.0 for k in range(1, 11))
    assert all(pass_at_k(10, 0, k) == 0.0 for k in range(1, 11))
    # n - c < k: every k-subset must contain a correct one (n=6, c=3, k=4: only 3 wrong samples)
    assert pass_at_k(6, 3, 4) == 1.0


def test_pass_at_k_matches_brute_force_over_subsets() -> None:
    for n in range(1, 7):
        for c in range(n + 1):
            correct = [T] * c + [F] * (n - c)
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_pass_brute_force(correct, k), abs=1e-12)


def test_pass_at_k_large_n_matches_exact_binomials() -> None:
    # the product form avoids C(500, 100) ~ 1e107 but must agree with the exact ratio
    n, c, k = 500, 100, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001, abs=1e-15)


def test_pass_at_k_errors() -> None:
    with pytest.raises(ValueError, match=r"pass@5 needs at least k=5 samples.*n=4"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c=5 must be between 0 and n=4"):
        pass_at_k(4, 5, 2)
    with pytest.raises(ValueError, match="c=-1"):
        pass_at_k(4, -1, 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        pass_at_k(4, 1, 0)
    with pytest.raises(TypeError, match="k must be an integer"):
        pass_at_k(4, 1, 2.0)  # type: ignore[arg-type]
    assert pass_at_k(np.int64(5), np.int64(2), np.int64(2)) == pytest.approx(0.7)


def test_pass_at_k_per_problem_ragged_and_array() -> None:
    # p0: n=3, c=1, k=2: 1 - C(2,2)/C(3,2) = 1 - 1/3 = 2/3; p1: all correct -> 1; p2: none -> 0
    got = pass_at_k_per_problem([[T, F, F], [T, T], [F, F, F, F]], 2)
    np.testing.assert_allclose(got, [2 / 3, 1.0, 0.0], atol=1e-12)
    # a 2-D array of 0/1 works the same; n=4, c=2, k=2: 1 - C(2,2)/C(4,2) = 1 - 1/6 = 5/6
    arr = np.array([[1, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_allclose(pass_at_k_per_problem(arr, 2), [5 / 6, 0.5], atol=1e-12)


def test_pass_at_k_per_problem_errors() -> None:
    with pytest.raises(ValueError, match=r"problem 1: pass@3 needs at least k=3"):
        pass_at_k_per_problem([[T, F, F], [T, T]], 3)
    with pytest.raises(ValueError, match="must be bool or 0/1, got 0.5"):
        pass_at_k_per_problem([[1.0, 0.5]], 1)
    with pytest.raises(ValueError, match="correct is empty"):
        pass_at_k_per_problem([], 1)


# -------------------------------------------------------------------------------------------- maj@k
def test_maj_at_k_first_k_by_hand() -> None:
    answers = ["5", "4", "4", "5"]
    correct = [F, T, T, F]
    # k=1: only "5" votes -> wrong
    assert maj_at_k(answers, correct, 1) == 0.0
    # k=2: "5" 1, "4" 1 -> tie, "5" appears first -> wrong
    assert maj_at_k(answers, correct, 2) == 0.0
    # k=3: "4" 2 vs "5" 1 -> "4" -> right
    assert maj_at_k(answers, correct, 3) == 1.0
    # k=4 = n: 2-2 tie, "5" appears first -> wrong
    assert maj_at_k(answers, correct, 4) == 0.0


def test_maj_at_k_none_votes() -> None:
    # None casts no vote: one "7" beats two None
    assert maj_at_k([None, None, "7"], [F, F, T], 3) == 1.0
    # all None among the voters -> incorrect
    assert maj_at_k([None, None, "7"], [F, F, T], 2) == 0.0
    assert maj_at_k([None, None], [F, F], 2) == 0.0
    # None does not break a tie either: "a" 1, "b" 1 -> "a" (earliest extracted answer), although None
    # comes first and would be the most frequent "answer"
    assert maj_at_k([None, None, "a", "b"], [F, F, T, F], 4) == 1.0


def test_maj_at_k_inconsistent_correctness_is_a_fraction() -> None:
    # "x" wins 2-1; its two samples were judged [T, F] -> 1/2
    assert maj_at_k(["x", "x", "y"], [T, F, F], 3) == 0.5


def test_maj_at_k_matches_reference_on_random_problems() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 9))
        answers = [None if v == 0 else f"a{v}" for v in rng.integers(0, 4, size=n)]
        correct = [a == "a1" for a in answers]
        for k in range(1, n + 1):
            assert maj_at_k(answers, correct, k) == _maj_reference(answers[:k], correct[:k])


def test_maj_at_k_random_subsets() -> None:
    answers, correct = ["a", "b", "b"], [T, F, F]
    # k=2 subsets: {0,1}: a/b tie -> a (first) -> 1; {0,2}: tie -> a -> 1; {1,2}: b -> 0. Expectation 2/3.
    assert _maj_subset_expectation(answers, correct, 2) == pytest.approx(2 / 3)
    est = maj_at_k(answers, correct, 2, samples=4000, seed=0)
    assert est == pytest.approx(2 / 3, abs=0.04)  # std ~ sqrt(2/9 / 4000) = 0.0075
    assert maj_at_k(answers, correct, 2, samples=4000, seed=0) == est  # deterministic
    assert maj_at_k(answers, correct, 2) == 1.0  # first k: {0,1}
    # k = n: every subset is the full set, so the average is the first-k vote
    assert maj_at_k(answers, correct, 3, samples=50, seed=1) == maj_at_k(answers, correct, 3) == 0.0


def test_maj_at_k_random_subsets_match_expectation() -> None:
    answers = ["1", None, "2", "1", "3", "2", "2", None]
    correct = [a == "2" for a in answers]
    for k in (2, 3, 5):
        exact = _maj_subset_expectation(answers, correct, k)
        assert maj_at_k(answers, correct, k, samples=3000, seed=7) == pytest.approx(exact, abs=0.04)


def test_maj_at_k_errors() -> None:
    with pytest.raises(ValueError, match=r"maj@3 needs at least k=3 samples.*n=2"):
        maj_at_k(["a", "b"], [T, F], 3)
    with pytest.raises(ValueError, match="answers has 2 samples but correct has 3"):
        maj_at_k(["a", "b"], [T, F, F], 1)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        maj_at_k(["a", "b"], [T, F], 1, samples=0)


def test_maj_at_k_per_problem() -> None:
    answers = [["5", "4", "4"], [None, "1"], ["x", "x"]]
    correct = [[F, T, T], [F, F], [T, T]]
    # k=2: ["5","4"] tie -> "5" -> 0; [None,"1"] -> "1" -> 0; ["x","x"] -> 1
    np.testing.assert_array_equal(maj_at_k_per_problem(answers, correct, 2), [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"problem 1: maj@3"):
        maj_at_k_per_problem(answers, correct, 3)
    # with subsets, problem p's draws come from (seed, p): its score does not depend on the others
    a = maj_at_k_per_problem(answers, correct, 1, samples=100, seed=5)
    b = maj_at_k_per_problem(answers[:1], correct[:1], 1, samples=100, seed=5)
    assert a[0] == b[0]


# -------------------------------------------------------------------------------------------- avg@n
def test_avg_at_n_weighs_problems_equally() -> None:
    # per problem: 1/2 and 3/4 -> mean 0.625 (pooled over samples would be 4/6 = 0.667)
    correct = [[T, F], [T, T, T, F]]
    np.testing.assert_allclose(accuracy_per_problem(correct), [0.5, 0.75])
    assert avg_at_n(correct) == pytest.approx(0.625)
    # avg@n equals mean pass@1
    assert avg_at_n(correct) == pytest.approx(pass_at_k_per_problem(correct, 1).mean())
    with pytest.raises(ValueError, match="problem 1 has no samples"):
        avg_at_n([[T], []])


# ---------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_constant_is_zero_width() -> None:
    low, high = bootstrap_ci(np.full(50, 0.7))
    assert low == high
    assert low == pytest.approx(0.7, abs=1e-12)
    assert bootstrap_ci([0.25]) == pytest.approx((0.25, 0.25))  # one problem: nothing to resample


def test_bootstrap_two_points_by_hand() -> None:
    # scores [0, 1]: a resample mean is 0 (p=1/4), 0.5 (p=1/2) or 1 (p=1/4).
    # 90%: quantiles 0.05 and 0.95 fall in the 0 and 1 atoms -> (0, 1)
    assert bootstrap_ci([0.0, 1.0], confidence=0.9) == (0.0, 1.0)
    # 40%: quantiles 0.3 and 0.7 both fall in the 0.5 atom (cumulative 0.25 .. 0.75) -> (0.5, 0.5)
    assert bootstrap_ci([0.0, 1.0], confidence=0.4) == (0.5, 0.5)


def test_bootstrap_known_case_contains_mean() -> None:
    # 100 problems, 30 solved: mean 0.3, normal approx 0.3 +- 1.96 * sqrt(0.21 / 100) = 0.3 +- 0.09
    scores = np.array([1.0] * 30 + [0.0] * 70)
    low, high = bootstrap_ci(scores, seed=1)
    assert low < 0.3 < high
    assert 0.18 < low < 0.26
    assert 0.34 < high < 0.42
    # a wider confidence gives a wider interval
    low99, high99 = bootstrap_ci(scores, confidence=0.99, seed=1)
    assert low99 <= low and high99 >= high


def test_bootstrap_deterministic_with_seed() -> None:
    scores = np.random.default_rng(0).random(40)
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    assert bootstrap_ci(scores, seed=3) != bootstrap_ci(scores, seed=4)


def test_bootstrap_chunked_is_still_a_valid_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    # force many small chunks: results stay deterministic and sensible
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 100)
    scores = np.array([1.0] * 30 + [0.0] * 70)
    low, high = bootstrap_ci(scores, seed=1)
    assert (low, high) == bootstrap_ci(scores, seed=1)
    assert 0.18 < low < 0.3 < high < 0.42


def test_bootstrap_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([0.5, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([0.5], confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci([0.5], resamples=0)


def test_mean_over_runs_by_hand() -> None:
    # [1, 2, 3]: mean 2, sd 1, se 1 / sqrt(3); t_{0.975, 2} = 4.302653 -> 2 +- 2.484138
    over = mean_over_runs([1.0, 2.0, 3.0])
    assert over.mean_diff == 2.0 and over.sd == pytest.approx(1.0) and over.runs == 3
    assert (over.ci_low, over.ci_high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert not over.significant
    # two runs: t_{0.975, 1} = 12.706205, se = sqrt(2) / sqrt(2) = 1: each run's own certainty is not enough
    over = mean_over_runs([1.0, 3.0])
    assert (over.ci_low, over.ci_high) == pytest.approx((2 - 12.706205, 2 + 12.706205), abs=1e-6)
    # 90%: t_{0.95, 2} = 2.919986
    assert mean_over_runs([1.0, 2.0, 3.0], confidence=0.9).ci_high == pytest.approx(2 + 2.919986 / 3**0.5)
    # runs that agree exactly: a zero-width interval, outside 0
    over = mean_over_runs([0.25, 0.25, 0.25])
    assert (over.ci_low, over.ci_high, over.significant) == (0.25, 0.25, True)


def test_mean_over_runs_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 runs"):
        mean_over_runs([0.1])
    with pytest.raises(ValueError, match="NaN"):
        mean_over_runs([0.1, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        mean_over_runs([0.1, 0.2], confidence=0.0)


def test_paired_diff_identical_is_zero() -> None:
    a = np.random.default_rng(0).random(30)
    res = paired_bootstrap_diff(a, a.copy())
    assert res == BootstrapDiff(0.0, 0.0, 0.0, False)


def test_paired_diff_by_hand() -> None:
    # b = a - 0.1 on every problem: diff is constant 0.1 -> CI [0.1, 0.1], 0 outside -> significant
    a = np.array([0.5, 0.9, 0.3, 0.7])
    res = paired_bootstrap_diff(a, a - 0.1)
    assert res.mean_diff == pytest.approx(0.1)
    assert res.ci_low == pytest.approx(0.1) and res.ci_high == pytest.approx(0.1)
    assert res.significant
    # a win on 1 of 20 problems: diff mean 0.05; resamples missing that problem have diff 0, so the
    # 95% CI reaches 0 (P(problem absent) = (19/20)^20 = 0.36) -> not significant
    a2, b2 = np.zeros(20), np.zeros(20)
    a2[0] = 1.0
    res2 = paired_bootstrap_diff(a2, b2)
    assert res2.mean_diff == pytest.approx(0.05)
    assert res2.ci_low == 0.0 and res2.ci_high > 0.05
    assert not res2.significant


def test_paired_diff_is_tighter_than_unpaired() -> None:
    # problem difficulty varies a lot, the improvement is a steady +0.05: pairing removes the difficulty
    base = np.linspace(0.0, 0.9, 50)
    res = paired_bootstrap_diff(base + 0.05, base)
    assert res.significant
    low_a, high_a = bootstrap_ci(base + 0.05)
    assert res.ci_high - res.ci_low < (high_a - low_a) / 10


def test_paired_diff_length_mismatch() -> None:
    with pytest.raises(ValueError, match="same problems: a has 3 scores, b has 2"):
        paired_bootstrap_diff([0.1, 0.2, 0.3], [0.1, 0.2])


# ---------------------------------------------------------------------------------------- summarize
CORRECT = [[F, T, T, F], [F, F, F, F], [T, T, T, T]]
ANSWERS = [["3", "2", "2", "4"], [None, "1", "1", None], ["5", "5", "5", "5"]]


def test_summarize_by_hand() -> None:
    out = summarize(CORRECT, ANSWERS, ks=[1, 2, 4, 8])
    assert out["problems"] == 3 and out["n"] == 4 and out["n_max"] == 4
    # avg@n = pass@1: (2/4 + 0 + 4/4) / 3 = 0.5
    assert out["avg@n"]["value"] == pytest.approx(0.5)
    assert out["pass@1"]["value"] == pytest.approx(0.5)
    # pass@2: p0 n=4, c=2 -> 1 - C(2,2)/C(4,2) = 5/6; p1 0; p2 1 -> (5/6 + 1) / 3 = 11/18
    assert out["pass@2"]["value"] == pytest.approx(11 / 18)
    # pass@4 (n = k): any correct -> (1 + 0 + 1) / 3
    assert out["pass@4"]["value"] == pytest.approx(2 / 3)
    # maj@1: "3" wrong, None -> 0, "5" right -> 1/3
    # maj@2: p0 "3"/"2" tie -> "3" (first) wrong; p1 None/"1" -> "1" wrong; p2 right -> 1/3
    # maj@4: p0 "2" has 2 votes -> right; p1 "1" wrong; p2 right -> 2/3
    assert out["maj@1"]["value"] == pytest.approx(1 / 3)
    assert out["maj@2"]["value"] == pytest.approx(1 / 3)
    assert out["maj@4"]["value"] == pytest.approx(2 / 3)
    for name in ("avg@n", "pass@1", "pass@2", "pass@4", "maj@1", "maj@2", "maj@4"):
        entry = out[name]
        assert set(entry) == {"value", "ci_low", "ci_high"}
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    # k=8 > n=4: reported, never computed
    assert "pass@8" not in out and "maj@8" not in out
    assert set(out["skipped"]) == {"pass@8", "maj@8"}
    assert "k=8 > n=4" in out["skipped"]["pass@8"]
    assert out["confidence"] == 0.95 and out["resamples"] == 2000


def test_summarize_ragged_skips_k_above_smallest_n() -> None:
    out = summarize([[T, F], [T, F, F, F]], ks=[1, 2, 4])
    assert out["n"] == 2 and out["n_max"] == 4
    assert "pass@2" in out and "pass@4" not in out
    assert out["skipped"] == {
        "pass@4": "k=4 > n=2 (smallest samples per problem; 1 of 2 problems have fewer than 4)"
    }
    assert not any(key.startswith("maj@") for key in out)  # no answers -> no maj@k
    assert summarize([[T, F], [T, F, F, F]], ks=[1])["skipped"] == {}


def test_summarize_deterministic_and_errors() -> None:
    assert summarize(CORRECT, ANSWERS, ks=[2], maj_samples=20) == summarize(
        CORRECT, ANSWERS, ks=[2], maj_samples=20
    )
    with pytest.raises(ValueError, match="k must be >= 1"):
        summarize(CORRECT, ks=[0])
    with pytest.raises(ValueError, match="answers has 2 problems but correct has 3"):
        summarize(CORRECT, ANSWERS[:2], ks=[1])


def test_metric_per_problem() -> None:
    np.testing.assert_allclose(metric_per_problem("pass@2", CORRECT), [5 / 6, 0.0, 1.0])
    np.testing.assert_allclose(metric_per_problem("maj@4", CORRECT, ANSWERS), [1.0, 0.0, 1.0])
    np.testing.assert_allclose(metric_per_problem("avg@n", CORRECT), [0.5, 0.0, 1.0])
    with pytest.raises(ValueError, match="needs the extracted answers"):
        metric_per_problem("maj@2", CORRECT)
    with pytest.raises(ValueError, match="unknown metric 'best@2'"):
        metric_per_problem("best@2", CORRECT)

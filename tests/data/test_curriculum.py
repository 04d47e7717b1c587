"""Curriculum samplers and per-prompt statistics: hand-worked weights, exclusion rules, pacing, bucket
teachers, and exact continuation from a saved state."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from rlvr.data import SAMPLERS, PromptStats, make_sampler
from rlvr.data.curriculum import competence


def rows(n: int, **columns) -> list[dict]:
    out = [{"prompt_id": i, "prompt": f"p{i}", "data_source": "d"} for i in range(n)]
    for name, values in columns.items():
        for row, value in zip(out, values, strict=True):
            row[name] = value
    return out


def record(stats: PromptStats, step: int, **pass_rates: float) -> list[dict]:
    """Record pass rates given as ``p<id>=rate`` at ``step``; returns the records."""
    records = [
        {"prompt_id": int(k[1:]), "pass_rate": v, "samples": 4, "mean_length": 10.0, "step": step}
        for k, v in pass_rates.items()
    ]
    stats.record(records, step)
    return records


def ids(batch: list[dict]) -> list[int]:
    return [row["prompt_id"] for row in batch]


# --- per-prompt statistics ----------------------------------------------------------------------------


def test_stats_ema_window_length_and_source_by_hand():
    stats = PromptStats(["a", "a", "b"], ema_weight=0.5, window=2)
    stats.record([{"prompt_id": 0, "pass_rate": 1.0, "samples": 4, "mean_length": 10.0}], step=0)
    stats.record([{"prompt_id": 0, "pass_rate": 0.0, "samples": 4, "mean_length": 20.0}], step=1)
    stats.record([{"prompt_id": 0, "pass_rate": 0.5, "samples": 2, "mean_length": 30.0}], step=3)
    stats.record([{"prompt_id": 2, "pass_rate": 0.25, "samples": 8, "mean_length": 5.0}], step=3)
    # ema: 1 -> 0.5*0 + 0.5*1 = 0.5 -> 0.5*0.5 + 0.5*0.5 = 0.5; window 2 keeps [0, 0.5]
    assert stats.ema[0] == 0.5 and stats.recent[0] == [0.0, 0.5]
    assert stats.estimate("window")[0] == 0.25 and stats.estimate("last")[0] == 0.5
    assert np.isnan(stats.estimate("ema")[1])
    # mean length weighted by responses: (4*10 + 4*20 + 2*30) / 10 = 18
    assert stats.mean_length[0] == pytest.approx(18.0)
    assert stats.times_sampled.tolist() == [3, 0, 1] and stats.last_step.tolist() == [3, -1, 3]
    by_source = stats.by_source()
    assert by_source["a"] == {
        "prompts": 2.0,
        "seen": 1.0,
        "times_sampled": 3.0,
        "pass_rate": 0.5,
        "mean_length": pytest.approx(18.0),
    }
    assert by_source["b"]["pass_rate"] == 0.25 and by_source["b"]["mean_length"] == 5.0


def test_stats_state_round_trips_exactly_through_json():
    stats = PromptStats(["a"] * 5, ema_weight=0.3, window=3)
    for step in range(4):
        record(stats, step, p1=1 / 3 + step / 7, p4=0.1 * step)
    restored = PromptStats(["a"] * 5, ema_weight=0.3, window=3)
    restored.load_state_dict(json.loads(json.dumps(stats.state_dict())))
    for name in ("times_sampled", "last_step", "samples"):
        assert getattr(restored, name).tolist() == getattr(stats, name).tolist()
    np.testing.assert_array_equal(restored.ema, stats.ema)  # bit-exact, NaN where unseen
    np.testing.assert_array_equal(restored.mean_length, stats.mean_length)
    assert restored.recent == stats.recent
    with pytest.raises(ValueError, match="saved for 5 prompts"):
        PromptStats(["a"] * 4).load_state_dict(stats.state_dict())


# --- learnability -------------------------------------------------------------------------------------


def test_learnability_probabilities_by_hand():
    data = rows(4)
    sampler = make_sampler("learnability", data, seed=0, floor=0.2)
    record(sampler.stats, 0, p0=1.0, p1=0.5, p2=0.25)  # p3 unseen: prior 0.5
    # w = p(1-p) = [0, 1/4, 3/16, 1/4], sum 11/16; P = 0.8 w / sum + 0.2 / 4
    expected = np.array([11, 75, 59, 75]) / 220
    np.testing.assert_allclose(sampler.probabilities(step=1), expected, rtol=1e-12)
    batch = ids(sampler.next_batch(4, step=1))
    assert sorted(batch) == [0, 1, 2, 3]  # no repeats while prompts last
    assert sampler.metrics()["entropy"] == pytest.approx(-(expected * np.log(expected)).sum())


def test_learnability_draw_frequencies_follow_the_weights():
    sampler = make_sampler("learnability", rows(4), seed=1, floor=0.2)
    record(sampler.stats, 0, p0=1.0, p1=0.5, p2=0.25)
    counts = np.bincount([ids(sampler.next_batch(1, step=1))[0] for _ in range(4000)], minlength=4)
    np.testing.assert_allclose(counts / 4000, np.array([11, 75, 59, 75]) / 220, atol=0.025)


def test_learnability_without_signal_is_uniform():
    sampler = make_sampler("learnability", rows(3), seed=0, floor=0.0)
    record(sampler.stats, 0, p0=1.0, p1=0.0, p2=1.0)
    np.testing.assert_allclose(sampler.probabilities(step=1), [1 / 3] * 3)


# --- pass-rate filter ---------------------------------------------------------------------------------


def test_pass_rate_filter_skips_solved_and_hopeless_prompts():
    sampler = make_sampler("pass_rate_filter", rows(6), seed=0, hi=1.0, lo=0.0, min_seen=1)
    record(sampler.stats, 0, p0=1.0, p1=0.0, p2=0.5)
    record(sampler.stats, 1, p2=1.0, p4=0.75)  # p2 solved on its last visit ("last" estimate)
    assert sampler.active(step=2).tolist() == [False, False, False, True, True, True]
    drawn = [i for _ in range(4) for i in ids(sampler.next_batch(3, step=2))]
    assert set(drawn) == {3, 4, 5} and drawn.count(3) == 4  # two epochs' walk over the active ones
    assert sampler.metrics() == {"active_prompts": 3.0, "entropy": math.log(3)}


def test_pass_rate_filter_min_seen_and_cooldown():
    sampler = make_sampler("pass_rate_filter", rows(3), seed=0, min_seen=2, cooldown=3, estimate="ema")
    record(sampler.stats, 0, p0=1.0, p1=1.0)
    assert sampler.active(step=1).all()  # seen once, min_seen 2
    record(sampler.stats, 1, p0=1.0)
    assert sampler.active(step=3).tolist() == [False, True, True]  # step 3 < last step 1 + cooldown 3
    assert sampler.active(step=4).tolist() == [True, True, True]  # back after the cool-down


def test_pass_rate_filter_hands_out_everything_when_nothing_is_left():
    sampler = make_sampler("pass_rate_filter", rows(2), seed=0)
    record(sampler.stats, 0, p0=1.0, p1=1.0)
    assert sorted(ids(sampler.next_batch(2, step=1))) == [0, 1]


# --- hard focus ---------------------------------------------------------------------------------------


def test_hard_focus_keeps_hard_but_solvable_prompts():
    sampler = make_sampler("hard_focus", rows(5), seed=0, max_pass_rate=0.5, min_pass_rate=0.0)
    record(sampler.stats, 0, p0=0.0, p1=0.25, p2=0.5, p3=0.75)  # p4 unseen: explored
    np.testing.assert_allclose(sampler.probabilities(step=1), [0, 1 / 3, 1 / 3, 0, 1 / 3])
    assert set(ids(sampler.next_batch(3, step=1))) == {1, 2, 4}
    quiet = make_sampler("hard_focus", rows(5), sampler.stats, seed=0, explore_unseen=False)
    np.testing.assert_allclose(quiet.probabilities(step=1), [0, 0.5, 0.5, 0, 0])


# --- difficulty schedule ------------------------------------------------------------------------------


def test_competence_pacing_functions_by_hand():
    assert competence(0, 10, 0.25, "linear", 3) == 0.25
    assert competence(4, 10, 0.25, "linear", 3) == pytest.approx(0.55)
    assert competence(20, 10, 0.25, "linear", 3) == 1.0
    assert competence(5, 10, 0.25, "root", 3) == pytest.approx(math.sqrt(0.0625 + 0.9375 * 0.5))
    # step: level 1 at t = 0, one more every T / (levels - 1) = 4.5 steps, all three at T = 9
    assert [competence(s, 9, 0.25, "step", 3) for s in (0, 4, 5, 8, 9, 20)] == [
        1 / 3,
        1 / 3,
        2 / 3,
        2 / 3,
        1,
        1,
    ]
    # rounding: 2/3 of 9 prompts is 6, not 7 (ceil of 6.000000000000001)
    data = rows(9, difficulty=list(range(9)))
    linear = make_sampler("difficulty_schedule", data, pace_steps=9, start=1 / 3)
    assert len(np.flatnonzero(linear.probabilities(step=4.5))) == 6


def test_difficulty_schedule_unlocks_the_easiest_first():
    data = rows(8, difficulty=[3, 1, 2, 1, 3, 2, 1, 2])
    sampler = make_sampler("difficulty_schedule", data, seed=0, pace_steps=4, start=0.25)
    # step 0: ceil(0.25 * 8) = 2 of the three difficulty-1 prompts (1, 3, 6)
    first = set(np.flatnonzero(sampler.probabilities(step=0)))
    assert len(first) == 2 and first <= {1, 3, 6}
    # step 2: c = 0.25 + 0.75 * 0.5 = 0.625 -> 5 prompts: all of difficulty 1 and two of difficulty 2
    later = set(np.flatnonzero(sampler.probabilities(step=2)))
    assert len(later) == 5 and {1, 3, 6} < later and later - {1, 3, 6} <= {2, 5, 7}
    assert first < later and len(np.flatnonzero(sampler.probabilities(step=4))) == 8


def test_difficulty_schedule_step_pacing_over_named_levels():
    data = rows(6, level=["hard", "easy", "medium", "easy", "medium", "hard"])
    sampler = make_sampler(
        "difficulty_schedule",
        data,
        seed=0,
        pace_steps=6,
        field="level",
        pacing="step",
        levels=["easy", "medium", "hard"],
    )
    assert np.flatnonzero(sampler.probabilities(step=2)).tolist() == [1, 3]
    assert np.flatnonzero(sampler.probabilities(step=3)).tolist() == [1, 2, 3, 4]
    assert np.flatnonzero(sampler.probabilities(step=5)).tolist() == [1, 2, 3, 4]
    assert np.flatnonzero(sampler.probabilities(step=6)).tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (rows(2), {"pace_steps": 3}, r"sampler.kwargs.field: .*'difficulty'.*prompt 0"),
        (rows(2, difficulty=["a", "b"]), {"pace_steps": 3}, "list them from easiest to hardest"),
        (rows(2, difficulty=["a", "b"]), {"pace_steps": 3, "levels": ["a"]}, r"\['b'\]"),
    ],
)
def test_difficulty_schedule_data_errors_name_the_key(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_sampler("difficulty_schedule", data, **kwargs)


# --- bucket teachers ----------------------------------------------------------------------------------


def bucket_rows() -> list[dict]:
    return rows(9, task=["a", "a", "a", "b", "b", "b", "c", "c", "c"])


def test_alp_probabilities_by_hand():
    sampler = make_sampler("alp", bucket_rows(), seed=0, field="task", window=1, explore=0.2)
    sampler.update(record(sampler.stats, 0, p0=0.2, p3=0.5))
    sampler.update(record(sampler.stats, 1, p1=0.6, p4=0.5, p6=0.3))
    # LP: a |0.6 - 0.2| = 0.4, b 0, c unknown (one step) -> counts as the largest known, 0.4
    assert sampler.learning_progress() == [pytest.approx(0.4), 0.0, None]
    expected = 0.8 * np.array([0.5, 0.0, 0.5]) + 0.2 / 3
    np.testing.assert_allclose(sampler.bucket_probabilities(step=2), expected)
    batch = ids(sampler.next_batch(300, step=2))
    share = np.bincount(np.array(batch) // 3, minlength=3) / 300
    np.testing.assert_allclose(share, expected, atol=0.08)
    metrics = sampler.metrics()
    assert metrics["weight/a"] == pytest.approx(expected[0]) and metrics["active_prompts"] == 9


def test_alp_window_averages_step_means():
    sampler = make_sampler("alp", bucket_rows(), seed=0, field="task", window=2)
    for step, rate in enumerate([0.0, 0.2, 0.4, 0.8]):  # two prompts of bucket a per step
        sampler.update(record(sampler.stats, step, p0=rate, p1=rate + 0.1))
    # step means 0.05, 0.25, 0.45, 0.85: |mean(0.45, 0.85) - mean(0.05, 0.25)| = 0.5
    assert sampler.learning_progress()[0] == pytest.approx(0.5)


def test_mixture_fixed_and_adaptive_weights_by_hand():
    data = rows(6, data_source=["x", "x", "x", "x", "y", "y"])
    fixed = make_sampler("mixture", data, seed=0, weights={"x": 3, "y": 1})
    np.testing.assert_allclose(fixed.bucket_probabilities(step=0), [0.75, 0.25])
    adaptive = make_sampler("mixture", data, seed=0, adaptive=True, window=1, ucb_c=0.5, floor=0.1)
    np.testing.assert_allclose(adaptive.bucket_probabilities(step=0), [0.5, 0.5])  # no data: uniform
    adaptive.update(record(adaptive.stats, 0, p0=0.2, p4=0.5))
    adaptive.update(record(adaptive.stats, 1, p1=0.6, p5=0.5))
    # LP x = 0.4, y = 0; each measured twice of 4: bonus = 0.5 sqrt(ln 5 / 3)
    bonus = 0.5 * math.sqrt(math.log(5) / 3)
    score = np.array([0.4 + bonus, bonus])
    np.testing.assert_allclose(adaptive.bucket_probabilities(2), 0.9 * score / score.sum() + 0.1 * 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "required unless adaptive"),
        ({"weights": {"x": 1.0}}, r"no weight for: \['y'\]"),
        ({"weights": {"x": 1.0, "y": 1.0, "z": 1.0}}, r"unknown: \['z'\]"),
    ],
)
def test_mixture_weight_errors(kwargs, message):
    data = rows(2, data_source=["x", "y"])
    with pytest.raises(ValueError, match=f"sampler.kwargs.weights: .*{message}"):
        make_sampler("mixture", data, **kwargs)


# --- every sampler: the same contract -----------------------------------------------------------------

KWARGS = {
    "difficulty_schedule": {"pace_steps": 3},
    "alp": {"field": "task", "window": 1},
    "mixture": {"adaptive": True, "window": 1},
    "pass_rate_filter": {"lo": 0.0},
}


def contract_rows() -> list[dict]:
    data = rows(12, difficulty=[i % 3 for i in range(12)], task=[f"t{i % 4}" for i in range(12)])
    for row in data:
        row["data_source"] = "s0" if row["prompt_id"] < 6 else "s1"
    return data


def run_sampler(sampler, steps: range) -> list[list[int]]:
    """Draw a batch per step and feed back pass rates that depend on prompt and step."""
    batches = []
    for step in steps:
        batch = ids(sampler.next_batch(4, step))
        batches.append(batch)
        rates = {f"p{i}": ((i * 7 + step * 3) % 5) / 4 for i in batch}
        sampler.update(record(sampler.stats, step, **rates))
    return batches


@pytest.mark.parametrize("name", sorted(SAMPLERS.names()))
def test_every_sampler_continues_exactly_from_its_state(name):
    kwargs = KWARGS.get(name, {})
    reference = make_sampler(name, contract_rows(), seed=5, **kwargs)
    run_sampler(reference, range(3))
    state = json.loads(json.dumps({"s": reference.state_dict(), "p": reference.stats.state_dict()}))
    expected = run_sampler(reference, range(3, 7))

    resumed = make_sampler(name, contract_rows(), seed=0, **kwargs)
    resumed.stats.load_state_dict(state["p"])
    resumed.load_state_dict(state["s"])
    assert run_sampler(resumed, range(3, 7)) == expected
    assert all(len(b) == 4 and 0 <= min(b) and max(b) < 12 for b in expected)
    metrics = resumed.metrics()
    assert 1 <= metrics["active_prompts"] <= 12 and metrics["entropy"] <= math.log(12) + 1e-9


def test_bucket_batches_are_mixed_so_every_process_gets_every_bucket():
    sampler = make_sampler("alp", bucket_rows(), seed=0, field="task", window=1, explore=1.0)
    for _ in range(10):
        buckets = [i // 3 for i in ids(sampler.next_batch(6))]
        if buckets != sorted(buckets):
            return
    pytest.fail("every batch came out sorted by bucket: shard() would hand one process the easy bucket")


def test_value_constraints_are_checked_with_the_arguments():
    from rlvr.registry import PluginArgumentError

    for name, kwargs, message in [
        ("learnability", {"floor": 1.5}, "expects float, got 1.5 (Input should be less than or equal to 1)"),
        ("pass_rate_filter", {"cooldown": 0}, "expects int | None, got 0 (Input should be greater than"),
        (
            "difficulty_schedule",
            {"pace_steps": 3, "start": 0},
            "expects float, got 0 (Input should be greater",
        ),
        ("mixture", {"weights": {"d": -1}}, "expects dict[str, float] | None"),
    ]:
        with pytest.raises(PluginArgumentError, match=re.escape(message)):
            SAMPLERS.bind(name, kwargs)
    with pytest.raises(ValueError, match=r"sampler.kwargs.lo: must be below hi=0.5, got 0.5"):
        make_sampler("pass_rate_filter", rows(2), hi=0.5, lo=0.5)  # across keys: when the sampler is built


def test_bad_weights_from_a_sampler_are_a_clear_error():
    from rlvr.data.sampler import WeightedSampler

    class Broken(WeightedSampler):
        def weights(self, step):
            return np.array([1.0, np.nan, 1.0])

    with pytest.raises(ValueError, match=r"Broken: weights\(\) must give one finite weight >= 0 per prompt"):
        Broken(rows(3), PromptStats(["d"] * 3)).next_batch(2)

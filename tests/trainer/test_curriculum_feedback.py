"""Collection's curriculum feedback without a model: per-prompt records into the statistics and the sampler,
the curriculum/* metrics, and the sampler errors a recipe gets."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from rlvr.config import Recipe, RecipeError
from rlvr.data import make_sampler
from rlvr.rollout import Completion
from rlvr.trainer.collect import Group, _batch_metrics, _update_sampler, curriculum_metrics
from rlvr.trainer.run import make_curriculum


class _OneProcess:
    num_processes = 1
    process_index = 0
    is_main_process = True


def rows() -> list[dict]:
    sources = ["easy", "easy", "easy", "hard"]
    return [{"prompt_id": i, "prompt": f"p{i}", "data_source": s} for i, s in enumerate(sources)]


def group(row: dict, verdicts: list[float], lengths: list[int]) -> Group:
    completions = [
        Completion(prompt_index=0, text="x", token_ids=[1] * n, logprobs=[0.0] * n, finish_reason="stop")
        for n in lengths
    ]
    return Group(row=row, completions=completions, rewards=list(verdicts), verdicts=list(verdicts))


def test_records_reach_statistics_and_metrics_follow_by_hand():
    data = rows()
    sampler = make_sampler("learnability", data, seed=0)
    t = SimpleNamespace(
        sampler=sampler,
        stats=sampler.stats,
        step=0,
        accelerator=_OneProcess(),
        recipe=Recipe.model_validate({"data": {"path": "x.jsonl"}}),
    )
    drawn = sampler.next_batch(3, step=0)
    first = _batch_metrics(t, drawn)
    assert first == {"curriculum/active_prompts": 4.0, "curriculum/entropy": pytest.approx(math.log(4))}
    groups = [
        group(drawn[0], [1.0, 1.0, 0.0, 0.0], [2, 4, 6, 8]),  # pass rate 0.5, mean length 5
        group(drawn[1], [1.0, 1.0, 1.0, 1.0], [3, 3, 3, 3]),  # all right: zero variance
        group(drawn[2], [0.0, 0.0, 0.0, 0.0], [1, 1, 1, 1]),  # all wrong: zero variance
    ]
    _update_sampler(t, t.recipe, groups)
    ids = [row["prompt_id"] for row in drawn]
    assert t.stats.ema[ids].tolist() == [0.5, 1.0, 0.0]
    assert t.stats.mean_length[ids].tolist() == [5.0, 3.0, 1.0]
    assert t.stats.last_step[ids].tolist() == [0, 0, 0]
    metrics = curriculum_metrics(t, drawn, first, zero_variance=2 / 3)
    shares = {s: sum(r["data_source"] == s for r in drawn) / 3 for s in ("easy", "hard")}
    assert metrics["curriculum/zero_variance_frac"] == pytest.approx(2 / 3)
    assert metrics["curriculum/seen_prompts"] == 3.0
    assert metrics["curriculum/batch_share/easy"] == pytest.approx(shares["easy"])
    assert metrics["curriculum/batch_share/hard"] == pytest.approx(shares["hard"])
    seen_easy = [t.stats.ema[i] for i in ids if data[i]["data_source"] == "easy"]
    assert metrics["curriculum/pass_rate/easy"] == pytest.approx(sum(seen_easy) / len(seen_easy))
    # the next draw knows three pass rates: its batch pass rate is their mean over the drawn seen prompts
    again = sampler.next_batch(4, step=1)
    estimate = _batch_metrics(t, again)["curriculum/batch_pass_rate"]
    assert estimate == pytest.approx(sum(t.stats.ema[ids]) / 3)  # all four drawn, the three seen count


def test_a_sampler_data_problem_is_a_recipe_error_naming_the_key(tmp_path):
    recipe = Recipe.model_validate(
        {
            "data": {"path": "x.jsonl"},
            "sampler": {"name": "difficulty_schedule", "kwargs": {"pace_steps": 4}},
        }
    )
    recipe.source = str(tmp_path / "r.yaml")
    with pytest.raises(RecipeError, match=r"r\.yaml: sampler\.kwargs\.field: .*'difficulty'.*prompt 0"):
        make_curriculum(recipe, rows())
    recipe.sampler.name, recipe.sampler.kwargs = "mixture", {"weights": {"easy": 1.0}}
    with pytest.raises(RecipeError, match=r"sampler\.kwargs\.weights: .* no weight for: \['hard'\]"):
        make_curriculum(recipe, rows())

"""Every shipped training recipe runs: one RL step of it on the tiny test model.

The recipes train SmolLM2 on CPU for minutes; here each keeps everything it chooses (algorithm, rewards,
data, sampling, batch layout) and swaps in the tiny character-level model and the transformers engine, so
its options are checked against the code end to end (a misspelt loss hyperparameter, a micro-batch that
splits a PACS group, an EAD schedule with a temperature) in a few seconds.
"""

import math
import sys

import pytest
from launch import ROOT, metrics, run, undocumented

RECIPES = sorted(
    p.relative_to(ROOT).as_posix()
    for p in (ROOT / "recipes").rglob("*.yaml")
    if p.parent.name not in ("accelerate", "tiny")
)


def test_every_algorithm_family_has_a_recipe():
    assert len(RECIPES) >= 15, RECIPES


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_one_step_on_the_tiny_model(tmp_path, recipe):
    out = tmp_path / "run"
    overrides = [
        f"run.output_dir={out}",
        "run.steps=1",
        "run.save_every=0",
        "run.save_final=false",
        "model.name_or_path=tiny-char",
        "rollout.engine=hf",
    ]
    run([sys.executable, "-m", "rlvr.train", str(ROOT / recipe), *overrides])
    (row,) = metrics(out)
    assert all(math.isfinite(v) for v in row.values()), row
    # a gradient, unless every group's rewards were equal (the tiny model failed every prompt drawn: GRPO
    # then has nothing to learn from, which is right, and the curriculum metrics say so)
    assert row["actor/grad_norm"] > 0 or row["curriculum/zero_variance_frac"] == 1.0, row
    assert not undocumented(row), "add these metrics to docs/metrics.md"

"""Every registered advantage estimator and policy loss runs through the real training loop.

Two RL steps of the tiny recipe per combination (transformers engine, one process): the recipe path
accepts the names, the update produces finite losses and non-zero gradients, and the weights move.
"""

import math
import sys

import pytest
from launch import TINY_RECIPE, metrics, run

FAMILIES = [
    ("grpo", "grpo", "token-mean"),
    ("dr_grpo", "dapo", "seq-mean-token-sum-norm"),
    ("rloo", "reinforce", "seq-mean-token-sum"),
    ("grpo", "gspo", "seq-mean-token-mean"),
    ("dgpo", "cispo", "token-mean"),
    ("lite_ppo", "ppo_clip", "token-mean"),
    ("reinforce_pp", "reinforce", "token-mean"),
    ("batch_norm", "grpo", "seq-mean-token-mean"),
]


@pytest.mark.parametrize(("advantage", "loss", "agg"), FAMILIES, ids=lambda v: str(v))
def test_family_trains_through_the_loop(tmp_path, advantage, loss, agg):
    out = tmp_path / "run"
    overrides = [
        f"run.output_dir={out}",
        "run.steps=2",
        "run.save_final=false",
        "rollout.engine=hf",
        "train.num_mini_batches=2",  # the second mini-batch is off-policy: ratios and clipping are exercised
        f"algorithm.advantage={advantage}",
        f"algorithm.policy_loss={loss}",
        f"algorithm.loss_agg={agg}",
    ]
    run([sys.executable, "-m", "rlvr.train", str(TINY_RECIPE), *overrides])
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert all(math.isfinite(v) for v in row.values()), row
        assert row["actor/grad_norm"] > 0
    # after the first optimizer step the ratio is no longer exactly one
    assert rows[-1]["actor/ratio_max"] != 1.0

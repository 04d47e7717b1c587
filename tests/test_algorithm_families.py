"""Every registered advantage estimator and policy loss runs through the real training loop.

Two RL steps of the tiny recipe per combination (transformers engine, one process): the recipe path
accepts the names, the update produces finite losses and non-zero gradients, and the weights move.
"""

import math
import sys

import pytest
from launch import TINY_RECIPE, metrics, run, undocumented

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
    assert not undocumented(set().union(*rows)), "add these metrics to docs/metrics.md"


# Plug-ins that need more than the default inputs (a critic, a reference, a pre-update forward pass, a
# greedy rollout, extra generation rounds): each runs 2 steps and leaves the evidence it ran in the metrics.
PLUGINS = {
    "ppo_critic_gae": (
        [
            "algorithm.advantage=gae",
            "algorithm.advantage_kwargs={gamma: 1.0, lam: 0.95}",
            "algorithm.policy_loss=ppo_clip",
            "algorithm.policy_loss_kwargs={dual_clip_c: 3.0}",
            "algorithm.kl_coef=0.05",
            "algorithm.kl_estimator=k1",
            "algorithm.kl_placement=reward",
            "algorithm.kl_controller=adaptive",
            "algorithm.kl_controller_kwargs={target: 0.01, horizon: 100}",
            "algorithm.critic.lr=1e-3",
        ],
        # the value head starts at exactly 0 and has learnt something after one update
        lambda rows: (
            rows[0]["critic/value_mean"] == 0.0
            and rows[1]["critic/value_mean"] != 0.0
            and rows[1]["actor/kl_reward_penalty"] > 0
            and rows[1]["actor/kl_coef"] != 0.05
        ),
    ),
    "dapo_dynamic_sampling_overlong": (
        [
            "algorithm.policy_loss=dapo",
            "algorithm.dynamic_sampling.enabled=true",
            "algorithm.dynamic_sampling.oversample=2.0",
            "algorithm.dynamic_sampling.max_rounds=2",
            "algorithm.overlong.buffer_len=4",
            "algorithm.overlong.mask_truncated=true",
        ],
        lambda rows: (
            all(1 <= r["dynamic_sampling/rounds"] <= 2 for r in rows)
            and all(r["reward/mean"] < 0 for r in rows)  # almost every response runs into the 8-token limit
            and all(r["tokens/overlong_mask/masked_frac"] > 0 for r in rows)
        ),
    ),
    "lp_reg": (
        ["algorithm.policy_loss=lp_reg", "algorithm.policy_loss_kwargs={neg_k_percent: 0.2}"],
        lambda rows: "actor/lp_reg_frac" in rows[1],
    ),
    "pacs": (
        ["algorithm.policy_loss=pacs", "algorithm.loss_agg=seq-mean-token-mean", "train.micro_batch_size=16"],
        lambda rows: rows[0]["actor/bce"] > 0,
    ),
    "clip_cov": (
        ["algorithm.policy_loss=clip_cov", "algorithm.policy_loss_kwargs={clip_ratio: 0.05, cov_lb: 0.0}"],
        lambda rows: rows[1]["actor/cov_selected_frac"] > 0,
    ),
    "kl_cov": (
        ["algorithm.policy_loss=kl_cov", "algorithm.policy_loss_kwargs={kl_cov_ratio: 0.05}"],
        lambda rows: rows[1]["actor/cov_selected_frac"] > 0,
    ),
    "remax_greedy_baseline": (
        ["algorithm.advantage=remax", "algorithm.policy_loss=reinforce"],
        lambda rows: True,
    ),
    "prorl_reference_reset": (
        ["algorithm.kl_coef=0.1", "algorithm.reference_reset_every=1"],
        lambda rows: all(r["actor/reference_reset"] == 1.0 for r in rows),
    ),
    "forking_tokens_tis_mismatch": (
        [
            "algorithm.token_weights=[{name: forking_tokens, kwargs: {top_q: 0.25}}, {name: tis, kwargs: "
            "{cap: 2.0}}, {name: mismatch_mask, kwargs: {low: 0.1, high: 10.0, level: sequence}}]",
        ],
        lambda rows: (
            all(0.2 <= r["tokens/forking_tokens/selected_frac"] <= 0.5 for r in rows)
            and all(r["tokens/tis/ratio_max"] < 1.01 for r in rows)
        ),  # hf engine and trainer agree in fp32
    ),
    "ead_with_tis": (
        [
            "rollout.ead={tau_max: 1.5, tau_min: 0.3, warmup_tokens: 1, d0: 4, scale: 1}",
            "algorithm.token_weights=[{name: tis, kwargs: {cap: 2.0}}]",
        ],
        # tokens sampled at tau_t != 1: engine and trainer (tau = 1) disagree, and TIS sees it
        lambda rows: (
            all(r["tokens/tis/ratio_max"] > 1.05 for r in rows)
            and all(r["actor/engine_logprob_gap"] > 0.05 for r in rows)
        ),
    ),
    "eval_during_training": (
        ["eval.every=2", "eval.benchmarks=[arithmetic]", "eval.limit=4", "eval.max_tokens=4"],
        # evaluated after step 2 only, on the held-out arithmetic slice (the tiny model scores ~0)
        lambda rows: (
            "eval/arithmetic/pass@1" not in rows[0]
            and 0.0 <= rows[1]["eval/arithmetic/pass@1"] <= 1.0
            and rows[1]["eval/arithmetic/response_tokens"] <= 4
        ),
    ),
    "adaptive_entropy": (
        [
            "algorithm.entropy_controller=adaptive",
            "algorithm.entropy_controller_kwargs={target: 100.0, delta: 1e-3, max_coef: 1.0}",
        ],
        # entropy (~4.8 nats) is below the target: the coefficient rises by delta each step
        lambda rows: (
            rows[0]["actor/entropy_coef"] == 0.0 and abs(rows[1]["actor/entropy_coef"] - 1e-3) < 1e-9
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_plugin_runs_through_the_loop(tmp_path, name):
    overrides, check = PLUGINS[name]
    out = tmp_path / "run"
    base = [f"run.output_dir={out}", "run.steps=2", "run.save_final=false", "rollout.engine=hf"]
    run([sys.executable, "-m", "rlvr.train", str(TINY_RECIPE), *base, *overrides])
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert all(math.isfinite(v) for v in row.values()), row
        assert row["actor/grad_norm"] > 0
    assert check(rows), rows
    assert not undocumented(set().union(*rows)), "add these metrics to docs/metrics.md"

"""Every registered plug-in runs two RL steps through the real training loop.

Two RL steps of the tiny recipe per case (transformers engine, one process): the recipe path accepts the
names, the update produces finite losses and non-zero gradients, the weights move, and a plug-in that
leaves evidence of having run (a metric) leaves it.

The cases follow the registries, so a new entry is covered without editing this file:

* generated cases zip the registries: run ``i`` uses the ``i``-th name of every family (cycling through the
  shorter ones), so there are as many runs as the largest registry has names (aliases included: a recipe
  may use either name);
* an entry that needs more than its name (a critic's learning rate, its own kwargs, a micro-batch size)
  gets those overrides, and the check that it really ran, from :data:`EXTRA_OVERRIDES`;
* features that are not one registry entry, or that change the run too much to share it (dynamic sampling,
  a reference reset, entropy-adaptive decoding, evaluation), have their own run in :data:`SPECIAL_CASES`;
* :func:`test_every_registry_entry_is_covered` (no training) parses every case's recipe and fails naming
  any entry that no case runs, or a table row that names no entry.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from launch import TINY_RECIPE, metrics, run, undocumented

from rlvr.algorithms import ADVANTAGES, PLUGIN_FAMILIES
from rlvr.algorithms.utils import needs_of
from rlvr.config import load_recipe

Rows = list[dict]
Check = Callable[[Rows], bool]

# `algorithm.<family>` in a recipe -> the names it accepts (a Registry, or a tuple of modes).
FAMILIES = PLUGIN_FAMILIES

KL_COEF = 0.05  # every generated run has a KL term, so each estimator and KL controller is exercised

# Every generated run: the second mini-batch is off-policy, so ratios and clipping are exercised.
GENERATED_BASE = ["train.num_mini_batches=2", f"algorithm.kl_coef={KL_COEF}"]

# (family, name) -> (overrides beyond the name, evidence that the entry really ran). An override here may
# replace GENERATED_BASE and refine the entry's own selection (a token weight's kwargs), but not set what
# another entry of the same run selects or sets.
EXTRA_OVERRIDES: dict[tuple[str, str], tuple[list[str], Check]] = {
    ("advantage", "gae"): (
        [
            "algorithm.advantage_kwargs={gamma: 1.0, lam: 0.95}",
            "algorithm.critic.lr=1e-3",
            "algorithm.kl_placement=reward",
            # value_mean is logged per mini-batch with the critic as it is then: with one mini-batch, step
            # 1 sees the untrained value head (so this run skips the off-policy ratio check)
            "train.num_mini_batches=1",
        ],
        # the value head starts at exactly 0 and has learnt something after one update; the KL penalty
        # enters the token rewards the critic regresses on
        lambda rows: (
            rows[0]["critic/value_mean"] == 0.0
            and rows[1]["critic/value_mean"] != 0.0
            and rows[1]["actor/kl_reward_penalty"] > 0
        ),
    ),
    ("advantage", "remax"): (
        [],
        # the greedy baseline was decoded and scored (digit_fraction rewards lie in [0, 1])
        lambda rows: all(0.0 <= r["reward/baseline_mean"] <= 1.0 for r in rows),
    ),
    ("policy_loss", "ppo_clip"): (
        ["algorithm.policy_loss_kwargs={dual_clip_c: 3.0}"],
        lambda rows: all("actor/dual_clip_frac" in r for r in rows),
    ),
    ("policy_loss", "lp_reg"): (
        ["algorithm.policy_loss_kwargs={neg_k_percent: 0.2}"],
        lambda rows: "actor/lp_reg_frac" in rows[1],
    ),
    ("policy_loss", "pacs"): (
        ["train.micro_batch_size=16"],  # a micro-batch holds whole groups (a multiple of num_generations=8)
        lambda rows: rows[0]["actor/bce"] > 0,
    ),
    ("policy_loss", "clip_cov"): (
        ["algorithm.policy_loss_kwargs={clip_ratio: 0.05, cov_lb: 0.0}"],
        lambda rows: rows[1]["actor/cov_selected_frac"] > 0,
    ),
    ("policy_loss", "kl_cov"): (
        ["algorithm.policy_loss_kwargs={kl_cov_ratio: 0.05}"],
        lambda rows: rows[1]["actor/cov_selected_frac"] > 0,
    ),
    ("token_weights", "forking_tokens"): (
        ["algorithm.token_weights=[{name: forking_tokens, kwargs: {top_q: 0.25}}]"],
        lambda rows: all(0.2 <= r["tokens/forking_tokens/selected_frac"] <= 0.5 for r in rows),
    ),
    ("token_weights", "tis"): (
        ["algorithm.token_weights=[{name: tis, kwargs: {cap: 2.0}}]"],
        # the hf engine and the trainer agree in fp32
        lambda rows: all(r["tokens/tis/ratio_max"] < 1.01 for r in rows),
    ),
    ("token_weights", "mismatch_mask"): (
        ["algorithm.token_weights=[{name: mismatch_mask, kwargs: {low: 0.1, high: 10.0, level: sequence}}]"],
        lambda rows: all(r["tokens/mismatch_mask/masked_frac"] == 0.0 for r in rows),  # nothing to mask
    ),
    ("kl_controller", "adaptive"): (
        ["algorithm.kl_controller_kwargs={target: 0.01, horizon: 100}"],
        lambda rows: rows[0]["actor/kl_coef"] == KL_COEF and rows[1]["actor/kl_coef"] != KL_COEF,
    ),
    ("entropy_controller", "adaptive"): (
        ["algorithm.entropy_controller_kwargs={target: 100.0, delta: 1e-3, max_coef: 1.0}"],
        # entropy (~4.8 nats) is below the target: the coefficient rises by delta each step
        lambda rows: (
            rows[0]["actor/entropy_coef"] == 0.0 and abs(rows[1]["actor/entropy_coef"] - 1e-3) < 1e-9
        ),
    ),
}

# Features with their own run (each with the evidence it ran). Registry entries that cannot share a
# generated run are listed in NOT_GENERATED with the special case that covers them.
SPECIAL_CASES: dict[str, tuple[list[str], Check]] = {
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
    "prorl_reference_reset": (
        ["algorithm.kl_coef=0.1", "algorithm.reference_reset_every=1"],
        lambda rows: all(r["actor/reference_reset"] == 1.0 for r in rows),
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
            # per value of the spec's breakdown field (kind): 4 problems over at least 2 kinds
            and len([k for k in rows[1] if k.startswith("eval/arithmetic/kind/")]) >= 2
        ),
    ),
}

NOT_GENERATED = {
    # masks every truncated response, and nearly all of them hit the tiny recipe's 8-token limit: in a
    # generated run it could leave nothing to train on
    ("token_weights", "overlong_mask"): "dapo_dynamic_sampling_overlong",
}


@dataclass(frozen=True)
class Case:
    id: str
    overrides: tuple[str, ...]
    checks: tuple[tuple[str, Check], ...]  # (what it is evidence of, check on the two metric rows)


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key, value


def _select(family: str, name: str) -> str:
    if family == "token_weights":
        return f"algorithm.token_weights=[{{name: {name}}}]"
    return f"algorithm.{family}={name}"


def _generated_cases() -> Iterator[Case]:
    names = {
        family: [n for n in known if (family, n) not in NOT_GENERATED] for family, known in FAMILIES.items()
    }
    for i in range(max(len(ns) for ns in names.values())):
        chosen = {family: ns[i % len(ns)] for family, ns in names.items()}
        settings = dict(_split(o) for o in GENERATED_BASE)
        owner: dict[str, tuple[str, str]] = {}
        for family, name in chosen.items():
            key, value = _split(_select(family, name))
            settings[key], owner[key] = value, (family, name)
        checks = []
        for entry in chosen.items():
            extra, check = EXTRA_OVERRIDES.get(entry, ([], None))
            for key, value in map(_split, extra):
                if owner.get(key, entry) != entry and settings[key] != value:
                    raise ValueError(
                        f"EXTRA_OVERRIDES: {entry} sets {key}={value} but {owner[key]} in the same generated "
                        f"run sets {key}={settings[key]}; reorder or give one of them its own case"
                    )
                settings[key], owner[key] = value, entry
            if check is not None:
                checks.append((f"{entry[0]} {entry[1]!r}", check))
        case_id = "+".join(
            f"{family.split('_')[0]}:{name}" if family.endswith("controller") else name
            for family, name in chosen.items()
        )
        yield Case(case_id, tuple(f"{k}={v}" for k, v in settings.items()), tuple(checks))


CASES = [
    *_generated_cases(),
    *(Case(name, tuple(o), ((name, check),)) for name, (o, check) in SPECIAL_CASES.items()),
]


def _entries_run_by(overrides: tuple[str, ...]) -> set[tuple[str, str]]:
    """The (family, name) entries a run with these overrides of the tiny recipe calls."""
    algo = load_recipe(TINY_RECIPE, list(overrides), check=False).algorithm  # parsed, nothing imported
    used = {
        ("advantage", algo.advantage),
        ("policy_loss", algo.policy_loss),
        ("loss_agg", algo.loss_agg),
        ("entropy_controller", algo.entropy_controller),
        *(("token_weights", w.name) for w in algo.token_weights),
    }
    if algo.kl_coef > 0:
        used |= {("kl_estimator", algo.kl_estimator), ("kl_controller", algo.kl_controller)}
    if algo.overlong.mask_truncated:  # the trainer adds this token weight itself
        used.add(("token_weights", "overlong_mask"))
    return used


def test_every_registry_entry_is_covered():
    known = {(family, name) for family, names in FAMILIES.items() for name in names}
    stale = sorted((set(EXTRA_OVERRIDES) | set(NOT_GENERATED)) - known)
    assert not stale, f"EXTRA_OVERRIDES / NOT_GENERATED name entries no registry has: {stale}"
    assert set(NOT_GENERATED.values()) <= set(SPECIAL_CASES), NOT_GENERATED
    covered = set().union(*(_entries_run_by(case.overrides) for case in CASES))
    missing = [f"{family} {name!r}" for family, name in sorted(known - covered)]
    assert not missing, (
        f"no case in {__file__} runs {', '.join(missing)}: give it overrides in EXTRA_OVERRIDES, or a "
        f"SPECIAL_CASES entry (and a NOT_GENERATED row) if it cannot share a generated run"
    )


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_plugins_run_through_the_loop(tmp_path, case):
    out = tmp_path / "run"
    base = [f"run.output_dir={out}", "run.steps=2", "run.save_final=false", "rollout.engine=hf"]
    run([sys.executable, "-m", "rlvr.train", str(TINY_RECIPE), *base, *case.overrides])
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert all(math.isfinite(v) for v in row.values()), row
        assert row["actor/grad_norm"] > 0
    recipe = load_recipe(TINY_RECIPE, list(case.overrides), check=False)
    if recipe.train.num_mini_batches > 1 or recipe.train.epochs > 1:
        # after the first optimizer step the ratio is no longer exactly one
        assert rows[-1]["actor/ratio_max"] != 1.0
    for what, check in case.checks:
        assert check(rows), f"no evidence that {what} ran: {rows}"
    advantage = recipe.algorithm.advantage
    if "baseline_rewards" not in needs_of(ADVANTAGES.get(advantage)):
        assert not any("reward/baseline_mean" in r for r in rows), f"{advantage} asks for no greedy baseline"
    assert not undocumented(set().union(*rows)), "add these metrics to docs/metrics.md"

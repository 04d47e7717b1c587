"""Preference training end to end: offline DPO on the tiny recipe learns held-out pairs, resumes exactly
and keeps 2 ZeRO-3 ranks identical; every loss runs; online pairs in the RL loop; recipe errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from launch import ROOT, TINY_RECIPE, accelerate, metrics, run, undocumented

DPO_RECIPE = ROOT / "recipes/tiny/dpo_tiny_say_digit.yaml"
SKIP = ("time",)  # "time" and "time/..." are wall-clock


def train(recipe, out, *overrides: str) -> list[dict]:
    run([sys.executable, "-m", "rlvr.train", str(recipe), f"run.output_dir={out}", *overrides])
    return metrics(out)


def refused(recipe, *overrides: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "rlvr.train", str(recipe), *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_offline_dpo_learns_held_out_pairs(tmp_path):
    rows = train(DPO_RECIPE, tmp_path / "run")
    accuracy = [
        (r["train/step"] if "train/step" in r else 0, r["eval/pairs/rewards/accuracy"])
        for r in rows
        if "eval/pairs/rewards/accuracy" in r
    ]
    # before training the policy is the reference: every margin is 0 and the accuracy 0; after 10 steps
    # still near chance, after 40 the held-out pairs are ranked right
    assert accuracy[0][0] == 10 and accuracy[0][1] <= 0.7
    assert accuracy[-1][0] == 40 and accuracy[-1][1] >= 0.9  # 40 held-out pairs
    assert rows[-1]["preference/rewards/margin"] > 1.0
    assert (tmp_path / "run/final/model.safetensors").exists()
    assert undocumented({k for r in rows for k in r}) == []


@pytest.mark.parametrize(
    ("loss", "overrides"),
    [
        ("simpo", []),
        ("orpo", []),
        ("ipo", []),
        ("rpo", []),
        ("inpo", []),
        ("kto", ["data.format=unpaired", "data.path=data/toy/say_digit_unpaired.jsonl", "eval.pairs=null"]),
        ("dpo", ["algorithm.preference.precompute_reference=true"]),
    ],
)
def test_every_loss_trains(tmp_path, loss, overrides):
    """Each loss runs end to end on the tiny model (its kwargs: defaults) and its training loss falls."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        DPO_RECIPE.read_text().replace("    loss_kwargs: {beta: 0.5}\n", "").replace("../../", f"{ROOT}/")
    )
    rows = train(
        recipe,
        tmp_path / "run",
        f"algorithm.preference.loss={loss}",
        "run.steps=12",
        "run.save_final=false",
        *overrides,
    )
    steps = [r for r in rows if "preference/loss" in r]
    assert len(steps) == 12
    first = sum(r["preference/loss"] for r in steps[:3])
    last = sum(r["preference/loss"] for r in steps[-3:])
    assert last < first, [r["preference/loss"] for r in steps]


def test_precomputed_reference_gives_the_same_run(tmp_path):
    a = train(DPO_RECIPE, tmp_path / "a", "run.steps=6", "run.save_final=false")
    b = train(
        DPO_RECIPE,
        tmp_path / "b",
        "run.steps=6",
        "run.save_final=false",
        "algorithm.preference.precompute_reference=true",
    )
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if not k.startswith(SKIP)} == pytest.approx(
            {k: v for k, v in y.items() if not k.startswith(SKIP)}, abs=1e-6
        )


@pytest.mark.parametrize("lora", [False, True])
def test_resumed_dpo_run_matches_uninterrupted(tmp_path, lora):
    fixed = ["run.save_every=2", "run.keep_last=1", "run.save_final=false", "eval.every=2"]
    if lora:  # the adapter and its optimizer state come back; the reference is the adapter-free model
        fixed += ["model.lora={r: 4, alpha: 8}", "train.lr=0.02"]
    whole = train(DPO_RECIPE, tmp_path / "whole", "run.steps=4", *fixed)
    train(DPO_RECIPE, tmp_path / "cut", "run.steps=2", *fixed)
    resumed = train(DPO_RECIPE, tmp_path / "cut", "run.steps=4", "run.resume=true", *fixed)
    assert len(resumed) == len(whole)
    for x, y in zip(whole[-2:], resumed[-2:], strict=True):
        assert {k: v for k, v in x.items() if not k.startswith(SKIP)} == {
            k: v for k, v in y.items() if not k.startswith(SKIP)
        }


@pytest.mark.distributed
def test_two_process_zero3_dpo_keeps_ranks_identical(tmp_path):
    out = tmp_path / "dump"
    script = str(ROOT / "tests/scripts/dist_step.py")
    run(
        accelerate(
            "recipes/accelerate/zero3.yaml",
            script,
            str(out),
            str(DPO_RECIPE),
            "run.steps=2",
            f"run.output_dir={tmp_path / 'run'}",
            "train.micro_batch_size=8",
            "eval.pairs=null",
        )
    )
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["after"] == ranks[1]["after"]
    assert all(ranks[0]["after"][n] != ranks[0]["before"][n] for n in ranks[0]["after"])
    assert ranks[0]["drawn"] == ranks[1]["drawn"]
    for key in ("preference/loss", "preference/rewards/accuracy", "preference/rewards/margin"):
        assert ranks[0]["steps"][-1][key] == ranks[1]["steps"][-1][key]


def test_online_preference_pairs_in_the_rl_loop(tmp_path):
    rows = train(
        TINY_RECIPE,
        tmp_path / "run",
        "rollout.engine=hf",
        "run.steps=3",
        "run.save_final=false",
        "algorithm.preference={loss: rpo, pairing: best_worst}",
    )
    for r in rows:
        assert r["pairs/count"] == r["pairs/groups_used"] <= 8  # best vs worst: one pair per used group
        assert r["pairs/groups_used"] + r["pairs/groups_dropped"] == 8
        assert "actor/loss" not in r and "preference/loss" in r
    assert undocumented({k for r in rows for k in r}) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.preference=null"], "data.format: 'pairs' rows train a preference loss"),
        (["algorithm.preference.loss=kto"], "data.format: 'kto' learns from unpaired"),
        (["algorithm.preference.loss=dpp"], "algorithm.preference.loss: unknown name 'dpp'"),
        (["algorithm.preference.loss_kwargs={betta: 1}"], "loss_kwargs.betta: unknown argument"),
        (["algorithm.kl_coef=0.1"], "algorithm.kl_coef: does not apply to preference training"),
        (["data.chosen_field=good"], "data.chosen_field: 'good' is not a column"),
        (["eval.pairs=nowhere.jsonl"], "eval.pairs: file not found"),
        (["sampler.name=learnability"], "sampler.name: offline preference rows have no pass rates"),
    ],
)
def test_recipe_errors(overrides, message):
    assert message in refused(DPO_RECIPE, *overrides)

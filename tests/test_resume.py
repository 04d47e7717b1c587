"""Exact resume: a run stopped after step 2 and resumed logs the same steps 3-4 as an uninterrupted run."""

import sys

from launch import TINY_RECIPE, metrics, run

# Compared to the step: everything but wall-clock timings.
SKIP = ("time", "time/", "perf/")


def train(out, *overrides: str) -> list[dict]:
    fixed = ["rollout.engine=hf", "run.save_every=2", "run.keep_last=1", "train.num_mini_batches=2"]
    run([sys.executable, "-m", "rlvr.train", str(TINY_RECIPE), f"run.output_dir={out}", *fixed, *overrides])
    return metrics(out)


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(SKIP)}


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    full = train(tmp_path / "full", "run.steps=4")
    first = train(tmp_path / "split", "run.steps=2")
    resumed = train(tmp_path / "split", "run.steps=4", "run.resume=true")
    assert [r["step"] for r in first] == [1, 2]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]  # appended to the same metrics.jsonl
    assert [comparable(r) for r in full[2:]] == [comparable(r) for r in resumed[-2:]]
    assert comparable(full[0]) == comparable(first[0])
    # the checkpoint of step 2 was replaced by step 4's (keep_last=1), and the final model exists
    checkpoints = sorted(p.name for p in (tmp_path / "split/checkpoints").iterdir())
    assert checkpoints == ["step-000004"]
    assert (tmp_path / "split/final/model.safetensors").is_file()

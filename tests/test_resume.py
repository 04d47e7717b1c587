"""Exact resume: a run stopped after step 2 and resumed logs the same steps 3-4 as an uninterrupted run."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/tiny/grpo_tiny_say_digit.yaml"
# Compared to the step: everything but wall-clock timings.
SKIP = ("time", "time/", "perf/")


def run(out: Path, *overrides: str) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "rlvr.train",
        str(RECIPE),
        f"run.output_dir={out}",
        "rollout.engine=hf",
        "run.save_every=2",
        "run.keep_last=1",
        "train.num_mini_batches=2",
        *overrides,
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(SKIP)}


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    full = run(tmp_path / "full", "run.steps=4")
    first = run(tmp_path / "split", "run.steps=2")
    resumed = run(tmp_path / "split", "run.steps=4", "run.resume=true")
    assert [r["step"] for r in first] == [1, 2]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]  # appended to the same metrics.jsonl
    assert [comparable(r) for r in full[2:]] == [comparable(r) for r in resumed[-2:]]
    assert comparable(full[0]) == comparable(first[0])
    # the checkpoint of step 2 was replaced by step 4's (keep_last=1), and the final model exists
    checkpoints = sorted(p.name for p in (tmp_path / "split/checkpoints").iterdir())
    assert checkpoints == ["step-000004"]
    assert (tmp_path / "split/final/model.safetensors").is_file()

"""scripts/gpu_check.py, the device check, run here on the CPU: the update under DeepSpeed ZeRO-2 (one
process) agrees with the plain update on the same seeded batch, and the timed run reports its speed."""

import json
import subprocess
import sys

import pytest
import torch
from launch import ROOT, accelerate, run

from rlvr.models import build_tiny_model


@pytest.mark.distributed
def test_gpu_check_zero2_update_matches_the_plain_update_on_cpu(tmp_path):
    script = str(ROOT / "scripts/gpu_check.py")
    # the reference from a model folder (--model), the DeepSpeed run from the same seeded weights (--size)
    model = build_tiny_model(tmp_path / "model", seed=0)
    # a small max_grad_norm makes both clip: each must record its gradient before clipping
    clip = "train.max_grad_norm=0.01"
    run([sys.executable, script, "run", str(tmp_path / "cpu"), "--model", str(model), clip])
    run(
        accelerate(
            "recipes/accelerate/zero2.yaml",
            script,
            "run",
            str(tmp_path / "ds"),
            "--size",
            "tiny",
            "--timed",
            "2",
            clip,
            num_processes=1,
        )
    )
    proc = run(
        [
            sys.executable,
            script,
            "compare",
            str(tmp_path / "cpu"),
            str(tmp_path / "ds"),
            "--tolerance",
            "1e-4",
        ]
    )
    result = json.loads((tmp_path / "ds/compare.json").read_text())
    assert result["agree"] and '"agree": true' in proc.stdout
    assert result["grad_norm_reference"] > 0.01 and result["grad_cosine"] > 0.9999  # clipping ran
    summary = json.loads((tmp_path / "ds/summary.json").read_text())
    assert summary["device"] == "cpu" and summary["update_tokens_per_s"] > 0
    assert 0 < summary["mfu_vs_measured_matmul"] < 1  # only tokens that were computed count
    assert len(summary["update_s_all"]) == 2


def test_gpu_check_compare_fails_on_a_different_gradient(tmp_path):
    for name, scale in (("a", 1.0), ("b", 1.1)):
        (tmp_path / name).mkdir()
        grads = {"w": torch.ones(3) * scale, "v": torch.arange(2.0)}
        torch.save({"loss": 0.5, "grads": grads}, tmp_path / name / "result.pt")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/gpu_check.py"),
            "compare",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert json.loads((tmp_path / "b/compare.json").read_text())["agree"] is False

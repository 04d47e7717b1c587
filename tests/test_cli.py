"""The command line: bad recipes stop with a clear message and exit code 2, before any model loads."""

import subprocess
import sys

from launch import ROOT, TINY_RECIPE


def rlvr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlvr.cli", *args], cwd=ROOT, capture_output=True, text=True)


def test_missing_recipe_file():
    proc = rlvr("train", "nope.yaml")
    assert proc.returncode == 2
    assert "recipe file not found: nope.yaml" in proc.stderr


def test_bad_override_names_key_and_recipe():
    proc = rlvr("train", str(TINY_RECIPE), "train.lr=fast")
    assert proc.returncode == 2
    assert "grpo_tiny_say_digit.yaml" in proc.stderr and "train.lr" in proc.stderr
    assert "Loading weights" not in proc.stdout + proc.stderr


def test_accelerate_form_prints_the_exact_launch_command():
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlvr.cli",
            "train",
            "missing.yaml",
            "--accelerate-config",
            "recipes/accelerate/zero2.yaml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    first = proc.stdout.splitlines()[0]
    assert first.endswith("launch --config_file recipes/accelerate/zero2.yaml -m rlvr.train missing.yaml")
    assert proc.returncode != 0  # accelerate ran rlvr.train, which rejected the missing recipe


def test_an_earlier_run_is_not_overwritten_by_accident(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints/keep-me").write_text("x")
    proc = rlvr("train", str(TINY_RECIPE), f"run.output_dir={tmp_path}", "rollout.engine=hf")
    assert proc.returncode == 2
    assert "already holds a run; pass run.resume=true" in proc.stderr
    assert (tmp_path / "checkpoints/keep-me").exists()

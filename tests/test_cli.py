"""The command line: bad recipes stop with a clear message and exit code 2, before any model loads."""

import os
import subprocess
import sys

from launch import ROOT, TINY_RECIPE


def rlvr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlvr.cli", *args], cwd=ROOT, capture_output=True, text=True)


def test_missing_recipe_file():
    proc = rlvr("train", "nope.yaml")
    assert proc.returncode == 2
    assert "recipe file not found: nope.yaml" in proc.stderr


def test_bad_override_names_the_override_and_key():
    proc = rlvr("train", str(TINY_RECIPE), "train.lr=fast")
    assert proc.returncode == 2
    # blamed on the command line, not on the recipe file
    assert (
        "error: <command line> override train.lr=fast: train.lr: Input should be a valid number"
        in proc.stderr
    )
    assert "Loading weights" not in proc.stdout + proc.stderr


def test_bad_data_file_stops_the_run_with_one_error_line(tmp_path, tiny_model_dir):
    """A data problem found once the trainer runs (after the recipe loaded, in build) still ends in one
    ``error:`` line naming the file and line, exit code 2, no traceback; the rows before it were fine."""
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "repeat 6", "answer": "6"}\n{"prompt": "repeat 7", "answer": 7\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    overrides = [f"data.path={data}", "data.invalid_rows=error", f"model.name_or_path={tiny_model_dir}"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlvr.train",
            str(TINY_RECIPE),
            f"run.output_dir={tmp_path / 'run'}",
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    expected = f"{data}: line 2: not valid JSON (Expecting ',' delimiter at column 35)"
    assert errors == [f"error: {expected} (data.invalid_rows: error)"], proc.stderr[-3000:]


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

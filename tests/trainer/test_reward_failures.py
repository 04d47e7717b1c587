"""Verifier failures in a real training run: counted by kind, one example of each kind printed, a warning
above rewards.max_failure_frac, and a verifier failing on every sample of a step stops the run (exit 2)."""

from __future__ import annotations

import math
import os
import subprocess

from launch import ROOT, metrics, tiny_train, undocumented

FIXTURE = ROOT / "tests/fixtures/custom_verifier.py"


def test_failures_by_kind_then_a_broken_verifier_stops_the_run(tmp_path):
    """Step 1: 16 calls in one worker; calls 1, 4, ..., 16 raise, 2, 5, ..., 14 return NaN, 5 score. Step 2:
    the verifier is broken (every call raises), so the run stops with exit code 2 naming it. One run for
    both, to keep the suite fast."""
    out = tmp_path / "run"
    spec = f"{FIXTURE}:every_third_fails"
    cmd = tiny_train(
        out,
        "train.prompts_per_step=4",
        "rollout.num_generations=4",
        "rewards.num_workers=1",
        f"rewards.verifiers=[{{name: '{spec}', kwargs: {{broken_after: 16}}}}]",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]

    (row,) = metrics(out)  # step 1 was logged; step 2 stopped before its update
    assert row["reward/failures"] == 11.0
    assert row["reward/failures/exception"] == 6.0
    assert row["reward/failures/bad_value"] == 5.0
    assert row["reward/failures/timeout"] == 0.0 and row["reward/failures/exit"] == 0.0
    assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))  # NaN scores did not leak
    assert not undocumented(row)

    log = proc.stderr
    # one example of each kind, the first time it appears in the run (not again in step 2)
    assert log.count("the first exception failure") == 1
    assert "failed (exception, scored 0; the first exception failure" in log
    assert "raised RuntimeError: call 1 fails on purpose" in log
    assert log.count("the first bad_value failure") == 1
    assert "returned non-finite score nan" in log
    assert (
        "verifier every_third_fails (" in log
        and "failed on 11 of 16 calls in step 1 (first: exception: " in log
    )
    assert "more than rewards.max_failure_frac=0.5" in log

    (error,) = [line for line in log.splitlines() if line.startswith("error: ")]
    assert error.startswith(
        f"error: verifier every_third_fails ({spec}) failed on 16 of 16 calls in step 2"
    ), error
    assert "(first: exception: raised RuntimeError: broken since call 17): every call failed" in error

"""Training in ``rollout.mode: server``: a 2-process ZeRO-3 trainer and a vLLM rollout server it starts
learn the tiny task, asynchronously; a server that dies mid-run stops the run with an error naming it."""

import os
import subprocess
import sys
import time

import pytest
from launch import ROOT, TINY_RECIPE, accelerate, free_port, metrics, run, tiny_train


@pytest.mark.vllm
@pytest.mark.distributed
def test_tiny_model_learns_asynchronously_with_a_rollout_server_and_zero3(tmp_path):
    """The trainer's main process starts one vLLM server; every step both processes send it their
    prompts and, under ZeRO-3, gather the policy layer by layer for the broadcast that main sends.
    Generation runs one step ahead (train.async_steps=1) with the TIS correction, and the task is learned.
    At this recipe's high learning rate, samples one update old slow learning down and make the run
    chaotic (whether a batch leaves before or after a sync changes the trajectory), so the run has 40
    steps, not 30: over 4 seeds the mean reward of steps 31-40 was 0.12-0.14 (threshold ~0.06), while
    steps 21-30 ranged over 0.05-0.13. The synchronous server run reaches 0.14 by step 30."""
    out = tmp_path / "run"
    cmd = accelerate("recipes/accelerate/zero3.yaml", "-m", "rlvr.train", str(TINY_RECIPE))
    overrides = ["rollout.mode=server", "train.async_steps=1", "algorithm.token_weights=[{name: tis}]"]
    proc = run([*cmd, f"run.output_dir={out}", "run.steps=40", *overrides], timeout=900)
    assert "engine vllm on 1 rollout server" in proc.stdout
    rows = metrics(out)
    rewards = [r["reward/mean"] for r in rows]
    assert len(rewards) == 40
    first, last = sum(rewards[:5]) / 5, sum(rewards[-10:]) / 10
    assert first < 0.03, rewards  # as with the colocated engine (test_e2e_learning)
    assert last > first + 0.05 and last > 3 * first, rewards
    assert rows[-1]["actor/entropy"] < rows[0]["actor/entropy"] - 1.0  # the server sampled the new policy
    assert all(r["time/sync_s"] > 0 for r in rows)
    # step 1 was sampled with the initial weights it trains; later steps up to one update behind, and
    # mostly one behind (generation overlaps the update; a batch whose request leaves after the sync
    # began gets the new weights)
    staleness = [r["async/staleness"] for r in rows]
    assert staleness[0] == 0.0 and all(0.0 <= s <= 1.0 for s in staleness), staleness
    assert sum(staleness[1:]) / 39 > 0.5, staleness
    assert "rollout server ready" in (out / "logs/rollout-server-0.log").read_text()


def test_a_server_dying_mid_run_stops_the_run_naming_it(tmp_path):
    """A server started apart from the trainer (`rollout.servers`) is killed after the first step: the
    trainer exits with code 1 within seconds, and its error names the server; no traceback."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "rlvr.cli", "rollout-server", str(TINY_RECIPE), "rollout.engine=hf",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    out = tmp_path / "run"
    trainer = None
    try:
        cmd = tiny_train(out, "rollout.mode=server", f"rollout.servers=[http://127.0.0.1:{port}]", steps=30)
        trainer = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 300
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
            assert trainer.poll() is None, trainer.communicate()
            assert time.monotonic() < deadline, "no step within 300 s"
            time.sleep(0.2)
        server.kill()
        stdout, stderr = trainer.communicate(timeout=120)
    finally:
        server.kill()
        if trainer is not None and trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 1, stdout[-2000:] + stderr[-4000:]
    assert f"error: rollout server 0 at http://127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr
    assert len(metrics(out)) < 30


def test_async_steps_bound_the_staleness(tmp_path):
    """Two steps ahead with the transformers engine on a server: a step's samples are 0 to 2 weight
    syncs old, the bound is reached, and the run ends cleanly with its rollouts queued no further than
    its last step."""
    out = tmp_path / "run"
    run(tiny_train(out, "rollout.mode=server", "train.async_steps=2", steps=6))
    rows = metrics(out)
    staleness = [r["async/staleness"] for r in rows]
    assert len(rows) == 6 and staleness[0] == 0.0
    assert all(0.0 <= s <= 2.0 for s in staleness) and max(staleness) > 1.0, staleness
    assert all(r["time/rollout_wait_s"] >= 0 for r in rows)


def test_async_steps_need_a_rollout_server(tmp_path):
    proc = subprocess.run(
        tiny_train(tmp_path / "run", "train.async_steps=1"), cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "train.async_steps" in proc.stderr and "rollout.mode: server" in proc.stderr

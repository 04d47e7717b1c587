"""Running rlvr the way a user does, in a subprocess: ``python -m rlvr.train`` or ``accelerate launch``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "recipes/tiny/grpo_tiny_say_digit.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate(config: str, *args: str, num_processes: int | None = None) -> list[str]:
    """``accelerate launch --config_file CONFIG [...] ARGS`` on a free port."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / config)]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    return [*cmd, "--main_process_port", str(free_port()), *args]


def tiny_train(out: Path, *overrides: str, steps: int = 2) -> list[str]:
    """``python -m rlvr.train`` of the tiny recipe into ``out``: ``steps`` steps, the transformers engine, no
    final model, then ``overrides``."""
    return [
        sys.executable,
        "-m",
        "rlvr.train",
        str(TINY_RECIPE),
        f"run.output_dir={out}",
        f"run.steps={steps}",
        "run.save_final=false",
        "rollout.engine=hf",
        *overrides,
    ]


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root; fail the test with the end of its output if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def undocumented(keys) -> list[str]:
    """Metric names missing from docs/metrics.md (``<name>`` there matches any one path segment)."""
    table = [
        line.split("|")[1]
        for line in (ROOT / "docs/metrics.md").read_text().splitlines()
        if line.startswith("| `")
    ]
    patterns = [
        re.compile(
            "^" + re.sub(r"<[a-z]+>", "[^/]+", re.escape(name).replace("\\<", "<").replace("\\>", ">")) + "$"
        )
        for cell in table
        for name in re.findall(r"`([^`]+)`", cell)
    ]
    return sorted(k for k in keys if not any(p.match(k) for p in patterns))

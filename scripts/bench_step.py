"""Median training step and its phases at the performance anchor's configuration, on this machine.

    python scripts/bench_step.py [--steps 6] [--recipe recipes/bench/grpo_anchor_smollm2.yaml] \
        [--set key=value ...] [--label NAME] [--accelerate-config recipes/accelerate/zero2.yaml]
    python scripts/bench_step.py --make-data     # (re)writes data/anchor/prompts.jsonl

Trains ``--steps`` steps of the recipe in a fresh process (``python -m rlvr.train``) on the anchor's
prompts (``data/anchor/prompts.jsonl``: 2000 x "What is a + b?" / "What is a - b?" with 2-digit a, b,
seed 0, written by ``--make-data``) and reports, over the steps after the first (warm-up):

* the median step and its phases (rollout, reward, update, weight sync), generated tokens per step and the
  engine's tokens/s;
* the update's compute floor: 6 x parameters x real tokens (prompt + response, no padding:
  ``perf/update_tokens``) at this machine's bf16 (or fp32) matmul peak, measured here first, and the
  ratio median update / floor;
* the share of rows the update skipped (``train.skip_zero_advantage``: all advantages 0) and the update
  against the floor of the rows it ran (``perf/update_tokens_run``);
* the sync's share of the step, and the peak resident memory of the run's largest process.

Prints one markdown table row; results go in docs/benchmarks.md with this command.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rlvr.console import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = ROOT / "recipes/bench/grpo_anchor_smollm2.yaml"
ANCHOR_DATA = ROOT / "data/anchor/prompts.jsonl"

_WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], capture_output=True).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)
"""Runs the command given to it and prints the peak RSS (KiB) of its largest descendant."""


def anchor_prompts(path: Path, n: int = 2000, seed: int = 0) -> Path:
    """The anchor's prompts: 2-digit addition and subtraction, seeded."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(n):
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            op = rng.choice("+-")
            answer = a + b if op == "+" else a - b
            f.write(json.dumps({"question": f"What is {a} {op} {b}?", "answer": str(answer)}) + "\n")
    return path


def measure_run(
    recipe: str | Path, steps: int, overrides: list[str], accelerate_config: str | None = None
) -> tuple[list[dict], float]:
    """Train ``steps`` steps of ``recipe`` (no checkpoints, no final model, no evaluation) in a fresh process
    into a temporary folder (one process under ``accelerate launch`` with ``accelerate_config``); returns
    its metrics rows and the peak RSS (GB) of its largest process (the trainer, or vLLM's engine
    process)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable]
        if accelerate_config:
            launch = ["-m", "accelerate.commands.launch", "--config_file", accelerate_config]
            cmd += [*launch, "--num_processes", "1"]
        cmd += ["-m", "rlvr.train", str(recipe), f"run.output_dir={tmp}/run", f"run.steps={steps}"]
        cmd += ["run.save_every=0", "run.save_final=false", "eval.every=0", *overrides]
        # a fresh wrapper process per run, so that its children's peak is this run's alone
        wrapper = [sys.executable, "-c", _WRAPPER, *cmd]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(wrapper, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            log = Path(tmp, "run/logs/train.log")
            tail = log.read_text()[-3000:] if log.is_file() else proc.stderr[-3000:]
            raise SystemExit(f"{' '.join(cmd)} failed:\n{tail}")
        peak_kb = int(proc.stdout.strip().splitlines()[-1])
        rows = read_metrics(Path(tmp, "run/metrics.jsonl"))
    return rows, peak_kb / 1024**2


def matmul_peak_gflops(dtype_name: str, size: int = 2048, repeats: int = 10) -> float:
    """This machine's matmul throughput (best of ``repeats``) in ``dtype_name``, with torch's threads."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def num_parameters(model: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlvr.models import resolve_model

    path = resolve_model(model)
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return sum(p.numel() for p in net.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=str(ANCHOR))
    parser.add_argument("--steps", type=int, default=6, help="steps to run; the first is warm-up")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", default="rlvr", help="the row's name in the table")
    parser.add_argument(
        "--accelerate-config", help="run one process under accelerate launch with this config (DeepSpeed)"
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="for the parameter count")
    parser.add_argument("--dtype", default="bfloat16", help="the update's compute dtype, for the peak")
    parser.add_argument("--make-data", action="store_true", help=f"write {ANCHOR_DATA.relative_to(ROOT)}")
    args = parser.parse_args()
    if args.make_data:
        print(anchor_prompts(ANCHOR_DATA))
        return

    peak = matmul_peak_gflops(args.dtype)
    params = num_parameters(args.model)
    rows, rss_gb = measure_run(args.recipe, args.steps, args.overrides, args.accelerate_config)
    # the better of a measurement before and one after the run: a process still exiting (the last run's
    # engine) can hold a core during one of them
    peak = max(peak, matmul_peak_gflops(args.dtype))
    later = rows[1:] or rows
    med = lambda key: statistics.median(r[key] for r in later)  # noqa: E731
    step, update, sync = med("time/step_s"), med("time/update_s"), med("time/sync_s")
    floor = None  # rlvr before perf/update_tokens existed: no floor
    if "perf/update_tokens" in later[0]:
        floor = 6 * params * med("perf/update_tokens") / (peak * 1e9)
    skipped = run_floor = None  # rlvr before train.skip_zero_advantage: every row ran
    if "perf/skipped_rows_frac" in later[0]:
        skipped = med("perf/skipped_rows_frac")
        run_floor = 6 * params * med("perf/update_tokens_run") / (peak * 1e9)
    generated = statistics.median(r["perf/rollout_tokens_per_s"] * r["time/rollout_s"] for r in later)
    print(
        f"# {args.recipe} {' '.join(args.overrides)}: {len(later)} measured steps after 1 warm-up; "
        f"{params / 1e6:.1f}M parameters; {args.dtype} matmul peak {peak:.0f} GFLOP/s"
    )
    print(
        "| run | median step | rollout | reward | update | sync | generated tokens/step | rollout tok/s "
        "| update floor | update / floor | rows skipped | update / floor of the rows run | sync / step "
        "| peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.label} | {step:.1f} s | {med('time/rollout_s'):.1f} s | {med('time/reward_s'):.2f} s "
        f"| {update:.1f} s | {sync:.2f} s | {generated:.0f} | {med('perf/rollout_tokens_per_s'):.0f} "
        + (f"| {floor:.1f} s | {update / floor:.2f}x " if floor else "| - | - ")
        + (f"| {100 * skipped:.0f}% | {update / run_floor:.2f}x " if run_floor else "| - | - ")
        + f"| {100 * sync / step:.1f}% | {rss_gb:.2f} GB |"
    )


if __name__ == "__main__":
    main()

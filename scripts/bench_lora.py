"""Step time and peak memory of a recipe with and without LoRA, one run after the other on this machine.

    python scripts/bench_lora.py recipes/preference/dpo_smollm2_arithmetic_pairs.yaml --steps 10 \
        --lora "{r: 16, alpha: 32}" [--set key=value ...]

Each configuration trains ``--steps`` steps of the recipe in a fresh process (``python -m rlvr.train``, no
checkpoints, no final model, no evaluation) into a temporary folder. Reported per configuration: the median
``time/step_s`` over the steps after the first (the first includes warm-up), the median update time, and
the peak resident memory of the largest process of the run (``ru_maxrss`` of its descendants: the
trainer, or vLLM's engine process when the recipe has one). Prints a markdown table; results go in
docs/benchmarks.md with this command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


_WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], capture_output=True).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)
"""Runs the command given to it and prints the peak RSS (KiB) of its largest descendant."""


def measure(recipe: str, steps: int, overrides: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "rlvr.train", recipe, f"run.output_dir={tmp}/run", f"run.steps={steps}"]
        cmd += ["run.save_every=0", "run.save_final=false", "eval.every=0", *overrides]
        # a fresh wrapper process per run, so that its children's peak is this run's alone
        wrapper = [sys.executable, "-c", _WRAPPER, *cmd]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(wrapper, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        peak_kb = int(proc.stdout.strip().splitlines()[-1])
        rows = [json.loads(line) for line in Path(tmp, "run/metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    return {
        "step_s": statistics.median(r["time/step_s"] for r in later),
        "update_s": statistics.median(r["time/update_s"] for r in later),
        "peak_rss_gb": peak_kb / 1024**2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lora", default="{r: 16, alpha: 32}", help="the model.lora value (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    lora = measure(args.recipe, args.steps, [f"model.lora={args.lora}", *args.overrides])
    full = measure(args.recipe, args.steps, args.overrides)
    print(f"| {args.recipe}, {args.steps} steps | median step | median update | peak RSS |")
    print("|---|---|---|---|")
    for name, m in (("full fine-tuning", full), (f"LoRA {args.lora}", lora)):
        print(f"| {name} | {m['step_s']:.2f} s | {m['update_s']:.2f} s | {m['peak_rss_gb']:.2f} GB |")
    ratios = [lora[k] / full[k] for k in ("step_s", "update_s", "peak_rss_gb")]
    print("| LoRA / full | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")


if __name__ == "__main__":
    main()

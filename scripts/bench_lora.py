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
import statistics

from bench_step import measure_run


def measure(recipe: str, steps: int, overrides: list[str]) -> dict[str, float]:
    rows, peak_gb = measure_run(recipe, steps, overrides)
    later = rows[1:] or rows
    return {
        "step_s": statistics.median(r["time/step_s"] for r in later),
        "update_s": statistics.median(r["time/update_s"] for r in later),
        "peak_rss_gb": peak_gb,
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

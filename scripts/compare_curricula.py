"""Compare prompt samplers on one recipe: train with each (sampler, seed), then report held-out accuracy
against generated tokens, zero-variance groups and wall time (the measurement in docs/curriculum.md).

    python scripts/compare_curricula.py run recipes/curriculum/learnability_arithmetic_levels.yaml \
        --samplers random,learnability --seeds 0,1 --out runs/compare [--set key=value ...]
    python scripts/compare_curricula.py report runs/compare        # markdown tables + accuracy_vs_tokens.png

``run`` first evaluates the recipe's model itself into ``OUT/base/eval`` (the starting point), then trains
``OUT/<sampler>-s<seed>`` one after another (skipping runs that already finished), each with the recipe's
settings and ``sampler.name=<sampler>`` (so the recipe must not set ``sampler.kwargs``: they belong to one
sampler), then evaluates its final model with ``rlvr eval`` on the recipe's eval benchmarks (greedy,
per-difficulty breakdown) into ``OUT/<run>/eval`` (the first benchmark is reported). ``--set key=value``
overrides go to every run.

``report`` reads every run's ``metrics.jsonl`` (held-out accuracy during training from ``eval.every``,
generated tokens per step = response/length_mean x samples) and ``eval/<benchmark>/summary.json``, and prints:
per run, the tokens generated, the final held-out accuracy per difficulty level, the mean fraction of
zero-variance groups and the wall time; per sampler, the tokens it needed to reach the uniform sampler's
final held-out accuracy (mean over seeds), as a fraction of uniform's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "random"


def _run(args: argparse.Namespace) -> None:
    recipe = yaml.safe_load(Path(args.recipe).read_text())
    own = (recipe.get("sampler") or {}).get("name", BASELINE)
    benchmarks = (recipe.get("eval") or {}).get("benchmarks", [])
    out = Path(args.out)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not list(out.glob("base/eval/*/summary.json")):  # the starting point: the recipe's model itself
        model = recipe["model"]["name_or_path"]
        evaluate = [sys.executable, "-m", "rlvr.cli", "eval", model, "--benchmarks", ",".join(benchmarks)]
        evaluate += ["--out", str(out / "base" / "eval")]
        print("+", " ".join(evaluate), flush=True)
        with (out / "base.eval.log").open("w") as log:
            subprocess.run(evaluate, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for sampler in args.samplers.split(","):
            run_dir = out / f"{sampler}-s{seed}"
            if list(run_dir.glob("eval/*/summary.json")):
                print(f"{run_dir}: done, skipped", flush=True)
                continue
            overrides = [f"run.output_dir={run_dir}", f"run.seed={seed}", f"sampler.name={sampler}"]
            if sampler != own and (recipe.get("sampler") or {}).get("kwargs"):
                raise SystemExit(
                    f"{args.recipe}: sampler.kwargs are {own}'s; overrides merge into them, so compare "
                    "samplers on a recipe without sampler.kwargs"
                )
            start = time.time()
            train = [sys.executable, "-m", "rlvr.train", args.recipe, *overrides, *args.overrides]
            print("+", " ".join(train), flush=True)
            with (out / f"{sampler}-s{seed}.log").open("w") as log:
                subprocess.run(train, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
            (run_dir / "wall_s.txt").write_text(f"{time.time() - start:.1f}\n")
            evaluate = [sys.executable, "-m", "rlvr.cli", "eval", str(run_dir), "--benchmarks"]
            evaluate += [",".join(benchmarks), "--out", str(run_dir / "eval")]
            print("+", " ".join(evaluate), flush=True)
            with (out / f"{sampler}-s{seed}.eval.log").open("w") as log:
                subprocess.run(evaluate, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)


def _load(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    samples = recipe["train"]["prompts_per_step"] * recipe["rollout"]["num_generations"]
    tokens, total = [], 0.0
    for row in rows:
        total += row["response/length_mean"] * samples
        tokens.append(total)
    (summary_file,) = sorted(run_dir.glob("eval/*/summary.json"))[:1]
    results = json.loads(summary_file.read_text())
    wall = run_dir / "wall_s.txt"
    return {
        "rows": rows,
        "tokens": tokens,
        "results": results,
        "wall_s": float(wall.read_text()) if wall.is_file() else sum(r["time/step_s"] for r in rows),
    }


def _accuracy_curve(run: dict) -> list[tuple[float, float]]:
    """(tokens generated so far, held-out pass@1) at every evaluation during training (and before it, when
    the base model was evaluated)."""
    first = [(0.0, run["start"])] if run.get("start") is not None else []
    return first + [
        (tokens, row[key])
        for row, tokens in zip(run["rows"], run["tokens"], strict=True)
        for key in row
        if key.startswith("eval/") and key.endswith("/pass@1") and key.count("/") == 2
    ]


def _tokens_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((tokens for tokens, acc in curve if acc >= target - 1e-9), None)


def _report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    runs = {
        d.name: _load(d)
        for d in sorted(out.iterdir())
        if d.is_dir() and d.name != "base" and list(d.glob("eval/*/summary.json"))
    }
    base = sorted(out.glob("base/eval/*/summary.json"))
    start = json.loads(base[0].read_text())["metrics"]["pass@1"]["value"] if base else None
    if start is not None:
        print(f"the model before training: held-out pass@1 {start:.1%}\n")
        for run in runs.values():
            run["start"] = start
    if not runs:
        raise SystemExit(f"{out}: no finished runs")
    print("| run | tokens | held-out pass@1 | by difficulty | zero-variance groups | wall |")
    print("|---|---|---|---|---|---|")
    for name, run in runs.items():
        summary = run["results"]
        accuracy = summary["metrics"]["pass@1"]["value"]
        levels = next(iter(summary.get("breakdown", {}).values()), {})
        by_level = ", ".join(f"{v}: {p['metrics']['pass@1']['value']:.1%}" for v, p in levels.items())
        zero_var = sum(r["curriculum/zero_variance_frac"] for r in run["rows"]) / len(run["rows"])
        print(
            f"| {name} | {run['tokens'][-1]:,.0f} | {accuracy:.1%} | {by_level} | {zero_var:.2f} | "
            f"{run['wall_s'] / 60:.1f} min |"
        )
    by_sampler: dict[str, list[dict]] = {}
    for name, run in runs.items():
        by_sampler.setdefault(name.rsplit("-s", 1)[0], []).append(run)
    if BASELINE not in by_sampler:
        return
    base_curves = [_accuracy_curve(r) for r in by_sampler[BASELINE]]
    target = sum(c[-1][1] for c in base_curves) / len(base_curves)
    base_tokens = sum(c[-1][0] for c in base_curves) / len(base_curves)
    print(f"\nuniform's final held-out pass@1 during training (mean over seeds): {target:.1%}\n")
    print("| sampler | tokens to reach it (per seed) | fraction of uniform's tokens |")
    print("|---|---|---|")
    for sampler, sampler_runs in by_sampler.items():
        reached = [_tokens_to_reach(_accuracy_curve(r), target) for r in sampler_runs]
        shown = ", ".join("not reached" if t is None else f"{t:,.0f}" for t in reached)
        frac = (
            f"{sum(reached) / len(reached) / base_tokens:.2f}" if all(t is not None for t in reached) else "-"
        )
        print(f"| {sampler} | {shown} | {frac} |")
    _plot(runs, out / "accuracy_vs_tokens.png")


def _plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        curve = _accuracy_curve(run)
        ax.plot([t for t, _ in curve], [a for _, a in curve], marker="o", label=name)
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("held-out pass@1 (greedy)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate every (sampler, seed)")
    run.add_argument("recipe")
    run.add_argument("--samplers", default="random,learnability")
    run.add_argument("--seeds", default="0,1")
    run.add_argument("--out", default="runs/compare")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe override for every run (repeatable)",
    )
    report = sub.add_parser("report", help="tables and a plot from finished runs")
    report.add_argument("out")
    args = parser.parse_args()
    if args.command == "run":
        Path(args.out).mkdir(parents=True, exist_ok=True)
        _run(args)
    else:
        _report(args)


if __name__ == "__main__":
    main()

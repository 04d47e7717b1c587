"""The ``rlvr`` command.

    rlvr train RECIPE.yaml [key=value ...] [--accelerate-config recipes/accelerate/zero2.yaml]
    rlvr eval MODEL --benchmarks gsm8k,math500 [--limit 50] [--n 4] [--k 1,2,4] [--out results/x]
    rlvr eval --compare RESULTS_A RESULTS_B
    rlvr eval --compare A_SEED0,A_SEED1,A_SEED2 B_SEED0,B_SEED1,B_SEED2
    rlvr plot RUN_DIR [RUN_DIR ...] [--out DIR]
    rlvr rollout-server RECIPE.yaml [key=value ...] [--host 0.0.0.0] [--port 8100]

Without ``--accelerate-config`` the recipe runs in this process (one CPU or one GPU, no launcher).
With it, the command is exactly
``accelerate launch --config_file CONFIG -m rlvr.train RECIPE.yaml [key=value ...]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys


def _train(args: argparse.Namespace) -> int:
    if args.accelerate_config:
        launcher = shutil.which("accelerate")
        prefix = [launcher] if launcher else [sys.executable, "-m", "accelerate.commands.launch"]
        if launcher:
            prefix.append("launch")
        command = [
            *prefix,
            "--config_file",
            args.accelerate_config,
            "-m",
            "rlvr.train",
            args.recipe,
            *args.overrides,
        ]
        print("+ " + " ".join(command), flush=True)
        os.execv(command[0], command)
    from rlvr.train import main

    return main([args.recipe, *args.overrides])


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _eval(args: argparse.Namespace) -> int:
    import logging

    from rlvr.config import RecipeError
    from rlvr.eval.runner import EvalError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.compare:
            from rlvr.eval.report import compare, compare_runs

            a, b = ([p.strip() for p in side.split(",") if p.strip()] for side in args.compare)
            if len(a) == len(b) == 1:
                text, _ = compare(a[0], b[0], confidence=args.confidence)
            elif len(a) != len(b) or not a:
                print(
                    f"error: --compare pairs results folders by position: A lists {len(a)}, B {len(b)}",
                    file=sys.stderr,
                )
                return 2
            else:
                text, _ = compare_runs(a, b, confidence=args.confidence)
            print(text)
            return 0
        if not args.model:
            print("error: give a MODEL to evaluate (or --compare A B)", file=sys.stderr)
            return 2
        from rlvr.eval.runner import run_eval

        run_eval(
            args.model,
            [b.strip() for b in args.benchmarks.split(",") if b.strip()],
            out=args.out,
            limit=args.limit,
            n=args.n,
            ks=args.k,
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            greedy=args.greedy,
            seed=args.seed,
            engine=args.engine,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            kv_cache_gb=args.kv_cache_gb,
            gpu_memory_utilization=args.gpu_memory_utilization,
            chunk_size=args.chunk_size,
            num_workers=args.workers,
            overrides=args.set,
            overwrite=args.overwrite,
            confidence=args.confidence,
            verbose=args.verbose,
        )
    except (RecipeError, EvalError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _plot(args: argparse.Namespace) -> int:
    from rlvr.plots import PlotError, write_plots

    out = args.out or (os.path.join(args.runs[0], "plots") if len(args.runs) == 1 else "plots")
    try:
        written = write_plots(args.runs, out)
    except PlotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def _rollout_server(args: argparse.Namespace) -> int:
    import logging

    import torch

    from rlvr.config import RecipeError, load_recipe
    from rlvr.models import resolve_model
    from rlvr.rollout.server import serve
    from rlvr.trainer.setup import bf16_is_native, engine_options, resolve_auto_precision

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        # a server's engine has its device to itself (no sleep mode, weights by broadcast), as in server mode
        recipe = load_recipe(args.recipe, [*args.overrides, "rollout.mode=server"])
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = resolve_auto_precision(recipe, bf16_is_native())  # on the server's own machine
    if chosen:
        logging.getLogger("rlvr.rollout.server").info(chosen)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_path = str(resolve_model(recipe.model.name_or_path))
    serve(recipe.rollout.engine, model_path, engine_options(recipe, device), args.host, args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlvr", description="RL from verifiable rewards for LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a training recipe")
    train.add_argument("recipe", help="recipe YAML file")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides")
    train.add_argument("--accelerate-config", help="launch through accelerate with this config file")
    train.set_defaults(func=_train)

    ev = sub.add_parser(
        "eval",
        help="evaluate a model on benchmarks, or compare two results folders",
        description="Evaluate a model (HF folder, run directory, checkpoint, alias or hub id) on benchmarks "
        "(shipped names: gsm8k, math500, minerva_math, aime24, amc23, humaneval, mbpp, arithmetic; "
        "or spec YAML files). "
        "Rerunning the same command resumes an interrupted evaluation. See docs/evaluation.md.",
    )
    ev.add_argument(
        "model", nargs="?", help="model folder, run directory, checkpoints/step-N, alias or hub id"
    )
    ev.add_argument("--benchmarks", "-b", default="gsm8k", help="comma-separated names or spec files")
    ev.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="compare two results folders, or two comma-separated lists of them paired by position "
        "(one per training seed): adds the mean difference over the pairs with a t interval",
    )
    ev.add_argument("--out", "-o", help="results folder (default: results/<model name>)")
    ev.add_argument("--limit", type=int, help="only the first N rows of each benchmark")
    ev.add_argument("--n", type=int, help="samples per problem (default: the spec's)")
    ev.add_argument("--k", type=_int_list, help="k values for pass@k / maj@k, e.g. 1,2,4 (default: 1,2,4..n)")
    ev.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    ev.add_argument("--top-p", type=float)
    ev.add_argument("--max-tokens", type=int, help="maximum new tokens per sample")
    ev.add_argument("--greedy", action="store_true", help="greedy decoding, one sample per problem")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--engine", default="vllm", help="rollout engine: vllm (default) or hf")
    ev.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="engine weights dtype"
    )
    ev.add_argument("--max-model-len", type=int, help="engine context length (default: from the model)")
    ev.add_argument("--kv-cache-gb", type=float, default=1.0, help="CPU vLLM: KV-cache size")
    ev.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="GPU vLLM: memory fraction")
    ev.add_argument("--chunk-size", type=int, help="problems per engine call (default: ~256 sequences)")
    ev.add_argument("--workers", type=int, default=2, help="verifier worker processes (0: inline)")
    ev.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key for every "
        "benchmark, e.g. --set system_prompt='You are a careful solver.' (repeatable)",
    )
    ev.add_argument("--overwrite", action="store_true", help="discard earlier samples in the results folder")
    ev.add_argument("--confidence", type=float, default=0.95, help="bootstrap confidence level")
    ev.add_argument(
        "--verbose", action="store_true", help="show the engine's output (default: OUT/logs/eval.log)"
    )
    ev.set_defaults(func=_eval)

    plot = sub.add_parser(
        "plot",
        help="draw training curves of one or several runs",
        description="PNG training curves (reward, accuracy, length, entropy/KL, clipping, losses, time per "
        "phase, evaluation) from each run's metrics.jsonl, several runs overlaid in every panel.",
    )
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (holding metrics.jsonl)")
    plot.add_argument(
        "--out", "-o", help="folder for the PNGs (default: RUN_DIR/plots for one run, plots/ for several)"
    )
    plot.set_defaults(func=_plot)

    server = sub.add_parser(
        "rollout-server",
        help="serve a recipe's rollout engine to trainers (rollout.mode: server)",
        description="Start the recipe's rollout engine (rollout.engine, with the recipe's engine settings) "
        "and answer a trainer whose recipe sets rollout.mode: server and lists this server's URL in "
        "rollout.servers. New weights arrive over a torch.distributed group. See docs/scaling.md.",
    )
    server.add_argument("recipe", help="recipe YAML file (the trainer's)")
    server.add_argument("overrides", nargs="*", help="section.key=value overrides")
    server.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    server.add_argument("--port", type=int, default=8100)
    server.set_defaults(func=_rollout_server)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""The ``rlvr`` command.

    rlvr train RECIPE.yaml [key=value ...] [--accelerate-config recipes/accelerate/zero2.yaml]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlvr", description="RL from verifiable rewards for LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a training recipe")
    train.add_argument("recipe", help="recipe YAML file")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides")
    train.add_argument("--accelerate-config", help="launch through accelerate with this config file")
    train.set_defaults(func=_train)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""Does ``torch.compile`` speed up the update's forward + backward? One micro-batch, eager vs compiled.

    python scripts/bench_compile.py [--mode eager|static|dynamic] [--rows 16] [--prompt 40] [--response 128]

The model is the quickstart's (SmolLM2-135M-Instruct, float32 weights under bf16 autocast, as the update
runs it); the loss is the mean response log-probability from :class:`rlvr.trainer.logprobs.TokenStats`.
Prints the first call (compilation included) and the median of 3 more.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlvr.models import resolve_model  # noqa: E402
from rlvr.trainer.logprobs import TokenStats  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["eager", "static", "dynamic"], default="eager")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=40)
    parser.add_argument("--response", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct"), dtype=torch.float32)
    model.train()
    if args.mode != "eager":
        model.model = torch.compile(model.model, dynamic=args.mode == "dynamic")
    ids = torch.randint(0, model.config.vocab_size, (args.rows, args.prompt + args.response))
    response = ids[:, args.prompt :]

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits[:, args.prompt - 1 : -1]
        logprobs, _ = TokenStats.apply(logits, response, 1.0)
        logprobs.mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    first = step()
    times = [step() for _ in range(3)]
    print(f"{args.mode}: first call {first:.1f} s, then median {statistics.median(times):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rollout throughput: vLLM vs the transformers reference engine, and the cost of a weight sync.

    python scripts/bench_rollout.py --model smollm2-135m-instruct --prompts 8 --n 8 --max-tokens 32

Prompts come from the quickstart data (chat template applied). Prints generated tokens/s for each engine
(median of --repeats runs after one warm-up) and the median weight-sync time into vLLM.
"""

from __future__ import annotations

import argparse
import statistics
import time

from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.config import DataConfig
from rlvr.data import load_prompts
from rlvr.models import resolve_model
from rlvr.rollout import ENGINES, EngineOptions, SamplingConfig
from rlvr.trainer.weights import policy_state


def tokens_per_s(engine, prompts, sampling, repeats: int) -> float:
    engine.generate(prompts, sampling)  # warm-up
    rates = []
    for i in range(repeats):
        start = time.perf_counter()
        out = engine.generate(prompts, SamplingConfig(**{**sampling.__dict__, "seed": i}))
        rates.append(sum(len(c.token_ids) for c in out) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", nargs="+", default=["vllm", "hf"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()

    path = str(resolve_model(args.model))
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = "{prompt} Reply with just the number."
    data = DataConfig(path="data/arithmetic/train.jsonl", prompt_field="question", prompt_template=template)
    rows = load_prompts(data, tokenizer)
    prompts = [rows[i]["prompt_ids"] for i in range(args.prompts)]
    sampling = SamplingConfig(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    print(f"model {args.model}: {args.prompts} prompts x {args.n} samples x <= {args.max_tokens} tokens")
    for name in args.engines:
        engine = ENGINES.get(name)(path, EngineOptions(dtype=args.dtype, max_model_len=256, kv_cache_gb=0.5))
        rate = tokens_per_s(engine, prompts, sampling, args.repeats)
        print(f"{name:>5} {args.dtype}: {rate:8.1f} generated tokens/s (median of {args.repeats})")
        if name == "vllm":
            weights = policy_state(AutoModelForCausalLM.from_pretrained(path))
            times = []
            for _ in range(args.repeats):
                engine.update_weights(weights)
                times.append(engine.last_sync_s)
            print(f"vllm weight sync: {statistics.median(times) * 1000:.0f} ms (median of {args.repeats})")
        engine.close()


if __name__ == "__main__":
    main()

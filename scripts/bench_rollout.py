"""Rollout throughput: vLLM vs the transformers reference engine, the cost of a weight sync, and rlvr's
vLLM engine against bare vLLM ``generate`` at a recipe's shape.

    python scripts/bench_rollout.py --model smollm2-135m-instruct --prompts 8 --n 8 --max-tokens 32
    python scripts/bench_rollout.py --recipe recipes/bench/grpo_anchor_smollm2.yaml --repeats 5 \
        [--variants bare bare-logprobs rlvr server] [--set rollout.enforce_eager=false]

Without ``--recipe``, prompts come from the quickstart data (chat template applied); prints generated
tokens/s for each engine (median of --repeats runs after one warm-up) and the median weight-sync time into
vLLM.

With ``--recipe``, both engines are built as training builds them (dtype, context, KV cache) and sample as
a training step does (``prompts_per_step`` prompts x ``num_generations``, the recipe's temperature, top-p
and token limit; batch i is the recipe's prompts i*k .. i*k+k-1). "bare" is ``vllm.LLM.generate`` with
vLLM's defaults otherwise and one SamplingParams for the batch (no log-probs, no prefix cache, no
per-prompt seeds); "bare-logprobs" is the same asking for the sampled tokens' log-probs as rlvr does
(``logprobs=0``, ``logprobs_mode="processed_logprobs"``); "rlvr" is
:class:`rlvr.rollout.vllm_engine.VLLMEngine.generate`; "server" is a rollout server over rlvr's engine
that two training processes ask at once, each for half of the batch, once as the server batches them
(one engine pass) and once one after the other. The engines run one after the other on the same
batches; ``--set`` changes the recipe (e.g. ``rollout.enforce_eager=false`` compiles every engine).
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


def recipe_rates(recipe_path: str, repeats: int, overrides: list[str], variants: list[str]) -> None:
    """Tokens/s of bare vLLM and of rlvr's engine at ``recipe_path``'s rollout shape (module docstring)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from rlvr.config import load_recipe
    from rlvr.trainer.collect import sampling_config
    from rlvr.trainer.setup import bf16_is_native, engine_options, resolve_auto_precision

    recipe = load_recipe(recipe_path, overrides)
    resolve_auto_precision(recipe, bf16_is_native())  # as the trainer does
    path = str(resolve_model(recipe.model.name_or_path))
    rows = load_prompts(recipe.data, AutoTokenizer.from_pretrained(path))
    k = recipe.train.prompts_per_step
    batches = [[rows[i]["prompt_ids"] for i in range(b * k, b * k + k)] for b in range(repeats + 1)]
    options = engine_options(recipe)
    sampling = sampling_config(recipe, seed=recipe.run.seed, step=0)
    print(
        f"{recipe_path}: {k} prompts x {sampling.n} samples x <= {sampling.max_tokens} tokens, "
        f"T={sampling.temperature}, {options.dtype}, enforce_eager={options.enforce_eager}; "
        f"medians over batches 1..{repeats} (batch 0 warms up)"
    )

    def bare(logprobs: bool) -> list[tuple[int, float]]:
        llm = LLM(
            model=path,
            dtype=options.dtype,
            seed=options.seed,
            max_model_len=options.max_model_len,
            kv_cache_memory_bytes=int(options.kv_cache_gb * (1 << 30)),
            enable_chunked_prefill=False,
            enforce_eager=options.enforce_eager,
            **({"logprobs_mode": "processed_logprobs"} if logprobs else {}),
        )
        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            logprobs=0 if logprobs else None,
        )
        out = []
        for batch in batches:
            start = time.perf_counter()
            results = llm.generate(
                [TokensPrompt(prompt_token_ids=ids) for ids in batch], params, use_tqdm=False
            )
            seconds = time.perf_counter() - start
            out.append((sum(len(s.token_ids) for r in results for s in r.outputs), seconds))
        llm.llm_engine.engine_core.shutdown()
        return out

    def ours() -> list[tuple[int, float]]:
        engine = ENGINES.get("vllm")(path, options)
        out = []
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            completions = engine.generate(batch, SamplingConfig(**{**sampling.__dict__, "seed": i}))
            out.append((sum(len(c.token_ids) for c in completions), time.perf_counter() - start))
        engine.close()
        return out

    def served(peers: int) -> dict[str, list[tuple[int, float]]]:
        """A rollout server over rlvr's engine asked by ``peers`` training processes at once, each for
        its share of the batch: as the server batches them (one engine pass), and one after another (what
        it did before), alternating on the same batches and seeds."""
        from rlvr.rollout.pool import in_thread
        from rlvr.rollout.server import RolloutServer

        server = RolloutServer(ENGINES.get("vllm")(path, options), "vllm", path, "cpu")
        out = {f"server, {peers} peers batched": [], f"server, {peers} peers in turn": []}
        for i, batch in enumerate(batches):
            bodies = []
            for p in range(peers):
                share = batch[len(batch) * p // peers : len(batch) * (p + 1) // peers]
                seeded = SamplingConfig(**{**sampling.__dict__, "seed": 1000 * i + p})
                bodies.append({"prompt_ids": share, "sampling": seeded.to_dict(), "peers": peers})
            for name in out:
                start = time.perf_counter()
                if name.endswith("batched"):
                    answers = [f.result() for f in [in_thread(server.generate, b) for b in bodies]]
                else:
                    answers = [server.generate({**b, "peers": 1}) for b in bodies]
                seconds = time.perf_counter() - start
                out[name].append(
                    (sum(len(c["token_ids"]) for a in answers for c in a["completions"]), seconds)
                )
        server.close()
        return out

    rates = {}
    runs = {
        "bare": lambda: {"bare": bare(False)},
        "bare-logprobs": lambda: {"bare-logprobs": bare(True)},
        "rlvr": lambda: {"rlvr": ours()},
        "server": lambda: served(2),
    }
    for variant in variants:
        for name, measured in runs[variant]().items():
            measured = measured[1:]
            rates[name] = statistics.median(tokens / seconds for tokens, seconds in measured)
            per_batch = statistics.median(seconds for _, seconds in measured)
            tokens = statistics.median(tokens for tokens, _ in measured)
            print(
                f"{name:>13}: {rates[name]:7.1f} tokens/s, {per_batch:6.2f} s/batch, "
                f"{tokens:.0f} tokens/batch"
            )
    for base in ("bare", "bare-logprobs"):
        if "rlvr" in rates and base in rates:
            print(f"rlvr / {base} throughput: {rates['rlvr'] / rates[base]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--recipe", help="compare rlvr's vLLM engine with bare vLLM at this recipe's rollout shape"
    )
    ap.add_argument(
        "--variants",
        nargs="+",
        choices=["bare", "bare-logprobs", "rlvr", "server"],
        default=["bare", "rlvr"],
        help="with --recipe: what to run, in this order",
    )
    ap.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="with --recipe"
    )
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engines", nargs="+", default=["vllm", "hf"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    if args.recipe:
        recipe_rates(args.recipe, args.repeats, args.overrides, args.variants)
        return

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

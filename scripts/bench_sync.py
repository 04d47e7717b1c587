"""Weight-sync time against model size: the colocated engine's file in shared memory vs the broadcast to a
rollout server.

    python scripts/bench_sync.py [--sizes tiny 135m 1b] [--repeats 5] [--dtype bfloat16] [--workdir DIR]

For each size a Qwen2-shaped model is written from its config (seeded random weights; no download):

- ``tiny``: the tests' 2-layer model (~0.5M parameters);
- ``135m``: SmolLM2-135M's shape (30 layers, hidden 576, vocabulary 49,152, tied embeddings);
- ``1b``: Llama-3.2-1B's shape (16 layers, hidden 2048, 32 heads / 8 KV heads, MLP 8192, vocabulary
  128,256, tied embeddings), 1.24B parameters.

Both paths get the same float32 tensors from the trainer's side and load them into a vLLM engine in
``--dtype``:

- ``file``: :class:`rlvr.rollout.vllm_engine.VLLMEngine` (colocated), which writes a safetensors file to
  /dev/shm that its worker reloads;
- ``broadcast``: a rollout server (``python -m rlvr.rollout.server``) and
  :class:`rlvr.rollout.pool.ServerPool`, which casts, buckets (``--bucket-mb``) and broadcasts over gloo
  while the server's worker reloads bucket by bucket.

Prints the median of ``--repeats`` syncs of each (after one unmeasured), the bytes sent, and whether the
two engines' greedy outputs agree afterwards (they hold the same weights, so they must).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlvr.models import MODEL_SHAPES, build_tiny_model  # noqa: E402
from rlvr.rollout import ENGINES, EngineOptions, SamplingConfig  # noqa: E402
from rlvr.rollout.pool import ServerPool, start_servers  # noqa: E402
from rlvr.trainer.weights import policy_state  # noqa: E402

SIZES = {"tiny": {}, "135m": MODEL_SHAPES["smollm2-135m"], "1b": MODEL_SHAPES["llama-3.2-1b"]}
PROMPTS = [[1, 2, 3, 4, 5], [6, 7, 8]]
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=8)


def timed(sync, tensors, repeats: int) -> list[float]:
    sync(iter(tensors))  # warm-up: first-call costs (allocations, the group's first buffers)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(iter(tensors))
        times.append(time.perf_counter() - start)
    return times


def bench_size(size: str, workdir: Path, repeats: int, dtype: str, bucket_mb: float) -> dict:
    model_dir = workdir / size
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, **SIZES[size])
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():  # other weights than the engines start with, so a sync that fails shows
        for p in model.parameters():
            p.mul_(0.5)
    tensors = policy_state(model)
    options = EngineOptions(dtype=dtype, max_model_len=256, kv_cache_gb=0.25)

    engine = ENGINES.get("vllm")(str(model_dir), options)
    file_times = timed(engine.update_weights, tensors, repeats)
    file_greedy = [c.token_ids for c in engine.generate(PROMPTS, GREEDY)]
    engine.close()

    urls, started = start_servers(1, "vllm", str(model_dir), options, workdir / "logs")
    pool = ServerPool(
        urls,
        sender=True,
        weight_dtype=getattr(torch, dtype),
        started=started,
        bucket_bytes=int(bucket_mb * (1 << 20)),
    )
    try:
        pool.wait_ready(600)
        pool.open_weight_group()
        broadcast_times = timed(pool.update_weights, tensors, repeats)
        sent = pool.last_sync_bytes
        broadcast_greedy = [c.token_ids for c in pool.generate(PROMPTS, GREEDY)]
    finally:
        pool.close()
    return {
        "size": size,
        "params": params,
        "sent_mb": sent / (1 << 20),
        "file_s": statistics.median(file_times),
        "broadcast_s": statistics.median(broadcast_times),
        "agree": file_greedy == broadcast_greedy,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["tiny", "135m", "1b"], choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--bucket-mb", type=float, default=256.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rlvr-bench-sync"))
    args = parser.parse_args()
    rows = [bench_size(size, args.workdir, args.repeats, args.dtype, args.bucket_mb) for size in args.sizes]
    print(f"\nweight sync into a {args.dtype} vLLM engine, median of {args.repeats}")
    print(
        "| model | parameters | bytes sent | file (/dev/shm) | broadcast (gloo) | broadcast / file | agree |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['sent_mb']:.0f} MB | {r['file_s']:.3f} s "
            f"| {r['broadcast_s']:.3f} s | {r['broadcast_s'] / r['file_s']:.2f}x "
            f"| {'yes' if r['agree'] else 'NO'} |"
        )
    return 0 if all(r["agree"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

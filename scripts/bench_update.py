"""The update alone, on one fixed anchor-shaped batch: an A/B of update levers without rollout noise.

    python scripts/bench_update.py [--set key=value ...] [--idle-groups 0.25] [--repeats 3] [--profile]
                                   [--ab train.share_prompt_prefix] [--dealing]

Builds the anchor's policy (``recipes/bench/grpo_anchor_smollm2.yaml``, float32 weights, bf16 autocast as
its ``train.mixed_precision`` says, AdamW) and a seeded batch shaped like an anchor step: 8 prompts x 8
samples (a group's samples share their prompt), prompts of 36-44 tokens, responses of 8-128 tokens
(about 35 on average, five at 128), group advantages. ``--idle-groups F`` gives the first F of the groups
advantage 0 (prompts whose samples all got one reward). Runs :func:`rlvr.trainer.update.policy_update`
once to warm up, then ``--repeats`` times, and prints each time, the median and the update against its
compute floor (6 x parameters x real tokens at this machine's matmul peak in the update's dtype, as
``scripts/bench_step.py``). ``--profile`` adds a torch profiler table of one more update. ``--dealing``
prints, without running a model, the tokens the shared-prompt forward runs on the batch's micro-batches
when they are dealt by length (the default), by whole prompt groups, or in batch order.

The accelerator, policy and optimizer are set up as the trainer sets them up, so the same update runs
under DeepSpeed (bf16 weights with float32 master weights, instead of autocast) when launched with a
DeepSpeed config on one process::

    accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 1 \
        scripts/bench_update.py [...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlvr.types import RolloutBatch  # noqa: E402
from scripts.bench_step import ANCHOR, matmul_peak_gflops  # noqa: E402


def anchor_batch(idle_groups: float, rows: int = 64, group: int = 8, seed: int = 0) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    width_p, width_t = 44, 128
    prompt_len = torch.randint(36, width_p + 1, (rows // group,), generator=g).repeat_interleave(group)
    response_len = torch.clamp((torch.randn(rows, generator=g) * 15 + 35).long(), 8, width_t)
    response_len[torch.randperm(rows, generator=g)[:5]] = width_t
    prompt_mask = (torch.arange(width_p)[None] >= (width_p - prompt_len)[:, None]).long()  # [N, P]
    response_mask = (torch.arange(width_t)[None] < response_len[:, None]).float()  # [N, T]
    advantages = torch.randn(rows // group, 1, generator=g).repeat_interleave(group, 0)  # [N, 1]
    advantages = (advantages + 0.1 * torch.randn(rows, 1, generator=g)) * response_mask  # [N, T]
    advantages[: group * int(idle_groups * rows / group)] = 0.0
    return RolloutBatch(
        prompt_ids=torch.randint(3, 40000, (rows // group, width_p), generator=g).repeat_interleave(group, 0)
        * prompt_mask,  # a group's samples share their prompt
        prompt_mask=prompt_mask,
        response_ids=torch.randint(3, 40000, (rows, width_t), generator=g),
        response_mask=response_mask,
        engine_logprobs=-torch.rand(rows, width_t, generator=g) * response_mask,
        sequence_rewards=torch.zeros(rows),
        group_index=torch.arange(rows) // group,
        truncated=response_len == width_t,
        advantages=advantages,
    )


def shared_forward_tokens(batch: RolloutBatch, micros: list[torch.Tensor]) -> tuple[int, list[int]]:
    """Tokens (padding included) that :func:`rlvr.trainer.logprobs.shared_prompt_logits` runs on these
    micro-batches, ``U x (P - 1) + n x T`` each, and the distinct prompts ``U`` of each."""
    from rlvr.trainer.logprobs import distinct_prompts

    total, prompts = 0, []
    for rows in micros:
        micro = batch.select(rows).trimmed()
        first, _ = distinct_prompts(micro)
        total += len(first) * (micro.prompt_ids.shape[1] - 1) + len(rows) * micro.response_ids.shape[1]
        prompts.append(len(first))
    return total, prompts


def print_dealing(batch: RolloutBatch, micro: int) -> None:
    from rlvr.trainer.batch import micro_batch_rows

    for name, kwargs in (
        ("by length", dict(by_length=True)),
        ("whole groups, by length", dict(by_length=True, whole_groups=True)),
        ("batch order", dict(by_length=False)),
    ):
        total, prompts = shared_forward_tokens(batch, micro_batch_rows(batch, micro, **kwargs))
        print(f"{name}: {total} tokens; distinct prompts per micro-batch {prompts}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--idle-groups", type=float, default=0.0, help="share of groups with advantage 0")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--dealing", action="store_true", help="tokens of each dealing, then exit")
    parser.add_argument(
        "--ab",
        metavar="SECTION.KEY",
        help="a boolean recipe key to alternate (false, true) within this process, one update each per "
        "repeat: an A/B that slow drifts of the machine affect alike",
    )
    args = parser.parse_args()

    from rlvr.config import load_recipe
    from rlvr.models import resolve_model
    from rlvr.trainer.setup import (
        bf16_is_native,
        configure_deepspeed,
        load_policy,
        make_accelerator,
        make_optimizer,
        resolve_auto_precision,
    )
    from rlvr.trainer.update import UpdateContext, policy_update

    recipe = load_recipe(ANCHOR, ["rollout.engine=hf", *args.overrides])
    resolve_auto_precision(recipe, bf16_is_native())  # as the trainer does, for --set ...=auto
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        parser.error("one process only (accelerate launch --num_processes 1)")
    torch.manual_seed(0)
    batch = anchor_batch(args.idle_groups)
    if args.dealing:
        print_dealing(batch, recipe.batch_layout(1)["micro_batch"])
        return 0
    dtype = "bfloat16" if recipe.train.mixed_precision == "bf16" else "float32"  # the update's matmuls
    peak = matmul_peak_gflops(dtype)
    layout = recipe.batch_layout(1)  # as the trainer sets itself up (rlvr.train.build)
    micro, grad_accum = layout["micro_batch"], layout["grad_accum"]
    accelerator = make_accelerator(grad_accum, recipe.train.mixed_precision)
    configure_deepspeed(accelerator, micro, grad_accum, recipe)
    model = load_policy(str(resolve_model(recipe.model.name_or_path)), recipe)
    params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())  # ZeRO-3: partitioned
    optimizer, scheduler = make_optimizer(model, recipe)
    model, optimizer = accelerator.prepare(model, optimizer)
    ctx = UpdateContext(
        accelerator, model, optimizer, scheduler, recipe, micro_batch=micro, grad_accum=grad_accum
    )
    tokens = float(batch.prompt_mask.sum() + batch.response_mask.sum())
    floor = 6 * params * tokens / (peak * 1e9)
    section, _, key = (args.ab or "").partition(".")
    arms = (False, True) if args.ab else (None,)
    times: dict[bool | None, list[float]] = {arm: [] for arm in arms}
    for _ in range(args.repeats + 1):
        for arm in arms:
            if arm is not None:
                setattr(getattr(recipe, section), key, arm)
            start = time.perf_counter()
            metrics = policy_update(ctx, batch)
            times[arm].append(time.perf_counter() - start)
    skipped = metrics.get("perf/skipped_rows_frac", 0.0)
    print(f"# {' '.join(args.overrides)} idle groups {args.idle_groups}: {tokens:.0f} real tokens")
    print(f"# rows skipped {skipped:.0%}; {dtype} matmul peak {peak:.0f} GFLOP/s")
    for arm, arm_times in times.items():
        median = statistics.median(arm_times[1:])
        label = f"{args.ab}={str(arm).lower()}: " if arm is not None else ""
        print(f"{label}updates: {' '.join(f'{t:.2f}' for t in arm_times)} s (the first is warm-up)")
        print(f"{label}median {median:.2f} s; floor {floor:.2f} s; update / floor {median / floor:.2f}x")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            policy_update(ctx, batch)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The policy update of one RL step: mini-batches, micro-batches, loss, backward, optimizer step.

The loss of every micro-batch is aggregated with the token/sequence counts of its whole mini-batch
*across all processes*, then multiplied by (processes x accumulation steps) to undo the averaging that
data parallelism and gradient accumulation apply. The accumulated gradient is therefore exactly the
gradient of the mini-batch loss as the aggregation mode defines it, whatever the micro-batch size or the
number of processes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from rlvr.algorithms import KL_ESTIMATORS, POLICY_LOSSES, aggregate
from rlvr.config import Recipe
from rlvr.trainer.logprobs import response_logprobs
from rlvr.types import RolloutBatch


@dataclass
class UpdateContext:
    """What the update needs besides the batch; built once per run."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    recipe: Recipe
    micro_batch: int
    grad_accum: int
    ref_model: torch.nn.Module | None = None


@torch.no_grad()
def forward_logprobs(
    model: torch.nn.Module, batch: RolloutBatch, micro: int, temperature: float
) -> torch.Tensor:
    """Log-probs of the whole batch under ``model`` without gradients, micro-batch by micro-batch."""
    chunks = [
        response_logprobs(model, batch.select(slice(i, i + micro)), temperature)[0]
        for i in range(0, len(batch), micro)
    ]
    return torch.cat(chunks, dim=0)  # [N, T]


def _global_sum(accelerator: Accelerator, value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item()) if accelerator.num_processes > 1 else value


def policy_update(ctx: UpdateContext, batch: RolloutBatch) -> dict[str, float]:
    """Run ``epochs x num_mini_batches`` optimizer steps on ``batch``; return averaged metrics."""
    recipe, acc = ctx.recipe, ctx.accelerator
    algo, train = recipe.algorithm, recipe.train
    temperature = recipe.rollout.temperature
    loss_fn = POLICY_LOSSES.get(algo.policy_loss)
    kl_fn = KL_ESTIMATORS.get(algo.kl_estimator) if algo.kl_coef > 0 else None
    batch = batch.to(acc.device)

    ctx.model.train()
    if train.epochs > 1 or train.num_mini_batches > 1:
        # Off-policy after the first optimizer step: freeze the behaviour log-probs now.
        batch.old_logprobs = forward_logprobs(ctx.model, batch, ctx.micro_batch, temperature)
    if kl_fn is not None:
        batch.ref_logprobs = forward_logprobs(ctx.ref_model, batch, ctx.micro_batch, temperature)

    mini = len(batch) // train.num_mini_batches
    scale = acc.num_processes * ctx.grad_accum
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    for _epoch in range(train.epochs):
        for start in range(0, len(batch), mini):
            mini_batch = batch.select(slice(start, start + mini))
            num_tokens = _global_sum(acc, float(mini_batch.response_mask.sum()))
            num_seqs = _global_sum(acc, float(len(mini_batch)))
            mini_loss = 0.0
            for m in range(0, mini, ctx.micro_batch):
                micro = mini_batch.select(slice(m, m + ctx.micro_batch))
                mask = micro.response_mask  # [n, T]
                with acc.accumulate(ctx.model):
                    logprobs, entropy = response_logprobs(
                        ctx.model, micro, temperature, with_entropy=True, entropy_grad=algo.entropy_coef > 0
                    )
                    old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
                    per_token, metrics = loss_fn(
                        logprobs, old, micro.advantages, mask, **algo.policy_loss_kwargs
                    )
                    if kl_fn is not None:
                        kl = kl_fn(logprobs, micro.ref_logprobs)  # [n, T]
                        per_token = per_token + algo.kl_coef * kl
                        metrics["kl"] = (kl.detach() * mask).sum() / mask.sum().clamp(min=1)
                    if algo.entropy_coef > 0:
                        per_token = per_token - algo.entropy_coef * entropy
                    loss = aggregate(
                        per_token,
                        mask,
                        algo.loss_agg,
                        num_sequences=num_seqs,
                        num_tokens=num_tokens,
                        max_response_len=recipe.rollout.max_tokens,
                    )
                    acc.backward(loss * scale)
                    grad_norm = None
                    if acc.sync_gradients:
                        grad_norm = acc.clip_grad_norm_(ctx.model.parameters(), train.max_grad_norm)
                    ctx.optimizer.step()
                    ctx.optimizer.zero_grad()
                    if acc.sync_gradients:
                        ctx.scheduler.step()
                mini_loss += float(loss.detach())
                tokens = float(mask.sum())
                metrics["entropy"] = (entropy.detach() * mask).sum() / max(tokens, 1.0)
                metrics["engine_logprob_gap"] = (
                    (logprobs.detach() - micro.engine_logprobs).abs() * mask
                ).sum() / max(tokens, 1.0)
                for key, value in metrics.items():
                    sums[f"actor/{key}"] += float(value) * tokens
                    weights[f"actor/{key}"] += tokens
                if grad_norm is not None:
                    sums["actor/grad_norm"] += float(grad_norm)
                    weights["actor/grad_norm"] += 1.0
            # Micro-batch losses were normalised by global counts: their sum over processes is the loss.
            sums["actor/loss"] += _global_sum(acc, mini_loss)
            weights["actor/loss"] += 1.0
    return {key: sums[key] / weights[key] for key in sums if weights[key] > 0}

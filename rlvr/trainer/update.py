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

from rlvr.algorithms import KL_ESTIMATORS, POLICY_LOSSES, aggregate, value_loss
from rlvr.algorithms.utils import needs_of
from rlvr.config import Recipe
from rlvr.trainer.critic import PolicyWithCritic
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
    kl_coef: float | None = None
    """Current KL coefficient (the KL controller moves it between steps); None: algorithm.kl_coef."""
    entropy_coef: float | None = None
    """Current entropy-bonus coefficient (moved by the entropy controller); None: algorithm.entropy_coef."""

    def __post_init__(self) -> None:
        if self.kl_coef is None:
            self.kl_coef = self.recipe.algorithm.kl_coef
        if self.entropy_coef is None:
            self.entropy_coef = self.recipe.algorithm.entropy_coef


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


@torch.no_grad()
def forward_values(model: torch.nn.Module, batch: RolloutBatch, micro: int) -> torch.Tensor:
    """Critic values of the whole batch without gradients (``model`` wraps a :class:`PolicyWithCritic`)."""
    chunks = [model(value_batch=batch.select(slice(i, i + micro))) for i in range(0, len(batch), micro)]
    return torch.cat(chunks, dim=0)  # [N, T]


def has_critic(model: torch.nn.Module) -> bool:
    """Whether the (prepared) ``model`` is a :class:`PolicyWithCritic`."""
    inner = model.module if hasattr(model, "module") else model
    return isinstance(inner, PolicyWithCritic)


def global_sums(accelerator: Accelerator, values: list[float]) -> list[float]:
    """Each of ``values`` summed over all processes, in one all-reduce (float64)."""
    if accelerator.num_processes == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(tensor, reduction="sum").cpu().tolist()


def group_permutation(group_index: torch.Tensor) -> torch.Tensor:
    """A row order that shuffles the runs of equal ``group_index`` (the prompt groups, from the global torch
    RNG) and keeps each group's rows together and in order."""
    _, run = torch.unique_consecutive(group_index.cpu(), return_inverse=True)  # [N] run id of each row
    new_position = torch.randperm(int(run.max()) + 1)  # [G]
    return torch.sort(new_position[run], stable=True).indices.to(group_index.device)  # [N]


def loss_mask(batch: RolloutBatch) -> torch.Tensor:
    """``[N, T]`` tokens that enter the loss: response tokens whose token weight (if any) is not 0."""
    if batch.token_weights is None:
        return batch.response_mask
    return batch.response_mask * (batch.token_weights != 0).to(batch.response_mask.dtype)


def policy_update(ctx: UpdateContext, batch: RolloutBatch) -> dict[str, float]:
    """Run ``epochs x num_mini_batches`` optimizer steps on ``batch``; return averaged metrics.

    ``batch`` carries what the step computed before: advantages, and, when some plug-in needs them,
    ``old_logprobs`` (else the current log-probs, detached, stand in: on-policy), ``ref_logprobs``,
    token weights, critic values and returns.
    """
    recipe, acc = ctx.recipe, ctx.accelerator
    algo, train = recipe.algorithm, recipe.train
    temperature = recipe.rollout.temperature
    loss_fn = POLICY_LOSSES.get(algo.policy_loss)
    extra_fields = sorted(needs_of(loss_fn))
    kl_fn = KL_ESTIMATORS.get(algo.kl_estimator) if algo.kl_placement == "loss" and ctx.kl_coef > 0 else None
    critic = has_critic(ctx.model)
    batch = batch.to(acc.device)

    ctx.model.train()
    if (train.epochs > 1 or train.num_mini_batches > 1) and batch.old_logprobs is None:
        # Off-policy after the first optimizer step: freeze the behaviour log-probs now.
        batch.old_logprobs = forward_logprobs(ctx.model, batch, ctx.micro_batch, temperature)
    if kl_fn is not None and batch.ref_logprobs is None:
        batch.ref_logprobs = forward_logprobs(ctx.ref_model, batch, ctx.micro_batch, temperature)

    mini = len(batch) // train.num_mini_batches
    scale = acc.num_processes * ctx.grad_accum
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    for _epoch in range(train.epochs):
        epoch_batch = batch
        if train.shuffle_mini_batches and (train.num_mini_batches > 1 or train.epochs > 1):
            epoch_batch = batch.select(group_permutation(batch.group_index))
        for start in range(0, len(batch), mini):
            mini_batch = epoch_batch.select(slice(start, start + mini))
            kept = loss_mask(mini_batch)  # [mini, T]
            num_tokens, num_seqs, num_value_tokens = global_sums(
                acc,
                [float(kept.sum()), float((kept.sum(-1) > 0).sum()), float(mini_batch.response_mask.sum())],
            )
            mini_loss = 0.0
            for m in range(0, mini, ctx.micro_batch):
                micro = mini_batch.select(slice(m, m + ctx.micro_batch))
                mask = micro.response_mask  # [n, T]
                kept = loss_mask(micro)  # [n, T]
                with acc.accumulate(ctx.model):
                    logprobs, entropy = response_logprobs(
                        ctx.model, micro, temperature, with_entropy=True, entropy_grad=ctx.entropy_coef > 0
                    )
                    old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
                    extra = {name: getattr(micro, name) for name in extra_fields}
                    per_token, metrics = loss_fn(
                        logprobs, old, micro.advantages, kept, **extra, **algo.policy_loss_kwargs
                    )
                    if kl_fn is not None:
                        kl = kl_fn(logprobs, micro.ref_logprobs)  # [n, T]
                        per_token = per_token + ctx.kl_coef * kl
                        metrics["kl"] = (kl.detach() * mask).sum() / mask.sum().clamp(min=1)
                    if ctx.entropy_coef > 0:
                        per_token = per_token - ctx.entropy_coef * entropy
                    if micro.token_weights is not None:
                        per_token = per_token * micro.token_weights
                    loss = aggregate(
                        per_token,
                        kept,
                        algo.loss_agg,
                        num_sequences=num_seqs,
                        num_tokens=num_tokens,
                        max_response_len=recipe.rollout.max_tokens,
                    )
                    total = loss
                    if critic:
                        v_loss, v_metrics = value_loss(
                            ctx.model(value_batch=micro),
                            micro.old_values,
                            micro.returns,
                            mask,
                            clip_range=algo.critic.clip_range,
                        )
                        total = total + algo.critic.vf_coef * aggregate(
                            v_loss, mask, "token-mean", num_tokens=num_value_tokens
                        )
                        for key, value in v_metrics.items():
                            sums[f"critic/{key}"] += float(value) * float(mask.sum())
                            weights[f"critic/{key}"] += float(mask.sum())
                    acc.backward(total * scale)
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
            sums["actor/loss"] += global_sums(acc, [mini_loss])[0]
            weights["actor/loss"] += 1.0
    out = {key: sums[key] / weights[key] for key in sums if weights[key] > 0}
    out["actor/kl_coef"] = ctx.kl_coef
    out["actor/entropy_coef"] = ctx.entropy_coef
    return out

"""The policy update of one RL step: mini-batches, micro-batches, loss, backward, optimizer step.

The loss of every micro-batch is aggregated with the token/sequence counts of its whole mini-batch
*across all processes*, then multiplied by (processes x the configured accumulation steps) to undo the
averaging that data parallelism and accelerate / DeepSpeed's gradient accumulation apply. The accumulated
gradient is therefore exactly the gradient of the mini-batch loss as the aggregation mode defines it,
whatever the micro-batch size, the number of micro-batches (a token budget makes it vary) or the number
of processes. Rows that add nothing to the gradient (all advantages 0 under a loss that vanishes there,
:func:`idle_rows`) are not run at all; the normalising counts still include them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator

from rlvr.algorithms import aggregate
from rlvr.algorithms.utils import is_zero_without_advantage, needs_of
from rlvr.config import Recipe
from rlvr.trainer.batch import micro_batch_rows, micro_batches
from rlvr.trainer.components import Component, Requests, single_step
from rlvr.trainer.distributed import global_max, global_sums, whole_batch
from rlvr.trainer.logprobs import response_logprobs, shares_prompts
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
    policy_loss: tuple[Callable, Mapping[str, Any]] | None = None
    """The configured loss: (function, bound hyperparameters); None: the recipe's, as written."""
    components: list[Component] = field(default_factory=list)
    """Loss terms besides the policy loss (:mod:`rlvr.trainer.components`), added in this order."""

    def __post_init__(self) -> None:
        if self.policy_loss is None:
            from rlvr.algorithms import POLICY_LOSSES

            algo = self.recipe.algorithm
            self.policy_loss = (
                POLICY_LOSSES.get(algo.policy_loss),
                POLICY_LOSSES.bind(algo.policy_loss, algo.policy_loss_kwargs),
            )


@contextlib.contextmanager
def accumulation_step(acc: Accelerator, model: torch.nn.Module, last: bool) -> Iterator[None]:
    """One micro-batch of an optimizer step whose number of micro-batches is known only per mini-batch
    (a token budget deals a varying number): gradients are reduced across processes and the optimizer
    steps on the ``last`` one only (``accelerator.sync_gradients``, which DeepSpeed's boundary follows).
    The loss scaling does not depend on the count: see :func:`policy_update`."""
    acc.sync_gradients = last
    try:
        with contextlib.nullcontext() if last else acc.no_sync(model):
            yield
    finally:
        acc.sync_gradients = True


def backward_and_step(ctx: UpdateContext, loss: torch.Tensor) -> torch.Tensor | None:
    """Backward of one micro-batch's (scaled) loss inside :func:`accumulation_step`; on the last micro-batch
    of an optimizer step, clip, step the optimizer and the schedule. Returns the gradient norm then, else
    None."""
    acc = ctx.accelerator
    acc.backward(loss)
    grad_norm = None
    if acc.sync_gradients:
        grad_norm = acc.clip_grad_norm_(ctx.model.parameters(), ctx.recipe.train.max_grad_norm)
    ctx.optimizer.step()
    ctx.optimizer.zero_grad()
    if acc.sync_gradients:
        ctx.scheduler.step()
    return grad_norm


def update_needs(recipe: Recipe) -> Requests:
    """Batch fields the update itself reads: the behaviour log-probs when it takes several optimizer steps
    on one batch (after the first, the policy is no longer the one that sampled)."""
    return {} if single_step(recipe) else {"old_logprobs": {}}


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


def idle_rows(ctx: UpdateContext, batch: RolloutBatch) -> torch.Tensor | None:
    """``[N]`` bool: the rows of ``batch`` that add nothing to the gradient, to be left out of the update
    (``train.skip_zero_advantage``): no trained token with a nonzero advantage, under a policy loss that
    declared :func:`~rlvr.algorithms.utils.zero_without_advantage` and no component whose terms reach every
    row. None when rows cannot be skipped."""
    loss_fn, _ = ctx.policy_loss
    if not ctx.recipe.train.skip_zero_advantage or not is_zero_without_advantage(loss_fn):
        return None
    if any(component.every_row for component in ctx.components):
        return None
    return ~((batch.advantages != 0) & loss_mask(batch).bool()).any(-1)  # [N]


def policy_update(ctx: UpdateContext, batch: RolloutBatch) -> dict[str, float]:
    """Run ``epochs x num_mini_batches`` optimizer steps on ``batch``; return averaged metrics.

    ``batch`` carries what the step computed before: advantages, and whatever the loss and the components
    read (``old_logprobs`` when some plug-in needs them or the update is off-policy, else the current
    log-probs, detached, stand in: on-policy; ``ref_logprobs``, token weights, critic values and returns).
    Each micro-batch's per-token loss is the policy loss plus every component's token term, weighted by
    the token weights and by the weights components compute from the micro-batch's own log-probs
    (:meth:`~rlvr.trainer.components.Component.token_scale`), and aggregated; each component's own loss
    (the critic's) is added to it.
    """
    recipe, acc = ctx.recipe, ctx.accelerator
    algo, train = recipe.algorithm, recipe.train
    temperature = recipe.rollout.temperature
    loss_fn, loss_kwargs = ctx.policy_loss
    extra_fields = sorted(needs_of(loss_fn))
    entropy_grad = any(c.entropy_grad for c in ctx.components)
    share_prompts = shares_prompts(recipe)
    batch = batch.to(acc.device)
    if update_needs(recipe) and batch.old_logprobs is None:
        raise ValueError("several optimizer steps per batch need batch.old_logprobs (see update_needs)")

    ctx.model.train()
    deal = dict(  # how a mini-batch's rows are dealt into micro-batches (micro_batch_rows)
        size=ctx.micro_batch,
        by_length=train.sort_by_length,
        max_tokens=train.max_tokens_per_micro_batch,
        whole_groups="group_index" in extra_fields,  # the loss compares a prompt's samples
    )
    mini = len(batch) // train.num_mini_batches
    scale = acc.num_processes * ctx.grad_accum
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    run_tokens = 0.0  # prompt + response tokens of the rows run, per pass over the batch
    # weights computed inside the update (single step: the batch is one mini-batch, in order) need the
    # update's own log-probs of the rows it runs, for their metrics on the whole batch afterwards
    scalers = [component for component in ctx.components if component.scales_in_update]
    if scalers and not single_step(recipe):
        raise ValueError("token weights computed inside the update need one optimizer step per batch")
    own_logprobs = torch.zeros_like(batch.response_mask, dtype=torch.float32)  # [N, T]
    ran_rows = torch.zeros(len(batch), dtype=torch.bool, device=batch.response_mask.device)  # [N]
    for _epoch in range(train.epochs):
        epoch_batch = batch
        if train.shuffle_mini_batches and not single_step(recipe):
            epoch_batch = batch.select(group_permutation(batch.group_index))
        for start in range(0, len(batch), mini):
            mini_batch = epoch_batch.select(slice(start, start + mini))
            kept = loss_mask(mini_batch)  # [mini, T]
            counts = dict(
                zip(
                    ("num_tokens", "num_sequences", "response_tokens"),
                    global_sums(
                        acc,
                        [
                            float(kept.sum()),
                            float((kept.sum(-1) > 0).sum()),
                            float(mini_batch.response_mask.sum()),
                        ],
                    ),
                    strict=True,
                )
            )
            mini_loss = 0.0
            idle = idle_rows(ctx, mini_batch)  # [mini] or None
            chunks = micro_batch_rows(mini_batch, **deal, idle=idle)
            count = len(chunks)  # the same on every process, unless a token budget or idle rows vary it
            if train.max_tokens_per_micro_batch is not None or idle is not None:
                # every process runs as many micro-batches as the process that needs the most
                count = global_max(acc, count)
            if count > len(chunks):
                chunks = micro_batch_rows(mini_batch, **deal, idle=idle, count=count)
            ran = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.long)  # [rows run]
            sums["perf/skipped_rows_frac"] += 1.0 - len(ran) / max(len(mini_batch), 1)
            weights["perf/skipped_rows_frac"] += 1.0
            run_tokens += (
                float(mini_batch.prompt_mask[ran].sum() + mini_batch.response_mask[ran].sum()) / train.epochs
            )
            for index, (rows, micro) in enumerate(
                zip(chunks, micro_batches(mini_batch, chunks), strict=True)
            ):
                mask = micro.response_mask  # [n, T]
                kept = loss_mask(micro)  # [n, T]
                with accumulation_step(acc, ctx.model, last=index == count - 1):
                    logprobs, entropy = response_logprobs(
                        ctx.model,
                        micro,
                        temperature,
                        with_entropy=True,
                        entropy_grad=entropy_grad,
                        share_prompts=share_prompts,
                    )
                    old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
                    extra = {name: getattr(micro, name) for name in extra_fields}
                    per_token, loss_metrics = loss_fn(
                        logprobs, old, micro.advantages, kept, **extra, **loss_kwargs
                    )
                    metrics = {f"actor/{key}": value for key, value in loss_metrics.items()}
                    for component in ctx.components:
                        term, term_metrics = component.token_loss(logprobs, entropy, micro)
                        if term is not None:
                            per_token = per_token + term  # [n, T]
                        metrics.update(term_metrics)
                    if micro.token_weights is not None:
                        per_token = per_token * micro.token_weights  # [n, T]
                    for component in scalers:
                        per_token = per_token * component.token_scale(old, micro)  # [n, T]
                    loss = aggregate(
                        per_token,
                        kept,
                        algo.loss_agg,
                        num_sequences=counts["num_sequences"],
                        num_tokens=counts["num_tokens"],
                        max_response_len=recipe.rollout.max_tokens,
                    )
                    total = loss
                    for component in ctx.components:
                        extra_loss, extra_metrics = component.aux_loss(ctx.model, micro, counts)
                        if extra_loss is not None:
                            total = total + extra_loss
                        metrics.update(extra_metrics)
                    grad_norm = backward_and_step(ctx, total * scale)
                mini_loss += float(loss.detach())
                if scalers:
                    own_logprobs[rows, : old.shape[1]] = old.float()
                    ran_rows[rows] = True
                tokens = float(mask.sum())
                metrics["actor/entropy"] = (entropy.detach() * mask).sum() / max(tokens, 1.0)
                metrics["actor/engine_logprob_gap"] = (
                    (logprobs.detach() - micro.engine_logprobs).abs() * mask
                ).sum() / max(tokens, 1.0)
                for key, value in metrics.items():
                    sums[key] += float(value) * tokens
                    weights[key] += tokens
                if grad_norm is not None:
                    sums["actor/grad_norm"] += float(grad_norm)
                    weights["actor/grad_norm"] += 1.0
            # Micro-batch losses were normalised by global counts: their sum over processes is the loss.
            sums["actor/loss"] += global_sums(acc, [mini_loss])[0]
            weights["actor/loss"] += 1.0
    # Weighted over the tokens (or steps) of every process, one all-reduce: a process that ran a single
    # filler row weighs what its tokens weigh. The values are then the same on every process.
    keys = sorted(sums)
    totals = global_sums(acc, [*(sums[k] for k in keys), *(weights[k] for k in keys), run_tokens])
    metrics = {
        key: totals[i] / totals[len(keys) + i] for i, key in enumerate(keys) if totals[len(keys) + i] > 0
    }
    metrics["perf/update_tokens_run"] = totals[-1]
    if scalers:
        ran = dataclasses.replace(
            batch, old_logprobs=own_logprobs, response_mask=batch.response_mask * ran_rows[:, None]
        )
        whole, _ = whole_batch(acc, ran)
        for component in scalers:
            metrics.update(component.after_update(whole))
    return metrics

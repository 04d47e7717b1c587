"""The preference update: per-sequence log-probs of chosen and rejected responses -> a preference loss
(:data:`rlvr.algorithms.PREFERENCE_LOSSES`) -> backward, optimizer step.

Offline and online training share it. Both hand over a :class:`~rlvr.types.RolloutBatch` whose rows come
in groups of equal size that hold every response a pair refers to (offline: a pair is a group of two rows,
chosen then rejected, or one row for unpaired KTO data; online: a prompt's G samples), and the row indices
of the chosen and rejected side of each pair. Micro-batches are cut at group boundaries, so a pair never
straddles two of them.

The loss of every micro-batch is its pairs' summed loss divided by the number of pairs in the whole
mini-batch across all processes, times (processes x accumulation steps) to undo the averaging of data
parallelism and gradient accumulation: the accumulated gradient is exactly that of the mean loss over the
mini-batch's pairs, whatever the micro-batch size or process count. Every process runs the same number of
forward and backward passes, also when some of its micro-batches hold no pair (ZeRO's gradient hooks
need it); such a micro-batch contributes a zero loss.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from rlvr.algorithms.preference import PreferenceInputs, build_pairs
from rlvr.rollout.base import Completion
from rlvr.trainer.batch import make_batch
from rlvr.trainer.distributed import gathered_objects, global_sums
from rlvr.trainer.logprobs import response_logprobs, shares_prompts
from rlvr.trainer.update import backward_and_step, group_permutation
from rlvr.types import RolloutBatch

__all__ = [
    "online_preference_update",
    "mismatched",
    "pair_batch",
    "preference_inputs",
    "preference_update",
    "sequence_logps",
]


def pair_batch(
    rows: Sequence[dict[str, Any]], pad_id: int, group_offset: int = 0
) -> tuple[RolloutBatch, torch.Tensor, torch.Tensor]:
    """The batch of offline preference rows (:func:`rlvr.data.pairs.load_pairs`) and the rows of each side.

    Pair rows (``chosen_ids`` / ``rejected_ids``) become two batch rows each, chosen then rejected, one
    group per pair; unpaired rows (``completion_ids``, ``label``) one row each, the desirable ones on the
    chosen side. ``sequence_rewards`` is 1 for a chosen / desirable response and 0 otherwise.
    """
    prompt_ids = [row["prompt_ids"] for row in rows]
    completions: list[Completion] = []
    rewards: list[float] = []
    chosen: list[int] = []
    rejected: list[int] = []
    for k, row in enumerate(rows):
        if "chosen_ids" in row:
            sides = [(row["chosen_ids"], True), (row["rejected_ids"], False)]
        else:
            sides = [(row["completion_ids"], bool(row["label"]))]
        for ids, good in sides:
            (chosen if good else rejected).append(len(completions))
            completions.append(Completion(k, list(ids), [0.0] * len(ids), "", "stop"))
            rewards.append(1.0 if good else 0.0)
    batch = make_batch(prompt_ids, completions, rewards, pad_id, group_offset=group_offset)
    return batch, torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long)


def mismatched(batch: RolloutBatch) -> RolloutBatch:
    """Each response with the previous row's prompt (row 0 with the last): KTO's unrelated (prompt,
    response) pairs for its KL reference point."""
    shifted = batch.select(slice(None))
    shifted.prompt_ids = torch.roll(batch.prompt_ids, 1, dims=0)  # [N, P]
    shifted.prompt_mask = torch.roll(batch.prompt_mask, 1, dims=0)  # [N, P]
    return shifted


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[N]`` summed log-probs of each response's tokens (``token_logps``, ``mask``: ``[N, T]``)."""
    return (token_logps * mask).sum(-1)


def preference_inputs(
    logps: torch.Tensor,
    batch: RolloutBatch,
    chosen_rows: torch.Tensor,
    rejected_rows: torch.Tensor,
    kl_logps: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> PreferenceInputs:
    """The loss inputs of ``batch``'s pairs: ``logps`` ``[N]`` (the policy's summed log-probs, with or
    without gradient), the batch's lengths and, where filled, its reference and sampling-policy
    log-probs, indexed by the rows of each side."""
    mask = batch.response_mask  # [N, T]
    tokens = mask.sum(-1)  # [N]
    ref = sequence_logps(batch.ref_logprobs, mask) if batch.ref_logprobs is not None else None
    old = sequence_logps(batch.old_logprobs, mask) if batch.old_logprobs is not None else None
    c, r = chosen_rows, rejected_rows
    return PreferenceInputs(
        chosen_logps=logps[c],
        rejected_logps=logps[r],
        chosen_tokens=tokens[c],
        rejected_tokens=tokens[r],
        ref_chosen_logps=ref[c] if ref is not None else None,
        ref_rejected_logps=ref[r] if ref is not None else None,
        old_chosen_logps=old[c] if old is not None else None,
        old_rejected_logps=old[r] if old is not None else None,
        kl_logps=kl_logps[0],
        ref_kl_logps=kl_logps[1],
    )


def _side(rows: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """The rows of ``rows`` in ``[start, end)``, re-indexed from ``start``."""
    return rows[(rows >= start) & (rows < end)] - start


def preference_update(
    ctx,
    batch: RolloutBatch,
    chosen_rows: torch.Tensor,
    rejected_rows: torch.Tensor,
    loss: tuple[Callable, Mapping[str, Any]],
    group_size: int,
    paired: bool = True,
    kl_logps: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Run ``epochs x num_mini_batches`` optimizer steps of the preference ``loss`` on ``batch``.

    Args:
        ctx: the :class:`rlvr.trainer.update.UpdateContext` (model, optimizer, micro-batch size, ...).
        batch: this process's rows, in groups of ``group_size`` (see the module docstring), with
            ``ref_logprobs`` / ``old_logprobs`` filled when the loss reads them.
        chosen_rows, rejected_rows: ``[P]`` row indices of each pair's two sides (unpaired: any sizes).
        loss: (preference loss function, bound hyperparameters).
        paired: the loss has one value per pair; False (KTO): one per response of either side.
        kl_logps: KTO: the (policy, reference) log-probs of the mismatched pairs of the whole batch, on
            every process.

    Returns:
        ``preference/*`` metrics: the loss's own metrics averaged over pairs (over all processes),
        ``preference/loss`` and ``actor/grad_norm``.
    """
    recipe, acc = ctx.recipe, ctx.accelerator
    train = recipe.train
    temperature = recipe.rollout.temperature
    loss_fn, loss_kwargs = loss
    batch = batch.to(acc.device)
    chosen_rows, rejected_rows = chosen_rows.to(acc.device), rejected_rows.to(acc.device)
    kl = tuple(t.to(acc.device) for t in kl_logps) if kl_logps is not None else (None, None)
    if len(batch) % (group_size * train.num_mini_batches) or ctx.micro_batch % group_size:
        raise ValueError(
            f"{len(batch)} rows in groups of {group_size}: mini-batches ({train.num_mini_batches}) and "
            f"micro-batches ({ctx.micro_batch} rows) must hold whole groups"
        )
    ctx.model.train()
    mini = len(batch) // train.num_mini_batches
    scale = acc.num_processes * ctx.grad_accum
    share_prompts = shares_prompts(ctx.recipe)
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    for _epoch in range(train.epochs):
        order = torch.arange(len(batch), device=acc.device)
        if train.shuffle_mini_batches and train.num_mini_batches > 1:
            order = group_permutation(batch.group_index)  # whole groups, in a random order
        position = torch.empty_like(order)
        position[order] = torch.arange(len(batch), device=acc.device)  # new position of each old row
        epoch_batch = batch.select(order)
        epoch_chosen, epoch_rejected = position[chosen_rows], position[rejected_rows]
        for start in range(0, len(batch), mini):
            pairs_here = len(_side(epoch_chosen, start, start + mini))
            if not paired:
                pairs_here += len(_side(epoch_rejected, start, start + mini))
            count = global_sums(acc, [float(pairs_here)])[0]
            mini_loss = 0.0
            for m in range(start, start + mini, ctx.micro_batch):
                micro = epoch_batch.select(slice(m, m + ctx.micro_batch)).trimmed()  # pairs stay in order
                c, r = (
                    _side(epoch_chosen, m, m + ctx.micro_batch),
                    _side(epoch_rejected, m, m + ctx.micro_batch),
                )
                mask = micro.response_mask  # [n, T]
                with acc.accumulate(ctx.model):
                    logprobs, _ = response_logprobs(ctx.model, micro, temperature, share_prompts)  # [n, T]
                    seq = sequence_logps(logprobs, mask)  # [n]
                    inputs = preference_inputs(seq, micro, c, r, kl)
                    per_pair, metrics = loss_fn(inputs, **loss_kwargs)  # [p]
                    micro_loss = per_pair.sum() / max(count, 1.0) + 0.0 * seq.sum()  # graph even with no pair
                    grad_norm = backward_and_step(ctx, micro_loss * scale)
                mini_loss += float(micro_loss.detach())
                n = float(per_pair.numel())
                if n:
                    for key, value in metrics.items():
                        sums[f"preference/{key}"] += float(value) * n
                        weights[f"preference/{key}"] += n
                if grad_norm is not None:
                    sums["actor/grad_norm"] += float(grad_norm)
                    weights["actor/grad_norm"] += 1.0
            sums["preference/loss"] += global_sums(acc, [mini_loss])[0]
            weights["preference/loss"] += 1.0
    # pair-weighted means over every process (a process may hold no pairs, or other metric names)
    keys = sorted(set(sums) - {"preference/loss", "actor/grad_norm"})
    keys = sorted(set(gathered_objects(acc, keys)))
    totals = global_sums(acc, [sums[k] for k in keys] + [weights[k] for k in keys])
    result = {k: totals[i] / totals[len(keys) + i] for i, k in enumerate(keys) if totals[len(keys) + i] > 0}
    for key in ("preference/loss", "actor/grad_norm"):
        if weights[key] > 0:
            result[key] = sums[key] / weights[key]
    return result


def online_preference_update(
    ctx, batch: RolloutBatch, loss: tuple[Callable, Mapping[str, Any]], settings, group_size: int
) -> dict[str, float]:
    """Online / iterative preference optimisation from verifiable rewards (Iterative RPO, Pang et al. 2024;
    online DPO): the pairs of each prompt's ``group_size`` scored samples
    (:func:`rlvr.algorithms.preference.build_pairs` with ``settings.pairing``, ``min_margin``,
    ``max_pairs_per_group``), then :func:`preference_update`. Groups without two samples of different
    reward give no pair and are counted (``pairs/groups_dropped``, summed over processes)."""
    chosen, rejected, pair_metrics = build_pairs(
        batch.sequence_rewards,
        batch.group_index,
        settings.pairing,
        min_margin=settings.min_margin,
        max_pairs_per_group=settings.max_pairs_per_group,
    )
    metrics = preference_update(ctx, batch, chosen, rejected, loss, group_size)
    keys = sorted(pair_metrics)
    metrics.update(zip(keys, global_sums(ctx.accelerator, [pair_metrics[k] for k in keys]), strict=True))
    return metrics

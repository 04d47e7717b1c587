"""Turn engine completions and their rewards into a padded :class:`~rlvr.types.RolloutBatch`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch

from rlvr.rollout.base import Completion
from rlvr.types import RolloutBatch


def pad_id(tokenizer) -> int:
    """The id responses and prompts are padded with: the tokenizer's pad token, else its EOS token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def row_attention(batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(attention [N, P+T], position_ids [N, P+T])`` of the rows ``prompt + response``: the prompt's and
    the response's padding masked, and positions counted over real tokens only (a left-padded prompt
    starts at 0; padding gets position 0)."""
    attention = torch.cat([batch.prompt_mask, batch.response_mask.long()], dim=1)  # [N, P+T]
    return attention, (attention.cumsum(dim=1) - 1).clamp(min=0)


def micro_batch_rows(
    batch: RolloutBatch,
    size: int,
    by_length: bool,
    max_tokens: int | None = None,
    whole_groups: bool = False,
    count: int | None = None,
    idle: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """The row indices of ``batch``'s micro-batches.

    Rows are dealt in units: one row, or with ``whole_groups`` the consecutive rows of one prompt group (a
    loss that compares a prompt's samples needs them together). With ``by_length`` (or a token budget)
    the units are taken longest first (a unit's length: its longest prompt + response; stable), so rows
    of similar length share a micro-batch and a short one is not padded to the batch's longest.

    Without ``max_tokens`` a micro-batch takes units up to ``size`` rows. With ``max_tokens`` it takes
    them while it has at most ``size`` rows and ``rows x (longest prompt + longest response)`` (its
    padded tokens once trimmed) stays within ``max_tokens``; a unit longer than that is a micro-batch of
    its own.

    ``count``: split micro-batches until there are that many (under data parallelism every process must
    run the same number of forward/backward passes per optimizer step): the one with the most padded
    tokens is halved, between units, again and again. Raises ``RuntimeError`` when there are fewer units.

    ``idle``: ``[N]`` bool, rows that add nothing to the gradient (see ``train.skip_zero_advantage``). A
    unit of idle rows only is left out, except to make up ``count`` when no micro-batch can be halved any
    more, and when no other unit is left (one micro-batch, so that the optimizer still steps); the shortest
    idle units with a response token are taken then, one per micro-batch.
    """
    n = len(batch)
    prompt_len = batch.prompt_mask.sum(1).tolist()  # [N] as ints: one device sync, not one per row
    response_len = batch.response_mask.sum(1).long().tolist()
    if whole_groups:
        _, run = torch.unique_consecutive(batch.group_index.cpu(), return_inverse=True)  # [N]
        units = [torch.nonzero(run == u).flatten() for u in range(int(run.max()) + 1 if n else 0)]
    else:
        units = [torch.tensor([i]) for i in range(n)]
    length = lambda unit: max(prompt_len[i] + response_len[i] for i in unit.tolist())  # noqa: E731
    total = len(units)
    spare: list[torch.Tensor] = []  # idle units, the shortest with a response token first
    if idle is not None:
        still = idle.tolist()
        # a filler with a response token, so that its micro-batch has statistics to report
        filler_order = lambda unit: (max(response_len[i] for i in unit.tolist()) == 0, length(unit))  # noqa: E731
        unit_idle = [all(still[i] for i in u.tolist()) for u in units]
        spare = sorted((u for u, off in zip(units, unit_idle, strict=True) if off), key=filler_order)
        units = [u for u, off in zip(units, unit_idle, strict=True) if not off]
    if by_length or max_tokens is not None:  # stable: ties keep their order
        units.sort(key=lambda unit: -length(unit))

    def padded(chunk: list[torch.Tensor]) -> int:
        rows = torch.cat(chunk).tolist()
        return len(rows) * (max(prompt_len[i] for i in rows) + max(response_len[i] for i in rows))

    chunks: list[list[torch.Tensor]] = []
    for unit in units:
        fits = bool(chunks) and sum(map(len, chunks[-1])) + len(unit) <= size
        if fits and max_tokens is not None:
            fits = padded([*chunks[-1], unit]) <= max_tokens
        if fits:
            chunks[-1].append(unit)
        else:
            chunks.append([unit])
    if not chunks and spare:
        chunks.append([spare.pop(0)])
    while count is not None and len(chunks) < count:
        splittable = [i for i, chunk in enumerate(chunks) if len(chunk) > 1]
        if splittable:
            i = max(splittable, key=lambda j: padded(chunks[j]))
            chunk = chunks.pop(i)
            chunks[i:i] = [chunk[: len(chunk) // 2], chunk[len(chunk) // 2 :]]
        elif spare:
            chunks.append([spare.pop(0)])
        else:
            raise RuntimeError(f"cannot deal {total} units into {count} micro-batches")
    device = batch.response_ids.device
    return [torch.cat(chunk).to(device) for chunk in chunks]


def micro_batches(batch: RolloutBatch, chunks: list[torch.Tensor]) -> Iterator[RolloutBatch]:
    """``batch``'s micro-batches, one per row-index tensor of ``chunks`` (:func:`micro_batch_rows`), each
    without the padding columns none of its rows uses (:meth:`RolloutBatch.trimmed`).

    Every loss is normalised by counts of the whole mini-batch, so the accumulated gradient does not depend
    on which rows share a micro-batch, nor on how many micro-batches there are. (Losses that select tokens
    within a micro-batch, such as clip_cov / kl_cov / lp_reg, select among the rows they are given.)"""
    for rows in chunks:
        yield batch.select(rows).trimmed()


def make_batch(
    prompt_ids: list[list[int]],
    completions: list[Completion],
    rewards: list[float],
    pad_id: int,
    group_offset: int = 0,
) -> RolloutBatch:
    """Pad prompts to the left and responses to the right; ``group_index`` = prompt index + offset.

    ``group_offset`` makes group ids unique across processes (rank * prompts per process).
    """
    n = len(completions)
    if len(rewards) != n:
        raise ValueError(f"{len(rewards)} rewards for {n} completions")
    width_p = max(len(prompt_ids[c.prompt_index]) for c in completions)
    width_t = max(1, max(len(c.token_ids) for c in completions))
    prompt = torch.full((n, width_p), pad_id, dtype=torch.long)  # [N, P]
    prompt_mask = torch.zeros((n, width_p), dtype=torch.long)  # [N, P]
    response = torch.full((n, width_t), pad_id, dtype=torch.long)  # [N, T]
    response_mask = torch.zeros((n, width_t))  # [N, T]
    engine_logprobs = torch.zeros((n, width_t))  # [N, T]
    for row, c in enumerate(completions):
        ids = prompt_ids[c.prompt_index]
        prompt[row, width_p - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        prompt_mask[row, width_p - len(ids) :] = 1
        length = len(c.token_ids)
        if length:
            response[row, :length] = torch.tensor(c.token_ids, dtype=torch.long)
            response_mask[row, :length] = 1.0
            engine_logprobs[row, :length] = torch.tensor(c.logprobs, dtype=torch.float)
    return RolloutBatch(
        prompt_ids=prompt,
        prompt_mask=prompt_mask,
        response_ids=response,
        response_mask=response_mask,
        engine_logprobs=engine_logprobs,
        sequence_rewards=torch.tensor(rewards, dtype=torch.float),  # [N]
        group_index=torch.tensor([c.prompt_index + group_offset for c in completions], dtype=torch.long),
        truncated=torch.tensor([c.finish_reason == "length" for c in completions]),
    )


def batch_of_groups(groups: Sequence, pad_id: int, group_offset: int = 0) -> RolloutBatch:
    """The batch of this process's collected groups (:class:`rlvr.trainer.collect.Group`), one row per
    completion in group order, with the training rewards and, when collection made them, the baseline
    rewards (each group's baseline repeated for its completions)."""
    prompt_ids = [g.row["prompt_ids"] for g in groups]
    completions = [
        dataclasses.replace(c, prompt_index=i) for i, g in enumerate(groups) for c in g.completions
    ]
    rewards = [r for g in groups for r in g.rewards]
    batch = make_batch(prompt_ids, completions, rewards, pad_id, group_offset=group_offset)
    if groups and groups[0].baseline is not None:
        batch.baseline_rewards = torch.tensor(
            [g.baseline for g in groups for _ in g.completions], dtype=torch.float
        )  # [N]
    return batch

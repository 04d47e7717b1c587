"""Cross-process reductions: the one home of every all-reduce / all-gather the trainer does.

Each helper is a no-op copy on one process, so single-process runs need no process group. Values travel
as float64 (sums, means) or in their own dtype (gathers); every process gets the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields

import torch
from accelerate import Accelerator

from rlvr.types import RolloutBatch


def global_sums(accelerator: Accelerator, values: list[float]) -> list[float]:
    """Each of ``values`` summed over all processes, in one all-reduce (float64)."""
    if accelerator.num_processes == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(tensor, reduction="sum").cpu().tolist()


def global_max(accelerator: Accelerator, value: int) -> int:
    """The largest ``value`` over all processes."""
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.long, device=accelerator.device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return int(tensor.item())


def global_means(accelerator: Accelerator, values: Mapping[str, float]) -> dict[str, float]:
    """Each named value averaged over all processes, in one all-reduce (every process passes the same
    names; the order does not matter)."""
    keys = sorted(values)
    if accelerator.num_processes == 1:
        return {key: float(values[key]) for key in keys}
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    reduced = accelerator.reduce(tensor, reduction="mean").cpu().tolist()
    return dict(zip(keys, reduced, strict=True))


def from_main_process(accelerator: Accelerator, value: object) -> object:
    """The main process's ``value`` on every process (a picklable object; the others pass anything)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box)
    return box[0]


def gathered_objects(accelerator: Accelerator, items: list) -> list:
    """The ``items`` lists of every process, concatenated in process order (picklable objects)."""
    if accelerator.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(items)


def gathered(accelerator: Accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every process concatenated along dim 0, as float32 on the CPU."""
    return accelerator.gather(tensor.to(accelerator.device)).float().cpu()


def whole_batch(accelerator: Accelerator, batch: RolloutBatch) -> tuple[RolloutBatch, Callable]:
    """The step's batch of every process, concatenated in process order, and a function that cuts this
    process's rows back out of a tensor of the whole batch's shape (``[N_all]`` or ``[N_all, T_all]``).

    Batch-level statistics (advantage normalisation over the batch, DGPO's question weights, the entropy
    quantile of forking tokens) are computed on the whole batch, so they do not depend on how many
    processes share it. Rows are padded to the widest process's columns (responses on the right,
    prompts on the left, with 0 / a 0 mask), exactly as :func:`rlvr.trainer.batch.make_batch` pads one
    process's batch, so the whole batch equals the batch one process would build from the same samples.
    """
    n, width = len(batch), batch.response_ids.shape[1]
    if accelerator.num_processes == 1:
        return batch, lambda tensor: tensor
    shapes = accelerator.gather(
        torch.tensor([[n, width, batch.prompt_ids.shape[1]]], device=accelerator.device)
    )
    shapes = shapes.cpu().tolist()  # [processes, 3]
    rows_max, width_max, prompt_max = (max(column) for column in zip(*shapes, strict=True))
    start = sum(rows for rows, _, _ in shapes[: accelerator.process_index])
    values = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if not isinstance(value, torch.Tensor):
            values[f.name] = value
            continue
        left = f.name.startswith("prompt_")
        padded = _padded(value, rows_max, prompt_max if left else width_max, left).to(accelerator.device)
        every = accelerator.gather(padded).to(value.device)  # [processes * rows_max, ...]
        if value.dtype == torch.bool:
            every = every.bool()
        values[f.name] = torch.cat(
            [every[p * rows_max : p * rows_max + rows] for p, (rows, _, _) in enumerate(shapes)]
        )

    def own(tensor: torch.Tensor) -> torch.Tensor:
        mine = tensor[start : start + n]
        return mine[:, :width] if mine.dim() >= 2 else mine

    return RolloutBatch(**values), own


def _padded(tensor: torch.Tensor, rows: int, columns: int, left: bool) -> torch.Tensor:
    """``tensor`` ``[n]`` or ``[n, c]`` padded with zeros to ``rows`` rows and (2-D) ``columns`` columns,
    on the left when ``left``; bool becomes uint8 (gathers of bool are not supported by every backend)."""
    if tensor.dtype == torch.bool:
        tensor = tensor.to(torch.uint8)
    out = torch.zeros(
        (rows, *((columns,) if tensor.dim() >= 2 else ())), dtype=tensor.dtype, device=tensor.device
    )
    if tensor.dim() >= 2:
        c = tensor.shape[1]
        target = out[: tensor.shape[0], columns - c :] if left else out[: tensor.shape[0], :c]
        target.copy_(tensor)
    else:
        out[: tensor.shape[0]].copy_(tensor)
    return out

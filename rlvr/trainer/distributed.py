"""Cross-process reductions: the one home of every all-reduce / all-gather the trainer does.

Each helper is a no-op copy on one process, so single-process runs need no process group. Values travel
as float64 (sums, means) or in their own dtype (gathers); every process gets the same result.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from accelerate import Accelerator


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

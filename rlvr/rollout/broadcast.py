"""Weights from the trainer to rollout servers over a ``torch.distributed`` group, in bounded buckets.

The group has the trainer's sending process as rank 0 and every receiving rank of every rollout server
after it (a vLLM server with tensor parallelism t has t receiving workers). It is its own process group
on its own TCP store, apart from the trainer's data-parallel group and from vLLM's: gloo on CPU, NCCL on
GPU, the same code.

One sync is a stream of buckets. Each bucket is three broadcasts from rank 0: its sizes (an int64 pair),
a JSON header naming its tensors (name, dtype, shape), and the tensors' bytes packed into one uint8
buffer, each tensor starting on a multiple of ``ALIGN`` bytes (so that every dtype can be viewed in
place, whatever precedes it). A bucket closes once it holds ``bucket_bytes`` or more; a tensor larger
than that travels alone. A header size of 0 ends the stream. Because every bucket describes itself,
the sender can produce tensors as it goes (gathered layer by layer under ZeRO-3) and no side ever holds
the whole model in one buffer: the largest buffer is ``max(bucket_bytes + largest tensor, largest
tensor)``.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rlvr.rollout.base import engine_copy

DEFAULT_BUCKET_BYTES = 256 << 20
ALIGN = 16
"""Each tensor's bytes start at a multiple of this in a bucket's payload."""


def _padded(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


@dataclass(frozen=True)
class GroupInfo:
    """Where and how a receiving process joins the weight group (sent to servers as JSON)."""

    address: str
    port: int
    world_size: int
    rank_offset: int
    """Group rank of the server's first receiving process; its k-th receiver is rank_offset + k."""
    backend: str = "gloo"
    timeout_s: float = 600.0


def open_group(info: GroupInfo, rank: int) -> dist.ProcessGroup:
    """Join the weight group as ``rank`` (0: the trainer, which hosts the store). Blocks until all
    ``world_size`` ranks have joined, or raises after ``timeout_s``."""
    timeout = datetime.timedelta(seconds=info.timeout_s)
    store = dist.TCPStore(info.address, info.port, info.world_size, is_master=rank == 0, timeout=timeout)
    store = dist.PrefixStore("rlvr-weights", store)
    if info.backend == "gloo":
        group = dist.ProcessGroupGloo(store, rank, info.world_size, timeout)
    elif info.backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        group = dist.ProcessGroupNCCL(store, rank, info.world_size, options)
    else:
        raise ValueError(f"weight group backend must be gloo or nccl, got {info.backend!r}")
    return group


def receive_into(
    load: Callable[[Iterator[tuple[str, torch.Tensor]]], None],
    group: dist.ProcessGroup,
    device: torch.device | str = "cpu",
) -> None:
    """Receive one sync (:func:`receive_weights`) and hand its tensors to ``load`` as they arrive. Should
    ``load`` fail part-way (a name the engine's model lacks), the rest of the sync is still received, so
    the sender and the other receivers finish it and the load's error reaches the trainer, not a hang."""
    stream = receive_weights(group, device)
    try:
        load(stream)
    except BaseException:
        with contextlib.suppress(Exception):  # should the group fail too, the load's error is reported
            collections.deque(stream, maxlen=0)
        raise
    collections.deque(stream, maxlen=0)  # the end marker, should the loader stop before it


def close_group(group: dist.ProcessGroup) -> None:
    """Release a weight group whose run is over (a server's last run, before it joins the next): its
    NCCL communicator holds GPU memory. Aborted rather than shut down, so nothing waits on a sender that
    is gone."""
    group.abort()


def _broadcast(group: dist.ProcessGroup, tensor: torch.Tensor) -> None:
    group.broadcast(tensor, 0).wait()


def _pack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors' bytes, each padded to a multiple of ``ALIGN``."""
    sizes = [t.numel() * t.element_size() for t in tensors]
    payload = torch.zeros(sum(_padded(n) for n in sizes), dtype=torch.uint8, device=tensors[0].device)
    offset = 0
    for tensor, size in zip(tensors, sizes, strict=True):
        payload[offset : offset + size] = tensor.contiguous().reshape(-1).view(torch.uint8)
        offset += _padded(size)
    return payload


def _send_bucket(group, names, tensors, device) -> None:
    header = json.dumps(
        [[n, str(t.dtype).removeprefix("torch."), list(t.shape)] for n, t in zip(names, tensors, strict=True)]
    ).encode()
    payload = _pack(tensors)
    _broadcast(group, torch.tensor([len(header), payload.numel()], dtype=torch.int64, device=device))
    _broadcast(group, torch.frombuffer(bytearray(header), dtype=torch.uint8).to(device))
    _broadcast(group, payload)


def send_weights(
    group: dist.ProcessGroup,
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    dtype: torch.dtype | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    device: torch.device | str = "cpu",
) -> int:
    """Broadcast ``named_tensors`` from rank 0, floating-point ones cast to ``dtype`` (the engine's:
    half the bytes of float32 for bf16, and nothing to convert on arrival); returns the bytes sent.

    Each tensor is copied as it arrives, so a producer may free or reuse its memory once the next one is
    asked for (a ZeRO-3 gather scope)."""
    device = torch.device(device)
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    size = sent = 0
    for name, tensor in named_tensors:
        tensor = engine_copy(tensor, dtype, device)
        names.append(name)
        tensors.append(tensor)
        size += _padded(tensor.numel() * tensor.element_size())
        if size >= bucket_bytes:
            _send_bucket(group, names, tensors, device)
            sent += size
            names, tensors, size = [], [], 0
    if names:
        _send_bucket(group, names, tensors, device)
        sent += size
    _broadcast(group, torch.zeros(2, dtype=torch.int64, device=device))
    return sent


def receive_weights(
    group: dist.ProcessGroup, device: torch.device | str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors rank 0 sends with :func:`send_weights`, one bucket at a time (a generator: pass it to
    a loader that consumes as it goes, so at most one bucket is held)."""
    device = torch.device(device)
    while True:
        sizes = torch.zeros(2, dtype=torch.int64, device=device)
        _broadcast(group, sizes)
        header_len, payload_len = (int(v) for v in sizes.tolist())
        if header_len == 0:
            return
        header = torch.empty(header_len, dtype=torch.uint8, device=device)
        _broadcast(group, header)
        payload = torch.empty(payload_len, dtype=torch.uint8, device=device)
        _broadcast(group, payload)
        offset = 0
        for name, dtype_name, shape in json.loads(header.cpu().numpy().tobytes()):
            dtype = getattr(torch, dtype_name)
            count = int(torch.Size(shape).numel()) * dtype.itemsize
            yield name, payload[offset : offset + count].view(dtype).view(shape)
            offset += _padded(count)

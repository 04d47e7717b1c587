"""One rollout engine shared by a group of training processes, sharded over them (tensor parallelism).

A colocated vLLM engine with ``rollout.tensor_parallel_size: k`` on a run of several training processes
puts its k shards in k consecutive training processes, one shard in each (vLLM's ``external_launcher``
executor: no worker processes of its own; on a GPU machine each shard sits on its process's GPU). Every
member of the group runs the same engine on the same requests: tensor parallelism exchanges activations
between the shards at each layer, so the members must step together, and each ends with the whole
output. :class:`GroupEngine` makes that so: at each ``generate`` the members gather their requests
within the group, every member runs all of them, and each keeps its own. New weights need no gathering:
each member loads the full stream into its own shard.

When only one process generates (the main process's evaluation during training), the other members of
its group follow it (:func:`follow`) until it lets them go (:func:`leading`); they run the same requests
and drop the outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from rlvr.rollout.base import Completion, SamplingConfig

_DONE = "done"
"""A leader's contribution that ends its followers' loop."""


def tensor_parallel_groups(world_size: int, size: int):
    """This process's group of ``size`` consecutive ranks (``world_size // size`` groups) for exchanging
    requests: a gloo group, so that Python objects travel over the CPU on any device. Every process must
    call this (torch.distributed makes every group collectively)."""
    import torch.distributed as dist

    if world_size % size:
        raise ValueError(f"{world_size} training processes do not split into groups of {size}")
    group, _ = dist.new_subgroups_by_enumeration(
        [list(range(start, start + size)) for start in range(0, world_size, size)], backend="gloo"
    )
    return group


class GroupEngine:
    """A sharded engine seen by one member of its group (see the module docstring): the members call
    every method together, each with its own requests."""

    def __init__(self, engine, group) -> None:
        import torch.distributed as dist

        self.engine, self.group = engine, group
        self.ranks = dist.get_process_group_ranks(group)
        """The members' global ranks, in member order."""
        self.size, self.member = len(self.ranks), dist.get_rank(group)

    def _gather(self, contribution) -> list:
        import torch.distributed as dist

        gathered: list = [None] * self.size
        dist.all_gather_object(gathered, contribution, group=self.group)
        return gathered

    def _run(self, gathered: list) -> list[list[list[Completion]]]:
        """Run every member's requests (a list each, or ``_DONE``) in one pass; results per member."""
        lists = [c if isinstance(c, list) else [] for c in gathered]
        flat = [request for requests in lists for request in requests]
        results = self.engine.generate_many(flat) if flat else []
        out, start = [], 0
        for requests in lists:
            out.append(results[start : start + len(requests)])
            start += len(requests)
        return out

    def generate_many(self, requests: list[tuple[list[list[int]], SamplingConfig]]) -> list[list[Completion]]:
        return self._run(self._gather(list(requests)))[self.member]

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> list[Completion]:
        return self.generate_many([(prompt_ids, sampling)])[0]

    def follow(self) -> None:
        """Run the group's requests, contributing none, until a member ends its :func:`leading` block."""
        while True:
            gathered = self._gather([])
            if _DONE in gathered:
                return
            self._run(gathered)

    def release_followers(self) -> None:
        self._gather(_DONE)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.engine.update_weights(named_tensors)

    def release_memory(self) -> None:
        self.engine.release_memory()

    def close(self) -> None:
        self.engine.close()

    def __getattr__(self, name: str):  # the wrapped engine's other attributes (last_sync_s, tokenizer...)
        return getattr(self.__dict__["engine"], name)


@contextlib.contextmanager
def leading(engine) -> Iterator[None]:
    """A block in which this process alone calls ``engine`` (its group's other members are in
    :func:`follow`); nothing for an engine without a group."""
    try:
        yield
    finally:
        if isinstance(engine, GroupEngine):
            engine.release_followers()


def follow(engine, leader: int) -> None:
    """Serve the block that process ``leader`` (a global rank) runs in :func:`leading`, when it is in this
    process's group; returns at once otherwise, and for an engine without a group."""
    if isinstance(engine, GroupEngine) and leader in engine.ranks:
        engine.follow()

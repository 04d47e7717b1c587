"""Prompt samplers: which prompts go into the next rollout batch.

A sampler walks a prompt dataset (anything with ``len()`` and ``[i]`` -> dict, e.g.
:class:`rlvr.data.loading.PromptDataset`) and hands out global batches. Samplers are registered in
:data:`SAMPLERS` and built with :func:`make_sampler`; their ``state_dict`` goes into checkpoints so that a
resumed run draws exactly the batches the uninterrupted run would have drawn.

With data parallelism every rank builds the same sampler with the same seed, draws the same global batch
and keeps its own part with :func:`shard`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rlvr.registry import Registry


@runtime_checkable
class PromptSampler(Protocol):
    """What the trainer needs from a sampler."""

    def next_batch(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` prompts (the global batch; see :func:`shard`)."""
        ...

    def update(self, stats: list[dict[str, Any]]) -> None:
        """Per-prompt results of the last batch, e.g. ``{"index": 3, "pass_rate": 0.25}``."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


SAMPLERS: Registry[type] = Registry("sampler")


def make_sampler(
    name: str, dataset: Sequence[dict[str, Any]], *, seed: int = 0, **kwargs: Any
) -> PromptSampler:
    """Build the sampler registered as ``name`` over ``dataset``."""
    return SAMPLERS.get(name)(dataset, seed=seed, **kwargs)


@SAMPLERS.register("random")
class RandomSampler:
    """Epoch-wise shuffling: each epoch visits every prompt once, in an order fixed by ``(seed, epoch)``.

    Batches run across epoch boundaries. The state is ``(epoch, position, seed)``, and the order of an
    epoch is recomputed from ``seed`` and ``epoch`` alone, so a restored sampler continues exactly.
    """

    shuffle = True

    def __init__(self, dataset: Sequence[dict[str, Any]], *, seed: int = 0) -> None:
        if len(dataset) == 0:
            raise ValueError("cannot sample from an empty prompt dataset")
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            size = len(self.dataset)
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(size)
            else:
                self._order = np.arange(size)
        return self._order

    def next_batch(self, n: int) -> list[dict[str, Any]]:
        if n <= 0:
            raise ValueError(f"batch size must be positive, got {n}")
        batch: list[dict[str, Any]] = []
        while len(batch) < n:
            order = self._epoch_order()
            take = order[self.position : self.position + n - len(batch)]
            batch.extend(dict(self.dataset[int(i)]) for i in take)
            self.position += len(take)
            if self.position >= len(order):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return batch

    def update(self, stats: list[dict[str, Any]]) -> None:
        """Ignored: the order does not depend on results."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "sampler": type(self).__name__,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "size": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("size", len(self.dataset)) != len(self.dataset):
            raise ValueError(
                f"sampler state was saved for {state['size']} prompts but the dataset now has "
                f"{len(self.dataset)}; resuming would not reproduce the original order"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = None

    @property
    def epochs_done(self) -> float:
        """Fractional number of passes over the dataset so far."""
        return self.epoch + self.position / len(self.dataset)


@SAMPLERS.register("sequential")
class SequentialSampler(RandomSampler):
    """Dataset order, epoch after epoch (``seed`` is kept only for a uniform interface)."""

    shuffle = False


def shard(batch: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank ``rank``'s contiguous slice of a global batch split evenly over ``world_size`` ranks."""
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world_size {world_size}")
    if len(batch) % world_size:
        raise ValueError(
            f"global batch of {len(batch)} prompts does not split evenly over {world_size} ranks"
        )
    per_rank = len(batch) // world_size
    return list(batch[rank * per_rank : (rank + 1) * per_rank])

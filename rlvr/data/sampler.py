"""Prompt samplers: which prompts go into the next rollout batch.

A sampler walks a prompt dataset (anything with ``len()`` and ``[i]`` -> dict whose ``prompt_id`` is ``i``,
e.g. :class:`rlvr.data.loading.PromptDataset`) and hands out global batches. Every sampler is registered in
:data:`SAMPLERS` and has the same contract (:class:`Sampler`): it is built as
``cls(dataset, stats, seed=..., **sampler.kwargs)``, reads the trainer's per-prompt statistics
(:class:`rlvr.data.stats.PromptStats`, updated before :meth:`Sampler.update` is called with the same
records), and its ``state_dict`` goes into checkpoints so that a resumed run draws exactly the batches the
uninterrupted run would have drawn. The curriculum samplers are in :mod:`rlvr.data.curriculum`.

With data parallelism every rank builds the same sampler with the same seed, sees the same (gathered)
statistics, draws the same global batch and keeps its own part with :func:`shard`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rlvr.data.stats import PromptStats
from rlvr.registry import Registry


@runtime_checkable
class PromptSampler(Protocol):
    """What the trainer needs from a sampler."""

    def next_batch(self, n: int, step: int = 0) -> list[dict[str, Any]]:
        """The next ``n`` prompts at training step ``step`` (the global batch; see :func:`shard`)."""
        ...

    def update(self, records: list[dict[str, Any]]) -> None:
        """Per-prompt results of the last generation round (already folded into the statistics), e.g.
        ``{"prompt_id": 3, "pass_rate": 0.25, "samples": 8, "mean_length": 41.5, "step": 2}``."""
        ...

    def metrics(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


SAMPLERS: Registry[type] = Registry("sampler", inputs=2, reserved=("seed",))
"""Sampler classes; ``inputs=2``: the dataset and the statistics are passed by the trainer, as is ``seed``."""


def default_stats(dataset: Sequence[dict[str, Any]]) -> PromptStats:
    """Fresh statistics over ``dataset`` (sources from the rows' ``data_source``)."""
    return PromptStats([row.get("data_source", "data") for row in dataset])


def make_sampler(
    name: str,
    dataset: Sequence[dict[str, Any]],
    stats: PromptStats | None = None,
    *,
    seed: int = 0,
    **kwargs: Any,
) -> PromptSampler:
    """Build the sampler registered as ``name`` over ``dataset``, its kwargs checked and defaults filled."""
    stats = default_stats(dataset) if stats is None else stats
    return SAMPLERS.get(name)(dataset, stats, seed=seed, **SAMPLERS.bind(name, kwargs))


def entropy(probs: np.ndarray) -> float:
    """Shannon entropy (nats) of a probability vector (0 log 0 = 0)."""
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum())


class Sampler:
    """Base of the registered samplers: the dataset, the statistics, a seed and a draw counter.

    A subclass implements :meth:`draw` (dataset positions for one batch). The random generator of a draw,
    :meth:`rng`, depends only on ``(seed, draws)``, so a restored sampler continues exactly.
    :meth:`metrics` reports ``active_prompts`` (prompts the last draw could pick) and ``entropy`` (of the
    distribution it drew from, in nats; ``log(active_prompts)`` for a uniform draw).
    """

    def __init__(self, dataset: Sequence[dict[str, Any]], stats: PromptStats, *, seed: int = 0) -> None:
        if len(dataset) == 0:
            raise ValueError("cannot sample from an empty prompt dataset")
        if len(stats) != len(dataset):
            raise ValueError(f"statistics cover {len(stats)} prompts, the dataset has {len(dataset)}")
        self.dataset = dataset
        self.stats = stats
        self.seed = int(seed)
        self.draws = 0
        self.last_metrics: dict[str, float] = {}

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.draws])

    def draw(self, n: int, step: int) -> list[int]:
        raise NotImplementedError

    def next_batch(self, n: int, step: int = 0) -> list[dict[str, Any]]:
        if n <= 0:
            raise ValueError(f"batch size must be positive, got {n}")
        positions = self.draw(n, step)
        self.draws += 1
        return [dict(self.dataset[i]) for i in positions]

    def update(self, records: list[dict[str, Any]]) -> None:
        """Nothing by default: most samplers read :attr:`stats`, which the trainer has already updated."""

    def metrics(self) -> dict[str, float]:
        return dict(self.last_metrics)

    def state_dict(self) -> dict[str, Any]:
        return {
            "sampler": type(self).__name__,
            "seed": self.seed,
            "draws": self.draws,
            "size": len(self.dataset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("size", len(self.dataset)) != len(self.dataset):
            raise ValueError(
                f"sampler state was saved for {state['size']} prompts but the dataset now has "
                f"{len(self.dataset)}; resuming would not reproduce the original order"
            )
        if state.get("sampler", type(self).__name__) != type(self).__name__:
            raise ValueError(
                f"sampler state was saved by {state['sampler']}, this run uses {type(self).__name__}"
            )
        self.seed = int(state["seed"])
        self.draws = int(state.get("draws", 0))


def weighted_draw(rng: np.random.Generator, probs: np.ndarray, n: int) -> list[int]:
    """``n`` positions drawn with probabilities ``probs``: without replacement as far as the positions with
    positive probability allow, then with replacement for the rest."""
    k = min(n, int((probs > 0).sum()))
    first = rng.choice(len(probs), size=k, replace=False, p=probs).tolist()
    rest = rng.choice(len(probs), size=n - k, replace=True, p=probs).tolist() if n > k else []
    return first + rest


class WeightedSampler(Sampler):
    """A sampler that draws each batch from a distribution over prompts (:meth:`weights`, normalised; all
    zero falls back to uniform), without replacement within a batch."""

    def weights(self, step: int) -> np.ndarray:
        raise NotImplementedError

    def probabilities(self, step: int) -> np.ndarray:
        w = np.asarray(self.weights(step), dtype=np.float64)
        if w.shape != (len(self.dataset),) or not (np.isfinite(w).all() and (w >= 0).all()):
            raise ValueError(
                f"sampler {type(self).__name__}: weights() must give one finite weight >= 0 per prompt "
                f"({len(self.dataset)}), got shape {w.shape} with min {np.nanmin(w) if w.size else None}"
            )
        total = w.sum()
        return w / total if total > 0 else np.full(len(w), 1.0 / len(w))

    def draw(self, n: int, step: int) -> list[int]:
        probs = self.probabilities(step)
        self.last_metrics = {"active_prompts": float((probs > 0).sum()), "entropy": entropy(probs)}
        return weighted_draw(self.rng(), probs, n)


@SAMPLERS.register("random")
class RandomSampler(Sampler):
    """Epoch-wise shuffling: each epoch visits every prompt once, in an order fixed by ``(seed, epoch)``.

    Batches run across epoch boundaries. The state is ``(epoch, position, seed)``, and the order of an
    epoch is recomputed from ``seed`` and ``epoch`` alone, so a restored sampler continues exactly.
    Subclasses may skip prompts (:meth:`active`); the walk then passes over them.
    """

    shuffle = True

    def __init__(self, dataset: Sequence[dict[str, Any]], stats: PromptStats, *, seed: int = 0) -> None:
        super().__init__(dataset, stats, seed=seed)
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

    def active(self, step: int) -> np.ndarray:
        """Which prompts the walk may hand out at ``step`` (all of them here)."""
        return np.ones(len(self.dataset), dtype=bool)

    def draw(self, n: int, step: int) -> list[int]:
        active = self.active(step)
        if not active.any():  # nothing left: hand out every prompt rather than stop the run
            active = np.ones(len(self.dataset), dtype=bool)
        count = int(active.sum())
        self.last_metrics = {"active_prompts": float(count), "entropy": math.log(count)}
        batch: list[int] = []
        while len(batch) < n:
            rest = self._epoch_order()[self.position :]
            hits = np.flatnonzero(active[rest])[: n - len(batch)]  # the active prompts, in order
            batch.extend(rest[hits].tolist())
            if len(batch) < n or (len(hits) and hits[-1] + 1 == len(rest)):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None  # this epoch is used up
            else:
                self.position += int(hits[-1]) + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
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

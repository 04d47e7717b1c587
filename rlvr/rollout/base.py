"""The rollout-engine contract: sample G completions per prompt, take new weights after each update.

Engines are registered in :data:`ENGINES` by name (``vllm``, ``hf``) and built by
``ENGINES.get(name)(model_path, options)``. Both return, for every sample, the generated token ids, the
log-probability of each sampled token under the *sampling* distribution (after temperature / top-p /
top-k), and why generation stopped. With an EAD temperature schedule (:mod:`rlvr.rollout.ead`) that
distribution is ``softmax(logits / τ_t)`` at the t-th generated token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from rlvr.registry import Registry
from rlvr.rollout.ead import EADSchedule

if TYPE_CHECKING:
    from rlvr.config import SamplingSettings


LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)
"""The launcher's torch.distributed variables: an engine's own processes (vLLM's workers, a rollout
server) are not ranks of the trainer and must not inherit them."""


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample: ``n`` completions per prompt (G), with the usual decoding knobs."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None
    """Base seed; prompt i of a call uses seed + i, so a call is reproducible on the same weights."""
    temperature_schedule: EADSchedule | None = None
    """Per-token temperature τ_t (Exploratory Annealed Decoding, :mod:`rlvr.rollout.ead`). When set, τ_t IS
    the sampling temperature of the t-th generated token (1.0 during its warm-up), applied before
    top-p / top-k, and the reported logprobs are under it; ``temperature`` must then be 1.0 (nothing
    multiplies τ_t). The vLLM engine must be built with ``EngineOptions(temperature_schedule=True)``."""

    def __post_init__(self) -> None:
        if self.temperature_schedule is not None and self.temperature != 1.0:
            raise ValueError(
                "temperature_schedule replaces temperature: leave temperature at 1.0 "
                f"(got {self.temperature}); scale the schedule's tau_max / tau_min instead"
            )

    @classmethod
    def from_settings(
        cls,
        settings: SamplingSettings,
        *,
        n: int,
        seed: int | None = None,
        temperature_schedule: EADSchedule | None = None,
    ) -> SamplingConfig:
        """The engine-side form of a recipe's ``rollout`` or a benchmark's ``sampling`` section.

        ``settings`` is a :class:`rlvr.config.SamplingSettings` (``RolloutConfig``, ``SamplingSpec``); the
        number of samples per prompt is passed as ``n`` because the two sections name it differently
        (``num_generations``, ``n``).
        """
        return cls(
            n=n,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            max_tokens=settings.max_tokens,
            stop=tuple(settings.stop),
            seed=seed,
            temperature_schedule=temperature_schedule,
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        """JSON-ready form (a rollout server's request)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SamplingConfig:
        schedule = data.get("temperature_schedule")
        return cls(
            **{
                **data,
                "stop": tuple(data.get("stop", ())),
                "temperature_schedule": None if schedule is None else EADSchedule(**schedule),
            }
        )


@dataclass
class Completion:
    """One sampled completion of one prompt."""

    prompt_index: int
    """Index of its prompt in the ``generate`` call."""
    token_ids: list[int]
    logprobs: list[float]
    """Log-probability of each sampled token under the sampling distribution."""
    text: str
    finish_reason: str
    """``stop`` (EOS or a stop string) or ``length`` (hit max_tokens)."""
    weight_version: int | None = None
    """Rollout servers: the number of weight syncs the server had received when it sampled this (the
    trainer counts the same), so the trainer can tell how stale a sample is. None for colocated engines."""


@dataclass
class EngineOptions:
    """Engine construction options (from the recipe's ``rollout`` and ``model`` sections)."""

    dtype: str = "float32"
    max_model_len: int = 1024
    seed: int = 0
    gpu_memory_utilization: float = 0.3
    kv_cache_gb: float = 1.0
    enforce_eager: bool = True
    device: str = "cpu"
    tensor_parallel_size: int = 1
    """vLLM: GPUs (CPU: worker processes) one engine shards the model over."""
    external_launcher: bool = False
    """vLLM, colocated with ``tensor_parallel_size`` > 1: the shards live in as many consecutive training
    processes, one in each, inside the process (vLLM's ``external_launcher`` executor) rather than in
    worker processes of the engine's own; the processes of a group call the engine together
    (:class:`rlvr.rollout.group.GroupEngine`) and new weights load in place, with no file or IPC."""
    shares_gpu: bool = False
    """vLLM on GPU, colocated with a training process on the same GPU: new weights arrive by CUDA IPC in
    bounded buffers (no file), and the engine sleeps during the update (vLLM's sleep mode, level 2: its
    KV cache and weights are discarded, not copied out) and wakes for the weight load, which refills
    every weight."""
    temperature_schedule: bool = False
    """vLLM: install the per-token temperature logits processor (:mod:`rlvr.rollout.vllm_ead`) so that
    ``SamplingConfig.temperature_schedule`` can be used. Off by default: an engine without it starts and
    samples exactly as before. The transformers engine always supports schedules and ignores this."""
    extra: dict = field(default_factory=dict)
    """Passed to the engine's constructor as is (vLLM: ``LLM(**extra)``; hf: ``batch_size``)."""


def engine_copy(tensor: torch.Tensor, dtype: torch.dtype | None, device=None) -> torch.Tensor:
    """A detached copy of ``tensor`` for an engine (on ``device`` when given): floating-point tensors in
    ``dtype``, the engine's (fewer bytes to move, nothing to convert on load; ``None`` keeps theirs), other
    tensors as they are. A copy, because a weight stream's producer may free or reuse a tensor once the
    next is asked for (a ZeRO-3 gather scope, :func:`rlvr.trainer.weights.policy_tensors`)."""
    cast = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    return tensor.detach().to(device=device, dtype=cast, copy=True)


class RolloutEngine(Protocol):
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> list[Completion]:
        """``sampling.n`` completions for each prompt, prompt-major (prompt 0's samples first)."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights (HF parameter names, full unsharded tensors). ``named_tensors``
        may be a generator whose tensors are valid only until the next is asked for: copy what you keep.
        The trainer calls this on every process; each must consume the stream to its end."""
        ...

    def release_memory(self) -> None:
        """Free what generation holds until the next ``update_weights`` (called before the update; a
        no-op for engines that hold nothing worth freeing)."""
        ...

    def close(self) -> None: ...


class ServedEngine(RolloutEngine, Protocol):
    """An engine a rollout server can host (:mod:`rlvr.rollout.server`): it also takes weights broadcast
    over the trainer's weight group (:mod:`rlvr.rollout.broadcast`)."""

    receivers: int
    """Processes that join the weight group (a tensor-parallel vLLM engine: one per worker)."""

    def join_weight_group(self, info) -> None: ...

    def receive_weights(self) -> None:
        """Load one sync's buckets as they arrive."""
        ...


ENGINES: Registry = Registry("rollout engine")

"""Exploratory Annealed Decoding (EAD): a per-token sampling temperature that starts hot and cools down.

Yang et al., "Let it Calm: Exploratory Annealed Decoding for Verifiable Reinforcement Learning",
arXiv 2510.05251 (code: github.com/yangalan123/EAD-RLVR). The ``t``-th generated token (``t = 0`` is the
first) is sampled at temperature

    τ_t = max(1 + τ_max − exp(t / d), τ_min)    for t ≥ c
    τ_t = 1.0                                   for t < c   (the first c "template" tokens)

so early tokens, which fix a response's direction, are explored at τ ≈ τ_max > 1 and late ones are
exploited at τ_min. Responses grow during RL, so the decay is step-aware: ``d_s = min(d_0 + 5 s, 40000)``
at training step ``s`` (:func:`ead_decay`). The annealed behaviour policy is not π_θ at temperature 1, so
the trainer must correct with importance sampling against the engine's log-probs, which both engines
report under τ_t (that is, ``log_softmax(logits / τ_t)`` of the sampled token).

This module is pure (torch only): the schedule, its scalar and tensor forms, and its transport to vLLM
workers. The engines apply it in :mod:`rlvr.rollout.vllm_ead` (vLLM logits processor) and
:mod:`rlvr.rollout.hf_engine` (transformers logits processor).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

EXTRA_ARGS_KEY = "rlvr_ead"
"""Key of the schedule in vLLM's ``SamplingParams.extra_args``."""


@dataclass(frozen=True, kw_only=True)
class EADSchedule:
    """The per-token temperature schedule of one ``generate`` call (see the module docstring).

    When set on :class:`rlvr.rollout.SamplingConfig`, τ_t *is* the sampling temperature (the config's
    ``temperature`` must stay 1.0; nothing multiplies τ_t). top-p / top-k then act on ``logits / τ_t``.
    """

    decay: float
    """d, in tokens: larger cools later. τ reaches τ_min at t = d·ln(1 + τ_max − τ_min). Step-aware:
    pass ``ead_decay(step, d0=...)``."""
    tau_max: float = 1.2
    """Temperature of the first annealed token (t = c would give 1 + τ_max − e^{c/d} ≈ τ_max)."""
    tau_min: float = 0.1
    """Floor reached late in the response."""
    warmup_tokens: int = 10
    """c: the first c generated tokens are sampled at τ = 1.0 (paper and authors' code: 10)."""

    def __post_init__(self) -> None:
        if not self.decay > 0:
            raise ValueError(f"EAD decay must be > 0, got {self.decay}")
        if not 0 < self.tau_min <= self.tau_max:
            raise ValueError(
                f"EAD needs 0 < tau_min <= tau_max, got tau_min={self.tau_min}, tau_max={self.tau_max}"
            )
        if self.warmup_tokens < 0:
            raise ValueError(f"EAD warmup_tokens must be >= 0, got {self.warmup_tokens}")

    def temperature(self, position: int) -> float:
        """τ_t of the token at generated position ``position`` (0-based)."""
        return ead_temperature(position, **asdict(self))

    def temperatures(self, positions: torch.Tensor) -> torch.Tensor:
        """τ_t for a tensor of generated positions (same shape, float32)."""
        return ead_temperatures(positions, **asdict(self))

    def to_extra_args(self) -> dict:
        """``SamplingParams.extra_args`` entry that carries this schedule into vLLM's workers."""
        return {EXTRA_ARGS_KEY: asdict(self)}

    @classmethod
    def from_extra_args(cls, extra_args: dict | None) -> EADSchedule | None:
        """The schedule a request carries, or None; raises ValueError if it is malformed."""
        entry = (extra_args or {}).get(EXTRA_ARGS_KEY)
        if entry is None:
            return None
        if not isinstance(entry, dict):
            raise ValueError(f"extra_args[{EXTRA_ARGS_KEY!r}] must be a dict, got {type(entry).__name__}")
        try:
            return cls(**entry)
        except TypeError as e:
            raise ValueError(f"bad extra_args[{EXTRA_ARGS_KEY!r}]: {e}") from None


def ead_temperature(
    position: int, *, tau_max: float, tau_min: float, decay: float, warmup_tokens: int
) -> float:
    """τ_t = max(1 + τ_max − e^{t/d}, τ_min) for ``t = position >= warmup_tokens``, else 1.0.

    ``position`` counts generated tokens before this one (the first generated token has position 0); the
    warm-up does not shift t, as in the paper and the authors' code. Written without overflow: e^{t/d}
    is only evaluated below the point ``t/d = ln(1 + τ_max − τ_min)`` where the floor takes over.
    """
    if position < warmup_tokens:
        return 1.0
    x = position / decay
    if x >= math.log(1.0 + tau_max - tau_min):
        return float(tau_min)
    return 1.0 + tau_max - math.exp(x)


def ead_temperatures(
    positions: torch.Tensor,
    *,
    tau_max: float | torch.Tensor,
    tau_min: float | torch.Tensor,
    decay: float | torch.Tensor,
    warmup_tokens: int | torch.Tensor,
) -> torch.Tensor:
    """Vectorised :func:`ead_temperature`: parameters may be scalars or tensors broadcasting with
    ``positions`` (one schedule per row). Computed in float32 on ``positions``' device, no host sync."""
    t = positions.to(torch.float32)
    annealed = torch.clamp(1.0 + tau_max - torch.exp(t / decay), min=tau_min)  # exp -> inf gives tau_min
    return torch.where(t < warmup_tokens, torch.ones_like(annealed), annealed)


def ead_decay(step: int, *, d0: float, growth: float = 5.0, d_max: float = 40000.0) -> float:
    """Global-step-aware decay ``d_s = min(d0 + growth * step, d_max)`` (paper: growth 5, cap 40000).

    Scale note: the authors' released code (``decay_mode="negexp"``) uses ``exp(t / (20 d_s))`` with
    ``d0 = 25``, i.e. an effective decay of ``20 * ead_decay(step, d0=25)`` tokens (500 at step 0, so τ
    reaches τ_min = 0.1 from τ_max = 1.2 after ~370 tokens). Pass ``decay=20 * ead_decay(...)`` to match it.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return float(min(d0 + growth * step, d_max))

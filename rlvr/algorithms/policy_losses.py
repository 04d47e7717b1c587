"""Policy-gradient surrogate losses.

Every loss is registered in :data:`POLICY_LOSSES` and has the same call signature::

    fn(logprobs, old_logprobs, advantages, mask, **hparams) -> (per_token_loss, metrics)

with ``logprobs`` ``[N, T]`` (current policy, carries the gradient), ``old_logprobs`` ``[N, T]`` (the
policy that sampled the rollouts), ``advantages`` ``[N, T]`` and ``mask`` ``[N, T]`` (1 on trained tokens).
``per_token_loss`` is ``[N, T]`` and is **not reduced**: the single place where a loss is reduced is
:func:`rlvr.algorithms.aggregation.aggregate`. ``metrics`` maps names to detached scalar tensors computed
over masked tokens only. Hyper-parameters are keyword-only, so an unknown one (a typo in a recipe) raises
``TypeError`` instead of being silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlvr.algorithms.utils import masked_mean
from rlvr.registry import Registry

__all__ = ["MAX_LOG_RATIO", "POLICY_LOSSES", "PolicyLossFn", "ppo_clip_loss"]

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``fn(logprobs, old_logprobs, advantages, mask, **hparams) -> ([N, T] loss, metrics)``."""

POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")

MAX_LOG_RATIO = 20.0
"""Bound on ``|logprobs - old_logprobs|`` before exponentiating, so that ``exp`` cannot overflow.

``exp(20) ~ 5e8``: a token that far off-policy is clipped (or dual-clipped) anyway in any sane setting,
so the bound only matters for numerical safety.
"""


def _masked_max(x: torch.Tensor, mask: torch.Tensor, empty_value: float) -> torch.Tensor:
    """Maximum of ``x`` over masked entries; ``empty_value`` when there are none (no host sync)."""
    filled = torch.where(mask, x, torch.full_like(x, float("-inf")))
    return torch.where(mask.any(), filled.max(), torch.full_like(filled.max(), empty_value))


@POLICY_LOSSES.register("ppo_clip")
@POLICY_LOSSES.register("grpo")
def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level PPO clipped surrogate (Schulman et al. 2017, arXiv 1707.06347), as used by GRPO.

    With ``ratio = exp(logprobs - old_logprobs)``::

        loss = -min(ratio * A, clip(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * A)

    GRPO (arXiv 2402.03300) uses this objective with group-relative advantages; its KL term is added
    separately (see :mod:`rlvr.algorithms.kl`). Setting ``clip_eps_high > clip_eps_low`` is DAPO's
    "clip-higher" (Yu et al. 2025, arXiv 2503.14476), which leaves more room to raise the probability of
    low-probability tokens and so keeps entropy from collapsing.

    Dual-clip PPO (Ye et al. 2020, arXiv 1912.09729) additionally bounds the objective from below for
    negative advantages, ``max(min(ratio * A, clip(ratio) * A), c * A)`` for ``A < 0`` with ``c > 1``.
    In loss form: ``loss = min(loss, -c * A)`` where ``A < 0``. Without it, a token whose ratio has grown
    huge under a negative advantage contributes an unbounded loss ``ratio * |A|``; with it, once
    ``ratio > c`` the token contributes the constant ``c * |A|`` and no gradient.

    Masked-out positions get loss 0 and no gradient; their log-probabilities may hold any value.

    Args:
        logprobs: ``[N, T]`` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: ``[N, T]`` log-probabilities under the sampling policy (treated as constants).
        advantages: ``[N, T]`` advantages (treated as constants).
        mask: ``[N, T]`` bool or float; nonzero on tokens that are trained on.
        clip_eps_low: lower clip range, ratio is clipped at ``1 - clip_eps_low``.
        clip_eps_high: upper clip range, ratio is clipped at ``1 + clip_eps_high``.
        dual_clip_c: dual-clip constant ``c > 1``, or ``None`` to disable.

    Returns:
        ``per_token_loss`` ``[N, T]`` and detached scalar metrics over masked tokens:
        ``clip_frac`` (the clipped term is the one taken and differs from the unclipped one),
        ``clip_frac_low`` / ``clip_frac_high`` (same, split by which bound clipped), ``dual_clip_frac``
        (the dual-clip bound is the one taken), ``ratio_mean``, ``ratio_min``, ``ratio_max``.
    """
    if clip_eps_low < 0 or clip_eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got low={clip_eps_low}, high={clip_eps_high}")
    if clip_eps_low >= 1:
        raise ValueError(f"clip_eps_low must be < 1 (ratio lower bound 1 - eps > 0), got {clip_eps_low}")
    if dual_clip_c is not None and dual_clip_c <= 1:
        raise ValueError(f"dual_clip_c must be > 1 (arXiv 1912.09729), got {dual_clip_c}")

    m = mask.bool()  # [N, T]
    advantages = torch.where(m, advantages.detach(), torch.zeros_like(advantages))  # [N, T]
    log_ratio = logprobs - old_logprobs.detach()  # [N, T]
    # Padding may hold arbitrary log-probs; pin it to ratio 1 so exp cannot overflow into inf * 0 = NaN.
    log_ratio = torch.where(m, log_ratio, torch.zeros_like(log_ratio))  # [N, T]
    log_ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # [N, T]
    ratio = torch.exp(log_ratio)  # [N, T]

    clipped_ratio = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)  # [N, T]
    loss_unclipped = -advantages * ratio  # [N, T]
    loss_clipped = -advantages * clipped_ratio  # [N, T]
    # -min(x, y) == max(-x, -y): the pessimistic (larger) loss is taken.
    loss = torch.maximum(loss_unclipped, loss_clipped)  # [N, T]
    clipped = loss_clipped > loss_unclipped  # [N, T] the clipped term is chosen and differs

    if dual_clip_c is not None:
        loss_dual = -dual_clip_c * advantages  # [N, T]
        dual_clipped = (advantages < 0) & (loss_dual < loss)  # [N, T]
        loss = torch.where(dual_clipped, loss_dual, loss)  # [N, T]
    else:
        dual_clipped = torch.zeros_like(m)  # [N, T]

    per_token_loss = torch.where(m, loss, torch.zeros_like(loss))  # [N, T]

    with torch.no_grad():
        ratio_d = ratio.detach()  # [N, T]
        metrics = {
            "clip_frac": masked_mean(clipped.float(), m),
            "clip_frac_low": masked_mean((clipped & (ratio_d < 1.0)).float(), m),
            "clip_frac_high": masked_mean((clipped & (ratio_d > 1.0)).float(), m),
            "dual_clip_frac": masked_mean(dual_clipped.float(), m),
            "ratio_mean": masked_mean(ratio_d, m),
            "ratio_min": -_masked_max(-ratio_d, m, empty_value=-1.0),
            "ratio_max": _masked_max(ratio_d, m, empty_value=1.0),
        }
    return per_token_loss, metrics

"""Policy-gradient surrogate losses.

Every loss is registered in :data:`POLICY_LOSSES` and has the same call signature::

    fn(logprobs, old_logprobs, advantages, mask, **hparams) -> (per_token_loss, metrics)

with ``logprobs`` ``[N, T]`` (current policy, carries the gradient), ``old_logprobs`` ``[N, T]`` (the
policy that sampled the rollouts), ``advantages`` ``[N, T]`` and ``mask`` ``[N, T]`` (1 on trained tokens).
``per_token_loss`` is ``[N, T]`` and is **not reduced**: the single place where a loss is reduced is
:func:`rlvr.algorithms.aggregation.aggregate`. ``metrics`` maps names to detached scalar tensors computed
over masked tokens only. Hyper-parameters are keyword-only, so an unknown one (a typo in a recipe) raises
``TypeError`` instead of being silently ignored.

Registered losses (``r = exp(logprobs - old_logprobs)``, the per-token importance ratio):

* ``"ppo_clip"`` / ``"grpo"`` - :func:`ppo_clip_loss`, ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)``
  with optional dual-clip (PPO arXiv 1707.06347, GRPO arXiv 2402.03300);
* ``"dapo"`` - :func:`dapo_loss`, the same surrogate with DAPO's clip-higher defaults ``0.2`` / ``0.28``
  (arXiv 2503.14476);
* ``"gspo"`` - :func:`gspo_loss`, GSPO-token: one length-normalised importance ratio per *sequence*,
  clipped at ``[1 - 3e-4, 1 + 4e-4]`` (arXiv 2507.18071);
* ``"cispo"`` - :func:`cispo_loss`, ``-sg(clip(r)) A log pi``: the IS weight is truncated, but every token
  keeps its gradient (MiniMax-M1, arXiv 2506.13585);
* ``"reinforce"`` - :func:`reinforce_loss`, ``-r A`` without clipping: vanilla policy gradient, to pair with
  baseline-corrected advantages such as RLOO's (arXiv 2402.14740).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlvr.algorithms.utils import masked_mean
from rlvr.registry import Registry

__all__ = [
    "MAX_LOG_RATIO",
    "POLICY_LOSSES",
    "PolicyLossFn",
    "cispo_loss",
    "dapo_loss",
    "gspo_loss",
    "ppo_clip_loss",
    "reinforce_loss",
]

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


def _check_clip_range(clip_eps_low: float, clip_eps_high: float) -> None:
    """Validate a ``[1 - clip_eps_low, 1 + clip_eps_high]`` clip range (shared by the clipped surrogates)."""
    if clip_eps_low < 0 or clip_eps_high < 0:
        raise ValueError(f"clip ranges must be >= 0, got low={clip_eps_low}, high={clip_eps_high}")
    if clip_eps_low >= 1:
        raise ValueError(f"clip_eps_low must be < 1 (ratio lower bound 1 - eps > 0), got {clip_eps_low}")


def _masked_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``logprobs - sg(old_logprobs)`` ``[N, T]``, pinned to 0 off the mask and clamped to ``MAX_LOG_RATIO``.

    Padding may hold arbitrary log-probs (``inf``, ``NaN``); selecting with :func:`torch.where` (rather than
    multiplying by the mask) keeps them out of the values and gives them an exact zero gradient, and ratio
    1 there means ``exp`` cannot overflow into ``inf * 0 = NaN`` further down.
    """
    log_ratio = logprobs - old_logprobs.detach()  # [N, T]
    log_ratio = torch.where(m, log_ratio, torch.zeros_like(log_ratio))  # [N, T]
    return log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # [N, T]


def _masked_advantages(advantages: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Detached advantages ``[N, T]`` with padding (possibly ``NaN``) replaced by 0."""
    return torch.where(m, advantages.detach(), torch.zeros_like(advantages))  # [N, T]


def _clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_eps_low: float, clip_eps_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic surrogate in loss form and where the clipped term is the one taken.

    Returns ``loss = -min(ratio * A, clip(ratio, 1 - low, 1 + high) * A)`` ``[N, T]`` and the bool ``[N, T]``
    of entries where the clipped term is chosen and differs from the unclipped one (zero gradient there).
    """
    clipped_ratio = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)  # [N, T]
    loss_unclipped = -advantages * ratio  # [N, T]
    loss_clipped = -advantages * clipped_ratio  # [N, T]
    # -min(x, y) == max(-x, -y): the pessimistic (larger) loss is taken.
    loss = torch.maximum(loss_unclipped, loss_clipped)  # [N, T]
    clipped = loss_clipped > loss_unclipped  # [N, T]
    return loss, clipped


def _ratio_metrics(ratio: torch.Tensor, m: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached ``ratio_mean`` / ``ratio_min`` / ``ratio_max`` over the entries where ``m`` is true."""
    ratio_d = ratio.detach()
    return {
        "ratio_mean": masked_mean(ratio_d, m),
        "ratio_min": -_masked_max(-ratio_d, m, empty_value=-1.0),
        "ratio_max": _masked_max(ratio_d, m, empty_value=1.0),
    }


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
    _check_clip_range(clip_eps_low, clip_eps_high)
    if dual_clip_c is not None and dual_clip_c <= 1:
        raise ValueError(f"dual_clip_c must be > 1 (arXiv 1912.09729), got {dual_clip_c}")

    m = mask.bool()  # [N, T]
    advantages = _masked_advantages(advantages, m)  # [N, T]
    ratio = torch.exp(_masked_log_ratio(logprobs, old_logprobs, m))  # [N, T]
    loss, clipped = _clipped_surrogate(ratio, advantages, clip_eps_low, clip_eps_high)  # [N, T] x2

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
            **_ratio_metrics(ratio_d, m),
        }
    return per_token_loss, metrics


@POLICY_LOSSES.register("dapo")
def dapo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.28,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DAPO's clipped surrogate (Yu et al. 2025, arXiv 2503.14476): :func:`ppo_clip_loss` with clip-higher.

    With ``ratio = exp(logprobs - old_logprobs)``::

        loss = -min(ratio * A, clip(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * A)

    with DAPO's decoupled defaults ``clip_eps_low = 0.2``, ``clip_eps_high = 0.28``: the larger upper range
    lets low-probability tokens with positive advantage grow further before they are clipped, which keeps
    the policy's entropy from collapsing.

    Only the clip-higher part of DAPO lives here. Its other ingredients are chosen elsewhere in the recipe:
    the **token-level** policy-gradient loss, ``(1 / sum_i |o_i|) sum_i sum_t loss_it``, is
    ``algorithm.loss_agg = "token-mean"`` (:func:`rlvr.algorithms.aggregation.aggregate`); dynamic sampling
    and the overlong reward shaping act on the batch and the rewards; DAPO also trains without a KL term.

    Args and returns are those of :func:`ppo_clip_loss` (same metrics).
    """
    return ppo_clip_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        dual_clip_c=dual_clip_c,
    )


@POLICY_LOSSES.register("gspo")
def gspo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float = 3e-4,
    clip_eps_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Group Sequence Policy Optimization in its "GSPO-token" form (Zheng et al. 2025, arXiv 2507.18071).

    GSPO replaces the per-token importance ratio by one ratio per response, normalised by its length
    (the geometric mean of the token ratios)::

        s_i = exp( (1 / |y_i|) * sum_t (log pi_theta(y_it) - log pi_old(y_it)) )

    GSPO-token gives every token the ratio ``s_it = sg[s_i] * pi_theta(y_it) / sg[pi_theta(y_it)]``, whose
    *value* is ``s_i`` and whose gradient w.r.t. ``log pi_theta(y_it)`` is ``s_i``; then::

        loss_it = -min(s_it * A_it, clip(s_it, 1 - clip_eps_low, 1 + clip_eps_high) * A_it)

    The paper's objective averages over each response's tokens and then over responses,
    ``J = (1/G) sum_i (1/|y_i|) sum_t min(...)``, i.e. ``loss_agg = "seq-mean-token-mean"``. With one
    advantage per response (``A_it = A_i``) the aggregated loss then equals the sequence-level GSPO loss
    ``-(1/G) sum_i min(s_i A_i, clip(s_i) A_i)`` in value, and its gradient w.r.t. ``logprobs[i, t]`` is
    ``-A_i s_i / (G |y_i|)`` for a sequence that is not clipped and ``0`` for one that is, which is
    exactly the gradient of the sequence-level objective (``d s_i / d log pi(y_it) = s_i / |y_i|``). Per-token
    advantages (the point of GSPO-token) are allowed; the ratio stays per sequence.

    Clipping acts on whole responses, so the ranges are tiny: the defaults are the paper's ``3e-4`` and
    ``4e-4``. The ratio is computed in at least float32 (bf16 cannot resolve ``1 + 4e-4``). Masked-out
    positions get loss 0 and no gradient and do not enter ``s_i``; their log-probs may hold any value. A
    sequence with no masked token has ``s_i = 1``.

    Args:
        logprobs: ``[N, T]`` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: ``[N, T]`` log-probabilities under the sampling policy (treated as constants).
        advantages: ``[N, T]`` advantages (treated as constants).
        mask: ``[N, T]`` bool or float; nonzero on tokens that are trained on.
        clip_eps_low: the sequence ratio is clipped at ``1 - clip_eps_low``.
        clip_eps_high: the sequence ratio is clipped at ``1 + clip_eps_high``.

    Returns:
        ``per_token_loss`` ``[N, T]`` (in at least float32) and detached scalar metrics: ``clip_frac``,
        ``clip_frac_low``, ``clip_frac_high`` are **token-weighted** (the fraction of masked tokens whose
        clipped term is taken; with one advantage per response, the fraction of clipped responses weighted
        by their length, so comparable with the token-level losses' ``clip_frac``); ``ratio_mean``,
        ``ratio_min``, ``ratio_max`` are over the sequence ratios ``s_i`` of the non-empty responses.
    """
    _check_clip_range(clip_eps_low, clip_eps_high)
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    logprobs = logprobs.to(dtype)  # [N, T]
    m = mask.bool()  # [N, T]
    advantages = _masked_advantages(advantages, m).to(dtype)  # [N, T]

    log_ratio = _masked_log_ratio(logprobs, old_logprobs.to(dtype), m)  # [N, T]
    seq_log_ratio = masked_mean(log_ratio.detach(), m, dim=-1)  # [N] log s_i, 0 for an empty row
    # exp(lp - sg[lp]) is 1 in value and has derivative 1 w.r.t. lp: it routes the gradient to each token.
    lp = torch.where(m, logprobs, torch.zeros_like(logprobs))  # [N, T]
    ratio = torch.exp(seq_log_ratio.unsqueeze(-1) + (lp - lp.detach()))  # [N, T] value s_i, grad s_i
    loss, clipped = _clipped_surrogate(ratio, advantages, clip_eps_low, clip_eps_high)  # [N, T] x2
    per_token_loss = torch.where(m, loss, torch.zeros_like(loss))  # [N, T]

    with torch.no_grad():
        ratio_d = ratio.detach()  # [N, T]
        metrics = {
            "clip_frac": masked_mean(clipped.float(), m),
            "clip_frac_low": masked_mean((clipped & (ratio_d < 1.0)).float(), m),
            "clip_frac_high": masked_mean((clipped & (ratio_d > 1.0)).float(), m),
            **_ratio_metrics(torch.exp(seq_log_ratio), m.any(dim=-1)),  # over sequences [N]
        }
    return per_token_loss, metrics


@POLICY_LOSSES.register("cispo")
def cispo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float | None = None,
    clip_eps_high: float | None = 0.28,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped IS-weight Policy Optimization, CISPO (MiniMax-M1, arXiv 2506.13585).

    With ``ratio = exp(logprobs - old_logprobs)`` and the truncated importance-sampling weight
    ``w = clip(ratio, 1 - clip_eps_low, 1 + clip_eps_high)``::

        loss = -sg(w) * A * logprobs          so that        d loss / d logprobs = -w * A

    PPO/GRPO/DAPO zero the gradient of a token once its ratio leaves the trust region in the direction its
    advantage pushes; such tokens are often rare, low-probability "fork" tokens (e.g. "Wait",
    "Recheck"). CISPO instead truncates the importance-sampling *weight* and keeps a gradient on **every**
    token: a token with ``ratio > 1 + clip_eps_high`` still contributes ``-(1 + clip_eps_high) * A * grad
    log pi``. The paper's objective is token-level, ``1 / sum_i |o_i|`` over all tokens of the group, i.e.
    ``loss_agg = "token-mean"``.

    Defaults: the paper does not bound the weight from below (it sets ``eps_low`` "to a large value" and
    tunes only ``eps_high``); ``clip_eps_low = None`` does the same. The paper does not publish the
    ``eps_high`` it used; ``clip_eps_high = 0.28`` (DAPO's clip-higher range, a common choice in open
    implementations) is our default, and ``None`` removes the upper bound too (plain off-policy REINFORCE
    with a detached IS weight).

    The loss *value* is a pseudo-loss (``-w A log pi``), not a surrogate objective: only its gradient is
    meaningful, and it is not comparable with the values of the ratio-based losses. Masked-out positions
    get loss 0 and no gradient; their log-probs may hold any value.

    Args:
        logprobs: ``[N, T]`` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: ``[N, T]`` log-probabilities under the sampling policy (treated as constants).
        advantages: ``[N, T]`` advantages (treated as constants).
        mask: ``[N, T]`` bool or float; nonzero on tokens that are trained on.
        clip_eps_low: the weight is bounded below by ``1 - clip_eps_low`` (any value >= 1 means no bound),
            or ``None`` for no lower bound.
        clip_eps_high: the weight is bounded above by ``1 + clip_eps_high``, or ``None`` for no bound.

    Returns:
        ``per_token_loss`` ``[N, T]`` and detached scalar metrics over masked tokens: ``clip_frac`` (the
        weight was truncated; unlike PPO those tokens still get a gradient), ``clip_frac_low`` /
        ``clip_frac_high`` (by which bound), ``ratio_mean``, ``ratio_min``, ``ratio_max`` (before
        truncation).
    """
    if (clip_eps_low is not None and clip_eps_low < 0) or (clip_eps_high is not None and clip_eps_high < 0):
        raise ValueError(f"clip ranges must be >= 0 or None, got low={clip_eps_low}, high={clip_eps_high}")

    m = mask.bool()  # [N, T]
    advantages = _masked_advantages(advantages, m)  # [N, T]
    ratio = torch.exp(_masked_log_ratio(logprobs, old_logprobs, m)).detach()  # [N, T] sg: a weight only
    lower = None if clip_eps_low is None else 1.0 - clip_eps_low
    upper = None if clip_eps_high is None else 1.0 + clip_eps_high
    weight = ratio if lower is None and upper is None else ratio.clamp(min=lower, max=upper)  # [N, T]
    lp = torch.where(m, logprobs, torch.zeros_like(logprobs))  # [N, T]
    loss = -weight * advantages * lp  # [N, T]
    per_token_loss = torch.where(m, loss, torch.zeros_like(loss))  # [N, T]

    with torch.no_grad():
        clipped_low = ratio < lower if lower is not None else torch.zeros_like(m)  # [N, T]
        clipped_high = ratio > upper if upper is not None else torch.zeros_like(m)  # [N, T]
        metrics = {
            "clip_frac": masked_mean((clipped_low | clipped_high).float(), m),
            "clip_frac_low": masked_mean(clipped_low.float(), m),
            "clip_frac_high": masked_mean(clipped_high.float(), m),
            **_ratio_metrics(ratio, m),
        }
    return per_token_loss, metrics


@POLICY_LOSSES.register("reinforce")
def reinforce_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Vanilla policy gradient, REINFORCE (Williams 1992), as in RLOO (Ahmadian et al., arXiv 2402.14740).

    With ``ratio = exp(logprobs - old_logprobs)``::

        loss = -ratio * A          so that        d loss / d logprobs = -ratio * A

    On-policy (a single optimizer step per batch, ``logprobs == old_logprobs`` in value) the ratio is 1
    and the gradient is the REINFORCE estimator ``-A * grad log pi``, with whatever baseline the advantage
    estimator applied (e.g. RLOO's leave-one-out mean). Off-policy it is the unclipped importance-weighted
    estimator: there is no trust region, so pair it with one update per batch (or use ``"ppo_clip"`` /
    ``"cispo"``). The log-ratio is clamped at ``MAX_LOG_RATIO`` for numerical safety only. There are no
    hyper-parameters. Masked-out positions get loss 0 and no gradient; their log-probs may hold any value.

    Args:
        logprobs: ``[N, T]`` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: ``[N, T]`` log-probabilities under the sampling policy (treated as constants).
        advantages: ``[N, T]`` advantages (treated as constants).
        mask: ``[N, T]`` bool or float; nonzero on tokens that are trained on.

    Returns:
        ``per_token_loss`` ``[N, T]`` and detached scalar metrics over masked tokens: ``ratio_mean``,
        ``ratio_min``, ``ratio_max``.
    """
    m = mask.bool()  # [N, T]
    advantages = _masked_advantages(advantages, m)  # [N, T]
    ratio = torch.exp(_masked_log_ratio(logprobs, old_logprobs, m))  # [N, T]
    loss = -advantages * ratio  # [N, T]
    per_token_loss = torch.where(m, loss, torch.zeros_like(loss))  # [N, T]
    with torch.no_grad():
        metrics = _ratio_metrics(ratio, m)
    return per_token_loss, metrics

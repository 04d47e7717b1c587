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
  baseline-corrected advantages such as RLOO's (arXiv 2402.14740);
* ``"pacs"`` - :func:`pacs_loss`, PACS: binary cross-entropy between a group-relative implicit reward
  ``beta * sum_t log r`` and the verifier's 0/1 verdict (arXiv 2509.02522);
* ``"clip_cov"`` - :func:`clip_cov_loss`, Clip-Cov: PPO-clip, plus a random few tokens of high
  ``cov(A, log pi)`` get no gradient (Entropy Mechanism, arXiv 2505.22617);
* ``"kl_cov"`` - :func:`kl_cov_loss`, KL-Cov: ``-r A``, plus ``kl_coef * |log r|`` on the top tokens by
  ``cov(A, log pi)`` (arXiv 2505.22617);
* ``"lp_reg"`` - :func:`lp_reg_loss`, Lp-Reg: PPO-clip, plus a k3 KL pull toward a min-p filtered proxy of
  the old policy on the lowest-probability negative-advantage tokens (arXiv 2510.03222); its proxy
  log-probs come from :func:`minp_proxy_logprobs`.

Losses that read more than the four standard tensors declare the extra batch fields with
:func:`rlvr.algorithms.utils.needs` (``pacs``: ``sequence_rewards``, ``group_index``; ``lp_reg``:
``proxy_logprobs``); the trainer passes them as keyword arguments. Losses whose every token's loss is its
advantage times a function of its own row declare :func:`rlvr.algorithms.utils.zero_without_advantage`
(``ppo_clip`` / ``grpo``, ``dapo``, ``gspo``, ``cispo``, ``reinforce``): the update skips rows whose
advantages are all 0, which add nothing to their gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from rlvr.algorithms.kl import kl_k3
from rlvr.algorithms.utils import masked_max, masked_mean, masked_min, needs, zero_without_advantage
from rlvr.registry import Registry

__all__ = [
    "MAX_LOG_RATIO",
    "POLICY_LOSSES",
    "PolicyLossFn",
    "cispo_loss",
    "clip_cov_loss",
    "dapo_loss",
    "gspo_loss",
    "kl_cov_loss",
    "lp_reg_loss",
    "minp_proxy_logprobs",
    "pacs_loss",
    "ppo_clip_loss",
    "reinforce_loss",
]

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``fn(logprobs, old_logprobs, advantages, mask, **hparams) -> ([N, T] loss, metrics)``."""

POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss", inputs=4)

MAX_LOG_RATIO = 20.0
"""Bound on ``|logprobs - old_logprobs|`` before exponentiating, so that ``exp`` cannot overflow.

``exp(20) ~ 5e8``: a token that far off-policy is clipped (or dual-clipped) anyway in any sane setting,
so the bound only matters for numerical safety.
"""


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


def _clip_metrics(clipped: torch.Tensor, ratio: torch.Tensor, m: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fractions of masked tokens whose clipped term was taken: in all, below 1 and above 1."""
    return {
        "clip_frac": masked_mean(clipped.float(), m),
        "clip_frac_low": masked_mean((clipped & (ratio < 1.0)).float(), m),
        "clip_frac_high": masked_mean((clipped & (ratio > 1.0)).float(), m),
    }


def _ratio_metrics(ratio: torch.Tensor, m: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached ``ratio_mean`` / ``ratio_min`` / ``ratio_max`` over the entries where ``m`` is true."""
    ratio_d = ratio.detach()
    return {
        "ratio_mean": masked_mean(ratio_d, m),
        "ratio_min": masked_min(ratio_d, m, empty_value=1.0),
        "ratio_max": masked_max(ratio_d, m, empty_value=1.0),
    }


@POLICY_LOSSES.register("ppo_clip")
@POLICY_LOSSES.register("grpo")
@zero_without_advantage
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
            **_clip_metrics(clipped, ratio_d, m),
            "dual_clip_frac": masked_mean(dual_clipped.float(), m),
            **_ratio_metrics(ratio_d, m),
        }
    return per_token_loss, metrics


@POLICY_LOSSES.register("dapo")
@zero_without_advantage
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
@zero_without_advantage
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
            **_clip_metrics(clipped, ratio_d, m),
            **_ratio_metrics(torch.exp(seq_log_ratio), m.any(dim=-1)),  # over sequences [N]
        }
    return per_token_loss, metrics


@POLICY_LOSSES.register("cispo")
@zero_without_advantage
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
@zero_without_advantage
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


# ---------------------------------------------------------------------------------------------------------
# PACS


PACS_REWARD_METHODS: tuple[str, ...] = ("sum", "mean")
"""Valid ``reward_method`` values of :func:`pacs_loss`."""

PACS_SCORES: tuple[str, ...] = ("rloo", "grpo", "naive")
"""Valid ``score`` values of :func:`pacs_loss`."""


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for ``x >= 0`` with gradient 0 (instead of ``inf``, hence ``NaN``) where ``x == 0``."""
    positive = x > 0
    root = torch.sqrt(torch.where(positive, x, torch.ones_like(x)))
    return torch.where(positive, root, torch.zeros_like(x))


@POLICY_LOSSES.register("pacs")
@needs("sequence_rewards", "group_index")
def pacs_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    sequence_rewards: torch.Tensor,
    group_index: torch.Tensor,
    beta: float = 1.0,
    reward_method: str = "sum",
    score: str = "rloo",
    class_balanced: bool = False,
    std_eps: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PACS: RLVR as supervised learning of the verifier's verdict (arXiv 2509.02522).

    The policy itself is the classifier. Its implicit reward for response ``i`` is the log-likelihood ratio
    to the sampling policy, made group-relative into a logit ``psi_i`` that is trained with binary
    cross-entropy against the 0/1 verdict ``r_i``::

        r_hat_i = beta * sum_t (log pi_theta(y_it) - log pi_old(y_it))   reward_method = "sum" (paper's 1)
        r_hat_i = beta * mean_t log pi_theta(y_it)                        reward_method = "mean" (paper's 2)

        psi_i = r_hat_i - mean_{j != i, j in g(i)} r_hat_j                score = "rloo" (paper's default)
        psi_i = (r_hat_i - mean_g r_hat) / (std_g r_hat + std_eps)        score = "grpo" (unbiased std)
        psi_i = r_hat_i                                                   score = "naive"

        loss_i = w_i * BCEWithLogits(psi_i, r_i)

    The gradient of ``loss_i`` flows through ``psi_i`` into **every** member of the group (through the
    leave-one-out baseline, or the group mean and std): the score is the critic, the log-ratio the actor,
    and one supervised loss trains both. With ``class_balanced`` the weights are scikit-learn's
    ``'balanced'`` class weights computed from each group's labels, ``w_i = n_g / (2 * n_{g, r_i})``; a
    group whose responses all have the same label gets weight 1 (as in the authors' code). Otherwise
    ``w_i = 1``.

    Edge cases (our choices; the authors' code assumes full groups of a fixed size): groups are the
    distinct values of ``group_index`` (any labels, contiguous or not). A response with no masked token
    (e.g. dropped by overlong filtering) is left out of its group's statistics and gets no loss. In a group
    with a single response, ``"rloo"`` has no other response to compare with and uses baseline 0
    (``psi = r_hat``, the naive score); ``"grpo"`` gives ``psi = 0`` (the response minus its own mean) and
    so no gradient. ``"grpo"``'s std gets gradient 0 where it is 0 (e.g. on-policy with the ``"sum"``
    proxy, where every ``r_hat`` is 0): then ``psi = (r_hat - mean) / std_eps`` and its slope is
    ``1 / std_eps``, as in the authors' code; prefer ``"rloo"``.

    Use it with ``loss_agg: seq-mean-token-mean``: the loss is one number per response, returned
    broadcast over the response's masked tokens, so that the token mean of each row is ``loss_i`` and the
    aggregated value is the mean of ``loss_i`` over responses (the paper's ``BCEWithLogitsLoss`` with mean
    reduction). Other modes weight responses by their length. Because ``psi_i`` couples the responses of a
    group, a micro-batch must hold whole groups (the trainer enforces it); the group statistics are those of
    the call. ``advantages`` is not used: PACS builds its own score from ``sequence_rewards``.

    Args:
        logprobs: ``[N, T]`` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: ``[N, T]`` log-probabilities under the sampling policy (treated as constants).
        advantages: ``[N, T]``, unused.
        mask: ``[N, T]`` bool or float; nonzero on tokens that are trained on.
        sequence_rewards: ``[N]`` verifier verdicts in ``[0, 1]`` (the BCE targets; 0/1 for
            ``class_balanced``). Values of responses with no masked token are ignored.
        group_index: ``[N]`` integer id of the prompt each response answers.
        beta: scale of the implicit reward (the paper's scripts use 1 or 2).
        reward_method: ``"sum"`` or ``"mean"``, see above.
        score: ``"rloo"``, ``"grpo"`` or ``"naive"``, see above.
        class_balanced: weight each response by its group's balanced class weight.
        std_eps: added to the group std for ``score="grpo"``, ``> 0``.

    Returns:
        ``per_token_loss`` ``[N, T]`` (in at least float32; ``loss_i`` on each masked token of row ``i``)
        and detached scalar metrics over the responses with at least one masked token: ``bce`` (mean
        unweighted BCE), ``score_mean`` (mean ``psi``), ``reward_proxy_mean`` (mean ``r_hat``),
        ``accuracy`` (fraction where ``psi > 0`` agrees with ``r > 0.5``), and ``ratio_mean``,
        ``ratio_min``, ``ratio_max`` over masked tokens.
    """
    if reward_method not in PACS_REWARD_METHODS:
        raise ValueError(f"reward_method must be one of {PACS_REWARD_METHODS}, got {reward_method!r}")
    if score not in PACS_SCORES:
        raise ValueError(f"score must be one of {PACS_SCORES}, got {score!r}")
    if std_eps <= 0:
        raise ValueError(f"std_eps must be > 0, got {std_eps}")
    n = logprobs.shape[0]
    if tuple(sequence_rewards.shape) != (n,) or tuple(group_index.shape) != (n,):
        raise ValueError(
            f"sequence_rewards and group_index must be [N]={n}, got {tuple(sequence_rewards.shape)} and "
            f"{tuple(group_index.shape)}"
        )
    if group_index.is_floating_point() or group_index.is_complex():
        raise TypeError(f"group_index must be an integer tensor, got {group_index.dtype}")

    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    logprobs = logprobs.to(dtype)  # [N, T]
    m = mask.bool()  # [N, T]
    present = m.any(dim=-1)  # [N] responses with at least one trained token
    zeros_n = torch.zeros(n, dtype=dtype, device=logprobs.device)  # [N]

    labels = torch.where(present, sequence_rewards.detach().to(dtype), zeros_n)  # [N]
    if not bool(((labels >= 0) & (labels <= 1)).all()):
        raise ValueError("sequence_rewards must lie in [0, 1] (they are the BCE targets)")

    log_ratio = _masked_log_ratio(logprobs, old_logprobs.to(dtype), m)  # [N, T]
    if reward_method == "sum":
        reward_proxy = beta * log_ratio.sum(dim=-1)  # [N]
    else:
        lp = torch.where(m, logprobs, torch.zeros_like(logprobs))  # [N, T]
        reward_proxy = beta * masked_mean(lp, m, dim=-1)  # [N]
    reward_proxy = torch.where(present, reward_proxy, zeros_n)  # [N]

    _, inverse = torch.unique(group_index, return_inverse=True)  # [N] contiguous group ids in [0, G)
    num_groups = int(inverse.max()) + 1 if n > 0 else 0
    zeros_g = torch.zeros(num_groups, dtype=dtype, device=logprobs.device)  # [G]
    count = zeros_g.index_add(0, inverse, present.to(dtype))[inverse]  # [N] present members of i's group
    group_sum = zeros_g.index_add(0, inverse, reward_proxy)[inverse]  # [N] differentiable

    if score == "rloo":
        others = count - 1  # [N]
        baseline = torch.where(others > 0, (group_sum - reward_proxy) / others.clamp(min=1), zeros_n)  # [N]
        psi = reward_proxy - baseline  # [N]
    elif score == "grpo":
        deviation = reward_proxy - group_sum / count.clamp(min=1)  # [N]
        deviation = torch.where(present, deviation, zeros_n)  # [N]
        sq_sum = zeros_g.index_add(0, inverse, deviation * deviation)[inverse]  # [N]
        var = torch.where(count > 1, sq_sum / (count - 1).clamp(min=1), zeros_n)  # [N] unbiased
        psi = deviation / (_safe_sqrt(var) + std_eps)  # [N]
    else:
        psi = reward_proxy  # [N]
    psi = torch.where(present, psi, zeros_n)  # [N]

    if class_balanced:
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("class_balanced needs 0/1 sequence_rewards")
        positives = zeros_g.index_add(0, inverse, labels * present.to(dtype))[inverse]  # [N]
        negatives = count - positives  # [N]
        own_class = torch.where(labels == 1, positives, negatives)  # [N]
        both_classes = (positives > 0) & (negatives > 0)  # [N]
        balanced = count / (2 * own_class.clamp(min=1))  # [N] n_g / (n_classes * n_{g, r_i})
        weight = torch.where(both_classes, balanced, torch.ones_like(count))  # [N]
    else:
        weight = torch.ones_like(labels)  # [N]

    bce = F.binary_cross_entropy_with_logits(psi, labels, reduction="none")  # [N]
    seq_loss = weight * bce  # [N]
    per_token_loss = torch.where(m, seq_loss.unsqueeze(-1).expand_as(logprobs), torch.zeros_like(logprobs))

    with torch.no_grad():
        psi_d = psi.detach()  # [N]
        metrics = {
            "bce": masked_mean(bce.detach(), present),
            "score_mean": masked_mean(psi_d, present),
            "reward_proxy_mean": masked_mean(reward_proxy.detach(), present),
            "accuracy": masked_mean(((psi_d > 0) == (labels > 0.5)).to(dtype), present),
            **_ratio_metrics(torch.exp(log_ratio.detach()), m),
        }
    return per_token_loss, metrics


# ---------------------------------------------------------------------------------------------------------
# Covariance-based entropy control (Clip-Cov, KL-Cov) and Lp-Reg


def _fraction_count(n: int, fraction: float) -> int:
    """``max(1, floor(n * fraction))`` items out of ``n > 0`` (0 when ``n == 0``).

    A relative tolerance guards against ``n * fraction`` landing just below an integer in floating point
    (``100 * 0.29 = 28.999...``), which would otherwise lose one item.
    """
    if n <= 0:
        return 0
    return max(1, math.floor(n * fraction * (1 + 1e-9)))


def _token_covariance(advantages: torch.Tensor, logprobs: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Detached centred products ``(A_t - mean A) * (logp_t - mean logp)`` ``[N, T]``, 0 off the mask.

    Means are over the masked tokens of the call; the mean of these products over the masked tokens is the
    covariance ``cov(A, log pi)`` that drives the entropy change (arXiv 2505.22617).
    """
    lp = torch.where(m, logprobs.detach(), torch.zeros_like(logprobs))  # [N, T]
    adv = advantages.detach()  # [N, T], 0 off the mask
    centred = (adv - masked_mean(adv, m)) * (lp - masked_mean(lp, m))  # [N, T]
    return torch.where(m, centred, torch.zeros_like(centred))  # [N, T]


def _scatter_flags(indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool tensor shaped like ``like``, true at the flat ``indices``."""
    flags = torch.zeros(like.numel(), dtype=torch.bool, device=like.device)
    flags[indices] = True
    return flags.view(like.shape)


@POLICY_LOSSES.register("clip_cov")
def clip_cov_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    clip_ratio: float = 2e-4,
    cov_lb: float = 1.0,
    cov_ub: float = 5.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617).

    The paper shows that the policy's entropy changes by about ``-cov(log pi(y_t), A_t)``: tokens that
    are both likely and advantageous drive entropy collapse. Clip-Cov takes the PPO clipped surrogate (see
    :func:`ppo_clip_loss`) and removes the gradient of a few such tokens. With the detached per-token
    centred product over the masked tokens of the call::

        cov_t = (A_t - mean A) * (log pi_theta(y_t) - mean log pi_theta)

        candidates = {t : cov_lb <= cov_t <= cov_ub, not already clipped by PPO}
        selected   = uniform random subset of candidates, of size
                     min(|candidates|, max(1, floor(clip_ratio * n)))

    where ``n`` is the number of masked tokens. Selected tokens keep their loss *value* but detached, so
    they contribute no gradient. The subset is drawn with :func:`torch.randperm` on the global generator of
    the tensors' device (the trainer seeds it). Defaults are those of the reference code (``r = 2e-4``,
    ``omega_low = 1``, ``omega_high = 5``). As in the reference code (verl's
    ``compute_policy_loss_clip_cov``), tokens PPO already clipped (zero gradient) are not candidates;
    unlike it, a selected token's value is kept (verl multiplies it by 0), which changes the reported loss
    but not the gradient. Covariances and the count ``n`` are those of the call, i.e. of the micro-batch.

    Args:
        logprobs: ``[N, T]`` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: ``[N, T]`` log-probabilities under the sampling policy (treated as constants).
        advantages: ``[N, T]`` advantages (treated as constants).
        mask: ``[N, T]`` bool or float; nonzero on tokens that are trained on.
        clip_eps_low: lower clip range, ratio is clipped at ``1 - clip_eps_low``.
        clip_eps_high: upper clip range, ratio is clipped at ``1 + clip_eps_high``.
        clip_ratio: fraction of the masked tokens whose gradient is removed, in ``(0, 1]``.
        cov_lb: lower bound of the covariance window (inclusive).
        cov_ub: upper bound of the covariance window (inclusive).

    Returns:
        ``per_token_loss`` ``[N, T]`` and detached scalar metrics over masked tokens: ``clip_frac``,
        ``clip_frac_low``, ``clip_frac_high`` (PPO clipping, as in :func:`ppo_clip_loss`),
        ``cov_selected_frac`` (tokens whose gradient Clip-Cov removed), ``cov_candidate_frac`` (tokens in the
        covariance window), ``cov_mean`` (the covariance ``cov(A, log pi)`` itself), ``ratio_mean``,
        ``ratio_min``, ``ratio_max``.
    """
    _check_clip_range(clip_eps_low, clip_eps_high)
    if not 0 < clip_ratio <= 1:
        raise ValueError(f"clip_ratio must be in (0, 1], got {clip_ratio}")
    if cov_lb > cov_ub:
        raise ValueError(f"cov_lb must be <= cov_ub, got {cov_lb} > {cov_ub}")

    m = mask.bool()  # [N, T]
    advantages = _masked_advantages(advantages, m)  # [N, T]
    ratio = torch.exp(_masked_log_ratio(logprobs, old_logprobs, m))  # [N, T]
    loss, clipped = _clipped_surrogate(ratio, advantages, clip_eps_low, clip_eps_high)  # [N, T] x2

    with torch.no_grad():
        cov = _token_covariance(advantages, logprobs, m)  # [N, T]
        candidates = m & ~clipped & (cov >= cov_lb) & (cov <= cov_ub)  # [N, T]
        candidate_idx = candidates.flatten().nonzero().squeeze(-1)  # [C] flat indices
        num_select = min(_fraction_count(int(m.sum()), clip_ratio), candidate_idx.numel())
        if num_select > 0:
            pick = torch.randperm(candidate_idx.numel(), device=candidate_idx.device)[:num_select]  # [k]
            candidate_idx = candidate_idx[pick]
        selected = _scatter_flags(candidate_idx[:num_select], m)  # [N, T]

    loss = torch.where(selected, loss.detach(), loss)  # [N, T]
    per_token_loss = torch.where(m, loss, torch.zeros_like(loss))  # [N, T]

    with torch.no_grad():
        ratio_d = ratio.detach()  # [N, T]
        metrics = {
            **_clip_metrics(clipped, ratio_d, m),
            "cov_selected_frac": masked_mean(selected.float(), m),
            "cov_candidate_frac": masked_mean(candidates.float(), m),
            "cov_mean": masked_mean(cov, m),
            **_ratio_metrics(ratio_d, m),
        }
    return per_token_loss, metrics


@POLICY_LOSSES.register("kl_cov")
def kl_cov_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_cov_ratio: float = 2e-3,
    kl_coef: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617).

    Instead of removing gradients (:func:`clip_cov_loss`), KL-Cov puts a KL penalty toward the sampling
    policy on the tokens with the largest covariance between advantage and log-probability. With
    ``ratio = exp(logprobs - old_logprobs)`` and the detached centred product over the masked tokens of the
    call, ``cov_t = (A_t - mean A) * (log pi_theta(y_t) - mean log pi_theta)``::

        loss_t = -A_t * ratio_t                                         every token (no clipping)
        loss_t = -A_t * ratio_t + kl_coef * |log pi_theta - log pi_old|  the top-k tokens by cov_t

    with ``k = max(1, floor(kl_cov_ratio * n))`` over the ``n`` masked tokens (ties broken arbitrarily).
    This follows the reference code (verl's ``compute_policy_loss_kl_cov``): the surrogate is unclipped and
    the KL is ``|log r|``. ``kl_cov_ratio = 2e-3`` (0.2%) is the default of the copy in the Lp-Reg code
    (``k_percent=0.2``, in percent); verl's own config uses ``2e-4``, and the paper tunes it per model
    size. ``kl_coef = 1`` is both codes' default. On-policy (``log r = 0``) the penalty is 0 and has zero
    gradient. Covariances and ``n`` are those of the call, i.e. of the micro-batch.

    Args:
        logprobs: ``[N, T]`` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: ``[N, T]`` log-probabilities under the sampling policy (treated as constants).
        advantages: ``[N, T]`` advantages (treated as constants).
        mask: ``[N, T]`` bool or float; nonzero on tokens that are trained on.
        kl_cov_ratio: fraction of the masked tokens that get the KL penalty, in ``(0, 1]``.
        kl_coef: weight of the penalty, ``>= 0``.

    Returns:
        ``per_token_loss`` ``[N, T]`` and detached scalar metrics over masked tokens:
        ``cov_selected_frac`` (tokens with the penalty), ``kl_cov_kl`` (mean ``|log r|`` over them),
        ``cov_mean`` (the covariance ``cov(A, log pi)``), ``ratio_mean``, ``ratio_min``, ``ratio_max``.
    """
    if not 0 < kl_cov_ratio <= 1:
        raise ValueError(f"kl_cov_ratio must be in (0, 1], got {kl_cov_ratio}")
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")

    m = mask.bool()  # [N, T]
    advantages = _masked_advantages(advantages, m)  # [N, T]
    log_ratio = _masked_log_ratio(logprobs, old_logprobs, m)  # [N, T]
    ratio = torch.exp(log_ratio)  # [N, T]

    with torch.no_grad():
        cov = _token_covariance(advantages, logprobs, m)  # [N, T]
        k = _fraction_count(int(m.sum()), kl_cov_ratio)
        ranked = torch.where(m, cov, torch.full_like(cov, float("-inf"))).flatten()  # [N*T]
        selected = _scatter_flags(ranked.topk(k).indices, m)  # [N, T]

    abs_kl = log_ratio.abs()  # [N, T]
    loss = -advantages * ratio + torch.where(selected, kl_coef * abs_kl, torch.zeros_like(abs_kl))  # [N, T]
    per_token_loss = torch.where(m, loss, torch.zeros_like(loss))  # [N, T]

    with torch.no_grad():
        metrics = {
            "cov_selected_frac": masked_mean(selected.float(), m),
            "kl_cov_kl": masked_mean(abs_kl.detach(), selected),
            "cov_mean": masked_mean(cov, m),
            **_ratio_metrics(ratio.detach(), m),
        }
    return per_token_loss, metrics


def _lowest_fraction(values: torch.Tensor, candidates: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool ``[N, T]``: the ``max(1, floor(fraction * n))`` smallest ``values`` among the ``n`` candidates.

    Nothing when ``fraction == 0`` or there is no candidate; ties are broken arbitrarily.
    """
    if fraction <= 0:
        return torch.zeros_like(candidates)
    k = _fraction_count(int(candidates.sum()), fraction)
    if k == 0:
        return torch.zeros_like(candidates)
    ranked = torch.where(candidates, values, torch.full_like(values, float("inf"))).flatten()  # [N*T]
    return _scatter_flags(ranked.topk(k, largest=False).indices, candidates)


@POLICY_LOSSES.register("lp_reg")
@needs("proxy_logprobs", params={"proxy_logprobs": ("kappa",)})
def lp_reg_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    proxy_logprobs: torch.Tensor,
    kappa: float = 0.02,
    beta: float = 1.0,
    neg_k_percent: float = 0.01,
    pos_k_percent: float = 0.0,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.28,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Low-probability Regularization, Lp-Reg (arXiv 2510.03222).

    Negative-advantage updates keep pushing down rare but valuable tokens ("reasoning sparks"), which
    collapses entropy. Lp-Reg protects them with a KL pull toward a *proxy* policy: the sampling policy
    with min-p filtering (tokens below ``kappa`` times the most likely token's probability removed, the rest
    renormalised; :func:`minp_proxy_logprobs`). Noise tokens are filtered out of the proxy, so they are
    never protected; low-probability tokens that survive the filter are.

    Selected tokens: among the masked tokens with ``A < 0``, the ``max(1, floor(neg_k_percent * n_neg))``
    with the lowest current log-prob; likewise among those with ``A > 0`` for ``pos_k_percent`` (0, the
    default, disables the positive side); of these, only the tokens with ``log pi_theta < log pi_proxy``.
    With ``ratio = exp(logprobs - old_logprobs)`` and ``d = log pi_proxy - log pi_theta``::

        loss_t = -A_t * ratio_t + beta * (exp(d) - d - 1)                        selected tokens
        loss_t = -min(ratio_t * A_t, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A_t)  other tokens

    The KL is the k3 ("low_var_kl") estimator of KL(pi_theta || pi_proxy) with its usual safeguards
    (:func:`rlvr.algorithms.kl.kl_k3`); its gradient ``beta * (1 - exp(d))`` is negative for a selected
    token (``d > 0``), i.e. it raises the token's probability. As in the authors' code
    (``compute_policy_loss_lp_reg``) a selected token's surrogate is unclipped. Defaults are the paper's:
    ``beta = 1``, 1% of the negative tokens, no positive side; ``clip_eps_high = 0.28`` is DAPO's
    clip-higher (the released recipe sets the clip range so wide that it is inactive). The count is floored
    with at least one token, as in the reference; the reference additionally skips a side whose count is
    exactly 1 (fewer than 200 negative tokens at 1%), which we do not. Selection is over the tokens of the
    call, i.e. of the micro-batch, like the reference.

    Args:
        logprobs: ``[N, T]`` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: ``[N, T]`` log-probabilities under the sampling policy (treated as constants).
        advantages: ``[N, T]`` advantages (treated as constants).
        mask: ``[N, T]`` bool or float; nonzero on tokens that are trained on.
        proxy_logprobs: ``[N, T]`` log pi_proxy of the sampled tokens, the min-p filtered and renormalised
            *sampling* policy (treated as constants; see :func:`minp_proxy_logprobs`).
        kappa: the min-p threshold of the proxy. The loss does not read it: the trainer builds
            ``proxy_logprobs`` with it (:func:`minp_proxy_logprobs`) in its pre-update pass, which is why it
            is an argument here, next to the loss's other hyperparameters in a recipe.
        beta: weight of the KL pull, ``>= 0``.
        neg_k_percent: fraction (not percent: ``0.01`` is 1%) of negative-advantage tokens considered.
        pos_k_percent: the same for positive-advantage tokens; 0 disables.
        clip_eps_low: lower clip range of the other tokens' PPO surrogate.
        clip_eps_high: upper clip range of the other tokens' PPO surrogate.

    Returns:
        ``per_token_loss`` ``[N, T]`` and detached scalar metrics over masked tokens: ``lp_reg_frac``
        (fraction of tokens regularised), ``lp_reg_kl`` (mean k3 over them, 0 if none), ``clip_frac``,
        ``clip_frac_low``, ``clip_frac_high`` (PPO clipping among the other tokens, as a fraction of all
        masked tokens), ``ratio_mean``, ``ratio_min``, ``ratio_max``.
    """
    _check_clip_range(clip_eps_low, clip_eps_high)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if not 0 <= kappa < 1:
        raise ValueError(f"kappa is a probability ratio in [0, 1), got {kappa}")
    for name, value in (("neg_k_percent", neg_k_percent), ("pos_k_percent", pos_k_percent)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} is a fraction in [0, 1], got {value}")

    m = mask.bool()  # [N, T]
    advantages = _masked_advantages(advantages, m)  # [N, T]
    ratio = torch.exp(_masked_log_ratio(logprobs, old_logprobs, m))  # [N, T]
    ppo_loss, clipped = _clipped_surrogate(ratio, advantages, clip_eps_low, clip_eps_high)  # [N, T] x2

    lp = torch.where(m, logprobs, torch.zeros_like(logprobs))  # [N, T]
    proxy = proxy_logprobs.detach().to(lp.dtype)  # [N, T]
    proxy = torch.where(m, proxy, torch.zeros_like(proxy))  # [N, T]
    with torch.no_grad():
        lp_d = lp.detach()  # [N, T]
        lowest = _lowest_fraction(lp_d, m & (advantages < 0), neg_k_percent)  # [N, T]
        lowest |= _lowest_fraction(lp_d, m & (advantages > 0), pos_k_percent)  # [N, T]
        selected = lowest & (lp_d < proxy)  # [N, T]

    kl = kl_k3(lp, proxy)  # [N, T]
    reg_loss = -advantages * ratio + beta * kl  # [N, T]
    loss = torch.where(selected, reg_loss, ppo_loss)  # [N, T]
    per_token_loss = torch.where(m, loss, torch.zeros_like(loss))  # [N, T]

    with torch.no_grad():
        ratio_d = ratio.detach()  # [N, T]
        ppo_clipped = clipped & ~selected  # [N, T]
        metrics = {
            "lp_reg_frac": masked_mean(selected.float(), m),
            "lp_reg_kl": masked_mean(kl.detach(), selected),
            **_clip_metrics(ppo_clipped, ratio_d, m),
            **_ratio_metrics(ratio_d, m),
        }
    return per_token_loss, metrics


MINP_FILTERED_LOGIT = -1e4
"""Logit given to the tokens min-p filtering removes (as in the Lp-Reg code), rather than ``-inf``."""


@torch.no_grad()
def minp_proxy_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, kappa: float = 0.02, *, chunk_tokens: int = 1024
) -> torch.Tensor:
    """Log-probs of ``token_ids`` under Lp-Reg's proxy, the min-p filtered policy (arXiv 2510.03222).

    ``pi_proxy(a) ∝ pi(a) * 1[pi(a) >= kappa * max_a' pi(a')]``. As in the authors' code, the logits of
    the filtered tokens are set to ``-1e4`` (:data:`MINP_FILTERED_LOGIT`) and the result renormalised with
    a softmax, so a filtered token gets a log-prob of about ``-1e4`` rather than ``-inf``. The test
    ``pi(a) < kappa * max pi`` is evaluated as ``logit(a) < max logit + log(kappa)``, the same condition
    without computing the softmax. ``kappa = 0.02`` is the released recipes' ``minp_p_threshold``;
    ``kappa = 0`` filters nothing.

    Pass the logits the policy's log-probs are computed from, i.e. already divided by the sampling
    temperature (the authors' code filters before dividing; the two agree at temperature 1, the recipe's).
    The computation runs under ``no_grad`` in at least float32, ``chunk_tokens`` positions at a time
    (slices along ``N``, and along ``T`` when a row is longer), so besides the ``[N, T]`` result it holds
    only a few ``[chunk_tokens, V]`` temporaries, never a second ``[N, T, V]`` tensor.

    Args:
        logits: ``[N, T, V]`` logits of the sampling (old) policy at each response position.
        token_ids: ``[N, T]`` the sampled token ids (padding must hold a valid id, e.g. the pad token).
        kappa: min-p threshold relative to the most likely token, in ``[0, 1]``.
        chunk_tokens: number of positions processed at once.

    Returns:
        ``[N, T]`` ``log pi_proxy(token_ids)``, detached, in at least float32.
    """
    if not 0 <= kappa <= 1:
        raise ValueError(f"kappa must be in [0, 1], got {kappa}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if logits.dim() != 3 or tuple(token_ids.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"logits must be [N, T, V] and token_ids [N, T], got {tuple(logits.shape)} and "
            f"{tuple(token_ids.shape)}"
        )
    n, t, _ = logits.shape
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_kappa = math.log(kappa) if kappa > 0 else float("-inf")
    out = torch.empty(n, t, dtype=dtype, device=logits.device)  # [N, T]
    cols = max(1, min(t, chunk_tokens))
    rows = max(1, chunk_tokens // cols)
    for n0 in range(0, n, rows):
        for t0 in range(0, t, cols):
            chunk = logits[n0 : n0 + rows, t0 : t0 + cols].to(dtype)  # [n, t, V] (a view if no cast)
            threshold = chunk.amax(dim=-1, keepdim=True) + log_kappa  # [n, t, 1]
            filtered = torch.where(chunk < threshold, torch.full_like(chunk, MINP_FILTERED_LOGIT), chunk)
            ids = token_ids[n0 : n0 + rows, t0 : t0 + cols].unsqueeze(-1)  # [n, t, 1]
            picked = filtered.gather(-1, ids).squeeze(-1)  # [n, t]
            out[n0 : n0 + rows, t0 : t0 + cols] = picked - torch.logsumexp(filtered, dim=-1)
    return out

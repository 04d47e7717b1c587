"""Per-token estimators of KL(pi_theta || pi_ref).

The estimators are those of J. Schulman's note "Approximating KL divergence"
(http://joschu.net/blog/kl-approx.html). For a token ``x`` sampled from ``pi_theta`` let
``log r = log pi_theta(x) - log pi_ref(x)``; then

* ``k1 = log r`` is unbiased but has high variance and is negative on many samples;
* ``k2 = (log r)^2 / 2`` is biased but low-variance and always >= 0 (its expectation matches the KL to
  second order, so it is accurate when the two policies are close);
* ``k3 = exp(-log r) - 1 + log r`` is unbiased (``E[exp(-log r)] = E[pi_ref / pi_theta] = 1``), always
  >= 0 and low-variance. GRPO (arXiv 2402.03300, eq. 4) uses it as the per-token KL penalty in the loss.

Every estimator is registered in :data:`KL_ESTIMATORS` with the signature
``fn(logprobs [N, T], ref_logprobs [N, T], **hparams) -> [N, T]``. Estimators do not mask or reduce:
pass the result to :func:`rlvr.algorithms.aggregation.aggregate` (or fold it into token rewards).

Note that in the usual multi-update PPO/GRPO loop the tokens come from the rollout policy, not from the
current ``pi_theta``, so "unbiased" holds exactly only on the first update after sampling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlvr.registry import Registry

__all__ = ["KL_ESTIMATORS", "KLEstimatorFn", "kl_k1", "kl_k2", "kl_k3"]

KLEstimatorFn = Callable[..., torch.Tensor]
"""``fn(logprobs, ref_logprobs, **hparams) -> [N, T]`` per-token KL estimate."""

KL_ESTIMATORS: Registry[KLEstimatorFn] = Registry("kl estimator", inputs=2)


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's ``k1 = log r = logprobs - ref_logprobs`` (unbiased, high variance).

    Args:
        logprobs: ``[N, T]`` log pi_theta of the sampled tokens.
        ref_logprobs: ``[N, T]`` log pi_ref of the same tokens.

    Returns:
        ``[N, T]`` per-token estimate, unmasked.
    """
    return logprobs - ref_logprobs  # [N, T]


@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's ``k2 = 0.5 * (log r)^2`` (biased, low variance, >= 0).

    Args:
        logprobs: ``[N, T]`` log pi_theta of the sampled tokens.
        ref_logprobs: ``[N, T]`` log pi_ref of the same tokens.

    Returns:
        ``[N, T]`` per-token estimate, unmasked.
    """
    log_ratio = logprobs - ref_logprobs  # [N, T]
    return 0.5 * log_ratio.square()  # [N, T]


@KL_ESTIMATORS.register("k3")
def kl_k3(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    *,
    clamp: float | None = 10.0,
    max_log_ratio: float | None = 20.0,
) -> torch.Tensor:
    """Schulman's ``k3 = exp(-log r) - 1 + log r`` (unbiased, low variance, >= 0), GRPO's KL penalty.

    Written with ``d = ref_logprobs - logprobs = -log r`` as ``exp(d) - d - 1``. The exponential makes it
    explode when the reference assigns a token much more probability than the policy (``d`` large), so,
    as verl's ``low_var_kl`` does, two optional safeguards are applied:

    * ``max_log_ratio``: ``d`` is clamped to ``[-max_log_ratio, max_log_ratio]`` before ``exp`` so the
      result stays finite (``exp(20) ~ 5e8``);
    * ``clamp``: the estimate itself is clamped to ``[-clamp, clamp]`` (in effect ``[0, clamp]``, since
      ``k3 >= 0``), bounding one token's penalty and zeroing its gradient once the bound is hit.

    ``clamp=None`` and ``max_log_ratio=None`` give the raw estimator.

    Args:
        logprobs: ``[N, T]`` log pi_theta of the sampled tokens.
        ref_logprobs: ``[N, T]`` log pi_ref of the same tokens.
        clamp: bound on the per-token estimate, or ``None``.
        max_log_ratio: bound on ``|log r|`` before exponentiating, or ``None``.

    Returns:
        ``[N, T]`` per-token estimate, unmasked.
    """
    neg_log_ratio = ref_logprobs - logprobs  # [N, T]
    if max_log_ratio is not None:
        neg_log_ratio = neg_log_ratio.clamp(-max_log_ratio, max_log_ratio)  # [N, T]
    kl = torch.exp(neg_log_ratio) - neg_log_ratio - 1.0  # [N, T]
    if clamp is not None:
        kl = kl.clamp(-clamp, clamp)  # [N, T]
    return kl

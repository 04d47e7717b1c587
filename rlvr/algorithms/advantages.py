"""Advantage estimators.

Every estimator is registered in :data:`ADVANTAGES` and has the same call signature::

    fn(inputs: AdvantageInputs, **hparams) -> torch.Tensor  # [N, T] token-level advantages

``N`` is the number of sampled responses (``B`` prompts times ``G`` samples each) and ``T`` the padded
response length. The result is 0 wherever ``inputs.response_mask`` is 0. Estimators take whatever they
need from :class:`AdvantageInputs` (outcome rewards and group ids for the group-relative family; token
rewards and values for GAE; log-probabilities for estimators that fold a KL term into the reward), and
their hyper-parameters as keyword arguments, so new estimators are new registry entries and callers do
not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlvr.registry import Registry

__all__ = [
    "ADVANTAGES",
    "AdvantageFn",
    "AdvantageInputs",
    "GroupStatistics",
    "group_statistics",
    "grpo_advantages",
]

AdvantageFn = Callable[..., torch.Tensor]
"""``fn(inputs: AdvantageInputs, **hparams) -> [N, T]`` advantages."""

ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")


@dataclass
class AdvantageInputs:
    """Everything an advantage estimator may read, for one batch of ``N`` responses.

    Attributes:
        sequence_rewards: ``[N]`` float outcome reward of each response (e.g. 1.0 if the verifier accepts).
        group_index: ``[N]`` integer id of the prompt each response answers. Responses to the same prompt
            share an id; ids need not be contiguous, sorted or start at 0, and groups may differ in size.
        response_mask: ``[N, T]`` bool or float, 1 on response tokens that are trained on, 0 on padding.
        token_rewards: ``[N, T]`` optional per-token rewards (dense or process rewards, KL-shaped rewards).
        values: ``[N, T]`` optional critic values (PPO with GAE).
        old_logprobs: ``[N, T]`` optional log-probabilities of the sampled tokens under the rollout policy.
        ref_logprobs: ``[N, T]`` optional log-probabilities under the frozen reference policy.
    """

    sequence_rewards: torch.Tensor  # [N]
    group_index: torch.Tensor  # [N]
    response_mask: torch.Tensor  # [N, T]
    token_rewards: torch.Tensor | None = None  # [N, T]
    values: torch.Tensor | None = None  # [N, T]
    old_logprobs: torch.Tensor | None = None  # [N, T]
    ref_logprobs: torch.Tensor | None = None  # [N, T]

    def __post_init__(self) -> None:
        if self.response_mask.dim() != 2:
            raise ValueError(f"response_mask must be [N, T], got shape {tuple(self.response_mask.shape)}")
        n = self.response_mask.shape[0]
        if tuple(self.sequence_rewards.shape) != (n,):
            raise ValueError(f"sequence_rewards must be [N]={n}, got {tuple(self.sequence_rewards.shape)}")
        if tuple(self.group_index.shape) != (n,):
            raise ValueError(f"group_index must be [N]={n}, got {tuple(self.group_index.shape)}")
        if self.group_index.is_floating_point() or self.group_index.is_complex():
            raise TypeError(f"group_index must be an integer tensor, got {self.group_index.dtype}")
        for name in ("token_rewards", "values", "old_logprobs", "ref_logprobs"):
            tensor = getattr(self, name)
            if tensor is not None and tensor.shape != self.response_mask.shape:
                raise ValueError(
                    f"{name} must have the shape of response_mask {tuple(self.response_mask.shape)}, "
                    f"got {tuple(tensor.shape)}"
                )


@dataclass
class GroupStatistics:
    """Per-sample statistics of the group each sample belongs to (all ``[N]``)."""

    mean: torch.Tensor  # [N]
    std: torch.Tensor  # [N]
    count: torch.Tensor  # [N]


def group_statistics(
    values: torch.Tensor, group_index: torch.Tensor, *, unbiased: bool = True
) -> GroupStatistics:
    """Mean, standard deviation and size of each sample's group, gathered back to the samples.

    Vectorised with ``index_add_`` over a contiguous relabelling of ``group_index`` (no Python loop over
    groups). The variance is two-pass (``sum((x - mean)^2) / d``) for accuracy, with ``d = n - 1`` when
    ``unbiased`` (Bessel's correction, the :func:`torch.std` default) and ``d = n`` otherwise. A group of
    one sample, or of identical values, has exactly its value as mean and exactly 0 as std.

    Args:
        values: ``[N]`` float values (e.g. rewards).
        group_index: ``[N]`` integer group ids, arbitrary labels.
        unbiased: use Bessel's correction.
    """
    dtype = torch.promote_types(values.dtype, torch.float32)
    values = values.detach().to(dtype)  # [N]
    group_ids, inverse = torch.unique(group_index, return_inverse=True)  # [G], [N] with ids in [0, G)
    num_groups = group_ids.numel()

    counts = torch.zeros(num_groups, dtype=dtype, device=values.device)  # [G]
    counts.index_add_(0, inverse, torch.ones_like(values))
    sums = torch.zeros(num_groups, dtype=dtype, device=values.device)  # [G]
    sums.index_add_(0, inverse, values)
    group_max = torch.full((num_groups,), float("-inf"), dtype=dtype, device=values.device)  # [G]
    group_max.scatter_reduce_(0, inverse, values, reduce="amax")
    group_min = torch.full((num_groups,), float("inf"), dtype=dtype, device=values.device)  # [G]
    group_min.scatter_reduce_(0, inverse, values, reduce="amin")
    # every group has at least one member; a constant group gets its value exactly (sum / n can be off by
    # an ulp), so its deviations and std are exactly 0 rather than rounding noise
    group_mean = torch.where(group_max == group_min, group_max, sums / counts)  # [G]

    deviations = values - group_mean[inverse]  # [N]
    sq_sums = torch.zeros(num_groups, dtype=dtype, device=values.device)  # [G]
    sq_sums.index_add_(0, inverse, deviations * deviations)
    dof = counts - 1 if unbiased else counts  # [G]
    group_var = torch.where(dof > 0, sq_sums / dof.clamp(min=1), torch.zeros_like(sq_sums))  # [G]
    group_std = group_var.sqrt()  # [G]

    return GroupStatistics(mean=group_mean[inverse], std=group_std[inverse], count=counts[inverse])


@ADVANTAGES.register("grpo")
def grpo_advantages(
    inputs: AdvantageInputs,
    *,
    eps: float = 1e-6,
    std_normalize: bool = True,
    std_unbiased: bool = True,
) -> torch.Tensor:
    """Group-relative outcome advantage of GRPO (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300).

    Each response's reward is compared with the other responses to the same prompt::

        A_i = (r_i - mean_g) / (std_g + eps)        (std_normalize=True, GRPO)
        A_i =  r_i - mean_g                         (std_normalize=False, Dr. GRPO, arXiv 2503.20783)

    and the same value is given to every response token (outcome supervision). Dr. GRPO (Liu et al. 2025)
    drops the division by the group std because it up-weights prompts that are almost always or almost
    never solved.

    ``std_unbiased`` selects the sample standard deviation (Bessel-corrected, ``n - 1``), which is what
    :func:`torch.std` computes by default and what verl (``compute_grpo_outcome_advantage``) and TRL
    (``GRPOTrainer``) use; ``False`` gives the population std (``n``). A group of one sample, or a group
    whose rewards are all equal, gets advantage 0 (never ``NaN``).

    Args:
        inputs: uses ``sequence_rewards`` ``[N]``, ``group_index`` ``[N]`` and ``response_mask`` ``[N, T]``.
        eps: added to the std before dividing.
        std_normalize: divide by the group std (GRPO) or not (Dr. GRPO).
        std_unbiased: Bessel-corrected std (default, as verl and TRL) or population std.

    Returns:
        ``[N, T]`` advantages, 0 where ``response_mask`` is 0.
    """
    stats = group_statistics(inputs.sequence_rewards, inputs.group_index, unbiased=std_unbiased)
    rewards = inputs.sequence_rewards.detach().to(stats.mean.dtype)  # [N]
    advantages = rewards - stats.mean  # [N]
    if std_normalize:
        denominator = stats.std + eps  # [N]
        safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))  # [N]
        advantages = advantages / safe  # [N]
    # Singleton and constant groups already have an exactly-zero numerator (group_statistics returns
    # their exact value as mean); this makes it explicit and independent of eps.
    keep = (stats.count > 1) & (stats.std > 0)  # [N]
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))  # [N]
    mask = inputs.response_mask.to(advantages.dtype)  # [N, T]
    return advantages.unsqueeze(-1) * mask  # [N, T]

"""Advantage estimators.

Every estimator is registered in :data:`ADVANTAGES` and has the same call signature::

    fn(inputs: AdvantageInputs, **hparams) -> torch.Tensor  # [N, T] token-level advantages

``N`` is the number of sampled responses (``B`` prompts times ``G`` samples each) and ``T`` the padded
response length. The result is 0 wherever ``inputs.response_mask`` is 0. Estimators take whatever they
need from :class:`AdvantageInputs` (outcome rewards and group ids for the group-relative family; token
rewards and values for GAE; log-probabilities for estimators that fold a KL term into the reward), and
their hyper-parameters as keyword arguments, so new estimators are new registry entries and callers do
not change.

Registered estimators (outcome advantages broadcast to every response token; ``G`` is the group size):

* ``grpo``: ``(r - mean_g) / (std_g + eps)`` (GRPO, arXiv 2402.03300); ``std_normalize=False`` gives
  Dr. GRPO.
* ``dr_grpo``: ``r - mean_g`` (Dr. GRPO, arXiv 2503.20783).
* ``rloo``: ``r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_g)`` (RLOO, arXiv 2402.14740).
* ``reinforce_pp``: ``r - mean_g``, plus the return-to-go of ``token_rewards`` when given, whitened over
  all valid tokens of the batch (REINFORCE++-baseline, arXiv 2501.03262).
* ``lite_ppo`` (also ``group_mean_batch_std``): ``(r - mean_g) / (std_batch + eps)`` (Lite PPO,
  arXiv 2508.08221).
* ``batch_norm``: ``(r - mean_batch) / (std_batch + eps)`` (DLER, arXiv 2510.15110).
* ``dgpo``: ``G * (r - mean_g) / (sum_g |r - mean_g| + eps)`` (DGAE), times the difficulty weight
  ``w_q = Q * softmax_q(-acc_q / T)`` (DQW) (DGPO, arXiv 2601.20614).
* ``remax``: ``r_i - b_i`` with ``b_i`` the reward of the greedy response to the same prompt
  (``baseline_rewards``; ReMax, arXiv 2310.10505).
* ``gae`` (in :mod:`rlvr.algorithms.value`): GAE over a critic's ``values`` with the outcome reward on the
  last token, whitened over the batch (PPO; GAE, arXiv 1506.02438).

Estimators that read an optional field of :class:`AdvantageInputs` declare it with
:func:`~rlvr.algorithms.utils.needs` (``remax``: ``baseline_rewards``; ``gae``: ``values``), so the trainer
computes it (a greedy rollout, a critic forward) only when the configured estimator asks for it.
Estimators whose outcome term is centred on the group (``grpo``, ``dr_grpo``, ``rloo``, ``reinforce_pp``,
``lite_ppo``, ``dgpo``) declare :func:`~rlvr.algorithms.utils.group_relative`: with one sample per prompt
they give no reward signal, so a recipe with ``rollout.num_generations: 1`` is rejected when it loads.
``token_rewards`` is declared by the estimators that credit per-token rewards (``gae``, ``reinforce_pp``):
with ``algorithm.kl_placement: reward`` they receive the KL penalty per token; other estimators receive
its sum over the response in ``sequence_rewards``.

Groups may be uneven, interleaved and labelled arbitrarily; statistics are computed without Python loops
over groups (:func:`group_statistics`). The per-group estimators (``grpo``, ``dr_grpo``, ``rloo``,
``lite_ppo``, ``dgpo``) give 0 to singleton groups and to groups whose rewards are all equal; ``batch_norm``
and ``reinforce_pp`` normalise over the whole batch, so there only a constant batch gives 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlvr.algorithms.utils import (
    from_fields,
    group_relative,
    masked_mean,
    masked_var,
    needs,
    safe_denominator,
)
from rlvr.registry import Registry

__all__ = [
    "ADVANTAGES",
    "AdvantageFn",
    "AdvantageInputs",
    "GroupStatistics",
    "batch_norm_advantages",
    "dgpo_advantages",
    "dr_grpo_advantages",
    "group_statistics",
    "grpo_advantages",
    "lite_ppo_advantages",
    "reinforce_pp_advantages",
    "remax_advantages",
    "rloo_advantages",
]

AdvantageFn = Callable[..., torch.Tensor]
"""``fn(inputs: AdvantageInputs, **hparams) -> [N, T]`` advantages."""

ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator", inputs=1)


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
        baseline_rewards: ``[N]`` optional reward of a baseline response to each response's prompt (ReMax:
            the greedy response), repeated for every response of the prompt.
    """

    sequence_rewards: torch.Tensor  # [N]
    group_index: torch.Tensor  # [N]
    response_mask: torch.Tensor  # [N, T]
    token_rewards: torch.Tensor | None = None  # [N, T]
    values: torch.Tensor | None = None  # [N, T]
    old_logprobs: torch.Tensor | None = None  # [N, T]
    ref_logprobs: torch.Tensor | None = None  # [N, T]
    baseline_rewards: torch.Tensor | None = None  # [N]

    @classmethod
    def from_batch(cls, batch: object, **overrides: object) -> AdvantageInputs:
        """These fields of ``batch`` (a :class:`~rlvr.types.RolloutBatch`), by name (:func:`from_fields`)."""
        return from_fields(cls, batch, **overrides)

    def __post_init__(self) -> None:
        if self.response_mask.dim() != 2:
            raise ValueError(f"response_mask must be [N, T], got shape {tuple(self.response_mask.shape)}")
        n = self.response_mask.shape[0]
        if tuple(self.sequence_rewards.shape) != (n,):
            raise ValueError(f"sequence_rewards must be [N]={n}, got {tuple(self.sequence_rewards.shape)}")
        if tuple(self.group_index.shape) != (n,):
            raise ValueError(f"group_index must be [N]={n}, got {tuple(self.group_index.shape)}")
        if self.baseline_rewards is not None and tuple(self.baseline_rewards.shape) != (n,):
            raise ValueError(f"baseline_rewards must be [N]={n}, got {tuple(self.baseline_rewards.shape)}")
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
@group_relative
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


def _broadcast_to_tokens(per_sequence: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Give every response token its sequence's advantage; 0 where ``response_mask`` is 0."""
    mask = response_mask.to(per_sequence.dtype)  # [N, T]
    return per_sequence.unsqueeze(-1) * mask  # [N, T]


def _float_rewards(inputs: AdvantageInputs, dtype: torch.dtype) -> torch.Tensor:
    """``inputs.sequence_rewards``, detached, in ``dtype`` (the statistics' dtype, at least float32)."""
    return inputs.sequence_rewards.detach().to(dtype)  # [N]


@ADVANTAGES.register("dr_grpo")
@group_relative
def dr_grpo_advantages(inputs: AdvantageInputs) -> torch.Tensor:
    """Dr. GRPO ("Understanding R1-Zero-Like Training", Liu et al. 2025, arXiv 2503.20783).

    The group mean is the baseline and nothing is divided::

        A_i = r_i - mean_g

    Dividing by the group std (GRPO) up-weights questions that are almost always or almost never solved;
    Dr. GRPO drops it (and, in the loss, the per-response length normalisation, which belongs to
    :data:`LOSS_AGGREGATIONS`, not here). This entry returns exactly what
    ``grpo_advantages(inputs, std_normalize=False)`` returns; it exists so that recipes can name the method.
    Singleton and constant groups get 0.

    Args:
        inputs: uses ``sequence_rewards`` ``[N]``, ``group_index`` ``[N]`` and ``response_mask`` ``[N, T]``.

    Returns:
        ``[N, T]`` advantages, 0 where ``response_mask`` is 0.
    """
    return grpo_advantages(inputs, std_normalize=False)


@ADVANTAGES.register("rloo")
@group_relative
def rloo_advantages(inputs: AdvantageInputs) -> torch.Tensor:
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740).

    Each response is compared with the mean reward of the *other* responses to the same prompt, so its
    baseline does not depend on its own sample (an unbiased baseline)::

        A_i = r_i - (1 / (G - 1)) * sum_{j != i} r_j  =  G / (G - 1) * (r_i - mean_g)

    with ``G`` the size of the response's group (groups may differ in size). A group of one has no other
    sample to compare with and gets 0, as does a group whose rewards are all equal.

    Args:
        inputs: uses ``sequence_rewards`` ``[N]``, ``group_index`` ``[N]`` and ``response_mask`` ``[N, T]``.

    Returns:
        ``[N, T]`` advantages, 0 where ``response_mask`` is 0.
    """
    stats = group_statistics(inputs.sequence_rewards, inputs.group_index)
    rewards = _float_rewards(inputs, stats.mean.dtype)  # [N]
    count = stats.count  # [N]
    scale = count / (count - 1).clamp(min=1)  # [N]  G / (G - 1)
    advantages = scale * (rewards - stats.mean)  # [N]
    advantages = torch.where(count > 1, advantages, torch.zeros_like(advantages))  # [N]
    return _broadcast_to_tokens(advantages, inputs.response_mask)  # [N, T]


def _whiten_tokens(x: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and population variance over the masked entries of ``x``.

    If every masked entry is equal the result is exactly 0 (not rounding noise scaled by ``1/sqrt(eps)``);
    an empty mask gives 0 too. Entries where ``mask`` is 0 are returned as 0.
    """
    if x.numel() == 0:
        return torch.zeros_like(x)
    valid = mask != 0  # [N, T]
    mean = masked_mean(x, mask)  # []
    var = masked_var(x, mask, unbiased=False)  # []
    high = torch.where(valid, x, torch.full_like(x, float("-inf"))).amax()  # []
    low = torch.where(valid, x, torch.full_like(x, float("inf"))).amin()  # []
    whitened = (x - mean) * torch.rsqrt(var + eps)  # [N, T]
    keep = valid & (high > low)  # [N, T]
    return torch.where(keep, whitened, torch.zeros_like(whitened))  # [N, T]


@ADVANTAGES.register("reinforce_pp")
@needs("token_rewards")
@group_relative
def reinforce_pp_advantages(inputs: AdvantageInputs, *, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++-baseline (Hu et al. 2025, arXiv 2501.03262): group-mean baseline, global whitening.

    The group mean is subtracted from each outcome reward, and the result, given to every response token,
    is normalised with the mean and standard deviation over *all valid tokens of the batch* (the paper's
    global batch normalisation, rather than GRPO's per-prompt std)::

        A'_{i,t}  = r_i - mean_g                                       (every token t of response i)
        A_{i,t}   = (A'_{i,t} - mean_tok(A')) / sqrt(var_tok(A') + eps)

    ``mean_tok`` and ``var_tok`` run over every position where ``response_mask`` is 1, so a longer response
    weighs more, as in OpenRLHF's ``reinforce_baseline`` (the authors' code); the variance is the population
    one as there, and ``eps`` stands in for its ``clamp(var, min=1e-8)`` floor. Because of the global
    shift, a response whose group is constant (or a singleton) gets ``-mean_tok(A') / std_tok(A')``, not 0,
    unless the whole batch is constant (then 0).

    **Token rewards (later addition).** The core estimator above uses outcome rewards only. When
    ``inputs.token_rewards`` is given (e.g. ``-beta * KL_t``, the KL-in-reward form of the original
    REINFORCE++ return ``r - beta * sum_{s >= t} KL_s``), their return-to-go is added to the centred outcome
    reward before whitening; the group baseline stays the mean of the outcome rewards::

        A'_{i,t} = (r_i - mean_g) + sum_{s >= t} token_rewards[i, s] * mask[i, s]

    (undiscounted, gamma = 1, as OpenRLHF forces for this estimator). Token rewards at masked-out
    positions are ignored.

    Args:
        inputs: uses ``sequence_rewards`` ``[N]``, ``group_index`` ``[N]``, ``response_mask`` ``[N, T]`` and,
            when given, ``token_rewards`` ``[N, T]``.
        eps: added to the token-level variance before the square root.

    Returns:
        ``[N, T]`` advantages, 0 where ``response_mask`` is 0.
    """
    stats = group_statistics(inputs.sequence_rewards, inputs.group_index)
    dtype = stats.mean.dtype
    rewards = _float_rewards(inputs, dtype)  # [N]
    centred = rewards - stats.mean  # [N], exactly 0 for singleton and constant groups
    mask = inputs.response_mask.to(dtype)  # [N, T]
    returns = centred.unsqueeze(-1).expand_as(mask)  # [N, T]
    if inputs.token_rewards is not None:
        token_rewards = inputs.token_rewards.detach().to(dtype)  # [N, T]
        token_rewards = torch.where(mask != 0, token_rewards * mask, torch.zeros_like(mask))  # [N, T]
        return_to_go = token_rewards.flip(-1).cumsum(-1).flip(-1)  # [N, T]  sum_{s >= t}
        returns = returns + return_to_go  # [N, T]
    return _whiten_tokens(returns, mask, eps) * mask  # [N, T]


def _batch_statistics(inputs: AdvantageInputs, unbiased: bool) -> GroupStatistics:
    """Statistics of the whole batch's sequence rewards, as if it were one group."""
    return group_statistics(inputs.sequence_rewards, torch.zeros_like(inputs.group_index), unbiased=unbiased)


def _centred_scaled(
    inputs: AdvantageInputs, centre: GroupStatistics, scale: GroupStatistics, eps: float
) -> torch.Tensor:
    """``(r - centre.mean) / (scale.std + eps)`` broadcast to tokens; 0 where the ``centre`` statistics
    come from a single sample or from equal rewards."""
    rewards = _float_rewards(inputs, centre.mean.dtype)  # [N]
    advantages = (rewards - centre.mean) / safe_denominator(scale.std + eps)  # [N]
    keep = (centre.count > 1) & (centre.std > 0)  # [N]
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))  # [N]
    return _broadcast_to_tokens(advantages, inputs.response_mask)  # [N, T]


@ADVANTAGES.register("lite_ppo")
@ADVANTAGES.register("group_mean_batch_std")
@group_relative
def lite_ppo_advantages(
    inputs: AdvantageInputs, *, eps: float = 1e-6, std_unbiased: bool = True
) -> torch.Tensor:
    """Lite PPO advantage: group mean, batch std ("Tricks or Traps", Liu et al. 2025, arXiv 2508.08221).

    The baseline is the group mean (as GRPO) but the scale is the std of the sequence rewards of the whole
    batch, which the paper finds more robust than per-group std when rewards are concentrated::

        A_i = (r_i - mean_g) / (std_batch(r) + eps)

    ``std_batch`` is the std of all ``N`` outcome rewards in the batch (one value per response, not per
    token), Bessel-corrected by default like :func:`grpo_advantages`. (AReaL's ``std_level=batch`` instead
    takes the batch std of the group-centred rewards ``r - mean_g``; that is not what this entry does.)
    Registered both as ``lite_ppo`` and as ``group_mean_batch_std``. Singleton and constant groups get 0.

    Args:
        inputs: uses ``sequence_rewards`` ``[N]``, ``group_index`` ``[N]`` and ``response_mask`` ``[N, T]``.
        eps: added to the batch std before dividing.
        std_unbiased: Bessel-corrected (``N - 1``) or population (``N``) batch std.

    Returns:
        ``[N, T]`` advantages, 0 where ``response_mask`` is 0.
    """
    stats = group_statistics(inputs.sequence_rewards, inputs.group_index, unbiased=std_unbiased)
    return _centred_scaled(inputs, stats, _batch_statistics(inputs, std_unbiased), eps)


@ADVANTAGES.register("batch_norm")
def batch_norm_advantages(
    inputs: AdvantageInputs, *, eps: float = 1e-6, std_unbiased: bool = True
) -> torch.Tensor:
    """Batch-normalised outcome advantage (DLER, Liu et al. 2025, arXiv 2510.15110; REINFORCE++ style).

    Mean and std are taken over the sequence rewards of the whole batch, ignoring the groups::

        A_i = (r_i - mean_batch(r)) / (std_batch(r) + eps)

    DLER uses it because truncation-based length penalties make many groups' rewards degenerate, which
    biases per-group normalisation. Since groups are ignored, a singleton or constant group does *not* get
    0 here (its rewards are compared with the batch); only a constant batch (or a batch of one) does.

    Args:
        inputs: uses ``sequence_rewards`` ``[N]`` and ``response_mask`` ``[N, T]`` (not ``group_index``).
        eps: added to the batch std before dividing.
        std_unbiased: Bessel-corrected (``N - 1``) or population (``N``) batch std.

    Returns:
        ``[N, T]`` advantages, 0 where ``response_mask`` is 0.
    """
    batch = _batch_statistics(inputs, std_unbiased)
    return _centred_scaled(inputs, batch, batch, eps)


@ADVANTAGES.register("dgpo")
@group_relative
def dgpo_advantages(
    inputs: AdvantageInputs,
    *,
    eps: float = 1e-4,
    question_weighting: bool = True,
    temperature: float = 2.0,
) -> torch.Tensor:
    """DGPO advantage: DGAE with optional DQW (MathForge, arXiv 2601.20614).

    **DGAE** (difficulty-balanced group advantage estimation) scales by the group's mean absolute deviation
    instead of its std, written in the sum form of the authors' code::

        A_i = G * (r_i - mean_g) / (sum_j |r_j - mean_g| + eps)  ~=  (r_i - mean_g) / MAD_g,
        MAD_g = (1 / G) * sum_j |r_j - mean_g|

    so ``sum_i |A_i| = G * S / (S + eps) ~= G`` for every group (``S`` the sum of absolute deviations):
    each question moves the policy by the same total amount whatever its accuracy, which is not true of
    std normalisation. ``G`` is the size of the response's group.

    **DQW** (difficulty-aware question weighting, ``question_weighting=True``) then multiplies each group's
    advantages by a weight that favours harder questions. Over the ``Q`` valid groups (size > 1, rewards
    not all equal)::

        w_q = Q * softmax_q(-acc_q / temperature)        (mean weight 1 over valid groups)

    where ``acc_q`` is the group's mean reward (its accuracy for 0/1 rewards). The authors' code takes
    ``acc_q`` from the accuracy reward alone when several rewards are summed; here it is the mean of
    ``sequence_rewards``. Their loss-side rescalings (by the share of tokens in non-degenerate groups and a
    per-process length ratio) concern loss aggregation and are not applied here. Singleton and constant
    groups get 0.

    Args:
        inputs: uses ``sequence_rewards`` ``[N]``, ``group_index`` ``[N]`` and ``response_mask`` ``[N, T]``.
        eps: added to the group's sum of absolute deviations (``1e-4`` in the authors' code).
        question_weighting: apply DQW on top of DGAE.
        temperature: DQW softmax temperature ``T`` (``dgpo_dqw_temp``, 2.0 in the paper); must be > 0.

    Returns:
        ``[N, T]`` advantages, 0 where ``response_mask`` is 0.
    """
    if question_weighting and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    stats = group_statistics(inputs.sequence_rewards, inputs.group_index)
    dtype = stats.mean.dtype
    rewards = _float_rewards(inputs, dtype)  # [N]
    group_ids, inverse = torch.unique(inputs.group_index, return_inverse=True)  # [Q_all], [N] in [0, Q_all)
    num_groups = group_ids.numel()

    deviations = rewards - stats.mean  # [N], exactly 0 for singleton and constant groups
    abs_sums = torch.zeros(num_groups, dtype=dtype, device=rewards.device)  # [Q_all]
    abs_sums.index_add_(0, inverse, deviations.abs())
    denominator = abs_sums[inverse] + eps  # [N]
    advantages = stats.count * deviations / safe_denominator(denominator)  # [N]
    valid = (stats.count > 1) & (stats.std > 0)  # [N]
    advantages = torch.where(valid, advantages, torch.zeros_like(advantages))  # [N]

    if question_weighting:
        group_valid = torch.zeros(num_groups, dtype=torch.bool, device=rewards.device)  # [Q_all]
        group_valid.scatter_(0, inverse, valid)  # members of a group agree, so any write is the same
        group_accuracy = torch.zeros(num_groups, dtype=dtype, device=rewards.device)  # [Q_all]
        group_accuracy.scatter_(0, inverse, stats.mean)
        logits = torch.where(
            group_valid, -group_accuracy / temperature, torch.full_like(group_accuracy, float("-inf"))
        )  # [Q_all]
        num_valid = group_valid.sum().to(dtype)  # []
        weights = num_valid * torch.softmax(logits, dim=0)  # [Q_all]
        # invalid groups get exp(-inf) = 0, or NaN when no group is valid; either way they get weight 0
        weights = torch.where(group_valid, weights, torch.zeros_like(weights))  # [Q_all]
        advantages = advantages * weights[inverse]  # [N]

    return _broadcast_to_tokens(advantages, inputs.response_mask)  # [N, T]


@ADVANTAGES.register("remax")
@needs("baseline_rewards")
def remax_advantages(inputs: AdvantageInputs) -> torch.Tensor:
    """ReMax (Li et al. 2023, arXiv 2310.10505): REINFORCE with the greedy response's reward as baseline.

    For each prompt, one extra response is decoded greedily and scored; its reward ``b_i`` is the baseline
    of every sampled response ``i`` to that prompt::

        A_i = r_i - b_i

    given to every response token. The baseline needs no critic and, unlike a group mean, does not depend
    on the sampled responses, so ReMax works with one sample per prompt. The greedy response is not trained
    on. ``group_index`` is not used: ``baseline_rewards`` already carries the prompt's baseline per response.

    Args:
        inputs: uses ``sequence_rewards`` ``[N]``, ``baseline_rewards`` ``[N]`` (required) and
            ``response_mask`` ``[N, T]``.

    Returns:
        ``[N, T]`` advantages, 0 where ``response_mask`` is 0.

    Raises:
        ValueError: ``inputs.baseline_rewards`` is None.
    """
    if inputs.baseline_rewards is None:
        raise ValueError(
            "the 'remax' advantage estimator needs the greedy responses' rewards: "
            "AdvantageInputs.baseline_rewards is None"
        )
    dtype = torch.promote_types(
        torch.promote_types(inputs.sequence_rewards.dtype, inputs.baseline_rewards.dtype), torch.float32
    )
    rewards = _float_rewards(inputs, dtype)  # [N]
    baseline = inputs.baseline_rewards.detach().to(dtype)  # [N]
    return _broadcast_to_tokens(rewards - baseline, inputs.response_mask)  # [N, T]

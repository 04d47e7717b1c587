"""Critic-based advantages and the critic's loss (PPO with a learned value function).

* :func:`gae` - Generalized Advantage Estimation on ``[N, T]`` token rewards and values (arXiv 1506.02438);
* :func:`gae_advantages` - the registered ``"gae"`` estimator: outcome reward on the last response token,
  GAE, batch whitening (the :data:`~rlvr.algorithms.advantages.ADVANTAGES` contract);
* :func:`gae_returns` - the critic's regression targets for the same batch and hyper-parameters;
* :func:`value_loss` - the (optionally clipped) squared-error value loss, per token and not reduced.

``N`` is the number of responses, ``T`` the padded response length. Responses are right-padded, so the
response mask is 1 on a prefix of each row, but every function here also accepts masks with holes (e.g.
tool output inside a multi-turn response): a position where the mask is 0 is *absent*, skipped by the
recursion as if it were not there, and positions after the last valid token are terminal (value 0).
"""

from __future__ import annotations

import torch

from rlvr.algorithms.advantages import ADVANTAGES, AdvantageInputs
from rlvr.algorithms.utils import critic_targets, masked_mean, masked_var, masked_whiten, needs

__all__ = [
    "gae",
    "gae_advantages",
    "gae_returns",
    "value_loss",
]


def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, arXiv 1506.02438).

    Over the valid tokens of each row, with ``V`` after the last valid token equal to 0 (the response
    ended, so nothing follows)::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}          (A after the last valid token = 0)
        R_t     = A_t + V_t                                (the critic's target, the lambda-return)

    ``gamma = lam = 1`` gives ``A_t = sum_{s >= t} r_s - V_t`` (return-to-go minus the value), the usual
    setting for LLM RL with a single outcome reward; ``lam = 0`` gives the one-step TD error.

    Positions where ``mask`` is 0 are skipped: ``t + 1`` above means the next *valid* position of the row,
    their rewards and values are ignored (they may hold any value, ``NaN`` included), and their advantage
    and return are 0. With a right-padded mask this is the plain recursion with a terminal value of 0
    after the response. The recursion is a backward loop over ``T`` (vectorised over ``N``); inputs are
    detached, as advantages and returns are targets.

    Args:
        token_rewards: ``[N, T]`` reward of each token (e.g. the outcome reward on the last token).
        values: ``[N, T]`` critic values ``V(s_t)`` of the state before each response token.
        mask: ``[N, T]`` bool or float, nonzero on valid response tokens.
        gamma: discount factor.
        lam: GAE's bias-variance trade-off ``lambda``.

    Returns:
        ``(advantages, returns)``, both ``[N, T]``, 0 where ``mask`` is 0, in ``values``' floating dtype
        (at least float32).
    """
    if token_rewards.shape != values.shape or values.shape != mask.shape or values.dim() != 2:
        raise ValueError(
            "token_rewards, values and mask must all be [N, T], got "
            f"{tuple(token_rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    dtype = torch.promote_types(values.dtype, torch.float32)
    valid = mask != 0  # [N, T]
    zeros = torch.zeros(values.shape, dtype=dtype, device=values.device)  # [N, T]
    rewards = torch.where(valid, token_rewards.detach().to(dtype), zeros)  # [N, T]
    values = torch.where(valid, values.detach().to(dtype), zeros)  # [N, T]

    advantages = torch.zeros_like(values)  # [N, T]
    next_value = zeros[:, 0]  # [N]  V of the next valid position (0 past the last one)
    next_advantage = zeros[:, 0]  # [N]  A of the next valid position
    for t in range(values.shape[1] - 1, -1, -1):
        valid_t = valid[:, t]  # [N]
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # [N]
        advantage = delta + gamma * lam * next_advantage  # [N]
        advantages[:, t] = torch.where(valid_t, advantage, zeros[:, t])
        # an absent position passes its successor's value and advantage through unchanged
        next_value = torch.where(valid_t, values[:, t], next_value)  # [N]
        next_advantage = torch.where(valid_t, advantage, next_advantage)  # [N]
    returns = torch.where(valid, advantages + values, zeros)  # [N, T]
    return advantages, returns


def _gae_token_rewards(inputs: AdvantageInputs, dtype: torch.dtype) -> torch.Tensor:
    """``inputs.token_rewards`` (0 if absent) plus each sequence reward on its row's last valid token."""
    mask = inputs.response_mask  # [N, T]
    valid = mask != 0  # [N, T]
    if inputs.token_rewards is None:
        token_rewards = torch.zeros(mask.shape, dtype=dtype, device=mask.device)  # [N, T]
    else:
        token_rewards = inputs.token_rewards.detach().to(dtype)  # [N, T]
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # [N, T]
    last = torch.where(valid, positions, torch.full_like(positions, -1)).amax(dim=-1)  # [N], -1: empty row
    is_last = positions == last.unsqueeze(-1)  # [N, T], all False on an empty row
    sequence_rewards = inputs.sequence_rewards.detach().to(dtype).unsqueeze(-1)  # [N, 1]
    return token_rewards + torch.where(is_last, sequence_rewards, torch.zeros_like(token_rewards))  # [N, T]


def _gae_of_inputs(inputs: AdvantageInputs, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    if inputs.values is None:
        raise ValueError(
            "the 'gae' advantage estimator needs critic values: AdvantageInputs.values is None "
            "(does the recipe configure a critic?)"
        )
    dtype = torch.promote_types(inputs.values.dtype, torch.float32)
    token_rewards = _gae_token_rewards(inputs, dtype)  # [N, T]
    return gae(token_rewards, inputs.values, inputs.response_mask, gamma=gamma, lam=lam)


def gae_returns(
    inputs: AdvantageInputs, *, gamma: float = 1.0, lam: float = 1.0, **_ignored: object
) -> torch.Tensor:
    """The critic's regression targets ``R_t = A_t + V_t`` (un-whitened) for :func:`gae_advantages`.

    Takes the same keyword arguments as :func:`gae_advantages` (the estimator's ``whiten`` and ``eps``
    are accepted and ignored), so the trainer can pass the recipe's advantage hyper-parameters to both.

    Returns:
        ``[N, T]`` returns, 0 where ``response_mask`` is 0.

    Raises:
        ValueError: ``inputs.values`` is None.
    """
    _, returns = _gae_of_inputs(inputs, gamma, lam)  # [N, T]
    return returns


@ADVANTAGES.register("gae")
@needs("values", "token_rewards")
@critic_targets(gae_returns)
def gae_advantages(
    inputs: AdvantageInputs,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    whiten: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """PPO's critic-based advantage: GAE (arXiv 1506.02438) on outcome plus token rewards, whitened.

    The token rewards are ``inputs.token_rewards`` (0 when absent; e.g. a KL-in-reward term ``-beta KL_t``
    or process rewards), plus each response's outcome reward ``inputs.sequence_rewards`` on its last valid
    token; :func:`gae` then gives ``A_t``, and with ``whiten`` the advantages are normalised to mean 0 and
    variance 1 over every valid token of the batch (:func:`~rlvr.algorithms.utils.masked_whiten`,
    Bessel-corrected variance, as in OpenAI's ``lm-human-preferences`` and TRL/OpenRLHF PPO)::

        A_t <- (A_t - mean_tok(A)) / sqrt(var_tok(A) + eps)

    Groups are not used. The critic's regression targets for the same batch are :func:`gae_returns`
    (un-whitened ``A + V``).

    Args:
        inputs: uses ``sequence_rewards`` ``[N]``, ``response_mask`` ``[N, T]``, ``values`` ``[N, T]``
            (required) and, when given, ``token_rewards`` ``[N, T]``.
        gamma: discount factor (1.0: no discount, the usual choice for LLM responses).
        lam: GAE ``lambda`` (1.0: Monte-Carlo return minus the value; lower trades bias for variance).
        whiten: normalise the advantages over the valid tokens of the batch.
        eps: added to the variance before the square root when whitening.

    Returns:
        ``[N, T]`` advantages, 0 where ``response_mask`` is 0.

    Raises:
        ValueError: ``inputs.values`` is None.
    """
    advantages, _ = _gae_of_inputs(inputs, gamma, lam)  # [N, T]
    if whiten:
        advantages = masked_whiten(advantages, inputs.response_mask, eps=eps)  # [N, T]
    return advantages


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Squared-error critic loss, optionally clipped around the rollout-time values (PPO2).

    Without clipping (``clip_range=None``)::

        loss_t = 0.5 * (V_t - R_t)^2

    With clipping, as in OpenAI baselines' PPO2 (and the PPO implementations of TRL, OpenRLHF and verl),
    the new value may move at most ``clip_range`` away from the value ``V_old`` the advantages were
    computed with, pessimistically::

        V_clip = clip(V_t, V_old_t - c, V_old_t + c)
        loss_t = 0.5 * max((V_t - R_t)^2, (V_clip - R_t)^2)

    A token where the clipped term is the larger one (and differs) contributes no gradient. ``clip_range``
    is in the units of the values, so it should fit the reward scale.

    Args:
        values: ``[N, T]`` current critic values (carries the gradient).
        old_values: ``[N, T]`` critic values at rollout time (treated as constants).
        returns: ``[N, T]`` regression targets, e.g. :func:`gae_returns` (treated as constants).
        mask: ``[N, T]`` bool or float, nonzero on the tokens that are trained on.
        clip_range: ``c`` above, or ``None`` for the plain squared error.

    Returns:
        ``per_token_loss`` ``[N, T]`` (0 and no gradient where ``mask`` is 0; **not reduced**, see
        :func:`rlvr.algorithms.aggregation.aggregate`) and detached scalar metrics over masked tokens:
        ``vf_clip_frac`` (the clipped term is the one taken and differs), ``value_mean``, ``return_mean``,
        ``explained_variance`` (``1 - Var(R - V) / Var(R)``; 0 when ``Var(R) = 0``).
    """
    if clip_range is not None and clip_range < 0:
        raise ValueError(f"clip_range must be >= 0 or None, got {clip_range}")
    m = mask.bool()  # [N, T]
    # padding may hold anything (NaN included): pin it to 0 so it reaches neither the loss nor the gradient
    values = torch.where(m, values, torch.zeros_like(values))  # [N, T]
    old_values = torch.where(m, old_values.detach(), torch.zeros_like(values))  # [N, T]
    returns = torch.where(m, returns.detach(), torch.zeros_like(values))  # [N, T]

    loss_unclipped = (values - returns) ** 2  # [N, T]
    if clip_range is None:
        loss = loss_unclipped  # [N, T]
        clipped = torch.zeros_like(m)  # [N, T]
    else:
        values_clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)  # [N, T]
        loss_clipped = (values_clipped - returns) ** 2  # [N, T]
        loss = torch.maximum(loss_unclipped, loss_clipped)  # [N, T]
        clipped = loss_clipped > loss_unclipped  # [N, T]
    per_token_loss = torch.where(m, 0.5 * loss, torch.zeros_like(loss))  # [N, T]

    with torch.no_grad():
        values_d = values.detach()  # [N, T]
        return_var = masked_var(returns, m, unbiased=False)  # []
        residual_var = masked_var(returns - values_d, m, unbiased=False)  # []
        explained = torch.where(
            return_var > 0, 1.0 - residual_var / torch.where(return_var > 0, return_var, 1.0), 0.0
        )  # []
        metrics = {
            "vf_clip_frac": masked_mean(clipped.float(), m),
            "value_mean": masked_mean(values_d, m),
            "return_mean": masked_mean(returns, m),
            "explained_variance": explained,
        }
    return per_token_loss, metrics

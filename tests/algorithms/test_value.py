"""Tests for rlvr.algorithms.value (GAE, the "gae" advantage estimator, gae_returns, value_loss)."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import (
    ADVANTAGES,
    AdvantageInputs,
    gae,
    gae_advantages,
    gae_returns,
    value_loss,
)
from rlvr.algorithms.utils import needs_of

NAN = float("nan")


# --- gae -------------------------------------------------------------------------------------------------


def test_gae_by_hand() -> None:
    # gamma 0.9, lambda 0.8 (gamma * lambda = 0.72); r = [0, 0, 1], V = [0.5, 0.6, 0.7], V after the end = 0.
    # A 4th, padded position holds garbage that must be ignored.
    #   delta_2 = 1 + 0.9 * 0   - 0.7 = 0.3
    #   delta_1 = 0 + 0.9 * 0.7 - 0.6 = 0.03
    #   delta_0 = 0 + 0.9 * 0.6 - 0.5 = 0.04
    #   A_2 = 0.3
    #   A_1 = 0.03 + 0.72 * 0.3   = 0.246
    #   A_0 = 0.04 + 0.72 * 0.246 = 0.21712
    #   R = A + V = [0.71712, 0.846, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, NAN]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.21712, 0.246, 0.3, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(returns, torch.tensor([[0.71712, 0.846, 1.0, 0.0]]), atol=1e-6, rtol=0)


def test_gae_skips_masked_positions_inside_a_row() -> None:
    # mask [1, 0, 1]: the middle position (reward 5, value 9) is absent, so the chain is t=0 -> t=2:
    #   A_2 = 1 - 0.7 = 0.3
    #   delta_0 = 0 + 0.9 * 0.7 - 0.5 = 0.13;  A_0 = 0.13 + 0.72 * 0.3 = 0.346
    #   R = [0.846, 0, 1.0]
    rewards = torch.tensor([[0.0, 5.0, 1.0]])
    values = torch.tensor([[0.5, 9.0, 0.7]])
    mask = torch.tensor([[True, False, True]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.346, 0.0, 0.3]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(returns, torch.tensor([[0.846, 0.0, 1.0]]), atol=1e-6, rtol=0)


def _random_gae_batch(seed: int, n: int = 7, t: int = 9, holes: bool = False) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n, t, generator=gen, dtype=torch.float64)
    values = torch.randn(n, t, generator=gen, dtype=torch.float64)
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    lengths[0] = t  # a full row
    lengths[1] = 0  # an empty row
    mask = torch.arange(t)[None, :] < lengths[:, None]  # [n, t] right-padded
    if holes:
        mask = mask & (torch.rand(n, t, generator=gen) > 0.3)
    # padding holds garbage
    rewards = torch.where(mask, rewards, torch.full_like(rewards, NAN))
    values = torch.where(mask, values, torch.full_like(values, 1e6))
    return rewards, values, mask


def _loop_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain Python GAE, one row at a time, over the row's valid positions only."""
    advantages = torch.zeros(rewards.shape, dtype=torch.float64)
    returns = torch.zeros(rewards.shape, dtype=torch.float64)
    for i in range(rewards.shape[0]):
        positions = [t for t in range(rewards.shape[1]) if mask[i, t]]
        next_value, next_advantage = 0.0, 0.0
        for t in reversed(positions):
            r, v = float(rewards[i, t]), float(values[i, t])
            delta = r + gamma * next_value - v
            next_advantage = delta + gamma * lam * next_advantage
            next_value = v
            advantages[i, t] = next_advantage
            returns[i, t] = next_advantage + v
    return advantages, returns


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.9, 0.8), (0.99, 0.0)])
def test_gae_matches_loop(seed: int, holes: bool, gamma: float, lam: float) -> None:
    rewards, values, mask = _random_gae_batch(seed, holes=holes)
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    want_advantages, want_returns = _loop_gae(rewards, values, mask, gamma, lam)
    assert advantages.dtype == torch.float64
    torch.testing.assert_close(advantages, want_advantages, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(returns, want_returns, atol=1e-10, rtol=1e-10)
    assert torch.all(advantages[~mask] == 0) and torch.all(returns[~mask] == 0)


def test_gae_gamma_lambda_one_is_return_to_go_minus_value() -> None:
    rewards, values, mask = _random_gae_batch(3)
    advantages, returns = gae(rewards, values, mask)  # gamma = lam = 1 by default
    clean_rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    return_to_go = clean_rewards.flip(-1).cumsum(-1).flip(-1)  # sum_{s >= t} r_s
    torch.testing.assert_close(returns, torch.where(mask, return_to_go, torch.zeros_like(return_to_go)))
    torch.testing.assert_close(advantages, torch.where(mask, return_to_go - values, torch.zeros_like(values)))


def test_gae_lambda_zero_is_td_error() -> None:
    # lam = 0: A_t = r_t + gamma V_{t+1} - V_t. Row [r = 1, 2], V = [3, 4], gamma 0.5:
    #   A_0 = 1 + 0.5 * 4 - 3 = 0;  A_1 = 2 + 0.5 * 0 - 4 = -2
    advantages, _ = gae(
        torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]]), torch.ones(1, 2), gamma=0.5, lam=0
    )
    torch.testing.assert_close(advantages, torch.tensor([[0.0, -2.0]]))


def test_gae_detaches_and_promotes_dtype() -> None:
    values = torch.tensor([[0.5, 0.25]], dtype=torch.bfloat16, requires_grad=True)
    advantages, returns = gae(torch.tensor([[0, 1]]), values, torch.ones(1, 2, dtype=torch.bool))
    assert advantages.dtype == returns.dtype == torch.float32
    assert not advantages.requires_grad and not returns.requires_grad
    # gamma = lam = 1: A = [1 - 0.5, 1 - 0.25]
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.75]]))


def test_gae_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must all be"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


# --- gae_advantages / gae_returns ------------------------------------------------------------------------


def _gae_inputs(values: torch.Tensor | None) -> AdvantageInputs:
    # row 0: 3 tokens, outcome 1, token rewards [0, -0.1, 0]; row 1: 2 tokens, outcome 0, token rewards
    # [0.2, 0] (+ garbage 7 in its padding)
    return AdvantageInputs(
        sequence_rewards=torch.tensor([1.0, 0.0]),
        group_index=torch.tensor([0, 0]),
        response_mask=torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
        token_rewards=torch.tensor([[0.0, -0.1, 0.0], [0.2, 0.0, 7.0]]),
        values=values,
    )


def test_gae_advantages_by_hand() -> None:
    # gamma = lam = 1: A_t = return-to-go - V_t, outcome on the last valid token, V = 0.5 (9 on padding)
    #   row 0: r = [0, -0.1, 0 + 1] -> rtg = [0.9, 0.9, 1.0] -> A = [0.4, 0.4, 0.5]
    #   row 1: r = [0.2, 0 + 0]     -> rtg = [0.2, 0.0]      -> A = [-0.3, -0.5]
    #   returns = A + V = [[0.9, 0.9, 1.0], [0.2, 0.0, 0]]
    # whitened over the 5 valid tokens: mean 0.5 / 5 = 0.1; deviations [0.3, 0.3, 0.4, -0.4, -0.6];
    #   unbiased var = (0.09 + 0.09 + 0.16 + 0.16 + 0.36) / 4 = 0.215, std 0.4636809
    #   -> [0.64700, 0.64700, 0.86267, -0.86267, -1.29399]
    inputs = _gae_inputs(torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 9.0]]))
    raw = gae_advantages(inputs, whiten=False)
    torch.testing.assert_close(raw, torch.tensor([[0.4, 0.4, 0.5], [-0.3, -0.5, 0.0]]), atol=1e-6, rtol=0)
    whitened = gae_advantages(inputs)
    expected = torch.tensor([[0.64700, 0.64700, 0.86267], [-0.86267, -1.29399, 0.0]])
    torch.testing.assert_close(whitened, expected, atol=1e-5, rtol=0)
    returns = gae_returns(inputs)
    torch.testing.assert_close(returns, torch.tensor([[0.9, 0.9, 1.0], [0.2, 0.0, 0.0]]), atol=1e-6, rtol=0)
    # gae_returns takes the estimator's keyword arguments (whiten and eps are ignored): never whitened
    torch.testing.assert_close(gae_returns(inputs, gamma=1.0, lam=1.0, whiten=True, eps=1e-8), returns)


def test_gae_advantages_without_token_rewards() -> None:
    # outcome reward only, at the last valid token; gamma 0.5, lam 1, V = 0:
    #   row 0 (3 tokens, r = 1): A = [0.25, 0.5, 1]; row 1 (2 tokens, r = 0): A = [0, 0]; row 2 empty
    inputs = AdvantageInputs(
        sequence_rewards=torch.tensor([1, 0, 3]),
        group_index=torch.tensor([0, 1, 2]),
        response_mask=torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]]),
        values=torch.zeros(3, 3),
    )
    a = gae_advantages(inputs, gamma=0.5, whiten=False)
    torch.testing.assert_close(a, torch.tensor([[0.25, 0.5, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_gae_advantages_match_loop() -> None:
    rewards, values, mask = _random_gae_batch(4, holes=True)
    n = mask.shape[0]
    gen = torch.Generator().manual_seed(5)
    outcome = torch.randn(n, generator=gen, dtype=torch.float64)
    inputs = AdvantageInputs(
        sequence_rewards=outcome,
        group_index=torch.arange(n),
        response_mask=mask,
        token_rewards=rewards,
        values=values,
    )
    token_rewards = torch.where(mask, rewards, torch.zeros_like(rewards)).clone()
    for i in range(n):  # the outcome goes to the last valid token of each row
        valid = [t for t in range(mask.shape[1]) if mask[i, t]]
        if valid:
            token_rewards[i, valid[-1]] += outcome[i]
    want_advantages, want_returns = _loop_gae(token_rewards, values, mask, 0.9, 0.8)
    got = gae_advantages(inputs, gamma=0.9, lam=0.8, whiten=False)
    torch.testing.assert_close(got, want_advantages, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gae_returns(inputs, gamma=0.9, lam=0.8), want_returns, atol=1e-10, rtol=1e-10)
    # whitened: mean 0 and (unbiased) variance 1 over the valid tokens
    whitened = gae_advantages(inputs, gamma=0.9, lam=0.8)
    valid = whitened[mask]
    assert abs(float(valid.mean())) < 1e-9
    assert abs(float(valid.var(unbiased=True)) - 1.0) < 1e-6
    assert torch.all(whitened[~mask] == 0)


def test_gae_registered_and_declares_values() -> None:
    assert ADVANTAGES.get("gae") is gae_advantages
    # values from the critic; token_rewards when a KL penalty is folded into the reward
    assert needs_of(gae_advantages) == frozenset({"values", "token_rewards"})


def test_gae_needs_values() -> None:
    inputs = _gae_inputs(None)
    with pytest.raises(ValueError, match="values"):
        gae_advantages(inputs)
    with pytest.raises(ValueError, match="values"):
        gae_returns(inputs)
    with pytest.raises(TypeError):
        gae_advantages(_gae_inputs(torch.zeros(2, 3)), not_a_hparam=1.0)


# --- value_loss ------------------------------------------------------------------------------------------


def _value_batch() -> tuple[torch.Tensor, ...]:
    # (V, V_old, R) per token, clip range 0.2:
    #   (1.0, 0.9, 1.5): V_clip = 1.0,  (V-R)^2 = 0.25, clipped 0.25 -> 0.5 * 0.25 = 0.125, grad V-R = -0.5
    #   (1.5, 1.0, 2.0): V_clip = 1.2,  (V-R)^2 = 0.25, clipped 0.64 -> 0.5 * 0.64 = 0.32,  clipped: grad 0
    #   (1.5, 1.0, 1.0): V_clip = 1.2,  (V-R)^2 = 0.25, clipped 0.04 -> 0.125,              grad V-R = +0.5
    #   (0.0, 1.0, 2.0): V_clip = 0.8,  (V-R)^2 = 4.0,  clipped 1.44 -> 2.0,                grad V-R = -2.0
    # plus two padded positions holding garbage
    values = torch.tensor([[1.0, 1.5, 1.5], [0.0, 100.0, NAN]], requires_grad=True)
    old_values = torch.tensor([[0.9, 1.0, 1.0], [1.0, NAN, 3.0]])
    returns = torch.tensor([[1.5, 2.0, 1.0], [2.0, -50.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    return values, old_values, returns, mask


def test_value_loss_clipped_by_hand() -> None:
    values, old_values, returns, mask = _value_batch()
    loss, metrics = value_loss(values, old_values, returns, mask, clip_range=0.2)
    torch.testing.assert_close(loss, torch.tensor([[0.125, 0.32, 0.125], [2.0, 0.0, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[-0.5, 0.0, 0.5], [-2.0, 0.0, 0.0]]))
    # vf_clip_frac = 1 / 4; value_mean = (1 + 1.5 + 1.5 + 0) / 4 = 1.0; return_mean = 6.5 / 4 = 1.625
    # explained variance, population variances over the 4 tokens:
    #   R = [1.5, 2, 1, 2], mean 1.625, squared deviations sum 0.6875
    #   R - V = [0.5, 0.5, -0.5, 2], mean 0.625, squared deviations sum 3.1875
    #   1 - 3.1875 / 0.6875 = -3.636364
    torch.testing.assert_close(metrics["vf_clip_frac"], torch.tensor(0.25))
    torch.testing.assert_close(metrics["value_mean"], torch.tensor(1.0))
    torch.testing.assert_close(metrics["return_mean"], torch.tensor(1.625))
    torch.testing.assert_close(metrics["explained_variance"], torch.tensor(1.0 - 3.1875 / 0.6875))
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_value_loss_unclipped_by_hand() -> None:
    # 0.5 * (V - R)^2 = [0.125, 0.125, 0.125, 2.0], gradient V - R everywhere
    values, old_values, returns, mask = _value_batch()
    loss, metrics = value_loss(values, old_values, returns, mask, clip_range=None)
    torch.testing.assert_close(loss, torch.tensor([[0.125, 0.125, 0.125], [2.0, 0.0, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[-0.5, -0.5, 0.5], [-2.0, 0.0, 0.0]]))
    assert float(metrics["vf_clip_frac"]) == 0.0


def test_value_loss_edge_cases() -> None:
    # V = R everywhere: zero loss, explained variance 1; a constant return: explained variance 0 (not NaN)
    r = torch.tensor([[1.0, 2.0, 3.0]])
    loss, metrics = value_loss(r.clone(), r, r, torch.ones(1, 3))
    assert torch.all(loss == 0)
    assert float(metrics["explained_variance"]) == 1.0
    const = torch.ones(1, 3)
    _, metrics = value_loss(torch.zeros(1, 3), torch.zeros(1, 3), const, torch.ones(1, 3))
    assert float(metrics["explained_variance"]) == 0.0
    _, metrics = value_loss(torch.zeros(1, 3), torch.zeros(1, 3), const, torch.zeros(1, 3))  # empty mask
    assert all(math.isfinite(float(v)) for v in metrics.values())
    with pytest.raises(ValueError, match="clip_range"):
        value_loss(r, r, r, torch.ones(1, 3), clip_range=-0.1)

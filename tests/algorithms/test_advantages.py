"""Tests for rlvr.algorithms.advantages (GRPO, Dr. GRPO, RLOO, REINFORCE++, Lite PPO, batch norm, DGPO)."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import (
    ADVANTAGES,
    AdvantageInputs,
    batch_norm_advantages,
    dgpo_advantages,
    dr_grpo_advantages,
    group_statistics,
    grpo_advantages,
    lite_ppo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)


def _inputs(
    rewards: list[float],
    groups: list[int],
    lengths: list[int],
    t: int = 4,
    token_rewards: torch.Tensor | None = None,
) -> AdvantageInputs:
    mask = torch.zeros(len(rewards), t)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1.0
    return AdvantageInputs(
        sequence_rewards=torch.tensor(rewards, dtype=torch.float32),
        group_index=torch.tensor(groups, dtype=torch.long),
        response_mask=mask,
        token_rewards=token_rewards,
    )


def _loop_reference(
    rewards: torch.Tensor,
    groups: torch.Tensor,
    mask: torch.Tensor,
    eps: float,
    std_normalize: bool,
    unbiased: bool,
) -> torch.Tensor:
    """Plain Python implementation: one group at a time."""
    out = torch.zeros(rewards.shape[0], dtype=torch.float64)
    for g in set(groups.tolist()):
        members = [i for i in range(len(groups)) if groups[i].item() == g]
        values = [float(rewards[i]) for i in members]
        n = len(values)
        if n == 1:
            continue
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1 if unbiased else n)
        for i, v in zip(members, values, strict=True):
            a = v - mean
            if std_normalize:
                a = a / (math.sqrt(var) + eps)
            out[i] = a
    return out[:, None] * mask.double()


def test_registered() -> None:
    assert ADVANTAGES.get("grpo") is grpo_advantages


def test_single_group_by_hand() -> None:
    # rewards [1, 0, 0, 1]: mean 0.5; deviations +-0.5;
    # unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.57735 -> A = +-0.5 / 0.57735 = +-0.86603
    # biased var = 4 * 0.25 / 4 = 0.25, std = 0.5 -> A = +-1
    # Dr. GRPO (no std): A = +-0.5
    inputs = _inputs([1, 0, 0, 1], [0, 0, 0, 0], [4, 4, 4, 4])
    a = grpo_advantages(inputs)
    expected = torch.tensor([0.86603, -0.86603, -0.86603, 0.86603])
    torch.testing.assert_close(a, expected[:, None].expand(4, 4), atol=1e-4, rtol=0)

    a_biased = grpo_advantages(inputs, std_unbiased=False)
    torch.testing.assert_close(a_biased[:, 0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5, rtol=0)

    a_dr = grpo_advantages(inputs, std_normalize=False)
    torch.testing.assert_close(a_dr[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]), atol=0, rtol=0)


def test_uneven_noncontiguous_groups_and_mask() -> None:
    # group 7 = samples 0, 2, 4 with rewards [1, 0, 2]: mean 1, unbiased var (0 + 1 + 1) / 2 = 1 -> std 1
    #   -> A = [0, -1, 1]
    # group 3 = samples 1, 3 with rewards [2, 4]: mean 3, unbiased var (1 + 1) / 1 = 2 -> std 1.41421
    #   -> A = [-0.70711, 0.70711]
    # group 9 = sample 5 alone -> A = 0
    inputs = _inputs([1, 2, 0, 4, 2, 5], [7, 3, 7, 3, 7, 9], [4, 2, 0, 1, 3, 4])
    a = grpo_advantages(inputs)
    per_seq = torch.tensor([0.0, -0.70711, -1.0, 0.70711, 1.0, 0.0])
    expected = per_seq[:, None] * inputs.response_mask
    torch.testing.assert_close(a, expected, atol=1e-5, rtol=0)
    # zero where the mask is zero (sample 2 has an empty response; padding after each length)
    assert torch.all(a[inputs.response_mask == 0] == 0)


def test_singleton_groups_are_zero() -> None:
    inputs = _inputs([3.0, -1.0, 0.5], [0, 1, 2], [2, 3, 4])
    for std_normalize in (True, False):
        a = grpo_advantages(inputs, std_normalize=std_normalize, eps=0.0)
        assert torch.all(a == 0)
        assert not torch.isnan(a).any()


def test_all_equal_rewards_give_zero_not_nan() -> None:
    # 0.7 is not exact in binary: 7 * 0.7 / 7 misses 0.7 by an ulp in float32. The advantage must still be
    # exactly 0, not rounding noise divided by a tiny std (which with eps=0 would be +-1-sized garbage).
    inputs = _inputs([1, 1, 1, 0, 0] + [0.7] * 7, [0, 0, 0, 1, 1] + [2] * 7, [4] * 12)
    for eps in (1e-6, 0.0):
        for std_normalize in (True, False):
            a = grpo_advantages(inputs, eps=eps, std_normalize=std_normalize)
            assert not torch.isnan(a).any()
            assert torch.all(a == 0)


def test_bool_mask_and_integer_rewards() -> None:
    inputs = AdvantageInputs(
        sequence_rewards=torch.tensor([1, 0]),
        group_index=torch.tensor([5, 5]),
        response_mask=torch.tensor([[True, False], [True, True]]),
    )
    a = grpo_advantages(inputs)
    # mean 0.5, unbiased std sqrt(0.5) = 0.70711 -> A = +-0.70711
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, torch.tensor([[0.70711, 0.0], [-0.70711, -0.70711]]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("std_normalize", [True, False])
@pytest.mark.parametrize("unbiased", [True, False])
def test_vectorised_matches_loop(std_normalize: bool, unbiased: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = [1, 2, 3, 5, 8, 1, 4, 7, 2, 6]
    ids = torch.randperm(1000, generator=gen)[: len(sizes)]  # arbitrary, non-contiguous labels
    groups = torch.cat([torch.full((s,), int(ids[k])) for k, s in enumerate(sizes)])
    n = groups.numel()
    perm = torch.randperm(n, generator=gen)  # interleave the groups
    groups = groups[perm]
    rewards = torch.randn(n, generator=gen)
    rewards[: n // 3] = (rewards[: n // 3] > 0).float()  # mix binary and continuous rewards
    t = 6
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()

    inputs = AdvantageInputs(sequence_rewards=rewards, group_index=groups, response_mask=mask)
    got = grpo_advantages(inputs, std_normalize=std_normalize, std_unbiased=unbiased)
    want = _loop_reference(rewards, groups, mask, 1e-6, std_normalize, unbiased)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_group_statistics() -> None:
    # groups: 2 -> [1, 3] (mean 2, unbiased std sqrt(2) = 1.41421), 0 -> [5] (mean 5, std 0)
    stats = group_statistics(torch.tensor([1.0, 5.0, 3.0]), torch.tensor([2, 0, 2]))
    torch.testing.assert_close(stats.mean, torch.tensor([2.0, 5.0, 2.0]))
    torch.testing.assert_close(stats.std, torch.tensor([math.sqrt(2.0), 0.0, math.sqrt(2.0)]))
    torch.testing.assert_close(stats.count, torch.tensor([2.0, 1.0, 2.0]))


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="group_index"):
        AdvantageInputs(torch.zeros(3), torch.zeros(2, dtype=torch.long), torch.ones(3, 4))
    with pytest.raises(TypeError, match="integer"):
        AdvantageInputs(torch.zeros(3), torch.zeros(3), torch.ones(3, 4))
    with pytest.raises(ValueError, match="values"):
        AdvantageInputs(
            torch.zeros(3), torch.zeros(3, dtype=torch.long), torch.ones(3, 4), values=torch.zeros(3, 5)
        )
    with pytest.raises(TypeError):
        grpo_advantages(_inputs([1, 0], [0, 0], [1, 1]), std_normalise=False)  # typo is an error


# ---------------------------------------------------------------------------------------------------------
# Estimators added after GRPO. Shared helpers: a random batch with uneven, interleaved, arbitrarily
# labelled groups (including singletons and a constant group), and plain per-group Python references.
# ---------------------------------------------------------------------------------------------------------

NEW_ESTIMATORS = {
    "dr_grpo": dr_grpo_advantages,
    "rloo": rloo_advantages,
    "reinforce_pp": reinforce_pp_advantages,
    "lite_ppo": lite_ppo_advantages,
    "group_mean_batch_std": lite_ppo_advantages,
    "batch_norm": batch_norm_advantages,
    "dgpo": dgpo_advantages,
}
GROUP_ESTIMATORS = ["grpo", "dr_grpo", "rloo", "lite_ppo", "dgpo"]  # singleton / constant group -> 0


def _random_batch(seed: int, t: int = 6, with_token_rewards: bool = False) -> AdvantageInputs:
    gen = torch.Generator().manual_seed(seed)
    sizes = [1, 2, 3, 5, 8, 1, 4, 7, 2, 6, 4]
    ids = torch.randperm(1000, generator=gen)[: len(sizes)]  # arbitrary, non-contiguous labels
    groups = torch.cat([torch.full((s,), int(ids[k])) for k, s in enumerate(sizes)])
    rewards = torch.randn(groups.numel(), generator=gen)
    rewards[:12] = (rewards[:12] > 0).float()  # binary rewards in the first groups
    rewards[groups == ids[-1]] = 0.7  # one constant group (0.7 is inexact in binary)
    n = groups.numel()
    perm = torch.randperm(n, generator=gen)  # interleave the groups
    groups, rewards = groups[perm], rewards[perm]
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
    token_rewards = 0.1 * torch.randn(n, t, generator=gen) if with_token_rewards else None
    return AdvantageInputs(
        sequence_rewards=rewards, group_index=groups, response_mask=mask, token_rewards=token_rewards
    )


def _members(inputs: AdvantageInputs) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, g in enumerate(inputs.group_index.tolist()):
        out.setdefault(g, []).append(i)
    return out


def _std(values: list[float], unbiased: bool = True) -> float:
    n = len(values)
    mean = sum(values) / n
    d = n - 1 if unbiased else n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / d) if d > 0 else 0.0


def _to_tokens(per_seq: list[float], inputs: AdvantageInputs) -> torch.Tensor:
    return torch.tensor(per_seq, dtype=torch.float64)[:, None] * inputs.response_mask.double()


def _loop_rloo(inputs: AdvantageInputs) -> torch.Tensor:
    r = inputs.sequence_rewards.tolist()
    out = [0.0] * len(r)
    for members in _members(inputs).values():
        if len(members) == 1:
            continue
        for i in members:
            others = [r[j] for j in members if j != i]
            out[i] = r[i] - sum(others) / len(others)
    return _to_tokens(out, inputs)


def _loop_lite_ppo(inputs: AdvantageInputs, eps: float, unbiased: bool) -> torch.Tensor:
    r = inputs.sequence_rewards.tolist()
    batch_std = _std(r, unbiased)
    out = [0.0] * len(r)
    for members in _members(inputs).values():
        values = [r[i] for i in members]
        if len(members) == 1 or max(values) == min(values):
            continue
        mean = sum(values) / len(values)
        for i in members:
            out[i] = (r[i] - mean) / (batch_std + eps)
    return _to_tokens(out, inputs)


def _loop_batch_norm(inputs: AdvantageInputs, eps: float, unbiased: bool) -> torch.Tensor:
    r = inputs.sequence_rewards.tolist()
    mean, std = sum(r) / len(r), _std(r, unbiased)
    return _to_tokens([(v - mean) / (std + eps) for v in r], inputs)


def _loop_dgpo(inputs: AdvantageInputs, eps: float, weighting: bool, temperature: float) -> torch.Tensor:
    r = inputs.sequence_rewards.tolist()
    out = [0.0] * len(r)
    accuracy: dict[int, float] = {}
    for g, members in _members(inputs).items():
        values = [r[i] for i in members]
        if len(members) == 1 or max(values) == min(values):
            continue
        mean = sum(values) / len(values)
        spread = sum(abs(v - mean) for v in values)
        for i in members:
            out[i] = len(members) * (r[i] - mean) / (spread + eps)
        accuracy[g] = mean
    if weighting and accuracy:
        z = sum(math.exp(-a / temperature) for a in accuracy.values())
        for g, a in accuracy.items():
            w = len(accuracy) * math.exp(-a / temperature) / z
            for i in _members(inputs)[g]:
                out[i] *= w
    return _to_tokens(out, inputs)


def _loop_reinforce_pp(inputs: AdvantageInputs, eps: float) -> torch.Tensor:
    r = inputs.sequence_rewards.tolist()
    mask = inputs.response_mask.tolist()
    n, t = len(r), len(mask[0])
    centred = [0.0] * n
    for members in _members(inputs).values():
        mean = sum(r[i] for i in members) / len(members)
        for i in members:
            centred[i] = 0.0 if len(members) == 1 else r[i] - mean
    returns = [[0.0] * t for _ in range(n)]
    for i in range(n):
        to_go = 0.0
        for s in reversed(range(t)):
            if inputs.token_rewards is not None and mask[i][s]:
                to_go += float(inputs.token_rewards[i, s])
            returns[i][s] = centred[i] + to_go
    valid = [returns[i][s] for i in range(n) for s in range(t) if mask[i][s]]
    mean = sum(valid) / len(valid)
    var = sum((v - mean) ** 2 for v in valid) / len(valid)
    out = torch.zeros(n, t, dtype=torch.float64)
    for i in range(n):
        for s in range(t):
            if mask[i][s]:
                out[i, s] = (returns[i][s] - mean) / math.sqrt(var + eps)
    return out


def test_new_estimators_registered() -> None:
    for name, fn in NEW_ESTIMATORS.items():
        assert ADVANTAGES.get(name) is fn
    assert ADVANTAGES.get("lite_ppo") is ADVANTAGES.get("group_mean_batch_std")


# --- Dr. GRPO --------------------------------------------------------------------------------------------


def test_dr_grpo_by_hand() -> None:
    # rewards [1, 0, 0, 1]: mean 0.5 -> A = r - 0.5 = [0.5, -0.5, -0.5, 0.5] (no std division)
    # uneven groups: 7 -> samples 0, 2, 4 with [1, 0, 2], mean 1 -> [0, -1, 1];
    #                3 -> samples 1, 3 with [2, 4], mean 3 -> [-1, 1]; 9 -> singleton -> 0
    a = dr_grpo_advantages(_inputs([1, 0, 0, 1], [0, 0, 0, 0], [4, 4, 4, 4]))
    torch.testing.assert_close(a[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]), atol=0, rtol=0)
    inputs = _inputs([1, 2, 0, 4, 2, 5], [7, 3, 7, 3, 7, 9], [4, 2, 0, 1, 3, 4])
    expected = torch.tensor([0.0, -1.0, -1.0, 1.0, 1.0, 0.0])[:, None] * inputs.response_mask
    torch.testing.assert_close(dr_grpo_advantages(inputs), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_dr_grpo_equals_grpo_without_std(seed: int) -> None:
    inputs = _random_batch(seed)
    assert torch.equal(dr_grpo_advantages(inputs), grpo_advantages(inputs, std_normalize=False))


# --- RLOO ------------------------------------------------------------------------------------------------


def test_rloo_by_hand() -> None:
    # rewards [1, 0, 0, 1], G = 4: A_0 = 1 - (0 + 0 + 1) / 3 = 2/3, A_1 = 0 - (1 + 0 + 1) / 3 = -2/3
    # (= G / (G - 1) * (r - mean) = 4/3 * +-0.5)
    a = rloo_advantages(_inputs([1, 0, 0, 1], [0, 0, 0, 0], [4, 4, 4, 4]))
    torch.testing.assert_close(a, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3])[:, None].expand(4, 4))


def test_rloo_uneven_interleaved() -> None:
    # group 7 = samples 0, 2, 4 with [1, 0, 2]: A_0 = 1 - (0 + 2)/2 = 0, A_2 = 0 - (1 + 2)/2 = -1.5,
    #   A_4 = 2 - (1 + 0)/2 = 1.5; group 3 = samples 1, 3 with [2, 4]: A = 2 - 4 = -2, 4 - 2 = 2;
    # group 9 = sample 5 alone -> 0
    inputs = _inputs([1, 2, 0, 4, 2, 5], [7, 3, 7, 3, 7, 9], [4, 2, 0, 1, 3, 4])
    expected = torch.tensor([0.0, -2.0, -1.5, 2.0, 1.5, 0.0])[:, None] * inputs.response_mask
    torch.testing.assert_close(rloo_advantages(inputs), expected, atol=1e-6, rtol=0)


# --- REINFORCE++-baseline --------------------------------------------------------------------------------


def test_reinforce_pp_by_hand() -> None:
    # rewards [1, 0, 0, 1] in one group with lengths [1, 3, 2, 2]: centred +-0.5 on the tokens:
    #   +0.5 x 3 tokens, -0.5 x 5 tokens; token mean -1/8 = -0.125; deviations +0.625 / -0.375;
    #   population var (3 * 0.625^2 + 5 * 0.375^2) / 8 = 15/64, std sqrt(15)/8
    #   -> A = 0.625 / (sqrt(15)/8) = 5/sqrt(15) = 1.29099 and -3/sqrt(15) = -0.77460
    inputs = _inputs([1, 0, 0, 1], [0, 0, 0, 0], [1, 3, 2, 2])
    plus, minus = 5 / math.sqrt(15), -3 / math.sqrt(15)
    expected = torch.tensor([plus, minus, minus, plus])[:, None] * inputs.response_mask
    torch.testing.assert_close(reinforce_pp_advantages(inputs), expected, atol=1e-5, rtol=0)


def test_reinforce_pp_singleton_is_shifted_by_global_whitening() -> None:
    # as above plus a singleton group (reward 5, 2 tokens): its centred value is 0 but it is whitened too.
    # 10 tokens: +0.5 x 3, -0.5 x 5, 0 x 2 -> mean -0.1; deviations +0.6, -0.4, +0.1;
    # var (3 * 0.36 + 5 * 0.16 + 2 * 0.01) / 10 = 0.19 -> A = 0.6 / sqrt(0.19) = 1.37649,
    # -0.4 / sqrt(0.19) = -0.91766, singleton 0.1 / sqrt(0.19) = 0.22942
    inputs = _inputs([1, 0, 0, 1, 5], [0, 0, 0, 0, 9], [1, 3, 2, 2, 2])
    s = math.sqrt(0.19)
    expected = torch.tensor([0.6 / s, -0.4 / s, -0.4 / s, 0.6 / s, 0.1 / s])[:, None] * inputs.response_mask
    torch.testing.assert_close(reinforce_pp_advantages(inputs), expected, atol=1e-5, rtol=0)


def test_reinforce_pp_token_rewards_by_hand() -> None:
    # rewards [1, 0] in one group -> centred +0.5, -0.5; lengths [3, 2]; token rewards (the 9 is padding):
    #   sample 0: [-0.1, -0.2, -0.3] -> return-to-go [-0.6, -0.5, -0.3] -> returns [-0.1, 0.0, 0.2]
    #   sample 1: [0.0, -0.4, (9)]   -> return-to-go [-0.4, -0.4]       -> returns [-0.9, -0.9]
    # 5 tokens: mean -1.7 / 5 = -0.34; deviations [0.24, 0.34, 0.54], [-0.56, -0.56];
    # population var (0.0576 + 0.1156 + 0.2916 + 2 * 0.3136) / 5 = 0.2184 -> divide by sqrt(0.2184)
    token_rewards = torch.tensor([[-0.1, -0.2, -0.3], [0.0, -0.4, 9.0]])
    inputs = _inputs([1, 0], [4, 4], [3, 2], t=3, token_rewards=token_rewards)
    s = math.sqrt(0.2184)
    expected = torch.tensor([[0.24 / s, 0.34 / s, 0.54 / s], [-0.56 / s, -0.56 / s, 0.0]])
    torch.testing.assert_close(reinforce_pp_advantages(inputs), expected, atol=1e-5, rtol=0)


def test_reinforce_pp_constant_batch_and_empty_mask() -> None:
    # every group constant or singleton -> all centred values 0 -> exactly 0 (also with eps = 0)
    inputs = _inputs([1, 1, 0.7, 0.7, 0.7, 3.0], [0, 0, 1, 1, 1, 2], [4, 2, 3, 1, 4, 4])
    for eps in (1e-8, 0.0):
        a = reinforce_pp_advantages(inputs, eps=eps)
        assert torch.all(a == 0)
    # constant non-zero returns from token rewards: 0, not rounding noise / sqrt(eps)
    constant = _inputs([0.3, 0.3], [0, 0], [1, 1], t=1, token_rewards=torch.full((2, 1), 0.7))
    assert torch.all(reinforce_pp_advantages(constant) == 0)
    empty = _inputs([1, 0], [0, 0], [0, 0])
    assert torch.all(reinforce_pp_advantages(empty) == 0)


def test_reinforce_pp_token_mean_zero_unit_variance() -> None:
    inputs = _random_batch(3, with_token_rewards=True)
    a = reinforce_pp_advantages(inputs, eps=0.0).double()
    valid = inputs.response_mask.bool()
    assert abs(float(a[valid].mean())) < 1e-6
    assert abs(float(a[valid].var(unbiased=False)) - 1.0) < 1e-5


# --- Lite PPO (group mean, batch std) --------------------------------------------------------------------


def test_lite_ppo_by_hand() -> None:
    # group 0 = [1, 0, 0, 1] (mean 0.5), group 1 = [1, 1, 1, 0] (mean 0.75); batch of 8 rewards:
    #   mean 5/8, squared deviations 5 * 0.375^2 + 3 * 0.625^2 = 1.875, unbiased var 1.875 / 7 = 0.267857,
    #   std 0.517549 -> group 0: +-0.5 / 0.517549 = +-0.966092;
    #   group 1: 0.25 / 0.517549 = 0.483046, -0.75 / 0.517549 = -1.449138
    inputs = _inputs([1, 0, 0, 1, 1, 1, 1, 0], [0] * 4 + [1] * 4, [4] * 8)
    expected = torch.tensor(
        [0.966092, -0.966092, -0.966092, 0.966092, 0.483046, 0.483046, 0.483046, -1.449138]
    )
    torch.testing.assert_close(lite_ppo_advantages(inputs)[:, 0], expected, atol=1e-5, rtol=0)
    # population batch std: sqrt(1.875 / 8) = 0.484123 -> +-0.5 / 0.484123 = +-1.032796
    a_pop = lite_ppo_advantages(inputs, std_unbiased=False)
    torch.testing.assert_close(a_pop[0, 0], torch.tensor(1.032796), atol=1e-5, rtol=0)


def test_lite_ppo_uneven_interleaved() -> None:
    # rewards [1, 2, 0, 4, 2, 5]: batch mean 14/6, squared deviations sum 17.3333, unbiased var 3.46667,
    # std 1.861899. group 7 (samples 0, 2, 4: [1, 0, 2], mean 1) -> [0, -1, 1] / 1.861899;
    # group 3 (samples 1, 3: [2, 4], mean 3) -> [-1, 1] / 1.861899; group 9 (singleton) -> 0
    inputs = _inputs([1, 2, 0, 4, 2, 5], [7, 3, 7, 3, 7, 9], [4, 2, 0, 1, 3, 4])
    k = 1 / 1.861899
    expected = torch.tensor([0.0, -k, -k, k, k, 0.0])[:, None] * inputs.response_mask
    torch.testing.assert_close(lite_ppo_advantages(inputs), expected, atol=1e-5, rtol=0)


# --- batch normalisation ---------------------------------------------------------------------------------


def test_batch_norm_by_hand() -> None:
    # rewards [1, 2, 0, 4, 2, 5]: mean 2.33333, unbiased std 1.861899 (see above), groups ignored:
    # A = (r - 2.33333) / 1.861899 = [-0.716115, -0.179029, -1.253200, 0.895144, -0.179029, 1.432230]
    # (the singleton group 9, reward 5, is compared with the batch and is not 0)
    inputs = _inputs([1, 2, 0, 4, 2, 5], [7, 3, 7, 3, 7, 9], [4, 2, 0, 1, 3, 4])
    per_seq = torch.tensor([-0.716115, -0.179029, -1.253200, 0.895144, -0.179029, 1.432230])
    torch.testing.assert_close(
        batch_norm_advantages(inputs), per_seq[:, None] * inputs.response_mask, atol=1e-5, rtol=0
    )
    # group labels do not matter
    relabelled = _inputs([1, 2, 0, 4, 2, 5], [0, 1, 2, 3, 4, 5], [4, 2, 0, 1, 3, 4])
    assert torch.equal(batch_norm_advantages(relabelled), batch_norm_advantages(inputs))


def test_batch_norm_constant_or_single_batch_is_zero() -> None:
    for inputs in (_inputs([0.7] * 7, [0, 0, 1, 1, 1, 2, 3], [4] * 7), _inputs([3.0], [0], [4])):
        for eps in (1e-6, 0.0):
            a = batch_norm_advantages(inputs, eps=eps)
            assert not torch.isnan(a).any()
            assert torch.all(a == 0)


# --- DGPO (DGAE + DQW) -----------------------------------------------------------------------------------


def test_dgpo_single_group_by_hand() -> None:
    # rewards [1, 0, 0, 1]: mean 0.5, sum |r - mean| = 2 -> A = 4 * (+-0.5) / (2 + 1e-4) = +-0.999950
    # DQW: Q = 1 valid group -> w = 1 * softmax([x]) = 1, so weighting changes nothing
    inputs = _inputs([1, 0, 0, 1], [0, 0, 0, 0], [4, 4, 4, 4])
    expected = torch.tensor([0.999950, -0.999950, -0.999950, 0.999950])[:, None].expand(4, 4)
    torch.testing.assert_close(dgpo_advantages(inputs), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(dgpo_advantages(inputs, question_weighting=False), expected, atol=1e-6, rtol=0)


def test_dgpo_question_weighting_by_hand() -> None:
    # group 0 = [1, 0, 0, 0] (acc 0.25): mean 0.25, sum |dev| = 0.75 + 3 * 0.25 = 1.5
    #   -> DGAE 4 * 0.75 / 1.5001 = 1.999867, 4 * (-0.25) / 1.5001 = -0.666622
    # group 1 = [1, 1, 1, 0] (acc 0.75): mirror image -> [0.666622 x 3, -1.999867]
    # group 2 = [1, 1] (constant) and group 3 = [0] (singleton): 0, and not counted in DQW.
    # DQW over Q = 2 valid groups, T = 2: logits -0.125, -0.375;
    #   w_0 = 2 / (1 + e^-0.25) = 1.124353, w_1 = 2 / (1 + e^0.25) = 0.875647 (mean 1; harder -> larger)
    # The groups are interleaved: sample order g0, g1, g2, g0, g1, g3, g0, g1, g2, g0, g1.
    groups = [0, 1, 2, 0, 1, 3, 0, 1, 2, 0, 1]
    rewards = [1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0]
    inputs = _inputs(rewards, [10 * g + 5 for g in groups], [4] * 11)  # labels 5, 15, 25, 35
    hi, lo = 4 * 0.75 / 1.5001, 4 * 0.25 / 1.5001
    dgae = {0: {1: hi, 0: -lo}, 1: {1: lo, 0: -hi}}
    w = {0: 2 / (1 + math.exp(-0.25)), 1: 2 / (1 + math.exp(0.25))}
    plain = [dgae[g][r] if g in dgae else 0.0 for g, r in zip(groups, rewards, strict=True)]
    weighted = [a * w[g] if g in w else 0.0 for a, g in zip(plain, groups, strict=True)]
    a = dgpo_advantages(inputs)
    torch.testing.assert_close(a[:, 0], torch.tensor(weighted), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        dgpo_advantages(inputs, question_weighting=False)[:, 0], torch.tensor(plain), atol=1e-5, rtol=0
    )
    # temperature: large T -> weights -> 1
    a_flat = dgpo_advantages(inputs, temperature=1e6)
    torch.testing.assert_close(a_flat[:, 0], torch.tensor(plain), atol=1e-5, rtol=0)


def test_dgpo_invariants_on_random_batch() -> None:
    batch = _random_batch(5)
    full_mask = torch.ones_like(batch.response_mask)  # so that column 0 holds every sequence's advantage
    inputs = AdvantageInputs(batch.sequence_rewards, batch.group_index, full_mask)
    plain = dgpo_advantages(inputs, question_weighting=False, eps=0.0)[:, 0].double()
    weighted = dgpo_advantages(inputs, eps=0.0)[:, 0].double()
    members = _members(inputs)
    valid_weights = []
    for idx in members.values():
        values = inputs.sequence_rewards[idx]
        if len(idx) > 1 and bool(values.max() > values.min()):
            # DGAE: sum_i |A_i| = G for every non-degenerate group (eps = 0)
            assert abs(float(plain[idx].abs().sum()) - len(idx)) < 1e-4
            valid_weights.append(float(weighted[idx].abs().sum() / plain[idx].abs().sum()))
        else:
            assert torch.all(weighted[idx] == 0)
    # DQW: mean weight 1 over the valid groups
    assert abs(sum(valid_weights) / len(valid_weights) - 1.0) < 1e-5


def test_dgpo_rejects_bad_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        dgpo_advantages(_inputs([1, 0], [0, 0], [1, 1]), temperature=0.0)


# --- shared properties -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_singleton_and_constant_groups_are_zero(name: str) -> None:
    # groups 0 and 1 constant ([1, 1, 1], [0.7] * 7, 0.7 inexact in binary), 2 and 3 singletons; a valid
    # group 4 keeps the batch std non-zero
    inputs = _inputs([1, 1, 1] + [0.7] * 7 + [3.0, -1.0, 1, 0], [0] * 3 + [1] * 7 + [2, 3, 4, 4], [4] * 14)
    fn = ADVANTAGES.get(name)
    a = fn(inputs, eps=0.0) if name not in ("dr_grpo", "rloo") else fn(inputs)
    assert not torch.isnan(a).any()
    assert torch.all(a[:12] == 0)
    assert torch.all(a[12:] != 0)
    # a batch made only of degenerate groups
    degenerate = _inputs([1, 1, 0.7, 0.7, 0.7, 3.0], [0, 0, 1, 1, 1, 2], [4] * 6)
    assert torch.all(fn(degenerate) == 0)


@pytest.mark.parametrize("name", sorted(NEW_ESTIMATORS))
def test_bool_mask_integer_rewards_and_unknown_hparam(name: str) -> None:
    fn = ADVANTAGES.get(name)
    inputs = AdvantageInputs(
        sequence_rewards=torch.tensor([1, 0, 0, 1, 1]),
        group_index=torch.tensor([5, 5, 2, 2, 2]),
        response_mask=torch.tensor(
            [[True, False], [True, True], [False, False], [True, True], [True, False]]
        ),
    )
    a = fn(inputs)
    assert a.dtype == torch.float32
    assert a.shape == (5, 2)
    assert torch.all(a[~inputs.response_mask] == 0)
    assert torch.isfinite(a).all()
    with pytest.raises(TypeError):
        fn(inputs, not_a_hparam=1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_new_estimators_match_loops(seed: int) -> None:
    inputs = _random_batch(seed)

    def check(got: torch.Tensor, want: torch.Tensor) -> None:
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)

    check(rloo_advantages(inputs), _loop_rloo(inputs))
    for unbiased in (True, False):
        check(lite_ppo_advantages(inputs, std_unbiased=unbiased), _loop_lite_ppo(inputs, 1e-6, unbiased))
        check(batch_norm_advantages(inputs, std_unbiased=unbiased), _loop_batch_norm(inputs, 1e-6, unbiased))
    for weighting in (True, False):
        for temperature in (2.0, 0.5):
            check(
                dgpo_advantages(inputs, question_weighting=weighting, temperature=temperature),
                _loop_dgpo(inputs, 1e-4, weighting, temperature),
            )
    check(reinforce_pp_advantages(inputs), _loop_reinforce_pp(inputs, 1e-8))
    with_tokens = _random_batch(seed, with_token_rewards=True)
    check(reinforce_pp_advantages(with_tokens), _loop_reinforce_pp(with_tokens, 1e-8))


# --- ReMax -----------------------------------------------------------------------------------------------


def test_remax_by_hand() -> None:
    from rlvr.algorithms import remax_advantages
    from rlvr.algorithms.utils import needs_of

    assert ADVANTAGES.get("remax") is remax_advantages
    assert needs_of(remax_advantages) == frozenset({"baseline_rewards"})
    # prompt 0: greedy reward 1 -> samples [1, 0] get [1 - 1, 0 - 1] = [0, -1]
    # prompt 1: greedy reward 0 -> samples [1, 0.5] get [1, 0.5] (a singleton group still gets a signal)
    # prompt 2: greedy reward 0.25 -> sample [0] gets -0.25
    inputs = AdvantageInputs(
        sequence_rewards=torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0]),
        group_index=torch.tensor([0, 0, 1, 1, 2]),
        response_mask=torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1]]),
        baseline_rewards=torch.tensor([1.0, 1.0, 0.0, 0.0, 0.25]),
    )
    a = remax_advantages(inputs)
    expected = torch.tensor(
        [[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-0.25, -0.25, -0.25]]
    )
    torch.testing.assert_close(a, expected, atol=0, rtol=0)
    assert a.dtype == torch.float32


def test_remax_needs_baseline_rewards() -> None:
    remax = ADVANTAGES.get("remax")
    with pytest.raises(ValueError, match="baseline_rewards"):
        remax(_inputs([1, 0], [0, 0], [2, 2]))
    with pytest.raises(ValueError, match=r"baseline_rewards must be \[N\]=2"):
        AdvantageInputs(
            sequence_rewards=torch.tensor([1.0, 0.0]),
            group_index=torch.tensor([0, 0]),
            response_mask=torch.ones(2, 3),
            baseline_rewards=torch.tensor([1.0]),
        )
    # integer rewards and a bool mask give float advantages
    inputs = AdvantageInputs(
        sequence_rewards=torch.tensor([1, 0]),
        group_index=torch.tensor([0, 0]),
        response_mask=torch.tensor([[True, False], [True, True]]),
        baseline_rewards=torch.tensor([1, 1]),
    )
    torch.testing.assert_close(remax(inputs), torch.tensor([[0.0, 0.0], [-1.0, -1.0]]))

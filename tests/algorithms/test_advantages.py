"""Tests for rlvr.algorithms.advantages (GRPO / Dr. GRPO group-relative advantages)."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import ADVANTAGES, AdvantageInputs, group_statistics, grpo_advantages


def _inputs(rewards: list[float], groups: list[int], lengths: list[int], t: int = 4) -> AdvantageInputs:
    mask = torch.zeros(len(rewards), t)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1.0
    return AdvantageInputs(
        sequence_rewards=torch.tensor(rewards, dtype=torch.float32),
        group_index=torch.tensor(groups, dtype=torch.long),
        response_mask=mask,
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

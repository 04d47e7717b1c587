"""Tests for rlvr.algorithms.shaping: DAPO's soft overlong penalty and dynamic-sampling filter."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import group_order, informative_groups, soft_overlong_penalty

# --- soft_overlong_penalty -------------------------------------------------------------------------------


def test_soft_overlong_penalty_by_hand() -> None:
    # max_len 10, buffer 4 -> ramp starts after 10 - 4 = 6
    #   L = 0, 6   -> 0                      (L <= 6)
    #   L = 7      -> (6 - 7) / 4  = -0.25   (6 < L <= 10)
    #   L = 8      -> (6 - 8) / 4  = -0.5
    #   L = 10     -> (6 - 10) / 4 = -1      (the last allowed length gets the full penalty)
    #   L = 11, 50 -> -1                     (L > 10)
    lengths = torch.tensor([0, 6, 7, 8, 10, 11, 50])
    got = soft_overlong_penalty(lengths, max_len=10, buffer_len=4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]), atol=0, rtol=0)
    # penalty 2 scales every value: -0.5, -1, -2
    got = soft_overlong_penalty(lengths.float(), max_len=10, buffer_len=4, penalty=2.0)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -0.5, -1.0, -2.0, -2.0, -2.0]), atol=0, rtol=0)


def test_soft_overlong_penalty_dapo_setting_and_full_buffer() -> None:
    # DAPO: max 20480, cache 4096 -> 0 up to 16384; 18432 is half-way -> -0.5; 20480 -> -1
    got = soft_overlong_penalty(torch.tensor([16384, 16385, 18432, 20480]), max_len=20480, buffer_len=4096)
    torch.testing.assert_close(got, torch.tensor([0.0, -1 / 4096, -0.5, -1.0]))
    # buffer_len == max_len: the ramp starts at 0 -> L = 5 of 10 gives -0.5
    got = soft_overlong_penalty(torch.tensor([0, 5, 10]), max_len=10, buffer_len=10)
    torch.testing.assert_close(got, torch.tensor([0.0, -0.5, -1.0]))


def test_soft_overlong_penalty_matches_formula() -> None:
    max_len, buffer_len = 37, 9
    lengths = torch.arange(0, 45)
    got = soft_overlong_penalty(lengths, max_len=max_len, buffer_len=buffer_len, penalty=0.5)
    for length, value in zip(lengths.tolist(), got.tolist(), strict=True):
        if length <= max_len - buffer_len:
            want = 0.0
        elif length <= max_len:
            want = ((max_len - buffer_len) - length) / buffer_len * 0.5
        else:
            want = -0.5
        assert value == pytest.approx(want, abs=1e-6)


def test_soft_overlong_penalty_validation() -> None:
    lengths = torch.tensor([1, 2])
    for buffer_len in (0, -1, 11):
        with pytest.raises(ValueError, match="buffer_len"):
            soft_overlong_penalty(lengths, max_len=10, buffer_len=buffer_len)
    with pytest.raises(ValueError, match="penalty"):
        soft_overlong_penalty(lengths, max_len=10, buffer_len=4, penalty=-1.0)
    with pytest.raises(ValueError, match=r"\[N\]"):
        soft_overlong_penalty(lengths.view(1, 2), max_len=10, buffer_len=4)
    with pytest.raises(TypeError):
        soft_overlong_penalty(lengths, 10, 4)  # keyword-only


# --- informative_groups ----------------------------------------------------------------------------------


def test_informative_groups_by_hand() -> None:
    # group 7 = samples 0, 2, 5 with rewards [1, 0, 1] -> mixed -> informative
    # group 3 = samples 1, 3 with rewards [0, 0]        -> all wrong -> not
    # group 9 = sample 4 alone                          -> singleton -> not
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([7, 3, 7, 3, 9, 7])
    got = informative_groups(rewards, groups)
    assert got.dtype == torch.bool
    assert got.tolist() == [True, False, True, False, False, True]


def test_informative_groups_continuous_rewards_and_eps() -> None:
    # group 0: seven times 0.7 (inexact in binary, its float mean is off by an ulp) -> std exactly 0 -> not
    # group 1: [0.0, 0.1] -> population std 0.05 -> informative for eps 0 and 0.04, not for eps 0.05 / 0.06
    rewards = torch.tensor([0.7] * 7 + [0.0, 0.1])
    groups = torch.tensor([0] * 7 + [1, 1])
    assert informative_groups(rewards, groups).tolist() == [False] * 7 + [True, True]
    assert informative_groups(rewards, groups, eps=0.04).tolist() == [False] * 7 + [True, True]
    assert informative_groups(rewards, groups, eps=0.06).tolist() == [False] * 9
    # integer rewards work too
    assert informative_groups(torch.tensor([1, 0, 1, 1]), torch.tensor([0, 0, 1, 1])).tolist() == [
        True,
        True,
        False,
        False,
    ]


def test_informative_groups_matches_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = [1, 2, 3, 5, 8, 1, 4, 7, 2, 6, 4]
    ids = torch.randperm(1000, generator=gen)[: len(sizes)]  # arbitrary, non-contiguous labels
    groups = torch.cat([torch.full((s,), int(ids[k])) for k, s in enumerate(sizes)])
    rewards = torch.randn(groups.numel(), generator=gen)
    rewards[:20] = (rewards[:20] > 0).float()  # binary groups (some all-0 or all-1 by chance)
    rewards[groups == ids[-1]] = 0.7  # one constant continuous group
    perm = torch.randperm(groups.numel(), generator=gen)  # interleave the groups
    groups, rewards = groups[perm], rewards[perm]
    for eps in (0.0, 0.3):
        want = []
        for i in range(groups.numel()):
            values = [float(rewards[j]) for j in range(groups.numel()) if groups[j] == groups[i]]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            want.append(len(values) > 1 and max(values) != min(values) and std > eps)
        assert informative_groups(rewards, groups, eps=eps).tolist() == want
    assert informative_groups(rewards, groups).any() and not informative_groups(rewards, groups).all()


def test_informative_groups_validation() -> None:
    with pytest.raises(ValueError, match="group_index"):
        informative_groups(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        informative_groups(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="eps"):
        informative_groups(torch.zeros(3), torch.zeros(3, dtype=torch.long), eps=-1.0)
    with pytest.raises(ValueError, match="rewards"):
        informative_groups(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


# --- group_order -----------------------------------------------------------------------------------------


def test_group_order() -> None:
    assert group_order(torch.tensor([5, 2, 5, 9, 2, -1])) == [5, 2, 9, -1]
    assert group_order(torch.tensor([3, 3, 3])) == [3]
    assert group_order(torch.tensor([], dtype=torch.long)) == []
    with pytest.raises(TypeError, match="integer"):
        group_order(torch.tensor([1.0]))

"""Tests for the PACS, Clip-Cov, KL-Cov and Lp-Reg policy losses and the min-p proxy of Lp-Reg."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import (
    POLICY_LOSSES,
    aggregate,
    clip_cov_loss,
    kl_cov_loss,
    lp_reg_loss,
    minp_proxy_logprobs,
    pacs_loss,
    ppo_clip_loss,
)
from rlvr.algorithms.utils import needs_of

E = math.e


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


# ---------------------------------------------------------------------------------------------------------
# Registry and declared fields


@pytest.mark.parametrize(
    ("name", "fn", "fields"),
    [
        ("pacs", pacs_loss, {"sequence_rewards", "group_index"}),
        ("clip_cov", clip_cov_loss, set()),
        ("kl_cov", kl_cov_loss, set()),
        ("lp_reg", lp_reg_loss, {"proxy_logprobs"}),
    ],
)
def test_registered_with_needs(name: str, fn, fields: set[str]) -> None:
    assert POLICY_LOSSES.get(name) is fn
    assert needs_of(fn) == fields


# ---------------------------------------------------------------------------------------------------------
# PACS


def _pacs_hand_batch() -> tuple[torch.Tensor, ...]:
    """Four responses in two groups labelled 7 and 3 (interleaved), T = 3, float64.

    Per-token log-ratios (padding holds NaN / inf):
      row 0 (group 7, r=1): 0.2 + 0.1 + 0.2 = 0.5     3 tokens
      row 1 (group 3, r=1): -0.1 - 0.1      = -0.2    2 tokens
      row 2 (group 7, r=0): -0.5            = -0.5    1 token
      row 3 (group 3, r=0): 0.1 + 0.1 + 0.2 = 0.4     3 tokens
    """
    log_ratio = torch.tensor(
        [[0.2, 0.1, 0.2], [-0.1, -0.1, 0.0], [-0.5, 0.0, 0.0], [0.1, 0.1, 0.2]], dtype=torch.float64
    )
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.float64)
    old = torch.full((4, 3), -1.0, dtype=torch.float64)
    new = (old + log_ratio).detach()
    new[mask == 0] = float("nan")
    old[1, 2] = float("inf")
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    groups = torch.tensor([7, 3, 7, 3])
    return new.requires_grad_(True), old, mask, rewards, groups


def test_pacs_rloo_by_hand() -> None:
    # beta = 1, "sum": r_hat = (0.5, -0.2, -0.5, 0.4). RLOO in groups of two: psi_a = r_hat_a - r_hat_b.
    #   group 7: psi_0 = 0.5 - (-0.5) = 1.0      psi_2 = -1.0
    #   group 3: psi_1 = -0.2 - 0.4   = -0.6     psi_3 = +0.6
    # BCE(psi, r) = softplus(psi) - r psi:
    #   row 0: psi=1,    r=1 -> softplus(-1)  = 0.3132617
    #   row 1: psi=-0.6, r=1 -> softplus(0.6) = 1.0374880
    #   row 2: psi=-1,   r=0 -> softplus(-1)  = 0.3132617
    #   row 3: psi=0.6,  r=0 -> softplus(0.6) = 1.0374880
    new, old, mask, rewards, groups = _pacs_hand_batch()
    adv = torch.full((4, 3), float("nan"), dtype=torch.float64)  # unused by PACS
    loss, metrics = pacs_loss(new, old, adv, mask, sequence_rewards=rewards, group_index=groups)
    b_pos, b_neg = _softplus(-1.0), _softplus(0.6)
    expected = torch.tensor(
        [[b_pos] * 3, [b_neg, b_neg, 0.0], [b_pos, 0.0, 0.0], [b_neg] * 3], dtype=torch.float64
    )
    torch.testing.assert_close(loss, expected)

    # seq-mean-token-mean = mean BCE over the 4 responses = (2 * 0.3132617 + 2 * 1.0374880) / 4 = 0.6753748
    total = aggregate(loss, mask, "seq-mean-token-mean")
    torch.testing.assert_close(total, torch.tensor((b_pos + b_neg) / 2, dtype=torch.float64))
    assert total.item() == pytest.approx(0.6753748, abs=1e-7)

    # Gradient: dBCE_i/dpsi_i = sigmoid(psi_i) - r_i =: g_i and d r_hat_i / d logp_it = beta = 1, so
    # dL/dr_hat_a = g_a - g_b within a pair (a's own score, and b's baseline):
    #   g_0 = 0.7310586 - 1 = -0.2689414,  g_2 = 0.2689414 - 0 = 0.2689414
    #     -> row 0: g_0 - g_2 = -0.5378828,  row 2: g_2 - g_0 = +0.5378828
    #   g_1 = 0.3543437 - 1 = -0.6456563,  g_3 = 0.6456563 - 0 = 0.6456563
    #     -> row 1: g_1 - g_3 = -1.2913126,  row 3: g_3 - g_1 = +1.2913126
    # divided by the 4 responses, on every valid token of the row (whatever its length):
    total.backward()
    g0, g1, g2, g3 = _sigmoid(1.0) - 1, _sigmoid(-0.6) - 1, _sigmoid(-1.0), _sigmoid(0.6)
    row_grads = [(g0 - g2) / 4, (g1 - g3) / 4, (g2 - g0) / 4, (g3 - g1) / 4]
    assert row_grads[0] == pytest.approx(-0.1344707, abs=1e-7)
    assert row_grads[1] == pytest.approx(-0.3228282, abs=1e-7)
    expected_grad = torch.tensor(row_grads, dtype=torch.float64)[:, None] * mask
    torch.testing.assert_close(new.grad, expected_grad)

    # psi > 0 predicts "correct": rows 0 and 2 agree with their labels, rows 1 and 3 do not -> 0.5
    torch.testing.assert_close(metrics["accuracy"], torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(metrics["bce"], torch.tensor((b_pos + b_neg) / 2, dtype=torch.float64))
    torch.testing.assert_close(metrics["score_mean"], torch.tensor(0.0, dtype=torch.float64))
    # (0.5 - 0.2 - 0.5 + 0.4) / 4 = 0.05
    torch.testing.assert_close(metrics["reward_proxy_mean"], torch.tensor(0.05, dtype=torch.float64))
    assert all(not v.requires_grad and v.dim() == 0 and torch.isfinite(v) for v in metrics.values())


def test_pacs_group_labels_are_arbitrary() -> None:
    # Relabelling the groups, or permuting the rows together with their labels, changes nothing.
    new, old, mask, rewards, groups = _pacs_hand_batch()
    adv = torch.zeros(4, 3, dtype=torch.float64)
    loss, _ = pacs_loss(new, old, adv, mask, sequence_rewards=rewards, group_index=groups)
    relabelled, _ = pacs_loss(
        new, old, adv, mask, sequence_rewards=rewards, group_index=torch.tensor([-5, 10**9, -5, 10**9])
    )
    torch.testing.assert_close(relabelled, loss)
    perm = torch.tensor([3, 0, 2, 1])
    permuted, _ = pacs_loss(
        new[perm], old[perm], adv, mask[perm], sequence_rewards=rewards[perm], group_index=groups[perm]
    )
    torch.testing.assert_close(permuted, loss[perm])
    # One group of four instead of two of two is a different problem (the baseline changes).
    merged, _ = pacs_loss(
        new, old, adv, mask, sequence_rewards=rewards, group_index=torch.zeros(4, dtype=torch.long)
    )
    assert not torch.allclose(merged, loss)


def test_pacs_scores_and_reward_methods_by_hand() -> None:
    # One group of three responses of one token each (old = 0, so log r = logp), r = (1, 0, 0).
    logp = torch.tensor([[0.3], [0.0], [-0.3]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(3, 1, dtype=torch.float64)
    mask = torch.ones(3, 1, dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    groups = torch.tensor([4, 4, 4])
    kw = {"sequence_rewards": rewards, "group_index": groups}

    # rloo: psi_i = r_hat_i - mean of the other two: 0.3 - (-0.15) = 0.45, 0 - 0 = 0, -0.3 - 0.15 = -0.45
    loss, m = pacs_loss(logp, old, mask, mask, **kw)
    psi = [0.45, 0.0, -0.45]
    expected = [_softplus(p) - r * p for p, r in zip(psi, [1, 0, 0], strict=True)]
    torch.testing.assert_close(loss[:, 0], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(m["score_mean"], torch.tensor(0.0, dtype=torch.float64))

    # grpo: mean 0, unbiased std sqrt((0.09 + 0 + 0.09) / 2) = 0.3 -> psi = (0.3, 0, -0.3) / (0.3 + 1e-6)
    loss, _ = pacs_loss(logp, old, mask, mask, score="grpo", **kw)
    psi = [0.3 / (0.3 + 1e-6), 0.0, -0.3 / (0.3 + 1e-6)]
    expected = [_softplus(p) - r * p for p, r in zip(psi, [1, 0, 0], strict=True)]
    torch.testing.assert_close(loss[:, 0], torch.tensor(expected, dtype=torch.float64))

    # naive with beta = 2: psi = 2 * r_hat = (0.6, 0, -0.6)
    loss, _ = pacs_loss(logp, old, mask, mask, score="naive", beta=2.0, **kw)
    psi = [0.6, 0.0, -0.6]
    expected = [_softplus(p) - r * p for p, r in zip(psi, [1, 0, 0], strict=True)]
    torch.testing.assert_close(loss[:, 0], torch.tensor(expected, dtype=torch.float64))

    # reward_method "mean": r_hat = beta * mean_t logp (no old policy). Two tokens per row, beta = 1:
    #   rows' mean logp = (-1, -2, -3) -> rloo psi = -1 - (-2.5) = 1.5, -2 - (-2) = 0, -3 - (-1.5) = -1.5
    logp2 = torch.tensor([[-0.5, -1.5], [-2.0, -2.0], [-4.0, -2.0]], dtype=torch.float64)
    old2 = torch.full((3, 2), float("nan"), dtype=torch.float64)  # not read by "mean"
    mask2 = torch.ones(3, 2, dtype=torch.float64)
    loss, m = pacs_loss(logp2, old2, mask2, mask2, reward_method="mean", **kw)
    psi = [1.5, 0.0, -1.5]
    expected = [_softplus(p) - r * p for p, r in zip(psi, [1, 0, 0], strict=True)]
    torch.testing.assert_close(loss[:, 0], torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(m["reward_proxy_mean"], torch.tensor(-2.0, dtype=torch.float64))


def test_pacs_class_balanced_weights_by_hand() -> None:
    # Group 0: labels (1, 0, 0) -> sklearn 'balanced': n / (n_classes * count) = 3 / (2 * 1) = 1.5 for the
    # positive, 3 / (2 * 2) = 0.75 for the negatives. Group 1: labels (1, 1), one class -> weight 1.
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(5, 2, generator=gen, dtype=torch.float64)
    new = old + 0.1 * torch.randn(5, 2, generator=gen, dtype=torch.float64)
    mask = torch.ones(5, 2, dtype=torch.float64)
    kw = {
        "sequence_rewards": torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64),
        "group_index": torch.tensor([0, 0, 0, 1, 1]),
    }
    plain, m_plain = pacs_loss(new, old, mask, mask, **kw)
    balanced, m_bal = pacs_loss(new, old, mask, mask, class_balanced=True, **kw)
    weights = torch.tensor([1.5, 0.75, 0.75, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(balanced, plain * weights[:, None])
    torch.testing.assert_close(m_bal["bce"], m_plain["bce"])  # the metric is the unweighted BCE
    with pytest.raises(ValueError, match="0/1"):
        pacs_loss(
            new, old, mask, mask, class_balanced=True, **{**kw, "sequence_rewards": torch.full((5,), 0.5)}
        )


def test_pacs_singletons_and_empty_rows() -> None:
    # Singleton group: "rloo" uses baseline 0 (psi = r_hat), "grpo" gives psi = 0 and no gradient.
    new = torch.tensor([[0.4, 0.2]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 2, dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.float64)
    kw = {"sequence_rewards": torch.tensor([1.0], dtype=torch.float64), "group_index": torch.tensor([0])}
    loss, _ = pacs_loss(new, old, mask, mask, **kw)
    torch.testing.assert_close(loss, torch.full((1, 2), _softplus(0.6) - 0.6, dtype=torch.float64))
    loss, _ = pacs_loss(new, old, mask, mask, score="grpo", **kw)
    torch.testing.assert_close(loss, torch.full((1, 2), math.log(2.0), dtype=torch.float64))
    aggregate(loss, mask, "seq-mean-token-mean").backward()
    assert torch.all(new.grad == 0)

    # A response with no masked token is left out of its group: group (rows 0, 1, 2) with row 2 empty
    # gives the same losses for rows 0 and 1 as the group (rows 0, 1) alone.
    gen = torch.Generator().manual_seed(1)
    old = -torch.rand(3, 2, generator=gen, dtype=torch.float64)
    new = old + 0.2 * torch.randn(3, 2, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, float("nan")], dtype=torch.float64)
    loss3, _ = pacs_loss(new, old, mask, mask, sequence_rewards=rewards, group_index=torch.tensor([2, 2, 2]))
    loss2, _ = pacs_loss(
        new[:2], old[:2], mask[:2], mask[:2], sequence_rewards=rewards[:2], group_index=torch.tensor([2, 2])
    )
    torch.testing.assert_close(loss3[:2], loss2)
    assert torch.all(loss3[2] == 0)


def _pacs_reference(
    new: torch.Tensor,
    old: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    groups: torch.Tensor,
    score: str,
    class_balanced: bool,
    beta: float,
) -> torch.Tensor:
    """PACS written independently: a plain Python loop over the groups; mean over responses of w * BCE."""
    n = new.shape[0]
    r_hat = [beta * ((new[i] - old[i]) * mask[i]).sum() for i in range(n)]
    terms = []
    for g in sorted(set(groups.tolist())):
        members = [i for i in range(n) if groups[i].item() == g]
        values = torch.stack([r_hat[i] for i in members])
        labels = [rewards[i].item() for i in members]
        size = len(members)
        for k in range(size):
            if score == "rloo":
                others = [values[j] for j in range(size) if j != k]
                psi = values[k] - (sum(others) / len(others) if others else 0.0)
            elif score == "grpo":
                mean = values.mean()
                std = torch.sqrt(((values - mean) ** 2).sum() / (size - 1)) if size > 1 else 0.0
                psi = (values[k] - mean) / (std + 1e-6)
            else:
                psi = values[k]
            label = labels[k]
            bce = torch.nn.functional.softplus(psi) - label * psi
            weight = 1.0
            if class_balanced and len(set(labels)) == 2:
                weight = size / (2 * labels.count(label))
            terms.append(weight * bce)
    return torch.stack(terms).sum() / n


@pytest.mark.parametrize("score", ["rloo", "grpo", "naive"])
@pytest.mark.parametrize("class_balanced", [False, True])
def test_pacs_matches_loop_reference_value_and_gradient(score: str, class_balanced: bool) -> None:
    # Non-contiguous, unsorted group labels, groups of 3, 2 and 2, ragged lengths, off-policy log-probs.
    gen = torch.Generator().manual_seed(7)
    n, t = 7, 5
    old = -torch.rand(n, t, generator=gen, dtype=torch.float64) * 2
    new = (old + 0.3 * torch.randn(n, t, generator=gen, dtype=torch.float64)).requires_grad_(True)
    lengths = torch.tensor([5, 3, 1, 4, 2, 5, 3])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)
    groups = torch.tensor([5, 5, 2, 9, 2, 5, 9])
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)

    loss, _ = pacs_loss(
        new,
        old,
        mask,
        mask,
        sequence_rewards=rewards,
        group_index=groups,
        beta=1.5,
        score=score,
        class_balanced=class_balanced,
    )
    total = aggregate(loss, mask, "seq-mean-token-mean")
    total.backward()

    new_ref = new.detach().clone().requires_grad_(True)
    reference = _pacs_reference(new_ref, old, mask, rewards, groups, score, class_balanced, beta=1.5)
    reference.backward()
    torch.testing.assert_close(total, reference.detach())
    torch.testing.assert_close(new.grad, new_ref.grad)
    if score != "naive":
        # the gradient reaches tokens through the other group members' scores: changing row 1's label
        # (group 5) changes the gradient on row 0 as well
        flipped = rewards.clone()
        flipped[1] = 1.0
        new2 = new.detach().clone().requires_grad_(True)
        loss2, _ = pacs_loss(
            new2,
            old,
            mask,
            mask,
            sequence_rewards=flipped,
            group_index=groups,
            beta=1.5,
            score=score,
            class_balanced=class_balanced,
        )
        aggregate(loss2, mask, "seq-mean-token-mean").backward()
        assert not torch.allclose(new2.grad[0], new.grad[0])


def test_pacs_invalid_inputs() -> None:
    x = torch.zeros(2, 3)
    kw = {"sequence_rewards": torch.tensor([1.0, 0.0]), "group_index": torch.tensor([0, 0])}
    with pytest.raises(ValueError, match="reward_method"):
        pacs_loss(x, x, x, x, reward_method="1", **kw)
    with pytest.raises(ValueError, match="score"):
        pacs_loss(x, x, x, x, score="gae", **kw)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pacs_loss(
            x,
            x,
            x,
            torch.ones(2, 3),
            sequence_rewards=torch.tensor([2.0, 0.0]),
            group_index=kw["group_index"],
        )
    with pytest.raises(ValueError, match="must be \\[N\\]"):
        pacs_loss(x, x, x, x, sequence_rewards=torch.ones(3), group_index=kw["group_index"])
    with pytest.raises(TypeError, match="integer"):
        pacs_loss(x, x, x, x, sequence_rewards=kw["sequence_rewards"], group_index=torch.zeros(2))
    with pytest.raises(TypeError):
        pacs_loss(x, x, x, x)  # the declared fields are required


# ---------------------------------------------------------------------------------------------------------
# Clip-Cov and KL-Cov


def _cov_hand_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four valid tokens in a [2, 3] batch (row-major: t0 t1 | t2 t3), padding holding garbage.

    A    = ( 3,  1, -2, -2)   mean 0
    logp = (-1, -2, -3, -2)   mean -2   -> centred (1, 0, -1, 0)
    cov  = (A - 0) * (logp + 2) = (3, 0, 2, 0), whose mean cov(A, logp) = 5 / 4 = 1.25
    """
    new = torch.tensor([[-1.0, -2.0, float("nan")], [-3.0, -2.0, 1e30]], requires_grad=True)
    adv = torch.tensor([[3.0, 1.0, float("nan")], [-2.0, -2.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.float32)
    return new, new.detach().clone(), adv, mask


def test_clip_cov_by_hand() -> None:
    # Ratios (1.5, 1, 1, 1): t0 has A = +3 and r = 1.5 > 1.2, so PPO clips it (loss -3 * 1.2 = -3.6, no
    # gradient) and it is not a candidate although cov_0 = 3 is in [1, 5]. Candidates: t2 only (cov 2).
    # clip_ratio 0.25 -> max(1, floor(0.25 * 4)) = 1 token to select = |candidates|: deterministic.
    new, old, adv, mask = _cov_hand_batch()
    old[0, 0] = -1.0 - math.log(1.5)
    loss, metrics = clip_cov_loss(new, old, adv, mask, clip_ratio=0.25)
    # values: t0 -3.6 (clipped), t1 -1 * 1 = -1, t2 +2 (selected, value kept), t3 +2
    torch.testing.assert_close(loss, torch.tensor([[-3.6, -1.0, 0.0], [2.0, 2.0, 0.0]]))
    loss.sum().backward()
    # grads -A r: t0 0 (PPO clip), t1 -1, t2 0 (Clip-Cov), t3 +2
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, -1.0, 0.0], [0.0, 2.0, 0.0]]))
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.25))
    torch.testing.assert_close(metrics["clip_frac_high"], torch.tensor(0.25))
    torch.testing.assert_close(metrics["cov_selected_frac"], torch.tensor(0.25))
    torch.testing.assert_close(metrics["cov_candidate_frac"], torch.tensor(0.25))
    # cov uses the current logp, which is unchanged: (3 + 0 + 2 + 0) / 4
    torch.testing.assert_close(metrics["cov_mean"], torch.tensor(1.25))
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(1.5))
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())

    # On-policy nothing is clipped: candidates t0 (3) and t2 (2); clip_ratio 0.5 -> floor(2) = 2 = both.
    new2 = new.detach().clone().requires_grad_(True)
    loss, metrics = clip_cov_loss(new2, new.detach(), adv, mask, clip_ratio=0.5)
    torch.testing.assert_close(loss, torch.tensor([[-3.0, -1.0, 0.0], [2.0, 2.0, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(new2.grad, torch.tensor([[0.0, -1.0, 0.0], [0.0, 2.0, 0.0]]))
    torch.testing.assert_close(metrics["cov_selected_frac"], torch.tensor(0.5))

    # The window is inclusive and bounds it: [2, 2.5] keeps t2 only; [3.5, 5] keeps nothing -> plain PPO.
    for (lb, ub), grad in [
        ((2.0, 2.5), [[-3.0, -1.0, 0.0], [0.0, 2.0, 0.0]]),
        ((3.5, 5.0), [[-3.0, -1.0, 0.0], [2.0, 2.0, 0.0]]),
    ]:
        new3 = new.detach().clone().requires_grad_(True)
        loss, _ = clip_cov_loss(new3, new.detach(), adv, mask, clip_ratio=0.5, cov_lb=lb, cov_ub=ub)
        loss.sum().backward()
        torch.testing.assert_close(new3.grad, torch.tensor(grad))


def test_clip_cov_random_subset_is_seeded() -> None:
    # Many candidates, few selected: the subset is a uniform draw from torch's global RNG.
    gen = torch.Generator().manual_seed(3)
    n, t = 8, 40
    old = -torch.rand(n, t, generator=gen) * 4
    new = old + 0.05 * torch.randn(n, t, generator=gen)
    adv = torch.randn(n, t, generator=gen) * 2
    mask = (torch.arange(t)[None, :] < torch.randint(10, t + 1, (n,), generator=gen)[:, None]).float()
    num_valid = int(mask.sum())
    kw = {"clip_ratio": 0.02, "cov_lb": 0.5, "cov_ub": 10.0}
    k = max(1, math.floor(0.02 * num_valid))

    def removed(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lp = new.clone().requires_grad_(True)
        torch.manual_seed(seed)
        loss, metrics = clip_cov_loss(lp, old, adv, mask, **kw)
        loss.sum().backward()
        lp_ref = new.clone().requires_grad_(True)
        ppo, _ = ppo_clip_loss(lp_ref, old, adv, mask)
        torch.testing.assert_close(loss.detach(), ppo.detach())  # values are never changed
        ppo.sum().backward()
        changed = lp.grad != lp_ref.grad
        assert torch.all(lp.grad[changed] == 0)  # Clip-Cov only removes gradients
        return changed, metrics

    sel_a, metrics = removed(seed=11)
    assert int(sel_a.sum()) == k
    candidates = metrics["cov_candidate_frac"].item() * num_valid
    assert candidates > 3 * k  # the draw is a genuine choice
    assert metrics["cov_selected_frac"].item() == pytest.approx(k / num_valid)
    sel_b, _ = removed(seed=11)
    assert torch.equal(sel_a, sel_b)
    draws = {tuple(removed(seed=s)[0].flatten().nonzero().flatten().tolist()) for s in range(12, 20)}
    assert len(draws) > 1

    # Every selected token is a candidate: cov in the window and not clipped by PPO.
    m = mask.bool()
    a = torch.where(m, adv, 0.0)
    lp = torch.where(m, new, 0.0)
    cov = (a - a[m].mean()) * (lp - lp[m].mean())
    ratio = torch.exp(new - old)
    unclipped = ~((adv > 0) & (ratio > 1.2) | (adv < 0) & (ratio < 0.8))
    assert torch.all((cov[sel_a] >= 0.5) & (cov[sel_a] <= 10.0) & unclipped[sel_a] & m[sel_a])


def test_kl_cov_by_hand() -> None:
    # Same tokens, log r = (0.1, -0.2, 0.3, 0.0), kl_coef = 2. cov = (3, 0, 2, 0); kl_cov_ratio 0.5 ->
    # k = floor(0.5 * 4) = 2: the top-2 by cov are t0 and t2. loss = -A r (+ 2 |log r| on t0, t2):
    #   t0: -3 e^0.1 + 2 * 0.1 = -3.3155128 + 0.2 = -3.1155128   grad -A r + 2 = -1.3155128
    #   t1: -1 e^-0.2          = -0.8187308                     grad -0.8187308
    #   t2: 2 e^0.3 + 2 * 0.3  = 2.6997176 + 0.6 = 3.2997176    grad 2.6997176 + 2 = 4.6997176
    #   t3: 2 e^0              = 2                              grad 2
    new, _, adv, mask = _cov_hand_batch()
    log_r = torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.0, 0.0]])
    old = new.detach() - log_r
    loss, metrics = kl_cov_loss(new, old, adv, mask, kl_cov_ratio=0.5, kl_coef=2.0)
    e01, em02, e03 = math.exp(0.1), math.exp(-0.2), math.exp(0.3)
    expected = torch.tensor([[-3 * e01 + 0.2, -em02, 0.0], [2 * e03 + 0.6, 2.0, 0.0]])
    torch.testing.assert_close(loss, expected)
    assert loss[0, 0].item() == pytest.approx(-3.1155128, abs=1e-6)
    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-3 * e01 + 2, -em02, 0.0], [2 * e03 + 2, 2.0, 0.0]]))
    torch.testing.assert_close(metrics["cov_selected_frac"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["kl_cov_kl"], torch.tensor(0.2))  # (0.1 + 0.3) / 2
    torch.testing.assert_close(metrics["cov_mean"], torch.tensor(1.25))

    # k is at least 1: kl_cov_ratio 1e-3 of 4 tokens -> only t0 (largest cov) is penalised.
    new2 = new.detach().clone().requires_grad_(True)
    loss, metrics = kl_cov_loss(new2, old, adv, mask, kl_cov_ratio=1e-3, kl_coef=2.0)
    torch.testing.assert_close(loss[1, 0], torch.tensor(2 * e03))
    torch.testing.assert_close(loss[0, 0], torch.tensor(-3 * e01 + 0.2))
    torch.testing.assert_close(metrics["cov_selected_frac"], torch.tensor(0.25))

    # On-policy the penalty is 0 with zero gradient: the loss is REINFORCE, grad -A.
    new3 = new.detach().clone().requires_grad_(True)
    loss, _ = kl_cov_loss(new3, new.detach(), adv, mask, kl_cov_ratio=0.5)
    loss.sum().backward()
    torch.testing.assert_close(new3.grad, torch.tensor([[-3.0, -1.0, 0.0], [2.0, 2.0, 0.0]]))


# ---------------------------------------------------------------------------------------------------------
# Lp-Reg


def _lp_reg_hand_batch() -> tuple[torch.Tensor, ...]:
    """Six valid tokens in a [2, 4] batch (row-major t0..t3 | t4 t5), padding holding garbage, float64.

          A     logp    ratio   proxy
    t0   +1     -5      1       -4
    t1   -1     -4      0.6     -3       lowest negative, logp < proxy  -> regularised
    t2   -1     -3.5    1.5     -1e4     2nd lowest negative, but min-p filtered it (logp > proxy)
    t3   -1     -1      1       -0.5     logp < proxy, but not among the lowest
    t4   -2     -2      1       -2.5
    t5   +0.5   -0.5    1.5     -0.4
    """
    nan = float("nan")
    new = torch.tensor([[-5.0, -4.0, -3.5, -1.0], [-2.0, -0.5, nan, 3.0]], dtype=torch.float64)
    ratio = torch.tensor([[1.0, 0.6, 1.5, 1.0], [1.0, 1.5, 1.0, 1.0]], dtype=torch.float64)
    old = new - torch.log(ratio)
    old[1, 3] = float("-inf")
    adv = torch.tensor([[1.0, -1.0, -1.0, -1.0], [-2.0, 0.5, nan, -9.0]], dtype=torch.float64)
    proxy = torch.tensor([[-4.0, -3.0, -1e4, -0.5], [-2.5, -0.4, nan, float("inf")]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float64)
    return new.requires_grad_(True), old, adv, mask, proxy


def test_lp_reg_by_hand() -> None:
    # neg_k_percent 0.5 of the 4 negative tokens -> floor(2) = 2 lowest logp: t1 (-4) and t2 (-3.5);
    # t2's proxy is -1e4 (filtered), so only t1 is regularised. beta = 1, d = proxy - logp = -3 + 4 = 1:
    #   t1: loss = -A r + (e^d - d - 1) = 0.6 + (e - 2) = 1.3182818   (PPO would clip: -min(-0.6, -0.8) = 0.8)
    #       grad = -A r + beta (1 - e^d) = 0.6 + 1 - e = -1.1182818   (pushes the spark's probability up)
    # Others: PPO with range [0.8, 1.28]:
    #   t0: A=+1, r=1   -> -1       grad -1
    #   t2: A=-1, r=1.5 -> 1.5      grad +1.5 (A<0 above the range is not clipped)
    #   t3: A=-1, r=1   -> 1        grad +1
    #   t4: A=-2, r=1   -> 2        grad +2
    #   t5: A=+0.5, r=1.5 -> -0.5 * 1.28 = -0.64   clipped, grad 0
    new, old, adv, mask, proxy = _lp_reg_hand_batch()
    loss, metrics = lp_reg_loss(new, old, adv, mask, proxy_logprobs=proxy, neg_k_percent=0.5)
    expected = torch.tensor([[-1.0, 0.6 + E - 2, 1.5, 1.0], [2.0, -0.64, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(loss, expected)
    assert loss[0, 1].item() == pytest.approx(1.3182818, abs=1e-7)
    loss.sum().backward()
    expected_grad = torch.tensor([[-1.0, 1.6 - E, 1.5, 1.0], [2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(new.grad, expected_grad)
    assert new.grad[0, 1].item() == pytest.approx(-1.1182818, abs=1e-7)

    assert metrics["lp_reg_frac"].item() == pytest.approx(1 / 6)
    assert metrics["lp_reg_kl"].item() == pytest.approx(E - 2)
    # t5 is clipped (high); t1 would be clipped (low) by PPO but is regularised instead
    assert metrics["clip_frac"].item() == pytest.approx(1 / 6)
    assert metrics["clip_frac_high"].item() == pytest.approx(1 / 6)
    assert metrics["clip_frac_low"].item() == 0.0
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_lp_reg_count_rounding_and_positive_side() -> None:
    new, old, adv, mask, proxy = _lp_reg_hand_batch()
    # Default 1% of 4 negatives -> floor(0.04) = 0, raised to 1: the lowest, t1, as above.
    loss, metrics = lp_reg_loss(new, old, adv, mask, proxy_logprobs=proxy)
    torch.testing.assert_close(loss[0, 1], torch.tensor(0.6 + E - 2, dtype=torch.float64))
    assert metrics["lp_reg_frac"].item() == pytest.approx(1 / 6)

    # 75% of 4 -> 3 lowest: t1, t2, t4 (-2); t4's proxy -2.5 < logp, so still only t1.
    _, metrics = lp_reg_loss(new, old, adv, mask, proxy_logprobs=proxy, neg_k_percent=0.75)
    assert metrics["lp_reg_frac"].item() == pytest.approx(1 / 6)
    # 100% -> all negatives; t1 and t3 (logp -1 < proxy -0.5) are regularised.
    #   t3: d = 0.5, ratio 1, A = -1 -> loss 1 + e^0.5 - 1.5
    loss, metrics = lp_reg_loss(new, old, adv, mask, proxy_logprobs=proxy, neg_k_percent=1.0)
    assert metrics["lp_reg_frac"].item() == pytest.approx(2 / 6)
    torch.testing.assert_close(loss[0, 3], torch.tensor(1 + math.exp(0.5) - 1.5, dtype=torch.float64))

    # Positive side, 50% of the 2 positives -> 1 lowest: t0 (logp -5 < proxy -4, d = 1), A = +1, r = 1:
    #   loss = -1 + (e - 2) = -0.2817182        grad = -1 + (1 - e) = -e
    new2 = new.detach().clone().requires_grad_(True)
    loss, metrics = lp_reg_loss(
        new2, old, adv, mask, proxy_logprobs=proxy, neg_k_percent=0.0, pos_k_percent=0.5
    )
    torch.testing.assert_close(loss[0, 0], torch.tensor(E - 3, dtype=torch.float64))
    loss.sum().backward()
    torch.testing.assert_close(new2.grad[0, 0], torch.tensor(-E, dtype=torch.float64))
    torch.testing.assert_close(new2.grad[0, 1], torch.tensor(0.0, dtype=torch.float64))  # PPO-clipped now
    assert metrics["lp_reg_frac"].item() == pytest.approx(1 / 6)

    # beta scales the KL: beta = 3 on t1 -> loss 0.6 + 3 (e - 2), grad 0.6 + 3 (1 - e)
    new3 = new.detach().clone().requires_grad_(True)
    loss, _ = lp_reg_loss(new3, old, adv, mask, proxy_logprobs=proxy, beta=3.0)
    loss.sum().backward()
    torch.testing.assert_close(new3.grad[0, 1], torch.tensor(0.6 + 3 * (1 - E), dtype=torch.float64))


def test_lp_reg_without_selection_is_dapo_clip() -> None:
    # Both sides off -> exactly the clipped PPO surrogate with Lp-Reg's clip range (0.2, 0.28).
    new, old, adv, mask, proxy = _lp_reg_hand_batch()
    loss, metrics = lp_reg_loss(new, old, adv, mask, proxy_logprobs=proxy, neg_k_percent=0.0)
    ppo, ppo_metrics = ppo_clip_loss(new, old, adv, mask, clip_eps_high=0.28)
    torch.testing.assert_close(loss, ppo)
    assert metrics["lp_reg_frac"].item() == 0.0
    assert metrics["lp_reg_kl"].item() == 0.0
    torch.testing.assert_close(metrics["clip_frac"], ppo_metrics["clip_frac"])


# ---------------------------------------------------------------------------------------------------------
# minp_proxy_logprobs


def test_minp_proxy_by_hand_three_token_vocabulary() -> None:
    # p = (0.7, 0.29, 0.01) as logits log p + 3 (softmax is shift-invariant; the -1e4 fill is not).
    #   kappa 0.02: threshold 0.02 * 0.7 = 0.014 -> token 2 (0.01) filtered; renormalise over 0.99:
    #     log(0.7 / 0.99) = -0.3466246, log(0.29 / 0.99) = -1.2278240,
    #     token 2: -1e4 - logsumexp = -1e4 - (3 + log 0.99) = -10002.98995
    #   kappa 0.5: threshold 0.35 -> only token 0 survives: 0 for it, -1e4 - (3 + log 0.7) = -10002.6433
    #     for the others
    #   kappa 0: no filtering -> log p
    logits = (torch.log(torch.tensor([0.7, 0.29, 0.01])) + 3.0).expand(2, 3, 3).contiguous()
    ids = torch.tensor([[0, 1, 2], [2, 1, 0]])
    out = minp_proxy_logprobs(logits, ids, kappa=0.02)
    a, b, c = math.log(0.7 / 0.99), math.log(0.29 / 0.99), -1e4 - 3 - math.log(0.99)
    torch.testing.assert_close(out, torch.tensor([[a, b, c], [c, b, a]]), atol=2e-3, rtol=1e-6)
    assert out[0, 0].item() == pytest.approx(-0.3466246, abs=1e-5)
    assert out.dtype == torch.float32 and not out.requires_grad

    out = minp_proxy_logprobs(logits, ids, kappa=0.5)
    f = -1e4 - 3 - math.log(0.7)
    torch.testing.assert_close(out, torch.tensor([[0.0, f, f], [f, f, 0.0]]), atol=2e-3, rtol=1e-6)

    out = minp_proxy_logprobs(logits, ids, kappa=0.0)
    lp = [math.log(0.7), math.log(0.29), math.log(0.01)]
    torch.testing.assert_close(out, torch.tensor([[lp[0], lp[1], lp[2]], [lp[2], lp[1], lp[0]]]))


def _minp_reference(logits: torch.Tensor, ids: torch.Tensor, kappa: float) -> torch.Tensor:
    """The authors' recipe: softmax, filter p < kappa * max p to -1e4, log_softmax, gather."""
    probs = torch.softmax(logits.double(), dim=-1)
    keep = probs >= kappa * probs.amax(dim=-1, keepdim=True)
    filtered = torch.where(keep, logits.double(), torch.full_like(probs, -1e4))
    return torch.log_softmax(filtered, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("chunk_tokens", [1, 2, 3, 5, 7, 1000])
def test_minp_proxy_chunking_matches_reference(chunk_tokens: int) -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 4, 11, generator=gen) * 3
    ids = torch.randint(0, 11, (3, 4), generator=gen)
    out = minp_proxy_logprobs(logits, ids, kappa=0.1, chunk_tokens=chunk_tokens)
    torch.testing.assert_close(out, _minp_reference(logits, ids, 0.1).float(), atol=2e-3, rtol=1e-5)
    # bf16 logits are computed in float32; non-contiguous input (a transposed view) is fine
    out_bf16 = minp_proxy_logprobs(logits.bfloat16(), ids, kappa=0.1, chunk_tokens=chunk_tokens)
    assert out_bf16.dtype == torch.float32
    t_logits = logits.transpose(0, 1).contiguous().transpose(0, 1)
    torch.testing.assert_close(minp_proxy_logprobs(t_logits, ids, kappa=0.1, chunk_tokens=chunk_tokens), out)


def test_minp_proxy_invalid() -> None:
    with pytest.raises(ValueError, match="kappa"):
        minp_proxy_logprobs(torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long), kappa=1.5)
    with pytest.raises(ValueError, match=r"\[N, T, V\]"):
        minp_proxy_logprobs(torch.zeros(1, 3), torch.zeros(1, 1, dtype=torch.long))
    assert minp_proxy_logprobs(torch.zeros(0, 4, 3), torch.zeros(0, 4, dtype=torch.long)).shape == (0, 4)


# ---------------------------------------------------------------------------------------------------------
# Properties shared by the four losses


def _call(name: str, new, old, adv, mask, extra_garbage: bool = False, **hparams):
    """Call loss ``name`` with the extra fields it declares (PACS labels / groups, Lp-Reg proxy)."""
    n, t = new.shape
    extra = {}
    if name == "pacs":
        rewards = torch.tensor([1.0, 0.0, 1.0, 0.0][:n], dtype=new.dtype)
        extra = {"sequence_rewards": rewards, "group_index": torch.tensor([0, 0, 1, 1][:n])}
    if name == "lp_reg":
        proxy = old + 0.5  # above the current log-probs on most tokens
        if extra_garbage:
            proxy = torch.where(mask > 0, proxy, torch.full_like(proxy, float("nan")))
        extra = {"proxy_logprobs": proxy}
    if name == "clip_cov":
        torch.manual_seed(0)
        hparams = {"cov_lb": 0.0, "clip_ratio": 0.2, **hparams}
    if name == "lp_reg":
        hparams = {"neg_k_percent": 0.5, "pos_k_percent": 0.5, **hparams}
    if name == "kl_cov":
        hparams = {"kl_cov_ratio": 0.3, **hparams}
    return POLICY_LOSSES.get(name)(new, old, adv, mask, **extra, **hparams)


LOSSES = ["clip_cov", "kl_cov", "lp_reg", "pacs"]


@pytest.mark.parametrize("name", LOSSES)
def test_padding_garbage_changes_nothing(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    n, t = 4, 6
    old = -torch.rand(n, t, generator=gen, dtype=torch.float64) * 3
    new0 = old + 0.3 * torch.randn(n, t, generator=gen, dtype=torch.float64)
    adv = torch.randn(n, t, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([t, t - 2, 1, t - 1])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)
    pad = mask == 0
    results = []
    for garbage in (False, True):
        n_, o_, a_ = new0.clone(), old.clone(), adv.clone()
        if garbage:
            junk = torch.tensor([float("nan"), float("inf"), -1e30, 500.0, float("-inf"), 0.0]).to(n_)
            n_[pad] = junk.repeat(int(pad.sum()))[: int(pad.sum())]
            o_[pad] = -float("inf")
            a_[pad] = float("nan")
        n_.requires_grad_(True)
        loss, metrics = _call(name, n_, o_, a_, mask, extra_garbage=garbage)
        aggregate(loss, mask, "seq-mean-token-mean").backward()
        results.append((loss.detach(), metrics, n_.grad))
    (loss_c, met_c, grad_c), (loss_g, met_g, grad_g) = results
    torch.testing.assert_close(loss_g, loss_c)
    assert torch.all(loss_g[pad] == 0)
    assert torch.isfinite(grad_g).all()
    assert torch.all(grad_g[pad] == 0)
    assert torch.any(grad_g != 0)
    torch.testing.assert_close(grad_g, grad_c)
    assert met_g.keys() == met_c.keys()
    for key in met_c:
        torch.testing.assert_close(met_g[key], met_c[key], msg=key)


@pytest.mark.parametrize("name", LOSSES)
def test_empty_mask(name: str) -> None:
    new = torch.full((2, 3), float("nan")).requires_grad_(True)
    loss, metrics = _call(name, new, torch.zeros(2, 3), torch.full((2, 3), float("nan")), torch.zeros(2, 3))
    assert torch.all(loss == 0)
    loss.sum().backward()
    assert torch.all(new.grad == 0)
    assert all(torch.isfinite(v) and v.dim() == 0 and not v.requires_grad for v in metrics.values())


@pytest.mark.parametrize("name", LOSSES)
def test_unknown_hparam_is_an_error(name: str) -> None:
    x = torch.zeros(4, 2)
    with pytest.raises(TypeError):
        _call(name, x, x, x, x, clip_eps=0.2)


def test_invalid_hparams() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="clip_ratio"):
        clip_cov_loss(x, x, x, x, clip_ratio=0.0)
    with pytest.raises(ValueError, match="cov_lb"):
        clip_cov_loss(x, x, x, x, cov_lb=5.0, cov_ub=1.0)
    with pytest.raises(ValueError, match="clip ranges"):
        clip_cov_loss(x, x, x, x, clip_eps_low=-0.1)
    with pytest.raises(ValueError, match="kl_cov_ratio"):
        kl_cov_loss(x, x, x, x, kl_cov_ratio=2.0)
    with pytest.raises(ValueError, match="kl_coef"):
        kl_cov_loss(x, x, x, x, kl_coef=-1.0)
    with pytest.raises(ValueError, match="neg_k_percent"):
        lp_reg_loss(x, x, x, x, proxy_logprobs=x, neg_k_percent=1.5)
    with pytest.raises(ValueError, match="beta"):
        lp_reg_loss(x, x, x, x, proxy_logprobs=x, beta=-1.0)
    with pytest.raises(ValueError, match="clip_eps_low"):
        lp_reg_loss(x, x, x, x, proxy_logprobs=x, clip_eps_low=1.0)

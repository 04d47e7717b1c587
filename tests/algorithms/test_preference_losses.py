"""Preference losses and the pair builder: hand-worked values, gradients and gradient checks."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms.preference import PREFERENCE_LOSSES, PreferenceInputs, build_pairs
from rlvr.algorithms.utils import needs_of


def _inputs(**overrides) -> PreferenceInputs:
    """One pair: chosen log pi = -2 over 2 tokens, rejected -3 over 3 tokens; the reference gives both
    -2.5, so r(y_w) = 0.5, r(y_l) = -0.5 and the margin is 1."""
    values = dict(
        chosen_logps=torch.tensor([-2.0], dtype=torch.float64, requires_grad=True),
        rejected_logps=torch.tensor([-3.0], dtype=torch.float64, requires_grad=True),
        chosen_tokens=torch.tensor([2.0], dtype=torch.float64),
        rejected_tokens=torch.tensor([3.0], dtype=torch.float64),
        ref_chosen_logps=torch.tensor([-2.5], dtype=torch.float64),
        ref_rejected_logps=torch.tensor([-2.5], dtype=torch.float64),
    )
    values.update(overrides)
    return PreferenceInputs(**values)


def _grads(loss: torch.Tensor, inputs: PreferenceInputs) -> tuple[float, float]:
    chosen, rejected = torch.autograd.grad(loss.sum(), [inputs.chosen_logps, inputs.rejected_logps])
    return float(chosen[0]), float(rejected[0])


def test_dpo_value_and_gradient():
    inputs = _inputs()
    loss, metrics = PREFERENCE_LOSSES.get("dpo")(inputs, beta=0.1)
    # z = 0.1 * (0.5 - (-0.5)) = 0.1; -log sigmoid(0.1) = log(1 + e^-0.1) = log(1.904837) = 0.644397
    assert float(loss[0].detach()) == pytest.approx(0.6443967, abs=1e-6)
    # d/d chosen = -beta sigmoid(-z) = -0.1 * 0.4750208 (rejected: the opposite)
    assert _grads(loss, inputs) == pytest.approx((-0.04750208, 0.04750208), abs=1e-7)
    assert float(metrics["rewards/chosen"]) == pytest.approx(0.05)
    assert float(metrics["rewards/rejected"]) == pytest.approx(-0.05)
    assert float(metrics["rewards/margin"]) == pytest.approx(0.1)
    assert float(metrics["rewards/accuracy"]) == 1.0
    assert float(metrics["logps/chosen"]) == -2.0 and float(metrics["logps/rejected"]) == -3.0
    assert float(metrics["nll"]) == pytest.approx(1.0)  # 2 nats over 2 tokens


def test_cdpo_label_smoothing_adds_eps_times_the_margin():
    # -(1 - eps) log s(z) - eps log s(-z) = softplus(-z) + eps z, since softplus(z) - softplus(-z) = z
    loss, _ = PREFERENCE_LOSSES.get("dpo")(_inputs(), beta=0.1, label_smoothing=0.1)
    assert float(loss[0].detach()) == pytest.approx(0.6443967 + 0.1 * 0.1, abs=1e-6)


def test_ipo_value_and_gradient():
    inputs = _inputs()
    loss, metrics = PREFERENCE_LOSSES.get("ipo")(inputs, tau=0.1)
    assert float(loss[0].detach()) == pytest.approx((1.0 - 5.0) ** 2)  # (margin - 1 / (2 tau))^2 = 16
    assert _grads(loss, inputs) == pytest.approx((-8.0, 8.0))  # 2 (margin - 5) = -8
    assert float(metrics["rewards/margin"]) == pytest.approx(0.1)


def test_simpo_is_reference_free_and_length_normalised():
    inputs = _inputs(ref_chosen_logps=None, ref_rejected_logps=None)
    loss, metrics = PREFERENCE_LOSSES.get("simpo")(inputs, beta=2.0, gamma=1.0)
    # avg(y_w) = -2/2 = -1 = avg(y_l) = -3/3: z = 2 (-1) - 2 (-1) - 1 = -1; -log sigmoid(-1) = log(1 + e)
    assert float(loss[0].detach()) == pytest.approx(math.log(1 + math.e))
    # dz/d chosen = beta / 2 = 1, dz/d rejected = -beta / 3; d loss / dz = -sigmoid(1) = -0.7310586
    assert _grads(loss, inputs) == pytest.approx((-0.7310586, 0.7310586 * 2 / 3), abs=1e-6)
    assert float(metrics["rewards/chosen"]) == pytest.approx(-2.0)  # beta avg(y_w)
    assert float(metrics["rewards/accuracy"]) == 0.0  # equal rewards: the chosen is not ahead


def test_orpo_value():
    inputs = _inputs(
        rejected_logps=torch.tensor([-6.0], dtype=torch.float64, requires_grad=True),
        ref_chosen_logps=None,
        ref_rejected_logps=None,
    )
    loss, metrics = PREFERENCE_LOSSES.get("orpo")(inputs, lam=0.1)
    # avg(y_w) = -1, avg(y_l) = -2; log odds(a) = a - log(1 - e^a):
    # log odds(-1) = -1 + 0.4586751 = -0.5413249; log odds(-2) = -2 + 0.1454135 = -1.8545865
    # ratio = 1.3132617 = log(1 + e), so -log sigmoid(ratio) = log(1 + 1 / (1 + e)) = 0.2381830
    assert float(metrics["orpo/log_odds_ratio"]) == pytest.approx(math.log(1 + math.e), abs=1e-6)
    assert float(loss[0].detach()) == pytest.approx(
        1.0 + 0.1 * 0.2381830, abs=1e-6
    )  # NLL 1 + lam * odds term


def test_rpo_adds_the_length_normalised_nll_of_the_chosen():
    inputs = _inputs()
    loss, _ = PREFERENCE_LOSSES.get("rpo")(inputs, beta=0.1, alpha=1.0)
    assert float(loss[0].detach()) == pytest.approx(0.6443967 + 1.0, abs=1e-6)  # DPO + (2 nats / 2 tokens)
    # d/d chosen = DPO's -0.0475021 + alpha * (-1 / 2)
    assert _grads(loss, inputs) == pytest.approx((-0.04750208 - 0.5, 0.04750208), abs=1e-7)


def test_kto_uses_the_mismatched_reference_point():
    inputs = _inputs(
        kl_logps=torch.tensor([-1.0, -1.8], dtype=torch.float64),
        ref_kl_logps=torch.tensor([-2.0, -2.0], dtype=torch.float64),
    )
    loss, metrics = PREFERENCE_LOSSES.get("kto")(inputs, beta=0.1)
    # z0 = max(0, mean(1.0, 0.2)) = 0.6
    assert float(metrics["kto/z0"]) == pytest.approx(0.6)
    # desirable (r = 0.5): 1 - sigmoid(0.1 (0.5 - 0.6)) = 1 - sigmoid(-0.01) = 0.5025000
    # undesirable (r = -0.5): 1 - sigmoid(0.1 (0.6 + 0.5)) = 1 - sigmoid(0.11) = 0.4725277
    assert loss.tolist() == pytest.approx([0.5025000, 0.4725277], abs=1e-6)
    # the reference point carries no gradient
    kl = torch.tensor([-1.0, -1.8], dtype=torch.float64, requires_grad=True)
    loss, _ = PREFERENCE_LOSSES.get("kto")(_inputs(kl_logps=kl, ref_kl_logps=kl.detach() - 1), beta=0.1)
    loss.sum().backward()
    assert kl.grad is None


def test_kto_is_unpaired_and_weights_each_side():
    inputs = _inputs(
        chosen_logps=torch.tensor([-1.0, -2.0], dtype=torch.float64),
        chosen_tokens=torch.tensor([1.0, 1.0], dtype=torch.float64),
        ref_chosen_logps=torch.tensor([-1.0, -2.0], dtype=torch.float64),
        kl_logps=torch.tensor([-3.0], dtype=torch.float64),
        ref_kl_logps=torch.tensor([-1.0], dtype=torch.float64),  # negative KL estimate: z0 clamps to 0
    )
    loss, metrics = PREFERENCE_LOSSES.get("kto")(
        inputs, beta=0.1, desirable_weight=2.0, undesirable_weight=0.5
    )
    assert float(metrics["kto/z0"]) == 0.0
    s = 1 / (1 + math.exp(-0.05))  # sigmoid(0.1 * 0.5)
    assert loss.tolist() == pytest.approx([2 * 0.5, 2 * 0.5, 0.5 * (1 - s)])
    assert "rewards/accuracy" not in metrics  # no pairs to compare


def test_inpo_mixes_reference_and_previous_iterate():
    inputs = _inputs(
        old_chosen_logps=torch.tensor([-2.2], dtype=torch.float64),
        old_rejected_logps=torch.tensor([-2.8], dtype=torch.float64),
    )
    loss, _ = PREFERENCE_LOSSES.get("inpo")(inputs, eta=0.1, tau=0.01)
    # h = 1 - (0.01/0.1) * 0 - (0.09/0.1) * 0.6 = 0.46; (h - 1/(2 eta))^2 = (0.46 - 5)^2
    assert float(loss[0].detach()) == pytest.approx(20.6116)
    # with pi_t = pi_ref, INPO is IPO with tau = eta
    same = _inputs(old_chosen_logps=torch.tensor([-2.5]), old_rejected_logps=torch.tensor([-2.5]))
    assert float(PREFERENCE_LOSSES.get("inpo")(same, eta=0.1, tau=0.01)[0][0].detach()) == pytest.approx(16.0)
    with pytest.raises(ValueError, match="tau"):
        PREFERENCE_LOSSES.get("inpo")(inputs, eta=0.1, tau=0.2)


@pytest.mark.parametrize("name", PREFERENCE_LOSSES.names())
def test_gradcheck(name):
    """Autograd's gradient of every loss matches finite differences at a random point (4 pairs)."""
    torch.manual_seed(0)
    base = {
        "chosen_tokens": torch.tensor([1.0, 2.0, 5.0, 3.0], dtype=torch.float64),
        "rejected_tokens": torch.tensor([2.0, 2.0, 1.0, 4.0], dtype=torch.float64),
        "ref_chosen_logps": -torch.rand(4, dtype=torch.float64) * 5,
        "ref_rejected_logps": -torch.rand(4, dtype=torch.float64) * 5,
        "old_chosen_logps": -torch.rand(4, dtype=torch.float64) * 5,
        "old_rejected_logps": -torch.rand(4, dtype=torch.float64) * 5,
        "kl_logps": -torch.rand(3, dtype=torch.float64) * 5,
        "ref_kl_logps": -torch.rand(3, dtype=torch.float64) * 5,
    }
    chosen = (-torch.rand(4, dtype=torch.float64) * 5 - 0.1).requires_grad_()
    rejected = (-torch.rand(4, dtype=torch.float64) * 5 - 0.1).requires_grad_()
    fn = PREFERENCE_LOSSES.get(name)

    def f(c, r):
        return fn(PreferenceInputs(chosen_logps=c, rejected_logps=r, **base))[0]

    assert torch.autograd.gradcheck(f, (chosen, rejected))


def test_reference_free_losses_declare_no_reference():
    assert "ref_logprobs" not in needs_of(PREFERENCE_LOSSES.get("simpo"))
    assert "ref_logprobs" not in needs_of(PREFERENCE_LOSSES.get("orpo"))
    assert "ref_logprobs" in needs_of(PREFERENCE_LOSSES.get("dpo"))
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        PREFERENCE_LOSSES.get("dpo")(_inputs(ref_chosen_logps=None))


def test_paired_losses_refuse_unequal_sides():
    with pytest.raises(ValueError, match="as many chosen as rejected"):
        PREFERENCE_LOSSES.get("simpo")(_inputs(chosen_logps=torch.zeros(2), chosen_tokens=torch.ones(2)))


def test_unknown_hyperparameter_is_caught_at_bind():
    with pytest.raises(ValueError, match="betta"):
        PREFERENCE_LOSSES.bind("dpo", {"betta": 0.1})
    with pytest.raises(ValueError, match="beta"):
        PREFERENCE_LOSSES.bind("dpo", {"beta": -1.0})


# --- pairs from scored groups ---------------------------------------------------------------------------

REWARDS = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.5, 1.0])
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2])


def test_all_pairs_are_every_better_worse_pair_of_a_group():
    chosen, rejected, metrics = build_pairs(REWARDS, GROUPS, "all")
    # group 0: correct rows 0, 2 x incorrect rows 1, 3; group 1 all correct (dropped); group 2: graded
    assert list(zip(chosen.tolist(), rejected.tolist(), strict=True)) == [
        (0, 1), (0, 3), (2, 1), (2, 3), (9, 8), (10, 8), (10, 9)
    ]  # fmt: skip
    assert metrics == {"pairs/count": 7.0, "pairs/groups_used": 2.0, "pairs/groups_dropped": 1.0}


def test_best_worst_pairs_and_margin_and_cap():
    chosen, rejected, _ = build_pairs(REWARDS, GROUPS, "best_worst")
    assert list(zip(chosen.tolist(), rejected.tolist(), strict=True)) == [(0, 1), (10, 8)]
    chosen, rejected, _ = build_pairs(REWARDS, GROUPS, "all", min_margin=0.5)
    assert list(zip(chosen.tolist(), rejected.tolist(), strict=True)) == [
        (0, 1),
        (0, 3),
        (2, 1),
        (2, 3),
        (10, 8),
    ]
    chosen, rejected, _ = build_pairs(REWARDS, GROUPS, "all", max_pairs_per_group=2)
    # round-robin over a group's chosen rows: (0, 1) then (2, 1); group 2: (9, 8) then (10, 8)
    assert list(zip(chosen.tolist(), rejected.tolist(), strict=True)) == [(0, 1), (2, 1), (9, 8), (10, 8)]


def test_no_pairs():
    chosen, rejected, metrics = build_pairs(torch.ones(4), torch.tensor([0, 0, 1, 1]), "all")
    assert chosen.numel() == rejected.numel() == 0
    assert metrics["pairs/groups_dropped"] == 2.0

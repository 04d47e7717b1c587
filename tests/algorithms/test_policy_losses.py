"""Tests for rlvr.algorithms.policy_losses: PPO-clip, DAPO, GSPO, CISPO, REINFORCE."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import (
    POLICY_LOSSES,
    aggregate,
    cispo_loss,
    dapo_loss,
    gspo_loss,
    ppo_clip_loss,
    reinforce_loss,
)
from rlvr.algorithms.utils import masked_mean


def _logprobs_for(ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Current log-probs (requiring grad) and old log-probs such that exp(new - old) = ratios."""
    old = torch.full((1, len(ratios)), -1.0)
    new = (old + torch.log(torch.tensor([ratios]))).requires_grad_(True)
    return new, old


def test_registered_under_both_names() -> None:
    assert POLICY_LOSSES.get("grpo") is ppo_clip_loss
    assert POLICY_LOSSES.get("ppo_clip") is ppo_clip_loss


def test_symmetric_clip_by_hand() -> None:
    # eps = 0.2 -> clip range [0.8, 1.2]; loss = -min(r A, clip(r) A)
    #  r=1.1, A=+2 : inside          -> -min(2.2, 2.2)   = -2.2   grad dL/dlogp = -A r = -2.2
    #  r=1.5, A=+1 : above, A>0      -> -min(1.5, 1.2)   = -1.2   clipped, grad 0
    #  r=0.5, A=+1 : below, A>0      -> -min(0.5, 0.8)   = -0.5   unclipped, grad -0.5
    #  r=0.5, A=-1 : below, A<0      -> -min(-0.5, -0.8) = +0.8   clipped, grad 0
    #  r=1.5, A=-1 : above, A<0      -> -min(-1.5, -1.2) = +1.5   unclipped, grad +1.5
    ratios = [1.1, 1.5, 0.5, 0.5, 1.5]
    adv = torch.tensor([[2.0, 1.0, 1.0, -1.0, -1.0]])
    new, old = _logprobs_for(ratios)
    mask = torch.ones_like(adv)
    loss, metrics = ppo_clip_loss(new, old, adv, mask)
    torch.testing.assert_close(loss, torch.tensor([[-2.2, -1.2, -0.5, 0.8, 1.5]]))

    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-2.2, 0.0, -0.5, 0.0, 1.5]]))

    # clipped tokens: #1 (high) and #3 (low) -> 2 / 5
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.4))
    torch.testing.assert_close(metrics["clip_frac_high"], torch.tensor(0.2))
    torch.testing.assert_close(metrics["clip_frac_low"], torch.tensor(0.2))
    torch.testing.assert_close(metrics["dual_clip_frac"], torch.tensor(0.0))
    # ratio mean (1.1 + 1.5 + 0.5 + 0.5 + 1.5) / 5 = 1.02
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.02))
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(1.5))
    torch.testing.assert_close(metrics["ratio_min"], torch.tensor(0.5))
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_asymmetric_clip_higher() -> None:
    # eps_low 0.2, eps_high 0.28 -> clip range [0.8, 1.28]
    #  r=1.25, A=+1 : inside (1.25 < 1.28)  -> -1.25 (with symmetric 0.2 it would be clipped to -1.2)
    #  r=1.30, A=+1 : above                 -> -1.28
    #  r=0.75, A=-1 : below, A<0            -> -min(-0.75, -0.8) = 0.8
    ratios = [1.25, 1.30, 0.75]
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    new, old = _logprobs_for(ratios)
    mask = torch.ones_like(adv)
    loss, metrics = ppo_clip_loss(new, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.25, -1.28, 0.8]]))
    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-1.25, 0.0, 0.0]]))
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(2 / 3))

    sym_loss, _ = ppo_clip_loss(new.detach(), old, adv, mask)
    torch.testing.assert_close(sym_loss[0, 0], torch.tensor(-1.2))


def test_dual_clip() -> None:
    # c = 3, eps = 0.2. For A < 0: loss = min(ppo_loss, -c A)
    #  r=4.0, A=-1 : ppo loss 4.0, bound 3.0 -> 3.0 (dual-clipped, grad 0)
    #  r=1.5, A=-2 : ppo loss 3.0, bound 6.0 -> 3.0 (unchanged, grad -A r = 3.0)
    #  r=4.0, A=+1 : A > 0, dual clip does not apply -> -1.2 (ordinary clip, grad 0)
    #  r=0.5, A=-1 : ppo loss 0.8 (clipped), bound 3.0 -> 0.8
    ratios = [4.0, 1.5, 4.0, 0.5]
    adv = torch.tensor([[-1.0, -2.0, 1.0, -1.0]])
    new, old = _logprobs_for(ratios)
    mask = torch.ones_like(adv)
    loss, metrics = ppo_clip_loss(new, old, adv, mask, dual_clip_c=3.0)
    torch.testing.assert_close(loss, torch.tensor([[3.0, 3.0, -1.2, 0.8]]))
    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, 3.0, 0.0, 0.0]]))
    torch.testing.assert_close(metrics["dual_clip_frac"], torch.tensor(0.25))
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.5))

    # without dual-clip the first token's loss is the unbounded r |A| = 4
    plain, _ = ppo_clip_loss(new.detach(), old, adv, mask)
    torch.testing.assert_close(plain[0, 0], torch.tensor(4.0))


def test_mask_metrics_and_padding_garbage() -> None:
    # Row 0: r = 1.5 (A=+1, clipped) and padding; row 1: r = 1.0 (A=-1) and padding.
    # Padding holds huge log-probs and a NaN advantage: it must not reach the loss, grads or metrics.
    new = torch.tensor([[math.log(1.5), 500.0], [0.0, -500.0]], requires_grad=True)
    old = torch.tensor([[0.0, -500.0], [0.0, 500.0]])
    adv = torch.tensor([[1.0, float("nan")], [-1.0, 3.0]])
    mask = torch.tensor([[1, 0], [1, 0]], dtype=torch.float32)
    loss, metrics = ppo_clip_loss(new, old, adv, mask)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 0.0], [1.0, 0.0]]))
    loss.sum().backward()
    assert torch.isfinite(new.grad).all()
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    # over the 2 masked tokens: one clipped
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.25))
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(1.5))


def test_empty_mask_is_finite() -> None:
    new = torch.zeros(2, 3, requires_grad=True)
    loss, metrics = ppo_clip_loss(new, torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3))
    assert torch.all(loss == 0)
    assert all(torch.isfinite(v) for v in metrics.values())


def test_on_policy_gradient_is_policy_gradient() -> None:
    # At ratio 1 (first update after sampling) nothing is clipped and dL/dlogp = -A.
    gen = torch.Generator().manual_seed(0)
    old = torch.randn(3, 5, generator=gen)
    new = old.clone().requires_grad_(True)
    adv = torch.randn(3, 5, generator=gen)
    mask = torch.ones(3, 5)
    loss, metrics = ppo_clip_loss(new, old, adv, mask, clip_eps_low=0.1, clip_eps_high=0.3)
    loss.sum().backward()
    torch.testing.assert_close(new.grad, -adv)
    assert metrics["clip_frac"].item() == 0.0


def test_invalid_hparams() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="dual_clip_c"):
        ppo_clip_loss(x, x, x, x, dual_clip_c=1.0)
    with pytest.raises(ValueError, match="clip ranges"):
        ppo_clip_loss(x, x, x, x, clip_eps_low=-0.1)
    with pytest.raises(ValueError, match="clip_eps_low"):
        ppo_clip_loss(x, x, x, x, clip_eps_low=1.0)
    with pytest.raises(TypeError):
        ppo_clip_loss(x, x, x, x, clip_eps=0.2)  # unknown name: typo is an error


# ---------------------------------------------------------------------------------------------------------
# Properties shared by the losses added on top of ppo_clip.

NEW_LOSSES = {"dapo": dapo_loss, "gspo": gspo_loss, "cispo": cispo_loss, "reinforce": reinforce_loss}


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_new_losses_registered(name: str) -> None:
    assert POLICY_LOSSES.get(name) is NEW_LOSSES[name]


def _random_batch(seed: int, n: int = 4, t: int = 6, scale: float = 0.3) -> tuple[torch.Tensor, ...]:
    """old log-probs, new log-probs (leaf), advantages and a ragged right-padded 0/1 mask, float64."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=gen, dtype=torch.float64) * 3  # [n, t]
    new = (old + scale * torch.randn(n, t, generator=gen, dtype=torch.float64)).requires_grad_(True)
    adv = torch.randn(n, t, generator=gen, dtype=torch.float64)  # [n, t]
    lengths = torch.tensor([t, t - 2, 1, t - 1][:n])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)  # [n, t]
    return old, new, adv, mask


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_padding_garbage_changes_nothing(name: str) -> None:
    # Same valid tokens; padding either clean (zeros) or garbage (NaN / +-inf / huge). Loss, metrics and
    # gradients must be identical, and the gradient must be finite and exactly zero on padding.
    fn = NEW_LOSSES[name]
    old, new, adv, mask = _random_batch(seed=1)
    pad = mask == 0
    results = []
    for garbage in (False, True):
        n_ = new.detach().clone()
        o_, a_ = old.clone(), adv.clone()
        if garbage:
            junk = torch.tensor([float("nan"), float("inf"), -1e30, 500.0, float("-inf"), 0.0]).to(n_)
            n_[pad] = junk.repeat(int(pad.sum()))[: int(pad.sum())]
            o_[pad] = -float("inf")
            a_[pad] = float("nan")
        n_.requires_grad_(True)
        loss, metrics = fn(n_, o_, a_, mask)
        loss.sum().backward()
        results.append((loss.detach(), metrics, n_.grad))
    (loss_c, met_c, grad_c), (loss_g, met_g, grad_g) = results
    torch.testing.assert_close(loss_g, loss_c)
    assert torch.all(loss_g[pad] == 0)
    assert torch.isfinite(grad_g).all()
    assert torch.all(grad_g[pad] == 0)
    torch.testing.assert_close(grad_g, grad_c)
    assert met_g.keys() == met_c.keys()
    for key in met_c:
        torch.testing.assert_close(met_g[key], met_c[key], msg=key)


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_empty_mask(name: str) -> None:
    new = torch.full((2, 3), float("nan")).requires_grad_(True)
    loss, metrics = NEW_LOSSES[name](
        new, torch.zeros(2, 3), torch.full((2, 3), float("nan")), torch.zeros(2, 3)
    )
    assert torch.all(loss == 0)
    loss.sum().backward()
    assert torch.all(new.grad == 0)
    assert all(torch.isfinite(v) and v.dim() == 0 and not v.requires_grad for v in metrics.values())


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_on_policy_gradient_is_minus_advantage(name: str) -> None:
    # First update after sampling: every ratio (token or sequence) is 1, nothing is clipped, and all four
    # losses reduce to REINFORCE: d loss_it / d logp_it = -A_it (GSPO-token: -A_it * s_i with s_i = 1).
    old, _, adv, mask = _random_batch(seed=2)
    new = old.clone().requires_grad_(True)
    loss, metrics = NEW_LOSSES[name](new, old, adv, mask)
    loss.sum().backward()
    torch.testing.assert_close(new.grad, -adv * mask)
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.0, dtype=torch.float64))
    assert metrics.get("clip_frac", torch.tensor(0.0)).item() == 0.0


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_unknown_hparam_is_an_error(name: str) -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(TypeError):
        NEW_LOSSES[name](x, x, x, x, clip_eps=0.2)


# ---------------------------------------------------------------------------------------------------------
# DAPO


def test_dapo_defaults_by_hand() -> None:
    # Clip range [1 - 0.2, 1 + 0.28] = [0.8, 1.28]; loss = -min(r A, clip(r) A)
    #  r=1.25, A=+1 : inside                 -> -1.25            grad -A r = -1.25
    #  r=1.30, A=+1 : above, A>0             -> -1.28            clipped, grad 0
    #  r=0.75, A=-1 : below, A<0             -> -min(-0.75, -0.8) = 0.8   clipped, grad 0
    #  r=0.90, A=-1 : inside                 -> 0.9              grad -A r = +0.9
    new, old = _logprobs_for([1.25, 1.30, 0.75, 0.90])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones_like(adv)
    loss, metrics = dapo_loss(new, old, adv, mask)
    torch.testing.assert_close(loss, torch.tensor([[-1.25, -1.28, 0.8, 0.9]]))
    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-1.25, 0.0, 0.0, 0.9]]))
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.5))  # 2 of 4
    torch.testing.assert_close(metrics["clip_frac_high"], torch.tensor(0.25))
    torch.testing.assert_close(metrics["clip_frac_low"], torch.tensor(0.25))

    # It is ppo_clip with (0.2, 0.28), metrics included.
    ref_loss, ref_metrics = ppo_clip_loss(new.detach(), old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    torch.testing.assert_close(loss.detach(), ref_loss)
    assert ref_metrics.keys() == metrics.keys()
    with pytest.raises(ValueError, match="clip ranges"):
        dapo_loss(new, old, adv, mask, clip_eps_high=-0.1)


# ---------------------------------------------------------------------------------------------------------
# GSPO


def _gspo_hand_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Five responses (T = 3), float64. Token log-ratios are chosen so that their mean is log s_i:

    row 0: 2 tokens, log r = ln1.1 + (+0.5, -0.5)        -> s = 1.1, A = +2
    row 1: 3 tokens, log r = ln1.5 + (0.3, -0.1, -0.2)   -> s = 1.5, A = +1
    row 2: 1 token,  log r = ln0.5                       -> s = 0.5, A = -1
    row 3: 2 tokens, log r = ln1.5 + (+0.1, -0.1)        -> s = 1.5, A = -1
    row 4: no token (all padding, holding garbage)
    """
    ln = math.log
    log_ratio = torch.tensor(
        [
            [ln(1.1) + 0.5, ln(1.1) - 0.5, 0.0],
            [ln(1.5) + 0.3, ln(1.5) - 0.1, ln(1.5) - 0.2],
            [ln(0.5), 0.0, 0.0],
            [ln(1.5) + 0.1, ln(1.5) - 0.1, 0.0],
            [0.0, 0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    mask = torch.tensor(
        [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float64
    )  # [5, 3]
    old = torch.full((5, 3), -2.0, dtype=torch.float64)
    old[4] = float("nan")
    new = (old + log_ratio).detach()
    new[4] = torch.tensor([float("inf"), 1e30, float("-inf")], dtype=torch.float64)
    adv = torch.tensor(
        [[2.0] * 3, [1.0] * 3, [-1.0] * 3, [-1.0] * 3, [float("nan")] * 3], dtype=torch.float64
    )
    return new.requires_grad_(True), old, adv, mask


def test_gspo_by_hand_with_ppo_sized_range() -> None:
    # With eps = 0.2 (range [0.8, 1.2]), loss_it = -min(s_i A_i, clip(s_i) A_i) on every token of row i:
    #  row 0: s=1.1, A=+2 : inside                  -> -2.2 per token   grad -A s = -2.2 per token
    #  row 1: s=1.5, A=+1 : above, A>0              -> -1.2 per token   clipped, grad 0
    #  row 2: s=0.5, A=-1 : below, A<0              -> -min(-0.5, -0.8) = +0.8   clipped, grad 0
    #  row 3: s=1.5, A=-1 : above, A<0 (not clipped) -> +1.5 per token   grad -A s = +1.5 per token
    # (Token-level PPO would clip row 0's first token, whose own ratio is 1.1 e^0.5 = 1.81.)
    new, old, adv, mask = _gspo_hand_batch()
    loss, metrics = gspo_loss(new, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2)
    expected = torch.tensor(
        [[-2.2, -2.2, 0.0], [-1.2, -1.2, -1.2], [0.8, 0.0, 0.0], [1.5, 1.5, 0.0], [0.0, 0.0, 0.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(loss, expected)

    # Paper's aggregation, seq-mean-token-mean over the G = 4 non-empty rows:
    #   value = (-2.2 - 1.2 + 0.8 + 1.5) / 4 = -1.1 / 4 = -0.275
    #         = -(1/G) sum_i min(s_i A_i, clip(s_i) A_i), the sequence-level GSPO loss.
    #   grad  = -A_i s_i / (G |y_i|):  row 0: -2 * 1.1 / (4 * 2) = -0.275;  row 3: +1 * 1.5 / (4 * 2) = 0.1875
    #           rows 1 and 2 are clipped -> 0.
    total = aggregate(loss, mask, "seq-mean-token-mean")
    torch.testing.assert_close(total, torch.tensor(-0.275, dtype=torch.float64))
    total.backward()
    expected_grad = torch.tensor(
        [[-0.275, -0.275, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.1875, 0.1875, 0.0], [0.0, 0.0, 0.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(new.grad, expected_grad)

    # clip_frac is token-weighted: clipped rows 1 (3 tokens, high) and 2 (1 token, low) of 8 tokens.
    assert metrics["clip_frac"].item() == pytest.approx(0.5)
    assert metrics["clip_frac_high"].item() == pytest.approx(3 / 8)
    assert metrics["clip_frac_low"].item() == pytest.approx(1 / 8)
    # Sequence ratios of the 4 non-empty rows: (1.1 + 1.5 + 0.5 + 1.5) / 4 = 1.15; min 0.5; max 1.5.
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.15, dtype=torch.float64))
    torch.testing.assert_close(metrics["ratio_min"], torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(1.5, dtype=torch.float64))
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_gspo_paper_defaults_by_hand() -> None:
    # Defaults eps_low = 3e-4, eps_high = 4e-4 -> range [0.9997, 1.0004]; float32 inputs.
    #  row 0: log r = (1e-4, 3e-4)   -> log s = 2e-4, s = e^2e-4 = 1.00020002 inside, A=+1
    #         loss = -s per token, grad (sum) = -s per token
    #  row 1: log r = (4e-4, 6e-4)   -> log s = 5e-4, s = 1.00050013 above 1.0004, A=+1
    #         loss = -1.0004 per token, grad 0
    old = torch.full((2, 2), -1.0)
    new = (old + torch.tensor([[1e-4, 3e-4], [4e-4, 6e-4]])).requires_grad_(True)
    adv = torch.ones(2, 2)
    mask = torch.ones(2, 2)
    loss, metrics = gspo_loss(new, old, adv, mask)
    s0 = math.exp(2e-4)
    torch.testing.assert_close(loss, torch.tensor([[-s0, -s0], [-1.0004, -1.0004]]), rtol=0, atol=2e-6)
    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-s0, -s0], [0.0, 0.0]]), rtol=0, atol=2e-6)
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.5))
    torch.testing.assert_close(
        metrics["ratio_mean"], torch.tensor((s0 + math.exp(5e-4)) / 2), rtol=0, atol=2e-6
    )


def test_gspo_matches_sequence_level_objective_and_gradient() -> None:
    # Reference: sequence-level GSPO written directly, s_i = exp(mean_t(logp - old)) with the gradient
    # flowing through s_i, J = (1/G) sum_i min(s_i A_i, clip(s_i) A_i). With one advantage per row, the
    # GSPO-token loss under seq-mean-token-mean must equal -J in value and in gradient. Per-row offsets put
    # rows on both sides of the range: row 0 (A>0, s above) and row 3 (A<0, s below) are clipped.
    old, _, _, mask = _random_batch(seed=3, n=4, t=6, scale=1.0)
    gen = torch.Generator().manual_seed(4)
    noise = torch.randn(4, 6, generator=gen, dtype=torch.float64) * 1e-3
    noise = noise - masked_mean(noise, mask, dim=-1).unsqueeze(-1)  # zero mean over each row's tokens
    offsets = torch.tensor([1e-3, 2e-4, -2e-4, -1e-3], dtype=torch.float64)  # log s_i
    new = (old + offsets[:, None] + noise).requires_grad_(True)
    adv_seq = torch.tensor([1.5, 1.0, -0.5, -2.0], dtype=torch.float64)
    adv = adv_seq[:, None].expand(4, 6)

    loss, _ = gspo_loss(new, old, adv, mask)
    total = aggregate(loss, mask, "seq-mean-token-mean")
    total.backward()

    new_ref = new.detach().clone().requires_grad_(True)
    s = torch.exp(masked_mean(new_ref - old, mask, dim=-1))  # [4]
    objective = torch.minimum(s * adv_seq, s.clamp(1 - 3e-4, 1 + 4e-4) * adv_seq).mean()
    (-objective).backward()
    torch.testing.assert_close(total, -objective.detach())
    torch.testing.assert_close(new.grad, new_ref.grad)

    # Analytic form: -A_i s_i / (G |y_i|) on the unclipped rows 1 and 2, zero on the clipped rows 0 and 3.
    lengths = mask.sum(-1)
    analytic = (-adv_seq * s.detach() / (4 * lengths))[:, None] * mask
    analytic[[0, 3]] = 0.0
    torch.testing.assert_close(new.grad, analytic)
    assert torch.all(new.grad[1:3][mask[1:3] > 0] != 0)


def test_gspo_invalid_hparams() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="clip ranges"):
        gspo_loss(x, x, x, x, clip_eps_low=-1e-4)
    with pytest.raises(ValueError, match="clip_eps_low"):
        gspo_loss(x, x, x, x, clip_eps_low=1.0)


# ---------------------------------------------------------------------------------------------------------
# CISPO


def test_cispo_by_hand() -> None:
    # Defaults: no lower bound, upper bound 1 + 0.28 = 1.28; w = sg(min(r, 1.28)); loss = -w A logp,
    # grad = -w A on EVERY token.
    #  logp=-1.0, r=1.1, A=+2 : w=1.1  loss = -1.1*2*(-1)    = 2.2    grad -2.2
    #  logp=-0.5, r=1.5, A=+1 : w=1.28 loss = -1.28*1*(-0.5) = 0.64   grad -1.28 (PPO/DAPO: clipped, 0)
    #  logp=-2.0, r=0.5, A=-1 : w=0.5  loss = -0.5*(-1)*(-2) = -1.0   grad +0.5  (PPO: clipped, 0)
    #  logp=-1.0, r=2.0, A=-1 : w=1.28 loss = -1.28*(-1)*(-1) = -1.28 grad +1.28 (PPO: +2.0)
    ratios = torch.tensor([[1.1, 1.5, 0.5, 2.0]])
    new = torch.tensor([[-1.0, -0.5, -2.0, -1.0]], requires_grad=True)
    old = new.detach() - torch.log(ratios)
    adv = torch.tensor([[2.0, 1.0, -1.0, -1.0]])
    mask = torch.ones_like(adv)
    loss, metrics = cispo_loss(new, old, adv, mask)
    torch.testing.assert_close(loss, torch.tensor([[2.2, 0.64, -1.0, -1.28]]))
    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-2.2, -1.28, 0.5, 1.28]]))
    # truncated weights: tokens 1 and 3 (both above 1.28) -> 2 / 4; ratio mean (1.1+1.5+0.5+2.0)/4 = 1.275
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["clip_frac_high"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["clip_frac_low"], torch.tensor(0.0))
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.275))
    torch.testing.assert_close(metrics["ratio_min"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(2.0))
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())

    # Lower bound 1 - 0.2 = 0.8: token 2's weight becomes 0.8, grad -0.8 * (-1) = +0.8 (still non-zero).
    new.grad = None
    loss, metrics = cispo_loss(new, old, adv, mask, clip_eps_low=0.2)
    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-2.2, -1.28, 0.8, 1.28]]))
    torch.testing.assert_close(metrics["clip_frac_low"], torch.tensor(0.25))
    torch.testing.assert_close(metrics["clip_frac"], torch.tensor(0.75))

    # No bounds at all: w = r, grad = -r A.
    new.grad = None
    loss, metrics = cispo_loss(new, old, adv, mask, clip_eps_high=None)
    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-2.2, -1.5, 0.5, 2.0]]))
    assert metrics["clip_frac"].item() == 0.0


def test_cispo_gradient_flows_through_every_token() -> None:
    # Autograd vs the hand formula d loss / d logp = -min(r, 1 + eps_high) * A, on data where many ratios
    # exceed 1.28: those tokens keep a non-zero gradient, scaled by the truncated weight 1.28.
    old, new, adv, mask = _random_batch(seed=5, scale=0.6)
    loss, metrics = cispo_loss(new, old, adv, mask, clip_eps_high=0.28)
    loss.sum().backward()
    ratio = torch.exp(new.detach() - old)
    expected = -ratio.clamp(max=1.28) * adv * mask
    torch.testing.assert_close(new.grad, expected)
    above = (ratio > 1.28) & (mask > 0)
    assert above.sum() >= 3
    assert torch.all(new.grad[mask > 0] != 0)
    torch.testing.assert_close(new.grad[above], -1.28 * adv[above])
    assert metrics["clip_frac_high"].item() == pytest.approx((above.sum() / mask.sum()).item())


def test_cispo_invalid_hparams() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="clip ranges"):
        cispo_loss(x, x, x, x, clip_eps_high=-0.1)
    with pytest.raises(ValueError, match="clip ranges"):
        cispo_loss(x, x, x, x, clip_eps_low=-0.1)


# ---------------------------------------------------------------------------------------------------------
# REINFORCE


def test_reinforce_by_hand() -> None:
    # loss = -r A, grad d loss / d logp = -r A (no clipping, whatever the ratio):
    #  r=1.0, A=+1.5 : loss -1.5   grad -1.5
    #  r=2.0, A=-1.0 : loss +2.0   grad +2.0   (ppo_clip would give the same here, A<0 above the range)
    #  r=0.5, A=+2.0 : loss -1.0   grad -1.0
    #  r=3.0, A=+1.0 : loss -3.0   grad -3.0   (ppo_clip: -1.2 and grad 0)
    new, old = _logprobs_for([1.0, 2.0, 0.5, 3.0])
    adv = torch.tensor([[1.5, -1.0, 2.0, 1.0]])
    mask = torch.ones_like(adv)
    loss, metrics = reinforce_loss(new, old, adv, mask)
    torch.testing.assert_close(loss, torch.tensor([[-1.5, 2.0, -1.0, -3.0]]))
    loss.sum().backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-1.5, 2.0, -1.0, -3.0]]))
    # ratio mean (1 + 2 + 0.5 + 3) / 4 = 1.625
    assert set(metrics) == {"ratio_mean", "ratio_min", "ratio_max"}
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.625))
    torch.testing.assert_close(metrics["ratio_min"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(3.0))


ZERO_WITHOUT_ADVANTAGE = {"cispo", "dapo", "grpo", "gspo", "ppo_clip", "reinforce"}


def test_losses_that_vanish_without_advantage_are_declared() -> None:
    from rlvr.algorithms.utils import is_zero_without_advantage

    declared = {name for name in POLICY_LOSSES.names() if is_zero_without_advantage(POLICY_LOSSES.get(name))}
    assert declared == ZERO_WITHOUT_ADVANTAGE


@pytest.mark.parametrize("name", sorted(ZERO_WITHOUT_ADVANTAGE))
def test_a_row_without_advantage_has_no_loss_no_gradient_and_no_influence(name: str) -> None:
    """What lets the update skip such rows (train.skip_zero_advantage): off-policy ratios from 0.3 to 3
    (clipped, dual-clipped where configured), rows 1 and 3 with advantage 0 on every token."""
    kwargs = {"dual_clip_c": 3.0} if name in {"grpo", "ppo_clip", "dapo"} else {}
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(5, 7, generator=g) * 3  # [N, T]
    new = (old + (torch.rand(5, 7, generator=g) * 2.3 - 1.2)).requires_grad_(True)  # ratios 0.3..3
    adv = torch.randn(5, 1, generator=g).expand(5, 7).clone()
    adv[[1, 3]] = 0.0
    mask = (torch.arange(7)[None, :] < torch.tensor([[7], [5], [3], [6], [4]])).float()
    loss, _ = POLICY_LOSSES.get(name)(new, old, adv, mask, **kwargs)
    loss.sum().backward()
    assert torch.count_nonzero(loss[[1, 3]]) == 0
    assert torch.count_nonzero(new.grad[[1, 3]]) == 0
    assert torch.count_nonzero(new.grad[[0, 2, 4]]) > 0
    rows = [0, 2, 4]  # the other rows' loss is the same without them
    alone = new.detach()[rows].requires_grad_(True)
    loss_alone, _ = POLICY_LOSSES.get(name)(alone, old[rows], adv[rows], mask[rows], **kwargs)
    loss_alone.sum().backward()
    torch.testing.assert_close(loss_alone, loss[rows], rtol=0, atol=0)
    torch.testing.assert_close(alone.grad, new.grad[rows], rtol=0, atol=0)

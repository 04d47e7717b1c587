"""Tests for rlvr.algorithms.policy_losses (PPO clipped surrogate, clip-higher, dual-clip)."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import POLICY_LOSSES, ppo_clip_loss


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

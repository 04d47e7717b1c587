"""Tests for rlvr.algorithms.kl (Schulman's k1 / k2 / k3 KL estimators)."""

from __future__ import annotations

import math

import torch

from rlvr.algorithms import KL_ESTIMATORS, kl_k1, kl_k2, kl_k3


def test_registered() -> None:
    assert KL_ESTIMATORS.get("k1") is kl_k1
    assert KL_ESTIMATORS.get("k2") is kl_k2
    assert KL_ESTIMATORS.get("k3") is kl_k3


def test_by_hand() -> None:
    # token 0: pi = 0.5, pi_ref = 0.25 -> log r = ln 2 = 0.693147
    #   k1 = 0.693147; k2 = 0.5 * 0.480453 = 0.240227; k3 = 1/2 - 1 + 0.693147 = 0.193147
    # token 1: log r = -1 -> k1 = -1; k2 = 0.5; k3 = e - 1 - 1 = 0.718282
    # token 2: log r = 0 -> all 0
    logprobs = torch.tensor([[math.log(0.5), -2.0, -0.3]])
    ref = torch.tensor([[math.log(0.25), -1.0, -0.3]])
    torch.testing.assert_close(kl_k1(logprobs, ref), torch.tensor([[0.693147, -1.0, 0.0]]))
    torch.testing.assert_close(kl_k2(logprobs, ref), torch.tensor([[0.240227, 0.5, 0.0]]))
    torch.testing.assert_close(kl_k3(logprobs, ref), torch.tensor([[0.193147, 0.718282, 0.0]]))


def test_k3_clamp() -> None:
    # log r = -5: k3 = e^5 - 1 - 5 = 148.413159 - 6 = 142.413159 -> clamped to 10 by default
    # log r = -30: with max_log_ratio=20, k3 = e^20 - 1 - 20 = 485165174.4; without, e^30 - 31
    logprobs = torch.tensor([[-6.0, -31.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    raw = kl_k3(logprobs, ref, clamp=None, max_log_ratio=None)
    torch.testing.assert_close(raw[0, 0], torch.tensor(142.413159, dtype=torch.float64))
    torch.testing.assert_close(raw[0, 1], torch.tensor(math.exp(30) - 31, dtype=torch.float64))
    only_log_ratio = kl_k3(logprobs, ref, clamp=None)
    torch.testing.assert_close(only_log_ratio[0, 1], torch.tensor(math.exp(20) - 21, dtype=torch.float64))

    clamped = kl_k3(logprobs, ref)
    torch.testing.assert_close(clamped, torch.tensor([[10.0, 10.0]], dtype=torch.float64))
    clamped.sum().backward()
    assert torch.all(logprobs.grad == 0)  # no gradient through the clamp


def test_k3_nonnegative_and_gradient() -> None:
    gen = torch.Generator().manual_seed(0)
    logprobs = torch.randn(4, 7, generator=gen).requires_grad_(True)
    ref = torch.randn(4, 7, generator=gen)
    k3 = kl_k3(logprobs, ref, clamp=None, max_log_ratio=None)
    assert torch.all(k3 >= 0)
    assert torch.all(kl_k2(logprobs, ref) >= 0)
    # d k3 / d logprobs = d/dx [exp(ref - x) - (ref - x) - 1] = 1 - exp(ref - x) = 1 - pi_ref / pi
    k3.sum().backward()
    torch.testing.assert_close(logprobs.grad, 1 - torch.exp(ref - logprobs.detach()))


def _categoricals() -> tuple[torch.Tensor, torch.Tensor, float]:
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)  # pi_theta
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)  # pi_ref
    # KL(p || q) = 0.5 ln(2.5) + 0.3 ln(1) + 0.2 ln(0.4) = 0.3 ln(2.5) = 0.274887
    return p, q, 0.3 * math.log(2.5)


def test_exact_expectations() -> None:
    # E_p[k1] and E_p[k3] equal KL(p || q) exactly; E_p[k2] does not (k2 is biased).
    p, q, true_kl = _categoricals()
    lp, lq = p.log()[None], q.log()[None]
    assert abs(float((p * kl_k1(lp, lq)[0]).sum()) - true_kl) < 1e-12
    assert abs(float((p * kl_k3(lp, lq, clamp=None)[0]).sum()) - true_kl) < 1e-12
    assert abs(float((p * kl_k2(lp, lq)[0]).sum()) - true_kl) > 1e-3


def test_monte_carlo_unbiased() -> None:
    # Sample tokens from pi_theta; the sample means of k1 and k3 approach KL(pi_theta || pi_ref).
    p, q, true_kl = _categoricals()
    gen = torch.Generator().manual_seed(1234)
    n = 200_000
    tokens = torch.multinomial(p, n, replacement=True, generator=gen).view(400, 500)  # [N, T]
    logprobs = p.log()[tokens]  # [N, T]
    ref = q.log()[tokens]  # [N, T]
    for fn in (kl_k1, kl_k3):
        samples = fn(logprobs, ref)
        mean = samples.mean().item()
        stderr = samples.std().item() / math.sqrt(n)
        assert abs(mean - true_kl) < 5 * stderr, (fn.__name__, mean, true_kl, stderr)
    # k3 is the lower-variance unbiased one for these distributions
    assert kl_k3(logprobs, ref).var() < kl_k1(logprobs, ref).var()

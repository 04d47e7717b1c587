"""The chunked log-prob / entropy of the update (TokenStats) against the plain float32 formulas."""

import math

import pytest
import torch

import rlvr.trainer.logprobs as logprobs_module
from rlvr.trainer.logprobs import TokenStats, token_entropy, token_logprobs


def test_hand_worked_values():
    # logits [0, ln 3] at temperature 1: p = [1/4, 3/4]
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    lp, ent = TokenStats.apply(logits, torch.tensor([[1]]), 1.0)
    assert lp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert ent.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    # temperature 2 halves the logits: p = [1, sqrt 3] / (1 + sqrt 3)
    lp, _ = TokenStats.apply(logits, torch.tensor([[0]]), 2.0)
    assert lp.item() == pytest.approx(-math.log(1 + math.sqrt(3.0)), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("terms", ["logprob", "entropy", "both"])
def test_values_and_gradients_match_float32_formulas(monkeypatch, dtype, temperature, terms):
    monkeypatch.setattr(logprobs_module, "CHUNK_ELEMENTS", 3 * 50)  # 3 positions a chunk: 5 chunks + a tail
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 6, 50, generator=gen) * 3).to(dtype).requires_grad_()
    ids = torch.randint(0, 50, (3, 6), generator=gen)
    w_lp, w_ent = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)

    def loss(lp, ent):
        return (lp * w_lp).sum() * (terms != "entropy") + (ent * w_ent).sum() * (terms != "logprob")

    x = logits.float() / temperature
    expected_lp, expected_ent = token_logprobs(x, ids), token_entropy(x)
    (expected_grad,) = torch.autograd.grad(loss(expected_lp, expected_ent), logits)
    lp, ent = TokenStats.apply(logits, ids, temperature)
    (grad,) = torch.autograd.grad(loss(lp, ent), logits)
    assert lp.dtype == ent.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(lp, expected_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, expected_ent, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        grad.float(), expected_grad.float(), rtol=1e-2 if dtype == torch.bfloat16 else 1e-4, atol=1e-5
    )
    assert grad.abs().sum() > 0


def test_chunk_is_sized_for_the_device():
    # the CPU's chunk fits a cache (10 positions of a 49,152 vocabulary); elsewhere (a GPU, here the meta
    # device, which has shapes only) it is 2^25 logits, 682 positions: 2,688 positions make 4 chunks
    cpu = logprobs_module._chunks(torch.empty(1).expand(2688, 49152))  # shape only, no memory
    assert len(cpu) == 269 and cpu[0] == slice(0, 10) and cpu[-1] == slice(2680, 2690)
    gpu = logprobs_module._chunks(torch.empty(2688, 49152, device="meta"))
    assert gpu == [slice(0, 682), slice(682, 1364), slice(1364, 2046), slice(2046, 2728)]

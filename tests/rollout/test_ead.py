"""EAD per-token temperature: the schedule by hand, its transport to vLLM, and the vLLM processor's V2 half.

The engines' logprob checks under a schedule live in test_engines.py (one shared vLLM engine start).
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rlvr.rollout import SamplingConfig
from rlvr.rollout.ead import EADSchedule, ead_decay, ead_temperature, ead_temperatures

# τ visibly different within 12 tokens: 1.0 (warm-up) -> 1.216 -> ... -> floor 0.3 from t = 7 on.
STEEP = EADSchedule(tau_max=1.5, tau_min=0.3, decay=8.0, warmup_tokens=2)


def test_ead_temperature_by_hand():
    paper = dict(tau_max=1.2, tau_min=0.1, decay=100.0, warmup_tokens=10)
    assert ead_temperature(0, **paper) == 1.0  # warm-up: template tokens at τ = 1
    assert ead_temperature(9, **paper) == 1.0
    assert ead_temperature(10, **paper) == pytest.approx(2.2 - math.exp(0.1))  # 1.094829...
    assert ead_temperature(10, **paper) == pytest.approx(1.0948291, abs=1e-7)
    assert ead_temperature(50, **paper) == pytest.approx(2.2 - 1.6487213, abs=1e-7)  # 0.5512787
    # floor: 2.2 - e^{t/100} <= 0.1  <=>  t >= 100 ln 2.1 = 74.19
    assert ead_temperature(74, **paper) == pytest.approx(2.2 - math.exp(0.74), abs=1e-12)  # 0.10406...
    assert ead_temperature(75, **paper) == 0.1
    assert ead_temperature(10**9, **paper) == 0.1  # no overflow
    # no warm-up: t = 0 starts at τ_max
    assert ead_temperature(0, tau_max=1.2, tau_min=0.1, decay=100.0, warmup_tokens=0) == pytest.approx(1.2)
    assert [round(STEEP.temperature(t), 4) for t in range(9)] == [
        1.0, 1.0, 1.2160, 1.0450, 0.8513, 0.6318, 0.3830, 0.3, 0.3
    ]  # fmt: skip


def test_ead_temperatures_match_the_scalar_form():
    positions = torch.arange(0, 200)
    got = STEEP.temperatures(positions)
    assert got.dtype == torch.float32
    expected = torch.tensor([STEEP.temperature(t) for t in range(200)], dtype=torch.float32)
    torch.testing.assert_close(got, expected)
    # per-row parameters broadcast (one schedule per request)
    rows = ead_temperatures(
        torch.tensor([0, 20, 20]),
        tau_max=torch.tensor([1.2, 1.2, 1.5]),
        tau_min=torch.tensor([0.1, 0.1, 0.3]),
        decay=torch.tensor([100.0, 100.0, 8.0]),
        warmup_tokens=torch.tensor([10.0, 10.0, 2.0]),
    )
    torch.testing.assert_close(rows, torch.tensor([1.0, 2.2 - math.exp(0.2), 0.3]))


def test_ead_decay_is_step_aware_and_capped():
    assert ead_decay(0, d0=25) == 25.0
    assert ead_decay(10, d0=25) == 75.0  # d0 + 5 s
    assert ead_decay(7, d0=1000, growth=2.0) == 1014.0
    assert ead_decay(10**6, d0=25) == 40000.0  # cap
    assert ead_decay(100, d0=25, d_max=300) == 300.0
    with pytest.raises(ValueError):
        ead_decay(-1, d0=25)


def test_schedule_validation_and_transport():
    with pytest.raises(ValueError):
        EADSchedule(decay=0.0)
    with pytest.raises(ValueError):
        EADSchedule(decay=10.0, tau_max=0.5, tau_min=0.6)
    with pytest.raises(ValueError):
        EADSchedule(decay=10.0, warmup_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0.7, temperature_schedule=STEEP)
    assert EADSchedule.from_extra_args(STEEP.to_extra_args()) == STEEP
    assert EADSchedule.from_extra_args(None) is None
    assert EADSchedule.from_extra_args({"other": 1}) is None
    with pytest.raises(ValueError):
        EADSchedule.from_extra_args({"rlvr_ead": {"decay": 1.0, "bogus": 2}})


def test_vllm_processor_v2_half_by_hand():
    """The V2-runner half (GPU default; vLLM-CPU runs V1) on a hand-made batch: slots, positions, prompts."""
    vllm_ead = pytest.importorskip("rlvr.rollout.vllm_ead", reason="vllm not installed")
    if vllm_ead.V2LogitsProcessor is None:
        pytest.skip("this vllm has no V2 model runner")
    prompt_len = SimpleNamespace(np=np.array([0, 5, 7, 3], dtype=np.int32))
    req_states = SimpleNamespace(device=torch.device("cpu"), max_num_reqs=4, prompt_len=prompt_len)
    proc = vllm_ead.EADLogitsProcessor(None, req_states)
    other = EADSchedule(tau_max=1.2, tau_min=0.1, decay=100.0, warmup_tokens=10)
    assert proc.add_request(1, SimpleNamespace(extra_args=STEEP.to_extra_args()))
    assert not proc.add_request(2, SimpleNamespace(extra_args=None))
    assert proc.add_request(3, SimpleNamespace(extra_args=other.to_extra_args()))
    proc.apply_staged_writes()
    # rows: slot 1 at its 4th generated token, slot 2 (no schedule), slot 3 at its 30th, slot 1 again
    # (as under speculative decoding) at its first; pos is the position of the row's input token.
    slots = torch.tensor([1, 2, 3, 1])
    pos = torch.tensor([5 + 4 - 1, 20, 3 + 30 - 1, 5 - 1])
    ctx = SimpleNamespace(expanded_idx_mapping=slots, idx_mapping_np=np.array([1, 2, 3]), pos=pos)
    logits = torch.randn(4, 11)
    got = proc.apply(logits.clone(), ctx)
    tau = torch.tensor([STEEP.temperature(4), 1.0, other.temperature(30), STEEP.temperature(0)])
    torch.testing.assert_close(got, logits / tau[:, None])
    # a batch without annealed requests is left alone
    ctx = SimpleNamespace(expanded_idx_mapping=torch.tensor([2]), idx_mapping_np=np.array([2]), pos=pos[:1])
    assert torch.equal(proc.apply(logits[:1].clone(), ctx), logits[:1])


def test_vllm_processor_rejects_a_second_temperature():
    vllm_ead = pytest.importorskip("rlvr.rollout.vllm_ead", reason="vllm not installed")
    with pytest.raises(ValueError, match="temperature"):
        vllm_ead.EADLogitsProcessor.validate_params(
            SimpleNamespace(extra_args=STEEP.to_extra_args(), temperature=0.8)
        )
    vllm_ead.EADLogitsProcessor.validate_params(
        SimpleNamespace(extra_args=STEEP.to_extra_args(), temperature=1.0)
    )
    vllm_ead.EADLogitsProcessor.validate_params(SimpleNamespace(extra_args=None, temperature=0.8))

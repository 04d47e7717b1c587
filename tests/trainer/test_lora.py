"""LoRA: merged weights equal peft's own merge, the reference is the adapter-free model, a LoRA run saves a
merged model that computes like base + adapter, and the engine after LoRA updates agrees with it."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from launch import ROOT, TINY_RECIPE, accelerate, run
from transformers import AutoModelForCausalLM

from rlvr.config import Recipe
from rlvr.models import build_tiny_model
from rlvr.trainer.lora import apply_lora, reference_output
from rlvr.trainer.weights import policy_state
from rlvr.types import RolloutBatch


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden_size=64, num_heads=2, num_kv_heads=1)


def lora_model(tiny_dir, **settings):
    recipe = Recipe.model_validate({"model": {"lora": {"r": 4, "alpha": 8, **settings}}})
    torch.manual_seed(0)  # lora_A's random initialisation
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_dir), recipe.model.lora)
    with torch.no_grad():  # peft starts B at 0 (a no-op adapter): give it a real update
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model


def test_only_the_adapter_trains(tiny_dir):
    model = lora_model(tiny_dir)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)


def test_merged_weights_equal_peft_merge(tiny_dir):
    model = lora_model(tiny_dir, target_modules=["q_proj", "v_proj", "down_proj"])
    ours = dict(policy_state(model))  # what the rollout engine receives
    theirs = dict(
        lora_model(tiny_dir, target_modules=["q_proj", "v_proj", "down_proj"])
        .merge_and_unload()
        .named_parameters(remove_duplicate=False)
    )
    assert ours.keys() == theirs.keys()  # the base model's own names, lm_head included
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor.detach(), atol=1e-6, rtol=1e-5)
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_dir).named_parameters(remove_duplicate=False))
    changed = [n for n in ours if not torch.equal(ours[n], base[n].detach())]
    assert sorted({n.rsplit(".", 2)[-2] for n in changed}) == ["down_proj", "q_proj", "v_proj"]


def test_reference_is_the_model_without_its_adapter(tiny_dir):
    model = lora_model(tiny_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    batch = RolloutBatch(
        prompt_ids=torch.tensor([[5, 6, 7]]),
        prompt_mask=torch.ones(1, 3, dtype=torch.long),
        response_ids=torch.tensor([[8, 9]]),
        response_mask=torch.ones(1, 2),
        engine_logprobs=torch.zeros(1, 2),
        sequence_rewards=torch.zeros(1),
        group_index=torch.zeros(1, dtype=torch.long),
        truncated=torch.zeros(1, dtype=torch.bool),
    )
    from rlvr.trainer.logprobs import response_logits

    with torch.no_grad():
        reference = reference_output(model, model, 1.0)(batch)
        torch.testing.assert_close(reference, response_logits(base, batch))
        assert not torch.allclose(response_logits(model, batch), reference)  # the adapter is back on after


def test_lora_with_reference_reset_is_refused(tmp_path):
    from rlvr.config import RecipeError, load_recipe

    with pytest.raises(RecipeError, match="algorithm.reference_reset_every: with model.lora"):
        load_recipe(
            TINY_RECIPE, ["model.lora={r: 4}", "algorithm.kl_coef=0.1", "algorithm.reference_reset_every=2"]
        )


def test_lora_dpo_run_saves_merged_model_and_adapter(tmp_path):
    from peft import PeftModel

    out = tmp_path / "run"
    recipe = ROOT / "recipes/tiny/dpo_tiny_say_digit.yaml"
    run(
        [
            sys.executable,
            "-m",
            "rlvr.train",
            str(recipe),
            f"run.output_dir={out}",
            "run.steps=3",
            "model.lora={r: 4, alpha: 8}",
            "train.lr=0.05",
        ]
    )
    merged = AutoModelForCausalLM.from_pretrained(out / "final")
    from rlvr.models import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-char"))
    adapted = PeftModel.from_pretrained(base, out / "final/adapter")
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(
            merged(ids).logits, AutoModelForCausalLM.from_pretrained(resolve_model("tiny-char"))(ids).logits
        )


@pytest.mark.vllm
@pytest.mark.distributed
@pytest.mark.parametrize("stage", ["zero1", "zero2", "zero3"])
def test_lora_grpo_on_zero_engine_matches_merged_model(tmp_path, stage):
    """Two LoRA GRPO steps under each ZeRO stage with the vLLM engine: the engine's greedy output equals the
    transformers engine's on the merged weights and the peft model's own (adapter on); under ZeRO-3 the
    partitioned base and adapter are gathered before merging."""
    out = tmp_path / "out.json"
    script = str(ROOT / "tests/scripts/lora_greedy.py")
    run(
        accelerate(
            f"recipes/accelerate/{stage}.yaml",
            script,
            str(out),
            str(TINY_RECIPE),
            f"run.output_dir={tmp_path / 'run'}",
            num_processes=1,
        )
    )
    result = json.loads(out.read_text())
    assert result["vllm"] == result["hf_merged"] == result["peft"]
    assert result["vllm"] != result["before"]  # the LoRA update reached the engine
    assert result["adapter_only_changed"]

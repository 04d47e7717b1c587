"""Two LoRA GRPO steps of a recipe under ``accelerate launch`` (vLLM engine), then greedy generations of the
engine, of the transformers engine loaded with the merged weights, and of the peft model itself.

    accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 1 \
        tests/scripts/lora_greedy.py OUT.json RECIPE [k=v ...]
"""

import json
import sys
from pathlib import Path

import torch

from rlvr.config import load_recipe
from rlvr.models import resolve_model
from rlvr.rollout import ENGINES, EngineOptions, SamplingConfig
from rlvr.train import build, run_step
from rlvr.trainer.setup import unpartitioned
from rlvr.trainer.weights import gathered_parameters, policy_state

GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=8)


def main() -> None:
    out, recipe_path, *overrides = sys.argv[1:]
    recipe = load_recipe(
        recipe_path,
        [
            "rollout.engine=vllm",
            "run.steps=2",
            "run.save_final=false",
            "model.lora={r: 8, alpha: 32}",
            "train.lr=0.05",
            *overrides,
        ],
    )
    t = build(recipe)
    prompts = [row["prompt_ids"] for row in list(t.sampler.dataset)[:6]]
    before = [c.token_ids for c in t.engine.generate(prompts, GREEDY)]
    with gathered_parameters(t.accelerator, t.ctx.model) as peft_model:
        base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if ".lora_" not in n}
    for _ in range(recipe.run.steps):
        run_step(t)  # ends with the merged weights pushed into the engine
    after = [c.token_ids for c in t.engine.generate(prompts, GREEDY)]
    with gathered_parameters(t.accelerator, t.ctx.model) as peft_model:
        merged = policy_state(peft_model)
        base_after = {n: p.detach() for n, p in peft_model.named_parameters() if ".lora_" not in n}
        peft_model.eval()
        peft_tokens = []
        for ids in prompts:
            with torch.no_grad():
                generated = peft_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
            tokens = generated[0, len(ids) :].tolist()
            eos = t.tokenizer.eos_token_id
            peft_tokens.append(tokens[: tokens.index(eos) + 1] if eos in tokens else tokens)
    with unpartitioned():  # under ZeRO-3 a model built now would be partitioned, as the trainer builds it
        hf = ENGINES.get("hf")(str(resolve_model(recipe.model.name_or_path)), EngineOptions())
    hf.update_weights(merged)
    hf_tokens = [c.token_ids for c in hf.generate(prompts, GREEDY)]
    Path(out).write_text(
        json.dumps(
            {
                "before": before,
                "vllm": after,
                "hf_merged": hf_tokens,
                "peft": peft_tokens,
                "adapter_only_changed": all(torch.equal(base[n], base_after[n]) for n in base),
            }
        )
    )
    t.scorer.close()
    t.engine.close()
    t.accelerator.end_training()


if __name__ == "__main__":
    main()

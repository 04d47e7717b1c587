"""Train with one vLLM engine sharded over both training processes, then dump what each process's share
of the engine returns beside transformers' greedy output on the trained weights.

    accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 2 \
        tests/scripts/tp_colocated.py OUT_DIR RECIPE rollout.tensor_parallel_size=2 [k=v ...]

``rollout.tensor_parallel_size=2`` with two processes puts one shard of the colocated engine in each
(vLLM's external launcher, :mod:`rlvr.rollout.group`). The script runs ``run.steps`` steps and one
evaluation when the recipe has ``eval.benchmarks`` (the main process evaluates, its group-mate follows),
then asks the engine, on every process, for greedy completions of prompts of its own (a different
number on each); then syncs perturbed weights (the same on both processes) and asks again. Writes
OUT_DIR/rank{i}.json: the steps' metrics, the evaluation's, and the engine's and transformers'
completions after training and after the perturbed sync.
"""

import json
import sys
from pathlib import Path

import torch

from rlvr.config import load_recipe
from rlvr.models import resolve_model
from rlvr.rollout import ENGINES
from rlvr.rollout.base import EngineOptions, SamplingConfig
from rlvr.train import build, run_step
from rlvr.trainer.weights import gathered_parameters, policy_state

PROMPTS = [[1, 2, 3, 4], [5, 6, 7], [8, 9], [10, 11, 12], [13]]


def main() -> None:
    out, recipe_path, *overrides = sys.argv[1:]
    recipe = load_recipe(recipe_path, overrides)
    trainer = build(recipe)
    acc = trainer.accelerator
    steps = [run_step(trainer) for _ in range(recipe.run.steps)]
    evaluation = trainer.evaluator.run() if trainer.evaluator is not None else {}
    own = PROMPTS[acc.process_index :: acc.num_processes]  # 3 prompts on process 0, 2 on process 1
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=8)
    engine = trainer.engine.generate(own, greedy)
    reference = ENGINES.get("hf")(str(resolve_model(recipe.model.name_or_path)), EngineOptions())
    generator = torch.Generator().manual_seed(1)
    trained, perturbed, noisy = [], [], {}  # a tied weight (listed under two names) perturbed alike
    with gathered_parameters(acc, trainer.ctx.model) as model:
        for name, t in policy_state(model):
            if id(t) not in noisy:
                noisy[id(t)] = t + 0.5 * torch.randn(t.shape, generator=generator)
            trained.append((name, t.detach().clone()))
            perturbed.append((name, noisy[id(t)]))
    reference.update_weights(trained)
    expected = reference.generate(own, greedy)
    trainer.engine.update_weights(iter(perturbed))
    reference.update_weights(perturbed)
    after_sync = trainer.engine.generate(own, greedy)
    expected_after_sync = reference.generate(own, greedy)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{acc.process_index}.json").write_text(
        json.dumps(
            {
                "steps": steps,
                "evaluation": evaluation,
                "engine": [[c.prompt_index, c.token_ids, c.logprobs] for c in engine],
                "expected": [[c.prompt_index, c.token_ids, c.logprobs] for c in expected],
                "after_sync": [[c.prompt_index, c.token_ids, c.logprobs] for c in after_sync],
                "expected_after_sync": [
                    [c.prompt_index, c.token_ids, c.logprobs] for c in expected_after_sync
                ],
                "engine_class": type(trainer.engine).__name__,
            }
        )
    )
    trainer.scorer.close()
    trainer.engine.close()
    acc.end_training()


if __name__ == "__main__":
    main()

"""Run RL steps of a recipe under ``accelerate launch`` and dump a per-rank digest of the full weights.

    accelerate launch --config_file recipes/accelerate/zero3.yaml tests/scripts/dist_step.py \
        OUT_DIR RECIPE [k=v ...]

An offline preference recipe (``data.format: pairs`` / ``unpaired``) runs offline preference steps.

Writes OUT_DIR/rank{i}.json with the metrics of every step and a sha256 of every full (gathered)
parameter after the last step, so the test can check that all ranks hold identical weights, and that
the weights changed; also the global prompt batches the rank's sampler drew and its per-prompt statistics,
and what the weight stream for the engine (``policy_tensors``) yielded: a sha256 per tensor and, under
ZeRO-3, which partitioned parameters were gathered at each.
"""

import hashlib
import json
import sys
from pathlib import Path

from rlvr.config import load_recipe
from rlvr.preference import build_offline, run_offline_step
from rlvr.train import build, run_step
from rlvr.trainer.critic import policy_of
from rlvr.trainer.weights import gathered_parameters, policy_state, policy_tensors
from tests.scripts.zero3 import partition_every_parameter


def sha(tensor) -> str:
    return hashlib.sha256(tensor.float().numpy().tobytes()).hexdigest()


def digest(trainer) -> dict[str, str]:
    with gathered_parameters(trainer.accelerator, trainer.ctx.model) as model:
        return {name: sha(t) for name, t in policy_state(model)}


def stream(trainer) -> tuple[dict[str, str], list[dict]]:
    """``policy_tensors``' tensors (sha256 by name) and, at each, the names of the policy's ZeRO-3
    partitioned parameters (not the small ones DeepSpeed keeps whole) that were gathered then."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    policy = policy_of(trainer.accelerator.unwrap_model(trainer.ctx.model))
    named = dict(policy.named_parameters(remove_duplicate=False))  # a tied weight under each name
    partitioned = {n: p for n, p in named.items() if hasattr(p, "ds_status") and not p.ds_persist}
    shas, held = {}, []
    for name, tensor in policy_tensors(trainer.accelerator, trainer.ctx.model):
        shas[name] = sha(tensor)
        gathered = [n for n, p in partitioned.items() if p.ds_status == ZeroParamStatus.AVAILABLE]
        held.append({"name": name, "gathered": gathered})
    return shas, held


def main() -> None:
    out, recipe_path, *overrides = sys.argv[1:]
    partition_every_parameter()
    recipe = load_recipe(recipe_path, overrides)
    offline = recipe.data.format != "prompts"  # a preference dataset: the offline preference step
    trainer = build_offline(recipe) if offline else build(recipe)
    step = run_offline_step if offline else run_step
    drawn: list[list[int]] = []  # the global batches this rank's sampler handed out
    draw = trainer.sampler.next_batch

    def next_batch(n: int, step: int = 0) -> list[dict]:
        batch = draw(n, step)
        drawn.append([row["prompt_id"] for row in batch])
        return batch

    trainer.sampler.next_batch = next_batch
    before = digest(trainer)
    steps = [step(trainer) for _ in range(trainer.recipe.run.steps)]
    after = digest(trainer)
    streamed, held = stream(trainer)
    rank = trainer.accelerator.process_index
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "before": before,
                "after": after,
                "streamed": streamed,
                "held": held,
                "steps": steps,
                "drawn": drawn,
                "prompt_stats": trainer.stats.state_dict(),
            }
        )
    )
    if not offline:
        trainer.scorer.close()
        trainer.engine.close()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()

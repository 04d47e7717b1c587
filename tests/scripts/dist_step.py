"""Run RL steps of a recipe under ``accelerate launch`` and dump a per-rank digest of the full weights.

    accelerate launch --config_file recipes/accelerate/zero3.yaml tests/scripts/dist_step.py \
        OUT_DIR RECIPE [k=v ...]

An offline preference recipe (``data.format: pairs`` / ``unpaired``) runs offline preference steps.

Writes OUT_DIR/rank{i}.json with the metrics of every step and a sha256 of every full (gathered)
parameter after the last step, so the test can check that all ranks hold identical weights, and that
the weights changed; also the global prompt batches the rank's sampler drew and its per-prompt statistics.
"""

import hashlib
import json
import sys
from pathlib import Path

from rlvr.config import load_recipe
from rlvr.preference import build_offline, run_offline_step
from rlvr.train import build, run_step
from rlvr.trainer.weights import gathered_parameters, policy_state


def digest(trainer) -> dict[str, str]:
    with gathered_parameters(trainer.accelerator, trainer.ctx.model) as model:
        return {
            name: hashlib.sha256(t.float().numpy().tobytes()).hexdigest() for name, t in policy_state(model)
        }


def main() -> None:
    out, recipe_path, *overrides = sys.argv[1:]
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
    rank = trainer.accelerator.process_index
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "before": before,
                "after": after,
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

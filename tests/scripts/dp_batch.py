"""One update of a recipe on a fixed, seeded global batch, under ``accelerate launch`` with any number of
processes: each process builds its share of the batch's prompt groups as a training step does, then runs
the step's advantage stage and update (the batch and the gradient capture of ``scripts/gpu_check.py``).

    accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 2 \
        tests/scripts/dp_batch.py OUT_DIR RECIPE [k=v ...]

Writes OUT_DIR/rank{i}.pt: this process's rows' rewards, mask, advantages and token weights, and the full
gradient of every parameter at the first optimizer step (after the all-reduce, before clipping), so a test
can check that 1 and 2 processes agree on the same global batch.
"""

import sys
from pathlib import Path

import torch

from rlvr.config import load_recipe
from rlvr.train import build
from scripts.gpu_check import process_batch, update_with_gradient
from tests.scripts.zero3 import partition_every_parameter


def main() -> None:
    out, recipe_path, *overrides = sys.argv[1:]
    partition_every_parameter()
    trainer = build(load_recipe(recipe_path, overrides))
    batch = process_batch(trainer, len(trainer.tokenizer))
    metrics, grads = update_with_gradient(trainer, batch)
    Path(out).mkdir(parents=True, exist_ok=True)
    fields = ("sequence_rewards", "response_mask", "advantages", "token_weights")
    dump = {name: getattr(batch, name) for name in fields}
    torch.save(
        {**dump, "grads": grads, "metrics": metrics},
        Path(out) / f"rank{trainer.accelerator.process_index}.pt",
    )


if __name__ == "__main__":
    main()

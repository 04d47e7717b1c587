"""One update of a recipe on a fixed, seeded global batch, under ``accelerate launch`` with any number of
processes: each process builds its share of the batch's prompt groups as a training step does, then runs
the step's advantage stage and update.

    accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 2 \
        tests/scripts/dp_batch.py OUT_DIR RECIPE [k=v ...]

Writes OUT_DIR/rank{i}.pt: this process's rows' advantages and token weights (cut to the global width),
and the full gradient of every parameter at the first optimizer step (after the all-reduce, before
clipping), so a test can check that 1 and 2 processes agree on the same global batch.
"""

import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_grad

from rlvr.config import load_recipe
from rlvr.rollout import Completion
from rlvr.train import build
from rlvr.trainer.batch import make_batch, pad_id
from rlvr.trainer.logprobs import fill_fields


def global_samples(recipe, vocab: int):
    """Prompts and completions of the whole step, the same on every process (seeded)."""
    gen = torch.Generator().manual_seed(1234)
    groups = []
    for _ in range(recipe.train.prompts_per_step):
        prompt = torch.randint(3, vocab, (int(torch.randint(2, 9, (1,), generator=gen)),), generator=gen)
        samples = []
        for _ in range(recipe.rollout.num_generations):
            length = int(torch.randint(1, recipe.rollout.max_tokens + 1, (1,), generator=gen))
            ids = torch.randint(3, vocab, (length,), generator=gen).tolist()
            logprobs = (-torch.rand(length, generator=gen) * 3).tolist()
            reward = float(torch.randint(0, 3, (1,), generator=gen)) / 2
            samples.append((ids, logprobs, reward, length == recipe.rollout.max_tokens))
        groups.append((prompt.tolist(), samples))
    return groups


def main() -> None:
    out, recipe_path, *overrides = sys.argv[1:]
    t = build(load_recipe(recipe_path, overrides))
    acc, model = t.accelerator, t.ctx.model
    per_process = t.layout["prompts"]
    first = acc.process_index * per_process
    mine = global_samples(t.recipe, len(t.tokenizer))[first : first + per_process]
    completions, rewards = [], []
    for i, (_, samples) in enumerate(mine):
        for ids, logprobs, reward, truncated in samples:
            finish = "length" if truncated else "stop"
            completions.append(Completion(i, ids, logprobs, text="", finish_reason=finish))
            rewards.append(reward)
    batch = make_batch([p for p, _ in mine], completions, rewards, pad_id(t.tokenizer), group_offset=first)

    model.eval()
    fill_fields(batch, t.requests, t.forwards, t.ctx.micro_batch, acc.device, t.recipe.train.sort_by_length)
    grads: dict[str, torch.Tensor] = {}
    engine_step = model.step

    def step_recording_grads(*args, **kwargs):
        if not grads and model.is_gradient_accumulation_boundary():
            for name, param in model.module.named_parameters():
                grads[name] = safe_get_full_grad(param).detach().float().cpu().clone()
        return engine_step(*args, **kwargs)

    model.step = step_recording_grads
    metrics = t.update(t, batch)
    Path(out).mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "sequence_rewards": batch.sequence_rewards,
            "response_mask": batch.response_mask,
            "advantages": batch.advantages,
            "token_weights": batch.token_weights,
            "grads": grads,
            "metrics": metrics,
        },
        Path(out) / f"rank{acc.process_index}.pt",
    )


if __name__ == "__main__":
    main()

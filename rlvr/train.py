"""Train a policy with RL from verifiable rewards, as a recipe describes.

    accelerate launch --config_file recipes/accelerate/zero2.yaml -m rlvr.train RECIPE.yaml [key=value ...]
    python -m rlvr.train RECIPE.yaml [key=value ...]          # one process, no launcher

One RL step, top to bottom (``run_step``): sample prompts -> generate G completions each -> score them ->
compute advantages -> update the policy -> push the new weights into the rollout engine -> log and
checkpoint. Every algorithmic choice is a registry name from the recipe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object, set_seed
from transformers import AutoTokenizer

from rlvr.algorithms import ADVANTAGES, AdvantageInputs
from rlvr.config import Recipe, RecipeError, dump_recipe, load_recipe
from rlvr.data import SAMPLERS, load_prompts, shard
from rlvr.models import resolve_model
from rlvr.rewards import RewardSpec, Scorer
from rlvr.rollout import ENGINES, EngineOptions, RolloutEngine, SamplingConfig
from rlvr.trainer.batch import make_batch
from rlvr.trainer.checkpoint import load_latest, save_checkpoint, save_final_model
from rlvr.trainer.metrics import MetricsLogger
from rlvr.trainer.setup import (
    configure_deepspeed,
    load_policy,
    lr_of,
    make_accelerator,
    make_optimizer,
    make_reference,
    unpartitioned,
)
from rlvr.trainer.update import UpdateContext, policy_update
from rlvr.trainer.weights import gathered_parameters, policy_state

logger = logging.getLogger("rlvr")


@dataclass
class Trainer:
    """Everything one RL step touches; built by :func:`build`."""

    recipe: Recipe
    ctx: UpdateContext
    engine: RolloutEngine
    scorer: Scorer
    sampler: object
    tokenizer: object
    log: MetricsLogger
    layout: dict[str, int]
    step: int = 0

    @property
    def accelerator(self):
        return self.ctx.accelerator


def _seed_for(*parts: int) -> int:
    """A 31-bit seed derived from integers (stable across processes and runs)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def build(recipe: Recipe) -> Trainer:
    """Create the accelerator, policy, optimizer, engine, scorer, data and sampler for ``recipe``."""
    layout = recipe.batch_layout(int(os.environ.get("WORLD_SIZE", "1")))
    accelerator = make_accelerator(layout["grad_accum"], recipe.train.mixed_precision)
    configure_deepspeed(accelerator, layout["micro_batch"], layout["grad_accum"], recipe)
    set_seed(recipe.run.seed, device_specific=False)
    run_dir = Path(recipe.run.output_dir)
    prepare_run_dir(run_dir, recipe, accelerator.is_main_process)
    accelerator.wait_for_everyone()

    with accelerator.main_process_first():
        model_path = str(resolve_model(recipe.model.name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = load_prompts(recipe.data, tokenizer)
    sampler = SAMPLERS.get(recipe.sampler.name)(dataset, seed=recipe.run.seed)

    model = load_policy(model_path, recipe)
    optimizer, scheduler = make_optimizer(model, recipe)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    ref_model = make_reference(accelerator, model_path, recipe) if recipe.algorithm.kl_coef > 0 else None

    r = recipe.rollout
    options = EngineOptions(
        dtype=r.dtype or recipe.model.dtype,
        max_model_len=r.max_model_len or recipe.data.max_prompt_tokens + r.max_tokens,
        seed=recipe.run.seed + accelerator.process_index,
        gpu_memory_utilization=r.gpu_memory_utilization,
        kv_cache_gb=r.kv_cache_gb,
        enforce_eager=r.enforce_eager,
        device=str(accelerator.device),
    )
    with unpartitioned():
        engine = ENGINES.get(r.engine)(model_path, options)
    base_dir = Path(recipe.source).resolve().parent if recipe.source else None
    scorer = Scorer(
        [RewardSpec(v.name, v.weight, dict(v.kwargs)) for v in recipe.rewards.verifiers],
        num_workers=recipe.rewards.num_workers,
        timeout_s=recipe.rewards.timeout_s,
        failure_score=recipe.rewards.failure_score,
        base_dir=base_dir,
    )
    ctx = UpdateContext(
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        recipe=recipe,
        micro_batch=layout["micro_batch"],
        grad_accum=layout["grad_accum"],
        ref_model=ref_model,
    )
    log = MetricsLogger(run_dir, accelerator.is_main_process, recipe.run.tensorboard)
    trainer = Trainer(recipe, ctx, engine, scorer, sampler, tokenizer, log, layout)
    if recipe.run.resume:
        state = load_latest(accelerator, run_dir)
        if state is not None:
            trainer.step = state["step"]
            sampler.load_state_dict(state["sampler"])
            sync_weights(trainer)
            if accelerator.is_main_process:
                print(f"resumed from step {trainer.step} in {run_dir}", flush=True)
    return trainer


def prepare_run_dir(run_dir: Path, recipe: Recipe, is_main: bool) -> None:
    """Create the run directory; refuse to mix a new run into an earlier one unless told how."""
    earlier = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if earlier and not (recipe.run.resume or recipe.run.overwrite):
        raise RecipeError(
            f"{recipe.source}: run.output_dir {run_dir} already holds a run; pass run.resume=true to "
            "continue it, run.overwrite=true to start over, or choose another run.output_dir"
        )
    if not is_main:
        return
    if earlier and recipe.run.overwrite and not recipe.run.resume:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))


def sync_weights(trainer: Trainer) -> float:
    """Push the current policy weights into this process's rollout engine; returns seconds taken."""
    start = time.perf_counter()
    with gathered_parameters(trainer.accelerator, trainer.ctx.model) as unwrapped:
        named = policy_state(unwrapped)
    trainer.engine.update_weights(named)
    return time.perf_counter() - start


def _global_mean_std(accelerator, values: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    everything = accelerator.gather(values.to(accelerator.device)).float().cpu()
    std = float(everything.std()) if everything.numel() > 1 else 0.0
    return float(everything.mean()), std, everything


def run_step(t: Trainer) -> dict[str, float]:
    """One RL step; returns its metrics (identical on every process)."""
    recipe, acc = t.recipe, t.accelerator
    timer = {"start": time.perf_counter()}

    # 1. prompts: every process draws the same global batch and keeps its slice
    rows = shard(t.sampler.next_batch(recipe.train.prompts_per_step), acc.process_index, acc.num_processes)
    prompt_ids = [row["prompt_ids"] for row in rows]

    # 2. rollouts
    r = recipe.rollout
    sampling = SamplingConfig(
        n=r.num_generations,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        max_tokens=r.max_tokens,
        stop=tuple(r.stop),
        seed=_seed_for(recipe.run.seed, t.step, acc.process_index),
    )
    completions = t.engine.generate(prompt_ids, sampling)
    timer["rollout"] = time.perf_counter()

    # 3. rewards
    scores = t.scorer.score([c.text for c in completions], [rows[c.prompt_index] for c in completions])
    timer["reward"] = time.perf_counter()
    if acc.is_main_process:
        _print_samples(t, rows, completions, scores)

    # 4. curriculum feedback: per-prompt pass rates from every process
    offset = acc.process_index * len(rows)
    batch = make_batch(prompt_ids, completions, scores.scores, _pad_id(t.tokenizer), group_offset=offset)
    correct = (batch.sequence_rewards >= recipe.rewards.correct_threshold).float()  # [N]
    stats = [
        {"index": row["index"], "pass_rate": float(correct[batch.group_index == i + offset].mean())}
        for i, row in enumerate(rows)
    ]
    t.sampler.update(gather_object(stats) if acc.num_processes > 1 else stats)

    # 5. advantages
    estimator = ADVANTAGES.get(recipe.algorithm.advantage)
    batch.advantages = estimator(
        AdvantageInputs(
            sequence_rewards=batch.sequence_rewards,
            group_index=batch.group_index,
            response_mask=batch.response_mask,
        ),
        **recipe.algorithm.advantage_kwargs,
    )

    # 6. policy update
    update_metrics = policy_update(t.ctx, batch)
    timer["update"] = time.perf_counter()

    # 7. weight sync
    sync_s = sync_weights(t)
    timer["sync"] = time.perf_counter()
    t.step += 1

    return _step_metrics(t, batch, scores, update_metrics, timer, sync_s)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _step_metrics(t: Trainer, batch, scores, update_metrics, timer, sync_s) -> dict[str, float]:
    acc = t.accelerator
    reward_mean, reward_std, rewards = _global_mean_std(acc, batch.sequence_rewards)
    lengths = acc.gather(batch.response_mask.sum(1).to(acc.device)).float().cpu()  # [N * processes]
    truncated = acc.gather(batch.truncated.float().to(acc.device)).cpu()
    local = {**update_metrics, **scores.metrics()}
    keys = sorted(local)
    values = torch.tensor([local[k] for k in keys], dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        values = acc.reduce(values, reduction="mean")
    rollout_s = timer["rollout"] - timer["start"]
    total_tokens = float(lengths.sum())
    metrics = dict(zip(keys, values.cpu().tolist(), strict=True))
    metrics.update(
        {
            "reward/mean": reward_mean,
            "reward/std": reward_std,
            "reward/accuracy": float((rewards >= t.recipe.rewards.correct_threshold).float().mean()),
            "response/length_mean": float(lengths.mean()),
            "response/length_max": float(lengths.max()),
            "response/truncated_frac": float(truncated.mean()),
            "time/rollout_s": rollout_s,
            "time/reward_s": timer["reward"] - timer["rollout"],
            "time/update_s": timer["update"] - timer["reward"],
            "time/sync_s": sync_s,
            "time/step_s": timer["sync"] - timer["start"],
            "perf/rollout_tokens_per_s": total_tokens / max(rollout_s, 1e-9),
            "perf/tokens_per_s": total_tokens / max(timer["sync"] - timer["start"], 1e-9),
            "train/lr": lr_of(t.ctx.optimizer),
            "train/step": float(t.step),
        }
    )
    return metrics


def _print_samples(t: Trainer, rows, completions, scores) -> None:
    for c, score in list(zip(completions, scores.scores, strict=True))[: t.recipe.run.log_samples]:
        print(f"  sample | prompt: {rows[c.prompt_index]['prompt'][-120:]!r}", flush=True)
        print(f"         | completion: {c.text[:200]!r} | reward {score:.3g}", flush=True)


def train(recipe: Recipe) -> Path:
    """Run ``recipe`` to completion; returns the run directory."""
    t = build(recipe)
    run_dir = Path(recipe.run.output_dir)
    acc = t.accelerator
    if acc.is_main_process:
        print(
            f"rlvr: {recipe.run.steps} steps, {acc.num_processes} process(es) on {acc.device}, "
            f"engine {recipe.rollout.engine}, {recipe.algorithm.advantage}/{recipe.algorithm.policy_loss}, "
            f"run dir {run_dir}",
            flush=True,
        )
    try:
        while t.step < recipe.run.steps:
            metrics = run_step(t)
            t.log.log(t.step, metrics)
            save_every = recipe.run.save_every
            if save_every and t.step % save_every == 0 and t.step < recipe.run.steps:
                save_checkpoint(
                    acc, run_dir, t.step, {"sampler": t.sampler.state_dict()}, recipe.run.keep_last
                )
        if recipe.run.save_every:
            save_checkpoint(acc, run_dir, t.step, {"sampler": t.sampler.state_dict()}, recipe.run.keep_last)
        if recipe.run.save_final:
            save_final_model(acc, t.ctx.model, t.tokenizer, run_dir / "final")
    finally:
        t.scorer.close()
        t.engine.close()
        t.log.close()
    acc.end_training()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        train(load_recipe(argv[0], argv[1:]))
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

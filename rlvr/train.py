"""Train a policy with RL from verifiable rewards, as a recipe describes.

    accelerate launch --config_file recipes/accelerate/zero2.yaml -m rlvr.train RECIPE.yaml [key=value ...]
    python -m rlvr.train RECIPE.yaml [key=value ...]          # one process, no launcher

One RL step, top to bottom (``run_step``): sample prompts -> generate G completions each -> score them ->
compute advantages -> update the policy -> push the new weights into the rollout engine -> log and
checkpoint. Every algorithmic choice is a registry name from the recipe.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from rlvr.algorithms import (
    ADVANTAGES,
    ENTROPY_CONTROLLERS,
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    TOKEN_WEIGHTS,
    AdvantageInputs,
    TokenWeightInputs,
    combine_token_weights,
    gae_returns,
)
from rlvr.algorithms.utils import needs_of
from rlvr.config import Recipe, RecipeError, dump_recipe, load_recipe
from rlvr.data import SAMPLERS, load_prompts
from rlvr.models import resolve_model
from rlvr.rewards import RewardSpec, Scorer
from rlvr.rollout import ENGINES, EngineOptions, RolloutEngine
from rlvr.trainer.batch import make_batch
from rlvr.trainer.checkpoint import load_latest, save_checkpoint, save_final_model
from rlvr.trainer.collect import collect
from rlvr.trainer.evaluation import PeriodicEvaluator
from rlvr.trainer.logprobs import behaviour_statistics
from rlvr.trainer.metrics import MetricsLogger
from rlvr.trainer.setup import (
    configure_deepspeed,
    load_policy,
    lr_of,
    make_accelerator,
    make_optimizer,
    make_reference,
    reset_optimizer_state,
    reset_reference,
    unpartitioned,
)
from rlvr.trainer.update import UpdateContext, forward_logprobs, forward_values, has_critic, policy_update
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
    kl_controller: object
    entropy_controller: object
    reward_models: list = dataclasses.field(default_factory=list)
    """(name, weight, model) of each learned reward model (rlvr.reward_models)."""
    evaluator: PeriodicEvaluator | None = None
    step: int = 0

    @property
    def accelerator(self):
        return self.ctx.accelerator


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

    algo = recipe.algorithm
    critic_path = None
    if "values" in needs_of(ADVANTAGES.get(algo.advantage)):
        with accelerator.main_process_first():
            critic_path = str(resolve_model(algo.critic.model)) if algo.critic.model else model_path
    model = load_policy(model_path, recipe, critic_path=critic_path)
    optimizer, scheduler = make_optimizer(model, recipe)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    ref_model = make_reference(accelerator, model_path, recipe) if algo.kl_coef > 0 else None
    kl_controller = KL_CONTROLLERS.get(algo.kl_controller)(coef=algo.kl_coef, **algo.kl_controller_kwargs)
    entropy_controller = ENTROPY_CONTROLLERS.get(algo.entropy_controller)(
        coef=algo.entropy_coef, **algo.entropy_controller_kwargs
    )

    r = recipe.rollout
    options = EngineOptions(
        dtype=r.dtype or recipe.model.dtype,
        max_model_len=r.max_model_len or recipe.data.max_prompt_tokens + r.max_tokens,
        seed=recipe.run.seed + accelerator.process_index,
        gpu_memory_utilization=r.gpu_memory_utilization,
        kv_cache_gb=r.kv_cache_gb,
        enforce_eager=r.enforce_eager,
        device=str(accelerator.device),
        temperature_schedule=r.ead is not None,
    )
    with unpartitioned():
        engine = ENGINES.get(r.engine)(model_path, options)
    base_dir = Path(recipe.source).resolve().parent if recipe.source else None
    scorer = Scorer(
        [RewardSpec(v.name, v.weight, dict(v.kwargs), v.route) for v in recipe.rewards.verifiers],
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
        kl_coef=kl_controller.value,
        entropy_coef=entropy_controller.value,
    )
    log = MetricsLogger(run_dir, accelerator.is_main_process, recipe.run.tensorboard)
    trainer = Trainer(
        recipe,
        ctx,
        engine,
        scorer,
        sampler,
        tokenizer,
        log,
        layout,
        kl_controller,
        entropy_controller,
        reward_models=_load_reward_models(recipe, accelerator),
    )
    if recipe.eval.every:
        trainer.evaluator = PeriodicEvaluator(recipe, engine, tokenizer, accelerator, options.max_model_len)
    if recipe.run.resume:
        state = load_latest(accelerator, run_dir)
        if state is not None:
            trainer.step = state["step"]
            sampler.load_state_dict(state["sampler"])
            kl_controller.load_state_dict(state.get("kl_controller", kl_controller.state_dict()))
            entropy_controller.load_state_dict(
                state.get("entropy_controller", entropy_controller.state_dict())
            )
            ctx.kl_coef, ctx.entropy_coef = kl_controller.value, entropy_controller.value
            sync_weights(trainer)
            if accelerator.is_main_process:
                print(f"resumed from step {trainer.step} in {run_dir}", flush=True)
    return trainer


def _load_reward_models(recipe: Recipe, accelerator) -> list:
    """Each ``rewards.reward_models`` entry, built on this process's device."""
    from rlvr.reward_models import build_reward_model

    def resolved(spec: dict) -> dict:
        spec = dict(spec)
        if "path" in spec:
            spec["path"] = str(resolve_model(spec["path"]))
        if "ensemble" in spec:
            spec["ensemble"] = [
                str(resolve_model(m)) if isinstance(m, str) else resolved(m) for m in spec["ensemble"]
            ]
        return spec

    models = []
    with unpartitioned(), accelerator.main_process_first():
        for rm in recipe.rewards.reward_models:
            model = build_reward_model(
                resolved(rm.model), device=accelerator.device, dtype=recipe.model.dtype
            )
            models.append((rm.name, rm.weight, model))
    return models


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


def _token_weight_entries(recipe: Recipe) -> list[tuple[object, dict]]:
    algo = recipe.algorithm
    entries = [(TOKEN_WEIGHTS.get(w.name), dict(w.kwargs)) for w in algo.token_weights]
    if algo.overlong.mask_truncated:
        entries.append((TOKEN_WEIGHTS.get("overlong_mask"), {}))
    return entries


def _proxy_kappa(recipe: Recipe, loss_fn) -> float | None:
    """Lp-Reg's min-p threshold when the loss reads proxy log-probs (the loss's own ``kappa`` argument)."""
    if "proxy_logprobs" not in needs_of(loss_fn):
        return None
    default = inspect.signature(loss_fn).parameters["kappa"].default
    return float(recipe.algorithm.policy_loss_kwargs.get("kappa", default))


def run_step(t: Trainer) -> dict[str, float]:
    """One RL step; returns its metrics (identical on every process)."""
    recipe, acc, ctx = t.recipe, t.accelerator, t.ctx
    algo = recipe.algorithm
    estimator = ADVANTAGES.get(algo.advantage)
    loss_fn = POLICY_LOSSES.get(algo.policy_loss)
    timer = {"start": time.perf_counter()}

    # 1-3. prompts -> completions -> rewards (+ dynamic sampling, overlong shaping, greedy baselines)
    groups, collect_metrics = collect(t, greedy_baseline="baseline_rewards" in needs_of(estimator))
    timer["rollout"] = time.perf_counter()
    if acc.is_main_process:
        _print_samples(t, groups)
    prompt_ids = [g.row["prompt_ids"] for g in groups]
    completions = [
        dataclasses.replace(c, prompt_index=i) for i, g in enumerate(groups) for c in g.completions
    ]
    rewards = [r for g in groups for r in g.rewards]
    offset = acc.process_index * len(groups)
    batch = make_batch(prompt_ids, completions, rewards, _pad_id(t.tokenizer), group_offset=offset)
    verdicts = torch.tensor([v for g in groups for v in g.verdicts])  # [N]
    mask = batch.response_mask  # [N, T]

    # 4. what the plug-ins need from the policy before it changes: one no-grad pass
    weight_entries = _token_weight_entries(recipe)
    kl_to_reward = algo.kl_placement == "reward" and ctx.kl_coef > 0
    kappa = _proxy_kappa(recipe, loss_fn)
    if weight_entries or kl_to_reward or kappa is not None or "old_logprobs" in needs_of(estimator):
        ctx.model.eval()
        stats = behaviour_statistics(
            ctx.model,
            batch.to(acc.device),
            ctx.micro_batch,
            recipe.rollout.temperature,
            entropy=bool(weight_entries),
            proxy_kappa=kappa,
        )
        batch.old_logprobs = stats["logprobs"].cpu()
        batch.old_entropy = stats["entropy"].cpu() if "entropy" in stats else None
        batch.proxy_logprobs = stats["proxy_logprobs"].cpu() if kappa is not None else None
    if ctx.kl_coef > 0:
        batch.ref_logprobs = forward_logprobs(
            ctx.ref_model, batch.to(acc.device), ctx.micro_batch, recipe.rollout.temperature
        ).cpu()
    if has_critic(ctx.model):
        ctx.model.eval()
        batch.old_values = forward_values(ctx.model, batch.to(acc.device), ctx.micro_batch).cpu()

    # 5. advantages (a KL penalty in the reward goes in first)
    sequence_rewards, token_rewards = batch.sequence_rewards, None
    extra_metrics: dict[str, float] = {}
    if kl_to_reward:
        kl = KL_ESTIMATORS.get(algo.kl_estimator)(batch.old_logprobs, batch.ref_logprobs) * mask  # [N, T]
        extra_metrics["actor/kl_reward_penalty"] = float(ctx.kl_coef * kl.sum(-1).mean())
        extra_metrics["actor/kl"] = float(kl.sum() / mask.sum().clamp(min=1))  # per token, as in the loss
        if "token_rewards" in needs_of(estimator):
            token_rewards = -ctx.kl_coef * kl
        else:
            sequence_rewards = sequence_rewards - ctx.kl_coef * kl.sum(-1)
    inputs = AdvantageInputs(
        sequence_rewards=sequence_rewards,
        group_index=batch.group_index,
        response_mask=mask,
        token_rewards=token_rewards,
        values=batch.old_values,
        old_logprobs=batch.old_logprobs,
        ref_logprobs=batch.ref_logprobs,
        baseline_rewards=_baselines(groups),
    )
    batch.advantages = estimator(inputs, **algo.advantage_kwargs)
    if batch.old_values is not None:
        batch.returns = gae_returns(inputs, **algo.advantage_kwargs)

    # 6. token selection / reweighting
    if weight_entries:
        weight_inputs = TokenWeightInputs(
            response_mask=mask,
            old_logprobs=batch.old_logprobs,
            engine_logprobs=batch.engine_logprobs,
            advantages=batch.advantages,
            truncated=batch.truncated,
            old_entropy=batch.old_entropy,
        )
        batch.token_weights, weight_metrics = combine_token_weights(weight_entries, weight_inputs)
        extra_metrics.update({f"tokens/{k}": float(v) for k, v in weight_metrics.items()})

    # 7. policy update
    update_metrics = policy_update(ctx, batch)
    timer["update"] = time.perf_counter()

    # 8. reference reset (ProRL), weight sync
    t.step += 1
    every = algo.reference_reset_every
    if every and ctx.ref_model is not None and t.step % every == 0:
        reset_reference(acc, ctx.model, ctx.ref_model)
        if algo.reset_optimizer_with_reference:
            reset_optimizer_state(ctx.optimizer)
        extra_metrics["actor/reference_reset"] = 1.0
    sync_s = sync_weights(t)
    timer["sync"] = time.perf_counter()

    metrics = _step_metrics(t, batch, verdicts, groups, {**update_metrics, **extra_metrics}, timer, sync_s)
    metrics.update(collect_metrics)

    # 9. coefficient controllers see the step's global measurements
    if "actor/kl" in metrics:
        ctx.kl_coef = t.kl_controller.update(metrics["actor/kl"], n_steps=len(batch) * acc.num_processes)
    if "actor/entropy" in metrics:
        ctx.entropy_coef = t.entropy_controller.update(metrics["actor/entropy"])
    return metrics


def _baselines(groups) -> torch.Tensor | None:
    if groups[0].baseline is None:
        return None
    return torch.tensor([g.baseline for g in groups for _ in g.completions], dtype=torch.float)  # [N]


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _step_metrics(t: Trainer, batch, verdicts, groups, update_metrics, timer, sync_s) -> dict[str, float]:
    acc = t.accelerator
    reward_mean, reward_std, rewards = _global_mean_std(acc, batch.sequence_rewards)
    lengths = acc.gather(batch.response_mask.sum(1).to(acc.device)).float().cpu()  # [N * processes]
    truncated = acc.gather(batch.truncated.float().to(acc.device)).cpu()
    all_verdicts = acc.gather(verdicts.float().to(acc.device)).cpu()
    # per-verifier means over the rows each scored (routing may leave a process without any): global sums
    names = [*t.scorer.names, *(name for name, _, _ in t.reward_models)]
    sums = torch.zeros(2 * len(names), dtype=torch.float64)
    for g in groups:
        for k, name in enumerate(names):
            scored = [v for v in g.per_reward.get(name, []) if v is not None]
            sums[k] += sum(scored)
            sums[len(names) + k] += len(scored)
    if acc.num_processes > 1:
        sums = acc.reduce(sums.to(acc.device), reduction="sum").cpu()
    local = dict(update_metrics)
    keys = sorted(local)
    values = torch.tensor([local[k] for k in keys], dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        values = acc.reduce(values, reduction="mean")
    rollout_s = timer["rollout"] - timer["start"]
    total_tokens = float(lengths.sum())
    metrics = dict(zip(keys, values.cpu().tolist(), strict=True))
    for k, name in enumerate(names):
        if sums[len(names) + k] > 0:
            metrics[f"reward/{name}/mean"] = float(sums[k] / sums[len(names) + k])
    metrics.update(
        {
            "reward/mean": reward_mean,
            "reward/std": reward_std,
            "reward/accuracy": float((all_verdicts >= t.recipe.rewards.correct_threshold).float().mean()),
            "response/length_mean": float(lengths.mean()),
            "response/length_max": float(lengths.max()),
            "response/truncated_frac": float(truncated.mean()),
            "time/rollout_s": rollout_s,
            "time/update_s": timer["update"] - timer["rollout"],
            "time/sync_s": sync_s,
            "time/step_s": timer["sync"] - timer["start"],
            "perf/rollout_tokens_per_s": total_tokens / max(rollout_s, 1e-9),
            "perf/tokens_per_s": total_tokens / max(timer["sync"] - timer["start"], 1e-9),
            "train/lr": lr_of(t.ctx.optimizer),
            "train/step": float(t.step),
        }
    )
    return metrics


def _print_samples(t: Trainer, groups) -> None:
    shown = [(g, c, r) for g in groups for c, r in zip(g.completions, g.rewards, strict=True)]
    for g, c, reward in shown[: t.recipe.run.log_samples]:
        print(f"  sample | prompt: {g.row['prompt'][-120:]!r}", flush=True)
        print(f"         | completion: {c.text[:200]!r} | reward {reward:.3g}", flush=True)


def _trainer_state(t: Trainer) -> dict:
    """What a checkpoint needs besides the accelerate state."""
    return {
        "sampler": t.sampler.state_dict(),
        "kl_controller": t.kl_controller.state_dict(),
        "entropy_controller": t.entropy_controller.state_dict(),
    }


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
            if t.evaluator is not None and t.evaluator.due(t.step, recipe.run.steps):
                start = time.perf_counter()
                metrics.update(t.evaluator.run())
                metrics["time/eval_s"] = time.perf_counter() - start
            t.log.log(t.step, metrics)
            save_every = recipe.run.save_every
            if save_every and t.step % save_every == 0 and t.step < recipe.run.steps:
                save_checkpoint(acc, run_dir, t.step, _trainer_state(t), recipe.run.keep_last)
        if recipe.run.save_every:
            save_checkpoint(acc, run_dir, t.step, _trainer_state(t), recipe.run.keep_last)
        if recipe.run.save_final:
            save_final_model(acc, t.ctx.model, t.tokenizer, run_dir / "final")
    finally:
        if t.evaluator is not None:
            t.evaluator.close()
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

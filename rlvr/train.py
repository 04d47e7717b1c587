"""Train a policy with RL from verifiable rewards, as a recipe describes.

    accelerate launch --config_file recipes/accelerate/zero2.yaml -m rlvr.train RECIPE.yaml [key=value ...]
    python -m rlvr.train RECIPE.yaml [key=value ...]          # one process, no launcher

One RL step, top to bottom (``run_step``): sample prompts -> generate G completions each -> score them ->
compute advantages -> update the policy -> push the new weights into the rollout engine -> log and
checkpoint. Every algorithmic choice is a registry name from the recipe.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from rlvr.algorithms import ADVANTAGES, POLICY_LOSSES, PREFERENCE_LOSSES, AdvantageInputs
from rlvr.algorithms.utils import needs_of
from rlvr.config import Recipe, RecipeError, load_recipe
from rlvr.console import is_main_rank, library_output_to, process_log_name, say
from rlvr.data import PromptStats, load_prompts
from rlvr.models import resolve_model
from rlvr.rollout import RolloutEngine
from rlvr.rollout.pool import RolloutServerError
from rlvr.scoring import RewardSpec, Scorer, ScoringError, build_reward_model
from rlvr.trainer.batch import batch_of_groups, pad_id
from rlvr.trainer.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    save_final_model,
)
from rlvr.trainer.collect import Prefetch, collect
from rlvr.trainer.components import Component, Requests, build_components, merge_requests, requests_of
from rlvr.trainer.distributed import gathered, global_means, global_sums, whole_batch
from rlvr.trainer.evaluation import PeriodicEvaluator
from rlvr.trainer.logprobs import BATCH_FIELDS, critic_output, fill_fields, policy_output, shares_prompts
from rlvr.trainer.metrics import MetricsLogger
from rlvr.trainer.preference import online_preference_update
from rlvr.trainer.run import (
    _apply_recipe_lrs,
    check_data,
    make_curriculum,
    record_resume,
    restore_curriculum,
    start_run,
)
from rlvr.trainer.setup import (
    load_policy,
    lr_of,
    make_engine,
    make_optimizer,
    reference_forward,
    reset_optimizer_state,
    reset_reference,
    unpartitioned,
)
from rlvr.trainer.update import UpdateContext, policy_update, update_needs
from rlvr.trainer.weights import policy_tensors

logger = logging.getLogger("rlvr")


@dataclass
class Trainer:
    """Everything one RL step touches; built by :func:`build`."""

    recipe: Recipe
    ctx: UpdateContext
    engine: RolloutEngine
    scorer: Scorer
    sampler: object
    stats: PromptStats
    """Per-prompt statistics (global over processes; the curriculum samplers read them)."""
    data_fingerprint: str
    """:meth:`rlvr.data.loading.PromptDataset.fingerprint` of the prompts (checked on resume)."""
    tokenizer: object
    log: MetricsLogger
    layout: dict[str, int]
    advantage: tuple[Callable, dict]
    """The configured advantage estimator: (function, bound hyperparameters)."""
    requests: Requests
    """Batch fields the chosen plug-ins read (field -> statistic parameters), filled before advantages."""
    forwards: dict[str, Callable]
    """The models the pre-update pass may run (:func:`rlvr.trainer.logprobs.fill_fields`)."""
    reward_models: list = dataclasses.field(default_factory=list)
    """(name, weight, model) of each learned reward model (rlvr.scoring.build_reward_model)."""
    evaluator: PeriodicEvaluator | None = None
    update: Callable = None  # type: ignore[assignment]
    """Steps 5-7 of the step: :func:`policy_gradient_update` or :func:`preference_pairs_update`."""
    preference_loss: tuple[Callable, dict] | None = None
    """Online preference training: (preference loss, bound hyperparameters)."""
    prefetch: Prefetch | None = None
    """Asynchronous training (train.async_steps): rollouts generated ahead of the step."""
    step: int = 0

    def __post_init__(self) -> None:
        if self.update is None:
            self.update = preference_pairs_update if self.preference_loss else policy_gradient_update

    @property
    def accelerator(self):
        return self.ctx.accelerator

    @property
    def components(self) -> list[Component]:
        return self.ctx.components


def build(recipe: Recipe) -> Trainer:
    """Create the accelerator, policy, optimizer, engine, scorer, data and sampler for ``recipe``."""
    layout = recipe.batch_layout(int(os.environ.get("WORLD_SIZE", "1")))
    accelerator, run_dir, changes, checkpoint = start_run(recipe, layout)
    with accelerator.main_process_first():
        model_path = str(resolve_model(recipe.model.name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = load_prompts(recipe.data, tokenizer)
    fingerprint = check_data(recipe, accelerator, checkpoint, dataset)
    stats, sampler = make_curriculum(recipe, dataset)

    algo = recipe.algorithm
    advantage = (ADVANTAGES.get(algo.advantage), ADVANTAGES.bind(algo.advantage, algo.advantage_kwargs))
    policy_loss = (
        POLICY_LOSSES.get(algo.policy_loss),
        POLICY_LOSSES.bind(algo.policy_loss, algo.policy_loss_kwargs),
    )

    def reset() -> None:  # ProRL: the reference becomes the current policy (called by the KL component)
        reset_reference(accelerator, model, ref_model)
        if algo.reset_optimizer_with_reference:
            reset_optimizer_state(optimizer)

    preference_loss = None
    if algo.preference is not None:  # online preference pairs: no advantages, no loss components
        name = algo.preference.loss
        preference_loss = (
            PREFERENCE_LOSSES.get(name),
            PREFERENCE_LOSSES.bind(name, algo.preference.loss_kwargs),
        )
        components = []
        requests = {field: {} for field in needs_of(preference_loss[0]) if field in BATCH_FIELDS}
    else:
        components = build_components(recipe, advantage, reset_reference=reset)
        requests = merge_requests(
            requests_of(*advantage),
            requests_of(*policy_loss),
            update_needs(recipe),
            *(c.needs for c in components),
        )
    # the models to build follow from the requested fields' sources (a critic for values, a reference)
    sources = {BATCH_FIELDS.get(name).model for name in requests if name in BATCH_FIELDS}
    critic_path = None
    if "critic" in sources:
        with accelerator.main_process_first():
            critic_path = str(resolve_model(algo.critic.model)) if algo.critic.model else model_path
    model = load_policy(model_path, recipe, critic_path=critic_path)
    optimizer, scheduler = make_optimizer(model, recipe)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    temperature = recipe.rollout.temperature
    forwards = {"policy": policy_output(model, temperature, shares_prompts(recipe))}
    ref_model = None
    if "reference" in sources:
        ref_model, forwards["reference"] = reference_forward(accelerator, model, model_path, recipe)
    if critic_path is not None:
        forwards["critic"] = critic_output(model)

    engine, options = make_engine(recipe, accelerator, model_path, run_dir)
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
        policy_loss=policy_loss,
        components=components,
    )
    log = MetricsLogger(run_dir, accelerator, recipe)
    trainer = Trainer(
        recipe,
        ctx,
        engine,
        scorer,
        sampler,
        stats,
        fingerprint,
        tokenizer,
        log,
        layout,
        advantage=advantage,
        requests=requests,
        forwards=forwards,
        reward_models=_load_reward_models(recipe, accelerator),
        preference_loss=preference_loss,
    )
    if recipe.eval.every:
        trainer.evaluator = PeriodicEvaluator(recipe, engine, tokenizer, accelerator, options.max_model_len)
    if checkpoint is not None:
        recipe_lrs = list(scheduler.base_lrs)  # this recipe's rates; load_state replaces them
        state = load_checkpoint(accelerator, checkpoint.path)
        _apply_recipe_lrs(scheduler, recipe_lrs)
        trainer.step = state["step"]
        restore_curriculum(recipe, state, sampler, stats)
        for component in components:
            if component.state_key in state:
                component.load_state_dict(state[component.state_key])
        dropped = log.resume_after(trainer.step)
        if accelerator.is_main_process:
            record_resume(run_dir, recipe, checkpoint, trainer.step, changes, dropped)
    if checkpoint is not None or recipe.rollout.mode == "server":
        sync_weights(trainer)  # the resumed policy; a server may hold another run's weights
    if recipe.train.async_steps:
        trainer.prefetch = Prefetch(trainer, recipe.train.async_steps, requests)
    return trainer


def _load_reward_models(recipe: Recipe, accelerator) -> list:
    """Each ``rewards.reward_models`` entry, built on this process's device."""

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


def sync_weights(trainer: Trainer) -> float:
    """Push the current policy weights into this process's rollout engine; returns seconds taken."""
    start = time.perf_counter()
    trainer.engine.update_weights(policy_tensors(trainer.accelerator, trainer.ctx.model))
    return time.perf_counter() - start


def run_step(t: Trainer) -> dict[str, float]:
    """One RL step; returns its metrics (identical on every process)."""
    acc, ctx = t.accelerator, t.ctx
    timer = {"start": time.perf_counter()}

    # 1-3. prompts -> completions -> rewards (dynamic sampling, reward shaping, fields collection provides)
    groups, collect_metrics = collect(t, t.requests)
    t.engine.release_memory()  # a GPU engine sharing its device frees its KV cache and weights
    timer["rollout"] = time.perf_counter()
    if acc.is_main_process:
        _print_samples(t, groups)
    offset = acc.process_index * len(groups)
    batch = batch_of_groups(groups, pad_id(t.tokenizer), group_offset=offset)  # on the CPU
    verdicts = torch.tensor([v for g in groups for v in g.verdicts])  # [N]

    # 4. what the plug-ins read from the models before the update: one no-grad pass per model
    ctx.model.eval()
    fill_fields(batch, t.requests, t.forwards, ctx.micro_batch, acc.device, t.recipe.train.sort_by_length)

    # 5-7. the update: advantages -> policy loss (or preference pairs -> preference loss); weight sync
    step_metrics = t.update(t, batch)
    timer["update"] = time.perf_counter()
    t.step += 1
    sync_s = sync_weights(t)
    timer["sync"] = time.perf_counter()

    metrics = _step_metrics(t, batch, verdicts, groups, step_metrics, timer, sync_s)
    metrics.update(collect_metrics)
    for component in t.components:
        metrics.update(component.report())

    # 8. the components see the step's global metrics (coefficient controllers, reference reset)
    samples = len(batch) * acc.num_processes
    for component in t.components:
        metrics.update(component.end_step(t.step, metrics, samples))
    return metrics


def policy_gradient_update(t: Trainer, batch) -> dict[str, float]:
    """Steps 5-7 of RL: advantages (from inputs the components may shape first, e.g. a KL penalty in the
    reward), what the components derive from them (critic returns, token weights), the policy update.

    Advantages and what the components derive are computed on the whole batch of all processes
    (:func:`~rlvr.trainer.distributed.whole_batch`), so batch statistics are those of the global batch;
    each process keeps its own rows for the update."""
    whole, own = whole_batch(t.accelerator, batch)
    inputs = AdvantageInputs.from_batch(whole)
    step_metrics: dict[str, float] = {}
    for component in t.components:
        inputs, shaped = component.shape(inputs, whole)
        step_metrics.update(shaped)
    estimator, estimator_kwargs = t.advantage
    whole.advantages = estimator(inputs, **estimator_kwargs)  # [N_all, T_all]
    for component in t.components:
        step_metrics.update(component.after_advantages(whole, inputs))
    for name in (f.name for f in dataclasses.fields(batch)):  # what this stage added: advantages, ...
        if getattr(batch, name) is None and getattr(whole, name) is not None:
            setattr(batch, name, own(getattr(whole, name)))  # [N, T]
    step_metrics.update(policy_update(t.ctx, batch))
    return step_metrics


def preference_pairs_update(t: Trainer, batch) -> dict[str, float]:
    """Steps 5-7 of online preference training: pairs from each prompt's scored samples, the preference
    loss on them (:func:`rlvr.trainer.preference.online_preference_update`)."""
    return online_preference_update(
        t.ctx, batch, t.preference_loss, t.recipe.algorithm.preference, t.recipe.rollout.num_generations
    )


def _step_metrics(t: Trainer, batch, verdicts, groups, local_metrics, timer, sync_s) -> dict[str, float]:
    acc = t.accelerator
    rewards = gathered(acc, batch.sequence_rewards)  # [N * processes]
    lengths = gathered(acc, batch.response_mask.sum(1))  # [N * processes]
    # prompt + response tokens, without padding: a pass over the batch (perf/update_tokens_run: the rows run)
    (update_tokens,) = global_sums(acc, [float(batch.prompt_mask.sum() + batch.response_mask.sum())])
    truncated = gathered(acc, batch.truncated)
    all_verdicts = gathered(acc, verdicts)
    # per-verifier means over the rows each scored (routing may leave a process without any): global sums
    names = [*t.scorer.names, *(name for name, _, _ in t.reward_models)]
    sums = [0.0] * (2 * len(names))
    for g in groups:
        for k, name in enumerate(names):
            scored = [v for v in g.per_reward.get(name, []) if v is not None]
            sums[k] += sum(scored)
            sums[len(names) + k] += len(scored)
    sums = global_sums(acc, sums)
    metrics = global_means(acc, local_metrics)
    for k, name in enumerate(names):
        if sums[len(names) + k] > 0:
            metrics[f"reward/{name}/mean"] = float(sums[k] / sums[len(names) + k])
    rollout_s = timer["rollout"] - timer["start"]
    total_tokens = float(lengths.sum())
    metrics.update(
        {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
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
            "perf/update_tokens": update_tokens,
            "train/lr": lr_of(t.ctx.optimizer),
            "train/step": float(t.step),
        }
    )
    return metrics


def _print_samples(t: Trainer, groups) -> None:
    shown = [(g, c, r) for g in groups for c, r in zip(g.completions, g.rewards, strict=True)]
    for g, c, reward in shown[: t.recipe.run.log_samples]:
        say(f"  sample | prompt: {g.row['prompt'][-120:]!r}")
        say(f"         | completion: {c.text[:200]!r} | reward {reward:.3g}")


def _trainer_state(t: Trainer) -> dict:
    """What a checkpoint needs besides the accelerate state: the sampler, the per-prompt statistics and
    every component's state."""
    state = {
        "sampler": t.sampler.state_dict(),
        "prompt_stats": t.stats.state_dict(),
        "data_fingerprint": t.data_fingerprint,
        "num_processes": t.accelerator.num_processes,
    }
    state.update({c.state_key: c.state_dict() for c in t.components if c.state_key})
    return state


def train(recipe: Recipe) -> Path:
    """Run ``recipe`` to completion; returns the run directory. A preference dataset (``data.format``
    pairs / unpaired) is trained offline by :func:`rlvr.preference.train_offline`. Library output goes to
    ``run_dir/logs/`` unless ``run.verbose`` (:mod:`rlvr.console`)."""
    run_dir = Path(recipe.run.output_dir)
    library_log = None if recipe.run.verbose else run_dir / "logs" / process_log_name()
    with library_output_to(library_log, show=is_main_rank()):
        if recipe.data.format != "prompts":
            from rlvr.preference import train_offline

            return train_offline(recipe)
        return _train_rl(recipe, run_dir)


def _train_rl(recipe: Recipe, run_dir: Path) -> Path:
    t = build(recipe)
    acc = t.accelerator
    if acc.is_main_process:
        say(
            f"rlvr: {recipe.run.steps} steps, {acc.num_processes} process(es) on {acc.device}, "
            f"engine {_engine_name(t)}, {_algorithm_name(recipe)}, run dir {run_dir}"
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
        t.log.finish(run_dir / "final" if recipe.run.save_final else None)
    finally:
        if t.evaluator is not None:
            t.evaluator.close()
        t.scorer.close()
        t.engine.close()
        t.log.close()
    acc.end_training()
    return run_dir


def _engine_name(t: Trainer) -> str:
    r = t.recipe.rollout
    if r.mode == "colocated":
        return r.engine
    count = len(t.engine.urls)
    return f"{r.engine} on {count} rollout server{'s' if count > 1 else ''}"


def _algorithm_name(recipe: Recipe) -> str:
    algo = recipe.algorithm
    if algo.preference is not None:
        return f"online {algo.preference.loss} pairs ({algo.preference.pairing})"
    return f"{algo.advantage}/{algo.policy_loss}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        train(load_recipe(argv[0], argv[1:]))
    except (RecipeError, ScoringError) as exc:  # a bad recipe, or a verifier failing on every sample
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RolloutServerError as exc:  # a rollout server died or stopped answering
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

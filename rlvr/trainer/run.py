"""Setting up and resuming a training run, shared by RL (:mod:`rlvr.train`) and offline preference
training (:mod:`rlvr.preference`): the accelerator and run directory, the checkpoint a resume continues
from (and the refusals, before any model loads), the data fingerprint check, the sampler with its
per-prompt statistics, and the record a resume leaves.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from accelerate.utils import set_seed

from rlvr.config import Recipe, RecipeError, dump_recipe
from rlvr.console import is_main_rank, say
from rlvr.data import PromptStats, make_sampler
from rlvr.trainer.checkpoint import (
    STATE_FILE,
    CheckpointError,
    Choice,
    checkpoint_dirs,
    choose_checkpoint,
    describe_change,
    resume_changes,
)
from rlvr.trainer.distributed import gathered_objects
from rlvr.trainer.metrics import tracker_dir
from rlvr.trainer.setup import (
    bf16_is_native,
    configure_deepspeed,
    make_accelerator,
    resolve_auto_precision,
    warn_if_async_is_uncorrected,
    warn_if_bf16_is_emulated,
)


def start_run(recipe: Recipe, layout: dict[str, int]) -> tuple:
    """The accelerator (DeepSpeed told the batch layout), the seed, the run directory and, when resuming,
    the changed recipe keys and the checkpoint to load, chosen before anything loads (refusals are quick).
    Returns ``(accelerator, run_dir, changes, checkpoint)``; ``changes`` and ``checkpoint`` are None for a
    run that starts at step 1."""
    run_dir = Path(recipe.run.output_dir)
    chosen = resolve_auto_precision(recipe, bf16_is_native())  # before recipe.yaml is written
    if chosen and is_main_rank():
        say(chosen)
    accelerator = make_accelerator(
        layout["grad_accum"], recipe.train.mixed_precision, recipe.run.report_to, tracker_dir(run_dir)
    )
    if accelerator.is_main_process:
        warn_if_bf16_is_emulated(recipe, accelerator.mixed_precision, accelerator.device.type == "cpu")
        warn_if_async_is_uncorrected(recipe)
    configure_deepspeed(accelerator, layout["micro_batch"], layout["grad_accum"], recipe)
    set_seed(recipe.run.seed, device_specific=False)
    changes = prepare_run_dir(run_dir, recipe, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    checkpoint = None
    if changes is not None:
        try:
            checkpoint = choose_checkpoint(accelerator, run_dir)
        except CheckpointError as exc:
            raise RecipeError(f"{recipe.source}: run.resume: {exc}") from None
        _check_process_count(recipe, checkpoint, accelerator.num_processes)
    return accelerator, run_dir, changes, checkpoint


def check_data(recipe: Recipe, accelerator, checkpoint, dataset) -> str:
    """The data's fingerprint, after checking that every process loaded the same rows in the same order
    and that a resumed run trains on the rows of its checkpoint."""
    fingerprint = dataset.fingerprint()
    if len(set(gathered_objects(accelerator, [fingerprint]))) > 1:
        raise RecipeError(
            f"{recipe.source}: data: the processes loaded different rows (a hub dataset or generator that "
            "is not deterministic?); every process must hold the same rows in the same order"
        )
    _check_same_prompts(recipe, checkpoint, fingerprint)
    return fingerprint


def make_curriculum(recipe: Recipe, dataset) -> tuple[PromptStats, object]:
    """The per-prompt statistics and the recipe's sampler over ``dataset`` (a sampler's complaint about the
    data, e.g. a missing difficulty column, is a RecipeError naming the sampler.kwargs key)."""
    s = recipe.sampler
    stats = PromptStats([row["data_source"] for row in dataset], ema_weight=s.ema_weight, window=s.window)
    try:
        sampler = make_sampler(s.name, dataset, stats, seed=recipe.run.seed, **s.kwargs)
    except ValueError as exc:
        message = str(exc)
        if not message.startswith("sampler."):
            message = f"sampler.kwargs: {message}"
        raise RecipeError(f"{recipe.source}: {message}") from None
    return stats, sampler


def restore_curriculum(recipe: Recipe, state: dict, sampler, stats: PromptStats) -> None:
    """Restore the sampler and the per-prompt statistics of a checkpoint; one of another sampler or size
    is a RecipeError."""
    try:
        sampler.load_state_dict(state["sampler"])
        if "prompt_stats" in state:  # checkpoints before per-prompt statistics have none
            stats.load_state_dict(state["prompt_stats"])
    except ValueError as exc:
        raise RecipeError(f"{recipe.source}: run.resume: {exc}") from None


def _saved_state(recipe: Recipe, checkpoint) -> dict:
    path = checkpoint.path / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{recipe.source}: run.resume: {path} cannot be read ({exc})") from None


def _check_same_prompts(recipe: Recipe, checkpoint, fingerprint: str) -> None:
    """A resume trains on the same prompts in the same order: the sampler's state and the per-prompt
    statistics are keyed by position (checked before the model loads)."""
    if checkpoint is None:
        return
    saved = _saved_state(recipe, checkpoint).get("data_fingerprint")
    if saved is not None and saved != fingerprint:
        raise RecipeError(
            f"{recipe.source}: run.resume: the prompts differ from those of {checkpoint.path.name} (the data "
            "file or its generation changed); its sampler state and per-prompt statistics belong to those "
            "prompts: restore the data, or start a new run"
        )


def _check_process_count(recipe: Recipe, checkpoint, num_processes: int) -> None:
    """A resume runs on as many processes as the checkpointed run: the per-process batch layout, seeds and
    prompt shards (and ZeRO's partitions) depend on it."""
    if checkpoint is None:
        return
    saved = _saved_state(recipe, checkpoint).get("num_processes")
    if saved is not None and saved != num_processes:
        raise RecipeError(
            f"{recipe.source}: run.resume: {checkpoint.path.name} was written by {saved} process(es), this "
            f"launch has {num_processes}; a resumed run keeps its process count (batch layout, seeds, "
            "ZeRO partitions): launch with the same number of processes, or start a new run"
        )


def _apply_recipe_lrs(scheduler, base_lrs: list[float]) -> None:
    """Make the restored schedule follow this recipe's rates (``train.lr``, ``algorithm.critic.lr``) and
    warm-up: the base rates come from the recipe, the step count from the checkpoint (a no-op when nothing
    changed)."""
    scheduler.base_lrs = list(base_lrs)
    groups = scheduler.optimizer.param_groups
    for group, base, factor in zip(groups, base_lrs, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]


def prepare_run_dir(run_dir: Path, recipe: Recipe, is_main: bool) -> dict[str, tuple] | None:
    """Create the run directory; refuse to mix a new run into an earlier one unless told how.

    Returns None for a run that starts at step 1 (its ``recipe.yaml`` is written here), or, when resuming
    a run that has a checkpoint, the recipe keys changed since then (``{key: (old, new)}``, all allowed by
    :data:`rlvr.trainer.checkpoint.RESUME_MAY_CHANGE`; ``recipe.yaml`` is rewritten once the checkpoint
    is loaded, by :func:`record_resume`).

    Raises:
        RecipeError: the directory holds a run and neither resume nor overwrite is set; resume is set but
            there is no checkpoint although metrics were logged; or the resume changes a key it must keep.
    """
    earlier = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if earlier and not (recipe.run.resume or recipe.run.overwrite):
        raise RecipeError(
            f"{recipe.source}: run.output_dir {run_dir} already holds a run; pass run.resume=true to "
            "continue it, run.overwrite=true to start over, or choose another run.output_dir"
        )
    changes = None
    if recipe.run.resume:
        if checkpoint_dirs(run_dir):
            earlier_recipe = run_dir / "recipe.yaml"
            if earlier_recipe.is_file():
                changes = resume_changes(earlier_recipe, recipe)
            else:
                changes = {}
                if is_main:
                    say(f"note: {earlier_recipe} is missing; the recipe cannot be compared")
        elif (run_dir / "metrics.jsonl").exists():
            raise RecipeError(
                f"{recipe.source}: run.resume: {run_dir} holds metrics.jsonl but no complete checkpoint "
                "(checkpoints are saved every run.save_every steps and at the end; none with "
                "run.save_every=0), so there is nothing to resume from; pass run.overwrite=true (without "
                "run.resume) to start over, or choose another run.output_dir"
            )
        elif is_main:
            say(f"run.resume: nothing to resume in {run_dir} (no checkpoint); starting at step 1")
    if not is_main:
        return changes
    if earlier and recipe.run.overwrite and not recipe.run.resume:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        for folder in ("plots", "trackers", "tensorboard"):
            shutil.rmtree(run_dir / folder, ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        (run_dir / "resumes.jsonl").unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if changes is None:
        (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    return changes


def record_resume(
    run_dir: Path, recipe: Recipe, checkpoint: Choice, step: int, changes: dict[str, tuple], dropped: int
) -> None:
    """Say what this resume did, and keep it in the run directory: ``recipe.yaml`` becomes the recipe that
    runs from now on, and ``resumes.jsonl`` gets one row per resume (the restored step and checkpoint, the
    changed keys with old and new values, damaged checkpoints skipped, metric rows dropped)."""
    say(f"resumed from step {step} in {run_dir} ({checkpoint.path.name})")
    for key, (old, new) in changes.items():
        say(f"run.resume: {describe_change(key, old, new)}")
    if dropped:
        say(f"run.resume: dropped {dropped} metrics.jsonl row(s) logged after step {step}")
    row = {
        "time": round(time.time(), 3),
        "step": step,
        "checkpoint": checkpoint.path.name,
        "changed": {key: {"old": old, "new": new} for key, (old, new) in changes.items()},
        "skipped_checkpoints": checkpoint.skipped,
        "dropped_metrics_rows": dropped,
    }
    with (run_dir / "resumes.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))

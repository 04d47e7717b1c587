"""Offline preference training (DPO, IPO, SimPO, ORPO, RPO, KTO, INPO) from a dataset of pairs or of
labelled responses, on the same accelerate + DeepSpeed stack as RL.

    rlvr train RECIPE.yaml                      # a recipe with data.format: pairs | unpaired
    accelerate launch --config_file recipes/accelerate/zero3.yaml -m rlvr.train RECIPE.yaml

:func:`rlvr.train.train` hands a recipe whose ``data.format`` is ``pairs`` or ``unpaired`` to
:func:`train_offline`. One step, top to bottom (:func:`run_offline_step`): draw ``train.prompts_per_step``
rows from the sampler -> this process's slice as a batch (:func:`rlvr.trainer.preference.pair_batch`) ->
the reference log-probs (a no-grad pass, or precomputed once) -> the preference update -> log, evaluate
held-out pairs, checkpoint. There is no rollout engine. Online preference training from verifier-scored
samples runs in the RL loop instead (``data.format: prompts`` with ``algorithm.preference``).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from rlvr.algorithms.preference import PREFERENCE_LOSSES
from rlvr.algorithms.utils import needs_of
from rlvr.config import Recipe, RecipeError
from rlvr.console import say
from rlvr.data import shard
from rlvr.data.pairs import load_pairs
from rlvr.models import resolve_model
from rlvr.trainer.batch import pad_id
from rlvr.trainer.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    save_final_model,
)
from rlvr.trainer.distributed import gathered, global_sums
from rlvr.trainer.logprobs import fill_fields, policy_output, response_logprobs, shares_prompts
from rlvr.trainer.metrics import MetricsLogger
from rlvr.trainer.preference import (
    mismatched,
    pair_batch,
    preference_inputs,
    preference_update,
    sequence_logps,
)
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
    make_optimizer,
    reference_forward,
)
from rlvr.trainer.update import UpdateContext
from rlvr.types import RolloutBatch


def offline_layout(recipe: Recipe, world_size: int) -> dict[str, int]:
    """Per-process sizes of one offline step: ``rows`` (2 per pair, 1 per unpaired response), the
    micro-batch in rows (whole pairs) and the accumulation steps of one optimizer step."""
    t, group = recipe.train, 2 if recipe.data.format == "pairs" else 1
    if t.prompts_per_step % world_size:
        raise RecipeError(
            f"{recipe.source}: train.prompts_per_step={t.prompts_per_step} (rows per step) must be divisible "
            f"by the number of processes ({world_size})"
        )
    rows = t.prompts_per_step // world_size * group
    if rows % (t.num_mini_batches * group):
        raise RecipeError(
            f"{recipe.source}: train.num_mini_batches={t.num_mini_batches} must divide the "
            f"{rows // group} rows per process and step"
        )
    mini = rows // t.num_mini_batches
    micro = min(t.micro_batch_size, mini)
    if micro % group or mini % micro:
        raise RecipeError(
            f"{recipe.source}: train.micro_batch_size={t.micro_batch_size} must be a multiple of {group} (a "
            f"pair is {group} sequences) that divides the {mini} sequences of a mini-batch per process"
        )
    return {"rows": rows, "group": group, "micro_batch": micro, "grad_accum": mini // micro}


@dataclass
class OfflineTrainer:
    """Everything an offline preference step touches; built by :func:`build_offline`."""

    recipe: Recipe
    ctx: UpdateContext
    sampler: object
    stats: object
    data_fingerprint: str
    tokenizer: object
    log: MetricsLogger
    layout: dict[str, int]
    loss: tuple
    needs: frozenset[str]
    reference: Callable | None
    """The frozen reference's forward (None: the loss is reference-free, or its log-probs are precomputed)."""
    eval_rows: list | None = None
    step: int = 0

    @property
    def accelerator(self):
        return self.ctx.accelerator


def build_offline(recipe: Recipe) -> OfflineTrainer:
    """Accelerator, policy, optimizer, preference data, sampler and (unless the loss is reference-free or
    its log-probs were precomputed) the frozen reference model."""

    layout = offline_layout(recipe, int(os.environ.get("WORLD_SIZE", "1")))
    accelerator, run_dir, changes, checkpoint = start_run(recipe, layout)
    with accelerator.main_process_first():
        model_path = str(resolve_model(recipe.model.name_or_path))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dataset = load_pairs(recipe.data, tokenizer)
    fingerprint = check_data(recipe, accelerator, checkpoint, dataset)
    eval_rows = None
    if recipe.eval.pairs is not None:
        eval_cfg = recipe.data.model_copy(update={"path": recipe.eval.pairs, "limit": recipe.eval.limit})
        eval_rows = list(load_pairs(eval_cfg, tokenizer))
    stats, sampler = make_curriculum(recipe, dataset)

    pref = recipe.algorithm.preference
    loss_fn = PREFERENCE_LOSSES.get(pref.loss)
    loss = (loss_fn, PREFERENCE_LOSSES.bind(pref.loss, pref.loss_kwargs))
    needs = needs_of(loss_fn)
    model = load_policy(model_path, recipe)
    optimizer, scheduler = make_optimizer(model, recipe)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    reference = None
    if "ref_logprobs" in needs:
        _, reference = reference_forward(accelerator, model, model_path, recipe)
    ctx = UpdateContext(
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        recipe=recipe,
        micro_batch=layout["micro_batch"],
        grad_accum=layout["grad_accum"],
        policy_loss=(None, {}),
    )
    log = MetricsLogger(run_dir, accelerator, recipe)
    t = OfflineTrainer(
        recipe, ctx, sampler, stats, fingerprint, tokenizer, log, layout, loss, needs, reference
    )
    if reference is not None and eval_rows is not None:
        eval_rows = _with_reference(t, eval_rows)  # fixed held-out pairs: one pass, kept
    if reference is not None and pref.precompute_reference:
        if accelerator.is_main_process:
            say(f"precomputing reference log-probs of {len(dataset)} rows")
        dataset.rows = _with_reference(t, dataset.rows)
        t.reference = None  # the reference copy (if any) is freed
        del reference
        gc.collect()
    t.eval_rows = eval_rows
    if checkpoint is not None:
        recipe_lrs = list(scheduler.base_lrs)
        state = load_checkpoint(accelerator, checkpoint.path)
        _apply_recipe_lrs(scheduler, recipe_lrs)
        t.step = state["step"]
        restore_curriculum(recipe, state, sampler, stats)
        dropped = log.resume_after(t.step)
        if accelerator.is_main_process:
            record_resume(run_dir, recipe, checkpoint, t.step, changes, dropped)
    return t


def _with_reference(t: OfflineTrainer, rows: list[dict]) -> list[dict]:
    """``rows`` with the reference's per-token log-probs of each response (``ref_<side>_logprobs``),
    computed ``micro_batch`` rows at a time by every process (the same forwards everywhere, as ZeRO-3
    needs)."""
    acc, micro = t.ctx.accelerator, t.layout["micro_batch"]
    forward = {"reference": t.reference}
    out = []
    for i in range(0, len(rows), max(1, micro // t.layout["group"])):
        chunk = rows[i : i + max(1, micro // t.layout["group"])]
        batch, _, _ = pair_batch(chunk, pad_id(t.tokenizer))
        fill_fields(batch, {"ref_logprobs": {}}, forward, micro, device=acc.device)
        position = 0
        for row in chunk:
            row = dict(row)
            for side in ("chosen", "rejected") if "chosen_ids" in row else ("completion",):
                n = len(row[f"{side}_ids"])
                row[f"ref_{side}_logprobs"] = batch.ref_logprobs[position, :n].tolist()
                position += 1
            out.append(row)
    return out


def _attach_reference(batch: RolloutBatch, rows: list[dict]) -> None:
    """Precomputed reference log-probs of ``rows`` as ``batch.ref_logprobs`` (rows in pair_batch order)."""
    ref = torch.zeros_like(batch.response_mask)  # [N, T]
    position = 0
    for row in rows:
        for side in ("chosen", "rejected") if "chosen_ids" in row else ("completion",):
            values = row[f"ref_{side}_logprobs"]
            ref[position, : len(values)] = torch.tensor(values)
            position += 1
    batch.ref_logprobs = ref


def _prepare(t: OfflineTrainer, rows: list[dict], group_offset: int = 0):
    """The batch of ``rows`` with what the loss reads filled in; returns (batch, chosen, rejected)."""
    acc = t.ctx.accelerator
    batch, chosen, rejected = pair_batch(rows, pad_id(t.tokenizer), group_offset=group_offset)
    if "ref_logprobs" in t.needs:
        if "ref_chosen_logprobs" in rows[0] or "ref_completion_logprobs" in rows[0]:
            _attach_reference(batch, rows)
        else:
            forward = {"reference": t.reference}
            fill_fields(batch, {"ref_logprobs": {}}, forward, t.layout["micro_batch"], device=acc.device)
    if "old_logprobs" in t.needs:  # offline, the iteration starts from the reference: pi_t = pi_ref
        batch.old_logprobs = batch.ref_logprobs
    return batch, chosen, rejected


@torch.no_grad()
def _kl_logps(t: OfflineTrainer, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO's mismatched pairs of the whole step: (policy, reference) summed log-probs, gathered from every
    process (each computes its slice)."""
    acc, micro = t.ctx.accelerator, t.layout["micro_batch"]
    shifted = mismatched(batch)
    temperature = t.recipe.rollout.temperature
    t.ctx.model.eval()
    share = shares_prompts(t.recipe)
    forwards = {"policy": policy_output(t.ctx.model, temperature, share), "reference": t.reference}
    fill_fields(shifted, {"old_logprobs": {}, "ref_logprobs": {}}, forwards, micro, device=acc.device)
    policy = sequence_logps(shifted.old_logprobs, shifted.response_mask)  # [N]
    reference = sequence_logps(shifted.ref_logprobs, shifted.response_mask)  # [N]
    return gathered(acc, policy), gathered(acc, reference)


def run_offline_step(t: OfflineTrainer) -> dict[str, float]:
    """One offline preference step; returns its metrics (identical on every process)."""
    acc = t.ctx.accelerator
    start = time.perf_counter()
    rows = t.sampler.next_batch(t.recipe.train.prompts_per_step, t.step)
    mine = shard(rows, acc.process_index, acc.num_processes)
    batch, chosen, rejected = _prepare(t, mine, group_offset=acc.process_index * len(mine))
    kl = _kl_logps(t, batch) if "kl_logps" in t.needs else None
    metrics = preference_update(
        t.ctx, batch, chosen, rejected, t.loss, t.layout["group"], paired=t.layout["group"] == 2, kl_logps=kl
    )
    t.step += 1
    lengths = gathered(acc, batch.response_mask.sum(1))
    count = global_sums(acc, [float(len(mine))])[0]
    metrics.update(
        {
            "preference/rows": count,
            "response/length_mean": float(lengths.mean()),
            "time/update_s": time.perf_counter() - start,
            "time/step_s": time.perf_counter() - start,
            "train/lr": lr_of(t.ctx.optimizer),
            "train/step": float(t.step),
        }
    )
    return metrics


@torch.no_grad()
def evaluate_pairs(t: OfflineTrainer) -> dict[str, float]:
    """The loss's metrics on the held-out rows (``eval.pairs``), with the current policy: every process
    computes all of them (the same forwards everywhere)."""
    acc, rows = t.ctx.accelerator, t.eval_rows
    loss_fn, kwargs = t.loss
    t.ctx.model.eval()
    temperature = t.recipe.rollout.temperature
    batch, chosen, rejected = _prepare(t, rows)  # one batch: fill_fields runs it in micro-batches
    micro = t.layout["micro_batch"]
    seqs = []
    for i in range(0, len(batch), micro):
        chunk = batch.select(slice(i, i + micro)).to(acc.device)
        logprobs, _ = response_logprobs(
            t.ctx.model, chunk, temperature, share_prompts=shares_prompts(t.recipe)
        )  # [n, T]
        seqs.append(sequence_logps(logprobs, chunk.response_mask).cpu())
    inputs = preference_inputs(torch.cat(seqs), batch, chosen, rejected, (torch.zeros(0), torch.zeros(0)))
    per_pair, metrics = loss_fn(inputs, **kwargs)
    result = {f"eval/pairs/{key}": float(value) for key, value in metrics.items()}
    result["eval/pairs/loss"] = float(per_pair.mean())
    return result


def train_offline(recipe: Recipe) -> Path:
    """Run an offline preference recipe to completion; returns the run directory."""
    t = build_offline(recipe)
    run_dir = Path(recipe.run.output_dir)
    acc = t.ctx.accelerator
    if acc.is_main_process:
        say(
            f"rlvr: {recipe.run.steps} steps of offline {recipe.algorithm.preference.loss} on "
            f"{recipe.data.format}, {acc.num_processes} process(es) on {acc.device}, run dir {run_dir}"
        )
    state = lambda: {  # noqa: E731
        "sampler": t.sampler.state_dict(),
        "data_fingerprint": t.data_fingerprint,
        "num_processes": acc.num_processes,
    }
    try:
        while t.step < recipe.run.steps:
            metrics = run_offline_step(t)
            every = recipe.eval.every
            if t.eval_rows is not None and every and (t.step % every == 0 or t.step == recipe.run.steps):
                metrics.update(evaluate_pairs(t))
            t.log.log(t.step, metrics)
            save_every = recipe.run.save_every
            if save_every and t.step % save_every == 0 and t.step < recipe.run.steps:
                save_checkpoint(acc, run_dir, t.step, state(), recipe.run.keep_last)
        if recipe.run.save_every:
            save_checkpoint(acc, run_dir, t.step, state(), recipe.run.keep_last)
        if recipe.run.save_final:
            save_final_model(acc, t.ctx.model, t.tokenizer, run_dir / "final")
        t.log.finish(run_dir / "final" if recipe.run.save_final else None)
    finally:
        t.log.close()
    acc.end_training()
    return run_dir

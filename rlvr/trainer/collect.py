"""Rollout collection for one RL step: prompts -> G scored completions each, with DAPO's dynamic sampling.

Every process draws the same global prompt batch from the sampler and keeps its slice (:func:`shard`), so
sampler state stays identical everywhere. Without dynamic sampling that is one round. With it
(``algorithm.dynamic_sampling``, DAPO arXiv 2503.14476), groups whose rewards are all equal are dropped and
further rounds are drawn until every process has its share of informative groups, or ``max_rounds`` is
reached; a process that is short then fills its batch with dropped groups (their group-relative advantage
is 0), so every process trains on the same number of sequences, as ZeRO's fixed batch layout requires.

Verifier failures of the step are counted by kind over every scoring call and every process
(``reward/failures/<kind>``); a verifier failing on more than ``rewards.max_failure_frac`` of its calls is
warned about, one failing on all of them stops the run (:class:`rlvr.scoring.ScoringError`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import queue
import threading
import time
from collections.abc import Collection
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rlvr.algorithms import informative_groups, soft_overlong_penalty
from rlvr.data import shard
from rlvr.rollout import Completion, EADSchedule, SamplingConfig, ead_decay
from rlvr.scoring import FailureTally
from rlvr.trainer.distributed import gathered_objects, global_max, global_sums

logger = logging.getLogger(__name__)


@dataclass
class Group:
    """One prompt and its G scored completions."""

    row: dict[str, Any]
    completions: list[Completion]
    rewards: list[float]
    """Training rewards: the verifiers' weighted score, plus weighted reward-model scores and reward
    shaping (overlong punishment)."""
    verdicts: list[float]
    """The verifiers' weighted score alone (accuracy, curriculum pass rates)."""
    per_reward: dict[str, list[float]] = field(default_factory=dict)
    baseline: float | None = None
    """Reward of the greedy completion of the same prompt (ReMax), when an estimator needs it."""


def seed_for(*parts: int) -> int:
    """A 31-bit seed derived from integers (stable across processes and runs)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def sampling_config(recipe, seed: int, step: int) -> SamplingConfig:
    """The recipe's sampling settings at training step ``step`` (EAD's decay grows with the step)."""
    r = recipe.rollout
    schedule = None
    if r.ead is not None:
        e = r.ead
        decay = e.scale * ead_decay(step, d0=e.d0, growth=e.growth, d_max=e.d_max)
        schedule = EADSchedule(
            decay=decay, tau_max=e.tau_max, tau_min=e.tau_min, warmup_tokens=e.warmup_tokens
        )
    return SamplingConfig.from_settings(r, n=r.num_generations, seed=seed, temperature_schedule=schedule)


def generate_groups(
    t,
    rows: list[dict],
    seed: int,
    step: int,
    greedy_baseline: bool,
    timer: dict[str, float],
    failures: FailureTally,
) -> list[Group]:
    """Generate and score G completions for each of ``rows``; returns the groups.

    ``timer["reward_s"]`` accumulates the seconds spent in the verifiers, ``failures`` their calls and
    failures.
    """
    recipe = t.recipe
    sampling = sampling_config(recipe, seed, step)
    prompts = [row["prompt_ids"] for row in rows]
    completions = t.engine.generate(prompts, sampling)
    greedy = dataclasses.replace(sampling, n=1, temperature=0.0, seed=None, temperature_schedule=None)
    best = t.engine.generate(prompts, greedy) if greedy_baseline else []
    if not rows:  # the engine calls were still made: an engine shared by processes runs them together
        return []
    start = time.perf_counter()
    scores = t.scorer.score([c.text for c in completions], [rows[c.prompt_index] for c in completions])
    timer["reward_s"] += time.perf_counter() - start
    failures.add(scores)
    rewards = list(scores.scores)
    per_reward = dict(scores.per_reward)
    if t.reward_models:
        field = recipe.data.prompt_field
        questions = [
            str(rows[c.prompt_index].get(field, rows[c.prompt_index]["prompt"])) for c in completions
        ]
        for name, weight, model in t.reward_models:
            model_scores = model.score(questions, [c.text for c in completions]).tolist()
            per_reward[name] = model_scores
            rewards = [r + weight * m for r, m in zip(rewards, model_scores, strict=True)]
    overlong = recipe.algorithm.overlong
    if overlong.buffer_len:
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.float)
        penalty = soft_overlong_penalty(
            lengths,
            max_len=recipe.rollout.max_tokens,
            buffer_len=overlong.buffer_len,
            penalty=overlong.penalty,
        )
        rewards = [r + float(p) for r, p in zip(rewards, penalty, strict=True)]
    baselines: list[float | None] = [None] * len(rows)
    if greedy_baseline:
        start = time.perf_counter()
        greedy_scores = t.scorer.score([c.text for c in best], [rows[c.prompt_index] for c in best])
        timer["reward_s"] += time.perf_counter() - start
        failures.add(greedy_scores)
        for c, score in zip(best, greedy_scores.scores, strict=True):
            baselines[c.prompt_index] = float(score)
    groups = [
        Group(row=row, completions=[], rewards=[], verdicts=[], baseline=baselines[i])
        for i, row in enumerate(rows)
    ]
    for i, c in enumerate(completions):
        g = groups[c.prompt_index]
        g.completions.append(c)
        g.rewards.append(rewards[i])
        g.verdicts.append(float(scores.scores[i]))
        for name, values in per_reward.items():
            g.per_reward.setdefault(name, []).append(values[i])
    return groups


def collect(t, needs: Collection[str] = ()) -> tuple[list[Group], dict[str, float]]:
    """This process's groups for the current step and the collection metrics (identical on every process).

    ``needs`` are the batch fields the step's plug-ins read; collection provides ``baseline_rewards`` (the
    verifiers' score of a greedy completion of each prompt, ReMax) when it is among them.
    """
    greedy_baseline = "baseline_rewards" in needs
    recipe, acc = t.recipe, t.accelerator
    ds = recipe.algorithm.dynamic_sampling
    quota = t.layout["prompts"]  # groups per process
    per_round = recipe.train.prompts_per_step
    if ds.enabled:
        per_round = math.ceil(per_round * ds.oversample / acc.num_processes) * acc.num_processes
    kept: list[Group] = []
    dropped: list[Group] = []
    rounds = 0
    failures = t.scorer.failure_tally()
    timer = {"reward_s": 0.0}
    generated_groups = 0
    curriculum: dict[str, float] = {}
    drawn: list[dict] = []  # the global batches of every round (the same on every process)
    zero_variance = 0
    idle_rounds = 0  # rounds this process took part in with no rows (its quota was full)
    while True:
        if t.prefetch is not None:  # asynchronous: the step's one round was generated ahead
            batch, generated, failures, timer["reward_s"], timer["wait_s"] = t.prefetch.take(t.step)
            drawn.extend(batch)
        else:
            batch = t.sampler.next_batch(per_round, t.step)
            drawn.extend(batch)
            rows = shard(batch, acc.process_index, acc.num_processes)
            # every process generates in every round, with no rows once its quota is full: an engine
            # shared by a group of processes (rollout.tensor_parallel_size) runs their calls together
            seed = seed_for(recipe.run.seed, t.step, acc.process_index, rounds)
            rows = rows if len(kept) < quota else []
            idle_rounds += not rows
            generated = generate_groups(t, rows, seed, t.step, greedy_baseline, timer, failures)
        rounds += 1
        zero_variance += sum(len(set(g.rewards)) <= 1 for g in generated)
        generated_groups += len(generated)
        if rounds == 1:
            curriculum = _batch_metrics(t, drawn)  # the first draw, estimates before this step's results
        _update_sampler(t, recipe, generated)
        if not ds.enabled:
            kept = generated
            break
        for g in generated:
            keep = informative_groups(
                torch.tensor(g.rewards), torch.zeros(len(g.rewards), dtype=torch.long), eps=ds.eps
            )
            (kept if bool(keep.all()) else dropped).append(g)
        if global_max(acc, quota - len(kept)) <= 0 or rounds >= ds.max_rounds:
            break
    kept = kept[:quota]
    filled = max(0, quota - len(kept))
    kept += dropped[:filled]
    if len(kept) < quota:
        raise RuntimeError(f"collected {len(kept)} groups, need {quota}")  # cannot happen: round 1 fills
    baselines = [g.baseline for g in kept if g.baseline is not None]
    behind = [
        t.engine.version - c.weight_version
        for g in kept
        for c in g.completions
        if c.weight_version is not None
    ]  # weight syncs between sampling and this update
    counts = [len(dropped), filled, sum(baselines), len(baselines), zero_variance, generated_groups]
    counts += [sum(behind), len(behind), idle_rounds]
    totals = global_sums(acc, [float(c) for c in counts] + failures.vector())
    step_failures = failures.with_counts(totals[len(counts) :])
    _check_failures(t, failures, step_failures)
    metrics = {**step_failures.metrics(), "time/reward_s": timer["reward_s"]}
    metrics.update(curriculum_metrics(t, drawn, curriculum, zero_variance=totals[4] / max(totals[5], 1.0)))
    if greedy_baseline:
        metrics["reward/baseline_mean"] = totals[2] / max(totals[3], 1.0)
    if totals[7]:
        metrics["async/staleness"] = totals[6] / totals[7]
    if "wait_s" in timer:
        metrics["time/rollout_wait_s"] = timer["wait_s"]
    if ds.enabled:
        metrics.update(
            {
                "dynamic_sampling/rounds": float(rounds),
                "dynamic_sampling/dropped_groups": totals[0],
                "dynamic_sampling/filled_groups": totals[1],
                "dynamic_sampling/idle_process_rounds": totals[8],
            }
        )
    return kept, metrics


class Prefetch:
    """Asynchronous rollouts (``train.async_steps: k``, arXiv 2410.18252 for the off-policy lag): while
    the trainer runs step t, the generation and scoring of steps t+1 .. t+k run in a background thread.

    Batches are drawn from the sampler in step order when their generation is queued, with the seeds a
    synchronous step would use; one thread runs the queued jobs in order (the engine and the verifier
    pool take one caller at a time). Only generation and scoring run in the background: everything that
    talks to the other training processes (curriculum updates, failure counts) stays in the step, in
    the same order on every process. A step's samples are at most k weight syncs old."""

    def __init__(self, t, depth: int, needs: Collection[str] = ()) -> None:
        self.t, self.depth = t, depth
        self.greedy_baseline = "baseline_rewards" in needs
        self.queued: dict[int, tuple[list[dict], Future]] = {}
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._work, daemon=True, name="rlvr-prefetch").start()

    def _work(self) -> None:
        while True:
            future, args = self.jobs.get()
            try:
                future.set_result(self._generate(*args))
            except BaseException as exc:  # raised in the step that takes it
                future.set_exception(exc)

    def _generate(self, rows: list[dict], step: int) -> tuple:
        t = self.t
        timer, failures = {"reward_s": 0.0}, t.scorer.failure_tally()
        seed = seed_for(t.recipe.run.seed, step, t.accelerator.process_index, 0)
        groups = generate_groups(t, rows, seed, step, self.greedy_baseline, timer, failures)
        return groups, failures, timer["reward_s"]

    def take(self, step: int) -> tuple:
        """Step ``step``'s global batch, this process's scored groups, their failure tally, the seconds
        spent in verifiers and the seconds waited; queues the jobs of the next ``depth`` steps first."""
        t = self.t
        for ahead in range(step, min(step + self.depth, t.recipe.run.steps - 1) + 1):
            if ahead not in self.queued:
                batch = t.sampler.next_batch(t.recipe.train.prompts_per_step, ahead)
                rows = shard(batch, t.accelerator.process_index, t.accelerator.num_processes)
                future: Future = Future()
                self.jobs.put((future, (rows, ahead)))
                self.queued[ahead] = (batch, future)
        batch, future = self.queued.pop(step)
        start = time.perf_counter()
        groups, failures, reward_s = future.result()
        return batch, groups, failures, reward_s, time.perf_counter() - start


def _check_failures(t, local: FailureTally, step_failures: FailureTally) -> None:
    """Warn (main process) about verifiers failing on more than ``rewards.max_failure_frac`` of the step's
    calls (``step_failures``: summed over processes); raise ``ScoringError`` on every process when one failed
    on all of them. The counts are global, so every process takes the same branch (and joins the gather of
    the processes' first reasons, taken in process order)."""
    r = t.recipe.rewards
    flagged = step_failures.over(r.max_failure_frac)
    if r.stop_when_all_fail:
        flagged += step_failures.all_failed()
    if not flagged:
        return
    step_failures.add_reasons(gathered_objects(t.accelerator, [local.first]))
    warnings = step_failures.check(r.max_failure_frac, r.stop_when_all_fail, where=f"step {t.step + 1}")
    if t.accelerator.is_main_process:
        for warning in warnings:
            logger.warning(warning)


def _update_sampler(t, recipe, groups: list[Group]) -> None:
    """Curriculum feedback: this round's per-prompt results from every process (in process order) go into
    the per-prompt statistics, then to the sampler; both end up the same on every process."""
    threshold = recipe.rewards.correct_threshold
    records = [
        {
            "prompt_id": g.row["prompt_id"],
            "pass_rate": sum(v >= threshold for v in g.verdicts) / max(len(g.verdicts), 1),
            "samples": len(g.completions),
            "mean_length": sum(len(c.token_ids) for c in g.completions) / max(len(g.completions), 1),
            "step": t.step,
        }
        for g in groups
    ]
    records = gathered_objects(t.accelerator, records)
    t.stats.record(records, t.step)
    t.sampler.update(records)


def _batch_metrics(t, drawn: list[dict]) -> dict[str, float]:
    """What the sampler drew (first round): its distribution's size and entropy, bucket weights, and the
    mean estimated pass rate of the drawn prompts seen before."""
    out = {f"curriculum/{k}": v for k, v in t.sampler.metrics().items()}
    estimate = t.stats.estimate("ema")[[row["prompt_id"] for row in drawn]]
    known = estimate[~np.isnan(estimate)]
    if known.size:
        out["curriculum/batch_pass_rate"] = float(known.mean())
    return out


def curriculum_metrics(t, drawn: list[dict], first: dict[str, float], zero_variance: float) -> dict:
    """``curriculum/*`` metrics of the step (identical on every process: they come from the global batches
    and the global statistics): see docs/metrics.md."""
    out = dict(first)
    out["curriculum/zero_variance_frac"] = zero_variance
    out["curriculum/seen_prompts"] = float(t.stats.seen.sum())
    shares: dict[str, int] = {}
    for row in drawn:
        shares[row["data_source"]] = shares.get(row["data_source"], 0) + 1
    for source, agg in t.stats.by_source().items():
        out[f"curriculum/batch_share/{source}"] = shares.get(source, 0) / len(drawn)
        if agg["seen"]:
            out[f"curriculum/pass_rate/{source}"] = agg["pass_rate"]
    return out

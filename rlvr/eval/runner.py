"""Run benchmarks on a model: generate n samples per problem, verify them, compute metrics, write results.

Three entry points:

* :func:`run_eval` is ``rlvr eval MODEL --benchmarks ...``: resolves the checkpoint
  (:func:`resolve_checkpoint`), builds one rollout engine (vLLM by default, the same engine class training
  uses) and runs every benchmark into ``OUT/<benchmark>/``.
* :func:`run_benchmark` runs one benchmark on an existing engine. With an output folder it appends the
  samples of every finished problem to ``samples.jsonl`` as they complete, and on a restart skips the
  problems that are complete there, so an interrupted evaluation resumes without regenerating them.
* :func:`evaluate` is for evaluation during training: it reuses the trainer's engine (no new engine
  start), writes nothing, and returns flat metrics such as ``eval/gsm8k/pass@1``.

Seeding: the problem at position ``p`` of a benchmark's problem list is sampled with seed ``seed + p`` (the
vLLM engine seeds every prompt separately), so with vLLM the samples of a problem do not depend on which
other problems were generated in the same call, on ``--limit`` or on an interruption.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rlvr.console import format_duration, library_output_to, say
from rlvr.eval.benchmarks import (
    BenchmarkSpec,
    Problem,
    ProblemSet,
    SamplingSpec,
    drop_too_long,
    load_problems,
)
from rlvr.eval.metrics import summarize
from rlvr.trainer.checkpoint import (
    STATE_FILE,
    STEP_DIR,
    CheckpointError,
    checkpoint_dirs,
    export_checkpoint,
)

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
SETTINGS_FILE = "settings.json"
SUMMARY_FILE = "summary.json"
_MAX_INFO_CHARS = 2000


class EvalError(RuntimeError):
    """An evaluation cannot run as asked (bad checkpoint, results from other settings, ...)."""


# --------------------------------------------------------------------------------------------------------
# Which model
# --------------------------------------------------------------------------------------------------------


def _has_weights(folder: Path) -> bool:
    patterns = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "*.gguf")
    return any(any(folder.glob(p)) for p in patterns)


def resolve_checkpoint(name_or_path: str | Path, cache_dir: str | Path | None = None) -> tuple[str, str]:
    """What to load for ``name_or_path``, and a note saying what it was understood as.

    * an HF model folder (``config.json`` and weights): itself; without weights: an error;
    * a training run directory: its ``final/`` model, else its newest ``checkpoints/step-N``;
    * a step checkpoint (``checkpoints/step-N``, accelerate state, not an HF folder): its policy weights are
      exported once into an HF folder under the rlvr cache (config and tokenizer from the run's
      ``recipe.yaml`` model), see :func:`rlvr.trainer.checkpoint.export_checkpoint`; a checkpoint without
      weights is an error;
    * a packaged alias (``smollm2-135m-instruct``, ``tiny-char``) or a hub id:
      :func:`rlvr.models.resolve_model`.
    """
    from rlvr.models import resolve_model

    path = Path(str(name_or_path)).expanduser()
    if not path.exists():
        resolved = resolve_model(str(name_or_path), cache_dir)
        return str(resolved), f"model {name_or_path} ({resolved})"
    path = path.resolve()
    if path.is_file():
        raise EvalError(f"{path} is a file; give a model folder, a run directory or a checkpoint folder")
    if (path / "config.json").is_file():
        if not _has_weights(path):
            raise EvalError(
                f"{path} has a config.json but no model weights (*.safetensors or pytorch_model*.bin)"
            )
        return str(path), f"HF model folder {path}"
    if (path / STATE_FILE).is_file() or STEP_DIR.match(path.name):
        out = _export(path, cache_dir)
        return str(out), f"training checkpoint {path} (policy weights exported to {out})"
    if (path / "final").is_dir():
        model, _ = resolve_checkpoint(path / "final", cache_dir)
        return model, f"run directory {path}: its final model {path / 'final'}"
    complete = checkpoint_dirs(path)
    if complete:
        out = _export(complete[-1], cache_dir)
        return str(out), f"run directory {path} without final/: newest checkpoint {complete[-1].name} ({out})"
    raise EvalError(
        f"{path} is not a model: no config.json (HF model folder), no final/ or checkpoints/step-N "
        "(training run directory), no trainer_state.json (training checkpoint)"
    )


def _export(step_dir: Path, cache_dir: str | Path | None) -> Path:
    try:
        return export_checkpoint(step_dir, cache_dir)
    except CheckpointError as exc:
        raise EvalError(str(exc)) from None


# --------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------


def resolve_sampling(
    spec: BenchmarkSpec,
    *,
    n: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    greedy: bool = False,
) -> SamplingSpec:
    """The spec's default sampling with the given overrides; ``greedy`` means temperature 0 and n = 1."""
    values = spec.sampling.model_dump()
    updates = {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
    values.update({k: v for k, v in updates.items() if v is not None})
    if greedy:
        if n not in (None, 1):
            raise EvalError(f"--greedy gives n identical samples; it needs n=1, got n={n}")
        values.update(temperature=0.0, n=1)
    try:
        return SamplingSpec.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise EvalError(f"benchmark {spec.name}: sampling: {problems}") from None


def _describe(error: dict) -> str:
    key = ".".join(str(p) for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message}" if key else message


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    return ks if ks[-1] == n else [*ks, n]


def settings_of(spec: BenchmarkSpec, sampling: SamplingSpec, seed: int, model: str, engine: str) -> dict:
    """Everything that decides what the samples are; a resumed run must match it."""
    return {
        "benchmark": spec.name,
        "model": model,
        "engine": engine,
        "seed": seed,
        "sampling": sampling.model_dump(),
        "data": spec.data.model_dump(),
        "prompt_template": spec.prompt_template,
        "system_prompt": spec.system_prompt,
        "chat_template": spec.chat_template,
        "max_prompt_tokens": spec.max_prompt_tokens,
        "verifier": spec.verifier.model_dump(),
    }


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# --------------------------------------------------------------------------------------------------------
# Samples on disk
# --------------------------------------------------------------------------------------------------------


def read_samples(path: Path, n: int | None = None) -> tuple[dict[str, list[dict]], int]:
    """Sample records grouped by problem id (sorted by sample index), and the number of dropped lines.

    With ``n``, only problems with exactly the samples ``0 .. n-1`` are kept (a problem cut off by an
    interruption is incomplete). A line that is not valid JSON (the last line of a killed run) is dropped.
    """
    grouped: dict[str, dict[int, dict]] = {}
    dropped = 0
    if not path.is_file():
        return {}, 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                grouped.setdefault(str(record["problem_id"]), {})[int(record["sample"])] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                dropped += 1
    out: dict[str, list[dict]] = {}
    for pid, by_index in grouped.items():
        records = [by_index[i] for i in sorted(by_index)]
        if n is not None and sorted(by_index) != list(range(n)):
            dropped += len(records)
            continue
        out[pid] = records
    return out, dropped


def _rewrite(path: Path, done: dict[str, list[dict]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for records in done.values():
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _json_safe(info: dict) -> dict:
    text = json.dumps(info, default=str, ensure_ascii=False)
    if len(text) <= _MAX_INFO_CHARS:
        return json.loads(text)
    return {
        k: (v if len(json.dumps(v, default=str)) < 500 else str(v)[:500] + "...") for k, v in info.items()
    }


def _reason(info: dict, correct: bool) -> str:
    """One line saying why a sample got its verdict."""
    for key in ("error", "reason", "error_type"):
        if info.get(key):
            detail = info.get("detail")
            return f"{info[key]}: {detail}" if key == "error_type" and detail else str(info[key])
    if "first_failure" in info:
        failure = info["first_failure"]
        detail = failure.get("error") or failure.get("detail") or ""
        return f"test {failure.get('test')} failed: {detail}".strip()
    if "extracted" in info:
        if info.get("extracted") is None:
            return "no answer extracted"
        verdict = "matches" if correct else "does not match"
        return f"answer {info['extracted']} {verdict} gold {info.get('gold')}"
    if "passed" in info and "total" in info:
        return f"{info['passed']}/{info['total']} tests passed"
    return "correct" if correct else "incorrect"


# --------------------------------------------------------------------------------------------------------
# One benchmark
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    start: int
    """Position of the first problem in the benchmark's problem list (its seed offset)."""
    problems: list[Problem]


def _chunks(pending: list[tuple[int, Problem]], size: int) -> Iterator[_Chunk]:
    """Runs of consecutive positions, at most ``size`` problems each (seeds stay ``seed + position``)."""
    current: list[tuple[int, Problem]] = []
    for pos, problem in pending:
        if current and (pos != current[-1][0] + 1 or len(current) >= size):
            yield _Chunk(current[0][0], [p for _, p in current])
            current = []
        current.append((pos, problem))
    if current:
        yield _Chunk(current[0][0], [p for _, p in current])


def make_scorer(spec: BenchmarkSpec, num_workers: int):
    from rlvr.scoring import RewardSpec, Scorer

    base_dir = Path(spec.source_file).resolve().parent if spec.source_file else None
    return Scorer(
        [RewardSpec(spec.verifier.name, 1.0, dict(spec.verifier.kwargs))],
        num_workers=num_workers,
        timeout_s=spec.verifier.timeout_s,
        failure_score=0.0,
        base_dir=base_dir,
    )


def _score_chunk(chunk: _Chunk, completions, scorer, spec: BenchmarkSpec, n: int) -> list[dict]:
    examples = [chunk.problems[c.prompt_index].example for c in completions]
    batch = scorer.score([c.text for c in completions], examples)
    name = scorer.names[0]
    records = []
    counters: dict[int, int] = {}
    for i, completion in enumerate(completions):
        problem = chunk.problems[completion.prompt_index]
        sample = counters.get(completion.prompt_index, 0)
        counters[completion.prompt_index] = sample + 1
        score = batch.per_reward[name][i]
        score = 0.0 if score is None else float(score)
        info = batch.infos[i].get(name, {})
        correct = score >= spec.verifier.correct_threshold
        records.append(
            {
                "problem_id": problem.id,
                "row": problem.index,
                "sample": sample,
                "prompt": problem.prompt,
                "completion": completion.text,
                "extracted": info.get("extracted"),
                "gold": info.get("gold", problem.example.get("answer")),
                "correct": correct,
                "score": score,
                "reason": _reason(info, correct),
                "finish_reason": completion.finish_reason,
                "response_tokens": len(completion.token_ids),
                "groups": problem.groups,
                "info": _json_safe(info),
            }
        )
    if any(v != n for v in counters.values()) or len(counters) != len(chunk.problems):
        raise EvalError(f"the engine returned {sorted(counters.values())} samples per problem; expected {n}")
    return records


def run_benchmark(
    engine: Any,
    spec: BenchmarkSpec,
    problems: ProblemSet,
    *,
    sampling: SamplingSpec,
    ks: Sequence[int] | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    settings: dict | None = None,
    overwrite: bool = False,
    chunk_size: int | None = None,
    num_workers: int = 2,
    scorer: Any = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generate, verify and summarise one benchmark; returns the summary dict (see :func:`summarize_results`).

    With ``out_dir``: finished problems are appended to ``out_dir/samples.jsonl`` chunk by chunk, problems
    already complete there are not generated again (unless ``overwrite``), and ``settings`` (what decides
    the samples, :func:`settings_of`) must equal those of the earlier run, else :class:`EvalError`.
    ``chunk_size``: problems per engine call (default: about 256 sequences per call).
    """
    from rlvr.rollout import SamplingConfig

    say = log or (lambda _msg: None)
    n = sampling.n
    ks = list(ks) if ks else list(spec.ks) or default_ks(n)
    done: dict[str, list[dict]] = {}
    samples_path = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        samples_path = out / SAMPLES_FILE
        settings_path = out / SETTINGS_FILE
        if overwrite:
            samples_path.unlink(missing_ok=True)
            settings_path.unlink(missing_ok=True)
        if samples_path.exists() and settings is not None:
            if not settings_path.is_file():
                raise EvalError(
                    f"{samples_path} holds samples but no {SETTINGS_FILE} says how they were made; pass "
                    "--overwrite to start over, or choose another --out"
                )
            differences = _diff(json.loads(settings_path.read_text()), settings)
            if differences:
                raise EvalError(
                    f"{samples_path} holds samples made with other settings ({'; '.join(differences)}); "
                    "pass --overwrite to start over, or choose another --out"
                )
        done, dropped = read_samples(samples_path, n)
        if dropped:
            say(f"[{spec.name}] dropped {dropped} samples of incomplete problems from an interrupted run")
            _rewrite(samples_path, done)
        if settings is not None:
            settings_path.write_text(json.dumps(settings, indent=1) + "\n")

    wanted = {p.id for p in problems.problems}
    resumed = sum(1 for pid in done if pid in wanted)
    pending = [(pos, p) for pos, p in enumerate(problems.problems) if p.id not in done]
    size = chunk_size or max(1, 256 // n)
    own_scorer = scorer is None
    scorer = scorer or make_scorer(spec, num_workers)
    generated = tokens = 0
    start = time.perf_counter()
    if resumed:
        say(f"[{spec.name}] resuming: {resumed} of {len(problems)} problems already in {samples_path}")
    try:
        for chunk in _chunks(pending, size):
            prompt_ids = [p.prompt_ids for p in chunk.problems]
            config = SamplingConfig.from_settings(sampling, n=n, seed=seed + chunk.start)
            completions = engine.generate(prompt_ids, config)
            records = _score_chunk(chunk, completions, scorer, spec, n)
            if samples_path is not None:
                with samples_path.open("a", encoding="utf-8") as f:
                    for record in records:
                        f.write(json.dumps(record, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            for record in records:
                done.setdefault(record["problem_id"], []).append(record)
            generated += len(chunk.problems)
            tokens += sum(r["response_tokens"] for r in records)
            elapsed = time.perf_counter() - start
            left = elapsed / generated * (len(pending) - generated)
            say(
                f"[{spec.name}] {resumed + generated}/{len(problems)} problems"
                f" | {tokens / max(elapsed, 1e-9):.0f} tok/s"
                + (f" | left {format_duration(left)}" if generated < len(pending) else "")
            )
    finally:
        if own_scorer:
            scorer.close()
    elapsed = time.perf_counter() - start
    summary = summarize_results(
        spec, problems, done, sampling, ks, seed=seed, confidence=confidence, resamples=resamples
    )
    summary["run"] = {
        "generated_problems": generated,
        "resumed_problems": resumed,
        "generation_s": round(elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 2) if generated and elapsed > 0 else None,
    }
    return summary


def _metrics_of(records: list[list[dict]], ks: Sequence[int], confidence: float, resamples: int, seed: int):
    correct = [[bool(r["correct"]) for r in recs] for recs in records]
    has_answers = any("extracted" in r.get("info", {}) for recs in records for r in recs)
    answers = [[r.get("extracted") for r in recs] for recs in records] if has_answers else None
    result = summarize(correct, answers, ks, confidence=confidence, resamples=resamples, seed=seed)
    # maj@1 is just the first sample's accuracy: left out so that tables show votes only
    metrics = {k: v for k, v in result.items() if "@" in k and k != "maj@1"}
    skipped = dict(result.get("skipped", {}))
    if not has_answers:
        skipped.update({f"maj@{k}": "the verifier extracts no answers to vote on" for k in ks if k > 1})
    return metrics, skipped


def summarize_results(
    spec: BenchmarkSpec,
    problems: ProblemSet,
    done: dict[str, list[dict]],
    sampling: SamplingSpec,
    ks: Sequence[int],
    *,
    seed: int = 0,
    confidence: float = 0.95,
    resamples: int = 2000,
) -> dict[str, Any]:
    """The summary of one benchmark from the sample records of its (current) problems.

    ``metrics`` holds ``pass@k`` / ``maj@k`` / ``avg@n`` with bootstrap CIs over problems; ``skipped_metrics``
    every metric that was asked for but not computed (k > n, no answers to vote on); ``breakdown`` the same
    per value of each breakdown field; ``rows`` what was read and skipped from the data file.
    """
    selected = [p for p in problems.problems if p.id in done]
    records = [done[p.id] for p in selected]
    samples = [r for recs in records for r in recs]
    summary: dict[str, Any] = {
        "benchmark": spec.name,
        "description": spec.description,
        "data": problems.source,
        "num_problems": len(selected),
        "num_samples": len(samples),
        "n": sampling.n,
        "sampling": sampling.model_dump(),
        "seed": seed,
        "ks": list(ks),
        "verifier": spec.verifier.name,
        "confidence": confidence,
        "resamples": resamples,
        "rows": {
            "read": problems.rows_read,
            "skipped": dict(problems.skipped),
            "skipped_examples": list(problems.skipped_examples),
        },
    }
    if len(selected) < len(problems.problems):
        summary["missing_problems"] = len(problems.problems) - len(selected)
    if not samples:
        summary.update(metrics={}, skipped_metrics={}, response={}, verifier_errors=0, breakdown={})
        return summary
    summary["metrics"], summary["skipped_metrics"] = _metrics_of(records, ks, confidence, resamples, seed)
    summary["response"] = {
        "mean_tokens": sum(r["response_tokens"] for r in samples) / len(samples),
        "truncation_rate": sum(r["finish_reason"] == "length" for r in samples) / len(samples),
    }
    summary["verifier_errors"] = sum(bool(r.get("info", {}).get("error")) for r in samples)
    breakdown: dict[str, dict[str, Any]] = {}
    for name in spec.breakdown:
        groups: dict[str, list[list[dict]]] = {}
        for problem, recs in zip(selected, records, strict=True):
            groups.setdefault(problem.groups.get(name, "None"), []).append(recs)
        breakdown[name] = {}
        for value in sorted(groups, key=_natural):
            metrics, skipped = _metrics_of(groups[value], ks, confidence, resamples, seed)
            breakdown[name][value] = {"num_problems": len(groups[value]), "metrics": metrics}
    summary["breakdown"] = breakdown
    return summary


def _natural(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


# --------------------------------------------------------------------------------------------------------
# Evaluation during training
# --------------------------------------------------------------------------------------------------------

_PROBLEM_CACHE: dict[tuple, ProblemSet] = {}


def flat_metrics(summary: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """``{prefix}/{benchmark}/{metric}`` -> value, plus response length and truncation rate, and every
    metric per breakdown value: ``{prefix}/{benchmark}/{field}/{value}/{metric}``."""
    base = f"{prefix}/{summary['benchmark']}"
    out = {f"{base}/{name}": float(v["value"]) for name, v in summary.get("metrics", {}).items()}
    for field, values in summary.get("breakdown", {}).items():
        for value, part in values.items():
            out.update(
                {f"{base}/{field}/{value}/{name}": float(v["value"]) for name, v in part["metrics"].items()}
            )
    response = summary.get("response", {})
    if response:
        out[f"{base}/response_tokens"] = float(response["mean_tokens"])
        out[f"{base}/truncated_frac"] = float(response["truncation_rate"])
    return out


def evaluate(
    engine: Any,
    tokenizer: Any,
    spec: BenchmarkSpec | str,
    *,
    limit: int | None = None,
    n: int | None = None,
    seed: int = 0,
    ks: Sequence[int] | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    context_len: int | None = None,
    num_workers: int = 2,
    scorer: Any = None,
    prefix: str = "eval",
) -> dict[str, float]:
    """Evaluate the engine's current weights on (the first ``limit`` problems of) a benchmark.

    For evaluation during training: reuses ``engine`` (no new engine start, the trainer has already
    pushed its weights into it), writes no files, and returns flat metrics ``{prefix}/{bench}/pass@1``,
    ``.../maj@k``, ``.../avg@n``, ``.../response_tokens``, ``.../truncated_frac``. ``n`` / ``temperature`` /
    ``max_tokens`` override the spec's sampling (a spec whose default is greedy needs a temperature with
    n > 1). ``context_len``: the engine's max_model_len; longer prompts are skipped. Loaded problems are
    cached per (spec, tokenizer, limit), so calling this every N steps re-reads nothing. The same ``seed``
    every call makes evaluations at different steps comparable (same problems, same sampling seeds).
    """
    from rlvr.eval.benchmarks import load_spec

    spec = load_spec(spec) if isinstance(spec, str) else spec
    sampling = resolve_sampling(spec, n=n, temperature=temperature, max_tokens=max_tokens)
    key = (spec.model_dump_json(), id(tokenizer), limit, context_len)
    problems = _PROBLEM_CACHE.get(key)
    if problems is None:
        problems = load_problems(spec, tokenizer, limit=limit)
        if context_len is not None:
            drop_too_long(problems, context_len)
        _PROBLEM_CACHE[key] = problems
    summary = run_benchmark(
        engine, spec, problems, sampling=sampling, ks=ks, seed=seed, num_workers=num_workers, scorer=scorer
    )
    return flat_metrics(summary, prefix)


# --------------------------------------------------------------------------------------------------------
# rlvr eval
# --------------------------------------------------------------------------------------------------------


def _context_length(model_path: str) -> int | None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        return None
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _default_out(model: str) -> Path:
    name = Path(str(model).rstrip("/")).name or "model"
    if name == "final":
        name = Path(str(model).rstrip("/")).parent.name
    return Path("results") / re.sub(r"[^\w.-]+", "_", name)


def run_eval(
    model: str,
    benchmarks: Sequence[str],
    *,
    out: str | Path | None = None,
    limit: int | None = None,
    n: int | None = None,
    ks: Sequence[int] | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    greedy: bool = False,
    seed: int = 0,
    engine: str = "vllm",
    dtype: str = "float32",
    max_model_len: int | None = None,
    kv_cache_gb: float = 1.0,
    gpu_memory_utilization: float = 0.85,
    chunk_size: int | None = None,
    num_workers: int = 2,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    confidence: float = 0.95,
    resamples: int = 2000,
    engine_extra: dict | None = None,
    log: Callable[[str], None] = say,
    verbose: bool = False,
) -> dict[str, Any]:
    """``rlvr eval``: evaluate ``model`` on ``benchmarks`` (shipped names or spec files) into ``out``.

    Writes ``OUT/<benchmark>/{samples.jsonl, settings.json, summary.json, pass_at_k.png}`` and
    ``OUT/{summary.json, results.md, pass_at_k.png}``; returns ``{benchmark: summary}``. The engine's and
    the libraries' output goes to ``OUT/logs/eval.log`` unless ``verbose`` (:mod:`rlvr.console`).
    """
    from transformers import AutoTokenizer

    from rlvr.eval import report
    from rlvr.eval.benchmarks import load_spec
    from rlvr.rollout import ENGINES, EngineOptions

    if not benchmarks:
        raise EvalError("no benchmarks given (--benchmarks gsm8k,math500,...)")
    if engine not in ENGINES:
        raise EvalError(f"unknown engine {engine!r}; known: {', '.join(ENGINES.names())}")
    specs = [load_spec(b, list(overrides)) for b in benchmarks]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise EvalError(f"benchmark names must be unique, got {names}")
    plans = []
    for spec in specs:
        sampling = resolve_sampling(
            spec, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, greedy=greedy
        )
        chosen = list(ks) if ks else list(spec.ks) or default_ks(sampling.n)
        too_big = [k for k in chosen if k > sampling.n]
        if too_big:
            log(f"[{spec.name}] k={too_big} > n={sampling.n}: those pass@k / maj@k are skipped (reported)")
        plans.append((spec, sampling, chosen))

    model_path, note = resolve_checkpoint(model)
    log(f"model: {note}")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    loaded = []
    for spec, sampling, chosen in plans:
        problems = load_problems(spec, tokenizer, limit=limit)
        loaded.append((spec, sampling, chosen, problems))
    context = max_model_len or _context_length(model_path)
    longest = max(
        (len(p.prompt_ids) + s.max_tokens for _, s, _, ps in loaded for p in ps.problems), default=1024
    )
    engine_len = min(longest, context) if context else longest
    for spec, _, _, problems in loaded:
        drop_too_long(problems, engine_len)
        if problems.skipped:
            log(
                f"[{spec.name}] skipped rows: {problems.skipped}; "
                f"first: {'; '.join(problems.skipped_examples)}"
            )
        if not problems.problems:
            raise EvalError(f"benchmark {spec.name}: no usable problems in {problems.source}")

    out_dir = Path(out) if out else _default_out(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    options = EngineOptions(
        dtype=dtype,
        max_model_len=engine_len,
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        kv_cache_gb=kv_cache_gb,
        device=device,
        extra=dict(engine_extra or {}),
    )
    log(f"starting the {engine} engine ({device}, {dtype}, max_model_len {engine_len})")
    summaries: dict[str, Any] = {}
    with library_output_to(None if verbose else out_dir / "logs" / "eval.log"):
        rollout = ENGINES.get(engine)(model_path, options)
        try:
            for spec, sampling, chosen, problems in loaded:
                bench_dir = out_dir / spec.name
                settings = settings_of(spec, sampling, seed, model_path, engine)
                try:
                    summary = run_benchmark(
                        rollout,
                        spec,
                        problems,
                        sampling=sampling,
                        ks=chosen,
                        seed=seed,
                        out_dir=bench_dir,
                        settings=settings,
                        overwrite=overwrite,
                        chunk_size=chunk_size,
                        num_workers=num_workers,
                        confidence=confidence,
                        resamples=resamples,
                        log=log,
                    )
                except KeyboardInterrupt:
                    log(f"interrupted: finished problems are in {bench_dir / SAMPLES_FILE}; rerun to resume")
                    raise
                summary["model"] = str(model)  # as the user named it
                summary["model_path"] = model_path
                summary["engine"] = engine
                report.write_benchmark(bench_dir, summary)
                summaries[spec.name] = summary
        finally:
            rollout.close()
    report.write_report(out_dir, summaries, model=str(model))
    log(report.markdown_table(summaries))
    log(f"results: {out_dir}")
    return summaries

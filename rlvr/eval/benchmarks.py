"""Benchmark specs: a benchmark is data + prompt + verifier + default sampling, declared in YAML.

A spec is a small YAML file (the shipped ones are in ``rlvr/eval/specs/``, one per benchmark)::

    name: gsm8k
    data: {path: data/benchmarks/gsm8k_test.jsonl, prompt_field: question, answer_field: answer}
    prompt_template: "{prompt}\\nPlease reason step by step, and put your final answer within \\\\boxed{{}}."
    verifier: {name: math}
    sampling: {n: 1, temperature: 0.0, max_tokens: 1024}
    breakdown: []

:func:`load_spec` takes a shipped name (``gsm8k``) or a path to such a file, applies ``key=value``
overrides and validates strictly: an unknown key, a wrong type, an unknown verifier or a missing local data
file is a :class:`SpecError` naming the spec file and the dotted key. :func:`load_problems` reads the rows
(a local ``.jsonl`` / ``.jsonl.gz`` / ``.json`` / ``.parquet`` file, a local ``datasets`` folder, or a hub
dataset by name), renders each prompt exactly as training does (:mod:`rlvr.data.loading`: prompt template,
system prompt, the tokenizer's chat template) and reports rows it cannot use (no prompt, no answer, a missing
test field, a prompt too long) as counted skips, never silently.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlvr.config import (
    RecipeError,
    SamplingSettings,
    format_validation_error,
    looks_local,
    merge_trees,
    parse_overrides,
    resolve_local,
)

SPECS_DIR = Path(__file__).resolve().parent / "specs"
"""The shipped benchmark specs (``<name>.yaml``)."""
PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The source checkout: spec data paths such as ``data/benchmarks/...`` are also looked up here."""
_EXAMPLES_SHOWN = 3


class SpecError(RecipeError):
    """A benchmark spec (or an override of it) is invalid; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class BenchmarkData(_Section):
    path: str
    """Local .jsonl / .jsonl.gz / .json (a list of rows) / .parquet file, a local datasets folder, or a hub
    dataset name. Relative paths are tried against the current directory, the spec's folder and the
    rlvr source checkout (so the shipped ``data/benchmarks/...`` paths work from anywhere)."""
    split: str = "test"
    """Split of a hub dataset or a local datasets folder (single files have one split)."""
    subset: str | None = None
    """Hub dataset configuration name."""
    prompt_field: str = "prompt"
    """Row field with the question; ``{prompt}`` in prompt_template."""
    answer_field: str | None = "answer"
    """Row field with the gold answer, given to the verifier as ``example["answer"]`` (GSM8K solutions
    ending in ``#### N`` and boxed solutions work with the math verifier). None for benchmarks whose
    verifier reads other fields (code tests): list those in required_fields."""
    id_field: str | None = None
    """Row field with a unique problem id (results and comparisons match problems by it); None: the row's
    position in the file."""
    required_fields: list[str] = []
    """Fields every usable row must have, non-empty (e.g. [test, entry_point] for HumanEval)."""


class VerifierSpec(_Section):
    name: str = "math"
    """A registered verifier (math, code, ...), ``package.module:function`` or ``path/file.py:function``."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments for the verifier."""
    timeout_s: float = Field(10.0, gt=0)
    """Per-sample limit; a verifier that overruns, crashes or raises scores 0 (its reason is recorded)."""
    correct_threshold: float = 0.5
    """A sample is correct when its score is >= this."""


class SamplingSpec(SamplingSettings):
    """A benchmark's default sampling: the recipe's sampling settings (top_p, top_k, stop as there), with
    greedy decoding and longer answers by default, and ``n`` samples per problem."""

    n: int = Field(1, ge=1)
    """Samples per problem."""
    temperature: float = Field(0.0, ge=0)
    """0 is greedy decoding (then n must be 1)."""
    max_tokens: int = Field(1024, ge=1)
    """Maximum new tokens per sample; a sample that reaches it counts as truncated."""

    @model_validator(mode="after")
    def _greedy_single(self) -> SamplingSpec:
        if self.temperature == 0 and self.n > 1:
            raise ValueError(
                f"greedy decoding (temperature 0) gives n={self.n} identical samples; use n=1, or a "
                "temperature > 0 (e.g. --temperature 0.6) for several samples"
            )
        return self


class BenchmarkSpec(_Section):
    name: str = ""
    """Benchmark name used in results and metric keys; default: the spec file's stem."""
    description: str = ""
    source: str = ""
    """Where the data comes from (shown in reports)."""
    license: str = ""
    data: BenchmarkData
    prompt_template: str = "{prompt}"
    """Python format string; {prompt} is the prompt field, other row fields by name (a field holding a
    list of strings is written one item per line). Literal braces are written {{ and }}."""
    system_prompt: str | None = None
    """Optional system turn (without the chat template it goes before the prompt, then a blank line)."""
    chat_template: bool = True
    """Wrap the prompt with the tokenizer's chat template (add_generation_prompt=True)."""
    max_prompt_tokens: int | None = Field(None, ge=1)
    """Rows whose rendered prompt is longer are skipped (and counted); None: only the model's context
    length limits them."""
    verifier: VerifierSpec = VerifierSpec()
    sampling: SamplingSpec = SamplingSpec()
    ks: list[int] = []
    """k values for pass@k / maj@k; empty: 1, 2, 4, ... up to n, and n."""
    breakdown: list[str] = []
    """Row fields to break the metrics down by (e.g. [subject, level] for MATH-500)."""

    source_file: str | None = Field(None, exclude=True)
    """The YAML file this spec came from (set by load_spec)."""

    @model_validator(mode="after")
    def _positive_ks(self) -> BenchmarkSpec:
        bad = [k for k in self.ks if k < 1]
        if bad:
            raise ValueError(f"ks must be >= 1, got {bad}")
        return self


def known_specs() -> list[str]:
    """Names of the shipped benchmark specs."""
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def _spec_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if text.endswith((".yaml", ".yml")) or "/" in text:
        raise SpecError(f"benchmark spec file not found: {text}")
    shipped = SPECS_DIR / f"{text}.yaml"
    if shipped.is_file():
        return shipped
    raise SpecError(
        f"unknown benchmark {text!r}: not a spec file and not a shipped spec ({', '.join(known_specs())})"
    )


def load_spec(
    name_or_path: str | Path, overrides: list[str] | dict | None = None, check: bool = True
) -> BenchmarkSpec:
    """Load and validate a benchmark spec by shipped name or file path.

    ``overrides`` are ``key=value`` strings (``sampling.n=4``) or a nested dict merged into the YAML.
    ``check`` also resolves the verifier and the local data file (a :class:`SpecError` if either is missing).
    """
    path = _spec_path(name_or_path)
    source = str(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise SpecError(f"{source}: a benchmark spec is a mapping, got {type(tree).__name__}")
    if isinstance(overrides, dict):
        tree = merge_trees(tree, overrides)
    elif overrides:
        try:
            tree = merge_trees(tree, parse_overrides(list(overrides), source))
        except RecipeError as exc:
            raise SpecError(str(exc)) from None
    try:
        spec = BenchmarkSpec.model_validate(tree)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source, what="benchmark spec")) from None
    spec.source_file = source
    if not spec.name:
        spec.name = path.stem
    if check:
        check_spec(spec)
    return spec


def check_spec(spec: BenchmarkSpec) -> None:
    """The verifier must resolve and take its kwargs, and a local data file must exist (the path is made
    absolute)."""
    from rlvr.registry import PluginArgumentError, bind_kwargs
    from rlvr.scoring import resolve_verifier

    src = spec.source_file or f"benchmark {spec.name}"
    base_dir = Path(spec.source_file).resolve().parent if spec.source_file else None
    try:
        fn = resolve_verifier(spec.verifier.name, base_dir=base_dir)
    except Exception as exc:  # noqa: BLE001 - re-raised with the spec key
        raise SpecError(f"{src}: verifier.name: {exc}") from exc
    try:
        bind_kwargs(fn, spec.verifier.kwargs, f"verifier {spec.verifier.name!r}", inputs=2)
    except PluginArgumentError as exc:
        key = f"verifier.kwargs.{exc.argument}" if exc.argument else "verifier.kwargs"
        raise SpecError(f"{src}: {key}: {exc}") from None
    found = resolve_data_path(spec.data.path, base_dir)
    if found is not None:
        spec.data.path = str(found)
    elif looks_local(spec.data.path):
        raise SpecError(
            f"{src}: data.path: file not found: {spec.data.path} (looked in the current directory, "
            f"{base_dir} and {PROJECT_ROOT})"
        )


def resolve_data_path(path: str, base_dir: Path | None) -> Path | None:
    """``path`` relative to the current directory, ``base_dir`` or the project root; None if none has it."""
    return resolve_local(path, base_dir, PROJECT_ROOT)


# --------------------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """One usable benchmark row, rendered for the engine."""

    id: str
    """Unique id (the spec's id_field, else the row position)."""
    index: int
    """Row position in the source file."""
    prompt: str
    """The rendered prompt text the engine sees (chat template applied)."""
    prompt_ids: list[int]
    example: dict[str, Any]
    """The original row for the verifier, plus ``answer`` (the normalised gold answer) when the spec has an
    answer field. The row's own fields are untouched (the code verifier reads HumanEval's ``prompt``)."""
    groups: dict[str, str] = field(default_factory=dict)
    """Breakdown field -> value (as a string)."""


@dataclass
class ProblemSet:
    problems: list[Problem]
    source: str
    rows_read: int
    """Rows considered (after ``limit``)."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Unusable rows per reason (missing_answer, too_long, ...)."""
    skipped_examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.problems)


def read_rows(spec: BenchmarkSpec) -> tuple[list[dict[str, Any]], str]:
    """All rows of the spec's data, in file order, and a description of where they came from.

    Local JSON lines / JSON files are read as they are (no type coercion, so every row reaches the verifier
    exactly as written); parquet files, local datasets folders and hub datasets go through ``datasets``.
    """
    src = spec.source_file or f"benchmark {spec.name}"
    base_dir = Path(spec.source_file).resolve().parent if spec.source_file else None
    path = resolve_data_path(spec.data.path, base_dir)
    if path is None and looks_local(spec.data.path):
        raise SpecError(f"{src}: data.path: file not found: {spec.data.path}")
    if path is not None and path.is_file():
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz")):
            return _read_jsonl(path, src), str(path)
        if name.endswith((".json", ".json.gz")):
            return _read_json(path, src), str(path)
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist(), str(path)
        raise SpecError(
            f"{src}: data.path {path}: unsupported file type; expected .jsonl, .jsonl.gz, .json or .parquet"
        )
    from datasets import load_dataset

    target = str(path) if path is not None else spec.data.path
    try:
        dataset = load_dataset(target, spec.data.subset, split=spec.data.split)
    except Exception as exc:
        raise SpecError(
            f"{src}: data.path {target!r} (subset={spec.data.subset!r}, split={spec.data.split!r}) could not "
            f"be loaded with datasets; offline, a hub dataset must already be cached: {exc}"
        ) from exc
    return [dict(row) for row in dataset], f"{target} [{spec.data.split}]"


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _read_jsonl(path: Path, src: str) -> list[dict[str, Any]]:
    rows = []
    with _open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SpecError(f"{src}: data.path {path}, line {number}: not valid JSON: {exc}") from None
            if not isinstance(row, dict):
                raise SpecError(f"{src}: data.path {path}, line {number}: a row must be a JSON object")
            rows.append(row)
    return rows


def _read_json(path: Path, src: str) -> list[dict[str, Any]]:
    with _open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{src}: data.path {path}: not valid JSON: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise SpecError(f"{src}: data.path {path}: a .json data file must hold a list of row objects")
    return data


def _data_config(spec: BenchmarkSpec):
    from rlvr.config import DataConfig

    return DataConfig(
        path=spec.data.path,
        prompt_field=spec.data.prompt_field,
        answer_field=spec.data.answer_field or "answer",
        prompt_template=spec.prompt_template,
        system_prompt=spec.system_prompt,
        chat_template=spec.chat_template,
    )


def _template_view(row: dict[str, Any]) -> dict[str, Any]:
    """Row values as the prompt template sees them: lists of strings one per line."""
    return {
        k: "\n".join(v) if isinstance(v, list) and all(isinstance(x, str) for x in v) else v
        for k, v in row.items()
    }


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and len(value) == 0)


def load_problems(spec: BenchmarkSpec, tokenizer: Any, limit: int | None = None) -> ProblemSet:
    """The usable problems of ``spec`` (the first ``limit`` rows), rendered with ``tokenizer``."""
    from rlvr.data.loading import _answer_text, _InvalidRow, _prompt_text, _render

    src = spec.source_file or f"benchmark {spec.name}"
    rows, where = read_rows(spec)
    columns: set[str] = set().union(*(row.keys() for row in rows)) if rows else set()
    keys = [("data.prompt_field", spec.data.prompt_field)]
    if spec.data.answer_field:
        keys.append(("data.answer_field", spec.data.answer_field))
    if spec.data.id_field:
        keys.append(("data.id_field", spec.data.id_field))
    keys += [(f"data.required_fields[{i}]", name) for i, name in enumerate(spec.data.required_fields)]
    keys += [(f"breakdown[{i}]", name) for i, name in enumerate(spec.breakdown)]
    for key, name in keys:
        if name not in columns:
            raise SpecError(
                f"{src}: {key}: {name!r} is not a field of {where}; fields: {', '.join(sorted(columns))}"
            )
    if limit is not None:
        rows = rows[:limit]

    cfg = _data_config(spec)
    skipped: Counter[str] = Counter()
    examples: list[str] = []
    kept: list[tuple[int, dict[str, Any], str, str | None]] = []
    for index, row in enumerate(rows):
        try:
            prompt_text = _prompt_text(row, cfg)
            answer = _answer_text(row, cfg) if spec.data.answer_field else None
            for name in spec.data.required_fields:
                if _empty(row.get(name)):
                    raise _InvalidRow(f"missing_{name}", f"field {name!r} is missing or empty")
        except _InvalidRow as problem:
            skipped[problem.reason] += 1
            if len(examples) < _EXAMPLES_SHOWN:
                examples.append(f"row {index} ({problem.reason}: {problem.message})")
            continue
        try:
            text = _render(prompt_text, _template_view(row), cfg, tokenizer)
        except ValueError as exc:
            raise SpecError(f"{src}: prompt_template: {exc}") from None
        kept.append((index, row, text, answer))

    encoded = tokenizer([t for _, _, t, _ in kept], add_special_tokens=not spec.chat_template)["input_ids"]
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for (index, row, text, answer), ids in zip(kept, encoded if kept else [], strict=True):
        if spec.max_prompt_tokens is not None and len(ids) > spec.max_prompt_tokens:
            skipped["too_long"] += 1
            if len(examples) < _EXAMPLES_SHOWN:
                examples.append(
                    f"row {index} (too_long: {len(ids)} > max_prompt_tokens {spec.max_prompt_tokens})"
                )
            continue
        pid = str(row[spec.data.id_field]) if spec.data.id_field else str(index)
        if pid in seen:
            raise SpecError(
                f"{src}: data.id_field: {spec.data.id_field!r} is not unique in {where} "
                f"(rows {seen[pid]} and {index} are both {pid!r})"
            )
        seen[pid] = index
        example = dict(row)
        if answer is not None:
            example["answer"] = answer
        groups = {name: str(row.get(name)) for name in spec.breakdown}
        problems.append(Problem(pid, index, text, list(ids), example, groups))
    return ProblemSet(problems, where, len(rows), dict(skipped), examples)


def drop_too_long(problems: ProblemSet, max_prompt_len: int) -> None:
    """Skip (and count) problems whose prompt does not fit the engine's context with room to generate."""
    kept = []
    for p in problems.problems:
        if len(p.prompt_ids) >= max_prompt_len:
            problems.skipped["too_long"] = problems.skipped.get("too_long", 0) + 1
            if len(problems.skipped_examples) < _EXAMPLES_SHOWN:
                problems.skipped_examples.append(
                    f"row {p.index} (too_long: {len(p.prompt_ids)} tokens, context {max_prompt_len})"
                )
            continue
        kept.append(p)
    problems.problems = kept

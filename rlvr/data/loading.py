"""Load a prompt set with ``datasets``, validate its rows and render the prompts the engine will see.

A recipe's ``data`` section maps onto :class:`DataConfig`. :func:`load_prompts` reads a local
``.jsonl`` / ``.json`` / ``.parquet`` file, a local folder of such files (one file per split, e.g.
``train.jsonl`` and ``test.jsonl``), or a hub dataset by name, then turns every valid row into::

    {**original_row_fields, "prompt": str, "prompt_ids": list[int], "answer": str, "index": int,
     "prompt_id": int, "data_source": str}

``prompt`` is the final text given to the rollout engine (chat template applied unless
``chat_template=False``), ``prompt_ids`` its token ids, ``answer`` the gold answer as a string,
``index`` the row's position in the source file, ``prompt_id`` its position in the processed dataset (what
per-prompt statistics are keyed by) and ``data_source`` the name of its source (``data.source``, else the
row's own ``data_source`` column, else the file or dataset name without suffixes). Invalid rows are skipped
with a warning or, with ``invalid_rows="error"``, stop the run with an error naming the file, row and field.

``.jsonl`` files (also gzipped) are read line by line, so a line that is not a JSON object is one more
invalid row, reported with its line number, not a failed load; other formats go through ``datasets``.
Every problem that stops loading is a :class:`DataError` (a :class:`~rlvr.config.RecipeError`: ``rlvr
train`` prints it in one line) naming the file, the line/row or the recipe key, and what was expected.
:func:`check_data_file` runs the checks that need only the first rows of a local file (empty file,
columns, prompt template) when the recipe loads, before any model does.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import re
import string
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvr.config import DataConfig, RecipeError, looks_local

logger = logging.getLogger(__name__)

_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_EXAMPLES_SHOWN = 3
_PEEK_ROWS = 20
"""Rows :func:`check_data_file` reads when the recipe loads."""


class DataError(RecipeError):
    """The prompt data cannot be used; the message names the file, the line/row or the recipe key, and what
    was expected (``train.jsonl: line 7: not valid JSON ...``)."""


@dataclass
class PromptDataset:
    """The processed prompt set: a list of row dicts with ``len()``, indexing and iteration."""

    rows: list[dict[str, Any]]
    source: str
    skipped: dict[str, int] = field(default_factory=dict)
    """Number of skipped rows per reason."""
    fingerprint_keys: tuple[str, ...] = ("data_source", "prompt", "answer")
    """The row keys :meth:`fingerprint` hashes (preference rows: their responses instead of an answer)."""

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def fingerprint(self) -> str:
        """sha256 of every row's source, prompt and answer (:attr:`fingerprint_keys`), in order: per-prompt
        statistics are keyed by position, so processes and a resumed run must hold the same prompts in the
        same order."""
        digest = hashlib.sha256()
        for row in self.rows:
            digest.update(json.dumps([row[key] for key in self.fingerprint_keys]).encode())
        return digest.hexdigest()


class _InvalidRow(Exception):
    """A failed row check: ``reason`` is a short key, ``message`` names the field and what was expected."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def load_prompts(cfg: DataConfig, tokenizer: Any) -> PromptDataset:
    """Load, validate and render the prompts described by ``cfg`` (see the module docstring): the file or
    dataset of ``data.path``, or every one of ``data.sources`` in turn, concatenated (``prompt_id`` runs
    over all of them).

    Raises:
        DataError: the data cannot be read, is empty, lacks the prompt or answer column, the template does
            not fit it, no row is valid, or (``invalid_rows="error"``) a row is invalid.
    """
    if cfg.invalid_rows not in ("skip", "error"):
        raise DataError(f"data.invalid_rows: expected 'skip' or 'error', got {cfg.invalid_rows!r}")
    if not cfg.sources:
        return _load_source(cfg, tokenizer, _load_raw(cfg))
    parts = []
    for i, source in enumerate(cfg.sources):
        sub = source_config(cfg, source)
        try:
            if source.task is not None:
                from rlvr.data.tasks import TaskError, task_rows

                try:
                    rows = task_rows(
                        source.task,
                        size=source.size,
                        seed=source.seed,
                        config=source.config,
                        prompt_field=sub.prompt_field,
                        answer_field=sub.answer_field,
                        columns=source.columns,
                    )
                except TaskError as exc:
                    raise DataError(f"data.sources[{i}].{exc.key}: {exc}") from None
                raw = _RawRows(rows, list(rows[0]) if rows else [], f"task {source.task} ({sub.source})")
            else:
                raw = _load_raw(sub)
                if source.columns:
                    raw.rows = [
                        r if isinstance(r, _InvalidRow) else {**r, **source.columns} for r in raw.rows
                    ]
                    raw.columns = list(dict.fromkeys([*raw.columns, *source.columns]))
            parts.append(_load_source(sub, tokenizer, raw))
        except DataError as exc:
            raise DataError(source_key(str(exc), i)) from None
    rows = [{**row, "prompt_id": k} for k, row in enumerate(r for part in parts for r in part.rows)]
    skipped: Counter[str] = Counter()
    for part in parts:
        skipped.update(part.skipped)
    return PromptDataset(rows=rows, source=" + ".join(p.source for p in parts), skipped=dict(skipped))


_SOURCE_KEY = re.compile(r"data\.(path|split|subset|prompt_field|answer_field|limit|source)\b")
"""The data keys a source sets itself (an error about them names ``data.sources[i].<key>``)."""


def source_key(key: str, i: int) -> str:
    """``data.path`` -> ``data.sources[i].path`` for the keys a source sets; others stay data keys."""
    return _SOURCE_KEY.sub(lambda m: f"data.sources[{i}].{_OWN_KEY.get(m.group(1), m.group(1))}", key)


_OWN_KEY = {"source": "name"}
"""data keys a source calls otherwise."""


def source_config(cfg: DataConfig, source: Any) -> DataConfig:
    """The data section as it applies to one of ``data.sources``: its own path, split, fields, limit and
    name, the shared template, system prompt and limits."""
    sub = cfg.model_copy(
        update={
            "path": source.path,
            "split": source.split,
            "subset": source.subset,
            "prompt_field": source.prompt_field or cfg.prompt_field,
            "answer_field": source.answer_field or cfg.answer_field,
            "limit": source.limit,
            "sources": [],
        }
    )
    default = source.task if source.task is not None else source_name(sub)
    return sub.model_copy(update={"source": source.name or default})


def _load_source(cfg: DataConfig, tokenizer: Any, raw: _RawRows) -> PromptDataset:
    """Validate and render the rows of one source."""
    source = raw.source
    if not raw.rows:
        raise DataError(f"{source}: holds no rows; {_EXPECTED_ROWS}")
    problem = columns_problem(raw.columns, cfg) if raw.columns else None  # no columns: no valid line
    if problem is not None:
        key, message = problem
        raise DataError(f"{source}: {key}: {message}")
    rows_in = raw.rows[: cfg.limit] if cfg.limit is not None else raw.rows

    skipped: Counter[str] = Counter()
    examples: list[str] = []

    def reject(index: int, problem: _InvalidRow) -> None:
        if cfg.invalid_rows == "error":
            raise DataError(f"{source}: {raw.where(index)}: {problem.message} (data.invalid_rows: error)")
        skipped[problem.reason] += 1
        if len(examples) < _EXAMPLES_SHOWN:
            examples.append(f"{raw.where(index)} ({problem.reason}: {problem.message})")

    candidates: list[tuple[int, dict[str, Any], str, str]] = []
    for index, row in enumerate(rows_in):
        try:
            if isinstance(row, _InvalidRow):
                raise row
            prompt_text = _prompt_text(row, cfg)
            answer = _answer_text(row, cfg)
        except _InvalidRow as problem:
            reject(index, problem)
            continue
        text = _render(prompt_text, row, cfg, tokenizer, f"{source}: {raw.where(index)}")
        candidates.append((index, row, text, answer))

    default_source = source_name(cfg)
    texts = [text for _, _, text, _ in candidates]
    encoded = tokenizer(texts, add_special_tokens=not cfg.chat_template)["input_ids"] if texts else []
    rows: list[dict[str, Any]] = []
    for (index, row, text, answer), ids in zip(candidates, encoded, strict=True):
        if len(ids) > cfg.max_prompt_tokens:
            message = f"rendered prompt has {len(ids)} tokens; expected at most {cfg.max_prompt_tokens}"
            reject(index, _InvalidRow("too_long", f"{message} (data.max_prompt_tokens)"))
            continue
        own = row.get("data_source")
        rows.append(
            {
                **row,
                "prompt": text,
                "prompt_ids": list(ids),
                "answer": answer,
                "index": index,
                "prompt_id": len(rows),
                "data_source": cfg.source or (own if isinstance(own, str) and own else default_source),
            }
        )

    counts = ", ".join(f"{reason}={n}" for reason, n in sorted(skipped.items()))
    if not rows:
        raise DataError(
            f"{source}: no valid prompt rows: all {len(rows_in)} were invalid ({counts}); first: "
            f"{'; '.join(examples)}"
        )
    if skipped:
        logger.warning(
            "skipped %d of %d rows from %s (%s); first: %s",
            sum(skipped.values()),
            len(rows_in),
            source,
            counts,
            "; ".join(examples),
        )
    return PromptDataset(rows=rows, source=source, skipped=dict(skipped))


def source_name(cfg: DataConfig) -> str:
    """The data source name of rows without their own: the file name without suffixes
    (``data/mix/train.jsonl.gz`` -> ``train``), the folder name, or the hub dataset name."""
    name = Path(str(cfg.path).rstrip("/")).name
    return name.split(".", 1)[0] or str(cfg.path)


_EXPECTED_ROWS = (
    "expected one JSON object per line (.jsonl), a JSON list of objects (.json) or a table (.parquet)"
)


@dataclass
class _RawRows:
    """The rows of a source before validation: dicts, or :class:`_InvalidRow` for a line that is none."""

    rows: Sequence[dict[str, Any] | _InvalidRow]
    columns: list[str]
    source: str
    lines: list[int] | None = None
    """The line number of each row (.jsonl), for messages; None: rows are named by index."""

    def where(self, index: int) -> str:
        return f"line {self.lines[index]}" if self.lines is not None else f"row {index}"


def _is_jsonl(path: Path) -> bool:
    return path.name.lower().endswith((".jsonl", ".jsonl.gz"))


def _read_jsonl(path: Path, max_rows: int | None = None) -> _RawRows:
    """Rows of a JSON Lines file (gzipped if it ends in .gz); blank lines are ignored, and a line that is
    not a UTF-8 JSON object becomes an :class:`_InvalidRow`. Missing keys are filled with None (as
    ``datasets`` does), so every row has every column."""
    rows: list[dict[str, Any] | _InvalidRow] = []
    lines: list[int] = []
    columns: dict[str, None] = {}
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if max_rows is not None and len(rows) >= max_rows:
                    break
                if not raw.strip():
                    continue
                lines.append(number)
                rows.append(_parse_line(raw))
                if isinstance(rows[-1], dict):
                    columns.update(dict.fromkeys(rows[-1]))
    except (OSError, EOFError, zlib.error) as err:  # unreadable, or a broken gzip stream
        raise DataError(f"{path}: cannot be read: {err}") from None
    filled = [row if isinstance(row, _InvalidRow) else {c: row.get(c) for c in columns} for row in rows]
    return _RawRows(filled, list(columns), str(path), lines)


def _parse_line(raw: bytes) -> dict[str, Any] | _InvalidRow:
    try:
        value = json.loads(raw.decode("utf-8-sig").strip())  # -sig: a byte-order mark is no error
    except UnicodeDecodeError as err:
        return _InvalidRow("invalid_json", f"not UTF-8 text ({err.reason} at byte {err.start})")
    except json.JSONDecodeError as err:
        return _InvalidRow("invalid_json", f"not valid JSON ({err.msg} at column {err.colno})")
    except (ValueError, RecursionError) as err:  # e.g. an integer of 5000 digits, nesting 100000 deep
        return _InvalidRow("invalid_json", f"not valid JSON ({type(err).__name__}: {str(err)[:120]})")
    if not isinstance(value, dict):
        return _InvalidRow("invalid_json", f"expected a JSON object, got a JSON {type(value).__name__}")
    return value


def _load_raw(cfg: DataConfig) -> _RawRows:
    """The rows of a local file/folder or a hub dataset, with their column names and a description."""
    if cfg.path is None:
        raise DataError(
            "data.path: required: a .jsonl/.json/.parquet file, a folder of them or a hub dataset"
        )
    path = Path(cfg.path).expanduser()
    if path.is_file():
        if _is_jsonl(path):
            return _read_jsonl(path)
        builder = _LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            known = ", ".join([*sorted(_LOCAL_FORMATS), ".jsonl.gz"])
            raise DataError(
                f"{path}: data.path: unsupported file type {path.suffix!r}; expected one of {known}"
            )
        dataset = _datasets_call(
            str(path), f"cannot be read as {builder}", builder, data_files=str(path), split="train"
        )
        return _RawRows(dataset.to_list(), list(dataset.column_names), str(path))
    if path.is_dir():
        source = f"{path} [{cfg.split}]"
        dataset = _datasets_call(
            source,
            f"cannot load split {cfg.split!r} (data.split) from the folder",
            str(path),
            split=cfg.split,
        )
        return _RawRows(dataset.to_list(), list(dataset.column_names), source)
    if looks_local(cfg.path):
        raise DataError(f"{cfg.path}: data.path: file not found (looked for {path.resolve()})")
    source = f"{cfg.path}" + (f"/{cfg.subset}" if cfg.subset else "") + f" [{cfg.split}]"
    dataset = _datasets_call(
        source,
        "data.path is not a local file or folder, and loading it as a hub dataset failed (with no network, "
        "or HF_DATASETS_OFFLINE / HF_HUB_OFFLINE set, only a dataset already in the datasets cache loads; "
        "check data.path, data.subset and data.split, or give a local .jsonl/.json/.parquet file)",
        cfg.path,
        cfg.subset,
        split=cfg.split,
    )
    return _RawRows(dataset.to_list(), list(dataset.column_names), source)


def _datasets_call(source: str, what: str, *args: Any, **kwargs: Any):
    """``datasets.load_dataset(*args, **kwargs)``; any failure is a :class:`DataError` naming ``source``."""
    from datasets import load_dataset

    try:
        return load_dataset(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds (even a bare StopIteration)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if "corresponds to no data" in reason:  # datasets' words for an empty file or split
            raise DataError(f"{source}: holds no rows; {_EXPECTED_ROWS}") from None
        raise DataError(f"{source}: {what}: {type(err).__name__}{': ' + reason if reason else ''}") from None


def columns_problem(columns: Sequence[str], cfg: DataConfig) -> tuple[str, str] | None:
    """``(recipe key, what is wrong)`` when the prompt or answer column is missing from ``columns`` or
    ``cfg.prompt_template`` does not fit them; None when they fit."""
    for key, name, holds in (
        ("prompt_field", cfg.prompt_field, "prompt"),
        ("answer_field", cfg.answer_field, "gold answer"),
    ):
        if name not in columns:
            return (
                f"data.{key}",
                f"{name!r} is not a column (columns: {', '.join(columns) or 'none'}); set data.{key} to the "
                f"column holding the {holds}",
            )
    problem = template_problem(cfg.prompt_template, columns)
    return None if problem is None else ("data.prompt_template", problem)


def template_problem(template: str, columns: Sequence[str]) -> str | None:
    """What is wrong with ``template`` as a prompt template over rows with ``columns``; None if nothing."""
    try:
        names = _template_fields(template)
    except ValueError as err:
        return f"{template!r} is not a valid format string ({err}); write literal braces as '{{{{' and '}}}}'"
    known = ["prompt", *(c for c in columns if c != "prompt")]
    for name in names:
        if name == "" or name.isdigit():
            return f"{template!r} has a positional field {{{name}}}; name a row field: {', '.join(known)}"
        if name not in known:
            return (
                f"{template!r} uses {{{name}}}, which is not a row field (fields: {', '.join(known)}); write "
                "literal braces as '{{' and '}}'"
            )
    return None


def _template_fields(template: str) -> list[str]:
    """The row fields a format string reads (``{kind}``, ``{meta[x]}`` -> meta, nested specs included)."""
    names = []
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is None:
            continue
        names.append(re.split(r"[.\[]", name, maxsplit=1)[0])
        if spec and "{" in spec:
            names.extend(_template_fields(spec))
    return names


def check_data_file(cfg: DataConfig) -> tuple[str, str] | None:
    """The checks the first rows of a local file allow, run when the recipe loads: ``(recipe key, what is
    wrong)`` for an empty file, a missing prompt/answer column or a prompt template that does not fit; None
    when they pass or cannot be made cheaply (hub datasets, folders, .json files).

    Only the first rows of a .jsonl file are read (a column missing from all of them is missing), and only
    the schema of a .parquet file.
    """
    if cfg.path is None:
        return None
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        return None
    if _is_jsonl(path):
        try:
            raw = _read_jsonl(path, max_rows=_PEEK_ROWS)
        except DataError as err:
            return "data.path", str(err)
        if not raw.rows:
            return "data.path", f"{path} holds no rows; {_EXPECTED_ROWS}"
        if not raw.columns:  # no valid row among the first ones: loading reports them
            return None
        columns, num_rows = raw.columns, len(raw.rows)
    elif path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path)
            columns, num_rows = list(meta.schema_arrow.names), meta.metadata.num_rows
        except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a broken file
            return "data.path", f"{path} is not a readable parquet file ({type(err).__name__}: {err})"
        if not num_rows:
            return "data.path", f"{path} holds no rows; {_EXPECTED_ROWS}"
    else:
        return None
    if cfg.format == "prompts":
        problem = columns_problem(columns, cfg)
    else:
        from rlvr.data.pairs import columns_problem as pair_columns_problem

        problem = pair_columns_problem(columns, cfg)
    if problem is None:
        return None
    key, message = problem
    return key, f"{message} (in {path})"


def _prompt_text(row: Mapping[str, Any], cfg: DataConfig) -> str:
    value = row.get(cfg.prompt_field)
    if value is None:
        raise _InvalidRow(
            "missing_prompt", f"field {cfg.prompt_field!r} is missing; expected a non-empty string"
        )
    if not isinstance(value, str):
        raise _InvalidRow(
            "prompt_not_string",
            f"field {cfg.prompt_field!r} is a {type(value).__name__}; expected a non-empty string",
        )
    if not value.strip():
        raise _InvalidRow("empty_prompt", f"field {cfg.prompt_field!r} is empty; expected a non-empty string")
    return value


def _answer_text(row: Mapping[str, Any], cfg: DataConfig) -> str:
    value = row.get(cfg.answer_field)
    expected = "expected a non-empty string or a number"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise _InvalidRow("missing_answer", f"field {cfg.answer_field!r} is missing; {expected}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _InvalidRow(
            "answer_not_scalar", f"field {cfg.answer_field!r} is a {type(value).__name__}; {expected}"
        )
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise _InvalidRow("empty_answer", f"field {cfg.answer_field!r} is empty; {expected}")
    return text


def _render(
    prompt_text: str, row: Mapping[str, Any], cfg: DataConfig, tokenizer: Any, where: str = ""
) -> str:
    """The prompt text the engine sees; ``where`` (``FILE: line N``) prefixes a template error."""
    try:
        user = cfg.prompt_template.format_map({**row, "prompt": prompt_text})
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as err:
        raise DataError(
            f"{where + ': ' if where else ''}data.prompt_template: {cfg.prompt_template!r} cannot be filled "
            "from this row "
            f"(fields: {', '.join(row)}, plus 'prompt'): {type(err).__name__}: {err}; write literal "
            "braces as '{{' and '}}'"
        ) from None
    if not cfg.chat_template:
        return user if cfg.system_prompt is None else f"{cfg.system_prompt}\n\n{user}"
    messages = [{"role": "user", "content": user}]
    if cfg.system_prompt is not None:
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "data.chat_template: true, but the model's tokenizer has no chat template; set "
            "data.chat_template: false to give the model the plain prompt"
        )
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

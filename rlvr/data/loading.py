"""Load a prompt set with ``datasets``, validate its rows and render the prompts the engine will see.

A recipe's ``data`` section maps onto :class:`DataConfig`. :func:`load_prompts` reads a local
``.jsonl`` / ``.json`` / ``.parquet`` file, a local folder of such files (one file per split, e.g.
``train.jsonl`` and ``test.jsonl``), or a hub dataset by name, then turns every valid row into::

    {**original_row_fields, "prompt": str, "prompt_ids": list[int], "answer": str, "index": int}

``prompt`` is the final text given to the rollout engine (chat template applied unless
``chat_template=False``), ``prompt_ids`` its token ids, ``answer`` the gold answer as a string and
``index`` the row's position in the source file. Invalid rows are skipped with a warning or, with
``invalid_rows="error"``, stop the run with an error naming the file, row and field.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlvr.config import DataConfig, looks_local

logger = logging.getLogger(__name__)

_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_EXAMPLES_SHOWN = 3


@dataclass
class PromptDataset:
    """The processed prompt set: a list of row dicts with ``len()``, indexing and iteration."""

    rows: list[dict[str, Any]]
    source: str
    skipped: dict[str, int] = field(default_factory=dict)
    """Number of skipped rows per reason."""

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)


class _InvalidRow(Exception):
    """A failed row check: ``reason`` is a short key, ``message`` names the field and what was expected."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def load_prompts(cfg: DataConfig, tokenizer: Any) -> PromptDataset:
    """Load, validate and render the prompts described by ``cfg`` (see the module docstring)."""
    if cfg.invalid_rows not in ("skip", "error"):
        raise ValueError(f"data.invalid_rows must be 'skip' or 'error', got {cfg.invalid_rows!r}")
    dataset, source = _load_raw(cfg)
    _check_columns(dataset.column_names, cfg, source)
    if cfg.limit is not None:
        dataset = dataset.select(range(min(cfg.limit, len(dataset))))

    skipped: Counter[str] = Counter()
    examples: list[str] = []

    def reject(index: int, problem: _InvalidRow) -> None:
        if cfg.invalid_rows == "error":
            raise ValueError(f"{source}, row {index}: {problem.message}")
        skipped[problem.reason] += 1
        if len(examples) < _EXAMPLES_SHOWN:
            examples.append(f"row {index} ({problem.reason}: {problem.message})")

    candidates: list[tuple[int, dict[str, Any], str, str]] = []
    for index, row in enumerate(dataset):
        try:
            prompt_text = _prompt_text(row, cfg)
            answer = _answer_text(row, cfg)
        except _InvalidRow as problem:
            reject(index, problem)
            continue
        candidates.append((index, row, _render(prompt_text, row, cfg, tokenizer), answer))

    texts = [text for _, _, text, _ in candidates]
    encoded = tokenizer(texts, add_special_tokens=not cfg.chat_template)["input_ids"] if texts else []
    rows: list[dict[str, Any]] = []
    for (index, row, text, answer), ids in zip(candidates, encoded, strict=True):
        if len(ids) > cfg.max_prompt_tokens:
            message = f"rendered prompt has {len(ids)} tokens; expected at most {cfg.max_prompt_tokens}"
            reject(index, _InvalidRow("too_long", f"{message} (data.max_prompt_tokens)"))
            continue
        rows.append({**row, "prompt": text, "prompt_ids": list(ids), "answer": answer, "index": index})

    if skipped:
        counts = ", ".join(f"{reason}={n}" for reason, n in sorted(skipped.items()))
        logger.warning(
            "skipped %d of %d rows from %s (%s); first: %s",
            sum(skipped.values()),
            len(dataset),
            source,
            counts,
            "; ".join(examples),
        )
    if not rows:
        raise ValueError(f"no valid prompt rows in {source} (data.path); skipped: {dict(skipped)}")
    return PromptDataset(rows=rows, source=source, skipped=dict(skipped))


def _load_raw(cfg: DataConfig):
    """Return ``(datasets.Dataset, description)`` for a local file/folder or a hub dataset."""
    from datasets import load_dataset

    path = Path(cfg.path).expanduser()
    if path.is_file():
        builder = _LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            known = ", ".join(sorted(_LOCAL_FORMATS))
            raise ValueError(
                f"data.path {path}: unsupported file type {path.suffix!r}; expected one of {known}"
            )
        return load_dataset(builder, data_files=str(path), split="train"), str(path)
    if path.is_dir():
        try:
            return load_dataset(str(path), split=cfg.split), f"{path} [{cfg.split}]"
        except ValueError as err:  # typically an unknown split
            raise ValueError(
                f"data.path {path}: cannot load split {cfg.split!r} (data.split): {err}"
            ) from err
    if looks_local(cfg.path):
        raise FileNotFoundError(f"data.path: {cfg.path} does not exist (looked for {path.resolve()})")
    try:
        dataset = load_dataset(cfg.path, cfg.subset, split=cfg.split)
    except Exception as err:
        raise RuntimeError(
            f"data.path {cfg.path!r} is not a local file or folder and could not be loaded as a hub dataset "
            f"(subset={cfg.subset!r}, split={cfg.split!r}); with HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set it "
            f"must already be cached: {err}"
        ) from err
    return dataset, f"{cfg.path}" + (f"/{cfg.subset}" if cfg.subset else "") + f" [{cfg.split}]"


def _check_columns(columns: list[str], cfg: DataConfig, source: str) -> None:
    for key, name in (("prompt_field", cfg.prompt_field), ("answer_field", cfg.answer_field)):
        if name not in columns:
            raise ValueError(
                f"data.{key} {name!r} is not a column of {source}; columns: {', '.join(columns)}"
            )


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


def _render(prompt_text: str, row: Mapping[str, Any], cfg: DataConfig, tokenizer: Any) -> str:
    try:
        user = cfg.prompt_template.format_map({**row, "prompt": prompt_text})
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"data.prompt_template {cfg.prompt_template!r} cannot be filled from a row "
            f"(fields: {', '.join(row)}, plus 'prompt'): {err!r}; write literal braces as '{{{{' and '}}}}'"
        ) from err
    if not cfg.chat_template:
        return user if cfg.system_prompt is None else f"{cfg.system_prompt}\n\n{user}"
    messages = [{"role": "user", "content": user}]
    if cfg.system_prompt is not None:
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("data.chat_template is true but the tokenizer has no chat template")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

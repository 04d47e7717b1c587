"""Load preference data for offline training: (prompt, chosen, rejected) pairs, or unpaired (prompt,
completion, label) rows for KTO.

``data.format: pairs`` / ``unpaired`` select this loader; the file, folder or hub dataset is read as for
prompts (:mod:`rlvr.data.loading`), with the field names of the ``data`` section (``prompt_field``,
``chosen_field``, ``rejected_field``, ``completion_field``, ``label_field``). Two forms are accepted, row by
row:

* plain text: the prompt is a string (filled into ``data.prompt_template``, wrapped in the tokenizer's chat
  template unless ``data.chat_template: false``) and each response a string;
* conversational: the prompt is a list of ``{role, content}`` messages and each response a list of
  (assistant) messages, rendered with the tokenizer's chat template.

A response's tokens are what the chat template puts after the prompt's generation prompt (for SmolLM2:
the content, ``<|im_end|>`` and a newline); without the chat template, the response text and the EOS
token. Each valid row becomes::

    {**original_row_fields, "prompt": str, "prompt_ids": list[int], "chosen": str, "chosen_ids": list[int],
     "rejected": str, "rejected_ids": list[int], "index": int, "prompt_id": int, "data_source": str}

(``completion`` / ``completion_ids`` / ``label`` for unpaired rows). Invalid rows (a missing or empty field,
a prompt over ``data.max_prompt_tokens``, identical chosen and rejected responses, a label that is not a
boolean) are counted and reported with the first examples, then skipped, or stop the run with
``data.invalid_rows: error``. Responses longer than ``data.max_response_tokens`` are truncated (counted).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from rlvr.config import DataConfig
from rlvr.data.loading import (
    _EXAMPLES_SHOWN,
    DataError,
    PromptDataset,
    _InvalidRow,
    _load_raw,
    source_name,
)

logger = logging.getLogger(__name__)

RESPONSE_KEYS = {"pairs": ("chosen", "rejected"), "unpaired": ("completion",)}
"""The response fields of each data format, by their key in the processed rows."""


def response_fields(cfg: DataConfig) -> dict[str, str]:
    """Processed key -> the row field holding it (``chosen`` -> ``cfg.chosen_field``) for ``cfg.format``."""
    names = {"chosen": cfg.chosen_field, "rejected": cfg.rejected_field, "completion": cfg.completion_field}
    return {key: names[key] for key in RESPONSE_KEYS[cfg.format]}


def columns_problem(columns: list[str], cfg: DataConfig) -> tuple[str, str] | None:
    """``(recipe key, what is wrong)`` when a column the format needs is missing; None when all are there."""
    needed = {"prompt_field": cfg.prompt_field}
    needed.update({f"{key}_field": name for key, name in response_fields(cfg).items()})
    if cfg.format == "unpaired":
        needed["label_field"] = cfg.label_field
    for key, name in needed.items():
        if name not in columns:
            return (
                f"data.{key}",
                f"{name!r} is not a column (columns: {', '.join(columns) or 'none'}); data.format "
                f"{cfg.format!r} reads {', '.join(repr(n) for n in needed.values())}",
            )
    return None


def _messages(value: Any, field: str, role: str | None) -> list[dict[str, str]]:
    """A field as chat messages: a string becomes one message of ``role``; a list must hold
    ``{role, content}`` dicts with string values."""
    if isinstance(value, str):
        if not value.strip():
            raise _InvalidRow("empty_field", f"field {field!r} is empty; expected text or chat messages")
        return [{"role": role or "user", "content": value}]
    if isinstance(value, list) and value:
        for m in value:
            if not (
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            ):
                raise _InvalidRow(
                    "bad_messages",
                    f"field {field!r} holds {str(m)[:60]!r}; expected chat messages "
                    "{role: str, content: str}",
                )
        return [{"role": m["role"], "content": m["content"]} for m in value]
    if value is None:
        raise _InvalidRow("missing_field", f"field {field!r} is missing; expected text or chat messages")
    raise _InvalidRow(
        "bad_field", f"field {field!r} is a {type(value).__name__}; expected text or a list of chat messages"
    )


def _label(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise _InvalidRow("bad_label", f"field {field!r} is {value!r}; expected true/false or 1/0")


class _Renderer:
    """Turns a row's prompt and responses into text the way the recipe says (chat template or plain)."""

    def __init__(self, cfg: DataConfig, tokenizer: Any) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer
        if cfg.chat_template and not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "data.chat_template: true, but the model's tokenizer has no chat template; set "
                "data.chat_template: false to give the model the plain prompt"
            )

    def prompt(self, row: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str]:
        cfg, value = self.cfg, row.get(self.cfg.prompt_field)
        if isinstance(value, str) or value is None:
            text = _messages(value, cfg.prompt_field, "user")[0]["content"]
            try:
                user = cfg.prompt_template.format_map({**row, "prompt": text})
            except (KeyError, IndexError, ValueError, TypeError, AttributeError) as err:
                raise _InvalidRow("template", f"data.prompt_template cannot be filled: {err}") from None
            messages = [{"role": "user", "content": user}]
        else:
            messages = _messages(value, cfg.prompt_field, "user")
        if cfg.system_prompt is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": cfg.system_prompt})
        if not cfg.chat_template:
            if len(messages) > 2 or messages[-1]["role"] != "user":
                raise _InvalidRow(
                    "needs_chat_template", "a conversation prompt needs data.chat_template: true"
                )
            text = messages[-1]["content"]
            return None, text if cfg.system_prompt is None else f"{cfg.system_prompt}\n\n{text}"
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return messages, rendered

    def response(
        self, messages: list[dict[str, str]] | None, prompt_text: str, value: Any, field: str
    ) -> str:
        answer = _messages(value, field, "assistant")
        if messages is None:  # plain text: the response and the end of sequence
            if len(answer) != 1:
                raise _InvalidRow(
                    "needs_chat_template", f"field {field!r}: messages need data.chat_template: true"
                )
            return answer[0]["content"] + (self.tokenizer.eos_token or "")
        full = self.tokenizer.apply_chat_template(messages + answer, tokenize=False)
        if not full.startswith(prompt_text):
            raise _InvalidRow(
                "template_mismatch",
                f"field {field!r}: the chat template renders the conversation with another prefix than the "
                "prompt alone, so the response tokens cannot be told apart",
            )
        return full[len(prompt_text) :]


def load_pairs(cfg: DataConfig, tokenizer: Any) -> PromptDataset:
    """Load, validate and tokenize the preference rows described by ``cfg`` (see the module docstring).

    Raises:
        DataError: the data cannot be read, is empty, lacks a column the format reads, no row is valid, or
            (``invalid_rows="error"``) a row is invalid.
    """
    if cfg.format not in RESPONSE_KEYS:
        raise DataError(f"data.format: load_pairs reads pairs or unpaired rows, not {cfg.format!r}")
    raw = _load_raw(cfg)
    source = raw.source
    if not raw.rows:
        raise DataError(f"{source}: holds no rows")
    problem = columns_problem(raw.columns, cfg) if raw.columns else None
    if problem is not None:
        key, message = problem
        raise DataError(f"{source}: {key}: {message}")
    rows_in = raw.rows[: cfg.limit] if cfg.limit is not None else raw.rows
    render = _Renderer(cfg, tokenizer)
    fields = response_fields(cfg)
    skipped: Counter[str] = Counter()
    truncated = 0
    examples: list[str] = []

    def reject(index: int, problem: _InvalidRow) -> None:
        if cfg.invalid_rows == "error":
            raise DataError(f"{source}: {raw.where(index)}: {problem.message} (data.invalid_rows: error)")
        skipped[problem.reason] += 1
        if len(examples) < _EXAMPLES_SHOWN:
            examples.append(f"{raw.where(index)} ({problem.reason}: {problem.message})")

    default_source = source_name(cfg)
    rows: list[dict[str, Any]] = []
    for index, row in enumerate(rows_in):
        try:
            if isinstance(row, _InvalidRow):
                raise row
            messages, prompt_text = render.prompt(row)
            texts = {key: render.response(messages, prompt_text, row.get(f), f) for key, f in fields.items()}
            if cfg.format == "pairs" and texts["chosen"] == texts["rejected"]:
                raise _InvalidRow("same_responses", "chosen and rejected responses are identical")
            label = _label(row.get(cfg.label_field), cfg.label_field) if cfg.format == "unpaired" else None
            prompt_ids = tokenizer(prompt_text, add_special_tokens=not cfg.chat_template)["input_ids"]
            if len(prompt_ids) > cfg.max_prompt_tokens:
                raise _InvalidRow(
                    "too_long",
                    f"rendered prompt has {len(prompt_ids)} tokens; expected at most {cfg.max_prompt_tokens} "
                    "(data.max_prompt_tokens)",
                )
        except _InvalidRow as problem:
            reject(index, problem)
            continue
        processed = {**row, "prompt": prompt_text, "prompt_ids": list(prompt_ids)}
        for key, text in texts.items():
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > cfg.max_response_tokens:
                truncated += 1
                ids = ids[: cfg.max_response_tokens]
            processed[key], processed[f"{key}_ids"] = text, list(ids)
        if label is not None:
            processed["label"] = label
        own = row.get("data_source")
        processed.update(
            index=index,
            prompt_id=len(rows),
            data_source=cfg.source or (own if isinstance(own, str) and own else default_source),
        )
        rows.append(processed)

    counts = ", ".join(f"{reason}={n}" for reason, n in sorted(skipped.items()))
    if not rows:
        raise DataError(
            f"{source}: no valid {cfg.format} rows: all {len(rows_in)} were invalid ({counts}); first: "
            f"{'; '.join(examples)}"
        )
    if cfg.format == "unpaired" and len({r["label"] for r in rows}) < 2:
        logger.warning(
            "%s: every row has label %s; KTO learns best from both kinds", source, rows[0]["label"]
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
    if truncated:
        logger.warning(
            "%s: truncated %d response(s) to data.max_response_tokens=%d",
            source,
            truncated,
            cfg.max_response_tokens,
        )
    keys = ("data_source", "prompt", *fields, *(("label",) if cfg.format == "unpaired" else ()))
    return PromptDataset(rows=rows, source=source, skipped=dict(skipped), fingerprint_keys=keys)

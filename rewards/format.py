"""Built-in format verifier, registered as ``"format"``: does the completion follow the answer template?

Tag mode (the default) checks the R1-style template ``<think>...</think>`` then ``<answer>...</answer>``::

    <think>
    reasoning
    </think>
    <answer>72</answer>

against these rules (each one a key of ``info["rules"]``):

* ``think``: the think block appears exactly once, opened before it is closed (``<think>`` once, ``</think>``
  once). With ``require_think=False`` a completion with no think tags at all also passes.
* ``answer``: the answer block appears exactly once, opened before it is closed, with non-blank content.
* ``order``: the think block is closed before the answer block opens (so neither is nested in the other).
  Holds trivially when there are no think tags and none are required.
* ``strict`` (only with ``strict=True``): the rules above hold and only whitespace is outside the blocks.

The score is 1.0 when every rule holds, else 0.0; with ``partial=True`` it is the fraction of rules that hold
(e.g. 2 of 4 gives 0.5). Tags are matched exactly (case-sensitive, no spaces inside the brackets), as the
prompt spells them out. A tag that appears twice fails its rule: a nested ``<think><think>..`` and a second
``<answer>`` are both malformed. ``info`` has ``rules``, ``failed`` (the names that did not hold) and, on
failure, ``reason`` (why the first failed rule failed).

Regex mode: with ``pattern`` set, the score is 1.0 when ``re.fullmatch(pattern, completion, re.DOTALL)``
matches, else 0.0, and the tag options are not used. A pattern prone to catastrophic backtracking can be
slow on long completions; the Scorer's per-sample timeout bounds it, but prefer patterns without nested
quantifiers.

The checks are linear in the completion's length. A format reward is easy to satisfy without solving the
task, so give it a small weight next to a correctness reward (e.g. 0.1 to 0.2).
Configuration errors (a bad pattern, equal tag names) raise ``ValueError``; the Scorer reports them as
failures with that message.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from rlvr.scoring import RewardResult, verifier

__all__ = ["check_format", "format_verifier"]


@lru_cache(maxsize=64)
def _tag_regex(think_tag: str, answer_tag: str) -> re.Pattern[str]:
    return re.compile(f"<(/?)({re.escape(think_tag)}|{re.escape(answer_tag)})>")


@lru_cache(maxsize=64)
def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise ValueError(f"format: invalid pattern {pattern!r}: {exc}") from exc


def _tag_name(tag: Any, what: str) -> str:
    if not isinstance(tag, str):
        raise ValueError(f"format: {what} must be a string, got {type(tag).__name__}")
    name = tag.strip()
    if name.startswith("<") and name.endswith(">"):  # "<think>" is accepted for "think"
        name = name[1:-1].strip()
    if not name or "<" in name or ">" in name or "/" in name:
        raise ValueError(f"format: {what} must be a tag name such as 'think', got {tag!r}")
    return name


def _block(events: list[tuple[int, int, bool]], tag: str) -> tuple[tuple[int, int, int, int] | None, str]:
    """``(open_start, open_end, close_start, close_end)`` of the one well-formed ``tag`` block, or why not."""
    opens = [(s, e) for s, e, closing in events if not closing]
    closes = [(s, e) for s, e, closing in events if closing]
    if len(opens) != 1 or len(closes) != 1:
        return None, f"<{tag}> appears {len(opens)} times, </{tag}> {len(closes)} times; expected once each"
    (o_start, o_end), (c_start, c_end) = opens[0], closes[0]
    if c_start < o_end:
        return None, f"</{tag}> comes before <{tag}>"
    return (o_start, o_end, c_start, c_end), ""


def check_format(
    completion: str,
    think_tag: str = "think",
    answer_tag: str = "answer",
    require_think: bool = True,
    strict: bool = True,
) -> tuple[dict[str, bool], dict[str, str]]:
    """Check the tag rules (see the module docstring): ``(rule -> holds, rule -> why it failed)``."""
    think, answer = _tag_name(think_tag, "think_tag"), _tag_name(answer_tag, "answer_tag")
    if think == answer:
        raise ValueError(f"format: think_tag and answer_tag must differ, both are {think!r}")
    events: dict[str, list[tuple[int, int, bool]]] = {think: [], answer: []}
    for m in _tag_regex(think, answer).finditer(completion):
        events[m.group(2)].append((m.start(), m.end(), m.group(1) == "/"))

    rules: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    think_block = None
    if events[think] or require_think:
        think_block, why = _block(events[think], think)
        rules["think"] = think_block is not None
        if think_block is None:
            reasons["think"] = why if events[think] else f"no <{think}>...</{think}> block"
    else:
        rules["think"] = True
    answer_block, why = _block(events[answer], answer)
    if answer_block is not None and not completion[answer_block[1] : answer_block[2]].strip():
        answer_block, why = None, f"the <{answer}> block is empty"
    rules["answer"] = answer_block is not None
    if answer_block is None:
        reasons["answer"] = why if events[answer] else f"no <{answer}>...</{answer}> block"
    if events[think] or require_think:
        rules["order"] = bool(think_block and answer_block and think_block[3] <= answer_block[0])
        if not rules["order"]:
            reasons["order"] = (
                f"</{think}> must come before <{answer}>"
                if think_block and answer_block
                else f"needs both a <{think}> and an <{answer}> block"
            )
    else:
        rules["order"] = True
    if strict:
        blocks = [b for b in (think_block, answer_block) if b is not None]
        ok = all(rules.values())
        if ok:
            starts = [0] + [b[3] for b in blocks]
            ends = [b[0] for b in blocks] + [len(completion)]
            outside = [completion[s:e] for s, e in zip(starts, ends, strict=True)]
            bad = [text for text in outside if text.strip()]
            ok = not bad
            if bad:
                reasons["strict"] = f"text outside the tags: {bad[0].strip()[:80]!r}"
        else:
            reasons["strict"] = "the tag structure is malformed"
        rules["strict"] = ok
    return rules, reasons


@verifier("format")
def format_verifier(
    completion: str,
    example: dict | None = None,
    think_tag: str = "think",
    answer_tag: str = "answer",
    require_think: bool = True,
    strict: bool = True,
    partial: bool = False,
    pattern: str | None = None,
) -> RewardResult:
    """1.0 if ``completion`` follows the think/answer tag template (or fully matches ``pattern``), else 0.0.

    ``think_tag`` / ``answer_tag``: tag names (``"think"`` / ``"answer"``). ``require_think``: the think
    block is required (else optional, but checked if present). ``strict``: only whitespace may be outside
    the blocks.
    ``partial``: score the fraction of rules that hold instead of all-or-nothing (tag mode only).
    ``pattern``: a regular expression the whole completion must match (``re.DOTALL``); replaces the tag
    rules. ``example`` is not used. See the module docstring for the rules and ``info``.
    """
    if not isinstance(completion, str):
        return RewardResult(0.0, {"error": f"completion must be a str, got {type(completion).__name__}"})
    if pattern is not None:
        if not isinstance(pattern, str):
            raise ValueError(f"format: pattern must be a string, got {type(pattern).__name__}")
        if partial:
            raise ValueError("format: partial=True has no meaning with a pattern (a regex matches or not)")
        matched = _compile(pattern).fullmatch(completion) is not None
        info: dict[str, Any] = {"mode": "pattern", "matched": matched}
        if not matched:
            info["reason"] = "the completion does not fully match the pattern"
        return RewardResult(1.0 if matched else 0.0, info)
    rules, reasons = check_format(completion, think_tag, answer_tag, require_think, strict)
    failed = [name for name, holds in rules.items() if not holds]
    score = (len(rules) - len(failed)) / len(rules) if partial else float(not failed)
    info = {"mode": "tags", "rules": rules, "failed": failed}
    if failed:
        info["reason"] = f"{failed[0]}: {reasons[failed[0]]}"
    return RewardResult(score, info)

"""Built-in math verifier, registered as ``"math"``: is the completion's final answer equal to the gold one?

Equality is decided by `math-verify <https://github.com/huggingface/Math-Verify>`_ (parse both sides to
SymPy, then compare numerically and symbolically), so ``0.5``, ``1/2`` and ``\\frac{1}{2}`` all match.

Gold answers (``example["answer"]``) may be GSM8K solutions ending in ``#### 72`` (what follows ``####`` is
used, commas removed), boxed strings (``\\boxed{\\frac{1}{2}}``), plain numbers (``72``, ``1,000``) or LaTeX
(``\\frac{1}{2}``, ``x^2+1``).

The completion's answer is taken from the first of these that is present:

1. ``answer_tag``: the last ``<answer>...</answer>`` block (its own ``\\boxed{}`` wins if it has one; a long
   block is searched like a whole completion, by rules 2-4);
2. ``boxed``: the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched properly;
3. ``answer_phrase``: the text after the last "answer is" / "answer:" / "####";
4. ``last_expression``: math-verify's default extraction on the end of the completion (the last number or
   expression, with its own preference for "final answer" phrases).

With ``strict_format=True`` only 1 and 2 count. With ``require_number=True`` a numeric gold answer needs a
number, not an expression that evaluates to it.

Adversarial input is bounded: a boxed or tagged answer longer than ``MAX_ANSWER_CHARS`` is ignored, the
phrase and default extractions only look at a bounded window, text nesting brackets deeper than
``MAX_NESTING`` is refused (``info["error"]``), and math-verify's own ``signal.alarm`` timeouts are used when
running in the main thread (they cannot be used in other threads, where the caller, e.g.
:class:`rlvr.scoring.Scorer`, has to enforce time limits).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException
from sympy import Number

from rlvr.scoring import RewardResult, verifier

MAX_ANSWER_CHARS = 1000
"""Boxed / tagged answers longer than this are not parsed (a real final answer is short)."""
TAIL_CHARS = 4000
"""The default extraction only looks at the last this-many characters (math-verify is superlinear)."""
MAX_NESTING = 10
"""Text nesting brackets deeper than this is not parsed: math-verify's time grows exponentially with depth."""
PHRASE_CHARS = 300
"""Characters after an "answer is" phrase that are searched for the answer."""

_DEFAULT_TARGETS = (LatexExtractionConfig(), ExprExtractionConfig())
_ANCHORED_TARGETS = (
    LatexExtractionConfig(try_extract_without_anchor=False),
    ExprExtractionConfig(try_extract_without_anchor=False),
)
_OPEN_TAG = re.compile(r"<answer>", re.IGNORECASE)
_CLOSE_TAG = re.compile(r"</answer>", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\b\s*")
_BE = r"(?:is|was|(?:would|should|will)\s+be)"
_ANSWER_PHRASE = re.compile(rf"(?i:\banswer\b(?:\s+{_BE})?\s*[:=]|\banswer\b\s+{_BE}\b|####)")
_LATEXISH = re.compile(r"[\\^_{}]")
_PROSE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
_NON_BRACKETS = re.compile(r"[^()\[\]{}]+")
_SENTENCE_END = re.compile(r"\n|\.(?:\s|$)")


def _timeout(seconds: int | None) -> int | None:
    """math-verify's ``signal.alarm`` timeouts only work in the main thread; elsewhere disable them."""
    return seconds if threading.current_thread() is threading.main_thread() else None


def _braced(text: str, start: int) -> str | None:
    """Content of the ``{...}`` group opening at ``text[start]`` (escaped braces skipped), or None."""
    if start >= len(text) or text[start] != "{":
        match = re.match(r"[^\s${}]+", text[start : start + 100])  # "\boxed 5"
        return match.group(0) if match else None
    depth, k, end = 0, start, min(len(text), start + MAX_ANSWER_CHARS + 2)
    while k < end:
        ch = text[k]
        if ch == "\\":
            k += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : k]
        k += 1
    return None  # unbalanced (truncated generation) or longer than MAX_ANSWER_CHARS


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{...}`` in ``text`` (the last three are tried), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts[-3:]):
        content = _braced(text, start)
        if content is not None and content.strip():
            return content
    return None


class AnswerTooNested(ValueError):
    """The text nests brackets deeper than ``MAX_NESTING`` (math-verify's parser is exponential there)."""


def nesting_depth(text: str) -> int:
    """Deepest nesting of ``()``, ``[]`` and ``{}`` in ``text`` (bracket kinds are not matched)."""
    depth = deepest = 0
    for ch in _NON_BRACKETS.sub("", text):
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif depth:
            depth -= 1
    return deepest


def _parse(text: str, timeout: int | None, targets: tuple = _DEFAULT_TARGETS) -> list:
    depth = nesting_depth(text)
    if depth > MAX_NESTING:
        raise AnswerTooNested(f"brackets nested {depth} deep (more than {MAX_NESTING}); not parsed")
    return parse(text, extraction_config=list(targets), parsing_timeout=timeout)


def _parse_boxed(content: str, timeout: int | None) -> list:
    return _parse("\\boxed{" + content + "}", timeout)


def _parse_answer_text(text: str, timeout: int | None) -> list:
    """Parse a short answer string that may be a number, plain text with a number, or bare LaTeX."""
    text = text.strip()
    if not text or len(text) > MAX_ANSWER_CHARS:
        return []
    boxed = last_boxed(text)
    if boxed is not None:
        return _parse_boxed(boxed, timeout)
    if "$" not in text and _LATEXISH.search(text):
        found = _parse(f"${text}$", timeout)  # bare LaTeX such as 3\sqrt{2} or x^2+1
        if found:
            return found
    found = _parse(text, timeout)
    if not found and "$" not in text and not _PROSE.search(text):
        found = _parse(f"${text}$", timeout)  # e.g. (1,2); prose would become a product of letters
    return found


def gold_text(gold: Any) -> str:
    """The gold answer as a string: for GSM8K solutions, what follows the last ``####`` without commas."""
    text = str(gold).strip()
    if "####" in text:
        text = text.rpartition("####")[2].strip().replace(",", "")
    return text


@lru_cache(maxsize=4096)
def _parse_gold(text: str, timeout: int | None) -> tuple:
    return tuple(_parse_answer_text(text, timeout))


def _last_match(pattern: re.Pattern[str], text: str, end: int) -> re.Match[str] | None:
    last = None
    for match in pattern.finditer(text, 0, end):
        last = match
    return last


def last_answer_tag(text: str) -> str | None:
    """Content of the last closed ``<answer>...</answer>`` block (case-insensitive), or None. Linear time."""
    close = _last_match(_CLOSE_TAG, text, len(text))
    opening = _last_match(_OPEN_TAG, text, close.start()) if close else None
    return text[opening.end() : close.start()] if opening and close else None


def _extract(
    completion: str, strict_format: bool, timeout: int | None, tags: bool = True
) -> tuple[list, str | None]:
    """The parsed answer candidates of ``completion`` and the method that found them."""
    tag = last_answer_tag(completion) if tags else None
    if tag is not None:
        if len(tag) <= MAX_ANSWER_CHARS:
            return _parse_answer_text(tag, timeout), "answer_tag"
        return _extract(tag, False, timeout, tags=False)[0], "answer_tag"  # a whole solution in the tag
    boxed = last_boxed(completion)
    if boxed is not None:
        return _parse_boxed(boxed, timeout), "boxed"
    if strict_format:
        return [], None
    text = completion.replace("\\$", "")  # an escaped dollar sign (\$18) hides the number from math-verify
    phrases = list(_ANSWER_PHRASE.finditer(text))
    if phrases:
        found = _parse_phrase(text[phrases[-1].end() :][:PHRASE_CHARS], timeout)
        if found:
            return found, "answer_phrase"
    return _parse(text[-TAIL_CHARS:], timeout), "last_expression"


def _parse_phrase(segment: str, timeout: int | None) -> list:
    """The answer at the start of ``segment``, the text after an "answer is" phrase."""
    sentence = _SENTENCE_END.split(segment.strip(), maxsplit=1)[0].strip()
    if "$" not in sentence and _LATEXISH.search(sentence):
        found = _parse(f"${sentence}$", timeout)  # bare LaTeX such as 3\sqrt{2}
        if found:
            return found
    return _parse("answer: " + segment, timeout, _ANCHORED_TARGETS) or _parse_answer_text(sentence, timeout)


def score_math(
    completion: str,
    gold: Any,
    strict_format: bool = False,
    require_number: bool = False,
    timeout_s: int | None = 5,
) -> RewardResult:
    """Compare ``completion``'s final answer with ``gold``; see the module docstring. Never raises."""
    info: dict[str, Any] = {"extracted": None, "gold": None, "method": None}
    try:
        if not isinstance(completion, str):
            raise TypeError(f"completion must be a str, got {type(completion).__name__}")
        timeout = _timeout(timeout_s)
        gold_str = gold_text(gold)
        gold_parsed = _parse_gold(gold_str, timeout)
        info["gold"] = str(gold_parsed[0]) if gold_parsed else gold_str
        if not gold_parsed:
            info["error"] = f"could not parse gold answer {gold_str[:200]!r}"
            return RewardResult(0.0, info)
        found, method = _extract(completion, strict_format, timeout)
        info["method"] = method
        if method is None:
            info["reason"] = "strict_format: no \\boxed{} answer or <answer> tag"
        if not found:
            return RewardResult(0.0, info)
        info["extracted"] = str(found[0])[:200]
        if require_number and isinstance(gold_parsed[0], Number) and not isinstance(found[0], Number):
            info["reason"] = "require_number: the answer is an expression, not a number"
            return RewardResult(0.0, info)
        correct = verify(list(gold_parsed), found, timeout_seconds=timeout)
        return RewardResult(1.0 if correct else 0.0, info)
    except (Exception, TimeoutException) as exc:
        info["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        return RewardResult(0.0, info)


@verifier("math")
def math_verifier(
    completion: str,
    example: dict,
    strict_format: bool = False,
    require_number: bool = False,
    answer_key: str = "answer",
    timeout_s: int | None = 5,
) -> RewardResult:
    """1.0 if the completion's final answer equals ``example[answer_key]`` (mathematically), else 0.0.

    ``strict_format``: only a ``\\boxed{}`` answer or an ``<answer>`` tag counts. ``require_number``: when
    the gold answer is a number, the answer must be a number too (math-verify alone accepts ``41 - 35`` for
    ``6``, which rewards restating an arithmetic question). ``timeout_s``: math-verify's own per-step timeout
    (main thread only; None disables it). ``info`` has ``extracted``, ``gold`` and
    ``method`` (which extraction rule fired), and ``error`` if something went wrong.
    """
    if not isinstance(example, Mapping) or answer_key not in example:
        return RewardResult(0.0, {"error": f"example has no {answer_key!r} field", "extracted": None})
    return score_math(
        completion,
        example[answer_key],
        strict_format=strict_format,
        require_number=require_number,
        timeout_s=timeout_s,
    )

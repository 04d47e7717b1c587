"""Built-in repetition verifier, registered as ``"repetition"``: an n-gram repetition penalty.

The sequence-level penalty of "Demystifying Long Chain-of-Thought Reasoning in LLMs" (Yeo et al. 2025,
arXiv 2502.03373, appendix C.2), in the form open-r1 uses for GRPO (lower-cased whitespace words, n = 3)::

    repeated_fraction = 1 - unique_ngrams / total_ngrams        (in [0, 1), 0 when nothing repeats)
    score             = -max_penalty * repeated_fraction        (in (-max_penalty, 0])

``total_ngrams`` counts every n-gram occurrence (``len(items) - n + 1``) and ``unique_ngrams`` the distinct
ones, so the fraction is the share of n-gram occurrences that repeat an earlier one. A completion with fewer
than ``n`` items (including the empty string) scores 0. It is a penalty meant to be *added* to a
correctness reward; ``max_penalty`` is given as a positive number (open-r1 writes it negative).

``unit: words`` (the default) splits on whitespace; ``unit: chars`` uses character n-grams, for text
without spaces (Chinese, Japanese) or to catch looping inside long tokens: choose a larger ``n`` there
(e.g. 20). ``info`` has ``unit``, ``n``, ``total_ngrams``, ``unique_ngrams`` and ``repeated_fraction``.
Time and memory are linear in the completion's length. Configuration errors raise ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Any

from rlvr.scoring import RewardResult, verifier

__all__ = ["repeated_fraction", "repetition_verifier"]


def repeated_fraction(
    completion: str, n: int = 3, unit: str = "words", lowercase: bool = True
) -> tuple[float, int, int]:
    """``(repeated_fraction, total_ngrams, unique_ngrams)`` of ``completion`` (see the module docstring)."""
    text = completion.lower() if lowercase else completion
    if unit == "words":
        words = text.split()
        total = len(words) - n + 1
        unique = len(set(zip(*(words[i:] for i in range(n)), strict=False))) if total > 0 else 0
    elif unit == "chars":
        total = len(text) - n + 1
        unique = len({text[i : i + n] for i in range(total)}) if total > 0 else 0
    else:
        raise ValueError(f"repetition: unknown unit {unit!r}; expected 'words' or 'chars'")
    if total <= 0:
        return 0.0, 0, 0
    return 1.0 - unique / total, total, unique


@verifier("repetition")
def repetition_verifier(
    completion: str,
    example: dict | None = None,
    n: int = 3,
    max_penalty: float = 1.0,
    unit: str = "words",
    lowercase: bool = True,
) -> RewardResult:
    """``-max_penalty`` times the fraction of repeated ``n``-grams in ``completion`` (0 below ``n`` items).

    ``n``: n-gram size (default 3). ``max_penalty``: the score's magnitude at total repetition (default 1.0,
    positive). ``unit``: ``"words"`` (whitespace-separated, default) or ``"chars"``. ``lowercase``: compare
    case-insensitively (default True). ``example`` is not used. See the module docstring.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"repetition: n must be an integer >= 1, got {n!r}")
    if isinstance(max_penalty, bool) or not isinstance(max_penalty, int | float):
        raise ValueError(f"repetition: max_penalty must be a number, got {max_penalty!r}")
    if not (math.isfinite(max_penalty) and max_penalty >= 0):
        raise ValueError(
            f"repetition: max_penalty must be finite and >= 0 (the score is -max_penalty * fraction), "
            f"got {max_penalty!r}"
        )
    if not isinstance(completion, str):
        return RewardResult(0.0, {"error": f"completion must be a str, got {type(completion).__name__}"})
    fraction, total, unique = repeated_fraction(completion, n, unit, lowercase)
    info: dict[str, Any] = {
        "unit": unit,
        "n": n,
        "total_ngrams": total,
        "unique_ngrams": unique,
        "repeated_fraction": fraction,
    }
    return RewardResult(-max_penalty * fraction if fraction else 0.0, info)

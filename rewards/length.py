"""Built-in length verifier, registered as ``"length"``: two length rewards, chosen by ``mode``.

``mode: soft`` (the default), DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13).
With ``L`` the completion's length, ``L_max = max_len``, ``L_cache = buffer_len`` and ``p = penalty``::

    R_length(L) = 0                                          L <= L_max - L_cache
                = ((L_max - L_cache) - L) / L_cache * p      L_max - L_cache < L <= L_max
                = -p                                         L > L_max

It is a penalty (``<= 0``) meant to be *added* to a correctness reward: list it next to ``math`` in the
recipe. ``buffer_len`` defaults to ``max_len // 5`` (DAPO: 4096 of 20480); ``buffer_len: 0`` is a hard cliff.

``mode: truncate``, DLER's truncation length penalty (Liu et al. 2025, arXiv 2510.15110): a response longer
than the budget ``L = max_len`` gets reward 0, otherwise its correctness reward. The penalty *multiplies*
correctness, and verifiers are summed, so this mode computes correctness itself (with the verifier named by
``correctness``, ``"math"`` by default, given ``correctness_kwargs``) and returns the gated score. Use it
*instead of* ``math``, not next to it (that would add ungated correctness back)::

    rewards:
      verifiers:
        - name: length
          kwargs: {mode: truncate, max_len: 4000, unit: tokens, tokenizer: Qwen/Qwen2.5-1.5B-Instruct}

DLER pairs the truncation with batch-wise reward normalisation, a higher clip ``eps_high`` and dynamic
sampling (recipe options of the algorithm, not of this verifier). An over-budget completion is not checked for
correctness (``info["correct"]`` is None), which also saves the cost of verifying long texts.

Units. A verifier sees text, not token ids, so ``unit`` says how ``L`` is measured: ``chars`` (Unicode code
points, the default), ``words`` (whitespace-separated pieces) or ``tokens`` (the count of ``tokenizer``, a
Hugging Face tokenizer name or folder, loaded once per process, no special tokens; re-encoding decoded text
can differ from the sampled ids by a token or two). To punish the sampled token count exactly, use the
trainer's ``algorithm.overlong`` options, which see the token ids and the generation limit.

``info`` has ``mode``, ``unit``, ``length`` and ``max_len``; soft mode adds ``buffer_len``; truncate mode
adds ``truncated``, ``correct`` and the correctness verifier's own info (``extracted``, ``gold``, ...).
Configuration errors (a missing ``max_len``, an unknown unit) raise ``ValueError``, which the Scorer reports
as a failure with that message; a failure of the correctness verifier is reported the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from rlvr.scoring import RewardResult, coerce_result, resolve_verifier, verifier

__all__ = ["UNITS", "length_verifier", "measure", "overlong_penalty"]

UNITS = ("chars", "words", "tokens")


@lru_cache(maxsize=4)
def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer  # only for unit "tokens": keeps workers light otherwise

    return AutoTokenizer.from_pretrained(name)


def measure(completion: str, unit: str = "chars", tokenizer: str | None = None) -> int:
    """Length of ``completion`` in ``unit`` (``chars``, ``words`` or ``tokens`` of ``tokenizer``)."""
    if unit == "chars":
        return len(completion)
    if unit == "words":
        return len(completion.split())
    if unit == "tokens":
        if not tokenizer:
            raise ValueError("length: unit 'tokens' needs a tokenizer (a Hugging Face name or folder)")
        return len(_tokenizer(str(tokenizer)).encode(completion, add_special_tokens=False))
    raise ValueError(f"length: unknown unit {unit!r}; expected one of {', '.join(UNITS)}")


def overlong_penalty(length: float, max_len: float, buffer_len: float, penalty: float = 1.0) -> float:
    """DAPO eq. 13 for one length (see the module docstring); ``buffer_len == 0`` is a step at ``max_len``.

    Pure-Python twin of :func:`rlvr.algorithms.soft_overlong_penalty` (which works on token-id tensors in
    the trainer), so that verifier workers need not import torch.
    """
    start = max_len - buffer_len
    if length <= start:
        return 0.0
    if length > max_len:
        return -float(penalty)
    return (start - length) / buffer_len * penalty


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"length: {name} must be an integer >= {low}, got {value!r}")
    return value


@verifier("length")
def length_verifier(
    completion: str,
    example: dict | None = None,
    mode: str = "soft",
    max_len: int | None = None,
    buffer_len: int | None = None,
    penalty: float = 1.0,
    unit: str = "chars",
    tokenizer: str | None = None,
    correctness: str = "math",
    correctness_kwargs: Mapping[str, Any] | None = None,
) -> RewardResult:
    """A length reward: DAPO's soft overlong penalty (``mode="soft"``) or DLER's truncation (``"truncate"``).

    ``max_len`` (required): ``L_max`` (soft) or the budget ``L`` (truncate), in ``unit``.
    ``buffer_len`` (soft; default ``max_len // 5``): width of the linear ramp before ``max_len``.
    ``penalty`` (soft; default 1.0): the score at and beyond ``max_len`` is ``-penalty``.
    ``unit``: ``"chars"`` (default), ``"words"`` or ``"tokens"`` (needs ``tokenizer``).
    ``correctness`` / ``correctness_kwargs`` (truncate): the verifier spec giving the reward that is gated
    (default ``"math"``), and its keyword arguments. See the module docstring.
    """
    if mode not in ("soft", "truncate"):
        raise ValueError(f"length: unknown mode {mode!r}; expected 'soft' or 'truncate'")
    if max_len is None:
        raise ValueError("length: max_len is required (the length limit, in `unit`)")
    max_len = _check_int("max_len", max_len, 1)
    if not isinstance(completion, str):
        return RewardResult(0.0, {"error": f"completion must be a str, got {type(completion).__name__}"})
    length = measure(completion, unit, tokenizer)
    info: dict[str, Any] = {"mode": mode, "unit": unit, "length": length, "max_len": max_len}

    if mode == "soft":
        buffer_len = max_len // 5 if buffer_len is None else _check_int("buffer_len", buffer_len, 0)
        if buffer_len > max_len:
            raise ValueError(f"length: buffer_len must be <= max_len={max_len}, got {buffer_len}")
        if isinstance(penalty, bool) or not isinstance(penalty, int | float) or not 0 <= penalty < math.inf:
            raise ValueError(f"length: penalty must be a finite number >= 0 (subtracted), got {penalty!r}")
        info["buffer_len"] = buffer_len
        return RewardResult(overlong_penalty(length, max_len, buffer_len, penalty), info)

    if not isinstance(correctness, str) or correctness.strip() == "length":
        raise ValueError(f"length: correctness must be a verifier spec, not 'length'; got {correctness!r}")
    if length > max_len:
        info.update(truncated=True, correct=None)
        return RewardResult(0.0, info)
    if correctness_kwargs is not None and not isinstance(correctness_kwargs, Mapping):
        raise ValueError(f"length: correctness_kwargs must be a mapping, got {correctness_kwargs!r}")
    fn = resolve_verifier(correctness)
    score, inner, error = coerce_result(fn(completion, example, **dict(correctness_kwargs or {})))
    if error is not None or score is None:
        raise ValueError(f"length: correctness verifier {correctness!r} {error}")
    info = {**inner, **info, "truncated": False, "correct": score}
    return RewardResult(score, info)

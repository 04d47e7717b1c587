"""Tests of the built-in "math" verifier (rewards/math.py) on real math-verify decisions."""

from __future__ import annotations

import threading
import time

import pytest

from rewards.math import gold_text, last_boxed, math_verifier, nesting_depth
from rlvr.scoring import VERIFIERS, RewardResult

GSM8K_GOLD = "Natalia sold 1,000 + 234 = 1,234 clips in total.\n#### 1,234"


def score(completion: str, gold: object, **kwargs: object) -> RewardResult:
    result = math_verifier(completion, {"answer": gold}, **kwargs)
    assert isinstance(result, RewardResult)
    return result


def test_registered_as_math():
    assert VERIFIERS.get("math") is math_verifier


@pytest.mark.parametrize(
    ("completion", "gold", "method", "extracted"),
    [
        ("She sold 1000 + 234 clips, so the answer is 1234.", GSM8K_GOLD, "answer_phrase", "1234"),
        ("So the answer is 1,234.", GSM8K_GOLD, "answer_phrase", "1234"),
        ("Hence $\\boxed{\\frac{1}{2}}$.", "0.5", "boxed", "1/2"),  # math-verify: 1/2 == 0.5
        ("Hence $\\boxed{0.5}$.", "\\frac{1}{2}", "boxed", "1/2"),
        ("Hence \\boxed{\\dfrac12}", "\\boxed{\\frac{1}{2}}", "boxed", "1/2"),
        ("<think>7 * 10 + 2</think>\n<answer>72</answer>", "72", "answer_tag", "72"),
        ("<answer>The total is $\\frac{3}{4}$</answer>", "0.75", "answer_tag", "3/4"),
        ("<answer>3\\sqrt{2}</answer>", "3\\sqrt{2}", "answer_tag", "3*sqrt(2)"),
        ("Answer: 1,000 dollars", "1,000", "answer_phrase", "1000"),
        ("**Answer:** 42", "42", "answer_phrase", "42"),
        ("6 * 7 = 42\n#### 42", "#### 42", "answer_phrase", "42"),
        ("The answer is 5 since 3 < 4.", "5", "answer_phrase", "5"),
        ("The final answer is 3\\sqrt{2}", "3\\sqrt{2}", "answer_phrase", "3*sqrt(2)"),
        ("Each costs 6 dollars, so she pays \\$18.", "#### 18", "last_expression", "18"),
        ("First 12, then 30, finally 72", "72", "last_expression", "72"),
        ("\\boxed{x^2+1}", "x^2+1", "boxed", "x**2 + 1"),
        ("I said \\boxed{2} but it is \\boxed{3}", "3", "boxed", "3"),
        ("\\boxed{\\{1, 2\\}}", "\\{2,1\\}", "boxed", "{1, 2}"),
    ],
)
def test_correct_answers(completion: str, gold: str, method: str, extracted: str):
    result = score(completion, gold)
    assert result.score == 1.0, result.info
    assert result.info["method"] == method
    assert result.info["extracted"] == extracted
    assert "error" not in result.info


def test_info_reports_gold():
    assert score("the answer is 1234", GSM8K_GOLD).info["gold"] == "1234"
    assert score("\\boxed{1}", "\\boxed{\\frac{1}{2}}").info == {
        "extracted": "1",
        "gold": "1/2",
        "method": "boxed",
    }


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        ("so the answer is 1243.", GSM8K_GOLD),
        ("\\boxed{\\frac{1}{3}}", "0.5"),
        ("<answer>71</answer> but really 72", "72"),  # the tag wins over the last number
        ("\\boxed{71} hmm, 72?", "72"),  # a boxed answer wins over the last number
        ("0.333", "\\frac{1}{3}"),  # math-verify compares floats to 6 decimals: 0.333 != 1/3
        ("\\boxed{x^2-1}", "x^2+1"),
    ],
)
def test_wrong_answers(completion: str, gold: str):
    result = score(completion, gold)
    assert result.score == 0.0
    assert "error" not in result.info


def test_float_rounding_decides_close_decimals():
    assert score("\\boxed{0.3333333}", "\\frac{1}{3}").score == 1.0  # equal to 6 decimals


@pytest.mark.parametrize(
    "completion", ["", "   ", "no numbers at all", "\\boxed{}", "<answer></answer>", "$$$"]
)
def test_malformed_completions_score_zero(completion: str):
    result = score(completion, "72")
    assert result.score == 0.0
    assert result.info["extracted"] is None


@pytest.mark.parametrize(
    ("completion", "error"),
    [
        ("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", None),  # longer than MAX_ANSWER_CHARS: ignored
        ("\\boxed{" + "{" * 60 + "1" + "}" * 60 + "}", "brackets nested 61 deep"),
        ("<answer>" + "(" * 40 + "72" + ")" * 40 + "</answer>", "brackets nested 40 deep"),
        ("\\boxed{" * 20000, "brackets nested 572 deep"),  # the bounded tail is still too deep
        ("{" * 200_000 + "72", "brackets nested"),
        ("$" * 100_000 + "7", None),
    ],
)
def test_adversarial_completions_return_zero_quickly(completion: str, error: str | None):
    start = time.monotonic()
    result = score(completion, "72")
    assert time.monotonic() - start < 2.0
    assert result.score == 0.0
    if error is None:
        assert "error" not in result.info
    else:
        assert error in result.info["error"]


def test_huge_completion_uses_its_end():
    start = time.monotonic()
    result = score("lorem ipsum 3 " * 100_000 + "so 72", "72")  # 1.4 MB
    assert time.monotonic() - start < 2.0
    assert result.score == 1.0


@pytest.mark.parametrize(
    ("example", "error"),
    [
        ({}, "example has no 'answer' field"),
        ({"answer": "no number here"}, "could not parse gold answer 'no number here'"),
    ],
)
def test_bad_examples_score_zero_with_error(example: dict, error: str):
    result = math_verifier("72", example)
    assert result.score == 0.0
    assert result.info["error"] == error


def test_non_string_completion_never_raises():
    result = math_verifier(None, {"answer": "1"})  # type: ignore[arg-type]
    assert result.score == 0.0
    assert result.info["error"] == "TypeError: completion must be a str, got NoneType"


def test_answer_key_option():
    assert math_verifier("\\boxed{9}", {"solution": "9"}, answer_key="solution").score == 1.0


def test_strict_format():
    assert score("The answer is 72.", "72", strict_format=True).info["reason"].startswith("strict_format")
    assert score("The answer is 72.", "72", strict_format=True).score == 0.0
    assert score("The answer is 72.", "72", strict_format=False).score == 1.0
    assert score("so $\\boxed{72}$", "72", strict_format=True).score == 1.0
    assert score("<answer>72</answer>", "72", strict_format=True).score == 1.0


def test_works_off_the_main_thread():
    """math-verify's signal.alarm timeouts cannot run in a thread; the verifier must switch them off there."""
    results: list[RewardResult] = []
    thread = threading.Thread(target=lambda: results.append(score("\\boxed{\\frac{2}{4}}", "0.5")))
    thread.start()
    thread.join()
    assert results[0].score == 1.0
    assert "error" not in results[0].info


def test_helpers():
    assert gold_text("work...\n#### 1,234,567") == "1234567"
    assert gold_text(72) == "72"
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{\\{3\\}}") == "\\{3\\}"
    assert last_boxed("\\boxed{1} then \\boxed{2") == "1"  # the last one is unbalanced
    assert last_boxed("\\boxed 5 apples") == "5"
    assert nesting_depth("\\frac{(1+2)}{[3]}") == 2
    assert nesting_depth("))((") == 2


def test_answer_tag_edge_cases():
    assert score("<ANSWER>72</Answer>", "72").score == 1.0
    assert score("<answer>71</answer> <answer>72</answer>", "72").score == 1.0  # the last tag
    assert score("<answer>72", "72").info["method"] == "last_expression"  # unclosed: not a tag
    long_tag = "<answer>" + "We add 3 and 4 to get 7. " * 60 + "So the answer is 72.</answer>"
    result = score(long_tag, "72")
    assert (result.score, result.info["method"]) == (1.0, "answer_tag")
    start = time.monotonic()
    assert score("<answer>" * 200_000 + "72</answer>", "72").score == 1.0  # linear, not quadratic
    assert time.monotonic() - start < 2.0


def test_require_number_rejects_unevaluated_arithmetic():
    # math-verify on its own treats an expression equal to the gold as correct ...
    assert score("41 - 35", "6").score == 1.0
    assert score("The answer is 5 + 26", "31").score == 1.0
    # ... which rewards restating an arithmetic question; require_number closes that
    assert score("41 - 35", "6", require_number=True).score == 0.0
    assert score("\\boxed{41-35}", "6", require_number=True).info["reason"].startswith("require_number")
    assert score("41 - 35 = 6", "6", require_number=True).score == 1.0
    assert score("\\boxed{\\frac{2}{4}}", "0.5", require_number=True).score == 1.0  # a fraction is a number
    assert score("\\boxed{-3}", "-3", require_number=True).score == 1.0
    assert score("\\boxed{2\\sqrt{3}}", "2\\sqrt{3}", require_number=True).score == 1.0  # gold not a number

"""Tests of the built-in "format", "length" and "repetition" verifiers, with hand-worked values."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rewards.format import format_verifier
from rewards.length import length_verifier, measure, overlong_penalty
from rewards.repetition import repeated_fraction, repetition_verifier
from rlvr.scoring import VERIFIERS, RewardResult, RewardSpec, Scorer

FIXTURE = str(Path(__file__).resolve().parents[1] / "fixtures" / "custom_verifier.py")
GOOD = "<think>\n6 * 12 = 72\n</think>\n<answer>72</answer>"


def test_registered_names():
    assert VERIFIERS.get("format") is format_verifier
    assert VERIFIERS.get("length") is length_verifier
    assert VERIFIERS.get("repetition") is repetition_verifier


# ---------------------------------------------------------------------------------------------------------
# format
# ---------------------------------------------------------------------------------------------------------


def fmt(completion: str, **kwargs: object) -> RewardResult:
    result = format_verifier(completion, {}, **kwargs)
    assert isinstance(result, RewardResult)
    return result


@pytest.mark.parametrize(
    "completion",
    [
        GOOD,
        "<think></think><answer>72</answer>",  # an empty think block is allowed (R1's format reward too)
        "\n  <think>a</think>\n\n<answer> 72 </answer>\n",  # whitespace around and between the blocks
        "<think>数学 ∑ 😀 \u200b</think>\u3000<answer>٧٢</answer>",  # unicode inside; U+3000 is whitespace
        "<think>I will not write <thinking> tags or </answers></think><answer>7</answer>",  # other tag names
    ],
)
def test_format_correct(completion: str):
    result = fmt(completion)
    assert result.score == 1.0, result.info
    assert result.info == {
        "mode": "tags",
        "rules": {"think": True, "answer": True, "order": True, "strict": True},
        "failed": [],
    }


@pytest.mark.parametrize(
    ("completion", "failed", "reason"),
    [
        ("", ["think", "answer", "order", "strict"], "think: no <think>...</think> block"),
        ("72", ["think", "answer", "order", "strict"], "think: no <think>...</think> block"),
        ("<answer>72</answer>", ["think", "order", "strict"], "think: no <think>...</think> block"),
        ("<think>a</think>", ["answer", "order", "strict"], "answer: no <answer>...</answer> block"),
        (
            "<think>a</think><answer> \n</answer>",
            ["answer", "order", "strict"],
            "the <answer> block is empty",
        ),
        # unclosed (a truncated generation)
        ("<think>a</think><answer>72", ["answer", "order", "strict"], "</answer> 0 times"),
        ("<think>a ... <answer>72</answer>", ["think", "order", "strict"], "</think> 0 times"),
        # nested: the same tag twice, and the answer inside the think block
        ("<think><think>a</think></think><answer>72</answer>", ["think", "order", "strict"], "2 times"),
        ("<think>a <answer>72</answer></think>", ["order", "strict"], "</think> must come before <answer>"),
        ("<answer>72</answer><think>a</think>", ["order", "strict"], "</think> must come before <answer>"),
        ("<think>a</think><answer>71</answer><answer>72</answer>", ["answer", "order", "strict"], "2 times"),
        (
            "</think>a<think><answer>72</answer>",
            ["think", "order", "strict"],
            "</think> comes before <think>",
        ),
        # text outside the tags
        ("Sure! " + GOOD, ["strict"], "text outside the tags: 'Sure!'"),
        (GOOD + " Hope this helps.", ["strict"], "text outside the tags: 'Hope this helps.'"),
        ("<think>a</think> so <answer>72</answer>", ["strict"], "text outside the tags: 'so'"),
        # tags are exact: case, spaces and look-alike brackets do not count
        ("<THINK>a</THINK><answer>72</answer>", ["think", "order", "strict"], "no <think>"),
        ("< think>a</think><answer>72</answer>", ["think", "order", "strict"], "<think> appears 0 times"),
        ("＜think＞a＜/think＞<answer>72</answer>", ["think", "order", "strict"], "no <think>"),
    ],
)
def test_format_failures(completion: str, failed: list[str], reason: str):
    result = fmt(completion)
    assert result.score == 0.0
    assert result.info["failed"] == failed
    assert reason in result.info["reason"]
    assert result.info["reason"].startswith(failed[0] + ": ")


@pytest.mark.parametrize(
    ("completion", "strict_partial", "loose_partial"),
    [
        # (rules that hold) / (rules checked): 4 rules with strict=True, 3 without
        (GOOD, 1.0, 1.0),
        ("Sure! " + GOOD, 0.75, 1.0),  # think, answer, order hold; only strict fails
        ("<think>a <answer>72</answer></think>", 0.5, 2 / 3),  # think, answer hold; order (and strict) fail
        ("<answer>72</answer>", 0.25, 1 / 3),  # only answer holds
        ("", 0.0, 0.0),
    ],
)
def test_format_partial_credit(completion: str, strict_partial: float, loose_partial: float):
    assert fmt(completion, partial=True).score == pytest.approx(strict_partial)
    assert fmt(completion, partial=True, strict=False).score == pytest.approx(loose_partial)


def test_format_options():
    # require_think=False: the think block is optional, but checked when it is there
    assert fmt("<answer>72</answer>", require_think=False).score == 1.0
    assert fmt(GOOD, require_think=False).score == 1.0
    assert fmt("<think>a<answer>72</answer>", require_think=False).info["failed"] == [
        "think",
        "order",
        "strict",
    ]
    assert fmt("<answer>72</answer> <think>a</think>", require_think=False).info["failed"] == [
        "order",
        "strict",
    ]
    # strict=False: text outside the blocks is allowed, the structure is still checked
    assert fmt("Sure! <think>a</think> so <answer>72</answer> bye", strict=False).score == 1.0
    assert fmt("Sure! <answer>72</answer>", strict=False).score == 0.0
    assert "strict" not in fmt(GOOD, strict=False).info["rules"]
    # custom tag names, with or without brackets
    custom = "<reasoning>a</reasoning>\n<solution>72</solution>"
    assert fmt(custom, think_tag="reasoning", answer_tag="<solution>").score == 1.0
    assert fmt(GOOD, think_tag="reasoning", answer_tag="solution").score == 0.0


def test_format_pattern_mode():
    r1 = r"<think>.*?</think>\s*<answer>.*?</answer>"  # DeepSeek-R1 / open-r1 format reward
    assert fmt(GOOD, pattern=r1).info == {"mode": "pattern", "matched": True}
    assert fmt(GOOD + " bye", pattern=r1).score == 0.0  # fullmatch: nothing may follow
    assert fmt("<think>a\nb\nc</think><answer>1</answer>", pattern=r1).score == 1.0  # DOTALL
    assert fmt("", pattern=r"").score == 1.0
    assert fmt("x", pattern=r"").info["reason"] == "the completion does not fully match the pattern"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pattern": "(unclosed"}, "invalid pattern"),
        ({"pattern": ".*", "partial": True}, "partial=True has no meaning"),
        ({"think_tag": "answer"}, "must differ"),
        ({"answer_tag": "a/b"}, "must be a tag name"),
        ({"think_tag": ""}, "must be a tag name"),
        ({"think_tag": None}, "must be a string"),
    ],
)
def test_format_configuration_errors_raise(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        fmt(GOOD, **kwargs)


def test_format_adversarial_inputs_are_fast():
    start = time.monotonic()
    assert fmt("<think>" + "x" * 2_000_000 + "</think><answer>72</answer>").score == 1.0
    assert fmt("<think>" * 200_000 + "</think><answer>72</answer>").info["failed"][0] == "think"
    assert fmt("</answer><answer>" * 100_000).score == 0.0
    assert fmt("<think>a</think><answer>" + "9" * 1_000_000 + "</answer>").score == 1.0
    assert time.monotonic() - start < 3.0
    assert fmt(None).info["error"] == "completion must be a str, got NoneType"  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# length
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        # max_len = 100, buffer_len = 20: the ramp starts after 100 - 20 = 80
        (0, 0.0),
        (80, 0.0),  # the last length without penalty
        (81, -0.05),  # (80 - 81) / 20 = -0.05
        (90, -0.5),  # (80 - 90) / 20 = -0.5
        (99, -0.95),  # (80 - 99) / 20 = -0.95
        (100, -1.0),  # (80 - 100) / 20 = -1, the end of the ramp
        (101, -1.0),  # past max_len: -penalty
        (10**9, -1.0),
    ],
)
def test_soft_overlong_boundaries(length: int, expected: float):
    result = length_verifier("x" * length if length < 10**6 else "", {}, max_len=100, buffer_len=20)
    if length < 10**6:
        assert result.score == pytest.approx(expected, abs=1e-12)
        assert result.info == {
            "mode": "soft",
            "unit": "chars",
            "length": length,
            "max_len": 100,
            "buffer_len": 20,
        }
    assert overlong_penalty(length, 100, 20) == pytest.approx(expected, abs=1e-12)


def test_soft_overlong_options():
    # penalty 0.5 halves the ramp: (80 - 90) / 20 * 0.5 = -0.25
    assert length_verifier("x" * 90, {}, max_len=100, buffer_len=20, penalty=0.5).score == -0.25
    # default buffer_len = max_len // 5 = 20 (DAPO's 4096 / 20480)
    assert length_verifier("x" * 90, {}, max_len=100).info["buffer_len"] == 20
    assert length_verifier("x" * 90, {}, max_len=100).score == -0.5
    # buffer_len 0: a cliff at max_len
    assert length_verifier("x" * 100, {}, max_len=100, buffer_len=0).score == 0.0
    assert length_verifier("x" * 101, {}, max_len=100, buffer_len=0).score == -1.0
    # buffer_len = max_len: the ramp starts at 0; 5 chars of 10 -> (0 - 5) / 10 = -0.5
    assert length_verifier("x" * 5, {}, max_len=10, buffer_len=10).score == -0.5
    # words: 12 words, max_len 10, buffer 4 -> ramp after 6: (6 - 12) / 4 -> past max_len -> -1
    assert length_verifier("w " * 12, {}, max_len=10, buffer_len=4, unit="words").score == -1.0
    # 8 words: (6 - 8) / 4 = -0.5; any run of whitespace separates words
    words = "one  two\nthree\tfour five six seven eight"
    assert length_verifier(words, {}, max_len=10, buffer_len=4, unit="words").score == -0.5


def test_soft_overlong_matches_the_trainer_penalty():
    """The verifier and the trainer's token-level DAPO penalty compute the same function."""
    import torch

    from rlvr.algorithms import soft_overlong_penalty

    lengths = list(range(0, 130))
    expected = soft_overlong_penalty(torch.tensor(lengths), max_len=100, buffer_len=30, penalty=0.7)
    got = [overlong_penalty(n, 100, 30, 0.7) for n in lengths]
    assert got == pytest.approx(expected.tolist(), abs=1e-6)


def test_length_units():
    assert measure("", "chars") == 0 and measure("", "words") == 0
    assert measure("e\u0301té 👍", "chars") == 6  # code points: e, combining acute, t, é, space, thumbs up
    assert measure("  a\u3000b\n\nc  ", "words") == 3  # str.split: any unicode whitespace
    assert measure("日本語の文章", "words") == 1  # no spaces: one "word"; use chars or tokens for such text


def test_length_in_tokens(tmp_path: Path):
    from rlvr.models import build_char_tokenizer

    build_char_tokenizer().save_pretrained(tmp_path)  # one token per ASCII character
    assert measure("hello world", "tokens", str(tmp_path)) == 11
    result = length_verifier("x" * 90, {}, max_len=100, buffer_len=20, unit="tokens", tokenizer=str(tmp_path))
    assert (result.score, result.info["length"], result.info["unit"]) == (-0.5, 90, "tokens")


ROW = {"answer": "72"}


@pytest.mark.parametrize(
    ("completion", "max_len", "score", "truncated", "correct"),
    [
        ("So \\boxed{72}", 13, 1.0, False, 1.0),  # 13 chars, exactly at the budget: kept
        ("So \\boxed{72}", 12, 0.0, True, None),  # one over: zero, correctness not checked
        ("So \\boxed{71}", 100, 0.0, False, 0.0),  # within budget but wrong
        ("", 10, 0.0, False, 0.0),
        ("x" * 5000 + " the answer is 72", 4000, 0.0, True, None),
    ],
)
def test_truncate_mode_gates_correctness(
    completion: str, max_len: int, score: float, truncated: bool, correct: float | None
):
    result = length_verifier(completion, ROW, mode="truncate", max_len=max_len)
    assert result.score == score
    assert (result.info["truncated"], result.info["correct"]) == (truncated, correct)
    assert result.info["mode"] == "truncate" and result.info["max_len"] == max_len
    if not truncated and completion:
        assert result.info["extracted"] is not None  # the math verifier's own info is kept


def test_truncate_mode_options():
    # math kwargs pass through: strict_format refuses an answer phrase
    phrase = "The answer is 72."
    assert length_verifier(phrase, ROW, mode="truncate", max_len=100).score == 1.0
    kw = {"strict_format": True}
    assert length_verifier(phrase, ROW, mode="truncate", max_len=100, correctness_kwargs=kw).score == 0.0
    # any verifier spec can be gated (e.g. a code verifier); here a file spec with its own kwargs
    spec = FIXTURE + ":keyword"
    gated = length_verifier(
        "yes", {}, mode="truncate", max_len=3, correctness=spec, correctness_kwargs={"bonus": 2}
    )
    assert gated.score == 2.0 and gated.info["hit"] is True
    assert length_verifier("yes!", {}, mode="truncate", max_len=3, correctness=spec).score == 0.0
    # words as the unit
    assert length_verifier("so it is \\boxed{72}", ROW, mode="truncate", max_len=4, unit="words").score == 1.0
    assert length_verifier("so it is \\boxed{72}", ROW, mode="truncate", max_len=3, unit="words").score == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "max_len is required"),
        ({"max_len": 0}, "max_len must be an integer >= 1"),
        ({"max_len": 10.5}, "max_len must be an integer"),
        ({"max_len": 10, "buffer_len": 11}, "buffer_len must be <= max_len"),
        ({"max_len": 10, "buffer_len": -1}, "buffer_len must be an integer >= 0"),
        ({"max_len": 10, "penalty": -1.0}, "penalty must be a finite number >= 0"),
        ({"max_len": 10, "penalty": float("nan")}, "penalty must be a finite number >= 0"),
        ({"max_len": 10, "unit": "bytes"}, "unknown unit 'bytes'"),
        ({"max_len": 10, "unit": "tokens"}, "needs a tokenizer"),
        ({"max_len": 10, "mode": "hard"}, "unknown mode 'hard'"),
        ({"max_len": 10, "mode": "truncate", "correctness": "length"}, "not 'length'"),
        ({"max_len": 10, "mode": "truncate", "correctness_kwargs": [1]}, "must be a mapping"),
        ({"max_len": 10, "mode": "truncate", "correctness": "no_such_verifier"}, "unknown verifier"),
        ({"max_len": 10, "mode": "truncate", "correctness": FIXTURE + ":chaos"}, "returned non-finite"),
    ],
)
def test_length_configuration_errors_raise(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        length_verifier("nan", ROW, **kwargs)


def test_length_config_error_is_a_scorer_failure_with_the_message():
    with Scorer([RewardSpec("length"), RewardSpec("format", weight=0.5)], num_workers=0) as scorer:
        batch = scorer.score([GOOD], [ROW])
    assert batch.failures == 1
    assert batch.scores == [0.5]
    assert "max_len is required" in batch.infos[0]["length"]["error"]


def test_length_huge_and_odd_inputs():
    start = time.monotonic()
    assert length_verifier("字" * 3_000_000, {}, max_len=10).score == -1.0
    assert length_verifier(" " * 3_000_000, {}, max_len=10, unit="words").score == 0.0
    huge = "lorem ipsum " * 200_000 + "\\boxed{72}"
    assert length_verifier(huge, ROW, mode="truncate", max_len=1000).info["truncated"] is True
    assert time.monotonic() - start < 3.0
    assert length_verifier(None, {}, max_len=10).info["error"].startswith("completion must be a str")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# repetition
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "kwargs", "score", "total", "unique"),
    [
        # 9 words -> 7 trigrams: abc bca cab abc bca cab abc; 3 unique -> 1 - 3/7 = 4/7 repeated
        ("a b c a b c a b c", {}, -4 / 7, 7, 3),
        ("the quick brown fox jumps over", {}, 0.0, 4, 4),  # nothing repeats
        ("a b", {}, 0.0, 0, 0),  # fewer than n = 3 words: no n-grams, score 0
        ("", {}, 0.0, 0, 0),
        ("a b c", {}, 0.0, 1, 1),  # exactly n words: one n-gram
        # lower-cased: a b c a b c -> abc bca cab abc: 1 - 3/4 = 1/4
        ("A b c a B c", {}, -0.25, 4, 3),
        ("A b c a B c", {"lowercase": False}, 0.0, 4, 4),
        ("A b c a B c", {"max_penalty": 2.0}, -0.5, 4, 3),
        # bigrams of "x y x y x": xy yx xy yx -> 1 - 2/4 = 1/2
        ("x y x y x", {"n": 2}, -0.5, 4, 2),
        # unigrams of 4 words with 2 distinct: 1 - 2/4
        ("go go stop stop", {"n": 1}, -0.5, 4, 2),
        # chars: "abababab" has 7 bigrams, 2 distinct -> 1 - 2/7 = 5/7
        ("abababab", {"unit": "chars", "n": 2}, -5 / 7, 7, 2),
        # chars on text without spaces: 日本語 本語日 語日本 日本語 -> 1 - 3/4
        ("日本語日本語", {"unit": "chars", "n": 3}, -0.25, 4, 3),
        ("日本語日本語", {}, 0.0, 0, 0),  # one "word": below n
        # a degenerate loop: 10000 words, 9998 trigrams, 1 distinct
        ("word " * 10_000, {}, -(1 - 1 / 9998), 9998, 1),
    ],
)
def test_repetition_values(completion: str, kwargs: dict, score: float, total: int, unique: int):
    result = repetition_verifier(completion, {}, **kwargs)
    assert result.score == pytest.approx(score, abs=1e-12)
    assert result.score <= 0.0
    assert (result.info["total_ngrams"], result.info["unique_ngrams"]) == (total, unique)
    assert result.info["repeated_fraction"] == pytest.approx(-score / kwargs.get("max_penalty", 1.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be an integer >= 1"),
        ({"n": 2.5}, "n must be an integer"),
        ({"max_penalty": -1.0}, "max_penalty must be finite and >= 0"),
        ({"max_penalty": float("inf")}, "max_penalty must be finite"),
        ({"max_penalty": "1"}, "max_penalty must be a number"),
        ({"unit": "tokens"}, "unknown unit 'tokens'"),
    ],
)
def test_repetition_configuration_errors_raise(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        repetition_verifier("a b c d", {}, **kwargs)


def test_repetition_huge_inputs_are_fast():
    start = time.monotonic()
    assert repeated_fraction("ab" * 500_000, n=20, unit="chars")[1:] == (999_981, 2)
    fraction, total, _ = repeated_fraction(" ".join(str(i) for i in range(300_000)))
    assert (fraction, total) == (0.0, 299_998)
    assert time.monotonic() - start < 3.0
    assert repetition_verifier(None, {}).info["error"].startswith("completion must be a str")  # type: ignore[arg-type]


def test_combined_rewards_through_the_scorer():
    """A typical recipe: correctness gated by a budget, plus small format and repetition terms."""
    specs = [
        RewardSpec("length", kwargs={"mode": "truncate", "max_len": 60}),
        RewardSpec("format", weight=0.1),
        RewardSpec("repetition", weight=0.5),
    ]
    completions = [
        GOOD,  # correct, formatted, 45 chars, no trigram repeats
        "<think>" + "so so so " * 10 + "</think><answer>72</answer>",  # too long (112 chars) and looping
        "72",  # correct but unformatted
    ]
    with Scorer(specs, num_workers=0) as scorer:
        batch = scorer.score(completions, [ROW] * 3)
    assert batch.failures == 0
    assert batch.per_reward["length"] == [1.0, 0.0, 1.0]
    assert batch.per_reward["format"] == [1.0, 1.0, 0.0]
    # the looping one splits into 31 words: "<think>so", 29 x "so", "</think><answer>72</answer>" -> 29
    # trigrams, 3 distinct ("<think>so so so", "so so so", "so so </think>...") -> -(1 - 3/29) = -26/29
    assert batch.per_reward["repetition"] == pytest.approx([0.0, -26 / 29, 0.0])
    assert batch.scores == pytest.approx([1.0 + 0.1, 0.1 - 0.5 * 26 / 29, 1.0])

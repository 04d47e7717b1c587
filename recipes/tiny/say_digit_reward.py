"""Reward of the toy task in ``grpo_tiny_say_digit.yaml``: how much of the completion is the asked digit.

A plain verifier function, loaded by the recipe as ``say_digit_reward.py:digit_fraction``. It gives a
dense signal (a fraction, not 0/1), so a randomly initialised model has something to climb from its
first step.
"""


def digit_fraction(completion: str, example: dict) -> float:
    """Fraction of the completion's characters that equal the gold digit (0 for an empty completion)."""
    text = completion.strip()
    if not text:
        return 0.0
    return sum(ch == example["answer"] for ch in text) / len(text)

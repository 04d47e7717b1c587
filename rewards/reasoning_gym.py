"""Built-in verifier for reasoning-gym procedural tasks, registered as ``"reasoning_gym"``.

Rows of a ``data.sources`` task source (:mod:`rlvr.data.tasks`) carry the task name (``task``), its
configuration (``task_config``), the gold answer (``answer``) and the task's ``metadata``. The verifier
extracts the model's answer from the completion and scores it with the task's own ``score_answer`` (built
with that configuration) (reasoning-gym's check: exact or partial credit, in
[0, 1]), so every task is judged the way its authors defined.

Extraction (``extract``): ``"answer_tag"`` takes the last ``<answer>...</answer>`` block (reasoning-gym's
convention; no block scores 0), ``"last_line"`` the last non-empty line, ``"auto"`` (default) the answer
block when there is one, else the last ``\\boxed{...}``, else the last non-empty line. ``info`` has the
extracted answer.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Literal

from rlvr.scoring import RewardResult, verifier

__all__ = ["extract", "reasoning_gym_verifier"]

_ANSWER = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def extract(completion: str, how: Literal["auto", "answer_tag", "last_line"] = "auto") -> str | None:
    """The answer part of ``completion`` (see the module docstring); None when there is none."""
    if how in ("auto", "answer_tag"):
        tagged = _ANSWER.findall(completion)
        if tagged:
            return tagged[-1].strip()
        if how == "answer_tag":
            return None
        boxed = _BOXED.findall(completion)
        if boxed:
            return boxed[-1].strip()
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    return lines[-1] if lines else None


@lru_cache(maxsize=256)
def _score_fn(task: str, config: str):
    """The ``score_answer`` of ``task`` built with the source's configuration (``config``: JSON), since
    some tasks' checks read it."""
    from reasoning_gym.factory import DATASETS

    dataset_cls, config_cls = DATASETS[task]
    return dataset_cls(config=config_cls(**json.loads(config), seed=0, size=1)).score_answer


@verifier("reasoning_gym")
def reasoning_gym_verifier(
    completion: str,
    example: dict[str, Any],
    extract_with: Literal["auto", "answer_tag", "last_line"] = "auto",
) -> RewardResult:
    """Score ``completion`` with the task's own answer check (the row's ``task`` and ``metadata``)."""
    task = example.get("task")
    if not isinstance(task, str) or not isinstance(example.get("metadata"), dict):
        raise ValueError(
            "reasoning_gym: the row has no 'task' and 'metadata'; use it on the rows of a data.sources task"
        )
    answer = extract(completion, extract_with)
    if answer is None:
        return RewardResult(0.0, {"extracted": None})
    entry = {
        "question": example.get("prompt", ""),
        "answer": example["answer"],
        "metadata": example["metadata"],
    }
    config = json.dumps(example.get("task_config") or {}, sort_keys=True)
    score = float(_score_fn(task, config)(answer, entry))
    return RewardResult(min(1.0, max(0.0, score)), {"extracted": answer})

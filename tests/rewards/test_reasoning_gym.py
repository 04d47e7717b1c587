"""The reasoning_gym verifier: answer extraction and the task's own check, on rows of a task source."""

from __future__ import annotations

import pytest

from rewards.reasoning_gym import extract, reasoning_gym_verifier
from rlvr.data.tasks import task_rows
from rlvr.scoring import RewardSpec, Scorer


def rows(task: str, n: int = 4, **config) -> list[dict]:
    return task_rows(
        task, size=n, seed=1, config=config, prompt_field="prompt", answer_field="answer", columns={}
    )


@pytest.mark.parametrize(
    ("completion", "how", "expected"),
    [
        ("so <answer> 12 </answer>", "auto", "12"),
        ("<answer>1</answer> then <answer>2</answer>", "answer_tag", "2"),
        ("no tag here", "answer_tag", None),
        ("the sum is \\boxed{\\frac{1}{2}} ok", "auto", "\\frac{1}{2}"),
        ("working\n\n  41 \n", "auto", "41"),
        ("working\n41", "last_line", "41"),
        ("   \n", "auto", None),
    ],
)
def test_extract(completion, how, expected):
    assert extract(completion, how) == expected


def test_scores_with_the_tasks_own_check():
    for row in rows("basic_arithmetic", max_terms=2, max_digits=1):
        right = reasoning_gym_verifier(f"<answer>{row['answer']}</answer>", row)
        wrong = reasoning_gym_verifier(f"<answer>{int(row['answer']) + 1}</answer>", row)
        assert (right.score, wrong.score) == (1.0, 0.0) and right.info == {"extracted": row["answer"]}
    assert reasoning_gym_verifier("I do not know", rows("basic_arithmetic")[0]).score == 0.0
    # another task, answered on the last line
    row = rows("letter_counting")[0]
    assert reasoning_gym_verifier(f"counting...\n{row['answer']}", row).score == 1.0
    assert reasoning_gym_verifier(f"counting...\n{int(row['answer']) + 1}", row).score == 0.0


def test_a_row_without_task_fails_one_sample_not_the_run():
    scorer = Scorer([RewardSpec("reasoning_gym", 1.0, {}, None)], num_workers=0, failure_score=0.0)
    try:
        row = rows("basic_arithmetic", 1)[0]
        batch = scorer.score([f"<answer>{row['answer']}</answer>", "1"], [row, {"answer": "1"}])
    finally:
        scorer.close()
    assert list(batch.scores) == [1.0, 0.0]
    assert batch.failures == 1 and "no 'task' and 'metadata'" in batch.infos[1]["reasoning_gym"]["error"]


def test_task_rows_do_not_depend_on_the_process_hash_seed():
    """word_ladder's rows follow set iteration order: generated in place, two processes would disagree."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json; from rlvr.data.tasks import task_rows; "
        "rows = task_rows('word_ladder', size=15, seed=3, config={}, prompt_field='p', answer_field='a', "
        "columns={}); print(json.dumps([(r['p'], r['a']) for r in rows]))"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    ]
    assert outputs[0] == outputs[1] and len(json.loads(outputs[0])) == 15

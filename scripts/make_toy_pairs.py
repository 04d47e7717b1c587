"""Write the toy preference sets of the tiny end-to-end tests from data/toy/say_digit.jsonl.

    python scripts/make_toy_pairs.py

``data/toy/say_digit_pairs.jsonl`` (train) and ``say_digit_pairs_test.jsonl`` (held out): the prompt, a
chosen response of the asked digit repeated and a rejected response of another digit repeated (plain
text). ``data/toy/say_digit_unpaired.jsonl``: the same responses as (prompt, completion, label) rows for
KTO, alternately desirable and undesirable. Deterministic (seed 0).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    rng = random.Random(0)
    rows = [json.loads(line) for line in (ROOT / "data/toy/say_digit.jsonl").read_text().splitlines()]
    pairs = []
    for row in rows:
        digit = row["answer"]
        other = rng.choice([d for d in "0123456789" if d != digit])
        n = rng.randint(2, 5)
        pairs.append({"prompt": row["prompt"], "chosen": digit * n, "rejected": other * rng.randint(2, 5)})
    out = ROOT / "data/toy"
    for name, part in (("say_digit_pairs.jsonl", pairs[:160]), ("say_digit_pairs_test.jsonl", pairs[160:])):
        (out / name).write_text("".join(json.dumps(p) + "\n" for p in part))
    unpaired = [
        {
            "prompt": p["prompt"],
            "completion": p["chosen"] if i % 2 == 0 else p["rejected"],
            "label": i % 2 == 0,
        }
        for i, p in enumerate(pairs[:160])
    ]
    (out / "say_digit_unpaired.jsonl").write_text("".join(json.dumps(u) + "\n" for u in unpaired))


if __name__ == "__main__":
    main()

"""Generate the quickstart's arithmetic task, and optionally measure how a model does on it.

The task is deliberately easy so that a 135M-parameter model starts with some (but not full) accuracy and
RL has signal: small additions and subtractions, bare ("What is 7 + 5?") or as short word problems
("Tom has 3 apples and gets 4 more. How many apples does Tom have now?"), in equal shares. Each row is
``{"question": str, "answer": str, "kind": str}``; answers are non-negative integers.

Generate the files (deterministic given ``--seed``; test questions are distinct and never appear in
train, where a bare question may repeat)::

    python scripts/make_arithmetic.py --out data/arithmetic

The mixed-difficulty task of the curriculum comparison (docs/curriculum.md), rows with a ``difficulty``
column from 1 (easy) to 3::

    python scripts/make_arithmetic.py --levels --train 400 --test 60 --out data/arithmetic_levels

Measure a model's starting accuracy with the quickstart prompt (sampling, last-number match)::

    python scripts/make_arithmetic.py --measure 40 --model smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

NAMES = ["Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Max", "Emma", "Leo", "Zoe", "Jack", "Ella"]
ITEMS = ["apples", "pencils", "books", "cookies", "marbles", "stickers", "balloons", "cards", "toys", "eggs"]
KINDS = ("add", "sub", "word_add", "word_sub")

Row = dict[str, str]


def _bare(a: int, op: str, b: int, rng: random.Random) -> str:
    word = "plus" if op == "+" else "minus"
    return rng.choice([f"What is {a} {op} {b}?", f"What is {a} {word} {b}?", f"Calculate {a} {op} {b}."])


def _add(rng: random.Random, top: int) -> Row:
    a, b = rng.randint(1, top), rng.randint(1, top)
    return {"question": _bare(a, "+", b, rng), "answer": str(a + b), "kind": "add"}


def _sub(rng: random.Random, top: int) -> Row:
    a, b = sorted((rng.randint(1, top), rng.randint(1, top)), reverse=True)
    return {"question": _bare(a, "-", b, rng), "answer": str(a - b), "kind": "sub"}


def _n(count: int, item: str) -> str:
    """``3 apples`` / ``1 apple`` (every item name is a regular plural)."""
    return f"{count} {item if count != 1 else item[:-1]}"


def _more(count: int, item: str) -> str:
    """``3 more apples`` / ``1 more apple``."""
    return f"{count} more {item if count != 1 else item[:-1]}"


def _word_add(rng: random.Random, top: int) -> Row:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(1, top), rng.randint(1, top)
    story = rng.choice(
        [
            f"{name} has {_n(a, item)} and gets {b} more.",
            f"{name} has {_n(a, item)}. A friend gives {name} {_more(b, item)}.",
            f"There {'is' if a == 1 else 'are'} {_n(a, item)} in a box. {name} puts in {b} more.",
        ]
    )
    ask = (
        f"How many {item} are in the box now?" if "box" in story else f"How many {item} does {name} have now?"
    )
    return {"question": f"{story} {ask}", "answer": str(a + b), "kind": "word_add"}


def _word_sub(rng: random.Random, top: int) -> Row:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = sorted((rng.randint(2, top), rng.randint(1, top)), reverse=True)
    story = rng.choice(
        [
            f"{name} has {_n(a, item)} and gives {b} to a friend.",
            f"{name} has {_n(a, item)} and loses {b} of them.",
            f"There are {_n(a, item)} in a box. {name} takes out {b}.",
        ]
    )
    ask = (
        f"How many {item} are in the box now?"
        if "box" in story
        else f"How many {item} does {name} have left?"
    )
    return {"question": f"{story} {ask}", "answer": str(a - b), "kind": "word_sub"}


MAKERS: dict[str, Callable[[random.Random, int], Row]] = {
    "add": _add,
    "sub": _sub,
    "word_add": _word_add,
    "word_sub": _word_sub,
}


def generate(
    n: int,
    rng: random.Random,
    top: int,
    kinds: tuple[str, ...],
    exclude: frozenset[str] = frozenset(),
    distinct: bool = False,
) -> list[Row]:
    """``n`` rows, kinds in equal shares, none with a question in ``exclude``; all different if ``distinct``.

    The bare questions have few variants (3 phrasings x ~81 operand pairs with single digits), so the
    train split may repeat a question; the test split is drawn with ``distinct=True``.
    """
    rows: list[Row] = []
    seen: set[str] = set()
    for i in range(n):
        kind = kinds[i % len(kinds)]
        for _ in range(10_000):
            row = MAKERS[kind](rng, top)
            if row["question"] not in exclude and not (distinct and row["question"] in seen):
                break
        else:
            raise RuntimeError(f"ran out of distinct {kind!r} questions; raise --max-operand or lower --test")
        seen.add(row["question"])
        rows.append(row)
    rng.shuffle(rows)
    return rows


LEVELS: dict[int, tuple[int, tuple[str, ...]]] = {
    1: (6, ("add", "sub")),
    2: (9, KINDS),
    3: (60, KINDS),
}
"""Difficulty level -> (largest operand, kinds) of the mixed-difficulty task (``--levels``): bare sums and
differences up to 6, the quickstart's task (operands up to 9, bare and word problems), and the same with
operands up to 60."""


def write_levels(args: argparse.Namespace) -> None:
    """The mixed-difficulty task: ``--train`` / ``--test`` rows per level of :data:`LEVELS`, each with its
    ``difficulty``; test questions are distinct and never in train."""
    rng = random.Random(args.seed)
    train: list[Row] = []
    test: list[Row] = []
    for level, (top, kinds) in LEVELS.items():
        held_out = generate(
            args.test, rng, top, kinds, exclude=frozenset(r["question"] for r in test), distinct=True
        )
        exclude = frozenset(r["question"] for r in held_out + test)
        train += [
            {**row, "difficulty": level} for row in generate(args.train, rng, top, kinds, exclude=exclude)
        ]
        test += [{**row, "difficulty": level} for row in held_out]
    rng.shuffle(train)
    out = Path(args.out)
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(test, out / "test.jsonl")
    print(f"wrote {len(train)} train and {len(test)} test rows ({len(LEVELS)} levels) to {out}")


def write_jsonl(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number in ``text`` (thousands separators removed, ``12.0`` -> ``12``), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "")
    return value[: -len(".0")] if value.endswith(".0") else value


def _checker(name: str) -> Callable[[str, str], bool]:
    """``"math"``: the built-in math verifier (what the quickstart rewards); ``"last-number"``: regex."""
    if name == "math":
        from rewards.math import score_math

        return lambda reply, gold: score_math(reply, gold).score == 1.0
    return lambda reply, gold: last_number(reply) == gold


def measure(args: argparse.Namespace) -> None:
    """Sample answers from ``args.model`` for ``args.measure`` test questions and print accuracy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.models import resolve_model

    check = _checker(args.checker)
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = [json.loads(line) for line in (Path(args.out) / f"{args.split}.jsonl").read_text().splitlines()]
    rows = random.Random(args.seed).sample(rows, min(args.measure, len(rows)))
    torch.manual_seed(args.seed)
    correct: dict[str, list[int]] = {}
    for start in range(0, len(rows), args.batch):
        chunk = rows[start : start + args.batch]
        texts = []
        for row in chunk:
            messages = [{"role": "user", "content": args.template.format(prompt=row["question"])}]
            if args.system:
                messages.insert(0, {"role": "system", "content": args.system})
            texts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **batch,
                do_sample=args.temperature > 0,
                temperature=args.temperature if args.temperature > 0 else None,
                top_p=1.0,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row, seq in zip(chunk, out[:, batch["input_ids"].shape[1] :], strict=True):
            reply = tokenizer.decode(seq, skip_special_tokens=True)
            ok = check(reply, row["answer"])
            correct.setdefault(row["kind"], []).append(int(ok))
            if args.verbose:
                print(f"[{'ok' if ok else '--'}] {row['question']} -> {reply!r}")
    everything = [c for v in correct.values() for c in v]
    per_kind = ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(correct.items()))
    print(
        f"accuracy {sum(everything) / len(everything):.2f} ({sum(everything)}/{len(everything)}; {per_kind})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="data/arithmetic", help="folder for train.jsonl and test.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--max-operand", type=int, default=9, help="operands are drawn from 1..max-operand")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of {KINDS}")
    parser.add_argument(
        "--levels",
        action="store_true",
        help="write the mixed-difficulty task instead: --train and --test rows per difficulty level",
    )
    measure_group = parser.add_argument_group("measuring (instead of generating)")
    measure_group.add_argument("--measure", type=int, default=0, help="number of questions to try")
    measure_group.add_argument("--model", default="smollm2-135m-instruct")
    measure_group.add_argument("--split", default="test")
    measure_group.add_argument("--system", default=None, help="system prompt (default: the model's own)")
    measure_group.add_argument("--template", default="{prompt} Give only the final number.")
    measure_group.add_argument("--temperature", type=float, default=1.0)
    measure_group.add_argument("--max-new-tokens", type=int, default=48)
    measure_group.add_argument("--checker", choices=["math", "last-number"], default="math")
    measure_group.add_argument("--batch", type=int, default=20)
    measure_group.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if args.measure:
        measure(args)
        return
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    if args.levels:
        write_levels(args)
        return
    rng = random.Random(args.seed)
    test = generate(args.test, rng, args.max_operand, kinds, distinct=True)
    train = generate(args.train, rng, args.max_operand, kinds, exclude=frozenset(r["question"] for r in test))
    out = Path(args.out)
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(test, out / "test.jsonl")
    print(f"wrote {len(train)} train and {len(test)} test rows to {out}")


if __name__ == "__main__":
    main()

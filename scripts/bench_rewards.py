"""Throughput of the reward scorer with the built-in math verifier on GSM8K-style completions.

Builds a deterministic synthetic batch (multi-step word-problem reasoning of a few hundred characters, gold
answers in GSM8K's ``#### N`` form, final answers stated in the formats models use, a quarter of them wrong),
then scores it with several worker counts and prints samples/s and CPU time per sample (parent plus workers,
so it is meaningful on a busy machine), medians of ``--repeats`` runs; worker start-up is excluded by a
warm-up batch::

    python scripts/bench_rewards.py --n 2000 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from rlvr.scoring import RewardSpec, Scorer

NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Mark"]
ITEMS = ["clips", "apples", "pages", "dollars", "marbles", "cookies", "stickers", "books"]
ENDINGS = [
    "The answer is {a}.",
    "So the final answer is $\\boxed{{{a}}}$.",
    "#### {a}",
    "<answer>{a}</answer>",
    "Therefore, {name} has {a} {item} in total.",
]


def make_sample(rng: random.Random) -> tuple[str, dict]:
    """One (completion, example) pair: a 3-5 step arithmetic chain with its GSM8K-style gold solution."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(2, 60)
    steps = [f"{name} starts with {total} {item}."]
    for _ in range(rng.randint(3, 5)):
        op, k = rng.choice("+-*"), rng.randint(2, 12)
        new = {"+": total + k, "-": total - k, "*": total * k}[op]
        verb = {"+": "gets", "-": "gives away", "*": "multiplies the pile by"}[op]
        steps.append(f"Then {name} {verb} {k}, so now there are {total} {op} {k} = {new} {item}.")
        total = new
    gold = f"{' '.join(steps)}\n#### {total:,}"
    answer = total if rng.random() < 0.75 else total + rng.choice([-10, -1, 1, 7])
    shown = f"{answer:,}" if rng.random() < 0.3 else str(answer)
    ending = rng.choice(ENDINGS).format(a=shown, name=name, item=item)
    completion = "Let's think step by step.\n" + "\n".join(steps) + "\n" + ending
    return completion, {"question": f"How many {item} does {name} have?", "answer": gold}


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes ``pids`` (Linux /proc; 0 elsewhere)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def bench(
    completions: list[str], examples: list[dict], workers: int, repeats: int
) -> tuple[float, float, float]:
    """Median samples/s, median CPU ms per sample (parent + workers) and the mean reward, for one setting."""
    with Scorer([RewardSpec("math")], num_workers=workers, timeout_s=10.0) as scorer:
        scorer.score(completions[:50], examples[:50])  # start-up and imports, not measured
        pids = [w.proc.pid for w in scorer._pool._workers] if scorer._pool else []
        rates, cpu_ms, mean = [], [], 0.0
        for _ in range(repeats):
            cpu0, start = time.process_time() + _cpu_seconds(pids), time.perf_counter()
            batch = scorer.score(completions, examples)
            elapsed = time.perf_counter() - start
            cpu = time.process_time() + _cpu_seconds(pids) - cpu0
            rates.append(len(completions) / elapsed)
            cpu_ms.append(1000 * cpu / len(completions))
            mean = sum(batch.scores) / len(batch.scores)
            assert batch.failures == 0, batch.metrics()
    return statistics.median(rates), statistics.median(cpu_ms), mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="samples per batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (0 = inline)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    pairs = [make_sample(rng) for _ in range(args.n)]
    completions, examples = [c for c, _ in pairs], [e for _, e in pairs]
    avg_len = sum(map(len, completions)) / len(completions)
    print(f"{args.n} completions, {avg_len:.0f} chars on average, median of {args.repeats} runs")
    for workers in args.workers:
        rate, cpu_ms, mean = bench(completions, examples, workers, args.repeats)
        label = "inline" if workers == 0 else f"{workers} worker{'s' if workers > 1 else ''}"
        print(f"{label:>10}: {rate:7.1f} samples/s   {cpu_ms:.2f} CPU ms/sample   (mean reward {mean:.3f})")


if __name__ == "__main__":
    main()

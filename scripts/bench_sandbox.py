"""Throughput of the code sandbox: HumanEval canonical solutions scored by the ``code`` verifier.

Each sample is one sandboxed program (the solution plus its tests under the harness) in its own namespaces,
uid and process tree. Programs per second for several pool sizes (threads, each waiting on one sandboxed
process), medians of ``--repeats`` runs over the 164 problems, after a warm-up; plus the bare cost of one
sandboxed ``pass``. Prints a markdown table for ``docs/benchmarks.md``::

    python scripts/bench_sandbox.py --workers 1 2 4 8 --repeats 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import time
from pathlib import Path

from rewards.code import score_batch
from rlvr.scoring import sandbox

_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HUMANEVAL = (
    next(
        (p for p in (_ROOT / "data" / "benchmarks", _ROOT.parent / "shared" / "benchmarks") if p.is_dir()),
        _ROOT / "data" / "benchmarks",
    )
    / "HumanEval.jsonl.gz"
)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--humaneval", type=Path, default=DEFAULT_HUMANEVAL)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bare", type=int, default=40, help="sandboxed `pass` runs timed for the overhead")
    args = parser.parse_args()

    with gzip.open(args.humaneval, "rt") as f:
        rows = [json.loads(line) for line in f]
    completions = [row["canonical_solution"] for row in rows]
    iso = sandbox.isolation()

    bare = []
    for _ in range(args.bare):
        start = time.perf_counter()
        sandbox.run_program("pass")
        bare.append(time.perf_counter() - start)
    score_batch(completions[:16], rows[:16], workers=4)  # warm-up

    load = os.getloadavg()[0]
    print(f"mode={iso.mode} cpus={os.cpu_count()} load(1 min)={load:.1f} problems={len(rows)}")
    print(f"one sandboxed `pass`: {statistics.median(bare) * 1000:.0f} ms (median of {args.bare})\n")
    print(f"| workers | programs/s (median of {args.repeats}) | s per 164 | all passed |")
    print("|---|---|---|---|")
    for workers in args.workers:
        rates, passed = [], True
        for _ in range(args.repeats):
            start = time.perf_counter()
            results = score_batch(completions, rows, workers=workers)
            elapsed = time.perf_counter() - start
            rates.append(len(rows) / elapsed)
            passed = passed and all(r.score == 1.0 for r in results)
        rate = statistics.median(rates)
        print(f"| {workers} | {rate:.1f} | {len(rows) / rate:.1f} | {'yes' if passed else 'NO'} |")


if __name__ == "__main__":
    main()

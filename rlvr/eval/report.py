"""Evaluation outputs: summary JSON, a markdown table, a pass@k plot, and comparing two results folders.

A results folder (``rlvr eval ... --out OUT``) holds::

    OUT/summary.json              {"model": ..., "benchmarks": {name: summary}}
    OUT/results.md                the markdown table (plus per-subject / per-level breakdowns)
    OUT/pass_at_k.png             pass@k against k, one line per benchmark, bootstrap CI bands
    OUT/<benchmark>/samples.jsonl one row per sample
    OUT/<benchmark>/settings.json what decided the samples (checked on resume)
    OUT/<benchmark>/summary.json  that benchmark's summary
    OUT/<benchmark>/pass_at_k.png

:func:`compare` matches two folders' benchmarks and problems by id and reports, for every metric both can
compute, A, B and B - A with a paired bootstrap interval over the shared problems. :func:`compare_runs`
does that for several pairs of folders (one per training seed) and adds the mean B - A over the pairs
with a Student t interval, which covers the training runs' own noise.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from rlvr.eval.metrics import bootstrap_ci, mean_over_runs, metric_per_problem, paired_bootstrap_diff

logger = logging.getLogger(__name__)

PLOT_FILE = "pass_at_k.png"
TABLE_FILE = "results.md"


def _metric_order(name: str) -> tuple:
    kind, _, k = name.partition("@")
    rank = {"pass": 0, "maj": 1, "avg": 2}.get(kind, 3)
    return (rank, int(k) if k.isdigit() else 0)


def _cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{100 * entry['value']:.1f} [{100 * entry['ci_low']:.1f}, {100 * entry['ci_high']:.1f}]"


def _metric_table(rows: list[tuple[str, int, dict]], first: str) -> list[str]:
    names = sorted({m for _, _, metrics in rows for m in metrics}, key=_metric_order)
    lines = [
        "| " + " | ".join([first, "problems", *names]) + " |",
        "|" + "---|" * (2 + len(names)),
    ]
    for label, count, metrics in rows:
        lines.append("| " + " | ".join([label, str(count), *(_cell(metrics.get(m)) for m in names)]) + " |")
    return lines


def markdown_table(summaries: dict[str, dict[str, Any]]) -> str:
    """Every benchmark's metrics (percent, with the bootstrap CI), response length, truncation and skips."""
    if not summaries:
        return "(no results)"
    any_summary = next(iter(summaries.values()))
    confidence = int(round(100 * any_summary.get("confidence", 0.95)))
    rows = [(name, s.get("num_problems", 0), s.get("metrics", {})) for name, s in summaries.items()]
    lines = [f"Scores in %, [{confidence}% bootstrap CI over problems].", ""]
    lines += _metric_table(rows, "benchmark")
    lines += [
        "",
        "| benchmark | n | temperature | max tokens | mean response tokens | truncated | skipped rows |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for name, s in summaries.items():
        response = s.get("response", {})
        sampling = s.get("sampling", {})
        skipped = s.get("rows", {}).get("skipped", {})
        skipped_text = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "0"
        mean_tokens = f"{response['mean_tokens']:.1f}" if response else "-"
        truncated = f"{100 * response['truncation_rate']:.1f}%" if response else "-"
        lines.append(
            f"| {name} | {s.get('n')} | {sampling.get('temperature')} | {sampling.get('max_tokens')} | "
            f"{mean_tokens} | {truncated} | {skipped_text} |"
        )
    notes = [
        f"- {name}: {metric} not computed: {why}"
        for name, s in summaries.items()
        for metric, why in sorted(s.get("skipped_metrics", {}).items(), key=lambda kv: _metric_order(kv[0]))
    ]
    notes += [
        f"- {name}: {s['missing_problems']} problems have no samples yet (interrupted run?)"
        for name, s in summaries.items()
        if s.get("missing_problems")
    ]
    notes += [
        f"- {name}: {s['verifier_errors']} samples could not be verified (scored incorrect; see "
        "samples.jsonl)"
        for name, s in summaries.items()
        if s.get("verifier_errors")
    ]
    if notes:
        lines += ["", *notes]
    for name, s in summaries.items():
        for field, groups in s.get("breakdown", {}).items():
            lines += ["", f"### {name} by {field}", ""]
            rows = [(value, g["num_problems"], g["metrics"]) for value, g in groups.items()]
            lines += _metric_table(rows, field)
    return "\n".join(lines)


def plot_pass_at_k(summaries: dict[str, dict[str, Any]], path: str | Path, title: str | None = None) -> bool:
    """pass@k against k (log2 axis) with CI bands, one line per benchmark; False if nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no %s", path)
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    plotted = False
    for name, s in summaries.items():
        points = sorted(
            (int(m.partition("@")[2]), v) for m, v in s.get("metrics", {}).items() if m.startswith("pass@")
        )
        if not points:
            continue
        ks = [k for k, _ in points]
        values = [100 * v["value"] for _, v in points]
        (line,) = ax.plot(ks, values, marker="o", label=name)
        ax.fill_between(
            ks,
            [100 * v["ci_low"] for _, v in points],
            [100 * v["ci_high"] for _, v in points],
            color=line.get_color(),
            alpha=0.15,
        )
        plotted = True
    if not plotted:
        plt.close(fig)
        return False
    ax.set_xscale("log", base=2)
    all_ks = sorted(
        {
            int(m.partition("@")[2])
            for s in summaries.values()
            for m in s.get("metrics", {})
            if m.startswith("pass@")
        }
    )
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_benchmark(bench_dir: str | Path, summary: dict[str, Any]) -> None:
    """``summary.json`` and ``pass_at_k.png`` of one benchmark."""
    bench_dir = Path(bench_dir)
    bench_dir.mkdir(parents=True, exist_ok=True)
    (bench_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_pass_at_k({summary["benchmark"]: summary}, bench_dir / PLOT_FILE, title=summary.get("model"))


def write_report(out_dir: str | Path, summaries: dict[str, dict[str, Any]], model: str | None = None) -> None:
    """The folder-level ``summary.json``, ``results.md`` and ``pass_at_k.png``.

    Benchmarks evaluated earlier into the same folder (other ``--benchmarks``) are kept in the report.
    """
    out_dir = Path(out_dir)
    everything = dict(load_summaries(out_dir))
    everything.update(summaries)
    (out_dir / "summary.json").write_text(
        json.dumps({"model": model, "benchmarks": everything}, indent=1) + "\n"
    )
    header = f"# Evaluation of {model}\n\n" if model else ""
    (out_dir / TABLE_FILE).write_text(header + markdown_table(everything) + "\n")
    plot_pass_at_k(everything, out_dir / PLOT_FILE, title=model)


def load_summaries(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Per-benchmark summaries in a results folder (or the one benchmark of a benchmark folder)."""
    folder = Path(folder)
    if (folder / "samples.jsonl").is_file() and (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
        return {summary.get("benchmark", folder.name): summary}
    out = {}
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        if (sub / "summary.json").is_file() and (sub / "samples.jsonl").is_file():
            summary = json.loads((sub / "summary.json").read_text())
            out[summary.get("benchmark", sub.name)] = summary
    return out


# --------------------------------------------------------------------------------------------------------
# Compare
# --------------------------------------------------------------------------------------------------------


def _benchmark_dirs(folder: Path) -> dict[str, Path]:
    if (folder / "samples.jsonl").is_file():
        return {folder.name: folder}
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder not found: {folder}")
    found = {sub.name: sub for sub in sorted(folder.iterdir()) if (sub / "samples.jsonl").is_file()}
    if not found:
        raise FileNotFoundError(f"{folder} holds no results (no <benchmark>/samples.jsonl)")
    return found


def _problems(bench_dir: Path) -> tuple[dict[str, list[dict]], int | None, dict]:
    from rlvr.eval.runner import read_samples

    settings_path = bench_dir / "settings.json"
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    n = settings.get("sampling", {}).get("n")
    done, _ = read_samples(bench_dir / "samples.jsonl", n)
    return done, n, settings


def compare(
    a: str | Path, b: str | Path, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[str, dict[str, Any]]:
    """Compare results folders ``a`` and ``b`` problem by problem; returns (printable text, data).

    For each benchmark in both, on the problems both have complete: every metric both can compute
    (``avg@n``; ``pass@k`` for k up to the smaller n; ``maj@k`` when both extracted answers), A and B with
    bootstrap CIs, and B - A with a paired bootstrap CI. ``outside CI`` says whether 0 lies outside that
    interval, i.e. whether the difference is larger than the resampling noise of the benchmark.
    """
    dirs_a, dirs_b = _benchmark_dirs(Path(a)), _benchmark_dirs(Path(b))
    shared = [name for name in dirs_a if name in dirs_b]
    if not shared and len(dirs_a) == 1 and len(dirs_b) == 1:  # two benchmark folders with different names
        shared = [next(iter(dirs_a))]
        dirs_b = {shared[0]: next(iter(dirs_b.values()))}
    pct = int(round(100 * confidence))
    lines = [f"A: {a}", f"B: {b}", ""]
    data: dict[str, Any] = {}
    header = (
        f"| benchmark | metric | problems | A [{pct}% CI] | B [{pct}% CI] | B - A [{pct}% CI] | outside CI |"
    )
    table = [header, "|---|---|---|---|---|---|---|"]
    notes = []
    for name in shared:
        done_a, n_a, settings_a = _problems(dirs_a[name])
        done_b, n_b, settings_b = _problems(dirs_b[name])
        ids = [pid for pid in done_a if pid in done_b]
        only = (len(done_a) - len(ids), len(done_b) - len(ids))
        if any(only):
            notes.append(f"- {name}: {only[0]} problems only in A, {only[1]} only in B (left out)")
        for key in ("sampling", "prompt_template", "system_prompt", "verifier"):
            if settings_a.get(key) != settings_b.get(key):
                notes.append(f"- {name}: {key} differs: A {settings_a.get(key)!r}, B {settings_b.get(key)!r}")
        if not ids:
            notes.append(f"- {name}: no shared problems")
            continue
        rec_a = [done_a[pid] for pid in ids]
        rec_b = [done_b[pid] for pid in ids]
        correct_a = [[bool(r["correct"]) for r in recs] for recs in rec_a]
        correct_b = [[bool(r["correct"]) for r in recs] for recs in rec_b]
        n_min = min(min(len(c) for c in correct_a), min(len(c) for c in correct_b))
        answers_ok = all(
            any("extracted" in r.get("info", {}) for recs in rr for r in recs) for rr in (rec_a, rec_b)
        )
        ks = sorted(set(_ks_of(dirs_a[name], dirs_b[name])) | {1})
        metrics = [f"pass@{k}" for k in ks if k <= n_min]
        metrics += [f"maj@{k}" for k in ks if k <= n_min and answers_ok and k > 1]
        metrics.append("avg@n")
        data[name] = {}
        for metric in metrics:
            kwargs = {"confidence": confidence, "resamples": resamples, "seed": seed}
            answers_a = [[r.get("extracted") for r in recs] for recs in rec_a]
            answers_b = [[r.get("extracted") for r in recs] for recs in rec_b]
            sa = metric_per_problem(metric, correct_a, answers_a)
            sb = metric_per_problem(metric, correct_b, answers_b)
            ci_a, ci_b = bootstrap_ci(sa, **kwargs), bootstrap_ci(sb, **kwargs)
            diff = paired_bootstrap_diff(sb, sa, **kwargs)
            data[name][metric] = {
                "problems": len(ids),
                "a": {"value": float(sa.mean()), "ci_low": ci_a[0], "ci_high": ci_a[1]},
                "b": {"value": float(sb.mean()), "ci_low": ci_b[0], "ci_high": ci_b[1]},
                "diff": diff._asdict(),
            }
            verdict = _verdict(diff.significant, diff.mean_diff)
            table.append(
                f"| {name} | {metric} | {len(ids)} | {_cell(data[name][metric]['a'])} | "
                f"{_cell(data[name][metric]['b'])} | {100 * diff.mean_diff:+.1f} "
                f"[{100 * diff.ci_low:+.1f}, {100 * diff.ci_high:+.1f}] | {verdict} |"
            )
    for name in dirs_a:
        if name not in shared:
            notes.append(f"- {name}: only in A")
    for name in dirs_b:
        if name not in shared:
            notes.append(f"- {name}: only in B")
    lines += ["Scores in %; B - A with a paired bootstrap CI over the shared problems.", ""]
    lines += table
    if notes:
        lines += ["", *notes]
    return "\n".join(lines), data


def _verdict(significant: bool, diff: float) -> str:
    return ("yes, B better" if diff > 0 else "yes, A better") if significant else "no"


def compare_runs(
    a: list[str | Path],
    b: list[str | Path],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[str, dict[str, Any]]:
    """Compare pairs of results folders ``(a[i], b[i])``, e.g. method A and method B trained with seed i;
    returns (printable text, data).

    Each pair is compared as :func:`compare` does (a paired bootstrap over the problems). Then, for every
    benchmark and metric all pairs share, the mean of the pairs' B - A with a Student t interval over the
    pairs (:func:`rlvr.eval.metrics.mean_over_runs`): the question "is B better than A as a training
    method", not "is this B checkpoint better than this A checkpoint". ``outside CI`` is judged on that
    interval.
    """
    if len(a) != len(b):
        raise ValueError(f"pairs of runs: A lists {len(a)} results folders and B lists {len(b)}")
    if len(a) < 2:
        raise ValueError("a comparison over runs needs at least 2 pairs of results folders")
    pairs, notes = [], []
    for i, (x, y) in enumerate(zip(a, b, strict=True), 1):
        text, pair = compare(x, y, confidence=confidence, resamples=resamples, seed=seed)
        pairs.append(pair)
        notes += [f"- pair {i}: {line[2:]}" for line in text.splitlines() if line.startswith("- ")]
    pct = int(round(100 * confidence))
    lines = [f"A: {', '.join(map(str, a))}", f"B: {', '.join(map(str, b))}", ""]
    lines += [
        f"Scores in %. Per pair: B - A with a paired bootstrap {pct}% CI over the shared problems (the "
        "benchmark's noise only).",
        f"Over pairs: the mean B - A with a Student t {pct}% CI over the {len(a)} pairs (it covers the "
        "training runs' noise too).",
        "",
        f"| benchmark | metric | pair | problems | A | B | B - A [{pct}% CI] | outside CI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shared = [
        (name, metric)
        for name, metrics in pairs[0].items()
        for metric in metrics
        if all(metric in pair.get(name, {}) for pair in pairs)
    ]
    for name, metric in shared:
        for i, pair in enumerate(pairs, 1):
            entry = pair[name][metric]
            diff = entry["diff"]
            lines.append(
                f"| {name} | {metric} | {i} | {entry['problems']} | {100 * entry['a']['value']:.1f} | "
                f"{100 * entry['b']['value']:.1f} | {100 * diff['mean_diff']:+.1f} "
                f"[{100 * diff['ci_low']:+.1f}, {100 * diff['ci_high']:+.1f}] | "
                f"{_verdict(diff['significant'], diff['mean_diff'])} |"
            )
    lines += [
        "",
        f"| benchmark | metric | pairs | mean A | mean B | mean B - A [{pct}% CI] | sd of B - A "
        "| outside CI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    data: dict[str, Any] = {"pairs": pairs, "over_runs": {}}
    for name, metric in shared:
        entries = [pair[name][metric] for pair in pairs]
        over = mean_over_runs([e["diff"]["mean_diff"] for e in entries], confidence=confidence)
        mean_a = sum(e["a"]["value"] for e in entries) / len(entries)
        mean_b = sum(e["b"]["value"] for e in entries) / len(entries)
        data["over_runs"].setdefault(name, {})[metric] = {"a": mean_a, "b": mean_b, **over._asdict()}
        lines.append(
            f"| {name} | {metric} | {over.runs} | {100 * mean_a:.1f} | {100 * mean_b:.1f} | "
            f"{100 * over.mean_diff:+.1f} [{100 * over.ci_low:+.1f}, {100 * over.ci_high:+.1f}] | "
            f"{100 * over.sd:.1f} | {_verdict(over.significant, over.mean_diff)} |"
        )
    if not shared:
        lines.append("(no benchmark and metric is shared by every pair)")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines), data


def _ks_of(*bench_dirs: Path) -> list[int]:
    """The k values the two runs reported (from their summaries), so compare shows the same columns."""
    ks: set[int] = set()
    for d in bench_dirs:
        path = d / "summary.json"
        if path.is_file():
            summary = json.loads(path.read_text())
            ks |= {int(k) for k in summary.get("ks", [])}
            ks |= {int(m) for m in re.findall(r"pass@(\d+)", " ".join(summary.get("metrics", {})))}
    return sorted(ks)

"""Training curves as PNG files, from the ``metrics.jsonl`` of one or several runs.

A run writes its own to ``run_dir/plots/`` when it ends; ``rlvr plot RUN_DIR [RUN_DIR ...] [--out DIR]``
draws them on demand, with several runs overlaid (one colour per run) in each panel, e.g. two algorithms
on one task. One figure per theme (:data:`FIGURES`), one panel per metric that at least one run logged;
figures with no such metric are not written. The metric names are those of ``docs/metrics.md``.
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path

from rlvr.console import read_metrics

FIGURES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("reward", "Reward and accuracy", ("reward/mean", "reward/accuracy", "reward/*/mean")),
    ("length", "Response length and truncation", ("response/length_mean", "response/truncated_frac")),
    ("entropy_kl", "Entropy and KL", ("actor/entropy", "actor/kl", "actor/kl_coef")),
    ("clipping", "Clipping and ratios", ("actor/clip_frac", "actor/dual_clip_frac", "actor/ratio_mean")),
    (
        "loss",
        "Losses and preference rewards",
        (
            "actor/loss",
            "actor/grad_norm",
            "critic/explained_variance",
            "preference/loss",
            "preference/rewards/accuracy",
            "preference/rewards/margin",
            "preference/nll",
        ),
    ),
    (
        "time",
        "Time per phase (seconds)",
        ("time/step_s", "time/rollout_s", "time/reward_s", "time/update_s", "time/sync_s", "time/eval_s"),
    ),
    (
        "eval",
        "Evaluation",
        ("eval/*/pass@*", "eval/pairs/rewards/accuracy", "eval/pairs/rewards/margin", "eval/pairs/loss"),
    ),
)


class PlotError(ValueError):
    """A run directory without metrics to plot."""


def matches(key: str, pattern: str) -> bool:
    """``pattern`` matches ``key`` part by part (``*`` never spans a ``/``)."""
    keys, parts = key.split("/"), pattern.split("/")
    if len(keys) != len(parts):
        return False
    return all(fnmatch.fnmatchcase(k, p) for k, p in zip(keys, parts, strict=True))


def figure_keys(runs: list[list[dict]], patterns: tuple[str, ...]) -> list[str]:
    """The metric names any run logged that match ``patterns``, in pattern order."""
    logged = sorted({k for rows in runs for row in rows for k, v in row.items() if _number(v)})
    keys: list[str] = []
    for pattern in patterns:
        keys += [k for k in logged if matches(k, pattern) and k not in keys]
    return keys


def write_plots(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """One PNG per figure of :data:`FIGURES` into ``out_dir``, every run of ``run_dirs`` overlaid.

    Raises:
        PlotError: a run directory has no ``metrics.jsonl`` rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, labels = [], _labels([Path(d) for d in run_dirs])
    for run_dir in map(Path, run_dirs):
        rows = read_metrics(run_dir / "metrics.jsonl")
        if not rows:
            raise PlotError(f"{run_dir}: no metrics.jsonl rows to plot (is it a run directory?)")
        runs.append(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, title, patterns in FIGURES:
        keys = figure_keys(runs, patterns)
        if not keys:
            continue
        cols = min(3, len(keys))
        nrows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.0 * nrows), dpi=110, squeeze=False)
        for ax, key in zip(axes.flat, keys, strict=False):
            for color, (label, rows) in enumerate(zip(labels, runs, strict=True)):
                points = [(r["step"], r[key]) for r in rows if _number(r.get(key))]
                if not points:
                    continue
                steps, values = zip(*points, strict=True)
                sparse = len(points) < len(rows) / 2  # evaluation: a few steps only
                ax.plot(steps, values, color=f"C{color}", label=label, marker="o" if sparse else None, lw=1.3)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys) :]:
            ax.set_visible(False)
        if len(runs) > 1:  # one legend for the figure: every run that drew a line in some panel
            shown: dict[str, object] = {}
            for ax in axes.flat:
                for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                    shown.setdefault(label, handle)
            names = [label for label in labels if label in shown]
            fig.legend([shown[n] for n in names], names, loc="upper right", fontsize=8)
        fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def _labels(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, or its whole path where two runs share a name."""
    names = [d.name for d in run_dirs]
    return [d.name if names.count(d.name) == 1 else str(d) for d in run_dirs]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

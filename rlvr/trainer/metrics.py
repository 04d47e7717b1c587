"""Step metrics to ``metrics.jsonl`` in the run directory, the trackers of ``run.report_to``, the console.

Every metric name is listed, with its meaning, in ``docs/metrics.md``. A resumed run first drops the rows
logged after the checkpoint it restores (:meth:`MetricsLogger.resume_after`), so every step appears once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from rlvr.console import StepConsole, read_metrics

logger = logging.getLogger(__name__)


class MetricsLogger:
    """Where a step's metrics go: a row of ``metrics.jsonl``, the trackers of ``run.report_to`` (through
    accelerate's tracker API: ``accelerator.init_trackers`` / ``accelerator.log``, with the recipe as the
    run's config) and the console's step line (:class:`rlvr.console.StepConsole`). Only the main process
    writes; :meth:`finish` draws the plots and prints the summary when the run ends."""

    def __init__(self, run_dir: str | Path, accelerator, recipe) -> None:
        self.enabled = accelerator.is_main_process
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.accelerator = accelerator
        self.recipe = recipe
        self.console = StepConsole(recipe.run.steps, self.enabled)
        self.purge_step: int | None = None
        self.trackers_started = False  # at the first row, after a resume has set purge_step

    def resume_after(self, step: int) -> int:
        """Continue after ``step``: drop the rows past it from ``metrics.jsonl`` (a run killed after logging
        a step but before its checkpoint was complete logs that step again) and hide tensorboard events
        past it (``purge_step``). Returns the number of rows dropped."""
        self.purge_step = step + 1
        return drop_rows_after(self.path, step) if self.enabled else 0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if not self.trackers_started:
            self._start_trackers()
        row = {
            "step": step,
            "time": round(time.time(), 3),
            **{k: _round(v) for k, v in sorted(metrics.items())},
        }
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.accelerator.trackers:
            self.accelerator.log(metrics, step=step)
        self.console.step(step, metrics)

    def _start_trackers(self) -> None:
        self.trackers_started = True
        if not self.accelerator.log_with:
            return
        init_kwargs = {"wandb": {"name": self.recipe.run.name, "dir": str(self.run_dir)}}
        if self.purge_step is not None:
            init_kwargs["tensorboard"] = {"purge_step": self.purge_step}
        self.accelerator.init_trackers(
            self.recipe.run.name, config=tracker_config(self.recipe), init_kwargs=init_kwargs
        )

    def finish(self, final_dir: Path | None) -> None:
        """At the end of a run: the plots in ``run_dir/plots`` and the console summary. A plot that cannot
        be drawn is a warning, never a lost run."""
        if not self.enabled:
            return
        lines = []
        if final_dir is not None:
            lines.append(f"model:   {final_dir}")
        lines.append(f"metrics: {self.path}")
        try:
            from rlvr.plots import write_plots

            plots = write_plots([self.run_dir], self.run_dir / "plots")
            lines.append(f"plots:   {self.run_dir / 'plots'} ({len(plots)} figures)")
        except Exception as exc:  # noqa: BLE001 - a plot must not cost the run
            logger.warning("no plots written: %s: %s", type(exc).__name__, exc)
        if self.accelerator.trackers:
            names = ", ".join(t.name for t in self.accelerator.trackers)
            lines.append(f"trackers: {names} in {tracker_dir(self.run_dir)}")
        library_log = self.run_dir / "logs"
        if library_log.is_dir():
            lines.append(f"library output: {library_log}")
        self.console.summary(self.run_dir, read_metrics(self.path), lines)

    def close(self) -> None:
        self.console.close()


def tracker_dir(run_dir: str | Path) -> Path:
    """Where trackers with local files write (tensorboard: ``trackers/<run.name>``)."""
    return Path(run_dir) / "trackers"


def tracker_config(recipe) -> dict[str, str | int | float | bool]:
    """The recipe as a tracker run's config: dotted keys (``train.lr``), each value a number, string or
    bool (lists, tables and null as JSON text), which every tracker accepts."""
    flat: dict[str, str | int | float | bool] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value, default=str)

    walk("", recipe.model_dump(mode="json"))
    return flat


def drop_rows_after(path: str | Path, step: int) -> int:
    """Rewrite the metrics file ``path`` without its rows past ``step`` and without a torn last line (a
    kill mid-write); atomic (a temporary file renamed over it). Returns the number of lines dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            row_step = None
        if isinstance(row_step, int) and row_step <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    return dropped


def _round(value: float) -> float:
    return float(f"{value:.6g}")

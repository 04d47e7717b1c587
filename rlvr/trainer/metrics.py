"""Step metrics to ``metrics.jsonl`` in the run directory, the console, and tensorboard when installed.

Every metric name is listed, with its meaning, in ``docs/metrics.md``. A resumed run first drops the rows
logged after the checkpoint it restores (:meth:`MetricsLogger.resume_after`), so every step appears once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class MetricsLogger:
    def __init__(self, run_dir: str | Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tensorboard_dir = Path(run_dir) / "tensorboard" if enabled and tensorboard else None
        self.purge_step: int | None = None
        self.writer = None  # created at the first row, after a resume has set purge_step

    def resume_after(self, step: int) -> int:
        """Continue after ``step``: drop the rows past it from ``metrics.jsonl`` (a run killed after logging
        a step but before its checkpoint was complete logs that step again) and hide tensorboard events
        past it (``purge_step``). Returns the number of rows dropped."""
        self.purge_step = step + 1
        return drop_rows_after(self.path, step) if self.enabled else 0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is None and self.tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.tensorboard_dir), purge_step=self.purge_step)
            except ImportError:
                self.tensorboard_dir = None
        row = {
            "step": step,
            "time": round(time.time(), 3),
            **{k: _round(v) for k, v in sorted(metrics.items())},
        }
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
        print(console_line(step, metrics), flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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


CONSOLE_KEYS = (
    ("reward", "reward/mean"),
    ("acc", "reward/accuracy"),
    ("len", "response/length_mean"),
    ("loss", "actor/loss"),
    ("loss", "preference/loss"),
    ("pref_acc", "preference/rewards/accuracy"),
    ("margin", "preference/rewards/margin"),
    ("eval_pref_acc", "eval/pairs/rewards/accuracy"),
    ("kl", "actor/kl"),
    ("ent", "actor/entropy"),
    ("clip", "actor/clip_frac"),
    ("tok/s", "perf/rollout_tokens_per_s"),
    ("step_s", "time/step_s"),
)


def console_line(step: int, metrics: dict[str, float]) -> str:
    parts = [f"step {step:>4}"]
    for label, key in CONSOLE_KEYS:
        if key in metrics:
            parts.append(f"{label} {metrics[key]:.4g}")
    return " | ".join(parts)

"""Step metrics to ``metrics.jsonl`` in the run directory, the console, and tensorboard when installed.

Every metric name is listed, with its meaning, in ``docs/metrics.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLogger:
    def __init__(self, run_dir: str | Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                self.writer = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
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


def _round(value: float) -> float:
    return float(f"{value:.6g}")


CONSOLE_KEYS = (
    ("reward", "reward/mean"),
    ("acc", "reward/accuracy"),
    ("len", "response/length_mean"),
    ("loss", "actor/loss"),
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

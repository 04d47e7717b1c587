"""Per-prompt statistics: what the trainer has seen of every prompt, for curriculum samplers and metrics.

For each prompt of the dataset :class:`PromptStats` keeps how often it was sampled (generation rounds that
included it), the last step it was sampled at, its pass-rate history (an exponential moving average and
the last ``window`` pass rates) and the mean length of its responses; :meth:`PromptStats.by_source`
aggregates them per data source (the rows' ``data_source``). The trainer records the results of every
generation round from every process (gathered in process order), so the statistics are global and
identical on every process; :meth:`PromptStats.state_dict` goes into checkpoints and restores them exactly
(floats round-trip through JSON unchanged).

A pass rate is the fraction of a prompt's G samples whose verifier score reaches
``rewards.correct_threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

Estimate = Literal["ema", "window", "last"]
"""Which pass-rate estimate a sampler reads: the moving average, the mean of the window, the last value."""


class PromptStats:
    """Per-prompt statistics over a dataset of ``size`` prompts (see the module docstring).

    Args:
        sources: each prompt's data source (``row["data_source"]``), in dataset order.
        ema_weight: weight of a new pass rate in the moving average,
            ``ema <- ema_weight * p + (1 - ema_weight) * ema`` (the first observation sets it).
        window: how many of the latest pass rates are kept per prompt.
    """

    def __init__(self, sources: Sequence[str], *, ema_weight: float = 0.5, window: int = 4) -> None:
        if not 0 < ema_weight <= 1:
            raise ValueError(f"ema_weight must be in (0, 1], got {ema_weight}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.sources = [str(s) for s in sources]
        self.ema_weight = float(ema_weight)
        self.window = int(window)
        size = len(self.sources)
        self.times_sampled = np.zeros(size, dtype=np.int64)
        self.last_step = np.full(size, -1, dtype=np.int64)
        self.ema = np.full(size, np.nan)
        self.samples = np.zeros(size, dtype=np.int64)
        """Responses seen per prompt (the weight of the running mean length)."""
        self.mean_length = np.zeros(size)
        self.recent: dict[int, list[float]] = {}
        """The latest ``window`` pass rates of every prompt seen, oldest first."""

    def __len__(self) -> int:
        return len(self.sources)

    def record(self, records: Sequence[dict[str, Any]], step: int) -> None:
        """Fold in the results of one generation round at training step ``step`` (0-based).

        Each record is ``{"prompt_id": int, "pass_rate": float, "samples": int, "mean_length": float}``.
        """
        for r in records:
            i, p = int(r["prompt_id"]), float(r["pass_rate"])
            self.times_sampled[i] += 1
            self.last_step[i] = step
            old = self.ema[i]
            self.ema[i] = p if np.isnan(old) else self.ema_weight * p + (1 - self.ema_weight) * old
            history = self.recent.setdefault(i, [])
            history.append(p)
            del history[: -self.window]
            n = int(r.get("samples", 0))
            if n:
                total = self.samples[i] + n
                self.mean_length[i] += (float(r["mean_length"]) - self.mean_length[i]) * n / total
                self.samples[i] = total

    @property
    def seen(self) -> np.ndarray:
        """Whether each prompt has been sampled at least once."""
        return self.times_sampled > 0

    def estimate(self, kind: Estimate = "ema") -> np.ndarray:
        """Each prompt's estimated pass rate (NaN for a prompt not seen yet)."""
        if kind not in ("ema", "window", "last"):
            raise ValueError(f"unknown pass-rate estimate {kind!r}; expected ema, window or last")
        if kind == "ema":
            return self.ema.copy()
        out = np.full(len(self), np.nan)
        for i, history in self.recent.items():
            out[i] = history[-1] if kind == "last" else float(np.mean(history))
        return out

    def by_source(self) -> dict[str, dict[str, float]]:
        """Per data source: prompts, prompts seen, times sampled, mean EMA pass rate of the seen prompts and
        mean response length (weighted by responses)."""
        out: dict[str, dict[str, float]] = {}
        names = np.array(self.sources)
        for name in sorted(set(self.sources)):
            mine = names == name
            seen = mine & self.seen
            samples = self.samples[mine].sum()
            out[name] = {
                "prompts": float(mine.sum()),
                "seen": float(seen.sum()),
                "times_sampled": float(self.times_sampled[mine].sum()),
                "pass_rate": float(self.ema[seen].mean()) if seen.any() else float("nan"),
                "mean_length": float((self.mean_length[mine] * self.samples[mine]).sum() / samples)
                if samples
                else float("nan"),
            }
        return out

    def state_dict(self) -> dict[str, Any]:
        seen = np.flatnonzero(self.seen)
        return {
            "size": len(self),
            "ema_weight": self.ema_weight,
            "window": self.window,
            "index": seen.tolist(),
            "times_sampled": self.times_sampled[seen].tolist(),
            "last_step": self.last_step[seen].tolist(),
            "ema": self.ema[seen].tolist(),
            "samples": self.samples[seen].tolist(),
            "mean_length": self.mean_length[seen].tolist(),
            "recent": [list(self.recent[int(i)]) for i in seen],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["size"] != len(self):
            raise ValueError(
                f"prompt statistics were saved for {state['size']} prompts but the dataset now has "
                f"{len(self)}; they would belong to other prompts"
            )
        fresh = PromptStats(self.sources, ema_weight=self.ema_weight, window=self.window)
        self.__dict__.update(fresh.__dict__)
        index = np.asarray(state["index"], dtype=np.int64)
        self.times_sampled[index] = state["times_sampled"]
        self.last_step[index] = state["last_step"]
        self.ema[index] = state["ema"]
        self.samples[index] = state["samples"]
        self.mean_length[index] = state["mean_length"]
        recent = zip(index, state["recent"], strict=True)
        self.recent = {int(i): [float(p) for p in h][-self.window :] for i, h in recent}

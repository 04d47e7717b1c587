"""What a person sees while rlvr trains or evaluates, and where everything else goes.

By default (``run.verbose: false``) the console shows rlvr's own lines only: one line per step, a progress
bar with the time left, rlvr's warnings, and a summary at the end. Everything the libraries print (vLLM and
its engine process, DeepSpeed, transformers, torch: log lines, warnings, progress bars, native messages)
goes to a log file in the run directory, ``logs/train.log`` (``logs/rank<N>.log`` on process N > 0).
``run.verbose: true`` (``rlvr eval --verbose``) leaves all output on the console.

The split is made on the process's own output channels (:func:`library_output_to`), so output from
native code and from child processes is caught too; rlvr writes to the console through :func:`say` and the
``rlvr`` logger.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

_console: TextIO | None = None  # the real terminal while library output is redirected; None otherwise


def console_stream() -> TextIO:
    """The real terminal's stdout, also while library output goes to a log file."""
    return _console or sys.stdout


def say(message: str) -> None:
    """Print one of rlvr's own lines to the console (also while library output goes to a log file)."""
    print(message, file=console_stream(), flush=True)


def _launcher_rank() -> int:
    """The launcher's rank of this process (0 without a launcher), known before any accelerator exists."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main_rank() -> bool:
    return _launcher_rank() == 0


def process_log_name() -> str:
    """``train.log`` for the main process (rank 0, or no launcher), ``rank<N>.log`` for the others."""
    rank = _launcher_rank()
    return "train.log" if rank == 0 else f"rank{rank}.log"


@contextlib.contextmanager
def library_output_to(log_path: str | Path | None, *, show: bool = True) -> Iterator[Path | None]:
    """Send everything this process writes to stdout and stderr, and what processes it starts write
    there, to ``log_path`` (appended) for the duration; rlvr's :func:`say` lines (to stdout) and ``rlvr``
    log records (to stderr) still reach the console when ``show`` (the main process). ``log_path`` None:
    nothing is redirected.

    The file descriptors 1 and 2 themselves are redirected, not only ``sys.stdout``: vLLM's engine
    process, native code and libraries that keep their own handle on the streams all write there. They are
    restored on exit, before an exception propagates, so a traceback reaches the console.
    """
    global _console
    if log_path is None:
        yield None
        return
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    log_file = open(log_path, "a", buffering=1)  # noqa: SIM115 - closed below
    log_file.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {' '.join(sys.argv)}\n")
    saved_out, saved_err = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(saved_out), "w", buffering=1) if show else None
    console_err = os.fdopen(os.dup(saved_err), "w", buffering=1) if show else None
    handler = None
    if console_err is not None:  # rlvr's log records go where they went before: the real stderr
        handler = logging.StreamHandler(console_err)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger("rlvr").addHandler(handler)
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    streams = sys.stdout, sys.stderr  # replaced too, in case they are not the descriptors (a notebook)
    sys.stdout = sys.stderr = log_file
    previous, _console = _console, console
    try:
        yield log_path
    except BaseException:
        if console_err is not None:
            print(f"(library output of this process: {log_path})", file=console_err, flush=True)
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        _console = previous
        if handler is not None:
            logging.getLogger("rlvr").removeHandler(handler)
        for stream in (console, console_err):
            if stream is not None:
                stream.close()
        log_file.close()


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


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
    ("step_s", "time/step_s"),
)


def console_line(step: int, metrics: dict[str, float]) -> str:
    """The step's line: ``step   12 | reward 0.41 | acc 0.41 | len 7.2 | ... | step_s 21.3``, with every
    evaluation metric of the form ``eval/<benchmark>/pass@<k>`` appended."""
    parts = [f"step {step:>4}"]
    for label, key in CONSOLE_KEYS:
        if key in metrics:
            parts.append(f"{label} {metrics[key]:.4g}")
    for key in sorted(metrics):
        if key.startswith("eval/") and key.count("/") == 2 and key.rsplit("/", 1)[1].startswith("pass@"):
            parts.append(f"{key[5:]} {metrics[key]:.3g}")
    return " | ".join(parts)


class StepConsole:
    """The console of a training run: one line per logged step with the time left, a progress bar over the
    run's steps when the console is a terminal, and :meth:`summary` at the end."""

    def __init__(self, total_steps: int, enabled: bool) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.started = time.perf_counter()
        self.first_step: int | None = None
        self.bar = None

    def step(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.first_step is None:  # the first step logged by this process (a resumed run starts later)
            self.first_step = step - 1
        done = step - self.first_step
        left = (now - self.started) / done * (self.total - step) if done > 0 else math.nan
        line = console_line(step, metrics)
        if step < self.total and not math.isnan(left):
            line += f" | left {format_duration(left)}"
        stream = console_stream()
        if self.bar is None and stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=step - 1, file=stream, unit="step", leave=False)
        if self.bar is not None:
            self.bar.write(line, file=stream)
            self.bar.update(1)
        else:
            say(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(self, run_dir: Path, rows: list[dict], lines: list[str]) -> None:
        """The end-of-run summary: steps and wall time of this process, the headline metric over the first
        and last of the run's metric ``rows`` (all of ``metrics.jsonl``, so resumes count), and where the
        outputs are (``lines``)."""
        self.close()
        if not self.enabled:
            return
        wall = time.perf_counter() - self.started
        say(f"done: {len(rows)} steps logged in {run_dir} ({format_duration(wall)} in this process)")
        trend = first_last(rows)
        if trend:
            say(trend)
        for line in lines:
            say(line)


HEADLINE_KEYS = ("reward/mean", "reward/accuracy", "preference/rewards/accuracy", "preference/loss")


def first_last(rows: list[dict], keys: tuple[str, ...] = HEADLINE_KEYS, window: int = 5) -> str:
    """``reward/mean: 0.113 over steps 1-5 -> 0.663 over steps 26-30`` for the first key of ``keys`` that the
    rows have ('' when none has it)."""
    for key in keys:
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if len(points) < 2:
            continue
        n = min(window, len(points) // 2)
        head, tail = points[:n], points[-n:]
        mean = lambda ps: sum(v for _, v in ps) / len(ps)  # noqa: E731
        return (
            f"{key}: {mean(head):.3g} over steps {head[0][0]}-{head[-1][0]} -> "
            f"{mean(tail):.3g} over steps {tail[0][0]}-{tail[-1][0]}"
        )
    return ""


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``, one per step (a later row for a step replaces an earlier one; a torn
    line is skipped)."""
    by_step: dict[int, dict] = {}
    path = Path(path)
    if not path.is_file():
        return []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]

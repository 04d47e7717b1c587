"""Procedural tasks as a prompt source: reasoning-gym datasets generated offline from the installed package.

A recipe names a task and its configuration in ``data.sources``::

    data:
      sources:
        - {task: basic_arithmetic, name: easy, size: 500, config: {max_terms: 2, max_digits: 1},
           columns: {difficulty: 1}}
        - {task: basic_arithmetic, name: hard, size: 500, config: {max_terms: 3, max_digits: 2},
           columns: {difficulty: 2}}

:func:`task_rows` generates the rows (deterministic given ``seed``); :func:`check_task` checks the name and
the configuration against the task's config class when the recipe loads. Score them with the
``reasoning_gym`` verifier (:mod:`rewards.reasoning_gym`), which calls the task's own answer check, or with
``math`` for numeric answers. Needs ``pip install reasoning-gym`` (in the ``tasks`` extra).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


class TaskError(ValueError):
    """A task source cannot be built; ``key`` is the source key at fault (``task`` or ``config.<name>``)."""

    def __init__(self, message: str, key: str = "task") -> None:
        super().__init__(message)
        self.key = key


def _registry() -> dict[str, Any]:
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:
        raise TaskError(
            "reasoning-gym is not installed; pip install reasoning-gym (or rlvr[tasks]) to use task sources"
        ) from None
    return DATASETS


def check_task(task: str, config: dict[str, Any]) -> None:
    """Raise :class:`TaskError` when ``task`` is not a reasoning-gym task or ``config`` does not fit it."""
    datasets = _registry()
    if task not in datasets:
        close = sorted(n for n in datasets if task.lower()[:4] in n) or sorted(datasets)[:12]
        raise TaskError(f"unknown reasoning-gym task {task!r}; e.g. {', '.join(close)}")
    _, config_cls = datasets[task]
    fields = {f.name for f in dataclasses.fields(config_cls)} - {"seed", "size"}
    for name in config:
        if name not in fields:
            raise TaskError(
                f"{task} has no config key {name!r} (keys: {', '.join(sorted(fields))})", f"config.{name}"
            )
    try:
        made = config_cls(**config, seed=0, size=1)
        if hasattr(made, "validate"):
            made.validate()
    except (AssertionError, TypeError, ValueError) as exc:
        raise TaskError(f"{task}: invalid config {config}: {exc or type(exc).__name__}", "config") from None


def task_rows(
    task: str,
    *,
    size: int,
    seed: int,
    config: dict[str, Any],
    prompt_field: str,
    answer_field: str,
    columns: dict[str, Any],
) -> list[dict[str, Any]]:
    """``size`` rows of ``task``: ``{prompt_field: question, answer_field: answer, "task": task,
    "task_config": config, "metadata": the task's metadata, **columns}``, the same on every process and in
    every run for the same arguments."""
    check_task(task, config)
    return [
        {
            prompt_field: entry["question"],
            answer_field: entry["answer"],
            "task": task,
            "task_config": dict(config),
            "metadata": entry["metadata"],
            **columns,
        }
        for entry in _generate_in_child(task, size, seed, config)
    ]


def _generate_in_child(task: str, size: int, seed: int, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's entries, generated in a fresh interpreter with ``PYTHONHASHSEED=0``: some tasks iterate
    over sets of strings, whose order follows the per-process hash seed, so generating in place could give
    each training process (and a resumed run) other rows for the same seed."""
    with tempfile.TemporaryDirectory() as folder:
        request, result = Path(folder, "request.pkl"), Path(folder, "rows.pkl")
        request.write_bytes(pickle.dumps((task, size, seed, config)))
        proc = subprocess.run(
            [sys.executable, "-m", "rlvr.data.tasks", str(request), str(result)],
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            timeout=_GENERATE_TIMEOUT_S,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise TaskError(f"generating {size} rows of {task} with config {config} failed: {last}")
        return pickle.loads(result.read_bytes())


_GENERATE_TIMEOUT_S = 1800


def _generate(request: Path, result: Path) -> None:
    import reasoning_gym

    task, size, seed, config = pickle.loads(request.read_bytes())
    dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    result.write_bytes(pickle.dumps([dict(entry) for entry in dataset]))


if __name__ == "__main__":
    _generate(Path(sys.argv[1]), Path(sys.argv[2]))

"""Verifier plug-in API and the reward scorer.

A *verifier* is a plain function ``(completion: str, example: dict, **kwargs) -> float | RewardResult``.
``example`` is the dataset row; by convention the gold answer is ``example["answer"]``. Recipes name a
verifier with one of three spec forms, resolved by :func:`resolve_verifier`:

* a registered name, e.g. ``"math"`` (built-ins live in the top-level ``rewards`` package and register
  themselves with the :func:`verifier` decorator when it is imported);
* ``"package.module:function"``, imported like any module;
* ``"path/to/file.py:function"``, loaded from a file (relative paths are tried against the current
  directory, then against ``base_dir``, the recipe's folder).

:class:`Scorer` runs every verifier of a recipe on a batch of completions and returns a :class:`ScoreBatch`
(the weighted sum per sample, each reward's raw scores, per-sample infos and failure counts).

Execution model. With ``num_workers >= 1`` the verifiers run in a small pool of long-lived worker processes.
Each worker is a fresh interpreter (``sys.executable``, the parent's ``sys.path``) that imports only this
module and the verifiers: nothing is forked from the parent (which holds torch/vLLM threads) and, unlike
multiprocessing's spawn, the parent's ``__main__`` is not re-imported, so workers start in a fraction of a
second and an unguarded script works. The parent feeds each worker one call at a time through its own pipe
and gives every call a deadline. A call that raises, returns something that is not a finite number, overruns
the deadline, or kills its worker (e.g. ``os._exit`` or a segfault) scores ``failure_score`` and records the
reason under ``infos[i][reward]["error"]``; a hung worker is killed and a dead one replaced, so the rest of
the batch and later batches are unaffected. Workers receive spec strings, not function objects, and resolve
them themselves (once), so functions loaded from a file work too. A worker whose parent dies exits by itself.

``num_workers=0`` calls the verifiers inline in the calling process. That is handy for debugging (breakpoints
and tracebacks work), but there is no timeout and a verifier that exits or crashes takes the caller down.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import math
import multiprocessing as mp
import numbers
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import ModuleType
from typing import Any

from rlvr.registry import Registry

logger = logging.getLogger(__name__)

VERIFIERS: Registry[Callable[..., Any]] = Registry("verifier")

# Seconds a freshly spawned worker may take to import its verifiers and report ready.
_STARTUP_TIMEOUT_S = 120.0
# A worker that dies this many times in a row before becoming ready aborts the batch.
_MAX_STARTUP_FAILURES = 3
# Tasks sent ahead to a worker: one running, one queued, so it never waits for the parent between tasks.
_PIPELINE_DEPTH = 2
_MAX_REASON_CHARS = 500


class VerifierSpecError(ValueError):
    """A verifier spec could not be resolved to a callable."""


@dataclass
class RewardResult:
    """A verifier's score plus free-form details (extracted answer, gold, ...) for logging."""

    score: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardSpec:
    """One reward term of a recipe: a verifier spec, its weight in the sum, and keyword arguments."""

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    route: dict[str, list[Any]] | None = None
    """Score only rows whose column ``key`` holds one of the listed values (e.g. ``{"task": ["code"]}``);
    other rows get no term from this reward. None: every row."""

    def applies_to(self, example: dict) -> bool:
        if self.route is None:
            return True
        return all(example.get(column) in values for column, values in self.route.items())


def verifier(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a verifier function under ``name`` in :data:`VERIFIERS`."""
    return VERIFIERS.register(name)


# ----------------------------------------------------------------------------------------------------------
# Spec resolution
# ----------------------------------------------------------------------------------------------------------

_FILE_MODULES: dict[str, ModuleType] = {}
_FILE_LOCK = threading.Lock()


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _find_file(spec: str, target: str, base_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(target).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if base_dir is not None and not path.is_absolute():
        candidates.append(Path(base_dir) / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise VerifierSpecError(f"verifier spec {spec!r}: file not found: {target} (tried {tried})")


def _load_file_module(spec: str, path: Path) -> ModuleType:
    key = str(path)
    with _FILE_LOCK:
        if key in _FILE_MODULES:
            return _FILE_MODULES[key]
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        stem = re.sub(r"\W", "_", path.stem)
        mod_name = f"_rlvr_verifier_{stem}_{digest}"
        import_spec = importlib.util.spec_from_file_location(mod_name, path)
        if import_spec is None or import_spec.loader is None:
            raise VerifierSpecError(f"verifier spec {spec!r}: cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(import_spec)
        sys.modules[mod_name] = module  # dataclasses and pickle look modules up here
        try:
            import_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise VerifierSpecError(
                f"verifier spec {spec!r}: error while loading {path}: {type(exc).__name__}: {exc}"
            ) from exc
        _FILE_MODULES[key] = module
        return module


def _import_module(spec: str, target: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise VerifierSpecError(
            f"verifier spec {spec!r}: cannot import module {target!r} ({exc}); expected "
            "'package.module:function' with the module importable, or 'path/to/file.py:function'"
        ) from exc


def _get_attr(spec: str, module: ModuleType, attr: str) -> Callable[..., Any]:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise VerifierSpecError(
                f"verifier spec {spec!r}: {module.__name__} has no function {attr!r}; "
                f"callables defined there: {', '.join(public) or '(none)'}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise VerifierSpecError(
            f"verifier spec {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable verifier function"
        )
    return obj


def _lookup_registered(spec: str) -> Callable[..., Any]:
    import rewards  # noqa: F401  - lazy: built-ins register themselves on import (avoids an import cycle)

    if spec in VERIFIERS:
        return VERIFIERS.get(spec)
    known = ", ".join(VERIFIERS.names()) or "(none)"
    raise VerifierSpecError(
        f"unknown verifier {spec!r}; known names: {known}. "
        "Other forms: 'package.module:function' or 'path/to/file.py:function'"
    )


def canonical_spec(spec: str, base_dir: str | os.PathLike[str] | None = None) -> str:
    """Return ``spec`` with a file path made absolute, so it resolves the same way in any process."""
    if ":" not in spec:
        return spec
    target, _, attr = spec.rpartition(":")
    if _is_file_target(target):
        return f"{_find_file(spec, target, base_dir)}:{attr}"
    return spec


def resolve_verifier(spec: str, base_dir: str | os.PathLike[str] | None = None) -> Callable[..., Any]:
    """Turn a verifier spec into the function it names.

    ``spec`` is a registered name (``"math"``), ``"package.module:function"`` or
    ``"path/to/file.py:function"`` (relative paths are tried against the current directory, then against
    ``base_dir``). Raises
    :class:`VerifierSpecError` (a ``ValueError``) naming the spec and what was expected.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise VerifierSpecError(f"verifier spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if ":" not in spec:
        return _lookup_registered(spec)
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise VerifierSpecError(
            f"verifier spec {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'"
        )
    if _is_file_target(target):
        module = _load_file_module(spec, _find_file(spec, target, base_dir))
    else:
        module = _import_module(spec, target)
    return _get_attr(spec, module, attr)


def short_name(spec: str) -> str:
    """The key a reward is reported under: the registered name, or the function name of a path spec."""
    spec = spec.strip()
    return spec.rpartition(":")[2].rpartition(".")[2] if ":" in spec else spec


def _unique_names(specs: Sequence[str]) -> list[str]:
    names: list[str] = []
    for spec in specs:
        base = short_name(spec)
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


# ----------------------------------------------------------------------------------------------------------
# Calling one verifier and checking what it returned
# ----------------------------------------------------------------------------------------------------------

# (score, info, error): error is None on success, else the reason and score is None.
Outcome = tuple[float | None, dict[str, Any], str | None]


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_REASON_CHARS else text[:_MAX_REASON_CHARS] + "..."


def _as_score(value: Any) -> float | str:
    """``value`` as a finite float, or a string saying why it is not one."""
    if value is None:
        return "returned None; expected a float or RewardResult"
    if isinstance(value, str | bytes) or not (
        isinstance(value, numbers.Real) or hasattr(type(value), "__float__")
    ):
        return f"returned {type(value).__name__} {_clip(repr(value))}; expected a float or RewardResult"
    try:
        score = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        return f"returned {type(value).__name__} that is not convertible to float ({exc})"
    if not math.isfinite(score):
        return f"returned non-finite score {score}"
    return score


def coerce_result(result: Any) -> Outcome:
    """Validate a verifier's return value into ``(score, info, error)``."""
    if isinstance(result, RewardResult):
        value, info = result.score, result.info
        if not isinstance(info, dict):
            return None, {}, f"returned RewardResult.info of type {type(info).__name__}; expected a dict"
    else:
        value, info = result, {}
    score = _as_score(value)
    if isinstance(score, str):
        return None, {}, score
    return score, info, None


def call_verifier(fn: Callable[..., Any], completion: str, example: dict, kwargs: dict[str, Any]) -> Outcome:
    """Call ``fn`` and turn an exception or an invalid return value into an error outcome."""
    try:
        result = fn(completion, example, **kwargs)
    except (Exception, SystemExit) as exc:
        return None, {}, _clip(f"raised {type(exc).__name__}: {exc}")
    return coerce_result(result)


# ----------------------------------------------------------------------------------------------------------
# Worker processes
# ----------------------------------------------------------------------------------------------------------

# A worker is a fresh interpreter that imports only this module and the verifiers: unlike multiprocessing's
# spawn, it does not re-import the parent's __main__ (which would pull in torch, or recurse into training).
_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from rlvr.rewards import _worker_entry; _worker_entry(int(sys.argv[2]), int(sys.argv[3]))"
)


def _watch_parent(parent_pid: int) -> None:
    """Exit the worker if the parent disappears (it would otherwise linger while stuck in a verifier)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _worker_entry(fd: int, parent_pid: int) -> None:
    """Entry point of a worker interpreter: ``fd`` is its end of the pipe to the scorer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    conn = Connection(fd)
    try:
        specs = conn.recv()
    except (EOFError, OSError):
        return
    _worker_loop(conn, specs)


def _worker_loop(conn: Connection, specs: list[tuple[str, dict[str, Any]]]) -> None:
    """Resolve the specs once, report ready, then answer one task per message until told to stop.

    Task messages are ``(task_id, spec_index, completion, example)``; replies are ``(task_id, score, info,
    error)``. ``None`` (or a closed pipe) ends the loop. Verifiers run in the worker's main thread, so
    libraries that use ``signal.alarm`` (math-verify) keep their own timeouts.
    """
    fns: list[Callable[..., Any] | str] = []
    for spec, _ in specs:
        try:
            fns.append(resolve_verifier(spec))
        except Exception as exc:  # reported for each task of this spec
            fns.append(_clip(f"could not resolve verifier in worker: {exc}"))
    try:
        conn.send(("ready",))
        while True:
            msg = conn.recv()
            if msg is None:
                return
            task_id, index, completion, example = msg
            fn = fns[index]
            if isinstance(fn, str):
                outcome: Outcome = (None, {}, fn)
            else:
                outcome = call_verifier(fn, completion, example, specs[index][1])
            try:
                conn.send((task_id, *outcome))
            except (OSError, EOFError):
                raise
            except Exception as exc:  # the info could not be pickled; the pipe is still clean
                conn.send((task_id, None, {}, _clip(f"result could not be sent back: {exc}")))
    except (EOFError, OSError):
        return


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Worker:
    """One worker process, its pipe, and the tasks sent to it but not yet answered (oldest first)."""

    def __init__(self, specs: list[tuple[str, dict[str, Any]]]) -> None:
        parent_conn, child_conn = mp.Pipe(duplex=True)
        fd = child_conn.fileno()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _BOOTSTRAP,
                json.dumps([str(p) for p in sys.path]),
                str(fd),
                str(os.getpid()),
            ],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
        )
        child_conn.close()  # the child holds the only other end: its death reads as EOF here
        self.conn: Connection = parent_conn
        try:
            self.conn.send(specs)
        except OSError:  # died at once: the pool sees EOF on the pipe and counts a failed start
            pass
        self.ready = False
        # (task index in the batch, globally unique id so a stale reply is never mistaken for a fresh one)
        self.inflight: deque[tuple[int, int]] = deque()
        # start-up deadline until ready; then the deadline of the oldest in-flight task
        self.deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        self.exitcode: int | None = None
        self._stopped = False

    def send(self, task: int, task_id: int, payload: tuple, timeout_s: float) -> bool:
        """Queue a task on the worker; False if the pipe is broken (the worker is gone)."""
        try:
            self.conn.send((task_id, *payload))
        except OSError:
            return False
        if not self.inflight:  # it starts now; a queued task's clock starts when the one before it ends
            self.deadline = time.monotonic() + timeout_s
        self.inflight.append((task, task_id))
        return True

    def stop(self, graceful: bool) -> int | None:
        """End the process (politely if ``graceful``) and return its exit code; safe to call twice."""
        if self._stopped:
            return self.exitcode
        self._stopped = True
        if graceful:
            try:
                self.conn.send(None)
                self.proc.wait(timeout=2.0)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.exitcode = self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # unkillable (e.g. stuck in the kernel); leave it to the OS
            self.exitcode = None
        self.conn.close()
        return self.exitcode


class _WorkerPool:
    """Long-lived worker processes, each fed up to ``_PIPELINE_DEPTH`` tasks, with per-task deadlines.

    A worker answers its tasks in order, so the oldest unanswered one is the one running: that is the task
    blamed (and failed) when the deadline passes or the worker dies. The tasks queued behind it are not at
    fault and go back to the queue. Keeping a second task queued hides the round trip through the parent.
    """

    def __init__(self, num_workers: int, specs: list[tuple[str, dict[str, Any]]], timeout_s: float) -> None:
        self._specs = specs
        self._timeout_s = timeout_s
        self._startup_failures = 0
        self._next_id = 0
        self._workers = [_Worker(specs) for _ in range(num_workers)]

    def _replace(self, k: int, pending: deque[int] | None = None) -> int | None:
        """Stop worker ``k`` and start a fresh one; its unanswered tasks go back to ``pending``."""
        w = self._workers[k]
        code = w.stop(graceful=False)
        if pending is not None:
            pending.extendleft(reversed([task for task, _ in w.inflight]))
        self._workers[k] = _Worker(self._specs)
        return code

    def _startup_failed(self, k: int, why: str, pending: deque[int]) -> None:
        self._startup_failures += 1
        self._replace(k, pending)
        if self._startup_failures >= _MAX_STARTUP_FAILURES:
            raise RuntimeError(
                f"verifier worker process failed to start {self._startup_failures} times in a row ({why}); "
                "see its error output above"
            )

    def run(self, tasks: list[tuple[int, str, dict]]) -> list[Outcome]:
        """Run ``(spec_index, completion, example)`` tasks; the outcomes come back in task order."""
        results: list[Outcome | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        remaining = len(tasks)
        try:
            while remaining:
                remaining -= self._dispatch(pending, tasks, results)
                if remaining:
                    remaining -= self._collect(pending, results)
        except BaseException:
            for k, w in enumerate(self._workers):  # leave no worker busy with a task of an aborted batch
                if w.inflight:
                    self._replace(k)
            raise
        outcomes = [r for r in results if r is not None]
        if len(outcomes) != len(tasks):  # cannot happen: every task is answered exactly once
            raise RuntimeError("verifier pool lost a task")
        return outcomes

    def _dispatch(
        self, pending: deque[int], tasks: list[tuple[int, str, dict]], results: list[Outcome | None]
    ) -> int:
        """Hand queued tasks to ready workers; return how many tasks finished here (could not be sent)."""
        done = 0
        for k in range(len(self._workers)):
            while self._workers[k].ready and len(self._workers[k].inflight) < _PIPELINE_DEPTH and pending:
                task = pending[0]
                self._next_id += 1
                try:
                    sent = self._workers[k].send(task, self._next_id, tasks[task], self._timeout_s)
                except Exception as exc:  # pickling failed before anything was written: the task's fault
                    pending.popleft()
                    results[task] = (None, {}, _clip(f"task could not be sent to a worker: {exc}"))
                    done += 1
                    continue
                if sent:
                    pending.popleft()
                else:  # the worker died (while running its oldest task, if it had one)
                    done += self._on_death(k, pending, results)
        return done

    def _collect(self, pending: deque[int], results: list[Outcome | None]) -> int:
        """Wait for replies, deaths (EOF on the pipe) or deadlines; record finished tasks, return how many."""
        waiting = [w for w in self._workers if w.inflight or not w.ready]
        timeout = None
        if waiting:
            timeout = max(0.0, min(w.deadline for w in waiting) - time.monotonic())
        ready = set(wait([w.conn for w in self._workers], timeout))
        done = 0
        for k in range(len(self._workers)):
            w = self._workers[k]
            if w.conn not in ready:
                continue
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                done += self._on_death(k, pending, results)
                continue
            done += self._on_message(w, msg, results)
        now = time.monotonic()
        for k, w in enumerate(self._workers):
            if w.inflight and now >= w.deadline:
                task = w.inflight.popleft()[0]
                results[task] = (None, {}, f"timed out after {self._timeout_s:g}s (worker killed)")
                self._replace(k, pending)
                done += 1
            elif not w.ready and now >= w.deadline:
                self._startup_failed(k, f"not ready after {_STARTUP_TIMEOUT_S:g}s", pending)
        return done

    def _on_message(self, w: _Worker, msg: tuple, results: list[Outcome | None]) -> int:
        if msg[0] == "ready":
            w.ready = True
            self._startup_failures = 0
            return 0
        task_id, score, info, error = msg
        if not w.inflight or w.inflight[0][1] != task_id:
            return 0
        task = w.inflight.popleft()[0]
        results[task] = (score, info, error)
        if w.inflight:  # the next queued task starts now
            w.deadline = time.monotonic() + self._timeout_s
        return 1

    def _on_death(self, k: int, pending: deque[int], results: list[Outcome | None]) -> int:
        w = self._workers[k]
        if not w.ready:
            self._startup_failed(k, _describe_exit(w.stop(graceful=False)), pending)
            return 0
        running = w.inflight.popleft()[0] if w.inflight else None
        code = self._replace(k, pending)
        if running is None:
            return 0
        results[running] = (None, {}, f"verifier process died ({_describe_exit(code)})")
        return 1

    def close(self) -> None:
        for w in self._workers:
            w.stop(graceful=w.ready and not w.inflight)
        self._workers = []


# ----------------------------------------------------------------------------------------------------------
# Scorer
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ScoreBatch:
    """Scores of one batch.

    ``scores[i]`` is the weighted sum over rewards for sample ``i``; ``per_reward[name][i]`` is each
    reward's raw score (``failure_score`` where it failed, None where the reward's ``route`` excludes the
    row); ``infos[i][name]`` is the info dict that reward
    returned for sample ``i`` (``{"error": reason}`` on failure); ``failures`` counts failed verifier calls.
    """

    scores: list[float]
    per_reward: dict[str, list[float | None]]
    infos: list[dict[str, dict[str, Any]]]
    failures: int = 0

    def metrics(self) -> dict[str, float]:
        """``reward/<name>/mean`` for every reward (when the batch is not empty) and ``reward/failures``."""
        out = {}
        for name, values in self.per_reward.items():
            scored = [v for v in values if v is not None]
            if scored:
                out[f"reward/{name}/mean"] = sum(scored) / len(scored)
        out["reward/failures"] = float(self.failures)
        return out


class Scorer:
    """Scores completions with a weighted sum of verifiers (see the module docstring for the execution model).

    Specs are resolved when the scorer is built, so a bad spec fails fast with :class:`VerifierSpecError`.
    Rewards are reported under their short name (:func:`short_name`); a repeated name gets ``_2``, ``_3``...
    Use as a context manager, or call :meth:`close`, to stop the worker processes.
    """

    def __init__(
        self,
        specs: Sequence[RewardSpec],
        num_workers: int = 2,
        timeout_s: float = 10.0,
        failure_score: float = 0.0,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not specs:
            raise ValueError("Scorer needs at least one RewardSpec")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if not math.isfinite(failure_score):
            raise ValueError(f"failure_score must be finite, got {failure_score}")
        self.specs = list(specs)
        self.timeout_s = float(timeout_s)
        self.failure_score = float(failure_score)
        self.num_workers = num_workers
        canonical = [canonical_spec(s.name.strip(), base_dir) for s in self.specs]
        self._fns = [resolve_verifier(c) for c in canonical]
        self.names = _unique_names([s.name for s in self.specs])
        self._weights = [float(s.weight) for s in self.specs]
        self._kwargs = [dict(s.kwargs) for s in self.specs]
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._pool: _WorkerPool | None = None
        if num_workers > 0:
            self._pool = _WorkerPool(num_workers, list(zip(canonical, self._kwargs, strict=True)), timeout_s)

    def score(self, completions: Sequence[str], examples: Sequence[dict]) -> ScoreBatch:
        """Score ``completions[i]`` against ``examples[i]`` with every reward."""
        if len(completions) != len(examples):
            raise ValueError(f"got {len(completions)} completions but {len(examples)} examples")
        pairs = [
            (i, j)
            for i, ex in enumerate(examples)
            for j, spec in enumerate(self.specs)
            if spec.applies_to(ex)
        ]
        tasks = [(j, completions[i], examples[i]) for i, j in pairs]
        with self._lock:
            if self._pool is not None:
                outcomes = self._pool.run(tasks)
            elif self.num_workers == 0:
                outcomes = [call_verifier(self._fns[j], c, ex, self._kwargs[j]) for j, c, ex in tasks]
            else:
                raise RuntimeError("Scorer is closed")
        return self._assemble(len(completions), pairs, outcomes)

    def _assemble(self, n: int, pairs: list[tuple[int, int]], outcomes: list[Outcome]) -> ScoreBatch:
        per_reward: dict[str, list[float | None]] = {name: [None] * n for name in self.names}
        infos: list[dict[str, dict[str, Any]]] = [{} for _ in range(n)]
        scores = [0.0] * n
        failures = 0
        for (i, j), (score, info, error) in zip(pairs, outcomes, strict=True):
            name = self.names[j]
            if error is not None or score is None:
                failures += 1
                score, info = self.failure_score, {"error": error or "no score"}
                self._warn_once(name, info["error"])
            per_reward[name][i] = score
            infos[i][name] = dict(info)
            scores[i] += self._weights[j] * score
        return ScoreBatch(scores=scores, per_reward=per_reward, infos=infos, failures=failures)

    def _warn_once(self, name: str, reason: str) -> None:
        if name in self._warned:
            logger.debug("verifier %s failed: %s", name, reason)
            return
        self._warned.add(name)
        logger.warning("verifier %s failed (scored %g): %s", name, self.failure_score, reason)

    def close(self) -> None:
        """Stop the worker processes; the scorer cannot score afterwards (unless ``num_workers == 0``)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_pool", None) is not None:
                self.close()
        except Exception:  # interpreter shutdown; orphaned workers exit on their own (see _watch_parent)
            pass

"""The worker pool that runs verifiers in separate processes, each call under a deadline.

Each worker is a fresh interpreter (``sys.executable``, the parent's ``sys.path``) that imports only
:mod:`rlvr.scoring` and the verifiers: nothing is forked from the parent (which holds torch/vLLM threads)
and, unlike multiprocessing's spawn, the parent's ``__main__`` is not re-imported, so workers start in a
fraction of a second and an unguarded script works. The parent feeds each worker one call at a time through
its own pipe and gives every call a deadline. A call that raises, returns something that is not a finite
number, overruns the deadline, or kills its worker (e.g. ``os._exit`` or a segfault) becomes an error
outcome with the reason and its kind (:data:`~rlvr.scoring.api.FAILURE_KINDS`); a hung worker is killed
and a dead one replaced, so the rest of the batch and later batches are unaffected. Workers receive spec
strings, not function objects, and resolve them themselves (once), so functions loaded from a file work too.
A worker whose parent dies exits by itself.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from rlvr.scoring.api import Outcome, call_verifier, clip_reason
from rlvr.scoring.resolve import resolve_verifier

# Seconds a freshly spawned worker may take to import its verifiers and report ready.
_STARTUP_TIMEOUT_S = 120.0
# A worker that dies this many times in a row before becoming ready aborts the batch.
_MAX_STARTUP_FAILURES = 3
# Tasks sent ahead to a worker: one running, one queued, so it never waits for the parent between tasks.
_PIPELINE_DEPTH = 2

# A worker is a fresh interpreter that imports only rlvr.scoring and the verifiers: unlike multiprocessing's
# spawn, it does not re-import the parent's __main__ (which would pull in torch, or recurse into training).
_BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from rlvr.scoring.pool import _worker_entry; _worker_entry(int(sys.argv[2]), int(sys.argv[3]))"
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
    error, kind)``. ``None`` (or a closed pipe) ends the loop. Verifiers run in the worker's main thread, so
    libraries that use ``signal.alarm`` (math-verify) keep their own timeouts.
    """
    fns: list[Callable[..., Any] | str] = []
    for spec, _ in specs:
        try:
            fns.append(resolve_verifier(spec))
        except Exception as exc:  # reported for each task of this spec
            fns.append(clip_reason(f"could not resolve verifier in worker: {exc}"))
    try:
        conn.send(("ready",))
        while True:
            msg = conn.recv()
            if msg is None:
                return
            task_id, index, completion, example = msg
            fn = fns[index]
            if isinstance(fn, str):
                outcome: Outcome = (None, {}, fn, "exception")
            else:
                outcome = call_verifier(fn, completion, example, specs[index][1])
            try:
                conn.send((task_id, *outcome))
            except (OSError, EOFError):
                raise
            except Exception as exc:  # the info could not be pickled; the pipe is still clean
                reason = clip_reason(f"result could not be sent back: {exc}")
                conn.send((task_id, None, {}, reason, "bad_value"))
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


class WorkerPool:
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
                    reason = clip_reason(f"task could not be sent to a worker: {exc}")
                    results[task] = (None, {}, reason, "exception")
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
                results[task] = (None, {}, f"timed out after {self._timeout_s:g}s (worker killed)", "timeout")
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
        task_id, *outcome = msg
        if not w.inflight or w.inflight[0][1] != task_id:
            return 0
        task = w.inflight.popleft()[0]
        results[task] = tuple(outcome)  # type: ignore[assignment]
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
        results[running] = (None, {}, f"verifier process died ({_describe_exit(code)})", "exit")
        return 1

    def close(self) -> None:
        for w in self._workers:
            w.stop(graceful=w.ready and not w.inflight)
        self._workers = []

"""Run untrusted Python programs (model-written code) in a sandbox, one process tree per program.

Model-written code is hostile input. :func:`run_program` runs one program and returns an
:class:`ExecResult`; :func:`run_many` runs many in parallel. The full threat model, and what is *not*
contained, is in ``docs/sandbox.md``. In short, each program gets:

* its own process group, killed as a whole (SIGKILL) at the wall-clock deadline, when its output passes the
  cap, and after it exits (lingering children and daemons go too);
* rlimits on CPU time, address space, file size, processes/threads, open files, core dumps;
* a fresh private working directory, deleted afterwards, and a minimal environment (nothing inherited);
* with namespaces (mode ``"full"``, the normal case as root on Linux): new network, PID, mount, IPC and UTS
  namespaces (``unshare``): no network at all (not even the host's loopback); the program's process tree dies
  with the namespace's init; it sees only its own processes in ``/proc``; the whole file system is
  read-only, ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are small private tmpfs mounts, and ``/root``,
  ``/home``, ``/run``, the caller's working directory and ``hide_paths`` are hidden behind empty mounts
  (except the Python installation itself, which is bound back read-only);
* a fresh unprivileged uid per run (a random uid from a high range, no supplementary groups, no new
  privileges): ``RLIMIT_NPROC`` is per-uid and is *not* enforced for root, so this is what contains a fork
  bomb; it also means the program cannot signal the trainer or any other sandbox (EPERM).

The launcher chain is ``setpriv --pdeathsig KILL unshare ... python -c LAUNCHER``: the launcher
(:mod:`rlvr.scoring.sandbox.launcher`, its source passed to the interpreter), running as root inside the new
namespaces as their PID 1, sets up the mounts, forks the program (which drops to the sandbox uid, applies
the rlimits and ``exec``\\ s a fresh interpreter) and reaps it; when the program exits
the launcher reports its exit status and resource usage on a private pipe and exits, and the kernel kills
everything left in the PID namespace. If the caller dies, the chain dies with it (parent-death signals).

Modes are probed once per process (:func:`isolation`) and the first that works is used:

``"full"``    namespaces + uid drop (needs root, or CAP_SYS_ADMIN and CAP_SETUID);
``"userns"``  an unprivileged user namespace (``unshare -U -r``) with the same namespaces and mounts but no
             uid drop (a non-root caller in a container where user namespaces are allowed);
``"rlimits"`` no namespaces: rlimits, process-group kill, uid drop only if root and the interpreter is
             reachable by the sandbox uid. Network is *not* isolated and files outside the working
             directory are writable if the (possibly root) uid may write them.

Anything less than ``"full"`` is logged once as a warning saying what is missing. ``RLVR_SANDBOX_MODE``
forces a mode (for tests, or to skip the probe).

Besides stdin/stdout/stderr a program has file descriptor 3, a write-only pipe whose contents come back
as :attr:`ExecResult.channel` (capped like stdout). The ``code`` verifier uses it for test results tagged
with a per-run token, so that user output cannot be mistaken for them and an early ``sys.exit(0)`` cannot
fake a pass.

Modules: :mod:`~rlvr.scoring.sandbox.common` (defaults, result types), :mod:`~rlvr.scoring.sandbox.host`
(uids, mounts to plan, clean-up), :mod:`~rlvr.scoring.sandbox.process` (one run under a given mode),
:mod:`~rlvr.scoring.sandbox.probe` (which mode works here), :mod:`~rlvr.scoring.sandbox.launcher` (the
launcher). This module holds the two entry points.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rlvr.scoring.sandbox.common import (
    DEFAULT_DISK_MB,
    DEFAULT_HIDE_PATHS,
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_OPEN_FILES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    MODES,
    WORKDIR,
    ExecResult,
    Isolation,
)
from rlvr.scoring.sandbox.host import default_python
from rlvr.scoring.sandbox.probe import isolation
from rlvr.scoring.sandbox.process import _run

__all__ = [
    "DEFAULT_DISK_MB",
    "DEFAULT_HIDE_PATHS",
    "DEFAULT_MAX_FILE_MB",
    "DEFAULT_MAX_OPEN_FILES",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_MAX_PROCESSES",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_S",
    "MODES",
    "WORKDIR",
    "ExecResult",
    "Isolation",
    "default_python",
    "isolation",
    "run_many",
    "run_program",
]


def run_program(
    source: str,
    *,
    stdin: str | bytes = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    cpu_s: float | None = None,
    memory_mb: int = DEFAULT_MEMORY_MB,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    max_processes: int = DEFAULT_MAX_PROCESSES,
    max_open_files: int = DEFAULT_MAX_OPEN_FILES,
    max_file_mb: int = DEFAULT_MAX_FILE_MB,
    disk_mb: int = DEFAULT_DISK_MB,
    network: bool = False,
    site_packages: bool = False,
    hide_paths: Sequence[str] = (),
    python: str | None = None,
) -> ExecResult:
    """Run the Python program ``source`` in the sandbox and return what happened. Never raises for
    anything the program does (bad arguments raise ``ValueError``).

    ``stdin``: the program's standard input. ``timeout_s``: wall-clock limit for the whole process tree.
    ``cpu_s``: CPU-time limit per process (default ``timeout_s`` rounded up, +1). ``memory_mb``: address
    space per process. ``max_output_bytes``: cap on each of stdout, stderr and fd 3 (passing it kills the
    program). ``max_processes``: processes + threads (RLIMIT_NPROC of the sandbox uid). ``max_open_files``:
    RLIMIT_NOFILE. ``max_file_mb``: RLIMIT_FSIZE. ``disk_mb``: size of each private tmpfs. ``network``:
    leave the network namespace out (trusted code only). ``site_packages``: let the program import the
    installed packages (off: standard library only, faster start). ``hide_paths``: more directories to hide.
    ``python``: the interpreter (default: this one).
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    for name, value in (("memory_mb", memory_mb), ("max_processes", max_processes), ("disk_mb", disk_mb)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if max_open_files < 8:
        raise ValueError(f"max_open_files must be >= 8, got {max_open_files}")
    iso = isolation()
    return _run(
        source,
        mode=iso.mode,
        uid_drop=iso.uid_drop,
        stdin=stdin,
        timeout_s=timeout_s,
        cpu_s=cpu_s,
        memory_mb=memory_mb,
        max_output_bytes=max_output_bytes,
        max_processes=max_processes,
        max_open_files=max_open_files,
        max_file_mb=max_file_mb,
        disk_mb=disk_mb,
        network=network,
        site_packages=site_packages,
        hide_paths=tuple(hide_paths),
        python=python,
    )


def run_many(
    jobs: Iterable[str | Mapping[str, Any]], workers: int | None = None, **defaults: Any
) -> list[ExecResult]:
    """Run many programs in parallel and return their results in order.

    Each job is a source string or a mapping of :func:`run_program` arguments (``{"source": ..., "stdin":
    ...}``); ``defaults`` apply to every job unless it sets them. ``workers`` threads (default: the number of
    CPUs) each wait on one sandboxed process at a time; the work happens in the processes, so threads suffice.
    """
    specs = [{"source": job} if isinstance(job, str) else dict(job) for job in jobs]
    if not specs:
        return []
    isolation()  # probe once, before the threads race to do it
    workers = max(1, min(workers or os.cpu_count() or 1, len(specs)))

    def one(spec: dict[str, Any]) -> ExecResult:
        kwargs = {**defaults, **spec}
        return run_program(kwargs.pop("source"), **kwargs)

    if workers == 1:
        return [one(spec) for spec in specs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, specs))

"""Running one program under a given sandbox mode: the launcher chain, its pipes, limits and clean-up.

:func:`_run` is the whole mechanism; :func:`rlvr.scoring.sandbox.run_program` calls it with the mode that
:func:`rlvr.scoring.sandbox.isolation` found, and the probe calls it with each candidate mode.
"""

from __future__ import annotations

import logging
import marshal
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from rlvr.scoring.sandbox.common import (
    DEFAULT_DISK_MB,
    DEFAULT_MAX_FILE_MB,
    DEFAULT_MAX_OPEN_FILES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_PROCESSES,
    DEFAULT_MEMORY_MB,
    DEFAULT_TIMEOUT_S,
    WORKDIR,
    ExecResult,
)
from rlvr.scoring.sandbox.host import (
    _children,
    _env,
    _kill,
    _kill_group,
    _kill_uid,
    _pick_uid,
    _plan_mounts,
    _rlimits_uid_drop,
    _which,
    default_python,
)

logger = logging.getLogger(__name__)

_REMOUNT_FALLBACK = False  # tests: make the file system read-only mount by mount, as on kernels < 5.12
_GRACE_S = 0.5  # after the launcher has exited, how long to keep draining output held open by leftovers
# The launcher's source, run with `python -S -s -B -c` (launcher.py is read here, never imported).
_LAUNCHER = (Path(__file__).parent / "launcher.py").read_text(encoding="utf-8")


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")


def _run(
    source: str,
    *,
    mode: str,
    uid_drop: bool | None,
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
    hide_paths: tuple[str, ...] = (),
    python: str | None = None,
    probe: bool = False,
) -> ExecResult:
    start = time.monotonic()
    python = python or default_python(site_packages)
    namespaces = mode in ("full", "userns")
    if uid_drop is None:  # probing
        uid_drop = mode == "full" or (mode == "rlimits" and _rlimits_uid_drop())
    uid = _pick_uid() if uid_drop else None
    hide, expose = _plan_mounts(python, site_packages, hide_paths) if namespaces else ([], [])
    if isinstance(stdin, str):
        stdin = stdin.encode("utf-8", "replace")  # lone surrogates cannot be encoded otherwise
    source_bytes = source.encode("utf-8", "replace") if isinstance(source, str) else bytes(source)

    hostdir = tempfile.mkdtemp(prefix="rlvr-sandbox-")
    fds: list[int] = []
    proc: subprocess.Popen | None = None
    try:
        for name, data in (("main.py", source_bytes), ("stdin", stdin)):
            fd = os.open(os.path.join(hostdir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data) if len(data) < (1 << 20) else _write_all(fd, data)
            finally:
                os.close(fd)
        workdir = WORKDIR if namespaces else hostdir
        status_r, status_w = os.pipe()
        channel_r, channel_w = os.pipe()
        fds += [status_r, status_w, channel_r, channel_w]
        cpu = int(cpu_s if cpu_s is not None else timeout_s + 0.999) or 1
        argv = [python, "-S", "-s", "-B", "main.py"] if not site_packages else [python, "-s", "-B", "main.py"]
        config = {
            "status_fd": status_w,
            "channel_fd": channel_w,
            "hostdir": hostdir,
            "workdir": workdir,
            "namespaces": namespaces,
            "uid": uid,
            "python": python,
            "argv": argv,
            "env": _env(workdir),
            "cpu_s": cpu,
            "memory": int(memory_mb) << 20,
            "fsize": int(max_file_mb) << 20,
            "nofile": int(max_open_files),
            "nproc": None if uid is None and mode != "userns" and os.geteuid() == 0 else int(max_processes),
            "nproc_relative": not namespaces and uid is None and os.geteuid() != 0,
            "disk_mb": int(disk_mb),
            "hide": hide,
            "expose": expose,
            "remount_fallback": _REMOUNT_FALLBACK,
        }
        cmd = [python, "-S", "-s", "-B", "-c", _LAUNCHER, marshal.dumps(config).hex()]
        if namespaces:
            flags = ["--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc", "--uts"]
            if not network:
                flags.append("--net")
            if mode == "userns":
                flags = ["--user", "--map-root-user", *flags]
            cmd = [_which("unshare") or "unshare", *flags, "--", *cmd]
        setpriv = _which("setpriv")
        if setpriv:  # if this thread (the caller) dies, the whole chain dies
            cmd = [setpriv, "--pdeathsig", "KILL", "--", *cmd]
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=hostdir,
                env=_env(hostdir),
                pass_fds=(status_w, channel_w),
                start_new_session=True,
            )
        except OSError as exc:
            return ExecResult("sandbox_error", None, error=f"could not start: {exc}", mode=mode, uid=uid)
        os.close(status_w)
        os.close(channel_w)
        fds.remove(status_w)
        fds.remove(channel_w)
        result = _collect(proc, status_r, channel_r, start + timeout_s, max_output_bytes)
        _terminate(proc, namespaces, uid, finished=result.status not in ("timeout", "output_limit"))
        result.mode, result.uid = mode, uid
        if result.status == "timeout" and result.signal is None:
            result.signal = "wall-clock"
        elif result.signal == "SIGXCPU" or (
            result.signal == "SIGKILL" and result.cpu_s is not None and result.cpu_s >= cpu - 0.05
        ):
            result.status = "timeout"
        result.wall_s = time.monotonic() - start
        return result
    finally:
        if proc is not None:
            if proc.returncode is None:  # an exception above: kill without ceremony
                _terminate(proc, namespaces, uid, finished=False)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(hostdir, ignore_errors=True)


def _terminate(proc: subprocess.Popen, namespaces: bool, uid: int | None, finished: bool) -> None:
    """Make sure every process of the run is gone before returning (also after a normal exit).

    With a PID namespace: kill its init (the launcher) if it is still running; the kernel then kills every
    process in the namespace, and ``unshare`` exits only once its child, the init, has been reaped, which
    happens after the namespace is empty, so waiting for ``unshare`` waits for all of them. Without one:
    kill the process group, and every process of the run's uid.
    """
    if namespaces and proc.returncode is None:
        if not finished:
            for pid in _children(proc.pid):
                _kill(pid)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            logger.warning("sandbox: unshare %d still running 5 s after its init was killed", proc.pid)
    _kill_group(proc.pid)
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        logger.error("sandbox launcher %d did not exit after SIGKILL", proc.pid)
    if not namespaces and uid is not None and not finished:
        _kill_uid(uid)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _collect(proc: subprocess.Popen, status_r: int, channel_r: int, deadline: float, cap: int) -> ExecResult:
    """Read stdout, stderr, fd 3 and the launcher's status until all close or a limit is hit."""
    assert proc.stdout is not None and proc.stderr is not None
    names = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"}
    names.update({status_r: "status", channel_r: "channel"})
    buffers = {name: bytearray() for name in names.values()}
    sel = selectors.DefaultSelector()
    for fd in names:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    status: str | None = None
    truncated = False
    launcher_done_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            limit = deadline if launcher_done_at is None else min(deadline, launcher_done_at + _GRACE_S)
            if now >= limit:
                if launcher_done_at is None:
                    status = "timeout"
                break
            for key, _ in sel.select(limit - now):
                fd = key.fd
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                name = names[fd]
                if not data:
                    sel.unregister(fd)
                    if name == "status":
                        launcher_done_at = time.monotonic()
                    continue
                buf = buffers[name]
                room = (cap if name != "status" else 4096) - len(buf)
                buf += data[: max(room, 0)]
                if len(data) > room and name != "status":
                    truncated = True
                    status = "output_limit"
            if status == "output_limit":
                break
    finally:
        sel.close()

    stdout, stderr = _decode(buffers["stdout"]), _decode(buffers["stderr"])
    channel = _decode(buffers["channel"])
    report = _decode(buffers["status"]).strip().splitlines()
    result = ExecResult(status or "ok", None, stdout, stderr, channel, truncated)
    if status is not None:
        return result
    if not report:
        result.status, result.error = "sandbox_error", "the launcher reported nothing"
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
        if proc.returncode is not None and proc.returncode < 0:
            result.error += f" (it was killed by signal {-proc.returncode})"
        result.error += f"; stderr: {stderr.strip()[-300:]!r}"
        return result
    first = report[0]
    if first.startswith("sandbox_error"):
        result.status, result.error = "sandbox_error", first[len("sandbox_error ") :]
        return result
    kind, value, cpu, rss = first.split()
    result.cpu_s, result.max_rss_mb = float(cpu), int(rss) / 1024
    if kind == "exit":
        result.returncode = int(value)
        result.status = "ok" if result.returncode == 0 else "error"
    else:
        result.returncode = -int(value)
        try:
            result.signal = signal.Signals(int(value)).name
        except ValueError:
            result.signal = f"signal {value}"
        result.status = "killed"
    return result

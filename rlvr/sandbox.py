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

The launcher chain is ``setpriv --pdeathsig KILL unshare ... python -c LAUNCHER``: the launcher, running
as root inside the new namespaces as their PID 1, sets up the mounts, forks the program (which drops to the
sandbox uid, applies the rlimits and ``exec``\\ s a fresh interpreter) and reaps it; when the program exits
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
"""

from __future__ import annotations

import functools
import logging
import marshal
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 1024
"""Address-space limit (RLIMIT_AS). A bare Python interpreter needs ~30 MB of address space."""
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
"""Cap on each of stdout, stderr and the result channel; a program writing more is killed."""
DEFAULT_MAX_PROCESSES = 32
"""RLIMIT_NPROC for the sandbox uid: processes *and threads* of one program (the interpreter is one)."""
DEFAULT_MAX_OPEN_FILES = 64
DEFAULT_MAX_FILE_MB = 16
"""RLIMIT_FSIZE: the largest file a program may write."""
DEFAULT_DISK_MB = 64
"""Size of each private tmpfs (``/tmp`` with the working directory, ``/var/tmp``, ``/dev/shm``)."""
DEFAULT_HIDE_PATHS = ("/root", "/home", "/run", "/mnt", "/media", "/srv")
"""Hidden behind empty read-only mounts (besides the caller's working directory) in the namespace modes."""
WORKDIR = "/tmp/sandbox"
"""The program's working directory (and ``HOME``) in the namespace modes."""
MODES = ("full", "userns", "rlimits")

_UID_SPAN = 1 << 24
_REMOUNT_FALLBACK = False  # tests: make the file system read-only mount by mount, as on kernels < 5.12
_GRACE_S = 0.5  # after the launcher has exited, how long to keep draining output held open by leftovers
_NEVER_HIDE = {"/", "/usr", "/bin", "/lib", "/lib64", "/etc", "/proc", "/dev", "/sys", "/tmp", "/var"}


@dataclass
class ExecResult:
    """What happened to one program.

    ``status`` is one of

    * ``"ok"``: exited with code 0;
    * ``"error"``: exited with a non-zero code (an uncaught exception exits with 1, ``MemoryError`` included);
    * ``"timeout"``: killed at the wall-clock deadline, or by the CPU-time limit (``signal`` says which);
    * ``"killed"``: died from another signal (e.g. SIGSEGV from a stack overflow);
    * ``"output_limit"``: killed for writing more than ``max_output_bytes`` to stdout, stderr or fd 3;
    * ``"sandbox_error"``: the sandbox itself failed (``error`` says why); the program may not have run.
    """

    status: str
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    channel: str = ""
    truncated: bool = False
    wall_s: float = 0.0
    cpu_s: float | None = None
    max_rss_mb: float | None = None
    signal: str | None = None
    error: str | None = None
    mode: str = ""
    uid: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Isolation:
    """Which protections the sandbox has on this machine (see :func:`isolation`)."""

    mode: str
    uid_drop: bool
    namespaces: bool
    missing: tuple[str, ...] = ()
    hidden: tuple[str, ...] = field(default=(), compare=False)

    @property
    def network_isolated(self) -> bool:
        return self.namespaces

    @property
    def nproc_enforced(self) -> bool:
        """Whether RLIMIT_NPROC holds (a fork bomb is contained): the kernel ignores it for uid 0."""
        return self.uid_drop or os.geteuid() != 0


# ----------------------------------------------------------------------------------------------------------
# The launcher: trusted code that runs as the namespaces' PID 1, sets up mounts and starts the program
# ----------------------------------------------------------------------------------------------------------

# Runs with `python -S -s -B -c`, so it only imports built-in / stdlib modules (ctypes: ~4 ms).
_LAUNCHER = r"""
import os, sys, marshal, resource, signal
c = marshal.loads(bytes.fromhex(sys.argv[1]))
STATUS, CHANNEL = 200, 201  # out of the way of fds 0-3, which the program gets
os.dup2(c["status_fd"], STATUS, inheritable=False); os.dup2(c["channel_fd"], CHANNEL, inheritable=False)
os.close(c["status_fd"]); os.close(c["channel_fd"])

def report(msg):
    try:
        os.write(STATUS, (msg + "\n").encode("utf-8", "replace"))
    except OSError:
        pass

def bail(where, exc):
    report("sandbox_error %s: %s: %s" % (where, type(exc).__name__, exc))
    os._exit(1)

try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    def _check(ret, what):
        if ret != 0:
            e = ctypes.get_errno()
            raise OSError(e, "%s: %s" % (what, os.strerror(e)))

    def prctl(option, arg):
        _check(libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                          ctypes.c_ulong(0)), "prctl")

    def mount(src, target, fstype, flags, data=None):
        _check(libc.mount(src.encode(), target.encode(), fstype.encode() if fstype else None,
                          ctypes.c_ulong(flags), data.encode() if data else None), "mount " + target)

    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC = 1, 2, 4, 32, 4096, 8192, 16384

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    def read_only(path):
        if not c["remount_fallback"]:
            # mount_setattr(AT_FDCWD, path, AT_RECURSIVE, {RDONLY | NOSUID}) (Linux >= 5.12, x86-64 number)
            attr = MountAttr(1 | 2, 0, 0, 0)
            ret = libc.syscall(ctypes.c_long(442), ctypes.c_int(-100), path.encode(), ctypes.c_uint(0x8000),
                               ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
            if ret == 0:
                return
            if ctypes.get_errno() not in (38, 22):  # ENOSYS / EINVAL: an older kernel
                _check(ret, "mount_setattr " + path)
        # fallback: remount every mount point under `path` read-only, keeping its locked flags
        flagmap = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": 8, "noatime": 1024,
                   "nodiratime": 2048, "relatime": 1 << 21}
        prefix = path.rstrip("/") + "/"
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                point = parts[4].replace("\\040", " ")
                if point != path and not point.startswith(prefix):
                    continue
                flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
                for opt in parts[5].split(","):
                    flags |= flagmap.get(opt, 0)
                try:
                    mount("none", point, None, flags)
                except OSError:
                    if point == path:
                        raise

    def tmpfs(target, mode, size_mb, uid=0):
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV,
              "size=%dm,nr_inodes=%d,mode=%o,uid=%d,gid=%d" % (size_mb, 4096 + 256 * size_mb, mode, uid, uid))

    src_path = os.path.join(c["hostdir"], "main.py")
    with open(src_path, "rb") as f:
        source = f.read()
    stdin_fd = os.open(os.path.join(c["hostdir"], "stdin"), os.O_RDONLY)
    os.unlink(os.path.join(c["hostdir"], "stdin"))  # the program reads it through fd 0 only
    workdir = c["hostdir"]
    uid = c["uid"]

    if c["namespaces"]:
        os.unlink(src_path)  # read: the host directory is not needed any more (even if the caller dies now)
        os.rmdir(c["hostdir"])
        # Order matters: everything read-only first (new mounts on top stay writable), then the private
        # /tmp (it also holds the staging binds), then the hidden directories with the Python installation
        # bound back into them, then the other scratch mounts.
        read_only("/")
        tmpfs("/tmp", 0o1777, c["disk_mb"])
        staged = []
        for k, path in enumerate(c["expose"]):
            stage = "/tmp/.expose%d" % k
            os.mkdir(stage)
            mount(path, stage, None, MS_BIND | MS_REC)
            staged.append((stage, path))
        for path in c["hide"]:
            tmpfs(path, 0o755, 1)
            for stage, exposed in staged:
                if exposed.startswith(path.rstrip("/") + "/"):
                    os.makedirs(exposed, 0o755, exist_ok=True)
                    mount(stage, exposed, None, MS_MOVE)
                    read_only(exposed)
            read_only(path)
        for stage, _ in staged:
            try:
                os.rmdir(stage)
            except OSError:
                pass
        for path in ("/var/tmp", "/dev/shm"):
            if os.path.isdir(path):
                tmpfs(path, 0o1777, c["disk_mb"])
        workdir = c["workdir"]
        os.mkdir(workdir, 0o700)
        if uid is not None:
            os.chown(workdir, uid, uid)
    else:
        os.chmod(src_path, 0o644)
        if uid is not None:
            os.chown(workdir, uid, uid)
    main_py = os.path.join(workdir, "main.py")
    if c["namespaces"]:
        with open(main_py, "wb") as f:
            f.write(source)
        os.chmod(main_py, 0o644)

    nproc = c["nproc"]
    if nproc is not None and c["nproc_relative"]:  # no namespace, no uid drop: NPROC counts all our tasks
        me, n = os.getuid(), 0
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and os.stat("/proc/" + pid).st_uid == me:
                    n += len(os.listdir("/proc/%s/task" % pid))
            except OSError:
                pass
        nproc += n
except BaseException as exc:
    bail("setup", exc)

child = os.fork()
if child == 0:
    try:
        os.dup2(stdin_fd, 0)
        os.dup2(CHANNEL, 3)
        os.closerange(4, STATUS)  # STATUS stays open (close-on-exec) to report a failure to start
        os.closerange(STATUS + 1, 1 << 16)
        os.chdir(workdir)
        for res, value, hard in (
            (resource.RLIMIT_CPU, c["cpu_s"], c["cpu_s"] + 1),
            (resource.RLIMIT_AS, c["memory"], c["memory"]),
            (resource.RLIMIT_FSIZE, c["fsize"], c["fsize"]),
            (resource.RLIMIT_NOFILE, c["nofile"], c["nofile"]),
            (resource.RLIMIT_CORE, 0, 0),
            (resource.RLIMIT_MEMLOCK, 0, 0),
            (resource.RLIMIT_MSGQUEUE, 0, 0),
        ):
            resource.setrlimit(res, (value, hard))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        elif os.geteuid() == 0:  # no uid drop (user namespace, or no namespaces): drop every capability
            prctl(28, 0xCF)  # PR_SET_SECUREBITS: NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE (+ locks)
            last = int(open("/proc/sys/kernel/cap_last_cap").read())
            for cap in range(last + 1):
                prctl(24, cap)  # PR_CAPBSET_DROP: exec then starts the program with no capabilities
        prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: setuid binaries do not elevate
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (cleared by the uid change): die with the launcher
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.execve(c["python"], c["argv"], c["env"])
    except BaseException as exc:
        try:
            report("sandbox_error start: %s: %s" % (type(exc).__name__, exc))
        finally:
            os._exit(127)

os.close(stdin_fd)
os.close(CHANNEL)
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    try:
        pid, st, ru = os.wait4(-1, 0)  # as PID 1 this also reaps orphaned grandchildren
    except ChildProcessError:
        bail("wait", ChildProcessError("program vanished"))
    if pid == child:
        break
cpu = ru.ru_utime + ru.ru_stime
if os.WIFSIGNALED(st):
    report("signal %d %.4f %d" % (os.WTERMSIG(st), cpu, ru.ru_maxrss))
else:
    report("exit %d %.4f %d" % (os.WEXITSTATUS(st), cpu, ru.ru_maxrss))
if not c["namespaces"] and uid is not None:
    # No PID namespace: kill whatever the program left behind. The uid is unique to this run, and
    # kill(-1) sent as that uid reaches exactly its processes (never the caller's).
    helper = os.fork()
    if helper == 0:
        try:
            os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid); os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        os._exit(0)
    os.waitpid(helper, 0)
os._exit(0)
"""


# ----------------------------------------------------------------------------------------------------------
# Probing what this machine allows
# ----------------------------------------------------------------------------------------------------------

_ISOLATION: Isolation | None = None
_ISOLATION_LOCK = threading.Lock()


def _uid_range() -> tuple[int, int]:
    """A range of uids, mapped in this user namespace and (almost surely) used by no one, for sandboxes."""
    try:
        with open("/proc/self/uid_map") as f:
            ranges = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    except OSError:
        ranges = [(0, 0, 1 << 32)]
    best = (65534, 65535)
    for inside, _, count in ranges:
        lo, hi = max(inside, 1 << 30), min(inside + count - 2, (1 << 30) + _UID_SPAN)
        if hi - lo > best[1] - best[0]:
            best = (lo, hi)
    if best == (65534, 65535):
        for inside, _, count in ranges:  # small map (e.g. 0-65535 in a container): its upper half
            lo, hi = max(inside + count // 2, 1000), inside + count - 2
            if hi - lo > best[1] - best[0]:
                best = (lo, hi)
    return best


def _pick_uid() -> int:
    lo, hi = _uid_range()
    return lo + secrets.randbelow(max(hi - lo, 1))


def _reachable_by_others(path: str) -> bool:
    """Whether every directory on the way to ``path`` lets "others" through (``o+x``)."""
    parts = os.path.realpath(path).split("/")
    for k in range(2, len(parts) + 1):
        try:
            st = os.stat("/".join(parts[:k]) or "/")
        except OSError:
            return False
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IXOTH:
            return False
    return True


def default_python(site_packages: bool = False) -> str:
    """The interpreter programs run with: this one, through its real path when its site-packages are not
    wanted. A virtualenv's ``bin/python`` is a link into a base installation; the venv itself may live
    anywhere, e.g. under ``/tmp``, which the sandbox replaces by an empty tmpfs, so only the base
    installation is mounted in."""
    return sys.executable if site_packages else os.path.realpath(sys.executable)


def _python_paths(python: str, site_packages: bool) -> list[str]:
    """Directories the program's interpreter needs to see (its installation, the venv if any)."""
    paths = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    real = os.path.realpath(python)
    paths.add(os.path.dirname(os.path.dirname(real)))  # .../bin/python -> ...
    if os.path.realpath(python) != os.path.abspath(python) or site_packages:
        paths.add(os.path.realpath(sys.prefix))  # a venv: pyvenv.cfg and (if used) its site-packages
        paths.add(os.path.dirname(os.path.dirname(os.path.abspath(python))))
    return sorted(paths)


def _plan_mounts(python: str, site_packages: bool, extra_hide: Sequence[str]) -> tuple[list[str], list[str]]:
    hide, expose = _plan_mounts_cached(python, site_packages, tuple(extra_hide), os.getcwd())
    return list(hide), list(expose)


@functools.lru_cache(maxsize=64)
def _plan_mounts_cached(
    python: str, site_packages: bool, extra_hide: tuple[str, ...], cwd: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(hide, expose): directories hidden behind empty mounts, and the paths bound back inside them.

    Besides the defaults and ``extra_hide``, any directory that "others" cannot pass through but that leads
    to the interpreter (e.g. ``/root`` when Python is under ``/root/.pyenv``) is hidden and the interpreter
    bound back, so that the unprivileged sandbox uid can run it without seeing anything else there.
    """
    needed = _python_paths(python, site_packages)
    hide = [*DEFAULT_HIDE_PATHS, *extra_hide]
    if cwd not in _NEVER_HIDE:
        hide.append(cwd)  # the trainer's project: data with answers, checkpoints, configs
    for path in needed:
        parts = path.split("/")
        for k in range(2, len(parts)):
            prefix = "/".join(parts[:k])
            try:
                if not os.stat(prefix).st_mode & stat.S_IXOTH:
                    hide.append(prefix)
                    break
            except OSError:
                break
    real = []
    for path in hide:
        path = os.path.realpath(path)
        if path in _NEVER_HIDE or not os.path.isdir(path) or os.path.islink(path):
            continue
        if path == "/tmp" or path.startswith("/tmp/") or path.startswith(tempfile.gettempdir() + "/"):
            continue  # /tmp is replaced anyway
        real.append(path)
    real = sorted(set(real))
    hide = [p for p in real if not any(p != q and p.startswith(q + "/") for q in real)]  # outermost only
    # expose the needed paths that fall under a hidden one; nested needs collapse into their ancestor
    under = sorted({p for p in needed if any(p.startswith(h + "/") for h in hide)})
    expose = [p for p in under if not any(p != q and p.startswith(q + "/") for q in under)]
    for path in needed:
        if any(path == h or h.startswith(path + "/") for h in hide):
            hide = [h for h in hide if not (path == h or h.startswith(path + "/"))]  # never Python itself
    return tuple(hide), tuple(expose)


def _env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        "TMPDIR": "/tmp",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
    }


def _which(name: str) -> str | None:
    return shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin")


def _mode_available(mode: str) -> tuple[bool, str]:
    """Whether ``mode`` works here: a trivial program has to run under it and see the expected isolation."""
    check = (
        "import os, socket\n"
        "s = socket.socket()\n"
        "try:\n    s.connect(('127.0.0.1', 9)); net = 'open'\n"
        "except OSError as e:\n    net = 'refused' if e.errno == 111 else 'isolated'\n"
        "print(os.getuid(), os.getpid(), net)\n"
    )
    result = _run(check, mode=mode, uid_drop=None, timeout_s=20.0, probe=True)
    if result.status != "ok":
        return False, (result.error or result.stderr.strip()[-300:] or result.status)
    try:
        uid, pid, net = result.stdout.split()
    except ValueError:
        return False, f"unexpected output {result.stdout[:200]!r}"
    if mode != "rlimits" and (net != "isolated" or pid != "2"):
        return False, f"namespaces not effective (network {net}, pid {pid})"
    if mode == "full" and int(uid) == 0:
        return False, "uid was not dropped"
    return True, ""


def isolation(refresh: bool = False) -> Isolation:
    """Probe (once per process) which sandbox mode works here, log what it lacks, and return it."""
    global _ISOLATION
    with _ISOLATION_LOCK:
        if _ISOLATION is not None and not refresh:
            return _ISOLATION
        forced = os.environ.get("RLVR_SANDBOX_MODE", "").strip().lower()
        if forced and forced not in MODES:
            raise ValueError(f"RLVR_SANDBOX_MODE={forced!r}; expected one of {', '.join(MODES)}")
        candidates = [forced] if forced else list(MODES)
        if not forced and os.geteuid() != 0:
            candidates.remove("full")
        if not _which("unshare"):
            candidates = [m for m in candidates if m == "rlimits"] or ["rlimits"]
        why: dict[str, str] = {}
        chosen = "rlimits"
        for mode in candidates:
            if mode == "rlimits" and forced != "rlimits":
                break
            ok, reason = _mode_available(mode)
            if ok:
                chosen = mode
                break
            why[mode] = reason
        _ISOLATION = _describe(chosen, why)
        level = logging.INFO if chosen == "full" else logging.WARNING
        logger.log(
            level,
            "code sandbox: mode %r%s%s",
            chosen,
            f"; NOT contained: {'; '.join(_ISOLATION.missing)}" if _ISOLATION.missing else "",
            f" ({'; '.join(f'{m} unavailable: {r}' for m, r in why.items())})" if why else "",
        )
        return _ISOLATION


def _rlimits_uid_drop() -> bool:
    """In mode "rlimits" as root: can an unprivileged uid run the interpreter (is it reachable)?"""
    python = default_python()
    return os.geteuid() == 0 and all(_reachable_by_others(p) for p in _python_paths(python, False))


def _describe(mode: str, why: Mapping[str, str]) -> Isolation:
    root = os.geteuid() == 0
    missing: list[str] = []
    if mode == "full":
        uid_drop, namespaces = True, True
    elif mode == "userns":
        uid_drop, namespaces = False, True
        missing.append("no uid drop: the program runs as the caller's uid (read access to its files)")
        if root:
            missing.append("root in a user namespace owned by root is still root for host files")
    else:
        uid_drop, namespaces = _rlimits_uid_drop(), False
        missing += [
            "no network isolation",
            "no private /tmp or read-only file system (writes allowed wherever the uid may write)",
            "no PID namespace (leftover processes are killed by process group"
            + (" and by uid)" if uid_drop else " only; setsid() escapes)"),
        ]
        if not uid_drop:
            missing.append("no uid drop" + (": runs as root, fork bombs NOT contained" if root else ""))
    hidden = tuple(_plan_mounts(default_python(), False, ())[0]) if namespaces else ()
    return Isolation(mode, uid_drop, namespaces, tuple(missing), hidden)


# ----------------------------------------------------------------------------------------------------------
# Running one program
# ----------------------------------------------------------------------------------------------------------


def _decode(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a uid unique to one run): ``kill(-1)`` sent *as* that uid."""
    setpriv, kill = _which("setpriv"), _which("kill")
    if not (setpriv and kill):
        return
    cmd = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", kill, "-KILL", "-1"]
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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


# ----------------------------------------------------------------------------------------------------------
# Many programs in parallel
# ----------------------------------------------------------------------------------------------------------


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

"""Host-side helpers of the sandbox: sandbox uids, the interpreter and the mounts a run needs, its
environment, and killing what a run leaves behind."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from rlvr.scoring.sandbox.common import DEFAULT_HIDE_PATHS

_UID_SPAN = 1 << 24
_NEVER_HIDE = {"/", "/usr", "/bin", "/lib", "/lib64", "/etc", "/proc", "/dev", "/sys", "/tmp", "/var"}


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


def _rlimits_uid_drop() -> bool:
    """In mode "rlimits" as root: can an unprivileged uid run the interpreter (is it reachable)?"""
    python = default_python()
    return os.geteuid() == 0 and all(_reachable_by_others(p) for p in _python_paths(python, False))


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


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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

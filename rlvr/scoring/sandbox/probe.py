"""Probing, once per process, which sandbox mode works on this machine (see :func:`isolation`)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from rlvr.scoring.sandbox.common import MODES, Isolation
from rlvr.scoring.sandbox.host import _plan_mounts, _rlimits_uid_drop, _which, default_python
from rlvr.scoring.sandbox.process import _run

logger = logging.getLogger(__name__)

_ISOLATION: Isolation | None = None
_ISOLATION_LOCK = threading.Lock()


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

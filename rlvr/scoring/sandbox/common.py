"""What the parts of the sandbox share: its defaults, its modes, and the two result types."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

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

"""The sandbox launcher: trusted code that runs as the namespaces' PID 1, sets up mounts, starts the program.

Not imported by the sandbox: :mod:`rlvr.scoring.sandbox.process` reads this file and runs its source with
``python -S -s -B -c SOURCE CONFIG`` (inside ``unshare`` in the namespace modes), so it imports only
built-in / standard-library modules (ctypes: ~4 ms; not even ``typing``, which would add ~13 ms to
every run). ``CONFIG`` is a hex-encoded ``marshal`` dict built by
:func:`rlvr.scoring.sandbox.process._run` (the ``config`` dict there lists its keys).

What it does, in order:

1. moves the status pipe (its report to the caller) and the program's result channel (fd 3) out of the way;
2. set-up (any failure is reported as ``sandbox_error setup: ...``): reads the program from the host-side
   directory and opens its stdin; in the namespace modes removes that directory, makes the whole file
   system read-only, mounts the private ``/tmp``, hides directories behind empty mounts (binding the Python
   installation back in), mounts ``/var/tmp`` and ``/dev/shm``, and writes the program into the working
   directory;
3. forks the program: rlimits, the uid drop (or, without one, every capability dropped), no new
   privileges, death with the launcher, then ``exec`` of a fresh interpreter;
4. reaps every process (as PID 1 also orphaned grandchildren) until the program exits, and reports
   ``exit CODE CPU_S MAX_RSS_KB`` or ``signal SIGNUM CPU_S MAX_RSS_KB`` on the status pipe. Without a PID
   namespace but with a uid of its own, it then kills whatever that uid left behind.
"""

import marshal
import os
import resource
import signal
import sys

STATUS, CHANNEL = 200, 201  # out of the way of fds 0-3, which the program gets
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC = 1, 2, 4, 32, 4096, 8192, 16384


def report(msg: str) -> None:
    try:
        os.write(STATUS, (msg + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def bail(where: str, exc: BaseException) -> None:
    report(f"sandbox_error {where}: {type(exc).__name__}: {exc}")
    os._exit(1)


class Kernel:
    """The system calls the standard library lacks (prctl, mount, mount_setattr), through ctypes."""

    def __init__(self, remount_fallback: bool) -> None:
        import ctypes

        class MountAttr(ctypes.Structure):
            _fields_ = [
                ("attr_set", ctypes.c_uint64),
                ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64),
            ]

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.mount_attr = MountAttr
        self.remount_fallback = remount_fallback

    def _check(self, ret: int, what: str) -> None:
        if ret != 0:
            e = self.ctypes.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")

    def prctl(self, option: int, arg: int) -> None:
        c_ulong = self.ctypes.c_ulong
        self._check(self.libc.prctl(option, c_ulong(arg), c_ulong(0), c_ulong(0), c_ulong(0)), "prctl")

    def mount(self, src: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        ret = self.libc.mount(
            src.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            self.ctypes.c_ulong(flags),
            data.encode() if data else None,
        )
        self._check(ret, "mount " + target)

    def read_only(self, path: str) -> None:
        ctypes = self.ctypes
        if not self.remount_fallback:
            # mount_setattr(AT_FDCWD, path, AT_RECURSIVE, {RDONLY | NOSUID}) (Linux >= 5.12, x86-64 number)
            attr = self.mount_attr(1 | 2, 0, 0, 0)
            ret = self.libc.syscall(
                ctypes.c_long(442),
                ctypes.c_int(-100),
                path.encode(),
                ctypes.c_uint(0x8000),
                ctypes.byref(attr),
                ctypes.c_size_t(ctypes.sizeof(attr)),
            )
            if ret == 0:
                return
            if ctypes.get_errno() not in (38, 22):  # ENOSYS / EINVAL: an older kernel
                self._check(ret, "mount_setattr " + path)
        # fallback: remount every mount point under `path` read-only, keeping its locked flags
        flagmap = {
            "nosuid": MS_NOSUID,
            "nodev": MS_NODEV,
            "noexec": 8,
            "noatime": 1024,
            "nodiratime": 2048,
            "relatime": 1 << 21,
        }
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
                    self.mount("none", point, None, flags)
                except OSError:
                    if point == path:
                        raise

    def tmpfs(self, target: str, mode: int, size_mb: int, uid: int = 0) -> None:
        options = f"size={size_mb}m,nr_inodes={4096 + 256 * size_mb},mode={mode:o},uid={uid},gid={uid}"
        self.mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)


def isolate_file_system(c: dict, kernel: Kernel) -> None:
    """Namespace modes: read-only everything, private scratch mounts, hidden directories."""
    # Order matters: everything read-only first (new mounts on top stay writable), then the private
    # /tmp (it also holds the staging binds), then the hidden directories with the Python installation
    # bound back into them, then the other scratch mounts.
    kernel.read_only("/")
    kernel.tmpfs("/tmp", 0o1777, c["disk_mb"])
    staged = []
    for k, path in enumerate(c["expose"]):
        stage = f"/tmp/.expose{k}"
        os.mkdir(stage)
        kernel.mount(path, stage, None, MS_BIND | MS_REC)
        staged.append((stage, path))
    for path in c["hide"]:
        kernel.tmpfs(path, 0o755, 1)
        for stage, exposed in staged:
            if exposed.startswith(path.rstrip("/") + "/"):
                os.makedirs(exposed, 0o755, exist_ok=True)
                kernel.mount(stage, exposed, None, MS_MOVE)
                kernel.read_only(exposed)
        kernel.read_only(path)
    for stage, _ in staged:
        try:
            os.rmdir(stage)
        except OSError:
            pass
    for path in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(path):
            kernel.tmpfs(path, 0o1777, c["disk_mb"])


def prepare(c: dict, kernel: Kernel) -> tuple[int, str, int | None]:
    """Everything before the fork; returns ``(stdin_fd, workdir, nproc)``."""
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
        isolate_file_system(c, kernel)
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
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
        nproc += n
    return stdin_fd, workdir, nproc


def start_program(c: dict, kernel: Kernel, stdin_fd: int, workdir: str, nproc: int | None) -> None:
    """In the forked child: limits, identity, then ``exec`` of the program's interpreter. Never returns."""
    uid = c["uid"]
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
            # PR_SET_SECUREBITS: NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE (+ locks)
            kernel.prctl(28, 0xCF)
            with open("/proc/sys/kernel/cap_last_cap") as f:
                last = int(f.read())
            for cap in range(last + 1):
                kernel.prctl(24, cap)  # PR_CAPBSET_DROP: exec then starts the program with no capabilities
        kernel.prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: setuid binaries do not elevate
        kernel.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (cleared by the uid change): die with the launcher
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.execve(c["python"], c["argv"], c["env"])
    except BaseException as exc:
        try:
            report(f"sandbox_error start: {type(exc).__name__}: {exc}")
        finally:
            os._exit(127)


def supervise(c: dict, child: int) -> None:
    """Reap processes until the program exits, report how it ended, and exit."""
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
        report(f"signal {os.WTERMSIG(st)} {cpu:.4f} {ru.ru_maxrss}")
    else:
        report(f"exit {os.WEXITSTATUS(st)} {cpu:.4f} {ru.ru_maxrss}")
    uid = c["uid"]
    if not c["namespaces"] and uid is not None:
        # No PID namespace: kill whatever the program left behind. The uid is unique to this run, and
        # kill(-1) sent as that uid reaches exactly its processes (never the caller's).
        helper = os.fork()
        if helper == 0:
            try:
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            os._exit(0)
        os.waitpid(helper, 0)
    os._exit(0)


def main() -> None:
    c = marshal.loads(bytes.fromhex(sys.argv[1]))
    os.dup2(c["status_fd"], STATUS, inheritable=False)
    os.dup2(c["channel_fd"], CHANNEL, inheritable=False)
    os.close(c["status_fd"])
    os.close(c["channel_fd"])
    try:
        kernel = Kernel(c["remount_fallback"])
        stdin_fd, workdir, nproc = prepare(c, kernel)
    except BaseException as exc:
        bail("setup", exc)
    child = os.fork()
    if child == 0:
        start_program(c, kernel, stdin_fd, workdir, nproc)
    os.close(stdin_fd)
    os.close(CHANNEL)
    supervise(c, child)


if __name__ == "__main__":
    main()

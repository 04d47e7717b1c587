"""The code sandbox (rlvr.scoring.sandbox) against hostile programs: every attack is contained, the host and
this test process are unaffected, and the next program still runs.

Most tests need the machine's best mode ("full": namespaces + a dropped uid, i.e. root with ``unshare``);
they are skipped, saying why, where the sandbox only has a weaker mode. Time limits are short (1-2 s) so the
whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from rlvr.scoring import sandbox
from rlvr.scoring.sandbox import ExecResult, host, process, run_many, run_program

REPO_ROOT = Path(__file__).resolve().parents[3]
ISO = sandbox.isolation()
full_only = pytest.mark.skipif(ISO.mode != "full", reason=f"sandbox mode here is {ISO.mode!r}, not 'full'")
needs_ns = pytest.mark.skipif(not ISO.namespaces, reason=f"sandbox mode here is {ISO.mode!r} (no namespaces)")


def run(source: str, **kwargs) -> ExecResult:
    return run_program(textwrap.dedent(source), **kwargs)


def processes_of(uid: int | None) -> list[int]:
    if uid is None:
        return []
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                found.append(int(pid))
        except OSError:
            pass
    return found


def sleepers(marker: str) -> list[int]:
    """Processes running exactly `sleep <marker>`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:2] == [b"sleep", marker.encode()]:
                    found.append(int(pid))
        except OSError:
            pass
    return found


def sandbox_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("rlvr-sandbox-")}


def assert_still_works() -> None:
    """The sandbox (and this process) keep working after an attack."""
    result = run_program("print(sum(range(10)))")
    assert result.status == "ok" and result.stdout == "45\n", result


# ----------------------------------------------------------------------------------------------------------
# Normal programs
# ----------------------------------------------------------------------------------------------------------


def test_isolation_mode_here():
    assert ISO.mode in sandbox.MODES
    if os.geteuid() == 0 and shutil.which("unshare"):
        assert ISO.mode == "full", ISO  # FACTS.md: unshare and rlimits work on these machines as root
        assert ISO.uid_drop and ISO.namespaces and ISO.nproc_enforced and not ISO.missing


def test_stdout_stdin_exit_codes_and_channel():
    result = run(
        """
        import os, sys
        data = sys.stdin.read()
        print(data.upper(), end="")
        print("warn", file=sys.stderr)
        os.write(3, b"side channel")
        """,
        stdin="hello\nworld\n",
    )
    assert result.status == "ok" and result.returncode == 0
    assert result.stdout == "HELLO\nWORLD\n" and result.stderr == "warn\n"
    assert result.channel == "side channel"
    assert result.cpu_s is not None and result.max_rss_mb and result.wall_s < 5

    failed = run("import sys\nprint('partial')\nsys.exit(3)")
    assert failed.status == "error" and failed.returncode == 3 and failed.stdout == "partial\n"
    crashed = run("def f():\n    raise ValueError('boom')\nf()")
    assert crashed.status == "error" and crashed.returncode == 1 and "ValueError: boom" in crashed.stderr
    syntax = run("def broken(:\n")
    assert syntax.status == "error" and "SyntaxError" in syntax.stderr


def test_standard_library_works_and_large_stdin():
    result = run(
        """
        import sys, json, math, re, hashlib, collections, itertools, functools, heapq, bisect, fractions
        import decimal, random, string, datetime, typing, dataclasses, threading, subprocess
        data = sys.stdin.buffer.read()
        print(len(data), hashlib.sha256(data).hexdigest()[:8], math.comb(10, 3))
        """,
        stdin=b"x" * (3 << 20),
    )
    assert result.status == "ok", result
    assert result.stdout.split()[0] == str(3 << 20) and result.stdout.split()[2] == "120"


def test_minimal_environment_no_inherited_secrets(monkeypatch):
    monkeypatch.setenv("RLVR_TEST_SECRET", "hunter2")
    result = run(
        f"""
        import os
        print(sorted(os.environ))
        print("hunter2" in repr(dict(os.environ)))
        try:
            print(open("/proc/{os.getpid()}/environ", "rb").read()[:50])
        except OSError as e:
            print("parent environ:", type(e).__name__)
        """
    )
    assert result.status == "ok", result
    keys, leaked, parent = result.stdout.splitlines()
    assert set(eval(keys)) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONHASHSEED"} | {
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONIOENCODING",
    }
    assert leaked == "False" and "hunter2" not in result.stdout
    if ISO.namespaces:
        assert parent.startswith("parent environ:")  # not even visible: own PID namespace and /proc


# ----------------------------------------------------------------------------------------------------------
# Attacks
# ----------------------------------------------------------------------------------------------------------


def test_infinite_loop_is_killed_at_the_deadline():
    start = time.monotonic()
    result = run("while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout" and result.signal == "wall-clock"
    assert time.monotonic() - start < 3.0
    assert_still_works()


def test_cpu_time_limit():
    result = run("while True:\n    pass\n", timeout_s=10.0, cpu_s=1)
    assert result.status == "timeout" and result.signal in ("SIGXCPU", "SIGKILL"), result
    assert result.wall_s < 5.0


def test_ignoring_sigterm_does_not_help():
    start = time.monotonic()
    result = run(
        """
        import signal, time
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        while True:
            time.sleep(0.01)
        """,
        timeout_s=1.0,
    )
    assert result.status == "timeout"
    assert time.monotonic() - start < 3.0


@pytest.mark.skipif(not ISO.nproc_enforced, reason="RLIMIT_NPROC not enforced here (root, no uid drop)")
def test_fork_bomb_is_contained():
    before = len([p for p in os.listdir("/proc") if p.isdigit()])
    start = time.monotonic()
    result = run(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        timeout_s=1.5,
        cpu_s=1,
        max_processes=16,
    )
    assert result.status in ("timeout", "killed"), result
    assert time.monotonic() - start < 5.0
    assert processes_of(result.uid) == []
    after = len([p for p in os.listdir("/proc") if p.isdigit()])
    assert after < before + 8  # nothing left behind (other work on the machine may add a few)
    assert_still_works()


def test_process_limit_counts_processes_and_threads():
    result = run(
        """
        import os, threading, time
        made = 0
        try:
            for _ in range(100):
                threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
                made += 1
        except RuntimeError:
            pass
        print(made, flush=True)
        os._exit(0)
        """,
        max_processes=8,
    )
    assert result.status == "ok", result
    if ISO.nproc_enforced:
        assert int(result.stdout) < 8


def test_memory_bomb_hits_the_address_space_limit():
    for source in (
        "x = bytearray(8 << 30)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))",
        "s = 'x'\nwhile True:\n    s = s + s",
    ):
        result = run(source, memory_mb=256, timeout_s=5.0)
        assert result.status == "error" and "MemoryError" in result.stderr, (source, result)
        assert result.max_rss_mb is not None and result.max_rss_mb < 300
    assert_still_works()


def test_disk_filling_writes_are_capped():
    dirs_before = sandbox_dirs()
    one_file = run(
        """
        chunk = b"x" * (1 << 20)
        written = 0
        try:
            with open("big.bin", "wb") as f:
                while True:
                    f.write(chunk)
                    f.flush()
                    written += 1
        except OSError as e:
            print(written, e.errno)
        """,
        max_file_mb=4,
        timeout_s=5.0,
    )
    assert one_file.status == "ok", one_file
    written, errno = one_file.stdout.split()
    assert int(written) <= 4 and int(errno) == 27  # EFBIG: RLIMIT_FSIZE

    many_files = run(
        """
        import os
        chunk = b"x" * (1 << 20)
        total = 0
        try:
            for i in range(10_000):
                with open(f"f{i}.bin", "wb") as f:
                    for _ in range(2):
                        f.write(chunk)
                        total += 1
        except OSError as e:
            print(total, e.errno)
        """,
        max_file_mb=4,
        disk_mb=16,
        timeout_s=5.0,
    )
    assert many_files.status == "ok", many_files
    total, errno = many_files.stdout.split()
    if ISO.namespaces:
        assert int(total) <= 17 and int(errno) == 28  # ENOSPC: the private tmpfs is full
    assert sandbox_dirs() == dirs_before  # the run's directories are gone


def test_huge_stdout_is_capped_and_the_program_killed():
    start = time.monotonic()
    result = run("while True:\n    print('x' * 10_000)\n", max_output_bytes=100_000, timeout_s=10.0)
    assert result.status == "output_limit" and result.truncated
    assert len(result.stdout) <= 100_000
    assert time.monotonic() - start < 3.0
    channel = run("import os\nwhile True:\n    os.write(3, b'y' * 65536)\n", max_output_bytes=50_000)
    assert channel.status == "output_limit" and len(channel.channel) <= 50_000


@needs_ns
def test_no_network():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        result = run(
            f"""
            import socket
            for host in ("127.0.0.1", "8.8.8.8"):
                try:
                    socket.create_connection((host, {port}), timeout=1)
                    print("connected", host)
                except OSError as e:
                    print("blocked", host, e.errno)
            try:
                socket.getaddrinfo("pypi.org", 443)
                print("resolved")
            except OSError:
                print("no dns")
            """,
            timeout_s=5.0,
        )
    finally:
        listener.close()
    assert result.status == "ok", result
    assert "connected" not in result.stdout and "resolved" not in result.stdout
    assert result.stdout.count("blocked") == 2


@full_only
def test_writing_outside_the_working_directory():
    open_dir = REPO_ROOT / "tests" / f".sandbox-probe-{uuid.uuid4().hex[:8]}"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # world-writable on the host: only the read-only mount protects it
    targets = [open_dir / "escaped", REPO_ROOT / "ESCAPED", Path("/etc/rlvr-escaped"), Path("/root/escaped")]
    try:
        result = run(
            f"""
            import os
            for path in {[str(t) for t in targets]!r}:
                try:
                    with open(path, "w") as f:
                        f.write("pwned")
                    print("wrote", path)
                except OSError as e:
                    print("refused", path, e.errno)
            with open("inside.txt", "w") as f:  # the working directory is writable
                f.write("fine")
            with open("/tmp/scratch.txt", "w") as f:  # so is the private /tmp
                f.write("fine")
            print(os.getcwd(), os.listdir("."))
            """
        )
        assert result.status == "ok", result
        assert "wrote" not in result.stdout and result.stdout.count("refused") == len(targets)
        assert not any(t.exists() for t in targets)
        assert not Path("/tmp/scratch.txt").exists() or Path("/tmp/scratch.txt").read_text() != "fine"
        assert sandbox.WORKDIR in result.stdout
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)
        for target in targets[1:]:
            if target.exists() and target.read_text() == "pwned":
                target.unlink()


@full_only
def test_read_only_root_without_mount_setattr(monkeypatch):
    """Kernels older than 5.12 have no mount_setattr: the launcher remounts mount by mount instead."""
    monkeypatch.setattr(process, "_REMOUNT_FALLBACK", True)
    result = run(
        """
        import os
        for path in ("/etc/rlvr-escaped", "/usr/rlvr-escaped", "/dev/rlvr-escaped", "/tmp/ok"):
            try:
                open(path, "w").close()
                print("wrote", path)
            except OSError as e:
                print("refused", path, e.errno)
        open("/dev/null", "w").write("fine")
        """
    )
    assert result.status == "ok", result
    assert result.stdout.splitlines()[:3] == [
        "refused /etc/rlvr-escaped 30",
        "refused /usr/rlvr-escaped 30",
        "refused /dev/rlvr-escaped 30",
    ]
    assert result.stdout.splitlines()[3] == "wrote /tmp/ok"


@full_only
def test_program_runs_unprivileged():
    result = run(
        """
        import json, os
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        print(json.dumps({
            "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), os.getpid(), os.getppid()],
            "cap_eff": int(status["CapEff"], 16),
            "no_new_privs": status["NoNewPrivs"].strip(),
        }))
        """
    )
    assert result.status == "ok", result
    state = json.loads(result.stdout)
    uid = result.uid
    assert uid is not None and uid >= 65534
    assert state["ids"] == [uid, uid, uid, [], 2, 1]  # PID 2 in its namespace, under the launcher (PID 1)
    assert state["cap_eff"] == 0 and state["no_new_privs"] == "1"


@full_only
def test_hidden_directories_and_private_tmp():
    marker = Path(tempfile.gettempdir()) / f"rlvr-visible-{uuid.uuid4().hex[:8]}"
    marker.write_text("host")
    try:
        result = run(
            f"""
            import json, os
            print(json.dumps([
                os.path.exists({str(marker)!r}),
                os.listdir("/root"),
                os.listdir("/run"),
                os.path.exists({str(REPO_ROOT / "pyproject.toml")!r}),
            ]))
            """
        )
    finally:
        marker.unlink()
    assert result.status == "ok", result
    host_tmp, root, run_dir, project = json.loads(result.stdout)
    assert host_tmp is False  # the host's /tmp is not visible
    assert run_dir == [] and project is False  # hidden: /run and the caller's working directory (the project)
    python_home = Path(sys.base_prefix).resolve()
    if str(python_home).startswith("/root/"):
        assert root == [python_home.parts[2]]  # /root shows the way to the interpreter, nothing else
    else:
        assert root == []


@full_only
def test_cannot_kill_the_parent_the_caller_or_other_sandboxes():
    me = os.getpid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        result = run(
            f"""
            import os, signal
            for pid in (os.getppid(), 1, {me}, {sleeper.pid}):
                try:
                    os.kill(pid, signal.SIGKILL)
                    print("killed", pid)
                except OSError as e:
                    print("refused", pid, e.errno)
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError as e:
                print("refused -1", e.errno)
            try:
                os.killpg(0, signal.SIGKILL)
            except OSError as e:
                print("refused pg", e.errno)
            """
        )
        assert sleeper.poll() is None  # a host process of another uid: untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "killed" not in result.stdout, result.stdout
    assert result.status in ("ok", "killed")  # killpg(0) may kill the program itself, nothing else
    assert_still_works()


def test_lingering_children_threads_and_daemons_are_killed():
    marker = f"{time.time_ns() % 10**9}.125"
    start = time.monotonic()
    result = run(
        f"""
        import os, subprocess, threading, time
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
        if os.fork() == 0:  # a classic double-fork daemon
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", "{marker}"])
            os._exit(0)
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        time.sleep(0.2)
        print("main done")
        """,
        timeout_s=5.0,
    )
    assert result.status == "ok" and result.stdout == "main done\n", result
    assert time.monotonic() - start < 3.0
    deadline = time.monotonic() + 1.0
    while sleepers(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(marker) == []
    assert processes_of(result.uid) == []


def test_a_non_daemon_thread_that_never_ends_times_out():
    result = run(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()",
        timeout_s=1.0,
    )
    assert result.status == "timeout"


def test_sys_exit_and_os_exit_are_just_exit_codes():
    assert run("import sys\nsys.exit(0)").status == "ok"
    assert run("import os\nos._exit(7)").returncode == 7
    killed = run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert killed.status == "killed" and killed.signal == "SIGKILL"
    segv = run("import ctypes\nctypes.string_at(0)")
    assert segv.status == "killed" and segv.signal == "SIGSEGV"


@needs_ns
def test_the_sandbox_dies_with_its_caller():
    """If the process running the sandbox is killed, the program does not survive it."""
    dirs_before = sandbox_dirs()
    seconds = time.time_ns() % 10**9
    marker = f"{seconds}.375"  # built inside the sandbox, so no other command line contains it
    caller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from rlvr.scoring.sandbox import run_program\n"
            f"run_program(\"import subprocess; subprocess.run(['sleep', str({seconds}) + '.375'])\", "
            "timeout_s=60)",
        ],
        cwd=REPO_ROOT,
    )
    deadline = time.monotonic() + 20
    while not sleepers(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(marker), "the sandboxed program never started"
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    deadline = time.monotonic() + 3
    while sleepers(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleepers(marker) == []
    assert sandbox_dirs() <= dirs_before  # the launcher removed the host-side directory early


# ----------------------------------------------------------------------------------------------------------
# Many programs at once
# ----------------------------------------------------------------------------------------------------------


def test_run_many_keeps_order_and_runs_in_parallel():
    results = run_many([{"source": f"print({i} * {i})"} for i in range(12)], workers=4)
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(12)]
    start = time.monotonic()
    sleepers = run_many(["import time\ntime.sleep(0.5)"] * 8, workers=8, timeout_s=5)
    assert all(r.ok for r in sleepers)
    assert time.monotonic() - start < 3.0  # 8 x 0.5 s of sleeping, overlapped


def test_attacks_in_a_batch_do_not_disturb_the_others():
    attacks = [
        "while True:\n    pass",
        "x = bytearray(8 << 30)",
        "while True:\n    print('y' * 10000)",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(os.getpid(), signal.SIGKILL)",
        "import os\nos._exit(0)",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        break",
    ]
    good = [f"print({i} + 1)" for i in range(6)]
    jobs = [job for pair in zip(attacks, good, strict=True) for job in pair]
    results = run_many(jobs, workers=4, timeout_s=1.5, cpu_s=1, memory_mb=256, max_output_bytes=50_000)
    for i, result in enumerate(results[1::2]):
        assert result.status == "ok" and result.stdout == f"{i + 1}\n", result
    assert results[0].status == "timeout" and results[4].status == "output_limit"


# ----------------------------------------------------------------------------------------------------------
# Degraded modes and helpers
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["userns", "rlimits"])
def test_weaker_modes_still_run_programs(mode):
    if mode == "userns" and not shutil.which("unshare"):
        pytest.skip("no unshare")
    source = textwrap.dedent(
        """
        import ctypes, sys
        print(sys.stdin.read()[::-1])
        status = open("/proc/self/status").read()
        print([line.split()[1] for line in status.splitlines() if line.startswith("CapEff")][0])
        libc = ctypes.CDLL(None, use_errno=True)
        print(libc.mount(b"none", b"/", None, 32 | 4096, None), ctypes.get_errno())  # remount,bind: rw
        """
    )
    result = process._run(source, mode=mode, uid_drop=None, stdin="abc")
    assert result.status == "ok", result
    reversed_input, capabilities, remount = result.stdout.splitlines()
    assert reversed_input == "cba" and int(capabilities, 16) == 0  # no capabilities, even as (userns) root
    assert remount.split()[0] == "-1" and remount.split()[1] == "1"  # EPERM
    timeout = process._run("while True:\n    pass", mode=mode, uid_drop=None, timeout_s=1)
    assert timeout.status == "timeout"


SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


@pytest.mark.skipif(
    os.geteuid() != 0 or not SYSTEM_PYTHON or not host._reachable_by_others(str(REPO_ROOT / "rlvr")),
    reason="needs root (to become an unprivileged user) and a system python3 that user can run",
)
def test_as_an_unprivileged_caller():
    """A non-root trainer (e.g. in a container): user-namespace mode, then the bare rlimits mode, both with
    the warning; the network is still cut in the first and process counts stay bounded in both."""
    script = textwrap.dedent(
        f"""
        import json, logging, os, sys
        sys.path.insert(0, {str(REPO_ROOT)!r})
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        from rlvr.scoring import sandbox
        bomb = "import os\\nn = 0\\nfor i in range(200):\\n    try:\\n        if os.fork() == 0:\\n"
        bomb += "            import time; time.sleep(3); os._exit(0)\\n        n += 1\\n"
        bomb += "    except OSError:\\n        break\\nprint(n)\\n"
        probe = "import os, socket\\ntry:\\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\\n"
        probe += "except OSError as e:\\n    print(os.getuid(), e.errno)\\n"
        out = {{}}
        for mode in ("auto", "rlimits"):
            if mode != "auto":
                os.environ["RLVR_SANDBOX_MODE"] = mode
            iso = sandbox.isolation(refresh=True)
            net = sandbox.run_program(probe, timeout_s=5)
            forks = sandbox.run_program(bomb, max_processes=16, timeout_s=5)
            out[mode] = [iso.mode, net.stdout.split(), forks.stdout.strip()]
        print(json.dumps(out))
        """
    )
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    proc = subprocess.run(
        [*as_nobody, "env", "-i", "PATH=/usr/bin:/bin", "HOME=/tmp", SYSTEM_PYTHON, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/tmp",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["auto"][0] == "userns" and out["rlimits"][0] == "rlimits"
    assert out["auto"][1] == ["0", "101"]  # root of its user namespace (the caller outside); ENETUNREACH
    assert out["rlimits"][1][0] == "65534"  # (the network is reachable in this mode: it says so)
    assert 0 < int(out["auto"][2]) < 16 and 0 < int(out["rlimits"][2]) < 16
    assert "mode 'userns'; NOT contained" in proc.stderr and "mode 'rlimits'; NOT contained" in proc.stderr


def test_degraded_mode_is_announced_once(monkeypatch, caplog):
    monkeypatch.setenv("RLVR_SANDBOX_MODE", "rlimits")
    try:
        with caplog.at_level(logging.WARNING, logger="rlvr.scoring.sandbox"):
            iso = sandbox.isolation(refresh=True)
            sandbox.isolation()
            assert run_program("print(1)").stdout == "1\n"
        assert iso.mode == "rlimits" and "no network isolation" in iso.missing
        warnings = [r for r in caplog.records if "NOT contained" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        monkeypatch.delenv("RLVR_SANDBOX_MODE")
        assert sandbox.isolation(refresh=True).mode == ISO.mode


@full_only
def test_kill_uid_reaches_exactly_that_uid():
    uid = host._pick_uid()
    as_uid = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    victim = subprocess.Popen([*as_uid, "sleep", "30"])
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.2)
        host._kill_uid(uid)
        assert victim.wait(timeout=5) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        victim.kill()
        bystander.kill()
        victim.wait()
        bystander.wait()


def test_bad_arguments():
    with pytest.raises(ValueError):
        run_program("print(1)", timeout_s=0)
    with pytest.raises(ValueError):
        run_program("print(1)", memory_mb=0)
    assert run_many([]) == []
    missing = run_program("print(1)", python="/nonexistent/python3")
    assert missing.status == "sandbox_error" and "/nonexistent/python3" in (missing.error or "")


@full_only
def test_hide_paths():
    result = run(
        "import os\nprint(os.listdir('/usr/share/doc'), os.listdir('/usr/share') != [])",
        hide_paths=["/usr/share/doc"],
    )
    assert result.status == "ok" and result.stdout == "[] True\n", result

"""The trainer's side of ``rollout.mode: server``: rollout servers used as one engine.

:class:`ServerPool` has the rollout-engine interface (``generate``, ``update_weights``, ``close``), so the
training step does not know whether its engine is colocated or remote. Every training process holds a
pool over the same servers:

- ``generate`` splits the process's prompts into one contiguous chunk per server and sends the chunks
  at once, seeds offset so that prompt j keeps seed + j (vLLM seeds each request, so its samples do not
  depend on the split; the ``hf`` engine seeds each batch from one generator, so its samples do);
- ``update_weights`` runs on every process (under ZeRO-3 the layer gathers are collective); only the
  main process broadcasts, over the weight group it opened with the servers
  (:mod:`rlvr.rollout.broadcast`). Every process then counts a new weight version and asks for it with
  its next prompts, so no server samples for step t+1 with step t's weights.

A server that is unreachable, answers with an error, or exits is a :class:`RolloutServerError` naming
it (and, for a server the trainer started, its exit code and log); a request that takes longer than the
timeout is one too. Nothing waits forever.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from rlvr.rollout.base import LAUNCHER_VARIABLES, Completion, EngineOptions, SamplingConfig
from rlvr.rollout.broadcast import DEFAULT_BUCKET_BYTES, GroupInfo, open_group, send_weights

logger = logging.getLogger("rlvr")


class RolloutServerError(RuntimeError):
    """A rollout server failed, stopped answering or exited."""


@dataclass
class StartedServer:
    """A server this trainer started (and stops)."""

    process: subprocess.Popen
    log: Path


def in_thread(fn, *args) -> Future:
    """``fn(*args)`` in a daemon thread: a request still waiting on a dead server must not hold up the
    trainer's exit (a thread pool's workers are joined at exit)."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def _alongside(requests: list[Future], action, what: str):
    """Run ``action`` (this side of a collective) while ``requests`` (the servers' sides) are in flight,
    and return its result once all have finished. The first failure ends the wait: a server that answers
    with an error, or dies, is raised at once (the action, blocked in a collective that server will
    never join, is left to its daemon thread), and an action that fails because a server died raises
    that server's error."""
    device = torch.cuda.current_device() if torch.cuda.is_initialized() else None

    def run():
        if device is not None:  # the CUDA device is per thread
            torch.cuda.set_device(device)
        return action()

    done = in_thread(run)
    pending = {done, *requests}
    while pending:
        _, pending = wait(pending, return_when=FIRST_EXCEPTION)
        failed = [f for f in requests if f.done() and f.exception() is not None]
        if failed:
            raise failed[0].exception()
        if done.done() and done.exception() is not None:
            wait(requests, timeout=5, return_when=FIRST_EXCEPTION)
            failure = next((f.exception() for f in requests if f.done() and f.exception()), None)
            raise failure or RolloutServerError(f"{what} failed: {done.exception()}") from None
    return done.result()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_gpus(visible: list[str], trainer_gpus: int, servers: int, tensor_parallel_size: int) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` of each server the trainer starts on its machine: the GPUs after the
    ``trainer_gpus`` its processes use, ``tensor_parallel_size`` each (two processes on one GPU cannot
    share a NCCL group, so a server never shares the trainer's)."""
    need = trainer_gpus + servers * tensor_parallel_size
    if len(visible) < need:
        raise ValueError(
            f"{servers} rollout server(s) x rollout.tensor_parallel_size {tensor_parallel_size} need "
            f"{servers * tensor_parallel_size} GPU(s) beside the trainer's {trainer_gpus}, but this machine "
            f"shows {len(visible)}; lower rollout.num_servers or the trainer's --num_processes, or start "
            "the servers yourself (`rlvr rollout-server`) and list them in rollout.servers"
        )
    first = [trainer_gpus + i * tensor_parallel_size for i in range(servers)]
    return [",".join(visible[j : j + tensor_parallel_size]) for j in first]


def start_servers(
    count: int,
    engine: str,
    model_path: str,
    options: EngineOptions,
    log_dir: Path,
    gpus: list[str] | None = None,
) -> tuple[list[str], list[StartedServer]]:
    """Start ``count`` servers on this machine (``python -m rlvr.rollout.server``), each logging to
    ``log_dir/rollout-server-<i>.log`` and on ``gpus[i]`` (its ``CUDA_VISIBLE_DEVICES``) when given;
    returns their URLs and processes (not yet ready). Each stops when this process exits."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}  # not a trainer rank
    urls, started = [], []
    for i in range(count):
        port = free_port()
        log = log_dir / f"rollout-server-{i}.log"
        command = [
            sys.executable, "-m", "rlvr.rollout.server",
            "--engine", engine, "--model", model_path, "--options", json.dumps(asdict(options)),
            "--host", "127.0.0.1", "--port", str(port), "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        server_env = env if gpus is None else {**env, "CUDA_VISIBLE_DEVICES": gpus[i]}
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=server_env)
        urls.append(f"http://127.0.0.1:{port}")
        started.append(StartedServer(process, log))
    return urls, started


class ServerPool:
    """Rollout servers behind the rollout-engine interface (see the module docstring)."""

    def __init__(
        self,
        urls: list[str],
        *,
        sender: bool,
        weight_dtype: torch.dtype | None,
        device: str = "cpu",
        timeout_s: float = 900.0,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        started: list[StartedServer] | None = None,
        peers: int = 1,
    ) -> None:
        """``peers``: the training processes that ask the servers at each step (each sends its share),
        which a server waits for briefly to run their requests as one batch."""
        if not urls:
            raise ValueError("a server pool needs at least one server URL")
        self.urls = [url.rstrip("/") for url in urls]
        self.sender = sender
        self.weight_dtype = weight_dtype
        self.device = device
        self.timeout_s = timeout_s
        self.bucket_bytes = bucket_bytes
        self.started = started or []
        self.peers = peers
        self.version = 0
        self.group = None
        self.receivers: list[int] = []
        self.last_sync_s = 0.0
        self.last_sync_bytes = 0

    # ---- requests ---------------------------------------------------------------------------------
    def _describe(self, i: int, problem: str, reap: bool = False) -> str:
        """``problem`` with the server's name, and for a server this trainer started its exit code if it
        has exited (``reap``: give one that just closed its connections by dying a second to be reaped)."""
        text = f"rollout server {i} at {self.urls[i]}: {problem}"
        if i < len(self.started):
            try:
                code = self.started[i].process.wait(timeout=1) if reap else self.started[i].process.poll()
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                text += f"; it exited with code {code} (log: {self.started[i].log})"
        return text

    def _request(
        self, i: int, path: str, body: dict | None = None, timeout: float | None = None, reap: bool = True
    ) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.urls[i] + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout_s) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error", str(exc))
            except ValueError:
                reason = str(exc)
            raise RolloutServerError(self._describe(i, f"{path} failed: {reason}")) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # refused, reset, cut
            reason = getattr(exc, "reason", exc)
            raise RolloutServerError(self._describe(i, f"{path} got no answer ({reason})", reap)) from None
        try:
            return json.loads(text)
        except ValueError:  # something else listens on that port
            answer = text[:80].decode(errors="replace")
            raise RolloutServerError(self._describe(i, f"{path} answered {answer!r}, not JSON")) from None

    # ---- start --------------------------------------------------------------------------------------
    def wait_ready(self, timeout_s: float) -> None:
        """Poll every server's ``/health`` until all answer; a started server that exits fails at once."""
        start = time.monotonic()
        self.receivers = []
        for i in range(len(self.urls)):
            said = False
            while True:
                try:
                    health = self._request(i, "/health", timeout=5, reap=False)  # may be starting
                    break
                except RolloutServerError as exc:
                    waited = time.monotonic() - start
                    exited = i < len(self.started) and self.started[i].process.poll() is not None
                    if exited:  # described again: it may have exited after the request was answered
                        raise RolloutServerError(self._describe(i, "it stopped while starting")) from None
                    if waited > timeout_s:
                        message = f"{exc} (waited {timeout_s:.0f} s for it to start)"
                        raise RolloutServerError(message) from None
                    if waited > 15 and not said and i >= len(self.started):
                        logger.warning(
                            "waiting for rollout server %d at %s (up to %.0f s)", i, self.urls[i], timeout_s
                        )
                        said = True
                    time.sleep(1.0)
            self._check_device(i, str(health.get("device", "cpu")))
            self.receivers.append(int(health["receivers"]))

    def _check_device(self, i: int, device: str) -> None:
        """The weight group is NCCL between GPUs or gloo between CPUs, so a server must compute where the
        trainer does."""
        if device.startswith("cuda") != self.device.startswith("cuda"):
            raise RolloutServerError(
                self._describe(
                    i,
                    f"its engine runs on {device} but the trainer on {self.device}; the weight broadcast "
                    "needs both on GPUs (NCCL) or both on CPUs (gloo)",
                )
            )

    def open_weight_group(self, address: str = "127.0.0.1") -> None:
        """Main process: form the weight group with every server's receivers (rank 0 is this process)."""
        if not self.receivers:
            raise RuntimeError("wait_ready() first")
        offsets = [1 + sum(self.receivers[:i]) for i in range(len(self.urls))]
        info = GroupInfo(
            address=address,
            port=free_port(),
            world_size=1 + sum(self.receivers),
            rank_offset=0,
            backend="nccl" if self.device.startswith("cuda") else "gloo",
            timeout_s=self.timeout_s,
        )
        joins = [
            in_thread(self._request, i, "/join", asdict(replace(info, rank_offset=offset)))
            for i, offset in enumerate(offsets)
        ]
        self.group = _alongside(joins, lambda: open_group(info, 0), "forming the weight group")

    # ---- the engine interface -------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> list[Completion]:
        """``sampling.n`` completions per prompt, prompt-major, over all servers at once."""
        n = len(self.urls)
        bounds = [len(prompt_ids) * i // n for i in range(n + 1)]
        chunks = [(i, bounds[i], bounds[i + 1]) for i in range(n) if bounds[i + 1] > bounds[i]]

        def ask(i: int, start: int, end: int) -> list[Completion]:
            seed = None if sampling.seed is None else sampling.seed + start  # prompt j keeps seed + j
            body = {
                "prompt_ids": prompt_ids[start:end],
                "sampling": replace(sampling, seed=seed).to_dict(),
                "min_version": self.version,
                "peers": self.peers,
            }
            answer = self._request(i, "/generate", body)
            return [
                Completion(**{**c, "prompt_index": c["prompt_index"] + start}) for c in answer["completions"]
            ]

        futures = [in_thread(ask, *chunk) for chunk in chunks]
        return [c for f in futures for c in f.result()]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Every process: run the stream (its gathers are collective) and count a new version. The main
        process broadcasts it to every server while they load it."""
        start = time.perf_counter()
        self.version += 1
        if not self.sender:
            for _ in named_tensors:
                pass
            return
        body = {"version": self.version}
        loads = [in_thread(self._request, i, "/receive", body) for i in range(len(self.urls))]
        send = functools.partial(
            send_weights,
            self.group,
            named_tensors,
            dtype=self.weight_dtype,
            bucket_bytes=self.bucket_bytes,
            device=self.device,
        )
        self.last_sync_bytes = _alongside(loads, send, "broadcasting weights to the rollout servers")
        self.last_sync_s = time.perf_counter() - start

    def release_memory(self) -> None:
        """Nothing to free here: the servers' memory is on their own devices."""

    def close(self) -> None:
        """Stop the servers this trainer started (the others keep running for the next run)."""
        for i, server in enumerate(self.started):
            if server.process.poll() is None:
                with contextlib.suppress(RolloutServerError):
                    self._request(i, "/shutdown", {}, timeout=5)
        for server in self.started:
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
        self.started = []

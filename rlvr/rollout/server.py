"""A rollout server: one rollout engine in its own process, answering a trainer over HTTP.

    rlvr rollout-server RECIPE.yaml [key=value ...] [--host 0.0.0.0] [--port 8100]

The engine is the recipe's (``rollout.engine``, built with the same options a colocated engine gets), so
a server samples exactly as the trainer's own engine would. The trainer (:class:`rlvr.rollout.pool.
ServerPool`) sends it prompts and receives completions with their sampling log-probs; new weights arrive
over a ``torch.distributed`` group (:mod:`rlvr.rollout.broadcast`), not over HTTP.

Endpoints (JSON bodies):

- ``GET /health``: ``{version, receivers, engine, model, device}``.
- ``POST /join``: a :class:`~rlvr.rollout.broadcast.GroupInfo`; the engine's receivers join the trainer's
  weight group. Resets the weight version to 0.
- ``POST /receive`` ``{version}``: load one broadcast sync, then serve weights of that version.
- ``POST /generate`` ``{prompt_ids, sampling, min_version, peers}``: completions, prompt-major, once the
  weights are at least ``min_version`` (a request that arrives before the trainer's sync waits for it).
- ``POST /shutdown``.

Generation and weight loading take turns on the engine (one lock). Generation requests that arrive while
the engine is busy, or while a request waits (at most ``gather_s``) for its ``peers`` (the other training
processes, which ask at about the same time), run as one batch of the engine (vLLM: one ``generate``
over all their prompts, each request with its own sampling and seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rlvr.rollout.base import ENGINES, EngineOptions, SamplingConfig
from rlvr.rollout.broadcast import GroupInfo

logger = logging.getLogger("rlvr.rollout.server")


@dataclasses.dataclass
class _Request:
    """A generation request waiting for the engine, and its answer once a batch has run it."""

    prompt_ids: list[list[int]]
    sampling: SamplingConfig
    done: bool = False
    completions: list | None = None
    version: int = 0
    error: BaseException | None = None


class RolloutServer:
    """The engine, its weight version, and the handlers of the endpoints."""

    def __init__(
        self,
        engine,
        engine_name: str,
        model_path: str,
        device: str,
        wait_s: float = 1800.0,
        gather_s: float = 0.05,
    ):
        self.engine_name, self.model_path, self.device = engine_name, model_path, device
        self.engine = engine
        self.version = 0
        self.wait_s = wait_s
        self.gather_s = gather_s
        """How long a request that finds the engine idle waits for the other training processes' (its
        body's ``peers``: they ask at about the same time) before it runs all waiting ones as one batch."""
        self.engine_lock = threading.Lock()
        self.version_changed = threading.Condition()
        self.waiting: list[_Request] = []  # generation requests not yet run
        self.waiting_lock = threading.Lock()

    def health(self, _body: dict) -> dict:
        return {
            "version": self.version,
            "receivers": getattr(self.engine, "receivers", 0),
            "engine": self.engine_name,
            "model": self.model_path,
            "device": self.device,
        }

    def join(self, body: dict) -> dict:
        if not hasattr(self.engine, "join_weight_group"):
            raise ValueError(f"the {self.engine_name} engine cannot take broadcast weights")
        with self.engine_lock:
            self.engine.join_weight_group(GroupInfo(**body))
            self._set_version(0)
        return {}

    def receive(self, body: dict) -> dict:
        with self.engine_lock:
            self.engine.receive_weights()
            self._set_version(int(body["version"]))
        return {}

    def generate(self, body: dict) -> dict:
        wanted = int(body.get("min_version", 0))
        with self.version_changed:
            if not self.version_changed.wait_for(lambda: self.version >= wanted, timeout=self.wait_s):
                raise TimeoutError(f"weights of version {wanted} did not arrive in {self.wait_s:.0f} s")
        request = _Request(body["prompt_ids"], SamplingConfig.from_dict(body["sampling"]))
        with self.waiting_lock:
            self.waiting.append(request)
        with self.engine_lock:
            if not request.done:  # no earlier holder of the engine ran it: run every waiting request
                deadline = time.monotonic() + self.gather_s
                while len(self.waiting) < int(body.get("peers", 1)) and time.monotonic() < deadline:
                    time.sleep(0.002)
                with self.waiting_lock:
                    batch, self.waiting = self.waiting, []
                self._run(batch)
        if request.error is not None:
            raise request.error
        for c in request.completions:
            c.weight_version = request.version
        return {
            "version": request.version,
            "completions": [dataclasses.asdict(c) for c in request.completions],
        }

    def _run(self, batch: list[_Request]) -> None:
        """Generate for ``batch`` under the engine lock: one engine pass where the engine batches requests
        of different sampling (``generate_many``), else one after another. A failure is every request's."""
        version = self.version  # weights change only under the engine lock, which the caller holds
        try:
            if hasattr(self.engine, "generate_many"):
                results = self.engine.generate_many([(r.prompt_ids, r.sampling) for r in batch])
            else:
                results = [self.engine.generate(r.prompt_ids, r.sampling) for r in batch]
        except BaseException as exc:
            for r in batch:
                r.error, r.done = exc, True
            raise
        for r, completions in zip(batch, results, strict=True):
            r.completions, r.version, r.done = completions, version, True

    def _set_version(self, version: int) -> None:
        with self.version_changed:
            self.version = version
            self.version_changed.notify_all()

    def close(self, timeout_s: float = 30.0) -> bool:
        """Close the engine once the request using it finishes; False if it is still busy after
        ``timeout_s`` (a long generation, or a broadcast whose sender is gone)."""
        if not self.engine_lock.acquire(timeout=timeout_s):
            return False
        try:
            self.engine.close()
        finally:
            self.engine_lock.release()
        return True


def _handler(server: RolloutServer, stop: threading.Event) -> type[BaseHTTPRequestHandler]:
    routes = {
        ("GET", "/health"): server.health,
        ("POST", "/join"): server.join,
        ("POST", "/receive"): server.receive,
        ("POST", "/generate"): server.generate,
        ("POST", "/shutdown"): lambda _body: stop.set() or {},
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, method: str) -> None:
            route = routes.get((method, self.path))
            if route is None:
                return self._send(404, {"error": f"no endpoint {method} {self.path}"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._send(200, route(body))
            except Exception as exc:  # the trainer gets the reason; the server keeps serving
                logger.error("%s %s failed:\n%s", method, self.path, traceback.format_exc())
                self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._answer("POST")

        def log_message(self, format: str, *args) -> None:  # noqa: A002
            logger.debug(format, *args)

    return Handler


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    """Stop when ``parent_pid`` (the trainer that started this server) is gone, however it ended."""

    def watch() -> None:
        while not stop.wait(2.0):
            if os.getppid() != parent_pid:  # re-parented: the trainer exited
                logger.warning("the trainer (pid %d) is gone; stopping", parent_pid)
                stop.set()

    threading.Thread(target=watch, daemon=True).start()


def serve(
    engine_name: str,
    model_path: str,
    options: EngineOptions,
    host: str,
    port: int,
    parent_pid: int | None = None,
) -> None:
    """Build the engine, then answer requests until ``POST /shutdown``, SIGTERM, or (``parent_pid``) the
    exit of the process that started this one."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a clean close: the engine's processes too
    if parent_pid is not None:
        _watch_parent(parent_pid, stop)
    engine = ENGINES.get(engine_name)(model_path, options)  # minutes for a large model
    server = RolloutServer(engine, engine_name, model_path, options.device)
    if stop.is_set():
        server.close()
        return
    http = ThreadingHTTPServer((host, port), _handler(server, stop))
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, daemon=True).start()
    url = f"http://{host}:{http.server_address[1]}"
    print(f"rollout server ready on {url} ({engine_name}, {model_path})", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        http.shutdown()
        if not server.close():
            logger.error("the engine is still busy after 30 s; exiting without closing it")
            logging.shutdown()
            os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """The form the trainer starts (engine options as JSON); users start ``rlvr rollout-server RECIPE``."""
    parser = argparse.ArgumentParser(prog="python -m rlvr.rollout.server")
    parser.add_argument("--engine", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--options", default="{}", help="EngineOptions fields as JSON")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--parent-pid", type=int, help="stop when this process exits")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = EngineOptions(**json.loads(args.options))
    serve(args.engine, args.model, options, args.host, args.port, args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rollout servers: bucketed weight broadcast over gloo, a real vLLM server against transformers, load
balancing that keeps seeded results, and a dead server as a named error rather than a hang."""

import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlvr.models import build_tiny_model
from rlvr.rollout import ENGINES, EngineOptions, SamplingConfig
from rlvr.rollout.broadcast import GroupInfo, open_group, receive_weights, send_weights
from rlvr.rollout.pool import (
    RolloutServerError,
    ServerPool,
    _alongside,
    free_port,
    in_thread,
    server_gpus,
    start_servers,
)
from rlvr.rollout.vllm_engine import InProcessClient, cpu_binding, llm_kwargs
from rlvr.trainer.weights import layer_groups, layer_key, policy_state

GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=12)


def test_broadcast_round_trip_in_bounded_buckets():
    """Mixed dtypes and shapes arrive bit-exact under their names, cast to the engine dtype where they
    are floating point, in several buckets none larger than bucket + largest tensor."""
    torch.manual_seed(0)
    tensors = [
        ("embed.weight", torch.randn(64, 16)),  # 4 KiB in float32, 2 KiB sent as bfloat16
        ("layers.0.scale", torch.randn(16)),
        ("head.bias", torch.randn(3)),  # 6 bytes: what follows would start unaligned without padding
        ("layers.0.index", torch.arange(10, dtype=torch.int64)),  # not cast
        ("layers.1.w", torch.randn(8, 8, 2)),
    ]
    info = GroupInfo(address="127.0.0.1", port=free_port(), world_size=2, rank_offset=1, timeout_s=60)
    received, buffers = [], set()

    def receiver() -> None:
        group = open_group(info, 1)
        for name, tensor in receive_weights(group):
            received.append((name, tensor.clone()))
            buffers.add((tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()))

    thread = threading.Thread(target=receiver)
    thread.start()
    sent = send_weights(open_group(info, 0), iter(tensors), dtype=torch.bfloat16, bucket_bytes=1024)
    thread.join(timeout=60)

    assert [name for name, _ in received] == [name for name, _ in tensors]
    for (_, want), (_, got) in zip(tensors, received, strict=True):
        cast = torch.bfloat16 if want.is_floating_point() else want.dtype
        assert got.dtype == cast and got.shape == want.shape
        assert torch.equal(got, want.to(cast))
    # each tensor padded to 16 bytes: the bias's 6 bytes take 16, the rest are multiples already
    rest = 16 * 2 + 16 + 10 * 8 + 8 * 8 * 2 * 2
    assert sent == 64 * 16 * 2 + rest
    # the 2 KiB embedding closes the first bucket alone; the rest (~0.4 KiB) is the second
    assert sorted(size for _, size in buffers) == [rest, 64 * 16 * 2]


def test_server_worker_finishes_a_sync_whose_load_failed_and_releases_the_last_runs_group(monkeypatch):
    """The worker half of the broadcast (vLLM's worker with the extension mixed in): a load that fails
    part-way still receives the rest of the sync, so the trainer's send returns and the next sync works;
    joining the next run's group releases the last one."""
    from rlvr.rollout import broadcast
    from rlvr.rollout.vllm_worker import WeightSyncExtension

    class Worker(WeightSyncExtension):  # what vLLM's worker provides: rank, device, reload_weights
        rank, device = 0, torch.device("cpu")
        fail = True
        loaded: list[str] = []

        def reload_weights(self, weights_iterator) -> None:
            for name, _ in weights_iterator:
                if self.fail:
                    raise ValueError(f"no parameter named {name}")  # a name vLLM's model does not have
                self.loaded.append(name)

    closed, close = [], broadcast.close_group
    monkeypatch.setattr(broadcast, "close_group", lambda group: (closed.append(group), close(group)))
    tensors = [(f"layers.{i}.w", torch.randn(16, 16)) for i in range(4)]  # 1 KiB each: 4 buckets
    worker = Worker()

    def sync(fail: bool) -> BaseException | None:
        info = GroupInfo(address="127.0.0.1", port=free_port(), world_size=2, rank_offset=1, timeout_s=30)
        errors = []

        def receive() -> None:
            try:
                worker.rlvr_join_weight_group(dataclasses.asdict(info))
                worker.fail = fail
                worker.rlvr_receive_weights()
            except ValueError as exc:
                errors.append(exc)

        thread = threading.Thread(target=receive)
        thread.start()
        send_weights(open_group(info, 0), iter(tensors), bucket_bytes=1024)  # returns: nothing hangs
        thread.join(timeout=30)
        assert not thread.is_alive()
        return errors[0] if errors else None

    error = sync(fail=True)
    assert isinstance(error, ValueError) and "layers.0.w" in str(error)
    first = worker.rlvr_weight_group
    assert closed == [] and worker.loaded == []
    assert sync(fail=False) is None  # the next run: a new group, the last one released
    assert closed == [first] and worker.rlvr_weight_group is not first
    assert worker.loaded == [name for name, _ in tensors]


def test_layer_groups_keep_each_decoder_layer_together():
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.10.mlp.up_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    assert layer_groups(names) == [
        ["model.embed_tokens.weight"],
        ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"],
        ["model.layers.1.self_attn.q_proj.weight"],
        ["model.layers.10.mlp.up_proj.weight"],
        ["model.norm.weight", "lm_head.weight"],
    ]
    assert (
        layer_key("base_model.model.model.layers.3.mlp.lora_A.default.weight")
        == "base_model.model.model.layers.3"
    )
    assert layer_key("lm_head.weight") == ""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-served"), seed=0)


def perturbed(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model


PROMPTS = [[1, 2, 3, 4], [5, 6, 7], [8, 9], [10, 11, 12], [13]]


@pytest.mark.vllm
def test_vllm_server_after_broadcast_sync_matches_transformers(tiny_dir, tmp_path):
    """A real `python -m rlvr.rollout.server` with vLLM: after one broadcast sync (small buckets, so the
    worker loads a stream of several) its greedy output is transformers' on the same weights; a pool
    that splits the prompts over two replicas (the same server listed twice) returns exactly what one
    replica returns, seeded samples included."""
    options = EngineOptions(max_model_len=256, kv_cache_gb=0.25)
    urls, started = start_servers(1, "vllm", str(tiny_dir), options, tmp_path / "logs")
    pool = ServerPool(urls, sender=True, weight_dtype=torch.float32, started=started, bucket_bytes=64 << 10)
    try:
        pool.wait_ready(300)
        assert pool.receivers == [1]
        pool.open_weight_group()
        before = [c.token_ids for c in pool.generate(PROMPTS, GREEDY)]

        model = perturbed(tiny_dir)
        pool.update_weights(iter(policy_state(model)))
        assert pool.version == 1
        after = pool.generate(PROMPTS, GREEDY)
        reference = ENGINES.get("hf")(str(tiny_dir), EngineOptions())
        reference.update_weights(policy_state(model))
        expected = reference.generate(PROMPTS, GREEDY)
        assert [c.token_ids for c in after] != before  # the sync reached the server
        assert [c.token_ids for c in after] == [c.token_ids for c in expected]
        for a, b in zip(after, expected, strict=True):
            torch.testing.assert_close(
                torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-3, rtol=1e-3
            )

        sampling = SamplingConfig(n=3, temperature=1.0, max_tokens=8, seed=11)
        one = pool.generate(PROMPTS, sampling)
        two = ServerPool(urls * 2, sender=False, weight_dtype=None)
        two.version = pool.version
        split = two.generate(PROMPTS, sampling)
        assert [(c.prompt_index, c.token_ids) for c in split] == [(c.prompt_index, c.token_ids) for c in one]
        for a, b in zip(split, one, strict=True):  # other batch shapes may round differently
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
        assert [c.prompt_index for c in one] == [i for i in range(len(PROMPTS)) for _ in range(3)]
    finally:
        pool.close()
    assert started[0].process.poll() is not None  # the trainer stops the servers it started


@pytest.mark.vllm
def test_tensor_parallel_engines_take_new_weights_in_both_modes(tiny_dir, tmp_path):
    """rollout.tensor_parallel_size=2 on vLLM's CPU backend (two worker processes, each holding half of
    every attention and MLP matrix): a server's two workers both receive the broadcast (two ranks of the
    weight group) and a colocated engine's both reload the file; afterwards each one's greedy output is
    transformers' on the new weights."""
    model = perturbed(tiny_dir)
    reference = ENGINES.get("hf")(str(tiny_dir), EngineOptions())
    reference.update_weights(policy_state(model))
    expected = [c.token_ids for c in reference.generate(PROMPTS, GREEDY)]
    options = EngineOptions(max_model_len=256, kv_cache_gb=0.25, tensor_parallel_size=2)

    urls, started = start_servers(1, "vllm", str(tiny_dir), options, tmp_path / "logs")
    pool = ServerPool(urls, sender=True, weight_dtype=torch.float32, started=started, bucket_bytes=64 << 10)
    try:
        pool.wait_ready(300)
        assert pool.receivers == [2]
        pool.open_weight_group()
        before = [c.token_ids for c in pool.generate(PROMPTS, GREEDY)]
        pool.update_weights(iter(policy_state(model)))
        served = [c.token_ids for c in pool.generate(PROMPTS, GREEDY)]
    finally:
        pool.close()
    assert before != expected and served == expected

    engine = ENGINES.get("vllm")(str(tiny_dir), options)
    try:
        engine.update_weights(iter(policy_state(model)))
        assert [c.token_ids for c in engine.generate(PROMPTS, GREEDY)] == expected
    finally:
        engine.close()


def test_dead_server_is_a_named_error_not_a_hang(tiny_dir, tmp_path):
    """Generation from, and a weight broadcast to, a server whose process died both fail within seconds
    with the server's URL, exit code and log."""
    urls, started = start_servers(1, "hf", str(tiny_dir), EngineOptions(), tmp_path / "logs")
    pool = ServerPool(urls, sender=True, weight_dtype=torch.float32, started=started, timeout_s=120)
    try:
        pool.wait_ready(120)
        pool.open_weight_group()
        pool.update_weights(iter(policy_state(perturbed(tiny_dir))))
        assert len(pool.generate(PROMPTS[:2], GREEDY)) == 2

        started[0].process.kill()
        started[0].process.wait()
        for attempt in (
            lambda: pool.generate(PROMPTS[:2], GREEDY),
            lambda: pool.update_weights(iter(policy_state(perturbed(tiny_dir)))),
        ):
            start = time.monotonic()
            with pytest.raises(RolloutServerError) as error:
                attempt()
            assert time.monotonic() - start < 30
            message = str(error.value)
            assert f"rollout server 0 at {urls[0]}" in message
            assert "exited with code -9" in message and "rollout-server-0.log" in message
    finally:
        pool.close()


def test_server_that_fails_to_start_is_named_with_its_log(tmp_path):
    urls, started = start_servers(
        1, "hf", str(tmp_path / "no-such-model"), EngineOptions(), tmp_path / "logs"
    )
    pool = ServerPool(urls, sender=True, weight_dtype=None, started=started)
    with pytest.raises(
        RolloutServerError, match=r"rollout server 0 .*exited with code 1 \(log: .*rollout-server-0.log"
    ):
        pool.wait_ready(120)
    assert "no-such-model" in started[0].log.read_text()


def test_weight_paths_follow_where_the_engine_runs():
    """CPU: the shared-memory file (vLLM's CPU engine has no sleep mode and no CUDA IPC). A GPU engine
    sharing its device with a training process: CUDA IPC and sleep mode. A GPU server: neither (its
    weights come by broadcast, and nothing else needs its memory)."""
    cpu = llm_kwargs("m", EngineOptions(kv_cache_gb=0.5))
    assert cpu["kv_cache_memory_bytes"] == 1 << 29 and cpu["enable_chunked_prefill"] is False
    assert "weight_transfer_config" not in cpu and "enable_sleep_mode" not in cpu
    shared = llm_kwargs("m", EngineOptions(device="cuda:0", shares_gpu=True, gpu_memory_utilization=0.4))
    assert shared["weight_transfer_config"] == {"backend": "ipc"} and shared["enable_sleep_mode"] is True
    assert shared["gpu_memory_utilization"] == 0.4 and "kv_cache_memory_bytes" not in shared
    server = llm_kwargs("m", EngineOptions(device="cuda:0", tensor_parallel_size=2))
    assert "weight_transfer_config" not in server and server["tensor_parallel_size"] == 2


def test_a_server_error_ends_the_wait_on_a_blocked_collective():
    """The trainer's side of a broadcast blocks until every server joins it; a server that answers its
    request with an error never will, so the error is raised at once instead of after the timeout."""
    blocked = threading.Event()

    def collective() -> None:
        blocked.wait(60)

    def refuse() -> None:
        time.sleep(0.2)
        raise RolloutServerError("rollout server 0 at http://x: /receive failed: KeyError: 'w'")

    start = time.monotonic()
    with pytest.raises(RolloutServerError, match="/receive failed"):
        _alongside([in_thread(refuse)], collective, "broadcasting")
    assert time.monotonic() - start < 5
    blocked.set()
    assert _alongside([in_thread(lambda: None)], lambda: 7, "broadcasting") == 7


def test_servers_started_on_a_gpu_machine_get_the_gpus_after_the_trainers():
    visible = ["0", "1", "2", "3", "4", "5", "6", "7"]
    assert server_gpus(visible, trainer_gpus=4, servers=2, tensor_parallel_size=2) == ["4,5", "6,7"]
    assert server_gpus(["3", "5", "6"], trainer_gpus=1, servers=2, tensor_parallel_size=1) == ["5", "6"]
    with pytest.raises(ValueError, match=r"need 4 GPU\(s\) beside the trainer's 6, but this machine shows 8"):
        server_gpus(visible, trainer_gpus=6, servers=2, tensor_parallel_size=2)


def test_a_server_on_another_kind_of_device_than_the_trainer_is_refused():
    pool = ServerPool(["http://127.0.0.1:1"], sender=True, weight_dtype=None, device="cuda:0")
    with pytest.raises(RolloutServerError, match="runs on cpu but the trainer on cuda:0"):
        pool._check_device(0, "cpu")
    pool._check_device(0, "cuda")


def test_a_started_server_stops_when_its_trainer_exits(tiny_dir, tmp_path):
    """However the trainer ends (here: a process that starts a server and exits at once, as a killed
    trainer would), its servers do not outlive it."""
    script = (
        "import sys; from pathlib import Path; from rlvr.rollout import EngineOptions; "
        "from rlvr.rollout.pool import start_servers; "
        f"_, s = start_servers(1, 'hf', {str(tiny_dir)!r}, EngineOptions(), Path({str(tmp_path)!r})); "
        "print(s[0].process.pid)"
    )
    trainer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    pid = int(trainer.stdout)
    deadline = time.monotonic() + 120
    while _alive(pid):
        assert time.monotonic() < deadline, (tmp_path / "rollout-server-0.log").read_text()
        time.sleep(0.5)
    assert "is gone; stopping" in (tmp_path / "rollout-server-0.log").read_text()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # an orphan's zombie waits for a reaper that a container may not run


def test_cpu_workers_of_a_tensor_parallel_engine_get_their_own_cpus():
    """vLLM binds each CPU worker to a NUMA node and refuses to start with fewer nodes than workers; on
    such a machine the engine splits the CPUs it may use between its workers instead."""
    assert cpu_binding([0, 1], 2) == "0|1"
    assert cpu_binding([0, 1, 2, 3, 4], 2) == "0,1|2,3,4"
    assert cpu_binding([4, 5, 6, 7, 8, 9], 3) == "4,5|6,7|8,9"
    with pytest.raises(ValueError, match="needs a CPU per worker; this process may use 1"):
        cpu_binding([3], 2)


def test_the_ipc_sender_reaches_an_in_process_engine_through_its_rl_methods():
    """vLLM's trainer-side IPC sender talks to a weight-sync client with bare dicts; ``LLM``'s own RL
    methods (vLLM's ``RLOfflineMixin``, used here as ``LLM`` uses it) expect them wrapped. The client
    hands each call to the engine's workers with the arguments they take."""
    from vllm.entrypoints.rl.offline import RLOfflineMixin

    calls = []

    class EngineCore:
        def collective_rpc(self, method, kwargs=None):
            calls.append((method, kwargs))

    class LLM(RLOfflineMixin):
        llm_engine = EngineCore()

    client = InProcessClient(LLM())
    client.init_weight_transfer_engine({"packed": True})
    client.start_weight_update()
    client.update_weights({"names": ["w"], "ipc_handles": {}})
    client.finish_weight_update()
    assert calls == [
        ("init_weight_transfer_engine", {"init_info": {"packed": True}}),
        ("start_weight_update", None),
        ("update_weights", {"update_info": {"names": ["w"], "ipc_handles": {}}}),
        ("finish_weight_update", None),
    ]

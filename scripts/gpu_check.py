"""The GRPO update on a GPU under DeepSpeed ZeRO-2, checked against the same update on the CPU, then timed.

    bash scripts/gpu_check.sh [OUT_DIR]          # runs the three steps below on a single-GPU machine

    python scripts/gpu_check.py run OUT/cpu                       # the reference: CPU, float32
    accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 1 \
        scripts/gpu_check.py run OUT/gpu                          # the same update on the GPU
    python scripts/gpu_check.py compare OUT/cpu OUT/gpu           # loss and gradient agree?
    accelerate launch ... scripts/gpu_check.py run OUT/gpu-bf16 --timed 5 train.mixed_precision=bf16

``run`` builds the trainer the way ``rlvr train`` does (the tiny recipe, the ``hf`` rollout engine, the
model below), builds one seeded batch of the anchor's shape (8 prompts x 8 samples, prompts of 40 tokens,
responses of 1..128 tokens, rewards in {0, 0.5, 1}; the same on every machine), runs the step's advantage
stage and one update on it, and saves the loss and the full gradient of every parameter at the optimizer
step (after DeepSpeed's reduction, before clipping) in OUT/result.pt. ``--timed N`` then runs N more
updates on the batch and writes their median time, update tokens/s and MFU to OUT/summary.json. A timed
run computes every token it counts: it turns the shared-prompt forward off (which runs each prompt once
per micro-batch instead of once per row) and counts the prompt and response tokens of the rows the
update ran (``perf/update_tokens_run``; rows without advantage are skipped), so its MFU is 6 x parameters
x those tokens per second against the peak.

The model is SmolLM2-135M's shape (30 layers, hidden 576, 9 heads / 3 KV heads, MLP 1536, vocabulary
49,152, tied embeddings) with seeded random weights, written from its config, so the check needs no model
files; ``--size tiny`` uses the two-layer test model instead, ``--size qwen2.5-1.5b`` Qwen2.5-1.5B's
shape (for timing a model that fills the GPU better), and ``--model DIR`` a model folder (e.g.
the converted SmolLM2-135M-Instruct copied to the machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from rlvr.models import MODEL_SHAPES

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/tiny/grpo_tiny_say_digit.yaml"
SIZES = {
    "smollm2-135m": MODEL_SHAPES["smollm2-135m"],
    "qwen2.5-1.5b": MODEL_SHAPES["qwen2.5-1.5b"],  # timing only: its float32 CPU reference would take long
    "tiny": {},
}
PROMPT_TOKENS = 40
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}
"""Dense bf16 tensor-core peaks from the vendors' datasheets, by a name in torch.cuda.get_device_name()."""


def seeded_samples(prompts: int, generations: int, max_tokens: int, vocab: int, seed: int = 1234):
    """The step's prompts and samples, the same on every machine and process: ``prompts`` groups of
    (prompt ids, [(response ids, engine log-probs, reward, truncated)] x ``generations``)."""
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for _ in range(prompts):
        prompt = torch.randint(3, vocab, (PROMPT_TOKENS,), generator=gen).tolist()
        samples = []
        for _ in range(generations):
            length = int(torch.randint(1, max_tokens + 1, (1,), generator=gen))
            ids = torch.randint(3, vocab, (length,), generator=gen).tolist()
            logprobs = (-torch.rand(length, generator=gen) * 3).tolist()
            reward = float(torch.randint(0, 3, (1,), generator=gen)) / 2
            samples.append((ids, logprobs, reward, length == max_tokens))
        groups.append((prompt, samples))
    return groups


def process_batch(trainer, vocab: int):
    """This process's share of :func:`seeded_samples`, as the step builds it (group ids unique across
    processes), with the fields the plug-ins read filled by the pre-update pass."""
    from rlvr.rollout import Completion
    from rlvr.trainer.batch import make_batch, pad_id
    from rlvr.trainer.logprobs import fill_fields

    recipe, acc = trainer.recipe, trainer.accelerator
    per_process = trainer.layout["prompts"]
    first = acc.process_index * per_process
    groups = seeded_samples(
        recipe.train.prompts_per_step, recipe.rollout.num_generations, recipe.rollout.max_tokens, vocab
    )[first : first + per_process]
    completions, rewards = [], []
    for i, (_, samples) in enumerate(groups):
        for ids, logprobs, reward, truncated in samples:
            finish = "length" if truncated else "stop"
            completions.append(Completion(i, ids, logprobs, text="", finish_reason=finish))
            rewards.append(reward)
    prompts = [prompt for prompt, _ in groups]
    batch = make_batch(prompts, completions, rewards, pad_id(trainer.tokenizer), group_offset=first)
    trainer.ctx.model.eval()
    fill_fields(
        batch,
        trainer.requests,
        trainer.forwards,
        trainer.ctx.micro_batch,
        acc.device,
        recipe.train.sort_by_length,
    )
    return batch


def update_with_gradient(trainer, batch) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The step's update (advantages, then the policy update) on ``batch``; returns its metrics and the full
    gradient of every parameter at the first optimizer step, after the cross-process reduction and before
    clipping (DeepSpeed: ``safe_get_full_grad``; otherwise the parameters' ``.grad``)."""
    model = trainer.ctx.model
    grads: dict[str, torch.Tensor] = {}

    def record(named) -> None:
        for name, grad in named:
            grads[name] = grad.detach().float().cpu().clone()

    if hasattr(model, "is_gradient_accumulation_boundary"):  # a DeepSpeed engine
        from deepspeed.utils import safe_get_full_grad

        engine_step = model.step

        def step(*args, **kwargs):
            if not grads and model.is_gradient_accumulation_boundary():
                record((name, safe_get_full_grad(p)) for name, p in model.module.named_parameters())
            return engine_step(*args, **kwargs)

        model.step = step
        try:
            metrics = trainer.update(trainer, batch)
        finally:
            del model.step
    else:  # the trainer clips with the accelerator just before the optimizer step: record there
        acc = trainer.accelerator
        clip = acc.clip_grad_norm_

        def clip_and_record(parameters, *args, **kwargs):
            if not grads and acc.sync_gradients:
                unwrapped = acc.unwrap_model(model)  # DDP's names without "module."
                record((name, p.grad) for name, p in unwrapped.named_parameters() if p.grad is not None)
            return clip(parameters, *args, **kwargs)

        acc.clip_grad_norm_ = clip_and_record
        try:
            metrics = trainer.update(trainer, batch)
        finally:
            del acc.clip_grad_norm_
    return metrics, grads


def model_folder(out: Path, size: str, model: str | None) -> Path:
    """``model`` (an HF folder or an rlvr model alias) when given, else a seeded model of ``size`` written
    from its config under ``out``."""
    from rlvr.models import build_tiny_model, resolve_model

    if model:
        return Path(resolve_model(model))
    model_dir = out / "model"
    if not (model_dir / "config.json").is_file():
        build_tiny_model(model_dir, **SIZES[size])
    return model_dir


def build_trainer(model_dir: Path, out: Path, overrides: list[str]):
    from rlvr.config import load_recipe
    from rlvr.train import build

    recipe = load_recipe(
        RECIPE,
        [
            f"model.name_or_path={model_dir}",
            f"run.output_dir={out / 'run'}",
            "run.save_final=false",
            "run.report_to=none",
            "rollout.engine=hf",
            "rollout.num_generations=8",
            "rollout.max_tokens=128",
            f"data.max_prompt_tokens={PROMPT_TOKENS + 8}",
            "train.prompts_per_step=8",
            "train.micro_batch_size=16",
            *overrides,
        ],
    )
    return build(recipe)


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 10) -> float:
    """This device's measured matmul throughput (best of ``repeats``)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def run(out: Path, size: str, model: str | None, timed: int, overrides: list[str]) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # the check compares float32 with float32
    torch.backends.cudnn.allow_tf32 = False
    if timed:
        overrides = ["train.share_prompt_prefix=false", *overrides]
    model_dir = model_folder(out, size, model)
    trainer = build_trainer(model_dir, out, overrides)
    acc = trainer.accelerator
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    batch = process_batch(trainer, vocab)
    metrics, grads = update_with_gradient(trainer, batch)
    if acc.is_main_process:
        torch.save({"loss": metrics["actor/loss"], "grads": grads}, out / "result.pt")
    summary = {
        "device": torch.cuda.get_device_name() if acc.device.type == "cuda" else "cpu",
        "processes": acc.num_processes,
        "mixed_precision": trainer.recipe.train.mixed_precision,
        "loss": metrics["actor/loss"],
    }
    if timed:
        params = sum(p.numel() for p in grads.values())
        tokens = metrics["perf/update_tokens_run"]  # of every process
        seconds = []
        for _ in range(timed):
            if acc.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.update(trainer, batch)
            if acc.device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        median = statistics.median(seconds)
        if acc.device.type == "cuda":  # model, optimizer states, activations (before the matmul probe)
            summary["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        achieved = 6 * params * tokens / median / 1e12
        peak_dtype = torch.bfloat16 if trainer.recipe.train.mixed_precision == "bf16" else torch.float32
        measured_peak = matmul_tflops(acc.device, peak_dtype)
        datasheet = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in summary["device"]), None)
        summary.update(
            {
                "parameters": params,
                "update_tokens": tokens,
                "update_s_median": median,
                "update_s_all": seconds,
                "update_tokens_per_s": tokens / median,
                "achieved_tflops": achieved,
                "measured_matmul_tflops": measured_peak,
                "mfu_vs_measured_matmul": achieved / measured_peak,
                "mfu_vs_datasheet_bf16": achieved / datasheet if datasheet else None,
            }
        )
    if acc.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(json.dumps(summary, indent=1))


def compare(reference: Path, other: Path, tolerance: float) -> int:
    a, b = torch.load(reference / "result.pt"), torch.load(other / "result.pt")
    if set(a["grads"]) != set(b["grads"]):
        print(f"different parameters: {sorted(set(a['grads']) ^ set(b['grads']))[:5]}")
        return 1
    ga = torch.cat([a["grads"][k].flatten() for k in sorted(a["grads"])]).double()
    gb = torch.cat([b["grads"][k].flatten() for k in sorted(b["grads"])]).double()
    relative = float((ga - gb).norm() / ga.norm())
    cosine = float(ga @ gb / (ga.norm() * gb.norm()))
    worst = max(
        sorted(a["grads"]),
        key=lambda k: float((a["grads"][k] - b["grads"][k]).norm() / a["grads"][k].norm().clamp(min=1e-30)),
    )
    loss_diff = abs(a["loss"] - b["loss"])
    result = {
        "loss_reference": a["loss"],
        "loss_other": b["loss"],
        "loss_abs_diff": loss_diff,
        "grad_relative_l2_error": relative,
        "grad_cosine": cosine,
        "grad_norm_reference": float(ga.norm()),
        "grad_norm_other": float(gb.norm()),
        "worst_parameter": worst,
        "tolerance": tolerance,
    }
    ok = relative <= tolerance and loss_diff <= tolerance * max(1.0, abs(a["loss"]))
    result["agree"] = ok
    (other / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("run", help="one update on the seeded batch (and --timed more)")
    r.add_argument("out", type=Path)
    r.add_argument("--size", choices=sorted(SIZES), default="smollm2-135m")
    r.add_argument("--model", help="an HF model folder (or rlvr alias) instead of seeded weights of --size")
    r.add_argument("--timed", type=int, default=0, help="updates to time after the checked one")
    r.add_argument("overrides", nargs="*", help="recipe overrides, key=value")
    c = sub.add_parser("compare", help="loss and gradient of two runs")
    c.add_argument("reference", type=Path)
    c.add_argument("other", type=Path)
    c.add_argument("--tolerance", type=float, default=1e-3, help="largest relative gradient error")
    args, extra = ap.parse_known_args()  # overrides may also follow --timed N
    if args.mode == "run" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.mode == "compare":
        return compare(args.reference, args.other, args.tolerance)
    args.out.mkdir(parents=True, exist_ok=True)
    run(args.out, args.size, args.model, args.timed, args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())

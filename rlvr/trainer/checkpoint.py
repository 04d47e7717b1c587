"""Atomic, resumable checkpoints, the final HF-format model, and step checkpoints exported as HF models.

A step checkpoint is ``output_dir/checkpoints/step-000004/``: the accelerate state (model, optimizer,
lr schedule, every process's RNG states; DeepSpeed shards under ZeRO) plus ``trainer_state.json`` (step
counter, sampler state). It is written to a ``.tmp`` folder and renamed only when every process has
finished, so a crash mid-save never leaves a checkpoint that looks complete. :func:`export_checkpoint`
turns one into a plain HF model folder (``rlvr eval`` uses it to evaluate a checkpoint).

Importing this module is light (no torch, accelerate or transformers until a function needs them), so
the evaluation side can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
STEP_DIR = re.compile(r"^step-(\d+)$")
"""The name of a step checkpoint folder, ``step-<number>``."""


class CheckpointError(RuntimeError):
    """A step checkpoint cannot be exported: no weights, no recipe naming the model, or weights that do
    not fit it."""


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | Path, step: int, state: dict, keep_last: int
) -> Path:
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_latest(accelerator: Accelerator, output_dir: str | Path) -> dict | None:
    """Restore the newest complete checkpoint; returns its trainer state, or None if there is none."""
    found = checkpoint_dirs(output_dir)
    if not found:
        return None
    latest = found[-1]
    accelerator.load_state(str(latest))
    return json.loads((latest / STATE_FILE).read_text())


def save_final_model(accelerator: Accelerator, model, tokenizer, out_dir: str | Path) -> None:
    """The trained policy as a plain HF folder (ZeRO-3 weights are gathered by accelerate); a critic
    trained next to it is left out (it is in the step checkpoints)."""
    from rlvr.trainer.critic import policy_of

    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        policy = policy_of(unwrapped)
        if policy is not unwrapped:
            state_dict = {k[len("policy.") :]: v for k, v in state_dict.items() if k.startswith("policy.")}
        policy.save_pretrained(str(out_dir), state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
    accelerator.wait_for_everyone()


def _checkpoint_weights(step_dir: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (step_dir / name).is_file():
            return step_dir / name
    if (step_dir / "pytorch_model").is_dir():  # DeepSpeed (accelerate's save_state under ZeRO)
        return step_dir / "pytorch_model"
    raise CheckpointError(
        f"{step_dir} is a training checkpoint (accelerate state), not an HF model folder, and it holds no "
        "model weights (no model.safetensors, pytorch_model.bin or DeepSpeed pytorch_model/); evaluate "
        f"the run's final model ({step_dir.parent.parent / 'final'}) or a complete checkpoint"
    )


def _load_checkpoint_state(weights: Path) -> dict:
    import torch

    if weights.is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(weights.parent), tag=weights.name)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(weights))
    return torch.load(str(weights), map_location="cpu", weights_only=True)


def export_checkpoint(step_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The policy of a training checkpoint as an HF model folder (built once, cached by path and mtime).

    The architecture, tokenizer and dtype come from the run's ``recipe.yaml`` (``model`` section); the
    weights from the checkpoint (``model.safetensors``, or a DeepSpeed folder via ``zero_to_fp32``). A
    critic trained next to the policy is left out. The folder is
    ``<cache_dir>/eval-models/<run>-<step>-<hash>`` (``cache_dir`` defaults to the rlvr cache).

    Raises:
        CheckpointError: the checkpoint holds no weights, its run has no ``recipe.yaml``, or the weights do
            not fit the recipe's model.
    """
    import yaml

    from rlvr.models import atomic_folder, default_cache_dir, resolve_model

    step_dir = Path(step_dir).resolve()
    weights = _checkpoint_weights(step_dir)
    run_dir = step_dir.parent.parent
    recipe_file = run_dir / "recipe.yaml"
    if not recipe_file.is_file():
        raise CheckpointError(
            f"{step_dir} is a training checkpoint (accelerate state, not an HF folder) and its run directory "
            f"{run_dir} has no recipe.yaml naming the model architecture; evaluate {run_dir / 'final'} "
            "instead"
        )
    model_cfg = (yaml.safe_load(recipe_file.read_text()) or {}).get("model", {})
    base = str(resolve_model(model_cfg.get("name_or_path", "")))
    dtype_name = model_cfg.get("dtype", "float32")
    stamp = f"{weights}:{weights.stat().st_mtime_ns}:{base}:{dtype_name}"
    key = hashlib.sha1(stamp.encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / "eval-models" / f"{run_dir.name}-{step_dir.name}-{key}"
    if (target / "config.json").is_file():
        return target

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    state = _load_checkpoint_state(weights)
    if any(k.startswith("policy.") for k in state):  # PolicyWithCritic: keep the policy only
        state = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
    config = AutoConfig.from_pretrained(base)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype_name))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise CheckpointError(
            f"{weights}: the weights do not fit the run's model {base}: missing "
            f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.tie_weights()
    with atomic_folder(target) as tmp:
        with contextlib.suppress(OSError):
            model.generation_config = GenerationConfig.from_pretrained(base)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
        (tmp / "rlvr_checkpoint.json").write_text(json.dumps({"checkpoint": str(step_dir), "base": base}))
    return target

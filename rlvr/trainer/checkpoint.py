"""Atomic, resumable checkpoints, the final HF-format model, and step checkpoints exported as HF models.

A step checkpoint is ``output_dir/checkpoints/step-000004/``: the accelerate state (model, optimizer,
lr schedule, every process's RNG states; DeepSpeed shards under ZeRO) plus ``trainer_state.json`` (step
counter, sampler state). It is written to a ``.tmp`` folder and renamed only when every process has
finished, so a crash mid-save never leaves a checkpoint that looks complete. Just before the rename the
main process writes ``manifest.json`` (every file's size and sha256); :func:`choose_checkpoint` checks
the newest checkpoint against it when a run resumes and falls back to an older valid one (a disk that
filled up, a copy cut short). :func:`export_checkpoint` turns one into a plain HF model folder (``rlvr
eval`` uses it to evaluate a checkpoint).

What a resumed run may change in its recipe, and what it must keep, is :data:`RESUME_MAY_CHANGE`
(checked by :func:`resume_changes`; documented in ``docs/troubleshooting.md``).

Importing this module is light (no torch, accelerate or transformers until a function needs them), so
the evaluation side can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rlvr.config import Recipe, RecipeError
from rlvr.console import say

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger("rlvr.checkpoint")

STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
"""Written last into a step folder: ``{"files": {relative path: {"size": bytes, "sha256": hex}}}``."""
STEP_DIR = re.compile(r"^step-(\d+)$")
"""The name of a step checkpoint folder, ``step-<number>``."""
CORRUPT_SUFFIX = ".corrupt"
HASH_MAX_BYTES = 64 << 20
"""Files up to this size get a sha256 in the manifest (trainer state, RNG, scheduler, small shards);
larger ones (model and optimizer shards) are checked by size only, so saving and verifying a checkpoint
of a large model stays cheap while the other processes wait (a truncated shard is caught by its size)."""
"""A damaged checkpoint found on resume is renamed ``step-N.corrupt`` (kept for inspection, never loaded
and never pruned)."""


class CheckpointError(RuntimeError):
    """A step checkpoint cannot be exported: no weights, no recipe naming the model, or weights that do
    not fit it."""


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first: ``step-N`` folders holding ``trainer_state.json`` (their
    ``manifest.json``, when present, is checked only on resume, by :func:`choose_checkpoint`)."""
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
        write_manifest(tmp)  # last: it covers every process's files and trainer_state.json
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def write_manifest(step_dir: str | Path) -> dict:
    """Record the size of every file under ``step_dir`` in its ``manifest.json``, and the sha256 of those up
    to :data:`HASH_MAX_BYTES` (None for larger ones)."""
    step_dir = Path(step_dir)
    files = {}
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            size = path.stat().st_size
            digest = _sha256(path) if size <= HASH_MAX_BYTES else None
            files[path.relative_to(step_dir).as_posix()] = {"size": size, "sha256": digest}
    manifest = {"version": 1, "files": files}
    (step_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def verify_checkpoint(step_dir: str | Path, hashes: bool = True) -> str | None:
    """What is wrong with ``step_dir`` according to its ``manifest.json``, naming the file; None if every
    file it lists is there with its size (and, with ``hashes``, its sha256).

    Sizes are checked for every file before any hash is computed, so a truncated file is found without
    reading the others. A folder without a manifest (written by an older rlvr) cannot be checked: the
    caller decides (:func:`choose_checkpoint` loads it as before, with a note).
    """
    step_dir = Path(step_dir)
    try:
        listed = json.loads((step_dir / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"{step_dir / MANIFEST}: missing"
    except (ValueError, KeyError, TypeError) as exc:
        return f"{step_dir / MANIFEST}: unreadable ({exc.__class__.__name__}: {exc})"
    for name, entry in listed.items():
        path = step_dir / name
        if not path.is_file():
            return f"{path}: missing (the manifest lists {entry['size']} bytes)"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{path}: {size} bytes, the manifest says {entry['size']} (truncated or overwritten)"
    if hashes:
        for name, entry in listed.items():
            if entry.get("sha256") is not None and _sha256(step_dir / name) != entry["sha256"]:
                return f"{step_dir / name}: content differs from the manifest (sha256 mismatch)"
    return None


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Choice(NamedTuple):
    """The checkpoint a resume loads, and the newer ones it skipped (folder name -> what is wrong)."""

    path: Path
    skipped: dict[str, str]


def choose_checkpoint(accelerator: Accelerator, output_dir: str | Path) -> Choice | None:
    """The newest checkpoint that matches its manifest; None if the run has no complete checkpoint.

    The main process verifies (newest first: sizes, then sha256) and tells the others. A damaged
    checkpoint is reported with a warning naming the bad file and renamed ``step-N.corrupt`` (so that
    pruning by ``run.keep_last`` never keeps it instead of a good one); the run falls back to the next
    older one. A checkpoint without a manifest (older rlvr) is taken as it is, with a note.

    Raises:
        CheckpointError: every checkpoint is damaged; the message names each bad file.
    """
    found = checkpoint_dirs(output_dir)
    if not found:
        return None
    from rlvr.trainer.distributed import from_main_process

    verdict = _verify_newest_first(found) if accelerator.is_main_process else None
    chosen, skipped = from_main_process(accelerator, verdict)
    if chosen is None:
        problems = "; ".join(skipped.values())
        raise CheckpointError(
            f"no valid checkpoint in {Path(output_dir) / 'checkpoints'}: {problems}. Restore the file(s), "
            "or start over with run.overwrite=true"
        )
    root = Path(output_dir) / "checkpoints"
    if accelerator.is_main_process:
        for name, problem in skipped.items():
            aside = root / f"{name}{CORRUPT_SUFFIX}"
            shutil.rmtree(aside, ignore_errors=True)
            (root / name).rename(aside)
            logger.warning(
                "checkpoint %s is damaged: %s; it was renamed %s and the run resumes from the older %s",
                name,
                problem,
                aside.name,
                chosen,
            )
        if not (root / chosen / MANIFEST).is_file():
            say(f"note: checkpoint {chosen} has no {MANIFEST} (older rlvr): loaded unverified")
    accelerator.wait_for_everyone()
    return Choice(root / chosen, skipped)


def _verify_newest_first(found: list[Path]) -> tuple[str | None, dict[str, str]]:
    skipped: dict[str, str] = {}
    for step_dir in reversed(found):
        if not (step_dir / MANIFEST).is_file():
            return step_dir.name, skipped  # written before manifests existed: load as before
        try:
            problem = verify_checkpoint(step_dir)
        except Exception as exc:  # noqa: BLE001 - never raise on one process alone: the others wait
            problem = f"{step_dir / MANIFEST}: cannot be checked ({exc.__class__.__name__}: {exc})"
        if problem is None:
            return step_dir.name, skipped
        skipped[step_dir.name] = problem
    return None, skipped


def load_checkpoint(accelerator: Accelerator, step_dir: str | Path) -> dict:
    """Restore the accelerate state (model, optimizer, lr schedule, RNG) of ``step_dir``; returns its
    trainer state (step counter, sampler and component states)."""
    accelerator.load_state(str(step_dir))
    return json.loads((Path(step_dir) / STATE_FILE).read_text())


# --------------------------------------------------------------------------------------------------------
# What a resumed run may change
# --------------------------------------------------------------------------------------------------------

RESUME_MAY_CHANGE: dict[str, str] = {
    "run.name": "used from now on",
    "run.steps": "the run continues to the new count",
    "run.save_every": "used from now on",
    "run.keep_last": "used from the next save on",
    "run.save_final": "used at the end",
    "run.report_to": "used from now on",
    "run.verbose": "used from now on",
    "run.log_samples": "used from now on",
    "eval": "the evaluator is built from the new settings",
    "train.lr": "applied: the optimizer's learning rate and the schedule's base rate are reset to it",
    "train.warmup_steps": "applied: the schedule is recomputed at the restored optimizer step",
    "train.sort_by_length": "used from now on",
    "train.skip_zero_advantage": "used from now on",
    "train.share_prompt_prefix": "used from now on",
    "algorithm.critic.lr": "applied: the critic's learning rate and base rate are reset to it",
    "model.gradient_checkpointing": "used from now on (memory only)",
    "model.attn_implementation": "used from now on (kernel choice)",
    "rollout.gpu_memory_utilization": "used from now on (engine memory)",
    "rollout.kv_cache_gb": "used from now on (engine memory)",
    "rollout.enforce_eager": "used from now on (engine speed)",
    "rewards.num_workers": "used from now on (verifier processes)",
    "rewards.timeout_s": "used from now on",
    "rewards.max_failure_frac": "used from now on (a warning threshold)",
    "rewards.stop_when_all_fail": "used from now on",
}
"""The recipe keys (or whole sections) a resumed run may change, with how the new value takes effect.
Every other key must equal the earlier run's value (``run_dir/recipe.yaml``), or the resume is refused:
a resume continues one training run, and a changed batch layout, model, data, algorithm, reward, seed or
dtype would silently make it a different one. A new schema key is therefore refused until it is listed
here."""

RESUME_NOT_COMPARED = ("run.resume", "run.overwrite", "run.output_dir")
"""How this invocation reaches the run directory, not what the run is."""

RESUME_KEEPS: dict[str, str] = {
    "run.seed": "seed (data order and sampling continue from the checkpoint's RNG state)",
    "model": "model and its dtype",
    "data": "data",
    "sampler": "data order",
    "rollout": "rollouts (samples per prompt, decoding, engine)",
    "rewards": "rewards",
    "algorithm": "algorithm",
    "train": "batch layout and optimizer",
    "train.mixed_precision": "dtype",
}
"""Why a key outside :data:`RESUME_MAY_CHANGE` must stay (longest prefix wins); used in the error."""


def _matches(key: str, entry: str) -> bool:
    return key == entry or key.startswith(entry + ".")


def _section_paths(model: type = Recipe, prefix: str = "") -> set[str]:
    """Dotted paths of the schema's sections (compared key by key); anything else is one value."""
    from typing import get_args

    from pydantic import BaseModel

    paths: set[str] = set()
    for name, field in model.model_fields.items():
        for kind in (field.annotation, *get_args(field.annotation)):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                paths.add(prefix + name)
                paths |= _section_paths(kind, f"{prefix}{name}.")
    return paths


def _differences(earlier: Any, current: Any, key: str, sections: set[str]) -> dict[str, tuple]:
    if isinstance(earlier, dict) and isinstance(current, dict) and (not key or key in sections):
        out: dict[str, tuple] = {}
        for name in current:
            if name in earlier:  # a key only one side knows: a schema change between versions
                out.update(_differences(earlier[name], current[name], f"{key}.{name}".lstrip("."), sections))
        return out
    return {} if earlier == current else {key: (earlier, current)}


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def describe_change(key: str, old: Any, new: Any) -> str:
    """``train.lr changed 0.005 -> 0.05 (applied: ...)`` for a key :data:`RESUME_MAY_CHANGE` allows."""
    how = next((how for entry, how in RESUME_MAY_CHANGE.items() if _matches(key, entry)), "")
    return f"{key} changed {_show(old)} -> {_show(new)} ({how})"


def resume_changes(earlier_recipe: str | Path, recipe: Recipe) -> dict[str, tuple]:
    """The keys of ``recipe`` that differ from the earlier run's resolved recipe (``recipe.yaml``), as
    ``{dotted key: (old, new)}``; all of them are in :data:`RESUME_MAY_CHANGE`.

    Both sides are compared as resolved configs (defaults filled, ``model_dump``), so a key written out
    with its default value is no change.

    Raises:
        RecipeError: a key outside :data:`RESUME_MAY_CHANGE` changed; names every such key, its old and
            new value and why it must stay.
    """
    import yaml
    from pydantic import ValidationError

    try:
        tree = yaml.safe_load(Path(earlier_recipe).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RecipeError(
            f"{recipe.source}: run.resume: {earlier_recipe} (the earlier run's recipe) cannot be read: "
            f"{exc}; restore it, or delete it to resume without comparing recipes"
        ) from None
    if not isinstance(tree, dict):
        raise RecipeError(f"{recipe.source}: run.resume: {earlier_recipe} is not a recipe mapping")
    try:
        earlier = Recipe.model_validate(tree).model_dump(mode="json")
    except ValidationError:  # written by another rlvr version: compare the keys both know
        earlier = tree
    current = recipe.model_dump(mode="json")
    changed = _differences(earlier, current, "", _section_paths())
    refused = []
    for key, (old, new) in changed.items():
        if any(_matches(key, entry) for entry in (*RESUME_MAY_CHANGE, *RESUME_NOT_COMPARED)):
            continue
        reasons = [entry for entry in RESUME_KEEPS if _matches(key, entry)]
        what = RESUME_KEEPS[max(reasons, key=len)] if reasons else "settings"
        refused.append(f"{key} changed {_show(old)} -> {_show(new)}; a resumed run keeps its {what}")
    if refused:
        lines = "\n  ".join(refused)
        raise RecipeError(
            f"{recipe.source}: run.resume: the recipe differs from the run's ({earlier_recipe}):\n  {lines}\n"
            f"Resume with the earlier value(s), or start a new run (run.output_dir=<another directory>) "
            "instead; what a resume may change: docs/troubleshooting.md#resuming-a-run"
        )
    return {
        key: value
        for key, value in changed.items()
        if not any(_matches(key, entry) for entry in RESUME_NOT_COMPARED)
    }


def save_final_model(accelerator: Accelerator, model, tokenizer, out_dir: str | Path) -> None:
    """The trained policy as a plain HF folder (ZeRO-3 weights are gathered by accelerate); a critic
    trained next to it is left out (it is in the step checkpoints). A LoRA policy is saved merged, with
    its adapter in ``out_dir/adapter``."""
    from rlvr.trainer.critic import policy_of
    from rlvr.trainer.lora import adapter_state, is_lora, merged_weights

    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        policy = policy_of(unwrapped)
        if policy is not unwrapped:
            state_dict = {k[len("policy.") :]: v for k, v in state_dict.items() if k.startswith("policy.")}
        if is_lora(policy):  # the merged model as a plain HF folder, and the adapter alone beside it
            merged = dict(merged_weights(policy, state_dict))
            policy.get_base_model().save_pretrained(str(out_dir), state_dict=merged, safe_serialization=True)
            policy.save_pretrained(str(Path(out_dir) / "adapter"), state_dict=adapter_state(state_dict))
        else:
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

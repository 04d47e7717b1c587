"""Atomic, resumable checkpoints and the final HF-format model.

A step checkpoint is ``output_dir/checkpoints/step-000004/``: the accelerate state (model, optimizer,
lr schedule, every process's RNG states; DeepSpeed shards under ZeRO) plus ``trainer_state.json`` (step
counter, sampler state). It is written to a ``.tmp`` folder and renamed only when every process has
finished, so a crash mid-save never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

from rlvr.trainer.critic import policy_of

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


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
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        policy = policy_of(unwrapped)
        if policy is not unwrapped:
            state_dict = {k[len("policy.") :]: v for k, v in state_dict.items() if k.startswith("policy.")}
        policy.save_pretrained(str(out_dir), state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
    accelerator.wait_for_everyone()

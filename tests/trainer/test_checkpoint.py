"""Tests for rlvr.trainer.checkpoint: exporting a step checkpoint as an HF model folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from rlvr.trainer.checkpoint import CheckpointError, checkpoint_dirs, export_checkpoint


def _run_dir(tmp_path: Path, tiny_model_dir: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_model_dir)}}))
    return run_dir


def _step(run_dir: Path, step: int) -> Path:
    folder = run_dir / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    return folder


def test_export_checkpoint_writes_the_checkpoint_weights(tmp_path, tiny_model_dir):
    run_dir = _run_dir(tmp_path, tiny_model_dir)
    step = _step(run_dir, 2)
    with pytest.raises(CheckpointError, match="not an HF model folder, and it holds no model weights"):
        export_checkpoint(step)
    state = {k: v + 1.0 for k, v in load_file(str(tiny_model_dir / "model.safetensors")).items()}
    save_file(state, str(step / "model.safetensors"))
    exported = export_checkpoint(step, cache_dir=tmp_path / "cache")
    assert exported.parent == tmp_path / "cache" / "eval-models"
    reloaded = load_file(str(Path(exported) / "model.safetensors"))
    assert torch.equal(reloaded["model.norm.weight"], state["model.norm.weight"])
    assert (exported / "tokenizer_config.json").is_file()
    assert export_checkpoint(step, cache_dir=tmp_path / "cache") == exported  # cached, built once
    assert [p.name for p in exported.parent.iterdir()] == [exported.name]  # no temporary folder left
    assert checkpoint_dirs(run_dir) == [step]


def test_export_keeps_the_policy_of_a_policy_with_critic(tmp_path, tiny_model_dir):
    run_dir = _run_dir(tmp_path, tiny_model_dir)
    step = _step(run_dir, 4)
    policy = {k: v * 2.0 for k, v in load_file(str(tiny_model_dir / "model.safetensors")).items()}
    state = {f"policy.{k}": v for k, v in policy.items()}
    state["critic.score.weight"] = torch.ones(1, 128)
    save_file(state, str(step / "model.safetensors"))
    exported = export_checkpoint(step, cache_dir=tmp_path / "cache")
    reloaded = load_file(str(exported / "model.safetensors"))
    assert not any(k.startswith(("policy.", "critic.")) for k in reloaded)
    assert torch.equal(reloaded["model.norm.weight"], policy["model.norm.weight"])


def test_export_needs_the_run_recipe(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    step = _step(run_dir, 1)
    shutil.copy(tiny_model_dir / "model.safetensors", step / "model.safetensors")
    with pytest.raises(CheckpointError, match="has no recipe.yaml naming the model architecture"):
        export_checkpoint(step, cache_dir=tmp_path / "cache")

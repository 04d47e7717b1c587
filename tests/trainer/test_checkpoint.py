"""Tests for rlvr.trainer.checkpoint: exporting a step checkpoint as an HF model folder; manifests and
the choice of the checkpoint a resume loads; what a resume may change."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from rlvr.config import RecipeError, dump_recipe, load_recipe
from rlvr.trainer.checkpoint import (
    RESUME_MAY_CHANGE,
    CheckpointError,
    checkpoint_dirs,
    choose_checkpoint,
    export_checkpoint,
    resume_changes,
    verify_checkpoint,
    write_manifest,
)
from rlvr.trainer.metrics import drop_rows_after

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = ROOT / "recipes/tiny/grpo_tiny_say_digit.yaml"


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


def _saved(run_dir: Path, step: int, manifest: bool = True) -> Path:
    folder = _step(run_dir, step)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (folder / "sub").mkdir()
    (folder / "sub/optimizer.bin").write_bytes(b"adam" * 100)
    if manifest:
        write_manifest(folder)
    return folder


def test_verify_checkpoint_names_the_damaged_file(tmp_path):
    step = _saved(tmp_path, 1)
    assert verify_checkpoint(step) is None
    weights = step / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[10] ^= 1  # same size, other content
    weights.write_bytes(bytes(data))
    assert verify_checkpoint(step, hashes=False) is None  # sizes only
    assert verify_checkpoint(step) == f"{weights}: content differs from the manifest (sha256 mismatch)"
    (step / "sub/optimizer.bin").write_bytes(b"adam")  # truncated: found by size, before any hash
    assert verify_checkpoint(step).startswith(f"{step / 'sub/optimizer.bin'}: 4 bytes, the manifest says 400")
    (step / "sub/optimizer.bin").write_bytes(b"adam" * 100)
    (step / "trainer_state.json").unlink()
    assert verify_checkpoint(step).startswith(f"{step / 'trainer_state.json'}: missing")
    (step / "manifest.json").write_text('{"files": ')
    assert "manifest.json: unreadable" in verify_checkpoint(step)


def test_large_files_are_checked_by_size_only(tmp_path, monkeypatch):
    """Above HASH_MAX_BYTES a file has no sha256 (saving and verifying stay cheap for large models); a
    truncated one is still found by its size, and a garbled manifest never raises on one process."""
    import rlvr.trainer.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "HASH_MAX_BYTES", 100)
    step = _saved(tmp_path, 1)
    listed = json.loads((step / "manifest.json").read_text())["files"]
    assert listed["sub/optimizer.bin"] == {"size": 400, "sha256": None}  # 400 bytes > 100
    assert listed["trainer_state.json"]["sha256"] is not None
    optimizer = step / "sub/optimizer.bin"
    optimizer.write_bytes(b"ADAM" * 100)  # same size, other content: not seen without a hash
    assert verify_checkpoint(step) is None
    optimizer.write_bytes(b"adam")
    assert verify_checkpoint(step).startswith(f"{optimizer}: 4 bytes, the manifest says 400")
    (step / "manifest.json").write_text('{"files": {"model.safetensors": 3}}')  # an entry of the wrong shape
    with pytest.raises(CheckpointError, match="manifest.json: cannot be checked"):
        choose_checkpoint(_OneProcess(), tmp_path)


class _OneProcess:
    is_main_process = True
    num_processes = 1

    def wait_for_everyone(self) -> None:
        pass


def test_choose_checkpoint_falls_back_to_the_newest_valid_one(tmp_path, caplog, capsys):
    assert choose_checkpoint(_OneProcess(), tmp_path) is None
    _saved(tmp_path, 1, manifest=False)  # written by an older rlvr: taken as it is, with a note
    _saved(tmp_path, 2)
    newest = _saved(tmp_path, 3)
    (newest / "sub/optimizer.bin").write_bytes(b"")
    choice = choose_checkpoint(_OneProcess(), tmp_path)
    assert choice.path == tmp_path / "checkpoints/step-000002"
    assert list(choice.skipped) == ["step-000003"]
    assert f"{newest / 'sub/optimizer.bin'}: 0 bytes" in caplog.text
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-000001", "step-000002"]
    assert (tmp_path / "checkpoints/step-000003.corrupt").is_dir()

    (tmp_path / "checkpoints/step-000002/model.safetensors").unlink()
    assert choose_checkpoint(_OneProcess(), tmp_path).path.name == "step-000001"
    assert "step-000001 has no manifest.json" in capsys.readouterr().out


def test_choose_checkpoint_refuses_when_every_checkpoint_is_damaged(tmp_path):
    step = _saved(tmp_path, 1)
    (step / "model.safetensors").write_bytes(b"x")
    with pytest.raises(
        CheckpointError, match=r"no valid checkpoint .*step-000001/model.safetensors: 1 bytes"
    ):
        choose_checkpoint(_OneProcess(), tmp_path)
    assert checkpoint_dirs(tmp_path) == [step]  # left in place for the user


def _earlier(tmp_path: Path, *overrides: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(dump_recipe(load_recipe(TINY_RECIPE, list(overrides), check=False)))
    return path


def test_resume_changes_allows_the_table_and_refuses_the_rest(tmp_path):
    earlier = _earlier(tmp_path)
    same = load_recipe(TINY_RECIPE, ["run.resume=true", "run.output_dir=elsewhere"], check=False)
    assert resume_changes(earlier, same) == {}
    allowed = ["run.steps=50", "train.lr=0.01", "train.warmup_steps=3", "eval.every=5", "eval.limit=8"]
    changed = resume_changes(earlier, load_recipe(TINY_RECIPE, allowed, check=False))
    assert changed == {
        "run.steps": (30, 50),
        "train.lr": (0.005, 0.01),
        "train.warmup_steps": (0, 3),
        "eval.every": (0, 5),
        "eval.limit": (64, 8),
    }
    for override, message in [
        (
            "train.micro_batch_size=16",
            "train.micro_batch_size changed 32 -> 16; a resumed run keeps its batch",
        ),
        ("model.dtype=bfloat16", "model.dtype changed float32 -> bfloat16; a resumed run keeps its model"),
        (
            "train.mixed_precision=bf16",
            "train.mixed_precision changed null -> bf16; a resumed run keeps its dtype",
        ),
        ("algorithm.policy_loss_kwargs={clip_eps_high: 0.3}", "algorithm.policy_loss_kwargs changed {} -> "),
        ("rollout.ead={tau_max: 1.5}", "rollout.ead changed null -> "),
        ("data.limit=3", "data.limit changed null -> 3; a resumed run keeps its data"),
    ]:
        with pytest.raises(RecipeError, match=re.escape(message)):
            resume_changes(earlier, load_recipe(TINY_RECIPE, [override], check=False))


def test_resume_policy_is_documented():
    text = (ROOT / "docs/troubleshooting.md").read_text()
    assert [key for key in RESUME_MAY_CHANGE if f"`{key}`" not in text] == []


def test_drop_rows_after_keeps_each_step_once(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "x": s}) for s in (1, 2, 3)]
    path.write_text("\n".join(rows) + '\n{"step": 4, "x"')  # and a line torn by a kill
    assert drop_rows_after(path, 2) == 2
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert drop_rows_after(path, 2) == 0
    assert drop_rows_after(tmp_path / "absent.jsonl", 2) == 0

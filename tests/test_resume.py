"""Resume: exact continuation, what a resume may change, a missing or damaged checkpoint, and metrics rows
logged after the last checkpoint (a kill between logging and saving). Real runs of the tiny recipe."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from launch import ROOT, TINY_RECIPE, metrics, run

from rlvr.config import RecipeError, load_recipe
from rlvr.trainer.checkpoint import CheckpointError, choose_checkpoint, verify_checkpoint

# Compared to the step: everything but wall-clock timings.
SKIP = ("time", "time/", "perf/")
FIXED = ["rollout.engine=hf", "run.save_every=2", "run.keep_last=1", "train.num_mini_batches=2"]


def command(out, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rlvr.train", str(TINY_RECIPE), f"run.output_dir={out}", *FIXED, *overrides]


def train(out, *overrides: str) -> list[dict]:
    run(command(out, *overrides))
    return metrics(out)


def refused(out, *overrides: str) -> str:
    """Run a resume that must be refused: exit code 2, one error on stderr, no traceback; returns stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        command(out, *overrides), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "error: " in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return proc.stderr


def resumes(out) -> list[dict]:
    return [json.loads(line) for line in (out / "resumes.jsonl").read_text().splitlines()]


class _OneProcess:
    is_main_process = True
    num_processes = 1

    def wait_for_everyone(self) -> None:
        pass


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(SKIP)}


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    """With a curriculum sampler: its choices depend on the restored per-prompt statistics."""
    curriculum = "sampler.name=learnability"
    full = train(tmp_path / "full", "run.steps=4", curriculum)
    first = train(tmp_path / "split", "run.steps=2", curriculum)
    # killed after logging step 3 but before its checkpoint was complete: the row must not stay
    with (tmp_path / "split/metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "time": 0.0, "reward/mean": -1.0}) + "\n")
    resumed = train(tmp_path / "split", "run.steps=4", "run.resume=true", curriculum)
    assert [r["step"] for r in first] == [1, 2]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]  # each step once, appended to the same file
    assert [comparable(r) for r in full[2:]] == [comparable(r) for r in resumed[-2:]]
    assert comparable(full[0]) == comparable(first[0])
    (record,) = resumes(tmp_path / "split")
    assert record["step"] == 2 and record["checkpoint"] == "step-000002"
    assert record["dropped_metrics_rows"] == 1
    assert record["changed"] == {"run.steps": {"old": 2, "new": 4}}
    # the checkpoint of step 2 was replaced by step 4's (keep_last=1), and the final model exists
    checkpoints = sorted(p.name for p in (tmp_path / "split/checkpoints").iterdir())
    assert checkpoints == ["step-000004"]
    assert verify_checkpoint(tmp_path / "split/checkpoints/step-000004") is None  # it has a manifest
    # the same prompts were drawn, with the same results: identical per-prompt statistics at step 4
    states = [
        json.loads((tmp_path / run / "checkpoints/step-000004/trainer_state.json").read_text())
        for run in ("full", "split")
    ]
    assert states[0]["prompt_stats"] == states[1]["prompt_stats"]
    assert states[0]["sampler"] == states[1]["sampler"] and states[0]["sampler"]["draws"] == 4
    assert 8 < len(states[0]["prompt_stats"]["index"]) <= 32  # 4 steps of 8 prompts, some drawn again
    # the first draw is uniform over the 200 prompts (all unseen); then learnability moves away from it
    assert resumed[0]["curriculum/entropy"] == pytest.approx(math.log(200), rel=1e-5)
    assert resumed[-1]["curriculum/entropy"] < resumed[0]["curriculum/entropy"]
    assert (tmp_path / "split/final/model.safetensors").is_file()


def test_resume_applies_a_new_lr_and_refuses_a_new_batch_layout_or_seed(tmp_path):
    out = tmp_path / "run"
    # nothing to resume yet: the run says so and starts at step 1
    proc = run(command(out, "run.steps=2", "run.resume=true"))
    assert "nothing to resume" in proc.stdout
    assert [r["step"] for r in metrics(out)] == [1, 2]
    recipe_before = (out / "recipe.yaml").read_text()

    error = refused(
        out,
        "run.steps=3",
        "run.resume=true",
        "train.prompts_per_step=16",
        "rollout.num_generations=4",
        "run.seed=1",
    )
    assert "train.prompts_per_step changed 8 -> 16" in error
    assert "rollout.num_generations changed 8 -> 4" in error
    assert "run.seed changed 0 -> 1" in error
    assert "train.lr" not in error
    assert (out / "recipe.yaml").read_text() == recipe_before  # a refused resume changes nothing
    assert [r["step"] for r in metrics(out)] == [1, 2]

    proc = run(command(out, "run.steps=3", "run.resume=true", "train.lr=0.05"))
    assert "train.lr changed 0.005 -> 0.05" in proc.stdout
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1]["train/lr"] == pytest.approx(5e-3)
    assert rows[2]["train/lr"] == pytest.approx(0.05)  # applied, not the checkpoint's rate
    (record,) = resumes(out)
    assert record["changed"]["train.lr"] == {"old": 0.005, "new": 0.05}
    assert yaml.safe_load((out / "recipe.yaml").read_text())["train"]["lr"] == 0.05  # what runs now


def test_resume_without_a_checkpoint_but_with_metrics_is_refused(tmp_path):
    from rlvr.trainer.run import prepare_run_dir  # in-process: the command-line refusal is tested above

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "time": 0.0}) + "\n")
    recipe = load_recipe(TINY_RECIPE, [f"run.output_dir={out}", "run.resume=true"], check=False)
    with pytest.raises(RecipeError, match="no complete checkpoint") as error:
        prepare_run_dir(out, recipe, is_main=True)
    assert str(out) in str(error.value) and "run.overwrite=true" in str(error.value)
    assert (out / "metrics.jsonl").read_text().count("\n") == 1 and not (out / "recipe.yaml").exists()


def test_damaged_newest_checkpoint_falls_back_and_all_damaged_is_refused(tmp_path):
    out, both = tmp_path / "run", tmp_path / "both"
    keep = ["run.save_every=1", "run.keep_last=2"]
    train(out, "run.steps=2", *keep)
    shutil.copytree(out, both)

    newest = out / "checkpoints/step-000002/model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # a copy cut short
    proc = run(command(out, "run.steps=2", "run.resume=true", *keep))
    assert "step-000002/model.safetensors: 1000 bytes" in proc.stderr  # the warning names the file
    assert "resumed from step 1" in proc.stdout
    assert [r["step"] for r in metrics(out)] == [1, 2]  # step 2's row was dropped and logged again
    assert (out / "checkpoints/step-000002.corrupt").is_dir()  # kept aside, never loaded or pruned
    assert verify_checkpoint(out / "checkpoints/step-000002") is None  # written again
    assert list(resumes(out)[0]["skipped_checkpoints"]) == ["step-000002"]

    state = both / "checkpoints/step-000002/trainer_state.json"
    state.write_text(state.read_text()[:-5])
    optimizer = both / "checkpoints/step-000001/optimizer.bin"
    data = bytearray(optimizer.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content: only the sha256 sees it
    optimizer.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="no valid checkpoint") as error:  # exit 2 via RecipeError
        choose_checkpoint(_OneProcess(), both)
    error = str(error.value)
    assert "step-000002/trainer_state.json" in error and "step-000001/optimizer.bin" in error
    assert sorted(p.name for p in (both / "checkpoints").iterdir()) == ["step-000001", "step-000002"]


def test_resume_on_another_number_of_processes_is_refused(tmp_path):
    import json

    import pytest

    from rlvr.config import RecipeError, load_recipe
    from rlvr.trainer.checkpoint import STATE_FILE, Choice
    from rlvr.trainer.run import _check_process_count

    step = tmp_path / "checkpoints/step-000002"
    step.mkdir(parents=True)
    (step / STATE_FILE).write_text(json.dumps({"step": 2, "num_processes": 2}))
    recipe = load_recipe(TINY_RECIPE)
    _check_process_count(recipe, Choice(step, {}), 2)  # the same count: fine
    with pytest.raises(RecipeError, match=r"step-000002 was written by 2 process\(es\), this launch has 1"):
        _check_process_count(recipe, Choice(step, {}), 1)
    (step / STATE_FILE).write_text(json.dumps({"step": 2}))  # written before the count was recorded
    _check_process_count(recipe, Choice(step, {}), 1)


def test_resume_on_changed_prompts_is_refused(tmp_path):
    """The sampler's state and the per-prompt statistics are keyed by prompt position: same data only."""
    data = tmp_path / "prompts.jsonl"
    shutil.copy(ROOT / "data/toy/say_digit.jsonl", data)
    out = tmp_path / "run"
    run(command(out, "run.steps=2", f"data.path={data}", "sampler.name=learnability"))
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same rows, another order
    error = refused(out, "run.steps=3", "run.resume=true", f"data.path={data}", "sampler.name=learnability")
    assert "run.resume: the prompts differ from those of step-000002" in error
    assert [r["step"] for r in metrics(out)] == [1, 2]

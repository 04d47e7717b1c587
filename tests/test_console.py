"""The console, the library log, tracker settings and the plots (rlvr.console, rlvr.plots, run.report_to)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlvr.config import RecipeError, load_recipe
from rlvr.console import console_line, first_last, library_output_to, read_metrics, say
from rlvr.plots import PlotError, figure_keys, matches, write_plots
from rlvr.trainer.metrics import tracker_config

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "data/toy/say_digit.jsonl")


def test_library_output_goes_to_the_log_and_rlvr_lines_to_the_console(tmp_path, capfd):
    """What native code and child processes write to fd 1/2 lands in the log; say() and rlvr's logger
    reach the console; everything is restored afterwards."""
    import logging

    log = tmp_path / "logs/train.log"
    with library_output_to(log):
        print("python print from a library")
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'child stderr\\n')"], check=True)
        say("step    1 | reward 0.5")
        logging.getLogger("rlvr.test").warning("a warning that matters")
        logging.getLogger("vllm.engine").warning("engine noise")
    say("after")
    out, err = capfd.readouterr()
    assert "step    1 | reward 0.5" in out and "after" in out
    assert "a warning that matters" in err  # rlvr log records on stderr, as without the redirect
    assert "python print" not in out + err and "child stderr" not in out + err and "engine noise" not in out
    text = log.read_text()
    assert "python print from a library" in text and "child stderr" in text


def test_an_exception_restores_the_console_and_points_to_the_log(tmp_path, capfd):
    log = tmp_path / "logs/train.log"
    with pytest.raises(RuntimeError), library_output_to(log):
        print("noise")
        raise RuntimeError("boom")
    print("visible again")
    out, err = capfd.readouterr()
    assert f"(library output of this process: {log})" in err and "visible again" in out
    assert "noise" not in out + err


def test_console_line_and_first_last():
    line = console_line(
        3, {"reward/mean": 0.5, "actor/entropy": 1.25, "time/step_s": 20.0, "eval/gsm8k/pass@1": 0.4}
    )
    assert line == "step    3 | reward 0.5 | ent 1.25 | step_s 20 | gsm8k/pass@1 0.4"
    rows = [{"step": s, "reward/mean": s / 10} for s in range(1, 11)]
    # means of steps 1-5 (0.3) and 6-10 (0.8)
    assert first_last(rows) == "reward/mean: 0.3 over steps 1-5 -> 0.8 over steps 6-10"
    assert first_last([{"step": 1, "x": 1.0}]) == ""


def test_read_metrics_keeps_the_last_row_per_step_and_skips_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 2, "a": 3}\n{"step": 3, "a"')
    assert read_metrics(path) == [{"step": 1, "a": 1}, {"step": 2, "a": 3}]


def test_report_to_is_checked_when_the_recipe_loads(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"data:\n  path: {DATA}\n")
    assert load_recipe(path).run.report_to == ["tensorboard"]
    assert load_recipe(path, ["run.report_to=none"]).run.report_to == []
    assert load_recipe(path, ["run.report_to=tensorboard"]).run.report_to == ["tensorboard"]
    with pytest.raises(
        RecipeError,
        match=r"run.report_to: .*unknown tracker 'tensorbord'; accelerate knows: aim, all, clearml, comet_ml",
    ):
        load_recipe(path, ["run.report_to=[tensorbord]"])
    with pytest.raises(
        RecipeError, match=r"run.report_to: .*tracker 'swanlab' is not installed \(pip install swanlab\)"
    ):
        load_recipe(path, ["run.report_to=[swanlab]"])


def test_tracker_config_is_the_flat_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"data:\n  path: {DATA}\ntrain:\n  lr: 0.001\n")
    config = tracker_config(load_recipe(path))
    assert config["train.lr"] == 0.001 and config["data.path"] == DATA
    assert config["run.report_to"] == '["tensorboard"]'  # a list as JSON text
    assert config["model.lora"] == "null"
    assert all(isinstance(v, (bool, int, float, str)) for v in config.values())


def _write_run(run_dir: Path, rows: list[dict]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def _rows(scale: float) -> list[dict]:
    rows = []
    for step in range(1, 9):
        row = {
            "step": step,
            "time": 1.0,
            "reward/mean": scale * step / 8,
            "reward/accuracy": scale * step / 8,
            "reward/math/mean": scale * step / 8,
            "response/length_mean": 20.0 + step,
            "actor/entropy": 2.0 - step / 8,
            "time/step_s": 30.0,
            "time/rollout_s": 10.0,
        }
        if step % 4 == 0:
            row["eval/arithmetic/pass@1"] = scale * step / 10
            row["eval/arithmetic/level/3/pass@1"] = 0.1  # a breakdown: not a panel of its own
        rows.append(row)
    return rows


def test_plots_overlay_runs_and_skip_figures_without_metrics(tmp_path):
    import matplotlib.image

    a = _write_run(tmp_path / "grpo", _rows(1.0))
    b = _write_run(tmp_path / "rpo", _rows(0.5))
    written = write_plots([a, b], tmp_path / "plots")
    assert sorted(p.name for p in written) == [
        "entropy_kl.png",
        "eval.png",
        "length.png",
        "reward.png",
        "time.png",
    ]
    for path in written:
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05  # not a blank canvas
    runs = [read_metrics(a / "metrics.jsonl")]
    assert figure_keys(runs, ("reward/mean", "reward/accuracy", "reward/*/mean")) == [
        "reward/mean",
        "reward/accuracy",
        "reward/math/mean",
    ]
    assert figure_keys(runs, ("eval/*/pass@*",)) == ["eval/arithmetic/pass@1"]
    assert matches("eval/x/pass@4", "eval/*/pass@*") and not matches("eval/x/level/3/pass@1", "eval/*/pass@*")


def test_rlvr_plot_command(tmp_path):
    a = _write_run(tmp_path / "a", _rows(1.0))
    empty = tmp_path / "empty"
    empty.mkdir()
    env_python = [sys.executable, "-m", "rlvr.cli"]
    proc = subprocess.run([*env_python, "plot", str(a)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert (a / "plots/reward.png").stat().st_size > 10_000
    assert str(a / "plots/reward.png") in proc.stdout.splitlines()
    proc = subprocess.run([*env_python, "plot", str(a), str(empty)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {empty}: no metrics.jsonl rows to plot (is it a run directory?)"
    with pytest.raises(PlotError):
        write_plots([empty], tmp_path / "x")


@pytest.mark.vllm
def test_a_tiny_run_shows_only_its_own_lines_and_writes_trackers_and_plots(tmp_path):
    """A 3-step vLLM run whose engine computes in bf16 while the policy is fp32 (the case that printed
    ~130 weight-reload warnings per step): the console holds rlvr's lines only; vLLM's output is in
    logs/train.log, without reload warnings at the syncs (the weights are cast to the engine's dtype);
    tensorboard gets every metric through accelerate, with the recipe as hparams; the plots are drawn."""
    from launch import TINY_RECIPE, metrics, run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlvr.train", str(TINY_RECIPE), f"run.output_dir={out}", "run.steps=3"]
    proc = run([*cmd, "run.log_samples=0", "run.save_final=false", "rollout.dtype=bfloat16"])
    lines = (proc.stdout + proc.stderr).splitlines()
    assert [line[:9] for line in lines if line.startswith("step")] == ["step    1", "step    2", "step    3"]
    assert lines[0].startswith("rlvr: 3 steps, 1 process(es) on cpu, engine vllm, grpo/grpo")
    assert any(line.startswith("done: 3 steps logged in") for line in lines)
    assert any(line.startswith("reward/mean: ") and " over steps 1-1 -> " in line for line in lines)
    assert f"plots:   {out / 'plots'} (" in proc.stdout
    own = (
        "rlvr: ",
        "step ",
        "done: ",
        "reward/mean: ",
        "metrics: ",
        "plots: ",
        "trackers: ",
        "library output: ",
        "INFO rlvr.",  # rlvr's own log records
        "WARNING rlvr",  # rlvr's warnings that matter (e.g. bf16 emulated on a CPU without native bf16)
    )
    assert [line for line in lines if not line.startswith(own)] == []
    library = (out / "logs/train.log").read_text()
    assert "EngineCore" in library
    # the engine's first load of the fp32 files casts (and says so, once); the 3 syncs send bf16 tensors
    syncs = library[library.index("Reloading weights inplace") :]
    assert syncs.count("Reloading and processing weights took") == 3
    assert "Attempted to load weight" not in syncs

    rows = metrics(out)
    events = EventAccumulator(str(out / "trackers/tiny-say-digit"))
    events.Reload()
    logged = events.Scalars("reward/mean")
    assert [e.step for e in logged] == [1, 2, 3]
    assert [round(e.value, 4) for e in logged] == [round(r["reward/mean"], 4) for r in rows]
    hparams = list((out / "trackers/tiny-say-digit").glob("*/hparams.yml"))
    assert len(hparams) == 1 and "train.lr: 0.005" in hparams[0].read_text()
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"reward.png", "length.png", "time.png"}

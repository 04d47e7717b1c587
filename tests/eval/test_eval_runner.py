"""``rlvr eval``: benchmark specs, the runner (resume, skips, k > n), reports, compare, checkpoints.

Most tests drive the runner with a scripted engine (answers chosen per problem), so the metrics have known
values and no model is needed; one test runs the whole command on the tiny model with the transformers
engine, and one exports a training checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlvr.eval import report
from rlvr.eval.benchmarks import SpecError, known_specs, load_problems, load_spec
from rlvr.eval.runner import (
    EvalError,
    evaluate,
    resolve_checkpoint,
    resolve_sampling,
    run_benchmark,
    settings_of,
)
from rlvr.rollout import Completion

MATH_ROWS = [
    {"q": "What is 2 + 3?", "a": "5", "topic": "add"},
    {"q": "What is 4 + 4?", "a": "8", "topic": "add"},
    {"q": "What is 3 * 3?", "a": "9", "topic": "mul"},
    {"q": "What is 6 * 7?", "a": 42, "topic": "mul"},
    {"q": "What is 10 - 1?", "a": "9", "topic": "sub"},
    {"q": "What is 9 - 5?", "a": "4", "topic": "sub"},
]


class ScriptedEngine:
    """Answers each problem with ``answer(example, sample_index)``; records what it was asked."""

    def __init__(self, problems, answer, fail_on_call: int | None = None):
        self.examples = {tuple(p.prompt_ids): p.example for p in problems.problems}
        self.answer = answer
        self.calls: list[int] = []  # prompts per generate call
        self.fail_on_call = fail_on_call

    def generate(self, prompt_ids, sampling):
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt  # an interruption in the middle of a benchmark
        self.calls.append(len(prompt_ids))
        out = []
        for i, ids in enumerate(prompt_ids):
            for j in range(sampling.n):
                text = self.answer(self.examples[tuple(ids)], j)
                out.append(Completion(i, [5] * len(text), [0.0] * len(text), text, "stop"))
        return out

    def close(self):
        pass


def right(example, j):
    return f"The answer is \\boxed{{{example['a']}}}."


def write_spec(tmp_path: Path, rows=MATH_ROWS, **extra) -> Path:
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "name": "toy",
        "data": {"path": str(data), "prompt_field": "q", "answer_field": "a"},
        "prompt_template": "{prompt}\nPut the answer in \\boxed{{}}.",
        "verifier": {"name": "math"},
        "sampling": {"n": 4, "temperature": 1.0, "max_tokens": 16},
        "breakdown": ["topic"],
        **extra,
    }
    path = tmp_path / "toy.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def run(spec, problems, engine, out=None, **kwargs):
    sampling = kwargs.pop("sampling", spec.sampling)
    settings = settings_of(spec, sampling, 0, "scripted", "scripted") if out else None
    return run_benchmark(
        engine, spec, problems, sampling=sampling, out_dir=out, settings=settings, num_workers=0, **kwargs
    )


# ------------------------------------------------------------------------------------------------ specs


@pytest.mark.parametrize("name", known_specs())
def test_shipped_specs_load_with_their_data(name, tiny_tokenizer):
    import rewards  # noqa: F401  (registers the built-in verifiers)
    from rlvr.scoring import VERIFIERS

    expected_rows = {
        "gsm8k": 1319,
        "math500": 500,
        "minerva_math": 272,
        "aime24": 30,
        "amc23": 40,
        "humaneval": 164,
        "mbpp": 427,
        "arithmetic": 200,
        "arithmetic_levels": 180,
    }
    spec = load_spec(name, check=False)
    assert spec.verifier.name in VERIFIERS
    spec = load_spec(name)
    problems = load_problems(spec, tiny_tokenizer)
    assert problems.skipped == {}
    assert len(problems) == expected_rows[name]
    assert len({p.id for p in problems.problems}) == len(problems)
    for field in spec.breakdown:
        assert all(p.groups[field] not in ("", "None") for p in problems.problems)


def test_spec_errors_name_the_file_and_key(tmp_path):
    path = write_spec(tmp_path)
    with pytest.raises(SpecError, match=r"toy\.yaml: data\.path: file not found: nope\.jsonl"):
        load_spec(path, ["data.path=nope.jsonl"])
    with pytest.raises(SpecError, match=r"toy\.yaml: verifier\.name: unknown verifier 'nonsense'"):
        load_spec(path, ["verifier.name=nonsense"])
    with pytest.raises(SpecError, match=r"toy\.yaml:\n  sampling\.tempreature: unknown key"):
        load_spec(path, ["sampling.tempreature=0.5"])
    with pytest.raises(SpecError, match=r"sampling: .*greedy decoding"):
        load_spec(path, ["sampling.temperature=0"])
    with pytest.raises(SpecError, match="unknown benchmark 'gsm9k'"):
        load_spec("gsm9k")
    with pytest.raises(EvalError, match="--greedy gives n identical samples"):
        resolve_sampling(load_spec(path), n=4, greedy=True)
    assert resolve_sampling(load_spec(path), greedy=True).n == 1


def test_rows_without_answer_or_test_field_are_counted_skips(tmp_path, tiny_tokenizer):
    rows = [*MATH_ROWS[:3], {"q": "What is 1 + 1?", "topic": "add"}, {"q": "x", "a": "", "topic": "add"}]
    spec = load_spec(write_spec(tmp_path, rows))
    problems = load_problems(spec, tiny_tokenizer)
    assert [p.id for p in problems.problems] == ["0", "1", "2"]
    assert problems.skipped == {"missing_answer": 1, "empty_answer": 1}
    summary = run(spec, problems, ScriptedEngine(problems, right))
    assert summary["rows"]["skipped"] == {"missing_answer": 1, "empty_answer": 1}
    assert "row 3 (missing_answer" in summary["rows"]["skipped_examples"][0]
    assert "missing_answer: 1" in report.markdown_table({"toy": summary})
    # code-style benchmark: no answer field, but required test fields
    code = load_spec(
        write_spec(tmp_path, [{"q": "f", "tests": ["assert 1"]}, {"q": "g", "tests": []}]),
        {"data": {"answer_field": None, "required_fields": ["tests"]}, "breakdown": []},
    )
    problems = load_problems(code, tiny_tokenizer)
    assert len(problems) == 1 and problems.skipped == {"missing_tests": 1}
    assert "answer" not in problems.problems[0].example
    with pytest.raises(SpecError, match=r"breakdown\[0\]: 'subject' is not a field"):
        load_problems(load_spec(write_spec(tmp_path), {"breakdown": ["subject"]}), tiny_tokenizer)


# ------------------------------------------------------------------------------------------- the runner


def test_metrics_breakdown_and_k_greater_than_n(tmp_path, tiny_tokenizer):
    spec = load_spec(write_spec(tmp_path))
    problems = load_problems(spec, tiny_tokenizer)

    def answer(example, j):  # "add" always right; "mul" right on samples 0 and 1; "sub" never
        ok = example["topic"] == "add" or (example["topic"] == "mul" and j < 2)
        return right(example, j) if ok else "I think it is \\boxed{1000}."

    summary = run(spec, problems, ScriptedEngine(problems, answer), ks=[1, 2, 8])
    m = summary["metrics"]
    assert m["pass@1"]["value"] == pytest.approx((2 * 1 + 2 * 0.5) / 6)
    assert m["pass@2"]["value"] == pytest.approx((2 * 1 + 2 * (1 - 1 / 6)) / 6)  # 1 - C(2,2)/C(4,2)
    assert m["avg@n"]["value"] == pytest.approx(0.5)
    assert m["maj@2"]["value"] == pytest.approx(4 / 6)  # first two samples agree and are right for mul
    assert m["pass@1"]["ci_low"] <= m["pass@1"]["value"] <= m["pass@1"]["ci_high"]
    assert "pass@8" not in m and "maj@8" not in m
    assert "k=8 > n=4" in summary["skipped_metrics"]["pass@8"]
    by_topic = summary["breakdown"]["topic"]
    assert by_topic["add"]["metrics"]["pass@1"]["value"] == 1.0
    assert by_topic["sub"]["metrics"]["pass@2"]["value"] == 0.0
    assert by_topic["mul"]["num_problems"] == 2
    assert summary["response"]["truncation_rate"] == 0.0
    assert "pass@8 not computed: k=8 > n=4" in report.markdown_table({"toy": summary})


def test_interrupted_run_resumes_without_regenerating(tmp_path, tiny_tokenizer):
    spec = load_spec(write_spec(tmp_path))
    out = tmp_path / "results" / "toy"
    first = load_problems(spec, tiny_tokenizer, limit=4)
    engine = ScriptedEngine(first, right)
    summary = run(spec, first, engine, out=out, chunk_size=2)
    assert engine.calls == [2, 2] and summary["run"]["generated_problems"] == 4
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 4
    record = json.loads(lines[0])
    assert {"prompt", "completion", "extracted", "correct", "reason", "finish_reason"} <= set(record)
    assert record["extracted"] == "5" and record["correct"] is True

    # limit 6: only the two new problems are generated
    more = load_problems(spec, tiny_tokenizer, limit=6)
    engine = ScriptedEngine(more, right)
    summary = run(spec, more, engine, out=out, chunk_size=2)
    assert engine.calls == [2]
    assert summary["run"] == {**summary["run"], "generated_problems": 2, "resumed_problems": 4}
    assert summary["num_problems"] == 6 and summary["metrics"]["pass@4"]["value"] == 1.0

    # killed mid-write: a half-written line and a problem with only some samples are dropped and redone
    (out / "samples.jsonl").unlink()
    with pytest.raises(KeyboardInterrupt):
        run(spec, more, ScriptedEngine(more, right, fail_on_call=1), out=out, chunk_size=2)
    with (out / "samples.jsonl").open("a") as f:
        f.write(json.dumps({**json.loads(lines[0]), "problem_id": "2", "row": 2}) + "\n")
        f.write('{"problem_id": "3", "sam')
    engine = ScriptedEngine(more, right)
    summary = run(spec, more, engine, out=out, chunk_size=2)
    assert engine.calls == [2, 2] and summary["run"]["resumed_problems"] == 2
    assert len((out / "samples.jsonl").read_text().splitlines()) == 6 * 4

    # other sampling settings never mix with earlier samples
    with pytest.raises(EvalError, match=r"other settings \(sampling\.temperature: 1\.0 -> 0\.7\)"):
        run(spec, more, engine, out=out, sampling=resolve_sampling(spec, temperature=0.7))
    summary = run(spec, more, engine, out=out, sampling=resolve_sampling(spec, n=2), overwrite=True)
    assert summary["run"]["generated_problems"] == 6 and summary["n"] == 2


def test_compare_reports_paired_difference(tmp_path, tiny_tokenizer):
    rows = [{"q": f"What is {i} + 1?", "a": str(i + 1), "topic": "add"} for i in range(30)]
    spec = load_spec(write_spec(tmp_path, rows))
    problems = load_problems(spec, tiny_tokenizer)
    wrong_half = ScriptedEngine(problems, lambda ex, j: right(ex, j) if int(ex["a"]) % 2 else "\\boxed{0}")
    for name, engine in (("a", wrong_half), ("b", ScriptedEngine(problems, right))):
        summary = run(spec, problems, engine, out=tmp_path / name / "toy", ks=[1, 2])
        report.write_benchmark(tmp_path / name / "toy", summary)
    text, data = report.compare(tmp_path / "a", tmp_path / "b")
    assert data["toy"]["pass@1"]["a"]["value"] == 0.5 and data["toy"]["pass@1"]["b"]["value"] == 1.0
    assert data["toy"]["pass@1"]["diff"]["mean_diff"] == 0.5
    assert data["toy"]["pass@1"]["diff"]["significant"]
    assert "| toy | pass@1 | 30 | 50.0 [" in text and "+50.0 [" in text and "yes, B better" in text
    same, data = report.compare(tmp_path / "b", tmp_path / "b")
    assert not data["toy"]["avg@n"]["diff"]["significant"] and "| no |" in same


def test_compare_runs_over_seeds(tmp_path, tiny_tokenizer):
    """Two pairs of runs, each pair clearly apart (+50 and +33.3 points); over two pairs the t interval
    (t_{0.975, 1} = 12.706) does not exclude 0."""
    from rlvr.cli import main

    rows = [{"q": f"What is {i} + 1?", "a": str(i + 1), "topic": "add"} for i in range(30)]
    spec = load_spec(write_spec(tmp_path, rows))
    problems = load_problems(spec, tiny_tokenizer)
    wrong = {"a1": lambda i: i % 2 == 0, "a2": lambda i: i % 3 == 0, "b1": lambda i: False}
    wrong["b2"] = wrong["b1"]
    for name, is_wrong in wrong.items():
        engine = ScriptedEngine(
            problems, lambda ex, j, w=is_wrong: "\\boxed{0}" if w(int(ex["a"])) else right(ex, j)
        )
        summary = run(spec, problems, engine, out=tmp_path / name / "toy", ks=[1])
        report.write_benchmark(tmp_path / name / "toy", summary)
    a, b = [tmp_path / "a1", tmp_path / "a2"], [tmp_path / "b1", tmp_path / "b2"]
    text, data = report.compare_runs(a, b)
    assert [pair["toy"]["pass@1"]["diff"]["mean_diff"] for pair in data["pairs"]] == pytest.approx(
        [0.5, 1 / 3]
    )
    assert all(pair["toy"]["pass@1"]["diff"]["significant"] for pair in data["pairs"])
    over = data["over_runs"]["toy"]["pass@1"]
    assert over["a"] == pytest.approx(7 / 12) and over["b"] == 1.0 and over["runs"] == 2
    half = 12.706205 * (1 / 6) / 2**0.5 / 2**0.5  # sd = |0.5 - 1/3| / sqrt(2), se = sd / sqrt(2)
    assert (over["ci_low"], over["ci_high"]) == pytest.approx((5 / 12 - half, 5 / 12 + half), abs=1e-6)
    assert not over["significant"]
    assert "| toy | pass@1 | 2 | 30 | 66.7 | 100.0 | +33.3 [" in text
    assert "| toy | pass@1 | 2 | 58.3 | 100.0 | +41.7 [-64.2, +147.6] | 11.8 | no |" in text
    # the command: comma-separated lists paired by position; unequal lists are an error
    pairs = [",".join(map(str, side)) for side in (a, b)]
    assert main(["eval", "--compare", *pairs]) == 0
    assert main(["eval", "--compare", pairs[0], str(b[0])]) == 2
    with pytest.raises(ValueError, match="at least 2 pairs"):
        report.compare_runs(a[:1], b[:1])


def test_evaluate_for_training_reuses_the_engine(tmp_path, tiny_tokenizer):
    spec = load_spec(write_spec(tmp_path))
    problems = load_problems(spec, tiny_tokenizer)
    engine = ScriptedEngine(problems, right)
    metrics = evaluate(engine, tiny_tokenizer, spec, limit=3, n=2, num_workers=0)
    assert engine.calls == [3]
    assert metrics["eval/toy/pass@1"] == 1.0 and metrics["eval/toy/avg@n"] == 1.0
    overall = {"pass@1", "pass@2", "maj@2", "avg@n"}
    topics = {problem.groups["topic"] for problem in problems.problems[:3]}
    assert set(metrics) == {
        *(f"eval/toy/{name}" for name in overall),
        "eval/toy/response_tokens",
        "eval/toy/truncated_frac",
        # every metric per value of the spec's breakdown field
        *(f"eval/toy/topic/{topic}/{name}" for topic in topics for name in overall),
    }
    assert len(topics) == 2 and all(metrics[f"eval/toy/topic/{t}/pass@1"] == 1.0 for t in topics)


def test_humaneval_spec_runs_through_the_code_verifier(tiny_tokenizer):
    import rewards  # noqa: F401
    from rlvr.scoring import VERIFIERS

    if "code" not in VERIFIERS:
        pytest.skip("the code verifier is not in this checkout")
    spec = load_spec("humaneval")
    problems = load_problems(spec, tiny_tokenizer, limit=2)

    def canonical(example, j):  # a chat model's answer: the whole function in a fenced block
        return f"Here it is:\n```python\n{example['prompt']}{example['canonical_solution']}```"

    summary = run(spec, problems, ScriptedEngine(problems, canonical))
    assert summary["metrics"]["pass@1"]["value"] == 1.0, summary
    assert "maj@2" not in summary["metrics"]


# ----------------------------------------------------------------------------------- models and the CLI


def test_checkpoint_resolution(tmp_path, tiny_model_dir):
    """What resolve_checkpoint understands a path as; the export itself: tests/trainer/test_checkpoint.py."""
    import shutil

    import yaml
    from safetensors.torch import load_file, save_file

    assert resolve_checkpoint(tiny_model_dir)[0] == str(Path(tiny_model_dir).resolve())
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run_dir / "final")
    assert resolve_checkpoint(run_dir)[0] == str(run_dir / "final")
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_model_dir)}}))
    step = run_dir / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    with pytest.raises(EvalError, match="not an HF model folder, and it holds no model weights"):
        resolve_checkpoint(step)
    state = {k: v + 1.0 for k, v in load_file(str(tiny_model_dir / "model.safetensors")).items()}
    save_file(state, str(step / "model.safetensors"))
    exported, note = resolve_checkpoint(step, cache_dir=tmp_path / "cache")
    assert "training checkpoint" in note
    assert (Path(exported) / "config.json").is_file()
    assert resolve_checkpoint(run_dir, cache_dir=tmp_path / "cache")[0] == str(run_dir / "final")
    shutil.rmtree(run_dir / "final")  # a run without final/: its newest complete checkpoint
    model, note = resolve_checkpoint(run_dir, cache_dir=tmp_path / "cache")
    assert model == exported and "newest checkpoint step-000002" in note
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(EvalError, match="has a config.json but no model weights"):
        resolve_checkpoint(empty)


def test_cli_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir):
    from rlvr.cli import main

    out = tmp_path / "results"
    args = ["eval", str(tiny_model_dir), "--benchmarks", "gsm8k", "--engine", "hf", "--limit", "6"]
    args += ["--n", "2", "--temperature", "1.0", "--max-tokens", "8", "--k", "1,2,4", "--out", str(out)]
    assert main([*args, "--workers", "1"]) == 0
    for name in ("summary.json", "results.md", "pass_at_k.png", "gsm8k/samples.jsonl", "gsm8k/summary.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "gsm8k" / "summary.json").read_text())
    # one of the first 6 prompts does not fit the tiny model's 512 positions: a reported skip
    assert summary["rows"] == {**summary["rows"], "read": 6, "skipped": {"too_long": 1}}
    assert summary["num_problems"] == 5 and summary["num_samples"] == 10
    assert summary["response"]["mean_tokens"] <= 8 and 0 <= summary["metrics"]["pass@2"]["value"] <= 1
    assert "pass@4" in summary["skipped_metrics"]
    assert "| gsm8k | 5 |" in (out / "results.md").read_text()
    assert (out / "pass_at_k.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "logs/eval.log").read_text().startswith("=== ")  # the engine's output went there
    # the same command again finds everything done
    assert main([*args, "--workers", "0"]) == 0
    assert json.loads((out / "gsm8k" / "summary.json").read_text())["run"]["generated_problems"] == 0
    assert main(["eval", "--compare", str(out), str(out)]) == 0
    assert main(["eval", str(tmp_path / "missing"), "--benchmarks", "gsm8k"]) == 2

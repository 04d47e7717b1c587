"""Tests of the verifier plug-in API and the Scorer (real worker processes, real timeouts and crashes)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlvr.scoring import (
    VERIFIERS,
    FailureTally,
    RewardResult,
    RewardSpec,
    ScoreBatch,
    Scorer,
    ScoringError,
    VerifierFailure,
    VerifierSpecError,
    coerce_result,
    resolve_verifier,
    short_name,
)

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
FIXTURE = "tests/fixtures/custom_verifier.py"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative specs below are written relative to the repository root."""
    monkeypatch.chdir(REPO_ROOT)


@pytest.fixture(scope="module")
def chaos_scorer():
    """Two real worker processes running tests/fixtures/custom_verifier.py:chaos with a 1 s timeout."""
    with Scorer(
        [RewardSpec(str(REPO_ROOT / FIXTURE) + ":chaos")], num_workers=2, timeout_s=1.0, failure_score=-1.0
    ) as scorer:
        yield scorer


# ---------------------------------------------------------------------------------------------------------
# Spec resolution
# ---------------------------------------------------------------------------------------------------------


def test_registered_name_resolves_to_builtin_math():
    import rewards.math

    assert resolve_verifier("math") is rewards.math.math_verifier
    assert "math" in VERIFIERS


def test_file_spec_relative_to_cwd_then_base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fn = resolve_verifier(f"{FIXTURE}:keyword")
    assert fn("say yes", {}, word="yes").score == 1.0
    monkeypatch.chdir(tmp_path)  # the relative path no longer exists from here ...
    # ... but it does under base_dir
    again = resolve_verifier("fixtures/custom_verifier.py:keyword", base_dir=TESTS_DIR)
    assert again is fn  # a file is loaded once per process


def test_module_spec(monkeypatch: pytest.MonkeyPatch):
    import rewards.math

    assert resolve_verifier("rewards.math:math_verifier") is rewards.math.math_verifier
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    fn = resolve_verifier("tests.fixtures.custom_verifier:length_fraction")
    assert fn("abcde", {}, max_len=10) == 0.5


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nope", r"unknown verifier 'nope'; known names: .*math"),
        ("tests/fixtures/missing.py:f", r"'tests/fixtures/missing.py:f': file not found"),
        (f"{FIXTURE}:no_such_fn", r"has no function 'no_such_fn'; callables defined there: .*keyword"),
        (f"{FIXTURE}:NOT_A_FUNCTION", r"'NOT_A_FUNCTION' is a int, not a callable"),
        ("no_such_pkg.mod:fn", r"cannot import module 'no_such_pkg.mod'"),
        (":fn", r"expected 'package.module:function' or 'path/to/file.py:function'"),
        ("   ", r"non-empty string"),
    ],
)
def test_bad_specs_give_clear_errors(spec: str, expected: str):
    with pytest.raises(VerifierSpecError, match=expected):
        resolve_verifier(spec)


def test_bad_spec_fails_when_scorer_is_built():
    with pytest.raises(VerifierSpecError, match="file not found"):
        Scorer([RewardSpec("nowhere.py:f")], num_workers=1)


def test_short_names():
    assert short_name("math") == "math"
    assert short_name("pkg.mod:fn") == "fn"
    assert short_name("dir/file.py:fn") == "fn"
    scorer = Scorer([RewardSpec(f"{FIXTURE}:exact"), RewardSpec(f"{FIXTURE}:exact")], num_workers=0)
    assert scorer.names == ["exact", "exact_2"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, (1.0, {}, None)),
        (True, (1.0, {}, None)),
        (RewardResult(0.25, {"a": 1}), (0.25, {"a": 1}, None)),
        (None, (None, {}, "returned None; expected a float or RewardResult")),
        ("abc", (None, {}, "returned str 'abc'; expected a float or RewardResult")),
        (float("-inf"), (None, {}, "returned non-finite score -inf")),
        (-1e6, (-1e6, {}, None)),  # the largest magnitude that passes (rlvr.scoring.MAX_ABS_SCORE)
        (1e300, (None, {}, "returned score 1e+300 beyond +-1e+06 (rlvr.scoring.api.MAX_ABS_SCORE)")),
        (
            RewardResult(-2e6),
            (None, {}, "returned score -2e+06 beyond +-1e+06 (rlvr.scoring.api.MAX_ABS_SCORE)"),
        ),
    ],
)
def test_coerce_result(value: object, expected: tuple):
    assert coerce_result(value) == expected


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------

TWO_REWARDS = [
    RewardSpec(f"{FIXTURE}:keyword", weight=0.5, kwargs={"word": "yes", "bonus": 2.0}),
    RewardSpec(f"{FIXTURE}:length_fraction", weight=2.0, kwargs={"max_len": 10}),
]
COMPLETIONS = ["yes", "no yes!!!!!", "nope"]
# keyword: 2, 2, 0; length_fraction: 3/10, min(11, 10)/10, 4/10
# total = 0.5 * keyword + 2 * length: 1.0 + 0.6, 1.0 + 2.0, 0 + 0.8
EXPECTED_TOTAL = [1.6, 3.0, 0.8]
NO_FAILURES = {
    "reward/failures": 0.0,
    "reward/failures/timeout": 0.0,
    "reward/failures/exception": 0.0,
    "reward/failures/exit": 0.0,
    "reward/failures/bad_value": 0.0,
}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_weighted_sum_of_two_rewards(num_workers: int):
    with Scorer(TWO_REWARDS, num_workers=num_workers) as scorer:
        batch = scorer.score(COMPLETIONS, [{}, {}, {}])
    assert isinstance(batch, ScoreBatch)
    assert batch.scores == pytest.approx(EXPECTED_TOTAL)
    assert batch.per_reward == {
        "keyword": [2.0, 2.0, 0.0],
        "length_fraction": pytest.approx([0.3, 1.0, 0.4]),
    }
    assert batch.infos[0] == {"keyword": {"word": "yes", "hit": True}, "length_fraction": {}}
    assert batch.infos[2]["keyword"] == {"word": "yes", "hit": False}
    assert batch.metrics() == {
        "reward/keyword/mean": pytest.approx(4 / 3),
        "reward/length_fraction/mean": pytest.approx(1.7 / 3),
        **NO_FAILURES,
    }


@pytest.mark.parametrize("num_workers", [0, 2])
def test_rewards_routed_by_a_dataset_column(num_workers: int):
    """keyword scores only task=chat rows, length_fraction only task in {code, math}; others get no term."""
    keyword, length = TWO_REWARDS
    routed = [
        RewardSpec(keyword.name, keyword.weight, keyword.kwargs, route={"task": ["chat"]}),
        RewardSpec(length.name, length.weight, length.kwargs, route={"task": ["code", "math"]}),
    ]
    examples = [{"task": "chat"}, {"task": "code"}, {"task": "other"}]
    with Scorer(routed, num_workers=num_workers) as scorer:
        batch = scorer.score(COMPLETIONS, examples)
    # row 0: 0.5 * keyword("yes") = 0.5 * 2 = 1.0; row 1: 2 * length(11 chars -> 1.0) = 2.0; row 2: nothing
    assert batch.scores == pytest.approx([1.0, 2.0, 0.0])
    assert batch.per_reward == {"keyword": [2.0, None, None], "length_fraction": [None, 1.0, None]}
    assert batch.infos[2] == {}
    assert batch.metrics() == {
        "reward/keyword/mean": 2.0,
        "reward/length_fraction/mean": 1.0,
        **NO_FAILURES,
    }


def test_custom_file_verifier_with_kwargs_resolved_against_base_dir(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # workers must not depend on the current directory
    spec = RewardSpec("fixtures/custom_verifier.py:keyword", kwargs={"word": "cat", "bonus": 3.0})
    with Scorer([spec], num_workers=1, base_dir=TESTS_DIR) as scorer:
        batch = scorer.score(["a cat", "a dog"], [{}, {}])
    assert batch.scores == [3.0, 0.0]
    assert batch.infos[1] == {"keyword": {"word": "cat", "hit": False}}


def test_module_spec_in_workers(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT))  # spawned workers inherit sys.path
    with Scorer([RewardSpec("tests.fixtures.custom_verifier:exact")], num_workers=1) as scorer:
        batch = scorer.score(["7", " 7 ", "8"], [{"answer": 7}] * 3)
    assert batch.per_reward == {"exact": [1.0, 1.0, 0.0]}


def test_math_verifier_in_workers():
    examples = [
        {"answer": "Natalia sold 48/2 = 24 clips.\n#### 1,234"},
        {"answer": "\\frac{1}{2}"},
        {"answer": "72"},
    ]
    completions = ["... so the answer is 1234.", "We get $\\boxed{0.5}$.", "<answer>71</answer>"]
    with Scorer([RewardSpec("math")], num_workers=2) as scorer:
        batch = scorer.score(completions, examples)
    assert batch.scores == [1.0, 1.0, 0.0]
    assert batch.failures == 0
    assert batch.infos[2]["math"] == {"extracted": "71", "gold": "72", "method": "answer_tag"}


def test_empty_batch_and_length_mismatch():
    scorer = Scorer([RewardSpec(f"{FIXTURE}:exact")], num_workers=0)
    empty = scorer.score([], [])
    assert (empty.scores, empty.infos, empty.per_reward) == ([], [], {"exact": []})
    assert empty.metrics() == NO_FAILURES
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        scorer.score(["a", "b"], [{}])


@pytest.mark.parametrize(
    "kwargs", [{"num_workers": -1}, {"timeout_s": 0}, {"failure_score": float("nan")}, {"failure_score": 1e7}]
)
def test_bad_scorer_arguments(kwargs: dict):
    with pytest.raises(ValueError):
        Scorer([RewardSpec(f"{FIXTURE}:exact")], **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Failures: each scores failure_score (-1 here) with the reason in the info, the rest of the batch is scored
# ---------------------------------------------------------------------------------------------------------

GARBAGE = [
    ("raise", "raised ValueError: boom"),
    ("sysexit", "raised SystemExit: 3"),
    ("none", "returned None; expected a float or RewardResult"),
    ("nan", "returned non-finite score nan"),
    ("inf", "returned non-finite score inf"),
    ("huge", "returned score 1e+300 beyond +-1e+06"),
    ("str", "returned str 'abc'; expected a float or RewardResult"),
    ("list", "returned list [1.0]; expected a float or RewardResult"),
    ("bad_info", "returned RewardResult.info of type str; expected a dict"),
    ("nan_result", "returned non-finite score nan"),
]


@pytest.mark.parametrize(
    ("completion", "reason"), GARBAGE + [("unpicklable", "result could not be sent back")]
)
def test_bad_verifier_outcomes_in_workers(chaos_scorer: Scorer, completion: str, reason: str):
    batch = chaos_scorer.score(["ab", completion, "abcd"], [{}, {}, {}])
    assert batch.scores == [2.0, -1.0, 4.0]
    assert batch.per_reward == {"chaos": [2.0, -1.0, 4.0]}
    assert reason in batch.infos[1]["chaos"]["error"]
    assert set(batch.infos[1]["chaos"]) == {"error"}
    assert batch.failures == 1
    assert batch.metrics()["reward/failures"] == 1.0


@pytest.mark.parametrize(("completion", "reason"), GARBAGE)
def test_bad_verifier_outcomes_inline(completion: str, reason: str):
    scorer = Scorer([RewardSpec(f"{FIXTURE}:chaos")], num_workers=0, failure_score=-1.0)
    batch = scorer.score([completion, "abc"], [{}, {}])
    assert batch.scores == [-1.0, 3.0]
    assert batch.infos[0] == {"chaos": {"error": batch.infos[0]["chaos"]["error"]}}
    assert reason in batch.infos[0]["chaos"]["error"]


def test_unpicklable_example_fails_only_its_sample(chaos_scorer: Scorer):
    batch = chaos_scorer.score(["ab", "abc"], [{"f": lambda: None}, {}])
    assert batch.scores == [-1.0, 3.0]
    assert batch.infos[0]["chaos"]["error"].startswith("task could not be sent to a worker")


def test_hang_exit_and_segfault_are_contained(chaos_scorer: Scorer):
    completions = ["ok", "hang", "exit", "raise", "segfault", "fine!"]
    start = time.monotonic()
    batch = chaos_scorer.score(completions, [{}] * len(completions))
    elapsed = time.monotonic() - start
    assert batch.scores == [2.0, -1.0, -1.0, -1.0, -1.0, 5.0]
    errors = [info["chaos"].get("error") for info in batch.infos]
    assert errors[0] is None and errors[5] is None
    assert errors[1] == "timed out after 1s (worker killed)"
    assert errors[2] == "verifier process died (exit code 1)"
    assert errors[3] == "raised ValueError: boom"
    assert errors[4] == "verifier process died (killed by signal SIGSEGV)"
    assert batch.metrics()["reward/failures"] == 4.0
    assert elapsed < 15.0, elapsed  # one 1 s timeout plus worker respawns, not a stuck pool
    # the pool was repaired: the next batches are scored normally, even two hangs at once
    assert chaos_scorer.score(["abc", "x"], [{}, {}]).scores == [3.0, 1.0]
    batch = chaos_scorer.score(["hang", "hang", "abcdef"], [{}, {}, {}])
    assert batch.scores == [-1.0, -1.0, 6.0]
    assert chaos_scorer.score(["abcdefg"], [{}]).scores == [7.0]


# ---------------------------------------------------------------------------------------------------------
# Failures by kind, the first example of each kind, and a step's tally
# ---------------------------------------------------------------------------------------------------------


def test_failures_are_counted_by_kind(chaos_scorer: Scorer):
    completions = ["ok", "raise", "hang", "exit", "nan", "huge", "str", "fine"]
    batch = chaos_scorer.score(completions, [{}] * len(completions))
    assert [(f.sample, f.reward, f.kind) for f in batch.failed] == [
        (1, "chaos", "exception"),
        (2, "chaos", "timeout"),
        (3, "chaos", "exit"),
        (4, "chaos", "bad_value"),
        (5, "chaos", "bad_value"),
        (6, "chaos", "bad_value"),
    ]
    assert batch.failed[0].reason == batch.infos[1]["chaos"]["error"] == "raised ValueError: boom"
    assert batch.failure_counts() == {"timeout": 1, "exception": 1, "exit": 1, "bad_value": 3}
    metrics = batch.metrics()
    assert metrics["reward/failures"] == 6.0
    assert [metrics[f"reward/failures/{k}"] for k in ("timeout", "exception", "exit", "bad_value")] == [
        1.0,
        1.0,
        1.0,
        3.0,
    ]
    assert batch.scores[0] == 2.0 and batch.scores[7] == 4.0


def test_first_failure_of_each_kind_is_logged_once(caplog: pytest.LogCaptureFixture):
    scorer = Scorer([RewardSpec(f"{FIXTURE}:chaos")], num_workers=0)
    with caplog.at_level(logging.WARNING, logger="rlvr.scoring.scorer"):
        scorer.score(["raise", "nan", "raise", "str", "ok"], [{}] * 5)
        scorer.score(["raise", "inf"], [{}] * 2)  # kinds seen before: counted, not logged again
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("verifier chaos failed (exception, scored 0;")
    assert lines[0].endswith("reward/failures/exception): raised ValueError: boom")
    assert lines[1].startswith("verifier chaos failed (bad_value, scored 0;")
    assert lines[1].endswith("returned non-finite score nan")


def _batch(per_reward: dict, failed: list[VerifierFailure]) -> ScoreBatch:
    n = len(next(iter(per_reward.values())))
    return ScoreBatch(scores=[0.0] * n, per_reward=per_reward, infos=[{}] * n, failed=failed)


def test_failure_tally_sums_over_batches_and_processes():
    """Two 'processes', each scoring two batches with two rewards: the counts add up, reasons stay local."""
    fail = VerifierFailure
    rank0 = FailureTally(["a", "b"], {"a": "a.py:a", "b": "b"})
    rank0.add(_batch({"a": [0.0, 1.0], "b": [None, 2.0]}, [fail(0, "a", "timeout", "timed out after 1s")]))
    rank0.add(
        _batch({"a": [0.0], "b": [0.0]}, [fail(0, "a", "exception", "raised X"), fail(0, "b", "exit", "d")])
    )
    rank1 = FailureTally(["a", "b"])
    rank1.add(_batch({"a": [0.0, 0.0], "b": [None, None]}, [fail(1, "a", "bad_value", "returned nan")]))
    assert (rank0.calls, rank0.failed) == ({"a": 3, "b": 2}, {"a": 2, "b": 1})
    assert rank0.first == {"a": "timeout: timed out after 1s", "b": "exit: d"}
    summed = [x + y for x, y in zip(rank0.vector(), rank1.vector(), strict=True)]
    step = rank1.with_counts(summed)
    assert step.metrics() == {
        "reward/failures": 4.0,
        "reward/failures/timeout": 1.0,
        "reward/failures/exception": 1.0,
        "reward/failures/exit": 1.0,
        "reward/failures/bad_value": 1.0,
    }
    assert (step.calls, step.failed, step.first) == ({"a": 5, "b": 2}, {"a": 3, "b": 1}, {})
    assert step.over(0.5) == ["a"] and step.over(0.6) == [] and step.over(0.0) == ["a", "b"]
    assert step.all_failed() == []
    step.add_reasons([rank0.first, rank1.first])  # process order: rank 0's reason wins
    assert step.check(0.5, where="step 3") == [
        "verifier a failed on 3 of 5 calls in step 3 (first: timeout: timed out after 1s); more than "
        "rewards.max_failure_frac=0.5"
    ]


def test_a_verifier_failing_on_every_call_stops_scoring():
    tally = FailureTally(["ok", "broken"], {"ok": "ok", "broken": "my_rewards.py:broken"})
    tally.add(
        _batch(
            {"ok": [1.0, 0.0], "broken": [0.0, 0.0]},
            [VerifierFailure(i, "broken", "exception", "raised KeyError: 'answer'") for i in range(2)],
        )
    )
    # two calls are too few to call the verifier broken: a warning, not a stop
    assert tally.check(0.5, where="step 1")[0].startswith(
        "verifier broken (my_rewards.py:broken) failed on 2"
    )
    with pytest.raises(ScoringError) as err:
        tally.check(0.5, where="step 1", min_calls=2)
    message = str(err.value)
    assert message.startswith(
        "verifier broken (my_rewards.py:broken) failed on 2 of 2 calls in step 1 (first: exception: raised "
        "KeyError: 'answer'): every call failed"
    ), message
    assert "rewards.stop_when_all_fail=false" in message
    # switched off, it is a warning like any other
    assert tally.check(0.5, stop_when_all_fail=False)[0].startswith("verifier broken (my_rewards.py:broken)")


def test_close_stops_workers():
    scorer = Scorer([RewardSpec(f"{FIXTURE}:exact")], num_workers=2)
    assert scorer.score(["1"], [{"answer": 1}]).scores == [1.0]
    pids = [w.proc.pid for w in scorer._pool._workers]
    scorer.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="closed"):
        scorer.score(["1"], [{"answer": 1}])
    scorer.close()  # idempotent


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


SCRIPT = textwrap.dedent(
    """
    import sys
    from rlvr.scoring import RewardSpec, Scorer

    # no `if __name__ == "__main__"` guard: workers must not re-import this script
    scorer = Scorer([RewardSpec(sys.argv[1] + ":chaos")], num_workers=2, timeout_s=3600)
    print(scorer.score(["abcd", "ab"], [{}, {}]).scores, flush=True)
    print(*[w.proc.pid for w in scorer._pool._workers], flush=True)
    if sys.argv[2] == "hang":
        scorer.score(["hang", "hang"], [{}, {}])  # both workers stuck in the verifier
    """
)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_unguarded_script_and_orphaned_workers(tmp_path: Path):
    script = tmp_path / "train_like.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    fixture = str(REPO_ROOT / FIXTURE)
    done = subprocess.run(
        [sys.executable, str(script), fixture, "exit"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "[4.0, 2.0]"
    # a parent killed with SIGKILL cannot clean up: its workers, though busy, notice and exit by themselves
    cmd = [sys.executable, str(script), fixture, "hang"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "[4.0, 2.0]"
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5.0
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_workers_that_cannot_start_raise_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")  # every worker exits with status 1 at once
    with Scorer([RewardSpec(f"{FIXTURE}:exact")], num_workers=1) as scorer:
        with pytest.raises(RuntimeError, match=r"failed to start 3 times in a row \(exit code 1\)"):
            scorer.score(["1"], [{"answer": 1}])

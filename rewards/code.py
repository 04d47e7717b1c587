"""Built-in code verifier, registered as ``"code"``: run the completion's program against the example's tests.

Every program runs in :mod:`rlvr.scoring.sandbox` (own process tree, rlimits, no network, private file system,
unprivileged uid; see ``docs/sandbox.md``). The score is 1.0 if all tests pass (``mode="all_pass"``) or the
fraction that pass (``mode="fraction"``, partial credit).

**Tests**, from the example (the dataset row), first match wins:

1. HumanEval: ``test`` (code defining ``check(candidate)``) and ``entry_point``. Each top-level statement of
   ``check`` that contains an ``assert`` is one test (a loop of 100 asserts is one test); statements without
   asserts are set-up. If ``check`` cannot be split, ``check(entry_point)`` is one test.
2. MBPP: ``test_list`` (assert statements, one test each), with ``test_imports`` / ``test_setup_code`` as
   set-up.
3. ``tests``: a list (or a JSON string of one) of ``{"input": str, "output": str}`` for stdin/stdout
   programs (competitive programming), or of assert statements.
4. ``input_output``: APPS / TACO style ``{"inputs": [...], "outputs": [...]}`` (JSON string or dict),
   stdin/stdout. (Call-based ``fn_name`` rows are not supported: scored 0 with an error.)

**The program** is taken from the completion:

1. reasoning before the last ``</think>`` is dropped;
2. the last fenced block tagged ``python``/``py``/``python3`` (or untagged) is used; a final block left open
   (a truncated generation) counts if no closed one does; ```` ``` ```` at the end of a code line closes it;
3. without fences, the raw text, and if that is not valid Python, the longest stretch of it that is
   (leading prose before the first ``def``/``import``/``class`` line and trailing prose are cut).

For HumanEval rows the program is combined with the code prompt (signature and docstring, plus any imports
and helper functions before it): if the program defines ``entry_point`` at top level it is appended to the
prompt (its definition replaces the stub; the prompt's imports and helpers stay available), otherwise it is
taken as the function body and appended to the prompt (re-indented by 4 spaces if it is not indented). The
code prompt is ``example[prompt_key]`` if that is valid Python; if it is a rendered chat prompt (the data
pipeline replaces ``prompt`` with the rendered text), the longest stretch of it that parses, from a line that
starts code (``import``, ``def``, ``NAME =``, ...) or follows a code fence to the end of the ``entry_point``
stub's body, is cut out. MBPP rows need no prompt.

**Faking a pass is not possible by exiting**: assert tests run under a harness that reports each result on
a private pipe tagged with a random per-run token it reads from stdin (never in a file the program can
read); ``sys.exit(0)``, ``os._exit(0)``, killing itself or printing "passed" do not produce tagged lines,
so the tests count as failed. The harness binds what it needs before the solution runs, gives the tests
their own globals, and fails every test if the solution patches a module the tests import, ``builtins`` or
``operator`` (``info["error_type"] == "tampered"``). Harness and tests are in the program's own process,
though: a program that deliberately introspects its caller's frames can find the token (flagged in
``info["suspicious"]``; see ``docs/sandbox.md``). With
``strict_compare=True`` (default), comparisons and truth tests inside asserts refuse operands whose class,
defined by the solution, overrides ``__eq__``/``__bool__``/... when the other side is a plain built-in value
(the "always-equal object" reward hack). stdin/stdout tests compare the output in the verifier, outside
the sandbox, so they cannot be faked this way.

Output comparison (``compare``): ``"tokens"`` (default: whitespace-separated tokens equal; with
``float_tol``, numeric tokens within that absolute or relative tolerance), ``"lines"`` (lines equal after
stripping trailing whitespace and trailing blank lines) or ``"exact"``.
"""

from __future__ import annotations

import ast
import json
import marshal
import math
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from rlvr.scoring import RewardResult, sandbox, verifier

MAX_PROGRAM_CHARS = 50_000
"""Programs longer than this are not run (score 0); real solutions are a few thousand characters."""
MAX_TESTS = 1000
"""At most this many tests are taken from one example."""

_SUSPICIOUS = {
    "frame_introspection": re.compile(
        r"_getframe|\bf_(?:back|locals|globals)\b|\b(?:tb|gi|cr|ag)_frame\b|currentframe|"
        r"inspect\.(?:stack|trace|getouterframes)|settrace|setprofile|_current_frames"
    ),
    "gc_scan": re.compile(r"get_objects|get_referrers|get_referents"),
    "raw_memory": re.compile(r"\bctypes\b|/proc/(?:self|\d+)/mem"),
    "result_fd": re.compile(r"(?:os\.write|fdopen|open|dup2?)\(\s*3\b"),
}
"""Static red flags for tampering with the in-process test harness (reported in ``info["suspicious"]``)."""
_SALVAGE_MAX_CHARS = 20_000
_PY_LANGS = {"python", "py", "python3", "py3", "python2", ""}
_CODE_START = re.compile(
    r"(?:from\s+\S+\s+import\b|import\s+\w|def\s+\w|class\s+\w|async\s+def\s|@\w|[A-Za-z_]\w*\s*=[^=])"
)
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+#.-]*)")

# ----------------------------------------------------------------------------------------------------------
# Extracting the program
# ----------------------------------------------------------------------------------------------------------


def _fenced_blocks(text: str) -> list[tuple[str, str, bool]]:
    """``(language, code, closed)`` for each fenced block, in order. Linear in the text length."""
    blocks: list[tuple[str, str, bool]] = []
    lang: str | None = None
    fence = ""
    body: list[str] = []
    for line in text.split("\n"):
        if lang is None:
            match = _FENCE.match(line)
            if match:
                fence, lang, body = match.group(1), match.group(2).lower(), []
                rest = line[match.end() :].strip()
                if rest.endswith(fence) and len(rest) > len(fence):  # ```python print(1)```
                    blocks.append((lang, rest[: -len(fence)], True))
                    lang = None
            continue
        stripped = line.strip()
        if stripped.startswith(fence) and not stripped[len(fence) :].strip():
            blocks.append((lang, "\n".join(body), True))
            lang = None
        elif stripped.endswith(fence) and not line.lstrip().startswith(fence):  # `return x```
            body.append(line.rstrip()[: -len(fence)])
            blocks.append((lang, "\n".join(body), True))
            lang = None
        else:
            body.append(line)
    if lang is not None:
        blocks.append((lang, "\n".join(body), False))
    return blocks


def _parses(code: str) -> bool:
    if len(code) > MAX_PROGRAM_CHARS:
        return False  # too long to run anyway; parsing it could take seconds
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _salvage(text: str) -> str:
    """The longest stretch of ``text`` that parses, cutting prose before and after the code (bounded)."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if _CODE_START.match(line)][:8] or [0]
    for start in starts:
        end = len(lines)
        for _ in range(12):
            while end > start and not lines[end - 1].strip():
                end -= 1
            if end <= start:
                break
            candidate = "\n".join(lines[start:end])
            if _parses(candidate):
                return candidate
            end -= 1
    return text


def extract_program(completion: str) -> tuple[str, str]:
    """``(program, method)`` taken from a completion by the rules in the module docstring.

    ``method`` is ``"fenced"``, ``"fenced_unclosed"``, ``"raw"`` or ``"raw_salvaged"``.
    """
    text = completion
    if "</think>" in text:
        text = text.rpartition("</think>")[2]
    blocks = _fenced_blocks(text)
    closed = [code for lang, code, done in blocks if done and lang in _PY_LANGS]
    if closed:
        return closed[-1], "fenced"
    unclosed = [code for lang, code, done in blocks if not done and lang in _PY_LANGS]
    if unclosed and unclosed[-1].strip():
        return unclosed[-1], "fenced_unclosed"
    if _parses(text):
        return text, "raw"
    if len(text) > _SALVAGE_MAX_CHARS:
        return text, "raw"
    salvaged = _salvage(text)
    return salvaged, "raw_salvaged" if salvaged != text else "raw"


# ----------------------------------------------------------------------------------------------------------
# HumanEval: combining the program with the code prompt
# ----------------------------------------------------------------------------------------------------------


def _def_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", re.MULTILINE)


def _stub_ends(text: str, def_start: int) -> list[int]:
    """Candidate ends of the function stub starting at ``def_start``: after its indented body (docstring,
    imports, ...), and after its docstring."""
    colon = re.compile(r"\)\s*(?:->[^\n]*)?:\s*(?:#[^\n]*)?$", re.MULTILINE).search(text, def_start)
    if colon is None:
        return [len(text)]
    ends: list[int] = []
    pos = end = colon.end()
    for line in text[pos:].split("\n")[1:]:  # the body: following lines indented deeper than the `def`
        if line.strip() and not line[:1].isspace():
            break
        pos += len(line) + 1
        if line.strip():
            end = pos
    ends.append(end)
    doc = re.compile(r"\s*[rRuU]?(\"\"\"|\'\'\')").match(text, colon.end())
    if doc is not None:
        close = text.find(doc.group(1), doc.end())
        newline = text.find("\n", close) if close >= 0 else -1
        ends.append(newline if newline >= 0 else len(text))
    return ends


@lru_cache(maxsize=1024)
def code_prompt(text: str, entry_point: str) -> str | None:
    """The Python code prompt (imports, helpers, the ``entry_point`` stub) in ``text``, or None.

    ``text`` is the raw HumanEval prompt (returned as is) or a rendered prompt that contains it (chat
    template, instructions, a fenced block): then the longest stretch that parses, starting at a line that
    starts code (or right after a code fence) and ending with the stub's body, is cut out.
    """
    matches = list(_def_pattern(entry_point).finditer(text))
    if not matches:
        return None
    if _parses(text):
        return text
    def_start = matches[-1].start()
    starts = []
    previous = ""
    for match in re.finditer(r"^.*$", text[:def_start], re.MULTILINE):
        line = match.group(0)
        if _CODE_START.match(line) or _FENCE.match(previous):
            starts.append(match.start())
        previous = line
    starts = [s for s in starts if s < def_start][-30:] + [def_start]
    for start in starts:
        for end in _stub_ends(text, def_start):
            segment = text[start:end]
            if _parses(segment):
                return segment + "\n"
    return None


def _defines(program: str, name: str) -> bool:
    try:
        if len(program) > MAX_PROGRAM_CHARS:
            raise ValueError("too long to parse")
        tree = ast.parse(program)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return bool(_def_pattern(name).search(program))
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name
        for node in tree.body
    ) or any(
        isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
        for node in tree.body
    )


def combine_with_prompt(program: str, prompt: str | None, entry_point: str) -> tuple[str, str]:
    """``(full program, how)`` for a HumanEval-style row; ``how`` is ``"full_function"`` or ``"body"``."""
    if not prompt:
        return program, "no_prompt"
    prompt = prompt if prompt.endswith("\n") else prompt + "\n"
    if _defines(program, entry_point):
        return prompt + "\n" + program, "full_function"
    first = next((line for line in program.split("\n") if line.strip()), "")
    body = program
    if first and not first[0].isspace():
        body = "\n".join("    " + line if line.strip() else line for line in program.split("\n"))
    elif not _parses(prompt + program) and _parses(prompt + _reindent(program)):
        body = _reindent(program)
    return prompt + body, "body"


def _reindent(program: str) -> str:
    """Body whose first line lost its indentation (``"return x\\n    y"`` style completions) fixed up."""
    lines = program.split("\n")
    return "\n".join(("    " + line.lstrip()) if k == 0 else line for k, line in enumerate(lines))


# ----------------------------------------------------------------------------------------------------------
# Tests: parsing the example, hardening asserts
# ----------------------------------------------------------------------------------------------------------


class _StrictCompare(ast.NodeTransformer):
    """In asserts: one-op comparisons -> ``__rlvr_cmp__``, truth tests -> ``__rlvr_truth__``."""

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        node.test = self._truth(self.visit(node.test))
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if len(node.ops) != 1:
            return node
        op = type(node.ops[0]).__name__
        call = ast.Call(
            func=ast.Name("__rlvr_cmp__", ast.Load()),
            args=[ast.Constant(op), node.left, node.comparators[0]],
            keywords=[],
        )
        return ast.copy_location(call, node)

    def _truth(self, test: ast.expr) -> ast.expr:
        if isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "__rlvr_cmp__":
            return test
        if isinstance(test, ast.BoolOp):
            test.values = [self._truth(v) for v in test.values]
            return test
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            test.operand = self._truth(test.operand)
            return test
        if isinstance(test, ast.Constant | ast.Compare):
            return test
        call = ast.Call(func=ast.Name("__rlvr_truth__", ast.Load()), args=[test], keywords=[])
        return ast.copy_location(call, test)


def _harden(source: str) -> str:
    """``source`` with its asserts' comparisons made strict (unchanged if it does not parse)."""
    if "assert" not in source:
        return source
    try:
        tree = ast.parse(source)
        tree = ast.fix_missing_locations(_StrictCompare().visit(tree))
        return ast.unparse(tree)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return source


def _split_check(test_src: str, entry_point: str) -> tuple[list[str], list[str], str]:
    """HumanEval ``test`` -> (set-up sources, test sources, candidate argument name)."""
    try:
        tree = ast.parse(test_src)
    except SyntaxError:
        return [test_src], [f"check({entry_point})"], "candidate"
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None or not check.args.args:
        return [test_src], [f"check({entry_point})"], "candidate"
    module = ast.Module(body=[n for n in tree.body if n is not check], type_ignores=[])
    statements = [ast.unparse(stmt) for stmt in check.body]
    for src in statements:
        try:
            compile(src, "<test>", "exec")
        except SyntaxError:  # e.g. `return` in check: run it whole
            return [test_src], [f"check({entry_point})"], "candidate"
    setup = [ast.unparse(module)]
    tests: list[str] = []
    pending: list[str] = []  # statements before an assert run with it (set-up such as `import math`)
    for stmt, src in zip(check.body, statements, strict=True):
        pending.append(src)
        if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)):
            tests.append("\n".join(pending))
            pending = []
    if pending and tests:
        tests[-1] += "\n" + "\n".join(pending)
    if not tests:
        return [test_src], [f"check({entry_point})"], "candidate"
    return setup, tests, check.args.args[0].arg


def _load_json(value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _as_str_list(value: Any) -> list[str]:
    value = _load_json(value)
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return [str(v) for v in value]
    return []


def _assert_spec(
    setup: list[str], tests: list[str], entry_point: str | None = None, candidate: str | None = None
) -> dict[str, Any]:
    spec = {"kind": "assert", "setup": setup, "tests": tests}
    return {**spec, "entry_point": entry_point, "candidate": candidate}


def parse_tests(example: Mapping[str, Any]) -> dict[str, Any]:
    """The example's tests as ``{"kind": "assert", "setup", "tests", "entry_point", "candidate"}`` or
    ``{"kind": "stdio", "cases": [(input, output), ...]}``; raises ``ValueError`` if there are none."""
    if example.get("test") and example.get("entry_point"):
        entry = str(example["entry_point"])
        setup, tests, candidate = _split_check(str(example["test"]), entry)
        return _assert_spec(setup, tests, entry, candidate)
    if example.get("test_list"):
        setup = _as_str_list(example.get("test_imports") or []) + _as_str_list(
            example.get("test_setup_code") or []
        )
        tests = _as_str_list(example["test_list"])
        return _assert_spec(setup, tests)
    tests = _load_json(example.get("tests"))
    if isinstance(tests, Mapping) and "inputs" in tests:
        tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"], strict=False)]
    if isinstance(tests, Sequence) and not isinstance(tests, str) and tests:
        if all(isinstance(t, Mapping) for t in tests):
            cases = [(_io_text(t.get("input", "")), _io_text(t.get("output", ""))) for t in tests]
            return {"kind": "stdio", "cases": cases}
        if all(isinstance(t, str) for t in tests):
            return _assert_spec([], list(tests))
    io = _load_json(example.get("input_output"))
    if isinstance(io, Mapping) and io.get("inputs") is not None:
        if io.get("fn_name"):
            raise ValueError("call-based input_output tests (fn_name) are not supported")
        cases = [(_io_text(i), _io_text(o)) for i, o in zip(io["inputs"], io["outputs"], strict=False)]
        return {"kind": "stdio", "cases": cases}
    raise ValueError(
        "example has no tests: expected 'test' + 'entry_point' (HumanEval), 'test_list' (MBPP), "
        "'tests' (list of {input, output} or of assert statements) or 'input_output' (APPS)"
    )


def _io_text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value) + "\n"
    return str(value)


# ----------------------------------------------------------------------------------------------------------
# The harness that runs assert tests inside the sandbox
# ----------------------------------------------------------------------------------------------------------

# main.py of an assert-style run: the harness's source (run in the sandbox, never imported here).
HARNESS = (Path(__file__).parent / "code_harness.py").read_text(encoding="utf-8")


def _parse_channel(channel: str, token: str, n_tests: int) -> dict[str, Any]:
    passed: set[int] = set()
    failures: dict[int, str] = {}
    state: dict[str, Any] = {"done": False, "load_error": None, "started": False, "tampered": None}
    prefix = token + " "
    for line in channel.splitlines():
        if not line.startswith(prefix):
            continue  # anything the program itself wrote to fd 3
        kind, _, rest = line[len(prefix) :].partition(" ")
        if kind == "pass" and rest.isdigit() and int(rest) < n_tests:
            passed.add(int(rest))
        elif kind == "fail":
            index, _, why = rest.partition(" ")
            if index.isdigit():
                failures.setdefault(int(index), why)
        elif kind == "done":
            state["done"] = True
        elif kind == "start":
            state["started"] = True
        elif kind == "load_error":
            state["load_error"] = rest
        elif kind == "tampered":
            state["tampered"] = rest
    state["passed"] = passed - set(failures) if state["tampered"] is None else set()
    state["failures"] = failures
    return state


# ----------------------------------------------------------------------------------------------------------
# stdin/stdout comparison
# ----------------------------------------------------------------------------------------------------------


def _float_close(a: str, b: str, tol: float) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=tol, abs_tol=tol)  # inf is close only to itself, nan to nothing


def outputs_match(
    actual: str, expected: str, compare: str = "tokens", float_tol: float | None = None
) -> bool:
    """Whether a program's stdout matches the expected output (see ``compare`` in the module docstring)."""
    if compare == "exact":
        return actual == expected
    if compare == "lines":

        def lines(text: str) -> list[str]:
            out = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
            while out and not out[-1]:
                out.pop()
            return out

        return lines(actual) == lines(expected)
    if compare != "tokens":
        raise ValueError(f"compare must be 'tokens', 'lines' or 'exact', got {compare!r}")
    got, want = actual.split(), expected.split()
    if len(got) != len(want):
        return False
    if float_tol is None:
        return got == want
    return all(g == w or _float_close(g, w, float_tol) for g, w in zip(got, want, strict=True))


# ----------------------------------------------------------------------------------------------------------
# The verifier
# ----------------------------------------------------------------------------------------------------------


def suspicious(program: str) -> list[str]:
    """Names of the :data:`_SUSPICIOUS` patterns found in ``program`` (a static check, easy to evade)."""
    return [name for name, pattern in _SUSPICIOUS.items() if pattern.search(program)]


def score_batch(
    completions: Sequence[str], examples: Sequence[dict], workers: int | None = None, **kwargs: Any
) -> list[RewardResult]:
    """:func:`code_verifier` on many samples at once, ``workers`` threads (default: CPU count) in parallel.

    For evaluation and benchmarks; training scores through :class:`rlvr.scoring.Scorer` instead.
    """
    from concurrent.futures import ThreadPoolExecutor

    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
    sandbox.isolation()  # probe once before the threads start
    with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
        pairs = zip(completions, examples, strict=True)
        return list(pool.map(lambda pair: code_verifier(*pair, **kwargs), pairs))


def _clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _sandbox_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {"memory_mb", "cpu_s", "max_output_bytes", "max_processes", "max_open_files", "max_file_mb"}
    allowed |= {"disk_mb", "site_packages", "hide_paths", "python"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"unknown code verifier arguments: {', '.join(sorted(unknown))}")
    return dict(kwargs)


def _imported_modules(sources: Sequence[str]) -> list[str]:
    """Top-level names of the modules that ``sources`` import (what the harness guards against patching)."""
    names: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.partition(".")[0])
    return sorted(names)


def _run_asserts(
    program: str, spec: dict[str, Any], stop_on_fail: bool, timeout_s: float, strict: bool, box: dict
) -> tuple[int, int, dict[str, Any]]:
    token = secrets.token_hex(16)
    tests = [_harden(t) if strict else t for t in spec["tests"]][:MAX_TESTS]
    setup = [_harden(s) if strict else s for s in spec["setup"]]
    payload = {
        "token": token,
        "solution": program,
        "setup": setup,
        "tests": tests,
        "entry_point": spec["entry_point"],
        "candidate": spec["candidate"],
        "stop_on_fail": stop_on_fail,
        "watch": _imported_modules([*spec["setup"], *spec["tests"]]),
    }
    result = sandbox.run_program(HARNESS, stdin=marshal.dumps(payload), timeout_s=timeout_s, **box)
    state = _parse_channel(result.channel, token, len(tests))
    info: dict[str, Any] = {"status": result.status, "wall_s": round(result.wall_s, 3)}
    if state["tampered"]:
        info["error_type"] = "tampered"
        info["detail"] = _clip(f"the solution modified {state['tampered']}; all tests fail")
    elif state["load_error"]:
        info["error_type"] = "load_error"
        info["detail"] = _clip(state["load_error"])
    elif state["failures"]:
        k = min(state["failures"])
        info["first_failure"] = {
            "test": k,
            "error": _clip(state["failures"][k]),
            "source": _clip(spec["tests"][k], 200),
        }
    elif not state["done"]:
        info["error_type"] = "did_not_finish"
        how = f"signal {result.signal}" if result.signal else f"exit code {result.returncode}"
        tail = result.error or result.stderr.strip()[-200:]
        tail = f": {tail}" if tail else ""
        info["detail"] = _clip(f"{result.status} ({how}) before all tests ran{tail}")
    if result.status == "sandbox_error":
        info["sandbox_error"] = _clip(result.error or "")
    return len(state["passed"]), len(tests), info


def _run_stdio(
    program: str,
    cases: list[tuple[str, str]],
    stop_on_fail: bool,
    timeout_s: float,
    budget_end: float,
    compare: str,
    float_tol: float | None,
    box: dict,
) -> tuple[int, int, dict[str, Any]]:
    cases = cases[:MAX_TESTS]
    passed, info = 0, {}
    statuses: dict[str, int] = {}
    for k, (stdin, expected) in enumerate(cases):
        remaining = budget_end - time.monotonic()
        if remaining <= 0.05:
            info.setdefault("error_type", "budget_exhausted")
            info["not_run"] = len(cases) - k
            break
        result = sandbox.run_program(program, stdin=stdin, timeout_s=min(timeout_s, remaining), **box)
        statuses[result.status] = statuses.get(result.status, 0) + 1
        ok = result.status == "ok" and outputs_match(result.stdout, expected, compare, float_tol)
        if ok:
            passed += 1
            continue
        if "first_failure" not in info:
            detail = result.stderr.strip()[-300:] if result.status != "ok" else "wrong answer"
            info["first_failure"] = {
                "test": k,
                "status": result.status if result.status != "ok" else "wrong_answer",
                "detail": _clip(result.error or detail),
                "got": _clip(result.stdout, 100),
            }
        if stop_on_fail:
            break
    info["statuses"] = statuses
    return passed, len(cases), info


@verifier("code")
def code_verifier(
    completion: str,
    example: dict,
    mode: str = "all_pass",
    timeout_s: float = 5.0,
    total_timeout_s: float = 8.0,
    compare: str = "tokens",
    float_tol: float | None = None,
    strict_compare: bool = True,
    reject_suspicious: bool = False,
    prompt_key: str = "prompt",
    **sandbox_kwargs: Any,
) -> RewardResult:
    """Score ``completion`` by running its program against ``example``'s tests; see the module docstring.

    ``mode``: ``"all_pass"`` (1.0 if every test passes, else 0.0; stops at the first failure) or
    ``"fraction"`` (passed / total, partial credit). ``timeout_s``: wall-clock limit of one sandboxed run
    (all assert tests of a sample run in one process; each stdin/stdout test is its own run).
    ``total_timeout_s``: budget for all runs of one sample (stdin/stdout tests not started in time fail);
    keep the scorer's ``rewards.timeout_s`` above it. ``compare`` / ``float_tol``: stdout comparison.
    ``strict_compare``: refuse always-equal objects in asserts. ``reject_suspicious``: score 0 without
    running a program that mentions frame introspection, ``gc`` object scans, ``ctypes`` / process memory
    or fd 3 (they are always listed in ``info["suspicious"]``). ``prompt_key``: the example field holding
    the HumanEval code prompt. Other keyword arguments go to :func:`rlvr.scoring.sandbox.run_program`
    (``memory_mb``, ``cpu_s``, ``max_output_bytes``, ``max_processes``, ``max_open_files``,
    ``max_file_mb``, ``disk_mb``, ``site_packages``, ``hide_paths``, ``python``).

    ``info``: ``passed``, ``total``, ``kind`` (``assert``/``stdio``), ``extraction``, and on failure
    ``first_failure`` or ``error_type``/``detail`` (``error`` only when the sample could not be scored).
    """
    start = time.monotonic()
    info: dict[str, Any] = {"passed": 0, "total": 0}
    try:
        if mode not in ("all_pass", "fraction"):
            raise ValueError(f"mode must be 'all_pass' or 'fraction', got {mode!r}")
        if not isinstance(completion, str):
            raise TypeError(f"completion must be a str, got {type(completion).__name__}")
        box = _sandbox_kwargs(sandbox_kwargs)
        if not isinstance(example, Mapping):
            raise TypeError(f"example must be a dict, got {type(example).__name__}")
        spec = parse_tests(example)
        info["kind"] = spec["kind"]
        program, method = extract_program(completion)
        info["extraction"] = method
        if spec["kind"] == "assert" and spec["entry_point"]:
            prompt = example.get(prompt_key)
            stub = code_prompt(str(prompt), spec["entry_point"]) if prompt else None
            program, how = combine_with_prompt(program, stub, spec["entry_point"])
            info["combined"] = how
        if not program.strip():
            info["error_type"] = "empty_program"
            return RewardResult(0.0, info)
        if len(program) > MAX_PROGRAM_CHARS:
            info["error_type"] = "program_too_long"
            return RewardResult(0.0, info)
        flags = suspicious(program)
        if flags:
            info["suspicious"] = flags
            if reject_suspicious:
                info["error_type"] = "suspicious"
                return RewardResult(0.0, info)
        stop_on_fail = mode == "all_pass"
        if spec["kind"] == "assert":
            budget = min(timeout_s, total_timeout_s)
            passed, total, details = _run_asserts(program, spec, stop_on_fail, budget, strict_compare, box)
        else:
            passed, total, details = _run_stdio(
                program,
                spec["cases"],
                stop_on_fail,
                timeout_s,
                start + total_timeout_s,
                compare,
                float_tol,
                box,
            )
        info.update(details)
        info["passed"], info["total"] = passed, total
        info["verifier_s"] = round(time.monotonic() - start, 3)
        if total == 0:
            info["error"] = "example has an empty test list"
            return RewardResult(0.0, info)
        score = passed / total if mode == "fraction" else float(passed == total)
        return RewardResult(score, info)
    except TypeError as exc:
        if "unknown code verifier arguments" in str(exc):
            raise  # a recipe typo: let the scorer report it loudly
        info["error"] = _clip(f"{type(exc).__name__}: {exc}")
        return RewardResult(0.0, info)
    except Exception as exc:
        info["error"] = _clip(f"{type(exc).__name__}: {exc}")
        return RewardResult(0.0, info)

"""The import rules of scoring: ``rlvr.scoring`` is light and never imports ``rewards`` until a built-in is
looked up; ``rewards`` imports only public names of ``rlvr.scoring``; the sandbox launcher and the code
test harness are real modules (compiled, importable without running)."""

from __future__ import annotations

import ast
import importlib
import json
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

import rlvr.scoring

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = REPO_ROOT / "rlvr" / "scoring" / "sandbox" / "launcher.py"
HARNESS = REPO_ROOT / "rewards" / "code_harness.py"


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter from the repository root; it prints one JSON value."""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_rlvr_scoring_loads_neither_rewards_nor_torch():
    out = _fresh(
        "import json, sys\n"
        "import rlvr.scoring\n"
        "from rlvr.scoring import sandbox\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0] in ('rewards', 'torch'))\n"
        "fn = rlvr.scoring.resolve_verifier('math')\n"
        "print(json.dumps({'before': before, 'rewards': 'rewards' in sys.modules,\n"
        "                  'fn': fn.__module__ + '.' + fn.__name__}))\n"
    )
    assert out["before"] == []  # verifier workers import rlvr.scoring: they stay light
    assert out["rewards"] is True  # the first lookup of a built-in name loads the built-ins
    assert out["fn"] == "rewards.math.math_verifier"


def test_registries_load_the_builtins_on_first_lookup():
    out = _fresh(
        "import json, sys\n"
        "from rlvr.scoring import ENSEMBLE_COMBINES, VERIFIERS\n"
        "loaded = 'rewards' in sys.modules\n"
        "print(json.dumps({'loaded': loaded, 'combines': ENSEMBLE_COMBINES.names(),\n"
        "                  'math': 'math' in VERIFIERS, 'torch': 'torch' in sys.modules}))\n"
    )
    assert out == {"loaded": False, "combines": ["mean", "min", "uwo", "wco"], "math": True, "torch": False}


def test_importing_rewards_first_works_too():
    out = _fresh(
        "import json\nimport rewards\nfrom rlvr.scoring import VERIFIERS\n"
        "print(json.dumps(VERIFIERS.names()))\n"
    )
    assert {"code", "format", "length", "math", "repetition"} <= set(out)


def test_unknown_verifier_names_say_what_is_known():
    with pytest.raises(ValueError, match=r"unknown verifier 'nope'; known names: .*math"):
        rlvr.scoring.resolve_verifier("nope")
    with pytest.raises(ValueError, match="file not found"):
        rlvr.scoring.resolve_verifier("no/such/file.py:fn")


def test_the_lazy_reward_model_names_resolve():
    for name in ("build_reward_model", "RewardModel", "RewardModelEnsemble", "ScoreNormalizer"):
        assert callable(getattr(rlvr.scoring, name))
    with pytest.raises(AttributeError):
        rlvr.scoring.no_such_name  # noqa: B018


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "rewards").glob("*.py")), ids=lambda p: p.name)
def test_rewards_import_only_public_names_of_rlvr_scoring(path: Path):
    """A built-in is written like a user's verifier: ``from rlvr.scoring import <public name>`` only."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.split(".")[0] == "rlvr"]
            assert not names, f"{path.name} imports {names}; use 'from rlvr.scoring import ...'"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "rlvr":
            assert node.module == "rlvr.scoring", f"{path.name} imports from {node.module}"
            for alias in node.names:
                public = alias.name in rlvr.scoring.__all__ or alias.name == "sandbox"
                assert public, f"{path.name} imports {alias.name}, not a public name of rlvr.scoring"


@pytest.mark.parametrize("path", [LAUNCHER, HARNESS], ids=lambda p: p.name)
def test_launcher_and_harness_are_real_modules(path: Path, tmp_path: Path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)
    subprocess.run([sys.executable, "-m", "py_compile", str(path)], check=True, cwd=tmp_path)
    # importable without running: their work happens only under __main__
    module = importlib.import_module(
        "rlvr.scoring.sandbox.launcher" if path == LAUNCHER else "rewards.code_harness"
    )
    assert callable(module.main if path == LAUNCHER else module._rlvr_main)


def test_the_sandbox_and_the_code_verifier_run_the_module_files():
    from rewards import code
    from rlvr.scoring.sandbox import process

    assert process._LAUNCHER == LAUNCHER.read_text(encoding="utf-8")
    assert code.HARNESS == HARNESS.read_text(encoding="utf-8")

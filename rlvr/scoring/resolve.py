"""Turning a recipe's verifier spec into the function it names.

Recipes name a verifier with one of three spec forms, resolved by :func:`resolve_verifier`:

* a registered name, e.g. ``"math"`` (the built-ins of the top-level ``rewards`` package are loaded the
  first time a name is looked up; see :mod:`rlvr.scoring.api`);
* ``"package.module:function"``, imported like any module;
* ``"path/to/file.py:function"``, loaded from a file (relative paths are tried against the current
  directory, then against ``base_dir``, the recipe's folder).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from rlvr.scoring.api import VERIFIERS


class VerifierSpecError(ValueError):
    """A verifier spec could not be resolved to a callable."""


_FILE_MODULES: dict[str, ModuleType] = {}
_FILE_LOCK = threading.Lock()


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _find_file(spec: str, target: str, base_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(target).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if base_dir is not None and not path.is_absolute():
        candidates.append(Path(base_dir) / path)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise VerifierSpecError(f"verifier spec {spec!r}: file not found: {target} (tried {tried})")


def _load_file_module(spec: str, path: Path) -> ModuleType:
    key = str(path)
    with _FILE_LOCK:
        if key in _FILE_MODULES:
            return _FILE_MODULES[key]
        digest = hashlib.sha1(key.encode()).hexdigest()[:10]
        stem = re.sub(r"\W", "_", path.stem)
        mod_name = f"_rlvr_verifier_{stem}_{digest}"
        import_spec = importlib.util.spec_from_file_location(mod_name, path)
        if import_spec is None or import_spec.loader is None:
            raise VerifierSpecError(f"verifier spec {spec!r}: cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(import_spec)
        sys.modules[mod_name] = module  # dataclasses and pickle look modules up here
        try:
            import_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[mod_name]
            raise VerifierSpecError(
                f"verifier spec {spec!r}: error while loading {path}: {type(exc).__name__}: {exc}"
            ) from exc
        _FILE_MODULES[key] = module
        return module


def _import_module(spec: str, target: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise VerifierSpecError(
            f"verifier spec {spec!r}: cannot import module {target!r} ({exc}); expected "
            "'package.module:function' with the module importable, or 'path/to/file.py:function'"
        ) from exc


def _get_attr(spec: str, module: ModuleType, attr: str) -> Callable[..., Any]:
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise VerifierSpecError(
                f"verifier spec {spec!r}: {module.__name__} has no function {attr!r}; "
                f"callables defined there: {', '.join(public) or '(none)'}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise VerifierSpecError(
            f"verifier spec {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable verifier function"
        )
    return obj


def _lookup_registered(spec: str) -> Callable[..., Any]:
    if spec in VERIFIERS:  # loads the built-ins on first use
        return VERIFIERS.get(spec)
    known = ", ".join(VERIFIERS.names()) or "(none)"
    raise VerifierSpecError(
        f"unknown verifier {spec!r}; known names: {known}. "
        "Other forms: 'package.module:function' or 'path/to/file.py:function'"
    )


def canonical_spec(spec: str, base_dir: str | os.PathLike[str] | None = None) -> str:
    """Return ``spec`` with a file path made absolute, so it resolves the same way in any process."""
    if ":" not in spec:
        return spec
    target, _, attr = spec.rpartition(":")
    if _is_file_target(target):
        return f"{_find_file(spec, target, base_dir)}:{attr}"
    return spec


def resolve_verifier(spec: str, base_dir: str | os.PathLike[str] | None = None) -> Callable[..., Any]:
    """Turn a verifier spec into the function it names.

    ``spec`` is a registered name (``"math"``), ``"package.module:function"`` or
    ``"path/to/file.py:function"`` (relative paths are tried against the current directory, then against
    ``base_dir``). Raises
    :class:`VerifierSpecError` (a ``ValueError``) naming the spec and what was expected.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise VerifierSpecError(f"verifier spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if ":" not in spec:
        return _lookup_registered(spec)
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise VerifierSpecError(
            f"verifier spec {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'"
        )
    if _is_file_target(target):
        module = _load_file_module(spec, _find_file(spec, target, base_dir))
    else:
        module = _import_module(spec, target)
    return _get_attr(spec, module, attr)


def short_name(spec: str) -> str:
    """The key a reward is reported under: the registered name, or the function name of a path spec."""
    spec = spec.strip()
    return spec.rpartition(":")[2].rpartition(".")[2] if ":" in spec else spec


def unique_names(specs: Sequence[str]) -> list[str]:
    """:func:`short_name` of each spec, a repeated name suffixed ``_2``, ``_3``..."""
    names: list[str] = []
    for spec in specs:
        base = short_name(spec)
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names

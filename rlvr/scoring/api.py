"""The plug-in API of scoring: what a verifier returns, how it is registered, how its result is checked.

A *verifier* is a plain function ``(completion: str, example: dict, **kwargs) -> float | RewardResult``.
``example`` is the dataset row; by convention the gold answer is ``example["answer"]``. It is registered by
name with :func:`verifier` (``@verifier("math")``) or referenced from a recipe by ``module:function`` or
``path/to/file.py:function`` (see :mod:`rlvr.scoring.resolve`).

Reward-model ensembles are the second kind of plug-in: an *ensemble objective* ``(member_scores [M, N],
lam) -> [N]`` registered with :func:`ensemble_combine` turns the members' scores into one score.

The built-ins (the top-level ``rewards`` package) are written against this API exactly like a user's own.
They register themselves when ``rewards`` is imported, which the two registries here do lazily, the first
time they are asked for a name: ``rlvr.scoring`` never imports ``rewards`` at import time (no import
cycle), and a verifier worker loads the built-ins only when it resolves one.
"""

from __future__ import annotations

import importlib
import math
import numbers
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from rlvr.registry import Registry

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

_MAX_REASON_CHARS = 500

#: A verifier score whose magnitude exceeds this is a failure of kind ``bad_value``, like NaN or inf. Rule
#: rewards live in [-10, 10] or so; a score of 1e300 is a bug (an unbounded ratio, an uninitialised value)
#: that would overflow the group statistics into inf/NaN and write ``Infinity`` into metrics.jsonl.
MAX_ABS_SCORE = 1e6

#: How a verifier call can fail (``reward/failures/<kind>``): it overran its deadline (``timeout``), raised
#: (``exception``; also an example that cannot be sent to a worker, or a spec the worker cannot resolve),
#: killed its worker process (``exit``: ``os._exit``, a segfault), or returned something that is not a
#: finite number within +-:data:`MAX_ABS_SCORE` or whose info cannot be sent back (``bad_value``).
FAILURE_KINDS = ("timeout", "exception", "exit", "bad_value")

#: Default UWO coefficient lambda: the value Coste et al. use for PPO (``uwo_weight: 0.1`` in the
#: authors' ``configs/config_rl.yaml``, github.com/tlc4418/llm_optimization); their best-of-n runs use 0.5.
#: The paper reports UWO to be fairly robust to lambda. On-policy RL here is the PPO-like setting.
DEFAULT_UWO_LAMBDA = 0.1


# ----------------------------------------------------------------------------------------------------------
# Registries that load the built-ins on first use
# ----------------------------------------------------------------------------------------------------------

_BUILTINS_LOCK = threading.RLock()
_builtins_loaded = False
_builtins_loading = False  # only ever True inside the lock, i.e. seen by the importing thread alone


def load_builtins() -> None:
    """Import the ``rewards`` package once, so the built-in verifiers and ensemble objectives register.

    Other threads wait on the lock until the import has finished; a lookup made by the importing thread
    itself while ``rewards`` is being imported (the lock is re-entrant) returns at once."""
    global _builtins_loaded, _builtins_loading
    if _builtins_loaded:
        return
    with _BUILTINS_LOCK:
        if _builtins_loaded or _builtins_loading:
            return
        _builtins_loading = True
        try:
            importlib.import_module("rewards")  # on failure the next lookup tries again (same clear error)
            _builtins_loaded = True
        finally:
            _builtins_loading = False


class BuiltinRegistry(Registry[T]):
    """A :class:`~rlvr.registry.Registry` whose lookups first load the built-ins (:func:`load_builtins`).

    Registering does not load them, so the built-ins themselves can register while they are imported.
    """

    def get(self, name: str) -> T:
        load_builtins()
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        load_builtins()
        return super().__iter__()

    def names(self) -> list[str]:
        load_builtins()
        return super().names()


VERIFIERS: BuiltinRegistry[Callable[..., Any]] = BuiltinRegistry("verifier")

#: ``(member_scores [M, N], lam) -> [N]``: how an ensemble turns its members' scores into one score.
EnsembleCombine = Callable[["torch.Tensor", float], "torch.Tensor"]
ENSEMBLE_COMBINES: BuiltinRegistry[EnsembleCombine] = BuiltinRegistry("reward-model ensemble combine")


def verifier(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a verifier function under ``name`` in :data:`VERIFIERS`."""
    return VERIFIERS.register(name)


def ensemble_combine(name: str) -> Callable[[EnsembleCombine], EnsembleCombine]:
    """Decorator registering a reward-model ensemble objective under ``name`` in :data:`ENSEMBLE_COMBINES`."""
    return ENSEMBLE_COMBINES.register(name)


# ----------------------------------------------------------------------------------------------------------
# What a verifier returns, and checking it
# ----------------------------------------------------------------------------------------------------------


@dataclass
class RewardResult:
    """A verifier's score plus free-form details (extracted answer, gold, ...) for logging."""

    score: float
    info: dict[str, Any] = field(default_factory=dict)


# (score, info, error, kind): error and kind are None on success; else the reason, one of FAILURE_KINDS, and
# score is None.
Outcome = tuple[float | None, dict[str, Any], str | None, str | None]


def clip_reason(text: str) -> str:
    """``text`` cut to a length fit for a log line and an ``info["error"]``."""
    return text if len(text) <= _MAX_REASON_CHARS else text[:_MAX_REASON_CHARS] + "..."


def _as_score(value: Any) -> float | str:
    """``value`` as a finite float, or a string saying why it is not one."""
    if value is None:
        return "returned None; expected a float or RewardResult"
    if isinstance(value, str | bytes) or not (
        isinstance(value, numbers.Real) or hasattr(type(value), "__float__")
    ):
        return f"returned {type(value).__name__} {clip_reason(repr(value))}; expected a float or RewardResult"
    try:
        score = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        return f"returned {type(value).__name__} that is not convertible to float ({exc})"
    if not math.isfinite(score):
        return f"returned non-finite score {score}"
    if abs(score) > MAX_ABS_SCORE:
        return f"returned score {score:g} beyond +-{MAX_ABS_SCORE:g} (rlvr.scoring.api.MAX_ABS_SCORE)"
    return score


def coerce_result(result: Any) -> tuple[float | None, dict[str, Any], str | None]:
    """Validate a verifier's return value into ``(score, info, error)``: a number, or a
    :class:`RewardResult` with a dict info, whose score is finite and within +-:data:`MAX_ABS_SCORE`."""
    if isinstance(result, RewardResult):
        value, info = result.score, result.info
        if not isinstance(info, dict):
            return None, {}, f"returned RewardResult.info of type {type(info).__name__}; expected a dict"
    else:
        value, info = result, {}
    score = _as_score(value)
    if isinstance(score, str):
        return None, {}, score
    return score, info, None


def call_verifier(fn: Callable[..., Any], completion: str, example: dict, kwargs: dict[str, Any]) -> Outcome:
    """Call ``fn`` and turn an exception or an invalid return value into an error outcome."""
    try:
        result = fn(completion, example, **kwargs)
    except (Exception, SystemExit) as exc:
        return None, {}, clip_reason(f"raised {type(exc).__name__}: {exc}"), "exception"
    score, info, error = coerce_result(result)
    return score, info, error, None if error is None else "bad_value"

"""How scoring runs: the verifier plug-in API, the worker pool, the scorer, the reward-model runner and the
code sandbox. What scores (the built-in verifiers and ensemble objectives) lives in the top-level
``rewards`` package, written against the names exported here exactly like a user's own.

* :mod:`rlvr.scoring.api`: :func:`verifier`, :class:`RewardResult`, :func:`coerce_result`, the registries
  :data:`VERIFIERS` and :data:`ENSEMBLE_COMBINES` (they load the built-ins on first lookup);
* :mod:`rlvr.scoring.resolve`: :func:`resolve_verifier` (registered name, ``module:function`` or
  ``path/to/file.py:function``);
* :mod:`rlvr.scoring.pool`: worker processes that run verifiers under a timeout;
* :mod:`rlvr.scoring.scorer`: :class:`Scorer`, :class:`RewardSpec`, :class:`ScoreBatch`, the failure
  bookkeeping (:class:`VerifierFailure`, :class:`FailureTally`, :class:`ScoringError`);
* :mod:`rlvr.scoring.reward_models`: :func:`build_reward_model`, :func:`check_reward_model_spec` and the
  batched reward-model runner (imported on first use: it needs torch, which verifier workers never load);
* :mod:`rlvr.scoring.sandbox`: running untrusted programs (imported as ``from rlvr.scoring import sandbox``).

Import rule: nothing here imports ``rewards`` at import time; the registries import it the first time a
name is looked up. ``rewards`` imports only names exported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rlvr.scoring.api import (
    DEFAULT_UWO_LAMBDA,
    ENSEMBLE_COMBINES,
    FAILURE_KINDS,
    MAX_ABS_SCORE,
    VERIFIERS,
    EnsembleCombine,
    RewardResult,
    coerce_result,
    ensemble_combine,
    verifier,
)
from rlvr.scoring.resolve import VerifierSpecError, canonical_spec, resolve_verifier, short_name
from rlvr.scoring.scorer import FailureTally, RewardSpec, ScoreBatch, Scorer, ScoringError, VerifierFailure

if TYPE_CHECKING:
    from rlvr.scoring.reward_models import (
        RewardModel,
        RewardModelEnsemble,
        RewardScorer,
        ScoreNormalizer,
        build_reward_model,
        check_reward_model_spec,
    )

# Names of the torch-backed reward-model runner, imported when first used.
_LAZY = {
    "RewardModel",
    "RewardModelEnsemble",
    "RewardScorer",
    "ScoreNormalizer",
    "build_reward_model",
    "check_reward_model_spec",
}

__all__ = [
    "DEFAULT_UWO_LAMBDA",
    "ENSEMBLE_COMBINES",
    "FAILURE_KINDS",
    "MAX_ABS_SCORE",
    "VERIFIERS",
    "EnsembleCombine",
    "FailureTally",
    "RewardModel",
    "RewardModelEnsemble",
    "RewardResult",
    "RewardScorer",
    "RewardSpec",
    "ScoreBatch",
    "ScoreNormalizer",
    "Scorer",
    "ScoringError",
    "VerifierFailure",
    "VerifierSpecError",
    "build_reward_model",
    "canonical_spec",
    "check_reward_model_spec",
    "coerce_result",
    "ensemble_combine",
    "resolve_verifier",
    "short_name",
    "verifier",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("rlvr.scoring.reward_models"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

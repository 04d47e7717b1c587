"""Rollout engines: vLLM (CPU and GPU) and a transformers reference engine."""

from rlvr.rollout import hf_engine, vllm_engine  # noqa: F401  (register the engines)
from rlvr.rollout.base import ENGINES, Completion, EngineOptions, RolloutEngine, SamplingConfig
from rlvr.rollout.ead import EADSchedule, ead_decay, ead_temperature

__all__ = [
    "ENGINES",
    "Completion",
    "EADSchedule",
    "EngineOptions",
    "RolloutEngine",
    "SamplingConfig",
    "ead_decay",
    "ead_temperature",
]

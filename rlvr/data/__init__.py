"""Prompt data: loading and validating prompt sets, and choosing the prompts of each batch."""

from rlvr.data import curriculum  # noqa: F401 - registers the curriculum samplers
from rlvr.data.loading import DataConfig, DataError, PromptDataset, load_prompts
from rlvr.data.sampler import (
    SAMPLERS,
    PromptSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    make_sampler,
    shard,
)
from rlvr.data.stats import PromptStats

__all__ = [
    "SAMPLERS",
    "DataConfig",
    "DataError",
    "PromptDataset",
    "PromptSampler",
    "PromptStats",
    "RandomSampler",
    "Sampler",
    "SequentialSampler",
    "load_prompts",
    "make_sampler",
    "shard",
]

"""Prompt data: loading and validating prompt sets, and choosing the prompts of each batch."""

from rlvr.data.loading import DataConfig, DataError, PromptDataset, load_prompts
from rlvr.data.sampler import SAMPLERS, PromptSampler, RandomSampler, SequentialSampler, make_sampler, shard

__all__ = [
    "SAMPLERS",
    "DataConfig",
    "DataError",
    "PromptDataset",
    "PromptSampler",
    "RandomSampler",
    "SequentialSampler",
    "load_prompts",
    "make_sampler",
    "shard",
]

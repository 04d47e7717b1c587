"""Shared test setup: everything runs offline, and one tiny model folder is built per session."""

from __future__ import annotations

import os

# Before transformers / datasets are imported by any test module: never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised two-layer Qwen2 with the character tokenizer (see rlvr.models)."""
    from rlvr.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-char"), seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)

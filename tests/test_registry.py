"""Plug-in keyword arguments are bound against the entry's signature: unknown, missing, wrong type."""

from typing import Literal

import pytest

from rlvr.algorithms.utils import needs
from rlvr.registry import PluginArgumentError, Registry, bind_kwargs, hyperparameters

LOSSES: Registry = Registry("policy loss", inputs=4)


@LOSSES.register("toy")
@needs("proxy_logprobs")
def toy_loss(logprobs, old_logprobs, advantages, mask, *, proxy_logprobs, clip: float = 0.2, mode: str = "a"):
    return logprobs, {}


@LOSSES.register("strict")
def strict_loss(logprobs, old_logprobs, advantages, mask, *, level: Literal["token", "sequence"], n: int = 1):
    return logprobs, {}


def test_hyperparameters_skip_the_contract_inputs_and_declared_fields():
    assert list(hyperparameters(toy_loss, inputs=4)) == ["clip", "mode"]
    assert list(hyperparameters(toy_loss, inputs=4, reserved=["mode"])) == ["clip"]


def test_bind_fills_defaults_and_converts_to_the_annotation():
    assert LOSSES.bind("toy", {}) == {"clip": 0.2, "mode": "a"}
    bound = LOSSES.bind("toy", {"clip": 1})
    assert bound == {"clip": 1.0, "mode": "a"} and isinstance(bound["clip"], float)


def test_unknown_argument_names_the_entry_and_the_known_ones():
    with pytest.raises(PluginArgumentError) as err:
        LOSSES.bind("toy", {"clpi": 0.3})
    assert str(err.value) == "unknown argument 'clpi' of policy loss 'toy' (known: clip, mode)"
    assert err.value.argument == "clpi"
    # a batch field the trainer passes is not a hyperparameter
    with pytest.raises(PluginArgumentError, match="unknown argument 'proxy_logprobs'"):
        LOSSES.bind("toy", {"proxy_logprobs": 1.0})


def test_wrong_type_and_missing_required_arguments():
    with pytest.raises(
        PluginArgumentError, match=r"argument 'clip' of policy loss 'toy' expects float, got 'x'"
    ):
        LOSSES.bind("toy", {"clip": "x"})
    with pytest.raises(PluginArgumentError) as err:
        LOSSES.bind("strict", {})
    assert str(err.value) == "policy loss 'strict' needs argument(s) level" and err.value.argument == "level"
    with pytest.raises(PluginArgumentError, match="argument 'level' of policy loss 'strict' expects"):
        LOSSES.bind("strict", {"level": "word"})
    assert LOSSES.bind("strict", {"level": "sequence"}) == {"level": "sequence", "n": 1}


def test_open_ended_and_unannotated_plugins():
    def verifier(completion, example, max_chars=400, **rest):
        return 1.0

    assert bind_kwargs(verifier, {"max_chars": "12", "anything": 1}, "verifier 'v'", inputs=2) == {
        "max_chars": "12",  # no annotation: passed as written
        "anything": 1,
    }

    def positional(completion, example, limit):
        return 1.0

    with pytest.raises(PluginArgumentError, match="verifier 'p' needs argument"):
        bind_kwargs(positional, {}, "verifier 'p'", inputs=2)
    assert bind_kwargs(positional, {"limit": 3}, "verifier 'p'", inputs=2) == {"limit": 3}

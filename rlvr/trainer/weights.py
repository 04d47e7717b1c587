"""Full (unsharded) policy weights for the rollout engine, on every process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from accelerate import Accelerator

from rlvr.trainer.critic import policy_of
from rlvr.trainer.lora import is_lora, merged_weights
from rlvr.trainer.setup import zero_stage


@contextlib.contextmanager
def _gathered(accelerator: Accelerator, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """``params`` in full on every process for the scope (``modifier_rank=None``); under ZeRO-3 they are
    all-gathered first, under ZeRO 0-2 every process already holds them."""
    if zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield
    else:
        yield


@contextlib.contextmanager
def gathered_parameters(accelerator: Accelerator, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Yield the unwrapped policy (without a critic) with all its parameters in full (gathered at once
    under ZeRO-3; :func:`policy_tensors` gathers one layer at a time)."""
    unwrapped = policy_of(accelerator.unwrap_model(model))
    with _gathered(accelerator, list(unwrapped.parameters())):
        yield unwrapped


def policy_state(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """HF-named parameter tensors on CPU.

    Tied weights are listed under every name (``lm_head.weight`` too): vLLM's in-place reload leaves a
    tied LM head unloaded when only the embedding arrives. A LoRA policy gives its merged weights under
    the base model's names (:func:`rlvr.trainer.lora.merged_weights`).
    """
    named = dict(model.named_parameters(remove_duplicate=False))
    if is_lora(model):  # the engine runs the base model with the adapter merged in
        return merged_weights(model, named)
    return [(name, param.detach().to("cpu")) for name, param in named.items()]


def layer_key(name: str) -> str:
    """The decoder layer a parameter belongs to, ``model.layers.3`` (up to its first numeric segment, so
    LoRA's ``base_model.model.model.layers.3`` keys alike), or "" for one outside the layers
    (embeddings, final norm, LM head)."""
    parts = name.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    return "" if index is None else ".".join(parts[: index + 1])


def layer_groups(names: list[str]) -> list[list[str]]:
    """Parameter names grouped by decoder layer (:func:`layer_key`), in order: the names before the first
    numbered layer (embeddings), one group per layer, then the rest (final norm, LM head)."""
    head: list[str] = []
    layers: dict[str, list[str]] = {}
    tail: list[str] = []
    for name in names:
        key = layer_key(name)
        if not key:
            (tail if layers else head).append(name)
        else:
            layers.setdefault(key, []).append(name)
    return [g for g in (head, *layers.values(), tail) if g]


def policy_tensors(accelerator: Accelerator, model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's full tensors under HF names (as :func:`policy_state`), one decoder layer at a time:
    under ZeRO-3 each layer is gathered, yielded and released before the next, so no process holds more
    than one gathered layer. Every process must run the generator to its end (the gathers are
    collective). A yielded tensor is valid until the next one is asked for; keep a copy to hold it."""
    unwrapped = policy_of(accelerator.unwrap_model(model))
    named = dict(unwrapped.named_parameters(remove_duplicate=False))
    lora = is_lora(unwrapped)
    for group in layer_groups(list(named)):
        with _gathered(accelerator, [named[name] for name in group]):
            tensors = {name: named[name].detach() for name in group}
            yield from merged_weights(unwrapped, tensors) if lora else tensors.items()

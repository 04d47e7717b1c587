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
def gathered_parameters(accelerator: Accelerator, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Yield the unwrapped policy (without a critic) with full parameters; under ZeRO-3 they are
    all-gathered first.

    Every process takes part in the gather and receives the full tensors (``modifier_rank=None``),
    because every process owns a rollout engine.
    """
    unwrapped = policy_of(accelerator.unwrap_model(model))
    if zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(unwrapped.parameters()), modifier_rank=None):
            yield unwrapped
    else:
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

"""LoRA adapters (``peft``) for every trainer: RL and preference training, on every ZeRO stage.

``model.lora: {r, alpha, dropout, target_modules}`` wraps the policy with :func:`peft.get_peft_model`
(LoRA, Hu et al. 2021, arXiv 2106.09685), so only the adapter's low-rank matrices train (the optimizer only
sees parameters that require gradients). Three things then differ from full fine-tuning:

* the **reference** policy is the same model with its adapter disabled (:func:`reference_output`): no
  second copy of the weights is loaded;
* the **rollout engine** receives merged weights, ``W + (alpha / r) B A`` under the base model's
  parameter names (:func:`merged_weights`), so vLLM runs a plain model;
* the **final model** (``final/``) is the merged model, a plain HF folder, with the adapter alone next to it
  in ``final/adapter`` (loadable with ``peft.PeftModel.from_pretrained``).

Checkpoints hold the whole training state (adapter, frozen base weights, optimizer) and resume exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch

ADAPTER = "default"
"""peft's name of the one adapter rlvr trains."""

_PREFIX = "base_model.model."
"""What a :class:`peft.PeftModel` puts before the wrapped model's parameter names."""


def apply_lora(model: torch.nn.Module, settings) -> torch.nn.Module:
    """``model`` wrapped with a fresh LoRA adapter (``settings``: the recipe's ``model.lora``); only the
    adapter's parameters require gradients."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` (unwrapped) is a peft model."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _scalings(model: torch.nn.Module) -> dict[str, float]:
    """``alpha / r`` (or peft's rsLoRA variant) of every LoRA layer, by layer name without the prefix."""
    from peft.tuners.lora import LoraLayer

    return {
        name: float(module.scaling[ADAPTER])
        for name, module in model.get_base_model().named_modules()
        if isinstance(module, LoraLayer) and ADAPTER in module.scaling
    }


def merged_weights(
    model: torch.nn.Module, named: Mapping[str, torch.Tensor]
) -> list[tuple[str, torch.Tensor]]:
    """The base model's parameters with the adapter merged in, under the base model's own (HF) names.

    ``named`` are ``model``'s full tensors by peft name (its parameters, or a gathered state dict):
    ``...q_proj.base_layer.weight`` becomes ``...q_proj.weight`` plus ``scaling * lora_B @ lora_A``; the
    ``lora_A`` / ``lora_B`` entries themselves are dropped. Computed in float32, returned in each base
    weight's dtype, on the CPU.
    """
    scalings = _scalings(model)
    out = []
    for key, tensor in named.items():
        name = key[len(_PREFIX) :] if key.startswith(_PREFIX) else key
        if ".lora_" in name:
            continue
        layer, found, leaf = name.rpartition(".base_layer.")
        if not found:
            out.append((name, tensor.detach().to("cpu")))
            continue
        merged = tensor.detach()
        if leaf == "weight" and layer in scalings:
            a = named[f"{_PREFIX}{layer}.lora_A.{ADAPTER}.weight"].detach().float()  # [r, in]
            b = named[f"{_PREFIX}{layer}.lora_B.{ADAPTER}.weight"].detach().float()  # [out, r]
            merged = (merged.float() + scalings[layer] * (b @ a)).to(tensor.dtype)  # [out, in]
        out.append((f"{layer}.{leaf}", merged.to("cpu")))
    return out


def adapter_state(named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's own tensors of a peft state dict (what ``final/adapter`` holds)."""
    return {k: v for k, v in named.items() if ".lora_" in k}


@contextlib.contextmanager
def adapter_disabled(unwrapped: torch.nn.Module) -> Iterator[None]:
    """Inside, ``unwrapped`` (a peft model) computes like its base model: the frozen reference."""
    with unwrapped.disable_adapter():
        yield


def reference_output(
    model: torch.nn.Module, unwrapped: torch.nn.Module, temperature: float, share_prompts: bool = False
) -> Callable[[object], torch.Tensor]:
    """A forward for :func:`rlvr.trainer.logprobs.fill_fields`: the response logits of the policy with its
    adapter disabled (the reference of a LoRA run). ``model`` is the prepared model, ``unwrapped`` the peft
    model inside it."""
    from rlvr.trainer.logprobs import response_logits

    def forward(chunk) -> torch.Tensor:
        with adapter_disabled(unwrapped):
            return response_logits(model, chunk, temperature, share_prompts)

    return forward

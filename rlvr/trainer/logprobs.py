"""Per-token statistics of responses under a model, and the no-grad pass that fills batch fields on request.

The maths of a token's log-probability and of the next-token entropy live here once
(:func:`token_logprobs`, :func:`token_entropy`); the update (with gradients) and the pre-update pass
(without) both use them.

Before the update, the step fills the batch fields the chosen plug-ins declare they read
(``@needs(...)``, :mod:`rlvr.algorithms.utils`). Each such field has a source in :data:`BATCH_FIELDS`: which
model computes it (the policy, the frozen reference, or the critic) and the statistic of that model's
output. :func:`fill_fields` runs one forward pass per model and micro-batch and computes every requested
statistic of that model from it. A new batch field is a registry entry here and a field of
:class:`~rlvr.types.RolloutBatch`; the step does not change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rlvr.algorithms import minp_proxy_logprobs
from rlvr.registry import Registry
from rlvr.trainer.batch import micro_batch_rows
from rlvr.types import RolloutBatch


def response_logits(model: torch.nn.Module, batch: RolloutBatch, temperature: float = 1.0) -> torch.Tensor:
    """``[N, T, V]`` float32 logits / temperature; position t is the distribution of response token t."""
    input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)  # [N, P+T]
    attention = torch.cat([batch.prompt_mask, batch.response_mask.long()], dim=1)  # [N, P+T]
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)  # [N, P+T]
    width_t = batch.response_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        logits_to_keep=width_t + 1,
        use_cache=False,
    )
    return out.logits[:, :-1, :].float() / temperature  # [N, T, V]


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, log_z: torch.Tensor | None = None
) -> torch.Tensor:
    """``[N, T]`` log-probability of ``token_ids`` under ``logits`` ``[N, T, V]`` (``log_z``: their
    logsumexp over V, when the caller already has it)."""
    if log_z is None:
        log_z = torch.logsumexp(logits, dim=-1)  # [N, T]
    return logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1) - log_z  # [N, T]


def token_entropy(logits: torch.Tensor, log_z: torch.Tensor | None = None) -> torch.Tensor:
    """``[N, T]`` entropy of the next-token distribution ``softmax(logits)``: ``log Z - E_p[logit]``."""
    if log_z is None:
        log_z = torch.logsumexp(logits, dim=-1)  # [N, T]
    return log_z - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # [N, T]


def response_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each response token (and the token-level entropy) under ``model``.

    The entropy is detached unless ``entropy_grad`` (an entropy bonus needs its gradient).

    Logits are divided by the sampling temperature so the result is comparable to the engine's
    sampling distribution (top-p/top-k truncation is not applied). Only the last T+1 positions are
    turned into logits (``logits_to_keep``), which saves a [N, P, V] tensor.
    """
    logits = response_logits(model, batch, temperature)  # [N, T, V]
    log_z = torch.logsumexp(logits, dim=-1)  # [N, T]
    logprobs = token_logprobs(logits, batch.response_ids, log_z)  # [N, T]
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = token_entropy(logits, log_z)  # [N, T]
    return logprobs, entropy


# --- batch fields computed before the update ----------------------------------------------------------


@dataclass(frozen=True)
class FieldSource:
    """Where a batch field comes from: ``model`` (a key of the models passed to :func:`fill_fields`) and
    ``statistic(output [n, T, ...], response_ids [n, T], **params) -> [n, T]`` of that model's output."""

    model: str
    statistic: Callable[..., torch.Tensor]


BATCH_FIELDS: Registry[FieldSource] = Registry("batch field")
"""Batch fields the pre-update pass can compute, by :class:`~rlvr.types.RolloutBatch` field name."""

BATCH_FIELDS.register("old_logprobs")(FieldSource("policy", token_logprobs))
BATCH_FIELDS.register("old_entropy")(FieldSource("policy", lambda logits, ids: token_entropy(logits)))
BATCH_FIELDS.register("proxy_logprobs")(FieldSource("policy", minp_proxy_logprobs))
BATCH_FIELDS.register("ref_logprobs")(FieldSource("reference", token_logprobs))
BATCH_FIELDS.register("values")(FieldSource("critic", lambda values, ids: values))


def policy_output(model: torch.nn.Module, temperature: float) -> Callable[[RolloutBatch], torch.Tensor]:
    """A forward for :func:`fill_fields`: the response logits of a causal LM at ``temperature``."""
    return lambda chunk: response_logits(model, chunk, temperature)


def critic_output(model: torch.nn.Module) -> Callable[[RolloutBatch], torch.Tensor]:
    """A forward for :func:`fill_fields`: the values of the critic inside a prepared
    :class:`~rlvr.trainer.critic.PolicyWithCritic` (called through the wrapper, as ZeRO-3 requires)."""
    return lambda chunk: model(value_batch=chunk)


@torch.no_grad()
def fill_fields(
    batch: RolloutBatch,
    requests: Mapping[str, Mapping[str, Any]],
    forwards: Mapping[str, Callable[[RolloutBatch], torch.Tensor]],
    micro: int,
    device: torch.device | str | None = None,
    by_length: bool = True,
) -> list[str]:
    """Compute the ``requests`` (field -> statistic parameters) that ``batch`` lacks and that have a source
    in :data:`BATCH_FIELDS`, ``micro`` rows at a time, one forward per model (``forwards[model](chunk)``),
    each chunk moved to ``device``; store them on ``batch``, on the batch's own device (the step keeps its
    batch on the CPU, so advantages are computed there, deterministically). Returns the names it filled.

    The chunks are the update's micro-batches (:func:`rlvr.trainer.batch.micro_batch_rows` with
    ``by_length``, cut to their longest row), so the policy's log-probs here are computed on the same
    rows, in the same shapes, as in the update's first pass."""
    wanted = {
        name: params
        for name, params in requests.items()
        if name in BATCH_FIELDS and getattr(batch, name, None) is None
    }
    by_model: dict[str, list[str]] = {}
    for name in sorted(wanted):
        by_model.setdefault(BATCH_FIELDS.get(name).model, []).append(name)
    for model, names in by_model.items():
        if model not in forwards:
            raise RuntimeError(f"batch field(s) {names} need the {model} model, which this run did not build")
        filled = {name: torch.zeros(batch.response_mask.shape) for name in names}  # [N, T]
        for rows in micro_batch_rows(batch, micro, by_length):
            chunk = batch.select(rows).trimmed()
            if device is not None:
                chunk = chunk.to(device)
            output = forwards[model](chunk)
            for name in names:
                statistic = BATCH_FIELDS.get(name).statistic
                value = statistic(output, chunk.response_ids, **wanted[name])  # [n, t]
                filled[name][rows.cpu(), : value.shape[1]] = value.float().cpu()
        for name in names:
            setattr(batch, name, filled[name].to(batch.response_ids.device))  # [N, T]
    return sorted(wanted)

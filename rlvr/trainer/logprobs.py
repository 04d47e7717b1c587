"""Per-token log-probabilities and entropies of responses under a causal LM."""

from __future__ import annotations

import torch

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
    token_logits = logits.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)  # [N, T]
    logprobs = token_logits - log_z  # [N, T]
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            probs = torch.softmax(logits, dim=-1)  # [N, T, V]
            entropy = log_z - (probs * logits).sum(-1)  # [N, T]
    return logprobs, entropy


@torch.no_grad()
def behaviour_statistics(
    model: torch.nn.Module,
    batch: RolloutBatch,
    micro: int,
    temperature: float,
    *,
    entropy: bool = False,
    proxy_kappa: float | None = None,
) -> dict[str, torch.Tensor]:
    """One no-grad pass over ``batch``, ``micro`` rows at a time, before the update.

    Returns ``logprobs`` ``[N, T]``; with ``entropy`` also the token ``entropy`` ``[N, T]``; with
    ``proxy_kappa`` also ``proxy_logprobs`` ``[N, T]``, the log-prob of each sampled token under Lp-Reg's
    min-p filtered proxy of this policy (:func:`rlvr.algorithms.minp_proxy_logprobs`).
    """
    from rlvr.algorithms import minp_proxy_logprobs

    parts: dict[str, list[torch.Tensor]] = {"logprobs": []}
    if entropy:
        parts["entropy"] = []
    if proxy_kappa is not None:
        parts["proxy_logprobs"] = []
    for i in range(0, len(batch), micro):
        chunk = batch.select(slice(i, i + micro))
        logits = response_logits(model, chunk, temperature)  # [n, T, V]
        log_z = torch.logsumexp(logits, dim=-1)  # [n, T]
        ids = chunk.response_ids.unsqueeze(-1)  # [n, T, 1]
        parts["logprobs"].append(logits.gather(-1, ids).squeeze(-1) - log_z)
        if entropy:
            parts["entropy"].append(log_z - (torch.softmax(logits, dim=-1) * logits).sum(-1))
        if proxy_kappa is not None:
            parts["proxy_logprobs"].append(minp_proxy_logprobs(logits, chunk.response_ids, kappa=proxy_kappa))
    return {key: torch.cat(values, dim=0) for key, values in parts.items()}

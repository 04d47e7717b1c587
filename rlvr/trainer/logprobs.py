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

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rlvr.algorithms import minp_proxy_logprobs
from rlvr.registry import Registry
from rlvr.trainer.batch import micro_batch_rows, row_attention
from rlvr.types import RolloutBatch

if TYPE_CHECKING:
    from rlvr.config import Recipe


def last_logits(model: torch.nn.Module, batch: RolloutBatch, share_prompts: bool = False) -> torch.Tensor:
    """``[N, T, V]`` logits in the model's compute dtype; position t is the distribution of response token
    t. Only the last T+1 positions are turned into logits (``logits_to_keep``), which saves a [N, P, V]
    tensor.

    ``share_prompts``: run each distinct prompt once and every row's response on a copy of its prompt's
    keys and values (:func:`shared_prompt_logits`); the rows of a GRPO group share their prompt."""
    if share_prompts:
        return shared_prompt_logits(model, batch)
    input_ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)  # [N, P+T]
    attention, position_ids = row_attention(batch)  # [N, P+T] each
    width_t = batch.response_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        logits_to_keep=width_t + 1,
        use_cache=False,
    )
    return out.logits[:, :-1, :]  # [N, T, V]


def distinct_prompts(batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first [U], inverse [N])``: the first row of each of the ``U`` distinct prompts of ``batch``
    (ids and padding alike) and the index of each row's prompt among them."""
    key = torch.cat([batch.prompt_ids, batch.prompt_mask.long()], dim=1)  # [N, 2P]
    _, inverse = torch.unique(key, dim=0, return_inverse=True)  # [N]
    rows = torch.arange(len(batch), device=inverse.device)
    first = torch.full((int(inverse.max()) + 1,), len(batch), device=inverse.device)
    return first.scatter_reduce(0, inverse, rows, reduce="amin"), inverse


def shared_prompt_logits(model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
    """:func:`last_logits` with each distinct prompt run once: the shared-prefix forward of Prefix Grouper
    (Liu et al. 2025, arXiv:2506.05433), built on the model's key/value cache.

    The ``U`` distinct prompts but their last token run once, with the cache on; the cache is then indexed
    to one copy per row (``reorder_cache``, differentiable: a row's gradient flows back into its prompt's
    single pass) and each row runs ``[last prompt token, response[:-1]]`` on it, whose T logits are those
    of the response tokens. Attention, positions and padding are those of the full rows, so the values and
    the gradient are the full forward's, computed on ``U x (P-1) + N x T`` tokens instead of
    ``N x (P+T)``. The model must keep its cache in training (gradient checkpointing drops it).

    Every batch takes these two passes, prompts repeated or not: under data parallelism the processes'
    backward passes must reach the parameters in the same order (DeepSpeed ZeRO-2 reduces gradients in
    buckets filled in that order)."""
    if batch.prompt_ids.shape[1] < 2:  # one column: add a padding column, so that the prefix is not empty
        pad = torch.zeros_like(batch.prompt_ids[:, :1])
        batch = dataclasses.replace(
            batch,
            prompt_ids=torch.cat([pad, batch.prompt_ids], dim=1),
            prompt_mask=torch.cat([pad.to(batch.prompt_mask.dtype), batch.prompt_mask], dim=1),
        )
    width_p, width_t = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    first, inverse = distinct_prompts(batch)
    attention, position_ids = row_attention(batch)  # [N, P+T] each
    prefix = model(
        input_ids=batch.prompt_ids[first, :-1],  # [U, P-1]
        attention_mask=attention[first, : width_p - 1],
        position_ids=position_ids[first, : width_p - 1],
        logits_to_keep=1,
        use_cache=True,
    )
    cache = prefix.past_key_values
    cache.reorder_cache(inverse)  # [U, ...] -> [N, ...]
    suffix = torch.cat([batch.prompt_ids[:, -1:], batch.response_ids[:, :-1]], dim=1)  # [N, T]
    out = model(
        input_ids=suffix,
        attention_mask=attention[:, : width_p - 1 + width_t],
        position_ids=position_ids[:, width_p - 1 : width_p - 1 + width_t],
        past_key_values=cache,
        use_cache=True,
    )
    return out.logits  # [N, T, V]


def shares_prompts(recipe: Recipe) -> bool:
    """Whether the policy's and the reference's forward passes run each distinct prompt of a micro-batch
    once (``train.share_prompt_prefix``; not under gradient checkpointing, which drops the key/value cache
    the responses read)."""
    return recipe.train.share_prompt_prefix and not recipe.model.gradient_checkpointing


def response_logits(
    model: torch.nn.Module, batch: RolloutBatch, temperature: float = 1.0, share_prompts: bool = False
) -> torch.Tensor:
    """``[N, T, V]`` float32 logits / temperature; position t is the distribution of response token t."""
    return last_logits(model, batch, share_prompts).float() / temperature  # [N, T, V]


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


CHUNK_ELEMENTS = 1 << 19
"""Logits handled at once by :class:`TokenStats` on the CPU: about 2 MB in float32, so that the passes over a
chunk (scale, logsumexp, log p, exp, sum) find it in cache."""
GPU_CHUNK_ELEMENTS = 1 << 25
"""The same on a GPU: 128 MB in float32 per temporary. Each chunk launches about ten kernels, so the CPU's
chunk (10 positions of a 49k vocabulary) made the update wait on kernel launches (profiled on an H200:
~270 chunks per micro-batch of 2,688 positions); this one is a few chunks per micro-batch."""


class TokenStats(torch.autograd.Function):
    """``log p(token)`` and the entropy of ``p = softmax(logits / temperature)`` at every position, in
    float32 from logits of any dtype, a few positions at a time.

    Same values and gradients as :func:`token_logprobs` and :func:`token_entropy` of
    ``logits.float() / temperature``, without their float32 ``[N, T, V]`` copies: forward keeps the logits
    as given plus two ``[N, T]`` statistics (log Z, entropy) and backward recomputes ``log p`` chunk by
    chunk, using ``d log p_y / dx = onehot(y) - p`` and ``dH / dx = -p (log p + H)`` (times 1/temperature).
    """

    @staticmethod
    def forward(ctx, logits, token_ids, temperature):  # noqa: D102
        flat, ids = logits.reshape(-1, logits.shape[-1]), token_ids.reshape(-1, 1)  # [M, V], [M, 1]
        log_z = torch.empty(flat.shape[0], device=flat.device)  # [M]
        logprob, entropy = torch.empty_like(log_z), torch.empty_like(log_z)  # [M]
        for rows in _chunks(flat):
            log_p, log_z[rows] = _log_p(flat[rows], temperature)  # [m, V], [m]
            logprob[rows] = log_p.gather(-1, ids[rows]).squeeze(-1)
            entropy[rows] = -(log_p.exp() * log_p).sum(-1)
        ctx.save_for_backward(logits, token_ids, log_z, entropy)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)
        return logprob.view(token_ids.shape), entropy.view(token_ids.shape)

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy):  # noqa: D102
        logits, token_ids, log_z, entropy = ctx.saved_tensors
        flat, ids = logits.reshape(-1, logits.shape[-1]), token_ids.reshape(-1, 1)  # [M, V], [M, 1]
        grad = torch.empty_like(flat)  # [M, V] in the logits' dtype
        for rows in _chunks(flat):
            log_p, _ = _log_p(flat[rows], ctx.temperature, log_z[rows])  # [m, V]
            p = log_p.exp()  # [m, V]
            g = None  # [m, V], built in place in log_p / p
            if grad_entropy is not None:
                g = log_p.add_(entropy[rows, None]).mul_(p).mul_(-grad_entropy.reshape(-1)[rows, None])
            if grad_logprob is not None:
                g_y = grad_logprob.reshape(-1)[rows, None]  # [m, 1]
                term = p.mul_(-g_y)
                g = term if g is None else g.add_(term)
                g.scatter_add_(-1, ids[rows], g_y)
            grad[rows] = g.div_(ctx.temperature) if ctx.temperature != 1.0 else g
        return grad.view(logits.shape), None, None


def _chunks(flat: torch.Tensor) -> list[slice]:
    budget = CHUNK_ELEMENTS if flat.device.type == "cpu" else GPU_CHUNK_ELEMENTS
    step = max(1, budget // flat.shape[-1])
    return [slice(start, start + step) for start in range(0, flat.shape[0], step)]


def _log_p(
    logits: torch.Tensor, temperature: float, log_z: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log softmax(logits / temperature)`` ``[m, V]`` in a new float32 tensor, and its normaliser log Z
    ``[m]`` (computed unless given)."""
    x = logits.to(torch.float32, copy=True)
    if temperature != 1.0:
        x.div_(temperature)
    if log_z is None:
        log_z = torch.logsumexp(x, dim=-1)
    return x.sub_(log_z.unsqueeze(-1)), log_z


def response_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    share_prompts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each response token (and the token-level entropy) under ``model``.

    The entropy is detached unless ``entropy_grad`` (an entropy bonus needs its gradient).

    Logits are divided by the sampling temperature so the result is comparable to the engine's
    sampling distribution (top-p/top-k truncation is not applied). Both come from :class:`TokenStats`,
    which never holds the float32 logits of the whole batch. ``share_prompts``: see :func:`last_logits`.
    """
    logits = last_logits(model, batch, share_prompts)
    logprobs, entropy = TokenStats.apply(logits, batch.response_ids, temperature)
    if not with_entropy:
        return logprobs, None
    return logprobs, entropy if entropy_grad and torch.is_grad_enabled() else entropy.detach()


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


def policy_output(
    model: torch.nn.Module, temperature: float, share_prompts: bool = False
) -> Callable[[RolloutBatch], torch.Tensor]:
    """A forward for :func:`fill_fields`: the response logits of a causal LM at ``temperature``."""
    return lambda chunk: response_logits(model, chunk, temperature, share_prompts)


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

    The chunks are ``micro`` rows dealt as :func:`rlvr.trainer.batch.micro_batch_rows` deals them
    (``by_length``: longest first), each cut to its longest row: the RL update's micro-batches when it has
    no token budget and its loss takes rows one by one. The results are per row either way; the same
    number of chunks on every process keeps ZeRO-3's parameter gathering in step."""
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

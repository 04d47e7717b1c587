"""Masked reductions shared by the algorithm modules.

All helpers treat ``mask`` as a weight tensor broadcastable to ``x`` (bool or float; a 0/1 response mask
is the usual case). Positions where the mask is zero never contribute, and they cannot leak ``NaN`` or
``inf`` into the result: values are selected with :func:`torch.where` rather than multiplied by zero.
Empty masks give 0 instead of ``NaN``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = [
    "masked_max",
    "critic_targets",
    "critic_targets_of",
    "from_fields",
    "group_relative",
    "is_group_relative",
    "is_zero_without_advantage",
    "masked_mean",
    "masked_min",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "needs",
    "need_params_of",
    "needs_of",
    "is_row_scale",
    "row_scale",
    "safe_denominator",
    "zero_without_advantage",
]

F = TypeVar("F", bound=Callable)
D = TypeVar("D")


def needs(*fields: str, params: dict[str, tuple[str, ...]] | None = None) -> Callable[[F], F]:
    """Declare the extra batch fields a plug-in function reads, passed to it as keyword arguments.

    The trainer computes only what some plug-in declares (a no-grad forward for ``proxy_logprobs``, a
    greedy rollout for ``baseline_rewards``, ...) and passes each declared field by name, so a new loss or
    estimator that needs more than the default arguments is a registry entry, not an edit to the step::

        @POLICY_LOSSES.register("my_loss")
        @needs("group_index", "sequence_rewards")
        def my_loss(logprobs, old_logprobs, advantages, mask, *, group_index, sequence_rewards): ...

    ``params`` names, per field, the plug-in's own hyperparameters the field is computed with: Lp-Reg's
    ``@needs("proxy_logprobs", params={"proxy_logprobs": ("kappa",)})`` has the proxy log-probs computed
    with the loss's ``kappa`` (the recipe's value, else the loss's default).
    """
    params = dict(params or {})
    unknown = set(params) - set(fields)
    if unknown:
        raise ValueError(f"params given for fields not declared: {sorted(unknown)}")

    def mark(fn: F) -> F:
        fn.needs = frozenset(fields)  # type: ignore[attr-defined]
        fn.need_params = {k: tuple(v) for k, v in params.items()}  # type: ignore[attr-defined]
        return fn

    return mark


def needs_of(fn: Callable) -> frozenset[str]:
    """The fields ``fn`` declared with :func:`needs` (empty when it declared none)."""
    return getattr(fn, "needs", frozenset())


def need_params_of(fn: Callable) -> dict[str, tuple[str, ...]]:
    """Per declared field, the names of ``fn``'s hyperparameters it is computed with (see :func:`needs`)."""
    return getattr(fn, "need_params", {})


def critic_targets(returns: Callable) -> Callable[[F], F]:
    """Declare that an advantage estimator learns a critic: ``returns(inputs, **hparams)`` gives the critic's
    regression targets for the same inputs and hyperparameters (GAE's lambda-returns). The trainer's critic
    reads it from the estimator; an estimator that declares it should also declare ``@needs("values")``."""

    def mark(fn: F) -> F:
        fn.critic_targets = returns  # type: ignore[attr-defined]
        return fn

    return mark


def critic_targets_of(fn: Callable) -> Callable | None:
    """The returns function ``fn`` declared with :func:`critic_targets`; None when it uses no critic."""
    return getattr(fn, "critic_targets", None)


def group_relative(fn: F) -> F:
    """Declare that an advantage estimator compares the samples of a prompt with each other (a group
    baseline): with one sample per prompt every advantage it gives is 0. The recipe loader rejects such an
    estimator with ``rollout.num_generations: 1``."""
    fn.group_relative = True  # type: ignore[attr-defined]
    return fn


def is_group_relative(fn: Callable) -> bool:
    """Whether ``fn`` declared :func:`group_relative`."""
    return getattr(fn, "group_relative", False)


def zero_without_advantage(fn: F) -> F:
    """Declare that a policy loss gives a row whose advantage is 0 on every trained token no loss and no
    gradient, whatever the other rows hold: each token's loss is its advantage times a function of its own
    row. The update may then leave such rows out (``train.skip_zero_advantage``), which in GRPO are the
    samples of every prompt whose samples all got the same reward. A loss that selects tokens across rows
    (Clip-Cov, KL-Cov, Lp-Reg) or reads the rewards themselves (PACS) must not declare it."""
    fn.zero_without_advantage = True  # type: ignore[attr-defined]
    return fn


def is_zero_without_advantage(fn: Callable) -> bool:
    """Whether ``fn`` declared :func:`zero_without_advantage`."""
    return getattr(fn, "zero_without_advantage", False)


def row_scale(fn: F) -> F:
    """Declare that a token-weight entry only scales tokens, each response from its own fields: its weights
    for a response depend on that response's entries of the inputs alone (no batch statistic), and are
    never 0 on a trained token (it never removes one, so the loss's token and sequence counts do not
    depend on it). When the update takes a single optimizer step per batch, the policy before the update
    is the one the update runs, so ``old_logprobs`` are the update's own log-probs, detached: entries that
    declare this are then computed inside the update, per micro-batch, and no no-grad pass runs
    beforehand to fill their ``old_logprobs`` (TIS, :func:`rlvr.algorithms.token_weights.tis`)."""
    fn.row_scale = True  # type: ignore[attr-defined]
    return fn


def is_row_scale(fn: Callable) -> bool:
    """Whether ``fn`` declared :func:`row_scale`."""
    return getattr(fn, "row_scale", False)


def from_fields(cls: type[D], source: object, **overrides: object) -> D:
    """A ``cls`` dataclass whose fields are taken by name from ``source`` (a batch; a field it lacks is
    None), then ``overrides``: a new batch field reaches the plug-ins that read it without glue code."""
    values = {f.name: getattr(source, f.name, None) for f in dataclasses.fields(cls)}
    return cls(**{**values, **overrides})


def safe_denominator(denominator: torch.Tensor) -> torch.Tensor:
    """Replace non-positive entries of ``denominator`` by 1 so that ``0 / 0`` becomes ``0``, not ``NaN``."""
    return torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def _weights(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mask broadcast to ``x``'s shape, as floats in ``x``'s dtype (at least float32)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return mask.to(dtype).expand_as(x)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Sum of ``x * mask`` over ``dim`` (all dimensions when ``None``); masked-out entries are ignored."""
    w = _weights(x, mask)
    values = torch.where(w != 0, x * w, torch.zeros_like(w))
    return values.sum() if dim is None else values.sum(dim=dim)


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None
) -> torch.Tensor:
    """Weighted mean of ``x`` over ``dim``: ``sum(x * mask) / sum(mask)``; 0 where the mask sums to 0."""
    w = _weights(x, mask)
    total = masked_sum(x, w, dim)
    count = w.sum() if dim is None else w.sum(dim=dim)
    return total / safe_denominator(count)


def masked_max(x: torch.Tensor, mask: torch.Tensor, empty_value: float = 0.0) -> torch.Tensor:
    """Largest entry of ``x`` where ``mask`` is nonzero (a scalar); ``empty_value`` when there is none.

    Masked-out entries are replaced by ``-inf`` before the reduction, so padding holding ``inf`` or ``NaN``
    never leaks in; the empty case is chosen with :func:`torch.where`, so there is no host sync.
    """
    keep = mask != 0
    largest = torch.where(keep, x, torch.full_like(x, float("-inf"))).max()
    return torch.where(keep.any(), largest, torch.full_like(largest, empty_value))


def masked_min(x: torch.Tensor, mask: torch.Tensor, empty_value: float = 0.0) -> torch.Tensor:
    """Smallest entry of ``x`` where ``mask`` is nonzero (a scalar); ``empty_value`` when there is none.

    The mirror of :func:`masked_max` (masked-out entries become ``+inf``).
    """
    keep = mask != 0
    smallest = torch.where(keep, x, torch.full_like(x, float("inf"))).min()
    return torch.where(keep.any(), smallest, torch.full_like(smallest, empty_value))


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of ``x`` (scalar). ``unbiased`` applies Bessel's correction.

    With a 0/1 mask the unbiased estimate divides the sum of squared deviations by ``count - 1``; a single
    masked entry (or none) gives 0.
    """
    w = _weights(x, mask)
    mean = masked_mean(x, w)
    sq_dev = masked_sum((x - mean) ** 2, w)
    count = w.sum()
    denominator = count - 1 if unbiased else count
    return sq_dev / safe_denominator(denominator)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean if ``shift_mean``) using masked statistics.

    Statistics are computed over every masked entry of the whole tensor (the usual batch-level whitening
    of PPO advantages). Entries where the mask is 0 are returned as 0.
    """
    w = _weights(x, mask)
    mean = masked_mean(x, w)
    var = masked_var(x, w, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(w != 0, whitened, torch.zeros_like(whitened))

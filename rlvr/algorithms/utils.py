"""Masked reductions shared by the algorithm modules.

All helpers treat ``mask`` as a weight tensor broadcastable to ``x`` (bool or float; a 0/1 response mask
is the usual case). Positions where the mask is zero never contribute, and they cannot leak ``NaN`` or
``inf`` into the result: values are selected with :func:`torch.where` rather than multiplied by zero.
Empty masks give 0 instead of ``NaN``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = [
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "needs",
    "needs_of",
    "safe_denominator",
]

F = TypeVar("F", bound=Callable)


def needs(*fields: str) -> Callable[[F], F]:
    """Declare the extra batch fields a plug-in function reads, passed to it as keyword arguments.

    The trainer computes only what some plug-in declares (a no-grad forward for ``proxy_logprobs``, a
    greedy rollout for ``baseline_rewards``, ...) and passes each declared field by name, so a new loss or
    estimator that needs more than the default arguments is a registry entry, not an edit to the step::

        @POLICY_LOSSES.register("my_loss")
        @needs("group_index", "sequence_rewards")
        def my_loss(logprobs, old_logprobs, advantages, mask, *, group_index, sequence_rewards): ...
    """

    def mark(fn: F) -> F:
        fn.needs = frozenset(fields)  # type: ignore[attr-defined]
        return fn

    return mark


def needs_of(fn: Callable) -> frozenset[str]:
    """The fields ``fn`` declared with :func:`needs` (empty when it declared none)."""
    return getattr(fn, "needs", frozenset())


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

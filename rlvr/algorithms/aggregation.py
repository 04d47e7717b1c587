"""Loss aggregation: the one place where a per-token loss ``[N, T]`` becomes a scalar.

How tokens are weighted is an algorithmic choice, not a detail:

* ``"token-mean"``: every token in the mini-batch has the same weight, ``sum(loss * mask) / num_tokens``.
  DAPO (arXiv 2503.14476) argues for it so that long responses are not under-weighted.
* ``"seq-mean-token-mean"``: average over each sequence's tokens, then over sequences. This is the
  objective as written in GRPO (arXiv 2402.03300); it gives each token of a long response less weight.
* ``"seq-mean-token-sum"``: sum over each sequence's tokens, then average over sequences.
* ``"seq-mean-token-sum-norm"``: Dr. GRPO (arXiv 2503.20783), the token sum divided by a constant
  ``max_response_len`` instead of the sequence's own length, which removes GRPO's length bias.

Micro-batching and data parallelism: the trainer computes ``num_tokens`` and ``num_sequences`` once for
the whole mini-batch (all micro-batches on all ranks, e.g. with :func:`aggregation_counts` and an
all-reduce) and passes them to every call. Each mode is then a sum of per-token or per-sequence terms
over one common denominator, so summing the micro-batch results gives exactly the mini-batch value (under
DDP, whose gradient all-reduce averages, multiply by the world size). ``max_response_len`` must likewise
be the same for every micro-batch if micro-batches are padded to different lengths.
"""

from __future__ import annotations

import torch

from rlvr.algorithms.utils import safe_denominator

__all__ = ["LOSS_AGGREGATIONS", "aggregate", "aggregation_counts"]

LOSS_AGGREGATIONS: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
"""Valid values of ``mode`` for :func:`aggregate` (for config validation)."""


def aggregation_counts(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The default normalisers of :func:`aggregate` for ``mask`` ``[N, T]``: ``(num_sequences, num_tokens)``.

    ``num_sequences`` counts the sequences with at least one masked token (all-padding rows, e.g. filler
    rows of an uneven micro-batch or responses dropped by overlong filtering, do not dilute the mean);
    ``num_tokens`` is the sum of the mask. Both are 0-d float tensors, ready to be summed over
    micro-batches or all-reduced over ranks.
    """
    weights = mask.float()  # [N, T]
    num_tokens = weights.sum()
    num_sequences = (weights.sum(dim=-1) > 0).float().sum()
    return num_sequences, num_tokens


def _as_denominator(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-d tensor on ``like``'s device and dtype, with 0 replaced by 1 (so 0 / 0 = 0)."""
    return safe_denominator(torch.as_tensor(value, dtype=like.dtype, device=like.device))


def aggregate(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_sequences: float | torch.Tensor | None = None,
    num_tokens: float | torch.Tensor | None = None,
    max_response_len: int | None = None,
) -> torch.Tensor:
    """Reduce ``per_token_loss`` ``[N, T]`` to a scalar according to ``mode``.

    Args:
        per_token_loss: ``[N, T]`` unreduced loss.
        mask: ``[N, T]`` bool or float; nonzero on tokens that count. Masked-out entries are ignored even
            if they hold ``NaN`` or ``inf``.
        mode: one of :data:`LOSS_AGGREGATIONS`:

            * ``"token-mean"``: ``sum_{i,t} l_it m_it / num_tokens``
            * ``"seq-mean-token-mean"``: ``sum_i (sum_t l_it m_it / sum_t m_it) / num_sequences``
            * ``"seq-mean-token-sum"``: ``sum_i sum_t l_it m_it / num_sequences``
            * ``"seq-mean-token-sum-norm"``: ``sum_i sum_t l_it m_it / max_response_len / num_sequences``
        num_sequences: denominator over sequences; defaults to the non-empty sequences of ``mask``. Pass
            the whole mini-batch's count when aggregating one micro-batch of it.
        num_tokens: denominator over tokens; defaults to ``mask.sum()``. Pass the whole mini-batch's count
            when aggregating one micro-batch of it.
        max_response_len: Dr. GRPO's constant length normaliser; defaults to ``T``.

    Returns:
        0-d tensor. A sequence with no masked token contributes 0, and an empty batch gives 0, never
        ``NaN``.
    """
    if mode not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {LOSS_AGGREGATIONS}")
    if per_token_loss.shape != mask.shape or per_token_loss.dim() != 2:
        raise ValueError(
            f"per_token_loss and mask must both be [N, T]; got {tuple(per_token_loss.shape)} "
            f"and {tuple(mask.shape)}"
        )

    weights = mask.to(torch.promote_types(per_token_loss.dtype, torch.float32))  # [N, T]
    loss = per_token_loss.to(weights.dtype)  # [N, T]
    weighted = torch.where(weights != 0, loss * weights, torch.zeros_like(loss))  # [N, T]
    default_sequences, default_tokens = aggregation_counts(weights)

    if mode == "token-mean":
        tokens = _as_denominator(default_tokens if num_tokens is None else num_tokens, weighted)
        return weighted.sum() / tokens

    sequences = _as_denominator(default_sequences if num_sequences is None else num_sequences, weighted)
    seq_sums = weighted.sum(dim=-1)  # [N]
    if mode == "seq-mean-token-mean":
        seq_lens = weights.sum(dim=-1)  # [N]
        seq_means = seq_sums / safe_denominator(seq_lens)  # [N] 0 for empty sequences
        return seq_means.sum() / sequences
    if mode == "seq-mean-token-sum":
        return seq_sums.sum() / sequences
    # "seq-mean-token-sum-norm"
    length = per_token_loss.shape[-1] if max_response_len is None else max_response_len
    if length <= 0:
        raise ValueError(f"max_response_len must be positive, got {length}")
    return seq_sums.sum() / length / sequences

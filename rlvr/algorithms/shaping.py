"""Reward shaping and batch filtering from DAPO (Yu et al. 2025, arXiv 2503.14476).

* :func:`soft_overlong_penalty`: DAPO's soft overlong punishment, a length-dependent penalty ``[N]`` added to
  the outcome rewards before the advantages are computed (eq. 13).
* :func:`informative_groups`: DAPO's dynamic sampling keeps only prompts whose sampled responses do not all
  get the same reward (the others have zero group-relative advantage and give no gradient).
* :func:`group_order`: group labels in order of first appearance, for refilling a batch group by group.

DAPO's third length tool, overlong *filtering* (dropping truncated responses from the loss), is a token
weight: :func:`rlvr.algorithms.token_weights.overlong_mask`.
"""

from __future__ import annotations

import torch

from rlvr.algorithms.advantages import group_statistics

__all__ = ["group_order", "informative_groups", "soft_overlong_penalty"]


def soft_overlong_penalty(
    lengths: torch.Tensor, *, max_len: int, buffer_len: int, penalty: float = 1.0
) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13).

    With ``L`` a response's length (in tokens), ``L_max = max_len`` and ``L_cache = buffer_len``::

        R_length(L) = 0                                          L <= L_max - L_cache
                    = ((L_max - L_cache) - L) / L_cache * p      L_max - L_cache < L <= L_max
                    = -p                                         L > L_max

    with ``p = penalty`` (1 in the paper). The penalty grows linearly from 0 to ``-p`` over the last
    ``buffer_len`` tokens before ``max_len``, so the model is told gradually that it is running long rather
    than by a cliff. DAPO generates up to ``max_len = 20480`` tokens with ``buffer_len = 4096`` (an expected
    length of 16384): a response truncated at ``max_len`` gets exactly ``-p``. The result is added to the
    verifier's reward, before advantages (it is not a loss term).

    Args:
        lengths: ``[N]`` int or float response lengths.
        max_len: ``L_max``, the length at which the full penalty is reached.
        buffer_len: ``L_cache``, the width of the linear ramp, in ``(0, max_len]``.
        penalty: the full penalty ``p >= 0``.

    Returns:
        ``[N]`` float (at least float32) penalties, all ``<= 0``.
    """
    if not 0 < buffer_len <= max_len:
        raise ValueError(f"buffer_len must be in (0, max_len={max_len}], got {buffer_len}")
    if penalty < 0:
        raise ValueError(f"penalty must be >= 0 (it is subtracted), got {penalty}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be [N], got shape {tuple(lengths.shape)}")
    dtype = torch.promote_types(lengths.dtype, torch.float32)
    length = lengths.detach().to(dtype)  # [N]
    start = max_len - buffer_len  # the ramp starts after this length
    ramp = (start - length) / buffer_len * penalty  # [N], in [-penalty, 0) on the ramp
    out = torch.where(length <= start, torch.zeros_like(length), ramp)  # [N]
    return torch.where(length > max_len, torch.full_like(length, -penalty), out)  # [N]


def _check_groups(values: torch.Tensor, group_index: torch.Tensor) -> None:
    if values.dim() != 1:
        raise ValueError(f"rewards must be [N], got shape {tuple(values.shape)}")
    if tuple(group_index.shape) != tuple(values.shape):
        raise ValueError(f"group_index must be [N]={values.shape[0]}, got {tuple(group_index.shape)}")
    if group_index.is_floating_point() or group_index.is_complex():
        raise TypeError(f"group_index must be an integer tensor, got {group_index.dtype}")


def informative_groups(rewards: torch.Tensor, group_index: torch.Tensor, *, eps: float = 0.0) -> torch.Tensor:
    """Samples whose group has a reward spread: DAPO's dynamic sampling filter (arXiv 2503.14476).

    A prompt whose sampled responses all get the same reward (all correct or all wrong) has zero
    group-relative advantage and contributes no gradient, yet still takes a place in the batch; DAPO
    over-samples and keeps only prompts with::

        std_g(r) > eps          (DAPO: 0 < accuracy_g < 1, i.e. eps = 0 and 0/1 rewards)

    The std is the population one (``n`` in the denominator, as ``np.std`` in verl's filter), computed without
    a Python loop over groups by :func:`rlvr.algorithms.advantages.group_statistics`, which returns exactly 0
    for a group of equal rewards (no rounding noise), so ``eps = 0`` works for continuous rewards too.
    **Singleton groups are not informative** (a single sample has no group baseline to differ from and gets
    zero group-relative advantage); verl's DAPO recipe keeps them, which only matters for ``n = 1`` sampling.

    Args:
        rewards: ``[N]`` float (or int) sequence rewards.
        group_index: ``[N]`` integer prompt ids; arbitrary labels, groups may be uneven and interleaved.
        eps: a group is informative when its reward std is strictly greater than ``eps >= 0``.

    Returns:
        ``[N]`` bool, True for every sample of an informative group.
    """
    _check_groups(rewards, group_index)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    stats = group_statistics(rewards, group_index, unbiased=False)  # [N] each
    return (stats.count > 1) & (stats.std > eps)  # [N]


def group_order(group_index: torch.Tensor) -> list[int]:
    """Group labels in the order of their first appearance in ``group_index`` ``[N]``.

    ``torch.unique`` sorts labels; this keeps the batch order, e.g. to refill a filtered batch with whole
    groups in the order they were sampled. Vectorised: the first position of each label is a scatter-min.
    """
    if group_index.dim() != 1:
        raise ValueError(f"group_index must be [N], got shape {tuple(group_index.shape)}")
    if group_index.is_floating_point() or group_index.is_complex():
        raise TypeError(f"group_index must be an integer tensor, got {group_index.dtype}")
    labels, inverse = torch.unique(group_index, return_inverse=True)  # [G], [N] in [0, G)
    positions = torch.arange(group_index.numel(), device=group_index.device)  # [N]
    first = torch.full((labels.numel(),), group_index.numel(), dtype=torch.long, device=group_index.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")  # [G] first position of each label
    return labels[torch.argsort(first)].tolist()

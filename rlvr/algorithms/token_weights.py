"""Token weights: per-token multipliers of the policy loss, and token selection.

Every entry is registered in :data:`TOKEN_WEIGHTS` and has the same call signature::

    fn(inputs: TokenWeightInputs, **hparams) -> (weights, metrics)

with ``weights`` ``[N, T]`` float and ``metrics`` a dict of detached 0-d tensors. The trainer multiplies
the weights of every configured entry together (:func:`combine_token_weights`) and applies the product to
the per-token loss:

* a weight of exactly ``0`` **removes** the token: it contributes no loss and does not count in the
  aggregation's token or sequence counts (the trainer builds those counts from ``weights != 0``);
* a positive weight scales the token's loss (an importance weight; it does not change the counts).

Weights are 0 outside ``response_mask`` and are constants (no gradient flows through them). Entries read
what they need from :class:`TokenWeightInputs`; hyper-parameters are keyword-only, so a typo in a recipe is
a ``TypeError``. An entry that reads a field the trainer computes in a no-grad pass before the update
(``old_logprobs``, ``old_entropy``) declares it with :func:`rlvr.algorithms.utils.needs` (here: ``tis`` and
``mismatch_mask`` need ``old_logprobs``, ``forking_tokens`` needs ``old_entropy``), so the trainer runs that
pass only when something declares a field it fills; an undeclared one may be None. For token weights the
declared names are fields the trainer fills in :class:`TokenWeightInputs`, not keyword arguments. An entry
that only scales tokens, each response from its own fields, declares
:func:`rlvr.algorithms.utils.row_scale` (here: ``tis``): when the update takes one optimizer step per batch,
the trainer computes such entries inside the update from its own log-probs, per micro-batch, and no pass
runs for their ``old_logprobs``; the other entries (``overlong_mask`` reads no log-probs) are computed
before the update as usual.

Registered entries (``r = exp(old_logprobs - engine_logprobs)``, the trainer/engine probability ratio of
the sampled token, i.e. target policy over behaviour policy):

* ``"forking_tokens"``: :func:`forking_tokens`, 1 on the top-``q`` fraction of tokens by entropy, else 0
  (Wang et al. 2025, "Beyond the 80/20 rule", arXiv 2506.01939);
* ``"tis"``: :func:`tis`, truncated importance sampling ``min(r, C)`` per token or per sequence, for the
  mismatch between the rollout engine and the trainer (Yao et al. 2025, "Your efficient RL framework
  secretly brings you off-policy RL training"; used by EAD, arXiv 2510.05251, whose annealed sampling
  temperature makes the behaviour policy differ on purpose);
* ``"mismatch_mask"``: :func:`mismatch_mask`, masked importance sampling: drop tokens (or sequences) whose
  ratio leaves ``[low, high]``;
* ``"overlong_mask"``: :func:`overlong_mask`, drop every token of a truncated response (DAPO's overlong
  filtering, arXiv 2503.14476).

``N`` is the number of responses and ``T`` the padded response length (see :mod:`rlvr.types`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlvr.algorithms.policy_losses import MAX_LOG_RATIO
from rlvr.algorithms.utils import from_fields, masked_max, masked_mean, masked_min, needs, needs_of, row_scale
from rlvr.registry import Registry

__all__ = [
    "TOKEN_WEIGHTS",
    "TokenWeightFn",
    "TokenWeightInputs",
    "combine_token_weights",
    "forking_tokens",
    "mismatch_mask",
    "overlong_mask",
    "tis",
]

TokenWeightFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``fn(inputs: TokenWeightInputs, **hparams) -> ([N, T] weights, metrics)``."""

TOKEN_WEIGHTS: Registry[TokenWeightFn] = Registry("token weighting", inputs=1)

LEVELS = ("token", "sequence")
"""Valid values of ``level`` for :func:`tis` and :func:`mismatch_mask`."""


@dataclass
class TokenWeightInputs:
    """Everything a token-weighting entry may read, for one batch of ``N`` responses.

    Attributes:
        response_mask: ``[N, T]`` bool or float, nonzero on response tokens that are trained on.
        old_logprobs: ``[N, T]`` log-probabilities of the sampled tokens under the trainer's policy before the
            update (the target policy of the importance ratio); None when no configured entry declared
            ``@needs("old_logprobs")`` and nothing else asked for them.
        engine_logprobs: ``[N, T]`` log-probabilities of the same tokens reported by the rollout engine
            (the behaviour policy that actually sampled them).
        advantages: ``[N, T]`` advantages.
        truncated: ``[N]`` bool, True where the response hit the maximum length.
        old_entropy: ``[N, T]`` optional entropy of the trainer's next-token distribution before the update.
    """

    response_mask: torch.Tensor  # [N, T]
    old_logprobs: torch.Tensor | None  # [N, T]
    engine_logprobs: torch.Tensor  # [N, T]
    advantages: torch.Tensor  # [N, T]
    truncated: torch.Tensor  # [N] bool
    old_entropy: torch.Tensor | None = None  # [N, T]

    @classmethod
    def from_batch(cls, batch: object, **overrides: object) -> TokenWeightInputs:
        """These fields of ``batch`` (a :class:`~rlvr.types.RolloutBatch`), by name (:func:`from_fields`)."""
        return from_fields(cls, batch, **overrides)

    def __post_init__(self) -> None:
        if self.response_mask.dim() != 2:
            raise ValueError(f"response_mask must be [N, T], got shape {tuple(self.response_mask.shape)}")
        shape = tuple(self.response_mask.shape)
        for name in ("old_logprobs", "engine_logprobs", "advantages", "old_entropy"):
            tensor = getattr(self, name)
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(
                    f"{name} must have the shape of response_mask {shape}, got {tuple(tensor.shape)}"
                )
        if tuple(self.truncated.shape) != (shape[0],):
            raise ValueError(f"truncated must be [N]={shape[0]}, got {tuple(self.truncated.shape)}")
        if self.truncated.dtype != torch.bool:
            raise TypeError(f"truncated must be a bool tensor, got {self.truncated.dtype}")

    @property
    def valid(self) -> torch.Tensor:
        """``[N, T]`` bool, True on trained response tokens."""
        return self.response_mask != 0

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights: the log-probs' dtype (``old_logprobs``, else ``engine_logprobs``), at
        least float32."""
        logprobs = self.old_logprobs if self.old_logprobs is not None else self.engine_logprobs
        return torch.promote_types(logprobs.dtype, torch.float32)


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def _log_ratios(inputs: TokenWeightInputs, level: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-ratios ``old - engine`` ``[N, T]`` (0 off the mask) and the unit the level works on.

    Returns ``(token_log_ratio [N, T], unit_mask)`` where ``unit_mask`` is the ``[N, T]`` valid-token mask
    for ``level="token"`` and the ``[N]`` mask of non-empty responses for ``level="sequence"``. Padding may
    hold any value (``inf``, ``NaN``): it is selected away with :func:`torch.where`.
    """
    valid = inputs.valid  # [N, T]
    dtype = inputs.dtype
    log_ratio = inputs.old_logprobs.detach().to(dtype) - inputs.engine_logprobs.detach().to(dtype)  # [N, T]
    log_ratio = torch.where(valid, log_ratio, torch.zeros_like(log_ratio))  # [N, T]
    unit = valid if level == "token" else valid.any(dim=-1)  # [N, T] or [N]
    return log_ratio, unit


def _to_tokens(per_unit: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Broadcast a ``[N]`` per-sequence value (or pass a ``[N, T]`` one) to the tokens; 0 off ``valid``."""
    if per_unit.dim() == 1:
        per_unit = per_unit.unsqueeze(-1).expand(valid.shape)  # [N, T]
    return torch.where(valid, per_unit, torch.zeros_like(per_unit))  # [N, T]


@TOKEN_WEIGHTS.register("forking_tokens")
@needs("old_entropy")
def forking_tokens(
    inputs: TokenWeightInputs, *, top_q: float = 0.2
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Train only on the high-entropy "forking" tokens (Wang et al. 2025, arXiv 2506.01939).

    The paper keeps the policy gradient of the tokens whose entropy is in the top ``q`` of the batch and
    drops the rest (``q = 0.2``: "beyond the 80/20 rule")::

        w_it = 1[H_it >= tau_q]        tau_q = the k-th largest entropy among the batch's valid tokens,
                                       k = ceil(q * num_valid)

    so at least ``k`` tokens are kept (exactly ``k`` when no other token ties with the ``k``-th). **Ties**
    at the threshold are all kept, as in the paper's indicator ``1[H >= tau]``: the selection is then a
    function of the entropies alone, independent of the order of the tokens in the batch. (A batch whose
    entropies are mostly equal, e.g. many exact zeros, can thus keep more than ``q`` of its tokens.) The
    product ``q * num_valid`` is rounded up after subtracting ``1e-6``, so float error in ``q`` (``0.1 * 30 =
    3.0000000000000004``) does not add a token. The "batch" is what this call sees: the trainer passes the
    whole batch of all processes (:func:`rlvr.trainer.distributed.whole_batch`), so the threshold does not
    depend on the number of processes. The entropies are those of the trainer's policy before the
    update (``inputs.old_entropy``), so the selection is fixed for all updates on one batch.

    Args:
        inputs: uses ``response_mask`` and ``old_entropy`` (required).
        top_q: fraction of valid tokens to keep, in ``(0, 1]``; ``1`` keeps every token.

    Returns:
        ``[N, T]`` 0/1 weights and metrics ``selected_frac`` (kept tokens / valid tokens) and
        ``entropy_threshold`` (``tau_q``; 0 when the batch has no valid token).
    """
    if not 0 < top_q <= 1:
        raise ValueError(f"top_q must be in (0, 1], got {top_q}")
    if inputs.old_entropy is None:
        raise ValueError(
            "forking_tokens needs inputs.old_entropy (the trainer's token entropy before the update)"
        )
    valid = inputs.valid  # [N, T]
    entropy = inputs.old_entropy.detach().to(inputs.dtype)  # [N, T]
    ranked = torch.where(valid, entropy, torch.full_like(entropy, float("-inf"))).flatten()  # [N*T]
    ranked = torch.sort(ranked, descending=True).values  # [N*T], valid entropies first
    num_valid = valid.sum()  # []
    # k = ceil(q * n) in float64 on the device (no host sync); k >= 1 whenever n >= 1
    k = torch.ceil(top_q * num_valid.to(torch.float64) - 1e-6).long().clamp(min=1)  # []
    if ranked.numel() == 0:  # N * T == 0: nothing to select (and nothing to gather from)
        ranked = torch.zeros(1, dtype=entropy.dtype, device=entropy.device)
    threshold = ranked.gather(0, (k - 1).clamp(max=ranked.numel() - 1).view(1)).squeeze(0)  # []
    selected = valid & (entropy >= threshold)  # [N, T]
    weights = selected.to(inputs.dtype)  # [N, T]

    with torch.no_grad():
        has_valid = num_valid > 0
        metrics = {
            "selected_frac": masked_mean(selected.float(), valid),
            "entropy_threshold": torch.where(has_valid, threshold, torch.zeros_like(threshold)),
        }
    return weights, metrics


@TOKEN_WEIGHTS.register("tis")
@needs("old_logprobs")
@row_scale
def tis(
    inputs: TokenWeightInputs, *, cap: float = 2.0, level: str = "token"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Truncated importance sampling for the rollout/trainer mismatch (Yao et al. 2025).

    The rollout engine (vLLM: different kernels, precision, sampling temperature) samples from a behaviour
    policy ``pi_engine`` that is not the trainer's ``pi_old``, even with identical weights, so the rollouts
    are off-policy. Yao et al. ("Your efficient RL framework secretly brings you off-policy RL training",
    fengyao.notion.site, 2025) correct the policy gradient with a truncated importance weight::

        token level:     w_it = min(r_it, C),            r_it = pi_old(y_it) / pi_engine(y_it)
                                                              = exp(old_logprobs - engine_logprobs)
        sequence level:  w_it = min(r_i, C) for every valid token of response i,
                                                         r_i  = exp(sum_t (old_logprobs - engine_logprobs))

    with ``C = cap`` (2 in the blog post). EAD (arXiv 2510.05251) samples at an annealed per-position
    temperature, i.e. from a behaviour policy that differs from ``pi_theta`` on purpose, and pairs it with
    this weight. The sequence-level ratio is the full product of token ratios (unbiased but high variance);
    for the length-normalised geometric mean, see :func:`mismatch_mask`. Log-ratios (the per-token ones,
    and the per-sequence sum) are clamped to ``+-MAX_LOG_RATIO`` before ``exp``, so nothing overflows and a
    valid token's weight is never exactly 0 (TIS scales tokens; it never removes one).

    Args:
        inputs: uses ``response_mask``, ``old_logprobs`` and ``engine_logprobs``.
        cap: truncation ``C > 0``; weights are at most ``cap``.
        level: ``"token"`` or ``"sequence"``.

    Returns:
        ``[N, T]`` weights and metrics over valid tokens (token level) or over non-empty responses
        (sequence level): ``ratio_mean``, ``ratio_min``, ``ratio_max`` (before truncation, after the clamp)
        and ``capped_frac`` (the fraction with ``r > cap``).
    """
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    _check_level(level)
    valid = inputs.valid  # [N, T]
    log_ratio, unit = _log_ratios(inputs, level)  # [N, T], [N, T] or [N]
    if level == "sequence":
        log_ratio = log_ratio.sum(dim=-1)  # [N]
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))  # [N, T] or [N]
    weights = _to_tokens(ratio.clamp(max=cap), valid)  # [N, T]

    with torch.no_grad():
        metrics = {
            "ratio_mean": masked_mean(ratio, unit),
            "ratio_min": masked_min(ratio, unit, empty_value=1.0),
            "ratio_max": masked_max(ratio, unit, empty_value=1.0),
            "capped_frac": masked_mean((ratio > cap).float(), unit),
        }
    return weights, metrics


@TOKEN_WEIGHTS.register("mismatch_mask")
@needs("old_logprobs")
def mismatch_mask(
    inputs: TokenWeightInputs, *, low: float = 0.5, high: float = 2.0, level: str = "token"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked importance sampling: drop tokens or responses whose engine/trainer ratio is out of range.

    Where :func:`tis` scales by a truncated ratio, this entry keeps (weight 1) or drops (weight 0)::

        token level:     w_it = 1[low <= r_it <= high],   r_it = exp(old_logprobs - engine_logprobs)
        sequence level:  w_it = 1[low <= g_i <= high],    g_i  = exp(mean_t (old_logprobs - engine_logprobs))

    for every valid token ``t`` of response ``i``. The sequence ratio ``g_i`` is the geometric mean of the
    token ratios (length-normalised, so long responses are not dropped for their length alone). Tokens
    sampled where the engine and trainer disagree badly (numerical bugs, mismatched kernels, or an
    exploratory sampling temperature, EAD arXiv 2510.05251) then give no gradient rather than a biased one
    (the masked-IS alternative to TIS discussed by Yao et al. 2025). Combine with ``tis`` for "mask the
    outliers, weight the rest". Log-ratios are clamped to ``+-MAX_LOG_RATIO`` before ``exp``.

    Args:
        inputs: uses ``response_mask``, ``old_logprobs`` and ``engine_logprobs``.
        low: smallest kept ratio, in ``[0, 1]``.
        high: largest kept ratio, ``>= 1`` (``float("inf")`` for no upper bound).
        level: ``"token"`` or ``"sequence"``.

    Returns:
        ``[N, T]`` 0/1 weights and metrics over valid tokens (token level) or non-empty responses (sequence
        level): ``masked_frac`` (dropped), ``masked_frac_low`` (``r < low``), ``masked_frac_high``
        (``r > high``).
    """
    if not 0 <= low <= 1 <= high:
        raise ValueError(f"need 0 <= low <= 1 <= high, got low={low}, high={high}")
    _check_level(level)
    valid = inputs.valid  # [N, T]
    log_ratio, unit = _log_ratios(inputs, level)  # [N, T], [N, T] or [N]
    if level == "sequence":
        log_ratio = masked_mean(log_ratio, valid, dim=-1)  # [N], 0 for an empty response
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))  # [N, T] or [N]
    too_low = ratio < low  # [N, T] or [N]
    too_high = ratio > high  # [N, T] or [N]
    keep = ~(too_low | too_high)  # [N, T] or [N]
    weights = _to_tokens(keep.to(ratio.dtype), valid)  # [N, T]

    with torch.no_grad():
        metrics = {
            "masked_frac": masked_mean((~keep).float(), unit),
            "masked_frac_low": masked_mean(too_low.float(), unit),
            "masked_frac_high": masked_mean(too_high.float(), unit),
        }
    return weights, metrics


@TOKEN_WEIGHTS.register("overlong_mask")
def overlong_mask(inputs: TokenWeightInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Overlong filtering of DAPO (Yu et al. 2025, arXiv 2503.14476): drop truncated responses from the loss.

    A response cut off at the maximum length gets a reward that says little about its reasoning (it may
    have been on its way to a correct answer), so DAPO masks its loss entirely::

        w_it = 0 if response i was truncated, else 1        (on valid tokens)

    DAPO's other option for long responses, the soft overlong *reward* penalty, is
    :func:`rlvr.algorithms.shaping.soft_overlong_penalty`.

    Args:
        inputs: uses ``response_mask`` and ``truncated``.

    Returns:
        ``[N, T]`` 0/1 weights and metric ``masked_frac``: the fraction of non-empty responses dropped.
    """
    valid = inputs.valid  # [N, T]
    keep = valid & ~inputs.truncated.unsqueeze(-1)  # [N, T]
    weights = keep.to(inputs.dtype)  # [N, T]
    with torch.no_grad():
        metrics = {"masked_frac": masked_mean(inputs.truncated.float(), valid.any(dim=-1))}
    return weights, metrics


def combine_token_weights(
    entries: Sequence[tuple[str | TokenWeightFn, Mapping[str, Any]]], inputs: TokenWeightInputs
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Multiply the weights of several entries and collect their metrics under the entries' names.

    Args:
        entries: ``(entry, hparams)`` pairs, applied in order. ``entry`` is a name in :data:`TOKEN_WEIGHTS`
            or a function with the :data:`TokenWeightFn` signature; ``hparams`` are its keyword arguments.
        inputs: the batch.

    Returns:
        ``weights`` ``[N, T]``: the product of the entries' weights, 0 outside ``response_mask``. With no
        entries, ``response_mask`` itself as weights (converted to at least float32; the same tensor when
        it already is float32). ``metrics``: each entry's metrics prefixed with its name
        (``"tis/capped_frac"``; the name is the registry name, or the function's ``__name__`` which for the
        built-in entries is the same; a name used twice gets ``_2``, ``_3``, ... on its later uses), plus,
        when there are entries, ``kept_frac`` (valid tokens whose combined weight is nonzero) and
        ``weight_mean`` (mean combined weight over those kept tokens). No metrics with no entries.
    """
    valid = inputs.valid  # [N, T]
    if not entries:
        return inputs.response_mask.to(torch.promote_types(inputs.response_mask.dtype, torch.float32)), {}

    weights = valid.to(inputs.dtype)  # [N, T]
    metrics: dict[str, torch.Tensor] = {}
    used: dict[str, int] = {}
    for entry, hparams in entries:
        if isinstance(entry, str):
            name, fn = entry, TOKEN_WEIGHTS.get(entry)
        else:
            name, fn = getattr(entry, "__name__", type(entry).__name__), entry
        used[name] = used.get(name, 0) + 1
        prefix = name if used[name] == 1 else f"{name}_{used[name]}"
        try:
            entry_weights, entry_metrics = fn(inputs, **dict(hparams))
        except (AttributeError, TypeError) as error:
            # a field the pass fills but the entry did not declare, read as None
            undeclared = [f for f in ("old_logprobs", "old_entropy") if getattr(inputs, f) is None]
            undeclared = [f for f in undeclared if f not in needs_of(fn)]
            if not undeclared or "NoneType" not in str(error):
                raise
            raise TypeError(
                f"token weighting {name!r} failed ({error}); {' and '.join(undeclared)} were not computed "
                f"for this batch: an entry that reads them declares @needs(...) (rlvr.algorithms.utils.needs)"
            ) from error
        if tuple(entry_weights.shape) != tuple(valid.shape):
            raise ValueError(
                f"token weighting {name!r} returned weights of shape {tuple(entry_weights.shape)}, "
                f"expected {tuple(valid.shape)}"
            )
        weights = weights * entry_weights.detach().to(weights.dtype)  # [N, T]
        metrics.update({f"{prefix}/{key}": value for key, value in entry_metrics.items()})
    weights = torch.where(valid, weights, torch.zeros_like(weights))  # [N, T]

    with torch.no_grad():
        kept = weights != 0  # [N, T]
        metrics["kept_frac"] = masked_mean(kept.float(), valid)
        metrics["weight_mean"] = masked_mean(weights, kept)
    return weights, metrics

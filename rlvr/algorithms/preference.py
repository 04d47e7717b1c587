"""Preference-optimisation losses (the DPO family) as pure functions of per-sequence log-probabilities,
and the pair builder that turns verifier-scored groups into preference pairs.

Every loss is registered in :data:`PREFERENCE_LOSSES` and has the same call signature::

    fn(inputs: PreferenceInputs, **hparams) -> (loss [P], metrics)

``inputs`` holds, for ``P`` preference pairs, the summed log-probability of the chosen and of the rejected
response under the policy (these carry the gradient), their lengths in tokens, and - where the loss reads
them - the same under the frozen reference (``ref_*``) and under the policy that sampled the responses
(``old_*``; the previous iterate pi_t of an iterative method). ``loss`` holds one value per pair and is
**not reduced**: the trainer sums it and divides by the number of pairs of the whole mini-batch across
processes, so the gradient does not depend on micro-batching. KTO is unpaired: its ``chosen`` side holds
the desirable responses and its ``rejected`` side the undesirable ones (any two sizes), and its loss has
one value per response.

A loss declares the inputs it reads besides the policy's with :func:`rlvr.algorithms.utils.needs`:
``ref_logprobs`` (a frozen reference model is loaded and run), ``old_logprobs`` (the sampling policy) and
``kl_logps`` (KTO's mismatched-pair reference point). A loss that declares none is reference-free, and no
reference model is loaded for it.

Registered losses (``r(y) = log pi(y|x) - log pi_ref(y|x)``, ``avg(y) = log pi(y|x) / |y|``):

* ``"dpo"`` - :func:`dpo_loss`, ``-log sigmoid(beta (r(y_w) - r(y_l)))``, with label smoothing eps:
  conservative DPO (Rafailov et al. 2023, arXiv 2305.18290; cDPO, Mitchell 2023);
* ``"ipo"`` - :func:`ipo_loss`, ``(r(y_w) - r(y_l) - 1 / (2 tau))^2`` (Azar et al. 2023, arXiv 2310.12036);
* ``"simpo"`` - :func:`simpo_loss`, ``-log sigmoid(beta (avg(y_w) - avg(y_l)) - gamma)``, reference-free
  (Meng et al. 2024, arXiv 2405.14734);
* ``"orpo"`` - :func:`orpo_loss`, NLL of ``y_w`` ``- lambda log sigmoid(log odds(y_w) - log odds(y_l))``,
  reference-free (Hong et al. 2024, arXiv 2403.07691);
* ``"rpo"`` - :func:`rpo_loss`, DPO plus ``alpha`` times the length-normalised NLL of ``y_w``: Iterative
  Reasoning Preference Optimization (Pang et al. 2024, arXiv 2404.19733);
* ``"kto"`` - :func:`kto_loss`, prospect-theoretic loss on unpaired desirable / undesirable responses
  around a reference point ``z0`` (Ethayarajh et al. 2024, arXiv 2402.01306);
* ``"inpo"`` - :func:`inpo_loss`, Iterative Nash Policy Optimization: a squared loss whose target mixes
  the reference and the previous iterate, one no-regret (online mirror descent) step against the
  preference game per iteration (Zhang et al. 2024, arXiv 2407.00617).

Metrics (detached scalars, documented in ``docs/metrics.md``): ``rewards/chosen``, ``rewards/rejected``
(the loss's implicit reward of each side: ``beta r(y)`` for the reference-based losses, ``beta avg(y)`` for
the reference-free ones), ``rewards/margin``, ``rewards/accuracy`` (fraction of pairs whose chosen reward
is the larger), ``logps/chosen``, ``logps/rejected`` (summed log-probs) and ``nll`` (mean per-token NLL of
the chosen responses).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from rlvr.algorithms.utils import needs
from rlvr.registry import Registry

__all__ = [
    "PREFERENCE_LOSSES",
    "PAIRINGS",
    "PreferenceInputs",
    "PreferenceLossFn",
    "build_pairs",
    "dpo_loss",
    "inpo_loss",
    "ipo_loss",
    "kto_loss",
    "orpo_loss",
    "rpo_loss",
    "simpo_loss",
]

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]


@dataclass
class PreferenceInputs:
    """Per-sequence log-probabilities of ``P`` preference pairs (or, for KTO, of desirable and undesirable
    responses). Log-probs are sums over the response's tokens; lengths are token counts."""

    chosen_logps: torch.Tensor  # [P] policy, carries the gradient
    rejected_logps: torch.Tensor  # [P]
    chosen_tokens: torch.Tensor  # [P] float
    rejected_tokens: torch.Tensor  # [P] float
    ref_chosen_logps: torch.Tensor | None = None  # [P] frozen reference
    ref_rejected_logps: torch.Tensor | None = None  # [P]
    old_chosen_logps: torch.Tensor | None = None  # [P] the policy that sampled the pair (pi_t)
    old_rejected_logps: torch.Tensor | None = None  # [P]
    kl_logps: torch.Tensor | None = None  # [M] policy log-probs of mismatched (prompt, response) pairs (KTO)
    ref_kl_logps: torch.Tensor | None = None  # [M] the same under the reference


PreferenceLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``fn(inputs: PreferenceInputs, **hparams) -> ([P] loss, metrics)``."""

PREFERENCE_LOSSES: Registry[PreferenceLossFn] = Registry("preference loss", inputs=1)


def _required(inputs: PreferenceInputs, *names: str) -> list[torch.Tensor]:
    values = [getattr(inputs, name) for name in names]
    missing = [name for name, value in zip(names, values, strict=True) if value is None]
    if missing:
        raise ValueError(f"this preference loss reads {missing}, which the batch does not hold")
    return values


def _paired(inputs: PreferenceInputs) -> None:
    if inputs.chosen_logps.shape != inputs.rejected_logps.shape:
        raise ValueError(
            "a paired loss needs as many chosen as rejected responses, got "
            f"{tuple(inputs.chosen_logps.shape)} and {tuple(inputs.rejected_logps.shape)}"
        )


def _average(logps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return logps / tokens.clamp(min=1.0)  # [P]


def _metrics(
    inputs: PreferenceInputs, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, **extra
) -> dict[str, torch.Tensor]:
    """The metrics every preference loss reports (see the module docstring), detached."""
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    metrics = {
        "rewards/chosen": c.mean() if c.numel() else c.new_zeros(()),
        "rewards/rejected": r.mean() if r.numel() else r.new_zeros(()),
        "logps/chosen": inputs.chosen_logps.detach().mean() if c.numel() else c.new_zeros(()),
        "logps/rejected": inputs.rejected_logps.detach().mean() if r.numel() else r.new_zeros(()),
        "nll": -(inputs.chosen_logps.detach().sum() / inputs.chosen_tokens.sum().clamp(min=1.0)),
    }
    if c.shape == r.shape:
        metrics["rewards/margin"] = (c - r).mean()
        metrics["rewards/accuracy"] = (c > r).float().mean()
    metrics.update({key: value.detach() for key, value in extra.items()})
    return metrics


def _reference_margins(inputs: PreferenceInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``r(y_w)``, ``r(y_l)``: the policy-to-reference log-ratios of both sides, ``[P]`` each."""
    _paired(inputs)
    ref_c, ref_r = _required(inputs, "ref_chosen_logps", "ref_rejected_logps")
    return inputs.chosen_logps - ref_c, inputs.rejected_logps - ref_r


@PREFERENCE_LOSSES.register("dpo")
@needs("ref_logprobs")
def dpo_loss(
    inputs: PreferenceInputs,
    *,
    beta: Positive = 0.1,
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7):
    ``-log sigmoid(beta [r(y_w) - r(y_l)])`` with ``r(y) = log pi(y|x) - log pi_ref(y|x)``.

    ``label_smoothing`` eps > 0 is conservative DPO (cDPO, Mitchell 2023): the label is assumed flipped
    with probability eps, ``-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)``.
    """
    chosen, rejected = _reference_margins(inputs)
    z = beta * (chosen - rejected)  # [P]
    loss = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)  # [P]
    return loss, _metrics(inputs, beta * chosen, beta * rejected)


@PREFERENCE_LOSSES.register("ipo")
@needs("ref_logprobs")
def ipo_loss(
    inputs: PreferenceInputs, *, tau: Positive = 0.1
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO (Azar et al. 2023, arXiv 2310.12036, Eq. 17): ``(r(y_w) - r(y_l) - 1 / (2 tau))^2``.

    A squared loss regresses the log-ratio margin to a finite target ``1 / (2 tau)``, so it does not push
    the margin to infinity on deterministic preferences as DPO's logistic loss does. Log-probs are sums over
    the response, as in the paper (``tau`` plays the role of DPO's ``beta`` in the reported rewards).
    """
    chosen, rejected = _reference_margins(inputs)
    loss = (chosen - rejected - 1.0 / (2.0 * tau)) ** 2  # [P]
    return loss, _metrics(inputs, tau * chosen, tau * rejected)


@PREFERENCE_LOSSES.register("simpo")
def simpo_loss(
    inputs: PreferenceInputs,
    *,
    beta: Positive = 2.0,
    gamma: NonNegative = 1.0,
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SimPO (Meng et al. 2024, arXiv 2405.14734, Eq. 6): reference-free,
    ``-log sigmoid(beta avg(y_w) - beta avg(y_l) - gamma)`` with ``avg(y) = log pi(y|x) / |y|``.

    The length-normalised log-likelihood is the implicit reward (it matches how generation ranks
    responses), and ``gamma`` is a target reward margin. Defaults: the paper's ``beta = 2.0`` with a margin
    ``gamma = 1.0`` (its tuned ranges are beta 2.0-2.5, gamma 0.5-1.6).
    """
    _paired(inputs)
    chosen = beta * _average(inputs.chosen_logps, inputs.chosen_tokens)  # [P]
    rejected = beta * _average(inputs.rejected_logps, inputs.rejected_tokens)  # [P]
    z = chosen - rejected - gamma
    loss = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)  # [P]
    return loss, _metrics(inputs, chosen, rejected)


def _log_odds(average_logps: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` of ``p = exp(average_logps)`` (``average_logps < 0``), computed stably."""
    return average_logps - torch.log(-torch.expm1(average_logps.clamp(max=-1e-6)))  # [P]


@PREFERENCE_LOSSES.register("orpo")
def orpo_loss(
    inputs: PreferenceInputs, *, lam: Positive = 0.1
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ORPO (Hong et al. 2024, arXiv 2403.07691, Eqs. 6-7): reference-free,
    ``-avg(y_w) - lam log sigmoid(log odds(y_w) - log odds(y_l))``, where ``odds(y) = p / (1 - p)`` of the
    per-token average likelihood ``p = exp(avg(y))``.

    The first term is the supervised fine-tuning NLL of the chosen response; the odds-ratio term penalises
    the rejected one, so no separate SFT stage and no reference model are needed. Reported rewards are
    ``lam avg(y)``; ``orpo/log_odds_ratio`` is the mean log odds ratio.
    """
    _paired(inputs)
    chosen_avg = _average(inputs.chosen_logps, inputs.chosen_tokens)  # [P]
    rejected_avg = _average(inputs.rejected_logps, inputs.rejected_tokens)  # [P]
    log_odds_ratio = _log_odds(chosen_avg) - _log_odds(rejected_avg)  # [P]
    loss = -chosen_avg - lam * F.logsigmoid(log_odds_ratio)  # [P]
    return loss, _metrics(
        inputs, lam * chosen_avg, lam * rejected_avg, **{"orpo/log_odds_ratio": log_odds_ratio.mean()}
    )


@PREFERENCE_LOSSES.register("rpo")
@needs("ref_logprobs")
def rpo_loss(
    inputs: PreferenceInputs, *, beta: Positive = 0.1, alpha: NonNegative = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Iterative RPO (Pang et al. 2024, arXiv 2404.19733, Eq. 1): DPO plus ``alpha`` times the NLL of the
    chosen response normalised by its length, ``-log pi(y_w|x) / |y_w|``.

    The NLL term keeps the likelihood of the correct reasoning chains from falling while the margin grows
    (DPO alone lowers both sides on reasoning tasks). The paper uses ``alpha = 1``.
    """
    chosen, rejected = _reference_margins(inputs)
    dpo = -F.logsigmoid(beta * (chosen - rejected))  # [P]
    nll = -_average(inputs.chosen_logps, inputs.chosen_tokens)  # [P]
    return dpo + alpha * nll, _metrics(inputs, beta * chosen, beta * rejected)


@PREFERENCE_LOSSES.register("kto")
@needs("ref_logprobs", "kl_logps")
def kto_loss(
    inputs: PreferenceInputs,
    *,
    beta: Positive = 0.1,
    desirable_weight: Positive = 1.0,
    undesirable_weight: Positive = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306, Eq. 8), unpaired: a desirable response ``y`` costs
    ``lambda_D (1 - sigmoid(beta (r(y) - z0)))``, an undesirable one ``lambda_U (1 - sigmoid(beta (z0 -
    r(y))))``. One value per response: the desirable ones first, then the undesirable ones.

    The reference point ``z0 = max(0, mean KL estimate)`` is estimated, as in the paper, from mismatched
    pairs (each prompt with another row's response: ``kl_logps - ref_kl_logps``) and carries no gradient.
    ``desirable_weight`` / ``undesirable_weight`` rebalance unequal counts (the paper keeps
    ``lambda_D n_D / (lambda_U n_U)`` in [1, 4/3]).
    """
    ref_c, ref_r, kl, ref_kl = _required(
        inputs, "ref_chosen_logps", "ref_rejected_logps", "kl_logps", "ref_kl_logps"
    )
    z0 = (kl - ref_kl).detach().mean().clamp(min=0) if kl.numel() else kl.new_zeros(())
    chosen = inputs.chosen_logps - ref_c  # [Pd]
    rejected = inputs.rejected_logps - ref_r  # [Pu]
    loss = torch.cat(
        [
            desirable_weight * (1 - torch.sigmoid(beta * (chosen - z0))),
            undesirable_weight * (1 - torch.sigmoid(beta * (z0 - rejected))),
        ]
    )  # [Pd + Pu]
    return loss, _metrics(inputs, beta * chosen, beta * rejected, **{"kto/z0": z0})


@PREFERENCE_LOSSES.register("inpo")
@needs("ref_logprobs", "old_logprobs")
def inpo_loss(
    inputs: PreferenceInputs, *, eta: Positive = 0.1, tau: NonNegative = 0.01
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """INPO (Zhang et al. 2024, arXiv 2407.00617, Eq. 9): one online-mirror-descent step against the
    general-preference game, without estimating win rates:

    ``(log pi(y_w)/pi(y_l) - (tau/eta) log pi_ref(y_w)/pi_ref(y_l) - ((eta - tau)/eta) log pi_t(y_w)/pi_t(y_l)
    - 1/(2 eta))^2``

    where ``pi_t`` is the policy that sampled the pair (this iteration's start) and ``pi_ref`` the frozen
    reference; ``eta`` is the mirror-descent step size and ``tau`` the KL-regularisation strength
    (``tau <= eta``). With ``pi_t = pi_ref`` this is IPO with target ``1/(2 eta)``. Reported rewards are
    ``eta r(y)``, the log-ratio to the reference scaled as IPO's ``tau`` scales it.
    """
    chosen, rejected = _reference_margins(inputs)
    old_c, old_r = _required(inputs, "old_chosen_logps", "old_rejected_logps")
    if tau > eta:
        raise ValueError(f"inpo: tau ({tau}) must not exceed eta ({eta})")
    h = (
        (inputs.chosen_logps - inputs.rejected_logps)
        - (tau / eta) * (inputs.ref_chosen_logps - inputs.ref_rejected_logps)
        - ((eta - tau) / eta) * (old_c - old_r)
    )  # [P]
    loss = (h - 1.0 / (2.0 * eta)) ** 2  # [P]
    return loss, _metrics(inputs, eta * chosen, eta * rejected)


# --- pairs from verifier-scored groups -----------------------------------------------------------------

PAIRINGS = ("all", "best_worst")
"""How :func:`build_pairs` pairs the samples of a prompt."""


def build_pairs(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    pairing: Literal["all", "best_worst"] = "all",
    min_margin: float = 0.0,
    max_pairs_per_group: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Preference pairs from the ``G`` scored samples of each prompt (online / iterative preference
    optimisation from verifiable rewards; Iterative RPO, Pang et al. 2024).

    Args:
        rewards: ``[N]`` sequence rewards.
        group_index: ``[N]`` the prompt each sample answers; a group's rows are contiguous.
        pairing: ``"all"``: every ordered pair ``(i, j)`` of the same group with ``rewards[i] - rewards[j] >
            min_margin`` (with 0/1 verdicts, every correct x incorrect pair); ``"best_worst"``: per group,
            the first sample of highest reward against the first of lowest, when they differ by more than
            ``min_margin``.
        max_pairs_per_group: keep at most this many of a group's pairs (``"all"``), spread evenly over its
            chosen samples (the first ones in row order).

    Returns:
        ``(chosen_rows [P], rejected_rows [P], metrics)``: row indices into the batch, in group order, and
        ``pairs/count``, ``pairs/groups_used``, ``pairs/groups_dropped`` (groups without two samples whose
        rewards differ by more than ``min_margin``: all right, all wrong, or one sample).
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    chosen: list[int] = []
    rejected: list[int] = []
    used = dropped = 0
    rewards = rewards.detach().cpu().double()
    _, counts = torch.unique_consecutive(group_index.cpu(), return_counts=True)
    start = 0
    for count in counts.tolist():
        r = rewards[start : start + count]  # [G]
        if pairing == "best_worst":
            best, worst = int(torch.argmax(r)), int(torch.argmin(r))
            pairs = [(best, worst)] if r[best] - r[worst] > min_margin else []
        else:
            gap = r[:, None] - r[None, :]  # [G, G] reward of row i minus row j
            pairs = [tuple(ij) for ij in torch.nonzero(gap > min_margin).tolist()]
            if max_pairs_per_group is not None and len(pairs) > max_pairs_per_group:
                # round-robin over the chosen samples so that each contributes before any repeats
                by_chosen: dict[int, list[tuple[int, int]]] = {}
                for i, j in pairs:
                    by_chosen.setdefault(i, []).append((i, j))
                queues = list(by_chosen.values())
                pairs = []
                while len(pairs) < max_pairs_per_group:
                    for q in queues:
                        if q and len(pairs) < max_pairs_per_group:
                            pairs.append(q.pop(0))
        if pairs:
            used += 1
            chosen += [start + i for i, _ in pairs]
            rejected += [start + j for _, j in pairs]
        else:
            dropped += 1
        start += count
    metrics = {
        "pairs/count": float(len(chosen)),
        "pairs/groups_used": float(used),
        "pairs/groups_dropped": float(dropped),
    }
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long), metrics

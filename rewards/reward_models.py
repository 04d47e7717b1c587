"""Built-in reward-model ensemble objectives: how an ensemble's members' scores become one score.

Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization" (arXiv 2310.02743, ICLR 2024):
the ``mean``, worst-case optimisation (``min`` / ``wco``) and uncertainty-weighted optimisation (``uwo``,
mean - lambda * variance across members). Conservative objectives (WCO/UWO) penalise responses the members
disagree on, which is where a policy exploits a single proxy reward model (reward over-optimisation, Gao
et al. 2023, arXiv 2210.10760).

Each objective is ``(member_scores [M, N], lam) -> [N]``, registered with
:func:`rlvr.scoring.ensemble_combine` and named by a recipe's ``combine:``; the batched runner that loads
and runs the member models is :mod:`rlvr.scoring.reward_models`. Only tensor methods are used here, so
importing this module (as every verifier worker does with the built-ins) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rlvr.scoring import DEFAULT_UWO_LAMBDA, ensemble_combine

if TYPE_CHECKING:
    import torch


@ensemble_combine("mean")
def combine_mean(member_scores: torch.Tensor, lam: float = 0.0) -> torch.Tensor:
    """Mean optimisation: the average of the members' scores (``lam`` is unused)."""
    return member_scores.mean(dim=0)  # [N]


@ensemble_combine("wco")
@ensemble_combine("min")
def combine_min(member_scores: torch.Tensor, lam: float = 0.0) -> torch.Tensor:
    """Worst-case optimisation (WCO, Coste et al. 2023, eq. 2): the lowest member score (``lam`` unused)."""
    return member_scores.min(dim=0).values  # [N]


@ensemble_combine("uwo")
def combine_uwo(member_scores: torch.Tensor, lam: float = DEFAULT_UWO_LAMBDA) -> torch.Tensor:
    """Uncertainty-weighted optimisation (UWO, Coste et al. 2023, eq. 3): mean - lam * variance.

    The penalty is the intra-ensemble *variance* (not the standard deviation), with the 1/M population
    normalisation of the paper's formula and of the authors' best-of-n code (``np.var``). Their PPO code
    uses ``torch.var`` (1/(M-1)), a constant factor M/(M-1) that lam absorbs.
    """
    return member_scores.mean(dim=0) - lam * member_scores.var(dim=0, unbiased=False)  # [N]

"""RL algorithm building blocks as pure tensor functions.

Four plug-in families, each looked up by name from a recipe:

* :data:`ADVANTAGES` - advantage estimators, ``fn(AdvantageInputs, **hparams) -> [N, T]``;
* :data:`POLICY_LOSSES` - surrogate losses,
  ``fn(logprobs, old_logprobs, advantages, mask, **hparams) -> ([N, T], metrics)``;
* :data:`KL_ESTIMATORS` - per-token KL estimates, ``fn(logprobs, ref_logprobs, **hparams) -> [N, T]``;
* :data:`LOSS_AGGREGATIONS` - the modes of :func:`aggregate`, the only place a loss is reduced.

``N`` is the number of responses (prompts times samples per prompt), ``T`` the padded response length.
"""

from rlvr.algorithms.advantages import (
    ADVANTAGES,
    AdvantageFn,
    AdvantageInputs,
    GroupStatistics,
    batch_norm_advantages,
    dgpo_advantages,
    dr_grpo_advantages,
    group_statistics,
    grpo_advantages,
    lite_ppo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from rlvr.algorithms.aggregation import LOSS_AGGREGATIONS, aggregate, aggregation_counts
from rlvr.algorithms.kl import KL_ESTIMATORS, KLEstimatorFn, kl_k1, kl_k2, kl_k3
from rlvr.algorithms.policy_losses import (
    POLICY_LOSSES,
    PolicyLossFn,
    cispo_loss,
    dapo_loss,
    gspo_loss,
    ppo_clip_loss,
    reinforce_loss,
)
from rlvr.algorithms.utils import masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "ADVANTAGES",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "AdvantageFn",
    "AdvantageInputs",
    "GroupStatistics",
    "KLEstimatorFn",
    "PolicyLossFn",
    "aggregate",
    "aggregation_counts",
    "batch_norm_advantages",
    "cispo_loss",
    "dapo_loss",
    "dgpo_advantages",
    "dr_grpo_advantages",
    "group_statistics",
    "grpo_advantages",
    "gspo_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "lite_ppo_advantages",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_clip_loss",
    "reinforce_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
]

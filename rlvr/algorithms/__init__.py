"""RL algorithm building blocks as pure tensor functions.

Five plug-in families, each looked up by name from a recipe:

* :data:`ADVANTAGES` - advantage estimators, ``fn(AdvantageInputs, **hparams) -> [N, T]``;
* :data:`POLICY_LOSSES` - surrogate losses,
  ``fn(logprobs, old_logprobs, advantages, mask, **hparams) -> ([N, T], metrics)``;
* :data:`KL_ESTIMATORS` - per-token KL estimates, ``fn(logprobs, ref_logprobs, **hparams) -> [N, T]``;
* :data:`LOSS_AGGREGATIONS` - the modes of :func:`aggregate`, the only place a loss is reduced;
* :data:`PREFERENCE_LOSSES` - the DPO family on per-sequence log-probs,
  ``fn(PreferenceInputs, **hparams) -> ([P], metrics)`` (:mod:`rlvr.algorithms.preference`).

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
    remax_advantages,
    rloo_advantages,
)
from rlvr.algorithms.aggregation import LOSS_AGGREGATIONS, aggregate, aggregation_counts
from rlvr.algorithms.controllers import (
    ENTROPY_CONTROLLERS,
    KL_CONTROLLERS,
    AdaptiveEntropyController,
    AdaptiveKLController,
    CoefficientController,
    FixedEntropyController,
    FixedKLController,
)
from rlvr.algorithms.kl import KL_ESTIMATORS, KLEstimatorFn, kl_k1, kl_k2, kl_k3
from rlvr.algorithms.policy_losses import (
    POLICY_LOSSES,
    PolicyLossFn,
    cispo_loss,
    clip_cov_loss,
    dapo_loss,
    gspo_loss,
    kl_cov_loss,
    lp_reg_loss,
    minp_proxy_logprobs,
    pacs_loss,
    ppo_clip_loss,
    reinforce_loss,
)
from rlvr.algorithms.preference import (
    PREFERENCE_LOSSES,
    PreferenceInputs,
    PreferenceLossFn,
    build_pairs,
)
from rlvr.algorithms.shaping import group_order, informative_groups, soft_overlong_penalty
from rlvr.algorithms.token_weights import (
    TOKEN_WEIGHTS,
    TokenWeightFn,
    TokenWeightInputs,
    combine_token_weights,
    forking_tokens,
    mismatch_mask,
    overlong_mask,
    tis,
)
from rlvr.algorithms.utils import masked_max, masked_mean, masked_min, masked_sum, masked_var, masked_whiten
from rlvr.algorithms.value import gae, gae_advantages, gae_returns, value_loss

PLUGIN_FAMILIES = {
    "advantage": ADVANTAGES,
    "policy_loss": POLICY_LOSSES,
    "loss_agg": LOSS_AGGREGATIONS,
    "kl_estimator": KL_ESTIMATORS,
    "kl_controller": KL_CONTROLLERS,
    "entropy_controller": ENTROPY_CONTROLLERS,
    "token_weights": TOKEN_WEIGHTS,
}
"""Each plug-in family by its key in the recipe's ``algorithm`` section (``token_weights`` is a list)."""

__all__ = [
    "ADVANTAGES",
    "ENTROPY_CONTROLLERS",
    "KL_CONTROLLERS",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "PLUGIN_FAMILIES",
    "POLICY_LOSSES",
    "PREFERENCE_LOSSES",
    "TOKEN_WEIGHTS",
    "AdaptiveEntropyController",
    "AdaptiveKLController",
    "AdvantageFn",
    "AdvantageInputs",
    "CoefficientController",
    "FixedEntropyController",
    "FixedKLController",
    "GroupStatistics",
    "KLEstimatorFn",
    "PolicyLossFn",
    "PreferenceInputs",
    "PreferenceLossFn",
    "TokenWeightFn",
    "TokenWeightInputs",
    "aggregate",
    "aggregation_counts",
    "batch_norm_advantages",
    "build_pairs",
    "cispo_loss",
    "clip_cov_loss",
    "combine_token_weights",
    "dapo_loss",
    "dgpo_advantages",
    "dr_grpo_advantages",
    "forking_tokens",
    "gae",
    "gae_advantages",
    "gae_returns",
    "group_order",
    "group_statistics",
    "grpo_advantages",
    "gspo_loss",
    "informative_groups",
    "kl_cov_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "lite_ppo_advantages",
    "lp_reg_loss",
    "masked_max",
    "masked_mean",
    "masked_min",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "minp_proxy_logprobs",
    "mismatch_mask",
    "overlong_mask",
    "pacs_loss",
    "ppo_clip_loss",
    "reinforce_loss",
    "reinforce_pp_advantages",
    "remax_advantages",
    "rloo_advantages",
    "soft_overlong_penalty",
    "tis",
    "value_loss",
]

"""The parts of a method that live across steps, as components the step calls through fixed hooks.

A component owns its state (a coefficient controller, a reference model, a critic) and joins the step at
fixed points; the step and the update call every component's hooks in order and never ask which one it is:

* ``needs``: the batch fields it reads (field -> statistic parameters); the pre-update pass fills them;
* :meth:`Component.shape` the advantage inputs before the estimator runs (KL folded into the reward);
* :meth:`Component.after_advantages`: what it derives from the advantages (critic returns, token weights);
* :meth:`Component.token_loss`: a per-token term added to the policy loss (KL penalty, entropy bonus);
* :meth:`Component.token_scale` / :meth:`Component.after_update`: per-token weights computed inside the
  update from its own log-probs, and their metrics on the whole batch afterwards (TIS, on-policy);
* :meth:`Component.aux_loss`: a loss of its own, added to the total (the critic's value loss);
* :meth:`Component.report` / :meth:`Component.end_step`: metrics, then feedback from the step's global
  metrics (each controller names the measurement it reads) and periodic actions (ProRL's reference reset);
* ``state_key`` / ``state_dict`` / ``load_state_dict``: what a checkpoint keeps.

:func:`build_components` assembles them from a recipe. A new method that needs state across steps adds a
component here; one that needs only a new batch field adds a source in :mod:`rlvr.trainer.logprobs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

from rlvr.algorithms import (
    ENTROPY_CONTROLLERS,
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    TOKEN_WEIGHTS,
    AdvantageInputs,
    FixedEntropyController,
    TokenWeightInputs,
    aggregate,
    combine_token_weights,
    value_loss,
)
from rlvr.algorithms.utils import critic_targets_of, is_row_scale, masked_mean, need_params_of, needs_of
from rlvr.config import Recipe
from rlvr.types import RolloutBatch

Metrics = dict[str, Any]
Requests = dict[str, dict[str, Any]]
"""Batch field -> the parameters its statistic is computed with (see :func:`requests_of`)."""


def requests_of(fn: Callable, kwargs: Mapping[str, Any]) -> Requests:
    """The batch fields plug-in ``fn`` declares (``@needs``), each with the values of the hyperparameters
    it is computed with, taken from ``fn``'s bound ``kwargs`` (recipe values and defaults)."""
    params = need_params_of(fn)
    return {field: {p: kwargs[p] for p in params.get(field, ())} for field in needs_of(fn)}


def merge_requests(*parts: Requests) -> Requests:
    """One request per field; two plug-ins asking for one field with different parameters is an error."""
    merged: Requests = {}
    for part in parts:
        for field, params in part.items():
            if field in merged and merged[field] != params:
                raise ValueError(f"batch field {field!r} requested with {merged[field]} and with {params}")
            merged[field] = dict(params)
    return merged


class Component:
    """No-op hooks; a component overrides the ones it takes part in.

    ``shape`` and ``after_advantages`` see the whole batch of all processes (the fields they set are cut
    back to each process's rows); ``token_loss`` and ``aux_loss`` see one micro-batch of this process."""

    state_key: str | None = None
    needs: Requests = {}
    entropy_grad: bool = False
    """Whether the update must keep the entropy's gradient (an entropy bonus)."""
    every_row: bool = False
    """Whether its loss terms reach rows whose advantages are all 0 (a KL or entropy term, a critic's
    loss): the update then runs every row (see ``train.skip_zero_advantage``)."""
    scales_in_update: bool = False
    """Whether :meth:`token_scale` weights tokens: the update then records its own log-probs and calls
    :meth:`after_update` with them."""

    def shape(self, inputs: AdvantageInputs, batch: RolloutBatch) -> tuple[AdvantageInputs, Metrics]:
        return inputs, {}

    def after_advantages(self, batch: RolloutBatch, inputs: AdvantageInputs) -> Metrics:
        return {}

    def token_loss(
        self, logprobs: torch.Tensor, entropy: torch.Tensor, micro: RolloutBatch
    ) -> tuple[torch.Tensor | None, Metrics]:
        return None, {}

    def aux_loss(
        self, model: torch.nn.Module, micro: RolloutBatch, counts: Mapping[str, float]
    ) -> tuple[torch.Tensor | None, Metrics]:
        return None, {}

    def token_scale(self, old_logprobs: torch.Tensor, micro: RolloutBatch) -> torch.Tensor | None:
        """``[n, T]`` weights of the micro-batch's per-token loss, never 0 on a response token, from
        ``old_logprobs`` (the update's own log-probs, detached, when nothing filled them before)."""
        return None

    def after_update(self, batch: RolloutBatch) -> Metrics:
        """Metrics of :meth:`token_scale`'s weights: ``batch`` is the whole batch of all processes, its
        ``old_logprobs`` those the update computed, its ``response_mask`` 0 on the rows it did not run."""
        return {}

    def report(self) -> Metrics:
        return {}

    def end_step(self, step: int, metrics: Mapping[str, float], samples: int) -> Metrics:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


class KLPenalty(Component):
    """``coef x KL(policy || reference)``, per token in the loss (GRPO) or subtracted from the rewards
    (PPO-RLHF, REINFORCE++: per token for estimators that read ``token_rewards``, summed over the response
    into the sequence reward otherwise). The coefficient comes from a KL controller (fixed, or adaptive,
    Ziegler et al. arXiv 1909.08593), fed the step's per-token KL. With ``reset_every``, the reference is
    hard-reset to the policy every N steps (ProRL, arXiv 2505.24864) by ``reset``."""

    state_key = "kl_controller"
    measurement = "actor/kl"

    def __init__(
        self,
        controller,
        estimator: Callable[..., torch.Tensor],
        placement: str,
        token_level: bool,
        reset_every: int = 0,
        reset: Callable[[], None] | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.controller = controller
        self.estimator = estimator
        self.placement = placement
        self.token_level = token_level
        self.reset_every = reset_every
        self.reset = reset
        self.enabled = controller.value > 0 if enabled is None else enabled
        """Whether there is a reference and a KL term (the recipe's kl_coef > 0), whatever the controller
        does to the coefficient later."""
        self.needs = {}
        if self.enabled:
            self.needs = {"ref_logprobs": {}}
            if placement == "reward":
                self.needs["old_logprobs"] = {}

    @property
    def every_row(self) -> bool:  # type: ignore[override]
        return self.enabled and self.placement == "loss" and self.controller.value > 0

    def shape(self, inputs: AdvantageInputs, batch: RolloutBatch) -> tuple[AdvantageInputs, Metrics]:
        coef = self.controller.value
        if not self.enabled or self.placement != "reward" or coef <= 0:
            return inputs, {}
        mask = batch.response_mask  # [N, T]
        kl = self.estimator(batch.old_logprobs, batch.ref_logprobs) * mask  # [N, T]
        metrics = {
            "actor/kl_reward_penalty": float(coef * kl.sum(-1).mean()),
            "actor/kl": float(kl.sum() / mask.sum().clamp(min=1)),  # per token, as in the loss
        }
        if self.token_level:
            return dataclasses.replace(inputs, token_rewards=-coef * kl), metrics
        shaped = inputs.sequence_rewards - coef * kl.sum(-1)  # [N]
        return dataclasses.replace(inputs, sequence_rewards=shaped), metrics

    def token_loss(
        self, logprobs: torch.Tensor, entropy: torch.Tensor, micro: RolloutBatch
    ) -> tuple[torch.Tensor | None, Metrics]:
        coef = self.controller.value
        if not self.enabled or self.placement != "loss" or coef <= 0:
            return None, {}
        mask = micro.response_mask  # [n, T]
        kl = self.estimator(logprobs, micro.ref_logprobs)  # [n, T]
        return coef * kl, {"actor/kl": (kl.detach() * mask).sum() / mask.sum().clamp(min=1)}

    def report(self) -> Metrics:
        return {"actor/kl_coef": self.controller.value}

    def end_step(self, step: int, metrics: Mapping[str, float], samples: int) -> Metrics:
        out: Metrics = {}
        if self.enabled and self.reset_every and step % self.reset_every == 0 and self.reset is not None:
            self.reset()
            out["actor/reference_reset"] = 1.0
        if self.measurement in metrics:
            # Ziegler's horizon counts samples: the global number of sequences of this step
            self.controller.update(metrics[self.measurement], n_steps=samples)
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.controller.load_state_dict(state)


class EntropyBonus(Component):
    """``- coef x H(policy)`` per token (the PPO paper's entropy term, arXiv 1707.06347); the coefficient
    comes from an entropy controller (fixed, or adaptive: Skywork-OR1, arXiv 2505.22312) fed the step's
    mean token entropy."""

    state_key = "entropy_controller"
    measurement = "actor/entropy"

    def __init__(self, controller) -> None:
        self.controller = controller

    @property
    def entropy_grad(self) -> bool:  # type: ignore[override]
        return self.controller.value > 0

    @property
    def every_row(self) -> bool:  # type: ignore[override]
        # a controller that adapts reads actor/entropy, which must then be measured on every row
        return self.entropy_grad or not isinstance(self.controller, FixedEntropyController)

    def token_loss(
        self, logprobs: torch.Tensor, entropy: torch.Tensor, micro: RolloutBatch
    ) -> tuple[torch.Tensor | None, Metrics]:
        coef = self.controller.value
        return (-coef * entropy, {}) if coef > 0 else (None, {})

    def report(self) -> Metrics:
        return {"actor/entropy_coef": self.controller.value}

    def end_step(self, step: int, metrics: Mapping[str, float], samples: int) -> Metrics:
        if self.measurement in metrics:
            self.controller.update(metrics[self.measurement])
        return {}

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.controller.load_state_dict(state)


class Critic(Component):
    """PPO's learned critic (:mod:`rlvr.trainer.critic`): its rollout-time values (``values``), its
    regression targets from the advantage estimator's declared returns function (GAE's lambda-returns,
    :func:`~rlvr.algorithms.utils.critic_targets`) and its clipped value loss, weighted by ``vf_coef`` and
    token-averaged over the mini-batch's response tokens on all processes."""

    needs: Requests = {"values": {}}
    every_row = True

    def __init__(
        self,
        targets: Callable[..., torch.Tensor],
        target_kwargs: Mapping[str, Any],
        vf_coef: float,
        clip_range: float | None,
    ) -> None:
        self.targets = targets
        self.target_kwargs = dict(target_kwargs)
        self.vf_coef = vf_coef
        self.clip_range = clip_range

    def after_advantages(self, batch: RolloutBatch, inputs: AdvantageInputs) -> Metrics:
        batch.returns = self.targets(inputs, **self.target_kwargs)  # [N, T]
        return {}

    def aux_loss(
        self, model: torch.nn.Module, micro: RolloutBatch, counts: Mapping[str, float]
    ) -> tuple[torch.Tensor | None, Metrics]:
        mask = micro.response_mask  # [n, T]
        per_token, metrics = value_loss(
            model(value_batch=micro), micro.values, micro.returns, mask, clip_range=self.clip_range
        )
        loss = self.vf_coef * aggregate(per_token, mask, "token-mean", num_tokens=counts["response_tokens"])
        return loss, {f"critic/{key}": value for key, value in metrics.items()}


class TokenWeighting(Component):
    """Token selection / reweighting (:data:`~rlvr.algorithms.TOKEN_WEIGHTS`): the product of the configured
    entries' weights multiplies the per-token loss; a weight of 0 removes the token from the loss.

    Entries are computed on the whole batch before the update (``batch.token_weights``), except, when the
    update takes one optimizer step per batch (``single_step``), those that declare
    :func:`~rlvr.algorithms.utils.row_scale` (TIS): they are computed inside the update, per micro-batch,
    from the update's own log-probs (the policy's before the update), so no no-grad pass runs to fill
    ``old_logprobs`` for them. The metrics of entries computed before the update, and ``kept_frac``, are
    over the whole batch; those of entries computed inside it, and ``weight_mean`` (of the product), over
    the rows the update ran."""

    def __init__(self, entries: list[tuple[str, dict[str, Any]]], single_step: bool = False) -> None:
        fns = [TOKEN_WEIGHTS.get(name) for name, _ in entries]
        inside = [single_step and is_row_scale(fn) for fn in fns]
        self.before = [entry for entry, late in zip(entries, inside, strict=True) if not late]
        self.inside = [entry for entry, late in zip(entries, inside, strict=True) if late]
        self.scales_in_update = bool(self.inside)
        requests = []
        for fn, (_, kwargs), late in zip(fns, entries, inside, strict=True):
            request = requests_of(fn, kwargs)
            if late:  # it reads the update's own log-probs, not the pass's
                request.pop("old_logprobs", None)
            requests.append(request)
        self.needs = merge_requests(*requests)

    def after_advantages(self, batch: RolloutBatch, inputs: AdvantageInputs) -> Metrics:
        if not self.before:
            return {}
        weights, metrics = combine_token_weights(self.before, TokenWeightInputs.from_batch(batch))
        batch.token_weights = weights  # [N, T]
        if self.inside:
            del metrics["weight_mean"]  # of the product with the weights inside the update: after_update
        return {f"tokens/{key}": float(value) for key, value in metrics.items()}

    def token_scale(self, old_logprobs: torch.Tensor, micro: RolloutBatch) -> torch.Tensor | None:
        if not self.inside:
            return None
        inputs = TokenWeightInputs.from_batch(micro, old_logprobs=old_logprobs)
        return combine_token_weights(self.inside, inputs)[0]  # [n, T]

    def after_update(self, batch: RolloutBatch) -> Metrics:
        if not self.inside:
            return {}
        scale, metrics = combine_token_weights(self.inside, TokenWeightInputs.from_batch(batch))
        if self.before:
            del metrics["kept_frac"]  # these entries remove no token: the whole batch's, after_advantages
            weights = scale * batch.token_weights  # [N, T], 0 on the rows not run
            metrics["weight_mean"] = masked_mean(weights, weights != 0)
        return {f"tokens/{key}": float(value) for key, value in metrics.items()}


def single_step(recipe: Recipe) -> bool:
    """Whether the update takes one optimizer step per batch: the policy it runs is then the one before
    the update (after the first of several steps it is not)."""
    return recipe.train.epochs == 1 and recipe.train.num_mini_batches == 1


def build_components(
    recipe: Recipe,
    advantage: tuple[Callable, Mapping[str, Any]],
    reset_reference: Callable[[], None] | None = None,
) -> list[Component]:
    """The recipe's components, in the order their loss terms are added: KL, entropy, critic, token weights.

    ``advantage`` is the configured estimator (function, bound kwargs): a critic exists when it declares
    critic targets, and a KL penalty in the reward is per token when it reads ``token_rewards``.
    ``reset_reference`` performs ProRL's reset (reference <- policy, optionally the optimizer state).
    """
    algo = recipe.algorithm
    estimator, estimator_kwargs = advantage
    kl_controller = KL_CONTROLLERS.get(algo.kl_controller)(
        coef=algo.kl_coef, **KL_CONTROLLERS.bind(algo.kl_controller, algo.kl_controller_kwargs)
    )
    entropy_controller = ENTROPY_CONTROLLERS.get(algo.entropy_controller)(
        coef=algo.entropy_coef,
        **ENTROPY_CONTROLLERS.bind(algo.entropy_controller, algo.entropy_controller_kwargs),
    )
    components: list[Component] = [
        KLPenalty(
            kl_controller,
            KL_ESTIMATORS.get(algo.kl_estimator),
            algo.kl_placement,
            token_level="token_rewards" in needs_of(estimator),
            reset_every=algo.reference_reset_every,
            reset=reset_reference,
            enabled=algo.kl_coef > 0,
        ),
        EntropyBonus(entropy_controller),
    ]
    targets = critic_targets_of(estimator)
    if targets is not None:
        c = algo.critic
        components.append(Critic(targets, estimator_kwargs, vf_coef=c.vf_coef, clip_range=c.clip_range))
    entries = [(w.name, TOKEN_WEIGHTS.bind(w.name, w.kwargs)) for w in algo.token_weights]
    if algo.overlong.mask_truncated:
        entries.append(("overlong_mask", {}))
    if entries:
        components.append(TokenWeighting(entries, single_step=single_step(recipe)))
    return components

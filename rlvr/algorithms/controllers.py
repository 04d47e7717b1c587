"""Coefficient controllers: the KL penalty and entropy bonus coefficients, fixed or adapted to a target.

Two registries, looked up by the name a recipe gives and built with its keyword hyper-parameters::

    ctrl = KL_CONTROLLERS.get("adaptive")(coef=0.05, target=0.1)
    loss = policy_loss + ctrl.value * kl                 # use the current coefficient in step k
    ctrl.update(measured_kl, n_steps=batch_size)         # then feed back what step k measured

* :data:`KL_CONTROLLERS`: ``"fixed"`` (:class:`FixedKLController`), ``"adaptive"``
  (:class:`AdaptiveKLController`, Ziegler et al. 2019, arXiv 1909.08593);
* :data:`ENTROPY_CONTROLLERS`: ``"fixed"`` (:class:`FixedEntropyController`), ``"adaptive"``
  (:class:`AdaptiveEntropyController`, Skywork-OR1, He et al. 2025, arXiv 2505.22312).

Every controller satisfies :class:`CoefficientController`: ``.value`` is the coefficient to use now,
``update(measured, n_steps)`` returns the new one, and ``state_dict()`` / ``load_state_dict()`` carry the
mutable state (not the hyper-parameters, which come from the recipe) through a checkpoint, so a resumed
run continues with the adapted coefficient. Hyper-parameters are keyword-only, so a typo in a recipe is a
``TypeError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from rlvr.registry import Registry

__all__ = [
    "ENTROPY_CONTROLLERS",
    "KL_CONTROLLERS",
    "AdaptiveEntropyController",
    "AdaptiveKLController",
    "CoefficientController",
    "FixedEntropyController",
    "FixedKLController",
]


@runtime_checkable
class CoefficientController(Protocol):
    """A loss coefficient that may adapt to a measured quantity (the KL or the entropy of a step)."""

    @property
    def value(self) -> float:
        """The coefficient to use in the next loss."""
        ...

    def update(self, measured: float, n_steps: int = 1) -> float:
        """Feed back the quantity measured in the last step(s); returns the new :attr:`value`."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The mutable state, for checkpoints (plain Python values)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


ControllerFactory = Callable[..., CoefficientController]

KL_CONTROLLERS: Registry[ControllerFactory] = Registry("KL controller", reserved=("coef",))
ENTROPY_CONTROLLERS: Registry[ControllerFactory] = Registry("entropy controller", reserved=("coef",))


def _get(state: Mapping[str, Any], key: str, owner: object) -> Any:
    try:
        return state[key]
    except KeyError:
        name = type(owner).__name__
        raise KeyError(f"{name} state_dict has no {key!r}; got keys {sorted(state)}") from None


def _check_n_steps(n_steps: int) -> None:
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")


@KL_CONTROLLERS.register("fixed")
@ENTROPY_CONTROLLERS.register("fixed")
class FixedController:
    """A constant coefficient (KL penalty ``beta`` or entropy bonus): ``update`` changes nothing.

    Args:
        coef: the coefficient.
    """

    def __init__(self, *, coef: float) -> None:
        self._value = float(coef)

    @property
    def value(self) -> float:
        return self._value

    def update(self, measured: float, n_steps: int = 1) -> float:
        _check_n_steps(n_steps)
        return self._value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self._value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._value = float(_get(state, "value", self))


@KL_CONTROLLERS.register("adaptive")
class AdaptiveKLController:
    """Proportional controller that steers the measured KL towards a target (Ziegler et al. 2019,
    "Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593, section 2.2)::

        e       = clip(KL / target - 1, -0.2, 0.2)
        beta   <- beta * (1 + e * n_steps / horizon)

    The coefficient grows while the KL is above ``target`` and shrinks while it is below, by at most
    ``0.2 * n_steps / horizon`` relative per update. ``n_steps`` and ``horizon`` share a unit: the paper
    (and verl, TRL) count *samples*, passing the batch size as ``n_steps`` with ``horizon = 10000``; count
    optimiser steps instead and ``horizon`` must shrink to match.

    Args:
        coef: initial ``beta`` (> 0: the update is multiplicative, so 0 would stay 0).
        target: the KL to steer towards (> 0), in the units of the measured KL (e.g. nats per token).
        horizon: how many ``n_steps`` units it takes to change ``beta`` by about ``e`` (> 0).
    """

    def __init__(self, *, coef: float, target: float, horizon: float = 10000) -> None:
        if not coef > 0:
            raise ValueError(f"coef must be > 0 (the update is multiplicative), got {coef}")
        if not target > 0:
            raise ValueError(f"target must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self._value = float(coef)
        self.target = float(target)
        self.horizon = float(horizon)

    @property
    def value(self) -> float:
        return self._value

    def update(self, measured: float, n_steps: int = 1) -> float:
        _check_n_steps(n_steps)
        measured = float(measured)
        if not math.isfinite(measured):
            raise ValueError(f"measured KL must be finite, got {measured}")
        error = min(max(measured / self.target - 1.0, -0.2), 0.2)
        self._value *= 1.0 + error * n_steps / self.horizon
        return self._value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self._value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._value = float(_get(state, "value", self))


FixedKLController = FixedController
FixedEntropyController = FixedController


@ENTROPY_CONTROLLERS.register("adaptive")
class AdaptiveEntropyController:
    """Skywork-OR1's adaptive entropy control (He et al. 2025, arXiv 2505.22312, "MAGIC").

    A step controller on the coefficient ``c`` of the entropy bonus that keeps the policy's token entropy
    near ``target`` and switches the bonus off while the entropy is above it. With ``e_k`` the entropy
    measured in step ``k`` (the mean per-token entropy of the step's responses)::

        c_{k+1}     = clip(c_k + delta, min_coef, max_coef)    if e_k < target
                      clip(c_k - delta, min_coef, max_coef)    otherwise
        alpha_{k+1} = c_{k+1} * 1[e_k < target]                (gated=True; alpha = c when gated=False)

    ``alpha`` (:attr:`value`) is the coefficient applied to the entropy bonus in the next step, so the bonus
    only ever pushes entropy *up* towards the target, and ``c`` is remembered while it is off. ``n_steps``
    applies the same step ``n_steps`` times (``c +- n_steps * delta``, then clipped).

    This follows the authors' released implementation (``EntController`` in ``verl/trainer/ppo/core_algos.py``
    of github.com/SkyworkAI/Skywork-OR1, updated once per training step with the step's mean entropy): the
    gate is on until the first measurement, and a measurement equal to ``target`` counts as "not below".
    The defaults are those of the authors' training scripts for every released 7B and 32B stage
    (``or1_scripts/train/*.sh``: target entropy 0.2, ``c_0 = 0``, ``delta = 1e-4``, clip to ``[0, 5e-3]``).
    The paper's own text could not be consulted here, only the released code and scripts.

    Args:
        target: the token entropy to keep (nats), ``tgt-ent`` in the paper.
        coef: initial ``c_0``.
        delta: step size ``Delta`` (>= 0) of ``c`` per update.
        max_coef: upper clip of ``c``.
        min_coef: lower clip of ``c`` (<= ``max_coef``).
        gated: apply ``c`` only while the last measured entropy is below ``target`` (the paper's
            indicator); ``False`` always applies ``c``.
    """

    def __init__(
        self,
        *,
        target: float = 0.2,
        coef: float = 0.0,
        delta: float = 1e-4,
        max_coef: float = 5e-3,
        min_coef: float = 0.0,
        gated: bool = True,
    ) -> None:
        if delta < 0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        if min_coef > max_coef:
            raise ValueError(f"min_coef must be <= max_coef, got {min_coef} > {max_coef}")
        if not min_coef <= coef <= max_coef:
            raise ValueError(f"coef must lie in [min_coef, max_coef] = [{min_coef}, {max_coef}], got {coef}")
        self.target = float(target)
        self.delta = float(delta)
        self.max_coef = float(max_coef)
        self.min_coef = float(min_coef)
        self.gated = bool(gated)
        self.coef = float(coef)  # c_k, kept while the gate is off
        self.active = True  # 1[e_k < target]; on until the first measurement, as in the authors' code

    @property
    def value(self) -> float:
        return self.coef if (self.active or not self.gated) else 0.0

    def update(self, measured: float, n_steps: int = 1) -> float:
        _check_n_steps(n_steps)
        measured = float(measured)
        if math.isnan(measured):
            raise ValueError("measured entropy must not be NaN")
        below = measured < self.target
        step = self.delta * n_steps if below else -self.delta * n_steps
        self.coef = min(max(self.coef + step, self.min_coef), self.max_coef)
        self.active = below
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self.coef, "active": self.active}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.coef = float(_get(state, "coef", self))
        self.active = bool(_get(state, "active", self))

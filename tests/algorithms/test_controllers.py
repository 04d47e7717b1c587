"""Tests for rlvr.algorithms.controllers (KL and entropy coefficient controllers)."""

from __future__ import annotations

import pytest

from rlvr.algorithms import (
    ENTROPY_CONTROLLERS,
    KL_CONTROLLERS,
    AdaptiveEntropyController,
    AdaptiveKLController,
    CoefficientController,
    FixedEntropyController,
    FixedKLController,
)


def _approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def test_registries() -> None:
    assert KL_CONTROLLERS.get("fixed") is FixedKLController
    assert KL_CONTROLLERS.get("adaptive") is AdaptiveKLController
    assert ENTROPY_CONTROLLERS.get("fixed") is FixedEntropyController
    assert ENTROPY_CONTROLLERS.get("adaptive") is AdaptiveEntropyController
    with pytest.raises(KeyError, match="unknown KL controller 'pid'; known: adaptive, fixed"):
        KL_CONTROLLERS.get("pid")
    with pytest.raises(KeyError, match="unknown entropy controller"):
        ENTROPY_CONTROLLERS.get("pid")
    # built from keyword hyper-parameters, as a recipe does; all satisfy the protocol
    built = [
        KL_CONTROLLERS.get("fixed")(coef=0.1),
        KL_CONTROLLERS.get("adaptive")(coef=0.1, target=6.0),
        ENTROPY_CONTROLLERS.get("fixed")(coef=0.0),
        ENTROPY_CONTROLLERS.get("adaptive")(),
    ]
    assert all(isinstance(c, CoefficientController) for c in built)
    with pytest.raises(TypeError):
        KL_CONTROLLERS.get("adaptive")(coef=0.1, target=6.0, horizn=10)  # a typo is an error
    with pytest.raises(TypeError):
        FixedKLController(0.1)  # keyword-only


def test_fixed_controllers() -> None:
    for cls in (FixedKLController, FixedEntropyController):
        c = cls(coef=0.05)
        assert c.value == 0.05
        assert c.update(123.0) == 0.05
        assert c.update(-1.0, n_steps=64) == 0.05
        assert c.state_dict() == {"value": 0.05}


def test_adaptive_kl_by_hand() -> None:
    # coef 0.1, target 2.0, horizon 100
    c = AdaptiveKLController(coef=0.1, target=2.0, horizon=100)
    # KL 2.2: e = 2.2 / 2 - 1 = 0.1;            n=10: coef = 0.1 * (1 + 0.1 * 10 / 100) = 0.101
    assert c.update(2.2, n_steps=10) == _approx(0.101)
    # KL 10: e = 4 -> clipped to 0.2;          n=5:  coef = 0.101 * (1 + 0.2 * 5 / 100) = 0.10201
    assert c.update(10.0, n_steps=5) == _approx(0.10201)
    # KL 1.0: e = -0.5 -> clipped to -0.2;     n=1:  coef = 0.10201 * (1 - 0.002) = 0.10180598
    assert c.update(1.0) == _approx(0.10180598)
    # KL -3 (a k1 estimate can be negative): e = -2.5 -> -0.2, n=50: coef = 0.10180598 * 0.9 = 0.091625382
    assert c.update(-3.0, n_steps=50) == _approx(0.091625382)
    # KL on target: e = 0, unchanged
    assert c.update(2.0, n_steps=1000) == _approx(0.091625382)
    assert c.value == _approx(0.091625382)


def test_adaptive_kl_defaults_and_validation() -> None:
    c = AdaptiveKLController(coef=0.2, target=6.0)
    assert c.horizon == 10000
    # Ziegler et al.: KL 12 vs target 6 -> e = min(1, 0.2) = 0.2; batch of 512: 0.2 * (1 + 0.2 * 512 / 10000)
    assert c.update(12.0, n_steps=512) == _approx(0.2 * 1.01024)
    for bad in (
        {"coef": 0.0, "target": 1.0},
        {"coef": 0.1, "target": 0.0},
        {"coef": 0.1, "target": 1, "horizon": 0},
    ):
        with pytest.raises(ValueError):
            AdaptiveKLController(**bad)
    with pytest.raises(ValueError, match="finite"):
        c.update(float("nan"))
    with pytest.raises(ValueError, match="n_steps"):
        c.update(1.0, n_steps=-1)


def test_adaptive_entropy_by_hand() -> None:
    # target 0.5, delta 0.01, c in [0, 0.025], gated; c_0 = 0, gate on before the first measurement
    c = AdaptiveEntropyController(target=0.5, coef=0.0, delta=0.01, max_coef=0.025, min_coef=0.0)
    assert c.value == 0.0
    # entropy 0.4 < 0.5: c = 0.01, gate on  -> value 0.01
    assert c.update(0.4) == _approx(0.01)
    # entropy 0.3 < 0.5: c = 0.02                -> 0.02
    assert c.update(0.3) == _approx(0.02)
    # entropy 0.2 < 0.5: c = 0.03 -> clipped to 0.025
    assert c.update(0.2) == _approx(0.025)
    # entropy 0.6 >= 0.5: c = 0.015, gate off   -> value 0 (c remembered)
    assert c.update(0.6) == 0.0
    assert c.coef == _approx(0.015)
    # entropy exactly at target counts as "not below": c = 0.005, still off
    assert c.update(0.5) == 0.0
    assert c.coef == _approx(0.005)
    # entropy 0.7: c = -0.005 -> clipped to 0
    assert c.update(0.7) == 0.0
    assert c.coef == 0.0
    # entropy 0.1 with n_steps=2: c = 0 + 2 * 0.01 = 0.02, gate on
    assert c.update(0.1, n_steps=2) == _approx(0.02)


def test_adaptive_entropy_ungated() -> None:
    # gated=False: the coefficient is applied whether or not the entropy is below target
    c = AdaptiveEntropyController(target=0.5, coef=0.01, delta=0.004, max_coef=0.1, gated=False)
    assert c.update(0.9) == _approx(0.006)  # 0.01 - 0.004
    assert c.update(0.9) == _approx(0.002)  # 0.006 - 0.004
    assert c.update(0.9) == 0.0  # -0.002 -> clipped to min 0
    assert c.update(0.1) == _approx(0.004)


def test_adaptive_entropy_defaults_and_validation() -> None:
    # the Skywork-OR1 training scripts' values
    c = AdaptiveEntropyController()
    assert (c.target, c.coef, c.delta, c.min_coef, c.max_coef, c.gated) == (0.2, 0.0, 1e-4, 0.0, 5e-3, True)
    with pytest.raises(ValueError, match="delta"):
        AdaptiveEntropyController(delta=-1.0)
    with pytest.raises(ValueError, match="min_coef"):
        AdaptiveEntropyController(min_coef=0.1, max_coef=0.01, coef=0.05)
    with pytest.raises(ValueError, match="coef must lie"):
        AdaptiveEntropyController(coef=1.0)
    with pytest.raises(ValueError, match="NaN"):
        c.update(float("nan"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: FixedKLController(coef=0.3),
        lambda: AdaptiveKLController(coef=0.1, target=2.0, horizon=100),
        lambda: FixedEntropyController(coef=0.002),
        lambda: AdaptiveEntropyController(target=0.5, delta=0.01, max_coef=0.05),
    ],
)
def test_state_dict_round_trip(make) -> None:  # noqa: ANN001
    measurements = [0.4, 3.0, 0.9, 0.1, 2.5]
    a = make()
    for m in measurements[:3]:
        a.update(m, n_steps=3)
    state = a.state_dict()
    b = make()
    b.load_state_dict(state)
    assert b.value == a.value
    assert b.state_dict() == state
    for m in measurements[3:]:  # a resumed controller continues exactly like the original
        assert b.update(m, n_steps=3) == a.update(m, n_steps=3)
    with pytest.raises(KeyError, match="state_dict has no"):
        make().load_state_dict({})


def test_entropy_state_keeps_the_gate() -> None:
    a = AdaptiveEntropyController(target=0.5, coef=0.02, delta=0.01, max_coef=0.05)
    a.update(0.9)  # c = 0.01, gate off
    assert a.state_dict() == {"coef": pytest.approx(0.01), "active": False}
    b = AdaptiveEntropyController(target=0.5, delta=0.01, max_coef=0.05)
    b.load_state_dict(a.state_dict())
    assert b.value == 0.0 and b.coef == pytest.approx(0.01)

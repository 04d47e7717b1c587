"""Step components (KL penalty, controllers, reference reset), batch-field requests, the pre-update pass, and
the rule that the step itself names no plug-in."""

import ast
import inspect
from pathlib import Path

import pytest
import torch

from rlvr.algorithms import (
    ENTROPY_CONTROLLERS,
    LOSS_AGGREGATIONS,
    PLUGIN_FAMILIES,
    POLICY_LOSSES,
    AdaptiveKLController,
    AdvantageInputs,
    FixedKLController,
    kl_k1,
    lp_reg_loss,
    minp_proxy_logprobs,
)
from rlvr.registry import hyperparameters
from rlvr.trainer.components import EntropyBonus, KLPenalty, merge_requests, requests_of
from rlvr.trainer.logprobs import BATCH_FIELDS, fill_fields, token_entropy, token_logprobs
from rlvr.types import RolloutBatch

ROOT = Path(__file__).resolve().parents[2]


def small_batch() -> RolloutBatch:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    return RolloutBatch(
        prompt_ids=torch.ones(2, 1, dtype=torch.long),
        prompt_mask=torch.ones(2, 1, dtype=torch.long),
        response_ids=torch.tensor([[1, 2, 0], [3, 0, 0]]),
        response_mask=mask,
        engine_logprobs=torch.zeros(2, 3),
        sequence_rewards=torch.tensor([1.0, 0.0]),
        group_index=torch.tensor([0, 0]),
        truncated=torch.zeros(2, dtype=torch.bool),
        old_logprobs=torch.tensor([[-1.0, -2.0, 0.0], [-1.0, 0.0, 0.0]]),
        ref_logprobs=torch.tensor([[-1.5, -1.0, 0.0], [-2.0, 0.0, 0.0]]),
    )


def test_kl_in_the_reward_hand_worked():
    # k1 = old - ref = [[0.5, -1, .], [1, ., .]] on the mask; per-sequence sums [-0.5, 1]; coef 0.5
    batch = small_batch()
    kl = KLPenalty(FixedKLController(coef=0.5), kl_k1, "reward", token_level=False)
    assert kl.needs == {"ref_logprobs": {}, "old_logprobs": {}}
    inputs, metrics = kl.shape(AdvantageInputs.from_batch(batch), batch)
    torch.testing.assert_close(inputs.sequence_rewards, torch.tensor([1.25, -0.5]))
    assert inputs.token_rewards is None
    assert metrics["actor/kl"] == pytest.approx(0.5 / 3)  # (0.5 - 1 + 1) / 3 tokens
    assert metrics["actor/kl_reward_penalty"] == pytest.approx(0.125)  # 0.5 * mean(-0.5, 1)
    torch.testing.assert_close(batch.sequence_rewards, torch.tensor([1.0, 0.0]))  # the batch keeps its own

    token_level = KLPenalty(FixedKLController(coef=0.5), kl_k1, "reward", token_level=True)
    inputs, _ = token_level.shape(AdvantageInputs.from_batch(batch), batch)
    torch.testing.assert_close(inputs.token_rewards, torch.tensor([[-0.25, 0.5, 0.0], [-0.5, 0.0, 0.0]]))
    torch.testing.assert_close(inputs.sequence_rewards, torch.tensor([1.0, 0.0]))


def test_kl_in_the_loss_and_a_disabled_kl():
    batch = small_batch()
    kl = KLPenalty(FixedKLController(coef=0.5), kl_k1, "loss", token_level=False)
    assert kl.needs == {"ref_logprobs": {}}
    inputs, metrics = kl.shape(AdvantageInputs.from_batch(batch), batch)
    assert metrics == {} and inputs.token_rewards is None
    term, metrics = kl.token_loss(batch.old_logprobs, torch.zeros(2, 3), batch)
    torch.testing.assert_close(term, 0.5 * (batch.old_logprobs - batch.ref_logprobs))
    assert float(metrics["actor/kl"]) == pytest.approx(0.5 / 3)
    off = KLPenalty(FixedKLController(coef=0.0), kl_k1, "loss", token_level=False)
    assert off.needs == {} and off.token_loss(batch.old_logprobs, None, batch) == (None, {})
    assert off.report() == {"actor/kl_coef": 0.0}


def test_controllers_read_their_own_measurement_and_the_reset_runs_on_schedule():
    resets = []
    kl = KLPenalty(
        AdaptiveKLController(coef=0.1, target=0.01, horizon=100),
        kl_k1,
        "loss",
        token_level=False,
        reset_every=2,
        reset=lambda: resets.append(1),
    )
    assert kl.end_step(1, {"actor/kl": 0.02, "actor/entropy": 9.0}, samples=50) == {}
    # error clipped to +0.2, times 50 samples / horizon 100: coef * 1.1
    assert kl.controller.value == pytest.approx(0.11)
    assert kl.end_step(2, {}, samples=50) == {"actor/reference_reset": 1.0} and resets == [1]
    assert kl.controller.value == pytest.approx(0.11)  # no measurement: unchanged
    assert kl.state_dict() == {"value": pytest.approx(0.11)}

    bonus = EntropyBonus(ENTROPY_CONTROLLERS.get("adaptive")(coef=0.0, target=1.0, delta=0.01, max_coef=1.0))
    assert not bonus.entropy_grad and bonus.token_loss(None, torch.ones(1, 1), None) == (None, {})
    bonus.end_step(1, {"actor/entropy": 0.5, "actor/kl": 99.0}, samples=50)  # below target: coef + delta
    assert bonus.report() == {"actor/entropy_coef": pytest.approx(0.01)} and bonus.entropy_grad
    term, _ = bonus.token_loss(None, torch.full((1, 2), 2.0), None)
    torch.testing.assert_close(term, torch.full((1, 2), -0.02))


def test_requests_carry_the_plugins_own_hyperparameters():
    assert requests_of(lp_reg_loss, POLICY_LOSSES.bind("lp_reg", {"kappa": 0.1})) == {
        "proxy_logprobs": {"kappa": 0.1}
    }
    assert requests_of(lp_reg_loss, POLICY_LOSSES.bind("lp_reg", {})) == {"proxy_logprobs": {"kappa": 0.02}}
    assert merge_requests({"old_logprobs": {}}, {"old_logprobs": {}, "values": {}}) == {
        "old_logprobs": {},
        "values": {},
    }
    with pytest.raises(ValueError, match="proxy_logprobs"):
        merge_requests({"proxy_logprobs": {"kappa": 0.1}}, {"proxy_logprobs": {"kappa": 0.2}})


def test_fill_fields_runs_one_forward_per_model_and_micro_batch():
    g = torch.Generator().manual_seed(0)
    batch = small_batch()
    batch.old_logprobs = None
    logits = torch.randn(2, 3, 11, generator=g)  # [N, T, V]
    calls = []

    def policy(chunk):
        rows = [int(i) for i in (chunk.response_ids[:, 0] == 3)]  # row 0 starts with 1, row 1 with 3
        calls.append((len(rows), chunk.response_ids.shape[1]))
        return logits[torch.tensor(rows), : chunk.response_ids.shape[1]]  # the chunk's own width

    requests = {
        "old_logprobs": {},
        "old_entropy": {},
        "proxy_logprobs": {"kappa": 0.3},
        "sequence_rewards": {},
    }
    filled = fill_fields(batch, requests, {"policy": policy}, micro=1)
    assert filled == ["old_entropy", "old_logprobs", "proxy_logprobs"]  # sequence_rewards: already there
    # one forward per micro-batch for all three statistics; longest row first, each cut to its length
    assert calls == [(1, 2), (1, 1)]
    m = batch.response_mask  # response tokens are filled; the cut-off padding stays 0
    torch.testing.assert_close(batch.old_logprobs, token_logprobs(logits, batch.response_ids) * m)
    torch.testing.assert_close(batch.old_entropy, token_entropy(logits) * m)
    torch.testing.assert_close(
        batch.proxy_logprobs, minp_proxy_logprobs(logits, batch.response_ids, kappa=0.3) * m
    )
    assert fill_fields(batch, requests, {"policy": policy}, micro=1) == []  # nothing left to compute
    batch.ref_logprobs = None
    with pytest.raises(RuntimeError, match=r"\['ref_logprobs'\] need the reference model"):
        fill_fields(batch, {"ref_logprobs": {}}, {"policy": policy}, micro=1)


def _run_step_names() -> set[str]:
    tree = ast.parse((ROOT / "rlvr/train.py").read_text())
    (fn,) = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "run_step"]
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.update(node.value.replace("/", " ").replace(".", " ").split())
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)
    return names


def test_run_step_names_no_plugin_field_or_hyperparameter():
    """The step is generic: no registry name, no declared batch field, no plug-in hyperparameter in it."""
    plugin_words = set(LOSS_AGGREGATIONS) | set(BATCH_FIELDS.names())
    for registry in (r for r in PLUGIN_FAMILIES.values() if r is not LOSS_AGGREGATIONS):
        for name in registry.names():
            entry = registry.get(name)
            plugin_words |= {name, *getattr(entry, "needs", ())}
            plugin_words |= set(hyperparameters(entry, registry.inputs, registry.reserved))
    plugin_words |= {p for p in inspect.signature(FixedKLController).parameters}  # coef
    mentioned = _run_step_names() & plugin_words
    assert not mentioned, f"run_step names plug-in specifics: {sorted(mentioned)}"

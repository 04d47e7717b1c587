"""The preference update applies exactly the gradient of the mean pair loss, whatever the micro-batching;
offline pair batches and online pairs are laid out as the losses expect."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from batches import random_batch
from transformers import AutoModelForCausalLM

from rlvr.algorithms import PREFERENCE_LOSSES
from rlvr.config import Recipe
from rlvr.models import build_tiny_model
from rlvr.trainer.logprobs import response_logprobs
from rlvr.trainer.preference import online_preference_update, pair_batch, preference_inputs, preference_update
from rlvr.trainer.update import UpdateContext


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden_size=64, num_heads=2, num_kv_heads=1)


def context(model, micro: int, lr: float):
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    recipe = Recipe.model_validate({"train": {"max_grad_norm": 1e9}})
    accelerator = Accelerator(gradient_accumulation_steps=8 // micro)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return UpdateContext(
        accelerator, model, optimizer, scheduler, recipe, micro, 8 // micro, policy_loss=(None, {})
    )


def expected_delta(model, batch, chosen, rejected, loss, lr, kl=(None, None)):
    """-lr * gradient of the mean loss over all pairs, computed on the whole batch at once."""
    model = copy.deepcopy(model)
    logprobs, _ = response_logprobs(model, batch)
    seq = (logprobs * batch.response_mask).sum(-1)
    per_pair, metrics = loss[0](preference_inputs(seq, batch, chosen, rejected, kl), **loss[1])
    per_pair.mean().backward()
    return {n: -lr * p.grad for n, p in model.named_parameters()}, metrics


@pytest.mark.parametrize("micro", [2, 4, 8])
def test_micro_batched_dpo_update_equals_full_batch_gradient(tiny_dir, micro):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    batch = random_batch(group=2)  # a pair's two answers share their prompt, which then runs once
    # pairs inside groups of two rows: (0, 1), (2, 3)->(3, 2) reversed, (5, 4), (6, 7)
    chosen, rejected = torch.tensor([0, 3, 5, 6]), torch.tensor([1, 2, 4, 7])
    loss = (PREFERENCE_LOSSES.get("dpo"), {"beta": 0.5, "label_smoothing": 0.0})
    lr = 0.5
    expected, full = expected_delta(model, batch, chosen, rejected, loss, lr)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    ctx = context(model, micro, lr)
    metrics = preference_update(ctx, batch, chosen, rejected, loss, group_size=2)

    for name, param in ctx.model.named_parameters():
        torch.testing.assert_close(param.detach() - before[name], expected[name], atol=1e-6, rtol=1e-4)
    # metrics: means over pairs of the micro-batches' values == the full batch's
    for key in ("rewards/accuracy", "rewards/margin", "logps/chosen"):
        assert metrics[f"preference/{key}"] == pytest.approx(float(full[key]), abs=1e-5)
    assert metrics["actor/grad_norm"] > 0


@pytest.mark.parametrize("micro", [1, 8])
def test_micro_batched_kto_update_counts_every_response(tiny_dir, micro):
    """Unpaired: one loss value per response, normalised by the number of responses."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    batch = random_batch()
    desirable, undesirable = torch.tensor([0, 2, 3, 5]), torch.tensor([1, 4, 6, 7])
    kl = (torch.tensor([-3.0, -2.0]), torch.tensor([-3.5, -2.5]))  # z0 = 0.5
    loss = (PREFERENCE_LOSSES.get("kto"), PREFERENCE_LOSSES.bind("kto", {}))
    lr = 0.5
    expected, _ = expected_delta(model, batch, desirable, undesirable, loss, lr, kl)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    ctx = context(model, micro, lr)
    metrics = preference_update(
        ctx, batch, desirable, undesirable, loss, group_size=1, paired=False, kl_logps=kl
    )

    for name, param in ctx.model.named_parameters():
        torch.testing.assert_close(param.detach() - before[name], expected[name], atol=1e-6, rtol=1e-4)
    assert metrics["preference/kto/z0"] == pytest.approx(0.5)


def test_online_pairs_from_groups(tiny_dir):
    """Groups of 4: rewards [1, 0, 1, 1] give 3 pairs, [0, 1, 0, 0] 3 pairs; with a micro-batch of one group
    the update equals the full-batch gradient over the 6 pairs."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    batch = random_batch()
    loss = (PREFERENCE_LOSSES.get("dpo"), {"beta": 0.1, "label_smoothing": 0.0})
    chosen, rejected = torch.tensor([0, 2, 3, 5, 5, 5]), torch.tensor([1, 1, 1, 4, 6, 7])
    expected, _ = expected_delta(model, batch, chosen, rejected, loss, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = Recipe.model_validate({"algorithm": {"preference": {"loss": "dpo"}}}).algorithm.preference

    ctx = context(model, 4, 0.5)
    metrics = online_preference_update(ctx, batch, loss, settings, group_size=4)

    assert metrics["pairs/count"] == 6.0 and metrics["pairs/groups_used"] == 2.0
    assert metrics["pairs/groups_dropped"] == 0.0
    for name, param in ctx.model.named_parameters():
        torch.testing.assert_close(param.detach() - before[name], expected[name], atol=1e-6, rtol=1e-4)


def test_micro_batches_must_hold_whole_groups(tiny_dir):
    ctx = context(AutoModelForCausalLM.from_pretrained(tiny_dir), 2, 0.1)
    loss = (PREFERENCE_LOSSES.get("simpo"), {})
    with pytest.raises(ValueError, match="whole groups"):
        preference_update(ctx, random_batch(), torch.tensor([0]), torch.tensor([1]), loss, group_size=4)


def test_pair_batch_layout():
    rows = [
        {"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [10]},
        {"prompt_ids": [5], "chosen_ids": [11], "rejected_ids": [12, 13]},
    ]
    batch, chosen, rejected = pair_batch(rows, pad_id=0, group_offset=10)
    assert chosen.tolist() == [0, 2] and rejected.tolist() == [1, 3]
    assert batch.group_index.tolist() == [10, 10, 11, 11]
    assert batch.prompt_ids.tolist() == [[5, 6], [5, 6], [0, 5], [0, 5]]  # left-padded
    assert batch.response_ids.tolist() == [[7, 8, 9], [10, 0, 0], [11, 0, 0], [12, 13, 0]]
    assert batch.response_mask.sum(-1).tolist() == [3, 1, 1, 2]
    assert batch.sequence_rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
    unpaired = [
        {"prompt_ids": [5], "completion_ids": [7], "label": False},
        {"prompt_ids": [6], "completion_ids": [8], "label": True},
    ]
    _, desirable, undesirable = pair_batch(unpaired, pad_id=0)
    assert desirable.tolist() == [1] and undesirable.tolist() == [0]

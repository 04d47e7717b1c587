"""The PPO critic: value alignment, joint update with the policy, the final folder without the critic;
ProRL's reference reset and optimizer reset."""

import copy

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from test_update import random_batch, sgd_update
from transformers import AutoModelForCausalLM

from rlvr.algorithms import aggregate, ppo_clip_loss, value_loss
from rlvr.config import Recipe
from rlvr.models import build_tiny_model
from rlvr.trainer.checkpoint import save_final_model
from rlvr.trainer.critic import PolicyWithCritic, load_critic, policy_of
from rlvr.trainer.logprobs import critic_output, fill_fields, response_logprobs
from rlvr.trainer.setup import reset_optimizer_state, reset_reference
from rlvr.trainer.weights import gathered_parameters, policy_state


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden_size=64, num_heads=2, num_kv_heads=1)


def _reset_accelerate():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_value_head_starts_at_zero_and_reads_the_state_before_each_token(tiny_dir):
    model = PolicyWithCritic(
        AutoModelForCausalLM.from_pretrained(tiny_dir), load_critic(str(tiny_dir), torch.float32)
    )
    batch = random_batch()
    fill_fields(batch, {"values": {}}, {"critic": critic_output(model)}, micro=4)
    assert torch.count_nonzero(batch.values) == 0
    with torch.no_grad():
        model.critic.score.weight.normal_()
        model.critic.score.bias.fill_(0.5)
    values = model(value_batch=batch)  # [N, T]
    # V(s_t) must be the critic's output after the prompt and the first t response tokens, unpadded
    for row in (0, 1, 5):
        prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()]
        length = int(batch.response_mask[row].sum())
        for t in range(length):
            ids = torch.cat([prompt, batch.response_ids[row, :t]])[None]
            alone = model.critic(input_ids=ids).logits[0, -1, 0]
            torch.testing.assert_close(values[row, t], alone, atol=1e-5, rtol=1e-5)


def test_policy_and_critic_update_is_the_joint_gradient(tiny_dir):
    _reset_accelerate()
    recipe = Recipe.model_validate(
        {
            "algorithm": {"advantage": "gae", "critic": {"vf_coef": 0.5, "clip_range": 0.2}},
            "rollout": {"max_tokens": 8},
            "train": {"max_grad_norm": 1e9},
        }
    )
    model = PolicyWithCritic(
        AutoModelForCausalLM.from_pretrained(tiny_dir), load_critic(str(tiny_dir), torch.float32)
    )
    with torch.no_grad():
        model.critic.score.weight.normal_(std=0.1)
    batch = random_batch()
    g = torch.Generator().manual_seed(3)
    fill_fields(batch, {"values": {}}, {"critic": critic_output(model)}, micro=8)
    batch.values = batch.values + 0.3 * torch.randn(batch.response_mask.shape, generator=g)
    batch.returns = torch.randn(batch.response_mask.shape, generator=g) * batch.response_mask
    lr = 0.5

    reference = copy.deepcopy(model)
    logprobs, _ = response_logprobs(reference, batch)
    per_token, _ = ppo_clip_loss(logprobs, logprobs.detach(), batch.advantages, batch.response_mask)
    v_loss, _ = value_loss(reference(value_batch=batch), batch.values, batch.returns, batch.response_mask)
    mask = batch.response_mask
    (aggregate(per_token, mask, "token-mean") + 0.5 * aggregate(v_loss, mask, "token-mean")).backward()
    expected = {n: -lr * p.grad for n, p in reference.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    model, metrics = sgd_update(model, recipe, batch, lr, micro=2)
    moved_critic = 0
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach() - before[name], expected[name], atol=1e-6, rtol=1e-4)
        moved_critic += name.startswith("critic.") and bool((param.detach() != before[name]).any())
    assert moved_critic > 0
    assert 0 < metrics["critic/vf_clip_frac"] < 1


def test_weights_sync_and_final_folder_hold_only_the_policy(tiny_dir, tmp_path):
    _reset_accelerate()
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model = PolicyWithCritic(policy, load_critic(str(tiny_dir), torch.float32))
    accelerator = Accelerator()
    model = accelerator.prepare(model)
    with gathered_parameters(accelerator, model) as unwrapped:
        names = [name for name, _ in policy_state(unwrapped)]
    assert names == [name for name, _ in policy.named_parameters(remove_duplicate=False)]
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(tiny_dir)
    save_final_model(accelerator, model, tokenizer, tmp_path / "final")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    for (name, a), (_, b) in zip(policy.state_dict().items(), reloaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert policy_of(accelerator.unwrap_model(model)) is policy


def test_reference_reset_copies_the_policy_and_optimizer_reset_clears_adam(tiny_dir):
    _reset_accelerate()
    accelerator = Accelerator()
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    ref = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    loss = response_logprobs(model, random_batch())[0].sum()
    loss.backward()
    optimizer.step()
    assert any((p != r).any() for p, r in zip(model.parameters(), ref.parameters(), strict=True))
    reset_reference(accelerator, model, ref)
    for p, r in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, r)
    cleared = reset_optimizer_state(optimizer)
    assert cleared == 3 * len(list(model.parameters()))  # step, exp_avg, exp_avg_sq per parameter
    for state in optimizer.optimizer.state.values():
        assert all(torch.count_nonzero(v) == 0 for v in state.values())

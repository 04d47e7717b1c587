"""The update applies exactly the gradient of the aggregated mini-batch loss, whatever the micro-batching."""

import copy

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from batches import random_batch
from transformers import AutoModelForCausalLM

from rlvr.algorithms import ADVANTAGES, LOSS_AGGREGATIONS, aggregate, ppo_clip_loss
from rlvr.config import Recipe
from rlvr.models import build_tiny_model
from rlvr.trainer.batch import micro_batch_rows
from rlvr.trainer.components import TokenWeighting, build_components
from rlvr.trainer.logprobs import last_logits, response_logprobs, shared_prompt_logits
from rlvr.trainer.update import UpdateContext, micro_batches, policy_update
from rlvr.types import RolloutBatch


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden_size=64, num_heads=2, num_kv_heads=1)


def reference_delta(
    model, batch: RolloutBatch, mode: str, lr: float, entropy_coef: float = 0.0
) -> dict[str, torch.Tensor]:
    """-lr * gradient of the loss aggregated over the whole batch at once."""
    model = copy.deepcopy(model)
    logprobs, _ = response_logprobs(model, batch)
    per_token, _ = ppo_clip_loss(logprobs, logprobs.detach(), batch.advantages, batch.response_mask)
    if entropy_coef:
        # entropy of the full next-token distribution, written out independently of rlvr's helper
        input_ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
        attention = torch.cat([batch.prompt_mask, batch.response_mask.long()], 1)
        logits = model(
            input_ids=input_ids, attention_mask=attention, position_ids=(attention.cumsum(1) - 1).clamp(min=0)
        ).logits[:, batch.prompt_ids.shape[1] - 1 : -1]
        entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
        per_token = per_token - entropy_coef * entropy
    loss = aggregate(per_token, batch.response_mask, mode, max_response_len=8)
    loss.backward()
    return {n: -lr * p.grad for n, p in model.named_parameters()}


def sgd_update(model, recipe: Recipe, batch: RolloutBatch, lr: float, micro: int):
    """Prepare ``model`` with plain SGD and run :func:`policy_update` on ``batch`` (8 rows); returns the
    prepared model and the update's metrics."""
    accelerator = Accelerator(gradient_accumulation_steps=8 // micro)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    algo = recipe.algorithm
    advantage = (ADVANTAGES.get(algo.advantage), ADVANTAGES.bind(algo.advantage, algo.advantage_kwargs))
    ctx = UpdateContext(
        accelerator,
        model,
        optimizer,
        scheduler,
        recipe,
        micro_batch=micro,
        grad_accum=8 // micro,
        components=build_components(recipe, advantage),
    )
    return model, policy_update(ctx, batch)


CASES = [(mode, micro, 0.0, True, None) for mode in LOSS_AGGREGATIONS for micro in (2, 4, 8)]
CASES += [
    ("token-mean", 2, 0.1, True, None),
    ("token-mean", 2, 0.0, False, None),
    ("seq-mean-token-sum-norm", 4, 0.0, False, None),
]
# token budgets: 8-row micro-batches packed to <= 24 / 12 padded tokens (rows are 4-11 tokens), or 5,
# below every row (each row alone): 3 to 8 micro-batches where accumulation was configured for 1
CASES += [(mode, 8, 0.0, True, budget) for mode in LOSS_AGGREGATIONS for budget in (24, 12)]
CASES += [("token-mean", 8, 0.1, True, 5), ("seq-mean-token-mean", 4, 0.0, True, 16)]
# rows in groups of 4 that share their prompt, each prompt run once per micro-batch (share_prompt_prefix)
CASES = [(*case, 4, True) for case in CASES]
# ... and without sharing: prompts that never repeat, or sharing off
CASES += [(mode, 4, 0.0, True, None, 1, True) for mode in LOSS_AGGREGATIONS]
CASES += [("token-mean", 2, 0.1, True, None, 4, False), ("seq-mean-token-mean", 8, 0.0, True, 12, 4, False)]


@pytest.mark.parametrize(("mode", "micro", "entropy_coef", "by_length", "budget", "group", "share"), CASES)
def test_micro_batched_update_equals_full_batch_gradient(
    tiny_dir, mode, micro, entropy_coef, by_length, budget, group, share
):
    """Rows dealt into micro-batches by length (or in order), or packed up to a token budget, each cut to
    its own longest row, each distinct prompt of a micro-batch run once or not: the accumulated step is
    the full-batch gradient step (every row run whole, at once), for every aggregation mode, whatever the
    number of micro-batches."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    recipe = Recipe.model_validate(
        {
            "algorithm": {"loss_agg": mode, "entropy_coef": entropy_coef},
            "rollout": {"max_tokens": 8},
            "train": {
                "max_grad_norm": 1e9,
                "sort_by_length": by_length,
                "max_tokens_per_micro_batch": budget,
                "share_prompt_prefix": share,
            },
        }
    )
    batch = random_batch(group=group)
    if budget is not None:  # the budget really changes the number of micro-batches
        assert len(micro_batch_rows(batch, micro, True, budget)) > 8 // micro
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    lr = 0.5
    expected = reference_delta(model, batch, mode, lr, entropy_coef)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    model, metrics = sgd_update(model, recipe, batch, lr, micro)

    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach() - before[name], expected[name], atol=1e-6, rtol=1e-4)
    assert metrics["actor/ratio_mean"] == pytest.approx(1.0)  # on-policy: the ratio is exactly one
    assert metrics["actor/clip_frac"] == 0.0
    assert metrics["actor/grad_norm"] > 0


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_token_weights_scale_tokens_and_zero_weights_leave_the_counts(tiny_dir, mode):
    """Weighted update == gradient of aggregate(loss * w) over the tokens whose weight is not 0."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    recipe = Recipe.model_validate(
        {"algorithm": {"loss_agg": mode}, "rollout": {"max_tokens": 8}, "train": {"max_grad_norm": 1e9}}
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    batch = random_batch()
    g = torch.Generator().manual_seed(1)
    weights = torch.rand(batch.response_mask.shape, generator=g) * 2  # [N, T] in [0, 2)
    weights[weights < 0.6] = 0.0  # about 30% of the tokens dropped
    weights[3] = 0.0  # one sequence dropped entirely: it must not count in seq-mean
    batch.token_weights = weights * batch.response_mask
    lr = 0.5

    reference = copy.deepcopy(model)
    logprobs, _ = response_logprobs(reference, batch)
    per_token, _ = ppo_clip_loss(logprobs, logprobs.detach(), batch.advantages, batch.response_mask)
    kept = batch.response_mask * (batch.token_weights != 0)
    aggregate(per_token * batch.token_weights, kept, mode).backward()
    expected = {n: -lr * p.grad for n, p in reference.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    model, _ = sgd_update(model, recipe, batch, lr, micro=2)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach() - before[name], expected[name], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    ("level", "micro", "idle", "overlong"),
    [
        ("token", 2, False, False),
        ("sequence", 8, False, False),
        ("token", 2, True, False),
        ("token", 2, True, True),
        ("sequence", 4, False, True),
    ],
)
def test_tis_computed_inside_a_single_step_update_equals_tis_computed_before_it(
    tiny_dir, level, micro, idle, overlong
):
    """One optimizer step per batch: TIS's ``min(exp(old - engine), cap)`` is computed per micro-batch from
    the update's own log-probs (no pass fills old_logprobs); the step is the gradient of the TIS-weighted
    loss, and the metrics are those of the whole batch's weights, over the rows the update ran. Beside
    ``overlong_mask`` (which reads no log-probs, computed before the update) no pass runs either, and the
    step is that of the product of both weights (truncated rows are left out of the update, or, when
    ``skip_zero_advantage`` is off, run with weight 0)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    tis = {"name": "tis", "kwargs": {"cap": 1.5, "level": level}}
    entries = [{"name": "overlong_mask"}, tis] if overlong else [tis]
    recipe = Recipe.model_validate(
        {
            "algorithm": {"token_weights": entries},
            "rollout": {"max_tokens": 8},
            "train": {"max_grad_norm": 1e9, "skip_zero_advantage": idle},
        }
    )
    algo = recipe.algorithm
    advantage = (ADVANTAGES.get(algo.advantage), ADVANTAGES.bind(algo.advantage, algo.advantage_kwargs))

    def weighting_of(weights: list[dict], **train) -> TokenWeighting:
        other = Recipe.model_validate({"algorithm": {"token_weights": weights}, "train": train})
        return build_components(other, advantage)[-1]

    weighting = build_components(recipe, advantage)[-1]
    assert weighting.needs == {}  # nothing asks for the no-grad pass
    assert "old_logprobs" in weighting_of(entries, epochs=2).needs  # TIS is computed before the update
    assert "old_logprobs" in weighting_of([*entries, {"name": "mismatch_mask"}]).needs  # it reads them

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    batch = random_batch()
    if idle:
        batch.advantages[[1, 4, 5]] = 0.0  # rows the update skips
    mask = batch.response_mask
    keep = torch.ones(8)
    if overlong:
        batch.truncated[[2, 6]] = True  # dropped by overlong_mask (and skipped by the update if idle)
        keep[[2, 6]] = 0.0
        before_metrics = weighting.after_advantages(batch, None)  # the whole batch, before the update
        assert before_metrics == {
            "tokens/overlong_mask/masked_frac": pytest.approx(2 / 8),
            "tokens/kept_frac": pytest.approx(float((mask * keep[:, None]).sum() / mask.sum())),
        }
        torch.testing.assert_close(batch.token_weights, mask * keep[:, None])
    with torch.no_grad():
        policy, _ = response_logprobs(model, batch)
    g = torch.Generator().manual_seed(2)
    batch.engine_logprobs = (policy + 0.4 * torch.randn(policy.shape, generator=g)) * batch.response_mask
    lr = 0.5

    reference = copy.deepcopy(model)
    logprobs, _ = response_logprobs(reference, batch)
    log_ratio = (logprobs.detach() - batch.engine_logprobs) * mask  # [N, T]
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True).expand_as(mask)
    ratio = log_ratio.exp()
    weights = ratio.clamp(max=1.5) * mask * keep[:, None]
    assert 0 < ((ratio > 1.5) & (mask != 0)).sum() < mask.sum()  # some weights capped, not all
    kept = mask * keep[:, None]
    per_token, _ = ppo_clip_loss(logprobs, logprobs.detach(), batch.advantages, kept)
    aggregate(per_token * weights, kept, "token-mean").backward()
    expected = {n: -lr * p.grad for n, p in reference.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    model, metrics = sgd_update(model, recipe, batch, lr, micro)

    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach() - before[name], expected[name], atol=1e-6, rtol=1e-4)
    run = torch.ones(8, dtype=torch.bool)
    if idle:
        run[[1, 4, 5]] = False
        run &= keep.bool()
    assert metrics["perf/skipped_rows_frac"] == pytest.approx(1 - float(run.float().mean()))
    tokens = (mask != 0) & run[:, None]  # [N, T]
    units = tokens if level == "token" else run
    unit_ratio = ratio if level == "token" else ratio[:, 0]
    assert metrics["tokens/tis/ratio_mean"] == pytest.approx(float(unit_ratio[units].mean()), rel=1e-4)
    assert metrics["tokens/tis/ratio_max"] == pytest.approx(float(unit_ratio[units].max()), rel=1e-4)
    assert metrics["tokens/tis/ratio_min"] == pytest.approx(float(unit_ratio[units].min()), rel=1e-4)
    assert metrics["tokens/tis/capped_frac"] == pytest.approx(float((unit_ratio[units] > 1.5).float().mean()))
    assert metrics["tokens/weight_mean"] == pytest.approx(
        float(weights[tokens & (kept != 0)].mean()), rel=1e-4
    )
    # kept_frac is the whole batch's, reported before the update, when a weight before it removes tokens
    assert metrics.get("tokens/kept_frac") == (None if overlong else 1.0)


def test_shared_prompt_forward_runs_each_prompt_once_with_the_full_forwards_values_and_gradient(tiny_dir):
    """Prefix Grouper's shared-prefix forward on the key/value cache: two distinct prompts (one left-padded)
    of 8 interleaved rows, one with an empty response, run as 2 prompt rows then 8 response rows; the
    response logits and the gradient of a loss on them equal the full forward's."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    batch = random_batch(n=8, group=4).select(torch.tensor([0, 4, 1, 5, 2, 6, 3, 7]))
    batch.response_mask[3] = 0.0
    mask = batch.response_mask  # [8, 6]
    weights = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    shapes = []
    model.model.embed_tokens.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))

    def run(share: bool):
        model.zero_grad()
        logits = last_logits(model, batch, share)  # [8, 6, V]
        logp = logits.float().log_softmax(-1).gather(-1, batch.response_ids[..., None])[..., 0]
        (logp * weights * mask).sum().backward()
        return logits.detach() * mask[..., None], {n: p.grad.clone() for n, p in model.named_parameters()}

    full_logits, full_grads = run(False)
    assert shapes == [(8, 5 + 6)]
    shapes.clear()
    shared_logits, shared_grads = run(True)
    assert shapes == [(2, 5 - 1), (8, 1 + 5)]  # the prompts but their last token; last token + response[:-1]
    torch.testing.assert_close(shared_logits, full_logits, atol=1e-5, rtol=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4)
    # no prompt repeats, or prompts of one token: the same two passes (every process runs the same graph)
    for batch, prefix in ((random_batch(group=1), (8, 4)), (random_batch(p=1, group=4), (2, 1))):
        shapes.clear()
        logits = shared_prompt_logits(model, batch)
        assert shapes == [prefix, (8, 6)]
        torch.testing.assert_close(
            logits * batch.response_mask[..., None],
            last_logits(model, batch) * batch.response_mask[..., None],
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("family", ["gemma2", "mistral"])
def test_shared_prompt_forward_is_exact_under_sliding_window_attention(family):
    """A sliding window of 4 tokens, shorter than a row (7 + 8): every layer (Mistral) or every other
    layer (Gemma2, alternating with full attention). The cache keeps only the window, and the shared
    forward still gives the full forward's logits and gradient."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, MistralConfig, MistralForCausalLM

    config_class, model_class = {
        "gemma2": (Gemma2Config, Gemma2ForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }[family]
    shape = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    heads = dict(num_attention_heads=2, num_key_value_heads=1, head_dim=32)
    torch.manual_seed(0)
    model = model_class(config_class(**shape, **heads, sliding_window=4))
    wide = model_class(config_class(**shape, **heads, sliding_window=64))
    wide.load_state_dict(model.state_dict())
    batch = random_batch(n=8, p=7, t=8, group=4)
    mask = batch.response_mask.bool()  # [8, 8]

    def run(share: bool):
        model.zero_grad()
        logits = last_logits(model, batch, share)[mask]  # [tokens, V]
        (logits**2).mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    full_logits, full_grads = run(False)
    assert (full_logits - last_logits(wide, batch)[mask]).abs().max() > 0.1  # the window matters here
    shared_logits, shared_grads = run(True)
    torch.testing.assert_close(shared_logits, full_logits, atol=1e-5, rtol=1e-5)
    for name, grad in full_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4)


def test_micro_batches_group_rows_by_length_and_cut_the_padding():
    batch = random_batch(n=6, p=5, t=6, seed=3)
    lengths = (batch.response_mask.sum(1) + batch.prompt_mask.sum(1)).tolist()
    micros = list(micro_batches(batch, micro_batch_rows(batch, 4, by_length=True)))
    assert [len(m) for m in micros] == [4, 2]
    seen = []
    for m in micros:
        # every row is a row of the batch, with its tokens in the same places relative to the cut
        for i in range(len(m)):
            match = [
                j
                for j in range(len(batch))
                if torch.equal(batch.response_ids[j, : m.response_ids.shape[1]], m.response_ids[i])
                and torch.equal(batch.prompt_ids[j, -m.prompt_ids.shape[1] :], m.prompt_ids[i])
            ]
            assert len(match) == 1
            seen.append(match[0])
        width_t = int(m.response_mask.sum(1).max())
        assert m.response_ids.shape[1] == width_t and m.advantages.shape[1] == width_t
        assert m.prompt_ids.shape[1] == int(m.prompt_mask.sum(1).max())
    assert sorted(seen) == list(range(6))
    assert [lengths[j] for j in seen] == sorted(lengths, reverse=True)
    in_order = list(micro_batches(batch, micro_batch_rows(batch, 4, by_length=False)))
    width = in_order[0].response_ids.shape[1]
    assert torch.equal(in_order[0].response_ids, batch.response_ids[:4, :width])


def length_batch(prompt_lens: list[int], response_lens: list[int], groups: list[int]) -> RolloutBatch:
    """A batch whose rows have the given prompt / response lengths (left-padded prompts)."""
    n, p, t = len(prompt_lens), max(prompt_lens), max(response_lens)
    prompt_mask = torch.tensor([[0] * (p - k) + [1] * k for k in prompt_lens])
    response_mask = torch.tensor([[1.0] * k + [0.0] * (t - k) for k in response_lens])
    return RolloutBatch(
        prompt_ids=prompt_mask * 5,
        prompt_mask=prompt_mask,
        response_ids=torch.full((n, t), 7),
        response_mask=response_mask,
        engine_logprobs=torch.zeros(n, t),
        sequence_rewards=torch.zeros(n),
        group_index=torch.tensor(groups),
        truncated=torch.zeros(n, dtype=torch.bool),
    )


def test_token_budget_packs_rows_longest_first():
    # rows (prompt + response): 0: 2+8, 1: 3+1, 2: 2+2, 3: 4+6, 4: 1+1, 5: 3+3
    batch = length_batch([2, 3, 2, 4, 1, 3], [8, 1, 2, 6, 1, 3], groups=[0, 0, 1, 1, 2, 2])
    # longest first: 0 (10), 3 (10), 5 (6), 1 (4), 2 (4), 4 (2). Budget 20: [0, 3] is 2 x (4 + 8) = 24 > 20,
    # so 0 alone; [3, 5] = 2 x (4 + 6) = 20; + 1 -> 3 x 10 = 30 > 20; [1, 2] = 2 x (3 + 2) = 10, + 4 -> 15
    rows = micro_batch_rows(batch, 8, True, max_tokens=20)
    assert [r.tolist() for r in rows] == [[0], [3, 5], [1, 2, 4]]
    # the row cap still holds: at most 2 rows
    assert [r.tolist() for r in micro_batch_rows(batch, 2, True, max_tokens=20)] == [[0], [3, 5], [1, 2], [4]]
    # a budget below a row: that row is a micro-batch of its own
    assert [r.tolist() for r in micro_batch_rows(batch, 8, True, max_tokens=3)] == [
        [0],
        [3],
        [5],
        [1],
        [2],
        [4],
    ]
    # split to a count: the micro-batch with the most padded tokens is halved ([1, 2, 4]: 3 x 5 = 15 and
    # [3, 5]: 20 -> [3], [5]; then [1, 2, 4] -> [1], [2, 4])
    assert [r.tolist() for r in micro_batch_rows(batch, 8, True, max_tokens=20, count=5)] == [
        [0],
        [3],
        [5],
        [1],
        [2, 4],
    ]
    with pytest.raises(RuntimeError, match="6 units into 7"):
        micro_batch_rows(batch, 8, True, max_tokens=20, count=7)


def test_whole_groups_stay_together_when_sorted_packed_or_split():
    batch = length_batch([2, 3, 2, 4, 1, 3], [8, 1, 2, 6, 1, 3], groups=[0, 0, 1, 1, 2, 2])
    # groups by their longest row: 0 (10), 1 (10), 2 (6)
    assert [r.tolist() for r in micro_batch_rows(batch, 4, True, whole_groups=True)] == [[0, 1, 2, 3], [4, 5]]
    # budget 30: group 0 + group 1 = 4 x (4 + 8) = 48 > 30; group 1 + group 2 = 4 x (4 + 6) = 40 > 30
    packed = micro_batch_rows(batch, 8, True, max_tokens=30, whole_groups=True)
    assert [r.tolist() for r in packed] == [[0, 1], [2, 3], [4, 5]]
    split = micro_batch_rows(batch, 8, True, whole_groups=True, count=3)
    assert [r.tolist() for r in split] == [[0, 1], [2, 3], [4, 5]]


def test_idle_rows_are_left_out_unless_needed_to_fill():
    # rows (prompt + response): 0: 2+8, 1: 3+1, 2: 2+2, 3: 4+6, 4: 1+1, 5: 3+3; rows 0, 2 and 4 idle
    batch = length_batch([2, 3, 2, 4, 1, 3], [8, 1, 2, 6, 1, 3], groups=[0, 0, 1, 1, 2, 2])
    idle = torch.tensor([True, False, True, False, True, False])
    # busy rows longest first: 3 (10), 5 (6), 1 (4)
    assert [r.tolist() for r in micro_batch_rows(batch, 2, True, idle=idle)] == [[3, 5], [1]]
    # to make 4 micro-batches: [3, 5] is halved, then the shortest idle row (4) fills the fourth
    assert [r.tolist() for r in micro_batch_rows(batch, 2, True, idle=idle, count=4)] == [[3], [5], [1], [4]]
    assert [r.tolist() for r in micro_batch_rows(batch, 2, True, idle=idle, count=5)] == [
        [3],
        [5],
        [1],
        [4],
        [2],
    ]
    # whole groups: a group is idle only when all its rows are (none here: every group has a busy row)
    grouped = micro_batch_rows(batch, 8, True, whole_groups=True, idle=idle)
    assert [r.tolist() for r in grouped] == [[0, 1, 2, 3, 4, 5]]
    assert micro_batch_rows(batch, 8, True, whole_groups=True, idle=torch.tensor([True] * 4 + [False] * 2))[
        0
    ].tolist() == [4, 5]
    # nothing busy: one micro-batch of the shortest idle row, so that the optimizer still steps
    assert [r.tolist() for r in micro_batch_rows(batch, 4, True, idle=torch.ones(6, dtype=torch.bool))] == [
        [4]
    ]
    with pytest.raises(RuntimeError, match="6 units into 7"):
        micro_batch_rows(batch, 2, True, idle=idle, count=7)
    # a filler has a response token when one can: row 0 (2 + 0) is shorter but has no response
    empty = length_batch([2, 1, 3], [0, 2, 1], groups=[0, 0, 0])
    assert [r.tolist() for r in micro_batch_rows(empty, 4, True, idle=torch.ones(3, dtype=torch.bool))] == [
        [1]
    ]


SKIP_CASES = [(mode, 2, None) for mode in LOSS_AGGREGATIONS] + [("token-mean", 8, 12)]


@pytest.mark.parametrize(("mode", "micro", "budget"), SKIP_CASES)
def test_rows_without_advantage_are_skipped_and_the_gradient_is_the_same(tiny_dir, mode, micro, budget):
    """Rows whose advantages are all 0 are not run (train.skip_zero_advantage, on by default); the step is
    still the full-batch gradient step, their tokens still in the normalising counts."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    recipe = Recipe.model_validate(
        {
            "algorithm": {"loss_agg": mode},
            "rollout": {"max_tokens": 8},
            "train": {"max_grad_norm": 1e9, "max_tokens_per_micro_batch": budget},
        }
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    batch = random_batch()
    batch.advantages[[1, 4, 5]] = 0.0  # e.g. a prompt whose samples all got one reward
    lr = 0.5
    expected = reference_delta(model, batch, mode, lr)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    model, metrics = sgd_update(model, recipe, batch, lr, micro)

    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach() - before[name], expected[name], atol=1e-6, rtol=1e-4)
    assert metrics["perf/skipped_rows_frac"] == pytest.approx(3 / 8)
    run = [0, 2, 3, 6, 7]
    tokens = batch.prompt_mask[run].sum() + batch.response_mask[run].sum()
    assert metrics["perf/update_tokens_run"] == pytest.approx(float(tokens))


def test_an_update_with_no_advantage_at_all_still_steps_the_optimizer(tiny_dir):
    """Every row idle: one (shortest) row is run, with zero gradient, so that the optimizer and the
    schedule step as they would have (Adam's moments and weight decay move the weights regardless)."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    recipe = Recipe.model_validate({"rollout": {"max_tokens": 8}, "train": {"max_grad_norm": 1e9}})
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    batch = random_batch()
    batch.advantages = torch.zeros_like(batch.advantages)
    accelerator = Accelerator(gradient_accumulation_steps=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ctx = UpdateContext(accelerator, model, optimizer, scheduler, recipe, micro_batch=2, grad_accum=4)

    metrics = policy_update(ctx, batch)

    assert metrics["perf/skipped_rows_frac"] == pytest.approx(7 / 8)
    assert metrics["actor/grad_norm"] == 0.0
    assert scheduler.last_epoch == 1
    for name, param in model.named_parameters():  # weight decay alone: w <- w (1 - lr wd)
        torch.testing.assert_close(param.detach(), before[name] * (1 - 0.1 * 0.5), atol=1e-7, rtol=1e-6)


def test_rows_are_not_skipped_when_some_loss_term_reads_them():
    """An entropy bonus or a KL term in the loss reaches every row, and losses that select tokens across
    rows (Clip-Cov) do not vanish without advantage: nothing is skipped then, or when switched off."""
    from types import SimpleNamespace

    from rlvr.algorithms import POLICY_LOSSES
    from rlvr.trainer.update import idle_rows

    batch = random_batch()
    batch.advantages[[1, 4]] = 0.0

    def idle(algorithm: dict, train: dict | None = None):
        recipe = Recipe.model_validate({"algorithm": algorithm, "train": train or {}})
        algo = recipe.algorithm
        advantage = (ADVANTAGES.get(algo.advantage), ADVANTAGES.bind(algo.advantage, algo.advantage_kwargs))
        loss = (POLICY_LOSSES.get(algo.policy_loss), {})
        ctx = SimpleNamespace(recipe=recipe, policy_loss=loss, components=build_components(recipe, advantage))
        return idle_rows(ctx, batch)

    assert idle({}).tolist() == [False, True, False, False, True, False, False, False]
    assert idle({"kl_coef": 0.1, "kl_placement": "reward"}) is not None  # the KL is in the advantages
    assert idle({"kl_coef": 0.1}) is None
    assert idle({"entropy_coef": 0.01}) is None
    # an adaptive entropy controller reads actor/entropy of every row, even while its coefficient is 0
    assert idle({"entropy_controller": "adaptive"}) is None
    assert idle({"advantage": "gae"}) is None  # a critic's value loss reads every row
    assert idle({"policy_loss": "clip_cov"}) is None
    assert idle({}, {"skip_zero_advantage": False}) is None


def test_group_permutation_shuffles_whole_groups():
    from rlvr.trainer.update import group_permutation

    torch.manual_seed(0)
    groups = torch.tensor([5, 5, 5, 2, 2, 2, 9, 9, 9, 7, 7, 7])
    orders = set()
    for _ in range(20):
        perm = group_permutation(groups)
        assert sorted(perm.tolist()) == list(range(12))
        shuffled = groups[perm].view(4, 3)
        assert (shuffled == shuffled[:, :1]).all()  # each group's rows stay together...
        assert all((perm.view(4, 3).diff(dim=1) == 1).all(dim=1))  # ...in their original order
        orders.add(tuple(shuffled[:, 0].tolist()))
    assert len(orders) > 5  # and the group order changes

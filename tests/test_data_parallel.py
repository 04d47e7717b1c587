"""Data-parallel correctness: 1 and 2 processes give the same advantages, token weights and gradient on the
same global batch (real DeepSpeed ZeRO-2 and ZeRO-3 processes over gloo, and plain
DistributedDataParallel)."""

import pytest
import torch
from launch import ROOT, TINY_RECIPE, accelerate, run

from rlvr.algorithms import ADVANTAGES, AdvantageInputs

CASES = {
    # batch mean / std of the rewards, and the entropy quantile of forking tokens
    "batch_norm+forking": [
        "algorithm.advantage=batch_norm",
        "algorithm.token_weights=[{name: forking_tokens}]",
    ],
    # DGPO's question weights: a softmax over the batch's questions
    "dgpo": ["algorithm.advantage=dgpo"],
    # group means, the batch's std (Lite PPO); truncated importance weights against the engine's log-probs,
    # computed inside the update (one optimizer step per batch), their metrics on the whole batch after it
    "lite_ppo+tis": ["algorithm.advantage=lite_ppo", "algorithm.token_weights=[{name: tis}]"],
    # REINFORCE++: group means, then the mean and std over all tokens of the batch; the engine-mismatch mask
    "reinforce_pp+mismatch": [
        "algorithm.advantage=reinforce_pp",
        "algorithm.token_weights=[{name: mismatch_mask}]",
    ],
    # a token budget: each process deals its rows into as many micro-batches as the busiest one needs
    "batch_norm+budget": ["algorithm.advantage=batch_norm", "train.max_tokens_per_micro_batch=150"],
    # rows without a trained token (truncated, masked) are skipped: the processes skip different numbers
    # of rows and still run the same number of micro-batches; TIS beside the mask is computed inside the
    # update, the mask before it, and the loss weighs tokens by their product
    "batch_norm+skipped": [
        "algorithm.advantage=batch_norm",
        "algorithm.overlong.mask_truncated=true",
        "algorithm.token_weights=[{name: tis}]",
        "train.micro_batch_size=2",
    ],
}


LAUNCHES = [(case, "zero2") for case in sorted(CASES)] + [
    # torch DDP without DeepSpeed: each micro-batch calls the wrapped model twice (the shared prompts,
    # then the responses) before its one backward, and accumulation runs under DDP's no_sync
    ("batch_norm+skipped", "ddp"),
    # ZeRO-3: parameters gathered for each forward, gradients reduced into partitions
    ("batch_norm+forking", "zero3"),
]


def dumps(tmp_path, overrides: list[str], processes: int, config: str = "zero2") -> list[dict]:
    out = tmp_path / f"p{processes}"
    script = str(ROOT / "tests/scripts/dp_batch.py")
    common = [
        "rollout.engine=hf",
        f"run.output_dir={tmp_path / f'run{processes}'}",
        "train.micro_batch_size=8",
        *overrides,
    ]
    run(
        accelerate(
            f"recipes/accelerate/{config}.yaml",
            script,
            str(out),
            str(TINY_RECIPE),
            *common,
            num_processes=processes,
        )
    )
    return [torch.load(out / f"rank{i}.pt") for i in range(processes)]


@pytest.mark.distributed
@pytest.mark.parametrize(("case", "config"), LAUNCHES)
def test_one_and_two_processes_agree_on_the_same_global_batch(tmp_path, case, config):
    (one,) = dumps(tmp_path, CASES[case], 1, config)
    two = dumps(tmp_path, CASES[case], 2, config)
    start = 0
    for rank in two:
        rows, width = rank["advantages"].shape
        for name in ("advantages", "token_weights"):
            if one[name] is None:
                assert rank[name] is None
                continue
            torch.testing.assert_close(
                rank[name], one[name][start : start + rows, :width], rtol=1e-5, atol=1e-6
            )
            assert not one[name][start : start + rows, width:].any()  # columns past this rank's responses
        start += rows
    assert start == len(one["advantages"])
    if case == "batch_norm+skipped":
        # the ranks skip different numbers of rows, and would deal different numbers of 2-row
        # micro-batches from the rest: one of them must split or fill to keep in step
        busy = [int(((r["advantages"] != 0) & (r["token_weights"] != 0)).any(-1).sum()) for r in two]
        assert len({-(-b // 2) for b in busy}) == 2, busy
    assert one["advantages"].abs().sum() > 0
    if one["token_weights"] is not None:  # a real selection: some tokens in, some out
        kept = one["token_weights"][one["response_mask"] != 0]
        assert 0 < kept.mean() < 1
    # token-weight metrics are the whole batch's, before the update (forking, mismatch) or after it (TIS)
    keys = [key for key in one["metrics"] if key.startswith("tokens/")]
    assert bool(keys) == (one["token_weights"] is not None or case == "lite_ppo+tis")
    for key in keys:
        for rank in two:
            assert rank["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-6), key
    # the gradient of the whole batch's loss, identical on both ranks and equal to one process's
    assert set(one["grads"]) == set(two[0]["grads"]) and one["grads"]
    for name, grad in one["grads"].items():
        assert grad.abs().sum() > 0 or "embed" in name
        for rank in two:
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-7)
    # and the test can tell: the estimator on process 0's rows alone gives other advantages
    estimator = ADVANTAGES.get(CASES[case][0].split("=")[1])
    rank0 = two[0]
    local = estimator(
        AdvantageInputs(
            sequence_rewards=rank0["sequence_rewards"],
            group_index=torch.arange(len(rank0["sequence_rewards"])) // 8,
            response_mask=rank0["response_mask"],
        )
    )
    assert not torch.allclose(local, rank0["advantages"], atol=1e-4)

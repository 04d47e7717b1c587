"""rlvr.data.sampler: epoch-wise order, exact resumption and data-parallel sharding."""

from __future__ import annotations

import pytest

from rlvr.data import SAMPLERS, PromptSampler, make_sampler, shard

DATA = [{"prompt_id": i, "prompt": f"p{i}", "data_source": "d"} for i in range(20)]


def indices(batch: list[dict]) -> list[int]:
    return [row["prompt_id"] for row in batch]


def test_registry_and_protocol():
    assert {"random", "sequential"} <= set(SAMPLERS.names())
    for name in ("random", "sequential"):
        assert isinstance(make_sampler(name, DATA, seed=0), PromptSampler)


def test_random_epochs_are_permutations():
    sampler = make_sampler("random", DATA, seed=3)
    first, second = indices(sampler.next_batch(20)), indices(sampler.next_batch(20))
    assert sorted(first) == sorted(second) == list(range(20))
    assert first != second and first != list(range(20))
    assert indices(make_sampler("random", DATA, seed=3).next_batch(20)) == first
    assert indices(make_sampler("random", DATA, seed=4).next_batch(20)) != first


def test_batches_cross_epoch_boundaries():
    sampler = make_sampler("random", DATA, seed=0)
    drawn = [i for _ in range(6) for i in indices(sampler.next_batch(7))]  # 42 = 2 epochs + 2
    assert sorted(drawn[:20]) == sorted(drawn[20:40]) == list(range(20))
    assert sampler.state_dict()["epoch"] == 2 and sampler.state_dict()["position"] == 2


@pytest.mark.parametrize("name", ["random", "sequential"])
def test_resume_reproduces_future_batches(name):
    reference = make_sampler(name, DATA, seed=11)
    batches = []
    for step in range(5):
        if step == 2:
            state = reference.state_dict()
        batches.append(indices(reference.next_batch(7)))
    resumed = make_sampler(name, DATA, seed=0)  # the seed comes from the state
    resumed.update([{"prompt_id": 0, "pass_rate": 1.0, "samples": 4, "mean_length": 3.0, "step": 0}])
    resumed.load_state_dict(state)
    assert [indices(resumed.next_batch(7)) for _ in range(3)] == batches[2:]


def test_sequential_order():
    sampler = make_sampler("sequential", DATA)
    assert indices(sampler.next_batch(15)) == list(range(15))
    assert indices(sampler.next_batch(10)) == [15, 16, 17, 18, 19, 0, 1, 2, 3, 4]


def test_state_for_another_dataset_is_rejected():
    state = make_sampler("random", DATA).state_dict()
    with pytest.raises(ValueError, match="saved for 20 prompts"):
        make_sampler("random", DATA[:10]).load_state_dict(state)


def test_batches_are_copies():
    batch = make_sampler("sequential", DATA).next_batch(1)
    batch[0]["prompt"] = "changed"
    assert DATA[0]["prompt"] == "p0"


def test_shard():
    batch = list(range(8))
    assert [shard(batch, rank, 4) for rank in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert shard(batch, 0, 1) == batch
    with pytest.raises(ValueError, match="does not split evenly"):
        shard(batch, 0, 3)
    with pytest.raises(ValueError, match="invalid rank"):
        shard(batch, 4, 4)

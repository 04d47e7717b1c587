"""Real 2-process DeepSpeed ZeRO-2 / ZeRO-3 updates on CPU (gloo): every rank ends with the same weights."""

import json

import pytest
from launch import ROOT, TINY_RECIPE, accelerate, metrics, run

from rlvr.trainer.weights import layer_key


def launch(config: str, out, *overrides: str) -> None:
    run(accelerate(config, str(ROOT / "tests/scripts/dist_step.py"), str(out), str(TINY_RECIPE), *overrides))


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_zero_update_keeps_ranks_identical(tmp_path, stage):
    out = tmp_path / "dump"
    launch(
        f"recipes/accelerate/zero{stage}.yaml",
        out,
        "rollout.engine=hf",
        "run.steps=2",
        f"run.output_dir={tmp_path / 'run'}",
        "train.micro_batch_size=8",
        "train.num_mini_batches=2",
        "algorithm.kl_coef=0.1",  # a frozen reference model, partitioned like the policy under ZeRO-3
    )
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    # every parameter identical across ranks after the update...
    assert ranks[0]["after"] == ranks[1]["after"]
    # ... and the update really changed the weights
    changed = [name for name in ranks[0]["after"] if ranks[0]["after"][name] != ranks[0]["before"][name]]
    assert len(changed) == len(ranks[0]["after"])
    # both processes log the same (globally reduced) reward statistics
    for key in ("reward/mean", "reward/std", "response/length_mean"):
        assert ranks[0]["steps"][-1][key] == ranks[1]["steps"][-1][key]
    assert ranks[0]["steps"][-1]["actor/grad_norm"] > 0
    # the engine's weight stream gives the full weights, and under ZeRO-3 gathers one layer at a time
    for rank in ranks:
        assert rank["streamed"] == rank["after"]
        held = rank["held"]
        if stage == 3:
            assert all(
                layer_key(n) == layer_key(h["name"]) for h in held for n in h["gathered"] if layer_key(n)
            )
            assert all(not layer_key(n) for h in held if not layer_key(h["name"]) for n in h["gathered"])
            # each decoder-layer matrix is gathered while it is yielded, and released after its layer
            matrices = [h for h in held if ".layers." in h["name"] and h["name"].endswith("proj.weight")]
            assert matrices and all(h["name"] in h["gathered"] for h in matrices)
            assert 0 < max(len(h["gathered"]) for h in held) < len(rank["after"]) / 2
        else:
            assert all(h["gathered"] == [] for h in held)
    # KL to the reference (k3 >= 0) is positive once the policy has moved away from it
    assert 0 <= ranks[0]["steps"][0]["actor/kl"] < ranks[0]["steps"][1]["actor/kl"]


@pytest.mark.distributed
def test_two_process_zero3_ppo_with_critic_dynamic_sampling_and_reference_reset(tmp_path):
    """The plug-ins that add models and collectives: a critic inside the ZeRO-3 engine, the KL penalty in
    the reward, ProRL's reset of a partitioned reference, dynamic sampling's global stopping rule, and a
    curriculum sampler fed by both processes' results."""
    out = tmp_path / "dump"
    launch(
        "recipes/accelerate/zero3.yaml",
        out,
        "rollout.engine=hf",
        "run.steps=2",
        f"run.output_dir={tmp_path / 'run'}",
        "train.micro_batch_size=8",
        "algorithm.advantage=gae",
        "algorithm.critic.lr=1e-3",
        "algorithm.kl_coef=0.1",
        "algorithm.kl_estimator=k1",
        "algorithm.kl_placement=reward",
        "algorithm.reference_reset_every=1",
        "algorithm.dynamic_sampling.enabled=true",
        "algorithm.dynamic_sampling.oversample=2.0",
        "algorithm.token_weights=[{name: tis}]",
        "sampler.name=learnability",
    )
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    # a curriculum on two processes: both draw the same global batches (each round of dynamic sampling)
    # and hold the same statistics, which cover the prompts both generated for
    assert ranks[0]["drawn"] == ranks[1]["drawn"] and len(ranks[0]["drawn"]) >= 2
    assert ranks[0]["prompt_stats"] == ranks[1]["prompt_stats"]
    first_batch = set(ranks[0]["drawn"][0])
    assert first_batch <= set(ranks[0]["prompt_stats"]["index"])
    assert ranks[0]["after"] == ranks[1]["after"]
    assert ranks[0]["after"] != ranks[0]["before"]
    first, second = ranks[0]["steps"]
    assert first["critic/value_mean"] == 0.0 and second["critic/value_mean"] != 0.0  # the critic trains
    assert first["actor/reference_reset"] == 1.0
    # the reference was reset to the policy after step 1, so step 2 starts with no KL in its reward
    assert second["actor/kl_reward_penalty"] == pytest.approx(0.0, abs=1e-6)
    for key in ("dynamic_sampling/rounds", "dynamic_sampling/dropped_groups", "reward/mean"):
        assert ranks[0]["steps"][-1][key] == ranks[1]["steps"][-1][key]


@pytest.mark.distributed
def test_zero3_training_run_checkpoints_resumes_and_saves_hf_model(tmp_path):
    """The real entry point under ZeRO-3: sharded checkpoints, resume, and a gathered HF final model."""
    run_dir = tmp_path / "run"

    def train(*overrides: str) -> list[dict]:
        args = ["-m", "rlvr.train", str(TINY_RECIPE), f"run.output_dir={run_dir}", "rollout.engine=hf"]
        run(
            accelerate(
                "recipes/accelerate/zero3.yaml", *args, "run.save_every=1", "run.keep_last=1", *overrides
            )
        )
        return metrics(run_dir)

    train("run.steps=1")
    rows = train("run.steps=2", "run.resume=true")
    assert [r["step"] for r in rows] == [1, 2]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002"]

    from transformers import AutoModelForCausalLM

    from rlvr.models import resolve_model

    final = dict(AutoModelForCausalLM.from_pretrained(run_dir / "final").named_parameters())
    initial = dict(AutoModelForCausalLM.from_pretrained(resolve_model("tiny-char")).named_parameters())
    assert final.keys() == initial.keys()
    for name, param in final.items():
        assert param.shape == initial[name].shape  # gathered full tensors, not ZeRO-3 shards
    assert any(not (final[n] == initial[n]).all() for n in final)  # and trained


@pytest.mark.distributed
@pytest.mark.vllm
def test_colocated_engine_sharded_over_the_training_processes(tmp_path):
    """rollout.tensor_parallel_size=2 with two training processes: one vLLM engine with a shard in each
    process (vLLM's external launcher: the layout of a colocated engine over GPUs). Two steps train, with
    dynamic sampling's extra rounds, in which the first process, its quota full, brings no prompts; the main
    process evaluates while its group-mate follows; each process then gets greedy completions of its own
    prompts equal to transformers' on the trained weights, and again after a sync of perturbed weights."""
    out = tmp_path / "dump"
    script = str(ROOT / "tests/scripts/tp_colocated.py")
    run(
        accelerate(
            "recipes/accelerate/ddp.yaml",
            script,
            str(out),
            str(TINY_RECIPE),
            "rollout.tensor_parallel_size=2",
            "run.steps=2",
            f"run.output_dir={tmp_path / 'run'}",
            "algorithm.dynamic_sampling.enabled=true",
            "rewards.verifiers=[{name: tests/fixtures/custom_verifier.py:varied_on_the_first_process}]",
            "eval.every=1",
            "eval.benchmarks=[arithmetic]",
            "eval.limit=4",
            "eval.max_tokens=4",
        )
    )
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]

    def tokens(completions):
        return [(index, ids) for index, ids, _ in completions]

    for rank in ranks:
        assert rank["engine_class"] == "GroupEngine"
        for got, want in (("engine", "expected"), ("after_sync", "expected_after_sync")):
            assert tokens(rank[got]) == tokens(rank[want])
            for a, b in zip(rank[got], rank[want], strict=True):
                assert a[2] == pytest.approx(b[2], abs=1e-3)
        assert tokens(rank["after_sync"]) != tokens(rank["engine"])  # the sync reached both shards
    assert [len(r["engine"]) for r in ranks] == [3, 2]  # each process got its own share back
    # process 0 filled its quota in round 1 and process 1 never does: rounds 2-4 ran with process 0 idle
    for step in ranks[0]["steps"]:
        assert step["dynamic_sampling/rounds"] == 4
        assert step["dynamic_sampling/idle_process_rounds"] == 3
    assert "eval/arithmetic/pass@1" in ranks[0]["evaluation"] and ranks[1]["evaluation"] == {}
    for a, b in zip(ranks[0]["steps"], ranks[1]["steps"], strict=True):  # global metrics, alike
        assert {k: v for k, v in a.items() if k.startswith("reward/")} == {
            k: v for k, v in b.items() if k.startswith("reward/")
        }
        assert a["dynamic_sampling/rounds"] == b["dynamic_sampling/rounds"] >= 1

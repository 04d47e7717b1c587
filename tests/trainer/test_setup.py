"""Setup: CPU bf16 detection (a bf16 recipe on a CPU that emulates bf16 gets a warning naming the keys to
change), and the engine options a recipe gives on each kind of device."""

import pytest

import rlvr.trainer.setup as setup
from rlvr.config import Recipe

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx2 avx512f avx512_bf16 avx512_vnni\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"


def test_cpu_has_native_bf16_reads_the_flags():
    assert setup.cpu_has_native_bf16(ZEN4) is True
    assert setup.cpu_has_native_bf16("flags : amx_bf16 amx_tile\n") is True
    assert setup.cpu_has_native_bf16(AVX2) is False
    assert setup.cpu_has_native_bf16("processor : 0\n") is None  # no flags line: unknown


def test_bf16_on_an_emulating_cpu_is_warned_about(monkeypatch):
    recipe = Recipe.model_validate({"data": {"path": "x.jsonl"}, "rollout": {"dtype": "bfloat16"}})
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: False)
    warnings = setup.warn_if_bf16_is_emulated(recipe, "bf16", on_cpu=True)
    assert [w.rsplit("pass ", 1)[1] for w in warnings] == [
        "train.mixed_precision=no (or auto: bf16 only where native) for speed",
        "rollout.dtype=float32 (or auto: bf16 only where native) for speed",
    ]
    assert setup.warn_if_bf16_is_emulated(recipe, "bf16", on_cpu=False) == []  # GPUs: not this check
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: True)
    assert setup.warn_if_bf16_is_emulated(recipe, "bf16", on_cpu=True) == []


@pytest.mark.parametrize(
    ("native", "update", "engine"), [(True, "bf16", "bfloat16"), (False, "no", "float32")]
)
def test_auto_precision_is_bf16_only_where_it_is_native(native, update, engine):
    recipe = Recipe.model_validate(
        {"data": {"path": "x.jsonl"}, "rollout": {"dtype": "auto"}, "train": {"mixed_precision": "auto"}}
    )
    line = setup.resolve_auto_precision(recipe, native_bf16=native)
    assert (recipe.train.mixed_precision, recipe.rollout.dtype) == (update, engine)
    assert line.startswith(f"precision auto: train.mixed_precision={update}, rollout.dtype={engine} (")
    # keys given explicitly stay as they are, and nothing is said
    recipe = Recipe.model_validate({"data": {"path": "x.jsonl"}, "train": {"mixed_precision": "bf16"}})
    assert setup.resolve_auto_precision(recipe, native_bf16=native) is None
    assert (recipe.train.mixed_precision, recipe.rollout.dtype) == ("bf16", None)


def test_bf16_is_native_on_a_cpu_only_with_the_flags(monkeypatch):
    monkeypatch.setattr(setup.torch.cuda, "is_available", lambda: False)
    for flags, native in ((True, True), (False, False), (None, False)):  # unknown flags: float32
        monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda flags=flags: flags)
        assert setup.bf16_is_native() is native
    recipe = Recipe.model_validate({"data": {"path": "x.jsonl"}, "rollout": {"dtype": "auto"}})
    with pytest.raises(ValueError, match="resolve_auto_precision"):  # vLLM's own "auto" means another thing
        setup.engine_options(recipe)
    setup.resolve_auto_precision(recipe, setup.bf16_is_native())
    assert setup.engine_options(recipe).dtype == "float32"


def test_engine_options_share_the_gpu_when_colocated_and_shard_over_training_processes():
    from pathlib import Path

    from rlvr.config import RecipeError, load_recipe
    from rlvr.trainer.setup import engine_options

    recipe_file = Path(__file__).resolve().parents[2] / "recipes/tiny/grpo_tiny_say_digit.yaml"
    colocated = load_recipe(recipe_file, [])
    sharded = load_recipe(recipe_file, ["rollout.tensor_parallel_size=2"])
    served = load_recipe(recipe_file, ["rollout.mode=server", "rollout.tensor_parallel_size=2"])
    assert engine_options(colocated, "cuda:1", 1).shares_gpu is True
    assert engine_options(colocated, "cpu").shares_gpu is False
    one = engine_options(sharded, "cpu")  # one process on CPU: worker processes of the engine's own
    assert one.tensor_parallel_size == 2 and not one.external_launcher
    # several processes (and any GPU run): the shards live in consecutive training processes, and each
    # pair of them seeds its shared engine alike
    shards = [engine_options(sharded, "cpu", rank, 4) for rank in range(4)]
    assert all(o.external_launcher and o.tensor_parallel_size == 2 for o in shards)
    assert [o.seed for o in shards] == [sharded.run.seed + g for g in (0, 0, 1, 1)]
    assert (
        engine_options(sharded, "cuda:1", 1, 2).shares_gpu
        and engine_options(sharded, "cuda:1", 1, 2).seed == 0 + sharded.run.seed
    )
    assert [o.seed for o in (engine_options(colocated, "cpu", r, 2) for r in range(2))] == [
        colocated.run.seed,
        colocated.run.seed + 1,
    ]
    with pytest.raises(
        RecipeError, match=r"rollout.tensor_parallel_size: .* processes \(3\) must be a multiple of 2"
    ):
        engine_options(sharded, "cpu", 0, 3)
    with pytest.raises(RecipeError, match=r"processes \(1\) must be a multiple of 2"):
        engine_options(sharded, "cuda:0")  # one GPU process cannot hold two shards
    assert not engine_options(served, "cuda:0", 0, 2).external_launcher  # servers shard on their own
    assert engine_options(served, "cuda:0").shares_gpu is False
    assert engine_options(served, "cuda:0").tensor_parallel_size == 2
    # GPU memory: a colocated engine leaves most to the trainer, a server's GPUs are its own
    assert engine_options(colocated, "cuda:0").gpu_memory_utilization == 0.3
    assert engine_options(served, "cuda:0").gpu_memory_utilization == 0.9
    chosen = load_recipe(recipe_file, ["rollout.mode=server", "rollout.gpu_memory_utilization=0.5"])
    assert engine_options(chosen, "cuda:0").gpu_memory_utilization == 0.5


def test_asynchronous_training_without_a_lag_correction_is_warned_about():
    base = {"data": {"path": "x.jsonl"}, "rollout": {"mode": "server"}, "train": {"async_steps": 2}}
    (warning,) = setup.warn_if_async_is_uncorrected(Recipe.model_validate(base))
    assert warning.startswith("train.async_steps=2: samples are up to 2 update(s) old")
    for correction in setup.LAG_CORRECTIONS:
        corrected = {**base, "algorithm": {"token_weights": [{"name": correction}]}}
        assert setup.warn_if_async_is_uncorrected(Recipe.model_validate(corrected)) == []
    synchronous = {**base, "train": {"async_steps": 0}}
    assert setup.warn_if_async_is_uncorrected(Recipe.model_validate(synchronous)) == []

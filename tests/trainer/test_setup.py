"""CPU bf16 detection: a bf16 recipe on a CPU that emulates bf16 gets a warning naming the keys to change."""

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
        "train.mixed_precision=no for speed",
        "rollout.dtype=float32 for speed",
    ]
    assert setup.warn_if_bf16_is_emulated(recipe, "bf16", on_cpu=False) == []  # GPUs: not this check
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: True)
    assert setup.warn_if_bf16_is_emulated(recipe, "bf16", on_cpu=True) == []

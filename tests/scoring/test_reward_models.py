"""Reward models on tiny real sequence-classification checkpoints, and ensemble objectives with stubs."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from rlvr.scoring import (
    DEFAULT_UWO_LAMBDA,
    ENSEMBLE_COMBINES,
    RewardModel,
    RewardModelEnsemble,
    ScoreNormalizer,
    build_reward_model,
)

PROMPTS = [
    "What is 2+2?",
    "Name a colour.",
    "x",
    "Spell cat backwards, please.",
    "Add 10 and 32.",
    "Hi",
    "Q?",
]
COMPLETIONS = ["4", "Blue, I think.", "a much longer answer than the others here", "tac", "42", "Hello!", ""]


def _write_rm(
    tiny_dir: Path, out: Path, *, seed: int, num_labels: int = 1, pad_in_config: bool = True
) -> Path:
    """A Qwen2ForSequenceClassification with a seeded random body and a large score head, plus tokenizer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_dir, num_labels=num_labels)
    config.architectures = ["Qwen2ForSequenceClassification"]
    if not pad_in_config:
        config.pad_token_id = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        torch.nn.init.normal_(model.score.weight, std=1.0)  # O(1) scores, so 1e-5 checks mean something
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def rm_dirs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("rms")
    return {
        "a": _write_rm(tiny_model_dir, root / "a", seed=1),
        "b": _write_rm(tiny_model_dir, root / "b", seed=2),
        "nopad": _write_rm(tiny_model_dir, root / "nopad", seed=3, pad_in_config=False),
    }


@pytest.fixture(scope="module")
def rm_a(rm_dirs):
    return RewardModel(str(rm_dirs["a"]), batch_size=3)


def _direct_score(rm: RewardModel, text: str) -> float:
    """One unpadded forward pass of ``text``: what batching, padding and sorting must not change."""
    ids = rm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return rm.model(input_ids=ids).logits[0, 0].item()


def _direct_chat_scores(rm: RewardModel) -> torch.Tensor:
    pairs = zip(PROMPTS, COMPLETIONS, strict=True)
    return torch.tensor([_direct_score(rm, _chat(rm.tokenizer, p, c)) for p, c in pairs])


def _chat(tokenizer, prompt: str, completion: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], tokenize=False
    )


# ---- one reward model ------------------------------------------------------------------------------------


def test_scores_equal_per_example_forward(rm_a):
    scores = rm_a.score(PROMPTS, COMPLETIONS)
    assert scores.shape == (len(PROMPTS),) and scores.dtype == torch.float32
    expected = _direct_chat_scores(rm_a)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert expected.std() > 0.1  # the pairs really score differently

    # Batch size and input order do not change any pair's score.
    one_by_one = RewardModel(str(rm_a.path), batch_size=1).score(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(one_by_one, expected, atol=1e-5, rtol=0)
    perm = [3, 0, 6, 2, 5, 1, 4]
    shuffled = rm_a.score([PROMPTS[i] for i in perm], [COMPLETIONS[i] for i in perm])
    torch.testing.assert_close(shuffled, expected[perm], atol=1e-5, rtol=0)


def test_plain_concatenation_without_chat_template(rm_dirs):
    rm = RewardModel(str(rm_dirs["a"]), batch_size=4, chat_template=False)
    assert not rm.use_chat_template
    assert rm.build_text("ab", "cd") == ("abcd", (0, 2))
    expected = torch.tensor([_direct_score(rm, p + c) for p, c in zip(PROMPTS, COMPLETIONS, strict=True)])
    torch.testing.assert_close(rm.score(PROMPTS, COMPLETIONS), expected, atol=1e-5, rtol=0)


def test_missing_pad_token_id_in_config_is_set(rm_dirs):
    """HF pools the last non-pad token; with config.pad_token_id unset it would refuse batches."""
    rm = RewardModel(str(rm_dirs["nopad"]), batch_size=4)
    assert rm.model.config.pad_token_id == rm.tokenizer.pad_token_id == 0
    expected = _direct_chat_scores(rm)
    torch.testing.assert_close(rm.score(PROMPTS, COMPLETIONS), expected, atol=1e-5, rtol=0)


def test_pad_token_falls_back_to_eos(rm_dirs, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    folder = shutil.copytree(rm_dirs["a"], tmp_path / "no-pad-token")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = None
    tok.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token_id is None

    rm = RewardModel(str(folder), batch_size=4)
    eos = rm.tokenizer.eos_token_id
    assert rm.pad_token_id == eos and rm.model.config.pad_token_id == eos
    expected = _direct_chat_scores(rm)
    torch.testing.assert_close(rm.score(PROMPTS, COMPLETIONS), expected, atol=1e-5, rtol=0)


def test_left_truncation_keeps_the_completion(rm_dirs, caplog):
    rm = RewardModel(str(rm_dirs["a"]), batch_size=2, max_length=60)
    prompt = "".join(str(i % 10) for i in range(100))  # 100 one-character tokens
    completion = "the answer is 42"
    template_len = len(rm.encode([""], [completion])[0])  # chat template + completion, empty prompt
    keep = 60 - template_len
    assert 0 < keep < len(prompt)

    ids = rm.encode([prompt, "short"], [completion, "ok"])
    assert len(ids[0]) == 60
    expected_text = _chat(rm.tokenizer, prompt[-keep:], completion)  # prompt cut from the left only
    assert rm.tokenizer.decode(ids[0]) == expected_text
    assert rm.tokenizer.decode(ids[1]) == _chat(rm.tokenizer, "short", "ok")  # untouched

    scores = rm.score([prompt, "short"], [completion, "ok"])
    torch.testing.assert_close(scores[0].item(), _direct_score(rm, expected_text), atol=1e-5, rtol=0)

    # Without a chat template the prompt is cut from the left too.
    plain = RewardModel(str(rm_dirs["a"]), max_length=20, chat_template=False)
    assert plain.tokenizer.decode(plain.encode([prompt], [completion])[0]) == prompt[-4:] + completion

    # A completion longer than max_length alone keeps its last max_length tokens (warned once).
    with caplog.at_level(logging.WARNING, logger="rlvr.scoring.reward_models"):
        long_ids = plain.encode(["p"], ["z" * 5 + "y" * 19])[0]
    assert plain.tokenizer.decode(long_ids) == "z" + "y" * 19
    assert "longer than max_length" in caplog.text


def test_num_labels_other_than_one_is_a_clear_error(tiny_model_dir, tmp_path):
    folder = _write_rm(tiny_model_dir, tmp_path / "two-labels", seed=0, num_labels=2)
    with pytest.raises(ValueError, match=r"two-labels.*num_labels=2"):
        RewardModel(str(folder))
    with pytest.raises(ValueError, match=r"num_labels=2 \(Qwen2ForCausalLM\)"):  # a causal LM is no RM
        RewardModel(str(tiny_model_dir))


def test_mismatched_inputs_and_empty_batch(rm_a):
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        rm_a.score(["a", "b"], ["c"])
    assert rm_a.score([], []).shape == (0,)


# ---- normalisation -----------------------------------------------------------------------------------------


def test_batch_normalisation_hand_worked():
    out = ScoreNormalizer("batch")(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(1.25)  # population std of 1..4 around 2.5
    torch.testing.assert_close(out, torch.tensor([-1.5, -0.5, 0.5, 1.5]) / std)
    torch.testing.assert_close(
        ScoreNormalizer("batch")(torch.tensor([3.0, 3.0])), torch.zeros(2)
    )  # centred only
    torch.testing.assert_close(ScoreNormalizer("none")(torch.tensor([3.0, 5.0])), torch.tensor([3.0, 5.0]))
    with pytest.raises(ValueError, match="unknown normalize mode 'z'"):
        ScoreNormalizer("z")


def test_running_normalisation_hand_worked():
    norm = ScoreNormalizer("running")
    # Call 1: {1, 3}: mean 2, population std 1.
    torch.testing.assert_close(norm(torch.tensor([1.0, 3.0])), torch.tensor([-1.0, 1.0]))
    # Call 2: {1, 3, 5} seen: mean 3, population variance 8/3.
    torch.testing.assert_close(norm(torch.tensor([5.0])), torch.tensor([2.0 / math.sqrt(8 / 3)]))
    # Call 3: {1, 3, 5, 7}: mean 4, variance 5.
    torch.testing.assert_close(norm(torch.tensor([7.0])), torch.tensor([3.0 / math.sqrt(5)]))
    assert norm.count == 4 and norm.mean == pytest.approx(4.0) and norm.std == pytest.approx(math.sqrt(5))

    # The merge does not depend on how the scores were split into calls.
    data = torch.randn(50, generator=torch.Generator().manual_seed(0)) * 3 + 1
    whole, parts = ScoreNormalizer("running"), ScoreNormalizer("running")
    whole.update(data)
    for chunk in data.split([7, 1, 20, 22]):
        parts.update(chunk)
    assert parts.mean == pytest.approx(whole.mean) and parts.std == pytest.approx(whole.std)
    assert whole.std == pytest.approx(data.double().std(unbiased=False).item())


def test_running_state_round_trip(rm_dirs):
    norm = ScoreNormalizer("running")
    norm(torch.tensor([1.0, 2.0, 9.0]))
    restored = ScoreNormalizer("running")
    restored.load_state_dict(norm.state_dict())
    x = torch.tensor([4.0, -1.0])
    torch.testing.assert_close(restored(x), norm(x))
    assert restored.state_dict() == norm.state_dict()

    rm = RewardModel(str(rm_dirs["a"]), normalize="running", batch_size=4)
    raw = rm.raw_scores(PROMPTS, COMPLETIONS)
    first = rm.score(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(first, (raw - raw.mean()) / raw.std(unbiased=False), atol=1e-5, rtol=0)
    resumed = RewardModel(str(rm_dirs["a"]), normalize="running", batch_size=4)
    resumed.load_state_dict(rm.state_dict())
    torch.testing.assert_close(
        resumed.score(PROMPTS[:3], COMPLETIONS[:3]), rm.score(PROMPTS[:3], COMPLETIONS[:3])
    )


def test_reward_model_batch_normalisation(rm_dirs):
    rm = RewardModel(str(rm_dirs["a"]), normalize="batch", batch_size=4)
    raw = rm.raw_scores(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(
        rm.score(PROMPTS, COMPLETIONS), (raw - raw.mean()) / raw.std(unbiased=False), atol=1e-5, rtol=0
    )


# ---- ensembles ---------------------------------------------------------------------------------------------


class FixedScorer:
    """A stub reward model returning fixed scores."""

    def __init__(self, values):
        self.values = torch.tensor(values, dtype=torch.float32)
        self.calls = 0

    def score(self, prompts, completions):
        self.calls += 1
        return self.values[: len(prompts)]


P3, C3 = ["p1", "p2", "p3"], ["c1", "c2", "c3"]


def _stub_ensemble(combine, **kwargs):
    members = [FixedScorer([1.0, 2.0, 3.0]), FixedScorer([3.0, 2.0, 0.0])]
    return RewardModelEnsemble(members, combine=combine, normalize=kwargs.pop("normalize", "none"), **kwargs)


def test_ensemble_mean_min_uwo_hand_worked():
    # Members: A = [1, 2, 3], B = [3, 2, 0]. Per pair: mean [2, 2, 1.5], population variance [1, 0, 2.25].
    torch.testing.assert_close(_stub_ensemble("mean").score(P3, C3), torch.tensor([2.0, 2.0, 1.5]))
    torch.testing.assert_close(_stub_ensemble("min").score(P3, C3), torch.tensor([1.0, 2.0, 0.0]))
    torch.testing.assert_close(_stub_ensemble("wco").score(P3, C3), torch.tensor([1.0, 2.0, 0.0]))
    uwo = _stub_ensemble("uwo", lam=0.5)
    torch.testing.assert_close(uwo.score(P3, C3), torch.tensor([2.0 - 0.5, 2.0, 1.5 - 0.5 * 2.25]))
    default = _stub_ensemble("uwo")
    assert default.lam == DEFAULT_UWO_LAMBDA == 0.1
    torch.testing.assert_close(default.score(P3, C3), torch.tensor([1.9, 2.0, 1.5 - 0.225]))

    m = uwo.last_metrics
    assert m["rm0/mean"] == pytest.approx(2.0) and m["rm1/mean"] == pytest.approx(5 / 3)
    assert m["disagreement_std"] == pytest.approx((1.0 + 0.0 + 1.5) / 3)  # per-pair std [1, 0, 1.5]
    assert m["mean"] == pytest.approx((1.5 + 2.0 + 0.375) / 3)


def test_ensemble_combines_are_registered_pure_functions():
    scores = torch.tensor([[1.0, 5.0], [3.0, 1.0], [2.0, 3.0]])  # [M=3, N=2]
    torch.testing.assert_close(ENSEMBLE_COMBINES.get("mean")(scores, 0.0), torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(ENSEMBLE_COMBINES.get("min")(scores, 0.0), torch.tensor([1.0, 1.0]))
    # Variances (1/M): [2/3, 8/3].
    torch.testing.assert_close(
        ENSEMBLE_COMBINES.get("uwo")(scores, 1.0), torch.tensor([2 - 2 / 3, 3 - 8 / 3])
    )
    assert ENSEMBLE_COMBINES.names() == ["mean", "min", "uwo", "wco"]


def test_ensemble_per_member_normalisation():
    # Member B is member A times 10 plus 100: after per-member batch whitening they agree exactly.
    a, b = FixedScorer([1.0, 2.0, 3.0]), FixedScorer([110.0, 120.0, 130.0])
    ens = RewardModelEnsemble([a, b], combine="uwo", lam=1.0, normalize="batch", names=["small", "big"])
    z = torch.tensor([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3)
    torch.testing.assert_close(ens.score(P3, C3), z)
    assert ens.last_metrics["disagreement_std"] == pytest.approx(0.0, abs=1e-6)
    assert set(ens.last_metrics) == {"small/mean", "big/mean", "disagreement_std", "mean"}
    # Without normalisation "min" is decided by B's offset alone.
    raw = RewardModelEnsemble([a, b], combine="min", normalize="none")
    torch.testing.assert_close(raw.score(P3, C3), torch.tensor([1.0, 2.0, 3.0]))


def test_ensemble_running_state_round_trip():
    ens = RewardModelEnsemble([FixedScorer([1.0, 2.0, 3.0]), FixedScorer([0.0, 4.0, 8.0])], combine="mean")
    ens.score(P3, C3)
    state = ens.state_dict()
    resumed = RewardModelEnsemble(
        [FixedScorer([1.0, 2.0, 3.0]), FixedScorer([0.0, 4.0, 8.0])], combine="mean"
    )
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.score(P3[:2], C3[:2]), ens.score(P3[:2], C3[:2]))


def test_ensemble_errors():
    with pytest.raises(KeyError, match="unknown reward-model ensemble combine 'median'"):
        RewardModelEnsemble([FixedScorer([1.0])], combine="median")
    with pytest.raises(ValueError, match="at least one member"):
        RewardModelEnsemble([])
    with pytest.raises(TypeError, match="no score"):
        RewardModelEnsemble([object()])
    with pytest.raises(ValueError, match="lam"):
        RewardModelEnsemble([FixedScorer([1.0])], lam=-1.0)
    with pytest.raises(ValueError, match="returned 1 scores for 3"):
        RewardModelEnsemble([FixedScorer([1.0])]).score(P3, C3)


def test_ensemble_of_two_real_reward_models(rm_dirs):
    a = RewardModel(str(rm_dirs["a"]), batch_size=4)
    b = RewardModel(str(rm_dirs["b"]), batch_size=2)
    sa, sb = a.score(PROMPTS, COMPLETIONS), b.score(PROMPTS, COMPLETIONS)
    assert not torch.allclose(sa, sb)
    ens = RewardModelEnsemble([a, b], combine="uwo", lam=0.3, normalize="none")
    both = torch.stack([sa, sb])
    expected = both.mean(0) - 0.3 * both.var(0, unbiased=False)
    torch.testing.assert_close(ens.score(PROMPTS, COMPLETIONS), expected, atol=1e-5, rtol=0)
    assert ens.last_metrics["disagreement_std"] == pytest.approx(
        ((sa - sb).abs() / 2).mean().item(), abs=1e-5
    )


# ---- factory -----------------------------------------------------------------------------------------------


def test_build_reward_model_from_specs(rm_dirs):
    rm = build_reward_model(
        {"path": str(rm_dirs["a"]), "normalize": "batch", "batch_size": 2, "max_length": 64}, device="cpu"
    )
    assert isinstance(rm, RewardModel)
    assert (rm.batch_size, rm.max_length, rm.normalizer.mode, rm.device.type) == (2, 64, "batch", "cpu")

    ens = build_reward_model(
        {
            "ensemble": [str(rm_dirs["a"]), {"path": str(rm_dirs["b"]), "batch_size": 3}],
            "combine": "uwo",
            "lam": 0.5,
        }
    )
    assert isinstance(ens, RewardModelEnsemble)
    assert (ens.combine_name, ens.lam, [n.mode for n in ens.normalizers]) == (
        "uwo",
        0.5,
        ["running", "running"],
    )
    assert [m.normalizer.mode for m in ens.members] == ["none", "none"]
    assert ens.members[1].batch_size == 3
    assert ens.score(PROMPTS, COMPLETIONS).shape == (len(PROMPTS),)


def test_build_reward_model_rejects_bad_specs(rm_dirs):
    with pytest.raises(ValueError, match=r"unknown reward model key\(s\) \['batchsize'\]"):
        build_reward_model({"path": str(rm_dirs["a"]), "batchsize": 2})
    with pytest.raises(ValueError, match="needs 'path'"):
        build_reward_model({"normalize": "batch"})
    with pytest.raises(ValueError, match="unknown reward-model ensemble combine 'avg'; known: .*uwo"):
        build_reward_model({"ensemble": [str(rm_dirs["a"])], "combine": "avg"})
    with pytest.raises(ValueError, match="non-empty list"):
        build_reward_model({"ensemble": str(rm_dirs["a"])})
    with pytest.raises(FileNotFoundError):
        build_reward_model({"path": "/nonexistent/reward-model"})


def test_training_run_with_a_reward_model_ensemble_next_to_a_verifier(rm_dirs, tmp_path):
    """Two steps of the tiny recipe with an ensemble of two RMs added to the file verifier's reward."""
    from launch import metrics, run, tiny_train, undocumented

    out = tmp_path / "run"
    ensemble = f"{{ensemble: [{rm_dirs['a']}, {rm_dirs['b']}], combine: uwo, lam: 0.1}}"
    run(tiny_train(out, f"rewards.reward_models=[{{name: rm, weight: 0.5, model: {ensemble}}}]"))
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        # the summed reward is the verifier's plus half the ensemble's (running-normalised, so ~0 mean)
        expected = row["reward/digit_fraction/mean"] + 0.5 * row["reward/rm/mean"]
        assert row["reward/mean"] == pytest.approx(expected, abs=1e-5)
        assert abs(row["reward/rm/mean"]) < 1.0 and row["reward/rm/mean"] != 0.0
    assert not undocumented(rows[0])

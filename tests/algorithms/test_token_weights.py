"""Tests for rlvr.algorithms.token_weights: forking tokens, TIS, mismatch masking, overlong masking."""

from __future__ import annotations

import math

import pytest
import torch

from rlvr.algorithms import (
    TOKEN_WEIGHTS,
    TokenWeightInputs,
    combine_token_weights,
    forking_tokens,
    mismatch_mask,
    overlong_mask,
    tis,
)
from rlvr.algorithms.policy_losses import MAX_LOG_RATIO
from rlvr.algorithms.utils import needs_of


def _mask(lengths: list[int], t: int) -> torch.Tensor:
    return (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).float()  # [N, T]


def _inputs(
    lengths: list[int],
    t: int,
    *,
    log_ratios: list[list[float]] | torch.Tensor | None = None,
    entropy: list[list[float]] | torch.Tensor | None = None,
    truncated: list[bool] | None = None,
) -> TokenWeightInputs:
    """A batch with ``engine_logprobs = -1`` and ``old_logprobs = -1 + log_ratios``."""
    n = len(lengths)
    mask = _mask(lengths, t)
    engine = torch.full((n, t), -1.0)
    ratios = torch.zeros(n, t) if log_ratios is None else torch.as_tensor(log_ratios, dtype=torch.float32)
    return TokenWeightInputs(
        response_mask=mask,
        old_logprobs=engine + ratios,
        engine_logprobs=engine,
        advantages=torch.ones(n, t),
        truncated=torch.tensor([False] * n if truncated is None else truncated, dtype=torch.bool),
        old_entropy=None if entropy is None else torch.as_tensor(entropy, dtype=torch.float32),
    )


def _log(ratios: list[list[float]]) -> list[list[float]]:
    return [[math.log(r) for r in row] for row in ratios]


def _scalar_metrics(metrics: dict[str, torch.Tensor]) -> None:
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())


def test_registered() -> None:
    assert TOKEN_WEIGHTS.get("forking_tokens") is forking_tokens
    assert TOKEN_WEIGHTS.get("tis") is tis
    assert TOKEN_WEIGHTS.get("mismatch_mask") is mismatch_mask
    assert TOKEN_WEIGHTS.get("overlong_mask") is overlong_mask
    assert needs_of(forking_tokens) == {"old_entropy"}
    assert needs_of(tis) == needs_of(mismatch_mask) == {"old_logprobs"}
    assert needs_of(overlong_mask) == frozenset()


def test_input_validation() -> None:
    ok = _inputs([2, 1], 3)
    with pytest.raises(ValueError, match="response_mask must be"):
        TokenWeightInputs(torch.ones(3), ok.old_logprobs, ok.engine_logprobs, ok.advantages, ok.truncated)
    with pytest.raises(ValueError, match="engine_logprobs"):
        TokenWeightInputs(ok.response_mask, ok.old_logprobs, torch.zeros(2, 4), ok.advantages, ok.truncated)
    with pytest.raises(ValueError, match="old_entropy"):
        TokenWeightInputs(
            ok.response_mask, ok.old_logprobs, ok.engine_logprobs, ok.advantages, ok.truncated, torch.zeros(3)
        )
    with pytest.raises(ValueError, match="truncated must be"):
        TokenWeightInputs(
            ok.response_mask, ok.old_logprobs, ok.engine_logprobs, ok.advantages, torch.tensor([True])
        )
    with pytest.raises(TypeError, match="bool"):
        TokenWeightInputs(
            ok.response_mask, ok.old_logprobs, ok.engine_logprobs, ok.advantages, torch.tensor([1, 0])
        )
    with pytest.raises(TypeError):
        tis(ok, clip=2.0)  # a typo is an error


# --- forking_tokens --------------------------------------------------------------------------------------


def test_forking_tokens_by_hand() -> None:
    # valid entropies: row 0 [0.1, 2.0, 0.5, 1.0], row 1 [3.0, 0.2, 0.7] (the 99 is padding) -> n = 7
    # top_q = 0.3: k = ceil(2.1) = 3 -> the 3 largest are 3.0, 2.0, 1.0 -> threshold 1.0
    # top_q = 0.2: k = ceil(1.4) = 2 -> 3.0, 2.0 -> threshold 2.0
    entropy = [[0.1, 2.0, 0.5, 1.0], [3.0, 0.2, 0.7, 99.0]]
    inputs = _inputs([4, 3], 4, entropy=entropy)
    w, metrics = forking_tokens(inputs, top_q=0.3)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(metrics["selected_frac"], torch.tensor(3 / 7))
    torch.testing.assert_close(metrics["entropy_threshold"], torch.tensor(1.0))
    _scalar_metrics(metrics)

    w, metrics = forking_tokens(inputs, top_q=0.2)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(metrics["entropy_threshold"], torch.tensor(2.0))

    w, metrics = forking_tokens(inputs, top_q=1.0)  # every valid token, never padding
    torch.testing.assert_close(w, inputs.response_mask)
    torch.testing.assert_close(metrics["selected_frac"], torch.tensor(1.0))
    torch.testing.assert_close(metrics["entropy_threshold"], torch.tensor(0.1))


def test_forking_tokens_count_is_exact_despite_float_error() -> None:
    # 0.1 * 30 = 3.0000000000000004 in floating point; k must be 3, not 4
    entropy = torch.arange(30, dtype=torch.float32).view(3, 10)
    w, metrics = forking_tokens(_inputs([10, 10, 10], 10, entropy=entropy), top_q=0.1)
    assert int(w.sum()) == 3
    assert w[2, 7:].tolist() == [1.0, 1.0, 1.0]  # entropies 27, 28, 29
    torch.testing.assert_close(metrics["entropy_threshold"], torch.tensor(27.0))


def test_forking_tokens_keeps_ties_and_ignores_order() -> None:
    # entropies [1, 1, 1, 0.5], top_q = 0.25 -> k = 1, threshold = 1 -> all three tied tokens are kept
    inputs = _inputs([4], 4, entropy=[[1.0, 1.0, 1.0, 0.5]])
    w, metrics = forking_tokens(inputs, top_q=0.25)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(metrics["selected_frac"], torch.tensor(0.75))
    # the same tokens in another order are selected the same way
    perm = torch.tensor([3, 1, 0, 2])
    inputs_p = _inputs([4], 4, entropy=inputs.old_entropy[:, perm])
    w_p, _ = forking_tokens(inputs_p, top_q=0.25)
    torch.testing.assert_close(w_p, w[:, perm])


def test_forking_tokens_errors_and_empty() -> None:
    with pytest.raises(ValueError, match="old_entropy"):
        forking_tokens(_inputs([2], 2))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top_q"):
            forking_tokens(_inputs([2], 2, entropy=[[1.0, 2.0]]), top_q=bad)
    w, metrics = forking_tokens(_inputs([0, 0], 3, entropy=torch.randn(2, 3)))
    assert torch.all(w == 0)
    assert float(metrics["selected_frac"]) == 0.0 and float(metrics["entropy_threshold"]) == 0.0
    w, _ = forking_tokens(_inputs([], 0, entropy=torch.zeros(0, 0)))  # N * T == 0
    assert w.shape == (0, 0)


def _loop_forking(entropy: torch.Tensor, mask: torch.Tensor, top_q: float) -> torch.Tensor:
    values = sorted((float(entropy[i, t]) for i, t in mask.nonzero().tolist()), reverse=True)
    out = torch.zeros_like(entropy)
    if not values:
        return out
    k = math.ceil(top_q * len(values) - 1e-6)
    tau = values[k - 1]
    for i, t in mask.nonzero().tolist():
        out[i, t] = 1.0 if float(entropy[i, t]) >= tau else 0.0
    return out


@pytest.mark.parametrize("top_q", [0.05, 0.2, 0.5, 0.8, 1.0])
def test_forking_tokens_matches_loop(top_q: float) -> None:
    gen = torch.Generator().manual_seed(1)
    n, t = 9, 13
    lengths = torch.randint(0, t + 1, (n,), generator=gen).tolist()
    entropy = torch.rand(n, t, generator=gen) * 3
    entropy[:, ::4] = entropy[:, ::4].round()  # some ties
    entropy[_mask(lengths, t) == 0] = float("nan")  # padding may hold garbage
    inputs = _inputs(lengths, t, entropy=entropy)
    w, _ = forking_tokens(inputs, top_q=top_q)
    torch.testing.assert_close(w, _loop_forking(entropy, inputs.response_mask, top_q))


# --- tis -------------------------------------------------------------------------------------------------


def test_tis_token_level_by_hand() -> None:
    # ratios [0.5, 1.0, 3.0] and [1.5] (then padding); cap 2 -> weights [0.5, 1.0, 2.0], [1.5]
    # ratio_mean (0.5 + 1 + 3 + 1.5) / 4 = 1.5; capped 1 / 4; max 3; min 0.5
    inputs = _inputs([3, 1], 3, log_ratios=_log([[0.5, 1.0, 3.0], [1.5, 1.0, 1.0]]))
    w, metrics = tis(inputs)
    torch.testing.assert_close(w, torch.tensor([[0.5, 1.0, 2.0], [1.5, 0.0, 0.0]]))
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(1.5))
    torch.testing.assert_close(metrics["capped_frac"], torch.tensor(0.25))
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(3.0))
    torch.testing.assert_close(metrics["ratio_min"], torch.tensor(0.5))
    _scalar_metrics(metrics)
    w, _ = tis(inputs, cap=1.0)  # cap 1: [0.5, 1, 1], [1]
    torch.testing.assert_close(w, torch.tensor([[0.5, 1.0, 1.0], [1.0, 0.0, 0.0]]))


def test_tis_sequence_level_by_hand() -> None:
    # row 0: token ratios [0.5, 3.0] -> product 1.5 < cap 2 -> 1.5 on both tokens
    # row 1: token ratios [2.0, 2.0, 1.0] -> product 4 -> capped to 2 on its three tokens
    # row 2: empty -> no weight; it does not count in the sequence metrics
    # metrics over the 2 non-empty rows: ratio_mean (1.5 + 4) / 2 = 2.75, capped 1 / 2, max 4, min 1.5
    ratios = [[0.5, 3.0, 9.0], [2.0, 2.0, 1.0], [5.0, 5.0, 5.0]]  # 9.0 and row 2 are padding
    inputs = _inputs([2, 3, 0], 3, log_ratios=_log(ratios))
    w, metrics = tis(inputs, level="sequence")
    torch.testing.assert_close(w, torch.tensor([[1.5, 1.5, 0.0], [2.0, 2.0, 2.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(metrics["ratio_mean"], torch.tensor(2.75))
    torch.testing.assert_close(metrics["capped_frac"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(4.0))
    torch.testing.assert_close(metrics["ratio_min"], torch.tensor(1.5))


def _loop_tis(inputs: TokenWeightInputs, cap: float, level: str) -> torch.Tensor:
    n, t = inputs.response_mask.shape
    out = torch.zeros(n, t, dtype=torch.float64)
    for i in range(n):
        cols = [s for s in range(t) if inputs.response_mask[i, s]]
        diffs = [float(inputs.old_logprobs[i, s]) - float(inputs.engine_logprobs[i, s]) for s in cols]
        for s, d in zip(cols, diffs, strict=True):
            log_r = d if level == "token" else sum(diffs)
            out[i, s] = min(math.exp(max(min(log_r, MAX_LOG_RATIO), -MAX_LOG_RATIO)), cap)
    return out


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_tis_matches_loop(level: str) -> None:
    gen = torch.Generator().manual_seed(2)
    n, t = 7, 9
    lengths = torch.randint(0, t + 1, (n,), generator=gen).tolist()
    log_ratios = 0.3 * torch.randn(n, t, generator=gen)
    w, _ = tis(_inputs(lengths, t, log_ratios=log_ratios), cap=1.5, level=level)
    want = _loop_tis(_inputs(lengths, t, log_ratios=log_ratios), 1.5, level)
    torch.testing.assert_close(w.double(), want, atol=1e-5, rtol=1e-5)


def test_tis_is_finite_and_constant() -> None:
    # a huge log-ratio is clamped before exp (no inf); garbage in the padding does not leak
    log_ratios = torch.tensor([[1000.0, -1000.0, float("nan")], [15.0, 15.0, float("inf")]])
    inputs = _inputs([2, 2], 3, log_ratios=log_ratios)
    inputs.old_logprobs.requires_grad_(True)
    for level in ("token", "sequence"):
        w, metrics = tis(inputs, level=level)
        assert torch.isfinite(w).all() and not w.requires_grad
        assert all(torch.isfinite(v) for v in metrics.values())
        assert torch.all(w[:, 2] == 0)
        assert torch.all(w[inputs.response_mask != 0] > 0)  # TIS never removes a token
    w, metrics = tis(inputs, level="token")
    torch.testing.assert_close(w[0, :2], torch.tensor([2.0, math.exp(-MAX_LOG_RATIO)]))
    torch.testing.assert_close(metrics["ratio_max"], torch.tensor(math.exp(MAX_LOG_RATIO)))
    w, _ = tis(inputs, level="sequence")  # row 1: sum 30 -> clamped to 20 -> capped to 2
    torch.testing.assert_close(w[1, :2], torch.tensor([2.0, 2.0]))


def test_tis_validation() -> None:
    inputs = _inputs([1], 1)
    with pytest.raises(ValueError, match="cap"):
        tis(inputs, cap=0.0)
    with pytest.raises(ValueError, match="level"):
        tis(inputs, level="seq")


# --- mismatch_mask ---------------------------------------------------------------------------------------


def test_mismatch_mask_token_level_by_hand() -> None:
    # ratios [0.4, 0.6, 1.0, 1.9, 2.5] in [0.5, 2.0]? -> [no, yes, yes, yes, no]
    # masked 2 / 5, below 1 / 5, above 1 / 5
    inputs = _inputs([5], 5, log_ratios=_log([[0.4, 0.6, 1.0, 1.9, 2.5]]))
    w, metrics = mismatch_mask(inputs)
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]))
    torch.testing.assert_close(metrics["masked_frac"], torch.tensor(0.4))
    torch.testing.assert_close(metrics["masked_frac_low"], torch.tensor(0.2))
    torch.testing.assert_close(metrics["masked_frac_high"], torch.tensor(0.2))
    _scalar_metrics(metrics)


def test_mismatch_mask_bounds_are_inclusive() -> None:
    # low = high = 1 keeps exactly the tokens where trainer and engine agree (ratio exactly 1)
    inputs = _inputs([3], 3, log_ratios=[[0.0, 1e-3, 0.0]])
    w, metrics = mismatch_mask(inputs, low=1.0, high=1.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 1.0]]))
    torch.testing.assert_close(metrics["masked_frac_high"], torch.tensor(1 / 3))


def test_mismatch_mask_sequence_level_by_hand() -> None:
    # row 0: ratios [0.25, 4.0] -> geometric mean sqrt(0.25 * 4) = 1 -> kept (token level would drop both)
    # row 1: ratios [1.5, 1.5, 1.5] -> geometric mean 1.5 -> kept (the product 3.375 would not be)
    # row 2: ratios [2.5, 2.5] -> 2.5 > 2 -> dropped (high)
    # row 3: ratios [0.4] -> 0.4 < 0.5 -> dropped (low); padding ratios are ignored
    # over 4 non-empty rows: masked 2 / 4, low 1 / 4, high 1 / 4
    ratios = [[0.25, 4.0, 100.0], [1.5, 1.5, 1.5], [2.5, 2.5, 1.0], [0.4, 1.0, 1.0]]
    inputs = _inputs([2, 3, 2, 1], 3, log_ratios=_log(ratios))
    w, metrics = mismatch_mask(inputs, level="sequence")
    want = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(w, want)
    torch.testing.assert_close(metrics["masked_frac"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["masked_frac_low"], torch.tensor(0.25))
    torch.testing.assert_close(metrics["masked_frac_high"], torch.tensor(0.25))
    w_tok, _ = mismatch_mask(inputs, level="token")
    torch.testing.assert_close(w_tok[0], torch.tensor([0.0, 0.0, 0.0]))


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_mismatch_mask_matches_loop(level: str) -> None:
    gen = torch.Generator().manual_seed(3)
    n, t = 8, 7
    lengths = torch.randint(0, t + 1, (n,), generator=gen).tolist()
    log_ratios = 0.6 * torch.randn(n, t, generator=gen)
    inputs = _inputs(lengths, t, log_ratios=log_ratios)
    w, _ = mismatch_mask(inputs, low=0.7, high=1.6, level=level)
    want = torch.zeros(n, t)
    for i in range(n):
        cols = list(range(lengths[i]))
        diffs = [float(inputs.old_logprobs[i, s] - inputs.engine_logprobs[i, s]) for s in cols]
        for s, d in zip(cols, diffs, strict=True):
            r = math.exp(d if level == "token" else sum(diffs) / len(diffs))
            want[i, s] = 1.0 if 0.7 <= r <= 1.6 else 0.0
    torch.testing.assert_close(w, want)


def test_mismatch_mask_validation() -> None:
    inputs = _inputs([1], 1)
    for low, high in ((1.2, 2.0), (0.5, 0.9), (-0.1, 2.0)):
        with pytest.raises(ValueError, match="low"):
            mismatch_mask(inputs, low=low, high=high)
    w, _ = mismatch_mask(inputs, low=0.0, high=float("inf"))  # no bounds: keeps everything
    assert w.tolist() == [[1.0]]


# --- overlong_mask ---------------------------------------------------------------------------------------


def test_overlong_mask_by_hand() -> None:
    # row 0 complete (kept), row 1 truncated (dropped), row 2 empty; 1 of the 2 non-empty rows dropped
    inputs = _inputs([2, 3, 0], 3, truncated=[False, True, False])
    w, metrics = overlong_mask(inputs)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(metrics["masked_frac"], torch.tensor(0.5))
    _scalar_metrics(metrics)


# --- combine_token_weights -------------------------------------------------------------------------------


def test_combine_empty_returns_the_mask() -> None:
    inputs = _inputs([2, 1], 3)
    w, metrics = combine_token_weights([], inputs)
    assert w is inputs.response_mask and metrics == {}
    bool_inputs = TokenWeightInputs(
        inputs.response_mask.bool(), inputs.old_logprobs, inputs.engine_logprobs, inputs.advantages,
        inputs.truncated,
    )  # fmt: skip
    w, _ = combine_token_weights([], bool_inputs)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, inputs.response_mask)


def test_combine_by_hand() -> None:
    # tis (cap 2): ratios [0.5, 3.0] -> [0.5, 2.0]; [1.5] -> [1.5]
    # overlong_mask: row 1 truncated -> [1, 1], [0]
    # product: [0.5, 2.0], [0]; kept 2 of 3 valid tokens; mean weight over kept (0.5 + 2) / 2 = 1.25
    inputs = _inputs([2, 1], 2, log_ratios=_log([[0.5, 3.0], [1.5, 1.0]]), truncated=[False, True])
    w, metrics = combine_token_weights([("tis", {"cap": 2.0}), (overlong_mask, {})], inputs)
    torch.testing.assert_close(w, torch.tensor([[0.5, 2.0], [0.0, 0.0]]))
    torch.testing.assert_close(metrics["kept_frac"], torch.tensor(2 / 3))
    torch.testing.assert_close(metrics["weight_mean"], torch.tensor(1.25))
    torch.testing.assert_close(metrics["tis/capped_frac"], torch.tensor(1 / 3))
    torch.testing.assert_close(metrics["overlong_mask/masked_frac"], torch.tensor(0.5))
    assert set(metrics) == {
        "kept_frac",
        "weight_mean",
        "tis/ratio_mean",
        "tis/ratio_min",
        "tis/ratio_max",
        "tis/capped_frac",
        "overlong_mask/masked_frac",
    }
    _scalar_metrics(metrics)


def test_combine_repeated_names_and_errors() -> None:
    inputs = _inputs([2], 2, log_ratios=_log([[0.4, 1.0]]))
    w, metrics = combine_token_weights(
        [("mismatch_mask", {"level": "token"}), ("mismatch_mask", {"level": "sequence"})], inputs
    )
    # token: 0.4 dropped -> [0, 1]; sequence: geometric mean sqrt(0.4) = 0.632 kept -> [1, 1]
    torch.testing.assert_close(w, torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(metrics["mismatch_mask/masked_frac"], torch.tensor(0.5))
    torch.testing.assert_close(metrics["mismatch_mask_2/masked_frac"], torch.tensor(0.0))

    with pytest.raises(KeyError, match="known"):
        combine_token_weights([("tiss", {})], inputs)
    with pytest.raises(TypeError):
        combine_token_weights([("tis", {"clip": 2.0})], inputs)

    def bad(inputs: TokenWeightInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.ones(3), {}

    with pytest.raises(ValueError, match="'bad'"):
        combine_token_weights([(bad, {})], inputs)


def test_entries_run_without_the_fields_they_did_not_declare() -> None:
    # overlong_mask reads no log-probs: without old_logprobs (no pass ran) its weights are float32 as usual
    inputs = _inputs([2, 1], 2, truncated=[False, True])
    inputs.old_logprobs = None
    w, metrics = combine_token_weights([("overlong_mask", {})], inputs)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(metrics["kept_frac"], torch.tensor(2 / 3))

    # an entry that reads old_logprobs without declaring them gets an error that says so
    def undeclared(inputs: TokenWeightInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return inputs.old_logprobs.exp(), {}

    with pytest.raises(
        TypeError, match=r"'undeclared'.*old_logprobs and old_entropy were not computed.*@needs"
    ):
        combine_token_weights([(undeclared, {})], inputs)
    # other errors are left as they are: a hyperparameter the entry does not take
    with pytest.raises(TypeError, match="unexpected keyword argument 'clip'") as error:
        combine_token_weights([("overlong_mask", {"clip": 2.0})], inputs)
    assert "were not computed" not in str(error.value)


def test_combine_zeroes_padding_of_custom_entries() -> None:
    # a user entry that forgets the mask still gives 0 outside it after combining
    def ones(inputs: TokenWeightInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.full(inputs.response_mask.shape, 3.0), {}

    w, metrics = combine_token_weights([(ones, {})], _inputs([1, 2], 2))
    torch.testing.assert_close(w, torch.tensor([[3.0, 0.0], [3.0, 3.0]]))
    torch.testing.assert_close(metrics["weight_mean"], torch.tensor(3.0))


def test_forking_tokens_gradient_flows_only_through_the_selected_tokens() -> None:
    """The paper's point (arXiv 2506.01939) is the gradient: only high-entropy tokens are trained on.

    Two responses of 3 and 2 tokens, entropies [0.1, 2.0, 0.5] and [1.5, 0.2]; top_q = 0.4 of 5 valid tokens
    -> k = 2: the tokens with entropy 2.0 and 1.5. On-policy PPO loss -A * ratio with A = +1 and -2, then
    token-mean over the 2 kept tokens: d loss / d logprob = -A / 2 on a kept token, 0 elsewhere:
    token (0, 1): -(+1) / 2 = -0.5; token (1, 0): -(-2) / 2 = +1.0.
    """
    from rlvr.algorithms import aggregate, ppo_clip_loss

    inputs = _inputs([3, 2], 3, entropy=[[0.1, 2.0, 0.5], [1.5, 0.2, 9.9]])  # 9.9 sits on padding
    weights, _ = forking_tokens(inputs, top_q=0.4)
    logprobs = torch.full((2, 3), -1.0, requires_grad=True)
    advantages = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]])
    per_token, _ = ppo_clip_loss(logprobs, logprobs.detach(), advantages, inputs.response_mask)
    kept = inputs.response_mask * (weights != 0)
    aggregate(per_token * weights, kept, "token-mean").backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.5, 0.0], [1.0, 0.0, 0.0]]))

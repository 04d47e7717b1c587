"""Tests for rlvr.algorithms.aggregation and the masked helpers in rlvr.algorithms.utils."""

from __future__ import annotations

import pytest
import torch

from rlvr.algorithms import (
    LOSS_AGGREGATIONS,
    aggregate,
    aggregation_counts,
    masked_max,
    masked_mean,
    masked_min,
    masked_sum,
    masked_var,
    masked_whiten,
)

# loss rows [1, 2, 3], [4, 5, 6], [7, 8, 9]; masks [1, 1, 0], [1, 0, 0], [0, 0, 0] (last row empty)
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_mode_names() -> None:
    assert LOSS_AGGREGATIONS == (
        "token-mean",
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
    )
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(LOSS, MASK, "mean")


def test_each_mode_by_hand() -> None:
    # masked tokens: row 0 -> 1, 2 (sum 3, len 2); row 1 -> 4 (sum 4, len 1); row 2 empty.
    # default counts: 3 tokens, 2 non-empty sequences, T = 3
    # token-mean              = (1 + 2 + 4) / 3           = 7/3
    # seq-mean-token-mean     = (3/2 + 4/1) / 2           = 2.75
    # seq-mean-token-sum      = (3 + 4) / 2               = 3.5
    # seq-mean-token-sum-norm = (3 + 4) / 3 / 2           = 7/6
    expected = {
        "token-mean": 7 / 3,
        "seq-mean-token-mean": 2.75,
        "seq-mean-token-sum": 3.5,
        "seq-mean-token-sum-norm": 7 / 6,
    }
    for mode, value in expected.items():
        got = aggregate(LOSS, MASK, mode)
        assert got.dim() == 0
        torch.testing.assert_close(got, torch.tensor(value), msg=mode)


def test_explicit_counts_and_length() -> None:
    # num_tokens 7 -> 7/7 = 1; num_sequences 4 -> (1.5 + 4)/4 = 1.375, 7/4 = 1.75;
    # max_response_len 7 and num_sequences 4 -> 7 / 7 / 4 = 0.25
    torch.testing.assert_close(aggregate(LOSS, MASK, "token-mean", num_tokens=7), torch.tensor(1.0))
    torch.testing.assert_close(
        aggregate(LOSS, MASK, "seq-mean-token-mean", num_sequences=4), torch.tensor(1.375)
    )
    torch.testing.assert_close(
        aggregate(LOSS, MASK, "seq-mean-token-sum", num_sequences=4), torch.tensor(1.75)
    )
    torch.testing.assert_close(
        aggregate(LOSS, MASK, "seq-mean-token-sum-norm", num_sequences=4, max_response_len=7),
        torch.tensor(0.25),
    )
    # counts may be tensors (e.g. after an all-reduce)
    torch.testing.assert_close(
        aggregate(LOSS, MASK, "token-mean", num_tokens=torch.tensor(7.0)), torch.tensor(1.0)
    )


def test_bool_mask_and_masked_garbage() -> None:
    loss = LOSS.clone()
    loss[2] = float("nan")  # the empty row
    loss[0, 2] = float("inf")  # padding of row 0
    for mode in LOSS_AGGREGATIONS:
        a = aggregate(loss, MASK.bool(), mode)
        b = aggregate(LOSS, MASK, mode)
        torch.testing.assert_close(a, b, msg=mode)


def test_empty_batch_is_zero_not_nan() -> None:
    loss = torch.randn(2, 4, requires_grad=True)
    mask = torch.zeros(2, 4)
    for mode in LOSS_AGGREGATIONS:
        out = aggregate(loss, mask, mode)
        assert out.item() == 0.0
        out.backward()
        assert torch.isfinite(loss.grad).all()
        loss.grad = None


def test_gradient_weights() -> None:
    # d(token-mean)/d loss = mask / 3; d(seq-mean-token-mean)/d loss_it = m_it / len_i / 2
    loss = LOSS.clone().requires_grad_(True)
    aggregate(loss, MASK, "token-mean").backward()
    torch.testing.assert_close(loss.grad, MASK / 3)
    loss.grad = None
    aggregate(loss, MASK, "seq-mean-token-mean").backward()
    torch.testing.assert_close(loss.grad, torch.tensor([[0.25, 0.25, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_aggregation_counts() -> None:
    num_sequences, num_tokens = aggregation_counts(MASK)
    assert num_sequences.item() == 2.0
    assert num_tokens.item() == 3.0


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
def test_micro_batches_sum_to_mini_batch(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n, t = 11, 9
    loss = torch.randn(n, t, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    lengths[3] = 0  # one empty response
    mask = (torch.arange(t)[None, :] < lengths[:, None]).double()  # [N, T]
    full = aggregate(loss, mask, mode)

    num_sequences, num_tokens = aggregation_counts(mask)  # whole mini-batch counts
    total = torch.zeros((), dtype=torch.float64)
    for rows in (slice(0, 4), slice(4, 5), slice(5, 11)):  # uneven micro-batches
        mb_loss, mb_mask = loss[rows], mask[rows]
        # each micro-batch is re-padded to its own longest response, as a packing collator would do
        mb_t = max(int(mb_mask.sum(-1).max()), 1)
        mb_loss, mb_mask = mb_loss[:, :mb_t], mb_mask[:, :mb_t]
        total = total + aggregate(
            mb_loss,
            mb_mask,
            mode,
            num_sequences=num_sequences,
            num_tokens=num_tokens,
            max_response_len=t,
        )
    torch.testing.assert_close(total, full)


def test_masked_helpers() -> None:
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, float("nan"), 4.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    # masked values 1, 2, 3, 4: sum 10, mean 2.5, unbiased var (2.25 + .25 + .25 + 2.25) / 3 = 5/3
    torch.testing.assert_close(masked_sum(x, m), torch.tensor(10.0))
    torch.testing.assert_close(masked_mean(x, m), torch.tensor(2.5))
    torch.testing.assert_close(masked_mean(x, m, dim=-1), torch.tensor([1.5, 3.5]))
    torch.testing.assert_close(masked_var(x, m), torch.tensor(5 / 3))
    torch.testing.assert_close(masked_var(x, m, unbiased=False), torch.tensor(1.25))
    w = masked_whiten(x, m)
    assert torch.all(w[~m] == 0)
    torch.testing.assert_close(masked_mean(w, m), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked_var(w, m), torch.tensor(1.0), atol=1e-5, rtol=0)
    w_noshift = masked_whiten(x, m, shift_mean=False)
    torch.testing.assert_close(masked_mean(w_noshift, m), torch.tensor(2.5), atol=1e-6, rtol=0)
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


def test_masked_max_min() -> None:
    # masked entries 1, 2, 3, 4 (the unmasked 100 and NaN are ignored): max 4, min 1
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, float("nan"), 4.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    assert masked_max(x, m).item() == 4.0
    assert masked_min(x, m).item() == 1.0
    # a float 0/1 mask works the same; only the second row: max 4, min 3
    row2 = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    assert masked_max(x, row2).item() == 4.0
    assert masked_min(x, row2).item() == 3.0
    # an empty mask gives empty_value, not -inf / inf
    none = torch.zeros_like(m)
    assert masked_max(x, none, empty_value=1.0).item() == 1.0
    assert masked_min(x, none, empty_value=-2.0).item() == -2.0

"""Loading preference data: pairs and unpaired rows, plain text and chat messages, bad rows reported."""

from __future__ import annotations

import json
import logging

import pytest

from rlvr.config import DataConfig
from rlvr.data.loading import DataError
from rlvr.data.pairs import load_pairs

PROMPT = "<|im_start|>user\nsay 7<|im_end|>\n<|im_start|>assistant\n"


def write(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_plain_text_pairs_use_the_chat_template(tmp_path, tiny_tokenizer):
    path = write(tmp_path, [{"prompt": "say 7", "chosen": "77", "rejected": "12"}])
    rows = load_pairs(DataConfig(path=path, format="pairs"), tiny_tokenizer).rows
    row = rows[0]
    assert row["prompt"] == PROMPT
    assert row["chosen"] == "77<|im_end|>\n" and row["rejected"] == "12<|im_end|>\n"
    assert tiny_tokenizer.decode(row["prompt_ids"]) == PROMPT
    assert tiny_tokenizer.decode(row["chosen_ids"]) == "77<|im_end|>\n"
    assert row["prompt_id"] == 0 and row["data_source"] == "pairs"


def test_conversational_pairs_render_like_plain_ones(tmp_path, tiny_tokenizer):
    row = {
        "question": [{"role": "user", "content": "say 7"}],
        "good": [{"role": "assistant", "content": "77"}],
        "bad": [{"role": "assistant", "content": "12"}],
    }
    path = write(tmp_path, [row])
    cfg = DataConfig(
        path=path, format="pairs", prompt_field="question", chosen_field="good", rejected_field="bad"
    )
    loaded = load_pairs(cfg, tiny_tokenizer).rows[0]
    assert loaded["prompt"] == PROMPT
    assert loaded["chosen"] == "77<|im_end|>\n"


def test_without_chat_template_the_response_ends_with_eos(tmp_path, tiny_tokenizer):
    path = write(tmp_path, [{"prompt": "say 7", "chosen": "77", "rejected": "12"}])
    row = load_pairs(DataConfig(path=path, format="pairs", chat_template=False), tiny_tokenizer).rows[0]
    assert row["prompt"] == "say 7"
    assert row["chosen"] == "77<|im_end|>"


def test_unpaired_rows_carry_labels(tmp_path, tiny_tokenizer):
    path = write(
        tmp_path,
        [
            {"prompt": "say 7", "completion": "77", "label": True},
            {"prompt": "say 7", "completion": "12", "label": 0},
            {"prompt": "say 7", "completion": "13", "label": "no"},
        ],
    )
    dataset = load_pairs(DataConfig(path=path, format="unpaired"), tiny_tokenizer)
    assert [r["label"] for r in dataset.rows] == [True, False]
    assert dataset.skipped == {"bad_label": 1}


def test_bad_rows_are_counted_and_reported(tmp_path, tiny_tokenizer, caplog):
    path = write(
        tmp_path,
        [
            {"prompt": "say 7", "chosen": "77", "rejected": "12"},
            {"prompt": "say 7", "chosen": "77", "rejected": "77"},
            {"prompt": "", "chosen": "77", "rejected": "12"},
            {"prompt": "say 7", "chosen": 7, "rejected": "12"},
            {"prompt": "say 7", "chosen": [{"role": "assistant"}], "rejected": "12"},
            "not json",
        ],
    )
    with caplog.at_level(logging.WARNING):
        dataset = load_pairs(DataConfig(path=path, format="pairs"), tiny_tokenizer)
    assert len(dataset) == 1
    assert dataset.skipped == {
        "same_responses": 1,
        "empty_field": 1,
        "bad_field": 1,
        "bad_messages": 1,
        "invalid_json": 1,
    }
    assert "skipped 5 of 6 rows" in caplog.text and "line 2 (same_responses" in caplog.text
    with pytest.raises(DataError, match=r"pairs.jsonl: line 2: chosen and rejected responses are identical"):
        load_pairs(DataConfig(path=path, format="pairs", invalid_rows="error"), tiny_tokenizer)


def test_missing_column_names_the_key(tmp_path, tiny_tokenizer):
    path = write(tmp_path, [{"prompt": "say 7", "chosen": "77", "worse": "12"}])
    with pytest.raises(DataError, match=r"data.rejected_field: 'rejected' is not a column"):
        load_pairs(DataConfig(path=path, format="pairs"), tiny_tokenizer)


def test_long_responses_are_truncated_and_fingerprint_covers_responses(tmp_path, tiny_tokenizer, caplog):
    path = write(tmp_path, [{"prompt": "say 7", "chosen": "7" * 40, "rejected": "12"}])
    with caplog.at_level(logging.WARNING):
        dataset = load_pairs(DataConfig(path=path, format="pairs", max_response_tokens=8), tiny_tokenizer)
    assert len(dataset.rows[0]["chosen_ids"]) == 8
    assert "truncated 1 response(s)" in caplog.text
    other = write(tmp_path, [{"prompt": "say 7", "chosen": "7" * 40, "rejected": "13"}], "other.jsonl")
    changed = load_pairs(DataConfig(path=other, format="pairs", source="pairs"), tiny_tokenizer)
    assert changed.fingerprint() != dataset.fingerprint()

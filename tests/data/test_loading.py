"""rlvr.data.loading: reading prompt files, row validation and prompt rendering."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from datasets import Dataset

from rlvr.data import DataConfig, PromptDataset, load_prompts

ROOT = Path(__file__).resolve().parents[2]

GOOD = [
    {"prompt": "What is 2 + 2?", "answer": "4", "kind": "add"},
    {"prompt": "What is 3 + 4?", "answer": 7, "kind": "add"},
    {"prompt": "What is 9 - 4?", "answer": "5", "kind": "sub"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def messy_file(tmp_path) -> Path:
    rows = [
        GOOD[0],
        {"prompt": "What is 1 + 1?"},  # 1: answer missing
        {"prompt": "", "answer": "3"},  # 2: empty prompt
        {"prompt": 12, "answer": "3"},  # 3: prompt is not a string
        GOOD[1],
        {"prompt": "x" * 400, "answer": "1"},  # 5: too long
        {"prompt": "What is 5 + 5?", "answer": None},  # 6: answer null
        GOOD[2],
    ]
    return write_jsonl(tmp_path / "messy.jsonl", rows)


def test_invalid_rows_are_skipped_and_reported(messy_file, tiny_tokenizer, caplog):
    cfg = DataConfig(path=str(messy_file), max_prompt_tokens=300)
    with caplog.at_level(logging.WARNING, logger="rlvr.data.loading"):
        data = load_prompts(cfg, tiny_tokenizer)
    assert isinstance(data, PromptDataset) and len(data) == 3
    assert [row["index"] for row in data] == [0, 4, 7]
    assert [row["answer"] for row in data] == ["4", "7", "5"]
    assert data.skipped == {"missing_answer": 2, "empty_prompt": 1, "prompt_not_string": 1, "too_long": 1}
    (record,) = [r for r in caplog.records if r.name == "rlvr.data.loading"]
    message = record.getMessage()
    assert "skipped 5 of 8 rows" in message and str(messy_file) in message
    for part in ("missing_answer=2", "empty_prompt=1", "prompt_not_string=1", "too_long=1"):
        assert part in message
    assert "row 1 (missing_answer" in message and "row 2 (empty_prompt" in message
    assert "row 3 (prompt_not_string" in message and "row 5" not in message  # only the first 3 examples


def test_invalid_rows_error_mode_names_file_row_and_field(messy_file, tiny_tokenizer):
    cfg = DataConfig(path=str(messy_file), invalid_rows="error")
    with pytest.raises(
        ValueError, match=r"messy\.jsonl, row 1: field 'answer' is missing; expected a non-empty"
    ):
        load_prompts(cfg, tiny_tokenizer)


def test_too_long_error_mode(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "long.jsonl", [GOOD[0], {"prompt": "y" * 100, "answer": "1"}])
    cfg = DataConfig(path=str(path), invalid_rows="error", max_prompt_tokens=90)
    with pytest.raises(ValueError, match=r"row 1: rendered prompt has \d+ tokens; expected at most 90"):
        load_prompts(cfg, tiny_tokenizer)


def test_no_valid_rows_always_raises(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "", "answer": "1"}, {"prompt": "q", "answer": ""}])
    with pytest.raises(ValueError, match="no valid prompt rows"):
        load_prompts(DataConfig(path=str(path)), tiny_tokenizer)


def test_chat_template_and_system_prompt(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", GOOD)
    cfg = DataConfig(path=str(path), system_prompt="Be brief.", prompt_template="{prompt} Give a number.")
    row = load_prompts(cfg, tiny_tokenizer)[0]
    assert row["prompt"] == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2? Give a number.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert row["prompt_ids"] == tiny_tokenizer(row["prompt"], add_special_tokens=False).input_ids
    assert row["kind"] == "add" and row["answer"] == "4" and row["index"] == 0


def test_raw_prompt_without_chat_template(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", GOOD)
    cfg = DataConfig(path=str(path), chat_template=False, prompt_template="Q: {prompt} ({kind})\nA:")
    row = load_prompts(cfg, tiny_tokenizer)[1]
    assert row["prompt"] == "Q: What is 3 + 4? (add)\nA:"
    assert tiny_tokenizer.decode(row["prompt_ids"]) == row["prompt"]


def test_bad_template_is_a_config_error(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", GOOD)
    with pytest.raises(ValueError, match="data.prompt_template"):
        load_prompts(DataConfig(path=str(path), prompt_template="{question}"), tiny_tokenizer)


def test_missing_column_and_missing_file(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", GOOD)
    with pytest.raises(ValueError, match="data.answer_field 'solution' is not a column"):
        load_prompts(DataConfig(path=str(path), answer_field="solution"), tiny_tokenizer)
    with pytest.raises(FileNotFoundError, match=r"data.path: .*nope\.jsonl does not exist"):
        load_prompts(DataConfig(path=str(tmp_path / "nope.jsonl")), tiny_tokenizer)


def test_parquet_and_json_files(tmp_path, tiny_tokenizer):
    rows = [{"question": r["prompt"], "solution": r["answer"]} for r in GOOD]
    rows[1]["solution"] = 7.0  # numbers become plain strings
    Dataset.from_list([{**r, "solution": float(r["solution"])} for r in rows]).to_parquet(
        tmp_path / "p.parquet"
    )
    (tmp_path / "p.json").write_text(json.dumps(rows))
    for name in ("p.parquet", "p.json"):
        cfg = DataConfig(path=str(tmp_path / name), prompt_field="question", answer_field="solution")
        data = load_prompts(cfg, tiny_tokenizer)
        assert [row["answer"] for row in data] == ["4", "7", "5"], name
        assert data[2]["question"] == "What is 9 - 4?"


def test_folder_with_splits_and_limit(tmp_path, tiny_tokenizer):
    write_jsonl(tmp_path / "train.jsonl", GOOD)
    write_jsonl(tmp_path / "test.jsonl", GOOD[:1])
    assert len(load_prompts(DataConfig(path=str(tmp_path)), tiny_tokenizer)) == 3
    assert len(load_prompts(DataConfig(path=str(tmp_path), split="test"), tiny_tokenizer)) == 1
    assert len(load_prompts(DataConfig(path=str(tmp_path), limit=2), tiny_tokenizer)) == 2


def test_arithmetic_data_loads(tiny_tokenizer):
    cfg = DataConfig(path=str(ROOT / "data/arithmetic/test.jsonl"), prompt_field="question")
    data = load_prompts(cfg, tiny_tokenizer)
    assert len(data) == 200 and not data.skipped
    assert {row["kind"] for row in data} == {"add", "sub", "word_add", "word_sub"}

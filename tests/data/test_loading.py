"""rlvr.data.loading: reading prompt files, row validation and prompt rendering."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import pytest
from datasets import Dataset

from rlvr.config import RecipeError
from rlvr.data import DataConfig, DataError, PromptDataset, load_prompts
from rlvr.data.loading import check_data_file

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
    assert [row["prompt_id"] for row in data] == [0, 1, 2]  # positions in the dataset: stats keys
    assert {row["data_source"] for row in data} == {"messy"}
    assert [row["answer"] for row in data] == ["4", "7", "5"]
    assert data.skipped == {"missing_answer": 2, "empty_prompt": 1, "prompt_not_string": 1, "too_long": 1}
    (record,) = [r for r in caplog.records if r.name == "rlvr.data.loading"]
    message = record.getMessage()
    assert "skipped 5 of 8 rows" in message and str(messy_file) in message
    for part in ("missing_answer=2", "empty_prompt=1", "prompt_not_string=1", "too_long=1"):
        assert part in message
    # .jsonl rows are named by their line number (row 1 is line 2)
    assert "line 2 (missing_answer" in message and "line 3 (empty_prompt" in message
    assert "line 4 (prompt_not_string" in message and "line 6" not in message  # only the first 3 examples


def test_invalid_rows_error_mode_names_file_row_and_field(messy_file, tiny_tokenizer):
    cfg = DataConfig(path=str(messy_file), invalid_rows="error")
    with pytest.raises(
        DataError, match=r"messy\.jsonl: line 2: field 'answer' is missing; expected a non-empty"
    ) as err:
        load_prompts(cfg, tiny_tokenizer)
    assert "(data.invalid_rows: error)" in str(err.value)
    assert isinstance(err.value, RecipeError)  # rlvr train reports it in one line, exit code 2


def test_too_long_error_mode(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "long.jsonl", [GOOD[0], {"prompt": "y" * 100, "answer": "1"}])
    cfg = DataConfig(path=str(path), invalid_rows="error", max_prompt_tokens=90)
    with pytest.raises(DataError, match=r"line 2: rendered prompt has \d+ tokens; expected at most 90"):
        load_prompts(cfg, tiny_tokenizer)


def test_no_valid_rows_always_raises(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "", "answer": "1"}, {"prompt": "q", "answer": ""}])
    with pytest.raises(DataError, match="no valid prompt rows") as err:
        load_prompts(DataConfig(path=str(path)), tiny_tokenizer)
    message = str(err.value)
    assert message.startswith(f"{path}: no valid prompt rows: all 2 were invalid")
    assert "empty_answer=1, empty_prompt=1" in message and "line 1 (empty_prompt" in message


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


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "{question}",
            r"'\{question\}' uses \{question\}, which is not a row field \(fields: prompt, answer, kind\)",
        ),
        ("{prompt} {kind.x[0]} {nope}", r"'.*' uses \{nope\}, which is not a row field"),
        ("{prompt", r"'\{prompt' is not a valid format string \(expected '\}' before end of string\)"),
        ("{prompt} }", r"'.*' is not a valid format string \(Single '\}' encountered"),
        ("{} {prompt}", r"'.*' has a positional field \{\}"),
    ],
)
def test_bad_template_is_a_config_error(tmp_path, tiny_tokenizer, template, message):
    path = write_jsonl(tmp_path / "p.jsonl", GOOD)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: data\.prompt_template: {message}"):
        load_prompts(DataConfig(path=str(path), prompt_template=template), tiny_tokenizer)


def test_missing_column_and_missing_file(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", GOOD)
    with pytest.raises(
        DataError,
        match=r"p\.jsonl: data\.answer_field: 'solution' is not a column \(columns: prompt, answer, kind\); "
        "set data.answer_field to the column holding the gold answer",
    ):
        load_prompts(DataConfig(path=str(path), answer_field="solution"), tiny_tokenizer)
    with pytest.raises(DataError, match=r"data\.prompt_field: 'question' is not a column"):
        load_prompts(DataConfig(path=str(path), prompt_field="question"), tiny_tokenizer)
    with pytest.raises(DataError, match=r"nope\.jsonl: data\.path: file not found"):
        load_prompts(DataConfig(path=str(tmp_path / "nope.jsonl")), tiny_tokenizer)
    (tmp_path / "p.csv").write_text("prompt,answer\n")
    with pytest.raises(DataError, match=r"p\.csv: data\.path: unsupported file type '\.csv'"):
        load_prompts(DataConfig(path=str(tmp_path / "p.csv")), tiny_tokenizer)


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


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.parquet"])
def test_empty_data_file(tmp_path, tiny_tokenizer, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        Dataset.from_dict({"prompt": [], "answer": []}).to_parquet(path)
    else:
        path.write_text("\n\n" if name.endswith(".jsonl") else "[]")
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}: holds no rows; expected one JSON object per line"
    ):
        load_prompts(DataConfig(path=str(path)), tiny_tokenizer)


def test_invalid_json_line_is_a_bad_row_with_its_line_number(tmp_path, tiny_tokenizer, caplog):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps(GOOD[0]),
        "",
        '{"prompt": "What is 1 + 1?", "answer": "2"',
        "[1, 2]",
        json.dumps(GOOD[1]),
    ]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="rlvr.data.loading"):
        data = load_prompts(DataConfig(path=str(path)), tiny_tokenizer)  # invalid_rows: skip
    assert [row["answer"] for row in data] == ["4", "7"] and data.skipped == {"invalid_json": 2}
    message = caplog.records[-1].getMessage()
    assert "skipped 2 of 4 rows" in message and "invalid_json=2" in message
    assert "line 3 (invalid_json: not valid JSON (Expecting ',' delimiter at column 43))" in message
    assert "line 4 (invalid_json: expected a JSON object, got a JSON list)" in message
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}: line 3: not valid JSON \(Expecting ',' delimiter"
    ):
        load_prompts(DataConfig(path=str(path), invalid_rows="error"), tiny_tokenizer)
    # json's own limits (an integer of 5000 digits, very deep nesting) are bad rows too, not tracebacks
    path.write_text(json.dumps(GOOD[0]) + '\n{"answer": ' + "9" * 5000 + "}\n" + "[" * 100000 + "\n")
    data = load_prompts(DataConfig(path=str(path)), tiny_tokenizer)
    assert len(data) == 1 and data.skipped == {"invalid_json": 2}


def test_unreachable_hub_dataset_is_a_data_error(tiny_tokenizer):
    # the tests run offline (conftest): the hub lookup fails, and says so in one message
    with pytest.raises(
        DataError, match=r"^no-such-org/no-such-set \[train\]: data\.path is not a local file"
    ):
        load_prompts(DataConfig(path="no-such-org/no-such-set"), tiny_tokenizer)


def test_check_data_file_reads_only_the_first_rows(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "What is 2 + 2?", "answer": "4"}] * 30)
    with path.open("a") as f:  # past the rows the check reads: loading reports it, the check never sees it
        f.write("{not json\n")
    key, message = check_data_file(DataConfig(path=str(path)))
    assert key == "data.prompt_field"
    assert message == (
        f"'prompt' is not a column (columns: question, answer); set data.prompt_field to the column holding "
        f"the prompt (in {path})"
    )
    assert check_data_file(DataConfig(path=str(path), prompt_field="question")) is None
    key, message = check_data_file(DataConfig(path=str(path), prompt_field="question", prompt_template="{q}"))
    assert key == "data.prompt_template" and "uses {q}, which is not a row field" in message
    (tmp_path / "e.jsonl").write_text("")
    assert check_data_file(DataConfig(path=str(tmp_path / "e.jsonl"))) == (
        "data.path",
        f"{tmp_path / 'e.jsonl'} holds no rows; expected one JSON object per line (.jsonl), a JSON list of "
        "objects (.json) or a table (.parquet)",
    )
    Dataset.from_list([{"question": "q", "answer": "1"}]).to_parquet(tmp_path / "q.parquet")
    assert check_data_file(DataConfig(path=str(tmp_path / "q.parquet")))[0] == "data.prompt_field"
    assert check_data_file(DataConfig(path="org/hub-name")) is None  # not checked when the recipe loads


def test_data_source_comes_from_the_recipe_the_row_or_the_file_name(tmp_path, tiny_tokenizer):
    path = tmp_path / "mix.jsonl.gz"
    rows = [{**GOOD[0], "data_source": "gsm"}, GOOD[1], {**GOOD[2], "data_source": ""}]
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    data = load_prompts(DataConfig(path=str(path)), tiny_tokenizer)
    assert [row["data_source"] for row in data] == ["gsm", "mix", "mix"]
    named = load_prompts(DataConfig(path=str(path), source="arith"), tiny_tokenizer)
    assert [row["data_source"] for row in named] == ["arith"] * 3


def test_several_sources_concatenate_with_their_own_fields_and_names(tmp_path, tiny_tokenizer):
    from rlvr.config import DataSourceConfig

    first = write_jsonl(tmp_path / "a.jsonl", GOOD[:2])
    second = write_jsonl(tmp_path / "b.jsonl", [{"q": "What is 1 + 8?", "gold": 9}, {"q": "", "gold": 1}])
    cfg = DataConfig(
        sources=[
            DataSourceConfig(path=str(first), columns={"difficulty": 1}),
            DataSourceConfig(path=str(second), name="other", prompt_field="q", answer_field="gold"),
            DataSourceConfig(
                task="basic_arithmetic",
                name="rg",
                size=3,
                seed=4,
                config={"max_terms": 2, "max_digits": 1},
                columns={"difficulty": 2},
            ),
        ]
    )
    data = load_prompts(cfg, tiny_tokenizer)
    assert [row["data_source"] for row in data] == ["a", "a", "other", "rg", "rg", "rg"]
    assert [row["prompt_id"] for row in data] == list(range(6))
    assert [row.get("difficulty") for row in data] == [1, 1, None, 2, 2, 2]
    assert data[2]["answer"] == "9" and "What is 1 + 8?" in data[2]["prompt"]
    assert data.skipped == {"empty_prompt": 1}
    task_row = data[3]
    assert task_row["task"] == "basic_arithmetic" and task_row["metadata"]["num_terms"] == 2
    assert task_row["prompt"].count("Calculate") == 1  # the question went into the prompt field
    again = load_prompts(cfg, tiny_tokenizer)  # generation is deterministic given the seed
    assert [row["prompt"] for row in again] == [row["prompt"] for row in data]


def test_a_source_error_names_the_source_key(tmp_path, tiny_tokenizer):
    from rlvr.config import DataSourceConfig

    good = write_jsonl(tmp_path / "a.jsonl", GOOD)
    cfg = DataConfig(
        sources=[DataSourceConfig(path=str(good)), DataSourceConfig(path=str(good), prompt_field="question")]
    )
    with pytest.raises(DataError, match=r"data\.sources\[1\]\.prompt_field: 'question' is not a column"):
        load_prompts(cfg, tiny_tokenizer)

"""From data config to splits: one file carved by ratios, or separate files, in any supported format."""

from __future__ import annotations

import json

import pandas as pd

from tunesmith.config import DataConfig
from tunesmith.data.prepare import prepare_splits as _prepare_splits
from tunesmith.tasks import chat


def prepare_splits(cfg, seed):
    return _prepare_splits(cfg, seed, chat.normalise)


def write_jsonl(path, n, offset=0):
    path.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(offset, offset + n))
    )
    return str(path)


def test_one_file_is_carved_by_ratios_and_seed(tmp_path):
    cfg = DataConfig(train=write_jsonl(tmp_path / "all.jsonl", 50), split=(0.8, 0.1, 0.1))
    first, again = prepare_splits(cfg, seed=1), prepare_splits(cfg, seed=1)
    assert (len(first.train), len(first.validation), len(first.test)) == (40, 5, 5)
    assert [e.messages for e in first.test] == [e.messages for e in again.test]
    other = prepare_splits(cfg, seed=2)
    assert [e.messages for e in other.test] != [e.messages for e in first.test]
    assert first.format == "prompt_completion"


def test_separate_files_are_used_as_given(tmp_path):
    cfg = DataConfig(
        train=write_jsonl(tmp_path / "t.jsonl", 20),
        validation=write_jsonl(tmp_path / "v.jsonl", 5, 100),  # 5: fewer is refused as too small to measure
        test=write_jsonl(tmp_path / "s.jsonl", 6, 200),
    )
    splits = prepare_splits(cfg, seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (20, 5, 6)


def test_missing_test_file_is_carved_from_train_only(tmp_path):
    cfg = DataConfig(train=write_jsonl(tmp_path / "t.jsonl", 90), validation=write_jsonl(tmp_path / "v.jsonl", 7, 100))
    splits = prepare_splits(cfg, seed=0)
    # test takes 0.1 / (0.8 + 0.1) of train
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (80, 7, 10)


def test_csv_with_column_mapping_and_system_prompt(tmp_path):
    path = tmp_path / "qa.csv"
    pd.DataFrame({"question": [f"q{i}" for i in range(10)], "answer": [f"a{i}" for i in range(10)]}).to_csv(
        path, index=False
    )
    cfg = DataConfig(
        train=str(path),
        columns={"prompt": "question", "completion": "answer"},
        system_prompt="Be brief.",
        split=(1.0, 0.0, 0.0),
    )
    splits = prepare_splits(cfg, seed=0)
    assert len(splits.train) == 10 and not splits.validation and not splits.test
    roles = [m["role"] for m in splits.train[0].messages]
    assert roles == ["system", "user", "assistant"]


def test_chat_runs_split_with_the_plain_seeded_shuffle(tmp_path):
    """Chat data is not stratified: the run's split is exactly split_examples' seeded shuffle."""
    from tunesmith.config import load_config
    from tunesmith.data.readers import read_records
    from tunesmith.data.split import split_examples
    from tunesmith.pipeline import read_splits

    path = write_jsonl(tmp_path / "all.jsonl", 50)
    config = load_config(None, [f"data.train={path}", "seed=3"])
    examples, _ = chat.normalise(read_records(path), config.data)
    expected = split_examples(examples, (0.8, 0.1, 0.1), 3)
    assert [e.messages for e in read_splits(config).test] == [e.messages for e in expected["test"]]

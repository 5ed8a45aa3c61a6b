"""Issue 15, a newcomer's first hour, data half: what used to pass silently, or was named wrongly.

Which file each split was read from; empty answers, records shared between splits and splits too small
to measure anything; and the wording of CSV, encoding and max_length errors.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from conftest import EXAMPLES, SUPPORT_DATA

from tunesmith.config import DataConfig, load_config
from tunesmith.data.formats import missing_column_error, normalise
from tunesmith.data.prepare import prepare_splits as _prepare_splits
from tunesmith.data.readers import read_records
from tunesmith.errors import TunesmithError
from tunesmith.tasks import chat


def prepare_splits(cfg, seed=0, task=chat):
    return _prepare_splits(cfg, seed, task.normalise, task.stratify_key)


def turns(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})


def write_chat(path, n, offset=0, extra=()):
    lines = [turns(f"question {i}", f"answer {i}") for i in range(offset, offset + n)] + list(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


# --- 1. Which file each split came from -----------------------------------------------------------


def test_the_report_names_each_splits_absolute_source_and_its_records(make_config, tmp_path, monkeypatch):
    from tunesmith import pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chat.jsonl").write_text("\n".join(SUPPORT_DATA.read_text().splitlines()[:60]) + "\n")
    (tmp_path / "data" / "val.jsonl").write_text("\n".join(SUPPORT_DATA.read_text().splitlines()[60:90]) + "\n")
    report = pipeline.validate(make_config("data.train=data/chat.jsonl", "data.validation=data/val.jsonl"))
    rows = {line.split()[0]: line for line in report.splitlines() if re.match(r"(train|validation|test) +\d+ +/", line)}
    train_file, val_file = str(tmp_path / "data" / "chat.jsonl"), str(tmp_path / "data" / "val.jsonl")
    # test is carved out of train's 60 records by data.split (0.1 of 0.9: 7), validation is its own file.
    assert re.match(rf"train +53 +{re.escape(train_file)} \(60 records, 7 of them carved into test\)", rows["train"])
    assert re.match(rf"validation +30 +{re.escape(val_file)}$", rows["validation"])
    assert re.match(rf"test +7 +{re.escape(train_file)} \(carved out by data.split\)", rows["test"])


def test_the_run_records_its_sources(tmp_path):
    path = write_chat(tmp_path / "chat.jsonl", 50)
    report = prepare_splits(DataConfig(train=str(path))).report()
    assert report["sources"]["train"] == {"path": str(path), "read": 50, "carved": False}
    assert report["sources"]["test"] == {"path": str(path), "read": 50, "carved": True}


def test_a_missing_file_names_the_path_tried_and_where_relative_paths_start(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(TunesmithError) as info:
        read_records("data/trian.jsonl")
    assert str(tmp_path / "data" / "trian.jsonl") in info.value.message
    assert "config file's folder" in info.value.fix and "--set" in info.value.fix
    assert str(tmp_path) + "\n" not in info.value.render() + "\n"  # no longer "resolved from <cwd>"
    with pytest.raises(TunesmithError, match="does not exist either") as info:
        read_records("nowhere/train.jsonl")
    assert str(tmp_path / "nowhere" / "train.jsonl") in info.value.message


# --- 2a. Empty answers -----------------------------------------------------------------------------


def test_empty_assistant_answers_are_bad_records(tmp_path, capsys):
    lines = [turns(f"q{i}", f"a{i}") for i in range(40)]
    for at, empty in ((4, ""), (16, "   \n"), (29, "")):  # file lines 5, 17, 30
        lines.insert(at, turns(f"empty {at}", empty))
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")

    with pytest.raises(TunesmithError) as info:
        prepare_splits(DataConfig(train=str(path)))
    err = info.value
    assert err.where == f"{path}:5" and "answer 1 is empty" in err.message
    assert f"3 records have one, at {path}: 5, 17, 30" in err.message
    assert "data.on_bad_record: skip" in err.fix

    splits = prepare_splits(DataConfig(train=str(path), on_bad_record="skip", split=(1.0, 0.0, 0.0)))
    assert len(splits.train) == 40 and splits.report()["skipped"] == 3
    out = capsys.readouterr().out
    assert "skipped 3 bad record(s)" in out and f"{path}:17: assistant answer 1 is empty" in out


def test_an_empty_answer_in_a_test_file_is_named_too(tmp_path):
    train = write_chat(tmp_path / "train.jsonl", 40)
    test = write_chat(tmp_path / "test.jsonl", 6, 100, extra=[turns("q", "")])
    with pytest.raises(TunesmithError, match="is empty") as info:
        prepare_splits(DataConfig(train=str(train), test=str(test), split=(1.0, 0.0, 0.0)))
    assert info.value.where == f"{test}:7"
    # Under skip a file whose every answer is empty is refused, never quietly turned into no test split.
    hollow = tmp_path / "hollow.jsonl"
    hollow.write_text("".join(turns(f"q{i}", " ") + "\n" for i in range(6)))
    cfg = DataConfig(train=str(train), test=str(hollow), split=(1.0, 0.0, 0.0), on_bad_record="skip")
    with pytest.raises(TunesmithError, match="no records left") as info:
        prepare_splits(cfg)
    assert info.value.where == str(hollow)


# --- 2b. The same record in two splits -------------------------------------------------------------


def test_records_of_the_test_file_that_are_also_in_train_are_warned(tmp_path, capsys):
    train = write_chat(tmp_path / "train.jsonl", 40)
    test = write_chat(
        tmp_path / "test.jsonl", 6, 100, extra=[turns("question 7", "answer 7"), turns("question 3", "answer 3")]
    )
    splits = prepare_splits(DataConfig(train=str(train), test=str(test), split=(1.0, 0.0, 0.0)))
    warned = capsys.readouterr().err
    assert f"2 records of the test split also appear in the train split (e.g. {test}:7 = {train}:8)" in warned, warned
    assert f"remove them from one of the files ({test})" in warned
    assert any("test split also appear in the train split" in w for w in splits.report()["warnings"])


def test_repeats_carved_into_two_splits_and_within_train_are_warned(tmp_path, capsys):
    lines = [turns(f"question {i}", f"answer {i}") for i in range(50)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines + lines) + "\n")  # every record twice: an export appended to itself
    splits = prepare_splits(DataConfig(train=str(path)))
    warned = capsys.readouterr().err

    def key(e):
        return json.dumps(e.messages)

    train = {key(e) for e in splits.train}
    for name in ("validation", "test"):
        leaked = sum(key(e) in train for e in getattr(splits, name))
        assert leaked, "the seed carves some repeated records apart"
        assert f"{leaked} record{'s' if leaked != 1 else ''} of the {name} split also appear" in warned, warned
    within = len(splits.train) - len(train)
    assert f"the train split holds {within} records that repeat an earlier one" in warned
    assert f"remove the repeated records from {path}" in warned


def test_classification_repeats_are_found_by_their_normalised_text(tmp_path, capsys):
    from tunesmith.tasks import text_classification

    rows = [{"text": f"package number {i}", "label": "ab"[i % 2]} for i in range(40)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = [{"text": f"held out {i}", "label": "ab"[i % 2]} for i in range(6)] + [rows[5]]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    cfg = DataConfig(train=str(tmp_path / "train.jsonl"), test=str(tmp_path / "test.jsonl"), split=(1.0, 0.0, 0.0))
    prepare_splits(cfg, task=text_classification)
    assert "1 record of the test split also appears in the train split" in capsys.readouterr().err


def test_the_quickstart_data_reads_without_a_warning(capsys):
    config = load_config(EXAMPLES / "quickstart.yaml")
    splits = prepare_splits(config.data, config.seed)
    assert splits.warnings == [] and "warning" not in capsys.readouterr().err
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (320, 40, 40)


# --- 2c. Splits too small to measure anything ------------------------------------------------------


def test_a_carved_split_of_one_record_is_refused_with_the_ways_out(tmp_path):
    path = write_chat(tmp_path / "chat.jsonl", 12)  # 0.8/0.1/0.1 of 12: 10, 1, 1
    with pytest.raises(TunesmithError) as info:
        prepare_splits(DataConfig(train=str(path)))
    err = info.value
    assert err.where == "data.split"
    assert err.message.startswith(
        f"the validation split has 1 record (carved by data.split out of the 12 records of {path})"
    )
    assert "steps of 100 points" in err.message
    assert "at least 5 records" in err.fix
    assert "about 50 records in all" in err.fix  # 5 / 0.1
    assert "raise the share" not in err.fix  # 0.42 for validation would leave train under half the data
    assert "set the validation and test shares in data.split to 0" in err.fix

    bigger = write_chat(tmp_path / "more.jsonl", 40)  # 0.1 of 40 is 4: one short, in both
    with pytest.raises(TunesmithError) as info:
        prepare_splits(DataConfig(train=str(bigger)))
    assert "; the test split has 4 records" in info.value.message and "steps of 25 points" in info.value.message
    assert "raise the shares: data.split: [0.74, 0.13, 0.13]" in info.value.fix
    splits = prepare_splits(DataConfig(train=str(bigger), split=(0.74, 0.13, 0.13)))  # the shares offered do it
    assert (len(splits.validation), len(splits.test)) == (5, 5)


def test_a_split_of_zero_is_no_split_and_never_refused(tmp_path):
    path = write_chat(tmp_path / "chat.jsonl", 12)
    splits = prepare_splits(DataConfig(train=str(path), split=(1.0, 0.0, 0.0)))
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (12, 0, 0) and not splits.warnings


def test_a_validation_file_too_small_is_refused(tmp_path):
    train = write_chat(tmp_path / "train.jsonl", 40)
    validation = write_chat(tmp_path / "val.jsonl", 2, 100)
    with pytest.raises(TunesmithError) as info:
        prepare_splits(DataConfig(train=str(train), validation=str(validation), split=(1.0, 0.0, 0.0)))
    assert info.value.where == "data.validation"
    assert f"the validation split has 2 records (the file {validation})" in info.value.message
    assert "steps of 50 points" in info.value.message and "add records to data.validation" in info.value.fix


def test_a_small_split_is_warned_with_its_uncertainty(tmp_path, capsys):
    path = write_chat(tmp_path / "chat.jsonl", 100)  # 80 / 10 / 10
    splits = prepare_splits(DataConfig(train=str(path)))
    warned = capsys.readouterr().err
    # The standard error of a 50% score on 10 records: 50 / sqrt(10) = 15.8 points.
    assert "warning: the validation split has only 10 records" in warned and "+-16 points" in warned
    assert "30 or more bring that under +-9" in warned and len(splits.warnings) == 2


def test_generated_image_splits_of_a_few_images_are_not_refused(tmp_path):
    """Text-to-image scores held-out images by a deterministic denoising loss, not by counting right answers."""
    from tunesmith.data.captions import CaptionedImage
    from tunesmith.data.split import held_out_minimums

    assert held_out_minimums(CaptionedImage("a.png", "a.png", "a cat")) == (1, 1)


def test_small_split_messages_name_the_limits_of_the_example_type_checked(tmp_path, capsys):
    """An example type with its own held_out_minimums is warned and refused with its limits, not the defaults."""
    from dataclasses import dataclass
    from typing import ClassVar

    from tunesmith.data.formats import Example

    @dataclass
    class StrictExample(Example):
        held_out_minimums: ClassVar[tuple[int, int]] = (8, 50)

    class StrictTask:
        stratify_key = None

        @staticmethod
        def normalise(records, data_cfg):
            examples, fmt = chat.normalise(records, data_cfg)
            return [StrictExample(**vars(e)) for e in examples], fmt

    splits = prepare_splits(DataConfig(train=str(write_chat(tmp_path / "chat.jsonl", 100))), task=StrictTask)
    warned = capsys.readouterr().err
    assert "the validation split has only 10 records" in warned and len(splits.warnings) == 2
    assert "50 or more bring that under +-7" in warned and "30 or more" not in warned  # 50 / sqrt(50) = 7.1
    with pytest.raises(TunesmithError) as info:
        prepare_splits(DataConfig(train=str(write_chat(tmp_path / "few.jsonl", 60))), task=StrictTask)  # 6 and 6
    assert "at least 8 records (50 or more for a score within +-7 points)" in info.value.fix


# --- 5. Wording --------------------------------------------------------------------------------------


def test_a_csv_column_problem_is_named_at_the_header_line_with_the_mapping(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text("prompt,response\nhi,hello\nbye,see you\n")
    with pytest.raises(TunesmithError) as info:
        normalise(read_records(path), fmt="prompt_completion")
    assert info.value.where == f"{path}:1" and "the header has no 'completion' column" in info.value.message
    assert "data.columns: {completion: response}" in info.value.fix
    with pytest.raises(TunesmithError, match="cannot tell the data format") as info:
        normalise(read_records(path))
    assert info.value.where == f"{path}:1" and "data.columns: {completion: response}" in info.value.fix


def test_a_label_column_under_another_name_is_suggested(tmp_path):
    path = tmp_path / "tickets.csv"
    path.write_text("text,category\nmy card was charged twice,billing\n")
    record = read_records(path)[0]
    err = missing_column_error(record, "label", "label", needed_by="text classification", taken={"text"})
    assert err.where == f"{path}:1" and "columns are: text, category" in err.message
    assert "data.columns: {label: category}" in err.fix
    # The one column no other role reads, whatever its name; a JSON record only by a familiar name.
    record = read_records(_write(tmp_path / "odd.csv", "text,kind_of_ticket\nx,y\n"))[0]
    assert (
        "{label: kind_of_ticket}" in missing_column_error(record, "label", "label", needed_by="t", taken={"text"}).fix
    )
    record = read_records(_write(tmp_path / "t.jsonl", '{"body": "x", "category": "y"}\n'))[0]
    err = missing_column_error(record, "label", "label", needed_by="t", taken={"text"})
    assert err.where == f"{tmp_path / 't.jsonl'}:1" and "data.columns: {label: category}" in err.fix


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "said", "fix"),
    [
        ("semi.csv", "question;answer\nhi;hello\n", "separated by semicolons, not commas", "separated by commas"),
        ("tabs.csv", "question\tanswer\nhi\thello\n", "separated by tabs, not commas", "rename the file to .tsv"),
        ("commas.tsv", "question,answer\nhi,hello\n", "separated by commas, not tabs", "rename the file to .csv"),
    ],
)
def test_a_table_with_another_delimiter_is_named(tmp_path, name, text, said, fix):
    path = _write(tmp_path / name, text)
    with pytest.raises(TunesmithError) as info:
        read_records(path)
    assert info.value.where == f"{path}:1" and said in info.value.message
    assert "question, answer" in info.value.message and fix in info.value.fix


def test_windows_1252_text_is_named_as_cp1252(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_bytes("prompt,completion\n\u201cQuoted\u201d \u2013 text,ok\n".encode("cp1252"))
    with pytest.raises(TunesmithError) as info:
        read_records(path)
    err = info.value
    assert err.where == f"{path}:2" and "Windows-1252 (cp1252)" in err.message and "'\u201c'" in err.message
    assert f"iconv -f cp1252 -t utf-8 {path} > {tmp_path / 'notes.utf8.csv'}" in err.fix
    assert "latin1" not in err.fix

    other = tmp_path / "other.csv"
    other.write_bytes(b"prompt,completion\n\x81x,y\n")  # 0x81 is no cp1252 character either
    with pytest.raises(TunesmithError) as info:
        read_records(other)
    assert "cp1252" not in info.value.render() and "iconv -f ENCODING" in info.value.fix


def test_a_prompt_longer_than_max_length_names_record_length_and_limit(tokenizer):
    from tunesmith.data.chat_template import encode_chat
    from tunesmith.data.formats import Example

    example = Example(
        where="data/chat.jsonl:7",
        messages=[{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "fine"}],
    )
    with pytest.raises(TunesmithError) as info:
        encode_chat(example, tokenizer, max_length=16)
    err = info.value
    assert err.where == "data/chat.jsonl:7"
    assert "longer than that" not in err.message
    length = encode_chat(example, tokenizer, max_length=512).full_length
    assert re.search(
        rf"this record is {length} tokens and its answer starts at token \d+, past data.max_length=16 ", err.message
    )
    assert f"at least {length}" in err.fix


def test_no_message_in_the_data_modules_says_resolved_from_the_working_directory():
    import tunesmith.data as data

    folder = os.path.dirname(data.__file__)
    for name in os.listdir(folder):
        if name.endswith(".py"):
            text = open(os.path.join(folder, name), encoding="utf-8").read()
            assert "resolved from {Path.cwd()}" not in text and "longer than that" not in text, name

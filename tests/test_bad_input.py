"""Bad input ends with one clear message naming the file, line or field and the fix, exit code 2."""

from __future__ import annotations

import json

import pytest

from tunesmith.cli import main


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture()
def config_file(tmp_path, tiny_llama_dir):
    def write(data_line_or_lines: list[str] | None = None, extra: str = "", data_path=None) -> str:
        data = data_path or tmp_path / "data.jsonl"
        if data_line_or_lines is not None:
            data.write_text("\n".join(data_line_or_lines) + "\n")
        path = tmp_path / "run.yaml"
        path.write_text(
            f"model:\n  name: {tiny_llama_dir}\ndata:\n  train: {data}\n  max_length: 256\n"
            f"output:\n  dir: {tmp_path / 'runs'}\n{extra}"
        )
        return str(path)

    return write


def good(i: int) -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})


def test_missing_data_file(config_file, tmp_path, capsys):
    assert run_cli("validate", config_file(None, data_path=tmp_path / "nope.jsonl")) == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "Traceback" not in err


def test_malformed_json_line_names_the_line(config_file, capsys):
    assert run_cli("validate", config_file([good(0), good(1), "{not json"])) == 2
    assert "data.jsonl:3" in capsys.readouterr().err


def test_missing_column_lists_columns_and_fix(config_file, capsys):
    assert run_cli("validate", config_file([json.dumps({"question": "q", "answer": "a"})] * 5)) == 2
    err = capsys.readouterr().err
    assert "question" in err and "data.columns" in err


def test_empty_dataset(config_file, capsys):
    assert run_cli("validate", config_file([""])) == 2
    assert "data.jsonl" in capsys.readouterr().err


def test_unknown_role(config_file, capsys):
    bad = json.dumps({"messages": [{"role": "customer", "content": "q"}, {"role": "assistant", "content": "a"}]})
    assert run_cli("validate", config_file([good(0), bad] + [good(i) for i in range(8)])) == 2
    err = capsys.readouterr().err
    assert "data.jsonl:2" in err and "customer" in err


def test_max_length_shorter_than_prompt(config_file, capsys):
    long = json.dumps({"messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "a"}]})
    # 50 records: 0.8/0.1/0.1 of fewer would carve validation and test too small to measure (refused first).
    assert run_cli("validate", config_file([long] + [good(i) for i in range(49)])) == 2
    err = capsys.readouterr().err
    assert "data.jsonl:1" in err and "data.max_length" in err


def test_method_that_does_not_fit_the_model(config_file, capsys):
    path = config_file(
        [good(i) for i in range(50)], "method:\n  name: freeze\n  freeze_train_top: 9\ntrain:\n  max_steps: 1\n"
    )
    assert run_cli("train", path) == 2
    err = capsys.readouterr().err
    assert "method.freeze_train_top" in err and "2 blocks" in err


def test_unknown_config_key(config_file, capsys):
    assert run_cli("validate", config_file([good(0)], "train:\n  lr: 0.1\n")) == 2
    assert "unknown key 'train.lr'" in capsys.readouterr().err


def test_unknown_model_reference(config_file, tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text("model:\n  name: ./no/such/model\n")
    assert run_cli("validate", path) == 2
    assert "model.name" in capsys.readouterr().err


def test_an_existing_run_directory_is_never_reused(tmp_path):
    from tunesmith.runs.rundir import RunDir

    first = RunDir.create(tmp_path, "same")
    (first.path / "keep.txt").write_text("mine")
    second = RunDir.create(tmp_path, "same")
    assert first.path != second.path
    assert (first.path / "keep.txt").read_text() == "mine"

"""Tests for tunesmith.data.readers: every source type and every user-fixable failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tunesmith.data import readers
from tunesmith.data.readers import RawRecord, read_records
from tunesmith.errors import TunesmithError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run from tmp_path so paths in messages are short and relative, as users type them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- JSONL --------------------------------------------------------------------------------------


def test_jsonl_reads_objects_and_skips_blank_lines(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"text": "a"}\n\n   \n{"text": "b"}\n')
    records = read_records(path)
    assert records == [
        RawRecord(fields={"text": "a"}, where=f"{path}:1"),
        RawRecord(fields={"text": "b"}, where=f"{path}:4"),
    ]


def test_jsonl_accepts_str_path_and_crlf(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"text": "a"}\r\n{"text": "b"}\r\n')
    records = read_records(str(path))
    assert [r.fields["text"] for r in records] == ["a", "b"]


def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    path = write(tmp_path / "train.jsonl", '{"text": "a\u2028b"}\n')
    assert read_records(path)[0].fields["text"] == "a\u2028b"


def test_jsonl_malformed_line_names_line_and_json_error(in_tmp):
    write(in_tmp / "train.jsonl", '{"text": "a"}\n{"text": "b"}\n{"text": "c",}\n')
    with pytest.raises(TunesmithError) as info:
        read_records("train.jsonl")
    err = info.value
    assert err.where == "train.jsonl:3"
    assert "train.jsonl:3" in str(err)
    assert "not valid JSON" in str(err)
    assert "each line must be one JSON object" in err.fix


def test_jsonl_line_that_is_not_an_object(in_tmp):
    write(in_tmp / "train.jsonl", '{"text": "a"}\n["text", "b"]\n')
    with pytest.raises(TunesmithError, match="train.jsonl:2") as info:
        read_records("train.jsonl")
    assert "list, not an object" in str(info.value)


def test_jsonl_empty_file_has_no_records(in_tmp):
    write(in_tmp / "train.jsonl", "\n\n")
    with pytest.raises(TunesmithError, match="no records") as info:
        read_records("train.jsonl")
    assert info.value.where == "train.jsonl"


def test_ndjson_is_read_as_jsonl(tmp_path):
    path = write(tmp_path / "train.ndjson", '{"text": "a"}\n')
    assert read_records(path)[0].fields == {"text": "a"}


# --- encodings ----------------------------------------------------------------------------------


def test_utf8_bom_is_tolerated(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + '{"text": "caf\u00e9"}\n'.encode())
    assert read_records(path)[0].fields == {"text": "caf\u00e9"}


def test_bom_csv_header_is_clean(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,completion\nq,a\n")
    assert read_records(path)[0].fields == {"prompt": "q", "completion": "a"}


def test_non_utf8_file_names_line_and_offset(in_tmp):
    (in_tmp / "train.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(TunesmithError) as info:
        read_records("train.jsonl")
    err = info.value
    assert err.where == "train.jsonl:2"
    assert "not UTF-8" in err.message
    assert "byte offset 28" in err.message  # 15 bytes of line 1 + 13 before the byte
    assert "UTF-8" in err.fix


def test_non_utf8_offset_counts_the_bom(in_tmp):
    (in_tmp / "train.csv").write_bytes(b"\xef\xbb\xbftext\n\xff\n")
    with pytest.raises(TunesmithError) as info:
        read_records("train.csv")
    assert "byte offset 8" in info.value.message
    assert info.value.where == "train.csv:2"


def test_utf16_file_is_named_as_such(in_tmp):
    write(in_tmp / "train.csv", "\ufefftext\nhello\n", encoding="utf-16-le")
    with pytest.raises(TunesmithError, match="UTF-16"):
        read_records("train.csv")


# --- JSON ---------------------------------------------------------------------------------------


def test_json_list_of_objects(tmp_path):
    path = write(tmp_path / "train.json", json.dumps([{"text": "a"}, {"text": "b"}]))
    records = read_records(path)
    assert [r.where for r in records] == [f"{path}:[0]", f"{path}:[1]"]
    assert records[1].fields == {"text": "b"}


def test_json_object_with_one_list_key(tmp_path):
    path = write(tmp_path / "train.json", json.dumps({"version": 2, "data": [{"text": "a"}]}))
    records = read_records(path)
    assert records == [RawRecord(fields={"text": "a"}, where=f"{path}:[0]")]


def test_json_item_not_an_object(in_tmp):
    write(in_tmp / "train.json", json.dumps([{"text": "a"}, "b"]))
    with pytest.raises(TunesmithError, match=r"train\.json:\[1\]"):
        read_records("train.json")


def test_json_syntax_error_names_line(in_tmp):
    write(in_tmp / "train.json", '[\n  {"text": "a"},\n  {"text": }\n]\n')
    with pytest.raises(TunesmithError) as info:
        read_records("train.json")
    assert info.value.where == "train.json:3"
    assert "not valid JSON" in info.value.message


def test_json_file_holding_json_lines_is_read_as_lines(tmp_path):
    path = write(tmp_path / "train.json", '{"text": "a"}\n{"text": "b"}\n')
    records = read_records(path)
    assert [r.where for r in records] == [f"{path}:1", f"{path}:2"]


def test_json_object_with_several_lists(in_tmp):
    write(in_tmp / "train.json", json.dumps({"train": [{"text": "a"}], "test": [{"text": "b"}]}))
    with pytest.raises(TunesmithError, match="several lists") as info:
        read_records("train.json")
    assert info.value.where == "train.json"


def test_json_single_conversation_object_is_not_unwrapped(in_tmp):
    write(in_tmp / "train.json", json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    with pytest.raises(TunesmithError, match="single record"):
        read_records("train.json")


def test_json_scalar_top_level(in_tmp):
    write(in_tmp / "train.json", '"hello"')
    with pytest.raises(TunesmithError, match="string, not a list"):
        read_records("train.json")


@pytest.mark.parametrize("content", ["", "[]", '{"data": []}'])
def test_json_without_records(in_tmp, content):
    write(in_tmp / "train.json", content)
    with pytest.raises(TunesmithError, match="no records"):
        read_records("train.json")


# --- CSV / TSV ----------------------------------------------------------------------------------


def test_csv_values_are_strings_and_lines_are_file_lines(tmp_path):
    path = write(
        tmp_path / "train.csv",
        'prompt, completion\n"What is 2+2?",4\n\n"multi\nline",  keep spaces \n',
    )
    records = read_records(path)
    assert records[0] == RawRecord(fields={"prompt": "What is 2+2?", "completion": "4"}, where=f"{path}:2")
    # Header cells are trimmed; values are kept exactly.
    assert records[1].fields == {"prompt": "multi\nline", "completion": "  keep spaces "}
    assert records[1].where == f"{path}:4"


def test_csv_row_after_multiline_field_has_its_own_line(tmp_path):
    path = write(tmp_path / "train.csv", 'text\n"a\nb\nc"\nd\n')
    assert [r.where for r in read_records(path)] == [f"{path}:2", f"{path}:5"]


def test_csv_long_field_is_allowed(tmp_path):
    long = "x" * 300_000
    path = write(tmp_path / "train.csv", f"text\n{long}\n")
    assert read_records(path)[0].fields["text"] == long


def test_tsv_by_extension(tmp_path):
    path = write(tmp_path / "train.tsv", "prompt\tcompletion\nq, with comma\ta\n")
    assert read_records(path)[0].fields == {"prompt": "q, with comma", "completion": "a"}


def test_csv_wrong_field_count_names_line(in_tmp):
    write(in_tmp / "train.csv", "prompt,completion\nq,a\nq,a,extra\n")
    with pytest.raises(TunesmithError, match="3 fields but the header has 2") as info:
        read_records("train.csv")
    assert info.value.where == "train.csv:3"
    assert "quote" in info.value.fix


def test_csv_duplicate_header(in_tmp):
    write(in_tmp / "train.csv", "text,text\na,b\n")
    with pytest.raises(TunesmithError, match="repeats column") as info:
        read_records("train.csv")
    assert info.value.where == "train.csv:1"


def test_csv_header_only_has_no_records(in_tmp):
    write(in_tmp / "train.csv", "prompt,completion\n")
    with pytest.raises(TunesmithError, match="no records"):
        read_records("train.csv")


# --- Parquet ------------------------------------------------------------------------------------


def test_parquet_values_are_plain_python(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "n": 1},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "n": 2},
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    records = read_records(path)
    assert [r.fields for r in records] == rows
    assert type(records[0].fields["messages"]) is list
    assert type(records[0].fields["messages"][0]) is dict
    assert type(records[0].fields["n"]) is int
    assert [r.where for r in records] == [f"{path}:row 0", f"{path}:row 1"]


def test_corrupt_parquet(in_tmp):
    write(in_tmp / "train.parquet", "this is not parquet")
    with pytest.raises(TunesmithError, match="Parquet") as info:
        read_records("train.parquet")
    assert info.value.where == "train.parquet"


# --- datasets save_to_disk ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved Dataset and one saved DatasetDict, shared because writing them costs ~100 ms."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("saved")
    rows = [{"prompt": "q1", "completion": "a1", "tags": ["x", "y"]}, {"prompt": "q2", "completion": "a2", "tags": []}]
    single = datasets.Dataset.from_list(rows)
    single.save_to_disk(str(root / "single"))
    both = datasets.DatasetDict({"train": single, "test": datasets.Dataset.from_list(rows[:1])})
    both.save_to_disk(str(root / "dict"))
    # Formatting survives save_to_disk; the reader must still hand back plain Python.
    single.with_format("numpy").save_to_disk(str(root / "numpy"))
    return root, rows


def test_saved_dataset(saved):
    root, rows = saved
    records = read_records(root / "single")
    assert [r.fields for r in records] == rows
    assert records[1].where == f"{root / 'single'}:row 1"


def test_saved_dataset_with_numpy_format_gives_plain_python(saved):
    root, rows = saved
    records = read_records(root / "numpy")
    assert records[0].fields == rows[0]
    assert type(records[0].fields["tags"]) is list


def test_saved_dataset_dict_defaults_to_train_and_takes_split(saved):
    root, rows = saved
    assert len(read_records(root / "dict")) == 2
    assert [r.fields for r in read_records(root / "dict", split="test")] == rows[:1]


def test_saved_dataset_dict_unknown_split_lists_existing(saved):
    root, _ = saved
    with pytest.raises(TunesmithError, match="split 'validation' not found") as info:
        read_records(root / "dict", split="validation")
    assert "train, test" in str(info.value)


def test_folder_that_is_not_a_saved_dataset_suggests_files(in_tmp):
    (in_tmp / "data").mkdir()
    write(in_tmp / "data" / "train.jsonl", '{"text": "a"}\n')
    with pytest.raises(TunesmithError, match="not a dataset saved") as info:
        read_records("data")
    assert "train.jsonl" in info.value.fix


# --- hub ----------------------------------------------------------------------------------------


class _FakeDataset:
    def to_list(self):
        return [{"text": "from the hub"}]


def test_hub_name_loads_with_datasets(in_tmp, monkeypatch):
    import datasets

    calls = []

    def fake_load(name, split=None):
        calls.append((name, split))
        return _FakeDataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    records = read_records("owner/name")
    assert calls == [("owner/name", "train")]
    assert records == [RawRecord(fields={"text": "from the hub"}, where="owner/name:row 0")]
    read_records("owner/name", split="test")
    assert calls[-1] == ("owner/name", "test")


def test_hub_failure_is_wrapped(in_tmp, monkeypatch):
    import datasets

    def fail(name, split=None):
        raise ConnectionError("Couldn't reach 'owner/name' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(TunesmithError) as info:
        read_records("owner/name")
    err = info.value
    assert err.where == "owner/name"
    assert "hub" in err.message and "Couldn't reach" in err.message
    assert "data.train" in err.fix and "local path" in err.fix


def test_a_path_with_a_data_file_suffix_is_not_sent_to_the_hub(in_tmp, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub was called"))
    with pytest.raises(TunesmithError, match="file not found"):
        read_records("other/train.jsonl")


def test_an_owner_name_is_a_hub_id_whatever_folders_the_working_directory_holds(in_tmp, monkeypatch):
    """config.py decided it against the config's folder (sources.py); a `someorg/` folder in the working
    directory does not turn it back into a missing local file."""
    import datasets

    (in_tmp / "someorg").mkdir()
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None: _FakeDataset())
    assert read_records("someorg/somedata")[0].fields == {"text": "from the hub"}


@pytest.fixture
def hub_unreachable(monkeypatch):
    """Online mode on a machine without network: tests run with HF_HUB_OFFLINE=1 (conftest.py)."""
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(readers, "hub_reachable", lambda: False)
    # huggingface_hub would spend ~28 s retrying before it failed.
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset was called"))


def test_an_unreachable_hub_fails_at_once_with_how_to_get_the_data(in_tmp, hub_unreachable):
    with pytest.raises(TunesmithError) as info:
        read_records("someorg/somedata")
    err = info.value
    assert err.where == "someorg/somedata"
    assert "'someorg/somedata'" in err.message and "hub is unreachable" in err.message
    assert "save_to_disk('somedata')" in err.fix and "local data file" in err.fix


def test_a_mistyped_local_folder_name_is_named_as_possibly_local_too(in_tmp, hub_unreachable):
    (in_tmp / "data").mkdir()
    with pytest.raises(TunesmithError) as info:
        read_records("data/trian")  # a hub id by its shape; the message says it may be a path
    assert "not a local file or folder" in info.value.message
    assert "meant to be a local path, check it" in info.value.fix


def test_offline_mode_reads_datasets_cache_without_the_reachability_check(in_tmp, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(readers, "hub_reachable", lambda: pytest.fail("checked the network in offline mode"))
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split=None: _FakeDataset())
    assert read_records("owner/name")[0].fields == {"text": "from the hub"}


# --- missing / unsupported ----------------------------------------------------------------------


def test_missing_file_lists_close_matches(in_tmp):
    (in_tmp / "data").mkdir()
    write(in_tmp / "data" / "train.jsonl", '{"text": "a"}\n')
    write(in_tmp / "data" / "notes.md", "x")
    with pytest.raises(TunesmithError, match="file not found") as info:
        read_records("data/trian.jsonl")
    err = info.value
    assert err.where == "data/trian.jsonl"
    assert os.path.join("data", "train.jsonl") in err.fix
    assert "notes.md" not in err.fix


def test_missing_file_in_missing_folder(in_tmp):
    with pytest.raises(TunesmithError, match="does not exist") as info:
        read_records("nowhere/deeper/train.jsonl")
    assert info.value.where == "nowhere/deeper/train.jsonl"


def test_unknown_extension_lists_supported(in_tmp):
    write(in_tmp / "train.txt", "hello\n")
    with pytest.raises(TunesmithError, match="unsupported file type '.txt'") as info:
        read_records("train.txt")
    for ext in (".jsonl", ".json", ".csv", ".tsv", ".parquet"):
        assert ext in info.value.fix


def test_extension_is_case_insensitive(tmp_path):
    path = write(tmp_path / "TRAIN.JSONL", '{"text": "a"}\n')
    assert read_records(path)[0].fields == {"text": "a"}


def test_module_exports():
    assert set(readers.__all__) >= {"RawRecord", "read_records", "read_text_file"}


def test_the_text_reader_is_public_and_its_callers_use_that_name(tmp_path):
    path = write(tmp_path / "prompts.txt", "\ufeffhello\n")
    assert readers.read_text_file(path, str(path)) == "hello\n"  # the BOM is dropped
    assert not hasattr(readers, "_read_text")
    source = Path(readers.__file__).parents[1]
    assert not [p for p in source.rglob("*.py") if "_read_text" in p.read_text(encoding="utf-8")]

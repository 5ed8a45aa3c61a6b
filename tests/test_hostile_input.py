"""Hostile and broken input, fuzzed with hypothesis: every data reader, format detector and record
normaliser, and every config field.

The property everywhere: a clean result, or a TunesmithError whose `where` names the file and the line
(or the record, or the config field); never another exception. Where the bytes are built from known
parts (JSON lines, CSV rows, CoNLL sentences) the test knows the answer exactly: the records, or the
first bad line, or (data.on_bad_record: skip) the records kept and the lines dropped.

The outcome of every case is counted per reader; the table is printed at the end of the module (run
with -s) and written to <basetemp>/fuzz_counts.json, for the issue note.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunesmith.config import DataConfig, RunConfig, load_config
from tunesmith.data.bad_records import BadRecords, normalise_skipping
from tunesmith.data.readers import RawRecord, read_records
from tunesmith.errors import TunesmithError

FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
SMALL = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

COUNTS: dict[str, Counter] = defaultdict(Counter)
_names = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def fuzz_counts(tmp_path_factory):
    yield
    total = sum(sum(c.values()) for c in COUNTS.values())
    table = {reader: dict(sorted(c.items(), key=lambda kv: -kv[1])) for reader, c in sorted(COUNTS.items())}
    (tmp_path_factory.getbasetemp() / "fuzz_counts.json").write_text(
        json.dumps({"total": total, "readers": table}, indent=2)
    )
    print(f"\nfuzz cases: {total}")
    for reader, outcomes in table.items():
        print(f"  {reader}: {sum(outcomes.values())} -> " + ", ".join(f"{k} {v}" for k, v in outcomes.items()))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _kind(exc: TunesmithError) -> str:
    """The message up to its first detail (a number, a quote), to group outcomes in the counts."""
    return "error: " + re.split(r"['\"(:]", re.sub(r"\d+", "N", exc.message), maxsplit=1)[0].strip()[:48]


def _count(reader: str, outcome) -> None:
    COUNTS[reader]["ok" if not isinstance(outcome, TunesmithError) else _kind(outcome)] += 1


def _new_file(folder: Path, suffix: str, data: bytes) -> Path:
    path = folder / f"f{next(_names)}{suffix}"
    path.write_bytes(data)
    return path


_LOCATOR = re.compile(r":(\d+|\[\d+\]|row \d+)$")
# Errors about a whole file (or a whole source), which have no line to name.
_WHOLE_FILE = (
    "no records",
    "no sentences",
    "file holds a JSON",
    "file holds a single record",
    "top-level JSON object",
    "could not read the Parquet",
    "no prompts",
    "every record is bad",
    "not an IDX file",
    "the IDX file",
    "cannot read the IDX",
    "no labels file",
    "the IDX files hold",
    "label ",
)


def _line_count(data: bytes) -> int:
    return len(re.findall(rb"\r\n|\r|\n", data)) + 1


def join_lines(lines: list[str], ends: list[str]) -> str:
    """Lines with the given ends, except that a bare \r before an empty line ending in \n would read as
    one \r\n (the empty line gone): that \r becomes \r\n, so line i of the list is line i of the file."""
    out = []
    for i, (line, end) in enumerate(zip(lines, ends)):
        if end == "\r" and i + 1 < len(lines) and lines[i + 1] == "" and ends[i + 1].startswith("\n"):
            end = "\r\n"
        out.append(line + end)
    return "".join(out)


def check_located(exc: TunesmithError, path: Path, data: bytes | None = None) -> None:
    """The error names the file, and a line inside it (or is one of the whole-file errors)."""
    where = exc.where or ""
    assert where.startswith(str(path)), exc.render()
    found = _LOCATOR.search(where[len(str(path)) :])
    if found is None:
        assert exc.message.startswith(_WHOLE_FILE), exc.render()
    elif found.group(1).isdigit() and data is not None:
        assert 1 <= int(found.group(1)) <= _line_count(data), exc.render()


def run_reader(reader: str, call, path: Path, data: bytes | None = None):
    """Call a reader; return its result or its TunesmithError (checked to be located), counted."""
    try:
        result = call()
    except TunesmithError as exc:
        check_located(exc, path, data)
        _count(reader, exc)
        return exc
    _count(reader, result)
    return result


# ---------------------------------------------------------------------------------------------------
# Strategies

_NO_BREAKS = st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",))
json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
json_object = st.dictionaries(st.text(max_size=8), json_value, max_size=4)
line_end = st.sampled_from(["\n", "\r\n", "\r"])

# One JSONL line: (text, good?) where good means "a JSON object": the test knows which without parsing.
jsonl_line = st.one_of(
    json_object.map(lambda o: (json.dumps(o, ensure_ascii=False), "good")),
    json_object.map(lambda o: (json.dumps(o)[:-1], "bad")),  # truncated: the closing brace is gone
    st.text(_NO_BREAKS, max_size=20).map(lambda t: ("{b" + t.replace("\x00", ""), "bad")),  # never valid JSON
    (json_leaf | st.lists(json_leaf, max_size=3)).map(lambda v: (json.dumps(v), "bad")),  # JSON, but not an object
    st.integers(1, 40).map(lambda n: ("[" * n + "]" * n, "bad")),  # nested lists: not an object
    st.integers(5_000, 60_000).map(lambda n: ("[" * n + "]" * n, "bad")),  # deeper than Python's recursion limit
    st.integers(1, 40).map(lambda n: ('{"a": ' + "[" * n + "]" * n + "}", "good")),
    st.integers(5_000, 60_000).map(lambda n: ('{"a": ' + "[" * n + "]" * n + "}", "bad")),
    st.integers(4_400, 6_000).map(lambda n: ('{"n": ' + "7" * n + "}", "bad")),  # an integer Python refuses to read
    st.sampled_from(["", " ", "\t", "  \t "]).map(lambda t: (t, "blank")),
)


# ---------------------------------------------------------------------------------------------------
# JSON Lines and .json: exact answers


@FUZZ
@given(lines=st.lists(st.tuples(jsonl_line, line_end), max_size=12), bom=st.booleans(), skip=st.booleans())
def test_jsonl_lines_are_read_or_the_first_bad_line_is_named(folder, lines, bom, skip):
    text = join_lines([body for (body, _), _ in lines], [end for _, end in lines])
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")
    path = _new_file(folder, ".jsonl", data)
    bad = BadRecords("skip" if skip else "error")
    outcome = run_reader("jsonl", lambda: read_records(str(path), bad=bad), path, data)
    good = [i for i, ((_, kind), _) in enumerate(lines, 1) if kind == "good"]
    broken = [i for i, ((_, kind), _) in enumerate(lines, 1) if kind == "bad"]
    if not good and not broken:
        assert isinstance(outcome, TunesmithError) and outcome.message.startswith("no records")
    elif broken and not skip:
        assert isinstance(outcome, TunesmithError) and outcome.where == f"{path}:{broken[0]}", outcome
    elif not good:
        assert isinstance(outcome, TunesmithError) and "every one was bad" in outcome.message
    else:
        assert [r.where for r in outcome] == [f"{path}:{i}" for i in good]
        assert bad.count == len(broken) and bad.first == [
            f"{path}:{i}: " + f.split(": ", 1)[1] for i, f in zip(broken, bad.first)
        ]


_ENCODINGS = ["utf-8", "latin-1", "utf-16", "utf-16-le", "utf-8-sig"]


@FUZZ
@given(
    lines=st.lists(st.tuples(jsonl_line, line_end), max_size=8),
    encoding=st.sampled_from(_ENCODINGS),
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv"]),
)
def test_wrong_encodings_are_named(folder, lines, encoding, suffix):
    text = "".join(body + end for (body, _), end in lines if len(body) < 2000)
    data = text.encode(encoding, errors="replace")
    path = _new_file(folder, suffix, data)
    outcome = run_reader(f"encoding {encoding}", lambda: read_records(str(path)), path, data)
    if encoding == "utf-16":  # always written with a byte-order mark
        assert isinstance(outcome, TunesmithError) and "UTF-16" in outcome.message and outcome.where == f"{path}:1"
    elif b"\x00" in data:  # UTF-16 without a mark: NUL beside every ASCII character
        assert isinstance(outcome, TunesmithError) and ("UTF-16" in outcome.message or "NUL" in outcome.message)
    else:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:  # latin-1 bytes that are not UTF-8: the line of the first bad byte
            line = _line_count(data[: exc.start])
            assert isinstance(outcome, TunesmithError) and outcome.where == f"{path}:{line}", outcome
            assert "not UTF-8" in outcome.message


@FUZZ
@given(
    items=st.lists(st.one_of(json_object.map(lambda o: (o, True)), json_leaf.map(lambda v: (v, False))), max_size=8),
    wrap=st.sampled_from([None, "data", "rows"]),
    cut=st.integers(0, 40),
    skip=st.booleans(),
)
def test_json_files_whole_truncated_or_wrapped(folder, items, wrap, cut, skip):
    value = [v for v, _ in items]
    text = json.dumps({wrap: value} if wrap else value)
    for data, whole in ((text.encode(), True), (text.encode()[: max(0, len(text) - cut)], cut == 0)):
        path = _new_file(folder, ".json", data)
        bad = BadRecords("skip" if skip else "error")
        outcome = run_reader("json", lambda: read_records(str(path), bad=bad), path, data)
        if not whole:
            continue
        objects = [i for i, (_, is_object) in enumerate(items) if is_object]
        others = [i for i, (_, is_object) in enumerate(items) if not is_object]
        if others and not skip:
            assert outcome.where == f"{path}:[{others[0]}]"
        elif objects:
            assert [r.where for r in outcome] == [f"{path}:[{i}]" for i in objects]
        else:
            assert isinstance(outcome, TunesmithError)


# ---------------------------------------------------------------------------------------------------
# CSV / TSV: exact answers, and truncated files

_CELL = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)


@FUZZ
@given(
    header=st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=4, unique=True),
    rows=st.lists(st.tuples(st.lists(_CELL, max_size=6), st.booleans()), max_size=8),
    terminator=st.sampled_from(["\r\n", "\n"]),
    delimiter=st.sampled_from([",", "\t"]),
    skip=st.booleans(),
    cut=st.integers(0, 30),
)
def test_csv_rows_are_read_or_the_first_bad_row_is_named(folder, header, rows, terminator, delimiter, skip, cut):
    # A row either has the header's width (padded or cut to it) or keeps its own width (bad when it differs).
    shaped = [(cells + [""] * len(header))[: len(header)] if fit else cells for cells, fit in rows]
    shaped = [cells for cells in shaped if cells]
    buffer, starts = io.StringIO(), []
    # Python's writer quotes a field only for characters of *its* line terminator: with "\n" a lone "\r"
    # would go out bare and read back as a line end. So "\n" files quote every field.
    writer = csv.writer(
        buffer,
        lineterminator=terminator,
        delimiter=delimiter,
        quoting=csv.QUOTE_MINIMAL if terminator == "\r\n" else csv.QUOTE_ALL,
    )
    writer.writerow(header)
    for cells in shaped:
        starts.append(_line_count(buffer.getvalue().encode()))
        writer.writerow(cells)
    data = buffer.getvalue().encode("utf-8")
    path = _new_file(folder, ".csv" if delimiter == "," else ".tsv", data)
    bad = BadRecords("skip" if skip else "error")
    outcome = run_reader("csv/tsv", lambda: read_records(str(path), bad=bad), path, data)
    # A row of one empty cell is written as "" and read back as one empty field, like any other.
    good = [(start, cells) for start, cells in zip(starts, shaped) if len(cells) == len(header)]
    broken = [start for start, cells in zip(starts, shaped) if len(cells) != len(header)]
    if broken and not skip:
        assert isinstance(outcome, TunesmithError) and outcome.where == f"{path}:{broken[0]}", outcome
    elif good:
        assert [(r.where, r.fields) for r in outcome] == [
            (f"{path}:{s}", dict(zip(header, cells))) for s, cells in good
        ]
        assert bad.count == len(broken)
    else:
        assert isinstance(outcome, TunesmithError)
    truncated = _new_file(folder, path.suffix, data[: max(0, len(data) - cut)])
    run_reader(
        "csv/tsv truncated",
        lambda: read_records(str(truncated), bad=BadRecords("skip" if skip else "error")),
        truncated,
        data,
    )


# ---------------------------------------------------------------------------------------------------
# Any bytes, into every file reader

_READERS = {
    ".jsonl": lambda p: read_records(str(p)),
    ".json": lambda p: read_records(str(p)),
    ".csv": lambda p: read_records(str(p)),
    ".tsv": lambda p: read_records(str(p)),
    ".parquet": lambda p: read_records(str(p)),
}


def _conll(path, skip=False):
    from tunesmith.tasks.token_classification import read_conll

    return read_conll(path, BadRecords("skip" if skip else "error"))


def _prompts(path):
    from tunesmith.data.captions import read_prompt_lines

    return read_prompt_lines(path)


def _idx(path):
    from tunesmith.data.images import read_idx

    return read_idx(str(path))


@FUZZ
@given(
    data=st.binary(max_size=600),
    suffix=st.sampled_from([*_READERS, ".conll", ".txt (prompts)", "-idx3-ubyte"]),
    prefix=st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\x00\x00\x08\x03", b"PAR1", b'{"text": "a"}\n']),
)
def test_random_bytes_never_crash_a_reader(folder, data, suffix, prefix):
    data = prefix + data
    if suffix == ".conll":
        path, call = _new_file(folder, ".conll", data), _conll
    elif suffix == ".txt (prompts)":
        path, call = _new_file(folder, ".txt", data), _prompts
    elif suffix == "-idx3-ubyte":
        path, call = _new_file(folder, "-idx3-ubyte", data), _idx
    else:
        path, call = _new_file(folder, suffix, data), _READERS[suffix]
    run_reader(f"bytes {suffix}", lambda: call(path), path, data)


def test_huge_lines_and_deep_nesting_in_every_text_reader(folder):
    long = "word " * 400_000  # 2 MB in one field
    path = _new_file(folder, ".jsonl", (json.dumps({"text": long}) + "\n").encode())
    assert read_records(str(path))[0].fields["text"] == long
    path = _new_file(folder, ".csv", f'text,label\n"{long}",a\n'.encode())
    assert read_records(str(path))[0].fields["text"] == long
    deep = "[" * 200_000 + "]" * 200_000
    path = _new_file(folder, ".json", deep.encode())
    with pytest.raises(TunesmithError, match="nested too deeply") as err:
        read_records(str(path))
    assert err.value.where == f"{path}:1"
    path = _new_file(folder, ".jsonl", ('{"text": "a"}\n{"messages": ' + deep + "}\n").encode())
    with pytest.raises(TunesmithError, match="nested too deeply") as err:
        read_records(str(path))
    assert err.value.where == f"{path}:2"


def test_parquet_with_odd_columns_reads_as_plain_python(folder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "text": pa.array([b"\xff\x00bytes", None]),
            "label": pa.array([[1, 2], None]),
            "extra": pa.array([{"a": 1}, {"a": None}]),
        }
    )
    path = folder / "odd.parquet"
    pq.write_table(table, path)
    records = read_records(str(path))
    assert records[0].fields["text"] == b"\xff\x00bytes" and records[1].where == f"{path}:row 1"
    data = path.read_bytes()
    for cut in (1, len(data) // 2, len(data) - 8):
        truncated = _new_file(folder, ".parquet", data[:cut])
        err = run_reader("parquet truncated", lambda: read_records(str(truncated)), truncated)
        assert isinstance(err, TunesmithError) and "Parquet" in err.message


# ---------------------------------------------------------------------------------------------------
# CoNLL: exact answers

_WORD = st.text(st.characters(whitelist_categories=("L", "N", "P", "S")), min_size=1, max_size=6).filter(
    lambda w: w != "-DOCSTART-"
)
_conll_line = st.tuples(_WORD, _WORD, st.booleans())  # word, tag, whether the line keeps its tag


@FUZZ
@given(
    sentences=st.lists(st.lists(_conll_line, min_size=1, max_size=4), max_size=5),
    docstart=st.booleans(),
    ends=st.lists(line_end, min_size=1, max_size=3),
    skip=st.booleans(),
)
def test_conll_sentences_or_the_first_bad_line(folder, sentences, docstart, ends, skip):
    lines, expected, broken_lines = (["-DOCSTART- -X- O O", ""] if docstart else []), [], []
    for sentence in sentences:
        start, broken = len(lines) + 1, False
        for word, tag, tagged in sentence:
            lines.append(f"{word} {tag}" if tagged else word)
            if not tagged:
                broken_lines.append(len(lines))
                broken = True
        if not broken:
            expected.append((start, [w for w, _, _ in sentence], [t for _, t, _ in sentence]))
        lines.append("")
    text = join_lines(lines, [ends[i % len(ends)] for i in range(len(lines))])
    path = _new_file(folder, ".conll", text.encode())
    outcome = run_reader("conll", lambda: _conll(path, skip), path, text.encode())
    if broken_lines and not skip:
        assert isinstance(outcome, TunesmithError) and outcome.where == f"{path}:{broken_lines[0]}"
    elif expected:
        assert [(r.where, r.fields["tokens"], r.fields["tags"]) for r in outcome] == [
            (f"{path}:{s}", words, tags) for s, words, tags in expected
        ]
    else:
        assert isinstance(outcome, TunesmithError) and outcome.message.startswith("no sentences")


# ---------------------------------------------------------------------------------------------------
# Record normalisers: every task, any field values

ROLES = st.sampled_from(["user", "assistant", "system", "human", "gpt", "bot", "customer", "", "USER", None, 3])
turn = st.fixed_dictionaries({}, optional={"role": ROLES, "content": json_value, "from": ROLES, "value": json_value})
turns = st.lists(turn | json_value, max_size=4)
_COLUMNS = [
    "messages",
    "conversations",
    "instruction",
    "input",
    "output",
    "prompt",
    "completion",
    "text",
    "system",
    "label",
    "labels",
    "score",
    "text_pair",
    "tokens",
    "tags",
    "ner_tags",
    "entities",
    "source",
    "target",
    "summary",
    "document",
    "image",
    "file_name",
    "seed",
    "other",
]
field_value = st.one_of(
    json_value,
    turns,
    st.lists(st.text(max_size=6), max_size=5),
    st.text(max_size=20),
    st.lists(
        st.fixed_dictionaries(
            {
                "start": st.integers(-2, 12),
                "end": st.integers(-2, 14),
                "label": st.sampled_from(["PER", "B-X", "O", "", 5]),
            }
        ),
        max_size=3,
    ),
)
record_fields = st.dictionaries(st.sampled_from(_COLUMNS), field_value, max_size=4)


def _records(rows: list[dict]) -> list[RawRecord]:
    return [RawRecord(fields=row, where=f"data/fuzz.jsonl:{i}") for i, row in enumerate(rows, 1)]


def _task(name):
    from tunesmith.tasks import get_task

    return get_task(name)


_TASKS = ["chat", "continued-pretraining", "text-classification", "token-classification", "summarization"]


def _check_examples(task: str, examples: list) -> None:
    """What each task promises of the examples it returns."""
    from tunesmith.data.formats import ROLES as ALLOWED

    for e in examples:
        if task in ("chat", "continued-pretraining"):
            assert (e.messages is None) != (e.text is None)
            if e.messages is not None:
                assert all(t["role"] in ALLOWED and isinstance(t["content"], str) for t in e.messages)
                assert any(t["role"] == "assistant" for t in e.messages)
            else:
                assert isinstance(e.text, str)
        elif task == "text-classification":
            assert isinstance(e.text, str) and e.text.strip()
            assert e.score is not None or all(isinstance(label, str) and label for label in e.labels)
        elif task == "token-classification":
            assert e.tokens and all(isinstance(w, str) and w.strip() for w in e.tokens)
            assert e.tags is None or len(e.tags) == len(e.tokens)
        elif task == "summarization":
            assert isinstance(e.source, str) and e.source.strip()


# Near-valid records of each task's shapes, with wrong types, missing and extra columns, empty strings
# and unknown roles mixed in; plus records of random columns.
good_text = st.text(min_size=1, max_size=10).filter(str.strip)
# Three in four values are usable text, so whole records often pass and the oracle sees examples too.
text_or_odd = st.one_of(
    good_text,
    good_text,
    good_text,
    st.one_of(st.sampled_from(["", "  "]), json_leaf, st.lists(st.text(max_size=4), max_size=2)),
)
role = st.sampled_from(["user", "assistant", "system", "user", "assistant", "customer", "", "Assistant"]) | json_leaf
chat_turn = st.fixed_dictionaries({"role": role, "content": text_or_odd})
share_turn = st.fixed_dictionaries(
    {"from": st.sampled_from(["human", "gpt", "system", "bot", "robot", "HUMAN"]) | json_leaf, "value": text_or_odd}
)
extra = st.dictionaries(st.sampled_from(["other", "id", "meta"]), json_value, max_size=1)


def _shape(required: dict, optional: dict | None = None):
    """A record with these columns, each sometimes missing, plus sometimes an extra column."""
    missing = st.one_of(
        st.just(set()), st.just(set()), st.just(set()), st.sets(st.sampled_from(list(required)), min_size=1, max_size=1)
    )
    return st.tuples(st.fixed_dictionaries(required, optional=optional or {}), extra, missing).map(
        lambda t: {**{k: v for k, v in t[0].items() if k not in t[2]}, **t[1]}
    )


_WORDS = st.lists(st.text("abcXYZ", min_size=1, max_size=4) | text_or_odd, min_size=0, max_size=4)
_TAGS = st.lists(
    st.sampled_from(["O", "B-PER", "I-PER", "E-LOC", "S-LOC", "PER", "I-ORG", "B-"]) | text_or_odd, max_size=4
)
ENTITY = st.fixed_dictionaries(
    {
        "start": st.integers(-1, 12) | json_leaf,
        "end": st.integers(0, 14) | json_leaf,
        "label": st.sampled_from(["PER", "ORG", "B-PER", "O", ""]) | json_leaf,
    }
)
TASK_RECORDS = {
    "chat": st.one_of(
        _shape({"messages": st.lists(chat_turn | json_leaf, max_size=4)}, {"system": text_or_odd}),
        _shape({"conversations": st.lists(share_turn | chat_turn, max_size=4)}),
        _shape({"instruction": text_or_odd, "output": text_or_odd}, {"input": text_or_odd, "system": text_or_odd}),
        _shape({"prompt": text_or_odd, "completion": text_or_odd}, {"system": text_or_odd}),
        _shape({"text": text_or_odd}),
        _shape(
            {
                "messages": st.text(max_size=30).map(
                    lambda t: json.dumps([{"role": "user", "content": t}, {"role": "assistant", "content": t}])
                )
            }
        ),
    ),
    "continued-pretraining": _shape({"text": text_or_odd}),
    "text-classification": st.one_of(
        _shape(
            {"text": text_or_odd, "label": text_or_odd | st.integers() | st.lists(text_or_odd, max_size=3)},
            {"text_pair": text_or_odd},
        ),
        _shape(
            {"text": text_or_odd, "text_pair": text_or_odd, "score": st.floats(-1, 2) | text_or_odd | st.integers()}
        ),
    ),
    "token-classification": st.one_of(
        _shape({"tokens": _WORDS, "tags": _TAGS}),
        _shape({"words": _WORDS, "ner_tags": _TAGS}),
        _shape(
            {
                "text": st.text("ab cd.\t", max_size=14) | text_or_odd,
                "entities": st.lists(ENTITY | json_leaf, max_size=3),
            }
        ),
    ),
    "summarization": st.one_of(
        _shape({"source": text_or_odd, "target": text_or_odd}),
        _shape({"document": text_or_odd, "summary": text_or_odd}),
        _shape({"text": text_or_odd}),
    ),
}


@FUZZ
@pytest.mark.parametrize("task", _TASKS)
@given(data=st.data(), skip=st.booleans())
def test_record_normalisers_give_examples_or_name_the_record(task, data, skip):
    rows = data.draw(st.lists(TASK_RECORDS[task] | record_fields, min_size=1, max_size=5))
    fmt = data.draw(
        st.sampled_from(["auto", "auto", "auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"])
    )
    records = _records(rows)
    cfg = DataConfig(format=fmt if task == "chat" else "auto", on_bad_record="skip" if skip else "error")
    bad = BadRecords(cfg.on_bad_record)
    wheres = {r.where for r in records}
    try:
        examples, name = normalise_skipping(records, cfg, _task(task).normalise, bad)
    except TunesmithError as exc:
        assert exc.where in wheres | {"data/fuzz.jsonl", "data.format", "data.train"}, exc.render()
        _count(f"normalise {task}", exc)
        return
    _count(f"normalise {task}", examples)
    assert isinstance(name, str) and {e.where for e in examples} <= wheres
    assert len(examples) + bad.count == len(records)
    _check_examples(task, examples)


@FUZZ
@given(
    conversations=st.lists(
        st.lists(st.tuples(ROLES, st.text(max_size=8) | json_leaf), max_size=4), min_size=1, max_size=4
    ),
    key=st.sampled_from(["messages", "conversations"]),
)
def test_chat_turns_with_unknown_roles_and_odd_content(conversations, key):
    speaker, text = ("role", "content") if key == "messages" else ("from", "value")
    records = _records([{key: [{speaker: r, text: c} for r, c in conv]} for conv in conversations])
    outcome = None
    try:
        outcome, _ = _task("chat").normalise(records, DataConfig())
    except TunesmithError as exc:
        assert exc.where in {r.where for r in records}, exc.render()
        outcome = exc
    _count(f"chat {key}", outcome)
    if not isinstance(outcome, TunesmithError):
        _check_examples("chat", outcome)


# Labels seen only in validation or test: the record is named, never a crash in the head or the metrics.
@FUZZ
@given(
    train=st.lists(st.sampled_from("abcd"), max_size=8),
    test=st.lists(st.sampled_from("abcde"), max_size=4),
    validation=st.lists(st.sampled_from("abcde"), max_size=3),
)
def test_labels_only_in_test_or_validation_are_named(train, test, validation):
    from tunesmith.data.prepare import DataSplits

    task = _task("text-classification")
    config = RunConfig(task="text-classification")

    def examples(split, labels):
        return (
            task.normalise(_records([{"text": f"{split} {i}", "label": x} for i, x in enumerate(labels)]), config.data)[
                0
            ]
            if labels
            else []
        )

    splits = DataSplits(
        examples("train", train), examples("validation", validation), examples("test", test), "single-label"
    )
    for e, split in [(e, "validation") for e in splits.validation] + [(e, "test") for e in splits.test]:
        e.where = f"{split}:{e.where}"
    try:
        meta = task.setup(splits, config)
    except TunesmithError as exc:
        _count("labels only in test", exc)
        if len(set(train)) < 2:
            assert exc.where == "data.train"
        else:
            unseen = [e for e in splits.validation + splits.test if e.labels[0] not in set(train)]
            assert exc.where == unseen[0].where and repr(unseen[0].labels[0]) in exc.message
        return
    _count("labels only in test", meta)
    assert set(meta["labels"]) == set(train) and set(validation + test) <= set(train)


# ---------------------------------------------------------------------------------------------------
# Image paths from tables: never out of the data folder unless allowed

_PATHS = [
    "a.png",
    "sub/b.png",
    "../outside.png",
    "../../etc/passwd",
    "/etc/passwd",
    "link.png",
    "sub/../a.png",
    "~/x.png",
    "a.png#3",
    "",
    "  ",
    "a\x00b.png",
    "loop.png",
    "sub/",
    "C:\\x.png",
    "x" * 300 + ".png",
]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(root / "a.png")
    Image.new("RGB", (4, 4)).save(root / "sub" / "b.png")
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    (root / "link.png").symlink_to(outside)
    (root / "loop.png").symlink_to(root / "loop.png")
    return root


@FUZZ
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {"image": st.sampled_from(_PATHS) | json_leaf},
            optional={"label": json_value, "text": json_value, "file_name": st.sampled_from(_PATHS), "seed": json_leaf},
        ),
        min_size=1,
        max_size=4,
    ),
    reader=st.sampled_from(["image-classification", "text-to-image"]),
    allow=st.booleans(),
    skip=st.booleans(),
)
def test_image_tables_never_lead_out_of_the_data_folder(image_root, rows, reader, allow, skip):
    from tunesmith.data import captions, images

    records = [RawRecord(fields=row, where=f"{image_root / 'table.jsonl'}:{i}") for i, row in enumerate(rows, 1)]
    cfg = DataConfig(allow_outside_paths=allow)
    bad = BadRecords("skip" if skip else "error")
    read = images.examples_from_records if reader == "image-classification" else captions.examples_from_records
    try:
        examples = read(records, cfg, bad=bad)
    except TunesmithError as exc:
        assert not skip and exc.where in {r.where for r in records}, exc.render()
        _count(f"image table {reader}", exc)
        return
    _count(f"image table {reader}", examples)
    assert len(examples) + bad.count == len(records)
    for example in examples:
        if example.image is not None and not allow:
            assert Path(example.image.rpartition("#")[0] or example.image).is_relative_to(image_root.resolve()), example


def test_symlinks_and_sidecars_may_not_lead_out(tmp_path, capsys):
    from PIL import Image

    from tunesmith.data.captions import read_image_folder
    from tunesmith.data.images import read_class_folders

    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(outside / "x.png")
    (outside / "private.txt").write_text("the contents of a private file")
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "cat" / "1.png")
    (root / "dog").symlink_to(outside)  # a class folder that is a symlink out
    with pytest.raises(TunesmithError, match="leads outside the data folder") as err:
        read_class_folders(root)
    assert err.value.where == str(root / "dog" / "x.png") and "data.allow_outside_paths" in err.value.fix
    assert {e.label for e in read_class_folders(root, allow_outside=True)} == {"cat", "dog"}
    skipped = BadRecords("skip")
    assert [e.label for e in read_class_folders(root, bad=skipped)] == ["cat"] and skipped.count == 1

    folder = tmp_path / "captioned"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(folder / "1.png")
    (folder / "1.txt").symlink_to(outside / "private.txt")  # a caption sidecar that reads a file elsewhere
    with pytest.raises(TunesmithError, match="leads outside") as err:
        read_image_folder(folder, DataConfig())
    assert err.value.where == str(folder / "1.txt")
    assert read_image_folder(folder, DataConfig(allow_outside_paths=True))[0].text == "the contents of a private file"
    (folder / "1.txt").unlink()
    (folder / "1.txt").write_bytes("caf\xe9".encode("latin-1"))  # a caption that is not UTF-8: named, not a crash
    with pytest.raises(TunesmithError, match="not UTF-8") as err:
        read_image_folder(folder, DataConfig())
    assert err.value.where == f"{folder / '1.txt'}:1"
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "/etc/passwd", "text": "x"}) + "\n")
    with pytest.raises(TunesmithError, match="leads outside") as err:
        read_image_folder(folder, DataConfig())
    assert err.value.where == f"{folder / 'metadata.jsonl'}:1"


# ---------------------------------------------------------------------------------------------------
# IDX files (MNIST family): forged headers and labels


@SMALL
@given(
    dims=st.lists(st.integers(0, 4), min_size=3, max_size=3) | st.lists(st.integers(0, 4), max_size=4),
    cut=st.sampled_from([0, 0, 0, 1, 5]),
    forged=st.integers(0, 2**32 - 1),
    data=st.data(),
    gz=st.booleans(),
    garbage=st.binary(max_size=8),
)
def test_idx_files_with_forged_headers_and_labels_are_named(folder, dims, cut, forged, data, gz, garbage):
    import gzip
    import math
    import struct

    from tunesmith.data.images import read_idx_pair

    label = st.sampled_from([0, 1, 9]) | st.integers(0, 255)
    count = dims[0] if dims and data.draw(st.booleans()) else data.draw(st.integers(0, 5))
    labels = data.draw(st.lists(label, min_size=count, max_size=count))

    sizes = dims[:1] + [forged] + dims[2:] if cut == 5 else dims  # 5: a forged size that the body cannot hold
    body = bytes(range(256)) * (math.prod(dims) // 256 + 1)
    raw_images = b"\x00\x00\x08" + bytes([len(sizes)]) + b"".join(struct.pack(">I", n) for n in sizes)
    raw_images += body[: max(0, math.prod(dims) - cut)]
    raw_labels = b"\x00\x00\x08\x01" + struct.pack(">I", len(labels)) + bytes(labels)
    if cut == 1 and not dims:
        raw_labels = garbage  # not IDX at all
    pack, suffix = (gzip.compress, ".gz") if gz else ((lambda b: b), "")
    stem = f"f{next(_names)}"
    images = folder / f"{stem}-images-idx3-ubyte{suffix}"
    labels_path = folder / f"{stem}-labels-idx1-ubyte{suffix}"
    images.write_bytes(pack(raw_images))
    labels_path.write_bytes(pack(raw_labels)[: -3 if cut == 1 and gz else None])  # a cut gzip stream
    try:
        examples = read_idx_pair(images)
    except TunesmithError as exc:
        assert exc.where in (str(images), str(labels_path)), exc.render()
        _count("idx pair", exc)
        return
    _count("idx pair", examples)
    assert len(dims) == 3 and len(examples) == dims[0] == len(labels) and max(labels, default=0) <= 9
    assert [e.label for e in examples] == [str(n) for n in labels]


# ---------------------------------------------------------------------------------------------------
# data.on_bad_record through the whole data path


def test_on_bad_record_skip_counts_and_names_the_first(tmp_path, capsys):
    from tunesmith.data.prepare import prepare_splits
    from tunesmith.tasks import chat

    good = [
        json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]})
        for i in range(20)
    ]
    lines = (
        good[:5]
        + ["{not json", json.dumps({"messages": [{"role": "customer", "content": "q"}]})]
        + good[5:]
        + [json.dumps({"prompt": "other format", "completion": "x"}), "[1, 2]"]
        + [json.dumps({"messages": 3})] * 4
    )
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TunesmithError) as err:
        prepare_splits(DataConfig(train=str(path)), 0, chat.normalise)
    assert err.value.where == f"{path}:6" and "not valid JSON" in err.value.message
    # All in train: 20 records carved 0.8/0.1/0.1 would leave validation and test too small to measure.
    splits = prepare_splits(DataConfig(train=str(path), on_bad_record="skip", split=(1.0, 0.0, 0.0)), 0, chat.normalise)
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 20
    report = splits.report()
    assert report["skipped"] == 8 and report["records"]["train"] == len(splits.train)
    # The reader's drops first (6: not JSON, 24: a list), then the records bad on their own (7: an unknown role,
    # 25, 26: messages not a list), then one bad only beside the others (23: another format); 5 shown of 8.
    assert [f.split(": ")[0] for f in report["first"]] == [f"{path}:{n}" for n in (6, 24, 7, 25, 26)]
    out = capsys.readouterr().out
    assert "skipped 8 bad record(s)" in out and f"{path}:6" in out


def test_on_bad_record_in_a_run_and_in_validate(make_config, tmp_path, capsys):
    from tunesmith.cli import main
    from tunesmith.pipeline import train

    data = tmp_path / "chat.jsonl"
    source = Path(make_config().data.train).read_text().splitlines()
    # All 48 good records: 38 / 5 / 5 (40 would carve validation and test of 4, refused as too small).
    data.write_text("\n".join(source[:20] + ["{broken", '{"messages": []}'] + source[20:48]) + "\n")
    config = make_config(
        f"data.train={data}",
        "data.on_bad_record=skip",
        "train.max_steps=2",
        "train.eval_every=2",
        "eval.compare_base=false",
    )
    result = train(config)
    report = json.loads((result.run_dir / "data_report.json").read_text())
    assert report["skipped"] == 2 and report["first"][0].startswith(f"{data}:21: line is not valid JSON")
    assert report["first"][1].startswith(f"{data}:22: messages has no assistant turn")
    assert result.summary["skipped_records"] == 2 and sum(report["records"].values()) == 48
    assert "skipped 2 bad record(s)" in capsys.readouterr().out
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["validate", str(yaml_path)]) == 0
    assert "skipped bad records (data.on_bad_record: skip): 2" in capsys.readouterr().out
    assert main(["validate", str(yaml_path), "--set", "data.on_bad_record=error"]) == 2
    err = capsys.readouterr().err
    assert f"{data}:21" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# Config fuzzing: a value of the wrong type for any field is refused with the field's name


def _fields(model=RunConfig, prefix=()):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield prefix + (name,), "section"
            yield from _fields(annotation, prefix + (name,))
        else:
            yield prefix + (name,), str(annotation)


FIELDS = list(_fields())


def _takes_mapping(kind: str) -> bool:
    return kind == "section" or kind.startswith("dict[")


def _wrong_values(kind: str):
    """Values no field of this kind accepts: a mapping where a scalar or list belongs, a list or a
    scalar where a mapping (a section, data.columns) belongs."""
    if _takes_mapping(kind):
        return st.one_of(st.lists(json_leaf, min_size=1, max_size=3), st.integers(), st.text(min_size=1, max_size=8))
    return st.dictionaries(st.text("abc", min_size=1, max_size=3), json_leaf, min_size=1, max_size=2)


@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_any_wrong_type_for_any_field_is_refused_with_its_name(folder, data):
    path, kind = data.draw(st.sampled_from(FIELDS))
    wrong = data.draw(_wrong_values(kind))
    raw: dict = {}
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = wrong
    file = _new_file(folder, ".yaml", yaml.safe_dump(raw).encode())
    with pytest.raises(TunesmithError) as err:
        load_config(file)
    dotted = ".".join(path)
    # The file, and the line of the value where the config knows it.
    located = re.fullmatch(rf"{re.escape(str(file))}(:\d+)?", err.value.where or "")
    assert dotted in err.value.message and located, err.value.render()
    COUNTS["config wrong type"][f"refused ({'section' if kind == 'section' else 'field'})"] += 1


@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_any_yaml_value_for_any_field_is_taken_or_refused_with_its_name(folder, data):
    path, kind = data.draw(st.sampled_from(FIELDS))
    value = data.draw(json_value)
    raw: dict = {}
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    file = _new_file(folder, ".yaml", yaml.safe_dump(raw).encode())
    try:
        config = load_config(file)
    except TunesmithError as exc:
        # The field, or (a value that types but breaks a rule across fields: data.split's sum) the rule.
        assert ".".join(path) in exc.message or "data.split" in exc.message, exc.render()
        COUNTS["config any value"]["refused, field named"] += 1
        return
    COUNTS["config any value"]["taken"] += 1
    section = config
    for part in path:
        section = getattr(section, part)

"""Read training rows from local files, `save_to_disk` folders or the Hugging Face hub.

Every reader returns `RawRecord`s: the row as a plain-Python dict plus `where`, a location the user can
open in an editor (`data/train.jsonl:12`). Nothing here interprets the columns; `formats.py` does that.
Bad input is reported as `TunesmithError`, never as the parser's own exception.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.data.bad_records import BadRecords, drop
from tunesmith.errors import TunesmithError
from tunesmith.models.resolve import hub_reachable
from tunesmith.sources import DATA_SUFFIXES, hub_shaped

__all__ = ["RawRecord", "read_records", "read_text_file", "split_lines", "SUPPORTED_EXTENSIONS"]

# The suffixes of the files read here; config.py tells data files from run configs by the same list.
SUPPORTED_EXTENSIONS = DATA_SUFFIXES

_UTF8_BOM = b"\xef\xbb\xbf"
# Python's default (128 KiB) is smaller than a long document in a `text` column.
_CSV_FIELD_LIMIT = 2**31 - 1
# Line ends as editors count them: \r\n, \n and a lone \r (old Mac exports). Not str.splitlines(): JSON
# strings may hold raw U+2028 etc., which it breaks on; a raw \r cannot be inside a JSON string.
_LINE_END = re.compile(r"\r\n|\r|\n")
_LINE_END_BYTES = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class RawRecord:
    """One row as read. `where` is `path:LINE` (JSONL, CSV), `path:[i]` (JSON) or `path:row i`."""

    fields: dict
    where: str
    # CSV/TSV: `path:LINE` of the header. A column missing from a table is fixed in its header, so that is
    # the line an error about the columns names (not the first row's). None for records with own keys.
    header: str | None = field(default=None, compare=False)


def read_records(
    source: str | os.PathLike, *, split: str | None = None, bad: BadRecords | None = None
) -> list[RawRecord]:
    """Read every row of `source`.

    `source` is a `.jsonl`/`.json`/`.csv`/`.tsv`/`.parquet` file, a folder written by
    `datasets.save_to_disk`, or (when no such local path exists) a hub dataset id `owner/name`. A run
    config's paths come here already decided (sources.py): local ones absolute, hub ids as written, so a
    relative `owner/name` that is not a local path is read from the hub, whatever folders the working
    directory holds.
    `split` picks the split of a saved `DatasetDict` or hub dataset (default "train"); plain files
    ignore it. Raises `TunesmithError` when the source is missing, unreadable or holds no records.
    A row that cannot be parsed (a JSON line, a CSV row) goes to `bad` (data.on_bad_record), which
    raises it or counts it and skips it; without `bad` it is raised.
    """
    name = os.fspath(source)
    path = Path(name)
    if path.is_dir():
        records = _read_saved_dataset(path, name, split)
    elif path.is_file():
        records = _read_file(path, name, bad)
    elif hub_shaped(name):
        records = _read_hub(name, split)
    else:
        raise _missing_file_error(path, name)
    if not records and bad is not None and bad.count:
        raise TunesmithError(
            f"no records left: every one was bad and skipped ({bad.count}; the first: " + "; ".join(bad.first) + ")",
            where=name,
            fix="fix the records as the messages say",
        )
    if not records:
        raise TunesmithError(
            "no records: the data source is empty",
            where=name,
            fix="add training records to it, or point data.train at the file that holds them",
        )
    return records


# --- dispatch ---------------------------------------------------------------------------------


def _read_file(path: Path, name: str, bad: BadRecords | None = None) -> list[RawRecord]:
    ext = path.suffix.lower()
    if ext in (".jsonl", ".ndjson"):
        return _parse_jsonl(read_text_file(path, name), name, bad)
    if ext == ".json":
        return _read_json(path, name, bad)
    if ext in (".csv", ".tsv"):
        return _read_csv(path, name, delimiter="\t" if ext == ".tsv" else ",", bad=bad)
    if ext == ".parquet":
        return _read_parquet(path, name)
    raise TunesmithError(
        f"unsupported file type '{path.suffix or '(no extension)'}'",
        where=name,
        fix="use one of "
        + ", ".join(SUPPORTED_EXTENSIONS)
        + ", a folder saved with datasets' save_to_disk, or a hub dataset name owner/name",
    )


def _missing_file_error(path: Path, name: str) -> TunesmithError:
    # Name the absolute path that was tried: a relative path is resolved from somewhere the user may
    # not expect (config paths from the config file's folder, --set paths from the working directory).
    tried = os.path.abspath(name)
    # An absolute path is already the one tried (it is the message's location); only a relative one needs it.
    said = "file not found" if os.path.isabs(name) else f"file not found (tried {tried})"
    where_from = (
        "relative paths in a config file are read from the config file's folder, "
        "those given with --set from the working directory"
    )
    parent = path.parent
    if not parent.is_dir():
        return TunesmithError(
            f"{said}, and its folder {os.path.dirname(tried)} does not exist either",
            where=name,
            fix=f"check the path ({where_from})",
        )
    try:
        siblings = sorted(os.listdir(parent))
    except OSError:
        siblings = []
    matches = difflib.get_close_matches(path.name, siblings, n=3, cutoff=0.6)
    shown = [m if str(parent) == "." else str(parent / m) for m in matches]
    fix = "did you mean " + ", ".join(shown) + f"? ({where_from})" if shown else f"check the path ({where_from})"
    return TunesmithError(said, where=name, fix=fix)


# --- text decoding ------------------------------------------------------------------------------


def _line_at(data: bytes, offset: int) -> int:
    return len(_LINE_END_BYTES.findall(data, 0, offset)) + 1


def split_lines(text: str) -> list[str]:
    """The lines of a text file, at any of \r\n, \n, \r (a file may mix them)."""
    return _LINE_END.split(text)


def read_text_file(path: Path, name: str) -> str:
    """Decode the whole file as UTF-8, tolerating a BOM; name the first bad byte otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TunesmithError(
            f"cannot read the file: {exc.strerror or exc}", where=name, fix="check the file's permissions"
        ) from None
    utf16_fix = "re-save the file as UTF-8 (in Excel: 'CSV UTF-8'; or `iconv -f utf-16 -t utf-8`)"
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TunesmithError(
            "file is UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8",
            where=f"{name}:1",
            fix=utf16_fix,
        )
    # A NUL byte is valid UTF-8 but never in a text data file: UTF-16 without a byte-order mark (every
    # ASCII character has a 0 beside it), or a binary file given a text extension.
    nul = data.find(b"\x00")
    if nul >= 0:
        utf16 = data.count(b"\x00", 0, 4096) * 3 > min(len(data), 4096)  # about half of the bytes are NUL
        raise TunesmithError(
            (
                "file looks like UTF-16 text without a byte-order mark"
                if utf16
                else "file holds a NUL byte, so it is not a text file"
            )
            + f" (first NUL at byte offset {nul}), not UTF-8",
            where=f"{name}:{_line_at(data, nul)}",
            fix=utf16_fix
            if utf16
            else "point data.train at the text data file (JSONL, CSV), or re-export it as UTF-8 text",
        )
    # Strip the BOM ourselves so error offsets below count from the start of the file.
    skip = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        line = _line_at(data, offset)
        encoding, fix = _guess_encoding(data, offset, name)
        raise TunesmithError(
            f"file is not UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}) is not valid UTF-8"
            + (f"; {encoding}" if encoding else ""),
            where=f"{name}:{line}",
            fix=fix,
        ) from None


def _guess_encoding(data: bytes, offset: int, name: str) -> tuple[str, str]:
    """What a file that is not UTF-8 probably is (a clause for the message), and the fix.

    Windows-1252 (cp1252: Excel and Word on Windows) puts its smart quotes, dashes and euro sign at bytes
    0x80-0x9F, where Latin-1 has only control characters that no text uses: such bytes mean cp1252.
    Without them the two agree byte for byte, so converting from cp1252 is right for either. Five bytes
    of that range are undefined in cp1252; a file that holds one is in some other encoding.
    """
    source = Path(name)
    converted = shlex.quote(str(source.with_name(f"{source.stem}.utf8{source.suffix}")))
    try:
        data.decode("cp1252")
    except UnicodeDecodeError:
        return "", (
            f"find the file's encoding (e.g. `file -i {shlex.quote(name)}`) and convert it to a new UTF-8 file: "
            f"`iconv -f ENCODING -t utf-8 {shlex.quote(name)} > {converted}`, then read that one"
        )
    fix = (
        "re-save the file as UTF-8 (in Excel: 'CSV UTF-8'), or convert it to a new file: "
        f"`iconv -f cp1252 -t utf-8 {shlex.quote(name)} > {converted}`, then read that one"
    )
    char = data[offset : offset + 1].decode("cp1252")
    if any(0x80 <= byte <= 0x9F for byte in data):
        return (
            f"the file looks like Windows-1252 (cp1252), in which that byte is {char!r} "
            "(its bytes 0x80-0x9F are smart quotes, dashes and the euro sign)",
            fix,
        )
    return f"the file is probably Windows-1252 (cp1252) or Latin-1, in which that byte is {char!r}", fix


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


# --- JSON / JSONL -------------------------------------------------------------------------------


class _BadJSON(Exception):
    def __init__(self, msg: str, lineno: int = 1, colno: int = 1):
        super().__init__(msg)
        self.msg, self.lineno, self.colno = msg, lineno, colno


def _loads(text: str) -> Any:
    """json.loads, with every way it can refuse text as one exception: a syntax error, nesting deeper
    than Python's recursion limit (RecursionError) and integers of more than 4300 digits (ValueError)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _BadJSON(exc.msg, exc.lineno, exc.colno) from None
    except RecursionError:
        raise _BadJSON("nested too deeply (more levels of [ ] or { } than Python can read)") from None
    except ValueError as exc:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise _BadJSON(str(exc)) from None


_JSONL_FIX = 'each line must be one JSON object, e.g. {"prompt": "...", "completion": "..."}'


def _parse_jsonl(text: str, name: str, bad: BadRecords | None = None) -> list[RawRecord]:
    records: list[RawRecord] = []
    for lineno, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            value = _loads(line)
        except _BadJSON as exc:
            drop(
                bad,
                TunesmithError(
                    f"line is not valid JSON: {exc.msg} (column {exc.colno})", where=f"{name}:{lineno}", fix=_JSONL_FIX
                ),
            )
            continue
        if not isinstance(value, dict):
            drop(
                bad,
                TunesmithError(
                    f"line is a JSON {_json_type(value)}, not an object", where=f"{name}:{lineno}", fix=_JSONL_FIX
                ),
            )
            continue
        records.append(RawRecord(fields=value, where=f"{name}:{lineno}"))
    return records


def _first_line_is_object(text: str) -> bool:
    for line in split_lines(text):
        if line.strip():
            try:
                return isinstance(_loads(line), dict)
            except _BadJSON:
                return False
    return False


def _read_json(path: Path, name: str, bad: BadRecords | None = None) -> list[RawRecord]:
    text = read_text_file(path, name)
    if not text.strip():
        return []
    try:
        value = _loads(text)
    except _BadJSON as exc:
        # JSON Lines saved as `.json` is common (and what `datasets` accepts); read it as such.
        if exc.msg == "Extra data" and _first_line_is_object(text):
            return _parse_jsonl(text, name, bad)
        raise TunesmithError(
            f"file is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            where=f"{name}:{exc.lineno}",
            fix="a .json file must be a list of objects [{...}, {...}] (or use .jsonl, one object per line)",
        ) from None

    if isinstance(value, dict):
        value = _records_list_in_object(value, name)
    elif not isinstance(value, list):
        raise TunesmithError(
            f"file holds a JSON {_json_type(value)}, not a list of records",
            where=name,
            fix="a .json file must be a list of objects [{...}, {...}]",
        )
    records = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            drop(
                bad,
                TunesmithError(
                    f"item is a JSON {_json_type(item)}, not an object",
                    where=f"{name}:[{i}]",
                    fix='every item of the list must be one record object, e.g. {"text": "..."}',
                ),
            )
            continue
        records.append(RawRecord(fields=item, where=f"{name}:[{i}]"))
    return records


def _records_list_in_object(value: dict, name: str) -> list:
    """Unwrap `{"data": [...]}`: an object whose single list-valued key holds the records."""
    list_keys = [key for key, item in value.items() if isinstance(item, list)]
    if len(list_keys) == 1 and list_keys[0] in ("messages", "conversations"):
        # That is one conversation, not a wrapper: unwrapping would turn its turns into records.
        raise TunesmithError(
            f"file holds a single record (an object with '{list_keys[0]}'), not a list of records",
            where=name,
            fix="wrap it in a list: [{...}], or use .jsonl with one record per line",
        )
    if len(list_keys) == 1:
        return value[list_keys[0]]
    if not list_keys:
        raise TunesmithError(
            "top-level JSON object holds no list of records",
            where=name,
            fix='make the file a list of objects [{...}, {...}], or {"data": [{...}, ...]}',
        )
    raise TunesmithError(
        "top-level JSON object has several lists (" + ", ".join(list_keys) + "); cannot tell which holds the records",
        where=name,
        fix='keep only the list of records in the file, e.g. {"data": [...]}',
    )


# --- CSV / TSV ----------------------------------------------------------------------------------


def _read_csv(path: Path, name: str, *, delimiter: str, bad: BadRecords | None = None) -> list[RawRecord]:
    text = read_text_file(path, name)
    shown_delim = "tab" if delimiter == "\t" else f"'{delimiter}'"
    quote_fix = f"quote fields that contain the delimiter ({shown_delim}) or line breaks with double quotes"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    old_limit = csv.field_size_limit()
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        header: list[str] | None = None
        records: list[RawRecord] = []
        prev_end = 0
        try:
            for row in reader:
                # A quoted field may span lines; the record starts right after the previous one ended.
                start, prev_end = prev_end + 1, reader.line_num
                if not row:  # blank line
                    continue
                if header is None:
                    header_where = f"{name}:{start}"
                    header = _check_header(row, header_where, delimiter)
                    continue
                if len(row) != len(header):
                    drop(
                        bad,
                        TunesmithError(
                            f"row has {len(row)} fields but the header has {len(header)}",
                            where=f"{name}:{start}",
                            fix=quote_fix,
                        ),
                    )
                    continue
                records.append(RawRecord(dict(zip(header, row)), f"{name}:{start}", header_where))
        except csv.Error as exc:
            raise TunesmithError(f"malformed CSV: {exc}", where=f"{name}:{reader.line_num}", fix=quote_fix) from None
        return records
    finally:
        csv.field_size_limit(old_limit)


# Delimiters other programs write; one of them inside a one-column header means the file uses it.
_OTHER_DELIMITERS = {";": "semicolon", "\t": "tab", ",": "comma", "|": "vertical bar"}


def _check_header(row: list[str], where: str, delimiter: str) -> list[str]:
    # Stray spaces after the delimiter ("prompt, completion") are a typing habit, not part of the name.
    header = [cell.strip() for cell in row]
    if len(header) == 1:
        _refuse_other_delimiter(header[0], where, delimiter)
    duplicates = sorted({cell for cell in header if header.count(cell) > 1})
    if duplicates:
        raise TunesmithError(
            "header repeats column name(s): " + ", ".join(repr(d) for d in duplicates),
            where=where,
            fix="give every column a distinct name in the first line",
        )
    return header


def _refuse_other_delimiter(cell: str, where: str, delimiter: str) -> None:
    """A header that reads as one column but holds another delimiter: the file is separated by that one
    (Excel in many European locales saves "CSV" with semicolons; a tab-separated export named .csv)."""
    counts = {d: cell.count(d) for d in _OTHER_DELIMITERS if d != delimiter}
    used = max(counts, key=lambda d: counts[d])
    if not counts[used]:
        return
    expected = "tabs (.tsv)" if delimiter == "\t" else "commas (.csv)"
    if used == "\t":
        fix = "rename the file to .tsv: tunesmith reads .tsv files as tab-separated"
    elif used == "," and delimiter == "\t":
        fix = "rename the file to .csv: tunesmith reads .csv files as comma-separated"
    else:
        fix = (
            "save it again separated by commas (Excel: Save As 'CSV UTF-8 (Comma delimited)'; LibreOffice: "
            "Save As 'Text CSV' with 'Edit filter settings' and field delimiter ','), or as tab-separated .tsv"
        )
    names = [part.strip() for part in cell.split(used)]
    raise TunesmithError(
        f"the file looks separated by {_OTHER_DELIMITERS[used]}s, not {expected}: its header "
        f"{cell!r} reads as one column; split at each {_OTHER_DELIMITERS[used]} it names the columns "
        + ", ".join(names),
        where=where,
        fix=fix,
    )


# --- Parquet ------------------------------------------------------------------------------------


def _read_parquet(path: Path, name: str) -> list[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TunesmithError(
            f"could not read the Parquet file: {exc}",
            where=name,
            fix="check the file is a complete Parquet file (re-export it), or convert it to JSONL",
        ) from None
    return [RawRecord(fields=row, where=f"{name}:row {i}") for i, row in enumerate(rows)]


# --- datasets: save_to_disk folders and the hub -------------------------------------------------


def _read_saved_dataset(path: Path, name: str, split: str | None) -> list[RawRecord]:
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        data_files = sorted(p.name for p in path.iterdir() if p.suffix.lower() in SUPPORTED_EXTENSIONS)
        fix = (
            "point data.train at one of its files: " + ", ".join(str(path / f) for f in data_files[:5])
            if data_files
            else "point data.train at a data file, or at a folder written by datasets' save_to_disk"
        )
        raise TunesmithError("is a folder but not a dataset saved with save_to_disk", where=name, fix=fix)

    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a damaged folder; all mean the same here
        raise TunesmithError(
            f"could not load the saved dataset: {exc}",
            where=name,
            fix="re-save it with save_to_disk, or export it to JSONL and point data.train at that",
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        wanted = split or "train"
        if wanted not in loaded:
            existing = ", ".join(loaded.keys())
            raise TunesmithError(
                f"split '{wanted}' not found; the saved dataset has: {existing}",
                where=name,
                fix=f"choose one of the splits it has: {existing}",
            )
        loaded = loaded[wanted]
    # A plain saved Dataset has no splits, so `split` does not apply to it.
    return _dataset_records(loaded, name)


def _read_hub(name: str, split: str | None) -> list[RawRecord]:
    # huggingface_hub retries an unreachable hub for ~28 s before it gives up; one connect says so at once
    # (as models/resolve.py does for model ids). In offline mode datasets reads its cache without retrying.
    if not _offline_mode() and not hub_reachable():
        raise TunesmithError(
            f"'{name}' is not a local file or folder, so it was read as a Hugging Face hub dataset id, "
            "and the hub is unreachable",
            where=name,
            fix=_hub_fix(name),
        )

    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # network, auth, missing repo, unknown split: the remedy is the same
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TunesmithError(
            f"'{name}' is not a local file or folder, and loading it from the Hugging Face hub failed "
            f"(hub unreachable or dataset/split not found): {detail}",
            where=name,
            fix="check the name and your network; or " + _hub_fix(name),
        ) from None
    return _dataset_records(loaded, name)


def _offline_mode() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: the user asked for the cache, which needs no network."""
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_fix(name: str) -> str:
    folder = name.rsplit("/", 1)[-1]
    return (
        f'on a machine with network save it with datasets: `python -c "import datasets; '
        f"datasets.load_dataset('{name}').save_to_disk('{folder}')\"`, copy the {folder} folder here and set "
        f"data.train to its local path; or set data.train to a local data file ({', '.join(SUPPORTED_EXTENSIONS)}). "
        "If it is meant to be a local path, check it: a config's relative paths are read from the config's folder"
    )


def _dataset_records(dataset: Any, name: str) -> list[RawRecord]:
    # to_list() goes through Arrow, so values are plain Python whatever format the dataset was saved with.
    rows = dataset.to_list() if hasattr(dataset, "to_list") else [dict(row) for row in dataset]
    return [RawRecord(fields=row, where=f"{name}:row {i}") for i, row in enumerate(rows)]

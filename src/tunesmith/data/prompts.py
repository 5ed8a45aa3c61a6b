"""What `predict` reads: prompts to answer, with or without the answer a training record carries.

A training record must end in an assistant answer (formats.py refuses one without: nothing to learn
from); a record to answer need not. A chat run's predict input takes, per record:

  {"messages": [..., {"role": "user", "content": ...}]}   a conversation ending in a user turn
  {"conversations": [...]}                               the same, ShareGPT spelling
  {"prompt": "..."}                                      one user turn
  {"instruction": "...", "input": "..."}                 alpaca; `input` is optional
  {"text": "..."}                                        one user turn

and a `.txt` file holds one prompt per line (read as `{"text": line}`; blank lines are skipped). A final
assistant turn (or a `completion`, an alpaca `output`) is dropped from the prompt and kept as its
`reference`, so the answers can be compared with it. The run's `data.columns` and `data.system_prompt`
apply as they did in training.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.formats import normalise
from tunesmith.data.readers import RawRecord, read_records, read_text_file, split_lines
from tunesmith.errors import TunesmithError

__all__ = ["Prompt", "read_prompt_records", "chat_prompts", "plain_prompts"]

# Each shape a chat prompt may take: (formats.py's format, the column that marks it), in the order tried.
_MARKS = (
    ("messages", "messages"),
    ("sharegpt", "conversations"),
    ("alpaca", "instruction"),
    ("prompt_completion", "prompt"),
    ("text", "text"),
)
# The answer column of the formats that keep it in a column of its own.
_ANSWER_COLUMN = {"alpaca": "output", "prompt_completion": "completion"}
# A stand-in for the answer predict writes, so a prompt passes the same checks (roles, strings, system
# turn first) as a training record; it is removed again right after them.
_PLACEHOLDER_TURN = {"messages": {"role": "assistant", "content": ""}, "sharegpt": {"from": "gpt", "value": ""}}
_SHAPES_FIX = (
    'write each line as {"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}, '
    "or give a .txt file with one prompt per line"
)


@dataclass
class Prompt:
    """A conversation to answer (ending in a user turn) and the record's own answer, if it had one."""

    where: str
    messages: list[dict]
    reference: str | None = None


def read_prompt_records(source: str | os.PathLike, data_cfg=None, split: str | None = None, bad=None) -> list:
    """The records of a predict input: a `.txt` file gives `{"text": line}` per non-blank line, anything
    else goes through read_records. The signature of a task's `read`, so data.prepare.load_examples takes it."""
    path = Path(os.fspath(source))
    if not (path.is_file() and path.suffix.lower() == ".txt"):
        return read_records(source, split=split, bad=bad)
    lines = split_lines(read_text_file(path, str(source)))  # UTF-8 checked, with the line of a bad byte
    records = [
        RawRecord(fields={"text": line.strip()}, where=f"{source}:{number}")
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    if not records:
        raise TunesmithError("no prompts: the file is empty", where=str(source), fix="write one prompt per line")
    return records


def chat_prompts(records: list[RawRecord], data_cfg) -> tuple[list[Prompt], str]:
    """A chat run's predict input (see the module docstring): (prompts, the shapes found)."""
    columns = dict(data_cfg.columns or {})
    prompts, shapes = [], []
    for record in records:
        fmt = _shape_of(record, columns)
        prompts.append(_prompt(record, fmt, columns, data_cfg.system_prompt))
        shapes.append(fmt)
    return prompts, "prompts (" + ", ".join(sorted(set(shapes))) + ")"


def plain_prompts(records: list[RawRecord], data_cfg) -> tuple[list, str]:
    """Texts to continue (continued pre-training): a `text` or `prompt` column (or the run's mapped text
    column), or the lines of a .txt file. Examples as formats.py makes them, with `text` set."""
    columns = dict(data_cfg.columns or {})
    wanted = list(dict.fromkeys([columns.get("text", "text"), "text", "prompt"]))
    texts = []
    for record in records:
        column = next((name for name in wanted if name in record.fields), None)
        if column is None:
            raise TunesmithError(
                f"a text to continue needs a {' or '.join(wanted)} column (columns found: {_names(record)})",
                where=record.where,
                fix='write each line as {"text": "..."}, or give a .txt file with one text per line',
            )
        texts.append(RawRecord(fields={"text": record.fields[column]}, where=record.where))
    # formats' checks of a text record (a string, named by its line) are the training ones
    return normalise(texts, "text"), "text"


# --- helpers ------------------------------------------------------------------------------------


def _names(record: RawRecord) -> str:
    return ", ".join(map(str, record.fields)) or "none"


def _shape_of(record: RawRecord, columns: dict[str, str]) -> str:
    for fmt, canon in _MARKS:
        if columns.get(canon, canon) in record.fields:
            return fmt
    wanted = ", ".join(columns.get(canon, canon) for _, canon in _MARKS)
    raise TunesmithError(
        f"a record to answer needs one of the columns {wanted} (columns found: {_names(record)})",
        where=record.where,
        fix=_SHAPES_FIX,
    )


def _prompt(record: RawRecord, fmt: str, columns: dict[str, str], system_prompt: str | None) -> Prompt:
    """One record as a prompt, through formats.py's own checks; its answer, if any, becomes the reference."""
    if fmt == "text":
        (example,) = normalise([record], "text", columns)
        system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
        return Prompt(record.where, system + [{"role": "user", "content": example.text}])
    completed, had_answer = _with_answer(record, fmt, columns)
    (example,) = normalise([completed], fmt, columns, system_prompt)
    messages = example.messages or []  # every chat format gives messages
    turns = messages[:-1]  # without the answer: the placeholder, or the record's own
    reference = messages[-1]["content"] if had_answer else None
    if fmt in _PLACEHOLDER_TURN and turns and turns[-1]["role"] == "assistant":
        reference = turns.pop()["content"]  # the conversation's own final answer
    if not turns or turns[-1]["role"] != "user":
        ends = f"ends in a {turns[-1]['role']} turn" if turns else "has no turns"
        raise TunesmithError(
            f"the conversation {ends}, so there is no user turn to answer",
            where=record.where,
            fix="end each conversation with the user's turn (a final assistant turn is dropped and kept as the reference)",
        )
    return Prompt(record.where, turns, reference or None)  # an empty answer ("completion": "") is no reference


def _with_answer(record: RawRecord, fmt: str, columns: dict[str, str]) -> tuple[RawRecord, bool]:
    """The record with an answer to drop: its own (True), or a placeholder added (False)."""
    fields = dict(record.fields)
    if fmt in _ANSWER_COLUMN:
        column = columns.get(_ANSWER_COLUMN[fmt], _ANSWER_COLUMN[fmt])
        if fields.get(column) is not None:
            return record, True
        fields[column] = ""
        return RawRecord(fields, record.where), False
    canon = "messages" if fmt == "messages" else "conversations"
    column = columns.get(canon, canon)
    turns = fields[column]
    if isinstance(turns, str):  # CSV holds a conversation as JSON text
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError:
            return record, False  # formats.py names what is wrong with it
    if isinstance(turns, list):
        fields[column] = [*turns, _PLACEHOLDER_TURN[fmt]]
    return RawRecord(fields, record.where), False

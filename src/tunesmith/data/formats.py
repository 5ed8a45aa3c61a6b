"""Turn raw rows of any supported layout into one shape: a list of chat turns, or plain text.

The layout is detected from the columns of the first record (after the user's `data.columns`
renaming) and every record is then validated against it, so a bad row is reported by its own
location rather than as a crash deep inside tokenisation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunesmith.data.readers import RawRecord
from tunesmith.errors import TunesmithError

__all__ = [
    "FORMATS",
    "ROLES",
    "CANONICAL_COLUMNS",
    "Example",
    "detect_format",
    "normalise",
    "suggest_column",
    "missing_column_error",
]

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
ROLES = ("system", "user", "assistant")
CANONICAL_COLUMNS = (
    "messages",
    "conversations",
    "instruction",
    "input",
    "output",
    "prompt",
    "completion",
    "text",
    "system",
)

# Columns each format needs, in detection priority order.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
_OPTIONAL: dict[str, tuple[str, ...]] = {
    "alpaca": ("input", "system"),
    "prompt_completion": ("system",),
}

# ShareGPT `from` values (lower-cased) and the role each stands for.
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}

# Common column names, used only to make the fix of a missing or undetected column concrete. The task
# roles (label, text_pair, ...) are here too: tasks name their columns with missing_column_error.
_ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("question", "query", "input", "instruction", "source", "context"),
    "completion": ("answer", "response", "output", "target", "reply", "label"),
    "messages": ("conversation", "dialog", "dialogue", "chat", "turns"),
    "text": ("content", "body", "document", "sentence", "passage", "review", "message", "utterance", "comment"),
    "label": ("category", "class", "labels", "tag", "tags", "intent", "sentiment", "topic", "section", "target"),
    "text_pair": ("passage", "document", "context", "sentence2", "hypothesis"),
    "output": ("answer", "response", "completion", "target"),
    "instruction": ("question", "prompt", "query"),
    "image": ("file_name", "filename", "file", "path", "image_path", "picture", "img"),
}
_DEFAULT_COLUMNS_EXAMPLE = "data.columns: {prompt: question, completion: answer}"


@dataclass
class Example:
    """One normalised record: chat `messages` ({"role", "content"} dicts) or plain `text`."""

    where: str
    messages: list[dict] | None = None
    text: str | None = None


def detect_format(records: list[RawRecord], columns: dict[str, str] | None = None) -> str:
    """Name the format of `records` from the columns of the first one (see FORMATS)."""
    if not records:
        raise TunesmithError("no records to detect a format from", fix="check that data.train holds records")
    mapping = _check_columns(columns)
    first = records[0]
    found = list(first.fields)
    for canon, column in mapping.items():
        # Optional columns may be absent from some records, the first one included.
        if column not in first.fields and canon not in ("input", "system"):
            raise TunesmithError(
                f"data.columns maps {canon} to '{column}', but the data has no column '{column}'; "
                f"columns found: {_list(found)}",
                where=first.header or _source_of(first.where),
                fix="set data.columns to column names that exist in the data",
            )
    # A format whose columns the user renamed explicitly wins over one matched by default names:
    # {text: body} on data that also happens to have prompt/completion columns means text.
    explicit_first = sorted(_REQUIRED, key=lambda f: not any(c in mapping for c in _REQUIRED[f]))
    for fmt in explicit_first:
        needed = _REQUIRED[fmt]
        if all(mapping.get(canon, canon) in first.fields for canon in needed):
            return fmt
    needs = "; ".join(
        f"{fmt}: {', '.join(need)}" + (f" (optional: {', '.join(_OPTIONAL[fmt])})" if fmt in _OPTIONAL else "")
        for fmt, need in _REQUIRED.items()
    )
    raise TunesmithError(
        f"cannot tell the data format from the columns found ({_list(found)}). "
        f"The formats and the columns each needs are: {needs}",
        where=first.header or _source_of(first.where),
        fix=f"set data.columns, e.g. {_suggest_columns(found) or _DEFAULT_COLUMNS_EXAMPLE}",
    )


def normalise(
    records: list[RawRecord],
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    system_prompt: str | None = None,
) -> list[Example]:
    """Validate every record and convert it to an `Example`.

    `fmt` is one of FORMATS or "auto" (detect from the first record). `columns` renames canonical
    columns to the user's (`{"prompt": "question"}`). `system_prompt` becomes the first turn of chat
    examples that have none; plain text ignores it.
    """
    if fmt == "auto":
        fmt = detect_format(records, columns)
    elif fmt not in FORMATS:
        raise TunesmithError(
            f"unknown data format '{fmt}'",
            where="data.format",
            fix="use one of: auto, " + ", ".join(FORMATS),
        )
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise TunesmithError(
            "system prompt must be a string", where="data.system_prompt", fix="quote the system prompt as text"
        )
    mapping = _check_columns(columns)
    convert = _CONVERTERS[fmt]
    examples = []
    roles = _REQUIRED[fmt] + _OPTIONAL.get(fmt, ())
    for record in records:
        for canon in _REQUIRED[fmt]:
            column = mapping.get(canon, canon)
            if column not in record.fields:
                taken = {mapping.get(other, other) for other in roles if other != canon}
                raise missing_column_error(record, canon, column, needed_by=f"the {fmt} format", taken=taken)
        examples.append(convert(_Row(record, mapping), system_prompt))
    return examples


def suggest_column(found, role: str, taken=(), *, only_familiar: bool = False) -> str | None:
    """The user's column that most likely holds `role`: one with a familiar name for it (`category` for a
    label), else (unless `only_familiar`) the only column that no other role reads. None when nothing
    stands out."""
    free = [str(name) for name in found if str(name) not in set(taken)]
    lower = {name.lower(): name for name in free}
    familiar = next((lower[alias] for alias in _ALIASES.get(role, ()) if alias in lower), None)
    if familiar is not None or only_familiar:
        return familiar
    return free[0] if len(free) == 1 else None


def missing_column_error(record: RawRecord, role: str, column: str, *, needed_by: str, taken=()) -> TunesmithError:
    """`record` has no `column`, which holds `role` (the user's name for it, or the role's own).

    A table file (CSV/TSV) is fixed in its header, so the error names the header line and maps the column
    that most likely holds the role (`taken`: the columns the other roles read), e.g.
    `data.columns: {label: category}`. A JSON record is named by its own line: its neighbours may have
    the column, so a mapping is offered only for a familiar name and as the second choice.
    """
    found = list(record.fields)
    message = f"no '{column}' column (needed by {needed_by}); its columns are: {_list(found)}"
    if record.header is not None:
        guess = suggest_column(found, role, taken)
        fix = (
            f"if {guess!r} holds the {role}, map it: data.columns: {{{role}: {guess}}}"
            if guess is not None
            else f"name the column that holds the {role}: data.columns: {{{role}: <one of {_list(found)}>}}"
        )
        return TunesmithError("the header has " + message, where=record.header, fix=fix)
    guess = suggest_column(found, role, taken, only_familiar=True)
    fix = f"give every record a '{column}' value, or remove this record"
    if guess is not None:
        fix += f"; if your records call it {guess!r}, map it: data.columns: {{{role}: {guess}}}"
    return TunesmithError("record has " + message, where=record.where, fix=fix)


# --- helpers ------------------------------------------------------------------------------------


class _Row:
    """A record seen through the column mapping; errors name the user's column, not the canonical one."""

    def __init__(self, record: RawRecord, mapping: dict[str, str]):
        self.record = record
        self.where = record.where
        self._mapping = mapping

    def column(self, canon: str) -> str:
        return self._mapping.get(canon, canon)

    def get(self, canon: str) -> Any:
        return self.record.fields.get(self.column(canon))

    def has(self, canon: str) -> bool:
        return self.column(canon) in self.record.fields

    def string(self, canon: str) -> str:
        value = self.get(canon)
        if not isinstance(value, str):
            raise _not_a_string(self.where, self.column(canon), value)
        return value


def _check_columns(columns: dict[str, str] | None) -> dict[str, str]:
    if not columns:
        return {}
    if not isinstance(columns, dict):
        raise TunesmithError(
            "data.columns must be a mapping",
            where="data.columns",
            fix="write it as data.columns: {prompt: question, completion: answer}",
        )
    for canon, column in columns.items():
        if canon not in CANONICAL_COLUMNS:
            raise TunesmithError(
                f"unknown column role '{canon}'",
                where="data.columns",
                fix="the keys of data.columns are the roles: "
                + ", ".join(CANONICAL_COLUMNS)
                + "; the values are your column names",
            )
        if not isinstance(column, str):
            raise TunesmithError(
                f"data.columns.{canon} must be a column name (a string)",
                where="data.columns",
                fix=f"set data.columns.{canon} to a column name",
            )
    return dict(columns)


def _source_of(where: str) -> str:
    # `where` ends in ":LINE", ":[i]" or ":row i"; rsplit keeps drive letters like "C:" intact.
    return where.rsplit(":", 1)[0] if ":" in where else where


def _list(names: Any) -> str:
    names = list(names)
    return ", ".join(str(n) for n in names) if names else "(none)"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _not_a_string(where: str, field: str, value: Any) -> TunesmithError:
    fix = "make it a string"
    if isinstance(value, list):
        fix = "make it a single string (join multi-part content into one text)"
    elif value is None:
        fix = 'make it a string (use "" for empty) or remove the record'
    return TunesmithError(f"{field} is {_describe(value)}, not a string", where=where, fix=fix)


def _suggest_columns(found: list[str]) -> str | None:
    """A `data.columns` line built from the user's own column names, when they look familiar."""
    lower = {str(name).lower(): str(name) for name in found}

    def pick(canon: str) -> str | None:
        # The role's own name first: `prompt` beside `response` needs only {completion: response}.
        return next((lower[a] for a in (canon, *_ALIASES[canon]) if a in lower), None)

    prompt, completion = pick("prompt"), pick("completion")
    if prompt and completion and prompt != completion:
        renamed = {role: name for role, name in (("prompt", prompt), ("completion", completion)) if role != name}
        return "data.columns: {" + ", ".join(f"{role}: {name}" for role, name in renamed.items()) + "}"
    if pick("messages"):
        return f"data.columns: {{messages: {pick('messages')}}}"
    if pick("text"):
        return f"data.columns: {{text: {pick('text')}}}"
    return None


def _finish_chat(row: _Row, field: str, turns: list[dict], system_prompt: str | None) -> Example:
    """Check turn order and add the default system prompt; shared by every chat format."""
    for i, turn in enumerate(turns):
        if turn["role"] == "system" and i != 0:
            raise TunesmithError(
                f"{field}[{i}] is a system turn but is not the first turn",
                where=row.where,
                fix="put the system turn first (only one system turn per record)",
            )
    if not any(turn["role"] == "assistant" for turn in turns):
        raise TunesmithError(
            f"{field} has no assistant turn, so there is nothing to learn from",
            where=row.where,
            fix="add the assistant's reply, or remove this record",
        )
    if system_prompt is not None and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system_prompt})
    return Example(where=row.where, messages=turns)


def _turn_list(row: _Row, canon: str) -> tuple[str, list]:
    field = row.column(canon)
    value = row.get(canon)
    if isinstance(value, str):
        # CSV cannot hold lists, so a conversation column there arrives as JSON text.
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            value = parsed
    if not isinstance(value, list):
        raise TunesmithError(
            f"{field} is {_describe(value)}, not a list of turns",
            where=row.where,
            fix=f'make {field} a list like [{{"role": "user", "content": "..."}}, '
            f'{{"role": "assistant", "content": "..."}}]',
        )
    return field, value


# --- converters ---------------------------------------------------------------------------------


def _from_messages(row: _Row, system_prompt: str | None) -> Example:
    field, items = _turn_list(row, "messages")
    turns = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "role" not in item or "content" not in item:
            raise TunesmithError(
                f"{field}[{i}] is not a {{role, content}} object",
                where=row.where,
                fix='write each turn as {"role": "user", "content": "..."}',
            )
        role = item["role"]
        if role not in ROLES:
            raise TunesmithError(
                f"{field}[{i}].role is {role!r}, which is not an allowed role",
                where=row.where,
                fix="use one of the roles: " + ", ".join(ROLES),
            )
        content = item["content"]
        if not isinstance(content, str):
            raise _not_a_string(row.where, f"{field}[{i}].content", content)
        turns.append({"role": role, "content": content})
    return _finish_chat(row, field, turns, system_prompt)


def _from_sharegpt(row: _Row, system_prompt: str | None) -> Example:
    field, items = _turn_list(row, "conversations")
    turns = []
    for i, item in enumerate(items):
        # Some exports mix in OpenAI-style {role, content} turns; accept either spelling.
        if isinstance(item, dict) and "from" in item and "value" in item:
            speaker_key, text_key = "from", "value"
        elif isinstance(item, dict) and "role" in item and "content" in item:
            speaker_key, text_key = "role", "content"
        else:
            raise TunesmithError(
                f"{field}[{i}] is not a {{from, value}} object",
                where=row.where,
                fix='write each turn as {"from": "human", "value": "..."}',
            )
        speaker = item[speaker_key]
        role = _SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise TunesmithError(
                f"{field}[{i}].{speaker_key} is {speaker!r}, which is not a known speaker",
                where=row.where,
                fix="use one of the from values: "
                + ", ".join(_SHAREGPT_ROLES)
                + " (mapped to the roles "
                + ", ".join(ROLES)
                + ")",
            )
        content = item[text_key]
        if not isinstance(content, str):
            raise _not_a_string(row.where, f"{field}[{i}].{text_key}", content)
        turns.append({"role": role, "content": content})
    return _finish_chat(row, field, turns, system_prompt)


def _system_turn(row: _Row, system_prompt: str | None) -> list[dict]:
    """The record's own `system` column when it has text, else the configured default."""
    value = row.get("system")
    if value is not None and not isinstance(value, str):
        raise _not_a_string(row.where, row.column("system"), value)
    text = value if value else system_prompt
    return [{"role": "system", "content": text}] if text is not None else []


def _from_alpaca(row: _Row, system_prompt: str | None) -> Example:
    instruction = row.string("instruction")
    output = row.string("output")
    extra = row.get("input")
    # `input` is optional: a missing column or null (as Parquet writes it) means "no input".
    if extra is not None and not isinstance(extra, str):
        raise _not_a_string(row.where, row.column("input"), extra)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    turns = _system_turn(row, system_prompt) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": output},
    ]
    return Example(where=row.where, messages=turns)


def _from_prompt_completion(row: _Row, system_prompt: str | None) -> Example:
    prompt = row.string("prompt")
    completion = row.string("completion")
    turns = _system_turn(row, system_prompt) + [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": completion},
    ]
    return Example(where=row.where, messages=turns)


def _from_text(row: _Row, system_prompt: str | None) -> Example:
    return Example(where=row.where, text=row.string("text"))


_CONVERTERS = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "alpaca": _from_alpaca,
    "prompt_completion": _from_prompt_completion,
    "text": _from_text,
}


def task_columns(data_cfg, readable, task: str) -> dict[str, str]:
    """The user's `data.columns` for a task that reads the canonical columns `readable`: a key the task
    would ignore is an error, so a typo in the mapping never silently reads the wrong column."""
    columns = dict(data_cfg.columns)
    unknown = set(columns) - set(readable)
    if unknown:
        raise TunesmithError(
            f"data.columns maps {sorted(unknown)}, which {task} does not read",
            where="data.columns",
            fix=f"map only {', '.join(readable)}, e.g. {{{readable[0]}: <your column>}}",
        )
    return columns

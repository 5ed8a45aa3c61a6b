"""Tests for tunesmith.data.formats: detection, normalisation, column mapping and validation."""

from __future__ import annotations

import pytest

from tunesmith.data.formats import FORMATS, ROLES, Example, detect_format, normalise
from tunesmith.data.readers import RawRecord
from tunesmith.errors import TunesmithError


def recs(*rows: dict, path: str = "train.jsonl") -> list[RawRecord]:
    return [RawRecord(fields=row, where=f"{path}:{i}") for i, row in enumerate(rows, start=1)]


def chat(*pairs: tuple[str, object]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


USER_ASSISTANT = chat(("user", "hi"), ("assistant", "hello"))


def test_constants():
    assert FORMATS == ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
    assert ROLES == ("system", "user", "assistant")


# --- detection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"messages": USER_ASSISTANT}, "messages"),
        ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "sharegpt"),
        ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
        ({"instruction": "i", "output": "o"}, "alpaca"),
        ({"prompt": "p", "completion": "c"}, "prompt_completion"),
        ({"text": "t"}, "text"),
        ({"messages": USER_ASSISTANT, "text": "rendered"}, "messages"),
    ],
)
def test_detect_by_columns(row, expected):
    assert detect_format(recs(row)) == expected


@pytest.mark.parametrize(
    "row, columns, expected",
    [
        ({"dialog": USER_ASSISTANT}, {"messages": "dialog"}, "messages"),
        ({"turns": [{"from": "human", "value": "hi"}]}, {"conversations": "turns"}, "sharegpt"),
        (
            {"task": "t", "context": "", "response": "r"},
            {"instruction": "task", "input": "context", "output": "response"},
            "alpaca",
        ),
        ({"question": "q", "answer": "a"}, {"prompt": "question", "completion": "answer"}, "prompt_completion"),
        ({"body": "b"}, {"text": "body"}, "text"),
    ],
)
def test_detect_with_column_mapping(row, columns, expected):
    assert detect_format(recs(row), columns) == expected


def test_explicitly_mapped_format_wins_over_default_names():
    row = {"prompt": "p", "completion": "c", "body": "b"}
    assert detect_format(recs(row)) == "prompt_completion"
    assert detect_format(recs(row), {"text": "body"}) == "text"


def test_undetectable_format_lists_columns_formats_and_fix():
    with pytest.raises(TunesmithError) as info:
        detect_format(recs({"foo": "x", "bar": "y"}, path="data/train.jsonl"))
    err = info.value
    assert err.where == "data/train.jsonl"
    assert "foo, bar" in err.message
    for fmt in FORMATS:
        assert fmt in err.message
    assert "prompt, completion" in err.message and "instruction, output" in err.message
    assert err.fix == "set data.columns, e.g. data.columns: {prompt: question, completion: answer}"


def test_undetectable_format_suggests_the_users_own_columns():
    with pytest.raises(TunesmithError) as info:
        detect_format(recs({"Question": "q", "Answer": "a"}))
    assert "data.columns: {prompt: Question, completion: Answer}" in info.value.fix


def test_mapping_to_a_missing_column():
    with pytest.raises(TunesmithError, match="no column 'questoin'") as info:
        detect_format(recs({"question": "q", "answer": "a"}), {"prompt": "questoin", "completion": "answer"})
    assert "question, answer" in info.value.message


def test_mapping_with_unknown_role():
    with pytest.raises(TunesmithError, match="unknown column role 'answer'") as info:
        detect_format(recs({"q": "q"}), {"answer": "q"})
    assert info.value.where == "data.columns"


def test_detect_needs_records():
    with pytest.raises(TunesmithError, match="no records"):
        detect_format([])


def test_unknown_format_name():
    with pytest.raises(TunesmithError, match="unknown data format 'chatml'") as info:
        normalise(recs({"text": "t"}), fmt="chatml")
    assert info.value.where == "data.format"


# --- messages -----------------------------------------------------------------------------------


def test_messages_normalised_exactly():
    turns = chat(("system", "  be brief "), ("user", "hi\n"), ("assistant", ""))
    [example] = normalise(recs({"messages": turns, "extra": 1}))
    assert example == Example(where="train.jsonl:1", messages=turns)


def test_messages_extra_keys_in_turns_are_dropped():
    row = {"messages": [{"role": "user", "content": "hi", "name": None}, {"role": "assistant", "content": "hello"}]}
    [example] = normalise(recs(row))
    assert example.messages == USER_ASSISTANT


def test_messages_from_csv_json_text():
    row = {"messages": '[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]'}
    [example] = normalise(recs(row, path="train.csv"))
    assert example.messages == USER_ASSISTANT


def test_messages_system_prompt_prepended_only_when_missing():
    rows = recs({"messages": USER_ASSISTANT}, {"messages": chat(("system", "own"), ("user", "u"), ("assistant", "a"))})
    first, second = normalise(rows, system_prompt="default")
    assert first.messages[0] == {"role": "system", "content": "default"}
    assert first.messages[1:] == USER_ASSISTANT
    assert [t["content"] for t in second.messages] == ["own", "u", "a"]


def test_messages_column_mapping():
    [example] = normalise(recs({"dialog": USER_ASSISTANT}), columns={"messages": "dialog"})
    assert example.messages == USER_ASSISTANT


def test_normalise_does_not_mutate_records():
    turns = chat(("user", "hi"), ("assistant", "hello"))
    records = recs({"messages": turns})
    normalise(records, system_prompt="sys")
    assert records[0].fields["messages"] == USER_ASSISTANT


@pytest.mark.parametrize(
    "turns, pattern",
    [
        (chat(("user", "hi"), ("tool", "x"), ("assistant", "a")), r"messages\[1\]\.role is 'tool'"),
        (chat(("user", None), ("assistant", "a")), r"messages\[0\]\.content is null"),
        (chat(("user", 3), ("assistant", "a")), r"messages\[0\]\.content is a number"),
        (chat(("user", ["a", "b"]), ("assistant", "a")), r"messages\[0\]\.content is a list"),
        (chat(("user", "hi")), "nothing to learn from"),
        ([], "nothing to learn from"),
        (
            chat(("user", "hi"), ("system", "s"), ("assistant", "a")),
            r"messages\[1\] is a system turn but is not the first",
        ),
        ([{"role": "user"}, {"role": "assistant", "content": "a"}], r"messages\[0\] is not a \{role, content\}"),
        (["hi", "there"], r"messages\[0\] is not a \{role, content\}"),
    ],
)
def test_messages_validation(turns, pattern):
    rows = recs({"messages": USER_ASSISTANT}, {"messages": USER_ASSISTANT}, {"messages": turns})
    with pytest.raises(TunesmithError, match=pattern) as info:
        normalise(rows)
    assert info.value.where == "train.jsonl:3"
    assert "train.jsonl:3" in str(info.value)


def test_messages_bad_role_lists_allowed_roles():
    with pytest.raises(TunesmithError) as info:
        normalise(recs({"messages": chat(("bot", "a"), ("assistant", "b"))}))
    assert "system, user, assistant" in info.value.fix


def test_messages_not_a_list():
    rows = recs({"messages": USER_ASSISTANT}, {"messages": "hello"})
    with pytest.raises(TunesmithError, match="messages is a str, not a list of turns") as info:
        normalise(rows)
    assert info.value.where == "train.jsonl:2"


def test_errors_name_the_users_column():
    rows = recs({"dialog": chat(("user", "hi"), ("assistant", None))})
    with pytest.raises(TunesmithError, match=r"dialog\[1\]\.content is null"):
        normalise(rows, columns={"messages": "dialog"})


def test_later_record_missing_the_format_column():
    rows = recs({"messages": USER_ASSISTANT}, {"text": "oops"})
    with pytest.raises(TunesmithError, match="no 'messages' column") as info:
        normalise(rows)
    assert info.value.where == "train.jsonl:2"
    assert "text" in info.value.message


# --- sharegpt -----------------------------------------------------------------------------------


def test_sharegpt_roles_are_mapped():
    conv = [
        {"from": "system", "value": "sys"},
        {"from": "human", "value": "q1"},
        {"from": "gpt", "value": "a1"},
        {"from": "user", "value": "q2"},
        {"from": "model", "value": "a2"},
        {"from": "Human", "value": "q3"},
        {"from": "bot", "value": "a3"},
        {"from": "user", "value": "q4"},
        {"from": "assistant", "value": "a4"},
    ]
    [example] = normalise(recs({"conversations": conv}))
    assert [t["role"] for t in example.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert [t["content"] for t in example.messages][:3] == ["sys", "q1", "a1"]


def test_sharegpt_accepts_role_content_turns_and_mapping():
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    [example] = normalise(recs({"turns": conv}), columns={"conversations": "turns"}, system_prompt="S")
    assert example.messages == [{"role": "system", "content": "S"}] + USER_ASSISTANT


def test_sharegpt_unknown_from_lists_accepted_values():
    conv = [{"from": "human", "value": "hi"}, {"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]
    rows = recs({"conversations": conv}, path="sg.json")
    with pytest.raises(TunesmithError, match=r"conversations\[1\]\.from is 'narrator'") as info:
        normalise(rows)
    assert info.value.where == "sg.json:1"
    for value in ("human", "gpt", "model", "bot", "system"):
        assert value in info.value.fix


@pytest.mark.parametrize(
    "conv, pattern",
    [
        ([{"from": "human", "value": None}, {"from": "gpt", "value": "a"}], r"conversations\[0\]\.value is null"),
        ([{"from": "human", "value": "q"}], "nothing to learn from"),
        (
            [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}, {"from": "gpt", "value": "a"}],
            "not the first",
        ),
        ([{"speaker": "human", "text": "q"}], r"not a \{from, value\}"),
    ],
)
def test_sharegpt_validation(conv, pattern):
    with pytest.raises(TunesmithError, match=pattern) as info:
        normalise(recs({"conversations": conv}))
    assert info.value.where == "train.jsonl:1"


# --- alpaca -------------------------------------------------------------------------------------


def test_alpaca_with_and_without_input():
    rows = recs(
        {"instruction": "Translate", "input": "bonjour", "output": "hello"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Say bye", "input": None, "output": "bye"},
        {"instruction": "No input column", "output": "ok"},
    )
    examples = normalise(rows)
    assert examples[0].messages == chat(("user", "Translate\n\nbonjour"), ("assistant", "hello"))
    assert examples[1].messages == chat(("user", "Say hi"), ("assistant", "hi"))
    assert examples[2].messages == chat(("user", "Say bye"), ("assistant", "bye"))
    assert examples[3].messages == chat(("user", "No input column"), ("assistant", "ok"))


def test_alpaca_system_column_and_system_prompt():
    rows = recs(
        {"instruction": "i", "output": "o", "system": "own"},
        {"instruction": "i", "output": "o", "system": ""},
        {"instruction": "i", "output": "o"},
    )
    examples = normalise(rows, system_prompt="default")
    assert [e.messages[0] for e in examples] == [
        {"role": "system", "content": "own"},
        {"role": "system", "content": "default"},
        {"role": "system", "content": "default"},
    ]
    assert normalise(rows[2:])[0].messages == chat(("user", "i"), ("assistant", "o"))


def test_alpaca_column_mapping():
    row = {"task": "T", "context": "C", "response": "R", "sys": "S"}
    columns = {"instruction": "task", "input": "context", "output": "response", "system": "sys"}
    [example] = normalise(recs(row), columns=columns)
    assert example.messages == chat(("system", "S"), ("user", "T\n\nC"), ("assistant", "R"))


def test_alpaca_empty_output_is_allowed():
    [example] = normalise(recs({"instruction": "i", "output": ""}))
    assert example.messages[-1] == {"role": "assistant", "content": ""}


@pytest.mark.parametrize(
    "row, pattern",
    [
        ({"instruction": None, "output": "o"}, "instruction is null"),
        ({"instruction": "i", "output": 5}, r"output is a number \(5\)"),
        ({"instruction": "i", "input": ["x"], "output": "o"}, "input is a list"),
        ({"instruction": "i", "output": "o", "system": 1}, "system is a number"),
    ],
)
def test_alpaca_validation(row, pattern):
    with pytest.raises(TunesmithError, match=pattern) as info:
        normalise(recs({"instruction": "i", "output": "o"}, row), fmt="alpaca")
    assert info.value.where == "train.jsonl:2"


# --- prompt/completion --------------------------------------------------------------------------


def test_prompt_completion_with_mapping_and_system_prompt():
    [example] = normalise(
        recs({"question": " q ", "answer": "a\n"}),
        columns={"prompt": "question", "completion": "answer"},
        system_prompt="S",
    )
    assert example.messages == chat(("system", "S"), ("user", " q "), ("assistant", "a\n"))
    assert example.text is None


def test_prompt_completion_non_string_names_users_column():
    rows = recs({"question": "q", "answer": "a"}, {"question": "q", "answer": None})
    with pytest.raises(TunesmithError, match="answer is null") as info:
        normalise(rows, columns={"prompt": "question", "completion": "answer"})
    assert info.value.where == "train.jsonl:2"


def test_explicit_format_checks_columns():
    with pytest.raises(TunesmithError, match="no 'prompt' column"):
        normalise(recs({"text": "t"}), fmt="prompt_completion")


# --- text ---------------------------------------------------------------------------------------


def test_text_kept_exactly_and_empty_allowed():
    examples = normalise(recs({"text": "  spaced \n"}, {"text": ""}), system_prompt="ignored")
    assert examples == [
        Example(where="train.jsonl:1", text="  spaced \n"),
        Example(where="train.jsonl:2", text=""),
    ]


def test_text_column_mapping():
    [example] = normalise(recs({"body": "b"}), columns={"text": "body"})
    assert example.text == "b" and example.messages is None


@pytest.mark.parametrize("value, pattern", [(None, "text is null"), (7, "text is a number"), (["a"], "text is a list")])
def test_text_must_be_a_string(value, pattern):
    with pytest.raises(TunesmithError, match=pattern) as info:
        normalise(recs({"text": "ok"}, {"text": value}))
    assert info.value.where == "train.jsonl:2"

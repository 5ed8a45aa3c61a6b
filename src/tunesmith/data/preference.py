"""Preference pairs: a prompt, the answer reviewers preferred (`chosen`) and the one they rejected.

Records come in the layouts people have (TRL's, UltraFeedback's, Anthropic HH's):

  explicit     {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}
               Answers given as messages are the assistant turn(s) after the prompt; a conversation that
               repeats the prompt first (some exports do) has it removed.
  implicit     {"chosen": messages, "rejected": messages}: two whole conversations that share the prompt;
               the prompt is their common first turns, up to the last user turn both have.
               {"chosen": str, "rejected": str}: two texts sharing a prefix (HH's "Human: ... Assistant:");
               the prompt is the shared text up to its last "Assistant:" (else its last whitespace), and the
               pair is trained as plain text, without a chat template.

Each record becomes a `PreferenceExample`; a record that cannot teach a preference is an error naming its
file and line: an empty answer, the same answer twice, conversations whose prompts differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.data.formats import missing_column_error
from tunesmith.data.readers import RawRecord
from tunesmith.errors import TunesmithError

COLUMNS = ("prompt", "chosen", "rejected")
ASSISTANT_MARKER = "Assistant:"  # where the answer starts in Anthropic HH's texts


@dataclass
class PreferenceExample:
    where: str
    prompt: list[dict] | str  # messages ending before the answer, or plain text (the implicit text layout)
    chosen: str
    rejected: str

    def content_key(self) -> tuple:  # what data/split.py compares to find repeats and leaks
        prompt = self.prompt if isinstance(self.prompt, str) else tuple((m["role"], m["content"]) for m in self.prompt)
        return ("pair", prompt, self.chosen, self.rejected)

    @property
    def messages(self) -> list[dict] | None:
        """The prompt with the chosen answer (what `describe` and the empty-turn count read)."""
        if isinstance(self.prompt, str):
            return None
        return self.prompt + [{"role": "assistant", "content": self.chosen}]

    def record(self) -> dict:
        """The canonical record (the explicit layout): how a run saves its test split."""
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def detect_layout(record: RawRecord, columns: dict[str, str]) -> str:
    fields = record.fields
    for role in ("chosen", "rejected"):
        if columns.get(role, role) not in fields:
            raise missing_column_error(
                record, role, columns.get(role, role), needed_by="a preference pair", taken=set(columns.values())
            )
    return "explicit" if columns.get("prompt", "prompt") in fields else "implicit"


def normalise_pairs(records: list[RawRecord], data_cfg) -> tuple[list[PreferenceExample], str]:
    """Records of either layout -> PreferenceExamples; the layout is detected per record, so a file may mix them."""
    columns = dict(data_cfg.columns or {})
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise TunesmithError(
            f"data.columns maps {', '.join(unknown)}, which preference pairs do not have",
            where="data.columns",
            fix="the keys of data.columns are the roles prompt, chosen, rejected; the values are your column names",
        )
    examples = []
    layouts = set()
    for record in records:
        layout = detect_layout(record, columns)
        layouts.add(layout)
        prompt, chosen, rejected = (record.fields.get(columns.get(role, role)) for role in COLUMNS)
        if layout == "explicit":
            example = _explicit(record.where, prompt, chosen, rejected, columns)
        else:
            example = _implicit(record.where, chosen, rejected, columns)
        turns = example.prompt
        if data_cfg.system_prompt and isinstance(turns, list) and turns and turns[0]["role"] != "system":
            example.prompt = [{"role": "system", "content": data_cfg.system_prompt}] + turns
        _check_answers(example, columns)
        examples.append(example)
    return examples, "preference (" + " and ".join(sorted(layouts)) + ")"


# ---------------------------------------------------------------------------------------------------
# The two layouts


def _explicit(where: str, prompt: Any, chosen: Any, rejected: Any, columns: dict) -> PreferenceExample:
    if isinstance(prompt, str):
        prompt_messages = [{"role": "user", "content": prompt}]
    else:
        prompt_messages = _messages(where, prompt, columns.get("prompt", "prompt"))
        if not prompt_messages or prompt_messages[-1]["role"] == "assistant":
            raise TunesmithError(
                "the prompt's conversation ends with an assistant turn (or is empty), so there is nothing to answer",
                where=where,
                fix="end the prompt with the user's turn; the answers go in chosen and rejected",
            )
    answers = []
    for role, value in (("chosen", chosen), ("rejected", rejected)):
        column = columns.get(role, role)
        if isinstance(value, str):
            answers.append(value)
            continue
        turns = _messages(where, value, column)
        if turns[: len(prompt_messages)] == prompt_messages:
            turns = turns[len(prompt_messages) :]  # the conversation repeats the prompt first
        elif turns and turns[0]["role"] != "assistant":
            raise TunesmithError(
                f"'{column}' is a conversation whose prompt differs from the record's prompt (its first turn is "
                f"{turns[0]['role']!r}: {_short(turns[0]['content'])})",
                where=where,
                fix=f"give '{column}' as the answer alone (a string or assistant turns), or start it with the same "
                "turns as the prompt",
            )
        answers.append(_answer_of(where, turns, column))
    return PreferenceExample(where, prompt_messages, answers[0], answers[1])


def _implicit(where: str, chosen: Any, rejected: Any, columns: dict) -> PreferenceExample:
    chosen_column, rejected_column = columns.get("chosen", "chosen"), columns.get("rejected", "rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        shared = _common_prefix(chosen, rejected)
        # HH's turns: the prompt ends at the last "Assistant:" both share (answers may open alike); else at the
        # last whitespace, so no word is split between prompt and answer.
        marker = shared.rfind(ASSISTANT_MARKER)
        cut = marker + len(ASSISTANT_MARKER) if marker >= 0 else max(shared.rfind(" "), shared.rfind("\n")) + 1
        if cut == 0:
            raise TunesmithError(
                f"'{chosen_column}' and '{rejected_column}' share no prompt (no common text before the answers) "
                "and the record has no 'prompt'",
                where=where,
                fix="add a 'prompt' column, or map yours with data.columns: {prompt: question}",
            )
        return PreferenceExample(where, chosen[:cut], chosen[cut:], rejected[cut:])
    if isinstance(chosen, str) or isinstance(rejected, str):
        raise TunesmithError(
            f"'{chosen_column}' and '{rejected_column}' must both be texts or both be conversations",
            where=where,
            fix="write both answers the same way",
        )
    chosen_turns = _messages(where, chosen, chosen_column)
    rejected_turns = _messages(where, rejected, rejected_column)
    common = 0
    while common < min(len(chosen_turns), len(rejected_turns)) and chosen_turns[common] == rejected_turns[common]:
        common += 1
    # The prompt ends at the last user turn both share; what follows in each is its answer.
    users = [i for i in range(common) if chosen_turns[i]["role"] == "user"]
    if not users:
        raise TunesmithError(
            "the chosen and rejected conversations do not start with the same user turn, so their prompts differ "
            f"(first turns: {_short(chosen_turns[0]['content'])} / {_short(rejected_turns[0]['content'])})",
            where=where,
            fix="give both conversations the same turns before the answers, or add a 'prompt' column",
        )
    prompt = chosen_turns[: users[-1] + 1]
    return PreferenceExample(
        where,
        prompt,
        _answer_of(where, chosen_turns[len(prompt) :], chosen_column),
        _answer_of(where, rejected_turns[len(prompt) :], rejected_column),
    )


# ---------------------------------------------------------------------------------------------------
# Checks


def _messages(where: str, value: Any, column: str) -> list[dict]:
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise TunesmithError(
            f"'{column}' must be a string or a list of {{role, content}} messages, got {_short(repr(value))}",
            where=where,
            fix=f'write \'{column}\' as text, or as [{{"role": "assistant", "content": "..."}}]',
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _answer_of(where: str, turns: list[dict], column: str) -> str:
    """The answer's text: one assistant turn (several are joined, as one reply split in parts)."""
    if not turns or any(t["role"] != "assistant" for t in turns):
        roles = ", ".join(t["role"] for t in turns) or "none"
        raise TunesmithError(
            f"'{column}' has no answer after the prompt that is only assistant turns (turns after the prompt: {roles})",
            where=where,
            fix=f"end '{column}' with the assistant's answer to the prompt",
        )
    return "\n".join(t["content"] for t in turns)


def _check_answers(example: PreferenceExample, columns: dict) -> None:
    for role, text in (("chosen", example.chosen), ("rejected", example.rejected)):
        if not text.strip():
            raise TunesmithError(
                f"the {role} answer ('{columns.get(role, role)}') is empty",
                where=example.where,
                fix="give both answers text, or remove this record",
            )
    if example.chosen.strip() == example.rejected.strip():
        raise TunesmithError(
            f"the chosen and rejected answers are the same ({_short(example.chosen)}): the pair teaches no preference",
            where=example.where,
            fix="remove this record, or give it the answer that was rejected",
        )


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")

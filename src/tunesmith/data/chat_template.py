"""Render records with the chat template and build the loss mask.

The mask is found from the rendered text, not from token guessing: for every assistant turn k the
template is rendered for turns[:k] with the generation prompt and for turns[:k+1]; the characters in
between are the assistant's answer including its end-of-turn marker. Tokens whose characters start
inside such a span carry loss. This works for any template whose renderings are prefixes of each
other, which is checked, and needs no `{% generation %}` markers (few templates have them).

The end-of-turn token of every assistant turn must carry loss, or the tuned model never learns to
stop: a classic silent failure of hand-written masking. `encode_chat` checks it for every record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.data.formats import Example
from tunesmith.errors import TunesmithError

IGNORE_INDEX = -100

# Used when the tokenizer has no template: ChatML markers, with the tokenizer's own EOS token closing
# each turn so that generation stops where training put the end of an answer.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    where: str
    truncated: bool = False
    full_length: int = 0  # tokens before truncation
    assistant_spans: list[tuple[int, int]] = field(default_factory=list)  # token ranges carrying loss

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def template_for(tokenizer, override: str | None = None) -> str:
    return override or getattr(tokenizer, "chat_template", None) or FALLBACK_TEMPLATE


def render(tokenizer, messages: list[dict], template: str, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def stop_token_ids(tokenizer, model=None) -> set[int]:
    """Tokens that end an answer: the tokenizer's EOS plus the EOS ids of `model`'s generation config
    (Llama 3 ends a turn with <|eot_id|>, which is not the tokenizer's EOS). The generation config hangs
    off the model, not its config: pass the model (a PeftModel forwards the attribute to its base)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if extra is not None:
        ids.update(extra if isinstance(extra, (list, tuple)) else [extra])
    return ids


def _assistant_char_spans(
    tokenizer, messages: list[dict], where: str, template: str, full_text: str
) -> list[tuple[int, int]]:
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:k], template, add_generation_prompt=True)
        through = render(tokenizer, messages[: k + 1], template)
        if not (through.startswith(before) and full_text.startswith(through)):
            raise TunesmithError(
                "the chat template renders a conversation differently depending on where it stops, so the "
                "assistant turns cannot be located",
                where=where,
                fix="set data.chat_template to a template whose renderings are prefixes of each other (e.g. ChatML)",
            )
        # Trailing whitespace after the end-of-turn marker is formatting, not something to learn.
        end = len(through.rstrip())
        spans.append((len(before), end))
    return spans


def encode_chat(
    example: Example,
    tokenizer,
    *,
    max_length: int,
    train_on: str = "assistant",
    template: str | None = None,
    stop_ids: set[int] | None = None,
) -> EncodedExample:
    """Token ids and labels for one example (chat messages or plain text)."""
    stop_ids = stop_ids if stop_ids is not None else stop_token_ids(tokenizer)
    if example.messages is None:
        # Plain text: learn every token, and where the document ends.
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
        char_spans = None
    else:
        template = template_for(tokenizer, template)
        text = render(tokenizer, example.messages, template)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        if train_on == "all":
            labels = list(ids)
            char_spans = None
        else:
            char_spans = _assistant_char_spans(tokenizer, example.messages, example.where, template, text)
            labels = [IGNORE_INDEX] * len(ids)
            for i, (start, _end) in enumerate(encoded["offset_mapping"]):
                if any(s <= start < e for s, e in char_spans):
                    labels[i] = ids[i]

    full_length = len(ids)
    truncated = full_length > max_length
    # Where the first answer token is, counted before the cut, so the message can say by how much it missed.
    first_answer = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
    ids, labels = ids[:max_length], labels[:max_length]
    result = EncodedExample(ids, labels, example.where, truncated, full_length)
    if result.trained_tokens == 0:
        raise _nothing_to_learn(example.where, first_answer, full_length, max_length)
    result.assistant_spans = _token_spans(labels)
    if char_spans is not None:
        _check_end_of_turn(result, tokenizer, stop_ids)
    return result


def _nothing_to_learn(where: str, first_answer: int | None, full_length: int, max_length: int) -> TunesmithError:
    """The error for a record none of whose tokens would carry loss."""
    if first_answer is None:  # e.g. a template that renders the answer away
        return TunesmithError(
            f"this record ({full_length} tokens) has no answer token to learn from",
            where=where,
            fix="give the record an assistant answer, or set data.chat_template to a template that renders it",
        )
    return TunesmithError(
        f"this record is {full_length} tokens and its answer starts at token {first_answer + 1}, past "
        f"data.max_length={max_length} where records are cut, so nothing of it would be learned",
        where=where,
        fix=f"raise data.max_length to at least {full_length}, or shorten this record's prompt",
    )


def _token_spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, label in enumerate(labels + [IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _check_end_of_turn(encoded: EncodedExample, tokenizer, stop_ids: set[int]) -> None:
    """Every complete assistant turn must end in a labelled stop token."""
    if not stop_ids:
        return
    for _start, end in encoded.assistant_spans:
        if end == len(encoded.labels) and encoded.truncated:
            continue  # the last turn was cut by max_length; its end is legitimately missing
        if encoded.labels[end - 1] not in stop_ids:
            last = tokenizer.decode([encoded.input_ids[end - 1]])
            names = ", ".join(repr(tokenizer.decode([i])) for i in sorted(stop_ids))
            raise TunesmithError(
                f"an assistant turn ends with {last!r}, not with an end-of-turn token ({names}), so the tuned "
                "model would not learn to stop",
                where=encoded.where,
                fix="use a chat template that closes each assistant turn with the EOS token (set data.chat_template)",
            )


def show_mask(encoded: EncodedExample, tokenizer) -> str:
    """The rendered example with loss-bearing text in [[double brackets]], for `tunesmith validate`."""
    out = []
    for start, end in _spans_with_gaps(encoded):
        text = tokenizer.decode(encoded.input_ids[start:end])
        trained = encoded.labels[start] != IGNORE_INDEX
        out.append(f"[[{text}]]" if trained else text)
    return "".join(out)


def _spans_with_gaps(encoded: EncodedExample):
    cursor = 0
    for start, end in encoded.assistant_spans:
        if start > cursor:
            yield cursor, start
        yield start, end
        cursor = end
    if cursor < len(encoded.input_ids):
        yield cursor, len(encoded.input_ids)

"""An Ollama Modelfile for a GGUF export: `FROM` the file, a `TEMPLATE` (Go text/template, Ollama's
language) that renders conversations exactly as the run's Jinja chat template does, `SYSTEM` for the
system prompt the model learnt under (or the template's default one), and `PARAMETER stop` for each of
the run's end-of-answer tokens.

Ollama cannot run Jinja, and translating Jinja source in general is not possible; what is possible for
the templates chat models use is to read the template's *parts* off its own renderings: each role's text
before and after its content, what comes before the first message, and the generation prompt. They are
found by rendering conversations whose contents are sentinels and cutting at the sentinels, then checked
by re-assembling those and other conversations from the parts and comparing them with the Jinja
renderings. A template that the parts cannot reproduce (one that numbers turns, or changes a turn by its
position) is refused, never written approximately. tests/test_export_gguf.py renders the written TEMPLATE
with Go's own text/template and compares it with the tokenizer's template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.chat_template import render
from tunesmith.errors import TunesmithError

MODELFILE = "Modelfile"
_ROLES = ("system", "user", "assistant")
# Contents that no template rewrites and no tokenizer merges with the text around them.
_SENTINEL = {"system": "SYSTEMSENTINELA", "user": "USERSENTINELB", "assistant": "ASSISTANTSENTINELC"}


@dataclass
class TemplateParts:
    """A chat template as text around each role's content: head, then per message
    before[role] + content + after[role], then generation_prompt when the model is to answer."""

    head: str
    before: dict[str, str]
    after: dict[str, str]
    generation_prompt: str
    default_system: str | None  # a system message the template inserts when the conversation has none

    def assemble(self, messages: list[dict], add_generation_prompt: bool) -> str:
        if self.default_system is not None and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        text = self.head + "".join(self.before[m["role"]] + m["content"] + self.after[m["role"]] for m in messages)
        return text + (self.generation_prompt if add_generation_prompt else "")


def template_parts(tokenizer: Any, template: str) -> TemplateParts:
    """The parts of `template`, checked against its renderings; TunesmithError when they cannot reproduce it."""
    s, u, a = (_SENTINEL[r] for r in _ROLES)
    system, user, assistant = ({"role": r, "content": _SENTINEL[r]} for r in _ROLES)

    def cut(text: str, *marks: str) -> list[str]:
        pieces = []
        for mark in marks:
            before, found, text = text.partition(mark)
            if not found:
                raise _refusal(f"the template drops or rewrites a message's content ({mark} did not come through)")
            pieces.append(before)
        return [*pieces, text]

    try:
        full = render(tokenizer, [system, user, assistant, user], template)
        head_s, s_u, u_a, a_u, tail_u = cut(full, s, u, a, u)
        after_assistant = cut(render(tokenizer, [system, user, assistant], template), s, u, a)[-1]
        with_prompt = render(tokenizer, [system, user], template, add_generation_prompt=True)
        without_prompt = render(tokenizer, [system, user], template)
        head_u = cut(render(tokenizer, [user], template), u)[0]
    except TunesmithError:
        raise
    except Exception as exc:  # a template that raises on some conversation (e.g. requires a system turn)
        raise _refusal(f"rendering a sentinel conversation failed: {exc}") from exc
    after_user = tail_u
    if not (u_a.startswith(after_user) and a_u.startswith(after_assistant) and with_prompt.startswith(without_prompt)):
        raise _refusal("a turn's closing text depends on what follows it")
    before_assistant = u_a[len(after_user) :]
    before_user = a_u[len(after_assistant) :]
    if not s_u.endswith(before_user):
        raise _refusal("a user turn opens differently after a system turn than after an assistant turn")
    after_system = s_u[: len(s_u) - len(before_user)]
    # The system turn's opening: the user turn's with the role name changed, when the head allows it
    # (ChatML, Llama 3); otherwise everything before the system content.
    guess = before_user.replace("user", "system")
    before_system = guess if "user" in before_user and head_s.endswith(guess) else head_s
    head = head_s[: len(head_s) - len(before_system)]
    # A template that inserts its own system message when there is none (SmolLM2 does) renders it here.
    default_system = None
    if head_u != head + before_user:
        inserted = head_u[len(head) :]
        if not (head_u.startswith(head + before_system) and inserted.endswith(after_system + before_user) and head_u):
            raise _refusal("the text before a conversation without a system message is not a system turn")
        default_system = inserted[len(before_system) : len(inserted) - len(after_system + before_user)]
    parts = TemplateParts(
        head=head,
        before={"system": before_system, "user": before_user, "assistant": before_assistant},
        after={"system": after_system, "user": after_user, "assistant": after_assistant},
        generation_prompt=with_prompt[len(without_prompt) :],
        default_system=default_system,
    )
    _check(parts, tokenizer, template)
    return parts


def _check(parts: TemplateParts, tokenizer: Any, template: str) -> None:
    """The parts must reproduce the template on conversations unlike the sentinel ones."""
    samples = [
        [{"role": "user", "content": "Hello there"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two\nlines"}],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Reset my password, please."},
        ],
        # A template that trims or otherwise edits contents (Llama 3's `| trim`) shows it here: Go cannot.
        [{"role": "user", "content": "  padded \n"}, {"role": "assistant", "content": ""}],
    ]
    for messages in samples:
        for prompt in (True, False):
            expected = render(tokenizer, messages, template, add_generation_prompt=prompt)
            if parts.assemble(messages, prompt) != expected:
                raise _refusal(f"its parts do not reproduce the rendering of {messages!r}")


def _refusal(why: str) -> TunesmithError:
    return TunesmithError(
        f"the run's chat template cannot be written as an Ollama TEMPLATE: {why}",
        where="--ollama",
        fix="leave out --ollama (the GGUF file embeds the Jinja template, which llama.cpp's server applies), or "
        "train with a plain per-turn template such as ChatML (data.chat_template)",
    )


# ---------------------------------------------------------------------------------------------------
# The Modelfile


def go_template(parts: TemplateParts) -> str:
    """The parts as an Ollama TEMPLATE. No `{{-` trimming: the literal text around actions is exactly the
    template's, newlines included. `$last` is Ollama's idiom for the final message."""
    lines = [_literal(parts.head), "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"]
    for k, role in enumerate(_ROLES):
        keyword = "if" if k == 0 else "else if"
        lines.append(
            f'{{{{ {keyword} eq .Role "{role}" }}}}{_literal(parts.before[role])}{{{{ .Content }}}}'
            f"{_literal(parts.after[role])}"
        )
    lines.append("{{ end }}")
    lines.append(f'{{{{ if and $last (ne .Role "assistant") }}}}{_literal(parts.generation_prompt)}{{{{ end }}}}')
    lines.append("{{ end }}")
    return "".join(lines)


def _literal(text: str) -> str:
    # Text passes through a Go template as it is, except an action's opening braces.
    return text.replace("{{", '{{ "{{" }}')


def write_modelfile(
    path: Path,
    gguf_name: str,
    tokenizer: Any,
    template: str,
    stop_ids: list[int],
    system_prompt: str | None,
    adds_bos: bool,
) -> Path:
    """Write the Modelfile `path` for the GGUF file `gguf_name` in the same folder; returns `path`.
    `adds_bos`: llama.cpp prepends BOS to every prompt (the file's add_bos_token), so a template that writes
    it itself (Llama 3's `{{ bos_token }}`) loses it here, or the model would read two."""
    parts = template_parts(tokenizer, template)
    bos = getattr(tokenizer, "bos_token", None)
    if adds_bos and bos and parts.head.startswith(bos):
        parts.head = parts.head[len(bos) :]
    body = go_template(parts)
    system = system_prompt if system_prompt is not None else parts.default_system
    for label, text in (("TEMPLATE", body), ("SYSTEM", system or "")):
        if '"""' in text or text.endswith('"'):
            raise _refusal(f'the {label} text contains """ or ends with ", which a Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{body}"""']
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    for token in sorted({tokenizer.convert_ids_to_tokens(i) for i in stop_ids}):
        lines.append(f"PARAMETER stop {_quoted(token)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_modelfile(path: Path) -> dict[str, Any]:
    """FROM, TEMPLATE, SYSTEM and the PARAMETER stop values of a Modelfile written by `write_modelfile`
    (the subset of Ollama's syntax it uses: triple-quoted and double-quoted values)."""
    text = path.read_text(encoding="utf-8")
    result: dict[str, Any] = {"stop": []}
    while text:
        line, _, rest = text.partition("\n")
        keyword, _, value = line.partition(" ")
        if value.startswith('"""'):
            value, _, text = (value[3:] + "\n" + rest).partition('"""')
            text = text.lstrip("\n")
        else:
            text = rest
        if keyword == "PARAMETER" and value.startswith("stop "):
            result["stop"].append(_unquoted(value.removeprefix("stop ")))
        elif keyword in ("FROM", "TEMPLATE", "SYSTEM"):
            result[keyword.lower()] = value
    return result


def _unquoted(text: str) -> str:
    return text[1:-1].replace('\\"', '"').replace("\\\\", "\\") if text.startswith('"') else text

"""Interactive chat with a tuned run in the terminal (`tunesmith chat runs/<id>`).

A line that starts with `/` is a command for the tool, never a question for the model: a mistyped
`/hlep` would otherwise cost a generation and put the typo into the conversation's history. `//`
escapes it: `//etc is a folder` sends `/etc is a folder`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

COMMANDS = {
    "/help": "list these commands",
    "/reset": "clear the conversation (the system prompt stays)",
    "/system TEXT": "set the system prompt and clear the conversation; /system alone shows it",
    "/exit": "leave (also /quit or Ctrl-D)",
}
_EXIT = ("/exit", "/quit")


@dataclass
class _Conversation:
    system: str | None
    turns: list[dict] = field(default_factory=list)  # user and assistant turns, without the system one

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns


def command_help() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {what}" for name, what in COMMANDS.items()]
    return "\n".join(["commands:", *lines, "  (start a line with // to send a line beginning with / to the model)"])


def chat_loop(
    run_dir: str,
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    stdin=None,
    stdout=None,
    allow_pickle: bool = False,
) -> list[dict]:
    """Talk to the tuned model of `run_dir` until /exit or end of input; returns the conversation then
    held (system prompt first, if any)."""
    from tunesmith.pipeline import load_tuned
    from tunesmith.tasks.chat import generate

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model, tokenizer, config, _ = load_tuned(run_dir, allow_pickle=allow_pickle)
    # The model learnt its answers under the run's data.system_prompt (predict and eval give it too);
    # --system replaces it for this conversation.
    conversation = _Conversation(system if system is not None else config.data.system_prompt)
    print("chat with the tuned model; " + command_help(), file=stdout, flush=True)
    if conversation.system:
        print(f"system prompt: {conversation.system}", file=stdout, flush=True)
    while True:
        print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # end of input (Ctrl-D): end the prompt's line, so the shell's starts on its own
            print(file=stdout, flush=True)
            break
        text = line.rstrip("\n")
        if text.startswith("/") and not text.startswith("//"):
            if not _run_command(text.strip(), conversation, stdout):
                break
            continue
        text = text[1:] if text.startswith("//") else text
        if not text.strip():
            continue
        conversation.turns.append({"role": "user", "content": text})
        answer = generate(
            model,
            tokenizer,
            [conversation.messages()],
            max_new_tokens=max_new_tokens,
            batch_size=1,
            chat_template=config.data.chat_template,
        )[0]
        conversation.turns.append({"role": "assistant", "content": answer})
        print(f"model> {answer}", file=stdout, flush=True)
    return conversation.messages()


def _run_command(text: str, conversation: _Conversation, stdout) -> bool:
    """Do what a /command says and confirm it; False when it says to leave."""
    name, _, argument = text.partition(" ")
    argument = argument.strip()
    if name in _EXIT:
        return False
    if name == "/help":
        reply = command_help()
    elif name == "/reset":
        conversation.turns.clear()
        reply = "history cleared" + (" (the system prompt stays)" if conversation.system else "")
    elif name == "/system" and argument:
        # The turns so far answered another system prompt; keeping them would mix the two.
        conversation.system = argument
        conversation.turns.clear()
        reply = "system prompt set; history cleared"
    elif name == "/system":
        reply = f"system prompt: {conversation.system}" if conversation.system else "no system prompt"
    else:
        reply = f"unknown command {name}; nothing was sent to the model\n" + command_help()
    print(reply, file=stdout, flush=True)
    return True

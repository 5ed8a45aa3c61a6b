"""Interactive chat with a tuned run in the terminal (`tunesmith chat runs/<id>`)."""

from __future__ import annotations

import sys


def chat_loop(
    run_dir: str,
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    stdin=None,
    stdout=None,
    allow_pickle: bool = False,
) -> None:
    from tunesmith.pipeline import load_tuned
    from tunesmith.tasks.chat import generate

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model, tokenizer, config, _ = load_tuned(run_dir, allow_pickle=allow_pickle)
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    print("chat with the tuned model; /reset clears the history, /exit or Ctrl-D leaves", file=stdout, flush=True)
    while True:
        print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            break
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        answer = generate(
            model,
            tokenizer,
            [history],
            max_new_tokens=max_new_tokens,
            batch_size=1,
            chat_template=config.data.chat_template,
        )[0]
        history.append({"role": "assistant", "content": answer})
        print(f"model> {answer}", file=stdout, flush=True)

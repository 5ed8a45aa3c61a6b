"""Text generation for the server: sampling settings, one padded batch of prompts, one streamed prompt.

Everything here touches the model, so it runs only on the worker thread (worker.py). The text a request
gets back goes through `finish` whether it was streamed or not, so the concatenated stream equals the
non-streamed answer: the same decoding, the same cut at the first stop string, the same stripping.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from tunesmith.data.chat_template import stop_token_ids
from tunesmith.tasks.chat import generate_tokens


class PromptTooLong(ValueError):
    """The request's fault (a 400), found on the worker thread."""


@dataclass(frozen=True)
class Sampling:
    """How to generate one request's answers (OpenAI's parameters, already validated)."""

    max_tokens: int
    temperature: float = 0.0  # 0: greedy, the answer `tunesmith chat` and `predict` give
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    strip: bool = False  # chat answers are stripped, as tasks/chat.py `generate` strips them

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def batch_key(self) -> tuple:
        """Greedy requests with equal keys generate in one padded batch: the stop strings and stripping
        only cut the decoded text afterwards, so they may differ within a batch."""
        return ("greedy", self.max_tokens)


@dataclass
class Output:
    text: str
    finish_reason: str  # "stop": an end token or a stop string; "length": max_tokens ran out
    prompt_tokens: int
    completion_tokens: int


def finish(text: str, sampling: Sampling) -> tuple[str, bool]:
    """The answer as returned: cut before the first stop string (True when one was found), stripped for chat."""
    cut = [text.index(s) for s in sampling.stop if s and s in text]
    if cut:
        text = text[: min(cut)]
    return (text.strip() if sampling.strip else text), bool(cut)


def _held_back(text: str, sampling: Sampling) -> int:
    """How many characters at the end of `text` cannot be streamed yet: the start of a stop string that
    the next tokens may complete, trailing whitespace that stripping may remove, a half-decoded character."""
    keep = len(text)
    for stop in sampling.stop:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                keep = min(keep, len(text) - size)
                break
    if sampling.strip:
        keep = min(keep, len(text[:keep].rstrip()))
    while keep and text[keep - 1] == "\ufffd":  # a multi-byte character split across tokens
        keep -= 1
    return len(text) - keep


class Generator:
    """A model and its tokenizer, with the end tokens tasks/chat.py stops at."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.end_ids = sorted(stop_token_ids(tokenizer, model))

    def check_length(self, prompt: str, sampling: Sampling) -> None:
        """Refuse a prompt that, with max_tokens more, would run past the model's positions (it would fail
        or answer garbage); run on the worker, since the tokenizer's padding side changes there."""
        context = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if not isinstance(context, int):
            return
        size = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if size + sampling.max_tokens > context:
            raise PromptTooLong(
                f"the prompt has {size} tokens and max_tokens is {sampling.max_tokens}: together more than "
                f"the model's context of {context} tokens; shorten the prompt or lower max_tokens"
            )

    @staticmethod
    def _settings(sampling: Sampling) -> dict:
        """generate's sampling arguments; none for greedy (generate_tokens' default)."""
        if sampling.greedy:
            return {}
        return {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}

    def _seed(self, sampling: Sampling) -> None:
        # The worker is the only thread that draws random numbers for the model, so seeding the global
        # generator right before this request's generate makes a seeded answer repeat exactly.
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)

    def _generated_length(self, tokens: list[int]) -> tuple[int, bool]:
        """Generated tokens up to and including the first end token (after it comes only padding), and
        whether an end token was reached."""
        for i, token in enumerate(tokens):
            if token in self.end_ids:
                return i + 1, True
        return len(tokens), False

    def _output(self, tokens: list[int], sampling: Sampling, prompt_tokens: int) -> Output:
        length, ended = self._generated_length(tokens)
        raw = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
        text, stopped = finish(raw, sampling)
        return Output(text, "stop" if ended or stopped else "length", prompt_tokens, length)

    @torch.no_grad()
    def batch(self, prompts: list[str], samplings: list[Sampling]) -> list[list[Output]]:
        """Answers (n each) to prompts of equal `batch_key` (greedy) or to one sampled prompt, in one
        left-padded batch, generated by tasks/chat.py `generate_tokens` as `tunesmith chat` and `predict` are."""
        first = samplings[0]
        self._seed(first)
        copies = 1 if first.greedy else first.n  # greedy answers are all the same: generate one, repeat it
        generated, mask = generate_tokens(
            self.model, self.tokenizer, prompts, first.max_tokens, num_return_sequences=copies, **self._settings(first)
        )
        new_tokens = generated.tolist()
        prompt_lengths = mask.sum(dim=1).tolist()
        answers = []
        for i, sampling in enumerate(samplings):
            rows = new_tokens[i * copies : (i + 1) * copies]
            outputs = [self._output(row, sampling, prompt_lengths[i]) for row in rows]
            answers.append(outputs * sampling.n if sampling.greedy else outputs)
        return answers

    @torch.no_grad()
    def stream(self, prompt: str, sampling: Sampling, sink: TextSink) -> None:
        """Generate one answer to `prompt`, handing its text to `sink` as it grows. Generation stops early
        when the sink is cancelled (a stop string was seen, or the client went away)."""
        self._seed(sampling)
        sink.start(self.tokenizer, sampling, self.end_ids)
        generate_tokens(
            self.model,
            self.tokenizer,
            [prompt],
            sampling.max_tokens,
            streamer=sink,
            stopping_criteria=StoppingCriteriaList([_Cancelled(sink.cancelled)]),
            **self._settings(sampling),
        )


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class TextSink(BaseStreamer):
    """transformers' streamer interface on the worker side, an iterator of text pieces on the HTTP side.

    The worker puts token ids; the reader decodes everything generated so far and yields only what can no
    longer change (`_held_back`), then the rest of `finish`'s answer at the end, so the pieces joined are
    exactly the non-streamed answer."""

    pieces: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    output: Output | None = None  # set when the stream ends: finish reason and token count
    _tokens: list[int] = field(default_factory=list)
    _prompt_tokens: int | None = None  # known when generate hands the prompt over (the first put)

    def start(self, tokenizer, sampling: Sampling, end_ids: list[int]) -> None:
        self._tokenizer, self._sampling, self._end_ids = tokenizer, sampling, end_ids
        self._sent = 0
        self.pieces.put("")  # generation began: the prompt was accepted (the server may now answer 200)

    # --- worker side (called by model.generate) ---
    def put(self, value) -> None:
        if self._prompt_tokens is None:  # generate hands the prompt over first
            self._prompt_tokens = value.shape[-1]
            return
        self._tokens.extend(value.flatten().tolist())
        if self._tokens and self._tokens[-1] in self._end_ids:
            return
        text = self._tokenizer.decode(self._tokens, skip_special_tokens=True)
        _, stopped = finish(text, self._sampling)
        if stopped:
            self.cancelled.set()  # the rest is cut anyway: stop generating it
            return
        safe = text[: len(text) - _held_back(text, self._sampling)]
        if self._sampling.strip:
            safe = safe.lstrip()
        if len(safe) > self._sent:
            self.pieces.put(safe[self._sent :])
            self._sent = len(safe)

    def end(self) -> None:
        ended = bool(self._tokens) and self._tokens[-1] in self._end_ids
        text = self._tokenizer.decode(self._tokens, skip_special_tokens=True)
        answer, stopped = finish(text, self._sampling)
        if len(answer) > self._sent:
            self.pieces.put(answer[self._sent :])
        finish_reason = "stop" if ended or stopped else "length"
        self.output = Output(answer, finish_reason, self._prompt_tokens or 0, len(self._tokens))
        self.pieces.put(None)

    def fail(self, error: BaseException) -> None:
        self.pieces.put(error)

    # --- HTTP side ---
    def __iter__(self):
        while True:
            piece = self.pieces.get()
            if piece is None:
                return
            if isinstance(piece, BaseException):
                raise piece
            yield piece

"""The one thread that owns the model, and the batching of concurrent requests.

HTTP handlers never touch the model: they put a job into a queue and wait for its result. The worker
takes the oldest job; when it is a greedy non-streaming generation, it also takes up to `max_batch - 1`
other waiting greedy generations with the same settings and runs them as one left-padded batch. Greedy
answers do not depend on their batch neighbours, so each equals its single-request answer; sampled and
streamed requests run alone, so a seed means the same thing whatever else is waiting.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tunesmith.serve.generation import Generator, Output, PromptTooLong, Sampling, TextSink


@dataclass
class _Generate:
    prompt: str
    sampling: Sampling
    result: Future = field(default_factory=Future)

    @property
    def batchable(self) -> bool:
        return self.sampling.greedy


@dataclass
class _Stream:
    prompt: str
    sampling: Sampling
    sink: TextSink


@dataclass
class _Call:
    """Any other model work (classify, rerank): a function run on the worker thread."""

    function: Callable[[], Any]
    result: Future = field(default_factory=Future)


_STOP = object()


class ModelWorker:
    def __init__(self, generator: Generator | None, max_batch: int = 8):
        self.generator = generator
        self.max_batch = max(1, max_batch)
        self.batch_sizes: list[int] = []  # of every generation batch run, for /health and the tests
        self._queue: queue.Queue = queue.Queue()
        self._waiting: deque = deque()  # taken from the queue, not yet run (behind a batch it did not fit)
        self._thread = threading.Thread(target=self._run, name="tunesmith-model", daemon=True)

    # --- called from request handlers ---
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=30)

    def generate_many(self, prompts: list[str], sampling: Sampling) -> list[list[Output]]:
        """The n answers to each prompt; all are queued before any is waited for, so they can share a batch."""
        jobs = [_Generate(prompt, sampling) for prompt in prompts]
        for job in jobs:
            self._queue.put(job)
        return [job.result.result() for job in jobs]

    def stream(self, prompt: str, sampling: Sampling) -> TextSink:
        """A sink whose iteration yields the answer's text pieces as the worker generates them."""
        sink = TextSink()
        self._queue.put(_Stream(prompt, sampling, sink))
        return sink

    def call(self, function: Callable[[], Any]) -> Any:
        job = _Call(function)
        self._queue.put(job)
        return job.result.result()

    # --- the worker thread ---
    def _run(self) -> None:
        while True:
            if not self._waiting:
                self._admit(self._queue.get())  # block until there is work
            self._drain()
            if not self._waiting:
                continue
            job = self._waiting.popleft()
            if job is _STOP:
                return
            if isinstance(job, _Generate):
                self._run_batch(self._batch_with(job))
            elif isinstance(job, _Stream):
                self._run_stream(job)
            else:
                self._run_call(job)

    def _drain(self) -> None:
        while True:
            try:
                self._admit(self._queue.get_nowait())
            except queue.Empty:
                return

    def _admit(self, job) -> None:
        """Put a job in the waiting line, unless its prompt is too long: that one request fails alone,
        before it could fail a whole batch."""
        if isinstance(job, (_Generate, _Stream)):
            assert self.generator is not None
            try:
                self.generator.check_length(job.prompt, job.sampling)
            except PromptTooLong as error:
                if isinstance(job, _Generate):
                    job.result.set_exception(error)
                else:
                    job.sink.fail(error)
                return
        self._waiting.append(job)

    def _batch_with(self, first: _Generate) -> list[_Generate]:
        """`first` and the waiting jobs that may share its batch, taken out of the waiting line in order."""
        batch = [first]
        if not first.batchable:
            return batch
        key = first.sampling.batch_key()
        rest: deque = deque()
        while self._waiting:
            job = self._waiting.popleft()
            fits = isinstance(job, _Generate) and job.batchable and job.sampling.batch_key() == key
            if fits and len(batch) < self.max_batch:
                batch.append(job)
            else:
                rest.append(job)
        self._waiting = rest
        return batch

    def _run_batch(self, batch: list[_Generate]) -> None:
        assert self.generator is not None
        try:
            answers = self.generator.batch([j.prompt for j in batch], [j.sampling for j in batch])
        except BaseException as error:  # each waiting request gets the error; the worker lives on
            for job in batch:
                job.result.set_exception(error)
            return
        self.batch_sizes.append(len(batch))
        for job, outputs in zip(batch, answers):
            job.result.set_result(outputs)

    def _run_stream(self, job: _Stream) -> None:
        assert self.generator is not None
        if job.sink.cancelled.is_set():  # the client left while it waited
            job.sink.pieces.put(None)
            return
        try:
            self.generator.stream(job.prompt, job.sampling, job.sink)
            self.batch_sizes.append(1)
        except BaseException as error:
            job.sink.fail(error)

    def _run_call(self, job: _Call) -> None:
        try:
            job.result.set_result(job.function())
        except BaseException as error:
            job.result.set_exception(error)

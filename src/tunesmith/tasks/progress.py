"""Progress of generation: one stderr line per batch ("generating 40 answers: 8/40, 12s"), so the
minutes that scoring a test split takes on a CPU are not silent. Plain lines, not a bar: they read the
same in a terminal, a CI log and a pipe, and stdout stays for results."""

from __future__ import annotations

import sys
import time


class GenerationProgress:
    def __init__(self, total: int, what: str = "answers", *, enabled: bool = True):
        self.total = total
        self.what = what
        self.enabled = enabled and total > 0
        self.done = 0
        self.started = time.perf_counter()

    def advance(self, count: int) -> None:
        """`count` more outputs are done: print where generation stands."""
        self.done += count
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            print(
                f"generating {self.total} {self.what}: {self.done}/{self.total}, {elapsed:.0f}s",
                file=sys.stderr,
                flush=True,
            )

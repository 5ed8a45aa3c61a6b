"""Progress display: a rich bar with loss, learning rate, trained tokens/s and ETA on a terminal;
one plain line per few percent elsewhere (CI logs, pipes), so logs stay readable."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class ProgressReporter:
    def __init__(self, total_steps: int, *, enabled: bool = True, start_step: int = 0, unit: str = "tok"):
        self.unit = unit
        self.total = total_steps
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.start_step = start_step
        self._last_plain = -1
        self._started = time.perf_counter()
        self._progress = None
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[tps]} " + unit + "/s"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task = self._progress.add_task(
                "train", total=total_steps, completed=start_step, loss="-", lr="-", tps="-"
            )

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def update(self, step: int, *, loss: float, lr: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(
                self._task, completed=step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", tps=f"{tokens_per_s:,.0f}"
            )
            return
        # Plain mode: about twenty lines per run.
        bucket = step * 20 // max(self.total, 1)
        if bucket != self._last_plain or step == self.total:
            self._last_plain = bucket
            elapsed = time.perf_counter() - self._started
            done = max(step - self.start_step, 1)
            eta = elapsed / done * (self.total - step)
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} {self.unit}/s  eta {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text) if self.live else print(text, file=sys.stderr, flush=True)

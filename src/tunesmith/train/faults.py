"""Faults during training: non-finite losses and Ctrl-C. (The crash tests' kill points are in
runs/kill_points.py: the atomic folder writes of runs/ stop at them too, and runs must not import train.)

- A NaN or Inf loss (or gradient norm) is caught at the step it happens, before the optimizer applies
  it: the run stops with a message naming the step and the learning rate, or, with
  `train.skip_nonfinite`, the batch is dropped and counted (`nonfinite_error`).
- Ctrl-C (`GracefulInterrupt`): the first press lets the current optimizer step finish; the loop then
  saves a checkpoint at that step boundary and stops with the resume command. A second press aborts at
  once (KeyboardInterrupt where the program is).

No torch import: the loop passes plain floats.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from tunesmith.errors import TunesmithError

# ---------------------------------------------------------------------------------------------------
# NaN / Inf


def nonfinite(loss: float, grad_norm: float | None = None) -> str | None:
    """What is not finite in a step ('loss is nan', 'gradient norm is inf'), or None when all is."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if grad_norm is not None and not math.isfinite(grad_norm):
        return f"gradient norm is {grad_norm}"
    return None


def nonfinite_error(what: str, step: int, lr: float, run_path, last_checkpoint) -> TunesmithError:
    kept = (
        f"checkpoint {last_checkpoint} (and those before it) is intact"
        if last_checkpoint is not None
        else "no checkpoint was written before it"
    )
    return TunesmithError(
        f"the training {what} at step {step} (learning rate {lr:.3g}); the step was not applied and the run "
        f"stopped: {kept}",
        where=f"{run_path} step {step}",
        fix="start a new run with a lower train.learning_rate (a run resumes with its saved config), clipping on "
        "(train.max_grad_norm), or fp32/bf16 instead of fp16; check the data around that step; or set "
        "train.skip_nonfinite: true to drop such batches and count them",
    )


# ---------------------------------------------------------------------------------------------------
# Ctrl-C


class GracefulInterrupt:
    """Within the block, the first SIGINT only sets `requested`; the loop checks it at each step
    boundary. A second SIGINT raises KeyboardInterrupt at once. Installed only in the main thread and
    only over Python's default handler: a program that set its own keeps it."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.requested = False
        self._previous: Callable[[int, FrameType | None], Any] | int | None = None

    def __enter__(self) -> GracefulInterrupt:
        if (
            self.enabled
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        # os.write, not print: a handler that prints while the interrupted code prints raises
        # "reentrant call" on the buffered stream.
        if self.requested:
            os.write(2, b"\nsecond Ctrl-C: aborting now, without a checkpoint of this step\n")
            self.__exit__()
            raise KeyboardInterrupt
        self.requested = True
        os.write(2, b"\nCtrl-C: finishing the current step, then saving a checkpoint (Ctrl-C again aborts at once)\n")

"""The kill points of the crash tests: `kill_point(label)` SIGKILLs this process where the environment
variable TUNESMITH_TEST_KILL_AT names `label` (comma-separated for several), so the crash tests stop a
real run at an exact place.

Labels: `step-N` (step N's first backward done, its optimizer step not), `eval-N` (step N's validation
record logged, its best-weights and step checkpoints not written), `checkpoint-N-file-K` (K files of
checkpoint step-N written), `<folder>-before-rename` (a staged folder complete with its manifest, not
yet renamed: `step-N`, `adapter`, `model`).

Here in `runs`, below `train`: the training loop and checkpoints (train/) and the atomic folder writes
(runs/atomic.py) both stop at kill points, and runs must not import train.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "TUNESMITH_TEST_KILL_AT"


def kill_point(label: str) -> None:
    wanted = os.environ.get(KILL_ENV)
    if wanted and label in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)

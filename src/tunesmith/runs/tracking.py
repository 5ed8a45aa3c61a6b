"""What `pipeline.train` calls to record a run: `start` when its folder exists, `finish` with the
summary, `fail` with the exception. Main process only; on the others every call does nothing.

start:  registers the run in the index as running, starts the trackers of `track.report_to` with the
        config, and forwards every record RunDir.log writes (so the loop needs no tracking code);
finish: final test metrics to the trackers, closes them, index row -> completed / stopped_early + metrics;
fail:   index row -> failed (interrupted for Ctrl-C, pruned for a search trial's pruner) with the reason,
        trackers closed as failed.

The index is bookkeeping: if it cannot be written (a corrupt file, a lock held past the timeout) the
run goes on with a warning, and `tunesmith runs` still lists it from its folder. A tracker that cannot
start is the user's to fix and stops the run (see runs/trackers.py).
"""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.runs.index import RunIndex, key_metrics
from tunesmith.runs.rundir import RunDir
from tunesmith.runs.trackers import Trackers, redact, safe_params


class RunTracking:
    def __init__(self) -> None:
        self.run: RunDir | None = None
        self.index: RunIndex | None = None
        self.trackers: Trackers | None = None

    def start(self, run: RunDir, config, *, main: bool, resumed: bool) -> None:
        if not main:
            return
        self.run = run
        if config.track.index:
            # The folder's parent, not output.dir: a resumed run may have been moved with its root.
            self.index = RunIndex(Path(run.path).parent)
            self._index("start", run.path, task=config.task, model=config.model.name, method=config.method.name,
                        params=safe_params(config))
        if config.track.report_to:
            self.trackers = Trackers(run.path, config, resumed=resumed)
            run.listeners.append(self.trackers.log)

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        metrics = key_metrics(summary)
        if self.trackers is not None:
            self.trackers.log({"step": summary.get("steps"), **metrics})
            self.trackers.finish()
            self._detach()
        reason = None
        if summary.get("status") == "stopped_early":
            reason = f"early stopping at step {summary.get('steps')}; best validation loss at step {summary.get('best_step')}"
        self._index("finish", self.run.path, summary.get("status", "completed"), metrics=metrics, reason=reason)
        self.run = None

    def fail(self, exc: BaseException) -> None:
        """Record why the run ended; never raises over `exc`, which the caller re-raises."""
        if self.run is None:
            return
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        # A search trial stopped by its pruner raises optuna's TrialPruned through the loop's callback;
        # matched by name so that tracking needs no optuna.
        status = "interrupted" if interrupted else "pruned" if type(exc).__name__ == "TrialPruned" else "failed"
        if interrupted:
            reason = f"stopped ({type(exc).__name__}); continue it with `tunesmith train --resume {self.run.path}`"
        else:
            reason = exc.message if isinstance(exc, TunesmithError) else f"{type(exc).__name__}: {exc}"
        try:
            if self.trackers is not None:
                self.trackers.finish(failed=not interrupted, interrupted=interrupted)
                self._detach()
            self._index("finish", self.run.path, status, reason=redact(reason)[:2000])
        except Exception as problem:  # the run's own error matters more than the bookkeeping's
            warnings.warn(f"could not record the end of {self.run.path}: {problem}", stacklevel=2)
        self.run = None

    def _index(self, action: str, *args, **kwargs) -> None:
        if self.index is None:
            return
        try:
            getattr(self.index, action)(*args, **kwargs)
        except sqlite3.Error as exc:
            warnings.warn(f"the runs index {self.index.path} could not be updated ({exc}); the run goes on, and "
                          "`tunesmith runs` lists it from its folder", stacklevel=3)
            self.index = None

    def _detach(self) -> None:
        if self.run is not None and self.trackers is not None and self.trackers.log in self.run.listeners:
            self.run.listeners.remove(self.trackers.log)

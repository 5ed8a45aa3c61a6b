"""The local runs index: one SQLite file under the runs root (`output.dir`), no server.

Every run is registered when it starts (status running, with its pid) and updated when it ends
(completed / stopped_early with the summary's metrics, failed / interrupted with the reason). A run
whose process died without saying so is still marked running; the reader turns that into
"interrupted" when the pid recorded on this host is gone.

Several processes write at once (search workers, `accelerate launch` jobs sharing a root), so: WAL
journal (readers never block the writer), a busy timeout instead of failing on a lock, and one short
`BEGIN IMMEDIATE` transaction per write, with the connection closed after it. SQLite's locking needs
a local filesystem; on NFS and the like turn the index off (`track.index: false`).

Each root has its own index, and a listing also reads the indexes of folders below the root: a
search study's trials are run folders under <study>/trials/ with their own index there, so
`tunesmith runs` shows them beside ordinary runs and `--root <study>` shows them alone. Run folders
that no index knows (made before it existed, or copied in) are listed from their own files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.runs.trackers import safe_params

INDEX_FILE = "index.sqlite"
SCHEMA_VERSION = 1
FINISHED = ("completed", "stopped_early")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    path      TEXT PRIMARY KEY,   -- run folder relative to the root, POSIX separators
    name      TEXT NOT NULL,
    status    TEXT NOT NULL,      -- running, completed, stopped_early, failed, interrupted
    reason    TEXT,               -- why it failed or stopped
    task      TEXT,
    model     TEXT,
    method    TEXT,
    params    TEXT NOT NULL,      -- JSON: the flattened config, secrets stripped
    metrics   TEXT NOT NULL,      -- JSON: key_metrics(summary)
    started   REAL NOT NULL,
    ended     REAL,
    host      TEXT,
    pid       INTEGER,
    pid_start TEXT                -- the process's start time, so a reused pid is not taken for the run
)
"""


@dataclass
class RunRecord:
    path: Path
    name: str
    status: str
    reason: str | None = None
    task: str | None = None
    model: str | None = None
    method: str | None = None
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None
    host: str | None = None
    pid: int | None = None
    indexed: bool = True  # False: found on disk only


def key_metrics(summary: dict) -> dict:
    """The numbers a run is judged by, flat: training figures plus the test scores as test/<metric>
    (tuned) and base/<metric>. The index, the trackers and `runs compare` all use this one list."""
    keys = ("steps", "final_train_loss", "best_eval_loss", "best_eval_ppl", "train_seconds", "trained_tokens_per_s")
    out = {k: summary[k] for k in keys if _is_number(summary.get(k))}
    for prefix, scores in (("test", summary.get("tuned") or {}), ("base", summary.get("base") or {})):
        out.update({f"{prefix}/{k}": v for k, v in scores.items() if _is_number(v)})
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------------
# Processes: is the one that registered a run still there?


def _process_start(pid: int) -> str | None:
    """Start time of `pid` in clock ticks since boot (Linux /proc); None where /proc is missing or
    the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may hold spaces and parentheses, so split after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, pid_start: str | None) -> bool:
    if Path("/proc/self/stat").exists():
        return pid_start is not None and _process_start(pid) == pid_start
    try:  # no /proc (macOS): signal 0 checks existence only
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------------
# The index


def _use_wal(db: sqlite3.Connection, wait_s: float = 60.0) -> None:
    """Put the index in WAL mode (persistent in the file). Switching needs an exclusive lock, and SQLite
    answers a switch that races another connection's with "database is locked" at once, without waiting on
    the busy timeout (seen with four processes creating the index together on a loaded machine): retry."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class RunIndex:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.path = self.root / INDEX_FILE

    @contextlib.contextmanager
    def _write(self):
        """One short write transaction. BEGIN IMMEDIATE takes the write lock up front, so two writers
        wait on the busy timeout instead of failing at commit with 'database is locked'."""
        self.root.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            _use_wal(db)
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    db.execute(_SCHEMA)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    def _unreadable(self, exc: Exception) -> TunesmithError:
        return TunesmithError(f"cannot read the runs index: {exc}", where=str(self.path),
                              fix="move the file aside: the run folders are listed from their own files without it, "
                                  "and the next run starts a new index")

    def _key(self, run_path: str | Path) -> str:
        path = Path(run_path).resolve()
        try:
            return path.relative_to(self.root.resolve()).as_posix()
        except ValueError:  # a run outside the root (output.dir moved): keep its absolute path
            return path.as_posix()

    def start(self, run_path: str | Path, *, task: str, model: str, method: str, params: dict) -> None:
        """Register (or, on resume, re-register) a run as running in this process."""
        pid = os.getpid()
        row = (self._key(run_path), Path(run_path).name, task, model, method, json.dumps(params, default=str),
               time.time(), socket.gethostname(), pid, _process_start(pid))
        with self._write() as db:
            db.execute(
                "INSERT INTO runs (path, name, status, task, model, method, params, metrics, started, host, pid, pid_start)"
                " VALUES (?, ?, 'running', ?, ?, ?, ?, '{}', ?, ?, ?, ?)"
                " ON CONFLICT(path) DO UPDATE SET status='running', reason=NULL, ended=NULL, task=excluded.task,"
                " model=excluded.model, method=excluded.method, params=excluded.params, host=excluded.host,"
                " pid=excluded.pid, pid_start=excluded.pid_start",
                row,
            )

    def finish(self, run_path: str | Path, status: str, *, metrics: dict | None = None, reason: str | None = None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status=?, reason=?, ended=?, metrics=COALESCE(?, metrics) WHERE path=?",
                (status, reason, time.time(), json.dumps(metrics) if metrics is not None else None, self._key(run_path)),
            )

    def _rows(self) -> list[RunRecord]:
        if not self.path.exists():
            return []
        # Read-only and no schema work: listing must not take the write lock from a running search.
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)
            try:
                db.row_factory = sqlite3.Row
                rows = db.execute("SELECT * FROM runs ORDER BY started").fetchall()
            finally:
                db.close()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # created, and no run registered yet
                return []
            raise self._unreadable(exc) from None
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from None
        here = socket.gethostname()
        out = []
        for row in rows:
            path = Path(row["path"])
            record = RunRecord(
                path=path if path.is_absolute() else self.root / path, name=row["name"], status=row["status"],
                reason=row["reason"], task=row["task"], model=row["model"], method=row["method"],
                params=json.loads(row["params"]), metrics=json.loads(row["metrics"]), started=row["started"],
                ended=row["ended"], host=row["host"], pid=row["pid"],
            )
            if record.status == "running" and record.host == here and not _alive(row["pid"], row["pid_start"]):
                record.status = "interrupted"
                record.reason = (f"process {row['pid']} ended without finishing the run (killed or crashed); "
                                 f"continue it with `tunesmith train --resume {record.path}`")
            out.append(record)
        return out

    def records(self, *, task: str | None = None, scan: bool = True) -> list[RunRecord]:
        """Every run under the root: this index's rows, the rows of the indexes in folders below it (a
        search study's trials/), then run folders on disk that no index knows (`scan`)."""
        records = self._rows()
        if scan:
            folders, indexes = _walk(self.root)
            for folder in indexes:
                records += RunIndex(folder)._rows()
            known = {r.path.resolve() for r in records}
            records += [record_from_disk(p) for p in folders if p.resolve() not in known]
            records.sort(key=lambda r: r.started or 0.0)
        return [r for r in records if task is None or r.task == task]


def _walk(root: Path, depth: int = 3) -> tuple[list[Path], list[Path]]:
    """Run folders (those with a config.yaml) and folders holding an index, up to `depth` levels below
    `root` (runs/search-<id>/trials/<trial> is three). Run folders are not entered: their checkpoints
    hold nothing to list."""
    runs, indexes = [], []

    def visit(folder: Path, level: int) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir())
        except OSError:
            return
        for child in children:
            if (child / "config.yaml").is_file():
                runs.append(child)
            elif level < depth:
                if (child / INDEX_FILE).is_file():
                    indexes.append(child)
                visit(child, level + 1)

    if root.is_dir():
        visit(root, 1)
    return runs, indexes


def record_from_disk(path: Path) -> RunRecord:
    """A run described from its folder: config.yaml for what it is, summary.json for how it ended."""
    import yaml

    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    summary = {}
    if (path / "summary.json").is_file():
        with contextlib.suppress(OSError, ValueError):
            summary = json.loads((path / "summary.json").read_text())
    status = summary.get("status") or "unknown"
    reason = summary.get("reason") if summary else "in no index and without summary.json: unfinished, or made before the index existed"

    def section(name: str) -> dict[str, Any]:
        value = config.get(name)
        return value if isinstance(value, dict) else {}

    stat = (path / "config.yaml").stat()
    return RunRecord(
        path=path, name=path.name, status=status, reason=reason, task=config.get("task"),
        model=section("model").get("name"), method=section("method").get("name"), params=safe_params(config),
        metrics=key_metrics(summary), started=stat.st_mtime, indexed=False,
    )


def last_logged(run_path: Path) -> dict:
    """How far an unfinished run got: the last step, train loss and validation loss in its
    metrics.jsonl, read from the file's last 8 KiB (the file of a long run is large)."""
    path = Path(run_path) / "metrics.jsonl"
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return {}
    last: dict = {}
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            last.update({k: record[k] for k in ("step", "loss", "eval_loss") if _is_number(record.get(k))})
    return last

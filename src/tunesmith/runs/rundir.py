"""The run directory: runs/<timestamp>-<name>/ with config, metrics, summary, report, plots, weights.

Layout:
  config.yaml      the resolved config (what actually ran)
  metrics.jsonl    one JSON object per log step and per validation pass
  summary.json     final metrics, paths, parameter counts, timings
  report.md        human-readable summary with base-vs-tuned table and samples
  plots/loss.png   train and validation loss
  adapter/         PEFT adapter (lora, qlora) or model/ (full, freeze)
  checkpoints/     step-N/ folders for --resume (each with a manifest of sizes and hashes), plus best/
  trackers.json    MLflow / W&B run ids (a resumed run continues the same tracker runs)
  tensorboard/     event files, wandb/ the W&B run, when track.report_to names them
The runs root also holds index.sqlite, the runs index that `tunesmith runs` reads (runs/index.py).
Crash safety: checkpoints, weights, summary.json, report.md and config.yaml are written under a
`.partial` name and renamed (runs/atomic.py); metrics.jsonl is appended a whole line at a time and cut
back to the checkpoint on resume; config.yaml, which makes a folder a run, is written after the files
a resume needs.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from tunesmith.errors import TunesmithError
from tunesmith.redact import redact_tree
from tunesmith.runs.atomic import atomic_directory, atomic_write_text  # noqa: F401 - imported from here by others


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # Called with every record `log` writes: the experiment trackers (runs/tracking.py) hook in here,
        # so the training loop stays free of tracking code.
        self.listeners: list = []

    # -- creation -----------------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | Path, name: str) -> "RunDir":
        """A new folder; an existing one is never reused (mkdir without exist_ok is the lock)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for attempt in range(1000):
            candidate = root / (f"{stamp}-{slug}" if attempt == 0 else f"{stamp}-{slug}-{attempt + 1}")
            try:
                candidate.mkdir()
                return cls(candidate)
            except FileExistsError:
                continue
        raise TunesmithError(f"cannot create a run directory under {root}", fix="pick another output.dir")

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(path)
        if not (run.path / "config.yaml").is_file():
            raise TunesmithError(f"{run.path} is not a tunesmith run directory (no config.yaml)",
                                 fix="pass a folder created by `tunesmith train`, e.g. runs/20260101-120000-run")
        return run

    # -- paths --------------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def weights_dir(self, saves_adapter: bool) -> Path:
        return self.path / ("adapter" if saves_adapter else "model")

    # -- metrics ------------------------------------------------------------------------------------

    def log(self, record: dict) -> None:
        # One write of one whole line: a kill can cut only the last line, which read_metrics drops.
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        for listener in self.listeners:
            listener(record)

    def read_metrics(self) -> list[dict]:
        """The logged records; a line cut short by a killed process is skipped (resume rewrites the file)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def truncate_metrics(self, after_step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the file reads as one clean run."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        atomic_write_text(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))

    def write_json(self, name: str, data: dict) -> None:
        # Summaries and trial records carry error reasons and config values: secrets masked (redact.py).
        atomic_write_text(self.path / name, json.dumps(redact_tree(data), indent=2, default=str) + "\n")

    def read_json(self, name: str) -> dict:
        path = self.path / name
        return json.loads(path.read_text()) if path.exists() else {}

"""Checkpoints that let `--resume` continue the same trajectory.

A checkpoint holds the trainable weights (only those: an adapter is megabytes), the optimizer and
scheduler states, every RNG state (Python, NumPy, torch) and the loop position (step, epoch, batch in
epoch, early-stopping state). The data order is a pure function of (seed, epoch), so the position is
enough to skip to the exact next batch.

Each checkpoint is written to `step-N.partial-<pid>/`, fsynced, closed with a manifest of its files'
sizes and sha256 hashes, and renamed (runs/atomic.py): a folder named step-N is complete when written.
On resume (`resume_checkpoint`) the newest step-N whose manifest verifies is used; damaged ones are
reported and skipped (kept on disk until the run writes that step again), and leftovers of writes
that died are removed with a note.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunesmith.errors import TunesmithError
from tunesmith.runs.atomic import MANIFEST, atomic_directory, atomic_file, remove_partials, verify_manifest
from tunesmith.train.faults import kill_point

FILES = ("trainable.safetensors", "states.pt", "loop.json")  # what a checkpoint holds besides its manifest
_STEP = re.compile(r"step-(\d+)")


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise TunesmithError(f"checkpoint has weights this model lacks: {missing[:3]}",
                             fix="resume with the same config the run was started with")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def rng_state() -> dict:
    """Every RNG state in types torch.load(weights_only=True) accepts: NumPy's key array becomes a tensor."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)]
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, model, optimizer, scheduler, loop_state: dict) -> Path:
    step = loop_state.get("step")
    resume = f"; then `tunesmith train --resume {folder.parent.parent}` continues from the last complete checkpoint"
    with atomic_directory(folder, manifest=True, then=resume) as staging:
        save_file(trainable_state(model), str(staging / FILES[0]))
        kill_point(f"checkpoint-{step}-file-1")
        # Through a Python file object: torch's own path writer loses the OSError (a full disk) in its message.
        with open(staging / FILES[1], "wb") as handle:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                       handle)
        kill_point(f"checkpoint-{step}-file-2")
        (staging / FILES[2]).write_text(json.dumps(loop_state, indent=2))
        kill_point(f"checkpoint-{step}-file-3")
    return folder


def save_trainable(folder: Path, model) -> Path:
    """Only the trainable weights (the best validation pass needs no optimizer state), written atomically."""
    target = folder / "trainable.safetensors"
    with atomic_file(target, then=f"; then `tunesmith train --resume {folder.parent.parent}`") as staging:
        save_file(trainable_state(model), str(staging))
    return target


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> dict:
    load_trainable_state(model, load_file(str(folder / "trainable.safetensors")))
    # weights_only: a run folder can come from someone else, and a pickle can run code when read; the
    # optimizer, schedule and RNG states are tensors, numbers, strings and tuples, which it accepts.
    states = torch.load(folder / "states.pt", weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    set_rng_state(states["rng"])
    return json.loads((folder / "loop.json").read_text())


def step_checkpoints(root: Path) -> list[Path]:
    """step-N folders (complete when written, by their atomic rename), oldest first."""
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP.fullmatch(p.name) and (p / "loop.json").exists()]
    return sorted(found, key=lambda p: int(_STEP.fullmatch(p.name).group(1)))


def checkpoint_problem(folder: Path) -> str | None:
    """None when the checkpoint can be resumed from, else what is wrong with it. A checkpoint written
    before manifests existed is accepted when its files are there (its write was atomic too)."""
    if (folder / MANIFEST).exists():
        return verify_manifest(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    return f"{', '.join(missing)} missing" if missing else None


def resume_checkpoint(run_path: Path, *, clean: bool = True, report: Callable[[str], None] | None = print) -> Path | None:
    """The newest checkpoint of the run whose files verify, or None. With `clean` (the main process),
    what writes that died left behind (`*.partial*`) is removed first; `report` says what was
    removed and which checkpoints were skipped and why."""
    say = report or (lambda _: None)
    root = Path(run_path) / "checkpoints"
    if clean:
        for leftover in remove_partials(Path(run_path), recursive=False) + remove_partials(root):
            say(f"removed {leftover}: an unfinished write of a process that stopped")
    for folder in reversed(step_checkpoints(root)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        say(f"skipping damaged checkpoint {folder} ({problem}); it stays on disk until the run writes that step again")
    return None


def prune_checkpoints(root: Path, keep: int) -> None:
    for old in step_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)

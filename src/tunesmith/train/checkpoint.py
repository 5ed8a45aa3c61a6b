"""Checkpoints that let `--resume` continue the same trajectory.

A checkpoint holds the trainable weights (only those: an adapter is megabytes), the optimizer and
scheduler states, every RNG state (Python, NumPy, torch) and the loop position (step, epoch, batch in
epoch, early-stopping state). The data order is a pure function of (seed, epoch), so the position is
enough to skip to the exact next batch. Each checkpoint is written to a temporary folder and renamed:
a folder named step-N is always complete.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunesmith.errors import TunesmithError
from tunesmith.runs.rundir import atomic_directory


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
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, model, optimizer, scheduler, loop_state: dict) -> Path:
    with atomic_directory(folder) as staging:
        save_file(trainable_state(model), str(staging / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   staging / "states.pt")
        (staging / "loop.json").write_text(json.dumps(loop_state, indent=2))
    return folder


def save_trainable(folder: Path, model) -> Path:
    """Only the trainable weights (the best validation pass needs no optimizer state), written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "trainable.safetensors"
    staging = folder / ".trainable.safetensors.tmp"
    save_file(trainable_state(model), str(staging))
    staging.replace(target)
    return target


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> dict:
    load_trainable_state(model, load_file(str(folder / "trainable.safetensors")))
    # Our own file of optimizer tensors and RNG tuples; weights_only=False is needed for the RNG
    # states (Python tuples, NumPy arrays), and the file was written by this run, not downloaded.
    states = torch.load(folder / "states.pt", weights_only=False)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    set_rng_state(states["rng"])
    return json.loads((folder / "loop.json").read_text())


def step_checkpoints(root: Path) -> list[Path]:
    """Complete step-N checkpoints, oldest first."""
    if not root.exists():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / "loop.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune_checkpoints(root: Path, keep: int) -> None:
    for old in step_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)

"""Checkpoints that let `--resume` continue the same trajectory, on one process or many.

A checkpoint `step-N/` holds:

| file | written by | what |
|---|---|---|
| `trainable.safetensors` | tunesmith, main process | the trainable weights only (an adapter is megabytes) |
| `optimizer.bin` | accelerate's `save_state` | the optimizer state (under FSDP: `optimizer_0/`, each process its shard) |
| `random_states_<rank>.pkl` | `save_state`, every process | Python, NumPy, torch (and CUDA) RNG states of that process |
| `loop.json` | tunesmith, main process | the loop position (step, epoch, batch in epoch, early-stopping state), the schedule's state, the number of processes |
| `manifest.json` | tunesmith, main process, last | each file's size and sha256 |

Every process calls `save_checkpoint` and `load_checkpoint`: accelerate's `save_state`/`load_state` must
run on all of them, because under FSDP and DeepSpeed each holds only its shard of the model and the
optimizer (a rank-0 `optimizer.state_dict()` is only right for DDP). The model itself is kept out of
`save_state` (a pre-hook empties its list) except where it is sharded: for an adapter accelerate would
write the whole base model. The schedule is stepped by tunesmith, not accelerate, so its state travels
in loop.json (JSON, not accelerate's `register_for_checkpointing`, which unpickles with
weights_only=False: a run folder can come from someone else).

The write stays atomic (runs/atomic.py): the main process makes `step-N.partial-<pid>/` and broadcasts
its path, every process writes its share into it, the processes agree that all shares are written, and
the main process writes the manifest last and renames the folder to step-N. A failure on any process
stops all of them with the staging folder removed. On resume (`resume_checkpoint`) the newest step-N
whose manifest verifies is used; damaged ones are reported and skipped (kept on disk until the run
writes that step again), and leftovers of writes that died are removed with a note. Checkpoints of the
format before accelerate's (`states.pt` holding optimizer, schedule and rank 0's RNG states) still
resume without FSDP/DeepSpeed.
"""

from __future__ import annotations

import contextlib
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
from tunesmith.runs.kill_points import kill_point
from tunesmith.train.distributed import SHARDED, all_succeeded, broadcast_from_main, distributed_type, is_sharded

WEIGHTS = "trainable.safetensors"
LOOP = "loop.json"
RNG = "random_states_{}.pkl"  # accelerate's name (checkpointing.py), one per process
LEGACY = "states.pt"  # optimizer, schedule and rank 0's RNG states, before save_state
LEGACY_FILES = (WEIGHTS, LEGACY, LOOP)  # a checkpoint from before manifests: these make it complete
_STEP = re.compile(r"step-(\d+)")


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise TunesmithError(
            f"checkpoint has weights this model lacks: {missing[:3]}",
            fix="resume with the same config the run was started with",
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def rng_state() -> dict:
    """Every RNG state in types torch.load(weights_only=True) accepts: NumPy's key array becomes a tensor."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    numpy_state = [
        name,
        torch.from_numpy(np.asarray(keys).astype(np.int64)),
        int(position),
        int(has_gauss),
        float(cached_gaussian),
    ]
    return {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(
        (name, np.asarray(keys, dtype=np.int64).astype(np.uint32), position, has_gauss, cached_gaussian)
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------
# Save


@contextlib.contextmanager
def _model_kept_out(accelerator):
    """Within the block, accelerate's save_state/load_state skip the model (tunesmith saves its trainable
    weights itself): for a PEFT model `save_state` would write the whole state dict, base model included.
    Not under FSDP/DeepSpeed: there the model is sharded and only accelerate can save and load it."""
    if is_sharded(accelerator):
        yield
        return
    handles = [
        accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear()),
        accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear()),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _write_share(staging: Path, accelerator, model, scheduler, loop_state: dict) -> None:
    """What this process writes into the staging folder; the kill points count the three parts."""
    step = loop_state.get("step")
    main = accelerator.is_main_process
    # 1. The trainable weights (sharded models: accelerate's part below saves them, each process its shard).
    if main and not is_sharded(accelerator):
        save_file(trainable_state(model), str(staging / WEIGHTS))
    kill_point(f"checkpoint-{step}-file-1")
    # 2. Optimizer (and a sharded model), each process's RNG states: accelerate, on every process.
    with _model_kept_out(accelerator):
        accelerator.save_state(str(staging), safe_serialization=True)
    kill_point(f"checkpoint-{step}-file-2")
    # 3. The loop's own state, with what a resume must match.
    if main:
        (staging / LOOP).write_text(
            json.dumps(
                {
                    **loop_state,
                    "scheduler": scheduler.state_dict(),
                    "processes": accelerator.num_processes,
                    "distributed_type": distributed_type(accelerator),
                },
                indent=2,
            )
        )
    kill_point(f"checkpoint-{step}-file-3")


def save_checkpoint(folder: Path, accelerator, model, scheduler, loop_state: dict) -> Path:
    """Write checkpoint `folder` (step-N) atomically. Every process calls it; `model` is the unwrapped one."""
    main = accelerator.is_main_process
    then = f"; then `tunesmith train --resume {folder.parent.parent}` continues from the last complete checkpoint"
    error: Exception | None = None
    with contextlib.ExitStack() as stack:
        # 1. The main process makes the staging folder (step-N.partial-<pid>); every process learns its path.
        staging = None
        if main:
            try:
                staging = stack.enter_context(atomic_directory(folder, manifest=True, then=then))
            except Exception as exc:  # noqa: BLE001 - told to the others below, then raised
                error = exc
        staging = broadcast_from_main(accelerator, None if staging is None else str(staging))
        # 2. Every process writes its share.
        if staging is not None:
            try:
                _write_share(Path(staging), accelerator, model, scheduler, loop_state)
            except Exception as exc:  # noqa: BLE001
                error = exc
        # 3. Once every share is written, the main process closes the folder: fsync, manifest last, rename.
        written = all_succeeded(accelerator, error is None)
        if main and written:
            try:
                stack.close()
            except Exception as exc:  # noqa: BLE001 - atomic_directory removed the staging folder
                error = exc
        renamed = all_succeeded(accelerator, error is None)
        # Raised inside the stack: on the main process atomic_directory removes the staging folder and
        # turns a full disk into its message.
        if error is not None:
            raise error
        if not (written and renamed):
            raise TunesmithError(
                f"another process failed while writing checkpoint {folder} (its error is in its "
                "output); nothing partial was kept",
                fix=f"fix that error{then}",
            )
    return folder


def save_trainable(folder: Path, model) -> Path:
    """Only the trainable weights (the best validation pass needs no optimizer state), written atomically."""
    target = folder / WEIGHTS
    with atomic_file(target, then=f"; then `tunesmith train --resume {folder.parent.parent}`") as staging:
        save_file(trainable_state(model), str(staging))
    return target


# ---------------------------------------------------------------------------------------------------
# Load


def load_checkpoint(folder: Path, accelerator, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, schedule and RNG states from `folder`; returns the loop position.
    Every process calls it; `model` is the unwrapped one, `optimizer` the prepared one."""
    position = json.loads((folder / LOOP).read_text())
    if (folder / LEGACY).is_file():
        return _load_legacy(folder, accelerator, model, optimizer, scheduler, position)
    written_by, written_type = position.pop("processes", None), position.pop("distributed_type", None)
    schedule = position.pop("scheduler")
    if written_by is not None and written_by != accelerator.num_processes:
        raise TunesmithError(
            f"checkpoint {folder} was written by {written_by} processes and this run has "
            f"{accelerator.num_processes}: the examples of each step depend on the number of processes",
            fix=f"resume it with {written_by} processes: `accelerate launch --multi_gpu --num_processes {written_by} "
            f"-m tunesmith.cli train --resume {folder.parent.parent}`"
            if written_by > 1
            else f"resume it with one process: `tunesmith train --resume {folder.parent.parent}`",
        )
    if written_type is not None and (written_type in SHARDED) != is_sharded(accelerator):
        raise TunesmithError(
            f"checkpoint {folder} was written under {written_type} and this run is {distributed_type(accelerator)}: "
            "a sharded checkpoint and a whole one hold the model differently",
            fix="resume with the launch (FSDP/DeepSpeed or not) the run was started with",
        )
    if not is_sharded(accelerator):
        load_trainable_state(model, load_file(str(folder / WEIGHTS)))
    with _model_kept_out(accelerator):
        accelerator.load_state(str(folder))
    _check_rng_restored(folder, accelerator)
    scheduler.load_state_dict(schedule)
    return position


def _check_rng_restored(folder: Path, accelerator) -> None:
    """accelerate's load_state only logs "Could not load random states" when it cannot: the resumed run
    would then draw other dropout masks than the run it continues. Here that is an error."""
    from accelerate.utils import load

    path = folder / RNG.format(accelerator.process_index)
    try:
        saved = load(path)  # as accelerate reads it: weights_only, with its NumPy allow-list
    except Exception as exc:  # noqa: BLE001
        raise TunesmithError(
            f"cannot read the RNG states of process {accelerator.process_index} in {path} ({exc})",
            fix="resume from an earlier checkpoint (move this one aside), with the library versions "
            "the run was written with",
        ) from exc
    if not torch.equal(saved["torch_manual_seed"], torch.get_rng_state()):
        raise TunesmithError(
            f"the RNG states in {path} were not restored",
            where=str(path),
            fix="resume with the library versions the run was written with",
        )


def _load_legacy(folder: Path, accelerator, model, optimizer, scheduler, position: dict) -> dict:
    """A checkpoint of the format before accelerate's save_state: rank 0's optimizer state (whole under
    DDP, so every process loads it) and rank 0's RNG states."""
    if is_sharded(accelerator):
        raise TunesmithError(
            f"checkpoint {folder} is in the format of an older tunesmith (one optimizer state from process 0), "
            f"which cannot be loaded into {distributed_type(accelerator)}'s sharded optimizer",
            fix="resume it without FSDP/DeepSpeed (one process, or DDP with `accelerate launch --multi_gpu`)",
        )
    load_trainable_state(model, load_file(str(folder / WEIGHTS)))
    # weights_only: a run folder can come from someone else, and a pickle can run code when read; the
    # optimizer, schedule and RNG states are tensors, numbers, strings and tuples, which it accepts.
    states = torch.load(folder / LEGACY, weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    set_rng_state(states["rng"])
    return position


# ---------------------------------------------------------------------------------------------------
# Finding the checkpoint to resume from


def step_checkpoints(root: Path) -> list[Path]:
    """step-N folders (complete when written, by their atomic rename), oldest first."""
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP.fullmatch(p.name) and (p / LOOP).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def checkpoint_problem(folder: Path) -> str | None:
    """None when the checkpoint can be resumed from, else what is wrong with it. A checkpoint written
    before manifests existed is accepted when its files are there (its write was atomic too)."""
    if (folder / MANIFEST).exists():
        return verify_manifest(folder)
    missing = [name for name in LEGACY_FILES if not (folder / name).is_file()]
    return f"{', '.join(missing)} missing" if missing else None


def resume_checkpoint(
    run_path: Path, *, clean: bool = True, report: Callable[[str], None] | None = print
) -> Path | None:
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

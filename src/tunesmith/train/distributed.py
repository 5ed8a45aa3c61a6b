"""Several processes under `accelerate launch`: which backends can run here, and the small agreements
the processes make (one path for all, all succeeded or all stop).

accelerate 1.15 turns FSDP and DeepSpeed on only for GPU-type devices (`AcceleratorState`: the FSDP
branch is taken for MULTI_GPU/XPU/NPU/..., never for MULTI_CPU, and DeepSpeed needs `cpu=False`). On a
machine without them, `accelerate launch --use_fsdp --num_processes 2` starts two processes that run
plain DDP over gloo without a word: nothing is sharded, and the checkpoints are not the ones asked for.
torch itself runs FSDP2 (`fully_shard`) over gloo on CPUs, but FSDP1 refuses ("FSDP needs a non-CPU
accelerator device"), and accelerate has no CPU path to either. So such a launch is refused up front
(`check_backend`), naming what is missing.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from tunesmith.errors import TunesmithError

# What `accelerate launch` (its flags or its config file) sets to ask for a sharded backend.
_REQUESTS = {
    "FSDP": ("ACCELERATE_USE_FSDP", "FSDP"),
    "DeepSpeed": ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED"),
    "Megatron-LM": ("ACCELERATE_USE_MEGATRON_LM", "MEGATRON_LM"),
}
SHARDED = {"FSDP", "DEEPSPEED", "MEGATRON_LM"}  # accelerate's distributed types that shard model or optimizer


def distributed_type(accelerator) -> str:
    """accelerate's DistributedType by name ('NO', 'MULTI_CPU', 'MULTI_GPU', 'FSDP', 'DEEPSPEED', ...)."""
    kind = accelerator.distributed_type
    return getattr(kind, "name", None) or str(kind).split(".")[-1]


def is_sharded(accelerator) -> bool:
    """Model or optimizer state is split over the processes (FSDP, DeepSpeed, Megatron-LM): every process
    must take part in saving it, and no process holds the whole of it."""
    return distributed_type(accelerator) in SHARDED


def requested_backend() -> str | None:
    """The sharded backend `accelerate launch` asked for ('FSDP', 'DeepSpeed', 'Megatron-LM'), or None."""
    for name, (variable, _) in _REQUESTS.items():
        if os.environ.get(variable, "false").lower() in ("1", "true", "yes"):
            return name
    return None


def check_backend(accelerator) -> None:
    """Refuse a launch that asked for FSDP/DeepSpeed/Megatron-LM when accelerate did not turn it on (it
    falls back to DDP silently), naming what this machine lacks."""
    wanted = requested_backend()
    if wanted is None or distributed_type(accelerator) == _REQUESTS[wanted][1]:
        return
    missing = []
    if not torch.cuda.is_available():
        missing.append("CUDA device (with NCCL)")
    if wanted == "DeepSpeed" and importlib.util.find_spec("deepspeed") is None:
        missing.append("deepspeed package (pip install deepspeed)")
    if wanted == "Megatron-LM" and importlib.util.find_spec("megatron") is None:
        missing.append("megatron-core package")
    lacks = " and no ".join(missing) if missing else "device type accelerate shards on"
    raise TunesmithError(
        f"`accelerate launch` asked for {wanted}, but this machine has no {lacks}: accelerate "
        f"runs {wanted} only on GPU-type devices, and here it would run plain DDP over gloo instead "
        f"({distributed_type(accelerator)}, {accelerator.num_processes} processes), with nothing sharded",
        where=f"{_REQUESTS[wanted][0]}={os.environ.get(_REQUESTS[wanted][0])}",
        fix="on CPUs launch DDP: `accelerate launch --multi_gpu --num_processes N -m tunesmith.cli train ...` "
        f"(each process holds the whole model); or run with {wanted} on a machine with CUDA GPUs",
    )


def broadcast_from_main(accelerator, value):
    """The main process's `value` (any picklable object), on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value if accelerator.is_main_process else None]
    broadcast_object_list(box)
    return box[0]


def all_succeeded(accelerator, ok: bool) -> bool:
    """True on every process when `ok` is true on every process. A collective: each process must call it,
    so one whose write failed tells the others instead of leaving them waiting in the next collective."""
    if accelerator.num_processes == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=accelerator.device)
    return float(accelerator.reduce(flag, reduction="sum").item()) == 0.0

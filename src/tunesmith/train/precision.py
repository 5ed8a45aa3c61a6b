"""Which autocast dtype a run uses.

bf16 autocast halves activation traffic and uses the matrix units (AMX on Sapphire Rapids and later,
tensor cores on Ampere and later); it needs no loss scaling. fp16 (older GPUs) needs a grad scaler,
which accelerate provides. Elsewhere fp32.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(requested: str) -> str:
    """'auto' -> 'bf16' / 'fp32'; explicit choices are kept. Returns accelerate's names: bf16, fp16, no."""
    if requested == "fp32":
        return "no"
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if cpu_has_bf16() else "no"

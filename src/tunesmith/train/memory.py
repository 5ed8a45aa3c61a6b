"""Memory at run time: confirm an automatic batch size with a probe step, and turn an out-of-memory error
into advice instead of a traceback.

The estimator (tunesmith.plan) predicts; this module measures. `train.batch_size: auto` starts from the
estimator's largest fitting batch and runs one real forward and backward pass on the longest examples
(batches are padded to their longest member, so that is the worst step of the run); an OOM error, or a
measured peak above the device's budget, halves the batch until one fits. Peaks are read where the
platform reports them: `torch.cuda.max_memory_allocated` on a GPU, the process high-water mark (VmHWM,
reset through /proc/self/clear_refs) on Linux CPUs. On a CPU the kernel kills a process that runs out
instead of raising, so the measured peak is the only warning there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

GIB = 1024**3

# What allocators say when they run out: CUDA's OutOfMemoryError text, c10's CPU allocator
# ("DefaultCPUAllocator: not enough memory" / "can't allocate memory"), MPS and XPU variants.
OOM_MARKERS = ("out of memory", "not enough memory", "can't allocate memory", "failed to allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc).lower() for marker in OOM_MARKERS)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def peak_bytes(device: torch.device) -> int | None:
    """The memory high-water mark since the last reset_peak, or None where the platform does not say."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def free_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def probe_batch_size(
    step: Callable[[int], None],
    batch: int,
    budget_bytes: float | None,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> int:
    """The largest batch from `batch` down (halving) whose probe `step(batch)` neither fails with an
    out-of-memory error nor peaks above `budget_bytes`. `step` runs one forward and backward pass and
    leaves no gradients behind. Returns at least 1; a batch of 1 that does not fit raises the OOM."""
    while True:
        reset_peak(device)
        try:
            step(batch)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, everything else is re-raised
            if not is_out_of_memory(exc) or batch == 1:
                raise
            free_memory(device)
            log(f"batch size probe: batch {batch} ran out of memory; trying {batch // 2}")
            batch //= 2
            continue
        peak = peak_bytes(device)
        free_memory(device)
        if budget_bytes is None or peak is None or peak <= budget_bytes or batch == 1:
            log(
                f"batch size probe: batch {batch} fits"
                + (f" (peak {peak / GIB:.2f} GiB of {budget_bytes / GIB:.2f} GiB)" if peak and budget_bytes else "")
            )
            return batch
        log(
            f"batch size probe: batch {batch} peaked at {peak / GIB:.2f} GiB, over the {budget_bytes / GIB:.2f} GiB "
            f"budget; trying {batch // 2}"
        )
        batch //= 2

"""CPU threads for training, set once per run before the model is loaded.

torch's intra-op pool (OpenMP) defaults to every logical CPU the process may run on. Two cases make
that wrong for training, and both are common on servers and in containers:
  - SMT siblings: two hardware threads share one core's vector units, so a second thread per core
    adds contention, not matmul throughput (Intel's and PyTorch's CPU tuning guides: one thread per
    physical core);
  - a CPU quota (cgroup v2 `cpu.max`, e.g. `docker --cpus 4` on a 64-core host) does not narrow the
    affinity mask, so torch starts 64 threads that the quota then throttles.
So the pool gets the physical cores of the process's affinity mask, capped by the quota and shared
between the processes of one machine (LOCAL_WORLD_SIZE). An OMP_NUM_THREADS the user set is kept
(torchrun sets 1 for multi-process launches, which is kept too). Inter-op threads are left alone: the
training step runs no inter-op parallel work. When other work already fills the CPUs the run's note
says so and names the environment settings that help (`busy_hint`).

glibc's malloc is left as it is: pinning MALLOC_MMAP_THRESHOLD_ cut RSS but slowed LoRA steps ~65%
when measured here; jemalloc or tcmalloc can only be chosen before the process starts (LD_PRELOAD),
see docs/performance.md.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """Distinct (package, core) pairs among `cpus`; each CPU counts alone where sysfs does not say."""
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add(
                (
                    topology.joinpath("physical_package_id").read_text().strip(),
                    topology.joinpath("core_id").read_text().strip(),
                )
            )
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def cpu_quota(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """CPUs' worth of time the cgroup (v2) may use, or None when unlimited or unknown."""
    try:
        quota, period = cgroup.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def training_threads() -> tuple[int, str]:
    """(intra-op threads, why) for this process."""
    cpus = _affinity()
    cores = physical_cores(cpus)
    threads, why = (
        cores,
        f"{cores} physical core{'s' if cores != 1 else ''} of the {len(cpus)} CPUs this process may use",
    )
    quota = cpu_quota()
    if quota is not None and math.ceil(quota) < threads:
        threads, why = max(1, math.ceil(quota)), f"a CPU quota of {quota:g} CPUs"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local > 1:
        threads, why = max(1, threads // local), f"{why}, shared by {local} processes"
    return threads, why


def busy_hint() -> str:
    """A hint when other work already fills the CPUs. OpenMP's idle threads spin at every barrier by
    default; on an oversubscribed machine a descheduled thread stalls its siblings, and the passive wait
    policy (threads sleep) measured 6x faster steps here (docs/performance.md). It has to be in the
    environment before torch loads, so it cannot be set from here."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cpus = len(_affinity())
    if load <= cpus or os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        return ""
    return (
        f"; the machine is busy (load {load:.1f} on {cpus} CPUs): OMP_WAIT_POLICY=PASSIVE in the environment, "
        "or fewer threads through OMP_NUM_THREADS, avoids stalled threads"
    )


def configure_cpu_threads() -> str:
    """Set torch's intra-op threads for training; returns the line the run prints."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return f"cpu: {torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} kept)"
    threads, why = training_threads()
    torch.set_num_threads(threads)
    return f"cpu: {threads} threads ({why}){busy_hint()}"

"""Hardware profiles for the planner: memory, peak FLOPs, bandwidth and an hourly price.

Peak numbers are the vendors' published dense figures (no 2:4 sparsity), SXM parts where a card comes
in several forms. `memory_bytes` is what the driver reports as total (nvidia-smi), not the marketing
number: an "80GB" H100 shows 81559 MiB. Prices are typical on-demand cloud prices per GPU-hour in USD
(2024-25, rounded; community clouds for the RTX 4090); they only scale the cost estimates and are
overridable. `cpu` describes this machine, read when asked for.
"""

from __future__ import annotations

import difflib
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tunesmith.errors import TunesmithError

MiB = 2**20
GiB = 2**30


@dataclass(frozen=True)
class Hardware:
    name: str
    kind: str  # "datacenter-gpu", "consumer-gpu", "apple" or "cpu": selects the utilisation constant
    memory_bytes: int  # usable by one device
    bf16_tflops: float  # peak dense bf16 (fp16 where bf16 is missing) matrix throughput
    fp32_tflops: float  # peak dense fp32 without TF32
    bf16: bool  # bf16 supported, so tunesmith's precision "auto" picks bf16 autocast
    bandwidth_gbs: float | None  # memory bandwidth, GB/s
    price_per_hour: float | None  # USD per device-hour, None when owned (laptops, this machine)
    note: str = ""
    aliases: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_gpu(self) -> bool:
        return self.kind in ("datacenter-gpu", "consumer-gpu")

    def peak_flops(self, precision: str) -> float:
        """FLOP/s of matrix work at the training precision (fp16 runs at the bf16 rate on these parts)."""
        return (self.fp32_tflops if precision == "fp32" else self.bf16_tflops) * 1e12


def _gpu(
    name: str,
    memory_mib: int,
    bf16_tflops: float,
    fp32_tflops: float,
    bf16: bool,
    bandwidth: float | None,
    price: float | None,
    note: str = "",
    aliases: Iterable[str] = (),
    kind: str = "datacenter-gpu",
) -> Hardware:
    return Hardware(
        name, kind, memory_mib * MiB, bf16_tflops, fp32_tflops, bf16, bandwidth, price, note, tuple(aliases)
    )


# Sources: NVIDIA data sheets (A100, H100 SXM, H200 SXM, L4, A10, V100 SXM2, T4, Ada whitepaper for the 4090);
# Apple press releases for the M2/M3 Max GPUs. fp16 with fp32 accumulate is quoted for the 4090 (165 TFLOPS).
PROFILES: dict[str, Hardware] = {
    h.name: h
    for h in (
        _gpu("A100-40GB", 40960, 312, 19.5, True, 1555, 3.7, "A100 SXM4 40GB", ["a100", "a100-40"]),
        _gpu("A100-80GB", 81920, 312, 19.5, True, 2039, 5.0, "A100 SXM4 80GB", ["a100-80"]),
        _gpu("H100-80GB", 81559, 989, 67, True, 3350, 6.9, "H100 SXM5 80GB", ["h100", "h100-80"]),
        _gpu("H200-141GB", 143771, 989, 67, True, 4800, 8.0, "H200 SXM 141GB", ["h200", "h200-141"]),
        _gpu("L4-24GB", 23034, 121, 30.3, True, 300, 0.8, "L4 24GB", ["l4"]),
        _gpu("A10G-24GB", 23028, 70, 31.2, True, 600, 1.0, "A10G 24GB (AWS g5)", ["a10g"]),
        _gpu("V100-16GB", 16160, 125, 15.7, False, 900, 3.1, "V100 SXM2 16GB: fp16 only", ["v100", "v100-16"]),
        _gpu("V100-32GB", 32510, 125, 15.7, False, 900, 3.9, "V100 SXM2 32GB: fp16 only", ["v100-32"]),
        _gpu("T4-16GB", 15360, 65, 8.1, False, 320, 0.53, "T4 16GB: fp16 only", ["t4"]),
        _gpu(
            "RTX4090-24GB", 24564, 165, 82.6, True, 1008, 0.5, "GeForce RTX 4090", ["4090", "rtx4090"], "consumer-gpu"
        ),
        # Unified memory: macOS lets the GPU wire about 75% of RAM (recommendedMaxWorkingSetSize).
        Hardware(
            "M2-Max-96GB",
            "apple",
            int(96 * GiB * 0.75),
            13.6,
            13.6,
            True,
            400,
            None,
            "Apple M2 Max, 38-core GPU, 96 GB unified memory (75% usable by the GPU)",
            ("m2-max", "m2"),
        ),
        Hardware(
            "M3-Max-128GB",
            "apple",
            int(128 * GiB * 0.75),
            16.4,
            16.4,
            True,
            400,
            None,
            "Apple M3 Max, 40-core GPU, 128 GB unified memory (75% usable by the GPU)",
            ("m3-max", "m3", "apple"),
        ),
    )
}

# ---------------------------------------------------------------------------------------------------
# This machine


def _cpu_flags() -> tuple[set[str], str, float | None]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set(), platform.processor(), None
    flag_line = re.search(r"^flags\s*:(.*)$", text, re.M)
    flags = set(flag_line.group(1).split()) if flag_line else set()
    vendor_line = re.search(r"^vendor_id\s*:\s*(\S+)", text, re.M)
    vendor = vendor_line.group(1) if vendor_line else ""
    family = re.search(r"^cpu family\s*:\s*(\d+)", text, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
    # AMD Zen 3/4 (family 25) executes 512-bit vectors as two 256-bit halves.
    if vendor == "AuthenticAMD" and family and int(family.group(1)) < 26:
        flags.add("_half_width_avx512")
    return flags, vendor, float(mhz.group(1)) / 1000 if mhz else None


def _total_ram() -> int:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # A container's memory limit is what the process can actually use.
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


@lru_cache(maxsize=1)
def cpu_profile() -> Hardware:
    """This machine as a profile. Peak FLOPs = cores x GHz x FLOP/cycle/core of its widest vector unit.

    FLOP/cycle/core (two FMA pipes, FMA = 2 FLOP): AVX-512 64 fp32 (32 on AMD Zen 3/4, which split
    512-bit ops), AVX2+FMA 32; bf16 dot products (AVX512_BF16) double that; Intel AMX tiles do 1024 bf16.
    Rough by design: the CPU utilisation constant in `estimate.py` was fitted against these peaks.
    """
    flags, vendor, ghz = _cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ghz = ghz or 2.5
    if "avx512f" in flags:
        fp32_per_cycle = 32 if "_half_width_avx512" in flags else 64
    elif "avx2" in flags and "fma" in flags:
        fp32_per_cycle = 32
    else:
        fp32_per_cycle = 8
    bf16 = "amx_bf16" in flags or "avx512_bf16" in flags
    bf16_per_cycle = 1024 if "amx_bf16" in flags else (2 * fp32_per_cycle if bf16 else fp32_per_cycle)
    units = "AMX" if "amx_bf16" in flags else ("AVX512-BF16" if bf16 else "no bf16 units")
    return Hardware(
        name="cpu",
        kind="cpu",
        memory_bytes=_total_ram(),
        bf16_tflops=cores * ghz * bf16_per_cycle / 1000,
        fp32_tflops=cores * ghz * fp32_per_cycle / 1000,
        bf16=bf16,
        bandwidth_gbs=None,
        price_per_hour=None,
        note=f"this machine: {cores} cores at {ghz:.1f} GHz ({vendor or 'unknown vendor'}, {units}), {_total_ram() / GiB:.0f} GiB RAM",
    )


def _local_gpu() -> Hardware | None:
    """The first NVIDIA GPU named by nvidia-smi, when it matches a profile (no torch import needed)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    line = out.strip().splitlines()[0] if out.strip() else ""
    name, _, mib = line.partition(",")
    for profile in PROFILES.values():
        model = profile.name.split("-")[0].replace("RTX", "RTX ")
        if model.lower() in name.lower() and abs(profile.memory_bytes / MiB - float(mib or 0)) < 4096:
            return profile
    return None


def all_names() -> list[str]:
    return [*PROFILES, "cpu", "auto"]


def get_hardware(name: str | Hardware = "auto") -> Hardware:
    """A profile by name or alias (case-insensitive); `auto` is the local NVIDIA GPU if recognised, else `cpu`."""
    if isinstance(name, Hardware):
        return name
    key = name.strip().lower()
    if key == "auto":
        return _local_gpu() or cpu_profile()
    if key == "cpu":
        return cpu_profile()
    for profile in PROFILES.values():
        if key == profile.name.lower() or key in profile.aliases:
            return profile
    choices = {n.lower(): n for n in all_names()} | {a: p.name for p in PROFILES.values() for a in p.aliases}
    close = [choices[c] for c in difflib.get_close_matches(key, list(choices), n=3, cutoff=0.3)]
    raise TunesmithError(
        f"unknown hardware {name!r}" + (f"; closest: {', '.join(dict.fromkeys(close))}" if close else ""),
        where="--hardware",
        fix=f"use one of: {', '.join(all_names())}",
    )

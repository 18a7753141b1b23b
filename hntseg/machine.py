"""What this process may use of the machine."""

from __future__ import annotations

import os
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 / AMX; ARM (Features line)


def native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool | None:
    """Whether the CPU computes bfloat16 natively (None where it cannot be told: no
    /proc/cpuinfo). Without it torch emulates bfloat16 and a network runs far slower."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    flags = {
        word
        for line in text.splitlines()
        if line.lower().startswith(("flags", "features"))
        for word in line.split(":", 1)[-1].split()
    }
    return any(f in flags for f in BF16_FLAGS)


def available_cpus() -> int:
    """CPUs this process may run on: its affinity (a SLURM or taskset allocation), not the
    whole node's count, so that thread defaults do not oversubscribe a shared node."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)

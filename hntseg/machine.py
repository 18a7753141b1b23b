"""What this process may use of the machine."""

from __future__ import annotations

import os


def available_cpus() -> int:
    """CPUs this process may run on: its affinity (a SLURM or taskset allocation), not the
    whole node's count, so that thread defaults do not oversubscribe a shared node."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)

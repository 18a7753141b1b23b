"""Peak resident memory of the benchmark's own process (Linux /proc), shared by the
benchmarks that measure a variant's peak above a starting point."""

from __future__ import annotations

import re
from pathlib import Path


def status_mib() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, MiB."""
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) / 1024 for k in
            ("VmRSS", "VmHWM")}  # fmt: skip


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")

"""Peak memory for the benchmarks (Linux /proc): of the benchmark's own process, for the
benchmarks that measure a variant's peak above a starting point, and of a command's whole
process tree (`run_tree`), for the ones whose work runs in worker processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path


def status_mib() -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, MiB."""
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) / 1024 for k in
            ("VmRSS", "VmHWM")}  # fmt: skip


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


# Runs one variant (argv) and reports its wall time and its process tree's peak memory.
# The wrapper itself is not part of the tree it samples.
WRAPPER = r"""
import json, os, resource, subprocess, sys, threading, time


def tree(root):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def memory_kb(pid):
    # (Pss, Rss) in kB; (0, 0) for a process gone or without memory (zombie); Pss None
    # where smaps_rollup cannot be read for a live process
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, IndexError, ValueError):
        return 0, 0
    if rss == 0:
        return 0, 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = dict(line.split()[:2] for line in f if line[:4] in ("Rss:", "Pss:"))
        return int(fields["Pss:"]), int(fields["Rss:"])
    except (OSError, KeyError, ValueError):
        return (None, rss) if os.path.exists(f"/proc/{pid}/statm") else (0, 0)


peak = {"pss_kb": 0, "rss_kb": 0, "pss_ok": True, "max_procs": 0}
done = threading.Event()


def sample(root):
    while True:
        pids = tree(root)
        pss = rss = 0
        for pid in pids:
            p, r = memory_kb(pid)
            peak["pss_ok"] &= p is not None
            pss += p or 0
            rss += r
        peak["pss_kb"] = max(peak["pss_kb"], pss)
        peak["rss_kb"] = max(peak["rss_kb"], rss)
        peak["max_procs"] = max(peak["max_procs"], len(pids))
        if done.wait(0.2):
            return


t = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
sampler = threading.Thread(target=sample, args=(p.pid,), daemon=True)
sampler.start()
stdout, stderr = p.communicate()
wall = time.perf_counter() - t
done.set()
sampler.join()
sys.stderr.write(stderr[-3000:] if p.returncode else "")
inner = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
print(json.dumps({
    "rc": p.returncode,
    "wall_s": wall,
    "tree_pss_kb": peak["pss_kb"] if peak["pss_ok"] else None,
    "tree_rss_kb": peak["rss_kb"],
    "max_procs": peak["max_procs"],
    "single_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "inner": json.loads(inner[-1][7:]) if inner else None,
}))
"""


def run_tree(cmd: list[str], env: dict[str, str]) -> dict:
    """Run one variant in a fresh wrapper process: wall time, its process tree's peak summed
    PSS and RSS (sampled every 0.2 s), and the largest single process's peak RSS."""
    p = subprocess.run(
        [sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=env
    )
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError(f"variant failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"variant failed (rc {result['rc']}): {' '.join(cmd)}\n{p.stderr}")
    return result

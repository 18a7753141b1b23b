"""Per-case surface metrics: hntseg (cropped) vs MedPy `hd95` + `assd` (full volume).

A synthetic case at the paper's median size (512x512x75 voxels, 0.5x0.5x2 mm) with a
GTVp of about 12 mL and three nodes (about 1-5 mL), the prediction being the ground truth
moved, grown and with a small far false positive, generated once and read by every
variant from a file. Both variants get the same treatment, each pass in a fresh process
with the case loaded and the modules imported:
- time: best of `--repeats` runs (no memory tracing);
- memory (separate, one untimed run): peak RSS above the process's RSS just before the
  call (Linux VmHWM, reset through /proc/self/clear_refs), then the tracemalloc peak (numpy
  and other Python-side allocations) of another call.
The numbers of both variants must be identical.

    .venv/bin/python benchmarks/evaluate.py [--small] [--repeats N]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from _memory import reset_peak, status_mib  # benchmarks/_memory.py (the script folder)
from scipy import ndimage

SPACING_XYZ = (0.5, 0.5, 2.0)


def blob(shape, centre, radius_mm, spacing_zyx, rng):
    """An irregular blob (a ball with a smooth random radius), built in a local box."""
    out = np.zeros(shape, bool)
    reach = [int(np.ceil(1.5 * radius_mm / s)) + 1 for s in spacing_zyx]
    lo = [max(c - r, 0) for c, r in zip(centre, reach, strict=True)]
    hi = [min(c + r + 1, n) for c, r, n in zip(centre, reach, shape, strict=True)]
    grids = np.meshgrid(
        *[
            (np.arange(a, b) - c) * s
            for a, b, c, s in zip(lo, hi, centre, spacing_zyx, strict=True)
        ],
        indexing="ij",
    )
    rho = np.sqrt(sum(g**2 for g in grids))
    noise = ndimage.gaussian_filter(rng.standard_normal(rho.shape), 3)
    noise *= 0.25 * radius_mm / (np.abs(noise).max() + 1e-9)
    out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = rho <= radius_mm + noise
    return out


def make_case(shape_zyx, seed=0):
    rng = np.random.default_rng(seed)
    sp = SPACING_XYZ[::-1]
    nz, ny, nx = shape_zyx
    gt = np.zeros(shape_zyx, np.uint8)
    pred = np.zeros(shape_zyx, np.uint8)
    c1 = (nz // 2, ny // 2, nx // 2)
    gt[blob(shape_zyx, c1, 14.0, sp, rng)] = 1
    pred[blob(shape_zyx, (c1[0] + 1, c1[1] + 6, c1[2] - 4), 15.0, sp, rng)] = 1
    for k, r in enumerate((10.0, 7.0, 6.0)):
        c = (nz // 2 + 3 * k - 3, ny // 2 + 45 + 25 * k, nx // 2 - 70 + 60 * k)
        gt[blob(shape_zyx, c, r, sp, rng) & (gt == 0)] = 2
        pred[blob(shape_zyx, (c[0], c[1] + 3, c[2] + 2), r * 0.9, sp, rng) & (pred == 0)] = 2
    pred[blob(shape_zyx, (nz // 5, ny // 5, nx // 5), 3.0, sp, rng) & (pred == 0)] = 2
    return pred, gt


def run_variant(variant: str, mode: str, folder: Path, repeats: int) -> dict:
    """One pass (time or memory) of one variant, in this fresh process."""
    pred = np.load(folder / "pred.npy")
    gt = np.load(folder / "gt.npy")
    sp = SPACING_XYZ[::-1]
    if variant == "hntseg":
        from hntseg.evaluate import score_arrays
    else:
        from medpy.metric import binary as mb

    def once() -> dict:
        values = {}
        if variant == "hntseg":
            for row in score_arrays(pred, gt, SPACING_XYZ, ("dsc", "hd95", "msd"), "pooled"):
                values[row["structure"]] = (row["hd95"], row["msd"])
        else:
            for label, name in ((1, "GTVp"), (2, "GTVn")):
                p, g = pred == label, gt == label
                values[name] = (
                    float(mb.hd95(p, g, voxelspacing=sp)),
                    float(mb.assd(p, g, voxelspacing=sp)),
                )
        return values

    if mode == "time":
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            values = once()
            times.append(time.perf_counter() - t0)
        return {"seconds": min(times), "values": values}
    gc.collect()
    base = status_mib()["VmRSS"]
    reset_peak()
    once()
    peak = status_mib()["VmHWM"]
    gc.collect()
    tracemalloc.start()
    once()
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"base_rss_mib": base, "rss_increase_mib": peak - base, "traced_mib": traced / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="256x256x40 instead of 512x512x75")
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed runs per variant, best kept (N >= 1)"
    )
    ap.add_argument("--_variant", help=argparse.SUPPRESS)
    ap.add_argument("--_mode", choices=("time", "memory"), help=argparse.SUPPRESS)
    ap.add_argument("--_dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args._variant:
        res = run_variant(args._variant, args._mode, Path(args._dir), args.repeats)
        print(json.dumps(res))
        return
    try:
        reset_peak()
        status_mib()
    except (OSError, AttributeError) as exc:
        sys.exit(f"memory is measured with Linux's /proc/self/status and clear_refs: {exc}")
    shape = (40, 256, 256) if args.small else (75, 512, 512)
    pred, gt = make_case(shape)
    voxel_ml = np.prod(SPACING_XYZ) / 1000
    print(
        f"case {shape[2]}x{shape[1]}x{shape[0]} voxels (x,y,z) at "
        f"{'x'.join(f'{s:g}' for s in SPACING_XYZ)} mm; GT GTVp "
        f"{(gt == 1).sum() * voxel_ml:.1f} mL, GTVn {(gt == 2).sum() * voxel_ml:.1f} mL; "
        f"pred GTVp {(pred == 1).sum() * voxel_ml:.1f} mL, "
        f"GTVn {(pred == 2).sum() * voxel_ml:.1f} mL"
    )
    results = {"hntseg": {}, "medpy": {}}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "pred.npy", pred)
        np.save(Path(tmp) / "gt.npy", gt)
        del pred, gt
        for mode in ("time", "memory"):
            for variant in results:
                cmd = [sys.executable, __file__, "--_variant", variant, "--_mode", mode]
                cmd += ["--_dir", tmp, "--repeats", str(args.repeats)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"variant {variant} ({mode}) failed:\n{done.stderr}")
                results[variant].update(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"time = best of {args.repeats} run(s) per variant; memory in a separate untimed run: "
        "peak RSS above the process's RSS just before the call (case loaded, modules "
        "imported), then the tracemalloc peak of another call; a fresh process per variant "
        "and pass"
    )
    print(f"{'variant':<28}{'s/case':>9}{'peak RSS +MiB':>15}{'traced peak MiB':>17}")
    for name, label in (("hntseg", "hntseg (crop + EDT)"), ("medpy", "MedPy hd95 + assd")):
        r = results[name]
        print(
            f"{label:<28}{r['seconds']:>9.3f}{r['rss_increase_mib']:>15.1f}{r['traced_mib']:>17.1f}"
        )
    base = ", ".join(f"{n} {r['base_rss_mib']:.0f}" for n, r in results.items())
    print(f"RSS before the call (interpreter + modules + case), MiB: {base}")
    ratio = results["medpy"]["seconds"] / results["hntseg"]["seconds"]
    print(f"speed-up: {ratio:.1f}x (target >= 20x)")
    same = True
    for name in ("GTVp", "GTVn"):
        ours, ref = results["hntseg"]["values"][name], results["medpy"]["values"][name]
        diff = max(abs(a - b) for a, b in zip(ours, ref, strict=True))
        same &= diff <= 1e-6
        print(
            f"{name}: HD95 {ours[0]:.6f} vs {ref[0]:.6f} mm, MSD {ours[1]:.6f} vs "
            f"{ref[1]:.6f} mm, max |diff| {diff:.2e}"
        )
    print("numbers identical (<= 1e-6 mm):", "yes" if same else "NO")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()

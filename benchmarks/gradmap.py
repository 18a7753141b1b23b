"""Benchmark: boxes + gradient map at the paper's median case size, against a naive reference.

Case: 512x512x75 voxels (x, y, z), 0.5x0.5x2.0 mm, a smooth T2-like image and a mask with 3
tumour components (one GTVp, two GTVn), generated once by the parent process and read by
every variant from a file. Variants:

- ours:        hntseg find_boxes + gradient_map (crop per box; the method, context 0)
- ours+ctx:    the same with --context = the Gaussian kernel radius (4 voxels at sigma 1)
- naive:       gradient over the whole normalised volume, then per box rescale/gain/clip
               and 0 outside the boxes (what a direct port does)

Every variant gets the same treatment, each pass in a fresh process with the case already
loaded and the modules imported:
- time: best of `--repeat` runs (no memory tracing);
- memory (separate, one untimed run): peak RSS above the process's RSS just before the call
  (Linux VmHWM, reset through /proc/self/clear_refs), so numpy's and SimpleITK's buffers
  both count and the case generation does not.

ours+ctx must equal naive inside the boxes (same context for every box voxel); ours (the
method's reflect at the crop edge) differs from naive near box edges only.

    .venv/bin/python benchmarks/gradmap.py [--small] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _memory import reset_peak, status_mib  # benchmarks/_memory.py (the script folder)
from _phantom import phantom_scan  # benchmarks/_phantom.py

SIZE = (512, 512, 75)  # (x, y, z)
SMALL = (128, 128, 24)
SPACING = (0.5, 0.5, 2.0)
SIGMA = 1.0
RADIUS = int(4.0 * SIGMA + 0.5)  # scipy's truncate=4 kernel radius
VARIANTS = ("ours", "ours+ctx", "naive")


def make_case(size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(t2 float32, mask uint8) arrays in (z, y, x) order; deterministic."""
    return phantom_scan(size, SPACING, np.random.default_rng(0))


def load_case(folder: Path):
    """(t2, mask) SimpleITK images from the arrays the parent wrote."""
    import SimpleITK as sitk

    images = []
    for name in ("t2", "mask"):
        image = sitk.GetImageFromArray(np.load(folder / f"{name}.npy"))
        image.SetSpacing(SPACING)
        images.append(image)
    return images


def naive(t2, boxes, sigma=SIGMA, gain=2.0) -> np.ndarray:
    """Gradient over the whole volume, then masked per box (the straightforward port)."""
    import SimpleITK as sitk
    from scipy import ndimage

    arr = np.asarray(sitk.GetArrayFromImage(t2), np.float64)
    norm = (arr - arr.min()) / (arr.max() - arr.min())
    grad = ndimage.gaussian_gradient_magnitude(norm, sigma)
    out = np.zeros(arr.shape, np.float32)
    for b in boxes.boxes:
        g = grad[b.slices]
        g = (g - g.min()) / (g.max() - g.min()) if g.max() > g.min() else np.ones_like(g)
        out[b.slices] = np.minimum(g * gain, 1.0)
    return out


def run_variant(name: str, mode: str, repeat: int, case: Path, out_npy: Path) -> dict:
    """One pass (time or memory) of one variant, in this fresh process."""
    import SimpleITK as sitk
    from scipy import ndimage  # noqa: F401  (imported before any measurement, both sides)

    from hntseg.boxes import find_boxes
    from hntseg.gradmap import gradient_map

    t2, mask = load_case(case)

    def once():
        boxes = find_boxes(mask, 4)  # fixed inference margin: identical boxes for every variant
        if name == "naive":
            return boxes, naive(t2, boxes), None
        context = RADIUS if name == "ours+ctx" else 0
        image = gradient_map(t2, boxes, SIGMA, 2.0, None, context)
        return boxes, sitk.GetArrayViewFromImage(image), image  # the view needs the image

    if mode == "time":
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            boxes, result, _keep = once()
            times.append(time.perf_counter() - t0)
        np.save(out_npy, np.asarray(result))
        inside = np.zeros(result.shape, bool)
        for b in boxes.boxes:
            inside[b.slices] = True
        np.save(out_npy.with_suffix(".inside.npy"), inside)
        return {
            "seconds": min(times),
            "n_boxes": len(boxes.boxes),
            "box_voxels": int(sum(np.prod(b.shape) for b in boxes.boxes)),
        }
    gc.collect()
    base = status_mib()["VmRSS"]
    reset_peak()
    kept = once()
    peak = status_mib()["VmHWM"]
    del kept
    return {"base_rss_mib": base, "rss_increase_mib": peak - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help=f"{SMALL} instead of {SIZE}")
    parser.add_argument(
        "--repeat", type=int, default=3, help="best of N timings, for every variant (N >= 1)"
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--npy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    size = SMALL if args.small else SIZE
    if args.variant:
        res = run_variant(args.variant, args.mode, args.repeat, Path(args.case), Path(args.npy))
        print(json.dumps(res))
        return
    try:
        reset_peak()
        status_mib()
    except (OSError, AttributeError) as exc:
        sys.exit(f"memory is measured with Linux's /proc/self/status and clear_refs: {exc}")
    results = {name: {} for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp)
        t2, mask = make_case(size)
        np.save(case / "t2.npy", t2)
        np.save(case / "mask.npy", mask)
        del t2, mask
        for mode in ("time", "memory"):
            for name in VARIANTS:
                npy = case / f"{name.replace('+', '_')}.npy"
                cmd = [sys.executable, __file__, "--variant", name, "--mode", mode]
                cmd += ["--case", str(case), "--npy", str(npy), "--repeat", str(args.repeat)]
                cmd += ["--small"] if args.small else []
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"variant {name} ({mode}) failed:\n{proc.stderr}")
                results[name].update(json.loads(proc.stdout.strip().splitlines()[-1]))
                if mode == "time":
                    results[name]["map"] = np.load(npy)
                    results[name]["inside"] = np.load(npy.with_suffix(".inside.npy"))
    nx, ny, nz = size
    r0 = results["ours"]
    print(
        f"case {nx}x{ny}x{nz} voxels (x,y,z), {SPACING[0]}x{SPACING[1]}x{SPACING[2]} mm, "
        f"{r0['n_boxes']} boxes ({r0['box_voxels']} voxels, "
        f"{100 * r0['box_voxels'] / (nx * ny * nz):.2f}% of the volume), sigma {SIGMA}, margin 4"
    )
    print(
        f"each variant: find_boxes + map; time = best of {args.repeat} run(s); memory "
        "in a separate untimed run: peak RSS above the process's RSS just before the call "
        "(case loaded, modules imported); a fresh process per variant and pass"
    )
    print(f"{'variant':<10} {'time s':>9} {'peak RSS +MiB':>14}")
    for name, r in results.items():
        print(f"{name:<10} {r['seconds']:>9.4f} {r['rss_increase_mib']:>14.1f}")
    base = ", ".join(f"{n} {r['base_rss_mib']:.0f}" for n, r in results.items())
    print(f"RSS before the call (interpreter + modules + case), MiB: {base}")
    inside = results["naive"]["inside"]
    ref = results["naive"]["map"]
    diff_ctx = np.abs(results["ours+ctx"]["map"] - ref)[inside].max()
    diff_plain = np.abs(results["ours"]["map"] - ref)[inside].max()
    outside_zero = all(not r["map"][~inside].any() for r in results.values())
    naive_s, naive_mib = results["naive"]["seconds"], results["naive"]["rss_increase_mib"]
    print(
        f"speed-up ours vs naive: {naive_s / r0['seconds']:.1f}x; "
        f"ours+ctx vs naive: {naive_s / results['ours+ctx']['seconds']:.1f}x; "
        f"peak RSS increase naive / ours: {naive_mib / max(r0['rss_increase_mib'], 0.1):.1f}x"
    )
    print(f"max |ours+ctx - naive| inside boxes: {diff_ctx:.2e} (context {RADIUS} = kernel radius)")
    print(f"max |ours - naive| inside boxes: {diff_plain:.2e} (method: reflect at box edge)")
    print(f"all maps 0 outside the boxes: {outside_zero}")
    ok = diff_ctx <= 1e-6 and r0["seconds"] < naive_s and outside_zero
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

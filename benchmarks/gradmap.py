"""Benchmark: boxes + gradient map at the paper's median case size, against a naive reference.

Case: 512x512x75 voxels (x, y, z), 0.5x0.5x2.0 mm, a smooth T2-like image and a mask with 3
tumour components (one GTVp, two GTVn). Variants, each in its own process (peak RSS):

- ours:        hntseg find_boxes + gradient_map (crop per box; the method, context 0)
- ours+ctx:    the same with --context = the Gaussian kernel radius (4 voxels at sigma 1)
- naive:       gradient over the whole normalised volume, then per box rescale/gain/clip
               and 0 outside the boxes (what a direct port does)

ours+ctx must equal naive inside the boxes (same context for every box voxel); ours (the
method's reflect at the crop edge) differs from naive near box edges only.

    .venv/bin/python benchmarks/gradmap.py [--small] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

SIZE = (512, 512, 75)  # (x, y, z)
SMALL = (128, 128, 24)
SPACING = (0.5, 0.5, 2.0)
SIGMA = 1.0
RADIUS = int(4.0 * SIGMA + 0.5)  # scipy's truncate=4 kernel radius


def make_case(size: tuple[int, int, int]):
    """(t2, mask) SimpleITK images; deterministic."""
    import SimpleITK as sitk

    nx, ny, nz = size
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:nz, :ny, :nx]
    # physical coordinates in mm, centred
    zm, ym, xm = (z - nz / 2) * SPACING[2], (y - ny / 2) * SPACING[1], (x - nx / 2) * SPACING[0]
    scale = nx / 512
    body = (xm / (110 * scale)) ** 2 + (ym / (90 * scale)) ** 2 < 1
    t2 = np.broadcast_to(np.where(body, 400.0, 20.0), (nz, ny, nx)).astype(np.float32)
    t2 += (60 * np.sin(xm / 7.0) * np.cos(ym / 9.0) * np.cos(zm / 11.0)).astype(np.float32)
    t2 += rng.normal(0, 15, t2.shape).astype(np.float32)
    mask = np.zeros(t2.shape, np.uint8)
    for label, (cx, cy, cz), r in (
        (1, (0, -20, 0), 16),
        (2, (-45, 10, -10), 9),
        (2, (45, 5, 14), 8),
    ):
        c = np.array([cx, cy, cz]) * scale
        inside = ((xm - c[0]) ** 2 + (ym - c[1]) ** 2 + (zm - c[2]) ** 2) < (r * scale) ** 2
        mask[inside] = label
        t2[inside] += 250
    images = []
    for arr in (t2, mask):
        image = sitk.GetImageFromArray(arr)
        image.SetSpacing(SPACING)
        images.append(image)
    return images


def naive(t2, boxes, sigma=SIGMA, gain=2.0) -> np.ndarray:
    """Gradient over the whole volume, then masked per box (the straightforward port)."""
    from scipy import ndimage

    arr = np.asarray(__import__("SimpleITK").GetArrayFromImage(t2), np.float64)
    norm = (arr - arr.min()) / (arr.max() - arr.min())
    grad = ndimage.gaussian_gradient_magnitude(norm, sigma)
    out = np.zeros(arr.shape, np.float32)
    for b in boxes.boxes:
        g = grad[b.slices]
        g = (g - g.min()) / (g.max() - g.min()) if g.max() > g.min() else np.ones_like(g)
        out[b.slices] = np.minimum(g * gain, 1.0)
    return out


def run_variant(name: str, size, repeat: int, out_npy: Path) -> dict:
    import SimpleITK as sitk

    from hntseg.boxes import find_boxes
    from hntseg.gradmap import gradient_map

    t2, mask = make_case(size)
    times = []
    for _ in range(repeat):
        tracemalloc.start()
        t0 = time.perf_counter()
        boxes = find_boxes(mask, 4)  # fixed inference margin: identical boxes for every variant
        if name == "naive":
            result = naive(t2, boxes)
        else:
            context = RADIUS if name == "ours+ctx" else 0
            image = gradient_map(t2, boxes, SIGMA, 2.0, None, context)
            result = sitk.GetArrayViewFromImage(image)
        times.append(time.perf_counter() - t0)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    np.save(out_npy, np.asarray(result))
    inside = np.zeros(result.shape, bool)
    for b in boxes.boxes:
        inside[b.slices] = True
    np.save(out_npy.with_suffix(".inside.npy"), inside)
    return {
        "variant": name,
        "seconds": min(times),
        "tracemalloc_peak_mb": peak / 2**20,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "n_boxes": len(boxes.boxes),
        "box_voxels": int(sum(np.prod(b.shape) for b in boxes.boxes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help=f"{SMALL} instead of {SIZE}")
    parser.add_argument("--repeat", type=int, default=3, help="best of N timings per variant")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--npy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = SMALL if args.small else SIZE
    if args.variant:
        print(json.dumps(run_variant(args.variant, size, args.repeat, Path(args.npy))))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("ours", "ours+ctx", "naive"):
            npy = Path(tmp) / f"{name.replace('+', '_')}.npy"
            cmd = [sys.executable, __file__, "--variant", name, "--npy", str(npy)]
            cmd += ["--repeat", str(args.repeat if name != "naive" else 1)]
            cmd += ["--small"] if args.small else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"variant {name} failed:\n{proc.stderr}")
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name]["map"] = np.load(npy)
            results[name]["inside"] = np.load(npy.with_suffix(".inside.npy"))
    nx, ny, nz = size
    r0 = results["ours"]
    print(
        f"case {nx}x{ny}x{nz} voxels (x,y,z), {SPACING[0]}x{SPACING[1]}x{SPACING[2]} mm, "
        f"{r0['n_boxes']} boxes ({r0['box_voxels']} voxels, "
        f"{100 * r0['box_voxels'] / (nx * ny * nz):.2f}% of the volume), sigma {SIGMA}, margin 4"
    )
    print(f"{'variant':<10} {'time s':>9} {'tracemalloc MB':>15} {'max RSS MB':>11}")
    for name, r in results.items():
        print(
            f"{name:<10} {r['seconds']:>9.4f} {r['tracemalloc_peak_mb']:>15.1f} "
            f"{r['maxrss_mb']:>11.1f}"
        )
    inside = results["naive"]["inside"]
    ref = results["naive"]["map"]
    diff_ctx = np.abs(results["ours+ctx"]["map"] - ref)[inside].max()
    diff_plain = np.abs(results["ours"]["map"] - ref)[inside].max()
    outside_zero = all(not r["map"][~inside].any() for r in results.values())
    print(
        f"speed-up ours vs naive: {results['naive']['seconds'] / r0['seconds']:.1f}x; "
        f"ours+ctx vs naive: {results['naive']['seconds'] / results['ours+ctx']['seconds']:.1f}x"
    )
    print(f"max |ours+ctx - naive| inside boxes: {diff_ctx:.2e} (context {RADIUS} = kernel radius)")
    print(f"max |ours - naive| inside boxes: {diff_plain:.2e} (method: reflect at box edge)")
    print(f"all maps 0 outside the boxes: {outside_zero}")
    ok = diff_ctx <= 1e-6 and r0["seconds"] < results["naive"]["seconds"] and outside_zero
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

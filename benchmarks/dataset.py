"""Benchmark: build-dataset at the paper's median case size, against a direct SimpleITK port.

A cohort + gradient maps -> an nnU-Net raw dataset + splits: hntseg against the port a
user writes without it.

Case: `--patients` patients (default 3) in the HNTS-MRG layout, every scan 512x512x75
voxels (x, y, z) at 0.5x0.5x2.0 mm: a smooth T2-like float32 image with noise per phase
(mid-RT, pre-RT), uint8 masks with one GTVp and two GTVn blobs, the registered pre-RT mask
(the pre-RT mask moved by 2 voxels), and ready gradient maps in the `hntseg gradmap` layout
(what the pipeline gives build-dataset; drawn with build-dataset's own box rule, so every
variant must write the same voxels). Written once by the parent process (not measured).
Each patient gives two cases (mid-RT, pre-RT), each with channels T2 + gradient map and a
label: 6 cases and 18 files at the default. Folds: min(5, patients). Variants:

- ours:          hntseg `build_dataset(cohort, work, gradmaps=READY)`: checks every input,
                 hard-links the .nii.gz files into imagesTr/labelsTr, writes dataset.json,
                 splits_final.json and a provenance record (SHA-256 of every input)
- ours, maps:    the same without `gradmaps`: the maps are computed from the registered
                 masks' boxes and written (`hntseg build-dataset` run on its own)
- baseline:      the direct port a user writes without hntseg: per case, sitk.ReadImage
                 every image and sitk.WriteImage it (compressed .nii.gz) into
                 imagesTr/labelsTr; then dataset.json and the same patient-level splits
- ours, rerun:   ours again on its finished dataset (the "up to date" check only)

Every variant gets the same treatment, always with modules imported and into an empty
work folder (except the rerun) on the same file system as the cohort:
- time: best of `--repeat` runs, each in a fresh process (nothing cached between runs, e.g.
  hntseg's per-process SHA-256 cache; the OS page cache is warm for every variant alike);
- memory (separate, one untimed run): peak RSS above the process's RSS just before the call
  (Linux VmHWM, reset through /proc/self/clear_refs);
- bytes written: the call's write() bytes (Linux /proc/self/io `wchar`; a hard link writes
  none), beside the dataset's apparent size and how many of its files are links.

Outputs must be equal: same files, and per image the same voxels, pixel type, size,
spacing, origin and direction; dataset.json (channels, labels, cases, file ending) and the
splits equal too.

    .venv/bin/python benchmarks/dataset.py [--small] [--repeat 3] [--patients 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _memory import reset_peak, status_mib  # benchmarks/_memory.py (the script folder)
from _phantom import phantom_scan  # benchmarks/_phantom.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZE = (512, 512, 75)  # (x, y, z)
SMALL = (128, 128, 24)
SPACING = (0.5, 0.5, 2.0)
PHASES = ("midRT", "preRT")
DATASET_ID = 902
NAME = "Bench"
SEED = 0
MARGIN = (2, 6)  # build-dataset's default box margin range (voxels)
VARIANTS = ("ours", "ours, maps", "baseline")
LABELS = {"background": 0, "GTVp": 1, "GTVn": 2}


def make_scan(size: tuple[int, int, int], rng: np.random.Generator, shift: int):
    """(t2 float32, mask uint8) arrays in (z, y, x) order; the tumours moved by `shift` mm."""
    return phantom_scan(size, SPACING, rng, shift=shift, jitter=3.0)


def write_cohort(base: Path, size: tuple[int, int, int], patients: int) -> None:
    """BASE/cohort (HNTS-MRG layout) + BASE/gradmaps (hntseg gradmap layout)."""
    import SimpleITK as sitk

    from hntseg.boxes import find_boxes
    from hntseg.cohort import expected_path
    from hntseg.dataset import case_name
    from hntseg.gradmap import gradient_map, gradmap_path
    from hntseg.io import write_image
    from hntseg.records import case_seed

    def image(arr):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(SPACING)
        img.SetOrigin((-60.0, -40.0, 10.0))
        return img

    cohort = base / "cohort"
    for n in range(1, patients + 1):
        pid = str(n)
        rng = np.random.default_rng(n)
        for phase, shift in (("preRT", 0), ("midRT", 3)):
            t2, mask = make_scan(size, rng, shift)
            if phase == "preRT":
                reg = np.roll(mask, 2, axis=2)  # "registered" pre-RT mask on the mid-RT grid
            t2_img, mask_img = image(t2), image(mask)
            write_image(t2_img, expected_path(cohort, pid, f"{phase}_T2"))
            write_image(mask_img, expected_path(cohort, pid, f"{phase}_mask"))
            if phase == "midRT":
                write_image(image(reg), expected_path(cohort, pid, "preRT_mask_registered"))
            # the map build-dataset computes: boxes of the registered (mid-RT) or own (pre-RT)
            # mask, margins drawn with its per-case seed
            box_mask = image(reg) if phase == "midRT" else mask_img
            seed = case_seed(SEED, case_name(pid, phase), "boxes")
            boxes = find_boxes(box_mask, MARGIN, seed=seed)
            write_image(gradient_map(t2_img, boxes), gradmap_path(base / "gradmaps", pid, phase))


def baseline(cohort: Path, gradmaps: Path, work: Path, folds: int) -> None:
    """The direct port: read every image with SimpleITK, write it compressed; json files."""
    import SimpleITK as sitk

    name = f"Dataset{DATASET_ID:03d}_{NAME}"
    raw, pre = work / "nnUNet_raw" / name, work / "nnUNet_preprocessed" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    pre.mkdir(parents=True)
    ids = sorted((p.name for p in cohort.iterdir() if p.is_dir()), key=int)
    cases = []
    for pid in ids:
        for phase in PHASES:
            case = f"{pid}_{phase}"
            channels = [
                cohort / pid / phase / f"{pid}_{phase}_T2.nii.gz",
                gradmaps / pid / f"{pid}_{phase}_gradmap.nii.gz",
            ]
            for i, src in enumerate(channels):
                dst = raw / "imagesTr" / f"{case}_{i:04d}.nii.gz"
                sitk.WriteImage(sitk.ReadImage(str(src)), str(dst), useCompression=True)
            label = cohort / pid / phase / f"{pid}_{phase}_mask.nii.gz"
            dst = raw / "labelsTr" / f"{case}.nii.gz"
            sitk.WriteImage(sitk.ReadImage(str(label)), str(dst), useCompression=True)
            cases.append(case)
    dataset = {
        "channel_names": {"0": "T2", "1": "gradmap"},
        "labels": LABELS,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=2))
    # folds over patients; validation = the fold's mid-RT cases
    order = np.random.default_rng(SEED).permutation(len(ids))
    splits = []
    for group in np.array_split(order, folds):
        val = {ids[i] for i in group}
        splits.append(
            {
                "train": [f"{p}_{ph}" for p in ids if p not in val for ph in PHASES],
                "val": [f"{p}_midRT" for p in ids if p in val],
            }
        )
    (pre / "splits_final.json").write_text(json.dumps(splits, indent=2))


def written_bytes() -> int:
    """Bytes this process passed to write() so far (Linux /proc/self/io)."""
    return int(re.search(r"^wchar:\s+(\d+)", Path("/proc/self/io").read_text(), re.M).group(1))


def run_variant(name: str, mode: str, base: Path, work: Path, folds: int) -> dict:
    """One pass (time or memory) of one variant into WORK, in this fresh process."""
    # every module the variants use, imported before any measurement (build_dataset imports
    # some lazily: boxes, gradmap with scipy.ndimage, nibabel for float images' NaN check)
    import nibabel  # noqa: F401
    import SimpleITK as sitk  # noqa: F401

    import hntseg.boxes  # noqa: F401
    import hntseg.gradmap  # noqa: F401
    from hntseg.dataset import build_dataset
    from hntseg.log import log

    log.setLevel("WARNING")  # no progress lines in the timings
    cohort, gradmaps = base / "cohort", base / "gradmaps"

    def once() -> None:
        if name == "baseline":
            baseline(cohort, gradmaps, work, folds)
            return
        build_dataset(
            cohort,
            work,
            DATASET_ID,
            name=NAME,
            gradmaps=None if name == "ours, maps" else gradmaps,
            margin=MARGIN,
            seed=SEED,
            folds=folds,
        )

    gc.collect()
    if mode == "time":
        wchar = written_bytes()
        t0 = time.perf_counter()
        once()
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "written": written_bytes() - wchar}
    base_rss = status_mib()["VmRSS"]
    reset_peak()
    once()
    peak = status_mib()["VmHWM"]
    return {"base_rss_mib": base_rss, "rss_increase_mib": peak - base_rss}


def dataset_files(work: Path) -> dict[str, Path]:
    """imagesTr/labelsTr files of a work folder's dataset, by relative name."""
    raw = work / "nnUNet_raw" / f"Dataset{DATASET_ID:03d}_{NAME}"
    return {
        f"{sub}/{f.name}": f
        for sub in ("imagesTr", "labelsTr")
        for f in sorted((raw / sub).iterdir())
    }


def compare(ours: Path, ref: Path) -> list[str]:
    """Differences between two datasets (files, voxels, geometry, json); [] when equal."""
    import SimpleITK as sitk

    a, b = dataset_files(ours), dataset_files(ref)
    if set(a) != set(b):
        return [f"files differ: {sorted(set(a) ^ set(b))}"]
    problems = []
    for key in sorted(a):
        x, y = sitk.ReadImage(str(a[key])), sitk.ReadImage(str(b[key]))
        for what in ("PixelID", "Size", "Spacing", "Origin", "Direction"):
            if getattr(x, f"Get{what}")() != getattr(y, f"Get{what}")():
                problems.append(f"{key}: {what} differs")
        if not np.array_equal(sitk.GetArrayViewFromImage(x), sitk.GetArrayViewFromImage(y)):
            problems.append(f"{key}: voxels differ")
    name = f"Dataset{DATASET_ID:03d}_{NAME}"
    ja, jb = (
        json.loads((w / "nnUNet_raw" / name / "dataset.json").read_text()) for w in (ours, ref)
    )
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if ja[key] != jb[key]:
            problems.append(f"dataset.json {key}: {ja[key]} vs {jb[key]}")
    sa, sb = (
        json.loads((w / "nnUNet_preprocessed" / name / "splits_final.json").read_text())
        for w in (ours, ref)
    )
    if sa != sb:
        problems.append("splits_final.json differs")
    return problems


def footprint(work: Path) -> tuple[float, int, int]:
    """(apparent MiB, files, files that are hard links) of a dataset's image files."""
    files = dataset_files(work).values()
    size = sum(f.stat().st_size for f in files)
    return size / 2**20, len(files), sum(f.stat().st_nlink > 1 for f in files)


def child(args: list[str]) -> dict:
    """Run this script as a child (one variant, one pass) and return its JSON line."""
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(args[:4])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help=f"{SMALL} instead of {SIZE}")
    parser.add_argument(
        "--repeat", type=int, default=3, help="best of N timings, for every variant (N >= 1)"
    )
    parser.add_argument("--patients", type=int, default=3, help="patients (>= 2; 2 cases each)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.patients < 2:
        parser.error("--patients must be >= 2 (folds are drawn over patients)")
    size = SMALL if args.small else SIZE
    folds = min(5, args.patients)
    if args.variant:
        name = args.variant
        res = run_variant(name, args.mode, Path(args.base), Path(args.work), folds)
        print(json.dumps(res))
        return
    try:
        reset_peak()
        status_mib()
        written_bytes()
    except (OSError, AttributeError) as exc:
        sys.exit(f"memory and bytes are measured with Linux's /proc/self (status, io): {exc}")
    results = {name: {"times": []} for name in (*VARIANTS, "ours, rerun")}
    n_cases = 2 * args.patients
    with tempfile.TemporaryDirectory(prefix="hntseg-bench-dataset-") as tmp:
        base = Path(tmp)
        t = time.perf_counter()
        write_cohort(base, size, args.patients)
        setup_s = time.perf_counter() - t

        def run(name: str, mode: str, work: Path) -> dict:
            cmd = ["--variant", name, "--mode", mode, "--base", str(base), "--work", str(work)]
            cmd += ["--patients", str(args.patients)] + (["--small"] if args.small else [])
            return child(cmd)

        kept = {}
        for _ in range(args.repeat):  # rounds over the variants, so drift hits all alike
            for name in VARIANTS:
                work = base / f"work_{VARIANTS.index(name)}"
                shutil.rmtree(work, ignore_errors=True)
                r = run(name, "time", work)
                results[name]["times"].append(r["seconds"])
                results[name]["written"] = r["written"]
                kept[name] = work
            r = run("ours, rerun", "time", kept["ours"])  # its dataset is finished: a no-op
            results["ours, rerun"]["times"].append(r["seconds"])
            results["ours, rerun"]["written"] = r["written"]
        for name in VARIANTS:
            results[name]["footprint"] = footprint(kept[name])
        results["ours, rerun"]["footprint"] = results["ours"]["footprint"]
        problems = {name: compare(kept[name], kept["baseline"]) for name in VARIANTS[:2]}
        for name in VARIANTS:
            work = base / "work_memory"
            shutil.rmtree(work, ignore_errors=True)
            results[name].update(run(name, "memory", work))
        results["ours, rerun"].update(run("ours, rerun", "memory", kept["ours"]))

    nx, ny, nz = size
    print(
        f"cohort: {args.patients} patients x 2 scans (mid-RT, pre-RT), each {nx}x{ny}x{nz} "
        f"voxels (x,y,z) at {SPACING[0]}x{SPACING[1]}x{SPACING[2]} mm; {n_cases} cases x "
        f"(T2 + gradient map + label) = {3 * n_cases} files, {folds} folds; "
        f"written in {setup_s:.0f} s (not measured)"
    )
    print(
        f"time = best of {args.repeat} run(s), each in a fresh process (modules imported, empty "
        "work folder); memory in a separate untimed run: peak RSS above the process's RSS just "
        "before the call; written = the call's write() bytes (/proc/self/io wchar)"
    )
    print(
        f"{'variant':<13} {'s/case':>8} {'total s':>8} {'speed-up':>9} {'peak RSS +MiB':>14} "
        f"{'written MiB':>12} {'dataset MiB':>12} {'linked':>7}"
    )
    ref = min(results["baseline"]["times"])
    for name, r in results.items():
        best = min(r["times"])
        mib, n_files, linked = r["footprint"]
        print(
            f"{name:<13} {best / n_cases:>8.3f} {best:>8.2f} {ref / best:>8.1f}x "
            f"{r['rss_increase_mib']:>14.1f} {r['written'] / 2**20:>12.1f} {mib:>12.1f} "
            f"{linked:>3}/{n_files:<3}"
        )
    rss = ", ".join(f"{n} {r['base_rss_mib']:.0f}" for n, r in results.items())
    print(f"RSS before the call (interpreter + modules), MiB: {rss}")
    print("speed-up = baseline total / variant total; 'ours, rerun' = the up-to-date check alone")
    for name, found in problems.items():
        shown = "; ".join(found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")
        verdict = "equal (files, voxels, pixel type, geometry, dataset.json, splits)"
        print(f"{name} vs baseline: outputs {verdict if not found else 'DIFFER: ' + shown}")
    ok = not any(problems.values()) and min(results["ours"]["times"]) < ref
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

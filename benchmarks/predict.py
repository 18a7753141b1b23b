"""Benchmark: ensemble-predict (5 folds, with / without TTA) beside nnU-Net's nnUNetv2_predict.

No trained model is needed: the benchmark writes a 2-patient cohort at the paper's median
case size (512x512x75 voxels, 0.5x0.5x2 mm; `--small`: 160x160x24 at 1.5x1.5x6 mm, the
same field of view), builds the dataset (T2 + gradient map), plans and preprocesses it with
nnUNetPlannerResEncM (so the network and patch are what nnU-Net plans for that size), and
saves five UNTRAINED folds (random initialisation, one seed per fold): timing and memory
do not depend on the weights.

Each variant runs in its own subprocess on the same case: wall seconds (process start,
model load and one case); the peak memory of its whole process tree (the variant's process
and every descendant, e.g. nnUNetv2_predict's preprocessing and export workers), sampled
every 0.2 s from Linux's /proc as the sum of PSS (shared pages split between the processes
that share them) and as the sum of RSS (shared pages counted in every process), beside the
peak RSS of the largest single process (ru_maxrss of the children); and on a GPU the peak
CUDA memory of hntseg's predictor. Sampling can miss a spike shorter than 0.2 s. The
nnUNetv2_predict variants read the same channel files (mid-RT T2 + the gradient map
hntseg computed), with nnU-Net's logit-average ensembling; hntseg averages softmax.

    .venv/bin/python benchmarks/predict.py [--small] [--device auto|cpu|cuda] [--keep DIR]
    .venv/bin/python benchmarks/predict.py --estimate   # real size on a CPU: see below
    .venv/bin/python benchmarks/predict.py --full --folds 1 --tta off   # a measured CPU run
    .venv/bin/python benchmarks/predict.py --precision both ...   # + hntseg --cpu-bf16

At the real size a CPU needs hours for the four variants, so there, unless `--full`, the
benchmark runs as `--estimate`. `--estimate` runs none of them: it
times the planned network on one patch (median of 3 passes after a warm-up), counts the
sliding-window tiles nnU-Net uses for the case (step 0.5) and prints the network time that
5 folds need with and without mirroring TTA. It is a lower bound (no preprocessing,
resampling or export) and is labelled as an extrapolation. `--folds K --tta off` measures a
cheaper real run (the first K folds, one TTA setting) to check that bound against; its
header says how many folds ran. `--precision bf16|both` runs hntseg with `--cpu-bf16` too
and prints how many voxels its mask differs from the float32 one (from this run, or from an
earlier run kept with `--keep`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from _memory import run_tree  # benchmarks/_memory.py (the script folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASET_ID = 901
FOLDS = (0, 1, 2, 3, 4)


def write_cohort(root: Path, size: tuple[int, int, int], spacing: tuple[float, ...]) -> None:
    """Two patients: smooth T2 with two bright lesions, masks, registered mask (shifted)."""
    rng = np.random.default_rng(0)
    from scipy import ndimage

    nx, ny, nz = size
    z, y, x = np.ogrid[:nz, :ny, :nx]
    for pid in ("1", "2"):
        mid, pre = root / pid / "midRT", root / pid / "preRT"
        mid.mkdir(parents=True, exist_ok=True)
        pre.mkdir(parents=True, exist_ok=True)
        noise = ndimage.gaussian_filter(rng.normal(size=(nz, ny, nx)).astype(np.float32), 2)
        mask = np.zeros((nz, ny, nx), np.uint8)
        r = nx / 12
        for label, (cx, cy) in ((1, (0.4, 0.5)), (2, (0.65, 0.55))):
            d = ((x - cx * nx) / r) ** 2 + ((y - cy * ny) / r) ** 2 + ((z - nz / 2) / (nz / 6)) ** 2
            mask[d <= 1] = label
        t2 = (300 + 100 * noise + 250 * (mask > 0)).astype(np.float32)
        reg = np.roll(mask, 2, axis=2)

        def save(arr, path):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(spacing)
            sitk.WriteImage(img, str(path), useCompression=True)

        for phase, folder in (("midRT", mid), ("preRT", pre)):
            save(t2, folder / f"{pid}_{phase}_T2.nii.gz")
            save(mask, folder / f"{pid}_{phase}_mask.nii.gz")
        save(reg, mid / f"{pid}_preRT_mask_registered.nii.gz")


def make_model(work: Path, cohort: Path) -> Path:
    """Dataset + ResEnc M plans + five untrained fold checkpoints (nnUNetTrainer folder)."""
    from hntseg.dataset import build_dataset
    from hntseg.nnunet import FULL_TRAINER, PLANS, model_folder, set_environment
    from hntseg.train import plan_and_preprocess

    build_dataset(cohort, work, DATASET_ID, name="Bench", pre_rt=False, folds=2, seed=0)
    plan_and_preprocess(work, DATASET_ID, workers=1)
    paths = set_environment(work, workers=1)
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    name = f"Dataset{DATASET_ID:03d}_Bench"
    pre = paths.preprocessed / name
    plans = json.loads((pre / f"{PLANS}.json").read_text())
    dataset_json = json.loads((pre / "dataset.json").read_text())
    folder = model_folder(paths, name, FULL_TRAINER)
    for fold in FOLDS:
        torch.manual_seed(fold)
        fold_plans = {**plans, "continue_training": False}  # nnU-Net 2.8 pops this key
        trainer = nnUNetTrainer(fold_plans, "3d_fullres", fold, dataset_json, torch.device("cpu"))
        trainer.initialize()
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets TTA axes
        (folder / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(folder / f"fold_{fold}" / "checkpoint_final.pth"))
    shutil.copy(pre / f"{PLANS}.json", folder / "plans.json")
    shutil.copy(pre / "dataset.json", folder / "dataset.json")
    shutil.copy(pre / "dataset_fingerprint.json", folder / "dataset_fingerprint.json")
    cfg = plans["configurations"]["3d_fullres"]
    print(f"model: ResEnc M plans, patch {cfg['patch_size']}, spacing {cfg['spacing']} (z,y,x)")
    return folder


HNTSEG_CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
from hntseg.predict import ensemble_predict
t = time.perf_counter()
ensemble_predict({cohort!r}, {work!r}, {did}, {out!r}, folds={folds!r}, tta={tta},
                 device={device!r}, ids=["1"], force=True, cpu_bf16={bf16})
cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
print("RESULT", json.dumps({{"inner_s": time.perf_counter() - t, "cuda_bytes": cuda}}))
"""


def estimate(work: Path, folder: Path, size: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    """Network seconds per case from one timed patch x tiles x TTA passes x folds."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    torch.set_num_threads(os.cpu_count() or 1)
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), verbose=False
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    cfg = predictor.configuration_manager
    patch = [int(v) for v in cfg.patch_size]
    shape_zyx = np.array(size[::-1]) * np.array(spacing[::-1]) / np.array(cfg.spacing)
    shape = [max(int(round(v)), p) for v, p in zip(shape_zyx, patch, strict=True)]
    steps = compute_steps_for_sliding_window(shape, patch, 0.5)
    tiles = int(np.prod([len(s) for s in steps]))
    channels = len(predictor.dataset_json["channel_names"])
    x = torch.randn(1, channels, *patch)
    net = predictor.network.eval()
    times = []
    with torch.inference_mode():
        for i in range(4):
            t = time.perf_counter()
            net(x)
            if i:
                times.append(time.perf_counter() - t)
    per_tile = float(np.median(times))
    folds = len(FOLDS)
    print(
        f"\nESTIMATE (extrapolated, not a measured run), CPU ({os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads), 1 case {'x'.join(map(str, size))} voxels "
        f"-> {'x'.join(map(str, shape))} (z,y,x) at the plan's spacing\n"
        f"network forward pass on one {'x'.join(map(str, patch))} patch: {per_tile:.1f} s "
        f"(median of {len(times)}); {tiles} tiles at step 0.5"
    )
    for tta, passes in ((True, 8), (False, 1)):
        total = per_tile * tiles * passes * folds
        print(
            f"5 folds, TTA {'on ' if tta else 'off'}: {tiles} x {passes} x {folds} forward passes"
            f" = {total:.0f} s ({total / 60:.0f} min) of network time per case, at least"
        )


def nnunet_out(base: Path, folds: int, tta: bool) -> Path:
    """Where nnUNetv2_predict's variant with K folds, with / without TTA writes."""
    return base / f"nnunet_{folds}folds_{tta}"


def hntseg_out(base: Path, folds: int, tta: bool, bf16: bool = False) -> Path:
    """Where hntseg's variant with K folds, with / without TTA (float32, or bfloat16 on a
    CPU) writes; kept runs with other settings never mix."""
    return base / f"hntseg_{folds}folds_{'tta' if tta else 'notta'}{'_bf16' if bf16 else ''}"


def differing(a: Path, b: Path) -> str:
    """'N of M' voxels where two label images differ."""
    x = sitk.GetArrayFromImage(sitk.ReadImage(str(a)))
    y = sitk.GetArrayFromImage(sitk.ReadImage(str(b)))
    return f"{int((x != y).sum())} of {x.size}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="160x160x24 voxels at 1.5x1.5x6 mm")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--keep", type=Path, help="Work folder to keep (default: a temp folder).")
    ap.add_argument("--skip-nnunet", action="store_true", help="Only hntseg's variants.")
    ap.add_argument(
        "--estimate",
        action="store_true",
        help="Time one patch of the planned network and extrapolate; run no variant.",
    )
    ap.add_argument(
        "--full", action="store_true", help="Run the variants even at real size on a CPU."
    )
    ap.add_argument(
        "--folds", type=int, default=5, choices=range(1, 6), help="Ensemble the first K folds."
    )
    ap.add_argument("--tta", default="both", choices=("both", "on", "off"))
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "both"),
        help="hntseg's network precision on a CPU: float32 (nnU-Net's), --cpu-bf16, or both.",
    )
    args = ap.parse_args()
    folds = FOLDS[: args.folds]
    ttas = {"both": (True, False), "on": (True,), "off": (False,)}[args.tta]

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    size, spacing = (
        ((160, 160, 24), (1.5, 1.5, 6.0)) if args.small else ((512, 512, 75), (0.5, 0.5, 2.0))
    )
    if device == "cpu" and not args.small and not args.full and not args.estimate:
        print("real size on a CPU: estimating (the variants take hours; --full runs them)")
        args.estimate = True
    base = args.keep or Path(tempfile.mkdtemp(prefix="hntseg-bench-predict-"))
    cohort, work = base / "cohort", base / "work"
    t = time.perf_counter()
    if not (cohort / "1").is_dir():
        write_cohort(cohort, size, spacing)
    folder = make_model(work, cohort)
    print(f"setup (cohort, plan, preprocess, 5 untrained folds): {time.perf_counter() - t:.0f} s")
    if args.estimate:
        estimate(work, folder, size, spacing)
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
        return

    env = dict(os.environ)
    env.pop("nnUNet_def_n_proc", None)  # nnU-Net's default (8): predict on all CPU threads
    env.update(
        {
            "nnUNet_raw": str(work / "nnUNet_raw"),
            "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
            "nnUNet_results": str(work / "nnUNet_results"),
            "nnUNet_n_proc_DA": "1",
        }
    )
    # nnUNetv2_predict's input: the same channel files (T2 + hntseg's cached gradient map)
    ready = base / "ready"
    variants = []
    precisions = {"fp32": (False,), "bf16": (True,), "both": (False, True)}[args.precision]
    if device != "cpu":
        precisions = (False,)  # --cpu-bf16 applies to CPUs
    for bf16 in precisions:
        for tta in ttas:
            code = HNTSEG_CHILD.format(
                root=str(ROOT),
                cohort=str(cohort),
                work=str(work),
                did=DATASET_ID,
                out=str(hntseg_out(base, len(folds), tta, bf16)),
                folds=list(folds),
                tta=tta,
                device=device,
                bf16=bf16,
            )
            title = f"hntseg ensemble-predict, TTA {'on ' if tta else 'off'}"
            variants.append((title + (", bf16" if bf16 else ""), [sys.executable, "-c", code]))
    n_hntseg = len(variants)
    exe = Path(sys.executable).with_name("nnUNetv2_predict")
    for tta in ttas:
        dest = nnunet_out(base, len(folds), tta)
        cmd = [str(exe), "-i", str(ready), "-o", str(dest), "-d", str(DATASET_ID)]
        cmd += ["-c", "3d_fullres", "-p", "nnUNetResEncUNetMPlans", "-tr", "nnUNetTrainer"]
        cmd += ["-f", *map(str, folds), "-device", device, "-npp", "1", "-nps", "1"]
        if not tta:
            cmd.append("--disable_tta")
        if not args.skip_nnunet:
            variants.append((f"nnUNetv2_predict,         TTA {'on ' if tta else 'off'}", cmd))

    label = "GPU" if device == "cuda" else "CPU"
    name = torch.cuda.get_device_name() if device == "cuda" else f"{os.cpu_count()} cores"
    print(
        f"\n{label} ({name}), 1 case {size[0]}x{size[1]}x{size[2]} voxels at "
        f"{'x'.join(f'{s:g}' for s in spacing)} mm, {len(folds)} of 5 folds; seconds include "
        "process start and model load"
    )
    print(
        "memory (MiB): peak of the variant's whole process tree, sampled every 0.2 s, as "
        "summed PSS and summed RSS (a spike shorter than 0.2 s can be missed); '1 proc' = "
        "exact peak RSS of the largest single process; procs = most processes at once"
    )
    print(
        f"{'variant':40s} {'wall s':>8s} {'predict s':>10s} {'tree PSS':>9s} {'tree RSS':>9s} "
        f"{'1 proc':>7s} {'procs':>5s} {'peak CUDA MiB':>14s}"
    )
    for i, (title, cmd) in enumerate(variants):
        if i == n_hntseg:  # hntseg cached the gradient map: give nnU-Net the same files
            ready.mkdir(exist_ok=True)
            shutil.copy(cohort / "1" / "midRT" / "1_midRT_T2.nii.gz", ready / "1_0000.nii.gz")
            cache = hntseg_out(base, len(folds), ttas[0], precisions[0]) / ".cache"
            cache = cache / "1_midRT_gradmap.nii.gz"
            shutil.copy(cache, ready / "1_0001.nii.gz")
        r = run_tree(cmd, env)
        inner = r["inner"] or {}
        pred = f"{inner['inner_s']:.1f}" if inner.get("inner_s") else "-"
        cuda = f"{inner['cuda_bytes'] / 2**20:.0f}" if inner.get("cuda_bytes") else "-"
        pss = f"{r['tree_pss_kb'] / 1024:.0f}" if r["tree_pss_kb"] is not None else "-"
        print(
            f"{title:40s} {r['wall_s']:8.1f} {pred:>10s} {pss:>9s} "
            f"{r['tree_rss_kb'] / 1024:9.0f} {r['single_kb'] / 1024:7.0f} {r['max_procs']:5d} "
            f"{cuda:>14s}"
        )
    for tta in ttas:
        fp32 = hntseg_out(base, len(folds), tta) / "1.nii.gz"
        bf16 = hntseg_out(base, len(folds), tta, True) / "1.nii.gz"
        theirs = nnunet_out(base, len(folds), tta) / "1.nii.gz"
        on = "on" if tta else "off"
        if fp32.is_file() and theirs.is_file() and not args.skip_nnunet:
            diff = differing(fp32, theirs)
            print(f"voxels differing hntseg vs nnUNetv2_predict (TTA {on}): {diff}")
        if fp32.is_file() and bf16.is_file() and True in precisions:
            print(f"voxels differing hntseg bf16 vs float32 (TTA {on}): {differing(bf16, fp32)}")
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

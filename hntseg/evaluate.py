"""Scoring predicted masks against ground truth the way HNTS-MRG 2024 does, plus DSC, HD95,
MSD and lesion counts per case.

Challenge rules (organizers' evaluation, kwahid/HNTSMRG_2024 `Evaluation_example`):
- a prediction with labels other than 0/1/2, or a voxel spacing different from the ground
  truth's (beyond `np.allclose`: 1e-6 mm + 1e-5 relative), is rejected;
- a prediction whose size, origin or direction differs (beyond the same tolerance) is
  resampled nearest-neighbour onto the ground-truth grid;
- DSCagg per structure = 2 * sum_cases |A and B| / sum_cases (|A| + |B|), volumes in mm^3
  (voxel count x voxel volume), so cases weigh by physical volume; a structure absent from
  both masks of a case adds nothing, a false positive on an empty ground truth only grows
  the denominator; the score is the mean of GTVp and GTVn.

Per-case values (this module's conventions, documented in docs/evaluate.md): DSC is NaN
when both masks lack the structure; HD95 and MSD are NaN when either lacks it. NaNs are
left out of means and medians and counted in the summary.
"""

from __future__ import annotations

import csv
import io as _io
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from hntseg.errors import InputError
from hntseg.io import (
    GRID_TOL_MM,
    IMAGE_SUFFIXES,
    LABEL_NAMES,
    Grid,
    nan_to_null,
    read_header,
    read_json,
    read_mask,
    require_file,
    resample_to,
    strip_suffix,
    write_json,
    write_text,
)
from hntseg.log import log, progress
from hntseg.metrics import HD95_MODES, bbox, component_counts, dice, surface_distances

METRICS = ("dscagg", "dsc", "hd95", "msd")
GEOMETRY_ATOL = 1e-6  # the organizers' np.allclose atol (with numpy's default rtol 1e-5)
CSV_COLUMNS = (
    "id",
    "structure",
    "label",
    "pred_ml",
    "gt_ml",
    "intersection_ml",
    "dsc",
    "hd95",
    "msd",
    "tp",
    "fp",
    "fn",
)
# `<id>_midRT`: what nnU-Net writes for hntseg's case names (a fold's validation folder)
_NAME = re.compile(r"^(?P<id>.+?)_(midRT_mask|preRT_mask_registered|preRT_mask|midRT)$")
# cohort-layout folders: which file of each patient a role reads
COHORT_KEYS = {
    "ground truth": "midRT_mask",
    "prediction": "preRT_mask_registered",
    "pre-RT mask": "preRT_mask",
}


# --------------------------------------------------------------------------- finding files


def case_id(path: str | Path) -> str:
    """Patient id of a mask file: `<id>_midRT_mask`, `<id>_preRT_mask_registered`,
    `<id>_preRT_mask`, `<id>_midRT` or plain `<id>` (any image extension)."""
    stem = strip_suffix(path)
    match = _NAME.match(stem)
    return match.group("id") if match else stem


def find_masks(folder: str | Path, role: str = "prediction") -> dict[str, Path]:
    """Map patient id -> mask file in a flat folder, or in a cohort-layout folder
    (`<id>/midRT/...`; the file read per role is COHORT_KEYS[role])."""
    from hntseg import cohort

    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: {role} folder not found")
    if not folder.is_dir():
        raise InputError(f"{folder}: {role} folder is not a folder")
    files = sorted(  # a folder or broken symlink with a mask's name is an error, not skipped
        require_file(p, f"{role} mask")
        for p in folder.iterdir()
        if not p.name.startswith(".") and any(p.name.lower().endswith(s) for s in IMAGE_SUFFIXES)
    )
    found: dict[str, Path] = {}
    if files:
        for path in files:
            pid = case_id(path)
            if pid in found:
                raise InputError(f"{path}: second {role} file for patient {pid} ({found[pid]})")
            found[pid] = path
    else:
        key = COHORT_KEYS[role]
        try:
            patients = cohort.discover(folder, required=(), check_readable=False)
        except cohort.NoPatients:  # other problems (a misnamed patient folder) keep their say
            raise InputError(
                f"{folder}: no {role} masks (expected <id>.nii.gz, <id>.mha, "
                f"<id>_midRT_mask.nii.gz, ... or the cohort layout)"
            ) from None
        found = {p.id: p.get(key) for p in patients if p.has(key)}  # type: ignore[misc]
        if not found:
            raise InputError(f"{folder}: cohort layout but no {key} file for any patient")
    from hntseg.cohort import sort_key

    return dict(sorted(found.items(), key=lambda kv: sort_key(kv[0])))


def match_cases(
    pred_dir: str | Path,
    gt_dir: str | Path,
    allow_missing: bool = False,
    ids: Sequence[str] | None = None,
) -> list[tuple[str, Path | None, Path]]:
    """(id, prediction or None, ground truth) for every ground-truth case, or for those in
    `ids` (one fold's validation patients: a prediction folder holding only them is then
    scored on them alone; an id without a ground truth is an InputError).

    A ground truth without a prediction is an InputError unless `allow_missing`, in which
    case it is scored as an empty prediction (as the challenge does)."""
    gts = find_masks(gt_dir, "ground truth")
    preds = find_masks(pred_dir, "prediction")
    extra = [pid for pid in preds if pid not in gts]
    if ids is not None:
        wanted = list(dict.fromkeys(str(i) for i in ids))
        if not wanted:
            raise InputError("--ids: no ids given (leave it out to score every case)")
        unknown = [i for i in wanted if i not in gts]
        if unknown:
            raise InputError(f"--ids {','.join(unknown)}: no ground-truth case in {gt_dir}")
        gts = {pid: path for pid, path in gts.items() if pid in set(wanted)}
    if preds and len(extra) == len(preds):  # not one match: a naming mistake, not 0 Dice
        raise InputError(
            f"{pred_dir}: none of its {len(preds)} prediction(s) ({', '.join(extra[:3])}"
            f"{', ...' if len(extra) > 3 else ''}) matches a ground-truth patient id in "
            f"{gt_dir} ({', '.join(list(gts)[:3])}{', ...' if len(gts) > 3 else ''})"
        )
    if extra:
        log.warning(
            "%s: %d prediction(s) without ground truth ignored: %s",
            pred_dir,
            len(extra),
            ", ".join(extra[:10]),
        )
    cases = []
    for pid, gt_path in gts.items():
        pred_path = preds.get(pid)
        if pred_path is None and not allow_missing:
            flat = any(p.parent == Path(pred_dir) for p in preds.values())
            key = COHORT_KEYS["prediction"]
            expected = (
                Path(pred_dir) / f"{pid}.nii.gz"
                if flat
                else Path(pred_dir) / pid / "midRT" / f"{pid}_{key}.nii.gz"
            )
            raise InputError(
                f"{expected}: no prediction for patient {pid} "
                f"(ground truth {gt_path}); --allow-missing scores it as empty"
            )
        cases.append((pid, pred_path, gt_path))
    return cases


# --------------------------------------------------------------------------- loading


def _geometry_problem(pred: Grid, gt: Grid) -> tuple[bool, str | None]:
    """(needs resampling, fatal problem) following the organizers' checks."""
    # np.allclose's default rtol (1e-5) and argument order as in the organizers' check
    if not np.allclose(gt.spacing, pred.spacing, atol=GEOMETRY_ATOL):
        fmt = ", ".join(f"{v:.6g}" for v in pred.spacing)
        ref = ", ".join(f"{v:.6g}" for v in gt.spacing)
        off = float(np.max(np.abs(np.subtract(pred.spacing, gt.spacing))))
        hint = ""
        if off <= GRID_TOL_MM:  # one grid to every other stage: the two inputs disagree
            hint = (
                f"; by {off:.2g} mm, which hntseg's other stages accept as one grid: is the "
                "ground truth on its own mid-RT T2's grid (predictions are written on the T2's)?"
            )
        return False, f"spacing ({fmt}) mm differs from the ground truth's ({ref}){hint}"
    resample = (
        pred.size != gt.size
        or not np.allclose(pred.direction, gt.direction, atol=GEOMETRY_ATOL)
        or not np.allclose(pred.origin, gt.origin, atol=GEOMETRY_ATOL)
    )
    return resample, None


def check_headers(cases: Sequence[tuple[str, Path | None, Path]]) -> None:
    """Fail fast on a spacing mismatch before reading any voxels."""
    for _pid, pred_path, gt_path in cases:
        gt = read_header(gt_path, "ground-truth mask")
        if pred_path is None:
            continue
        _, problem = _geometry_problem(read_header(pred_path, "prediction mask"), gt)
        if problem:
            raise InputError(f"{pred_path}: {problem} ({gt_path}); rejected as the challenge does")


def load_pair(pred_path: Path | None, gt_path: Path) -> tuple[np.ndarray, np.ndarray, Grid, bool]:
    """(prediction, ground truth) as (z, y, x) uint8 arrays on the ground-truth grid, the
    grid, and whether the prediction was resampled. A missing prediction is empty."""
    gt = read_mask(gt_path, "ground-truth mask")
    grid = Grid.of(gt)
    gt_arr = sitk.GetArrayFromImage(gt)
    if pred_path is None:
        return np.zeros_like(gt_arr), gt_arr, grid, False
    pred = read_mask(pred_path, "prediction mask")
    resample, problem = _geometry_problem(Grid.of(pred), grid)
    if problem:
        raise InputError(f"{pred_path}: {problem} ({gt_path}); rejected as the challenge does")
    if resample:
        log.info("%s: not on the ground-truth grid; resampled nearest-neighbour", pred_path)
        pred = resample_to(pred, grid, nearest=True)
    return sitk.GetArrayFromImage(pred), gt_arr, grid, resample


# --------------------------------------------------------------------------- scoring


def score_arrays(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_xyz: Sequence[float],
    metrics: Iterable[str] = METRICS,
    hd95: str = "pooled",
) -> list[dict[str, Any]]:
    """One row per structure (GTVp, GTVn) for a (z, y, x) label pair on the same grid.

    `spacing_xyz` is SimpleITK's (x, y, z) spacing; it is reversed for the arrays. Volumes
    are voxel counts x voxel volume (mm^3, as the challenge) and reported in mL too.
    """
    metrics = set(metrics)
    if pred.shape != gt.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {gt.shape}")
    sx, sy, sz = (float(v) for v in spacing_xyz)
    voxvol = sx * sy * sz  # the organizers' order of multiplication
    spacing_zyx = (sz, sy, sx)
    box = _union_box(bbox(pred), bbox(gt))  # no full-volume temporaries
    pc = pred[box] if box is not None else pred[:0, :0, :0]
    gc = gt[box] if box is not None else gt[:0, :0, :0]
    rows = []
    for label, name in LABEL_NAMES.items():
        p, g = pc == label, gc == label
        n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
        n_i = int(np.count_nonzero(np.logical_and(p, g)))
        row: dict[str, Any] = {
            "structure": name,
            "label": label,
            "pred_mm3": n_p * voxvol,
            "gt_mm3": n_g * voxvol,
            "tp_mm3": n_i * voxvol,
            "dsc": dice(p, g),
            "hd95": None,
            "msd": None,
        }
        if metrics & {"hd95", "msd"}:
            sd = surface_distances(p, g, spacing_zyx) if n_p and n_g else None
            if "hd95" in metrics:
                row["hd95"] = sd.hd95(hd95) if sd is not None else math.nan
            if "msd" in metrics:
                row["msd"] = sd.msd() if sd is not None else math.nan
        row["tp"], row["fp"], row["fn"] = component_counts(p, g)
        rows.append(row)
    return rows


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None):
    if a is None or b is None:
        return a if b is None else b
    return tuple(
        slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )


def dscagg(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Aggregated DSC per structure and their mean (NaN where a structure is absent from
    every case, prediction and ground truth alike)."""
    rows = list(rows)
    out: dict[str, float] = {}
    for name in LABEL_NAMES.values():
        sel = [r for r in rows if r["structure"] == name]
        tp = float(np.sum([r["tp_mm3"] for r in sel]))
        vol = float(np.sum([r["pred_mm3"] + r["gt_mm3"] for r in sel]))
        out[name] = 2.0 * tp / vol if vol > 0 else math.nan
    out["mean"] = float(np.mean([out[n] for n in LABEL_NAMES.values()]))
    return out


def score(
    pred_dir: str | Path,
    gt_dir: str | Path,
    metrics: Iterable[str] = METRICS,
    hd95: str = "pooled",
    allow_missing: bool = False,
    cases: Sequence[tuple[str, Path | None, Path]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-case rows for every ground-truth case, and facts about the run (missing,
    resampled cases). Nothing is written. `cases`: `match_cases`'s result, if already made
    (it warns about unmatched predictions; once is enough)."""
    metrics = _check_options(metrics, hd95)
    if cases is None:
        cases = match_cases(pred_dir, gt_dir, allow_missing)
    check_headers(cases)
    rows: list[dict[str, Any]] = []
    resampled, missing = [], []
    for pid, pred_path, gt_path in progress(cases, "evaluate"):
        pred, gt, grid, was_resampled = load_pair(pred_path, gt_path)
        if was_resampled:
            resampled.append(pid)
        if pred_path is None:
            missing.append(pid)
        for row in score_arrays(pred, gt, grid.spacing, metrics, hd95):
            rows.append({"id": pid, **row})
    return rows, {"missing_predictions": missing, "resampled": resampled, "cases": cases}


def _check_options(metrics: Iterable[str], hd95: str) -> list[str]:
    metrics = [m.strip().lower() for m in metrics if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise InputError(f"--metrics {' '.join(bad) or '(none)'}: choose from {', '.join(METRICS)}")
    if hd95 not in HD95_MODES:
        raise InputError(f"--hd95 {hd95}: choose pooled or directed")
    return [m for m in METRICS if m in metrics]


# --------------------------------------------------------------------------- summary


def _finite(values: Iterable[Any]) -> np.ndarray:
    arr = np.array([v for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def _stats(values: Iterable[Any]) -> dict[str, Any]:
    arr = _finite(values)
    if arr.size == 0:
        return {"mean": math.nan, "median": math.nan, "n": 0}
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "n": int(arr.size)}


def summarize(
    rows: Sequence[dict[str, Any]], metrics: Sequence[str], hd95: str, info: dict[str, Any]
) -> dict[str, Any]:
    """Aggregate figures: DSCagg, means/medians of DSC, HD95, MSD, empty-case counts."""
    structures: dict[str, Any] = {}
    for name in LABEL_NAMES.values():
        sel = [r for r in rows if r["structure"] == name]
        empty_gt = [r for r in sel if r["gt_mm3"] == 0]
        entry: dict[str, Any] = {
            "n_cases": len(sel),
            "n_empty_gt": len(empty_gt),
            "n_empty_pred": sum(1 for r in sel if r["pred_mm3"] == 0),
            "n_empty_both": sum(1 for r in empty_gt if r["pred_mm3"] == 0),
            "components": {k: int(sum(r[k] for r in sel)) for k in ("tp", "fp", "fn")},
        }
        if "dsc" in metrics:
            entry["dsc"] = _stats(r["dsc"] for r in sel)
            entry["dsc"]["mean_nonempty_gt"] = _stats(r["dsc"] for r in sel if r["gt_mm3"] > 0)[
                "mean"
            ]
        for m in ("hd95", "msd"):
            if m in metrics:
                entry[m] = _stats(r[m] for r in sel)
                entry[m]["n_undefined"] = sum(
                    1 for r in sel if r[m] is None or not math.isfinite(r[m])
                )
        structures[name] = entry
    summary: dict[str, Any] = {
        "n_cases": len({r["id"] for r in rows}),
        "metrics": list(metrics),
        "hd95_definition": hd95,
        "structures": structures,
        "missing_predictions": info.get("missing_predictions", []),
        "resampled": info.get("resampled", []),
        "conventions": {
            "volumes": "voxel count x voxel volume (mm^3); mL in cases.csv",
            "dsc": "NaN when both masks lack the structure; excluded from means",
            "hd95_msd": "NaN when either mask lacks the structure; excluded from means",
            "hd95": "pooled = MedPy hd95; directed = max of the two directed 95th percentiles",
            "msd": "mean of all surface distances of both directions (MedPy 0.5 assd)",
            "components": "face-connected; TP/FN = GT components touched/untouched, "
            "FP = predicted components touching no GT",
        },
    }
    if "dscagg" in metrics:
        summary["dscagg"] = dscagg(rows)
    return summary


def _from_json(summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json back to what `summarize` returned: None -> NaN (only NaN was written as
    None), structures in label order (the file's keys are sorted)."""

    def nan(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: nan(v) for k, v in obj.items()}
        return math.nan if obj is None else obj

    order = [*LABEL_NAMES.values(), "mean"]
    for key in ("structures", "dscagg"):
        if isinstance(summary.get(key), dict):
            block = summary[key]
            summary[key] = {k: nan(block[k]) for k in order if k in block}
    return summary


def read_summary(path: str | Path) -> dict[str, Any]:
    """summary.json as `evaluate` returned it (NaN restored, structures in label order)."""
    return _from_json(read_json(path, "summary"))


def _fmt(value: Any) -> str:
    if value is None:
        return ""  # not computed
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def cases_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The per-case table as CSV text: volumes in mL, distances in mm; `nan` = undefined,
    empty = not computed."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        values = {
            **r,
            "pred_ml": r["pred_mm3"] / 1000.0,
            "gt_ml": r["gt_mm3"] / 1000.0,
            "intersection_ml": r["tp_mm3"] / 1000.0,
        }
        writer.writerow([_fmt(values[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def read_cases_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows back from cases.csv (mm^3 restored from mL)."""
    rows = []
    with Path(path).open(newline="") as fh:
        for rec in csv.DictReader(fh):
            row: dict[str, Any] = {"id": rec["id"], "structure": rec["structure"]}
            row["label"] = int(rec["label"])
            for c in ("pred", "gt"):
                row[f"{c}_mm3"] = float(rec[f"{c}_ml"]) * 1000.0
            row["tp_mm3"] = float(rec["intersection_ml"]) * 1000.0
            for c in ("dsc", "hd95", "msd"):
                row[c] = float(rec[c]) if rec[c] != "" else None
            for c in ("tp", "fp", "fn"):
                row[c] = int(rec[c])
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- public entry


def evaluate(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out: str | Path | None = None,
    metrics: Iterable[str] = METRICS,
    hd95: str = "pooled",
    allow_missing: bool = False,
    force: bool = False,
    figures: bool = False,
) -> dict[str, Any]:
    """Score every ground-truth case; return the summary with the per-case rows under
    "cases". With `out`, write OUT/cases.csv, OUT/summary.json and a record (an
    up-to-date record means the work is reused unless `force`); with `figures` also
    OUT/figures/ (per-case DSC, and each structure's worst cases pictured)."""
    from hntseg.records import is_done, write_record

    metrics = _check_options(metrics, hd95)
    params: dict[str, Any] = {"metrics": metrics, "hd95": hd95, "allow_missing": allow_missing}
    if figures:
        if out is None:
            raise InputError("--figures: give --out (the figures go to OUT/figures/)")
        if "dsc" not in metrics:
            raise InputError("--figures: needs the dsc metric (--metrics ... dsc)")
        params["figures"] = True  # only when set, so earlier records still match
    cases = None
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise InputError(f"{out}: exists and is not a folder; --out needs a folder")
        cases = match_cases(pred_dir, gt_dir, allow_missing)
        inputs = {f"{k}:{pid}": p for pid, pr, gt in cases for k, p in (("pred", pr), ("gt", gt))}
        record = out / "evaluate.record.json"
        if not force and is_done(record, inputs, params):
            log.info("%s: up to date (use --force to recompute)", out)
            summary = read_summary(out / "summary.json")
            summary["cases"] = read_cases_csv(out / "cases.csv")
            return summary
    rows, info = score(pred_dir, gt_dir, metrics, hd95, allow_missing, cases)
    summary = summarize(rows, metrics, hd95, info)
    if out is not None:
        record.unlink(missing_ok=True)  # killed half-way: no old record vouches for new files
        csv_path = write_text(out / "cases.csv", cases_csv(rows))
        json_path = write_json(out / "summary.json", nan_to_null(summary))
        written = [csv_path, json_path]
        if figures:
            from hntseg.figures import evaluation_figures

            written += evaluation_figures(rows, summary.get("dscagg") or {}, cases, out)
        write_record(record, "evaluate", inputs, params, written)
    summary["cases"] = rows
    return summary

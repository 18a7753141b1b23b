"""Gradient map: the method's prior channel, the T2's edge strength inside the tumour boxes.

Method (Ren et al., HNTS-MRG 2024 Task 2), per box: take the T2 crop; min-max normalise
it; Gaussian gradient magnitude (scipy `gaussian_gradient_magnitude`, sigma = 1 voxel,
spacing ignored, reflected at the crop edge); min-max rescale to 0-1 within the box (all
ones if flat); multiply by the gain 2 and clip at 1. 0 outside the boxes; where boxes
overlap the later box (GTVn after GTVp) overwrites. float32, the T2's geometry.

Only the boxes are computed (crop first), never the whole volume. `context` pads the crop
by N voxels for the gradient only, so the box edges are not reflection artefacts (not the
method's default); the rescale still uses the box alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from hntseg.boxes import Box, BoxSet, read_boxes
from hntseg.cohort import PHASES, Patient, boxes_path, gradmap_path
from hntseg.errors import InputError
from hntseg.io import (
    Grid,
    check_not_constant,
    check_out_folder,
    check_outputs_apart,
    from_array,
    read_image,
    remove_stale,
    write_image,
)
from hntseg.log import log


def box_gradient(
    t2: np.ndarray,
    box: Box,
    sigma: float | Sequence[float] = 1.0,
    gain: float = 2.0,
    context: int = 0,
) -> np.ndarray:
    """The map's values inside one box (float32, the box's (z, y, x) shape).

    `t2` is the whole (z, y, x) array; `sigma` in voxels (a number or one per axis, z, y, x).
    """
    shape = np.array(t2.shape)
    start, stop = np.array(box.start), np.array(box.stop) + 1
    lo = np.maximum(start - context, 0)
    hi = np.minimum(stop + context, shape)
    crop = np.asarray(t2[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))], dtype=np.float64)
    cmin, cmax = crop.min(), crop.max()
    if cmax > cmin:
        norm = (crop - cmin) / (cmax - cmin)
        grad = ndimage.gaussian_gradient_magnitude(norm, sigma=sigma, mode="reflect")
        inner = grad[tuple(slice(a, b) for a, b in zip(start - lo, stop - lo, strict=True))]
    else:
        inner = np.zeros(tuple(stop - start))
    gmin, gmax = inner.min(), inner.max()
    if gmax > gmin:
        scaled = (inner - gmin) / (gmax - gmin)
    else:
        scaled = np.ones_like(inner)
    return np.minimum(scaled * gain, 1.0).astype(np.float32)


MAX_SIGMA = 100.0  # voxels (and mm for sigma_mm): the kernel reaches 4 sigma


def check_params(
    sigma: float, gain: float, sigma_mm: float | None = None, context: int = 0
) -> None:
    """sigma (voxels) and sigma_mm in (0, 100], gain finite and >= 0, context >= 0; NaN
    and inf are refused (NaN passed every comparison, inf crashed scipy)."""
    sigmas = [sigma] if sigma_mm is None else [sigma, sigma_mm]
    if not all(math.isfinite(v) and 0 < v <= MAX_SIGMA for v in sigmas):
        # sigma 0 would skip scipy's derivative: the "gradient map" would be the intensity
        raise InputError(f"--sigma and --sigma-mm must be > 0 and at most {MAX_SIGMA:g}")
    if not math.isfinite(gain) or gain < 0:
        raise InputError("--gain must be finite and >= 0")
    if context < 0:
        raise InputError("--context must be >= 0")


def gradient_map(
    t2: sitk.Image,
    boxes: BoxSet,
    sigma: float = 1.0,
    gain: float = 2.0,
    sigma_mm: float | None = None,
    context: int = 0,
) -> sitk.Image:
    """The gradient map of `t2` inside `boxes` (float32, T2 geometry, 0 outside the boxes).

    sigma is in voxels (the method's, spacing ignored); `sigma_mm` instead gives a physical
    sigma, converted per axis with the T2 spacing. Boxes are applied in order, later ones
    overwrite. The boxes' grid must be the T2's grid (InputError otherwise).
    """
    where = boxes.source or "boxes"
    problem = Grid.of(t2).mismatch(boxes.grid)
    if problem:
        raise InputError(f"{where}: boxes are not on the grid of the T2: {problem}")
    check_params(sigma, gain, sigma_mm, context)
    if t2.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("T2: vector image, expected a scalar image")
    arr = sitk.GetArrayViewFromImage(t2)  # (z, y, x), no copy
    sig: float | tuple[float, ...] = sigma
    if sigma_mm is not None:
        sig = tuple(sigma_mm / s for s in reversed(t2.GetSpacing()))  # (z, y, x) voxels
    out = np.zeros(arr.shape, np.float32)
    for box in boxes.boxes:
        out[box.slices] = box_gradient(arr, box, sig, gain, context)
    return from_array(out, t2)


# --------------------------------------------------------------------------- cohort


def gradmap_case(
    t2_path: str | Path,
    boxes_file: str | Path,
    out_path: str | Path,
    sigma: float = 1.0,
    gain: float = 2.0,
    sigma_mm: float | None = None,
    context: int = 0,
    force: bool = False,
) -> bool:
    """One gradient map file with its record; False when skipped (already done)."""
    from hntseg.records import check_record_owner, is_done, record_path, write_record

    check_params(sigma, gain, sigma_mm, context)  # before any file is read
    t2_path, boxes_file, out_path = Path(t2_path), Path(boxes_file), Path(out_path)
    inputs = {"t2": t2_path, "boxes": boxes_file}
    params = {"sigma": sigma, "gain": gain, "sigma_mm": sigma_mm, "context": context}
    rec = record_path(out_path)
    check_outputs_apart(inputs, (out_path, rec))
    check_record_owner(rec, "gradmap")
    if not force and is_done(rec, inputs, params):
        return False
    remove_stale(rec, [out_path])  # a case that now fails leaves no earlier map behind
    t2 = read_image(t2_path, "T2 image")
    check_not_constant(t2, t2_path, "T2 image")
    boxset = read_boxes(boxes_file, Grid.of(t2))
    if not boxset.boxes:
        log.warning(f"{boxes_file}: no boxes; the gradient map is all zeros")
    image = gradient_map(t2, boxset, sigma, gain, sigma_mm, context)
    write_image(image, out_path)
    write_record(rec, "gradmap", inputs, params, [out_path], extra={"n_boxes": len(boxset.boxes)})
    return True


def gradmap_cohort(
    cohort: str | Path,
    boxes: str | Path,
    out: str | Path,
    sigma: float = 1.0,
    gain: float = 2.0,
    sigma_mm: float | None = None,
    context: int = 0,
    ids: Iterable[str] | None = None,
    phases: Sequence[str] = PHASES,
    num_parts: int = 1,
    part_id: int = 0,
    force: bool = False,
) -> dict[str, Path]:
    """Gradient maps for a cohort: `OUT/<id>/<id>_midRT_gradmap.nii.gz` (mid-RT T2 +
    BOXES/<id>/<id>_midRT_boxes.json) and `_preRT_gradmap.nii.gz` (pre-RT T2 + pre-RT boxes).
    Returns {"<id>_<phase>": path}; failed cases are logged, then a StageError."""
    from hntseg.cohort import check_phases, discover, expected_path, run_cases, shard

    phases = check_phases(phases)
    check_params(sigma, gain, sigma_mm, context)  # one error, not one per case
    check_out_folder(out)
    patients = discover(cohort, required=(), ids=ids)
    # split by patient, as every per-case stage: a patient's phases share a part
    cases = [(p, phase) for p in shard(patients, num_parts, part_id) for phase in phases]
    if cases and not Path(boxes).is_dir():  # one error, not one per case (an empty part of
        raise InputError(f"{boxes}: --boxes folder not found")  # a job array has none)
    targets = {f"{p.id}_{phase}": gradmap_path(out, p.id, phase) for p, phase in cases}

    def work(case: tuple[Patient, str]) -> bool:
        p, phase = case
        key = f"{phase}_T2"
        return gradmap_case(
            p.get(key) or expected_path(cohort, p.id, key),
            boxes_path(boxes, p.id, phase),
            targets[f"{p.id}_{phase}"],
            sigma,
            gain,
            sigma_mm,
            context,
            force,
        )

    done = run_cases("gradmap", ((f"{p.id}_{phase}", (p, phase)) for p, phase in cases), work)
    return {key: targets[key] for key in done}

"""Tumour boxes: one box per connected component per label, with random margins.

Method (Ren et al., HNTS-MRG 2024 Task 2): per label (1 GTVp, 2 GTVn, never merged),
6-connected components (face connectivity); one box per component = its voxel extent,
then each of the 6 sides (low/high on z, y, x) moved outwards by its own random integer
margin drawn uniformly from an inclusive range (paper: 2-6 voxels), clipped to the image.
A single integer is a fixed margin (inference).

Index convention: boxes are voxel index ranges in numpy (z, y, x) order with INCLUSIVE
ends (`zyx_start`, `zyx_stop_inclusive`); a SimpleITK index is the reverse (x, y, z).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from hntseg.cohort import PHASES, boxes_path
from hntseg.errors import InputError
from hntseg.io import (
    LABEL_NAMES,
    Grid,
    check_out_folder,
    check_outputs_apart,
    check_same_grid,
    read_header,
    read_json,
    read_mask,
    remove_stale,
    write_json,
)
from hntseg.log import log

FORMAT = "hntseg-boxes/1"
DEFAULT_MARGIN = (2, 6)  # the paper's training-time range, voxels
# 6-connectivity (face neighbours) in 3D
FACE_STRUCTURE = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class Box:
    """A box in voxel indices, numpy (z, y, x) order, inclusive ends.

    `margins_low` / `margins_high` are the margins drawn (before clipping) for the low
    and high side of each axis, (z, y, x); None for a hand-made box.
    """

    label: int
    start: tuple[int, int, int]  # (z, y, x), inclusive
    stop: tuple[int, int, int]  # (z, y, x), inclusive
    component: int | None = None  # 1-based index of the component within its label
    voxels: int | None = None  # voxels of the component
    volume_mm3: float | None = None  # volume of the component
    margins_low: tuple[int, int, int] | None = None
    margins_high: tuple[int, int, int] | None = None

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """numpy slices (z, y, x) selecting the box."""
        return tuple(slice(a, b + 1) for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Box size in voxels, (z, y, x)."""
        return tuple(b - a + 1 for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def centre(self) -> tuple[int, int, int]:
        """Central voxel index, (z, y, x)."""
        return tuple((a + b) // 2 for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "label_name": LABEL_NAMES.get(self.label, str(self.label)),
            "component": self.component,
            "voxels": self.voxels,
            "volume_mm3": self.volume_mm3,
            "zyx_start": list(self.start),
            "zyx_stop_inclusive": list(self.stop),
            "margins_drawn_zyx_low": list(self.margins_low) if self.margins_low else None,
            "margins_drawn_zyx_high": list(self.margins_high) if self.margins_high else None,
        }


@dataclass
class BoxSet:
    """The boxes of one mask, on the mask's grid, with how they were drawn."""

    boxes: list[Box]
    grid: Grid
    seed: int | None = None
    margin: int | tuple[int, int] = DEFAULT_MARGIN
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        margin = list(self.margin) if isinstance(self.margin, tuple) else self.margin
        return {
            "format": FORMAT,
            "axis_order": "zyx (numpy order; SimpleITK index order is xyz, reversed)",
            "index_ends": "inclusive",
            "source": self.source,
            "grid": self.grid.to_dict(),
            "seed": self.seed,
            "margin_voxels": margin,
            "boxes": [b.to_dict() for b in self.boxes],
        }


def parse_margin(value: int | str | Sequence[int]) -> int | tuple[int, int]:
    """4 -> 4; "2-6", (2, 6) -> (2, 6) (inclusive range of voxels); bad values -> InputError."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        lo = hi = int(value)
    elif isinstance(value, str):
        parts = value.replace(" ", "").split("-")
        if not all(p.isdecimal() for p in parts) or len(parts) not in (1, 2):
            raise InputError(f"--margin {value!r}: expected N or LO-HI voxels, e.g. 4 or 2-6")
        lo, hi = int(parts[0]), int(parts[-1])
    elif isinstance(value, Sequence) and len(value) == 2:
        lo, hi = (int(v) for v in value)
    else:
        raise InputError(f"margin {value!r}: expected N or (LO, HI) voxels")
    if lo < 0 or hi < lo:
        what = "--margin" if isinstance(value, str) else "margin"
        raise InputError(f"{what} {value!r}: need 0 <= LO <= HI voxels")
    return lo if lo == hi else (lo, hi)


def _margin_range(margin: int | tuple[int, int]) -> tuple[int, int]:
    m = parse_margin(margin)
    return (m, m) if isinstance(m, int) else m


def find_boxes(
    mask: sitk.Image,
    margin: int | tuple[int, int] = DEFAULT_MARGIN,
    seed: int | None = None,
    source: str | None = None,
) -> BoxSet:
    """One box per 6-connected component per label (1 then 2), sides moved out by random margins.

    Each of the 6 sides gets its own integer margin uniform in the inclusive range `margin`
    (an int = fixed margin); the box is then clipped to the image. Order: label, then
    scipy's component order (raster order of the first voxel). Random draws come from
    `numpy.random.default_rng(seed)` in that order (low z, y, x then high z, y, x per box),
    so the same mask and seed give the same boxes. An empty mask gives no boxes and a warning.
    """
    lo, hi = _margin_range(margin)
    where = source or "mask"
    if seed is not None and seed < 0:
        raise InputError(f"seed {seed}: must be >= 0")
    if mask.GetDimension() != 3:
        raise InputError(f"{where}: mask is {mask.GetDimension()}D, expected 3D")
    if mask.GetPixelID() != sitk.sitkUInt8:
        from hntseg.io import validate_mask

        mask = validate_mask(mask, where)
    grid = Grid.of(mask)
    arr = sitk.GetArrayViewFromImage(mask)  # (z, y, x), no copy
    rng = np.random.default_rng(seed)
    shape = np.array(arr.shape)
    boxes: list[Box] = []
    # crop to the extent of all tumour voxels before labelling (most of the image is empty)
    nonzero = arr != 0
    extent = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(nonzero.any(axis=other))
        extent.append((idx[0], idx[-1] + 1) if idx.size else None)
    if any(e is None for e in extent):
        log.warning(f"{where}: no tumour voxels (labels 1, 2); no boxes")
        return BoxSet([], grid, seed, parse_margin(margin), source)
    offset = np.array([e[0] for e in extent])
    crop = arr[tuple(slice(a, b) for a, b in extent)]
    present = np.bincount(crop.ravel(), minlength=3)
    if present.size > 3:
        raise InputError(f"{where}: mask has labels above 2; allowed are 0, 1, 2")
    for label in (1, 2):
        if present[label] == 0:
            continue
        components, n = ndimage.label(crop == label, structure=FACE_STRUCTURE)
        counts = np.bincount(components.ravel(), minlength=n + 1)
        for index, obj in enumerate(ndimage.find_objects(components), start=1):
            first = np.array([s.start for s in obj]) + offset
            last = np.array([s.stop - 1 for s in obj]) + offset
            draws = rng.integers(lo, hi + 1, size=6) if hi > lo else np.full(6, lo)
            low, high = draws[:3], draws[3:]
            start = np.maximum(first - low, 0)
            stop = np.minimum(last + high, shape - 1)
            voxels = int(counts[index])
            boxes.append(
                Box(
                    label=label,
                    start=tuple(int(v) for v in start),
                    stop=tuple(int(v) for v in stop),
                    component=index,
                    voxels=voxels,
                    volume_mm3=round(voxels * grid.voxel_volume, 6),
                    margins_low=tuple(int(v) for v in low),
                    margins_high=tuple(int(v) for v in high),
                )
            )
    return BoxSet(boxes, grid, seed, parse_margin(margin), source)


# --------------------------------------------------------------------------- files


def write_boxes(path: str | Path, boxset: BoxSet) -> Path:
    """Write boxes.json atomically (sorted keys: same boxes -> same bytes)."""
    return write_json(path, boxset.to_dict())


def _ints3(value: Any, what: str, path: Path, i: int) -> tuple[int, int, int]:
    ok = isinstance(value, list) and len(value) == 3
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok:
        raise InputError(f"{path}: box {i}: {what} must be 3 integers (z, y, x), got {value!r}")
    return tuple(value)  # type: ignore[return-value]


def _box_from_dict(data: Any, path: Path, i: int, shape: tuple[int, ...]) -> Box:
    if not isinstance(data, dict):
        raise InputError(f"{path}: box {i}: expected an object, got {data!r}")
    label = data.get("label")
    if label not in (1, 2) or isinstance(label, bool):
        raise InputError(f"{path}: box {i}: label must be 1 (GTVp) or 2 (GTVn), got {label!r}")
    for key in ("zyx_start", "zyx_stop_inclusive"):
        if key not in data:
            raise InputError(f"{path}: box {i}: missing {key!r}")
    start = _ints3(data["zyx_start"], "zyx_start", path, i)
    stop = _ints3(data["zyx_stop_inclusive"], "zyx_stop_inclusive", path, i)
    for axis, name in enumerate("zyx"):
        if not 0 <= start[axis] <= stop[axis] < shape[axis]:
            raise InputError(
                f"{path}: box {i}: {name} range {start[axis]}..{stop[axis]} is outside the "
                f"image (0..{shape[axis] - 1}) or empty"
            )
    margins = []
    for key in ("margins_drawn_zyx_low", "margins_drawn_zyx_high"):
        value = data.get(key)
        margins.append(None if value is None else _ints3(value, key, path, i))
    optional: dict[str, Any] = {}
    for key, kind in (("component", int), ("voxels", int), ("volume_mm3", (int, float))):
        value = data.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise InputError(f"{path}: box {i}: {key} must be a number, got {value!r}")
        optional[key] = value
    return Box(label, start, stop, margins_low=margins[0], margins_high=margins[1], **optional)


def read_boxes(path: str | Path, grid: Grid | None = None) -> BoxSet:
    """Read and validate boxes.json; a malformed file, another grid or a box outside the
    image is an InputError naming the file. Hand-edited boxes need only label and ranges."""
    path = Path(path)
    data = read_json(path, "boxes file")
    if not isinstance(data, dict) or not isinstance(data.get("boxes"), list):
        raise InputError(f"{path}: malformed boxes file (expected an object with a 'boxes' list)")
    try:
        file_grid = Grid.from_dict(data["grid"])
        if len(file_grid.size) != 3 or min(file_grid.size) < 1:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: malformed boxes file (missing or bad 'grid')") from None
    if grid is not None:
        problem = grid.mismatch(file_grid)
        if problem:
            raise InputError(f"{path}: boxes are for another grid: {problem}")
    boxes = [_box_from_dict(b, path, i, file_grid.shape) for i, b in enumerate(data["boxes"])]
    margin = data.get("margin_voxels", DEFAULT_MARGIN)
    try:
        margin = parse_margin(margin if not isinstance(margin, list) else tuple(margin))
    except InputError:
        raise InputError(f"{path}: bad margin_voxels {margin!r}") from None
    seed = data.get("seed")
    return BoxSet(boxes, file_grid, seed, margin, data.get("source"))


# --------------------------------------------------------------------------- cohort


def boxes_case(
    mask_path: str | Path,
    out_path: str | Path,
    margin: int | tuple[int, int] = DEFAULT_MARGIN,
    seed: int | None = None,
    force: bool = False,
    t2_path: str | Path | None = None,
) -> tuple[BoxSet | None, bool]:
    """Boxes for one mask file written to `out_path` with a record. Returns (boxes, ran);
    boxes is None when skipped because the record says the work is done. `t2_path`: the
    image the boxes are for; the mask must be on its grid (found here, not at gradmap)."""
    from hntseg.records import check_record_owner, is_done, record_path, write_record

    mask_path, out_path = Path(mask_path), Path(out_path)
    margin = parse_margin(margin)
    inputs = {"mask": mask_path}
    params = {"margin": list(margin) if isinstance(margin, tuple) else margin, "seed": seed}
    rec = record_path(out_path)
    if not out_path.name.lower().endswith(".json"):
        raise InputError(f"{out_path}: boxes are written as JSON; name the file *.json")
    check_outputs_apart({**inputs, "T2": t2_path}, (out_path, rec))
    check_record_owner(rec, "boxes")
    if not force and is_done(rec, inputs, params):
        return None, False
    remove_stale(rec, [out_path])  # bad input now: no earlier boxes left for gradmap to take
    # the absolute path: the same mask and seed give the same bytes from any working folder
    mask = read_mask(mask_path)
    if t2_path is not None:
        check_same_grid(read_header(t2_path, "T2"), mask, mask_path, t2_path)
    boxset = find_boxes(mask, margin, seed, str(Path(mask_path).resolve()))
    write_boxes(out_path, boxset)
    write_record(
        rec, "boxes", inputs, params, [out_path], seed, extra={"n_boxes": len(boxset.boxes)}
    )
    return boxset, True


def _masks_for(
    cohort: Path,
    registered: Path | None,
    ids: Iterable[str] | None,
    phases: Sequence[str],
    num_parts: int = 1,
    part_id: int = 0,
) -> list[tuple[str, str, Path, Path | None]]:
    """(pid, phase, mask path, T2 path or None) per case of this part, in patient order (a
    part holds whole patients)."""
    from hntseg.cohort import discover, expected_path, shard

    patients = shard(discover(cohort, required=(), ids=ids), num_parts, part_id)
    reg_root = Path(registered) if registered is not None else cohort
    reg = {p.id: p for p in patients}
    if patients and "midRT" in phases and reg_root.resolve() != cohort.resolve():
        # (an empty part of a job array needs no --registered folder: register made none)
        reg = {p.id: p for p in discover(reg_root, required=(), what="--registered folder")}
    cases = []
    for p in patients:
        for phase in phases:
            if phase == "midRT":
                source, root, key = reg.get(p.id), reg_root, "preRT_mask_registered"
            else:
                source, root, key = p, cohort, "preRT_mask"
            path = source.get(key) if source is not None else None
            t2 = p.get(f"{phase}_T2")
            cases.append((p.id, phase, path or expected_path(root, p.id, key), t2))
    return cases


def boxes_cohort(
    cohort: str | Path,
    out: str | Path,
    registered: str | Path | None = None,
    margin: int | tuple[int, int] = DEFAULT_MARGIN,
    seed: int | None = 0,
    ids: Iterable[str] | None = None,
    phases: Sequence[str] = PHASES,
    num_parts: int = 1,
    part_id: int = 0,
    force: bool = False,
) -> dict[str, Path]:
    """Boxes for every case of a cohort: `OUT/<id>/<id>_midRT_boxes.json` from the registered
    pre-RT mask (`registered` folder, default the cohort's organizers' files) and
    `OUT/<id>/<id>_preRT_boxes.json` from the pre-RT mask. The seed of a case is
    `case_seed(seed, "<id>_<phase>", "boxes")`, so adding cases changes no other case.
    Returns {"<id>_<phase>": path}. Failed cases are logged; then a StageError."""
    from hntseg.cohort import check_phases, run_cases
    from hntseg.records import case_seed

    cohort = Path(cohort)
    phases = check_phases(phases)
    margin = parse_margin(margin)
    check_out_folder(out)
    cases = _masks_for(cohort, registered, ids, phases, num_parts, part_id)
    targets = {f"{pid}_{phase}": boxes_path(out, pid, phase) for pid, phase, _, _ in cases}

    def work(case: tuple[str, str, Path, Path | None]) -> bool:
        pid, phase, mask_path, t2 = case
        s = None if seed is None else case_seed(seed, f"{pid}_{phase}", "boxes")
        return boxes_case(mask_path, targets[f"{pid}_{phase}"], margin, s, force, t2)[1]

    done = run_cases("boxes", ((f"{c[0]}_{c[1]}", c) for c in cases), work)
    return {key: targets[key] for key in done}

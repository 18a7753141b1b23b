"""Synthetic HNTS-MRG-like cohort with a known pre-RT -> mid-RT correspondence.

Anatomy is defined analytically in the patient's pre-RT physical frame (mm): a neck
body with textured soft tissue and subcutaneous fat, airway, vertebrae and cord, neck
muscles, glands, carotid/jugular flow voids, one primary tumour (label 1) and 0-3 nodes
(label 2) with irregular borders. The mid-RT scan sees the same anatomy through a known
mapping T (mid physical point -> pre physical point: a rigid motion plus a smooth random
deformation) on its own grid, with shrunk or vanished tumours (oedema-like tissue where
they were), thinner fat (weight loss moves the skin only), other bias field, noise and
intensity scale. Everything under the fat follows T, so T is the truth for the tumours.
The `_registered` files are the pre-RT image and mask sampled at T(mid grid), i.e. the
exact registration, a truth for later stages.

Each patient draws from its own seed (global seed + id), so a patient's files do not
change when others are added. Same seed -> identical bytes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from hntseg.cohort import FILES, expected_path
from hntseg.errors import InputError
from hntseg.io import Grid, from_array, make_folder, read_json, write_image, write_json
from hntseg.log import log, progress
from hntseg.records import case_seed, versions

FIELD_OF_VIEW_MM = (240.0, 240.0, 150.0)  # (x, y, z): the real median 512x512x75 @ .47x.47x2
DEFAULT_SIZE = (128, 128, 32)  # (x, y, z)
# Bounds of the grid options. The paper's largest case is 768x768x162 (96 M voxels) at about
# 0.5x0.5x2 mm; drawing a patient peaks at about 200 bytes per voxel (19 GB for that case).
SIZE_RANGE = (8, 2048)  # voxels per axis
MAX_VOXELS = 1024 * 1024 * 128  # per volume: about 27 GB at the peak
SPACING_RANGE_MM = (0.05, 20.0)  # per axis
MAX_FOV_MM = 1000.0  # per axis (size x spacing); the anatomy's lattices grow with it


@dataclass
class Tumour:
    label: int
    centre: np.ndarray  # (x, y, z) mm, pre-RT frame
    radius: float  # mm, before shape perturbation
    axes: np.ndarray  # anisotropy, product 1
    rotation: np.ndarray  # 3x3
    harmonics: np.ndarray  # (4, 2): amplitude, phase
    mid_factor: float  # volume factor at mid-RT; 0 = vanished

    def inside(self, pts: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Boolean: which points (N, 3) lie inside the tumour with radius * scale."""
        if scale <= 0:
            return np.zeros(len(pts), bool)
        v = (pts - self.centre) @ self.rotation.T / self.axes
        rho = np.sqrt((v**2).sum(axis=1))
        reach = self.radius * scale * 1.6
        out = np.zeros(len(pts), bool)
        near = rho < reach
        if not near.any():
            return out
        w = v[near]
        r = rho[near] + 1e-9
        theta = np.arccos(np.clip(w[:, 2] / r, -1.0, 1.0))
        phi = np.arctan2(w[:, 1], w[:, 0])
        h = self.harmonics
        bump = (
            h[0, 0] * np.cos(2 * phi + h[0, 1]) * np.sin(theta)
            + h[1, 0] * np.cos(3 * phi + h[1, 1]) * np.sin(theta) ** 2
            + h[2, 0] * np.cos(2 * theta + h[2, 1])
            + h[3, 0] * np.cos(5 * phi + 2 * theta + h[3, 1])
        )
        out[near] = r < self.radius * scale * (1.0 + bump)
        return out


@dataclass
class Patient:
    body_axes: np.ndarray  # (ax, ay) mm
    tumours: list[Tumour]
    texture: np.ndarray  # coarse random lattice for tissue texture
    texture_origin: np.ndarray
    texture_step: float
    weight_loss: float  # skin-contour shrink factor at mid-RT (the fat thins)
    intensity_scale: float  # mid-RT / pre-RT
    rotation: np.ndarray  # mid -> pre rigid part
    translation: np.ndarray
    deform: np.ndarray  # (3, nz, ny, nx) control displacements, mm
    deform_origin: np.ndarray
    deform_step: np.ndarray


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _tumour(rng: np.random.Generator, label: int, centre, volume_ml: float, mid_factor: float):
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    axes = rng.uniform(0.8, 1.25, 3)
    axes /= np.prod(axes) ** (1.0 / 3.0)
    harmonics = np.stack([rng.uniform(-0.14, 0.14, 4), rng.uniform(0, 2 * math.pi, 4)], axis=1)
    return Tumour(
        label, np.asarray(centre, float), radius, axes, _rotation(rng, 40), harmonics, mid_factor
    )


def make_patient(rng: np.random.Generator, fov: tuple[float, float, float]) -> Patient:
    """Draw one patient's anatomy, tumours and pre->mid motion."""
    fx, fy, fz = fov
    body = np.array([rng.uniform(0.25, 0.3) * fx, rng.uniform(0.2, 0.25) * fy])
    tumours = []
    if rng.random() < 0.92:  # a primary in most patients
        vol = rng.uniform(4.0, 25.0)
        vanish = rng.random() < 0.25  # no mid-RT GTVp in about a quarter of real cases
        factor = 0.0 if vanish else rng.uniform(0.04, 0.6)
        centre = (rng.uniform(-12, 12), rng.uniform(-22, -8), rng.uniform(-0.15, 0.15) * fz)
        tumours.append(_tumour(rng, 1, centre, vol, factor))
    n_nodes = int(rng.choice([0, 1, 1, 2, 2, 3]))
    if not tumours and n_nodes == 0:
        n_nodes = 1  # every real pre-RT scan has a tumour (GTVp, GTVn or both)
    sides = rng.permutation([-1, 1, -1, 1])
    for k in range(n_nodes):
        vol = rng.uniform(1.2, 12.0)
        factor = 0.0 if rng.random() < 0.08 else rng.uniform(0.3, 0.9)
        centre = (
            sides[k] * rng.uniform(0.45, 0.6) * body[0],
            rng.uniform(-10, 12),
            (k - 1) * 0.18 * fz + rng.uniform(-6, 6),
        )
        tumours.append(_tumour(rng, 2, centre, vol, factor))
    step = 5.0
    tex_shape = (int(fz / step) + 4, int(fy / step) + 4, int(fx / step) + 4)
    dstep = np.array([fx / 4, fy / 4, fz / 3])
    deform = rng.normal(0.0, 2.5, (3, 5, 6, 6))
    return Patient(
        body_axes=body,
        tumours=tumours,
        texture=rng.normal(0.0, 1.0, tex_shape).astype(np.float32),
        texture_origin=-np.array([fx, fy, fz]) / 2 - step,
        texture_step=step,
        weight_loss=rng.uniform(0.93, 0.99),
        intensity_scale=rng.uniform(0.6, 1.6),
        rotation=_rotation(rng, 4.0),
        translation=rng.uniform(-6.0, 6.0, 3),
        deform=deform,
        deform_origin=-np.array([fx, fy, fz]) / 2 - dstep,
        deform_step=dstep,
    )


def _lattice(values: np.ndarray, pts: np.ndarray, origin, step, order: int) -> np.ndarray:
    """Sample a (z, y, x) lattice with the given origin/step (mm) at points (N, 3) in (x, y, z)."""
    idx = ((pts - origin) / step)[:, ::-1].T
    return ndimage.map_coordinates(values, idx, order=order, mode="nearest")


def mid_to_pre(patient: Patient, pts: np.ndarray) -> np.ndarray:
    """The known mapping T: mid-RT physical points (N, 3) -> pre-RT physical points."""
    d = np.stack(
        [
            _lattice(patient.deform[i], pts, patient.deform_origin, patient.deform_step, 3)
            for i in range(3)
        ],
        axis=1,
    )
    return pts @ patient.rotation.T + patient.translation + d


def render(patient: Patient, pts: np.ndarray, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free T2-like intensity and label at pre-RT-frame points (N, 3) for 'pre' or 'mid'."""
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    # weight loss thins the subcutaneous fat: the skin moves in, the anatomy inside does not
    # (so the known mapping T stays the truth for every structure under the fat)
    thin = 1.0 if phase == "pre" else patient.weight_loss
    neck = 1.0 + 0.08 * np.sin(z / 35.0)
    ax, ay = patient.body_axes[0] * neck, patient.body_axes[1] * neck
    r0 = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)
    rb = r0 / thin
    tex = _lattice(patient.texture, pts, patient.texture_origin, patient.texture_step, 1)
    img = np.zeros(len(pts), np.float32)
    body = rb < 1.0
    img[body] = 300.0 * (1.0 + 0.15 * tex[body])  # muscle / soft tissue
    fat = body & (r0 > 1.0 - 7.0 / ax)
    img[fat] = 850.0 * (1.0 + 0.04 * tex[fat])
    # structures that change along z, so the anatomy pins motion in every direction
    scm_x = 0.55 * ax - 0.15 * z
    scm = body & (((np.abs(x) - scm_x) / 9.0) ** 2 + ((y - 0.05 * ay - 0.1 * z) / 6.0) ** 2 < 1)
    img[scm] = 220.0 * (1.0 + 0.06 * tex[scm])  # sternocleidomastoid-like muscles
    glands = body & (
        ((np.abs(x) - 0.45 * ax) / 14.0) ** 2 + ((y + 0.1 * ay) / 10.0) ** 2 + ((z - 20) / 25) ** 2
        < 1
    )
    img[glands] = 520.0 * (1.0 + 0.05 * tex[glands])  # submandibular-gland-like, upper neck
    # carotid artery and jugular vein on each side: flow voids along the nodal chain
    vx, vy = np.abs(x) - (0.4 * ax - 0.1 * z), y - (0.05 * ay + 0.06 * z)
    vessels = body & (((vx + 4.0) ** 2 + vy**2 < 3.5**2) | ((vx - 5.0) ** 2 + vy**2 < 4.5**2))
    img[vessels] = 40.0
    spine_y = 0.45 * ay + 3.0 * np.sin(z / 40.0)
    spine = body & (x**2 + (y - spine_y) ** 2 < 13.0**2)
    disc = np.cos(2.0 * np.pi * z / 20.0) > 0.55  # vertebral bodies and discs alternate
    img[spine] = np.where(disc[spine], 560.0, 190.0)
    cord = spine & (x**2 + (y - spine_y) ** 2 < 5.0**2)
    img[cord] = 680.0
    air_x = 6.0 * np.sin(z / 25.0)
    air_y = -0.2 * ay + 4.0 * np.cos(z / 30.0)
    air_r = 1.0 + 0.3 * np.sin(z / 18.0)
    airway = body & (((x - air_x) / (9.0 * air_r)) ** 2 + ((y - air_y) / 6.5) ** 2 < 1.0)
    img[airway] = 8.0
    label = np.zeros(len(pts), np.uint8)
    for t in patient.tumours:
        pre_in = t.inside(pts)
        if phase == "pre":
            inside = pre_in
        else:
            inside = t.inside(pts, t.mid_factor ** (1.0 / 3.0))
            oedema = pre_in & ~inside
            img[oedema] = 0.5 * img[oedema] + 0.5 * 430.0
        base = 560.0 if t.label == 1 else 610.0
        img[inside] = base * (1.0 + 0.12 * tex[inside])
        label[inside] = t.label
    return img, label


def grid_points(grid: Grid) -> np.ndarray:
    """Physical (x, y, z) mm of every voxel centre, in numpy (z, y, x) raveled order."""
    nz, ny, nx = grid.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(np.float64)
    direction = np.asarray(grid.direction).reshape(3, 3)
    return (idx * grid.spacing) @ direction.T + grid.origin


def _finish(rng: np.random.Generator, img: np.ndarray, grid: Grid, scale: float) -> np.ndarray:
    """Partial-volume blur, smooth bias field, Rician noise, intensity scale."""
    vol = ndimage.gaussian_filter(img.reshape(grid.shape), sigma=0.7)
    coarse = rng.normal(0.0, 0.12, (3, 4, 4))
    bias = np.exp(ndimage.zoom(coarse, np.array(grid.shape) / coarse.shape, order=1))
    vol = vol * bias[: grid.shape[0], : grid.shape[1], : grid.shape[2]]
    sigma = 18.0
    n1 = rng.normal(0.0, sigma, vol.shape)
    n2 = rng.normal(0.0, sigma, vol.shape)
    vol = np.sqrt((vol + n1) ** 2 + n2**2) * scale
    return vol.astype(np.float32)


def _grid(size, spacing, origin) -> Grid:
    return Grid(
        tuple(int(v) for v in size),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in origin),
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )


def synth_patient(
    out: Path,
    pid: str,
    seed: int,
    size: tuple[int, int, int] = DEFAULT_SIZE,
    spacing: tuple[float, float, float] | None = None,
) -> dict:
    """Write one synthetic patient in the HNTS-MRG layout; returns its truth summary."""
    size, spacing = check_grid(size, spacing)
    rng = np.random.default_rng(case_seed(seed, pid, "synth"))
    if spacing is None:
        spacing = tuple(round(f / n, 4) for f, n in zip(FIELD_OF_VIEW_MM, size, strict=True))
    fov = tuple(n * s for n, s in zip(size, spacing, strict=True))
    patient = make_patient(rng, fov)
    pre = _grid(size, spacing, [-(n - 1) * s / 2 for n, s in zip(size, spacing, strict=True)])
    mid_size = [max(8, int(round(n * rng.uniform(0.92, 1.02)))) for n in size]
    mid_spacing = [s * rng.uniform(0.96, 1.06) for s in spacing]
    mid_origin = [
        -(n - 1) * s / 2 + rng.uniform(-4, 4) for n, s in zip(mid_size, mid_spacing, strict=True)
    ]
    mid = _grid(mid_size, mid_spacing, mid_origin)

    pre_pts = grid_points(pre)
    pre_img, pre_lab = render(patient, pre_pts, "pre")
    del pre_pts
    pre_t2 = _finish(rng, pre_img, pre, 1.0)
    pre_mask = pre_lab.reshape(pre.shape)

    mid_pts = grid_points(mid)
    mapped = mid_to_pre(patient, mid_pts)
    del mid_pts
    mid_img, mid_lab = render(patient, mapped, "mid")
    mid_t2 = _finish(rng, mid_img, mid, patient.intensity_scale)
    mid_mask = mid_lab.reshape(mid.shape)

    # exact registration: pre-RT image/mask sampled at T(mid grid)
    direction = np.asarray(pre.direction).reshape(3, 3)
    idx = ((mapped - pre.origin) @ direction / pre.spacing)[:, ::-1].T
    reg_t2 = ndimage.map_coordinates(pre_t2, idx, order=3, mode="constant", cval=0.0)
    reg_mask = ndimage.map_coordinates(pre_mask, idx, order=0, mode="constant", cval=0)

    files = {
        "preRT_T2": (pre_t2, pre),
        "preRT_mask": (pre_mask, pre),
        "midRT_T2": (mid_t2, mid),
        "midRT_mask": (mid_mask, mid),
        "preRT_T2_registered": (np.maximum(reg_t2, 0).astype(np.float32).reshape(mid.shape), mid),
        "preRT_mask_registered": (reg_mask.astype(np.uint8).reshape(mid.shape), mid),
    }
    for key, (arr, grid) in files.items():
        write_image(from_array(arr, grid), expected_path(out, pid, key))

    def ml(mask: np.ndarray, grid: Grid, label: int) -> float:
        return float((mask == label).sum() * grid.voxel_volume / 1000.0)

    return {
        "id": pid,
        "volumes_ml": {
            name: {
                "preRT": ml(pre_mask, pre, lab),
                "midRT": ml(mid_mask, mid, lab),
                "preRT_registered": ml(files["preRT_mask_registered"][0], mid, lab),
            }
            for lab, name in ((1, "GTVp"), (2, "GTVn"))
        },
        "tumours": [
            {
                "label": t.label,
                "centre_xyz_mm": t.centre.tolist(),
                "radius_mm": t.radius,
                "mid_volume_factor": t.mid_factor,
            }
            for t in patient.tumours
        ],
        "rigid": {
            "rotation": patient.rotation.tolist(),
            "translation_mm": patient.translation.tolist(),
        },
        "intensity_scale": patient.intensity_scale,
        "preRT_grid": pre.to_dict(),
        "midRT_grid": mid.to_dict(),
    }


def _numbers(text: str) -> list[str]:
    """'64x64x16', '64,64,16' or '64 x 64 x 16' -> ['64', '64', '16']."""
    return [v.strip() for v in text.lower().replace(",", "x").split("x")]


def _shown(values) -> str:
    """(0.5, 0.5, 2.0) -> '0.5x0.5x2', for messages."""
    try:
        return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
    except TypeError:
        return repr(values)


def check_size(size, what: str | None = None) -> tuple[int, int, int]:
    """The pre-RT grid size (x, y, z) as ints: each within SIZE_RANGE, at most MAX_VOXELS in
    all, else an InputError starting with `what` (default: '--size X x Y x Z')."""
    what = what or f"--size {_shown(size)}"
    lo, hi = SIZE_RANGE
    try:
        parts = tuple(int(v) for v in size)
        whole = all(float(v) == int(v) for v in size)
    except (TypeError, ValueError, OverflowError):
        parts, whole = (), False
    if len(parts) != 3 or not whole or not all(lo <= v <= hi for v in parts):
        raise InputError(f"{what}: expected X x Y x Z voxels, each {lo}-{hi} (e.g. 128x128x32)")
    if math.prod(parts) > MAX_VOXELS:
        raise InputError(
            f"{what}: {math.prod(parts)} voxels, at most {MAX_VOXELS} (e.g. 1024x1024x128)"
        )
    return parts  # type: ignore[return-value]


def check_spacing(spacing, what: str | None = None) -> tuple[float, float, float]:
    """The voxel spacing (x, y, z) in mm as floats: finite, each within SPACING_RANGE_MM,
    else an InputError starting with `what` (default: '--spacing X x Y x Z')."""
    what = what or f"--spacing {_shown(spacing)}"
    lo, hi = SPACING_RANGE_MM
    try:
        parts = tuple(float(v) for v in spacing)
    except (TypeError, ValueError, OverflowError):
        parts = ()
    if len(parts) != 3 or not all(math.isfinite(v) and lo <= v <= hi for v in parts):
        raise InputError(f"{what}: expected X x Y x Z mm, each {lo:g}-{hi:g} (e.g. 0.5x0.5x2)")
    return parts  # type: ignore[return-value]


def check_grid(size, spacing) -> tuple[tuple[int, int, int], tuple[float, float, float] | None]:
    """Checked (size, spacing), see check_size and check_spacing; with a spacing, the field of
    view (size x spacing) is at most MAX_FOV_MM per axis."""
    size = check_size(size)
    if spacing is None:
        return size, None
    spacing = check_spacing(spacing)
    fov = [n * s for n, s in zip(size, spacing, strict=True)]
    if max(fov) > MAX_FOV_MM:
        raise InputError(
            f"--size {_shown(size)} with --spacing {_shown(spacing)}: field of view "
            f"{'x'.join(f'{v:g}' for v in fov)} mm, at most {MAX_FOV_MM:g} mm per axis"
        )
    return size, spacing


def _parsed(text: str, cast: type) -> list:
    """The numbers of 'AxBxC' (or 'A,B,C'); [] when one is not a `cast` (the check says so)."""
    try:
        return [cast(v) for v in _numbers(text)]
    except ValueError:
        return []


def parse_size(text: str) -> tuple[int, int, int]:
    """'512x512x75' (or '512,512,75') -> (512, 512, 75), in (x, y, z) order."""
    return check_size(_parsed(text, int), f"--size {text!r}")


def parse_spacing(text: str) -> tuple[float, float, float]:
    """'0.5x0.5x2' (or '0.5,0.5,2') -> (0.5, 0.5, 2.0) mm, in (x, y, z) order."""
    return check_spacing(_parsed(text, float), f"--spacing {text!r}")


def check_synth_target(out: Path, what: str = "synth") -> None:
    """Phantoms go only into a new or empty folder or an earlier synthetic cohort (one with
    synth.json): never over a real cohort's images, `--force` or not."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder ({what})")
    if not out.is_dir() or (out / "synth.json").is_file():
        return
    if any(not p.name.startswith(".") for p in out.iterdir()):
        raise InputError(
            f"{out}: not empty and not a synthetic cohort (no synth.json); "
            f"refusing to write phantoms over its files ({what})"
        )


def synth_cohort(
    out: str | Path,
    patients: int = 4,
    seed: int = 0,
    size: tuple[int, int, int] = DEFAULT_SIZE,
    spacing: tuple[float, float, float] | None = None,
    force: bool = False,
) -> list[dict]:
    """Write `patients` synthetic patients (ids 1..N) under `out`; returns their truths.

    A patient whose files all exist is skipped unless `force`; its truth is recomputed
    only when needed, so the summary file `synth.json` is always complete.
    """
    out = Path(out)
    if patients < 1:
        raise InputError(f"--patients {patients}: must be at least 1")
    size, spacing = check_grid(size, spacing)
    check_synth_target(out)
    make_folder(out)
    # JSON types (lists, not tuples), so the params compare equal to those read back
    params = {
        "seed": int(seed),
        "size_xyz": list(size),
        "spacing_xyz_mm": None if spacing is None else list(spacing),
    }
    summary_path = out / "synth.json"
    previous: dict[str, dict] = {}
    drawn_before: list[str] = []  # every patient the last run listed, whatever its params
    if summary_path.is_file():
        old = read_json(summary_path, "synth summary")
        listed = old.get("patients", []) if isinstance(old, dict) else []
        drawn_before = [str(p["id"]) for p in listed if isinstance(p, dict) and "id" in p]
        if old.get("params") == params and not force:
            previous = {p["id"]: p for p in listed}

    def summary(truths: list[dict], complete: bool) -> None:
        write_json(
            summary_path,
            {
                "stage": "synth",
                "params": params,
                "versions": versions(),
                "patients": truths,
                "complete": complete,
                "note": "synthetic phantoms, not patient data",
            },
        )

    # written first, so a killed run leaves a folder that is recognisably synthetic (and
    # resumable: the patients it lists are kept, the others drawn again)
    summary([previous[p] for p in map(str, range(1, patients + 1)) if p in previous], False)
    truths = []
    for n in progress(range(1, patients + 1), "synth"):
        pid = str(n)
        done = pid in previous and all(expected_path(out, pid, k).is_file() for k in FILES)
        if done:
            truths.append(previous[pid])
            continue
        log.debug("synth patient %s", pid)
        truths.append(synth_patient(out, pid, seed, size, spacing))
        summary(truths, False)
    _remove_patients(out, [p for p in drawn_before if p not in {t["id"] for t in truths}])
    summary(truths, True)
    return truths


def _remove_patients(out: Path, pids: Sequence[str]) -> None:
    """Remove the files of phantoms an earlier run drew that this one does not (fewer
    patients): left there, every later stage would take them for patients of this cohort.
    Only the files synth writes go; a folder is removed only when that leaves it empty."""
    for pid in pids:
        for key in FILES:
            expected_path(out, pid, key).unlink(missing_ok=True)
        for folder in (out / pid / "midRT", out / pid / "preRT", out / pid):
            with contextlib.suppress(OSError):  # not empty: the user's files stay
                folder.rmdir()
        log.info("synth: removed phantom %s (the cohort now has fewer patients)", pid)

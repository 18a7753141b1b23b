"""Deformable registration of the pre-RT T2 and mask onto the mid-RT grid (stage `register`).

Moving = pre-RT T2, fixed = mid-RT T2. As the HNTS-MRG 2024 organizers did: a SimpleITK
Euler3D rigid registration (geometry-centred start, Mattes MI with 50 bins, gradient
descent), then an elastix B-spline registration (Par0023-like: Mattes MI + bending energy
penalty). Unlike the organizers' script, the rigid transform is handed to elastix as its
initial transform, so the pre-RT image is interpolated once (B-spline order 3) and the
mask once (nearest neighbour; labels are copied, never blended).

Presets are elastix parameter files shipped in `hntseg/presets/<name>.txt` ("challenge",
"fast"); users may pass their own files instead. `method="identity"` resamples without
deformation (a baseline) and `method="provided"` adopts the organizers' `_registered` files.

Outputs per case (OUT/<id>/...): midRT/<id>_preRT_T2_registered.nii.gz (float32),
midRT/<id>_preRT_mask_registered.nii.gz (uint8), elastix/TransformParameters.{0,1,..}.txt
(0 = the rigid Euler transform, the last one = the full chain), elastix/elastix.log and
register.record.json (parameters, versions, seed, runtime, similarity before/after, Dice
to the mid-RT mask when there is one). They are written only once the case is computed
and checked, the record last; a case that fails leaves none of them behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import SimpleITK as sitk

from hntseg.cohort import SUFFIXES, discover, expected_path, shard
from hntseg.errors import InputError, StageError, one_line
from hntseg.io import (
    LABEL_NAMES,
    TMP_PREFIX,
    Grid,
    array,
    check_not_constant,
    check_out_folder,
    check_same_grid,
    from_array,
    read_image,
    read_json,
    read_mask,
    resample_to,
    write_image,
    write_json,
    write_text,
)
from hntseg.log import log, progress
from hntseg.machine import available_cpus
from hntseg.records import case_seed, file_digest, is_done, write_record

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
PRESETS = ("fast", "challenge")
METHODS = ("elastix", "provided", "identity")
RECORD_NAME = "register.record.json"
ParameterMap = dict[str, list[str]]


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class RigidSettings:
    """SimpleITK Euler3D rigid stage (Mattes MI, regular gradient descent)."""

    iterations: int = 100
    learning_rate: float = 1.0
    bins: int = 50
    min_size_xy: int = 0  # shrink the images by 2 while their in-plane size stays >= this
    sampling: float | None = None  # fraction of voxels (random, seeded); None = all


RIGID = {
    # the organizers': all voxels, one level, 100 iterations, learning rate 1.0
    "challenge": RigidSettings(),
    # same optimiser on a quarter of the voxels, shrunk by 2 from 256 voxels in-plane up
    "fast": RigidSettings(min_size_xy=128, sampling=0.25),
}


def preset_path(name: str) -> Path:
    """The elastix parameter file of a named preset."""
    if name not in PRESETS:
        raise InputError(f"--preset {name!r}: unknown; choose one of {', '.join(PRESETS)}")
    return PRESETS_DIR / f"{name}.txt"


_ENTRY = re.compile(r"\(([^()]*)\)")
_TOKEN = re.compile(r'"([^"]*)"|(\S+)')


def read_parameter_file(path: str | Path) -> ParameterMap:
    """Parse an elastix parameter file ('(Key value ...)' lines, '//' comments)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: elastix parameter file not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read elastix parameter file ({exc})") from None
    lines = []
    for line in text.splitlines():
        # drop '//' comments that are not inside a quoted string
        out, quoted = [], False
        for i, ch in enumerate(line):
            if ch == '"':
                quoted = not quoted
            if not quoted and line.startswith("//", i):
                break
            out.append(ch)
        lines.append("".join(out))
    params: ParameterMap = {}
    for number, line in enumerate(lines, 1):
        # elastix reads one "(Name value ...)" per line; anything else it refuses, and a
        # lenient reading here would drop the entry and let elastix use its default
        entry = line.strip()
        if not entry:
            continue
        found = _ENTRY.fullmatch(entry)
        tokens = [
            m.group(1) if m.group(1) is not None else m.group(2)
            for m in _TOKEN.finditer(found.group(1) if found else "")
        ]
        if not found or entry.count('"') % 2 or len(tokens) < 2 or '"' in "".join(tokens):
            raise InputError(
                f"{path}:{number}: not an elastix entry {entry[:60]!r}; expected "
                '(Name value ...), strings in "quotes"'
            )
        params[tokens[0]] = tokens[1:]
    if "Transform" not in params:
        raise InputError(f"{path}: not an elastix parameter file (no (Transform ...) entry)")
    return params


def _format_value(value: str) -> str:
    try:
        float(value)
        return value
    except ValueError:
        return f'"{value}"'


def format_parameter_map(params: Mapping[str, Sequence[str]]) -> str:
    """Elastix text form of a parameter map (numbers bare, other values quoted)."""
    lines = [
        f"({key} {' '.join(_format_value(str(v)) for v in values)})"
        for key, values in params.items()
    ]
    return "\n".join(lines) + "\n"


def parameter_maps(
    preset: str = "fast", params: Sequence[str | Path] | None = None
) -> list[ParameterMap]:
    """The elastix maps to run: the user's files in order, else the preset's file."""
    if params:
        return [read_parameter_file(p) for p in params]
    return [read_parameter_file(preset_path(preset))]


def _case_maps(maps: Sequence[ParameterMap], seed: int) -> list[ParameterMap]:
    """Per-case copies: the seed, no result image from elastix (transformix makes it)."""
    out = []
    for m in maps:
        m = {k: list(v) for k, v in m.items()}
        m["RandomSeed"] = [str(seed)]
        m["WriteResultImage"] = ["false"]
        out.append(m)
    return out


def _fmt(values: Iterable[float]) -> list[str]:
    return [repr(float(v)) for v in values]


def euler_map(rigid: sitk.Euler3DTransform, fixed: Grid) -> ParameterMap:
    """The rigid transform as an elastix EulerTransform parameter map (same convention)."""
    return {
        "Transform": ["EulerTransform"],
        "NumberOfParameters": ["6"],
        "TransformParameters": _fmt(rigid.GetParameters()),
        "CenterOfRotationPoint": _fmt(rigid.GetCenter()),
        "ComputeZYX": ["true" if rigid.GetComputeZYX() else "false"],
        "InitialTransformParameterFileName": ["NoInitialTransform"],
        "HowToCombineTransforms": ["Compose"],
        "FixedImageDimension": ["3"],
        "MovingImageDimension": ["3"],
        "FixedInternalImagePixelType": ["float"],
        "MovingInternalImagePixelType": ["float"],
        "Size": [str(s) for s in fixed.size],
        "Index": ["0", "0", "0"],
        "Spacing": _fmt(fixed.spacing),
        "Origin": _fmt(fixed.origin),
        "Direction": _fmt(fixed.direction),
        "UseDirectionCosines": ["true"],
        "ResampleInterpolator": ["FinalBSplineInterpolator"],
        "FinalBSplineInterpolationOrder": ["3"],
        "Resampler": ["DefaultResampler"],
        "DefaultPixelValue": ["0"],
        "ResultImagePixelType": ["float"],
        "ResultImageFormat": ["nii"],
    }


# --------------------------------------------------------------------------- registration


def rigid_register(
    fixed: sitk.Image,
    moving: sitk.Image,
    settings: RigidSettings = RIGID["challenge"],
    seed: int = 0,
    threads: int | None = None,
) -> sitk.Euler3DTransform:
    """Euler3D transform (fixed physical point -> moving physical point), Mattes MI, its
    parameters snapped to steps so that repeated runs agree (see ROTATION_STEP_RAD)."""
    result = _rigid_fit(fixed, moving, settings, seed, threads)

    def one_thread() -> Sequence[float]:
        log.info("rigid stage: near a snapping step's edge; recomputed with one thread")
        nonlocal result
        result = _rigid_fit(fixed, moving, settings, seed, 1)
        return result.GetParameters()

    snapped = snap_reproducibly(result.GetParameters(), one_thread if threads != 1 else None)
    result.SetParameters(snapped)  # on the one-thread result when it was recomputed
    return result


def _rigid_fit(
    fixed: sitk.Image,
    moving: sitk.Image,
    settings: RigidSettings,
    seed: int,
    threads: int | None,
) -> sitk.Euler3DTransform:
    """The optimised Euler3D transform, unsnapped."""
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)
    shrink = 1
    while settings.min_size_xy and min(fixed.GetSize()[:2]) // (2 * shrink) >= settings.min_size_xy:
        shrink *= 2
    init = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.bins)
    if settings.sampling is not None:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(settings.sampling, seed)
    reg.SetOptimizerAsGradientDescent(
        learningRate=settings.learning_rate,
        numberOfIterations=settings.iterations,
        convergenceMinimumValue=1e-6,
        convergenceWindowSize=10,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInterpolator(sitk.sitkLinear)
    if shrink > 1:
        reg.SetShrinkFactorsPerLevel([shrink])
        reg.SetSmoothingSigmasPerLevel([shrink / 2.0])
    reg.SetInitialTransform(init, inPlace=True)
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if threads:
        reg.SetNumberOfThreads(threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        reg.Execute(fixed, moving)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)
    return sitk.Euler3DTransform(init)


# SimpleITK's rigid stage is not bit-reproducible with more than one thread (Mattes MI's
# sums depend on the threads' timing); 1-thread runs agree. Measured spread of five
# 2-thread runs: about 1e-11 rad and 3e-9 mm at 512x512x75, up to 1.1e-7 rad and 4.5e-6 mm
# on 96x96x32 phantoms at 1.5 mm. elastix amplifies any change of its start (at
# 512x512x75 a 1e-9 mm change moved a 2 mL node's Dice by 0.045). So the parameters are
# snapped to steps (15 um at 150 mm from the centre, 10 um: far below a voxel), and a
# multi-threaded result within a margin of a step's edge (5-10x the largest spread
# measured) is recomputed with one thread: two runs whose results differ by less than the
# margin then give elastix the same start (snap_reproducibly). About 6 % of multi-threaded
# cases pay that second, one-thread rigid run.
ROTATION_STEP_RAD = 1e-4
TRANSLATION_STEP_MM = 1e-2
ROTATION_MARGIN_RAD = 5e-7
TRANSLATION_MARGIN_MM = 5e-5
_STEPS = (ROTATION_STEP_RAD,) * 3 + (TRANSLATION_STEP_MM,) * 3


def snap_rigid(parameters: Sequence[float]) -> tuple[float, ...]:
    """Euler3D parameters (3 angles in rad, 3 shifts in mm) on a fixed grid of steps."""
    return tuple(round(round(v / q) * q, 12) for v, q in zip(parameters, _STEPS, strict=True))


def near_step_edge(parameters: Sequence[float]) -> bool:
    """Whether a parameter lies within its margin of the edge between two snapping steps."""
    margins = (ROTATION_MARGIN_RAD,) * 3 + (TRANSLATION_MARGIN_MM,) * 3
    return any(
        abs((v / q) % 1.0 - 0.5) * q < m
        for v, q, m in zip(parameters, _STEPS, margins, strict=True)
    )


def snap_reproducibly(
    parameters: Sequence[float], one_thread: Callable[[], Sequence[float]] | None
) -> tuple[float, ...]:
    """Snapped parameters of a run, the same for every run whose parameters lie within the
    margins of the one-thread run's: near a step's edge the one-thread run's are snapped
    (`one_thread` computes them; None: these are one-thread parameters already); elsewhere
    this run and the one-thread run lie on the same side of every edge."""
    if one_thread is not None and near_step_edge(parameters):
        parameters = one_thread()
    return snap_rigid(parameters)


def _to_itk(image: sitk.Image):
    """SimpleITK float image -> ITK image with the same geometry (numpy copy)."""
    import itk

    out = itk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(image), np.float32))
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(3, 3)))
    return out


def _parameter_object(maps: Sequence[Mapping[str, Sequence[str]]]):
    import itk

    po = itk.ParameterObject.New()
    for m in maps:
        po.AddParameterMap({k: tuple(str(x) for x in v) for k, v in m.items()})
    return po


@contextlib.contextmanager
def itk_threads(threads: int | None) -> Iterator[None]:
    """ITK's process-wide thread counts set to `threads` inside (elastix and transformix read
    them), and put back on exit: a notebook's own ITK work keeps its settings."""
    import itk

    mt = itk.MultiThreaderBase
    saved = (mt.GetGlobalMaximumNumberOfThreads(), mt.GetGlobalDefaultNumberOfThreads())
    if threads:
        mt.SetGlobalMaximumNumberOfThreads(max(threads, available_cpus()))
        mt.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        mt.SetGlobalMaximumNumberOfThreads(saved[0])
        mt.SetGlobalDefaultNumberOfThreads(saved[1])


def elastix_register(
    fixed: sitk.Image,
    moving: sitk.Image,
    maps: Sequence[ParameterMap],
    initial: ParameterMap | None,
    threads: int | None = None,
    log_dir: Path | None = None,
) -> list[ParameterMap]:
    """Run elastix; returns the transform maps of the whole chain (initial first)."""
    import itk

    fi, mi = _to_itk(fixed), _to_itk(moving)
    reg = itk.ElastixRegistrationMethod[type(fi), type(mi)].New(fixed_image=fi, moving_image=mi)
    reg.SetParameterObject(_parameter_object(maps))
    if initial is not None:
        reg.SetInitialTransformParameterObject(_parameter_object([initial]))
    reg.SetLogToConsole(False)
    if log_dir is not None:
        reg.SetOutputDirectory(str(log_dir))
        reg.SetLogFileName("elastix.log")
        reg.SetLogToFile(True)
    with itk_threads(threads):
        reg.UpdateLargestPossibleRegion()
    tpo = reg.GetTransformParameterObject()
    return [
        {k: list(v) for k, v in dict(tpo.GetParameterMap(i)).items()}
        for i in range(tpo.GetNumberOfParameterMaps())
    ]


def transformix(
    image: sitk.Image, chain: Sequence[ParameterMap], fixed: Grid, nearest: bool
) -> sitk.Image:
    """Apply a transform chain to `image` with transformix; the result is on `fixed` exactly.

    nearest: nearest-neighbour (labels, returned uint8), else B-spline order 3 (float32).
    """
    import itk

    maps = [{k: list(v) for k, v in m.items()} for m in chain]
    for m in maps:
        if nearest:
            m["ResampleInterpolator"] = ["FinalNearestNeighborInterpolator"]
        else:
            m["ResampleInterpolator"] = ["FinalBSplineInterpolator"]
            m["FinalBSplineInterpolationOrder"] = ["3"]
        m["DefaultPixelValue"] = ["0"]
        m["ResultImagePixelType"] = ["float"]
    moving = _to_itk(sitk.Cast(image, sitk.sitkFloat32))
    out = itk.GetArrayFromImage(itk.transformix_filter(moving, _parameter_object(maps)))
    if out.shape != fixed.shape:
        raise RuntimeError(f"transformix output shape {out.shape} != mid-RT grid {fixed.shape}")
    if nearest:
        return from_array(np.rint(out).astype(np.uint8), fixed)
    return from_array(out.astype(np.float32), fixed)


# --------------------------------------------------------------------------- quality


def similarity(fixed: sitk.Image, warped: sitk.Image, bins: int = 64) -> dict[str, float]:
    """NCC and normalised mutual information (Studholme, 1..2) of two images on one grid,
    over the voxels the warped image covers (non-zero: outside its field of view is 0)."""
    a = array(fixed).astype(np.float64).ravel()
    b = array(warped).astype(np.float64).ravel()
    keep = b != 0
    a, b = a[keep], b[keep]
    if a.size < 2:
        return {"ncc": float("nan"), "nmi": float("nan"), "voxels": int(a.size)}
    da, db = a - a.mean(), b - b.mean()
    denom = np.sqrt((da * da).sum() * (db * db).sum())
    ncc = float((da * db).sum() / denom) if denom > 0 else 0.0

    def binned(v: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(v, [0.5, 99.5])
        scale = (bins - 1) / (hi - lo) if hi > lo else 0.0
        return np.clip(((v - lo) * scale).astype(np.int64), 0, bins - 1)

    joint = np.bincount(binned(a) * bins + binned(b), minlength=bins * bins).astype(np.float64)
    p = joint / joint.sum()
    pa, pb = p.reshape(bins, bins).sum(1), p.reshape(bins, bins).sum(0)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    hj = entropy(p)
    nmi = (entropy(pa) + entropy(pb)) / hj if hj > 0 else 1.0
    return {"ncc": round(ncc, 6), "nmi": round(float(nmi), 6), "voxels": int(a.size)}


def dice_per_label(a: sitk.Image, b: sitk.Image) -> dict[str, float | None]:
    """Dice per structure (None when absent in both)."""
    x, y = array(a), array(b)
    out: dict[str, float | None] = {}
    for label, name in LABEL_NAMES.items():
        xa, ya = x == label, y == label
        total = int(xa.sum()) + int(ya.sum())
        out[name] = round(2.0 * int((xa & ya).sum()) / total, 6) if total else None
    return out


# --------------------------------------------------------------------------- options


def check_options(
    method: str = "elastix",
    preset: str = "fast",
    params: Sequence[str | Path] | None = None,
    threads: int | None = None,
    workers: int = 1,
    parse: bool = True,
) -> list[ParameterMap] | None:
    """Check the run's options once, before any case; with `parse`, the elastix maps of
    `params` (or of the preset) when the method is elastix, else None."""
    if method not in METHODS:
        raise InputError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if preset not in PRESETS:
        raise InputError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"--workers {workers}: must be at least 1")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise InputError(f"--threads {threads}: must be at least 1")
    if params and method != "elastix":
        raise InputError(f"--params applies to --method elastix only (not {method})")
    return parameter_maps(preset, params) if parse and method == "elastix" else None


def check_case_id(case_id: str) -> str:
    """The id names the folder OUT/<id>: one plain path component."""
    text = str(case_id)
    if not text.strip() or text in (".", "..") or any(c in text for c in "/\\\0"):
        raise InputError(
            f"--id {case_id!r}: must be a plain name (not empty, '.' or '..'; no '/' or '\\')"
        )
    return text


def check_out_not_cohort(cohort: str | Path, out: str | Path) -> None:
    """OUT must not be the cohort itself: it would replace the organizers' _registered files."""
    cohort, out = Path(cohort), Path(out)
    same = cohort.resolve() == out.resolve()
    if not same and cohort.exists() and out.exists():
        same = os.path.samefile(cohort, out)
    if same:
        raise InputError(
            f"--out {out}: is the cohort folder itself; registering there would replace "
            "its <id>_preRT_*_registered files; choose another folder"
        )


# --------------------------------------------------------------------------- one case


@dataclass
class CaseResult:
    """Outcome of one case: status ok / skipped / failed, and its quality figures."""

    id: str
    status: str
    error: str | None = None
    runtime_s: float | None = None
    similarity: dict[str, Any] | None = None
    dice_to_midRT: dict[str, Any] | None = None
    record: str | None = None


def case_outputs(out: str | Path, case_id: str) -> dict[str, Path]:
    """Where a case's registered image and mask, elastix files and record go."""
    root = Path(out) / case_id
    return {
        "t2": expected_path(out, case_id, "preRT_T2_registered"),
        "mask": expected_path(out, case_id, "preRT_mask_registered"),
        "elastix": root / "elastix",
        "record": root / RECORD_NAME,
        "failed_log": root / "elastix.failed.log",  # kept from a failed run, for debugging
    }


MIN_VOXELS = 4  # per axis: elastix's and SimpleITK's smoothing pyramids need at least 4


def _check_inputs(
    pre_t2: Path, pre_mask: Path, mid_t2: Path, method: str = "elastix"
) -> tuple[sitk.Image, ...]:
    fixed = read_image(mid_t2, "mid-RT T2")
    moving = read_image(pre_t2, "pre-RT T2")
    for image, path, what in ((fixed, mid_t2, "mid-RT T2"), (moving, pre_t2, "pre-RT T2")):
        check_not_constant(image, path, what)
        if method == "elastix" and min(image.GetSize()) < MIN_VOXELS:
            raise InputError(
                f"{path}: {what} has size {image.GetSize()}; registration needs at least "
                f"{MIN_VOXELS} voxels along every axis"
            )
    mask = read_mask(pre_mask, "pre-RT mask")
    check_same_grid(moving, mask, pre_mask, pre_t2)
    if not array(mask).any():
        raise InputError(f"{pre_mask}: pre-RT mask is empty (no label 1 or 2)")
    return fixed, moving, mask


def _case_params(
    method: str, preset: str, maps: Sequence[ParameterMap] | None, seed: int
) -> dict[str, Any]:
    if method == "elastix":
        return {
            "method": method,
            "preset": preset,
            "rigid": asdict(RIGID.get(preset, RIGID["fast"])),
            "elastix": list(maps or []),
            "seed": seed,
        }
    return {"method": method}


def _read_mid_mask(
    mid_mask: str | Path | None, fixed: sitk.Image, mid_t2: str | Path
) -> sitk.Image | None:
    """The mid-RT mask (Dice check only), checked: labels and the mid-RT T2's grid."""
    if mid_mask is None:
        return None
    gt = read_mask(mid_mask, "mid-RT mask")
    check_same_grid(fixed, gt, mid_mask, mid_t2)
    return from_array(array(gt), Grid.of(fixed))


def _check_outputs_apart(
    inputs: Mapping[str, Path], paths: Mapping[str, Path], out: str | Path, case_id: str
) -> None:
    """No output may replace an input, nor land in the folder the mid-RT T2 comes from."""
    outputs = {paths[k].resolve() for k in ("t2", "mask", "record")}
    elastix = paths["elastix"].resolve()
    for key, path in inputs.items():
        real = path.resolve()
        if real in outputs or real.parent == elastix:
            raise InputError(f"{path}: {key} is also an output of case {case_id} in {out}")
    if "midRT_T2" in inputs and inputs["midRT_T2"].resolve().parent == paths["t2"].parent.resolve():
        raise InputError(
            f"--out {out}: is the cohort {inputs['midRT_T2']} comes from; registering there "
            f"would replace its {case_id}_preRT_*_registered files; choose another folder"
        )
    # any cohort (this case's or not): one holding patient <case_id>'s mid-RT T2 keeps the
    # organizers' registered files beside it, which these outputs would replace
    theirs = [paths["t2"].parent / f"{case_id}_midRT_T2{suffix}" for suffix in SUFFIXES]
    if any(p.is_file() for p in theirs):
        raise InputError(
            f"--out {out}: is a cohort (patient {case_id} has a mid-RT T2 there); registering "
            f"there would replace its {case_id}_preRT_*_registered files; choose another folder"
        )


def _elastix_files(folder: Path) -> list[Path]:
    """The files elastix writes into a case's elastix folder (none when it is absent)."""
    if not folder.is_dir():
        return []
    return [*sorted(folder.glob("TransformParameters.*.txt")), folder / "elastix.log"]


def _remove_outputs(paths: Mapping[str, Path], strict: bool = True) -> None:
    """Remove a case's outputs, the record first (so nothing vouches for a partial set).

    strict=False (cleaning up after a failure): log what cannot be removed, raise nothing,
    and drop the case's folders when they are left empty.
    """
    files = [paths["record"], paths["t2"], paths["mask"]]
    if strict:
        files.append(paths["failed_log"])  # a new run: an earlier failure's log is stale
    folder = paths["elastix"]
    files += _elastix_files(folder)
    for path in files:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            if strict:
                raise InputError(f"{path}: cannot remove the earlier output ({exc})") from None
            log.warning(f"{path}: could not remove the output of a failed case ({exc})")
    if not strict:
        for empty in (folder, paths["t2"].parent, paths["record"].parent):
            try:
                empty.rmdir()
            except OSError:
                pass  # not empty (other files) or absent


def _remove_unrecorded(task: Mapping[str, Any]) -> None:
    """After a case's worker died or was stopped: remove its registered image and mask
    only when no record vouches for them (a finished case keeps its outputs) and they are
    not one of the case's inputs (e.g. through a symlink); also its elastix files and what
    its atomic writes had begun."""
    paths = case_outputs(task["out"], task["case_id"])
    if paths["record"].is_file():
        return
    keys = ("pre_t2", "pre_mask", "mid_t2", "mid_mask", "provided_t2", "provided_mask")
    inputs = {Path(task[k]).resolve() for k in keys if task.get(k)}
    for key in ("t2", "mask"):
        path = paths[key]
        if path.is_file() and path.resolve() not in inputs:
            path.unlink()
    folders = (paths["elastix"], paths["t2"].parent, paths["record"].parent)
    for folder in folders:
        leftovers = sorted(folder.glob(TMP_PREFIX + "*")) if folder.is_dir() else []
        if folder == paths["elastix"]:
            leftovers += _elastix_files(folder)
        for path in leftovers:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when left empty


class _CasePlan(NamedTuple):
    """A case's checked id, inputs, output paths, elastix maps and record parameters."""

    case_id: str
    inputs: dict[str, Path]
    paths: dict[str, Path]
    maps: list[ParameterMap] | None
    params: dict[str, Any]


def _plan_case(
    pre_t2: str | Path | None,
    pre_mask: str | Path | None,
    mid_t2: str | Path,
    out: str | Path,
    case_id: str,
    method: str = "elastix",
    preset: str = "fast",
    params: Sequence[str | Path] | None = None,
    seed: int = 0,
    threads: int | None = None,
    mid_mask: str | Path | None = None,
    provided_t2: str | Path | None = None,
    provided_mask: str | Path | None = None,
    maps: Sequence[ParameterMap] | None = None,
) -> _CasePlan:
    """register_case's checks, up to whether the case is done (InputError when bad); shared
    with register_cohort, which skips done cases before it starts a pool."""
    case_id = check_case_id(case_id)
    check_out_folder(out)
    if maps is None:
        maps = check_options(method, preset, params, threads)
    else:
        check_options(method, preset, params, threads, parse=False)
    paths = case_outputs(out, case_id)
    if method == "provided":
        if provided_t2 is None or provided_mask is None:
            raise InputError(f"case {case_id}: method provided needs the organizers' files")
        inputs = {"preRT_T2_registered": provided_t2, "preRT_mask_registered": provided_mask}
    else:
        if pre_t2 is None or pre_mask is None:
            raise InputError(f"case {case_id}: needs the pre-RT T2 and mask")
        inputs = {"preRT_T2": pre_t2, "preRT_mask": pre_mask}
    inputs = {k: Path(v) for k, v in {**inputs, "midRT_T2": mid_t2}.items()}
    for i, p in enumerate(params or []):
        inputs[f"params/{i}"] = Path(p)
    checked = {**inputs, **({"midRT_mask": Path(mid_mask)} if mid_mask is not None else {})}
    for key, path in checked.items():
        if not path.is_file():
            raise InputError(f"{path}: {key} not found")
    _check_outputs_apart(checked, paths, out, case_id)
    case_maps = _case_maps(maps or [], seed) if method == "elastix" else None
    fingerprint_params = _case_params(method, preset, case_maps, seed)
    return _CasePlan(case_id, inputs, paths, case_maps, fingerprint_params)


def _mask_key(mid_mask: str | Path | None) -> dict[str, str] | None:
    """Which mid-RT mask a Dice check was made with (path and content)."""
    if mid_mask is None:
        return None
    return {"path": str(mid_mask), "sha256": file_digest(mid_mask)}


def _refresh_dice(
    record: Path, data: dict[str, Any], plan: _CasePlan, mid_mask: str | Path | None
) -> dict[str, Any]:
    """A done case whose mid-RT mask is not the one its Dice was made with (added, removed
    or changed; the mask is a check, not an input of the registration): the Dice again,
    from the outputs, and the record updated. Returns the record's data."""
    dice = None
    if mid_mask is not None:
        fixed = read_image(plan.inputs["midRT_T2"], "mid-RT T2")
        gt = _read_mid_mask(mid_mask, fixed, plan.inputs["midRT_T2"])
        dice = {"registered": dice_per_label(read_mask(plan.paths["mask"]), gt)}
        if "preRT_mask" in plan.inputs:
            pre = read_mask(plan.inputs["preRT_mask"], "pre-RT mask")
            dice["identity"] = dice_per_label(resample_to(pre, Grid.of(fixed), nearest=True), gt)
    data = {**data, "dice_to_midRT_mask": dice, "dice_mid_mask": _mask_key(mid_mask)}
    write_json(record, data)
    return data


def _skipped_result(
    case_id: str, record: Path, plan: _CasePlan | None = None, mid_mask: str | Path | None = None
) -> CaseResult:
    """A done case, with the quality figures its record holds (a rerun still reports them);
    with its `plan`, the Dice is made again when the mid-RT mask is not the record's."""
    try:
        data = read_json(record, "register record")
    except InputError:
        data = {}
    extra = data if isinstance(data, dict) else {}
    if plan is not None and extra and extra.get("dice_mid_mask") != _mask_key(mid_mask):
        extra = _refresh_dice(record, extra, plan, mid_mask)
    sim, dice = extra.get("similarity"), extra.get("dice_to_midRT_mask")
    return CaseResult(
        case_id,
        "skipped",
        similarity=sim if isinstance(sim, dict) else None,
        dice_to_midRT=dice if isinstance(dice, dict) else None,
        record=str(record),
    )


def _plan_args(task: Mapping[str, Any]) -> dict[str, Any]:
    """A task's (register_case's arguments') share for _plan_case."""
    return {k: v for k, v in task.items() if k != "force"}


def _skipped(task: Mapping[str, Any]) -> CaseResult | None:
    """The `skipped` result a worker would return for this task, or None when the case is
    to run (or its inputs are bad: the run then reports that as it always did)."""
    if task["force"]:
        return None
    try:
        case = _plan_case(**_plan_args(task))
        if is_done(case.paths["record"], case.inputs, case.params):
            return _skipped_result(case.case_id, case.paths["record"], case, task["mid_mask"])
    except Exception:
        return None
    return None


def register_case(
    pre_t2: str | Path | None,
    pre_mask: str | Path | None,
    mid_t2: str | Path,
    out: str | Path,
    case_id: str,
    method: str = "elastix",
    preset: str = "fast",
    params: Sequence[str | Path] | None = None,
    seed: int = 0,
    threads: int | None = None,
    mid_mask: str | Path | None = None,
    provided_t2: str | Path | None = None,
    provided_mask: str | Path | None = None,
    force: bool = False,
    maps: Sequence[ParameterMap] | None = None,
    isolate: bool = False,
) -> CaseResult:
    """Register one case into OUT/<case_id>/ (see the module docstring); skip if done.

    `seed` is this case's seed (elastix RandomSeed); `params` replaces the preset's elastix
    file(s) (the rigid stage follows `preset`); `maps` are those files already parsed by
    `check_options` (parsed here when None). Bad input raises InputError. Outputs are
    written only once everything is computed and checked, the record last; a case that
    fails for any reason leaves none of its outputs behind. `isolate` registers in a worker
    process (a crash raises WorkerDied; Ctrl-C stops it at once), as `hntseg register` does.
    """
    task = {  # the arguments, as a worker gets them
        "pre_t2": pre_t2,
        "pre_mask": pre_mask,
        "mid_t2": mid_t2,
        "out": out,
        "case_id": case_id,
        "method": method,
        "preset": preset,
        "params": params,
        "seed": seed,
        "threads": threads,
        "mid_mask": mid_mask,
        "provided_t2": provided_t2,
        "provided_mask": provided_mask,
        "force": force,
        "maps": maps,
    }
    plan = _plan_case(**_plan_args(task))
    case_id, inputs, paths, case_maps, fingerprint_params = plan
    if not force and is_done(paths["record"], inputs, fingerprint_params):
        return _skipped_result(case_id, paths["record"], plan, mid_mask)
    if isolate:
        return _case_in_worker(task)
    try:
        _remove_outputs(paths)  # a rerun: no file of an earlier run may outlive it
        return _register_case(
            inputs,
            paths,
            case_id,
            method,
            preset,
            case_maps,
            fingerprint_params,
            seed,
            threads,
            mid_mask,
        )
    except BaseException:
        _remove_outputs(paths, strict=False)
        raise


def _register_case(
    inputs: Mapping[str, Path],
    paths: Mapping[str, Path],
    case_id: str,
    method: str,
    preset: str,
    maps: Sequence[ParameterMap] | None,
    fingerprint_params: Mapping[str, Any],
    seed: int,
    threads: int | None,
    mid_mask: str | Path | None,
) -> CaseResult:
    """register_case's work on checked inputs: compute and check everything, then write."""
    if method == "elastix":
        import itk  # noqa: F401 (about 10 s the first time in a process: not the case's runtime)
    start = time.perf_counter()
    mid_t2 = inputs["midRT_T2"]
    threads_used = threads
    chain: list[ParameterMap] = []
    elastix_log: str | None = None
    rigid_info = None
    if method == "provided":
        provided_t2, provided_mask = inputs["preRT_T2_registered"], inputs["preRT_mask_registered"]
        fixed = read_image(mid_t2, "mid-RT T2")
        gt = _read_mid_mask(mid_mask, fixed, mid_t2)
        warped = read_image(provided_t2, "registered pre-RT T2")
        warped_mask = read_mask(provided_mask, "registered pre-RT mask")
        check_same_grid(fixed, warped, provided_t2, mid_t2)
        check_same_grid(fixed, warped_mask, provided_mask, mid_t2)
        grid = Grid.of(fixed)
        warped, warped_mask = from_array(array(warped), grid), from_array(array(warped_mask), grid)
        identity_t2 = identity_mask = None
    else:
        pre_t2, pre_mask = inputs["preRT_T2"], inputs["preRT_mask"]
        fixed, moving, mask = _check_inputs(pre_t2, pre_mask, mid_t2, method)
        gt = _read_mid_mask(mid_mask, fixed, mid_t2)
        grid = Grid.of(fixed)
        identity_t2 = resample_to(moving, grid, nearest=False)
        identity_mask = resample_to(mask, grid, nearest=True)
        if method == "identity":
            warped, warped_mask = identity_t2, identity_mask
        else:
            rigid_settings = RIGID.get(preset, RIGID["fast"])
            rigid = rigid_register(fixed, moving, rigid_settings, seed, threads)
            initial = euler_map(rigid, grid)
            rigid_info = {
                "parameters_rad_mm": list(rigid.GetParameters()),
                "center_xyz_mm": list(rigid.GetCenter()),
            }
            with (
                itk_threads(threads),
                tempfile.TemporaryDirectory(prefix=f"hntseg-register-{case_id}-") as tmp,
            ):
                logfile = Path(tmp) / "elastix.log"
                try:
                    chain = elastix_register(fixed, moving, maps or [], initial, threads, Path(tmp))
                except Exception as exc:
                    if not logfile.is_file():
                        raise
                    # not an output: what went wrong, for the user; elastix's own exception
                    # only says "see elastix log"
                    text = logfile.read_text(errors="replace")
                    write_text(paths["failed_log"], text)
                    reason = one_line(RuntimeError(text)) if "ERROR" in text else one_line(exc)
                    raise RuntimeError(f"elastix: {reason} (log: {paths['failed_log']})") from exc
                if logfile.is_file():
                    elastix_log = logfile.read_text(errors="replace")
                warped = transformix(moving, chain, grid, nearest=False)
                warped_mask = transformix(mask, chain, grid, nearest=True)
                import itk

                threads_used = int(itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads())
            before, after = set(np.unique(array(mask))), set(np.unique(array(warped_mask)))
            if not after <= before:  # nearest neighbour can only copy labels
                raise RuntimeError(f"registered mask has labels {sorted(map(int, after - before))}")

    if method != "provided" and not array(warped_mask).any():
        log.warning(
            f"case {case_id}: the registered mask has no tumour voxels left; does the pre-RT "
            "scan overlap the mid-RT scan? (check the record's similarity)"
        )
    sim: dict[str, Any] = {"registered": similarity(fixed, warped)}
    if identity_t2 is not None:
        sim["identity"] = similarity(fixed, identity_t2)
        sim["improved"] = bool(
            sim["registered"]["nmi"] > sim["identity"]["nmi"]
            and sim["registered"]["ncc"] > sim["identity"]["ncc"]
        )
    dice = None
    if gt is not None:
        dice = {"registered": dice_per_label(warped_mask, gt)}
        if identity_mask is not None:
            dice["identity"] = dice_per_label(identity_mask, gt)

    write_image(warped, paths["t2"])
    write_image(warped_mask, paths["mask"])
    elastix_files = _write_chain(chain, paths["elastix"]) if chain else []
    if elastix_log is not None:
        write_text(paths["elastix"] / "elastix.log", elastix_log)
    runtime = round(time.perf_counter() - start, 3)
    write_record(
        paths["record"],
        "register",
        inputs,
        fingerprint_params,
        [paths["t2"], paths["mask"], *elastix_files],
        seed=seed if method == "elastix" else None,
        extra={
            "case_id": case_id,
            "threads": threads_used,
            "runtime_s": runtime,
            "rigid_euler3d": rigid_info,
            "similarity": sim,
            "dice_to_midRT_mask": dice,
            "dice_mid_mask": _mask_key(mid_mask),
            "note": "similarity: mid-RT T2 vs pre-RT T2 resampled without deformation "
            "(identity) and registered; Dice to the mid-RT mask is a check, not a truth "
            "(tumours shrink between the scans)",
        },
    )
    return CaseResult(case_id, "ok", None, runtime, sim, dice, str(paths["record"]))


def _write_chain(chain: Sequence[ParameterMap], folder: Path) -> list[Path]:
    """TransformParameters.<i>.txt, each naming the previous one as its initial transform."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, m in enumerate(chain):
        m = dict(m)
        m["InitialTransformParameterFileName"] = (
            [str((folder / f"TransformParameters.{i - 1}.txt").resolve())]
            if i
            else ["NoInitialTransform"]
        )
        files.append(write_text(folder / f"TransformParameters.{i}.txt", format_parameter_map(m)))
    for stale in folder.glob("TransformParameters.*.txt"):
        if stale not in files:
            stale.unlink()
    return files


# --------------------------------------------------------------------------- cohort


def lean_itk() -> None:
    """Load ITK lean, in a process that is hntseg's own (a pool worker, the `hntseg
    register` command), not in a notebook's: two ITK settings, private names (where they
    are absent nothing changes). ITK is kept from importing torch (about 0.5 GiB and a
    second), which it loads only to accept torch tensors, which register never passes; and
    its lazy loader's lock is its thread lock alone, without the inter-process semaphore it
    makes per process (a worker stopped by its parent would leave that to Python's "leaked
    semaphore" warning). Call it before ITK loads its modules."""
    with contextlib.suppress(ImportError):
        import itk.support.helpers as itk_helpers
        import itk.support.lazy as itk_lazy

        if hasattr(itk_helpers, "_HAVE_TORCH"):
            itk_helpers._HAVE_TORCH = False
        lock = getattr(itk_lazy, "ITKLazyLoadLock", None)
        if lock is not None and not hasattr(lock, "mp_lock"):
            lock.mp_lock = None


def _call_case(kwargs: dict[str, Any]) -> CaseResult:
    return register_case(**kwargs)


def _case_in_worker(task: dict[str, Any]) -> CaseResult:
    """register_case(**task) in a worker process: its value, or what it raised."""
    from hntseg.workers import Pool, WorkerDied

    try:
        with Pool(1, init=lean_itk) as pool:
            outcome = next(pool.imap_unordered(_call_case, [task]))
    except BaseException:  # Ctrl-C or SIGTERM: the worker is ended, its partial files go
        _remove_unrecorded(task)
        raise
    if isinstance(outcome.error, WorkerDied):
        _remove_unrecorded(task)
    if outcome.error is not None:
        raise outcome.error
    return outcome.value


def _run_case(kwargs: dict[str, Any]) -> CaseResult:
    """One case, never raising: failures become a failed CaseResult (for process pools)."""
    start = time.perf_counter()
    try:
        return register_case(**kwargs)
    except Exception as exc:  # an elastix or I/O failure must not stop the other cases
        return CaseResult(
            kwargs["case_id"], "failed", one_line(exc), round(time.perf_counter() - start, 3)
        )


def case_summary(r: CaseResult) -> str:
    """One line on a case: its status, similarity before -> after, Dice to the mid-RT mask."""
    if r.status != "ok":
        return f"case {r.id}: {r.status}" + (f" ({r.error})" if r.error else "")
    parts = [f"case {r.id}: ok in {r.runtime_s:.1f} s"]
    sim = r.similarity or {}
    if "identity" in sim:
        i, g = sim["identity"], sim["registered"]
        parts.append(f"NCC {i['ncc']:.3f} -> {g['ncc']:.3f}, NMI {i['nmi']:.4f} -> {g['nmi']:.4f}")
    if r.dice_to_midRT:
        d = r.dice_to_midRT["registered"]
        shown = ", ".join(f"{k} {v:.3f}" for k, v in d.items() if v is not None)
        parts.append(f"Dice to mid-RT mask {shown or '-'}")
    return "; ".join(parts)


def _report(result: CaseResult) -> None:
    (log.warning if result.status == "failed" else log.info)(case_summary(result))


def register_cohort(
    cohort: str | Path,
    out: str | Path,
    method: str = "elastix",
    preset: str = "fast",
    params: Sequence[str | Path] | None = None,
    seed: int = 0,
    threads: int | None = None,
    workers: int = 1,
    ids: Iterable[str] | None = None,
    num_parts: int = 1,
    part_id: int = 0,
    force: bool = False,
    raise_on_failure: bool = True,
    isolate: bool | None = None,
) -> list[CaseResult]:
    """Register every patient of a cohort into OUT (HNTS-MRG layout), `workers` at a time.

    Each case gets its own seed from `seed` and its id. Finished cases are skipped unless
    `force`. Options and parameter files are checked once, before any case (InputError).
    A failing case is logged, leaves no outputs, and the others finish; then StageError is
    raised (unless raise_on_failure is False) naming the failed ids.

    `isolate` runs the cases in worker processes (hntseg.workers) even with one worker:
    a crash then fails only its case, and Ctrl-C or SIGTERM stops at once instead of when
    elastix returns. None (the default): only when `workers` > 1 have cases to share, so
    that a script without a `__main__` guard can call this with one worker.
    """
    # bad options or parameter files fail here, before any case; the maps are parsed once
    maps = check_options(method, preset, params, threads, workers)
    check_out_not_cohort(cohort, out)
    check_out_folder(out)
    required = (
        ("midRT_T2", "preRT_T2_registered", "preRT_mask_registered")
        if method == "provided"
        else ("preRT_T2", "preRT_mask", "midRT_T2")
    )
    patients = shard(discover(cohort, required=required, ids=ids), num_parts, part_id)
    if threads is None:  # the allocation's CPUs (not the node's), shared by the workers
        threads = max(1, available_cpus() // workers)
    tasks = [
        {
            "pre_t2": p.get("preRT_T2"),
            "pre_mask": p.get("preRT_mask"),
            "mid_t2": p.get("midRT_T2"),
            "out": Path(out),
            "case_id": p.id,
            "method": method,
            "preset": preset,
            "params": [Path(x) for x in params] if params else None,
            "seed": case_seed(seed, p.id, "register") & 0x7FFFFFFF,
            "threads": threads,
            "mid_mask": p.get("midRT_mask"),
            "provided_t2": p.get("preRT_T2_registered"),
            "provided_mask": p.get("preRT_mask_registered"),
            "force": force,
            "maps": maps,
        }
        for p in patients
    ]
    by_id: dict[str, CaseResult] = {}
    pending = tasks
    if isolate or (isolate is None and workers > 1 and len(tasks) > 1):
        # a worker's first check, made here: no worker (and no imports in it) for done cases
        pending = []
        for task in tasks:
            skipped = _skipped(task)
            if skipped is None:
                pending.append(task)
            else:
                by_id[task["case_id"]] = skipped
                _report(skipped)
    if isolate is None:  # in this process unless several workers have cases to share
        isolate = workers > 1 and len(pending) > 1
    if not isolate:
        for task in progress(pending, f"register ({method})"):
            by_id[task["case_id"]] = _run_case(task)
            _report(by_id[task["case_id"]])
    elif pending:
        from hntseg.workers import Pool

        try:
            with Pool(min(workers, len(pending)), init=lean_itk) as pool:
                outcomes = pool.imap_unordered(_run_case, pending)
                for outcome in progress(outcomes, f"register ({method})", len(pending)):
                    task = pending[outcome.index]
                    pid = task["case_id"]
                    if outcome.error is None:
                        by_id[pid] = outcome.value
                    else:  # its worker died (a crash in elastix, the out-of-memory killer)
                        by_id[pid] = CaseResult(pid, "failed", one_line(outcome.error))
                        _remove_unrecorded(task)
                    _report(by_id[pid])
        except BaseException:
            # Ctrl-C or SIGTERM: the pool has ended its workers (one inside elastix sees no
            # signal until it returns); what they had begun goes
            for task in pending:
                if task["case_id"] not in by_id:
                    _remove_unrecorded(task)
            raise
    results = [by_id[t["case_id"]] for t in tasks]
    failed = [r for r in results if r.status == "failed"]
    if failed and raise_on_failure:
        shown = "; ".join(f"{r.id}: {r.error}" for r in failed[:5])
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        raise StageError(
            f"register: {len(failed)} of {len(results)} cases failed: {shown}{more}; "
            f"the others are in {out}"
        )
    return results

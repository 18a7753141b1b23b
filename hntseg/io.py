"""Image I/O, grid checks and mask validation shared by every stage.

Conventions: SimpleITK sizes, spacings and origins are (x, y, z); numpy arrays from
SimpleITK are (z, y, x). Distances are mm. Every write goes to a temporary file in the
destination folder and is renamed into place, so a killed run leaves no half-written
output under its final name.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from hntseg.errors import InputError, one_line

LABELS = (0, 1, 2)  # background, GTVp, GTVn
LABEL_NAMES = {1: "GTVp", 2: "GTVn"}
# two grids are one when spacing and direction agree within this, the origin within this
# times the largest spacing (format round trips, float32 NIfTI headers)
GRID_TOL_MM = 1e-4
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
# what hntseg writes: single files (a .mhd header names a second data file, which an
# atomic rename of the header alone would leave under its temporary name)
WRITE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: outputs get the user's usual mode, not mkstemp's 0600
_INT_TYPES = {
    sitk.sitkUInt8,
    sitk.sitkInt8,
    sitk.sitkUInt16,
    sitk.sitkInt16,
    sitk.sitkUInt32,
    sitk.sitkInt32,
    sitk.sitkUInt64,
    sitk.sitkInt64,
}


def image_suffix(path: str | Path) -> str:
    """The image extension of a path, double suffixes (.nii.gz) included."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(path).suffix


def strip_suffix(path: str | Path) -> str:
    """File name without its image extension."""
    name = Path(path).name
    return name[: len(name) - len(image_suffix(name))]


# --------------------------------------------------------------------------- atomic writes


TMP_PREFIX = ".hntseg-tmp-"  # temporary files of atomic writes (short: long names still fit)


def make_folder(folder: str | Path, writing: str = "") -> Path:
    """mkdir -p, with an OSError (a file in the way, permission, read-only file system, a
    name too long) as a one-line InputError naming the folder."""
    folder = Path(folder)
    what = f"; cannot write {writing}" if writing else ""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{folder}: exists and is not a folder{what}") from None
    except OSError as exc:
        raise InputError(f"{folder}: {(exc.strerror or str(exc)).lower()}{what}") from None
    return folder


def check_out_folder(folder: str | Path, option: str = "--out") -> Path:
    """Before any work: `folder` is a folder or can be made one (nothing is created), so an
    --out under a file is one error, not one per case."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {folder}: {existing} exists and is not a folder")
    return folder  # writability is left to the writes: a finished, read-only folder is fine


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same extension); rename it into place on success."""
    path = Path(path)
    make_folder(path.parent, path.name)
    with contextlib.suppress(OSError):  # e.g. a name too long: the rename below says so
        if path.is_dir():
            raise InputError(f"{path}: is a folder; expected a file path to write")
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=TMP_PREFIX, suffix=image_suffix(path) or ".tmp", dir=path.parent
        )
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise InputError(f"{path.parent}: {reason}; cannot write {path.name}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        try:
            os.replace(tmp_path, path)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise InputError(f"{path}: {reason}; cannot write it") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (indented, sorted keys for stable bytes; NaN and infinities as
    null, so that strict parsers read it)."""
    return write_text(
        path,
        json.dumps(nan_to_null(data), indent=2, sort_keys=True, default=_json_default) + "\n",
    )


def nan_to_null(obj: Any) -> Any:
    """NaN and infinities -> None, in nested dicts and lists, so the JSON is strict."""
    if isinstance(obj, dict):
        return {k: nan_to_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_null(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
        return None
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_outputs_apart(
    inputs: Mapping[str, str | Path | None], outputs: Iterable[str | Path]
) -> None:
    """No output may be an input (through links too): a mistyped --out must never replace
    the data it was to be computed from."""
    written = {Path(p).resolve(): Path(p) for p in outputs}
    for key, path in inputs.items():
        if path is not None and Path(path).resolve() in written:
            raise InputError(
                f"{path}: the {key} input is also the output {written[Path(path).resolve()]}; "
                "choose another --out"
            )


def remove_stale(record: Path, outputs: Iterable[Path]) -> None:
    """Remove a case's earlier outputs before it is redone, its record first, so that a
    case that then fails leaves nothing a later stage could take for its result."""
    for path in (record, *outputs):
        path.unlink(missing_ok=True)


def require_file(path: str | Path, what: str) -> Path:
    """`path` as a readable file, else a one-line InputError that says what is wrong: not
    there, a folder, a broken symlink, or not readable by this user."""
    path = Path(path)
    if path.is_file():
        if not os.access(path, os.R_OK):
            raise InputError(f"{path}: {what} is not readable (permission denied)")
        return path
    if path.is_dir():
        raise InputError(f"{path}: {what} is a folder, expected a file")
    if path.is_symlink():
        raise InputError(f"{path}: {what} is a broken symlink (to {os.readlink(path)})")
    raise InputError(f"{path}: {what} not found")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read JSON, turning a missing or malformed file into a one-line InputError."""
    path = require_file(path, what)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: malformed {what} ({exc})") from None


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write an image atomically; equal images give identical bytes."""
    if not str(path).lower().endswith(WRITE_SUFFIXES):
        raise InputError(f"{path}: cannot write an image there; use {', '.join(WRITE_SUFFIXES)}")
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as exc:
            raise InputError(f"{path}: cannot write the image ({one_line(exc)})") from None
    return Path(path)


# --------------------------------------------------------------------------- reading


def read_image(path: str | Path, what: str = "image") -> sitk.Image:
    """Read a 3D image; missing, unreadable, truncated, non-3D, empty or NaN images are
    InputErrors."""
    path = require_file(path, what)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read {what} ({one_line(exc)})") from None
    validate_image(image, path, what)
    problem = _nifti_problem(path)
    if problem:
        raise InputError(f"{path}: {what} {problem}")
    return image


def _gzip_size(path: Path) -> tuple[int, bool]:
    """(decompressed bytes, whether the last gzip member ended) of a gzip file, read in
    chunks of at most 4 MiB either way. Further members count; bytes after a member that
    do not start another are ignored (ITK reads such files)."""
    import zlib

    size, inflater, ended, carry = 0, zlib.decompressobj(31), False, b""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            data, carry = carry + chunk, b""
            while data:
                if ended:
                    if len(data) < 2:  # a member's magic may straddle two chunks
                        carry = data
                        break
                    if not data.startswith(b"\x1f\x8b"):
                        return size, True  # trailing bytes that are no gzip member
                    inflater, ended = zlib.decompressobj(31), False
                out = len(inflater.decompress(data, 1 << 22))  # bounded output
                size += out
                # more input left, or a full buffer (zlib may hold output back): go on
                while not inflater.eof and (inflater.unconsumed_tail or out == 1 << 22):
                    out = len(inflater.decompress(inflater.unconsumed_tail, 1 << 22))
                    size += out
                ended = inflater.eof
                data = inflater.unused_data if ended else b""
    return size, ended


def _nifti_problem(path: Path) -> str | None:
    """What ITK's NIfTI reader hides: a file cut short (read as zeros) and, in float files,
    NaN or inf (read as 0). nibabel reads the stored bytes; None when fine or not NIfTI."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    import zlib

    import nibabel

    try:
        nii = nibabel.load(str(path))
        dtype = nii.header.get_data_dtype()
        # the data offset nibabel will read from (the header's vox_offset reads 0 here)
        expected = int(nii.dataobj.offset) + int(np.prod(nii.shape)) * dtype.itemsize
    except Exception:  # what ITK read, nibabel may not parse: keep ITK's reading
        return None
    short = "is truncated or corrupt"
    try:
        if dtype.kind == "f":
            if not np.isfinite(nii.dataobj.get_unscaled()).all():
                return "contains NaN or infinite values"
            return None
        if not name.endswith(".gz"):
            size = path.stat().st_size
            return f"{short} ({size} of {expected} bytes)" if size < expected else None
        size, complete = _gzip_size(path)
        if size < expected:
            return f"{short} ({size} of {expected} bytes)"
        return None if complete else f"{short} (its gzip stream ends early)"
    except (EOFError, OSError, ValueError, zlib.error) as exc:
        return f"{short} ({exc or type(exc).__name__})"


def validate_image(image: sitk.Image, path: str | Path, what: str = "image") -> None:
    """3D, scalar, non-empty, finite."""
    if image.GetDimension() != 3:
        raise InputError(f"{path}: {what} is {image.GetDimension()}D, expected 3D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {what} has vector pixels, expected a scalar image")
    if 0 in image.GetSize() or min(image.GetSize()) < 1:
        raise InputError(f"{path}: {what} is empty (size {image.GetSize()})")
    if image.GetPixelID() not in _INT_TYPES:
        arr = sitk.GetArrayViewFromImage(image)
        if not np.isfinite(arr).all():
            raise InputError(f"{path}: {what} contains NaN or infinite values")


def check_not_constant(image: sitk.Image, path: str | Path, what: str = "T2") -> None:
    """An MRI whose voxels are all one value (a blank export) is an InputError: its
    gradient map would be all ones in every box and its registration meaningless."""
    arr = sitk.GetArrayViewFromImage(image)
    if arr.size and arr.min() == arr.max():
        raise InputError(f"{path}: {what} is constant (every voxel {arr.flat[0]:g}), not an MRI")


def read_mask(path: str | Path, what: str = "mask") -> sitk.Image:
    """Read a tumour mask and return it as uint8 after validation."""
    image = read_image(path, what)
    return validate_mask(image, path, what)


def validate_mask(image: sitk.Image, path: str | Path, what: str = "mask") -> sitk.Image:
    """Integer type and labels within {0, 1, 2}; returns the mask cast to uint8."""
    if image.GetDimension() != 3:
        raise InputError(f"{path}: {what} is {image.GetDimension()}D, expected 3D")
    arr = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() not in _INT_TYPES:
        if not np.isfinite(arr).all():
            raise InputError(f"{path}: {what} contains NaN or infinite values")
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{path}: {what} has non-integer values; expected labels 0, 1, 2")
    # integers (or integral floats) between 0 and 2 are exactly the labels: min and max
    # decide it (np.unique sorts the volume: 10x slower); unique only to name bad labels
    lo, hi = (arr.min(), arr.max()) if arr.size else (0, 0)
    bad = [] if 0 <= lo and hi <= 2 else [v for v in np.unique(arr).tolist() if v not in LABELS]
    if bad:
        shown = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in bad[:5])
        raise InputError(f"{path}: {what} has labels {shown}; allowed are 0, 1, 2")
    if image.GetPixelID() != sitk.sitkUInt8:
        image = sitk.Cast(image, sitk.sitkUInt8)
    return image


def read_header(path: str | Path, what: str = "image") -> Grid:
    """Read only the geometry of an image file (fast)."""
    path = require_file(path, what)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{path}: cannot read {what} (not an image file?)") from None
    if reader.GetDimension() != 3:
        raise InputError(f"{path}: {what} is {reader.GetDimension()}D, expected 3D")
    return Grid(
        tuple(reader.GetSize()),
        tuple(reader.GetSpacing()),
        tuple(reader.GetOrigin()),
        tuple(reader.GetDirection()),
    )


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Grid:
    """Voxel grid of an image: size, spacing, origin in (x, y, z); direction row-major 3x3."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(
            tuple(int(v) for v in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy array shape (z, y, x)."""
        return tuple(reversed(self.size))

    @property
    def voxel_volume(self) -> float:
        """mm^3 per voxel."""
        return float(np.prod(self.spacing))

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "size_xyz": list(self.size),
            "spacing_xyz_mm": list(self.spacing),
            "origin_xyz_mm": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grid:
        """A 3D grid from its JSON form; ValueError when a field has the wrong length."""
        sizes = data["size_xyz"]
        if not all(float(v).is_integer() and not isinstance(v, bool) for v in sizes):
            raise ValueError(f"size_xyz {sizes}: voxel counts must be whole numbers")
        grid = cls(
            tuple(int(v) for v in sizes),
            tuple(float(v) for v in data["spacing_xyz_mm"]),
            tuple(float(v) for v in data["origin_xyz_mm"]),
            tuple(float(v) for v in data["direction"]),
        )
        if [len(grid.size), len(grid.spacing), len(grid.origin), len(grid.direction)] != [
            3,
            3,
            3,
            9,
        ]:
            raise ValueError("a 3D grid needs 3 sizes, spacings and origins and 9 directions")
        return grid

    def reference(self) -> sitk.Image:
        """An empty uint8 image on this grid, for resampling onto it."""
        image = sitk.Image([int(v) for v in self.size], sitk.sitkUInt8)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def mismatch(self, other: Grid, tol: float = GRID_TOL_MM) -> str | None:
        """Describe how `other` differs from this grid, or None if they match."""
        if self.size != other.size:
            return f"size {other.size} != {self.size}"
        # direction before origin: a file flipped into another axis order (nibabel's RAS
        # canonical form) has another origin too, and the direction is what to fix
        checks = (
            ("spacing", self.spacing, other.spacing, tol),
            ("direction", self.direction, other.direction, tol),
            ("origin", self.origin, other.origin, tol * max(1.0, max(self.spacing))),
        )
        for name, a, b, t in checks:
            if not np.allclose(a, b, rtol=0.0, atol=t):
                # enough digits to show a small offset, and the offset itself
                fmt = ", ".join(f"{v:.6g}" for v in b)
                ref = ", ".join(f"{v:.6g}" for v in a)
                off = float(np.max(np.abs(np.subtract(a, b))))
                hint = f"; differs by up to {off:.3g}{'' if name == 'direction' else ' mm'}"
                if name == "direction" and np.allclose(np.abs(a), np.abs(b), atol=t):
                    hint = " (axes flipped: reorient or resample it onto the reference)"
                return f"{name} ({fmt}) != ({ref}){hint}"
        return None


def check_same_grid(
    reference: sitk.Image | Grid,
    other: sitk.Image | Grid,
    other_path: str | Path,
    reference_path: str | Path | None = None,
    tol: float = GRID_TOL_MM,
) -> None:
    """Raise an InputError naming `other_path` if it is not on the reference grid."""
    ref = reference if isinstance(reference, Grid) else Grid.of(reference)
    oth = other if isinstance(other, Grid) else Grid.of(other)
    problem = ref.mismatch(oth, tol)
    if problem:
        against = f" of {reference_path}" if reference_path else ""
        raise InputError(f"{other_path}: not on the grid{against}: {problem}")


def array(image: sitk.Image) -> np.ndarray:
    """A (z, y, x) numpy copy of the image."""
    return sitk.GetArrayFromImage(image)


def from_array(arr: np.ndarray, like: sitk.Image | Grid) -> sitk.Image:
    """Wrap a (z, y, x) array as an image on the grid of `like`."""
    image = sitk.GetImageFromArray(arr)
    grid = like if isinstance(like, Grid) else Grid.of(like)
    if tuple(image.GetSize()) != grid.size:
        raise ValueError(f"array shape {arr.shape} does not match grid size (x,y,z) {grid.size}")
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image


def resample_to(image: sitk.Image, grid: Grid, nearest: bool, default: float = 0.0) -> sitk.Image:
    """Resample onto a grid (identity transform): nearest neighbour for labels, B-spline else."""
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkBSpline
    out_type = image.GetPixelID() if nearest else sitk.sitkFloat32
    return sitk.Resample(image, grid.reference(), sitk.Transform(), interp, default, out_type)

"""Cohort discovery in the HNTS-MRG 2024 layout.

    <root>/<id>/preRT/<id>_preRT_T2.nii.gz
    <root>/<id>/preRT/<id>_preRT_mask.nii.gz
    <root>/<id>/midRT/<id>_midRT_T2.nii.gz
    <root>/<id>/midRT/<id>_midRT_mask.nii.gz             (absent on test data)
    <root>/<id>/midRT/<id>_preRT_T2_registered.nii.gz     (organizers' registration)
    <root>/<id>/midRT/<id>_preRT_mask_registered.nii.gz

`.mha` files are accepted in place of `.nii.gz`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hntseg.errors import HntsegError, InputError, StageError
from hntseg.io import IMAGE_SUFFIXES, read_header, require_file
from hntseg.log import log, progress

T = TypeVar("T")

# file key -> (sub-folder, file name pattern)
FILES: dict[str, tuple[str, str]] = {
    "preRT_T2": ("preRT", "{id}_preRT_T2"),
    "preRT_mask": ("preRT", "{id}_preRT_mask"),
    "midRT_T2": ("midRT", "{id}_midRT_T2"),
    "midRT_mask": ("midRT", "{id}_midRT_mask"),
    "preRT_T2_registered": ("midRT", "{id}_preRT_T2_registered"),
    "preRT_mask_registered": ("midRT", "{id}_preRT_mask_registered"),
}
DEFAULT_REQUIRED = ("preRT_T2", "preRT_mask", "midRT_T2")
PHASES = ("midRT", "preRT")  # the two scans of a patient; each gives a training case
SUFFIXES = (".nii.gz", ".mha", ".nii", ".nrrd")  # single-file formats (.mhd has a .raw)


def expected_path(root: str | Path, pid: str, key: str, suffix: str = ".nii.gz") -> Path:
    """Where file `key` of patient `pid` lives in the layout."""
    folder, pattern = FILES[key]
    return Path(root) / pid / folder / (pattern.format(id=pid) + suffix)


@dataclass
class Patient:
    """One patient of a cohort: its id and the files that exist (None where absent)."""

    id: str
    root: Path
    files: dict[str, Path | None] = field(default_factory=dict)

    def get(self, key: str) -> Path | None:
        return self.files.get(key)

    def has(self, key: str) -> bool:
        return self.files.get(key) is not None

    def require(self, *keys: str) -> list[Path]:
        """Paths of the given files, or an InputError naming the first missing one."""
        out = []
        for key in keys:
            path = self.files.get(key)
            if path is None:
                want = expected_path(self.root, self.id, key)
                raise InputError(f"{want}: missing (patient {self.id}){_near_miss(want)}")
            out.append(path)
        return out


class NoPatients(InputError):
    """A folder without any patient in the cohort layout (callers may try another layout)."""


def boxes_path(out: str | Path, pid: str, phase: str) -> Path:
    """OUT/<id>/<id>_<phase>_boxes.json, phase midRT (from the registered pre-RT mask) or preRT."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} not in {PHASES}")
    return Path(out) / pid / f"{pid}_{phase}_boxes.json"


def gradmap_path(out: str | Path, pid: str, phase: str) -> Path:
    """OUT/<id>/<id>_<phase>_gradmap.nii.gz (phase midRT or preRT)."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} not in {PHASES}")
    return Path(out) / pid / f"{pid}_{phase}_gradmap.nii.gz"


def find_gradmap(folder: str | Path, pid: str, phase: str) -> Path | None:
    """A ready gradient map in FOLDER (another tool's too): `gradmap_path` with any image
    suffix hntseg reads, `.nii.gz` first; None when there is none."""
    stem = str(gradmap_path(folder, pid, phase))[: -len(".nii.gz")]
    for suffix in IMAGE_SUFFIXES:
        path = Path(stem + suffix)
        if path.is_file():
            return path
    return None


def report_gradmaps(folder: Path, given: int, total: int) -> None:
    """Say how many gradient maps a --gradmaps folder supplied and how many are computed
    from the masks; a folder that supplied none is a warning (a misnamed folder or files
    would otherwise be replaced silently)."""
    computed = total - given
    if given == 0 and total:
        log.warning(
            f"{folder}: no gradient map found there (<id>/<id>_<phase>_gradmap.nii.gz, "
            f".nii, .mha or .nrrd); all {total} computed from the masks"
        )
    else:
        log.info(f"gradient maps: {given} from {folder}, {computed} computed from the masks")


def sort_key(pid: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order (2 before 10), then the others; ties ("7", "007") by
    the text, so the order never depends on set or hash order."""
    return (0, int(pid), pid) if pid.isdecimal() else (1, 0, pid)


def _near_miss(path: Path) -> str:
    """A hint when the folder holds the file under another case or suffix spelling."""
    folder = path.parent
    if not folder.is_dir():
        return ""
    stem = path.name[: -len(".nii.gz")]
    for other in sorted(folder.iterdir()):
        if other.name.lower().startswith(stem.lower() + ".") and other.name != path.name:
            if other.name.startswith(stem + ".") and other.name[len(stem) :] not in SUFFIXES:
                known = ", ".join(SUFFIXES)
                return f"; found {other.name}: a cohort's images are read as {known}"
            return f"; found {other.name}: names are case-sensitive, suffixes lower case"
    return ""


def discover(
    root: str | Path,
    required: Sequence[str] = DEFAULT_REQUIRED,
    ids: Iterable[str] | None = None,
    check_readable: bool = True,
    what: str = "cohort folder",
) -> list[Patient]:
    """List the patients under `root` and, per patient, which files exist. `what` names
    the folder in errors (e.g. "--registered folder").

    A missing `required` file, or an existing file whose header cannot be read, is an
    InputError naming the path; optional files may be absent.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: {what} not found")
    if not root.is_dir():
        raise InputError(f"{root}: {what} is not a folder")
    pids = sorted(
        (p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=sort_key,
    )
    if ids is not None:
        wanted = [str(i) for i in ids]
        unknown = [i for i in wanted if i not in pids]
        if unknown:
            raise InputError(f"{root}: no patient folder for id(s) {', '.join(unknown)}")
        pids = [p for p in pids if p in set(wanted)]
    patients = []
    for pid in pids:
        files: dict[str, Path | None] = {}
        for key in FILES:
            hits = [expected_path(root, pid, key, sfx) for sfx in SUFFIXES]
            hits = [h for h in hits if h.exists() or h.is_symlink()]
            for h in hits:  # a folder or a broken symlink under an image's name: say so
                require_file(h, key)
            if len(hits) > 1:
                raise InputError(
                    f"{hits[0]}: also {hits[1].name}; keep one file per image (patient {pid})"
                )
            found = hits[0] if hits else None
            if found is not None and check_readable:
                read_header(found, key)
            files[key] = found
        if not any(files.values()):
            phases = [root / pid / ph for ph in ("preRT", "midRT") if (root / pid / ph).is_dir()]
            stray = sorted(
                f.name
                for ph in phases
                for f in ph.iterdir()
                if f.is_file() and not f.name.startswith(".")
            )
            if not stray:
                continue  # not a patient (an output folder, a killed run's empty folders)
            raise InputError(
                f"{root / pid}: has {'/'.join(p.name for p in phases)} but no file named "
                f"{pid}_<phase>_<kind> (e.g. {pid}_preRT_T2.nii.gz); it holds "
                f"{', '.join(stray[:2])}"
            )
        patient = Patient(pid, root, files)
        patient.require(*required)
        patients.append(patient)
    if not patients:
        raise NoPatients(f"{root}: no patients in the HNTS-MRG layout (<id>/preRT, <id>/midRT)")
    return patients


def shard(items: Sequence, num_parts: int = 1, part_id: int = 0) -> list:
    """Part `part_id` of `num_parts` (round-robin, nnU-Net's convention) for job arrays."""
    if num_parts < 1:
        raise InputError(f"--num-parts {num_parts}: must be at least 1")
    if not 0 <= part_id < num_parts:
        raise InputError(f"--part-id {part_id} must be in 0..{num_parts - 1} (--num-parts)")
    return list(items[part_id::num_parts])


def check_phases(phases: Iterable[str]) -> list[str]:
    """The phases asked for, or an InputError naming the first unknown one."""
    phases = list(phases)
    bad = [p for p in phases if p not in PHASES]
    if bad:
        raise InputError(f"--phase {bad[0]!r}: expected one of {', '.join(PHASES)}")
    return phases


def run_cases(stage: str, cases: Iterable[tuple[str, T]], work: Callable[[T], bool]) -> list[str]:
    """Run `work` on every (key, case) under a progress bar; returns the keys now done.

    `work` returns False when it skipped a case already done. A case that raises a user
    error is logged and the others still run; then a StageError names the failed keys, so
    one bad scan never hides the rest of a cohort's results.
    """
    done: list[str] = []
    failed: list[str] = []
    first = ""
    skipped = 0
    for key, case in progress(list(cases), stage):
        try:
            ran = work(case)
        except HntsegError as exc:
            log.error(str(exc))
            failed.append(key)
            first = first or str(exc)
            continue
        skipped += not ran
        done.append(key)
    if skipped:
        log.info(f"{stage}: {skipped} case(s) already done (use --force to redo)")
    if failed:
        raise StageError(  # the first reason too: the log lines may be far above
            f"{stage}: {len(failed)} case(s) failed: {', '.join(failed)}; first: {first}"
        )
    return done

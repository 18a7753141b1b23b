"""build-dataset: a cohort (+ gradient maps) -> an nnU-Net v2 raw dataset and its 5-fold splits.

Method (Ren et al.): each patient gives two training cases. `<id>_midRT`: mid-RT T2 +
gradient map from the boxes of the REGISTERED pre-RT mask (random margin, seeded per
case), label = mid-RT mask. `<id>_preRT`: pre-RT T2 + gradient map from the boxes of its
own pre-RT mask, label = pre-RT mask (`pre_rt=False` leaves them out). Folds are drawn over
patients (never split), seeded; a fold validates on its patients' mid-RT cases only and
trains on the mid-RT and pre-RT cases of the other patients.

Channel sets are a list (see `hntseg.nnunet.CHANNELS`): `t2` (the paper's ablation
without gradient map), `t2,gradmap` (the paper's), `t2,pre_t2_registered,
pre_mask_registered` and `t2,gradmap,pre_mask_registered` (top challenge teams). For a
pre-RT case the "registered pre-RT" channels are the pre-RT T2 / mask themselves: the
mask channel then equals the label, so leave pre-RT cases out (`pre_rt=False`) for
channel sets with `pre_mask_registered` unless that is what you want.

Images are hard-linked into the dataset when the file system allows it (else copied),
never moved or modified; symlinked inputs are followed; `.mha`/`.nii` inputs are
converted to `.nii.gz`. A file whose spacing nnU-Net would refuse beside the T2's (beyond
`np.allclose`, in float32), and a mask that is not uint8, is rewritten instead (the T2's
geometry, the voxels kept).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hntseg.cohort import (
    PHASES,
    Patient,
    boxes_path,
    discover,
    expected_path,
    find_gradmap,
    report_gradmaps,
    sort_key,
)
from hntseg.errors import InputError
from hntseg.io import (
    Grid,
    array,
    atomic_path,
    check_not_constant,
    check_out_folder,
    check_same_grid,
    from_array,
    image_suffix,
    make_folder,
    read_header,
    read_image,
    read_mask,
    write_image,
    write_json,
)
from hntseg.log import log, progress
from hntseg.nnunet import (
    CHANNELS,
    DATASET_RECORD,
    FILE_ENDING,
    LABELS,
    Paths,
    dataset_channels,
    dataset_name,
    id_folders,
    parse_channels,
)
from hntseg.records import case_seed, is_done, write_record

RECORD_NAME = DATASET_RECORD


def case_name(pid: str, phase: str) -> str:
    """`<id>_midRT` / `<id>_preRT`: the nnU-Net case identifier."""
    return f"{pid}_{phase}"


@dataclass
class Source:
    """Where one channel of one case comes from: a file to link, or a gradient map to compute."""

    path: Path | None = None  # an image file to link/convert
    mask: Path | None = None  # for a computed gradient map: the mask whose boxes are used
    boxes: Path | None = None  # ... or a ready boxes.json
    is_mask: bool = False  # validate as a mask


@dataclass
class Case:
    name: str
    pid: str
    phase: str
    t2: Path
    label: Path
    channels: list[Source] = field(default_factory=list)


def make_splits(
    patient_ids: Sequence[str], n_folds: int = 5, seed: int = 0, pre_rt: bool = True
) -> list[dict[str, list[str]]]:
    """nnU-Net splits over patients: val = mid-RT cases of the fold's patients, train = the
    mid-RT (+ pre-RT) cases of the others. Seeded: same ids + seed -> same splits."""
    ids = sorted(set(patient_ids), key=sort_key)
    if n_folds < 2:
        raise InputError(f"--folds {n_folds}: need at least 2 folds")
    if len(ids) < n_folds:
        raise InputError(f"--folds {n_folds}: only {len(ids)} patient(s); need one per fold")
    order = np.random.default_rng(seed).permutation(len(ids))
    groups = np.array_split(order, n_folds)
    splits = []
    for group in groups:
        val_ids = {ids[i] for i in group}
        train = [
            case_name(p, ph)
            for p in ids
            if p not in val_ids
            for ph in (PHASES if pre_rt else ("midRT",))
        ]
        val = [case_name(p, "midRT") for p in ids if p in val_ids]
        splits.append({"train": train, "val": val})
    return splits


def _registered_file(reg_root: Path, reg: dict[str, Patient], pid: str, key: str) -> Path:
    patient = reg.get(pid)
    path = patient.get(key) if patient else None
    if path is None:
        raise InputError(
            f"{expected_path(reg_root, pid, key)}: missing (patient {pid}; "
            "register it or pass --registered DIR)"
        )
    return path


def _ready_file(folder: Path | None, pid: str, phase: str, kind: str) -> Path | None:
    if folder is None:
        return None
    if kind == "gradmap":
        return find_gradmap(folder, pid, phase)
    path = boxes_path(folder, pid, phase)
    return path if path.is_file() else None


def plan_cases(
    cohort: Path,
    channels: Sequence[str],
    registered: Path | None = None,
    gradmaps: Path | None = None,
    boxes: Path | None = None,
    pre_rt: bool = True,
    ids: Iterable[str] | None = None,
) -> list[Case]:
    """Every case with the source of each channel; a missing file is an InputError naming it."""
    required = ["midRT_T2", "midRT_mask"] + (["preRT_T2", "preRT_mask"] if pre_rt else [])
    patients = discover(cohort, required=required, ids=ids)
    reg_root = Path(registered) if registered is not None else Path(cohort)
    if reg_root.resolve() == Path(cohort).resolve():
        reg = {p.id: p for p in patients}
    else:
        found = discover(reg_root, required=(), check_readable=False, what="--registered folder")
        reg = {p.id: p for p in found}
    cases = []
    for patient in patients:
        pid = patient.id
        for phase in PHASES if pre_rt else ("midRT",):
            t2, label = patient.require(f"{phase}_T2", f"{phase}_mask")
            case = Case(case_name(pid, phase), pid, phase, t2, label)
            for ch in channels:
                if ch == "t2":
                    src = Source(path=t2)
                elif ch == "gradmap":
                    ready = _ready_file(gradmaps, pid, phase, "gradmap")
                    ready_boxes = _ready_file(boxes, pid, phase, "boxes")
                    if ready is not None:
                        src = Source(path=ready)
                    elif ready_boxes is not None:
                        src = Source(boxes=ready_boxes)
                    elif phase == "midRT":
                        src = Source(
                            mask=_registered_file(reg_root, reg, pid, "preRT_mask_registered")
                        )
                    else:
                        src = Source(mask=label)
                elif ch == "pre_t2_registered":
                    path = (
                        _registered_file(reg_root, reg, pid, "preRT_T2_registered")
                        if phase == "midRT"
                        else t2
                    )
                    src = Source(path=path)
                elif ch == "pre_mask_registered":
                    path = (
                        _registered_file(reg_root, reg, pid, "preRT_mask_registered")
                        if phase == "midRT"
                        else label
                    )
                    src = Source(path=path, is_mask=True)
                else:  # parse_channels guards this
                    raise InputError(f"--channels: unknown channel {ch}")
                case.channels.append(src)
            cases.append(case)
    return cases


def link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link src to dst (replacing dst), copying when linking is not possible. A
    symlinked src is followed (Linux's link(2) would link the symlink itself, which dangles
    in the dataset when its target is relative)."""
    src = Path(os.path.realpath(src))
    make_folder(dst.parent, dst.name)
    if dst.exists() or dst.is_symlink():
        if dst.exists() and not dst.is_symlink() and os.path.samefile(src, dst):
            return "linked"
        dst.unlink()
    try:
        os.link(src, dst)
        return "linked"
    except OSError:
        with atomic_path(dst) as tmp:
            shutil.copy2(src, tmp)
        return "copied"


def _pixel_id(path: Path) -> int:
    """The pixel type in an image file's header (without reading the voxels)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetPixelID()


def check_case(case: Case, channels: Sequence[str]) -> None:
    """Check one case's inputs before anything is written: every file readable, masks valid,
    all on the grid of the case's T2, ready boxes for that grid (InputError naming the file)."""
    from hntseg.boxes import read_boxes

    grid = read_header(case.t2, f"{case.phase} T2")
    checked: set[Path] = set()

    def mask(path: Path, what: str) -> None:
        if path not in checked:
            check_same_grid(grid, read_mask(path, what), path, case.t2)
            checked.add(path)

    mask(case.label, "mask")
    for ch, src in zip(channels, case.channels, strict=True):
        if src.path is not None and src.is_mask:
            mask(src.path, ch)
        elif src.path is not None:  # read whole: NaN / inf / empty images are refused too
            image = read_image(src.path, ch)
            check_same_grid(grid, image, src.path, case.t2)
            if ch in ("t2", "pre_t2_registered"):
                check_not_constant(image, src.path, ch)
        elif src.boxes is not None:
            read_boxes(src.boxes, grid)
        else:
            mask(src.mask, "mask for the gradient-map boxes")


def nnunet_accepts(grid: Grid, other: Grid) -> bool:
    """Whether nnU-Net reads `other` beside an image on `grid` without an error: its readers
    and its dataset check require np.allclose spacings (numpy's rtol 1e-5, atol 1e-8; both
    orders checked here); origin and direction differences only make it warn."""
    # as the written .nii.gz files will store them (float32), which nnU-Net compares
    a, b = np.float32(grid.spacing), np.float32(other.spacing)
    return grid.size == other.size and bool(np.allclose(a, b) and np.allclose(b, a))


def _place_image(src: Path, dst: Path, what: str, grid: Grid, is_mask: bool = False) -> None:
    """Put a checked input at dst: linked when already .nii.gz (uint8 for masks) and on a
    grid nnU-Net accepts beside the T2's, else rewritten.

    `check_case` accepts geometry within float noise of the T2's (1e-4). nnU-Net refuses a
    spacing that differs by more than 1e-5 relative, so such a file gets the T2's geometry
    here (the voxels are kept). Smaller differences (a NIfTI stores float32 geometry, so an
    oblique scan's files never match to the last bit) are linked as they are: a rewrite
    would not make them equal either."""
    accepted = nnunet_accepts(grid, read_header(src, what))
    if (
        accepted
        and image_suffix(src) == FILE_ENDING
        and (not is_mask or _pixel_id(src) == sitk.sitkUInt8)
    ):
        link_or_copy(src, dst)
        return
    image = read_mask(src, what) if is_mask else read_image(src, what)
    write_image(image if accepted else from_array(array(image), grid), dst)


def _write_case(case: Case, channels: Sequence[str], raw: Path, margin, seed: int) -> None:
    """Write one case's label and channel files (its inputs were checked by `check_case`)."""
    grid = read_header(case.t2, f"{case.phase} T2")
    label = raw / "labelsTr" / f"{case.name}{FILE_ENDING}"
    _place_image(case.label, label, "mask", grid, True)
    for i, (ch, src) in enumerate(zip(channels, case.channels, strict=True)):
        dst = raw / "imagesTr" / f"{case.name}_{i:04d}{FILE_ENDING}"
        if src.path is not None:
            _place_image(src.path, dst, ch, grid, src.is_mask)
            continue
        from hntseg.boxes import find_boxes, read_boxes
        from hntseg.gradmap import gradient_map

        t2 = read_image(case.t2, "T2")
        if src.boxes is not None:
            boxset = read_boxes(src.boxes, Grid.of(t2))
        else:
            mask = read_mask(src.mask, "mask for the gradient-map boxes")
            check_same_grid(t2, mask, src.mask, case.t2)
            boxset = find_boxes(
                mask, margin, seed=case_seed(seed, case.name, "boxes"), source=str(src.mask)
            )
        write_image(gradient_map(t2, boxset), dst)


def case_files(raw: Path, names: Iterable[str], n_channels: int) -> list[Path]:
    """The label and channel files of these cases in a raw dataset: a dataset is finished
    only when all of them exist."""
    files = []
    for name in names:
        files.append(raw / "labelsTr" / f"{name}{FILE_ENDING}")
        files.extend(raw / "imagesTr" / f"{name}_{i:04d}{FILE_ENDING}" for i in range(n_channels))
    return files


def existing_channels(raw_dataset: Path) -> list[str] | None:
    """The hntseg channel list of an existing raw dataset (None if it has no dataset.json)."""
    path = raw_dataset / "dataset.json"
    return dataset_channels(path) if path.is_file() else None


def check_dataset_id(work: Path, dataset_id: int, ds: str, chans: Sequence[str]) -> None:
    """Refuse an id that nnU-Net would find under another name, or a dataset of this name
    built, preprocessed or trained with other channels (one-line InputError, `--force` or
    not).

    nnU-Net looks an id up in nnUNet_raw, nnUNet_preprocessed and nnUNet_results alike: a
    second name in any of them makes each later call by id fail. nnU-Net copies dataset.json
    into the preprocessed folder and into each trained model's folder, so those say which
    channels they were made with; a model of other channels would otherwise be taken by
    `train` as this dataset's finished fold."""
    for other in id_folders(work, dataset_id):
        if other.name != ds:
            raise InputError(
                f"{other}: dataset id {dataset_id} is already used by {other.name}; "
                "remove that folder or choose another --dataset-id"
            )
    paths = Paths(work)
    made = [
        (paths.raw / ds / "dataset.json", "exists"),
        (paths.preprocessed / ds / "dataset.json", "was preprocessed"),
        *((p, "has a model trained") for p in sorted((paths.results / ds).glob("*/dataset.json"))),
    ]
    for path, what in made:
        have = dataset_channels(path) if path.is_file() else None
        if have is not None and have != list(chans):
            raise InputError(
                f"{path}: dataset {ds} {what} with channels {','.join(have)}, not "
                f"{','.join(chans)}; remove {path.parent} or choose another --dataset-id"
            )


def build_dataset(
    cohort: str | Path,
    work: str | Path,
    dataset_id: int,
    name: str = "HNTSMRG",
    channels: str | Sequence[str] | None = None,
    registered: str | Path | None = None,
    gradmaps: str | Path | None = None,
    boxes: str | Path | None = None,
    pre_rt: bool = True,
    margin: int | str | tuple[int, int] = (2, 6),
    seed: int = 0,
    folds: int = 5,
    ids: Iterable[str] | None = None,
    force: bool = False,
) -> Path:
    """Write WORK/nnUNet_raw/DatasetNNN_<name>/ and its splits_final.json; returns the folder.

    Skipped when its record matches (same input bytes and parameters) and every case file
    exists, unless `force`. All inputs are checked before anything is written, and the record
    is removed before the first case file is, so a failed rebuild is never taken as done.
    """
    from hntseg.boxes import parse_margin

    chans = parse_channels(channels)
    margin = parse_margin(margin)
    ds = dataset_name(dataset_id, name)
    check_out_folder(work, "--work")
    paths = Paths(Path(work))
    raw, pre = paths.raw / ds, paths.preprocessed / ds
    check_dataset_id(Path(work), dataset_id, ds, chans)
    if "pre_mask_registered" in chans and pre_rt:
        log.warning(
            "pre-RT cases get their own pre-RT mask as the registered-mask channel (equal to "
            "their label); consider --no-pre-rt for this channel set"
        )
    for folder, flag in ((gradmaps, "--gradmaps"), (boxes, "boxes")):
        if folder is not None and not Path(folder).is_dir():
            raise InputError(f"{folder}: {flag} folder not found")
    cases = plan_cases(
        Path(cohort),
        chans,
        Path(registered) if registered else None,
        Path(gradmaps) if gradmaps else None,
        Path(boxes) if boxes else None,
        pre_rt,
        ids,
    )
    if gradmaps is not None and "gradmap" in chans:
        at = chans.index("gradmap")
        given = sum(c.channels[at].path is not None for c in cases)
        report_gradmaps(Path(gradmaps), given, len(cases))
    pids = sorted({c.pid for c in cases}, key=sort_key)
    splits = make_splits(pids, folds, seed, pre_rt)

    inputs: dict[str, Path | None] = {}
    for c in cases:
        inputs[f"{c.name}/t2"] = c.t2
        inputs[f"{c.name}/label"] = c.label
        for ch, src in zip(chans, c.channels, strict=True):
            inputs[f"{c.name}/{ch}"] = src.path or src.boxes or src.mask
    params = {
        "channels": list(chans),
        "name": ds,
        "pre_rt": pre_rt,
        "margin": list(margin) if isinstance(margin, tuple) else margin,
        "seed": seed,
        "folds": folds,
    }
    record = raw / RECORD_NAME
    dataset_json, splits_json = raw / "dataset.json", pre / "splits_final.json"
    files = case_files(raw, [c.name for c in cases], len(chans))
    complete = all(f.is_file() for f in files)  # also for records that did not list them
    if not force and complete and is_done(record, inputs, params):
        log.info(f"{raw}: dataset up to date (use --force to rebuild)")
        return raw

    for c in progress(cases, f"build-dataset {ds}: check inputs"):
        check_case(c, chans)  # bad input leaves the dataset as it was
    # a rebuild stopped half-way must not count as done (build-dataset) nor be trained on
    # (`train` refuses hntseg's dataset.json without the record, and no dataset.json at all)
    record.unlink(missing_ok=True)
    dataset_json.unlink(missing_ok=True)
    for c in progress(cases, f"build-dataset {ds}"):
        _write_case(c, chans, raw, margin, seed)
    expected = {str(f.relative_to(raw)) for f in files}
    for sub in ("imagesTr", "labelsTr"):  # files of cases no longer in the cohort
        for f in (raw / sub).iterdir():
            if f"{sub}/{f.name}" not in expected:
                f.unlink()

    write_json(
        dataset_json,
        {
            "channel_names": {str(i): CHANNELS[ch] for i, ch in enumerate(chans)},
            "labels": LABELS,
            "numTraining": len(cases),
            "file_ending": FILE_ENDING,
            "name": ds,
            "description": "HNTS-MRG 2024 Task 2 (mid-RT), written by hntseg build-dataset",
            "hntseg": {
                "channels": list(chans),
                "pre_rt": pre_rt,
                "margin_voxels": params["margin"],
                "seed": seed,
            },
        },
    )
    write_json(splits_json, splits)
    # the record's splits in patient ids, train and val alike (splits_final.json: case names)
    by_patient = [
        {k: sorted({c.rsplit("_", 1)[0] for c in s[k]}, key=sort_key) for k in ("train", "val")}
        for s in splits
    ]
    write_record(
        record,
        "build-dataset",
        inputs,
        params,
        [dataset_json, splits_json, *files],
        seed=seed,
        extra={"n_cases": len(cases), "n_patients": len(pids), "splits": by_patient},
    )
    log.info(f"{raw}: {len(cases)} cases of {len(pids)} patients, channels {','.join(chans)}")
    return raw

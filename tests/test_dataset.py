"""build-dataset: channel files, dataset.json, splits over patients; one-line errors (no torch)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hntseg.cli import app
from hntseg.dataset import build_dataset, make_splits
from hntseg.errors import InputError
from hntseg.io import Grid, read_mask

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from hntseg.synth import synth_cohort

    root = tmp_path_factory.mktemp("dscohort")
    synth_cohort(root, patients=5, seed=1, size=(40, 40, 12))
    return root


@pytest.fixture(scope="module")
def built(cohort, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("dswork")
    build_dataset(cohort, work, 11, folds=5, seed=3)
    return work


def _raw(work: Path, did: int = 11, name: str = "HNTSMRG") -> Path:
    return work / "nnUNet_raw" / f"Dataset{did:03d}_{name}"


def _splits(work: Path, did: int = 11) -> list[dict]:
    path = work / "nnUNet_preprocessed" / f"Dataset{did:03d}_HNTSMRG" / "splits_final.json"
    return json.loads(path.read_text())


def test_dataset_json_and_channel_files(built, cohort):
    raw = _raw(built)
    ds = json.loads((raw / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "T2", "1": "gradmap"}
    assert ds["labels"] == {"background": 0, "GTVp": 1, "GTVn": 2}
    assert ds["file_ending"] == ".nii.gz"
    labels = sorted(p.name for p in (raw / "labelsTr").iterdir())
    assert ds["numTraining"] == len(labels) == 10  # 5 patients x (mid-RT + pre-RT)
    for label in labels:
        case = label[: -len(".nii.gz")]
        pid, phase = case.split("_")
        t2 = raw / "imagesTr" / f"{case}_0000.nii.gz"
        gm = raw / "imagesTr" / f"{case}_0001.nii.gz"
        assert not (raw / "imagesTr" / f"{case}_0002.nii.gz").exists()
        src_t2 = cohort / pid / phase / f"{pid}_{phase}_T2.nii.gz"
        assert t2.stat().st_ino == src_t2.stat().st_ino  # hard-linked, not copied or moved
        assert src_t2.is_file()
        gmap = sitk.ReadImage(str(gm))
        assert gmap.GetPixelID() == sitk.sitkFloat32
        assert Grid.of(gmap) == Grid.of(sitk.ReadImage(str(src_t2)))
        arr = sitk.GetArrayViewFromImage(gmap)
        assert arr.min() >= 0 and arr.max() <= 1 and arr.max() > 0
        read_mask(raw / "labelsTr" / label)


def test_splits_over_patients(built):
    splits = _splits(built)
    assert len(splits) == 5
    val_patients = []
    for s in splits:
        train_p = {c.split("_")[0] for c in s["train"]}
        val_p = {c.split("_")[0] for c in s["val"]}
        assert not train_p & val_p  # never split a patient
        assert all(c.endswith("_midRT") for c in s["val"])  # validation: mid-RT only
        assert any(c.endswith("_preRT") for c in s["train"])  # pre-RT cases only in train
        val_patients.extend(val_p)
    assert sorted(val_patients) == ["1", "2", "3", "4", "5"]  # each patient validated once


def test_same_seed_same_bytes_and_skip(cohort, built, tmp_path):
    build_dataset(cohort, tmp_path, 11, folds=5, seed=3)
    a, b = _raw(built), _raw(tmp_path)
    assert _splits(built) == _splits(tmp_path)
    for f in sorted((a / "imagesTr").glob("*_0001.nii.gz")):
        assert f.read_bytes() == (b / "imagesTr" / f.name).read_bytes()
    stamp = (b / "dataset.json").stat().st_mtime_ns
    build_dataset(cohort, tmp_path, 11, folds=5, seed=3)  # up to date: skipped
    assert (b / "dataset.json").stat().st_mtime_ns == stamp
    assert make_splits(list("12345"), 5, 3) == _splits(built)
    assert make_splits(list("12345"), 5, 4) != make_splits(list("12345"), 5, 3)


def test_channel_sets_and_no_pre_rt(cohort, tmp_path):
    chans = "t2,pre_t2_registered,pre_mask_registered"
    build_dataset(cohort, tmp_path, 12, channels=chans, ids=["1", "2"], folds=2)
    raw = _raw(tmp_path, 12)
    ds = json.loads((raw / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "T2", "1": "preRT_T2_registered", "2": "noNorm"}
    assert ds["numTraining"] == 4
    reg = cohort / "1" / "midRT" / "1_preRT_mask_registered.nii.gz"
    assert (raw / "imagesTr" / "1_midRT_0002.nii.gz").stat().st_ino == reg.stat().st_ino
    # a pre-RT case's "registered" channels are its own pre-RT T2 and mask
    own = cohort / "1" / "preRT" / "1_preRT_mask.nii.gz"
    assert (raw / "imagesTr" / "1_preRT_0002.nii.gz").stat().st_ino == own.stat().st_ino

    build_dataset(cohort, tmp_path, 13, channels="t2", pre_rt=False, folds=5)
    raw = _raw(tmp_path, 13)
    ds = json.loads((raw / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "T2"} and ds["numTraining"] == 5
    assert not list((raw / "imagesTr").glob("*_preRT_*"))
    assert all(not c.endswith("_preRT") for s in _splits(tmp_path, 13) for c in s["train"])


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 30),
    folds=st.integers(2, 6),
    seed=st.integers(0, 2**31),
    pre_rt=st.booleans(),
)
def test_splits_property(n, folds, seed, pre_rt):
    ids = [str(i) for i in range(1, n + 1)]
    if n < folds:
        return
    splits = make_splits(ids, folds, seed, pre_rt)
    assert splits == make_splits(list(reversed(ids)), folds, seed, pre_rt)
    vals = [c.split("_")[0] for s in splits for c in s["val"]]
    assert sorted(vals) == sorted(ids)
    sizes = [len(s["val"]) for s in splits]
    assert max(sizes) - min(sizes) <= 1
    for s in splits:
        val = {c.split("_")[0] for c in s["val"]}
        assert val.isdisjoint(c.split("_")[0] for c in s["train"])
        assert len(s["train"]) == (n - len(val)) * (2 if pre_rt else 1)


# --------------------------------------------------------------------------- bad input


def _one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, text
    return text


def test_missing_registered_mask_is_one_line(cohort, tmp_path):
    src = tmp_path / "cohort"
    shutil.copytree(cohort / "2", src / "2")
    (src / "2" / "midRT" / "2_preRT_mask_registered.nii.gz").unlink()
    result = runner.invoke(
        app, ["build-dataset", str(src), "--work", str(tmp_path / "w"), "--dataset-id", "5"]
    )
    _one_line_error(result, "2_preRT_mask_registered.nii.gz", "missing")
    assert not (tmp_path / "w" / "nnUNet_raw" / "Dataset005_HNTSMRG" / "dataset.json").exists()


def test_existing_id_with_other_channels_is_one_line(cohort, built):
    args = ["build-dataset", str(cohort), "--work", str(built), "--dataset-id", "11"]
    result = runner.invoke(app, [*args, "--channels", "t2", "--seed", "3"])
    _one_line_error(result, "dataset.json", "t2,gradmap")
    result = runner.invoke(app, [*args, "--name", "Other"])
    _one_line_error(result, "Dataset011_HNTSMRG", "already used")
    result = runner.invoke(app, [*args, "--channels", "t2,bogus"])
    _one_line_error(result, "bogus")


def test_dataset_channels_read_by_hand_made_or_odd_dataset_json(tmp_path):
    """The channel list of an existing dataset.json: hntseg's own block, else nnU-Net's
    channel names mapped back to keys (a dataset.json without the block held channel names
    `T2` compared with keys `t2`: a matching dataset was refused); `"hntseg": null` was an
    AttributeError; a channel hntseg cannot make is a one-line error, not a KeyError later."""
    from hntseg.dataset import existing_channels
    from hntseg.errors import InputError

    raw = tmp_path / "Dataset011_X"
    raw.mkdir()
    path = raw / "dataset.json"
    assert existing_channels(raw) is None
    names = {"0": "T2", "1": "gradmap", "2": "noNorm"}
    for data in ({"channel_names": names}, {"hntseg": None, "channel_names": names}):
        path.write_text(json.dumps(data))
        assert existing_channels(raw) == ["t2", "gradmap", "pre_mask_registered"]
    path.write_text(json.dumps({"hntseg": {"channels": ["t2"]}, "channel_names": names}))
    assert existing_channels(raw) == ["t2"]
    for data in ({"channel_names": {"0": "T2", "1": "ADC"}}, {"channel_names": 3}, []):
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match="dataset.json"):
            existing_channels(raw)


def test_fold_never_trained_is_one_line(built, cohort, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(built / "nnUNet_raw", work / "nnUNet_raw")
    shutil.copytree(built / "nnUNet_preprocessed", work / "nnUNet_preprocessed")
    args = ["ensemble-predict", str(cohort), "--work", str(work), "--dataset-id", "11"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "p"), "--folds", "0,1"])
    _one_line_error(result, "no trained model", "hntseg train")
    model = (
        work
        / "nnUNet_results"
        / "Dataset011_HNTSMRG"
        / "nnUNetTrainerHntsegShort__nnUNetResEncUNetMPlans__3d_fullres"
    )
    (model / "fold_0").mkdir(parents=True)
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "p"), "--folds", "0,1"])
    _one_line_error(result, "fold_1", "checkpoint_final.pth", "never trained")
    result = runner.invoke(app, ["train", "--work", str(work), "--dataset-id", "11", "--fold", "7"])
    _one_line_error(result, "--fold 7")
    result = runner.invoke(app, ["train", "--work", str(work), "--dataset-id", "99", "--fold", "0"])
    _one_line_error(result, "Dataset099_*")
    assert np.all([p.is_file() for p in (work / "nnUNet_raw").rglob("*.nii.gz")])


def test_plans_override_checks_patch_against_the_strides(tmp_path):
    from hntseg.errors import InputError
    from hntseg.train import apply_plans_override

    plans = tmp_path / "plans.json"
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]  # total 8, 32, 32
    cfg = {"patch_size": [32, 224, 192], "batch_size": 2}
    cfg["architecture"] = {"arch_kwargs": {"strides": strides}}
    plans.write_text(json.dumps({"configurations": {"3d_fullres": cfg}}))
    got = apply_plans_override(plans, "3d_fullres", {"patch_size": [48, 192, 192], "batch_size": 8})
    assert got["patch_size"] == [48, 192, 192] and got["batch_size"] == 8
    saved = json.loads(plans.read_text())["configurations"]["3d_fullres"]
    assert saved["patch_size"] == [48, 192, 192] and saved["batch_size"] == 8
    for bad, needle in (
        ({"patch_size": [48, 200, 192]}, "multiple of the network's total stride [8, 32, 32]"),
        ({"patch_size": [48, 192]}, "expected 3 whole numbers"),
        ({"patch_size": [0, 192, 192]}, "expected 3 whole numbers"),
        ({"batch_size": 0}, "batch_size 0"),
    ):
        with pytest.raises(InputError, match=re.escape(needle)):
            apply_plans_override(plans, "3d_fullres", bad)
    assert json.loads(plans.read_text())["configurations"]["3d_fullres"] == saved  # untouched
    with pytest.raises(InputError, match="no configuration 2d"):
        apply_plans_override(plans, "2d", {"batch_size": 2})


def test_plans_override_patch_is_zyx_whatever_nnunets_axis_order(tmp_path):
    """For a sagittal scan nnU-Net moves the thick x axis first (transpose_forward) and its
    plans hold the patch in that order: a (z, y, x) patch must be permuted, not copied."""
    from hntseg.errors import InputError
    from hntseg.train import apply_plans_override

    plans = tmp_path / "plans.json"
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]  # total (plans order) 2, 4, 4
    cfg = {"patch_size": [16, 64, 48], "batch_size": 2}  # plans order: x, z, y
    cfg["architecture"] = {"arch_kwargs": {"strides": strides}}
    data = {"transpose_forward": [2, 0, 1], "configurations": {"3d_fullres": cfg}}
    plans.write_text(json.dumps(data))
    got = apply_plans_override(plans, "3d_fullres", {"patch_size": [40, 32, 8]})  # z, y, x
    assert got["patch_size"] == [8, 40, 32]  # x, z, y
    with pytest.raises(InputError, match=re.escape("total stride [4, 4, 2] (z, y, x)")):
        apply_plans_override(plans, "3d_fullres", {"patch_size": [40, 32, 9]})


def test_train_patch_size_option_is_parsed_or_one_line(built, tmp_path):
    args = ["train", "--work", str(built), "--dataset-id", "11", "--fold", "0"]
    _one_line_error(runner.invoke(app, [*args, "--patch-size", "48,a,192"]), "--patch-size")


# --------------------------------------------------------------------------- rebuilds


def _case_bytes(raw: Path) -> dict[str, bytes]:
    return {
        f"{sub}/{p.name}": p.read_bytes()
        for sub in ("imagesTr", "labelsTr")
        for p in sorted((raw / sub).iterdir())
    }


def test_missing_case_file_is_not_up_to_date(cohort, tmp_path):
    args = ["build-dataset", str(cohort), "--work", str(tmp_path), "--dataset-id", "14"]
    assert runner.invoke(app, args).exit_code == 0
    raw = _raw(tmp_path, 14)
    before = _case_bytes(raw)
    record = json.loads((raw / "hntseg_dataset.record.json").read_text())
    assert set(before) <= set(record["outputs"])  # the case files are the dataset's outputs
    for rel in ("imagesTr/2_midRT_0001.nii.gz", "labelsTr/3_preRT.nii.gz"):
        (raw / rel).unlink()
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert _case_bytes(raw) == before, rel  # restored, not "up to date"


def _cohort_copy(cohort: Path, dst: Path, ids=("1", "2", "3")) -> Path:
    for pid in ids:
        shutil.copytree(cohort / pid, dst / pid)
    return dst


def test_bad_rebuild_input_leaves_the_dataset_untouched(cohort, tmp_path):
    a = _cohort_copy(cohort, tmp_path / "a")
    b = _cohort_copy(cohort, tmp_path / "b")
    # B: patient 1 gets another registered mask, patient 3 one on another grid
    reg1 = b / "1" / "midRT" / "1_preRT_mask_registered.nii.gz"
    shutil.copy(b / "1" / "midRT" / "1_midRT_mask.nii.gz", reg1)
    reg3 = b / "3" / "midRT" / "3_preRT_mask_registered.nii.gz"
    off = sitk.ReadImage(str(reg3))
    off.SetSpacing([s * 2 for s in off.GetSpacing()])
    sitk.WriteImage(off, str(reg3))
    work = tmp_path / "w"

    def build(src: Path):
        args = ["build-dataset", str(src), "--work", str(work), "--dataset-id", "7"]
        return runner.invoke(app, [*args, "--folds", "3"])

    assert build(a).exit_code == 0
    raw = _raw(work, 7)
    files, record = _case_bytes(raw), (raw / "hntseg_dataset.record.json").read_bytes()
    _one_line_error(build(b), "3_preRT_mask_registered.nii.gz", "not on the grid")
    assert _case_bytes(raw) == files  # nothing written, not even patient 1's files
    assert (raw / "hntseg_dataset.record.json").read_bytes() == record
    result = build(a)
    assert result.exit_code == 0, result.output
    assert _case_bytes(raw) == files


def test_interrupted_rebuild_is_not_up_to_date(cohort, tmp_path, monkeypatch):
    import hntseg.dataset

    a = _cohort_copy(cohort, tmp_path / "a")
    b = _cohort_copy(cohort, tmp_path / "b")
    reg1 = b / "1" / "midRT" / "1_preRT_mask_registered.nii.gz"
    shutil.copy(b / "1" / "midRT" / "1_midRT_mask.nii.gz", reg1)
    work = tmp_path / "w"
    build_dataset(a, work, 8, folds=3)
    raw = _raw(work, 8)
    files = _case_bytes(raw)

    write_case, written = hntseg.dataset._write_case, []

    def killed_after_one_case(case, *args):
        if written:
            raise KeyboardInterrupt  # as if the process stopped here
        write_case(case, *args)
        written.append(case.name)

    monkeypatch.setattr(hntseg.dataset, "_write_case", killed_after_one_case)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(b, work, 8, folds=3)
    monkeypatch.undo()
    assert written == ["1_midRT"] and _case_bytes(raw) != files  # half rebuilt
    assert not (raw / "hntseg_dataset.record.json").exists()
    build_dataset(a, work, 8, folds=3)  # not "up to date": rebuilt
    assert _case_bytes(raw) == files


def test_gradmaps_of_another_tool_in_another_format_are_used_or_warned(cohort, tmp_path):
    """Ready maps saved as .mha (another tool's) were ignored without a word and replaced by
    maps computed with other random margins; a --gradmaps folder that supplies none is now
    a warning, and the log says how many came from it."""
    import logging

    from hntseg.boxes import boxes_cohort
    from hntseg.gradmap import gradmap_cohort
    from hntseg.log import log

    ids = ["1", "2", "3"]
    boxes_cohort(cohort, tmp_path / "boxes", margin=(3, 3), ids=ids)
    maps = gradmap_cohort(cohort, tmp_path / "boxes", tmp_path / "maps", ids=ids)
    mha = tmp_path / "maps_mha"
    for path in maps.values():
        dst = mha / path.parent.name / path.name.replace(".nii.gz", ".mha")
        dst.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(str(path)), str(dst))
    (tmp_path / "empty").mkdir()
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        arrays = {}
        for name in ("maps", "maps_mha", "empty"):
            work = tmp_path / f"w_{name}"
            build_dataset(cohort, work, 12, folds=3, ids=ids, gradmaps=tmp_path / name)
            raw = _raw(work, 12)
            arrays[name] = [
                sitk.GetArrayFromImage(sitk.ReadImage(str(f)))
                for f in sorted((raw / "imagesTr").glob("*_0001.nii.gz"))
            ]
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert len(arrays["maps"]) == 6
    same = [np.array_equal(a, b) for a, b in zip(arrays["maps"], arrays["maps_mha"], strict=True)]
    computed = [np.array_equal(a, b) for a, b in zip(arrays["maps"], arrays["empty"], strict=True)]
    assert all(same) and not all(computed)
    said = [r.getMessage() for r in seen]
    assert sum("gradient maps: 6 from" in m for m in said) == 2
    warned = [
        r for r in seen if r.levelno == logging.WARNING and "no gradient map" in r.getMessage()
    ]
    assert len(warned) == 1 and str(tmp_path / "empty") in warned[0].getMessage()


def test_nrrd_cohort_is_read_and_unread_suffix_is_named(cohort, tmp_path):
    """A cohort in .nrrd (a common export) was refused with "no file named ..."; a suffix a
    cohort does not read (.mhd) is now named as such."""
    from hntseg.cohort import discover

    src = tmp_path / "nrrd"
    for f in (cohort / "1").rglob("*.nii.gz"):
        dst = src / f.relative_to(cohort).with_name(f.name.replace(".nii.gz", ".nrrd"))
        dst.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(str(f)), str(dst))
    (patient,) = discover(src)
    assert patient.get("midRT_T2").name == "1_midRT_T2.nrrd"
    mhd = src / "1" / "midRT" / "1_midRT_T2.mhd"
    sitk.WriteImage(sitk.ReadImage(str(patient.get("midRT_T2"))), str(mhd))
    patient.get("midRT_T2").unlink()
    with pytest.raises(InputError, match=r"found 1_midRT_T2\.mhd: a cohort's images are read as"):
        discover(src)[0].require("midRT_T2")


def test_missing_gradmaps_folder_is_one_line(cohort, tmp_path):
    args = ["build-dataset", str(cohort), "--work", str(tmp_path / "w"), "--dataset-id", "15"]
    result = runner.invoke(app, [*args, "--gradmaps", str(tmp_path / "nowhere")])
    _one_line_error(result, str(tmp_path / "nowhere"), "--gradmaps", "not found")
    assert not (tmp_path / "w" / "nnUNet_raw" / "Dataset015_HNTSMRG").exists()


def test_near_grid_files_get_the_t2_geometry_exactly(cohort, tmp_path):
    """A mask or channel whose spacing is within float noise of its T2's (9e-5 of 5.9 mm)
    passes the checks, and is written with the T2's exact geometry: nnU-Net refuses spacings
    that differ
    by more than 1e-5 relative, which would stop `train` after the dataset was reported
    built. A file whose origin alone differs slightly (nnU-Net only warns; an oblique scan's
    float32 NIfTI geometry never matches to the last bit) is linked as it is."""
    src = _cohort_copy(cohort, tmp_path / "c")
    mask = src / "1" / "midRT" / "1_midRT_mask.nii.gz"
    pre_t2 = src / "2" / "midRT" / "2_preRT_T2_registered.nii.gz"
    shifted = src / "3" / "midRT" / "3_preRT_T2_registered.nii.gz"
    for path, dspacing, dorigin in [(mask, 9e-5, 0.0), (pre_t2, 9e-5, 2e-4), (shifted, 0, 2e-4)]:
        image = sitk.ReadImage(str(path))
        image.SetSpacing([image.GetSpacing()[0] + dspacing, *image.GetSpacing()[1:]])
        image.SetOrigin([image.GetOrigin()[0] + dorigin, *image.GetOrigin()[1:]])
        sitk.WriteImage(image, str(path))
    before = {p: p.read_bytes() for p in (mask, pre_t2, shifted)}
    work = tmp_path / "w"
    build_dataset(src, work, 12, channels=["t2", "pre_t2_registered"], folds=3, seed=0)
    raw = _raw(work, 12)
    for written, source, pid in [
        (raw / "labelsTr" / "1_midRT.nii.gz", mask, "1"),
        (raw / "imagesTr" / "2_midRT_0001.nii.gz", pre_t2, "2"),
    ]:
        out = sitk.ReadImage(str(written))
        ref = sitk.ReadImage(str(src / pid / "midRT" / f"{pid}_midRT_T2.nii.gz"))
        assert Grid.of(out) == Grid.of(ref), written
        assert np.array_equal(
            sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(sitk.ReadImage(str(source)))
        )
        assert not written.samefile(source)  # rewritten, the input untouched
    assert (raw / "imagesTr" / "3_midRT_0001.nii.gz").samefile(shifted)  # linked
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("channels", ["t2", "t2,gradmap"])
def test_nan_t2_is_refused_before_anything_is_written(cohort, tmp_path, channels):
    """A NaN in a T2 that is only linked (no gradient map computed from it) went into the
    dataset; with a gradient map it was found half-way through writing."""
    src = _cohort_copy(cohort, tmp_path / "c")
    t2 = src / "2" / "midRT" / "2_midRT_T2.nii.gz"
    image = sitk.ReadImage(str(t2), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(image)
    arr[0, 0, 0] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(t2))
    work = tmp_path / "w"
    args = ["build-dataset", str(src), "--work", str(work), "--dataset-id", "13", "--folds", "3"]
    _one_line_error(runner.invoke(app, [*args, "--channels", channels]), str(t2), "NaN")
    raw = _raw(work, 13)
    assert not (raw / "labelsTr").exists() or not any((raw / "labelsTr").iterdir())


def test_nnunet_accepts_compares_spacings_as_float32():
    """A .mha T2 keeps double spacings, but the dataset's .nii.gz files store float32, and
    nnU-Net compares those: a borderline pair must be judged as it will be written."""
    from hntseg.dataset import nnunet_accepts

    def grid(spacing: float, size=(4, 4, 4)) -> Grid:
        return Grid(size, (spacing, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))

    assert nnunet_accepts(grid(1.0), grid(1.0 + 5e-6))
    assert not nnunet_accepts(grid(1.0 + 1.0009e-5), grid(1.0))
    assert not nnunet_accepts(grid(1.0), grid(1.0, (4, 4, 5)))


# --------------------------------------------------------------------------- audit F


@pytest.mark.parametrize("root", ["nnUNet_preprocessed", "nnUNet_results"])
def test_id_used_in_preprocessed_or_results_under_another_name_is_refused(cohort, tmp_path, root):
    """nnU-Net looks an id up in raw, preprocessed and results alike: only raw was checked,
    so `Dataset004_Alpha` kept in preprocessed (or results) beside a new `Dataset004_Beta`
    made every later nnU-Net call by id fail with a traceback."""
    work = tmp_path / "w"
    (work / root / "Dataset004_Alpha").mkdir(parents=True)
    args = ["build-dataset", str(cohort), "--work", str(work), "--dataset-id", "4"]
    for force in ([], ["--force"]):
        result = runner.invoke(app, [*args, "--name", "Beta", "--folds", "3", *force])
        _one_line_error(result, f"{root}/Dataset004_Alpha", "already used", "remove that folder")
    assert not (work / "nnUNet_raw" / "Dataset004_Beta").exists()


@pytest.mark.parametrize(
    "made",
    [
        "nnUNet_preprocessed/Dataset009_HNTSMRG/dataset.json",
        "nnUNet_results/Dataset009_HNTSMRG/nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres/"
        "dataset.json",
    ],
)
def test_same_name_preprocessed_or_trained_with_other_channels_is_refused(cohort, tmp_path, made):
    """With the raw folder deleted but preprocessed data or a trained model kept (nnU-Net
    copies dataset.json into both), a rebuild with other channels was accepted and `train`
    then reused the old model's finished folds: a model of other channels, silently."""
    work = tmp_path / "w"
    old = {"channel_names": {"0": "T2"}, "hntseg": {"channels": ["t2"]}}
    (work / made).parent.mkdir(parents=True)
    (work / made).write_text(json.dumps(old))
    args = ["build-dataset", str(_cohort_copy(cohort, tmp_path / "c")), "--work", str(work)]
    args += ["--dataset-id", "9", "--folds", "3", "--no-pre-rt"]
    for force in ([], ["--force"]):
        result = runner.invoke(app, [*args, "--channels", "t2,gradmap", *force])
        _one_line_error(result, made, "channels t2, not t2,gradmap", "remove")
    assert not (work / "nnUNet_raw" / "Dataset009_HNTSMRG").exists()
    result = runner.invoke(app, [*args, "--channels", "t2"])  # the same channels: built
    assert result.exit_code == 0, result.output


def test_train_refuses_a_dataset_whose_rebuild_was_killed(cohort, tmp_path, monkeypatch):
    """A rebuild stopped half-way (record removed, some case files rewritten) was trained on
    as it was: `build-dataset` never took it as up to date, but `train` did not ask."""
    import hntseg.dataset
    import hntseg.train

    a = _cohort_copy(cohort, tmp_path / "a")
    b = _cohort_copy(cohort, tmp_path / "b")
    shutil.copy(
        b / "1" / "midRT" / "1_midRT_mask.nii.gz",
        b / "1" / "midRT" / "1_preRT_mask_registered.nii.gz",
    )
    work = tmp_path / "w"
    build_dataset(a, work, 8, folds=3)
    write_case, written = hntseg.dataset._write_case, []

    def killed_after_one_case(case, *args):
        if written:
            raise KeyboardInterrupt  # as if the process stopped here
        write_case(case, *args)
        written.append(case.name)

    monkeypatch.setattr(hntseg.dataset, "_write_case", killed_after_one_case)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(b, work, 8, folds=3)
    monkeypatch.undo()
    assert written == ["1_midRT"]

    def nnunet_reached(*args, **kw):
        raise AssertionError("planned a half-rebuilt dataset")

    monkeypatch.setattr(hntseg.train, "_plan_and_preprocess", nnunet_reached)
    with pytest.raises(InputError, match="run hntseg build-dataset"):
        hntseg.train.plan_and_preprocess(work, 8)
    args = ["train", "--work", str(work), "--dataset-id", "8", "--fold", "0", "--device", "cpu"]
    _one_line_error(runner.invoke(app, args), "run hntseg build-dataset")
    assert not (work / "nnUNet_results").exists()


def test_record_splits_are_patient_ids_in_train_and_val(built):
    """The record's splits listed `train` as patient ids but `val` as case names."""
    record = json.loads((_raw(built) / "hntseg_dataset.record.json").read_text())
    assert len(record["splits"]) == len(_splits(built)) == 5
    for by_patient, cases in zip(record["splits"], _splits(built), strict=True):
        for key in ("train", "val"):
            assert by_patient[key] == sorted({c.rsplit("_", 1)[0] for c in cases[key]}, key=int)
        assert not set(by_patient["train"]) & set(by_patient["val"])
    assert sorted((p for s in record["splits"] for p in s["val"]), key=int) == list("12345")


def test_empty_mask_warning_names_the_mask_file(cohort, tmp_path):
    """An empty registered mask gives no boxes: the warning read `mask: no tumour voxels`,
    without saying which of the cohort's masks."""
    import logging

    from hntseg.log import log

    src = _cohort_copy(cohort, tmp_path / "c")
    reg = src / "2" / "midRT" / "2_preRT_mask_registered.nii.gz"
    image = sitk.ReadImage(str(reg))
    empty = sitk.Image(image.GetSize(), image.GetPixelID())
    empty.CopyInformation(image)
    sitk.WriteImage(empty, str(reg))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log.addHandler(handler)
    try:
        build_dataset(src, tmp_path / "w", 10, folds=3, pre_rt=False)
    finally:
        log.removeHandler(handler)
    empty_warnings = [r.getMessage() for r in records if "no tumour voxels" in r.getMessage()]
    assert len(empty_warnings) == 1 and str(reg) in empty_warnings[0], empty_warnings

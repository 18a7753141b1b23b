"""Tests from a mutation-testing audit of dataset, cohort, records and io: each pins down a
behaviour that a plausible bug could change while the rest of the suite still passed."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image

from hntseg import dataset as ds_module
from hntseg.dataset import build_dataset, link_or_copy, make_splits
from hntseg.errors import InputError


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    """Three synthetic patients (read-only by convention: copy before changing a file)."""
    from hntseg.synth import synth_cohort

    root = tmp_path_factory.mktemp("mutcohort")
    synth_cohort(root, patients=3, seed=2, size=(32, 32, 10))
    return root


def _copy(cohort: Path, dst: Path, ids=("1", "2", "3")) -> Path:
    for pid in ids:
        shutil.copytree(cohort / pid, dst / pid)
    return dst


def _raw(work: Path, did: int) -> Path:
    return work / "nnUNet_raw" / f"Dataset{did:03d}_HNTSMRG"


def _arr(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _rewrite(path: Path, fn) -> None:
    """Replace an image file by fn(array), on the same grid, same pixel type unless fn
    changes it. A new file (inode), as an atomic writer makes it: a dataset's hard link to
    the old file keeps the old bytes."""
    image = sitk.ReadImage(str(path))
    out = sitk.GetImageFromArray(fn(sitk.GetArrayFromImage(image)))
    out.CopyInformation(image)
    tmp = path.with_name("new_" + path.name)
    sitk.WriteImage(out, str(tmp))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- dataset: splits


def test_one_fold_is_refused():
    """One fold would validate every patient and train on none."""
    with pytest.raises(InputError, match="--folds 1: need at least 2 folds"):
        make_splits(["1", "2", "3"], 1, 0)
    assert len(make_splits(["1", "2"], 2, 0)) == 2  # as many patients as folds is fine


# --------------------------------------------------------------------------- dataset: files


def test_copy_fallback_copies_and_never_moves_the_input(tmp_path, monkeypatch):
    """Where a hard link is refused (another file system) the input is copied: still there,
    unchanged, and the dataset file is a separate file with the same bytes."""
    src = tmp_path / "in" / "a.nii.gz"
    src.parent.mkdir()
    src.write_bytes(b"input bytes")

    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(ds_module.os, "link", refuse)
    dst = tmp_path / "ds" / "imagesTr" / "a_0000.nii.gz"
    assert link_or_copy(src, dst) == "copied"
    assert src.read_bytes() == b"input bytes" and dst.read_bytes() == b"input bytes"
    assert not dst.samefile(src)
    assert sorted(p.name for p in dst.parent.iterdir()) == ["a_0000.nii.gz"]  # no temp left


def test_link_replaces_an_older_file_by_a_hard_link(tmp_path):
    """A rebuild over a dataset file of another input links the new input (not a copy,
    not the old file kept)."""
    src, dst = tmp_path / "a.nii.gz", tmp_path / "ds" / "a_0000.nii.gz"
    src.write_bytes(b"new")
    dst.parent.mkdir()
    dst.write_bytes(b"old file")
    assert link_or_copy(src, dst) == "linked"
    assert dst.samefile(src) and dst.read_bytes() == b"new"
    assert link_or_copy(src, dst) == "linked" and dst.samefile(src)  # already the same file
    other = tmp_path / "b.nii.gz"
    other.write_bytes(b"other")
    os.link(other, tmp_path / "b_link.nii.gz")
    assert link_or_copy(other, dst) == "linked" and dst.samefile(other)


def test_label_not_uint8_is_written_as_uint8(small_cohort, tmp_path):
    """nnU-Net expects integer labels; a .nii.gz mask stored as int16 or float is rewritten
    as uint8 with the same voxels, the input untouched (not linked as it is)."""
    src = _copy(small_cohort, tmp_path / "c")
    label = src / "1" / "midRT" / "1_midRT_mask.nii.gz"
    _rewrite(label, lambda a: a.astype(np.int16))
    before = label.read_bytes()
    work = tmp_path / "w"
    build_dataset(src, work, 21, channels="t2", pre_rt=False, folds=3)
    out = _raw(work, 21) / "labelsTr" / "1_midRT.nii.gz"
    image = sitk.ReadImage(str(out))
    assert image.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(image), _arr(label))
    assert not out.samefile(label) and label.read_bytes() == before


@pytest.mark.parametrize(
    ("relative", "channels", "change", "needle"),
    [
        ("1/midRT/1_midRT_mask.nii.gz", "t2", "label3", "labels 3"),
        ("2/preRT/2_preRT_mask.nii.gz", "t2", "label3", "labels 3"),
        ("1/midRT/1_preRT_T2_registered.nii.gz", "t2,pre_t2_registered", "constant", "constant"),
        ("2/midRT/2_preRT_T2_registered.nii.gz", "t2,pre_t2_registered", "grid", "not on the grid"),
        ("3/midRT/3_midRT_mask.nii.gz", "t2", "grid", "not on the grid"),
        ("3/midRT/3_preRT_mask_registered.nii.gz", "t2,pre_mask_registered", "label3", "labels 3"),
    ],
)
def test_bad_label_or_channel_is_refused_before_anything_is_written(
    small_cohort, tmp_path, relative, channels, change, needle
):
    """Labels and a registered-mask channel are validated (0, 1, 2), labels on the T2's
    grid; a registered pre-RT T2 must be an MRI (not constant) on the T2's grid. Each is an
    InputError naming the file before a case file is written (a mask on another grid was
    silently put on the T2's grid)."""
    src = _copy(small_cohort, tmp_path / "c")
    path = src / relative
    if change == "label3":
        _rewrite(path, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, 3, a))
    elif change == "constant":
        _rewrite(path, lambda a: np.full_like(a, 7))
    else:
        image = sitk.ReadImage(str(path))
        image.SetSpacing([2 * s for s in image.GetSpacing()])
        sitk.WriteImage(image, str(path))
    work = tmp_path / "w"
    with pytest.raises(InputError, match=needle) as exc:
        build_dataset(src, work, 22, channels=channels, folds=3)
    assert str(path) in str(exc.value)
    raw = _raw(work, 22)
    assert not any(raw.rglob("*.nii.gz"))


def test_computed_gradmaps_are_those_of_the_boxes_and_gradmap_stages(small_cohort, tmp_path):
    """build-dataset's own gradient maps use the same per-case seed as `hntseg boxes`
    (case_seed(seed, "<id>_<phase>", "boxes")), the margin asked for, the registered pre-RT
    mask for a mid-RT case and the pre-RT mask for a pre-RT case: they equal the maps of the
    boxes + gradmap stages with that seed and margin, and another seed gives other maps."""
    from hntseg.boxes import boxes_cohort
    from hntseg.gradmap import gradmap_cohort

    boxes_cohort(small_cohort, tmp_path / "b", margin=(3, 6), seed=5)
    maps = gradmap_cohort(small_cohort, tmp_path / "b", tmp_path / "m")
    build_dataset(small_cohort, tmp_path / "w", 23, margin=(3, 6), seed=5, folds=3)
    raw = _raw(tmp_path / "w", 23)
    assert sorted(maps) == [f"{p}_{ph}" for p in "123" for ph in ("midRT", "preRT")]
    for case, path in maps.items():
        assert np.array_equal(_arr(raw / "imagesTr" / f"{case}_0001.nii.gz"), _arr(path)), case


@pytest.mark.parametrize(
    "relative",
    [
        "1/midRT/1_midRT_mask.nii.gz",  # a label
        "2/midRT/2_preRT_mask_registered.nii.gz",  # the mask of a computed gradient map
    ],
)
def test_changed_label_or_gradmap_mask_is_rebuilt(small_cohort, tmp_path, relative):
    """Every input of a case is in the dataset's record: a changed label, or a changed mask
    whose boxes make a gradient map, means a rebuild, not "up to date"."""
    src = _copy(small_cohort, tmp_path / "c")
    work = tmp_path / "w"
    build_dataset(src, work, 24, margin=3, folds=3)
    raw = _raw(work, 24)
    before = {p.name: p.read_bytes() for p in raw.rglob("*.nii.gz")}
    assert _arr(src / relative).max() > 0
    _rewrite(src / relative, lambda a: np.where(a == a.max(), 0, a).astype(a.dtype))
    build_dataset(src, work, 24, margin=3, folds=3)
    after = {p.name: p.read_bytes() for p in raw.rglob("*.nii.gz")}
    changed = sorted(k for k in before if before[k] != after[k])
    if "1_midRT_mask" in relative:
        assert (raw / "labelsTr" / "1_midRT.nii.gz").samefile(src / relative)
    assert changed == (
        ["1_midRT.nii.gz"] if "1_midRT_mask" in relative else ["2_midRT_0001.nii.gz"]
    )


@pytest.mark.parametrize(
    "change",
    [{"seed": 2}, {"folds": 2}, {"pre_rt": False}, {"margin": 4}, {"ids": ["1", "3"], "folds": 2}],
)
def test_changed_parameters_are_rebuilt_not_up_to_date(small_cohort, tmp_path, change):
    """Seed, folds, pre-RT cases, margin and the cohort's ids are part of what the dataset
    is: a rebuild with another value writes the splits and files of that value, and a case
    no longer in the dataset loses its files."""
    from hntseg.records import read_json

    base = {"seed": 1, "folds": 3, "pre_rt": True, "margin": 3, "ids": None}
    work = tmp_path / "w"
    build_dataset(small_cohort, work, 25, **base)
    raw = _raw(work, 25)
    gm = {p.name: p.read_bytes() for p in (raw / "imagesTr").glob("*_0001.nii.gz")}
    new = {**base, **change}
    build_dataset(small_cohort, work, 25, **new)
    pids = new["ids"] or ["1", "2", "3"]
    splits = read_json(work / "nnUNet_preprocessed" / raw.name / "splits_final.json")
    assert splits == make_splits(pids, new["folds"], new["seed"], new["pre_rt"])
    assert (splits == make_splits(["1", "2", "3"], 3, 1, True)) == ("margin" in change)
    phases = ("midRT", "preRT") if new["pre_rt"] else ("midRT",)
    cases = sorted(f"{p}_{ph}" for p in pids for ph in phases)
    assert sorted(p.name[: -len(".nii.gz")] for p in (raw / "labelsTr").iterdir()) == cases
    assert json.loads((raw / "dataset.json").read_text())["numTraining"] == len(cases)
    record = read_json(raw / "hntseg_dataset.record.json")
    assert {k: record["params"][k] for k in ("seed", "folds", "pre_rt")} == {
        k: new[k] for k in ("seed", "folds", "pre_rt")
    }
    if "margin" in change:
        now = {p.name: p.read_bytes() for p in (raw / "imagesTr").glob("*_0001.nii.gz")}
        assert now.keys() == gm.keys() and all(now[k] != gm[k] for k in gm)


def test_case_file_missing_under_a_record_that_does_not_list_it_is_rebuilt(small_cohort, tmp_path):
    """A record of an older version may not list the case files among its outputs: a
    deleted case file is still written again, not taken as up to date."""
    work = tmp_path / "w"
    build_dataset(small_cohort, work, 26, channels="t2", folds=3)
    raw = _raw(work, 26)
    record = raw / "hntseg_dataset.record.json"
    data = json.loads(record.read_text())
    data["outputs"] = [p for p in data["outputs"] if not p.endswith(".nii.gz")]
    record.write_text(json.dumps(data))
    label = raw / "labelsTr" / "2_preRT.nii.gz"
    label.unlink()
    build_dataset(small_cohort, work, 26, channels="t2", folds=3)
    assert label.samefile(small_cohort / "2" / "preRT" / "2_preRT_mask.nii.gz")


# --------------------------------------------------------------------------- records


def test_case_seed_depends_on_seed_case_and_purpose():
    """Per-case seeds: another global seed, case or purpose gives another seed (boxes and
    registration of one case must not share draws); 32-bit and well spread."""
    from hntseg.records import case_seed

    base = case_seed(0, "1_midRT", "boxes")
    assert base == case_seed(0, "1_midRT", "boxes")
    others = [
        case_seed(1, "1_midRT", "boxes"),
        case_seed(0, "1_preRT", "boxes"),
        case_seed(0, "2_midRT", "boxes"),
        case_seed(0, "1_midRT", "register"),
    ]
    assert base not in others and len(set(others)) == len(others)
    seeds = {case_seed(0, str(i), "boxes") for i in range(2000)}
    assert len(seeds) == 2000 and all(0 <= s < 2**32 for s in seeds)
    assert max(seeds) > 2**31


def _record(tmp_path: Path):
    from hntseg.records import write_record

    src = tmp_path / "in.txt"
    src.write_text("input")
    out = tmp_path / "out.json"
    out.write_text("{}")
    rec = tmp_path / "out.record.json"
    write_record(rec, "t", {"src": src}, {"p": 1, "q": [1, 2]}, [out])
    return rec, src, out


def test_is_done_needs_every_output(tmp_path):
    from hntseg.records import is_done

    rec, src, out = _record(tmp_path)
    assert is_done(rec, {"src": src}, {"p": 1, "q": [1, 2]})
    assert is_done(rec, {"src": src}, {"q": [1, 2], "p": 1})  # key order is no change
    out.unlink()
    assert not is_done(rec, {"src": src}, {"p": 1, "q": [1, 2]})


@pytest.mark.parametrize(
    "text", ["[]", "null", "{not json", '{"fingerprint": 1}', "OUTPUTS_STR", "OUTPUTS_INT"]
)
def test_is_done_is_false_for_a_hand_edited_record(tmp_path, text):
    """A record that is not one (a list, garbage, no fingerprint, outputs not a list of
    paths) means redo, never an exception or "done"."""
    from hntseg.records import is_done

    rec, src, _ = _record(tmp_path)
    data = json.loads(rec.read_text())
    if text == "OUTPUTS_STR":
        data["outputs"] = "out.json"
        text = json.dumps(data)
    elif text == "OUTPUTS_INT":
        data["outputs"] = [1]
        text = json.dumps(data)
    rec.write_text(text)
    assert is_done(rec, {"src": src}, {"p": 1, "q": [1, 2]}) is False


def test_fingerprint_ties_each_digest_to_its_input_name(tmp_path):
    """Swapping two inputs (a T2 given as the mask and the mask as the T2) is other work."""
    from hntseg.records import fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("A")
    b.write_text("B")
    assert fingerprint({"t2": a, "mask": b}, {}) != fingerprint({"t2": b, "mask": a}, {})
    assert fingerprint({"t2": a}, {}) != fingerprint({"mask": a}, {})
    assert fingerprint({"t2": a}, {"s": 1}) != fingerprint({"t2": a}, {"s": 2})


def test_file_digest_sees_a_rewrite_and_another_folder(tmp_path, monkeypatch):
    """The in-process digest cache: a rewrite (same size, new mtime) is read again, and the
    same relative name in another working folder is another file."""
    from hntseg.records import file_digest

    a = tmp_path / "a.txt"
    a.write_text("one")
    first = file_digest(a)
    st = a.stat()
    a.write_text("two")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_digest(a) != first
    for sub, text in (("x", "xxx"), ("y", "yyy")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "f.txt").write_text(text)
        os.utime(tmp_path / sub / "f.txt", ns=(10**18, 10**18))
    digests = []
    for sub in ("x", "y"):
        monkeypatch.chdir(tmp_path / sub)
        digests.append(file_digest("f.txt"))
    assert digests[0] != digests[1]


@pytest.mark.parametrize("how", ["replaced", "resized"])
def test_resume_rereads_an_input_whose_inode_or_size_changed(tmp_path, monkeypatch, how):
    """The stat shortcut compares device, inode, size and mtime: a file replaced by
    another of the same size and mtime (a copy with copy2 semantics), or rewritten in place
    with another size and its mtime set back, is read again and judged by its bytes."""
    from hntseg import records

    rec, src, _ = _record(tmp_path)
    params = {"p": 1, "q": [1, 2]}
    st = src.stat()
    if how == "replaced":
        other = tmp_path / "other.txt"
        other.write_text("INPUT")  # same size, other bytes
        os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(other, src)
        assert src.stat().st_ino != st.st_ino
    else:
        with open(src, "r+b") as fh:  # same inode, another size
            fh.write(b"input, longer")
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_mtime_ns == st.st_mtime_ns
    digest = records.file_digest
    monkeypatch.setattr(records, "file_digest", lambda path, *a: digest(path, {}))  # no cache
    assert records.is_done(rec, {"src": src}, params) is False


def test_record_path_names():
    from hntseg.records import record_path

    assert record_path("d/1_midRT_gradmap.nii.gz").name == "1_midRT_gradmap.record.json"
    assert record_path("d/1_midRT_boxes.json").name == "1_midRT_boxes.record.json"
    assert record_path("d/fig.png").name == "fig.record.json"
    assert record_path("d/x.mha").name == "x.mha.record.json"


# --------------------------------------------------------------------------- io


def test_infinite_values_are_refused_like_nan(tmp_path):
    from hntseg.io import read_image, validate_image

    arr = np.ones((3, 4, 5), np.float32)
    arr[1, 1, 1] = np.inf
    with pytest.raises(InputError, match="x.mha: image contains NaN or infinite"):
        validate_image(make_image(arr), "x.mha")
    arr[1, 1, 1] = -np.inf
    sitk.WriteImage(make_image(arr.astype(np.float64)), str(tmp_path / "d.mha"))
    with pytest.raises(InputError, match="d.mha: T2 contains NaN or infinite"):
        read_image(tmp_path / "d.mha", "T2")


def test_constant_image_is_refused_and_a_varying_one_passes():
    from hntseg.io import check_not_constant

    with pytest.raises(InputError, match=r"t\.mha: T2 is constant \(every voxel 3\)"):
        check_not_constant(make_image(np.full((2, 3, 4), 3, np.int16)), "t.mha")
    arr = np.full((2, 3, 4), 3, np.int16)
    arr[1, 2, 3] = 4
    check_not_constant(make_image(arr), "t.mha")


def test_origin_tolerance_scales_with_the_largest_spacing_and_is_absolute():
    """Origins are compared to 1e-4 of the largest spacing (at least 1e-4 mm): 1.5e-4 mm off
    on a 2 mm slice grid is float noise; a relative tolerance would let far origins drift."""
    from hntseg.io import Grid

    eye = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    thick = Grid((4, 4, 4), (0.5, 0.5, 2.0), (0.0, 0.0, 0.0), eye)
    assert thick.mismatch(Grid(thick.size, thick.spacing, (0.0, 0.0, 1.5e-4), eye)) is None
    assert thick.mismatch(Grid(thick.size, thick.spacing, (0.0, 0.0, 2.5e-4), eye))
    far = Grid((4, 4, 4), (1.0, 1.0, 1.0), (1000.0, 0.0, 0.0), eye)
    shifted = Grid(far.size, far.spacing, (1000.005, 0.0, 0.0), eye)
    assert far.mismatch(shifted).startswith("origin")


def test_check_same_grid_passes_its_tolerance_on(tmp_path):
    from hntseg.io import Grid, check_same_grid

    eye = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    a = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), eye)
    b = Grid((4, 4, 4), (1.0005, 1.0, 1.0), (0.0, 0.0, 0.0), eye)
    with pytest.raises(InputError, match="spacing"):
        check_same_grid(a, b, "b.nii.gz")
    check_same_grid(a, b, "b.nii.gz", tol=1e-3)


def test_nan_to_null_turns_infinities_to_null_too():
    from hntseg.io import nan_to_null

    data = {"a": [1.0, float("nan"), float("inf")], "b": (float("-inf"), 2), "c": {"d": 0.5}}
    assert nan_to_null(data) == {"a": [1.0, None, None], "b": [None, 2], "c": {"d": 0.5}}


def test_write_image_compresses_unless_told_not_to(tmp_path):
    from hntseg.io import write_image

    image = make_image(np.zeros((20, 30, 30), np.float32))
    small = write_image(image, tmp_path / "a.mha").stat().st_size
    big = write_image(image, tmp_path / "b.mha", compress=False).stat().st_size
    assert small * 10 < big


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    """The writer writes a temporary file and renames it into place: a failure half-way
    leaves the previous file as it was."""
    from hntseg.io import atomic_path

    path = tmp_path / "r.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    with atomic_path(path) as tmp:
        assert tmp != path and tmp.parent == path.parent
        tmp.write_text("new")
    assert path.read_text() == "new"


def test_registered_folder_supplies_the_registered_files(small_cohort, tmp_path):
    """--registered DIR: the registered pre-RT T2 and mask come from DIR (e.g. `hntseg
    register`'s output), not from the cohort's organizers' files."""
    src = _copy(small_cohort, tmp_path / "c")
    reg = tmp_path / "reg"
    for pid in ("1", "2", "3"):
        (reg / pid / "midRT").mkdir(parents=True)
        for kind in ("T2", "mask"):
            name = f"{pid}_preRT_{kind}_registered.nii.gz"
            os.replace(src / pid / "midRT" / name, reg / pid / "midRT" / name)
    chans = "t2,pre_t2_registered,pre_mask_registered"
    build_dataset(src, tmp_path / "w", 27, channels=chans, registered=reg, pre_rt=False, folds=3)
    raw = _raw(tmp_path / "w", 27)
    for pid in ("1", "2", "3"):
        for i, kind in ((1, "T2"), (2, "mask")):
            reg_file = reg / pid / "midRT" / f"{pid}_preRT_{kind}_registered.nii.gz"
            assert (raw / "imagesTr" / f"{pid}_midRT_{i:04d}.nii.gz").samefile(reg_file)


# --------------------------------------------------------------------------- cohort


def test_ids_are_selected_as_text_and_any_unknown_one_is_named(tiny_cohort):
    from hntseg.cohort import discover

    assert [p.id for p in discover(tiny_cohort, ids=[3, 1])] == ["1", "3"]  # numbers too
    with pytest.raises(InputError, match="no patient folder for id.s. 9$"):
        discover(tiny_cohort, ids=["1", "9"])  # one unknown id is not silently dropped


def test_unreadable_optional_file_is_listed_when_headers_are_not_checked(tiny_cohort, tmp_path):
    """check_readable=False (the --registered folder of another cohort): files are listed
    without reading them; the default reads each header."""
    from hntseg.cohort import discover

    root = tmp_path / "c"
    shutil.copytree(tiny_cohort / "1", root / "1")
    bad = root / "1" / "midRT" / "1_preRT_T2_registered.nii.gz"
    bad.write_bytes(b"not yet written")
    (patient,) = discover(root, required=(), check_readable=False)
    assert patient.get("preRT_T2_registered") == bad
    with pytest.raises(InputError, match="1_preRT_T2_registered.nii.gz: cannot read"):
        discover(root, required=())


def test_ready_gradmap_nii_gz_is_preferred(tmp_path):
    from hntseg.cohort import find_gradmap

    folder = tmp_path / "g" / "1"
    folder.mkdir(parents=True)
    assert find_gradmap(tmp_path / "g", "1", "midRT") is None
    for suffix in (".nrrd", ".mha", ".nii.gz"):
        (folder / f"1_midRT_gradmap{suffix}").write_bytes(b"x")
    assert find_gradmap(tmp_path / "g", "1", "midRT").name == "1_midRT_gradmap.nii.gz"
    assert find_gradmap(tmp_path / "g", "1", "preRT") is None


def test_run_cases_names_the_first_failure(caplog):
    from hntseg.cohort import run_cases
    from hntseg.errors import StageError

    def work(case: str) -> bool:
        raise InputError(f"{case}.nii.gz: bad")

    with pytest.raises(StageError, match=r"2 case\(s\) failed: 1_midRT, 2_midRT; first: a\.nii"):
        run_cases("demo", [("1_midRT", "a"), ("2_midRT", "b")], work)


def test_a_gradmaps_folder_that_supplies_none_warns_even_for_one_case():
    import logging

    from hntseg.cohort import report_gradmaps
    from hntseg.log import log

    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    log.addHandler(handler)
    try:
        report_gradmaps(Path("maps"), 0, 1)
        report_gradmaps(Path("maps"), 1, 1)
    finally:
        log.removeHandler(handler)
    warned = [r for r in seen if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "all 1 computed" in warned[0].getMessage()


def test_gzip_cut_in_its_trailer_is_refused(tmp_path):
    """A .nii.gz whose voxels all decompress but whose gzip trailer is cut (a copy stopped
    in its last bytes) is damage, not a readable file."""
    from hntseg.io import read_image, write_image

    arr = (np.random.default_rng(0).random((10, 40, 40)) * 3).astype(np.uint8)
    path = write_image(make_image(arr), tmp_path / "a.nii.gz")
    path.write_bytes(path.read_bytes()[:-4])  # the gzip size field
    with pytest.raises(InputError, match="gzip stream ends early"):
        read_image(path)


def test_ready_gradmap_wins_over_ready_boxes_and_force_rebuilds(small_cohort, tmp_path):
    """With both --gradmaps and ready boxes, a case's ready gradient map is used as it is
    (linked) and the boxes only serve cases without one; `force` rewrites an up-to-date
    dataset."""
    from hntseg.boxes import boxes_cohort

    boxes_cohort(small_cohort, tmp_path / "b", margin=3, seed=0)
    ready = tmp_path / "g" / "1" / "1_midRT_gradmap.nii.gz"
    ready.parent.mkdir(parents=True)
    shutil.copy(small_cohort / "1" / "midRT" / "1_midRT_T2.nii.gz", ready)  # any image will do
    work = tmp_path / "w"
    args = {"gradmaps": tmp_path / "g", "boxes": tmp_path / "b", "folds": 3}
    build_dataset(small_cohort, work, 28, **args)
    raw = _raw(work, 28)
    assert (raw / "imagesTr" / "1_midRT_0001.nii.gz").samefile(ready)
    assert not (raw / "imagesTr" / "2_midRT_0001.nii.gz").samefile(ready)
    stamp = (raw / "dataset.json").stat().st_mtime_ns
    build_dataset(small_cohort, work, 28, **args)
    assert (raw / "dataset.json").stat().st_mtime_ns == stamp  # up to date
    build_dataset(small_cohort, work, 28, force=True, **args)
    assert (raw / "dataset.json").stat().st_mtime_ns != stamp


def test_outputs_follow_the_umask_read_at_import(tmp_path, monkeypatch):
    """The mode is 0666 less the user's umask (not mkstemp's 0600, not a fixed 0644)."""
    from hntseg import io
    from hntseg.io import write_json

    monkeypatch.setattr(io, "_UMASK", 0o027)
    assert write_json(tmp_path / "a.json", {}).stat().st_mode & 0o777 == 0o640
    monkeypatch.setattr(io, "_UMASK", 0o002)
    assert write_json(tmp_path / "b.json", {}).stat().st_mode & 0o777 == 0o664


def test_resample_to_nearest_keeps_labels_and_smooth_gives_float(tmp_path):
    """Labels are resampled nearest-neighbour in their own pixel type; images B-spline,
    as float32 (a uint8 T2 is not rounded back to integers)."""
    from hntseg.io import Grid, resample_to

    arr = np.zeros((4, 6, 6), np.uint8)
    arr[1:3, 2:4, 2:4] = 2
    arr[1:3, 2:4, 4] = 1
    mask = make_image(arr, spacing=(1.0, 1.0, 1.0))
    half = Grid((12, 12, 8), (0.5, 0.5, 0.5), (-0.25, -0.25, -0.25), mask.GetDirection())
    out = resample_to(mask, half, nearest=True)
    assert out.GetPixelID() == sitk.sitkUInt8 and Grid.of(out) == half
    got = sitk.GetArrayFromImage(out)
    assert set(np.unique(got)) == {0, 1, 2}
    assert np.array_equal(got[::2, ::2, ::2], arr)
    smooth = resample_to(mask, half, nearest=False)
    assert smooth.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(smooth)
    assert not np.allclose(values, np.round(values))  # interpolated between the labels


def test_shard_is_round_robin_like_nnunet():
    """--num-parts K --part-id I takes every K-th case from I (nnU-Net's convention), so
    the parts of a sorted cohort mix small and large ids."""
    from hntseg.cohort import shard

    items = [str(i) for i in range(1, 8)]
    assert [shard(items, 3, i) for i in range(3)] == [["1", "4", "7"], ["2", "5"], ["3", "6"]]


@pytest.mark.parametrize("pixel", [sitk.sitkUInt8, sitk.sitkFloat32])
def test_an_empty_image_is_refused(pixel):
    from hntseg.io import validate_image

    with pytest.raises(InputError, match=r"e\.mha: image is empty \(size \(0, 4, 4\)\)"):
        validate_image(sitk.Image([0, 4, 4], pixel), "e.mha")

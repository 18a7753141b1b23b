"""Synthetic cohort: determinism, layout, geometry, labels, shrinkage, known registration."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import SimpleITK as sitk

from hntseg.cohort import FILES, discover, expected_path
from hntseg.errors import InputError
from hntseg.io import Grid, array, read_json, read_mask
from hntseg.synth import parse_size, parse_spacing, synth_cohort, synth_patient


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_identical_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synth_cohort(a, patients=2, seed=7, size=(40, 40, 12))
    synth_cohort(b, patients=2, seed=7, size=(40, 40, 12))
    for pid in ("1", "2"):
        for key in FILES:
            assert _digest(expected_path(a, pid, key)) == _digest(expected_path(b, pid, key))


def test_other_seed_differs_and_patients_independent(tmp_path):
    synth_cohort(tmp_path / "a", patients=1, seed=7, size=(40, 40, 12))
    synth_cohort(tmp_path / "b", patients=1, seed=8, size=(40, 40, 12))
    synth_cohort(tmp_path / "c", patients=3, seed=7, size=(40, 40, 12))
    t2 = "preRT_T2"
    assert _digest(expected_path(tmp_path / "a", "1", t2)) != _digest(
        expected_path(tmp_path / "b", "1", t2)
    )
    # adding patients does not change patient 1
    assert _digest(expected_path(tmp_path / "a", "1", t2)) == _digest(
        expected_path(tmp_path / "c", "1", t2)
    )


def test_layout_geometry_and_labels(tiny_cohort):
    for p in discover(tiny_cohort):
        pre_t2 = sitk.ReadImage(str(p.get("preRT_T2")))
        mid_t2 = sitk.ReadImage(str(p.get("midRT_T2")))
        assert pre_t2.GetSize() == (64, 64, 16)
        assert pre_t2.GetPixelID() == sitk.sitkFloat32
        sx, sy, sz = pre_t2.GetSpacing()
        assert sz > 1.5 * sx and sx == pytest.approx(sy)  # anisotropic like real scans
        assert Grid.of(pre_t2) != Grid.of(mid_t2)  # pre and mid grids differ
        for key in ("midRT_mask", "preRT_mask_registered", "preRT_T2_registered"):
            assert Grid.of(sitk.ReadImage(str(p.get(key)))) == Grid.of(mid_t2)
        assert Grid.of(sitk.ReadImage(str(p.get("preRT_mask")))) == Grid.of(pre_t2)
        for key in ("preRT_mask", "midRT_mask", "preRT_mask_registered"):
            mask = sitk.ReadImage(str(p.get(key)))
            assert mask.GetPixelID() == sitk.sitkUInt8
            assert set(np.unique(array(mask))) <= {0, 1, 2}
        assert np.isfinite(array(mid_t2)).all() and array(mid_t2).max() > 0


def test_tumours_shrink_and_sometimes_vanish(tmp_path):
    truths = synth_cohort(tmp_path, patients=8, seed=1, size=(48, 48, 12))
    pre = np.array([[t["volumes_ml"][s]["preRT"] for s in ("GTVp", "GTVn")] for t in truths])
    mid = np.array([[t["volumes_ml"][s]["midRT"] for s in ("GTVp", "GTVn")] for t in truths])
    present = pre > 0.5
    assert present[:, 0].sum() >= 6  # a primary in most patients
    assert (mid[present] <= pre[present]).all()
    assert (mid[present] < 0.9 * pre[present]).mean() > 0.5  # shrinkage happens
    assert ((mid == 0) & present).any()  # some structure vanishes at mid-RT
    assert (pre[:, 1] > 0).any()  # nodes exist
    summary = read_json(tmp_path / "synth.json")
    assert summary["params"]["seed"] == 1 and len(summary["patients"]) == 8


def test_registered_mask_is_the_exact_warp(tiny_cohort):
    """Mid-RT tumours lie inside the registered pre-RT tumour (they only shrink)."""
    inside = total = 0
    for p in discover(tiny_cohort):
        reg = array(read_mask(p.get("preRT_mask_registered")))
        mid = array(read_mask(p.get("midRT_mask")))
        inside += int((reg > 0)[mid > 0].sum())
        total += int((mid > 0).sum())
    assert total > 0 and inside / total > 0.95  # a few voxels differ by discretisation


def test_real_size_grid_option(tmp_path):
    truth = synth_patient(tmp_path, "1", seed=0, size=(20, 24, 10), spacing=(0.5, 0.5, 2.0))
    img = sitk.ReadImage(str(expected_path(tmp_path, "1", "preRT_T2")))
    assert img.GetSize() == (20, 24, 10)
    assert img.GetSpacing() == pytest.approx((0.5, 0.5, 2.0))
    assert truth["preRT_grid"]["size_xyz"] == [20, 24, 10]
    assert parse_size("512x512x75") == (512, 512, 75)


def test_never_writes_over_a_real_cohort(tiny_cohort, tmp_path):
    """A folder with files but no synth.json is someone's data: refused, --force or not."""
    real = tmp_path / "real"
    (real / "1" / "midRT").mkdir(parents=True)
    t2 = real / "1" / "midRT" / "1_midRT_T2.nii.gz"
    t2.write_bytes(b"patient data")
    for force in (False, True):
        with pytest.raises(InputError, match="not a synthetic cohort"):
            synth_cohort(real, patients=1, size=(16, 16, 8), force=force)
    assert t2.read_bytes() == b"patient data"
    synth_cohort(tmp_path / "new", patients=1, size=(16, 16, 8))  # new folder: fine
    synth_cohort(tmp_path / "new", patients=2, size=(16, 16, 8))  # earlier phantoms: fine


@pytest.mark.parametrize(
    ("parse", "text"),
    [
        (parse_spacing, "nanx1x1"),
        (parse_spacing, "infx1x1"),
        (parse_spacing, "1e300x1x1"),
        (parse_spacing, "1x1x1e-300"),
        (parse_spacing, "1x-1x1"),
        (parse_size, "100000x100000x1000"),
        (parse_size, "4096x16x16"),
        (parse_size, "2048x2048x2048"),  # each axis fine, too many voxels in all
        (parse_size, "16x16x4"),
    ],
)
def test_parse_rejects_non_finite_and_out_of_range(parse, text):
    with pytest.raises(InputError, match=r"^--(size|spacing) '") as err:
        parse(text)
    assert "\n" not in str(err.value)


def test_parse_accepts_x_and_comma():
    assert parse_spacing("0.5,0.5,2") == parse_spacing("0.5x0.5x2") == (0.5, 0.5, 2.0)
    assert parse_size("64,64,16") == parse_size("64X64x16") == (64, 64, 16)
    assert parse_size("768x768x162") == (768, 768, 162)  # the paper's largest case


@pytest.mark.parametrize(
    ("size", "spacing"),
    [
        ((16, 16, 8), (math.nan, 1.0, 1.0)),
        ((16, 16, 8), (1.0, 1.0, math.inf)),
        ((16, 16, 8), (1.0, 1.0, 1e-300)),
        ((16, 16, 8), (1.0, 1.0)),
        ((100000, 100000, 1000), None),
        ((2000, 16, 8), (1.0, 1.0, 1.0)),  # field of view 2 m
    ],
)
def test_library_rejects_bad_grid_before_writing(tmp_path, size, spacing):
    with pytest.raises(InputError, match="--size|--spacing"):
        synth_cohort(tmp_path / "c", patients=1, size=size, spacing=spacing)
    assert not (tmp_path / "c").exists()
    with pytest.raises(InputError, match="--size|--spacing"):
        synth_patient(tmp_path / "p", "1", seed=0, size=size, spacing=spacing)
    assert not (tmp_path / "p").exists()


def test_rerun_with_spacing_skips_existing_patients(tmp_path):
    """synth.json holds the spacing as a list: a rerun with the same tuple skips patients."""
    synth_cohort(tmp_path, patients=2, size=(16, 16, 8), spacing=(2, 2, 5))
    paths = [expected_path(tmp_path, pid, key) for pid in ("1", "2") for key in FILES]
    before = [(p.stat().st_mtime_ns, p.stat().st_ino) for p in paths]
    synth_cohort(tmp_path, patients=2, size=(16, 16, 8), spacing=(2.0, 2.0, 5.0))
    assert [(p.stat().st_mtime_ns, p.stat().st_ino) for p in paths] == before
    assert read_json(tmp_path / "synth.json")["params"]["spacing_xyz_mm"] == [2.0, 2.0, 5.0]


def test_a_killed_synth_resumes(tmp_path, monkeypatch):
    """synth.json is written first: a run killed half-way leaves a folder synth recognises."""
    import hntseg.synth as synth

    real = synth.synth_patient

    def dies_at_2(out, pid, *args, **kwargs):
        if pid == "2":
            raise KeyboardInterrupt
        return real(out, pid, *args, **kwargs)

    monkeypatch.setattr(synth, "synth_patient", dies_at_2)
    with pytest.raises(KeyboardInterrupt):
        synth_cohort(tmp_path / "c", patients=3, size=(16, 16, 8))
    monkeypatch.setattr(synth, "synth_patient", real)
    truths = synth_cohort(tmp_path / "c", patients=3, size=(16, 16, 8))
    assert [t["id"] for t in truths] == ["1", "2", "3"]
    assert read_json(tmp_path / "c" / "synth.json")["complete"] is True

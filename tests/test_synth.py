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


# --- mutation audit: the known mapping, the exact registration, the truths ---------------


def test_known_mapping_is_the_rigid_motion_plus_the_control_deformation():
    """T(x) = R x + t + d(x), d the B-spline of the control displacements: at a control
    node it is exactly that node's displacement; with no deformation T is the rigid part."""
    from hntseg.synth import make_patient, mid_to_pre

    p = make_patient(np.random.default_rng(3), (240.0, 240.0, 150.0))
    nodes = [(1, 2, 3), (2, 3, 2), (3, 1, 4)]  # (z, y, x) lattice indices, inside
    pts = np.array([p.deform_origin + np.array([i, j, k]) * p.deform_step for k, j, i in nodes])
    rigid = pts @ p.rotation.T + p.translation
    want = np.array([[p.deform[c][k, j, i] for c in range(3)] for k, j, i in nodes])
    assert np.abs(want).max() > 1.0  # a real deformation, not a zero one
    np.testing.assert_allclose(mid_to_pre(p, pts) - rigid, want, atol=1e-9)
    assert not np.allclose(p.rotation, np.eye(3)) and np.abs(p.translation).max() > 0.5
    p.deform = np.zeros_like(p.deform)
    np.testing.assert_allclose(mid_to_pre(p, pts), rigid, atol=1e-9)


def _patient_of(cohort, pid, seed=0):
    """Patient `pid` of a synthetic cohort drawn again from its seed, as synth_patient does."""
    from hntseg.records import case_seed
    from hntseg.synth import make_patient

    pre = sitk.ReadImage(str(expected_path(cohort, pid, "preRT_T2")))
    fov = tuple(n * s for n, s in zip(pre.GetSize(), pre.GetSpacing(), strict=True))
    return make_patient(np.random.default_rng(case_seed(seed, pid, "synth")), fov), pre


def test_registered_files_are_pre_rt_sampled_at_the_known_mapping(tiny_cohort):
    """The `_registered` files are the pre-RT mask (nearest neighbour) and T2 (cubic
    B-spline) sampled at T(mid-RT grid); the truth's rigid part is the patient's."""
    from scipy import ndimage

    from hntseg.synth import grid_points, mid_to_pre

    truths = {t["id"]: t for t in read_json(tiny_cohort / "synth.json")["patients"]}
    for pid in ("1", "2"):
        patient, pre = _patient_of(tiny_cohort, pid)
        np.testing.assert_allclose(truths[pid]["rigid"]["rotation"], patient.rotation)
        np.testing.assert_allclose(truths[pid]["rigid"]["translation_mm"], patient.translation)
        mid = sitk.ReadImage(str(expected_path(tiny_cohort, pid, "midRT_T2")))
        mapped = mid_to_pre(patient, grid_points(Grid.of(mid)))
        idx = ((mapped - np.array(pre.GetOrigin())) / np.array(pre.GetSpacing()))[:, ::-1].T
        shape = array(mid).shape
        pre_mask = array(read_mask(expected_path(tiny_cohort, pid, "preRT_mask")))
        reg_mask = array(read_mask(expected_path(tiny_cohort, pid, "preRT_mask_registered")))
        want = ndimage.map_coordinates(pre_mask, idx, order=0, mode="constant", cval=0)
        assert reg_mask.any() and np.array_equal(reg_mask, want.reshape(shape))
        reg_t2 = array(sitk.ReadImage(str(expected_path(tiny_cohort, pid, "preRT_T2_registered"))))
        want = ndimage.map_coordinates(array(pre), idx, order=3, mode="constant", cval=0.0)
        np.testing.assert_allclose(reg_t2, np.maximum(want, 0).reshape(shape), atol=1e-2)


def test_mid_rt_intensity_follows_the_truths_scale(tiny_cohort):
    """Mid-RT T2 = the pre-RT anatomy x intensity_scale (plus bias and noise)."""
    truths = read_json(tiny_cohort / "synth.json")["patients"]
    scales = [t["intensity_scale"] for t in truths]
    assert max(scales) / min(scales) > 1.3  # the check below can tell them apart
    for t in truths:
        mid = array(sitk.ReadImage(str(expected_path(tiny_cohort, t["id"], "midRT_T2"))))
        reg = sitk.ReadImage(str(expected_path(tiny_cohort, t["id"], "preRT_T2_registered")))
        reg = array(reg)
        tissue = reg > 200
        ratio = np.median(mid[tissue]) / np.median(reg[tissue])
        assert 0.85 < ratio / t["intensity_scale"] < 1.18, (t["id"], ratio)


def test_spacing_reaches_the_written_images(tmp_path):
    truths = synth_cohort(tmp_path, patients=1, size=(16, 16, 8), spacing=(2.0, 2.5, 5.0))
    img = sitk.ReadImage(str(expected_path(tmp_path, "1", "preRT_T2")))
    assert img.GetSpacing() == pytest.approx((2.0, 2.5, 5.0))
    assert truths[0]["preRT_grid"]["spacing_xyz_mm"] == pytest.approx([2.0, 2.5, 5.0])


@pytest.mark.parametrize("patients", [0, -1])
def test_no_patients_is_refused(tmp_path, patients):
    with pytest.raises(InputError, match="--patients"):
        synth_cohort(tmp_path / "c", patients=patients, size=(16, 16, 8))
    assert not (tmp_path / "c").exists()


def test_rerun_with_another_seed_or_force_draws_again(tmp_path):
    """Patients are kept only when the params are the same: another seed redraws them (the
    same bytes as a fresh cohort of that seed); --force redraws too."""
    c, fresh = tmp_path / "c", tmp_path / "fresh"
    synth_cohort(c, patients=1, seed=1, size=(16, 16, 8))
    synth_cohort(c, patients=1, seed=2, size=(16, 16, 8))
    synth_cohort(fresh, patients=1, seed=2, size=(16, 16, 8))
    for key in FILES:
        assert _digest(expected_path(c, "1", key)) == _digest(expected_path(fresh, "1", key))
    assert read_json(c / "synth.json")["params"]["seed"] == 2
    path = expected_path(c, "1", "midRT_T2")
    before = path.stat().st_mtime_ns, path.stat().st_ino
    synth_cohort(c, patients=1, seed=2, size=(16, 16, 8), force=True)
    assert (path.stat().st_mtime_ns, path.stat().st_ino) != before
    assert _digest(path) == _digest(expected_path(fresh, "1", "midRT_T2"))


def test_weight_loss_moves_the_skin_in_at_mid_rt():
    """At mid-RT the fat thins: a point just inside the pre-RT skin is outside the body."""
    from hntseg.synth import make_patient, render

    p = make_patient(np.random.default_rng(5), (240.0, 240.0, 150.0))
    thin, ax = p.weight_loss, p.body_axes[0]
    assert thin < 0.99
    pts = np.array([[ax * (1 + thin) / 2, 0.0, 0.0], [ax * thin * 0.5, 0.0, 0.0]])
    pre, _ = render(p, pts, "pre")
    mid, _ = render(p, pts, "mid")
    assert pre[0] > 0 and mid[0] == 0  # the skin moved in
    assert pre[1] == mid[1] > 0  # the anatomy inside did not move

"""Gradient map: parity with a plain scipy reference, invariants, files, cohort, CLI errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from typer.testing import CliRunner

from hntseg.boxes import Box, BoxSet, boxes_cohort, boxes_path, find_boxes, write_boxes
from hntseg.cli import app
from hntseg.errors import InputError
from hntseg.gradmap import gradient_map, gradmap_case, gradmap_cohort, gradmap_path
from hntseg.io import Grid
from hntseg.log import log

runner = CliRunner()


def make_image(arr, spacing=(0.5, 0.5, 2.0), origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def t2_array(seed: int, shape=(12, 40, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = ndimage.gaussian_filter(rng.random(shape), 1.5) * 800 + rng.random(shape) * 30
    return arr.astype(np.float32)


def reference_map(t2: np.ndarray, boxes, sigma=1.0, gain=2.0) -> np.ndarray:
    """The method written out plainly: per box crop, normalise, gradient, rescale, gain, clip."""
    out = np.zeros(t2.shape, np.float64)
    for b in boxes:
        z0, y0, x0 = b.start
        z1, y1, x1 = b.stop
        crop = t2[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1].astype(np.float64)
        crop = (crop - crop.min()) / (crop.max() - crop.min())
        g = ndimage.gaussian_gradient_magnitude(crop, sigma)
        g = (g - g.min()) / (g.max() - g.min())
        out[z0 : z1 + 1, y0 : y1 + 1, x0 : x1 + 1] = np.clip(g * gain, 0, 1)
    return out


def boxset_for(image, boxes):
    return BoxSet(list(boxes), Grid.of(image))


def test_parity_with_scipy_reference():
    arr = t2_array(0)
    image = make_image(arr)
    boxes = [Box(1, (2, 5, 6), (9, 25, 30)), Box(2, (0, 20, 20), (6, 39, 39))]  # overlapping
    for sigma, gain in ((1.0, 2.0), (1.7, 1.0)):
        ours = sitk.GetArrayFromImage(gradient_map(image, boxset_for(image, boxes), sigma, gain))
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, reference_map(arr, boxes, sigma, gain), atol=1e-6)


def test_context_matches_whole_image_gradient():
    arr = t2_array(1)
    image = make_image(arr)
    box = Box(1, (3, 8, 9), (8, 27, 33))
    whole = ndimage.gaussian_gradient_magnitude(arr.astype(np.float64), 1.0)[box.slices]
    whole = np.minimum((whole - whole.min()) / (whole.max() - whole.min()) * 2, 1)
    ours = sitk.GetArrayFromImage(gradient_map(image, boxset_for(image, [box]), context=4))
    np.testing.assert_allclose(ours[box.slices], whole, atol=1e-6)
    plain = sitk.GetArrayFromImage(gradient_map(image, boxset_for(image, [box])))
    assert not np.allclose(plain[box.slices], whole, atol=1e-3)  # reflection at the box edge


def test_sigma_mm_converts_per_axis():
    arr = t2_array(2)
    image = make_image(arr, spacing=(0.5, 0.5, 2.0))
    box = Box(1, (1, 4, 4), (10, 35, 35))
    ours = sitk.GetArrayFromImage(gradient_map(image, boxset_for(image, [box]), sigma_mm=1.0))
    crop = arr[box.slices].astype(np.float64)
    g = ndimage.gaussian_gradient_magnitude((crop - crop.min()) / np.ptp(crop), (0.5, 2.0, 2.0))
    g = np.minimum((g - g.min()) / np.ptp(g) * 2, 1)
    np.testing.assert_allclose(ours[box.slices], g, atol=1e-6)


def test_flat_box_is_ones_and_geometry():
    arr = np.full((6, 10, 10), 7.0, np.float32)
    image = make_image(arr, spacing=(0.7, 0.7, 1.5), origin=(3.0, -2.0, 1.0))
    box = Box(1, (1, 1, 1), (3, 4, 5))
    gm = gradient_map(image, boxset_for(image, [box]))
    out = sitk.GetArrayFromImage(gm)
    assert (out[box.slices] == 1).all() and out.sum() == np.prod(box.shape)
    assert Grid.of(gm) == Grid.of(image) and gm.GetPixelID() == sitk.sitkFloat32


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    shape=st.tuples(st.integers(3, 8), st.integers(5, 16), st.integers(5, 16)),
    gain=st.floats(0.5, 4.0),
    sigma=st.floats(0.5, 2.0),
)
def test_map_zero_outside_boxes_and_in_unit_range(seed, shape, gain, sigma):
    rng = np.random.default_rng(seed)
    mask = (ndimage.gaussian_filter(rng.random(shape), 1) > 0.55) * rng.integers(1, 3, shape)
    t2 = make_image((rng.random(shape) * 100).astype(np.float32))
    boxset = find_boxes(make_image(mask.astype(np.uint8)), (0, 3), seed=seed)
    out = sitk.GetArrayFromImage(gradient_map(t2, boxset, sigma, gain))
    inside = np.zeros(shape, bool)
    for b in boxset.boxes:
        inside[b.slices] = True
    assert (out[~inside] == 0).all()
    assert out.min() >= 0 and out.max() <= 1
    assert np.isfinite(out).all()


def test_grid_mismatch_is_input_error():
    image = make_image(t2_array(0))
    other = make_image(t2_array(0), spacing=(0.6, 0.5, 2.0))
    with pytest.raises(InputError, match="not on the grid of the T2"):
        gradient_map(image, BoxSet([Box(1, (0, 0, 0), (1, 1, 1))], Grid.of(other)))


def test_sigma_zero_is_rejected():
    """scipy skips the derivative at sigma 0: the map would be the intensity itself."""
    image = make_image(t2_array(0))
    boxset = BoxSet([Box(1, (0, 0, 0), (4, 9, 9))], Grid.of(image))
    with pytest.raises(InputError, match="must be > 0"):
        gradient_map(image, boxset, sigma=0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma": float("nan")},
        {"sigma": float("inf")},
        {"sigma": 1e9},
        {"sigma_mm": float("nan")},
        {"gain": float("inf")},
        {"gain": float("nan")},
    ],
)
def test_nan_and_inf_options_are_rejected(kwargs):
    """NaN passed every `<= 0` test (and gave NaN maps), inf crashed scipy."""
    image = make_image(t2_array(0))
    boxset = BoxSet([Box(1, (0, 0, 0), (4, 9, 9))], Grid.of(image))
    with pytest.raises(InputError, match="--(sigma|gain)"):
        gradient_map(image, boxset, **kwargs)


def test_no_boxes_all_zero():
    image = make_image(t2_array(0))
    out = sitk.GetArrayFromImage(gradient_map(image, BoxSet([], Grid.of(image))))
    assert not out.any()


# --------------------------------------------------------------------------- cohort and files


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from hntseg.synth import synth_cohort

    root = tmp_path_factory.mktemp("gmcohort")
    cohort, boxes = root / "cohort", root / "boxes"
    synth_cohort(cohort, patients=3, seed=1, size=(40, 40, 10))
    boxes_cohort(cohort, boxes, margin=(2, 6), seed=0)
    return cohort, boxes


def test_cohort_same_bytes_order_independent_and_skips(prepared, tmp_path):
    cohort, boxes = prepared
    a, b = tmp_path / "a", tmp_path / "b"
    written = gradmap_cohort(cohort, boxes, a)
    assert set(written) == {f"{i}_{p}" for i in "123" for p in ("midRT", "preRT")}
    gradmap_cohort(cohort, boxes, b, ids=["3", "1"])
    for pid in "13":
        for phase in ("midRT", "preRT"):
            assert (
                gradmap_path(a, pid, phase).read_bytes() == gradmap_path(b, pid, phase).read_bytes()
            )
    mid = sitk.ReadImage(str(gradmap_path(a, "2", "midRT")))
    t2 = sitk.ReadImage(str(cohort / "2" / "midRT" / "2_midRT_T2.nii.gz"))
    assert Grid.of(mid) == Grid.of(t2) and mid.GetPixelID() == sitk.sitkFloat32
    target = gradmap_path(a, "1", "preRT")
    stamp = target.stat().st_mtime_ns
    gradmap_cohort(cohort, boxes, a, ids=["1"])
    assert target.stat().st_mtime_ns == stamp
    gradmap_cohort(cohort, boxes, a, ids=["1"], force=True, phases=("preRT",))
    assert target.stat().st_mtime_ns != stamp
    # job-array parts split by patient: a patient's two phases land in the same part
    for part, pids in ((0, "13"), (1, "2")):
        done = gradmap_cohort(cohort, boxes, tmp_path / f"p{part}", num_parts=2, part_id=part)
        assert set(done) == {f"{i}_{ph}" for i in pids for ph in ("midRT", "preRT")}


def test_empty_boxes_file_gives_zero_map_and_warning(prepared, tmp_path):
    cohort, _ = prepared
    t2_path = cohort / "1" / "midRT" / "1_midRT_T2.nii.gz"
    t2 = sitk.ReadImage(str(t2_path))
    empty = np.zeros(sitk.GetArrayViewFromImage(t2).shape, np.uint8)
    mask = sitk.GetImageFromArray(empty)
    mask.CopyInformation(t2)
    path = write_boxes(tmp_path / "e.json", find_boxes(mask, 4))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log.addHandler(handler)
    try:
        assert gradmap_case(t2_path, path, tmp_path / "g.nii.gz")  # the CLI resets handlers
    finally:
        log.removeHandler(handler)
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "g.nii.gz"))).any()
    assert any(r.levelno == logging.WARNING and "no boxes" in r.getMessage() for r in records)


def test_hand_edited_box_is_used(prepared, tmp_path):
    cohort, boxes = prepared
    t2_path = cohort / "2" / "midRT" / "2_midRT_T2.nii.gz"
    data = json.loads(boxes_path(boxes, "2", "midRT").read_text())
    data["boxes"] = [{"label": 2, "zyx_start": [0, 0, 0], "zyx_stop_inclusive": [2, 3, 4]}]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    out = tmp_path / "g.nii.gz"
    result = runner.invoke(app, ["gradmap", str(t2_path), str(edited), "--out", str(out)])
    assert result.exit_code == 0, result.output
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert arr[:3, :4, :5].max() == 1 and not arr[3:].any() and not arr[:, 4:].any()


def _one_line_error(result, needle):
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output, lines


def test_cli_bad_boxes_one_line_errors(prepared, tmp_path):
    cohort, boxes = prepared
    t2_path = cohort / "1" / "midRT" / "1_midRT_T2.nii.gz"
    out = str(tmp_path / "g.nii.gz")
    # boxes.json for another grid: patient 1's pre-RT boxes on its mid-RT T2
    other = boxes_path(boxes, "1", "preRT")
    _one_line_error(
        runner.invoke(app, ["gradmap", str(t2_path), str(other), "-o", out]), "another grid"
    )
    # a box outside the image
    data = json.loads(boxes_path(boxes, "1", "midRT").read_text())
    data["boxes"][0]["zyx_stop_inclusive"] = [999, 1, 1]
    bad = tmp_path / "outside.json"
    bad.write_text(json.dumps(data))
    _one_line_error(runner.invoke(app, ["gradmap", str(t2_path), str(bad), "-o", out]), "outside")
    # malformed file
    bad.write_text('{"boxes": [')
    _one_line_error(runner.invoke(app, ["gradmap", str(t2_path), str(bad), "-o", out]), "malformed")
    # usage errors
    _one_line_error(runner.invoke(app, ["gradmap", "--out", out]), "give T2 and BOXES")
    _one_line_error(
        runner.invoke(app, ["gradmap", "--cohort", str(cohort), "--out", out]), "--boxes DIR"
    )


def test_cli_cohort_form(prepared, tmp_path):
    cohort, boxes = prepared
    out = tmp_path / "g"
    args = ["gradmap", "--cohort", str(cohort), "--boxes", str(boxes), "--out", str(out)]
    result = runner.invoke(app, [*args, "--phase", "midRT", "--context", "3"])
    assert result.exit_code == 0, result.output
    assert gradmap_path(out, "3", "midRT").is_file()
    assert not gradmap_path(out, "3", "preRT").exists()
    rec = json.loads((out / "3" / "3_midRT_gradmap.record.json").read_text())
    assert rec["params"]["context"] == 3 and rec["stage"] == "gradmap"


def test_constant_t2_is_refused(tmp_path):
    """A blank T2 gave a map of all ones inside every box, silently."""
    from hntseg.boxes import write_boxes
    from hntseg.gradmap import gradmap_case
    from hntseg.io import write_image

    image = make_image(np.zeros((4, 9, 9), np.float32))
    write_image(image, tmp_path / "t2.nii.gz")
    write_boxes(tmp_path / "b.json", BoxSet([Box(1, (0, 0, 0), (4, 9, 9))], Grid.of(image)))
    with pytest.raises(InputError, match="t2.nii.gz: T2 image is constant"):
        gradmap_case(tmp_path / "t2.nii.gz", tmp_path / "b.json", tmp_path / "g.nii.gz")
    assert not (tmp_path / "g.nii.gz").exists()


def test_missing_boxes_folder_is_one_error(tiny_cohort, tmp_path):
    """It was one failure per case (and exit 1)."""
    from hntseg.gradmap import gradmap_cohort

    with pytest.raises(InputError, match="typo: --boxes folder not found"):
        gradmap_cohort(tiny_cohort, tmp_path / "typo", tmp_path / "out")


def test_missing_registered_folder_names_the_option(tiny_cohort, tmp_path):
    from hntseg.boxes import boxes_cohort

    with pytest.raises(InputError, match="nope: --registered folder not found"):
        boxes_cohort(tiny_cohort, tmp_path / "o", registered=tmp_path / "nope")


def test_empty_part_of_a_job_array_needs_no_boxes_folder(tiny_cohort, tmp_path):
    """boxes writes nothing for a part without patients; gradmap and qc on that part must not
    fail for the missing --boxes folder (afterok dependencies would never release)."""
    from hntseg.boxes import boxes_cohort
    from hntseg.qc import qc_cohort

    parts = {"num_parts": 5, "part_id": 4}  # 4 patients: part 4 is empty
    none = tmp_path / "none"  # what register/boxes wrote for an empty part: no folder
    assert boxes_cohort(tiny_cohort, tmp_path / "b", registered=none, **parts) == {}
    assert gradmap_cohort(tiny_cohort, none, tmp_path / "g", **parts) == {}
    assert qc_cohort(tiny_cohort, none, none, tmp_path / "q", registered=none, **parts) == {}


@pytest.mark.parametrize("kwargs", [{"sigma": -1.0}, {"gain": float("nan")}, {"context": -2}])
def test_cohort_bad_option_is_one_error_before_any_case(prepared, tmp_path, kwargs, caplog):
    """A bad option is one InputError up front, not the same failure logged for every case."""
    cohort, boxes = prepared
    with caplog.at_level(logging.WARNING, logger="hntseg"), pytest.raises(InputError):
        gradmap_cohort(cohort, boxes, tmp_path / "out", **kwargs)
    assert not caplog.records and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- pinned details
# (each test below fails on a plausible slip that every other test let through)


def test_option_bounds_are_inclusive_where_documented():
    """check_params: sigma and sigma_mm in (0, 100], gain >= 0 (0 is allowed: an all-zero
    map), context >= 0."""
    from hntseg.gradmap import MAX_SIGMA, check_params

    check_params(MAX_SIGMA, 0.0, sigma_mm=MAX_SIGMA, context=0)  # every edge allowed
    for kwargs in (
        {"sigma": MAX_SIGMA * (1 + 1e-9), "gain": 2.0},
        {"sigma": 1.0, "gain": 2.0, "sigma_mm": MAX_SIGMA * (1 + 1e-9)},
        {"sigma": 1.0, "gain": 2.0, "sigma_mm": 0.0},
        {"sigma": 1.0, "gain": -1e-9},
    ):
        with pytest.raises(InputError):
            check_params(**kwargs)
    image = make_image(t2_array(0))
    box = Box(1, (1, 2, 3), (5, 20, 25))
    out = sitk.GetArrayFromImage(gradient_map(image, boxset_for(image, [box]), gain=0.0))
    assert not out.any()


def test_flat_box_gives_ones_without_numpy_warnings():
    """A flat crop (min == max) takes the 'all ones' branch directly: no 0/0 on the way
    (a RuntimeWarning per box in a user's log, or an error under -W error)."""
    import warnings

    arr = t2_array(3)
    arr[2:6, 5:12, 5:12] = 50.0
    image = make_image(arr)
    boxes = [Box(1, (2, 5, 5), (5, 11, 11)), Box(2, (0, 20, 20), (6, 30, 30))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sitk.GetArrayFromImage(gradient_map(image, boxset_for(image, boxes)))
    assert (out[boxes[0].slices] == 1).all()
    ref = reference_map(arr, boxes[1:])
    np.testing.assert_allclose(out[boxes[1].slices], ref[boxes[1].slices], atol=1e-6)


def test_large_intensity_offset_changes_nothing():
    """The min-max normalisation makes the map independent of an intensity offset; that
    holds in float64 arithmetic (float32 keeps about 7 digits: at 1e6 the T2's texture
    would be rounded to 1/16)."""
    arr = t2_array(4).astype(np.float64) / 100.0  # texture 0..~8
    box = Box(1, (1, 3, 4), (9, 30, 33))
    plain, shifted = make_image(arr), make_image(arr + 1e6)
    a = sitk.GetArrayFromImage(gradient_map(plain, boxset_for(plain, [box])))
    b = sitk.GetArrayFromImage(gradient_map(shifted, boxset_for(shifted, [box])))
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_out_naming_an_input_is_refused_and_the_input_kept(prepared, tmp_path):
    """`gradmap T2 BOXES --out T2` is a one-line error and leaves the T2 as it was."""
    cohort, boxes = prepared
    t2 = tmp_path / "t2.nii.gz"
    t2.write_bytes((cohort / "1" / "midRT" / "1_midRT_T2.nii.gz").read_bytes())
    before = t2.read_bytes()
    b = boxes_path(boxes, "1", "midRT")
    _one_line_error(
        runner.invoke(app, ["gradmap", str(t2), str(b), "--out", str(t2)]), "also the output"
    )
    assert t2.read_bytes() == before
    assert not (tmp_path / "t2.record.json").exists()


def test_a_case_that_fails_leaves_no_earlier_map(prepared, tmp_path):
    """A finished map whose boxes file turns bad: the rerun fails and the old map and its
    record are gone (nothing left that build-dataset could take for the new result)."""
    cohort, boxes = prepared
    t2 = cohort / "1" / "midRT" / "1_midRT_T2.nii.gz"
    b = tmp_path / "b.json"
    b.write_bytes(boxes_path(boxes, "1", "midRT").read_bytes())
    out = tmp_path / "g.nii.gz"
    assert gradmap_case(t2, b, out)
    b.write_text('{"boxes": [')
    with pytest.raises(InputError, match="malformed"):
        gradmap_case(t2, b, out)
    assert not out.exists() and not (tmp_path / "g.record.json").exists()


def test_boxes_and_gradmap_outputs_of_one_stem_do_not_share_a_record(prepared, tmp_path):
    """`boxes -o x.json` then `gradmap ... -o x.nii.gz`: both records would be x.record.json,
    each overwriting the other's (and each redone on every run). The second is refused."""
    cohort, _ = prepared
    mask = cohort / "1" / "midRT" / "1_preRT_mask_registered.nii.gz"
    t2 = cohort / "1" / "midRT" / "1_midRT_T2.nii.gz"
    boxes = tmp_path / "x.json"
    assert runner.invoke(app, ["boxes", str(mask), "-o", str(boxes)]).exit_code == 0
    record = (tmp_path / "x.record.json").read_bytes()
    result = runner.invoke(app, ["gradmap", str(t2), str(boxes), "-o", str(tmp_path / "x.nii.gz")])
    _one_line_error(result, "already the record of boxes")
    assert (tmp_path / "x.record.json").read_bytes() == record
    assert not (tmp_path / "x.nii.gz").exists()
    result = runner.invoke(app, ["gradmap", str(t2), str(boxes), "-o", str(tmp_path / "g.nii.gz")])
    assert result.exit_code == 0, result.output

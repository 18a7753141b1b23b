"""Tests from a mutation-testing audit of analysis, qc, figures, log, engine and demo: each
pins down a behaviour that a plausible slip (a statistic, an axis, a bin edge, a dropped
option, a log level) could change while the rest of the suite still passed."""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image

from hntseg.errors import InputError

# --------------------------------------------------------------------------- helpers


def _write(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(make_image(arr.astype(np.uint8), spacing, origin), str(path))
    return path


def _capture(monkeypatch, module) -> list:
    """Record the Figure each call of `module.save_png` writes (and still write it)."""
    figs: list = []
    real = module.save_png

    def spy(fig, path, *args, **kwargs):
        figs.append(fig)
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(module, "save_png", spy)
    return figs


# --------------------------------------------------------------------------- analysis


@pytest.fixture(scope="module")
def vol_sets(tmp_path_factory) -> Path:
    """Four flat cases on a 1 mm grid (1 voxel = 0.001 mL), GTVp only (GTVn absent from
    every mask). Mid-RT GTVp: 500, 1000 (exactly 1 mL), 1500 and 1200 voxels. The
    prediction: case 1 exact, case 2 half the tumour, case 3 shifted, case 4 empty. `B`
    equals the ground truth for cases 1-3 and lacks case 4."""
    root = tmp_path_factory.mktemp("mutvol")
    blocks = {
        "1": (slice(0, 5), slice(0, 10), slice(0, 10)),
        "2": (slice(0, 10), slice(0, 10), slice(0, 10)),
        "3": (slice(0, 10), slice(0, 10), slice(0, 15)),
        "4": (slice(0, 10), slice(0, 12), slice(0, 10)),
    }
    for pid, block in blocks.items():
        gt = np.zeros((10, 16, 16), np.uint8)
        gt[block] = 1
        pred = np.zeros_like(gt)
        if pid == "1":
            pred = gt.copy()
        elif pid == "2":
            pred[0:5, 0:10, 0:10] = 1
        elif pid == "3":
            pred[0:10, 2:12, 0:15] = 1
        pre = np.zeros((12, 16, 16), np.uint8)
        pre[: 2 + int(pid) * 2, :, :] = 1  # pre-RT volumes 1024 .. 2560 voxels
        _write(root / "gt" / f"{pid}_midRT_mask.nii.gz", gt)
        _write(root / "A" / f"{pid}.nii.gz", pred)
        if pid != "4":
            _write(root / "B" / f"{pid}.nii.gz", gt)
        _write(root / "pre" / f"{pid}_preRT_mask.nii.gz", pre)
    return root


def test_spearman_is_a_rank_correlation():
    """Spearman's rho (ranks), not Pearson's r: a monotone but non-linear relation is 1."""
    from hntseg.analysis import spearman

    rho, p = spearman([1, 2, 3, 4, 5], [1, 2, 3, 4, 100])
    assert rho == pytest.approx(1.0) and p < 0.05


def test_wilcoxon_treats_tiny_differences_as_differences():
    """p = 1 only for exactly equal pairs: np.allclose's default tolerance would call a
    consistent difference of 1e-9 'equal'."""
    from hntseg.analysis import wilcoxon_p

    a = [0.5, 0.6, 0.7]
    assert wilcoxon_p(a, [x + 1e-9 for x in a]) == pytest.approx(2 / 2**3)


def test_compare_median_csv_columns_and_strict_json(vol_sets, tmp_path):
    """The median is a median (not the mean), compare.csv's columns follow --names, and a
    structure with no case (GTVn here) is null in compare.json, not NaN (invalid JSON)."""
    from hntseg.analysis import compare

    res = compare(vol_sets / "A", vol_sets / "gt", vol_sets / "gt", tmp_path, names=("a", "t"))
    p = res["structures"]["GTVp"]
    dsc_a = p["dsc"]["a"]
    assert p["n"] == 4 and p["dsc"]["t"] == [1.0] * 4 and dsc_a[0] == 1.0 and dsc_a[3] == 0.0
    assert p["median_a"] == pytest.approx(float(np.median(dsc_a)))
    assert p["median_a"] != pytest.approx(p["mean_a"])
    lines = (tmp_path / "compare.csv").read_text().splitlines()
    assert lines[0] == "id,structure,dsc_a,dsc_t"
    assert "4,GTVp,0.0,1.0" in lines and "1,GTVp,1.0,1.0" in lines

    def refuse(name):
        raise AssertionError(f"{name} in compare.json")

    saved = json.loads((tmp_path / "compare.json").read_text(), parse_constant=refuse)
    assert saved["structures"]["GTVn"]["n"] == 0 and saved["structures"]["GTVn"]["mean_a"] is None


def test_compare_allow_missing_reaches_both_sets(vol_sets):
    """--allow-missing applies to the second set too: B's missing case 4 scores DSC 0."""
    from hntseg.analysis import compare

    res = compare(vol_sets / "A", vol_sets / "B", vol_sets / "gt", allow_missing=True)
    assert res["structures"]["GTVp"]["dsc"]["B"] == [1.0, 1.0, 1.0, 0.0]


def test_volume_change_uses_ground_truth_volumes_and_half_open_bins(vol_sets):
    """Mid-RT volume from the ground truth (not the prediction), every case with the
    structure in the ground truth (an empty prediction too), bins [lo, hi): a volume on an
    edge belongs to the upper bin; edges given out of order are sorted."""
    from hntseg.analysis import volume_change

    res = volume_change(vol_sets / "A", vol_sets / "gt", vol_sets / "pre", bins=(1.3, 1.0))
    assert res["bins_ml"] == [1.0, 1.3]
    p = res["structures"]["GTVp"]
    points = {pt["id"]: pt for pt in p["points"]}
    assert p["n"] == 4 and sorted(points) == ["1", "2", "3", "4"]
    assert [points[i]["mid_ml"] for i in "1234"] == pytest.approx([0.5, 1.0, 1.5, 1.2])
    assert points["4"]["dsc"] == 0.0
    assert points["2"]["pre_ml"] == pytest.approx(6 * 256 / 1000)
    assert points["2"]["change_ml"] == pytest.approx(6 * 256 / 1000 - 1.0)
    bins = {i: points[i]["bin"] for i in points}
    assert bins == {
        "1": "[0, 1) mL",
        "2": "[1, 1.3) mL",
        "3": "[1.3, inf) mL",
        "4": "[1, 1.3) mL",
    }
    assert [b["n"] for b in p["bins"]] == [1, 2, 1]


def test_volume_change_refuses_a_zero_edge(vol_sets):
    """An edge of 0 mL would make an empty bin [0, 0): edges must be positive."""
    from hntseg.analysis import volume_change

    with pytest.raises(InputError, match="positive"):
        volume_change(vol_sets / "A", vol_sets / "gt", vol_sets / "pre", bins=(0.0, 5.0))


# --------------------------------------------------------------------------- qc


def test_qc_slice_is_the_one_with_most_voxels_of_the_box_label():
    """The slice shown for a box: most voxels of the box's own label (not any label) along
    z, as an index of the whole image (box start added); with none, the box centre."""
    from hntseg.boxes import Box
    from hntseg.qc import _slice_of

    mask = np.zeros((6, 10, 10), np.uint8)
    mask[1, 2:7, 2:7] = 2  # 25 voxels of the other label inside the box
    mask[2, 2, 2:6] = 1
    mask[3, 2:4, 2:7] = 1  # 10 voxels: the most of label 1
    mask[3, 8:10, 0:10] = 1  # outside the box: not counted
    assert _slice_of(Box(1, (1, 2, 2), (4, 6, 6)), mask) == 3
    assert _slice_of(Box(1, (0, 6, 6), (4, 7, 7)), mask) == 2  # none of label 1: centre
    assert _slice_of(Box(1, (1, 2, 2), (4, 6, 6)), None) == 2


def test_qc_mask_given_by_relative_and_absolute_path_is_one_mask(tmp_path, monkeypatch):
    """The same file given twice is refused also when spelled differently (relative and
    absolute path): it would be drawn twice under two legend names."""
    from hntseg.qc import mask_names

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="given twice"):
        mask_names(["a/8.nii.gz", str(tmp_path / "a" / "8.nii.gz")])


def _qc_t2(shape=(6, 20, 40)):
    """A T2 with a non-square slice and in-plane spacing 0.5 mm (x) by 1 mm (y)."""
    arr = np.random.default_rng(0).random(shape).astype(np.float32)
    return make_image(arr, spacing=(0.5, 1.0, 2.0))


def test_qc_row_geometry(tmp_path, monkeypatch):
    """One box (z 1-3, y 4-7, x 25-32) whose label-1 voxels are most on its last slice:
    that slice is shown with the box drawn on it (ends inclusive), the rectangle at
    (x, y) = (25, 4) - 0.5, 8 wide and 4 high; the zoom spans y 0-19 and x 13-39 (12
    voxels around, clipped per axis); the map on 0-1 whatever its values; pixel aspect
    y/x spacing = 2."""
    from matplotlib.patches import Rectangle

    from hntseg import qc
    from hntseg.boxes import Box, BoxSet
    from hntseg.io import Grid

    figs = _capture(monkeypatch, qc)
    t2 = _qc_t2()
    arr = np.zeros((6, 20, 40), np.uint8)
    arr[1, 5, 26] = 1
    arr[2, 5, 26:28] = 1
    arr[3, 4:8, 25:33] = 1
    boxes = BoxSet([Box(1, (1, 4, 25), (3, 7, 32))], Grid.of(t2))
    flat_map = make_image(np.full((6, 20, 40), 0.5, np.float32), spacing=(0.5, 1.0, 2.0))
    qc.qc_case(
        t2,
        boxes,
        flat_map,
        {"m": make_image(arr, (0.5, 1.0, 2.0))},
        tmp_path / "a.png",
    )
    full, zoom, gmap = figs[0].axes[:3]
    assert full.get_title() == "box 0 (GTVp) - T2 axial slice 3"
    assert full.get_aspect() == pytest.approx(2.0)
    rect = [p for p in full.patches if isinstance(p, Rectangle)]
    assert len(rect) == 1
    assert rect[0].get_xy() == (24.5, 3.5)
    assert (rect[0].get_width(), rect[0].get_height()) == (8, 4)
    assert zoom.images[0].get_array().shape == (20, 27)
    assert [p.get_xy() for p in zoom.patches] == [(11.5, 3.5)]
    assert gmap.images[0].get_array().shape == (20, 27)
    assert gmap.images[0].get_clim() == (0, 1)


def test_qc_keeps_the_largest_boxes_in_file_order(tmp_path, monkeypatch):
    """Beyond 8 boxes the 8 largest are shown, in file order, and the title says so."""
    from hntseg import qc
    from hntseg.boxes import Box, BoxSet
    from hntseg.gradmap import gradient_map
    from hntseg.io import Grid

    figs = _capture(monkeypatch, qc)
    t2 = _qc_t2((4, 12, 12))
    widths = [5, 1, 9, 2, 7, 3, 8, 4, 6, 10]  # the smallest: boxes 1 and 3
    boxes = BoxSet([Box(1, (0, i, 0), (0, i, w - 1)) for i, w in enumerate(widths)], Grid.of(t2))
    qc.qc_case(t2, boxes, gradient_map(t2, boxes), {}, tmp_path / "m.png", title="t")
    rows = [ax.get_title().split(" (")[0] for ax in figs[0].axes[: 8 * 3 : 3]]
    assert rows == [f"box {j}" for j in (0, 2, 4, 5, 6, 7, 8, 9)]
    assert figs[0].get_suptitle() == "t (showing 8 of 10 boxes)"


def test_qc_legend_colours_and_styles(tmp_path, monkeypatch):
    """Boxes red GTVp, blue GTVn; one colour per mask; solid GTVp, dashed GTVn."""
    from hntseg import qc
    from hntseg.boxes import BoxSet
    from hntseg.gradmap import gradient_map
    from hntseg.io import Grid

    figs = _capture(monkeypatch, qc)
    t2 = _qc_t2()
    empty = BoxSet([], Grid.of(t2))
    m = make_image(np.zeros((6, 20, 40), np.uint8), (0.5, 1.0, 2.0))
    qc.qc_case(t2, empty, gradient_map(t2, empty), {"m1": m, "m2": m}, tmp_path / "l.png")
    handles = {h.get_label(): h for h in figs[0].legends[0].legend_handles}
    assert handles["box GTVp"].get_color() == "red"
    assert handles["box GTVn"].get_color() == "deepskyblue"
    assert handles["m1 GTVp"].get_linestyle() == "-" and handles["m1 GTVn"].get_linestyle() == "--"
    assert handles["m1 GTVp"].get_color() != handles["m2 GTVp"].get_color()


def test_qc_without_boxes_shows_the_middle_slice_with_outlines(tmp_path, monkeypatch):
    """No boxes: the middle slice (z = 3 of 6), the masks outlined on it."""
    from hntseg import qc
    from hntseg.boxes import BoxSet
    from hntseg.gradmap import gradient_map
    from hntseg.io import Grid

    figs = _capture(monkeypatch, qc)
    t2 = _qc_t2()
    arr = np.zeros((6, 20, 40), np.uint8)
    arr[3, 5:10, 5:10] = 1
    empty = BoxSet([], Grid.of(t2))
    m = make_image(arr, (0.5, 1.0, 2.0))
    qc.qc_case(t2, empty, gradient_map(t2, empty), {"m": m}, tmp_path / "e.png")
    ax = figs[0].axes[0]
    assert ax.get_title() == "no boxes; T2 axial slice 3"
    assert len(ax.collections) > 0  # the outline


def test_qc_cohort_masks_registered_folder_and_reuse(tmp_path, monkeypatch):
    """Mid-RT pictures outline the registered pre-RT mask from --registered (not the
    cohort's) and the mid-RT truth; a rerun reuses the picture, --force redraws it, and a
    changed mask (an input) redraws it."""
    from hntseg import qc
    from hntseg.boxes import boxes_cohort
    from hntseg.gradmap import gradmap_cohort
    from hntseg.synth import synth_cohort

    cohort, priors, reg = tmp_path / "c", tmp_path / "p", tmp_path / "reg"
    synth_cohort(cohort, patients=1, seed=2, size=(24, 24, 8))
    boxes_cohort(cohort, priors, margin=2, seed=0)
    gradmap_cohort(cohort, priors, priors)
    mid = cohort / "1" / "midRT"
    own = sitk.ReadImage(str(mid / "1_preRT_mask_registered.nii.gz"))
    other = sitk.GetArrayFromImage(own).copy()
    other[:] = 0
    other[1:3, 2:6, 2:6] = 1
    reg_mask = reg / "1" / "midRT" / "1_preRT_mask_registered.nii.gz"
    reg_mask.parent.mkdir(parents=True)
    image = sitk.GetImageFromArray(other)
    image.CopyInformation(own)
    sitk.WriteImage(image, str(reg_mask))

    drawn: list = []
    real = qc.qc_case

    def spy(t2, boxes, gradmap, masks, out_png, title=None):
        drawn.append(masks)
        return real(t2, boxes, gradmap, masks, out_png, title)

    monkeypatch.setattr(qc, "qc_case", spy)
    out = tmp_path / "qc"
    qc.qc_cohort(cohort, priors, priors, out, registered=reg)
    masks = drawn[-1]
    assert set(masks) == {"registered pre-RT", "mid-RT truth"}
    assert np.array_equal(sitk.GetArrayFromImage(masks["registered pre-RT"]), other)
    qc.qc_cohort(cohort, priors, priors, out, registered=reg)
    assert len(drawn) == 1  # reused
    qc.qc_cohort(cohort, priors, priors, out, registered=reg, force=True)
    assert len(drawn) == 2
    truth = mid / "1_midRT_mask.nii.gz"
    image = sitk.ReadImage(str(truth))
    arr = sitk.GetArrayFromImage(image)
    arr[0, 0, 0] = 1 if arr[0, 0, 0] == 0 else 0
    changed = sitk.GetImageFromArray(arr)
    changed.CopyInformation(image)
    truth.unlink()
    sitk.WriteImage(changed, str(truth))
    qc.qc_cohort(cohort, priors, priors, out, registered=reg)
    assert len(drawn) == 3


# --------------------------------------------------------------------------- figures


def test_window_is_robust_and_never_empty():
    """The display range ignores a few bright voxels (percentiles, not min/max), and a
    constant slice gets a range of 1, not vmin == vmax."""
    from hntseg.figures import window

    arr = np.arange(2500.0).reshape(50, 50)
    arr[0, 0] = -1e6
    arr[-1, -1] = 1e6
    lo, hi = window(arr)
    assert 0 < lo < 50 and 2400 < hi < 2499
    assert window(np.full((4, 4), 7.0)) == (7.0, 8.0)


def test_save_png_is_atomic(tmp_path, monkeypatch):
    """A figure whose writing fails midway leaves the old picture as it was and no
    half-written file."""
    from matplotlib.figure import Figure

    from hntseg.figures import save_png

    path = tmp_path / "a.png"
    path.write_bytes(b"old picture")
    fig = Figure()

    def broken(target, **kwargs):
        Path(target).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        save_png(fig, path)
    assert path.read_bytes() == b"old picture"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_dsc_plot_counts_cases_whose_ground_truth_has_the_structure(tmp_path, monkeypatch):
    """The per-structure n counts the cases with the structure in the ground truth only."""
    from hntseg import figures

    figs = _capture(monkeypatch, figures)
    rows = [
        {"id": "1", "structure": "GTVp", "dsc": 0.8, "gt_mm3": 10.0},
        {"id": "2", "structure": "GTVp", "dsc": 0.0, "gt_mm3": 0.0},  # false positive
        {"id": "1", "structure": "GTVn", "dsc": 0.5, "gt_mm3": 3.0},
    ]
    figures.plot_dsc(rows, {"GTVp": 0.8}, tmp_path / "dsc.png")
    labels = [t.get_text() for t in figs[0].axes[0].get_xticklabels()]
    assert labels == ["GTVp\n(n=1)", "GTVn\n(n=1)"]


def test_t2_beside_a_ground_truth(tmp_path):
    """The mid-RT T2 next to a cohort-layout ground truth: through a link, for .mha too,
    and None when there is no T2 (not a path that does not exist)."""
    from hntseg.figures import _t2_beside

    mid = tmp_path / "c" / "1" / "midRT"
    mid.mkdir(parents=True)
    (mid / "1_midRT_mask.nii.gz").write_bytes(b"m")
    (mid / "1_midRT_T2.nii.gz").write_bytes(b"t")
    (mid / "2_midRT_mask.mha").write_bytes(b"m")
    (mid / "2_midRT_T2.mha").write_bytes(b"t")
    (mid / "3_midRT_mask.nii.gz").write_bytes(b"m")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "1.nii.gz").symlink_to(mid / "1_midRT_mask.nii.gz")
    assert _t2_beside(flat / "1.nii.gz") == (mid / "1_midRT_T2.nii.gz").resolve()
    assert _t2_beside(mid / "2_midRT_mask.mha") == (mid / "2_midRT_T2.mha").resolve()
    assert _t2_beside(mid / "3_midRT_mask.nii.gz") is None


def test_figure_prediction_on_another_grid_is_resampled_nearest(tmp_path):
    """A prediction on another grid is put on the ground truth's by nearest neighbour, as
    evaluate scores it (interpolation would blur its labels)."""
    from hntseg.figures import structure_masks

    gt = np.zeros((4, 12, 12), np.uint8)
    gt[1:3, 2:8, 2:8] = 1
    pred = np.zeros((4, 12, 12), np.uint8)
    pred[1:3, 3:9, 3:9] = 1
    gt_path = _write(tmp_path / "gt.nii.gz", gt)
    pred_path = _write(tmp_path / "p.nii.gz", pred, origin=(0.4, 0.3, 0.0))
    ref = sitk.Resample(
        sitk.ReadImage(str(pred_path)),
        sitk.ReadImage(str(gt_path)),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
    )
    _, g, p = structure_masks(pred_path, gt_path, 1)
    assert np.array_equal(p, sitk.GetArrayFromImage(ref) == 1) and p.sum() == 72


def test_case_picture_slice_zoom_aspect_and_volumes(tmp_path, monkeypatch):
    """The slice shown is the one where the masks disagree most (not where they overlap
    most); the zoom covers both masks (12 voxels around, clipped per axis); the pixel
    aspect of the T2 is the y/x spacing; volumes are printed in mL."""
    from hntseg import figures

    figs = _capture(monkeypatch, figures)
    gt = np.zeros((4, 40, 20), np.uint8)
    pred = np.zeros_like(gt)
    gt[1, 2:10, 2:10] = 1
    pred[1, 2:10, 2:10] = 1  # slice 1: the same
    gt[2, 2:4, 2:4] = 1
    pred[2, 30:33, 2:4] = 1  # slice 2: apart
    spacing = (0.5, 1.5, 2.0)
    gt_path = _write(tmp_path / "7_midRT_mask.nii.gz", gt, spacing)
    t2 = np.random.default_rng(0).random(gt.shape).astype(np.float32)
    sitk.WriteImage(make_image(t2, spacing), str(tmp_path / "7_midRT_T2.nii.gz"))
    pred_path = _write(tmp_path / "p.nii.gz", pred, spacing)
    row = {"id": "7", "structure": "GTVp", "dsc": 0.5, "hd95": 3.0}
    row |= {"gt_mm3": 68 * 1.5, "pred_mm3": 70 * 1.5}
    figures.plot_case(row, pred_path, gt_path, tmp_path / "c.png")
    whole, zoom = figs[0].axes[:2]
    assert whole.get_title().startswith("axial slice 2 ")
    assert whole.get_aspect() == pytest.approx(3.0)
    assert zoom.images[0].get_array().shape == (40 - 0, min(10 + 12, 20) - 0)
    assert "ground truth 0.10 mL, prediction 0.10 mL" in figs[0].get_suptitle()


def test_evaluation_figures_remove_stale_worst_pictures_only(tmp_path):
    """A worst-case picture of an earlier run whose case is no longer among the worst is
    removed; the current ones and other files stay."""
    from hntseg.evaluate import score
    from hntseg.figures import evaluation_figures

    gt = np.zeros((4, 12, 12), np.uint8)
    gt[1:3, 2:8, 2:8] = 1
    pred = np.zeros_like(gt)
    pred[1:3, 3:8, 2:8] = 1
    gt_path = _write(tmp_path / "gt" / "1.nii.gz", gt)
    pred_path = _write(tmp_path / "pred" / "1.nii.gz", pred)
    rows, _ = score(tmp_path / "pred", tmp_path / "gt", ("dsc",))
    folder = tmp_path / "out" / "figures"
    folder.mkdir(parents=True)
    (folder / "worst_GTVp_9.png").write_bytes(b"stale")
    (folder / "notes.txt").write_text("mine")
    evaluation_figures(rows, {"GTVp": 0.9}, [("1", pred_path, gt_path)], tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == ["dsc.png", "notes.txt", "worst_GTVp_1.png"]


# --------------------------------------------------------------------------- log


@pytest.fixture
def plain_log(monkeypatch):
    """hntseg.log off a terminal (plain lines), its process state restored afterwards."""
    from hntseg import log as hlog

    monkeypatch.setattr(hlog, "_on_terminal", lambda: False)
    with hlog.logging_kept():
        yield hlog


def test_log_levels_and_time_stamps(plain_log, capsys):
    """Default INFO (no DEBUG), --verbose DEBUG, --quiet WARNING; plain lines carry a time
    stamp, except under --quiet."""
    hlog = plain_log
    hlog.setup_logging()
    hlog.log.debug("d0")
    hlog.log.info("i0")
    hlog.setup_logging(verbose=True)
    hlog.log.debug("d1")
    hlog.setup_logging(quiet=True)
    hlog.log.info("i2")
    hlog.log.warning("w2")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO i0", lines[0])
    assert re.fullmatch(r"\d\d:\d\d:\d\d DEBUG d1", lines[1])
    assert lines[2] == "WARNING w2"


def test_log_does_not_propagate_to_the_root_logger(plain_log):
    """hntseg's records are printed once, by its own handler: not also by an application's
    root handler (every line twice)."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        plain_log.setup_logging()
        plain_log.log.warning("once")
    finally:
        root.removeHandler(handler)
    assert seen == []


def test_quiet_ignores_future_warnings_only(plain_log):
    """--quiet drops libraries' FutureWarnings (deprecation notices), not other warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain_log.setup_logging(quiet=True)
        warnings.warn("deprecated soon", FutureWarning, stacklevel=1)
        warnings.warn("a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real problem"]


def test_logging_kept_keeps_the_users_own_identical_filter():
    """On exit only a filter --quiet added goes: the user's own 'ignore FutureWarning'
    set before the run stays."""
    from hntseg import log as hlog

    entry = ("ignore", None, FutureWarning, None, 0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        with hlog.logging_kept():
            hlog.setup_logging(quiet=True)
        assert entry in warnings.filters


class _FakeProgress:
    """Stands in for rich's Progress: records the bars made, their totals and steps."""

    made: list[_FakeProgress] = []

    def __init__(self, *columns, **kwargs):
        self.total, self.steps = None, 0
        _FakeProgress.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description, total):
        self.total = total
        return 0

    def advance(self, task):
        self.steps += 1


def test_progress_bar_only_on_a_terminal_and_not_quiet(plain_log, monkeypatch):
    """A bar on a terminal (advanced once per item, total from a generator's items);
    none off a terminal, none under --quiet."""
    hlog = plain_log
    monkeypatch.setattr(hlog, "Progress", _FakeProgress)
    _FakeProgress.made = []
    hlog.setup_logging()
    assert list(hlog.progress((c for c in "abc"), "off")) == ["a", "b", "c"]
    assert _FakeProgress.made == []
    monkeypatch.setattr(hlog, "_on_terminal", lambda: True)
    assert list(hlog.progress((c for c in "abc"), "on")) == ["a", "b", "c"]
    assert [(b.total, b.steps) for b in _FakeProgress.made] == [(3, 3)]
    hlog.setup_logging(quiet=True)
    assert list(hlog.progress(["x"], "quiet")) == ["x"]
    assert len(_FakeProgress.made) == 1


def test_quiet_stdout_passes_through_when_not_quiet_and_lets_go_after(
    plain_log, capsys, monkeypatch
):
    """Not quiet: what a library prints inside the block is shown. After a quiet block
    the log follows sys.stderr again (not the stream held during the block)."""
    import io

    hlog = plain_log
    hlog.setup_logging()
    with hlog.quiet_stdout():
        print("library says")
    assert "library says" in capsys.readouterr().out
    hlog.setup_logging(quiet=True)
    with hlog.quiet_stdout():
        pass
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    hlog.log.warning("after the block")
    assert "after the block" in later.getvalue()


def test_closed_stderr_is_not_a_terminal(monkeypatch):
    """A replaced or closed stderr whose isatty() raises counts as a log file."""
    from hntseg import log as hlog

    class Closed:
        def isatty(self):
            raise ValueError("I/O operation on closed file")

    monkeypatch.setattr(sys, "stderr", Closed())
    assert hlog._on_terminal() is False


# --------------------------------------------------------------------------- engine


def _config(tmp_path: Path, **sections) -> dict:
    cfg = {
        "work": str(tmp_path / "w"),
        "cohort": str(tmp_path / "c"),
        "seed": 3,
        "ids": None,
        "register": {"out": None, "method": "elastix"},
        "boxes": {"out": None},
        "gradmap": {"out": None},
        "qc": {"out": None},
        "predict": {"out": None, "cohort": None, "registered": None},
        "evaluate": {"out": None},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg[name], **values} if isinstance(values, dict) else values
    return cfg


def test_context_paths_honour_every_out_option(tmp_path):
    """Each folder is its `out` option when set, else the default under WORK; provided
    registration reads the cohort; prediction reads predict.cohort / predict.registered."""
    from hntseg.engine import Context

    w, c = tmp_path / "w", tmp_path / "c"
    ctx = Context(_config(tmp_path))
    assert [ctx.path(n) for n in ("registered", "boxes", "gradmap", "qc", "evaluation")] == [
        w / "registered",
        w / "priors",
        w / "priors",
        w / "qc",
        w / "evaluation",
    ]
    assert ctx.path("predict_cohort") == c and ctx.path("predict_registered") == w / "registered"
    assert Context(_config(tmp_path, register={"method": "provided"})).path("registered") == c
    out = {"out": "/o"}
    ctx = Context(
        _config(
            tmp_path,
            register={"out": "/r", "method": "provided"},
            boxes={"out": "/b"},
            gradmap={"out": "/g"},
            qc=out,
            evaluate=out,
            predict={"cohort": "/pc"},
        )
    )
    assert [ctx.path(n) for n in ("registered", "boxes", "gradmap", "qc", "evaluation")] == [
        Path(p) for p in ("/r", "/b", "/g", "/o", "/o")
    ]
    assert ctx.path("predict_cohort") == Path("/pc") == ctx.path("predict_registered")
    ctx = Context(_config(tmp_path, predict={"cohort": "/pc", "registered": "/pr"}))
    assert ctx.path("predict_registered") == Path("/pr")
    assert not Context(_config(tmp_path)).sharded and Context(_config(tmp_path), 2).sharded


def _patients(root: Path, ids) -> Path:
    for pid in ids:
        f = root / pid / "midRT" / f"{pid}_midRT_T2.nii.gz"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")
    return root


def test_context_patient_ids_cached_copied_and_forgotten(tmp_path, monkeypatch):
    """Ids are found once per folder (until forget_patients), handed out as a copy (a
    caller's change does not reach the cache), and a new patient shows after forgetting."""
    from hntseg import cohort
    from hntseg.engine import Context

    calls = []
    real = cohort.discover
    monkeypatch.setattr(cohort, "discover", lambda *a, **k: calls.append(a) or real(*a, **k))
    root = _patients(tmp_path / "c", ["1", "2"])
    ctx = Context(_config(tmp_path))
    ids = ctx.patient_ids(root)
    ids.append("bogus")
    assert ctx.patient_ids(root) == ["1", "2"] and len(calls) == 1
    _patients(root, ["3"])
    assert ctx.patient_ids(root) == ["1", "2"]
    ctx.forget_patients()
    assert ctx.patient_ids(root) == ["1", "2", "3"] and len(calls) == 2


def test_context_ids_restricted_in_folder_order_of_the_given_root(tmp_path):
    """The config's ids restrict the folder's ids (folder order, not the config's), an
    unknown id is an error naming the folder, and `root` is the folder asked (not the
    cohort)."""
    from hntseg.engine import Context

    _patients(tmp_path / "c", ["1", "2", "3", "10"])
    _patients(tmp_path / "other", ["2", "3"])
    ctx = Context(_config(tmp_path, ids=["10", "2"]))
    assert ctx.all_ids() == ["2", "10"]
    assert ctx.ids() == ["2", "10"]
    ctx = Context(_config(tmp_path, ids=["3"]), num_parts=1)
    assert ctx.ids(tmp_path / "other") == ["3"]
    with pytest.raises(InputError, match=r"other: no patient folder for id\(s\) 1"):
        Context(_config(tmp_path, ids=["1"])).all_ids(tmp_path / "other")
    assert Context(_config(tmp_path)).ids(tmp_path / "other") == ["2", "3"]


def test_stage_section_is_its_group():
    """A stage's config section (and --force/--only name) is its group when it has one."""
    from hntseg.engine import Stage

    def nothing(ctx):
        return {}

    fold = Stage("train-fold0", nothing, nothing, nothing, group="train")
    assert fold.section == "train" and Stage("qc", nothing, nothing, nothing).section == "qc"


# --------------------------------------------------------------------------- demo


def test_demo_config_passes_the_registration_method():
    """--register reaches the config, with the fast preset; TTA off on the CPU."""
    from hntseg.demo import demo_config

    cfg = demo_config(Path("/d"), 3, register="elastix")
    assert cfg["register"] == {"method": "elastix", "preset": "fast"}
    assert cfg["synth"]["patients"] == 3 and cfg["predict"]["tta"] is False


@pytest.fixture
def demo_calls(monkeypatch):
    """run_demo with the pipeline and the phantoms replaced: records what it runs."""
    from hntseg import pipeline, synth

    calls: list[dict] = []

    def run(cfg, force=(), config_path=None, **kwargs):
        calls.append({"cfg": cfg, "force": list(force), "config_path": config_path})
        return {"stages": []}

    def phantoms(root, patients, seed, size):
        volumes = [{"GTVp": {"preRT": 0.0}, "GTVn": {"preRT": 1.5}}, {"GTVp": {"preRT": 0.0}}]
        return [{"id": str(i + 1), "volumes_ml": v} for i, v in enumerate(volumes)]

    monkeypatch.setattr(pipeline, "run_pipeline", run)
    monkeypatch.setattr(pipeline, "summarize_run", lambda record: "summary")
    monkeypatch.setattr(synth, "synth_cohort", phantoms)
    return calls


def test_run_demo_force_absolute_work_and_tumour_free_phantoms(demo_calls, tmp_path, monkeypatch):
    """--force forces every stage; a relative --out becomes an absolute work folder; with a
    registration of its own (identity too) phantoms without a pre-RT tumour are left out."""
    from hntseg.demo import run_demo
    from hntseg.pipeline import STAGES

    monkeypatch.chdir(tmp_path)
    run_demo("d", patients=2, force=True)
    run_demo("d", patients=2)
    first, second = demo_calls
    assert first["force"] == list(STAGES) and second["force"] == []
    assert first["cfg"]["work"] == str(tmp_path / "d")
    assert first["config_path"] == tmp_path / "d" / "demo.yaml"
    assert not first["cfg"].get("ids")
    run_demo("d", patients=2, register="identity")
    assert demo_calls[-1]["cfg"]["ids"] == ["1"]


def test_demo_where_follows_the_out_options_and_the_registered_baseline(tmp_path, monkeypatch):
    """where() names predict.out, evaluate.out and qc.out when set; the reference line
    scores the registered masks in register.out, else WORK/registered, when they exist."""
    from hntseg import evaluate
    from hntseg.demo import where

    scored = []

    def fake_evaluate(pred, gt, metrics=()):
        scored.append(Path(pred))
        return {"dscagg": {"GTVp": 0.25}}

    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
    cfg = {
        "work": str(tmp_path / "w"),
        "cohort": str(tmp_path / "c"),
        "register": {"method": "elastix", "out": None},
        "predict": {"out": str(tmp_path / "p")},
        "evaluate": {"out": str(tmp_path / "e")},
        "qc": {"out": None},
    }
    (tmp_path / "w" / "registered").mkdir(parents=True)
    text = where(cfg)
    assert f"masks:        {tmp_path / 'p'}/<id>.nii.gz" in text
    assert f"score table:  {tmp_path / 'e' / 'cases.csv'}" in text
    assert f"QC pictures:  {tmp_path / 'w' / 'qc'}/" in text
    assert scored == [tmp_path / "w" / "registered"] and text.endswith("GTVp 0.250")
    # the out options of register and qc (a config rerun with `hntseg run`)
    cfg["register"]["out"] = str(tmp_path / "r")
    cfg["qc"]["out"] = str(tmp_path / "q")
    (tmp_path / "r").mkdir()
    text = where(cfg)
    assert f"QC pictures:  {tmp_path / 'q'}/" in text
    assert scored[-1] == tmp_path / "r"

"""Figures leave the process's matplotlib alone: a notebook's backend and its figures."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import SimpleITK as sitk

PNG = b"\x89PNG\r\n\x1a\n"


def make_image(arr, spacing=(0.5, 0.5, 2.0)):
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    return image


def draw_dsc(tmp_path):
    from hntseg.figures import plot_dsc

    rows = [
        {"id": str(i), "structure": s, "dsc": d, "gt_mm3": 100.0}
        for i, d in enumerate((0.2, 0.6, 0.9))
        for s in ("GTVp", "GTVn")
    ]
    return plot_dsc(rows, {"GTVp": 0.7, "GTVn": 0.5}, tmp_path / "dsc.png")


def draw_case(tmp_path):
    from hntseg.figures import plot_case

    gt, pred = np.zeros((4, 20, 20), np.uint8), np.zeros((4, 20, 20), np.uint8)
    gt[1:3, 5:10, 5:10] = 1
    pred[1:3, 6:11, 5:10] = 1
    sitk.WriteImage(make_image(gt), str(tmp_path / "gt.nii.gz"))
    sitk.WriteImage(make_image(pred), str(tmp_path / "pred.nii.gz"))
    row = {
        "id": "1",
        "structure": "GTVp",
        "dsc": 0.8,
        "hd95": 1.0,
        "gt_mm3": 25.0,
        "pred_mm3": 25.0,
    }
    return plot_case(row, tmp_path / "pred.nii.gz", tmp_path / "gt.nii.gz", tmp_path / "c.png")


def draw_qc(tmp_path):
    from hntseg.boxes import find_boxes
    from hntseg.gradmap import gradient_map
    from hntseg.qc import qc_case

    t2 = make_image(np.random.default_rng(0).random((6, 30, 30)).astype(np.float32))
    mask_arr = np.zeros((6, 30, 30), np.uint8)
    mask_arr[2:4, 5:10, 5:10] = 1
    mask = make_image(mask_arr)
    boxes = find_boxes(mask, 2)
    return qc_case(t2, boxes, gradient_map(t2, boxes), {"mask": mask}, tmp_path / "q.png")


def draw_compare(tmp_path):
    from hntseg.analysis import plot_compare

    entry = {"n": 3, "wilcoxon_p": 0.25, "dsc": {"a": [0.5, 0.6, 0.7], "b": [0.6, 0.8, 0.7]}}
    result = {"names": ["a", "b"], "structures": {"GTVp": entry, "GTVn": entry}}
    return plot_compare(result, tmp_path / "compare.png")


def draw_volume_change(tmp_path):
    from hntseg.analysis import plot_volume_change

    points = [{"bin": "[0, inf) mL", "change_ml": c, "dsc": d} for c, d in ((1, 0.5), (2, 0.7))]
    entry = {
        "n": 2,
        "rho": 1.0,
        "p": 0.5,
        "bins": [{"bin": "[0, inf) mL", "n": 2, "rho": 1.0}],
        "points": points,
    }
    result = {"structures": {"GTVp": entry, "GTVn": entry}}
    return plot_volume_change(result, tmp_path / "volume_change.png")


@pytest.fixture
def svg_backend():
    """The process on another backend than Agg (as a notebook's inline one), restored after."""
    import matplotlib.pyplot as plt

    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        yield plt
    finally:
        plt.close("all")
        matplotlib.use(previous)


@pytest.mark.parametrize("draw", [draw_dsc, draw_case, draw_qc, draw_compare, draw_volume_change])
def test_figures_keep_the_backend_and_open_no_pyplot_figure(draw, svg_backend, tmp_path):
    """matplotlib.use("Agg") inside hntseg switched a notebook's backend (plt.show() then
    showed nothing) and closed the user's open figures; figures now bypass pyplot."""
    plt = svg_backend
    mine = plt.figure().number  # the user's own open figure
    png = draw(tmp_path)
    assert png.read_bytes()[:8] == PNG
    assert matplotlib.get_backend() == "svg"
    assert plt.get_fignums() == [mine]  # the user's figure kept, none of hntseg's opened


@pytest.mark.parametrize(
    "direction, plane",
    [
        ((1, 0, 0, 0, 1, 0, 0, 0, 1), "axial"),
        ((0, 0, 1, 1, 0, 0, 0, 1, 0), "sagittal"),  # image axis k along x
        ((1, 0, 0, 0, 0, 1, 0, -1, 0), "coronal"),  # image axis k along -y
        ((1, 0, 0, 0, 0.9, 0.436, 0, -0.436, 0.9), "axial"),  # oblique, tilted 26 degrees
    ],
)
def test_slice_plane_follows_the_direction(direction, plane):
    from hntseg.figures import slice_plane

    assert slice_plane(direction) == plane


def test_case_picture_resamples_a_t2_on_another_grid(tmp_path, monkeypatch):
    """The T2 under the outlines is put on the ground truth's grid (it was drawn as it was,
    voxel index for voxel index, whenever its size matched)."""
    from hntseg import figures

    gt = np.zeros((4, 20, 20), np.uint8)
    gt[1:3, 5:10, 5:10] = 1
    gt_path = tmp_path / "1_midRT_mask.nii.gz"
    sitk.WriteImage(make_image(gt), str(gt_path))
    t2 = make_image(np.random.default_rng(0).random((4, 20, 20)).astype(np.float32))
    t2.SetOrigin((3.0, 0.0, 0.0))  # same size, shifted by 6 voxels in x
    sitk.WriteImage(t2, str(tmp_path / "1_midRT_T2.nii.gz"))
    resampled = []
    real = figures.resample_to
    monkeypatch.setattr(
        figures,
        "resample_to",
        lambda img, grid, nearest: resampled.append(nearest) or real(img, grid, nearest),
    )
    row = {
        "id": "1",
        "structure": "GTVp",
        "dsc": 0.0,
        "hd95": None,
        "gt_mm3": 50.0,
        "pred_mm3": 0.0,
    }
    png = figures.plot_case(row, None, gt_path, tmp_path / "c.png")
    assert png.read_bytes()[:8] == PNG
    assert False in resampled  # the T2, B-spline onto the ground truth's grid


@pytest.mark.parametrize(
    "mask_suffix, t2_suffix",
    [(".nrrd", ".nrrd"), (".nii.gz", ".mha"), (".mha", ".nii.gz"), (".nrrd", ".nii")],
)
def test_case_picture_finds_the_t2_in_any_cohort_suffix(mask_suffix, t2_suffix, tmp_path):
    """The T2 under the outlines is looked up among every suffix the cohort layout reads,
    whatever the mask's own (only .nii.gz, .mha and .nii, and only the mask's suffix, were
    tried: .nrrd cohorts and mixed-suffix cases were drawn on black)."""
    from hntseg import figures

    folder = tmp_path / "7" / "midRT"
    folder.mkdir(parents=True)
    gt = np.zeros((4, 20, 20), np.uint8)
    gt[1:3, 5:10, 5:10] = 1
    gt_path = folder / f"7_midRT_mask{mask_suffix}"
    t2_path = folder / f"7_midRT_T2{t2_suffix}"
    sitk.WriteImage(make_image(gt), str(gt_path))
    t2 = np.random.default_rng(0).random((4, 20, 20)).astype(np.float32)
    sitk.WriteImage(make_image(t2), str(t2_path))
    assert figures._t2_beside(gt_path) == t2_path
    link = tmp_path / f"7{mask_suffix}"  # a flat ground-truth folder linking into the cohort
    link.symlink_to(gt_path)
    assert figures._t2_beside(link) == t2_path
    t2_path.unlink()
    assert figures._t2_beside(gt_path) is None  # no T2 beside: drawn on black, no error


def test_case_picture_draws_the_t2_of_an_nrrd_cohort(tmp_path, monkeypatch):
    """plot_case reads the .nrrd T2 beside an .nrrd ground truth and draws it underneath."""
    from hntseg import figures

    gt = np.zeros((4, 20, 20), np.uint8)
    gt[1:3, 5:10, 5:10] = 1
    gt_path = tmp_path / "1_midRT_mask.nrrd"
    sitk.WriteImage(make_image(gt), str(gt_path))
    t2 = np.random.default_rng(0).random((4, 20, 20)).astype(np.float32) + 1
    sitk.WriteImage(make_image(t2), str(tmp_path / "1_midRT_T2.nrrd"))
    figs = []
    real = figures.save_png
    monkeypatch.setattr(
        figures, "save_png", lambda fig, *a, **k: figs.append(fig) or real(fig, *a, **k)
    )
    row = {
        "id": "1",
        "structure": "GTVp",
        "dsc": 0.0,
        "hd95": None,
        "gt_mm3": 50.0,
        "pred_mm3": 0.0,
    }
    figures.plot_case(row, None, gt_path, tmp_path / "c.png")
    drawn = figs[0].axes[0].images[0].get_array()
    assert drawn.max() > 0  # the T2, not the black stand-in

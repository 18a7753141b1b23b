"""QC pictures: one readable PNG per case, single-case and cohort forms, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from hntseg.boxes import Box, BoxSet, boxes_cohort, boxes_path, find_boxes
from hntseg.cli import app
from hntseg.errors import InputError, StageError
from hntseg.gradmap import gradient_map, gradmap_cohort, gradmap_path
from hntseg.io import Grid
from hntseg.qc import mask_names, qc_case, qc_cohort, qc_path

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def make_image(arr, spacing=(0.5, 0.5, 2.0)):
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    return image


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from hntseg.synth import synth_cohort

    root = tmp_path_factory.mktemp("qccohort")
    cohort, priors = root / "cohort", root / "priors"
    synth_cohort(cohort, patients=2, seed=2, size=(40, 40, 10))
    boxes_cohort(cohort, priors, margin=4, seed=0)
    gradmap_cohort(cohort, priors, priors)
    return cohort, priors


def test_qc_case_png_and_no_boxes(tmp_path):
    rng = np.random.default_rng(0)
    t2 = make_image(rng.random((6, 30, 30)).astype(np.float32))
    mask_arr = np.zeros((6, 30, 30), np.uint8)
    mask_arr[2:4, 5:10, 5:10] = 1
    mask_arr[3, 20:25, 18:22] = 2
    mask = make_image(mask_arr)
    boxes = find_boxes(mask, 2)
    png = qc_case(t2, boxes, gradient_map(t2, boxes), {"mask": mask}, tmp_path / "a.png", "t")
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
    empty = BoxSet([], Grid.of(t2))
    png = qc_case(t2, empty, gradient_map(t2, empty), {}, tmp_path / "b.png")
    assert png.read_bytes()[:8] == PNG


def test_qc_case_many_boxes_and_grid_check(tmp_path):
    t2 = make_image(np.ones((4, 12, 12), np.float32))
    many = BoxSet([Box(1 + i % 2, (0, i, i), (1, i + 1, i + 1)) for i in range(10)], Grid.of(t2))
    assert qc_case(t2, many, gradient_map(t2, many), {}, tmp_path / "m.png").is_file()
    other = make_image(np.ones((4, 12, 13), np.float32))
    with pytest.raises(InputError, match="gradient map"):
        qc_case(t2, many, other, {}, tmp_path / "x.png")


def test_qc_cohort_and_cli(prepared, tmp_path):
    cohort, priors = prepared
    written = qc_cohort(cohort, priors, priors, tmp_path / "qc", phases=("midRT", "preRT"))
    assert set(written) == {"1_midRT", "1_preRT", "2_midRT", "2_preRT"}
    assert qc_path(tmp_path / "qc", "1", "midRT").read_bytes()[:8] == PNG
    args = ["qc", "--cohort", str(cohort), "--boxes", str(priors), "--out", str(tmp_path / "c")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert qc_path(tmp_path / "c", "2", "midRT").is_file()
    assert not qc_path(tmp_path / "c", "2", "preRT").exists()  # default: mid-RT only
    t2 = cohort / "1" / "midRT" / "1_midRT_T2.nii.gz"
    single = [
        str(t2),
        str(boxes_path(priors, "1", "midRT")),
        str(gradmap_path(priors, "1", "midRT")),
    ]
    mask = cohort / "1" / "midRT" / "1_midRT_mask.nii.gz"
    out = tmp_path / "one.png"
    result = runner.invoke(app, ["qc", *single, "--mask", str(mask), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == PNG
    # pre-RT boxes on the mid-RT T2: one-line error
    single[1] = str(boxes_path(priors, "1", "preRT"))
    result = runner.invoke(app, ["qc", *single, "--out", str(out)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "another grid" in lines[0]


def test_qc_cohort_missing_gradmap_fails_case(prepared, tmp_path):
    cohort, priors = prepared
    # the reason is in the final error too (the per-case log line may be far above)
    (tmp_path / "nogradmaps").mkdir()
    with pytest.raises(StageError, match="1_midRT; first: .*gradmap file not found"):
        qc_cohort(cohort, priors, tmp_path / "nogradmaps", tmp_path / "qc", ids=["1"])
    # no such folder at all: one error before any case
    with pytest.raises(InputError, match="--gradmaps folder not found"):
        qc_cohort(cohort, priors, tmp_path / "typo", tmp_path / "qc", ids=["1"])


def _single_case(root):
    """A T2, boxes.json and gradient map on one small grid, and the same mask in two folders
    under one file name."""
    from hntseg.boxes import write_boxes
    from hntseg.io import write_image

    rng = np.random.default_rng(0)
    t2 = make_image(rng.random((8, 16, 16)).astype(np.float32))
    arr = np.zeros((8, 16, 16), np.uint8)
    arr[2:5, 4:9, 4:9] = 1
    mask = make_image(arr)
    boxes = find_boxes(mask, 2)
    paths = {"t2": root / "t2.nii.gz", "boxes": root / "boxes.json", "gm": root / "gm.nii.gz"}
    write_image(t2, paths["t2"])
    write_boxes(paths["boxes"], boxes)
    write_image(gradient_map(t2, boxes), paths["gm"])
    for folder in ("a", "b"):
        write_image(mask, root / folder / "8.nii.gz")
    return [str(paths[k]) for k in ("t2", "boxes", "gm")]


def test_mask_names_distinct():
    assert list(mask_names(["a/8.nii.gz", "b/8.nii.gz"])) == ["a/8", "b/8"]
    assert list(mask_names(["x/a/8.nii.gz", "y/a/8.mha", "c.nii.gz"])) == ["x/a/8", "y/a/8", "c"]
    assert list(mask_names(["a/8.nii.gz", "b/9.nii.gz"])) == ["8", "9"]
    with pytest.raises(InputError, match="given twice"):
        mask_names(["a/8.nii.gz", "./a/8.nii.gz"])


def test_qc_cli_same_mask_name_in_two_folders_both_drawn(tmp_path, monkeypatch):
    import hntseg.qc

    single = _single_case(tmp_path)
    drawn = {}
    real = hntseg.qc.qc_case

    def spy(t2, boxes, gradmap, masks, out_png, title=None):
        drawn.update(masks)
        return real(t2, boxes, gradmap, masks, out_png, title)

    monkeypatch.setattr(hntseg.qc, "qc_case", spy)
    a, b = tmp_path / "a" / "8.nii.gz", tmp_path / "b" / "8.nii.gz"
    out = tmp_path / "one.png"
    args = ["qc", *single, "--mask", str(a), "--mask", str(b), "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert set(drawn) == {"a/8", "b/8"} and out.read_bytes()[:8] == PNG
    # the same file twice: a one-line error
    result = runner.invoke(app, ["qc", *single, "--mask", str(a), "--mask", str(a), "-o", str(out)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--mask" in lines[0]


def test_qc_out_must_be_png(tmp_path):
    single = _single_case(tmp_path)
    for name in ("x.jpg", "x"):
        out = tmp_path / name
        result = runner.invoke(app, ["qc", *single, "-o", str(out)])
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "--out" in lines[0] and ".png" in lines[0] and "Traceback" not in result.output
        assert not out.exists()
    t2 = make_image(np.ones((4, 12, 12), np.float32))
    empty = BoxSet([], Grid.of(t2))
    with pytest.raises(InputError, match=r"\.png"):
        qc_case(t2, empty, gradient_map(t2, empty), {}, tmp_path / "y.jpeg")
    assert not (tmp_path / "y.jpeg").exists()
    assert qc_case(t2, empty, gradient_map(t2, empty), {}, tmp_path / "Y.PNG").is_file()


def test_qc_quiet_prints_nothing(tmp_path):
    single = _single_case(tmp_path)
    result = runner.invoke(app, ["--quiet", "qc", *single, "-o", str(tmp_path / "q.png")])
    assert result.exit_code == 0 and result.output.strip() == "", result.output
    result = runner.invoke(app, ["qc", *single, "-o", str(tmp_path / "l.png")])
    assert result.exit_code == 0 and "wrote" in result.output, result.output


def test_grid_errors_name_the_file(prepared, tmp_path):
    """A gradient map or mask on another grid: the one-line error names that file (not
    "gradient map" or the mask's legend name), in both forms."""
    from hntseg.io import write_image

    cohort, priors = prepared
    root = tmp_path / "s"
    single = _single_case(root)
    small = make_image(np.zeros((8, 16, 15), np.uint8))
    write_image(small, root / "wrong_mask.nii.gz")
    write_image(make_image(np.zeros((8, 16, 15), np.float32)), root / "wrong_gm.nii.gz")
    for args, name in [
        ([single[0], single[1], str(root / "wrong_gm.nii.gz")], "wrong_gm.nii.gz"),
        ([*single, "--mask", str(root / "wrong_mask.nii.gz")], "wrong_mask.nii.gz"),
    ]:
        result = runner.invoke(app, ["qc", *args, "--out", str(tmp_path / "x.png")])
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and name in lines[0], result.output
    # cohort form: the failed case's log line names the mask
    from conftest import patient_with_bad_grid

    copy = tmp_path / "c"
    bad = patient_with_bad_grid(cohort, copy, "1", "midRT/1_midRT_mask.nii.gz")
    result = runner.invoke(
        app, ["qc", "--cohort", str(copy), "--boxes", str(priors), "--out", str(tmp_path / "q")]
    )
    assert result.exit_code == 1 and str(bad) in "".join(
        ln.strip() for ln in result.output.splitlines()
    ), result.output


@pytest.mark.parametrize(
    "direction, plane",
    [
        ((1, 0, 0, 0, 1, 0, 0, 0, 1), "axial"),
        ((0, 0, 1, 1, 0, 0, 0, 1, 0), "sagittal"),  # image axis k along x
        ((1, 0, 0, 0, 0, 1, 0, -1, 0), "coronal"),  # image axis k along -y
    ],
)
def test_qc_titles_name_the_slice_plane(direction, plane, tmp_path, monkeypatch):
    """Titles name the plane of the slices (image axis k) and the slice index: a sagittal
    acquisition was titled "T2 slice z=N", read as an axial slice."""
    import hntseg.qc

    figs = []
    real = hntseg.qc.save_png
    monkeypatch.setattr(
        hntseg.qc, "save_png", lambda fig, *a, **k: figs.append(fig) or real(fig, *a, **k)
    )

    def image(arr):
        img = make_image(arr)
        img.SetDirection(direction)
        return img

    t2 = image(np.random.default_rng(0).random((6, 30, 30)).astype(np.float32))
    mask_arr = np.zeros((6, 30, 30), np.uint8)
    mask_arr[2:4, 5:10, 5:10] = 1
    mask_arr[2, 5:7, 5:10] = 0  # most of the label on slice 3
    mask = image(mask_arr)
    boxes = find_boxes(mask, 2)
    qc_case(t2, boxes, gradient_map(t2, boxes), {"mask": mask}, tmp_path / "a.png")
    titles = [ax.get_title() for ax in figs[0].axes[:3]]
    assert titles[0] == f"box 0 (GTVp) - T2 {plane} slice 3"
    assert titles[2] == f"gradient map, {plane} slice 3"
    empty = BoxSet([], Grid.of(t2))
    qc_case(t2, empty, gradient_map(t2, empty), {}, tmp_path / "b.png")
    assert figs[1].axes[0].get_title() == f"no boxes; T2 {plane} slice 3"

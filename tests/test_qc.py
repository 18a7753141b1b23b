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
from hntseg.qc import qc_case, qc_cohort, qc_path

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
    with pytest.raises(StageError, match="1_midRT"):
        qc_cohort(cohort, priors, tmp_path / "nogradmaps", tmp_path / "qc", ids=["1"])

"""The paper's analyses: paired Wilcoxon comparison and volume change vs DSC."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from hntseg.analysis import compare, spearman, volume_change, wilcoxon_p
from hntseg.cli import app
from hntseg.errors import InputError

runner = CliRunner()
N = 6


def write(path, arr, spacing=(0.5, 0.5, 2.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(arr.astype(np.uint8))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """N cases: B equals the ground truth, A is shifted by k + 1 voxels (DSC falls with k),
    the pre-RT GTVp grows with k (volume change rises with k). GTVn only in 3 cases."""
    root = tmp_path_factory.mktemp("analysis")
    for k in range(N):
        gt = np.zeros((10, 40, 40), np.uint8)
        gt[2:8, 5:17, 5:17] = 1
        if k < 3:
            gt[2:6, 25:33, 25:33] = 2
        a = np.zeros_like(gt)
        a[2:8, 5 + k + 1 : 17 + k + 1, 5:17] = 1
        a[gt == 2] = 2
        pre = np.zeros((12, 40, 40), np.uint8)
        pre[1:9, 5 : 17 + k, 5:17] = 1
        write(root / "gt" / f"{k + 1}_midRT_mask.nii.gz", gt)
        write(root / "A" / f"{k + 1}.nii.gz", a)
        write(root / "B" / f"{k + 1}.mha", gt)
        write(root / "pre" / f"{k + 1}_preRT_mask.nii.gz", pre)
    return root


def test_compare_paired_wilcoxon(sets, tmp_path):
    res = compare(sets / "A", sets / "B", sets / "gt", tmp_path, names=("base", "grad"))
    p = res["structures"]["GTVp"]
    assert p["n"] == N and p["mean_grad"] == 1.0 and p["mean_base"] < 1.0
    assert p["dsc"]["base"] == sorted(p["dsc"]["base"], reverse=True)  # paired in id order
    # all N differences have the same sign, no ties: exact two-sided p = 2 / 2^N
    assert p["wilcoxon_p"] == pytest.approx(2 / 2**N)
    n = res["structures"]["GTVn"]
    assert n["n"] == 3 and n["wilcoxon_p"] == 1.0  # identical: no difference
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["structures"]["GTVp"]["ids"] == [str(i) for i in range(1, N + 1)]
    assert len((tmp_path / "compare.csv").read_text().splitlines()) == 1 + N + 3


def test_volume_change_spearman(sets, tmp_path):
    res = volume_change(sets / "A", sets / "gt", sets / "pre", tmp_path, bins=(1.0,))
    p = res["structures"]["GTVp"]
    assert p["n"] == N and p["rho"] == pytest.approx(-1.0)
    first, second = p["bins"]
    assert first["n"] == N and first["rho"] == pytest.approx(-1.0)
    assert second["n"] == 0 and math.isnan(second["rho"])
    change = [pt["change_ml"] for pt in p["points"]]
    voxel_ml = 0.5 * 0.5 * 2.0 / 1000
    assert change[0] == pytest.approx((8 * 12 * 12 - 6 * 12 * 12) * voxel_ml)
    assert math.isnan(res["structures"]["GTVn"]["rho"])  # DSC constant (1.0)
    assert (tmp_path / "volume_change.png").stat().st_size > 1000


def test_volume_change_needs_every_pre_mask(sets, tmp_path):
    pre = tmp_path / "pre"
    pre.mkdir()
    for k in range(N - 1):
        src = sets / "pre" / f"{k + 1}_preRT_mask.nii.gz"
        (pre / src.name).write_bytes(src.read_bytes())
    with pytest.raises(InputError, match=f"no pre-RT mask for patient {N}"):
        volume_change(sets / "A", sets / "gt", pre)


def test_statistics_edge_cases():
    assert math.isnan(wilcoxon_p([], []))
    assert wilcoxon_p([0.5, 0.6], [0.5, 0.6]) == 1.0
    assert spearman([1, 2, 3], [3, 2, 1])[0] == pytest.approx(-1.0)
    assert all(math.isnan(v) for v in spearman([1, 2], [2, 1]))
    assert all(math.isnan(v) for v in spearman([1, 2, 3], [1, 1, 1]))


def test_cli_compare_and_volume_on_a_cohort(tiny_cohort, sets, tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(
        app,
        ["evaluate-compare", str(sets / "A"), str(sets / "B"), str(sets / "gt"), "-o", str(out)]
        + ["--names", "base,grad"],
    )
    assert result.exit_code == 0, result.output
    assert "Wilcoxon" in result.output and (out / "compare.png").is_file()
    result = runner.invoke(app, ["evaluate-compare", "a", "b", "c", "--names", "x"])
    assert result.exit_code == 2 and "--names" in result.output
    # cohort layout everywhere: registered pre-RT masks vs mid-RT, pre-RT volumes
    out = tmp_path / "vol"
    c = str(tiny_cohort)
    result = runner.invoke(app, ["evaluate-volume", c, c, c, "-o", str(out), "--bins", "2,10"])
    assert result.exit_code == 0, result.output
    assert "Spearman" in result.output
    saved = json.loads((out / "volume_change.json").read_text())
    assert saved["bins_ml"] == [2.0, 10.0]
    result = runner.invoke(app, ["evaluate-volume", c, c, c, "--bins", "a,b"])
    assert result.exit_code == 2 and "--bins" in result.output
    result = runner.invoke(app, ["evaluate-volume", c, c, c, "--bins", "nan"])
    assert result.exit_code == 2 and "--bins" in result.output


def _subset(sets, root, ids):
    """Copies of A's and B's predictions (and the pre-RT masks) of only `ids`, as one
    fold's validation predictions are: folders that hold part of the cohort."""
    for name, pattern in (("A", "{}.nii.gz"), ("B", "{}.mha"), ("pre", "{}_preRT_mask.nii.gz")):
        (root / name).mkdir(parents=True)
        for i in ids:
            src = sets / name / pattern.format(i)
            (root / name / src.name).write_bytes(src.read_bytes())
    return root / "A", root / "B", root / "pre"


def test_cli_compare_ids_scores_only_those_patients(sets, tmp_path):
    a, b, _ = _subset(sets, tmp_path / "sub", ["2", "4", "5"])
    gt, out = str(sets / "gt"), tmp_path / "cmp"
    base = ["evaluate-compare", str(a), str(b), gt]
    result = runner.invoke(app, base)  # without --ids: every ground-truth patient
    assert result.exit_code == 2 and "no prediction for patient 1" in result.output
    result = runner.invoke(app, [*base, "--ids", "5,2", "--ids", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "compare.json").read_text())
    assert saved["ids"] == ["2", "4", "5"]  # recorded, in ground-truth order
    p = saved["structures"]["GTVp"]
    assert p["ids"] == ["2", "4", "5"] and p["n"] == 3
    assert p["wilcoxon_p"] == pytest.approx(2 / 2**3)  # 3 pairs, not padded with empties
    assert saved["structures"]["GTVn"]["ids"] == ["2"]  # GTVn only in patients 1-3
    assert len((out / "compare.csv").read_text().splitlines()) == 1 + 3 + 1


def test_cli_compare_ids_errors(sets, tmp_path):
    a, b, _ = _subset(sets, tmp_path / "sub", ["2", "4"])
    base = ["evaluate-compare", str(a), str(b), str(sets / "gt")]
    result = runner.invoke(app, [*base, "--ids", "2,99,x"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--ids 99,x: no ground-truth case" in lines[0], result.output
    # a selected patient without a prediction: an error, or empty with --allow-missing
    result = runner.invoke(app, [*base, "--ids", "2,3"])
    assert result.exit_code == 2 and "no prediction for patient 3" in result.output
    result = runner.invoke(app, [*base, "--ids", "2,3", "--allow-missing"])
    assert result.exit_code == 0, result.output
    res = compare(a, b, sets / "gt", ids=["3", "2"], allow_missing=True)
    assert res["ids"] == ["2", "3"] and res["structures"]["GTVp"]["dsc"]["B"] == [1.0, 0.0]
    assert compare(sets / "A", sets / "B", sets / "gt")["ids"] is None  # all: recorded null


def test_volume_change_ids(sets, tmp_path):
    a, _, pre = _subset(sets, tmp_path / "sub", ["1", "3", "6"])
    with pytest.raises(InputError, match="no prediction for patient 2"):
        volume_change(a, sets / "gt", pre)
    res = volume_change(a, sets / "gt", pre, tmp_path / "vol", bins=(1.0,), ids=["6", "1", "3"])
    assert res["ids"] == ["1", "3", "6"] and res["structures"]["GTVp"]["n"] == 3
    assert res["structures"]["GTVp"]["rho"] == pytest.approx(-1.0)
    assert json.loads((tmp_path / "vol" / "volume_change.json").read_text())["ids"] == res["ids"]
    with pytest.raises(InputError, match="--ids 7: no ground-truth case"):
        volume_change(a, sets / "gt", pre, ids=["1", "7"])
    with pytest.raises(InputError, match="--ids: no ids given"):
        volume_change(a, sets / "gt", pre, ids=[])
    assert volume_change(sets / "A", sets / "gt", sets / "pre")["ids"] is None  # all: null


def test_cli_volume_ids_on_a_cohort(tiny_cohort, tmp_path):
    c, out = str(tiny_cohort), tmp_path / "vol"
    result = runner.invoke(app, ["evaluate-volume", c, c, c, "-o", str(out), "--ids", "2,4"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "volume_change.json").read_text())
    assert saved["ids"] == ["2", "4"]
    assert {pt["id"] for s in saved["structures"].values() for pt in s["points"]} <= {"2", "4"}
    result = runner.invoke(app, ["evaluate-volume", c, c, c, "--ids", "5"])
    assert result.exit_code == 2 and "--ids 5: no ground-truth case" in result.output

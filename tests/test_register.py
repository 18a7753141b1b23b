"""Registration stage: recovery of a known deformation, label/grid contracts, records,
resume, determinism, bad input, failure isolation and a real-MRI golden test."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from typer.testing import CliRunner

from hntseg.cli import app
from hntseg.cohort import expected_path
from hntseg.errors import StageError
from hntseg.io import Grid, array, from_array, read_image, read_json, read_mask, write_image
from hntseg.records import case_seed

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_MRI = SHARED_DATA / "real-mri"
runner = CliRunner()
SIZE, SPACING = (96, 96, 32), (1.5, 1.5, 3.0)  # small, but tumours span > 100 voxels
MIN_DICE = 0.85  # the bar; docs/register.md has the figures on a larger cohort


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from hntseg.synth import synth_cohort

    root = tmp_path_factory.mktemp("regcohort")
    synth_cohort(root, patients=2, seed=0, size=SIZE, spacing=SPACING)
    return root


@pytest.fixture(scope="module")
def registered(cohort, tmp_path_factory) -> Path:
    """The fast preset on the whole cohort, two cases in parallel processes (CLI)."""
    out = tmp_path_factory.mktemp("registered")
    result = runner.invoke(
        app, ["--quiet", "register", str(cohort), "--out", str(out), "--workers", "2"]
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def identity(cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("identity")
    result = runner.invoke(
        app, ["--quiet", "register", str(cohort), "--out", str(out), "--method", "identity"]
    )
    assert result.exit_code == 0, result.output
    return out


# --------------------------------------------------------------------------- recovery


def test_fast_preset_recovers_known_deformation(cohort, registered, identity, report):
    truths = read_json(cohort / "synth.json")["patients"]
    checked = 0
    for truth in truths:
        pid = truth["id"]
        got = array(read_mask(expected_path(registered, pid, "preRT_mask_registered")))
        ref = array(read_mask(expected_path(cohort, pid, "preRT_mask_registered")))
        base = array(read_mask(expected_path(identity, pid, "preRT_mask_registered")))
        for label, name in ((1, "GTVp"), (2, "GTVn")):
            if truth["volumes_ml"][name]["preRT_registered"] < 1.0:
                continue
            dice = _dice(got == label, ref == label)
            report(f"register fast, synthetic {pid} {name}: Dice to the known warp {dice:.3f}")
            assert dice >= MIN_DICE, (pid, name, dice)
            assert dice > _dice(base == label, ref == label) + 0.05, (pid, name)
            checked += 1
        record = read_json(registered / pid / "register.record.json")
        sim = record["similarity"]
        assert sim["improved"] is True
        assert sim["registered"]["nmi"] > sim["identity"]["nmi"]
        assert sim["registered"]["ncc"] > sim["identity"]["ncc"]
        base_record = read_json(identity / pid / "register.record.json")
        assert sim["registered"]["nmi"] > base_record["similarity"]["registered"]["nmi"]
        assert record["params"]["preset"] == "fast" and record["params"]["method"] == "elastix"
        assert record["seed"] == case_seed(0, pid, "register") & 0x7FFFFFFF
        assert record["versions"]["itk-elastix"] != "not installed"
        assert record["runtime_s"] > 0 and record["dice_to_midRT_mask"]["registered"]
    assert checked >= 2


def test_outputs_on_mid_grid_with_labels_preserved(cohort, registered):
    for pid in ("1", "2"):
        mid = sitk.ReadImage(str(expected_path(cohort, pid, "midRT_T2")))
        t2 = sitk.ReadImage(str(expected_path(registered, pid, "preRT_T2_registered")))
        mask = sitk.ReadImage(str(expected_path(registered, pid, "preRT_mask_registered")))
        pre = array(read_mask(expected_path(cohort, pid, "preRT_mask")))
        assert Grid.of(t2) == Grid.of(mid) and Grid.of(mask) == Grid.of(mid)
        assert mask.GetPixelID() == sitk.sitkUInt8 and t2.GetPixelID() == sitk.sitkFloat32
        assert set(np.unique(array(mask))) <= set(np.unique(pre))
        files = sorted((registered / pid / "elastix").glob("TransformParameters.*.txt"))
        assert [f.name for f in files] == ["TransformParameters.0.txt", "TransformParameters.1.txt"]
        assert '(Transform "EulerTransform")' in files[0].read_text()
        last = files[1].read_text()
        assert '(Transform "BSplineTransform")' in last and str(files[0].resolve()) in last


def test_resume_skips_done_cases_and_single_case_is_deterministic(cohort, registered, tmp_path):
    result = runner.invoke(app, ["register", str(cohort), "--out", str(registered)])
    assert result.exit_code == 0, result.output
    assert "registered 0 case(s), 2 already done" in result.output
    # the single-case form with the same id and seed and one thread (as each of the two
    # workers had) reproduces the cohort run byte for byte
    args = ["register", "--out", str(tmp_path), "--id", "2", "--threads", "1"]
    args += ["--pre-t2", str(expected_path(cohort, "2", "preRT_T2"))]
    args += ["--pre-mask", str(expected_path(cohort, "2", "preRT_mask"))]
    args += ["--mid-t2", str(expected_path(cohort, "2", "midRT_T2"))]
    result = runner.invoke(app, ["--quiet", *args])
    assert result.exit_code == 0, result.output
    for key in ("preRT_T2_registered", "preRT_mask_registered"):
        assert _digest(expected_path(tmp_path, "2", key)) == _digest(
            expected_path(registered, "2", key)
        )


def test_euler_map_equals_simpleitk_rigid(cohort):
    from hntseg.register import euler_map, transformix

    fixed = sitk.ReadImage(str(expected_path(cohort, "1", "midRT_T2")))
    mask = read_mask(expected_path(cohort, "1", "preRT_mask"))
    rigid = sitk.Euler3DTransform((1.0, -2.0, 3.0), 0.04, -0.03, 0.05, (2.5, -1.5, 3.0))
    grid = Grid.of(fixed)
    ours = transformix(mask, [euler_map(rigid, grid)], grid, nearest=True)
    ref = sitk.Resample(mask, fixed, rigid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    assert (array(ours) != array(ref)).mean() < 1e-3
    assert Grid.of(ours) == grid


def test_provided_method_adopts_organizers_files(cohort, tmp_path):
    result = runner.invoke(
        app, ["--quiet", "register", str(cohort), "--out", str(tmp_path), "--method", "provided"]
    )
    assert result.exit_code == 0, result.output
    for pid in ("1", "2"):
        for key in ("preRT_T2_registered", "preRT_mask_registered"):
            a = array(sitk.ReadImage(str(expected_path(tmp_path, pid, key))))
            b = array(sitk.ReadImage(str(expected_path(cohort, pid, key))))
            assert np.array_equal(a, b)
        record = read_json(tmp_path / pid / "register.record.json")
        assert record["dice_to_midRT_mask"]["registered"]["GTVp"] is not None


# --------------------------------------------------------------------------- failures


def test_failing_case_does_not_stop_the_others(cohort, tmp_path, monkeypatch, inline_pool):
    import hntseg.register as reg

    def fake(fixed, moving, maps, initial, threads=None, log_dir=None):
        if "-register-1-" in str(log_dir):
            raise RuntimeError("itk::ExceptionObject\nDescription: Too many samples map outside")
        return [initial]  # rigid only: cheap

    monkeypatch.setattr(reg, "elastix_register", fake)
    result = runner.invoke(app, ["--quiet", "register", str(cohort), "--out", str(tmp_path)])
    assert result.exit_code == StageError.exit_code == 1
    assert "1 of 2 cases failed: 1: Too many samples" in result.output
    assert "Traceback" not in result.output
    assert expected_path(tmp_path, "2", "preRT_mask_registered").is_file()
    assert not expected_path(tmp_path, "1", "preRT_mask_registered").is_file()
    assert (tmp_path / "2" / "register.record.json").is_file()


def _single(tmp_path, pre_t2, pre_mask, mid_t2, *extra):
    args = ["register", "--out", str(tmp_path / "o"), "--pre-t2", str(pre_t2)]
    args += ["--pre-mask", str(pre_mask), "--mid-t2", str(mid_t2), *extra]
    return runner.invoke(app, args)


def test_bad_inputs_give_one_line_errors(cohort, tmp_path):
    pre_t2 = expected_path(cohort, "1", "preRT_T2")
    pre_mask = expected_path(cohort, "1", "preRT_mask")
    mid_t2 = expected_path(cohort, "1", "midRT_T2")
    flat = sitk.Image([16, 16], sitk.sitkFloat32)
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    empty = from_array(np.zeros_like(array(read_mask(pre_mask))), read_mask(pre_mask))
    write_image(empty, tmp_path / "empty.nii.gz")
    other = from_array(np.zeros((4, 8, 8), np.uint8), Grid((8, 8, 4), (1, 1, 1), (0, 0, 0),
                                                          (1, 0, 0, 0, 1, 0, 0, 0, 1)))  # fmt: skip
    write_image(other, tmp_path / "other.nii.gz")
    (tmp_path / "bad.txt").write_text('(Metric "AdvancedMattesMutualInformation")\n')
    mid = read_image(mid_t2)
    write_image(from_array(np.zeros_like(array(mid)), mid), tmp_path / "blank.nii.gz")
    thin = sitk.Image([16, 16, 3], sitk.sitkFloat32) + 1.0
    thin[2, 3, 1] = 5.0
    write_image(thin, tmp_path / "thin.nii.gz")
    cases = [
        ((pre_t2, pre_mask, tmp_path / "blank.nii.gz"), (), "is constant (every voxel 0)"),
        ((pre_t2, pre_mask, tmp_path / "thin.nii.gz"), (), "at least 4 voxels along every"),
        ((tmp_path / "missing.nii.gz", pre_mask, mid_t2), (), "not found"),
        ((pre_t2, pre_mask, tmp_path / "flat.nii.gz"), (), "is 2D, expected 3D"),
        ((pre_t2, tmp_path / "empty.nii.gz", mid_t2), (), "mask is empty"),
        ((pre_t2, tmp_path / "other.nii.gz", mid_t2), (), "not on the grid"),
        ((pre_t2, pre_mask, mid_t2), ("--preset", "slow"), "choose one of"),
        ((pre_t2, pre_mask, mid_t2), ("--params", str(tmp_path / "bad.txt")), "no (Transform"),
        ((pre_t2, pre_mask, mid_t2), ("--method", "magic"), "choose one of"),
    ]
    for files, extra, message in cases:
        result = _single(tmp_path, *files, *extra)
        assert result.exit_code == 2, (message, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    result = runner.invoke(app, ["register", "--out", str(tmp_path), "--pre-t2", str(pre_t2)])
    assert result.exit_code == 2 and "--pre-mask" in result.output


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """Two tiny patients (48x48x16): for the fast checks of options and failures."""
    from hntseg.synth import synth_cohort

    root = tmp_path_factory.mktemp("small")
    synth_cohort(root, patients=2, seed=0, size=(48, 48, 16))
    return root


def _case_args(root: Path, pid: str = "1") -> list[str]:
    return [
        *("--pre-t2", str(expected_path(root, pid, "preRT_T2"))),
        *("--pre-mask", str(expected_path(root, pid, "preRT_mask"))),
        *("--mid-t2", str(expected_path(root, pid, "midRT_T2"))),
    ]


def _one_line_error(result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _copy_cohort(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_threads_and_workers_checked_in_both_forms(small, tmp_path):
    out = tmp_path / "o"
    for form in (_case_args(small), [str(small)]):
        for extra, message in (
            (["--threads", "-3"], "--threads -3: must be at least 1"),
            (["--threads", "0"], "--threads 0: must be at least 1"),
            (["--workers", "-2"], "--workers -2: must be at least 1"),
        ):
            args = ["register", *form, "--out", str(out), "--method", "identity", *extra]
            _one_line_error(runner.invoke(app, args), 2, message)
    # the elastix path crashed inside SimpleITK on a negative thread count (OverflowError)
    args = ["register", *_case_args(small), "--out", str(out), "--threads", "-3"]
    _one_line_error(runner.invoke(app, args), 2, "--threads -3")
    assert not out.exists()


def _mask_on_another_grid(like: Path, path: Path) -> Path:
    mask = read_mask(like)
    other = Grid.of(mask)
    other = Grid(other.size, other.spacing, tuple(o + 7.0 for o in other.origin), other.direction)
    write_image(from_array(array(mask), other), path)
    return path


def test_failed_case_leaves_none_of_its_outputs(small, tmp_path, monkeypatch, request):
    # cohort form: case 1's mid-RT mask is on another grid; case 2 is fine (in workers)
    cohort = _copy_cohort(small, tmp_path / "cohort")
    mid_mask = expected_path(cohort, "1", "midRT_mask")
    _mask_on_another_grid(mid_mask, mid_mask)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["--quiet", "register", str(cohort), "--out", str(out), "--method", "identity"]
    )
    assert result.exit_code == 1, result.output
    assert "1 of 2 cases failed: 1: " in result.output and "not on the grid" in result.output
    assert not (out / "1").exists()
    assert (out / "2" / "register.record.json").is_file()
    # single-case form: the same mask is a one-line input error, and nothing is written
    args = ["register", *_case_args(small), "--out", str(tmp_path / "s"), "--id", "p1"]
    result = runner.invoke(app, [*args, "--method", "identity", "--mid-mask", str(mid_mask)])
    _one_line_error(result, 2, "not on the grid")
    assert not (tmp_path / "s").exists()

    # a failure after the images are written (here: the record) removes them again, and
    # a forced rerun that fails leaves no output of the earlier, successful run either
    # (the cases run here, where the monkeypatches are)
    import hntseg.register as reg

    inline_pool = request.getfixturevalue("inline_pool")

    args = ["--quiet", "register", *_case_args(small), "--out", str(out), "--id", "p1"]
    assert runner.invoke(app, [*args, "--method", "identity"]).exit_code == 0
    assert expected_path(out, "p1", "preRT_mask_registered").is_file()

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(reg, "write_record", broken)
    result = runner.invoke(app, [*args, "--method", "identity", "--force"])
    _one_line_error(result, 1, "case p1 failed: disk full")
    assert not (out / "p1").exists()

    # elastix failing in the single-case form: one line, exit 1, nothing left
    def fake(fixed, moving, maps, initial, threads=None, log_dir=None):
        (log_dir / "elastix.log").write_text("log\n")
        raise RuntimeError("itk::ExceptionObject\nDescription: Too many samples map outside")

    monkeypatch.setattr(reg, "elastix_register", fake)
    result = runner.invoke(app, args)
    _one_line_error(result, 1, "case p1 failed: elastix: Too many samples map outside (log: ")
    # no outputs; only elastix's log, kept for debugging
    assert [p.name for p in (out / "p1").rglob("*")] == ["elastix.failed.log"]
    assert sorted(p.name for p in out.iterdir()) == ["2", "p1"]
    assert inline_pool == [1, 1, 1]  # the command's single case runs in a worker too


def test_missing_mid_mask_is_an_error_only_when_given(small, tmp_path):
    args = ["register", *_case_args(small), "--out", str(tmp_path / "s"), "--method", "identity"]
    result = runner.invoke(app, [*args, "--mid-mask", str(tmp_path / "missing.nii.gz")])
    _one_line_error(result, 2, "missing.nii.gz: midRT_mask not found")
    assert not (tmp_path / "s").exists()
    # the cohort form: a mid-RT mask is optional, used when present
    cohort = _copy_cohort(small, tmp_path / "cohort")
    expected_path(cohort, "1", "midRT_mask").unlink()
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["--quiet", "register", str(cohort), "--out", str(out), "--method", "identity"]
    )
    assert result.exit_code == 0, result.output
    assert read_json(out / "1" / "register.record.json")["dice_to_midRT_mask"] is None
    assert read_json(out / "2" / "register.record.json")["dice_to_midRT_mask"] is not None


def test_params_only_with_elastix_and_parsed_once(small, tmp_path, monkeypatch):
    import hntseg.register as reg

    params = tmp_path / "mine.txt"
    params.write_text(reg.preset_path("fast").read_text())
    out = tmp_path / "out"
    for form in (_case_args(small), [str(small)]):
        for method in ("identity", "provided"):
            args = ["register", *form, "--out", str(out), "--method", method]
            result = runner.invoke(app, [*args, "--params", str(params)])
            _one_line_error(result, 2, "--params applies to --method elastix only")
    assert not out.exists()
    # elastix: the files are parsed once for the whole cohort, not once per case
    calls = []
    parse = reg.read_parameter_file

    def counting(path):
        calls.append(Path(path))
        return parse(path)

    monkeypatch.setattr(reg, "read_parameter_file", counting)
    monkeypatch.setattr(reg, "elastix_register", lambda f, m, maps, initial, *a: [initial])
    result = runner.invoke(
        app, ["--quiet", "register", str(small), "--out", str(out), "--params", str(params)]
    )
    assert result.exit_code == 0, result.output
    assert calls == [params]
    record = read_json(out / "2" / "register.record.json")
    assert record["params"]["elastix"][0]["Transform"] == ["BSplineTransform"]


def test_case_id_is_a_plain_name(small, tmp_path):
    out = tmp_path / "out"
    for bad in ("../escape", "a/b", "a\\b", ".", "..", ""):
        args = ["register", *_case_args(small), "--out", str(out), "--method", "identity"]
        _one_line_error(runner.invoke(app, [*args, "--id", bad]), 2, "must be a plain name")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_out_must_not_be_the_cohort(small, tmp_path):
    cohort = _copy_cohort(small, tmp_path / "cohort")
    before = {f: _digest(cohort / f) for f in _files(cohort)}
    (tmp_path / "link").symlink_to(cohort)
    for out in (cohort, tmp_path / "cohort" / ".", tmp_path / "link"):
        for method in ("elastix", "identity", "provided"):
            args = ["register", str(cohort), "--out", str(out), "--method", method]
            _one_line_error(runner.invoke(app, args), 2, "is the cohort folder itself")
    # the single-case form, writing into the cohort the mid-RT T2 comes from
    args = ["register", *_case_args(cohort), "--out", str(cohort), "--id", "1"]
    _one_line_error(runner.invoke(app, [*args, "--method", "identity"]), 2, "is the cohort")
    assert {f: _digest(cohort / f) for f in _files(cohort)} == before


# --------------------------------------------------------------------------- parameter files


def test_presets_parse_like_elastix():
    import itk

    from hntseg.register import PRESETS, preset_path, read_parameter_file

    for name in PRESETS:
        ours = read_parameter_file(preset_path(name))
        theirs = itk.ParameterObject.New()
        theirs.ReadParameterFile(str(preset_path(name)))
        assert ours == {k: list(v) for k, v in dict(theirs.GetParameterMap(0)).items()}
    challenge = read_parameter_file(preset_path("challenge"))
    assert challenge["Metric"] == [
        "AdvancedMattesMutualInformation",
        "TransformBendingEnergyPenalty",
    ]
    assert challenge["Metric1Weight"] == ["50"] and challenge["NumberOfHistogramBins"] == ["60"]
    assert challenge["MaximumNumberOfIterations"] == ["5000"]
    assert challenge["NumberOfSpatialSamples"] == ["10000"]
    assert challenge["FinalGridSpacingInPhysicalUnits"] == ["15"]


_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ_", min_size=1, max_size=12)
_values = st.one_of(_words, st.integers(-1000, 100000).map(str), st.floats(-1e6, 1e6).map(repr))


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(_words, st.lists(_values, min_size=1, max_size=4), min_size=1))
def test_parameter_map_text_round_trip(tmp_path_factory, params):
    from hntseg.register import format_parameter_map, read_parameter_file

    params = {"Transform": ["BSplineTransform"], **params}
    path = tmp_path_factory.mktemp("pm") / "p.txt"
    path.write_text("// comment\n" + format_parameter_map(params))
    assert read_parameter_file(path) == params


_steps = st.integers(-300_000, 300_000)
_within = st.floats(-0.45, 0.45)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_steps, _within), min_size=6, max_size=6), st.randoms())
def test_snap_rigid_absorbs_thread_noise(params, rnd):
    """Two multi-threaded runs of the rigid stage differ by ~1e-9 (measured at 512x512x75:
    5.115920572 vs 5.115920573 mm); after snapping, elastix must get the same start (here
    away from a step's edge; test_snap_reproducibly covers the edges)."""
    from hntseg.register import ROTATION_STEP_RAD, TRANSLATION_STEP_MM, snap_rigid

    steps = (ROTATION_STEP_RAD,) * 3 + (TRANSLATION_STEP_MM,) * 3
    exact = [(k + u) * q for (k, u), q in zip(params, steps, strict=True)]
    noisy = [v + rnd.uniform(-2e-9, 2e-9) for v in exact]
    snapped = snap_rigid(exact)
    assert snap_rigid(noisy) == snapped
    assert all(abs(a - b) <= q / 2 + 1e-12 for a, b, q in zip(snapped, exact, steps, strict=True))


_margins = st.sampled_from([0.0, 0.3, 0.999, -0.3, -0.999])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_steps, st.floats(-0.5, 0.5), _margins, _margins), min_size=6, max_size=6)
)
def test_snap_reproducibly_gives_every_run_the_one_thread_start(params):
    """Runs of the rigid stage that differ from the one-thread run by less than the margins
    (5-10x the spread measured) snap alike, at a step's edge too, where snapping alone
    splits them (one of the 4 phantoms of the test cohort lay there)."""
    from hntseg.register import (
        ROTATION_MARGIN_RAD,
        ROTATION_STEP_RAD,
        TRANSLATION_MARGIN_MM,
        TRANSLATION_STEP_MM,
        snap_reproducibly,
        snap_rigid,
    )

    steps = (ROTATION_STEP_RAD,) * 3 + (TRANSLATION_STEP_MM,) * 3
    margins = (ROTATION_MARGIN_RAD,) * 3 + (TRANSLATION_MARGIN_MM,) * 3
    # the one-thread run anywhere, edges included (u = +-0.5); two runs around it
    one = [(k + u) * q for (k, u, _, _), q in zip(params, steps, strict=True)]
    run_a = [v + a * m for v, (_, _, a, _), m in zip(one, params, margins, strict=True)]
    run_b = [v + b * m for v, (_, _, _, b), m in zip(one, params, margins, strict=True)]
    assert snap_reproducibly(run_a, lambda: one) == snap_rigid(one)
    assert snap_reproducibly(run_b, lambda: one) == snap_reproducibly(run_a, lambda: one)
    assert snap_reproducibly(one, None) == snap_rigid(one)


def test_a_rigid_result_near_a_step_edge_is_the_one_thread_result(small, monkeypatch, caplog):
    """Near a step's edge, a multi-threaded rigid stage returns the one-thread result
    (margins made huge here, so every result is near an edge); a one-thread run never
    runs twice."""
    import logging

    import hntseg.register as reg

    fixed = read_image(expected_path(small, "1", "midRT_T2"))
    moving = read_image(expected_path(small, "1", "preRT_T2"))
    fits: list[int | None] = []
    fit = reg._rigid_fit

    def counted(f, m, settings, seed, threads):
        fits.append(threads)
        return fit(f, m, settings, seed, threads)

    monkeypatch.setattr(reg, "_rigid_fit", counted)
    settings = reg.RigidSettings(iterations=10, sampling=0.5)
    one = reg.rigid_register(fixed, moving, settings, 3, 1).GetParameters()
    assert fits == [1]
    monkeypatch.setattr(reg, "ROTATION_MARGIN_RAD", 1.0)
    monkeypatch.setattr(reg, "TRANSLATION_MARGIN_MM", 100.0)
    with caplog.at_level(logging.INFO, logger="hntseg"):
        two = reg.rigid_register(fixed, moving, settings, 3, 2).GetParameters()
    assert fits == [1, 2, 1] and two == one
    assert "recomputed with one thread" in caplog.text
    assert reg.rigid_register(fixed, moving, settings, 3, 1).GetParameters() == one
    assert fits == [1, 2, 1, 1]


# --------------------------------------------------------------------------- real MRI


def _smooth_field(rng, shape_zyx, amplitude_mm):
    coarse = rng.normal(0.0, amplitude_mm, (3, 3, 4, 4))
    zoom = [1.0] + [n / c for n, c in zip(shape_zyx, coarse.shape[1:], strict=True)]
    return ndimage.zoom(coarse, zoom, order=3, mode="nearest")[:, : shape_zyx[0]]


@pytest.mark.skipif(not REAL_MRI.is_dir(), reason=f"real MRI test data not found at {REAL_MRI}")
def test_real_mri_lesion_recovered(tmp_path):
    """brain1 as pre-RT; mid-RT = a known rigid + smooth warp of it with the lesion shrunk
    (its outer shell turned into surrounding tissue); the warped pre-RT lesion is the truth."""
    from hntseg.synth import grid_points

    image = sitk.Cast(sitk.ReadImage(str(REAL_MRI / "brain1_image.nrrd")), sitk.sitkFloat32)
    label = sitk.ReadImage(str(REAL_MRI / "brain1_label.nrrd"))
    grid = Grid.of(image)
    pre = array(image)
    lesion = array(label) > 0
    rng = np.random.default_rng(3)
    # mid point x -> pre point: rotation 2 deg about z, shift (2, -3, 1.5) mm, smooth field
    pts = grid_points(grid)
    angle = np.deg2rad(2.0)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    centre = pts.mean(axis=0)
    field = _smooth_field(rng, grid.shape, 2.0).reshape(3, -1).T
    mapped = (pts - centre) @ rot.T + centre + np.array([2.0, -3.0, 1.5]) + field
    direction = np.asarray(grid.direction).reshape(3, 3)
    idx = ((mapped - grid.origin) @ direction / grid.spacing)[:, ::-1].T
    mid = ndimage.map_coordinates(pre, idx, order=3, mode="constant").reshape(grid.shape)
    truth = ndimage.map_coordinates(lesion.astype(np.uint8), idx, order=0).reshape(grid.shape)
    # shrink: the outer shell of the lesion takes the intensity of the tissue around it
    core = ndimage.binary_erosion(truth > 0, iterations=3)
    ring = ndimage.binary_dilation(truth > 0, iterations=4) & ~(truth > 0)
    shell = (truth > 0) & ~core
    mid[shell] = np.median(mid[ring])
    mid = np.maximum(mid, 0).astype(np.float32)
    paths = {
        "pre_t2": tmp_path / "pre_T2.nii.gz",
        "pre_mask": tmp_path / "pre_mask.nii.gz",
        "mid_t2": tmp_path / "mid_T2.nii.gz",
        "mid_mask": tmp_path / "mid_mask.nii.gz",
    }
    write_image(image, paths["pre_t2"])
    write_image(from_array(lesion.astype(np.uint8), grid), paths["pre_mask"])
    write_image(from_array(mid, grid), paths["mid_t2"])
    write_image(from_array(core.astype(np.uint8), grid), paths["mid_mask"])
    result = _single(
        tmp_path, paths["pre_t2"], paths["pre_mask"], paths["mid_t2"], "--id", "brain1",
        "--mid-mask", str(paths["mid_mask"]),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = array(read_mask(expected_path(tmp_path / "o", "brain1", "preRT_mask_registered")))
    baseline = _dice(lesion, truth > 0)
    dice = _dice(got == 1, truth == 1)
    assert dice >= 0.9, (dice, baseline)
    assert dice > baseline
    record = read_json(tmp_path / "o" / "brain1" / "register.record.json")
    assert record["similarity"]["improved"] is True


def test_elastix_failure_keeps_its_log_for_debugging(small, tmp_path, monkeypatch):
    """A failed elastix run leaves no outputs but its log, which a later run removes."""
    import hntseg.register as reg

    log_text = (
        "Error occurred.\nDescription: ITK ERROR: ElastixMain(0x5562): The following "
        "component could not be created: NoSuchMetric\n"
    )

    def broken(fixed, moving, maps, initial, threads, workdir):
        (workdir / "elastix.log").write_text(log_text)
        raise RuntimeError("Internal elastix error: See elastix log (use LogToConsoleOn())")

    monkeypatch.setattr(reg, "elastix_register", broken)
    p = small / "1"
    args = dict(
        pre_t2=p / "preRT" / "1_preRT_T2.nii.gz",
        pre_mask=p / "preRT" / "1_preRT_mask.nii.gz",
        mid_t2=p / "midRT" / "1_midRT_T2.nii.gz",
        out=tmp_path / "o",
        case_id="1",
    )
    log_file = tmp_path / "o" / "1" / "elastix.failed.log"
    # the reason from elastix's log, and where the log is (not "use LogToConsoleOn()")
    reason = "The following component could not be created: NoSuchMetric"
    with pytest.raises(RuntimeError, match=f"elastix: {reason} \\(log: {log_file}\\)"):
        reg.register_case(**args)
    assert log_file.read_text() == log_text
    assert sorted(p.name for p in (tmp_path / "o" / "1").rglob("*")) == ["elastix.failed.log"]
    reg.register_case(**args, method="identity")
    assert not log_file.exists()


def test_default_threads_follow_the_allocation_not_the_node(small, tmp_path, monkeypatch):
    """On a shared node, a job's CPU allocation (affinity) sets the default thread count."""
    import os

    import hntseg.machine as machine

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert machine.available_cpus() == 1
    from hntseg.register import register_cohort

    register_cohort(small, tmp_path / "o", method="identity", ids=["1"])
    assert read_json(tmp_path / "o" / "1" / "register.record.json")["threads"] == 1


def test_after_a_worker_died_only_unrecorded_outputs_go(small, tmp_path):
    """A dead worker fails every queued case: finished cases keep their outputs, and an
    output that is one of the case's inputs (a symlinked folder) is never removed."""
    from hntseg.register import _remove_unrecorded, register_cohort

    out = tmp_path / "o"
    register_cohort(small, out, method="identity", ids=["1"])
    task = {"out": out, "case_id": "1"}
    _remove_unrecorded(task)
    assert expected_path(out, "1", "preRT_mask_registered").is_file()  # recorded: kept
    (out / "1" / "register.record.json").unlink()
    _remove_unrecorded(task)
    assert not expected_path(out, "1", "preRT_mask_registered").exists()  # partial: gone
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "2").symlink_to(small / "2")  # OUT/2 is the cohort's own patient 2
    provided = expected_path(small, "2", "preRT_mask_registered")
    _remove_unrecorded({"out": linked, "case_id": "2", "provided_mask": provided})
    assert provided.is_file()


def test_an_interrupted_pool_stops_now_and_leaves_no_partial_case(tmp_path, monkeypatch):
    """Ctrl-C during a run with --workers (or SIGTERM, which the CLI unwinds the same way)
    stops at once: the queued cases are not started (the pool used to run every one of them
    before the interrupt got through), no worker outlives the call, and a case that did not
    finish leaves nothing, its temporary and elastix files included."""
    import multiprocessing

    import hntseg.register as register
    from hntseg.synth import synth_cohort

    cohort = tmp_path / "c"
    synth_cohort(cohort, patients=10, seed=0, size=(24, 24, 8))
    out = tmp_path / "o"
    stale = [out / "10" / "midRT" / ".hntseg-tmp-x.nii.gz", out / "10" / "elastix" / "elastix.log"]
    for path in stale:  # as a stopped worker would leave them
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")

    def interrupt(result) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(register, "_report", interrupt)  # Ctrl-C as the first case is reported
    with pytest.raises(KeyboardInterrupt):
        register.register_cohort(cohort, out, method="identity", workers=2, threads=1)
    assert multiprocessing.active_children() == []
    done = sorted(p.parent.name for p in out.glob("*/register.record.json"))
    assert 1 <= len(done) <= 5, done  # the first case, and those already in the workers
    assert not out.joinpath("10").exists()
    for case in out.iterdir():  # a stopped case: nothing; a finished one: complete
        if case.name not in done:
            assert not any(p.is_file() for p in case.rglob("*")), case
        else:
            assert expected_path(out, case.name, "preRT_mask_registered").is_file()


def test_register_processes_load_itk_without_torch():
    """`hntseg register` and its workers keep ITK from importing torch (which it loads as
    soon as a filter module loads, to accept torch tensors): 0.5 GiB and a second each."""
    import subprocess
    import sys

    code = (
        "import sys; from hntseg.register import lean_itk; lean_itk(); "
        "import itk; itk.ImageSource; print('torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False", run.stdout + run.stderr


def test_the_register_command_loads_itk_lean(small, tmp_path, monkeypatch, inline_pool):
    """The command's cases run in workers that load ITK lean (the command's own process no
    longer loads ITK at all)."""
    import hntseg.register

    calls: list[bool] = []
    monkeypatch.setattr(hntseg.register, "lean_itk", lambda: calls.append(True))
    args = ["--quiet", "register", str(small), "--out", str(tmp_path / "o"), "--ids", "1"]
    result = CliRunner().invoke(app, [*args, "--method", "identity"])
    assert result.exit_code == 0 and calls == [True], result.output


def test_done_cases_start_no_worker(tiny_cohort, tmp_path, inline_pool):
    """With --workers, finished cases are skipped before the pool starts (each spawned worker
    costs its start-up, and itk's import for elastix): a rerun with nothing to do starts
    none, one case left runs here as with --workers 1, and the pool is never bigger than
    the cases left to run."""
    from hntseg.register import register_cohort

    pools = inline_pool
    out = tmp_path / "o"

    def statuses(**kw) -> list[str]:
        results = register_cohort(tiny_cohort, out, method="identity", **kw)
        return [r.status for r in results]

    assert statuses(ids=["2"]) == ["ok"]
    assert statuses(workers=8) == ["ok", "skipped", "ok", "ok"] and pools == [3]
    done = register_cohort(tiny_cohort, out, method="identity")  # one worker
    assert register_cohort(tiny_cohort, out, method="identity", workers=8) == done
    assert pools == [3]  # nothing to do: no pool
    (out / "3" / "register.record.json").unlink()
    assert statuses(workers=8) == ["skipped", "skipped", "ok", "skipped"] and pools == [3]
    assert statuses(workers=2, force=True) == ["ok"] * 4 and pools == [3, 2]
    (out / "1" / "register.record.json").unlink()
    skip3 = ["ok", "skipped", "skipped", "skipped"]
    assert statuses(isolate=True) == skip3 and pools == [3, 2, 1]  # the CLI's: one case too
    (out / "1" / "register.record.json").unlink()
    assert statuses(workers=8, isolate=False) == skip3 and pools == [3, 2, 1]


def test_library_call_keeps_itk_threads_and_a_rerun_keeps_its_scores(small, tmp_path):
    """A notebook's register_case leaves ITK's process-wide thread counts as they were, and
    the skipped rerun still returns the similarity and Dice its record holds."""
    import itk

    from hntseg.register import register_case

    mt = itk.MultiThreaderBase
    before = (mt.GetGlobalMaximumNumberOfThreads(), mt.GetGlobalDefaultNumberOfThreads())
    kwargs = {
        "pre_t2": expected_path(small, "1", "preRT_T2"),
        "pre_mask": expected_path(small, "1", "preRT_mask"),
        "mid_t2": expected_path(small, "1", "midRT_T2"),
        "mid_mask": expected_path(small, "1", "midRT_mask"),
        "out": tmp_path,
        "case_id": "1",
        "threads": 1 if before[1] != 1 else 2,
    }
    first = register_case(**kwargs)
    assert first.status == "ok"
    assert (mt.GetGlobalMaximumNumberOfThreads(), mt.GetGlobalDefaultNumberOfThreads()) == before
    again = register_case(**kwargs)
    assert again.status == "skipped"
    assert again.similarity == first.similarity and again.similarity
    assert again.dice_to_midRT == first.dice_to_midRT and again.dice_to_midRT


def _spawned_workers(parent: int) -> list[int]:
    """The pids of `parent`'s multiprocessing workers (not its resource tracker), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _kill_the_first_worker(killed: list[int]):
    """A thread that SIGKILLs this process's first spawned worker as soon as it appears
    (as the out-of-memory killer would), noting its pid in `killed`."""
    import os
    import signal
    import threading

    def run() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for pid in _spawned_workers(os.getpid())[:1]:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.005)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@needs_proc
def test_a_killed_worker_fails_its_own_case_only(tiny_cohort, tmp_path):
    """A worker killed mid-case (the out-of-memory killer, a segfault in elastix) fails
    that case alone: the others finish, and the dead case leaves nothing. (With Python's
    process pool, one dead worker failed every case still to finish.)"""
    from hntseg.register import register_cohort

    killed: list[int] = []
    thread = _kill_the_first_worker(killed)
    out = tmp_path / "o"
    results = register_cohort(
        tiny_cohort, out, method="identity", workers=2, threads=1, raise_on_failure=False
    )
    thread.join()
    assert killed, "no worker process was seen"
    failed = [r for r in results if r.status == "failed"]
    assert len(failed) == 1, [(r.id, r.status, r.error) for r in results]
    assert "worker died (killed by SIGKILL" in failed[0].error
    assert [r.status for r in results].count("ok") == len(results) - 1
    assert not (out / failed[0].id).exists()


@needs_proc
def test_a_killed_worker_of_a_single_case_is_an_error_of_that_case(tiny_cohort, tmp_path):
    """register_case(isolate=True), as `hntseg register --pre-t2 ...` runs it: a worker
    that dies raises WorkerDied naming the signal, and the case leaves nothing."""
    from hntseg.register import register_case
    from hntseg.workers import WorkerDied

    killed: list[int] = []
    thread = _kill_the_first_worker(killed)
    paths = [expected_path(tiny_cohort, "1", k) for k in ("preRT_T2", "preRT_mask", "midRT_T2")]
    with pytest.raises(WorkerDied, match="killed by SIGKILL"):
        register_case(*paths, tmp_path / "o", "p1", method="identity", isolate=True)
    thread.join()
    assert killed and not (tmp_path / "o" / "p1").exists()


@needs_proc
def test_ctrl_c_stops_a_single_case_at_once(tmp_path):
    """`hntseg register` runs even one case in a worker process, so Ctrl-C stops it within
    a second or two, not when elastix (minutes with the challenge preset) or ITK's import
    returns, and the case leaves nothing behind."""
    import os
    import signal
    import subprocess
    import sys

    from hntseg.synth import synth_cohort

    cohort = tmp_path / "c"
    synth_cohort(cohort, patients=1, seed=0, size=(96, 96, 32), spacing=(1.5, 1.5, 3.0))
    out = tmp_path / "o"
    args = [sys.executable, "-m", "hntseg", "register", "--out", str(out)]
    args += ["--preset", "challenge", "--threads", "1"]
    for flag, key in (("pre-t2", "preRT_T2"), ("pre-mask", "preRT_mask"), ("mid-t2", "midRT_T2")):
        args += [f"--{flag}", str(expected_path(cohort, "1", key))]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _spawned_workers(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2)  # the worker is in its imports (ITK's) or in elastix
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("Ctrl-C did not stop the registration within 20 s")
    assert time.monotonic() - start < 10
    assert proc.returncode == 130, err
    assert "error: stopped by Ctrl-C" in err and "Traceback" not in err, err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


# --------------------------------------------------------------------------- audit of 2026-12-03


@pytest.mark.parametrize(
    "text",
    [
        "(MaximumNumberOfIterations 250",  # no closing bracket: the entry was dropped
        "MaximumNumberOfIterations 50",  # no brackets
        '(Metric "AdvancedMattesMutualInformation)',  # unmatched quote
        "(NumberOfHistogramBins)",  # no value: elastix's default was used
    ],
)
def test_a_malformed_parameter_line_is_one_error_naming_the_line(tmp_path, text):
    """elastix refuses these lines; the old reader skipped them and ran with its defaults."""
    from hntseg.errors import InputError
    from hntseg.register import preset_path, read_parameter_file

    path = tmp_path / "p.txt"
    lines = preset_path("fast").read_text().splitlines()
    path.write_text("\n".join([*lines[:3], text, *lines[3:]]) + "\n")
    with pytest.raises(InputError, match=f"{path}:4: not an elastix entry"):
        read_parameter_file(path)
    out = str(tmp_path / "o")
    args = ["register", *_case_args(tmp_path), "--out", out, "--id", "1", "--params", str(path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "not an elastix entry" in result.output


def test_single_case_into_another_patients_cohort_is_refused(small, tmp_path):
    """Patient 1's files with --id 2 into the cohort replaced patient 2's organizers' files."""
    cohort = _copy_cohort(small, tmp_path / "cohort")
    before = {f: _digest(cohort / f) for f in _files(cohort)}
    args = ["register", *_case_args(cohort), "--out", str(cohort), "--id", "2"]
    _one_line_error(runner.invoke(app, [*args, "--method", "identity"]), 2, "is a cohort")
    assert {f: _digest(cohort / f) for f in _files(cohort)} == before
    out_file = tmp_path / "afile"
    out_file.write_text("")
    args = ["register", *_case_args(cohort), "--out", str(out_file), "--id", "1"]
    _one_line_error(runner.invoke(app, [*args, "--method", "identity"]), 2, "not a folder")


def test_the_dice_follows_the_mid_rt_mask_given_now(small, tmp_path):
    """The mid-RT mask is a check, not an input of the registration: a case done without it
    (or with another) reported the old Dice, or none, on a rerun. It is made again from the
    outputs, and the record updated, without registering again."""
    from hntseg.register import register_case

    p = small / "1"
    args = dict(
        pre_t2=p / "preRT" / "1_preRT_T2.nii.gz",
        pre_mask=p / "preRT" / "1_preRT_mask.nii.gz",
        mid_t2=p / "midRT" / "1_midRT_T2.nii.gz",
        out=tmp_path / "o",
        case_id="1",
        method="identity",
    )
    first = register_case(**args)
    assert first.status == "ok" and first.dice_to_midRT is None
    mask = tmp_path / "o" / "1" / "midRT" / "1_preRT_mask_registered.nii.gz"
    stamp = mask.stat().st_mtime_ns
    again = register_case(**args, mid_mask=p / "midRT" / "1_midRT_mask.nii.gz")
    assert again.status == "skipped" and mask.stat().st_mtime_ns == stamp
    full = register_case(**args, mid_mask=p / "midRT" / "1_midRT_mask.nii.gz", force=True)
    assert again.dice_to_midRT == full.dice_to_midRT and full.dice_to_midRT["registered"]
    record = read_json(tmp_path / "o" / "1" / "register.record.json")
    assert record["dice_to_midRT_mask"] == full.dice_to_midRT
    assert register_case(**args).dice_to_midRT is None  # and without it again


def test_a_pre_rt_scan_beside_the_mid_rt_scan_warns_and_its_record_is_strict_json(
    small, tmp_path, caplog
):
    """No overlap: the registered mask lost every label (a warning, not a silent "ok"), and
    the record's NaN similarity is null, not the bare NaN strict JSON parsers refuse."""
    import json
    import logging

    from hntseg.log import log
    from hntseg.register import register_case

    p = small / "1"
    far = sitk.ReadImage(str(p / "preRT" / "1_preRT_T2.nii.gz"))
    far_mask = sitk.ReadImage(str(p / "preRT" / "1_preRT_mask.nii.gz"))
    for image in (far, far_mask):
        image.SetOrigin((5000.0, 5000.0, 5000.0))
    sitk.WriteImage(far, str(tmp_path / "t2.nii.gz"))
    sitk.WriteImage(far_mask, str(tmp_path / "m.nii.gz"))
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=log.name):
            result = register_case(
                tmp_path / "t2.nii.gz", tmp_path / "m.nii.gz", p / "midRT" / "1_midRT_T2.nii.gz",
                tmp_path / "o", "1", method="identity",
            )  # fmt: skip
    finally:
        log.removeHandler(caplog.handler)
    assert result.status == "ok"
    assert "no tumour voxels left" in caplog.text
    text = (tmp_path / "o" / "1" / "register.record.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the record"))

"""Contracts of `register` and `ensemble-predict` that a wrong line could break while every
other test still passes (found by mutation testing): the folds' ensembling, argmax as uint8,
the exact mid-RT grid, the inference gradient map's margin and cache, records that notice a
changed option, per-case failures; registration's interpolators, grids, similarity, Dice,
seeds, threads and records.

No network, no trained model: nnU-Net's predictor, preprocessing and export are replaced by
small fakes (the folds' logits are given), and elastix by a known rigid transform.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image
from typer.testing import CliRunner

from hntseg import predict
from hntseg.cli import app
from hntseg.cohort import expected_path
from hntseg.errors import InputError, StageError
from hntseg.io import Grid, array, from_array, read_json, read_mask, write_image
from hntseg.nnunet import FULL_TRAINER, PLANS, SHORT_TRAINER

runner = CliRunner()
DID = 7


def _image(arr: np.ndarray, spacing=(0.5, 0.75, 2.0), origin=(0.0, 0.0, 0.0), direction=None):
    return make_image(arr, spacing, origin, direction)


def _write(path: Path, image: sitk.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def _model(work: Path, trainer: str = FULL_TRAINER, folds=(0, 1, 2), channels=("T2", "gradmap")):
    folder = work / "nnUNet_results" / f"Dataset{DID:03d}_X" / f"{trainer}__{PLANS}__3d_fullres"
    for f in folds:
        (folder / f"fold_{f}").mkdir(parents=True)
        (folder / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    (folder / "plans.json").write_text("{}")
    names = {str(i): c for i, c in enumerate(channels)}
    (folder / "dataset.json").write_text(json.dumps({"channel_names": names}))
    return folder


# --------------------------------------------------------------------------- the ensemble

# per fold, logits of 3 classes at 4 voxels (1, 1, 4). Voxels 0 and 2: the mean
# probabilities pick class 1, the mean logits class 0 (one fold is very sure of class 0,
# the other two prefer class 1); voxel 3: every fold gives class 2 a probability that is
# 0 in float32
FOLD_LOGITS = {
    0: [[30.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, -200.0]],
    1: [[0.0, 1.0, 0.0, 5.0], [3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, -200.0]],
    2: [[0.0, 0.0, 3.5, 0.0], [3.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, -200.0]],
}


class _FakeNet:
    def __init__(self):
        self.fold = None

    def load_state_dict(self, params):
        self.fold = params["fold"]


class _FakePredictor:
    """nnUNetPredictor's surface that Ensemble uses; each fold's logits come from its
    loaded 'weights'."""

    made: list[_FakePredictor] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.autocast: list[bool] = []
        _FakePredictor.made.append(self)

    def initialize_from_trained_model_folder(self, folder, use_folds, checkpoint_name):
        self.use_folds = use_folds
        self.list_of_parameters = [{"fold": f} for f in use_folds]
        self.network = _FakeNet()
        self.plans_manager = self.dataset_json = self.configuration_manager = None
        self.label_manager = None

    def predict_sliding_window_return_logits(self, data):
        import torch

        self.autocast.append(torch.is_autocast_enabled("cpu"))
        logits = torch.tensor(FOLD_LOGITS[self.network.fold], dtype=torch.float32)
        return logits.reshape(3, *data.shape[1:]).clone()


@pytest.fixture
def fake_nnunet(monkeypatch):
    """nnU-Net's predictor, preprocessing and export replaced; returns what export got."""
    import torch
    from nnunetv2.inference import data_iterators, export_prediction
    from nnunetv2.inference import predict_from_raw_data as raw

    exported: list[torch.Tensor] = []

    def preprocess(data, segs, props, *args, **kwargs):
        return iter([{"data": torch.from_numpy(data[0]), "data_properties": props[0]}])

    def export(logits, plans_manager, configuration_manager, label_manager, properties):
        exported.append(logits.clone())
        return logits.argmax(0).numpy().astype(np.int64)  # nnU-Net may give any int type

    _FakePredictor.made = []
    monkeypatch.setattr(raw, "nnUNetPredictor", _FakePredictor)
    monkeypatch.setattr(data_iterators, "PreprocessAdapterFromNpy", preprocess)
    monkeypatch.setattr(
        export_prediction, "convert_predicted_logits_to_segmentation_with_correct_shape", export
    )
    return exported


class _Device:
    def __init__(self, kind: str):
        self.type = kind


def _predict(ensemble: str, folds=(0, 1, 2), **kwargs) -> np.ndarray:
    model = predict.Ensemble(Path("model"), folds, _Device("cpu"), ensemble=ensemble, **kwargs)
    return model.predict(np.zeros((2, 1, 1, 4), np.float32), {"spacing": [2.0, 0.75, 0.5]})


def test_softmax_ensemble_is_the_log_of_the_mean_probabilities(fake_nnunet):
    import torch

    seg = _predict("softmax")
    logits = {f: torch.tensor(v).reshape(3, 1, 1, 4) for f, v in FOLD_LOGITS.items()}
    mean_p = sum(torch.softmax(x, dim=0) for x in logits.values()) / 3
    (got,) = fake_nnunet
    assert torch.isfinite(got).all()  # log(0) clamped: nnU-Net's resampling gets no -inf
    assert torch.allclose(got.exp(), mean_p, atol=1e-6)
    assert torch.allclose(got[:, 0, 0, :3], mean_p.log()[:, 0, 0, :3], atol=1e-5)
    assert seg.dtype == np.uint8 and seg.shape == (1, 1, 4)
    assert seg.ravel().tolist() == mean_p.argmax(0).ravel().tolist() == [1, 2, 1, 0]


def test_logits_ensemble_is_the_mean_logits(fake_nnunet):
    import torch

    seg = _predict("logits")
    mean = sum(torch.tensor(v) for v in FOLD_LOGITS.values()).reshape(3, 1, 1, 4) / 3
    (got,) = fake_nnunet
    assert torch.allclose(got, mean, atol=1e-5)
    assert seg.dtype == np.uint8
    assert seg.ravel().tolist() == mean.argmax(0).ravel().tolist() == [0, 2, 0, 0]


def test_ensemble_uses_each_requested_fold_once(fake_nnunet):
    import torch

    _predict("logits", folds=(2, 0))
    (model,) = _FakePredictor.made
    assert model.use_folds == (2, 0)
    mean = (torch.tensor(FOLD_LOGITS[2]) + torch.tensor(FOLD_LOGITS[0])).reshape(3, 1, 1, 4) / 2
    assert torch.allclose(fake_nnunet[0], mean, atol=1e-5)


def test_predictor_settings_follow_the_options(fake_nnunet):
    import logging

    from hntseg.log import log

    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    _predict("softmax", tta=False)
    _predict("softmax", tta=True, cpu_bf16=True)
    no_tta, bf16 = _FakePredictor.made
    assert no_tta.kwargs["use_mirroring"] is False and bf16.kwargs["use_mirroring"] is True
    assert no_tta.kwargs["use_gaussian"] is True and no_tta.kwargs["tile_step_size"] == 0.5
    assert no_tta.kwargs["perform_everything_on_device"] is False  # a CPU
    assert set(no_tta.autocast) == {False} and set(bf16.autocast) == {True}
    # --cpu-bf16 applies to CPUs only: a CUDA device runs as nnU-Net sets it
    log.addHandler(handler)
    try:
        gpu = predict.Ensemble(Path("m"), [0], _Device("cuda"), cpu_bf16=True)
    finally:
        log.removeHandler(handler)
    assert gpu.cpu_bf16 is False and gpu.predictor.kwargs["perform_everything_on_device"]
    assert any("--cpu-bf16 ignored on device cuda" in m for m in warnings), warnings


# --------------------------------------------------------------------------- writing


def test_prediction_written_on_the_exact_mid_grid_as_uint8(tmp_path):
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    t2 = _image(np.ones((3, 4, 5), np.float32), (0.75, 0.625, 2.5), (10.5, -3.25, 7.0), direction)
    seg = np.zeros((3, 4, 5), np.uint8)
    seg[1, 2, 3], seg[2, 0, 0] = 1, 2
    out = tmp_path / "p.nii.gz"
    predict._write_prediction(seg, t2, out)
    image = sitk.ReadImage(str(out))
    assert Grid.of(image) == Grid.of(t2) and image.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(image), seg)
    bad = seg.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(InputError, match=r"predicted labels \[0, 1, 2, 3\]"):
        predict._write_prediction(bad, t2, tmp_path / "bad.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()


# --------------------------------------------------------------------------- inputs


def _t2_and_mask(tmp_path: Path, spacing=(0.5, 0.75, 2.0)) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    t2 = rng.random((12, 24, 24)).astype(np.float32)
    mask = np.zeros((12, 24, 24), np.uint8)
    mask[5:7, 10:13, 10:12] = 1
    return (
        _write(tmp_path / "t2.nii.gz", _image(t2, spacing)),
        _write(tmp_path / "mask.nii.gz", _image(mask, spacing)),
    )


def test_load_case_gives_nnunet_zyx_spacing_and_checks_every_grid(tmp_path):
    t2, mask = _t2_and_mask(tmp_path)
    case = predict.PredictCase("1", t2, {"t2": t2, "pre_mask_registered": mask})
    image, data, props = predict.load_case(case, ["t2", "pre_mask_registered"], 4, tmp_path)
    assert data.shape == (2, 12, 24, 24) and data.dtype == np.float32
    assert props["spacing"] == [2.0, 0.75, 0.5]  # (z, y, x)
    assert np.array_equal(data[1], array(read_mask(mask)).astype(np.float32))
    # a ready channel on another grid, and a mask channel with a label hntseg never makes
    other = _write(tmp_path / "other.nii.gz", _image(np.ones((12, 24, 24), np.float32), (1, 1, 1)))
    case = predict.PredictCase("1", t2, {"t2": t2, "gradmap": other})
    with pytest.raises(InputError, match="not on the grid"):
        predict.load_case(case, ["t2", "gradmap"], 4, tmp_path)
    labels = np.zeros((12, 24, 24), np.uint8)
    labels[0, 0, 0] = 5
    five = _write(tmp_path / "five.nii.gz", _image(labels))
    case = predict.PredictCase("1", t2, {"t2": t2, "pre_mask_registered": five})
    with pytest.raises(InputError, match="labels 5"):
        predict.load_case(case, ["t2", "pre_mask_registered"], 4, tmp_path)


def test_inference_gradmap_uses_the_fixed_margin_and_its_cache(tmp_path, monkeypatch):
    from hntseg import gradmap as gradmap_module
    from hntseg.boxes import find_boxes
    from hntseg.gradmap import gradient_map

    t2_path, mask_path = _t2_and_mask(tmp_path)
    t2, mask = sitk.ReadImage(str(t2_path)), read_mask(mask_path)
    case = predict.PredictCase("1", t2_path, {"gradmap": mask_path}, gradmap_from_mask=True)
    cache = tmp_path / "cache"
    maps = {}
    for margin in (1, 3):
        got = predict._cached_gradmap(case, t2, margin, cache)
        want = gradient_map(t2, find_boxes(mask, margin, seed=None))
        assert np.array_equal(array(got), array(want)), margin
        assert Grid.of(got) == Grid.of(t2)
        maps[margin] = array(got)
    assert not np.array_equal(maps[1], maps[3])  # a margin change is not served from cache
    # the same inputs and margin: read back, not computed again
    calls = []
    real = gradmap_module.gradient_map
    monkeypatch.setattr(
        gradmap_module, "gradient_map", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    again = predict._cached_gradmap(case, t2, 3, cache)
    assert calls == [] and np.array_equal(array(again), maps[3])
    # another mid-RT T2 (same grid) is not served the map of the old one
    _write(t2_path, _image(np.random.default_rng(5).random((12, 24, 24)).astype(np.float32)))
    t2 = sitk.ReadImage(str(t2_path))
    fresh = predict._cached_gradmap(case, t2, 3, cache)
    assert calls == [1] and not np.array_equal(array(fresh), maps[3])
    # a registered mask on another grid than the mid-RT T2 is refused
    other = _write(tmp_path / "m2.nii.gz", _image(array(mask), (0.5, 0.75, 2.0), (0.0, 0.0, 9.0)))
    bad = predict.PredictCase("2", t2_path, {"gradmap": other}, gradmap_from_mask=True)
    with pytest.raises(InputError, match="not on the grid"):
        predict._cached_gradmap(bad, t2, 3, cache)


# --------------------------------------------------------------------------- the command


class _CountingEnsemble:
    """Stands for the model: predicts label 1 where the T2 is above 0.5, counts its calls."""

    calls: list[float] = []

    def __init__(self, *args, **kwargs):
        pass

    def predict(self, data, props):
        _CountingEnsemble.calls.append(float(data[0].mean()))
        return (data[0] > 0.5).astype(np.uint8)  # as Ensemble.predict gives


@pytest.fixture
def fake_model_run(monkeypatch):
    _CountingEnsemble.calls = []
    monkeypatch.setattr(predict, "Ensemble", _CountingEnsemble)
    monkeypatch.setattr(predict, "select_device", lambda device: _Device("cpu"))
    monkeypatch.setattr(predict, "_announce", lambda *args: None)
    return _CountingEnsemble.calls


def _cohort(root: Path, ids=("1", "2", "3")) -> Path:
    """Mid-RT T2s with registered pre-RT T2s and masks (HNTS-MRG layout), 12x24x24."""
    rng = np.random.default_rng(1)
    for pid in ids:
        t2 = rng.random((12, 24, 24)).astype(np.float32)
        mask = np.zeros((12, 24, 24), np.uint8)
        mask[4:8, 8:14, 8:14] = 2
        _write(expected_path(root, pid, "midRT_T2"), _image(t2))
        _write(expected_path(root, pid, "preRT_T2_registered"), _image(t2 * 2 + 3))
        _write(expected_path(root, pid, "preRT_mask_registered"), _image(mask))
    return root


def test_changed_option_or_force_predicts_again(tmp_path, fake_model_run):
    work = tmp_path / "work"
    _model(work)
    cohort, out = _cohort(tmp_path / "cohort", ids=("1",)), tmp_path / "out"

    def run(**kwargs) -> int:
        before = len(fake_model_run)
        predict.ensemble_predict(cohort, work, DID, out, folds=[0, 1, 2], **kwargs)
        return len(fake_model_run) - before

    assert run() == 1
    written = sitk.ReadImage(str(out / "1.nii.gz"))
    t2 = sitk.ReadImage(str(expected_path(cohort, "1", "midRT_T2")))
    assert Grid.of(written) == Grid.of(t2) and written.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(array(written), (array(t2) > 0.5).astype(np.uint8))
    assert run() == 0  # done
    assert run(ensemble="logits") == 1  # another ensembling is another result
    assert run(ensemble="logits", margin=2) == 1  # another gradient map
    assert run(ensemble="logits", margin=2, force=True) == 1
    assert run(ensemble="logits", margin=2) == 0


def test_cohort_channels_come_from_the_right_files(tmp_path):
    cohort = _cohort(tmp_path / "cohort", ids=("1", "2"))
    channels = ["t2", "pre_t2_registered", "pre_mask_registered", "gradmap"]
    cases = predict._cohort_cases(cohort, channels, None, None, None)
    assert [c.id for c in cases] == ["1", "2"]
    for case in cases:
        pid = case.id
        assert case.t2 == case.files["t2"] == expected_path(cohort, pid, "midRT_T2")
        assert case.files["pre_t2_registered"] == expected_path(cohort, pid, "preRT_T2_registered")
        mask = expected_path(cohort, pid, "preRT_mask_registered")
        assert case.files["pre_mask_registered"] == case.files["gradmap"] == mask
        assert case.gradmap_from_mask is True
    # --registered: the registered files come from that folder, not from the cohort
    mine = _cohort(tmp_path / "mine", ids=("1", "2"))
    cases = predict._cohort_cases(cohort, channels, mine, None, None)
    assert cases[1].files["pre_t2_registered"] == expected_path(mine, "2", "preRT_T2_registered")
    assert cases[1].files["gradmap"] == expected_path(mine, "2", "preRT_mask_registered")
    assert cases[1].t2 == expected_path(cohort, "2", "midRT_T2")
    # a ready gradient map is used as it is
    ready = _write(tmp_path / "maps" / "2" / "2_midRT_gradmap.nii.gz", _image(np.ones((2, 2, 2))))
    cases = predict._cohort_cases(cohort, ["t2", "gradmap"], None, tmp_path / "maps", None)
    assert [c.gradmap_from_mask for c in cases] == [True, False] and cases[1].files[
        "gradmap"
    ] == ready


def test_missing_registered_mask_is_one_line_naming_it(tmp_path, fake_model_run):
    work = tmp_path / "work"
    _model(work)
    cohort = _cohort(tmp_path / "cohort", ids=("1", "2"))
    missing = expected_path(cohort, "2", "preRT_mask_registered")
    missing.unlink()
    args = [str(cohort), "--work", str(work), "--dataset-id", str(DID), "--folds", "0"]
    result = runner.invoke(app, ["ensemble-predict", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{missing}: missing (patient 2)" in lines[0], result.output
    assert fake_model_run == [] and not (tmp_path / "o").exists()


def test_a_failing_case_does_not_stop_the_others(tmp_path, fake_model_run):
    work = tmp_path / "work"
    _model(work)
    cohort, out = _cohort(tmp_path / "cohort"), tmp_path / "out"
    mask = expected_path(cohort, "2", "preRT_mask_registered")
    _write(mask, _image(array(read_mask(mask)), (0.5, 0.75, 2.0), (0.0, 0.0, 30.0)))
    with pytest.raises(StageError, match=r"1 of 3 case\(s\) failed; first: 2: .*not on the grid"):
        predict.ensemble_predict(cohort, work, DID, out, folds=[0])
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["1.nii.gz", "3.nii.gz"]
    assert sorted(p.name for p in (out / ".records").iterdir()) == [
        "1.record.json",
        "3.record.json",
    ]


def test_full_training_preferred_and_dataset_ids_up_to_999(tmp_path):
    work = tmp_path / "work"
    full = _model(work, FULL_TRAINER, folds=(0, 1))
    short = _model(work, SHORT_TRAINER, folds=(0, 1, 2))
    assert predict.find_model(work, DID, [0, 1]) == full  # never the smoke run when both
    assert predict.find_model(work, DID, [0, 1, 2]) == short  # only the smoke run has fold 2
    assert predict.find_model(work, DID, [0], trainer=SHORT_TRAINER) == short
    assert predict.check_options(999, [0], 4, "softmax", "cpu") == ([0], 4)
    with pytest.raises(InputError, match="--dataset-id 1000"):
        predict.check_options(1000, [0], 4, "softmax", "cpu")


def test_ready_midrt_inputs_keep_the_patient_id(tmp_path):
    arr = np.ones((2, 3, 4), np.float32)
    for name in ("5_midRT_0000", "5_midRT_0001", "case_0000", "case_0001"):
        _write(tmp_path / f"{name}.nii.gz", _image(arr))
    cases = predict._ready_cases(tmp_path, ["t2", "gradmap"])
    assert [(c.id, c.files["gradmap"].name) for c in cases] == [
        ("5", "5_midRT_0001.nii.gz"),
        ("case", "case_0001.nii.gz"),
    ]


# --------------------------------------------------------------------------- register

# a known rigid transform (mid-RT point -> pre-RT point) that moves part of the mid-RT
# grid out of the pre-RT field of view
RIGID = sitk.Euler3DTransform((7.0, 12.0, 8.0), 0.03, -0.02, 0.05, (2.0, -1.5, 1.0))
MID_GRID = Grid((18, 16, 4), (1.25, 1.25, 3.0), (-1.0, 4.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _resampled(image: sitk.Image, transform: sitk.Transform, interpolator) -> np.ndarray:
    kind = sitk.sitkUInt8 if interpolator == sitk.sitkNearestNeighbor else sitk.sitkFloat32
    return array(sitk.Resample(image, MID_GRID.reference(), transform, interpolator, 0.0, kind))


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict[str, Path]:
    """A pre-RT T2 and mask (labels 1 and 2) on one grid, a mid-RT T2 and mask on another
    (MID_GRID: 4 slices, the least elastix takes): the pre-RT scan moved by RIGID."""
    from scipy import ndimage

    root = tmp_path_factory.mktemp("regcase")
    rng = np.random.default_rng(0)
    pre = ndimage.gaussian_filter(rng.random((8, 20, 22)), 2).astype(np.float32) * 100 + 10
    pre_t2 = _image(pre, (1.0, 1.1, 2.5), (-3.0, 2.0, 1.0))
    mask = np.zeros((8, 20, 22), np.uint8)
    mask[2:6, 5:12, 6:13] = 1
    mask[3:6, 13:17, 14:19] = 2
    pre_mask = from_array(mask, pre_t2)
    mid = _resampled(pre_t2, RIGID, sitk.sitkBSpline) + rng.normal(0, 0.5, MID_GRID.shape)
    mid_mask = _resampled(pre_mask, RIGID, sitk.sitkNearestNeighbor)
    paths = {
        "pre_t2": root / "pre_T2.nii.gz",
        "pre_mask": root / "pre_mask.nii.gz",
        "mid_t2": root / "mid_T2.nii.gz",
        "mid_mask": root / "mid_mask.nii.gz",
    }
    write_image(pre_t2, paths["pre_t2"])
    write_image(pre_mask, paths["pre_mask"])
    write_image(from_array(mid.astype(np.float32), MID_GRID), paths["mid_t2"])
    write_image(from_array(mid_mask, MID_GRID), paths["mid_mask"])
    return paths


@pytest.fixture
def known_rigid(monkeypatch):
    """rigid_register gives RIGID; elastix adds nothing (the chain is the rigid map).
    Returns what they were called with."""
    import hntseg.register as reg

    calls: dict[str, list] = {"rigid": [], "elastix": []}

    def rigid(fixed, moving, settings, seed=0, threads=None):
        calls["rigid"].append({"settings": settings, "seed": seed, "threads": threads})
        return sitk.Euler3DTransform(RIGID)

    def elastix(fixed, moving, maps, initial, threads=None, log_dir=None):
        calls["elastix"].append({"maps": maps, "initial": initial, "threads": threads})
        return [initial]

    monkeypatch.setattr(reg, "rigid_register", rigid)
    monkeypatch.setattr(reg, "elastix_register", elastix)
    return calls


def _mid(case) -> sitk.Image:
    return sitk.ReadImage(str(case["mid_t2"]))


def test_registered_images_interpolated_once_onto_the_mid_grid(case, known_rigid, tmp_path):
    """T2: B-spline order 3 (as SimpleITK's sitkBSpline, to the last bit), 0 outside the
    pre-RT field of view; mask: nearest neighbour, uint8; both exactly on the mid-RT grid."""
    from hntseg.register import register_case, similarity

    result = register_case(**case, out=tmp_path, case_id="c", preset="challenge", seed=123)
    assert result.status == "ok"
    t2 = sitk.ReadImage(str(expected_path(tmp_path, "c", "preRT_T2_registered")))
    mask = sitk.ReadImage(str(expected_path(tmp_path, "c", "preRT_mask_registered")))
    assert Grid.of(t2) == Grid.of(mask) == Grid.of(_mid(case)) == MID_GRID
    assert t2.GetPixelID() == sitk.sitkFloat32 and mask.GetPixelID() == sitk.sitkUInt8
    pre_t2, pre_mask = sitk.ReadImage(str(case["pre_t2"])), read_mask(case["pre_mask"])
    want = _resampled(pre_t2, RIGID, sitk.sitkBSpline)
    assert np.allclose(array(t2), want, atol=1e-3)
    assert (want == 0).sum() > 50  # part of the mid-RT grid lies outside: 0 there
    linear = _resampled(pre_t2, RIGID, sitk.sitkLinear)
    assert np.abs(array(t2) - linear).max() > 0.05  # order 3 is not order 1 here
    nearest = _resampled(pre_mask, RIGID, sitk.sitkNearestNeighbor)
    assert (array(mask) != nearest).mean() < 0.002 and set(np.unique(array(mask))) == {0, 1, 2}
    # the record's quality figures are of these images; "identity" of the plain resampling
    record = read_json(tmp_path / "c" / "register.record.json")
    identity = _resampled(pre_t2, sitk.Transform(), sitk.sitkBSpline)
    sim = record["similarity"]
    assert sim["registered"] == similarity(_mid(case), t2)
    assert sim["identity"] == similarity(_mid(case), from_array(identity, MID_GRID))
    assert sim["registered"] != sim["identity"]
    from hntseg.register import dice_per_label

    gt = read_mask(case["mid_mask"])
    plain = from_array(_resampled(pre_mask, sitk.Transform(), sitk.sitkNearestNeighbor), MID_GRID)
    dice = record["dice_to_midRT_mask"]
    assert dice["registered"] == dice_per_label(mask, gt) and dice["registered"]["GTVp"] > 0.95
    assert dice["identity"] == dice_per_label(plain, gt) and dice["identity"]["GTVp"] < 0.9
    assert result.similarity == sim and result.dice_to_midRT == dice


def test_register_record_seed_preset_and_rigid_result(case, known_rigid, tmp_path):
    """The case's seed reaches elastix (RandomSeed) and the record; the preset picks the
    rigid settings and the elastix file; the record holds the rigid result."""
    from dataclasses import asdict

    from hntseg.register import RIGID as SETTINGS
    from hntseg.register import preset_path, read_parameter_file, register_case

    for preset, seed in (("challenge", 123), ("fast", 77)):
        out = tmp_path / preset
        register_case(**case, out=out, case_id="c", preset=preset, seed=seed, threads=1)
        rigid, elastix = known_rigid["rigid"][-1], known_rigid["elastix"][-1]
        assert rigid["settings"] == SETTINGS[preset] and rigid["seed"] == seed
        (maps,) = elastix["maps"]
        want = read_parameter_file(preset_path(preset))
        assert maps == {**want, "RandomSeed": [str(seed)], "WriteResultImage": ["false"]}
        assert "RandomSeed" not in want or want["RandomSeed"] != [str(seed)]
        record = read_json(out / "c" / "register.record.json")
        assert record["seed"] == record["params"]["seed"] == seed
        assert record["params"]["elastix"] == [maps]
        assert record["params"]["rigid"] == asdict(SETTINGS[preset])
        assert record["rigid_euler3d"] == {
            "parameters_rad_mm": list(RIGID.GetParameters()),
            "center_xyz_mm": list(RIGID.GetCenter()),
        }
        assert record["threads"] == 1
    # the organizers' rigid stage (DESIGN.md); fast: the same on a quarter of the voxels
    assert asdict(SETTINGS["challenge"]) == {
        "iterations": 100,
        "learning_rate": 1.0,
        "bins": 50,
        "min_size_xy": 0,
        "sampling": None,
    }
    assert SETTINGS["fast"].sampling == 0.25 and SETTINGS["fast"].iterations == 100
    # a user's file: its own seed and result-image setting are replaced (transformix
    # makes the images), and it is parsed as given
    text = preset_path("fast").read_text().replace('(WriteResultImage "false")', "")
    mine = tmp_path / "mine.txt"
    mine.write_text(text + '(RandomSeed 5)\n(WriteResultImage "true")\n')
    register_case(**case, out=tmp_path / "mine", case_id="c", params=[mine], seed=8)
    (maps,) = known_rigid["elastix"][-1]["maps"]
    assert maps["RandomSeed"] == ["8"] and maps["WriteResultImage"] == ["false"]
    assert maps["Transform"] == ["BSplineTransform"]
    # no --threads: the record holds the count ITK used, not None
    import itk

    used = itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()
    assert read_json(tmp_path / "mine" / "c" / "register.record.json")["threads"] == used >= 1
    # no elastix: no seed in the record
    register_case(**case, out=tmp_path / "id", case_id="c", method="identity", seed=5)
    assert read_json(tmp_path / "id" / "c" / "register.record.json")["seed"] is None


def test_registered_mask_only_copies_labels(case, known_rigid, tmp_path, monkeypatch):
    """A label the pre-RT mask lacks fails the case; a label lost (a small node cut off by
    the field of view) does not."""
    import hntseg.register as reg

    real = reg.transformix

    def lose_label_2(image, chain, fixed, nearest):
        out = real(image, chain, fixed, nearest)
        return from_array(np.where(array(out) == 2, 0, array(out)), out) if nearest else out

    monkeypatch.setattr(reg, "transformix", lose_label_2)
    result = reg.register_case(**case, out=tmp_path / "lost", case_id="c")
    assert result.status == "ok" and result.dice_to_midRT["registered"]["GTVn"] == 0.0

    def add_label_3(image, chain, fixed, nearest):
        out = real(image, chain, fixed, nearest)
        if nearest:
            arr = array(out).copy()
            arr[0, 0, 0] = 3
            out = from_array(arr, out)
        return out

    monkeypatch.setattr(reg, "transformix", add_label_3)
    with pytest.raises(RuntimeError, match=r"registered mask has labels \[3\]"):
        reg.register_case(**case, out=tmp_path / "new", case_id="c")
    assert not (tmp_path / "new" / "c" / "midRT").exists()


def test_improved_only_when_both_similarities_went_up(case, tmp_path, monkeypatch):
    import hntseg.register as reg

    def run(registered: tuple[float, float], identity: tuple[float, float]) -> bool:
        given = [registered, identity]  # the order register computes them in

        def fake(fixed, warped, bins=64):
            ncc, nmi = given.pop(0)
            return {"ncc": ncc, "nmi": nmi, "voxels": 10}

        monkeypatch.setattr(reg, "similarity", fake)
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        result = reg.register_case(**case, out=out, case_id="c", method="identity")
        return result.similarity["improved"]

    assert run((0.9, 1.5), (0.8, 1.4)) is True
    assert run((0.9, 1.3), (0.8, 1.4)) is False  # NMI went down
    assert run((0.7, 1.5), (0.8, 1.4)) is False  # NCC went down
    assert run((0.8, 1.5), (0.8, 1.4)) is False  # NCC unchanged
    assert run((0.9, 1.4), (0.8, 1.4)) is False  # NMI unchanged


def test_similarity_ncc_and_nmi_on_the_covered_voxels():
    from hntseg.register import similarity

    rng = np.random.default_rng(0)
    grid = Grid((10, 8, 6), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a = rng.random(grid.shape) * 100 + 1
    fixed = from_array(a, grid)
    same = similarity(fixed, fixed)
    assert same == {"ncc": 1.0, "nmi": 2.0, "voxels": a.size}  # NMI of an image with itself
    assert similarity(fixed, from_array(-3 * a + 500, grid))["ncc"] == -1.0
    noise = similarity(fixed, from_array(rng.random(grid.shape) + 1, grid))
    assert abs(noise["ncc"]) < 0.15 and 1.0 <= noise["nmi"] < 1.5  # few voxels: biased up
    # only where the warped image is non-zero (inside its field of view): outside it, the
    # fixed image's voxels are not compared
    warped = a.copy()
    warped[:2] = 0
    fixed_arr = a.copy()
    fixed_arr[2:4] = 0  # zeros of the fixed image inside the covered region do count
    got = similarity(from_array(fixed_arr, grid), from_array(warped, grid))
    assert got["voxels"] == a[2:].size
    keep = a[2:].ravel(), fixed_arr[2:].ravel()
    assert got["ncc"] == round(float(np.corrcoef(*keep)[0, 1]), 6)
    one = np.zeros(grid.shape)
    one[0, 0, 0] = 5.0
    tiny = similarity(fixed, from_array(one, grid))
    assert tiny["voxels"] == 1 and np.isnan(tiny["ncc"]) and np.isnan(tiny["nmi"])


def test_dice_per_label_keeps_the_structures_apart():
    from hntseg.register import dice_per_label

    grid = Grid((6, 1, 1), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a = from_array(np.array([[[1, 1, 2, 2, 2, 0]]], np.uint8), grid)
    b = from_array(np.array([[[1, 0, 2, 2, 0, 0]]], np.uint8), grid)
    assert dice_per_label(a, b) == {"GTVp": round(2 / 3, 6), "GTVn": 0.8}
    only_p = from_array(np.array([[[1, 0, 0, 0, 0, 0]]], np.uint8), grid)
    assert dice_per_label(only_p, only_p) == {"GTVp": 1.0, "GTVn": None}  # absent in both
    assert dice_per_label(only_p, b)["GTVn"] == 0.0


def test_provided_files_must_lie_on_the_mid_grid(case, tmp_path):
    from hntseg.register import register_case

    mid = _mid(case)
    mask = read_mask(case["mid_mask"])
    t2_ok, mask_ok = tmp_path / "t2.nii.gz", tmp_path / "mask.nii.gz"
    write_image(mid, t2_ok)
    write_image(mask, mask_ok)
    shifted = Grid(MID_GRID.size, MID_GRID.spacing, (0.0, 4.0, 3.0), MID_GRID.direction)
    t2_bad, mask_bad = tmp_path / "t2_bad.nii.gz", tmp_path / "mask_bad.nii.gz"
    write_image(from_array(array(mid), shifted), t2_bad)
    write_image(from_array(array(mask), shifted), mask_bad)
    common = {"pre_t2": None, "pre_mask": None, "mid_t2": case["mid_t2"], "method": "provided"}
    ok = register_case(**common, out=tmp_path / "ok", case_id="c", provided_t2=t2_ok,
                       provided_mask=mask_ok)  # fmt: skip
    assert ok.status == "ok" and ok.similarity["registered"]["ncc"] == 1.0
    for t2, m in ((t2_bad, mask_ok), (t2_ok, mask_bad)):
        with pytest.raises(InputError, match="not on the grid"):
            register_case(**common, out=tmp_path / "bad", case_id="c", provided_t2=t2,
                          provided_mask=m)  # fmt: skip
    assert not (tmp_path / "bad" / "c").exists()


def test_register_options_refuse_zero_and_bool_counts():
    from hntseg.register import check_options

    for kwargs, message in (
        ({"workers": 0}, "--workers 0: must be at least 1"),
        ({"workers": True}, "--workers True"),
        ({"threads": True}, "--threads True"),
        ({"threads": 0}, "--threads 0"),
    ):
        with pytest.raises(InputError, match=message):
            check_options("identity", **kwargs)
    assert check_options("identity", workers=1, threads=1) is None


def test_rigid_stage_is_seeded_snapped_and_leaves_threads_as_they_were(case):
    from hntseg.register import (
        ROTATION_STEP_RAD,
        TRANSLATION_STEP_MM,
        RigidSettings,
        rigid_register,
        snap_rigid,
    )

    assert (ROTATION_STEP_RAD, TRANSLATION_STEP_MM) == (1e-4, 1e-2)
    assert snap_rigid([0.01234, -0.00006, 1e-9, 3.14159, -2.71828, 0.006]) == (
        0.0123,
        -0.0001,
        0.0,
        3.14,
        -2.72,
        0.01,
    )
    fixed, moving = _mid(case), sitk.ReadImage(str(case["pre_t2"]))
    settings = RigidSettings(iterations=5, sampling=0.3)
    saved = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    try:  # one thread: bit-reproducible; the process-wide count is put back
        runs = [rigid_register(fixed, moving, settings, seed, 1) for seed in (1, 1, 2)]
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 2
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved)
    params = [r.GetParameters() for r in runs]
    assert params[0] == params[1] != params[2]  # sampled voxels: by the seed only
    steps = (ROTATION_STEP_RAD,) * 3 + (TRANSLATION_STEP_MM,) * 3
    for p in params:
        assert all(abs(v / q - round(v / q)) < 1e-6 for v, q in zip(p, steps, strict=True)), p


def _layout(case, root: Path, ids=("1", "2")) -> Path:
    """The case as patients of a cohort (HNTS-MRG layout)."""
    import shutil

    for pid in ids:
        for key, src in (
            ("preRT_T2", case["pre_t2"]),
            ("preRT_mask", case["pre_mask"]),
            ("midRT_T2", case["mid_t2"]),
        ):
            expected_path(root, pid, key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, expected_path(root, pid, key))
    return root


def test_cohort_seeds_threads_and_failures(case, known_rigid, tmp_path, monkeypatch, inline_pool):
    """Each case its own seed; threads shared out over the workers; a failed case is
    reported, not raised, when asked (the others are done either way)."""
    import hntseg.register as reg
    from hntseg.records import case_seed

    monkeypatch.setattr(reg, "available_cpus", lambda: 6)
    cohort = _layout(case, tmp_path / "cohort", ids=("1", "2", "3"))
    out = tmp_path / "out"
    reg.register_cohort(cohort, out, seed=9, workers=2)
    seeds = [read_json(out / pid / "register.record.json")["seed"] for pid in ("1", "2", "3")]
    assert seeds == [case_seed(9, pid, "register") & 0x7FFFFFFF for pid in ("1", "2", "3")]
    assert len(set(seeds)) == 3
    assert [c["seed"] for c in known_rigid["rigid"]] == seeds
    assert {c["threads"] for c in known_rigid["rigid"] + known_rigid["elastix"]} == {3}
    empty = expected_path(cohort, "2", "preRT_mask")
    write_image(from_array(np.zeros_like(array(read_mask(empty))), read_mask(empty)), empty)
    results = reg.register_cohort(
        cohort, tmp_path / "o2", method="identity", raise_on_failure=False
    )
    assert [(r.id, r.status) for r in results] == [("1", "ok"), ("2", "failed"), ("3", "ok")]
    assert "pre-RT mask is empty" in results[1].error
    with pytest.raises(StageError, match="1 of 3 cases failed: 2: "):
        reg.register_cohort(cohort, tmp_path / "o3", method="identity")
    assert (tmp_path / "o3" / "3" / "register.record.json").is_file()


def test_challenge_mode_feeds_the_gradmap_of_the_registered_mask(tmp_path, fake_model_run):
    """Task 2 container: the model's gradmap channel is computed from the registered pre-RT
    mask (fixed margin), never the mask itself nor the registered T2; the output is uint8
    on the mid-RT grid."""
    from hntseg.boxes import find_boxes
    from hntseg.gradmap import gradient_map

    work = tmp_path / "work"
    _model(work)
    seen: list[np.ndarray] = []
    monkeypatch_predict = _CountingEnsemble.predict

    def predict_and_keep(self, data, props):
        seen.append(data.copy())
        return monkeypatch_predict(self, data, props)

    _CountingEnsemble.predict = predict_and_keep
    try:
        t2_path, mask_path = _t2_and_mask(tmp_path)
        images = tmp_path / "input" / "images"
        t2 = sitk.ReadImage(str(t2_path))
        mask = read_mask(mask_path)
        for key, image in (
            ("t2", t2),
            ("pre_mask_registered", mask),
            ("pre_t2_registered", t2 * 3.0),
        ):
            _write(images / predict.CHALLENGE_INPUTS[key] / "x.mha", image)
        out = predict.challenge_predict(work, DID, tmp_path / "input", tmp_path / "o", folds=[0])
        extra = images / predict.CHALLENGE_INPUTS["pre_mask_registered"] / "y.mha"
        _write(extra, mask)
        with pytest.raises(InputError, match="expected one .mha file, found 2"):
            predict.challenge_predict(work, DID, tmp_path / "input", tmp_path / "o", folds=[0])
    finally:
        _CountingEnsemble.predict = monkeypatch_predict
    (data,) = seen
    want = gradient_map(t2, find_boxes(mask, 4, seed=None))
    assert np.array_equal(data[0], array(t2)) and np.array_equal(data[1], array(want))
    written = sitk.ReadImage(str(out))
    assert Grid.of(written) == Grid.of(t2) and written.GetPixelID() == sitk.sitkUInt8


def test_ready_inputs_are_used_as_given(tmp_path, fake_model_run):
    """A folder of <case>_0000/_0001 files: the second file is the gradient map as it is
    (no boxes computed from it); a case without it is an error; no case at all too."""
    work = tmp_path / "work"
    _model(work)
    rng = np.random.default_rng(2)
    t2 = _image(rng.random((4, 6, 8)).astype(np.float32))
    ready = _image(np.round(rng.random((4, 6, 8))).astype(np.float32))  # 0/1: mask-like
    inp = tmp_path / "in"
    _write(inp / "a_0000.nii.gz", t2)
    _write(inp / "a_0001.nii.gz", ready)
    case = predict._ready_cases(inp, ["t2", "gradmap"])[0]
    assert case.gradmap_from_mask is False
    _, data, _ = predict.load_case(case, ["t2", "gradmap"], 4, tmp_path / "cache")
    assert np.array_equal(data[1], array(ready)) and not (tmp_path / "cache").exists()
    _write(inp / "b_0000.nii.gz", t2)
    with pytest.raises(InputError, match="b_0001.nii.gz: missing channel 1 \\(gradmap\\)"):
        predict._ready_cases(inp, ["t2", "gradmap"])
    empty = tmp_path / "empty"  # only a macOS resource fork ("._" files are skipped)
    _write(empty / "._a_0000.nii.gz", t2)
    with pytest.raises(InputError, match="no cases to predict"):
        predict.ensemble_predict(empty, work, DID, tmp_path / "o", folds=[0])


def test_ready_inputs_follow_ids(tmp_path, fake_model_run):
    """`ids` selects ready cases by their output id, as it selects a cohort's patients; an
    id with no case is a one-line error before any prediction."""
    work = tmp_path / "work"
    _model(work)
    rng = np.random.default_rng(3)
    inp = tmp_path / "in"
    for case in ("5_midRT", "6_midRT", "7"):
        for ch in range(2):
            _write(
                inp / f"{case}_{ch:04d}.nii.gz", _image(rng.random((4, 6, 8)).astype(np.float32))
            )
    out = tmp_path / "out"
    predict.ensemble_predict(inp, work, DID, out, folds=[0], ids=["5", "7"])
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["5.nii.gz", "7.nii.gz"]
    assert len(fake_model_run) == 2
    with pytest.raises(InputError, match="no ready case for id\\(s\\) 8"):
        predict.ensemble_predict(inp, work, DID, tmp_path / "o2", folds=[0], ids=["6", "8"])
    assert not (tmp_path / "o2").exists() and len(fake_model_run) == 2

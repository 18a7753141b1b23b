"""ensemble-predict: options, model folder and inputs checked up front (no torch, no model).

The model here is a fake folder layout with dummy checkpoints: every test stops before the
device is chosen or nnU-Net is loaded (both are replaced by a spy that fails the test).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from hntseg import predict
from hntseg.cli import app
from hntseg.nnunet import FULL_TRAINER, PLANS

runner = CliRunner()
DID = 7


class HeavyWork(Exception):
    """Raised by the spies: the command got past its checks to the device / model."""


ENSEMBLE = predict.Ensemble  # the real class, for the one test that builds it


@pytest.fixture(autouse=True)
def no_heavy_work(monkeypatch):
    """Choosing the device or loading the model fails the test (raises HeavyWork)."""

    def spy(*args, **kwargs):
        raise HeavyWork

    monkeypatch.setattr(predict, "select_device", spy)
    monkeypatch.setattr(predict, "Ensemble", spy)


def fake_model(work: Path, folds=range(5), files=("plans.json", "dataset.json")) -> Path:
    """WORK/nnUNet_results/Dataset007_X/<trainer>__<plans>__3d_fullres with dummy files."""
    folder = (
        work / "nnUNet_results" / f"Dataset{DID:03d}_X" / f"{FULL_TRAINER}__{PLANS}__3d_fullres"
    )
    for f in folds:
        (folder / f"fold_{f}").mkdir(parents=True)
        (folder / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    if "plans.json" in files:
        (folder / "plans.json").write_text("{}")
    if "dataset.json" in files:
        data = {"channel_names": {"0": "T2", "1": "gradmap"}, "file_ending": ".nii.gz"}
        (folder / "dataset.json").write_text(json.dumps(data))
    return folder


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def invoke(args: list[str]):
    return runner.invoke(app, ["ensemble-predict", *args])


def assert_one_line_error(result, *words: str) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def write_image(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.5, 0.5, 2.0))
    sitk.WriteImage(image, str(path))


def challenge_input(root: Path) -> Path:
    """A Task 2 input: one mid-RT T2 and one registered pre-RT mask (.mha)."""
    t2 = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[1:3, 2:5, 2:5] = 1
    write_image(root / "images" / "mid-rt-t2w-head-neck" / "case.mha", t2)
    write_image(root / "images" / "registered-pre-rt-head-neck-segmentation" / "case.mha", mask)
    return root


def ready_input(root: Path) -> Path:
    """nnU-Net's layout: case_0000 (T2), case_0001 (gradient map)."""
    arr = np.random.default_rng(1).random((4, 8, 8)).astype(np.float32)
    write_image(root / "case_0000.nii.gz", arr)
    write_image(root / "case_0001.nii.gz", arr)
    return root


@pytest.fixture
def work(tmp_path) -> Path:
    work = tmp_path / "work"
    fake_model(work)
    return work


def challenge_args(work: Path, tmp_path: Path) -> list[str]:
    inp = challenge_input(tmp_path / "chal" / "input")
    return ["--challenge", "--work", str(work), "--dataset-id", str(DID)] + [
        "--input-root",
        str(inp),
        "--output-root",
        str(tmp_path / "chal" / "output"),
    ]


def cohort_args(work: Path, tmp_path: Path) -> list[str]:
    inp = ready_input(tmp_path / "ready")
    return [str(inp), "--work", str(work), "--dataset-id", str(DID), "--out", str(tmp_path / "p")]


# ----------------------------------------------------------------- options (bug 1, 4)


@pytest.mark.parametrize("form", ["challenge", "cohort"])
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--folds", "0,0"], ["--folds [0, 0]: give distinct fold numbers"]),
        (["--folds", ","], ["--folds []: give distinct fold numbers"]),
        (["--folds", "-1"], ["--folds [-1]"]),
        (["--margin", "-1"], ["--margin -1"]),
        (["--ensemble", "foo"], ["--ensemble 'foo'", "softmax or logits"]),
        (["--device", "tpu"], ["--device 'tpu'"]),
        (["--dataset-id", "0"], ["--dataset-id 0"]),
    ],
)
def test_bad_option_is_one_line_before_any_work(tmp_path, work, form, extra, words):
    args = challenge_args(work, tmp_path) if form == "challenge" else cohort_args(work, tmp_path)
    before = tree(tmp_path)
    assert_one_line_error(invoke(args + extra), *words)
    assert tree(tmp_path) == before  # nothing created (no nnUNet_raw, no output)


# ----------------------------------------------------------------- model folder (bug 2, 3)


@pytest.mark.parametrize("form", ["challenge", "cohort"])
def test_typo_work_creates_nothing(tmp_path, work, form):
    typo = tmp_path / "typo_work"
    args = challenge_args(work, tmp_path) if form == "challenge" else cohort_args(work, tmp_path)
    args[args.index("--work") + 1] = str(typo)
    before = tree(tmp_path)
    assert_one_line_error(invoke(args), "no trained model for dataset 7")
    assert not typo.exists()
    assert tree(tmp_path) == before


@pytest.mark.parametrize("form", ["challenge", "cohort"])
@pytest.mark.parametrize("missing", ["plans.json", "dataset.json"])
def test_model_without_plans_or_dataset_json(tmp_path, form, missing):
    work = tmp_path / "work"
    folder = fake_model(work, files={"plans.json", "dataset.json"} - {missing})
    args = challenge_args(work, tmp_path) if form == "challenge" else cohort_args(work, tmp_path)
    before = tree(tmp_path)
    assert_one_line_error(invoke(args), str(folder / missing), "missing")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("form", ["challenge", "cohort"])
def test_two_models_with_one_id_are_refused_and_channels_checked(tmp_path, form):
    """Two DatasetNNN_* result folders with one id: the first by name was used silently
    (build-dataset and train refuse the same); a model whose dataset.json names a channel
    hntseg cannot make was a KeyError traceback at the first case."""
    work = tmp_path / "work"
    folder = fake_model(work)
    other = folder.parents[1] / f"Dataset{DID:03d}_Y"
    other.mkdir()
    args = challenge_args(work, tmp_path) if form == "challenge" else cohort_args(work, tmp_path)
    before = tree(tmp_path)
    assert_one_line_error(invoke(args), "several models with id 7", "Dataset007_Y")
    other.rmdir()
    names = {"channel_names": {"0": "T2", "1": "ADC"}, "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(names))
    assert_one_line_error(invoke(args), str(folder / "dataset.json"), "ADC")
    assert tree(tmp_path) == before - {other}


def test_untrained_fold_names_its_checkpoint(tmp_path):
    work = tmp_path / "work"
    folder = fake_model(work, folds=[0, 1])
    args = challenge_args(work, tmp_path) + ["--folds", "0,1,2"]
    before = tree(tmp_path)
    result = invoke(args)
    line = assert_one_line_error(
        result, str(folder / "fold_2" / "checkpoint_final.pth"), "never trained"
    )
    assert f"hntseg train --work {work} --dataset-id 7 --fold 2" in line  # runnable as said
    assert tree(tmp_path) == before


# ----------------------------------------------------------------- --gradmaps (bug 5)


def test_missing_gradmaps_folder_is_an_error(tmp_path, work):
    missing = tmp_path / "no_such_maps"
    args = cohort_args(work, tmp_path) + ["--gradmaps", str(missing)]
    before = tree(tmp_path)
    result = invoke(args)
    assert_one_line_error(result, str(missing), "--gradmaps", "not found")
    assert tree(tmp_path) == before


def test_gradmaps_file_is_not_a_folder(tmp_path, work):
    file = tmp_path / "maps.txt"
    file.write_text("x")
    result = invoke(cohort_args(work, tmp_path) + ["--gradmaps", str(file)])
    assert_one_line_error(result, str(file), "--gradmaps", "not a folder")


def test_missing_registered_folder_is_an_error(tmp_path, work):
    missing = tmp_path / "no_such_registered"
    result = invoke(cohort_args(work, tmp_path) + ["--registered", str(missing)])
    assert_one_line_error(result, str(missing), "--registered", "not found")


# ----------------------------------------------------------------- valid options pass


@pytest.mark.parametrize("form", ["challenge", "cohort"])
def test_valid_options_reach_the_model_and_create_nothing_in_work(tmp_path, work, form):
    maps = tmp_path / "maps"
    maps.mkdir()
    if form == "challenge":
        args = challenge_args(work, tmp_path)
    else:
        args = cohort_args(work, tmp_path) + ["--gradmaps", str(maps)]
    args += ["--folds", "0,2", "--margin", "0", "--ensemble", "logits", "--device", "CPU"]
    before = tree(work)
    result = invoke(args)
    assert isinstance(result.exception, HeavyWork), result.output  # got to the device choice
    assert tree(work) == before  # no nnUNet_raw / nnUNet_preprocessed made in WORK


def test_library_checks_options_first(tmp_path):
    with pytest.raises(predict.InputError, match=r"^--folds \[1, 1\]: give distinct"):
        predict.challenge_predict(tmp_path / "nowork", DID, tmp_path, tmp_path, folds=[1, 1])
    with pytest.raises(predict.InputError, match=r"^--ensemble 'mean'"):
        predict.ensemble_predict(tmp_path, tmp_path / "nowork", DID, tmp_path, ensemble="mean")
    assert predict.check_options(DID, ["3", 1], 2, "softmax", "auto") == ([3, 1], 2)
    assert not (tmp_path / "nowork").exists()


def test_both_forms_say_loudly_when_the_model_is_a_smoke_run(tmp_path):
    import logging

    from hntseg.log import log
    from hntseg.nnunet import SHORT_TRAINER

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log.addHandler(handler)
    try:
        for trainer in (SHORT_TRAINER, FULL_TRAINER):
            folder = tmp_path / f"{trainer}__nnUNetResEncUNetMPlans__3d_fullres"
            predict._announce("ensemble-predict (challenge)", _CPU, [0], folder, True, False)
    finally:
        log.removeHandler(handler)
    smoke = [r for r in records if "SMOKE-RUN" in r.getMessage()]
    assert len(smoke) == 1 and smoke[0].levelno == logging.WARNING
    assert SHORT_TRAINER in smoke[0].getMessage()


class _FakeDevice:
    type = "cpu"


_CPU = _FakeDevice()


def test_num_parts_predicts_only_this_part(work, tmp_path, monkeypatch):
    """--num-parts K --part-id I: round-robin over the cases, the parts make up the whole."""
    arr = np.random.default_rng(1).random((4, 8, 8)).astype(np.float32)
    for case in ("1", "2", "3", "4", "5"):
        write_image(tmp_path / "in" / f"{case}_0000.nii.gz", arr)
        write_image(tmp_path / "in" / f"{case}_0001.nii.gz", arr)

    class FakeEnsemble:
        def __init__(self, *args, **kwargs):
            pass

        def predict(self, data, props):
            return np.zeros(data.shape[1:], np.uint8)

    monkeypatch.setattr(predict, "Ensemble", FakeEnsemble)
    monkeypatch.setattr(predict, "select_device", lambda device: None)
    monkeypatch.setattr(predict, "_announce", lambda *args: None)
    made = {}
    for part in (0, 1):
        out = tmp_path / f"out{part}"
        args = [str(tmp_path / "in"), "--work", str(work), "--dataset-id", str(DID)]
        result = invoke([*args, "--out", str(out), "--num-parts", "2", "--part-id", str(part)])
        assert result.exit_code == 0, result.output
        made[part] = sorted(p.name for p in out.glob("*.nii.gz"))
    assert made == {0: ["1.nii.gz", "3.nii.gz", "5.nii.gz"], 1: ["2.nii.gz", "4.nii.gz"]}
    result = invoke([*args, "--out", str(tmp_path / "o"), "--num-parts", "2", "--part-id", "2"])
    assert_one_line_error(result, "--part-id 2")


def test_empty_registered_mask_warning_names_the_file(tmp_path):
    """No tumour in the registered mask: the gradient map is all zeros and the warning says
    which file (in challenge mode it said only "mask")."""
    import logging

    from hntseg.log import log

    t2 = sitk.GetImageFromArray(np.random.default_rng(0).random((4, 8, 8)).astype(np.float32))
    mask = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.uint8))
    t2_path, mask_path = tmp_path / "t2.nii.gz", tmp_path / "empty_mask.nii.gz"
    sitk.WriteImage(t2, str(t2_path))
    sitk.WriteImage(mask, str(mask_path))
    case = predict.PredictCase("1", t2_path, {"gradmap": mask_path}, gradmap_from_mask=True)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append
    log.addHandler(handler)
    try:
        image = predict._cached_gradmap(case, sitk.ReadImage(str(t2_path)), 4, tmp_path / "c")
    finally:
        log.removeHandler(handler)
    assert not sitk.GetArrayFromImage(image).any()
    assert any(str(mask_path) in r.getMessage() for r in seen if r.levelno == logging.WARNING)


def test_damaged_checkpoint_is_one_line_naming_it(tmp_path, monkeypatch):
    """torch.load's traceback (exit 1) became one line naming the checkpoint (exit 2)."""
    monkeypatch.undo()  # the real Ensemble
    import torch

    from hntseg.errors import InputError

    folder = fake_model(tmp_path, folds=[0, 1])
    torch.save({"not": "nnU-Net's"}, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(InputError, match="fold_1/checkpoint_final.pth: cannot load the checkpoint"):
        predict.Ensemble(folder, [0, 1], torch.device("cpu"), tta=False)
    torch.save({"not": "nnU-Net's"}, folder / "fold_1" / "checkpoint_final.pth")
    with pytest.raises(KeyError):  # readable files, not nnU-Net's: nnU-Net's own error
        predict.Ensemble(folder, [0, 1], torch.device("cpu"), tta=False)


def test_native_bf16_from_cpuinfo(tmp_path):
    """--cpu-bf16 ran 20x slower than float32 on an AVX2-only CPU without a word: whether
    the CPU has native bfloat16 is read from /proc/cpuinfo (x86 flags, ARM features)."""
    from hntseg.machine import native_bf16

    cases = {
        "flags\t\t: fpu sse2 avx2 fma\n": False,
        "flags\t\t: fpu avx2 avx512f avx512_bf16\n": True,
        "flags\t\t: fpu avx2 amx_bf16 amx_tile\n": True,
        "Features\t: fp asimd sve bf16 i8mm\n": True,
        "processor\t: 0\n": False,
    }
    for text, expected in cases.items():
        path = tmp_path / "cpuinfo"
        path.write_text("processor\t: 0\n" + text)
        assert native_bf16(path) is expected, text
    assert native_bf16(tmp_path / "nowhere") is None


def test_cpu_bf16_without_native_support_warns(tmp_path, monkeypatch):
    import logging

    import torch

    from hntseg.errors import InputError
    from hntseg.log import log

    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    log.addHandler(handler)
    try:
        for native in (False, True, None):
            seen.clear()
            monkeypatch.setattr(predict, "native_bf16", lambda n=native: n)
            with pytest.raises(InputError, match="checkpoint"):  # no model there
                ENSEMBLE(tmp_path, [0], torch.device("cpu"), cpu_bf16=True)
            warned = any("no native bfloat16" in m for m in seen)
            assert warned is (native is False), (native, seen)
    finally:
        log.removeHandler(handler)


# ----------------------------------------------------------------- audit of 2026-12-03


@pytest.mark.parametrize("form", ["challenge", "cohort"])
def test_output_folder_under_a_file_is_one_line_before_the_model(tmp_path, work, form):
    """An --out (--output-root) under a regular file was a traceback after the model load
    (and, for ready channel files, after the whole prediction)."""
    afile = tmp_path / "afile"
    afile.write_text("")
    args = challenge_args(work, tmp_path) if form == "challenge" else cohort_args(work, tmp_path)
    flag = "--output-root" if form == "challenge" else "--out"
    args[args.index(flag) + 1] = str(afile / "o")
    assert_one_line_error(invoke(args), "exists and is not a folder")  # HeavyWork otherwise


def test_two_ready_cases_with_one_output_id_are_refused(tmp_path, work):
    """`41_midRT_0000` and `41_0000` both give OUT/41.nii.gz: one silently overwrote the
    other, and both were predicted again on every run."""
    args = cohort_args(work, tmp_path)
    ready = Path(args[0])
    for i in range(2):
        (ready / f"case_midRT_{i:04d}.nii.gz").write_bytes(
            (ready / f"case_{i:04d}.nii.gz").read_bytes()
        )
    assert_one_line_error(invoke(args), "both give the output case.nii.gz")


def test_challenge_refuses_options_it_would_ignore(tmp_path, work):
    args = challenge_args(work, tmp_path)
    assert_one_line_error(invoke(args + ["--out", str(tmp_path / "o")]), "takes no --out")
    assert_one_line_error(invoke([str(tmp_path), *args, "--force"]), "INPUT, --force")


class FakeEnsemble:
    """Predicts label 1 wherever the gradient-map channel is above 0.5 (no nnU-Net)."""

    def __init__(self, *args, **kwargs):
        pass

    def predict(self, data, props):
        return (data[1] > 0.5).astype(np.uint8)


@pytest.fixture
def fake_network(monkeypatch):
    import torch

    monkeypatch.setattr(predict, "select_device", lambda device: torch.device("cpu"))
    monkeypatch.setattr(predict, "Ensemble", FakeEnsemble)


def _cohort(root: Path) -> Path:
    t2 = np.random.default_rng(2).random((6, 16, 16)).astype(np.float32) * 100
    mask = np.zeros((6, 16, 16), np.uint8)
    mask[2:4, 5:9, 5:9] = 1
    write_image(root / "1" / "midRT" / "1_midRT_T2.nii.gz", t2)
    write_image(root / "1" / "midRT" / "1_preRT_mask_registered.nii.gz", mask)
    return root


def test_a_case_that_fails_on_a_rerun_keeps_no_earlier_mask(tmp_path, work, fake_network):
    """The registered mask turns bad after a finished prediction: the case fails and its
    old mask (which evaluate would have scored) and record are gone."""
    cohort = _cohort(tmp_path / "c")
    out = tmp_path / "p"
    base = [str(cohort), "--work", str(work), "--dataset-id", str(DID), "--out", str(out)]
    assert invoke(base + ["--device", "cpu"]).exit_code == 0
    assert (out / "1.nii.gz").is_file()
    bad = np.zeros((6, 16, 16), np.uint8)
    bad[2:4, 5:9, 5:9] = 5
    write_image(cohort / "1" / "midRT" / "1_preRT_mask_registered.nii.gz", bad)
    result = invoke(base + ["--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert not (out / "1.nii.gz").exists() and not (out / ".records" / "1.record.json").exists()


def test_a_damaged_cached_gradient_map_is_made_again(tmp_path, work, fake_network):
    """A cut-short cached map was read as it was (ITK fills the rest), and --force did not
    make it again: the same inputs gave another mask."""
    cohort = _cohort(tmp_path / "c")
    out = tmp_path / "p"
    base = [str(cohort), "--work", str(work), "--dataset-id", str(DID), "--out", str(out)]
    assert invoke(base + ["--device", "cpu"]).exit_code == 0
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "1.nii.gz")))
    cached = out / ".cache" / "1_midRT_gradmap.nii.gz"
    good = cached.read_bytes()
    cached.write_bytes(good[: len(good) // 3])
    assert invoke(base + ["--device", "cpu", "--force"]).exit_code == 0
    again = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "1.nii.gz")))
    assert np.array_equal(first, again) and first.any()
    assert cached.read_bytes() == good

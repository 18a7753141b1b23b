"""train / plan_and_preprocess: checks before any work, and no stale record vouching for
half-made plans (nnU-Net itself is stubbed out: these tests never plan or train)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hntseg import train as train_module
from hntseg.cli import app
from hntseg.errors import InputError
from hntseg.io import write_json

runner = CliRunner()


def _one_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, (
        result.output
    )
    return lines[0]


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "no dataset with id 11"),
        (["--device", "gpu"], "--device 'gpu'"),
        (["--patch-size", "48,192"], "patch_size [48, 192]: expected 3"),
        (["--gpu-memory-target", "-1"], "--gpu-memory-target -1.0: must be 2..1024"),
        (["--gpu-memory-target", "nan"], "--gpu-memory-target nan"),
        (["--configuration", "bogus"], "--configuration 'bogus'"),
        (["--workers", "-1"], "--workers -1: must be >= 0"),
        (["--dataset-id", "1000"], "--dataset-id 1000: must be 1..999"),
    ],
)
def test_train_user_errors_create_nothing(tmp_path, extra, message):
    work = tmp_path / "typo_work"
    args = ["train", "--work", str(work), "--dataset-id", "11", "--fold", "0", *extra]
    assert message in _one_line(runner.invoke(app, args))
    assert not work.exists()


@pytest.fixture
def planned(tmp_path):
    """A built dataset (raw + splits) with a record saying it was planned and preprocessed."""
    raw = tmp_path / "nnUNet_raw" / "Dataset011_x"
    pre = tmp_path / "nnUNet_preprocessed" / "Dataset011_x"
    write_json(raw / "dataset.json", {})
    write_json(pre / "splits_final.json", [])
    record = pre / train_module.PREPROCESS_RECORD
    write_json(record, {"fingerprint": "old"})
    return tmp_path, record


def test_failed_planning_leaves_no_record_to_reuse(planned, monkeypatch):
    work, record = planned

    def nnunet_fails(*args, **kw):
        assert not record.exists()  # removed before nnU-Net touches plans or data
        raise InputError("patch_size [15, 32, 32]: each axis must be a multiple ...")

    monkeypatch.setattr(train_module, "_plan_and_preprocess", nnunet_fails)
    with pytest.raises(InputError, match="multiple"):
        train_module.plan_and_preprocess(work, 11, plans_override={"patch_size": [15, 32, 32]})
    assert not record.exists()  # the next run plans again instead of reusing


@pytest.mark.parametrize(
    "override", [{"patch_size": [48, 192]}, {"batch_size": 0}, {"patch": [1, 2, 3]}]
)
def test_bad_override_is_refused_before_planning(planned, monkeypatch, override):
    work, record = planned
    monkeypatch.setattr(train_module, "_plan_and_preprocess", pytest.fail)
    with pytest.raises(InputError):
        train_module.plan_and_preprocess(work, 11, plans_override=override)
    assert record.exists()  # nothing was started, so nothing was invalidated


def test_validation_iterations_must_be_positive(tmp_path):
    with pytest.raises(InputError, match="val_iterations 0: must be >= 1"):
        train_module.train(tmp_path, 11, 0, epochs=1, val_iterations=0)


@pytest.mark.parametrize("driver", [True, False])
def test_auto_device_warns_when_a_gpu_node_falls_back_to_cpu(tmp_path, monkeypatch, driver):
    """`auto` on a node with an NVIDIA driver that torch cannot use says so (it would train on
    the CPU for days without a word); without a driver the CPU is expected and nothing is said."""
    import torch

    from hntseg import nnunet
    from hntseg.log import log

    flag = tmp_path / "version"
    if driver:
        flag.write_text("NVRM version: 470.00\n")
    monkeypatch.setattr(nnunet, "NVIDIA_DRIVER_FILE", str(flag))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    warnings: list[str] = []
    monkeypatch.setattr(log, "warning", lambda msg, *args: warnings.append(msg % args))
    assert nnunet.select_device("auto").type == "cpu"
    assert len(warnings) == int(driver)
    if driver:
        assert "NVIDIA driver" in warnings[0] and "--device cuda" in warnings[0]


class NnunetReached(Exception):
    """Raised by the stubbed planning: the checks let the dataset through."""


@pytest.mark.parametrize(
    "dataset_json, record, refused",
    [
        ({"hntseg": {"channels": ["t2"]}}, False, True),  # hntseg's, its build unfinished
        ({"hntseg": {"channels": ["t2"]}}, True, False),  # hntseg's, built
        ({"channel_names": {"0": "T2"}}, False, False),  # made by hand: trained as it is
        ({"hntseg": None, "channel_names": {"0": "T2"}}, False, False),
    ],
)
def test_unfinished_build_is_refused_a_hand_made_dataset_is_not(
    planned, monkeypatch, dataset_json, record, refused
):
    """`train` planned a raw dataset whose build record was gone (a build-dataset run stopped
    half-way: case files of two builds) without a word. A dataset.json without hntseg's block
    is a dataset made by hand (no record expected) and is still trained on."""
    work, _ = planned
    raw = work / "nnUNet_raw" / "Dataset011_x"
    write_json(raw / "dataset.json", dataset_json)
    if record:
        write_json(raw / train_module.DATASET_RECORD, {"stage": "build-dataset"})

    def nnunet(*args, **kw):
        raise NnunetReached

    monkeypatch.setattr(train_module, "_plan_and_preprocess", nnunet)
    if refused:
        with pytest.raises(InputError, match="did not finish.*rerun hntseg build-dataset"):
            train_module.plan_and_preprocess(work, 11)
        args = ["train", "--work", str(work), "--dataset-id", "11", "--fold", "0"]
        assert "hntseg_dataset.record.json: missing" in _one_line(runner.invoke(app, args))
    else:
        with pytest.raises(NnunetReached):
            train_module.plan_and_preprocess(work, 11)


@pytest.mark.parametrize("root", ["nnUNet_preprocessed", "nnUNet_results"])
def test_id_with_another_name_in_preprocessed_or_results_is_one_line(planned, root):
    """nnU-Net finds an id in all three folders: a second name beside the raw dataset's
    stopped it with `RuntimeError: More than one dataset name found` (a traceback, late)."""
    work, _ = planned
    (work / root / "Dataset011_old").mkdir(parents=True)
    with pytest.raises(InputError, match="several datasets with id 11"):
        train_module.plan_and_preprocess(work, 11)
    args = ["train", "--work", str(work), "--dataset-id", "11", "--fold", "0"]
    line = _one_line(runner.invoke(app, args))
    assert "several datasets with id 11" in line and "Dataset011_old" in line

"""Library calls into nnU-Net leave the process as they found it (a notebook calls one
stage after another), and an nnunetv2 outside the supported range is refused."""

from __future__ import annotations

import os

import pytest

from hntseg import nnunet
from hntseg import train as train_module
from hntseg.errors import InputError
from hntseg.io import write_json

USER_ENV = {"nnUNet_raw": "/data/my_own/nnUNet_raw", "nnUNet_n_proc_DA": "5"}
KEYS = (  # what hntseg sets for nnU-Net and its short trainer
    *("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"),
    *("nnUNet_n_proc_DA", "nnUNet_def_n_proc", "HNTSEG_EPOCHS", "HNTSEG_ITERATIONS"),
    *("HNTSEG_VAL_ITERATIONS", "HNTSEG_FINAL_VALIDATION"),
)


@pytest.fixture
def user_env(monkeypatch):
    """The user's own nnU-Net variables, and none of the others."""
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in USER_ENV.items():
        monkeypatch.setenv(key, value)


def _env() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in KEYS}


@pytest.fixture
def built(tmp_path):
    """A built dataset with five folds of splits (nnU-Net itself is never run here)."""
    write_json(tmp_path / "nnUNet_raw" / "Dataset011_x" / "dataset.json", {})
    splits = [{"train": ["a"], "val": ["b"]}] * 5
    write_json(tmp_path / "nnUNet_preprocessed" / "Dataset011_x" / "splits_final.json", splits)
    return tmp_path


def test_plan_and_preprocess_puts_the_environment_back(built, user_env, monkeypatch):
    before, seen = _env(), {}

    def nnunet_fails(*args, **kw):
        seen.update(_env())
        raise InputError("stop here")

    monkeypatch.setattr(train_module, "_plan_and_preprocess", nnunet_fails)
    with pytest.raises(InputError):
        train_module.plan_and_preprocess(built, 11, workers=3)
    assert seen["nnUNet_raw"] == str((built / "nnUNet_raw").resolve())  # set inside
    assert seen["nnUNet_n_proc_DA"] == "3"
    assert _env() == before


def test_train_puts_environment_and_torch_threads_back(built, user_env, monkeypatch):
    import torch

    monkeypatch.setattr("hntseg.machine.available_cpus", lambda: 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        before, seen = _env(), {}

        def stop(*args, **kw):
            seen.update(_env(), threads=torch.get_num_threads())
            raise InputError("stop here")

        monkeypatch.setattr(train_module, "plan_and_preprocess", stop)
        with pytest.raises(InputError):
            train_module.train(built, 11, 0, epochs=1, device="cpu", workers=0)
        assert seen["HNTSEG_EPOCHS"] == "1" and seen["threads"] == 3  # set inside
        assert _env() == before
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_matplotlib_backend_switched_inside_is_put_back():
    """nnU-Net's trainer module switches matplotlib to Agg when imported."""
    import matplotlib

    original = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        with nnunet.process_state_kept():
            matplotlib.use("agg")
        assert matplotlib.get_backend().lower() == "svg"
    finally:
        matplotlib.use(original)


@pytest.mark.parametrize(
    ("version", "ok"),
    [
        ("2.8.1", True),
        ("2.7.0", False),
        ("2.6.4", False),
        ("2.9.0", False),
        ("2.10.2", False),
        ("3.0.0", False),
    ],
)
def test_nnunet_version_range(version, ok, tmp_path, monkeypatch):
    """2.8.x is accepted; any other version is refused before a folder is made."""
    real = nnunet.metadata.version
    monkeypatch.setattr(
        nnunet.metadata, "version", lambda name: version if name == "nnunetv2" else real(name)
    )
    nnunet.check_nnunet_version.cache_clear()
    try:
        if ok:
            assert nnunet.check_nnunet_version() == version
            return
        with pytest.raises(InputError, match=f"nnunetv2 {version} is installed; hntseg needs 2.8"):
            nnunet.set_environment(tmp_path / "work")
        assert not (tmp_path / "work").exists()
    finally:
        nnunet.check_nnunet_version.cache_clear()


def test_the_keys_are_those_hntseg_restores():
    assert set(KEYS) == set(nnunet.ENV_KEYS)


def test_supported_nnunet_passes():
    nnunet.check_nnunet_version.cache_clear()
    assert nnunet.check_nnunet_version().startswith("2.8")


@pytest.mark.parametrize("mplbackend", ["svg", "pdf"])
def test_backend_chosen_by_mplbackend_alone_is_put_back(mplbackend):
    """A fresh Jupyter kernel sets MPLBACKEND and has not imported matplotlib: nnU-Net's
    trainer (imported inside train/predict) switched it to Agg for good."""
    import subprocess
    import sys

    code = (
        "from hntseg.nnunet import process_state_kept\n"
        "with process_state_kept():\n"
        "    import matplotlib\n"
        "    matplotlib.use('agg')\n"  # what nnunetv2's nnunet_logger does on import
        "    import matplotlib.pyplot\n"
        "import matplotlib.pyplot as plt\n"
        "print(plt.get_backend())\n"
    )
    env = {**os.environ, "MPLBACKEND": mplbackend}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == mplbackend

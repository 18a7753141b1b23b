"""Mutation audit of train / nnunet / the short trainer / machine: what reaches nnU-Net.

nnU-Net itself is replaced by small fakes in `sys.modules` (its planning API,
`run_training`, and the `nnUNetTrainer` base class), so these tests check what hntseg
hands to it (planner, plans, trainer, folds, schedule, workers, environment) without
planning or training anything.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

from hntseg import nnunet
from hntseg import train as train_module
from hntseg.errors import InputError
from hntseg.io import read_json, write_json

NAME = "Dataset011_x"
RESENC_M_PLANNER = "nnUNetPlannerResEncM"  # the method's (DESIGN / docs/nnunet.md)
RESENC_M_PLANS = "nnUNetResEncUNetMPlans"
SHORT = "nnUNetTrainerHntsegShort"
FULL = "nnUNetTrainer"
HNTSEG_KEYS = ("HNTSEG_EPOCHS", "HNTSEG_ITERATIONS", "HNTSEG_VAL_ITERATIONS")


@pytest.fixture
def clean_env(monkeypatch):
    """None of the variables hntseg sets for nnU-Net (the user exported nothing)."""
    for key in nnunet.ENV_KEYS:
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def built(tmp_path, clean_env):
    """A built dataset with five folds of splits."""
    write_json(tmp_path / "nnUNet_raw" / NAME / "dataset.json", {})
    splits = [{"train": ["a"], "val": ["b"]}] * 5
    write_json(tmp_path / "nnUNet_preprocessed" / NAME / "splits_final.json", splits)
    return tmp_path


class FakeNnunet:
    """nnU-Net's planning API and run_training, recording each call and the environment."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict, dict]] = []
        self.write_checkpoint = True
        self.numpy_first: list[int] = []

    def _record(self, name: str, args: tuple, kw: dict) -> None:
        self.calls.append((name, args, kw, dict(os.environ)))

    def of(self, name: str) -> list[tuple[tuple, dict, dict]]:
        return [(a, k, e) for n, a, k, e in self.calls if n == name]

    @staticmethod
    def _pre() -> Path:
        return Path(os.environ["nnUNet_preprocessed"]) / NAME

    def extract_fingerprints(self, *args, **kw):
        self._record("extract_fingerprints", args, kw)

    def plan_experiments(self, *args, **kw):
        self._record("plan_experiments", args, kw)
        cfg = {"data_identifier": "planned_3d_fullres", "patch_size": [32, 64, 64]}
        cfg["batch_size"] = 2
        configurations = {"3d_fullres": cfg, "2d": {**cfg, "data_identifier": "planned_2d"}}
        write_json(self._pre() / f"{RESENC_M_PLANS}.json", {"configurations": configurations})

    def preprocess(self, *args, **kw):
        plans = read_json(self._pre() / f"{RESENC_M_PLANS}.json", "plans")
        self._record("preprocess", args, {**kw, "plans_seen": plans})
        for folder in ("planned_3d_fullres", "planned_2d"):
            (self._pre() / folder).mkdir(exist_ok=True)

    def run_training(self, dataset, configuration, fold, **kw):
        import torch

        self._record("run_training", (dataset, configuration, fold), kw)
        import numpy as np

        self.calls[-1][2]["seed"] = torch.initial_seed()
        self.numpy_first.append(np.random.get_state()[1][0])  # noqa: NPY002
        folder = f"{kw['trainer_class_name']}__{kw['plans_identifier']}__{configuration}"
        out = Path(os.environ["nnUNet_results"]) / NAME / folder / f"fold_{fold}"
        out.mkdir(parents=True, exist_ok=True)
        if self.write_checkpoint:
            (out / "checkpoint_final.pth").write_bytes(b"x")


@pytest.fixture
def fake(monkeypatch):
    fake = FakeNnunet()
    api = types.ModuleType("nnunetv2.experiment_planning.plan_and_preprocess_api")
    api.extract_fingerprints = fake.extract_fingerprints
    api.plan_experiments = fake.plan_experiments
    api.preprocess = fake.preprocess
    run = types.ModuleType("nnunetv2.run.run_training")
    run.run_training = fake.run_training
    monkeypatch.setitem(sys.modules, api.__name__, api)
    monkeypatch.setitem(sys.modules, run.__name__, run)
    return fake


def _train(work, fold=0, **kw):
    kw.setdefault("device", "cpu")
    return train_module.train(work, 11, fold, **kw)


# --- planning -------------------------------------------------------------------------


def test_planning_uses_resenc_m_the_memory_target_and_the_workers(built, fake):
    plans = train_module.plan_and_preprocess(built, 11, gpu_memory_target=24, workers=3)
    assert plans == (built / "nnUNet_preprocessed" / NAME / f"{RESENC_M_PLANS}.json").resolve()
    [(args, kw, _)] = fake.of("extract_fingerprints")
    assert args == ([11],) and kw["num_processes"] == 3 and kw["check_dataset_integrity"] is True
    [(args, kw, _)] = fake.of("plan_experiments")
    assert args == ([11], RESENC_M_PLANNER) and kw["gpu_memory_target_in_gb"] == 24
    [(args, kw, _)] = fake.of("preprocess")
    assert args == ([11], RESENC_M_PLANS)
    assert kw["configurations"] == ("3d_fullres",) and kw["num_processes"] == (3,)


def test_plans_are_reused_unless_forced_or_changed(built, fake):
    def planned() -> int:
        return len(fake.of("plan_experiments"))

    train_module.plan_and_preprocess(built, 11, plans_override={"batch_size": 4})
    [(_, kw, _)] = fake.of("preprocess")
    assert kw["plans_seen"]["configurations"]["3d_fullres"]["batch_size"] == 4  # before
    # no override given: the plans made with one are reused (later folds)
    train_module.plan_and_preprocess(built, 11)
    train_module.plan_and_preprocess(built, 11, plans_override={"batch_size": 4})
    assert planned() == 1
    train_module.plan_and_preprocess(built, 11, plans_override={"batch_size": 4}, force=True)
    assert planned() == 2
    train_module.plan_and_preprocess(built, 11, gpu_memory_target=16)
    assert planned() == 3


def test_zero_workers_plan_with_one_process_and_train_with_none(built, fake):
    """nnU-Net's planner uses nnUNet_n_proc_DA for torch.set_num_threads (needs >= 1)."""
    _train(built, epochs=1, workers=0)
    [(_, _, env)] = fake.of("extract_fingerprints")
    assert env["nnUNet_n_proc_DA"] == "1" and env["nnUNet_def_n_proc"] == "1"
    [(_, _, env)] = fake.of("run_training")
    assert env["nnUNet_n_proc_DA"] == "0"


@pytest.mark.parametrize("bad", [{"gpu_memory_target": 1.99}, {"gpu_memory_target": 1024.5}])
def test_memory_target_outside_the_range_is_refused(built, fake, bad):
    with pytest.raises(InputError, match="must be 2..1024"):
        train_module.plan_and_preprocess(built, 11, **bad)
    assert not fake.calls


@pytest.mark.parametrize("target", [2.0, 1024.0])
def test_memory_target_bounds_are_accepted(built, fake, target):
    train_module.plan_and_preprocess(built, 11, gpu_memory_target=target)
    [(_, kw, _)] = fake.of("plan_experiments")
    assert kw["gpu_memory_target_in_gb"] == target


# --- folds, options ---------------------------------------------------------------------


@pytest.mark.parametrize(("fold", "expected"), [("all", [0, 1, 2, 3, 4]), ([4, "1"], [4, 1])])
def test_folds_trained(built, fake, fold, expected):
    dirs = _train(built, fold, epochs=1)
    assert [args[2] for args, _, _ in fake.of("run_training")] == expected
    assert [d.name for d in dirs] == [f"fold_{f}" for f in expected]


@pytest.mark.parametrize("fold", [5, -1, "x"])
def test_folds_outside_the_splits_are_refused_before_any_folder(built, fake, fold):
    with pytest.raises(InputError, match="--fold"):
        _train(built, fold, epochs=1)
    assert not fake.calls
    assert not (built / "nnUNet_results").exists()


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"iterations_per_epoch": 0}])
def test_zero_epochs_or_iterations_are_refused(built, fake, bad):
    with pytest.raises(InputError, match="must be >= 1"):
        _train(built, **bad)
    assert not fake.calls


def test_continue_and_force_together_are_refused(built, fake):
    with pytest.raises(InputError, match="choose one"):
        _train(built, epochs=1, continue_training=True, force=True)
    assert not fake.calls


# --- trainer and schedule -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "trainer", "schedule"),
    [
        ({}, FULL, None),
        ({"epochs": 3}, SHORT, ("3", "250", "50", "0")),
        ({"iterations_per_epoch": 7}, SHORT, ("1000", "7", "7", "0")),
        ({"val_iterations": 4}, SHORT, ("1000", "250", "4", "0")),
        (
            {"epochs": 2, "iterations_per_epoch": 80, "final_validation": True},
            SHORT,
            ("2", "80", "50", "1"),
        ),
    ],
)
def test_trainer_and_schedule_reach_nnunet(built, fake, kw, trainer, schedule):
    import torch

    [fold_dir] = _train(built, 2, **kw)
    [(args, call, env)] = fake.of("run_training")
    assert args == ("11", "3d_fullres", 2)
    assert call["trainer_class_name"] == trainer and call["plans_identifier"] == RESENC_M_PLANS
    assert call["device"] == torch.device("cpu") and call["continue_training"] is False
    keys = (*HNTSEG_KEYS, "HNTSEG_FINAL_VALIDATION")
    assert tuple(env.get(k) for k in keys) == (schedule or (None,) * 4)
    # nnU-Net finds hntseg's trainer and writes into WORK
    assert str(nnunet.TRAINERS_DIR) in env["nnUNet_extTrainer"].split(os.pathsep)
    assert env["nnUNet_results"] == str((built / "nnUNet_results").resolve())
    assert fold_dir.parent.name == f"{trainer}__{RESENC_M_PLANS}__3d_fullres"
    params = read_json(fold_dir / "hntseg_train.record.json", "record")["params"]
    assert params["trainer"] == trainer and params["smoke_run"] is (schedule is not None)
    assert params["epochs"] == int(schedule[0] if schedule else 1000)
    assert params["iterations_per_epoch"] == int(schedule[1] if schedule else 250)


def test_train_hands_the_memory_target_and_override_to_planning(built, fake):
    _train(built, epochs=1, gpu_memory_target=16, plans_override={"batch_size": 3})
    [(_, kw, _)] = fake.of("plan_experiments")
    assert kw["gpu_memory_target_in_gb"] == 16
    [(_, kw, _)] = fake.of("preprocess")
    assert kw["plans_seen"]["configurations"]["3d_fullres"]["batch_size"] == 3


def test_finished_folds_are_skipped_unless_continue_or_force(built, fake):
    first = _train(built, epochs=1)
    assert _train(built, epochs=1) == first  # skipped, still returned
    assert len(fake.of("run_training")) == 1
    _train(built, epochs=1, continue_training=True)
    _train(built, epochs=1, force=True)
    assert [kw["continue_training"] for _, kw, _ in fake.of("run_training")] == [False, True, False]
    assert len(fake.of("plan_experiments")) == 1  # --force retrains, the plans are reused


def test_each_fold_is_seeded_by_the_seed_plus_its_number(built, fake):
    _train(built, [0, 3], epochs=1, seed=10)
    assert [kw["seed"] for _, kw, _ in fake.of("run_training")] == [10, 13]


def test_training_without_a_final_checkpoint_is_an_error(built, fake):
    fake.write_checkpoint = False
    with pytest.raises(InputError, match="without a final checkpoint"):
        _train(built, epochs=1)


# --- environment ------------------------------------------------------------------------


def test_set_environment_points_nnunet_at_work_and_keeps_the_users_trainers(
    tmp_path, clean_env, monkeypatch
):
    work = tmp_path / "w"
    monkeypatch.chdir(tmp_path)
    with nnunet.process_state_kept():
        nnunet.set_environment("w")  # a relative WORK: nnU-Net gets absolute paths
        assert all(
            (work / f).is_dir() for f in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
        )
        assert os.environ["nnUNet_extTrainer"] == str(nnunet.TRAINERS_DIR)
        assert os.environ["nnUNet_raw"] == str((work / "nnUNet_raw").resolve())
        assert os.environ["nnUNet_preprocessed"] == str((work / "nnUNet_preprocessed").resolve())
        assert os.environ["nnUNet_results"] == str((work / "nnUNet_results").resolve())
    monkeypatch.setenv("nnUNet_extTrainer", "/my/trainers")
    with nnunet.process_state_kept():
        nnunet.set_environment(work)
        nnunet.set_environment(work)
        expected = [str(nnunet.TRAINERS_DIR), "/my/trainers"]
        assert os.environ["nnUNet_extTrainer"].split(os.pathsep) == expected
    assert os.environ["nnUNet_extTrainer"] == "/my/trainers"


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 1), (5, 4), (13, 12), (64, 12)])
def test_default_workers_follow_the_machine(monkeypatch, cpus, expected):
    monkeypatch.setattr("hntseg.machine.available_cpus", lambda: cpus)
    assert nnunet.default_workers() == expected


@pytest.mark.parametrize(
    ("user", "workers", "expected"),
    [
        ({}, None, ("4", "4")),  # the machine's: 5 CPUs - 1
        ({"nnUNet_n_proc_DA": "7", "nnUNet_def_n_proc": "9"}, None, ("7", "9")),  # the user's
        ({"nnUNet_n_proc_DA": "7", "nnUNet_def_n_proc": "9"}, 2, ("2", "2")),  # --workers
        ({}, 0, ("0", "1")),  # no augmentation processes; nnU-Net still needs one process
    ],
)
def test_worker_variables(tmp_path, clean_env, monkeypatch, user, workers, expected):
    monkeypatch.setattr("hntseg.machine.available_cpus", lambda: 5)
    for key, value in user.items():
        monkeypatch.setenv(key, value)
    with nnunet.process_state_kept():
        nnunet.set_environment(tmp_path, workers, create=False)
        assert (os.environ["nnUNet_n_proc_DA"], os.environ["nnUNet_def_n_proc"]) == expected


def test_available_cpus_is_the_affinity(monkeypatch):
    from hntseg import machine

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert machine.available_cpus() == 3


def test_workers_zero_is_valid_and_a_bool_is_not():
    nnunet.check_workers(0)
    with pytest.raises(InputError, match="--workers True"):
        nnunet.check_workers(True)


def test_torch_threads_set_inside_stay_when_torch_was_not_imported_before(monkeypatch):
    """Nobody chose a thread count before: the one chosen inside (the allocation's) stays."""
    import torch

    threads = torch.get_num_threads()
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh process
    try:
        with nnunet.process_state_kept():
            sys.modules["torch"] = torch  # imported inside (by nnU-Net)
            torch.set_num_threads(threads + 1)
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)


# --- dataset ids and channels -------------------------------------------------------------


def test_dataset_id_zero_is_refused(tmp_path):
    with pytest.raises(InputError, match="must be 1..999"):
        nnunet.dataset_name(0)
    with pytest.raises(InputError, match="must be 1..999"):
        nnunet.find_dataset(tmp_path, 0)


def test_two_datasets_with_one_id_are_refused(tmp_path):
    for name in ("Dataset011_a", "Dataset011_b"):
        (tmp_path / "nnUNet_raw" / name).mkdir(parents=True)
    with pytest.raises(InputError, match="several datasets with id 11"):
        nnunet.find_dataset(tmp_path, 11)


@pytest.mark.parametrize(
    ("value", "message"),
    [("gradmap,t2", "first channel must be t2"), ("t2,gradmap,t2", "repeated channel")],
)
def test_bad_channel_lists_are_refused(value, message):
    with pytest.raises(InputError, match=message):
        nnunet.parse_channels(value)


def test_channels_of_a_dataset_made_elsewhere_map_back_to_keys(tmp_path):
    path = tmp_path / "dataset.json"
    write_json(path, {"channel_names": {"1": "gradmap", "0": "T2", "2": "noNorm"}})
    assert nnunet.dataset_channels(path) == ["t2", "gradmap", "pre_mask_registered"]


# --- the short trainer --------------------------------------------------------------------


class _FakeBaseTrainer:
    """nnUNetTrainer's defaults that the short trainer changes."""

    def __init__(self, plans, configuration, fold, dataset_json, device=None):
        self.num_epochs, self.num_iterations_per_epoch = 1000, 250
        self.num_val_iterations_per_epoch, self.save_every = 50, 50
        self.log: list[str] = []
        self.validated = False

    def print_to_log_file(self, *args):
        self.log.append(" ".join(map(str, args)))

    def on_train_start(self):
        self.started = True

    def perform_actual_validation(self, save_probabilities=False):
        self.validated = True


@pytest.fixture
def short_trainer(monkeypatch):
    """hntseg's trainer module as nnU-Net finds it (in TRAINERS_DIR), on a fake base class."""
    for key in (*HNTSEG_KEYS, "HNTSEG_FINAL_VALIDATION"):
        monkeypatch.delenv(key, raising=False)
    base = types.ModuleType("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")
    base.nnUNetTrainer = _FakeBaseTrainer
    monkeypatch.setitem(sys.modules, base.__name__, base)
    path = nnunet.TRAINERS_DIR / "hntseg_short_trainer.py"
    spec = importlib.util.spec_from_file_location("hntseg_short_trainer_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls = getattr(module, nnunet.SHORT_TRAINER)
    return lambda: cls({}, "3d_fullres", 0, {})


def test_short_trainer_takes_its_schedule_from_the_environment(short_trainer, monkeypatch):
    for key, value in zip(
        (*HNTSEG_KEYS, "HNTSEG_FINAL_VALIDATION"), "3 7 2 0".split(), strict=True
    ):
        monkeypatch.setenv(key, value)
    trainer = short_trainer()
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch) == (3, 7)
    assert trainer.num_val_iterations_per_epoch == 2
    assert trainer.save_every == 3  # a checkpoint within the run
    trainer.on_train_start()
    assert trainer.started  # nnU-Net's own start still runs
    assert "SMOKE RUN" in trainer.log[0] and "3 epoch(s) x 7 iteration(s)" in trainer.log[0]
    trainer.perform_actual_validation()
    assert not trainer.validated


def test_short_trainer_defaults_are_nnunets(short_trainer, monkeypatch):
    trainer = short_trainer()
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch) == (1000, 250)
    assert (trainer.num_val_iterations_per_epoch, trainer.save_every) == (50, 50)
    monkeypatch.setenv("HNTSEG_FINAL_VALIDATION", "1")
    trainer = short_trainer()
    trainer.perform_actual_validation()
    assert trainer.validated


@pytest.mark.parametrize("value", ["0", "-2", "x"])
def test_short_trainer_refuses_a_bad_schedule(short_trainer, monkeypatch, value):
    monkeypatch.setenv("HNTSEG_EPOCHS", value)
    with pytest.raises(ValueError, match="HNTSEG_EPOCHS"):
        short_trainer()


def test_an_override_given_as_a_tuple_reuses_the_plans_made_with_it(built, fake):
    """The record keeps the override as JSON (a list): the same patch given as a tuple
    (accepted) is the same override, not a reason to plan and preprocess again."""
    for _ in range(2):
        train_module.plan_and_preprocess(built, 11, plans_override={"patch_size": (32, 64, 64)})
    assert len(fake.of("plan_experiments")) == 1
    train_module.plan_and_preprocess(built, 11, plans_override={"patch_size": [32, 64, 64]})
    assert len(fake.of("plan_experiments")) == 1


def test_another_configuration_is_planned_trained_and_stored_as_such(built, fake):
    [fold_dir] = _train(built, 1, epochs=1, configuration="2d")
    [(_, kw, _)] = fake.of("preprocess")
    assert kw["configurations"] == ("2d",)
    [(args, _, _)] = fake.of("run_training")
    assert args == ("11", "2d", 1)
    assert fold_dir.parent.name == f"{SHORT}__{RESENC_M_PLANS}__2d"


def test_seed_zero_seeds_fold_zero(built, fake):
    import numpy as np
    import torch

    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002
    _train(built, [0, 1], epochs=1)  # seed=0 by default
    assert [kw["seed"] for _, kw, _ in fake.of("run_training")] == [0, 1]
    expected = []
    for seed in (0, 1):
        np.random.seed(seed)  # noqa: NPY002
        expected.append(np.random.get_state()[1][0])  # noqa: NPY002
    assert fake.numpy_first == expected


def test_short_run_is_announced_as_a_smoke_run(built, fake, monkeypatch):
    from hntseg.log import log

    warnings: list[str] = []
    monkeypatch.setattr(log, "warning", lambda msg, *args: warnings.append(msg % args))
    _train(built, epochs=2, iterations_per_epoch=3)
    assert [w for w in warnings if "SMOKE RUN: 2 epoch(s) x 3 iteration(s)" in w]
    warnings.clear()
    _train(built, 1)
    assert not [w for w in warnings if "SMOKE RUN" in w]


def test_the_device_asked_for_is_the_one_used(built, fake, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto would pick cuda
    _train(built, epochs=1, device="cpu")
    [(_, kw, _)] = fake.of("run_training")
    assert kw["device"] == torch.device("cpu")


@pytest.mark.parametrize(
    "missing",
    ["nnUNet_raw/Dataset011_x/dataset.json", "nnUNet_preprocessed/Dataset011_x/splits_final.json"],
)
def test_planning_without_build_dataset_output_is_refused(built, fake, missing):
    (built / missing).unlink()
    with pytest.raises(InputError, match="missing \\(run hntseg build-dataset\\)"):
        train_module.plan_and_preprocess(built, 11)
    assert not fake.calls

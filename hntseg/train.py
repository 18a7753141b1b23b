"""train: plan + preprocess once (nnUNetPlannerResEncM), then train nnU-Net v2 folds in-process.

Method (Ren et al.): nnU-Net v2, planner `nnUNetPlannerResEncM` (plans
`nnUNetResEncUNetMPlans`), 3d_fullres, SGD lr 0.01 poly 0.9, CE + Dice, 1000 epochs x
250 iterations, final checkpoint. That is nnU-Net's default `nnUNetTrainer`, used when no
`epochs` / `iterations_per_epoch` is given. A shorter schedule uses
`nnUNetTrainerHntsegShort` (hntseg/trainers, found through `nnUNet_extTrainer`) and is
labelled a SMOKE RUN in the console and in nnU-Net's training log.

nnU-Net's folders are set from WORK inside this process (`hntseg.nnunet.set_environment`),
and the splits are hntseg's own `splits_final.json` (from build-dataset). Training is not
bit-reproducible (nnU-Net's augmentation workers and cuDNN are not seeded).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hntseg.errors import InputError
from hntseg.io import read_json, write_json
from hntseg.log import log, quiet_stdout, status
from hntseg.nnunet import (
    CONFIGURATION,
    DATASET_RECORD,
    FULL_TRAINER,
    PLANNER,
    PLANS,
    PREPROCESS_RECORD,
    SHORT_TRAINER,
    Paths,
    check_device,
    check_workers,
    describe_device,
    find_dataset,
    model_folder,
    restores_process_state,
    select_device,
    set_environment,
)
from hntseg.records import is_done, write_record

CONFIGURATIONS = ("3d_fullres", "2d", "3d_lowres", "3d_cascade_fullres")  # nnU-Net's names
GPU_MEMORY_RANGE = (2.0, 1024.0)  # GB; below about 2 the ResEnc planner never settles


def check_plan_options(
    gpu_memory_target: float | None, configuration: str, workers: int | None
) -> None:
    """Planner options, before any work (a negative memory target made the planner loop
    forever; an unknown configuration was found after planning)."""
    low, high = GPU_MEMORY_RANGE
    if gpu_memory_target is not None and not (
        math.isfinite(gpu_memory_target) and low <= gpu_memory_target <= high
    ):
        raise InputError(f"--gpu-memory-target {gpu_memory_target}: must be {low:g}..{high:g} (GB)")
    if configuration not in CONFIGURATIONS:
        raise InputError(
            f"--configuration {configuration!r}: expected one of {', '.join(CONFIGURATIONS)}"
        )
    check_workers(workers)


def check_built(raw: Path) -> None:
    """Refuse a raw dataset that a build-dataset run left unfinished (one-line InputError).

    build-dataset removes its record and dataset.json before it rewrites the first case
    file, and writes them last: hntseg's dataset.json (its `hntseg` block) without the
    record, or no dataset.json, means the case files may mix two builds. A dataset.json
    without that block (a dataset made by hand or by another tool) is trained on as it is.
    """
    path = raw / "dataset.json"
    if not path.is_file():
        raise InputError(f"{path}: missing (run hntseg build-dataset)")
    data = read_json(path, "dataset.json")
    ours = isinstance(data, dict) and isinstance(data.get("hntseg"), dict)
    if ours and not (raw / DATASET_RECORD).is_file():
        raise InputError(
            f"{raw / DATASET_RECORD}: missing beside hntseg's dataset.json: a build-dataset "
            "run did not finish (the case files may mix two builds); rerun hntseg build-dataset"
        )


@restores_process_state
def plan_and_preprocess(
    work: str | Path,
    dataset_id: int,
    gpu_memory_target: float | None = None,
    configuration: str = CONFIGURATION,
    plans_override: dict[str, Any] | None = None,
    workers: int | None = None,
    force: bool = False,
) -> Path:
    """Fingerprint, plan (ResEnc M) and preprocess the dataset once; returns the plans file.

    Reused while dataset.json, the build-dataset record and the parameters are unchanged.
    `plans_override` replaces keys of the configuration in the plans (e.g. a smaller
    `patch_size` or `batch_size` for tests) before preprocessing.
    """
    check_plans_override(plans_override)
    if plans_override:  # as its record keeps it (JSON): a tuple patch is the same override
        plans_override = {
            k: list(v) if isinstance(v, tuple) else v for k, v in plans_override.items()
        }
    check_plan_options(gpu_memory_target, configuration, workers)
    name = find_dataset(work, dataset_id)  # before any folder is created
    check_built(Paths(Path(work)).raw / name)
    paths = set_environment(work, workers)
    raw, pre = paths.raw / name, paths.preprocessed / name
    if not (pre / "splits_final.json").is_file():
        raise InputError(f"{pre / 'splits_final.json'}: missing (run hntseg build-dataset)")
    plans_file = pre / f"{PLANS}.json"
    record = pre / PREPROCESS_RECORD
    inputs = {"dataset.json": raw / "dataset.json", "dataset_record": raw / DATASET_RECORD}
    inputs = {k: (v if v.is_file() else None) for k, v in inputs.items()}
    params = {
        "planner": PLANNER,
        "plans": PLANS,
        "configuration": configuration,
        "gpu_memory_target": gpu_memory_target,
    }
    # no override given: reuse whatever plans were made (with or without an override)
    previous = _recorded_override(record)
    same_override = plans_override is None or plans_override == previous
    if not force and same_override and is_done(record, inputs, params):
        log.info(f"{plans_file}: plans and preprocessed data reused")
        return plans_file
    # nnU-Net rewrites the plans and empties the data folder as it goes: until it finished,
    # nothing may vouch for them (a failed or killed attempt must be redone, not reused)
    record.unlink(missing_ok=True)
    n = int(os.environ.get("nnUNet_def_n_proc", "1"))
    log.info(f"{name}: fingerprint, plan ({PLANNER}) and preprocess {configuration}")
    # 0 workers (no augmentation processes) is valid for training, but nnU-Net's planner
    # uses the same variable for torch.set_num_threads, which needs >= 1
    da_workers = os.environ.get("nnUNet_n_proc_DA")
    if da_workers == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        _plan_and_preprocess(
            int(dataset_id), n, plans_file, configuration, gpu_memory_target, plans_override
        )
    finally:
        if da_workers is not None:
            os.environ["nnUNet_n_proc_DA"] = da_workers
    identifier = read_json(plans_file, "nnU-Net plans")["configurations"][configuration]
    data_folder = pre / identifier.get("data_identifier", f"{PLANS}_{configuration}")
    write_record(
        record,
        "plan-preprocess",
        inputs,
        params,
        [plans_file, data_folder],
        extra={"plans_override": plans_override},
    )
    return plans_file


def _recorded_override(record: Path) -> Any:
    """The plans override a preprocessing record holds (None when there is no readable
    record: then the plans are made anew)."""
    try:
        data = read_json(record, "record") if record.is_file() else None
    except InputError:
        return None
    return data.get("plans_override") if isinstance(data, dict) else None


def check_plans_override(override: dict[str, Any] | None) -> None:
    """The checks of a plans override that need no plans: before any planning work."""
    if not override:
        return
    unknown = sorted(set(override) - {"batch_size", "patch_size"})
    if unknown:
        raise InputError(f"plans override {unknown}: only batch_size and patch_size")
    batch = override.get("batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise InputError(f"batch_size {batch!r}: expected a whole number >= 1")
    patch = override.get("patch_size")
    if patch is not None and (
        not isinstance(patch, (list, tuple))
        or len(patch) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in patch)
        or min(patch) < 1
    ):
        raise InputError(f"patch_size {patch}: expected 3 whole numbers >= 1 (z, y, x)")


def apply_plans_override(
    plans_file: Path, configuration: str, override: dict[str, Any]
) -> dict[str, Any]:
    """Replace keys of one configuration in nnU-Net's plans (e.g. the paper's
    `patch_size` [48, 192, 192] and `batch_size` 8) and return it.

    The network's topology stays the planner's, so a patch must be divisible, axis by
    axis, by the network's total stride; anything else is a one-line InputError.

    `patch_size` is given in the images' (z, y, x) array order. nnU-Net's plans hold it in
    their own axis order (`transpose_forward`: the coarsest-spacing axis first, which for
    axial scans is z, so the same order), and it is stored permuted into that."""
    check_plans_override(override)
    plans = read_json(plans_file, "nnU-Net plans")
    if configuration not in plans["configurations"]:
        raise InputError(f"{plans_file}: no configuration {configuration}")
    cfg = plans["configurations"][configuration]
    override = dict(override)
    patch = override.get("patch_size")
    if patch is not None:
        planned = cfg["patch_size"]
        order = list(plans.get("transpose_forward", range(len(planned))))

        def zyx(values: list[int]) -> list[int]:  # plans order -> (z, y, x)
            out = [0] * len(values)
            for i, axis in enumerate(order):
                out[axis] = values[i]
            return out

        if len(patch) != len(planned):
            raise InputError(
                f"patch_size {patch}: expected {len(planned)} whole numbers (z, y, x), "
                f"like the planned {zyx(planned)}"
            )
        strides = cfg.get("architecture", {}).get("arch_kwargs", {}).get("strides")
        if strides:
            total = zyx([math.prod(int(s[i]) for s in strides) for i in range(len(planned))])
            if any(v % t for v, t in zip(patch, total, strict=True)):
                raise InputError(
                    f"patch_size {patch}: each axis must be a multiple of the network's total "
                    f"stride {total} (z, y, x) in {plans_file.name}; e.g. "
                    f"{[max(t, round(v / t) * t) for v, t in zip(patch, total, strict=True)]}"
                )
        override["patch_size"] = [patch[axis] for axis in order]
    cfg.update(override)
    write_json(plans_file, plans)
    return cfg


def _plan_and_preprocess(
    dataset_id: int,
    n: int,
    plans_file: Path,
    configuration: str,
    gpu_memory_target: float | None,
    plans_override: dict[str, Any] | None,
) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    with quiet_stdout():
        extract_fingerprints(
            [dataset_id], num_processes=n, check_dataset_integrity=True, verbose=False
        )
        plan_experiments([dataset_id], PLANNER, gpu_memory_target_in_gb=gpu_memory_target)
        if plans_override:
            apply_plans_override(plans_file, configuration, plans_override)
        if configuration not in read_json(plans_file, "nnU-Net plans")["configurations"]:
            raise InputError(f"{plans_file}: nnU-Net planned no {configuration} configuration")
        preprocess([dataset_id], PLANS, configurations=(configuration,), num_processes=(n,))


def _folds(fold: int | str | Sequence[int | str], n_splits: int) -> list[int]:
    items = [fold] if isinstance(fold, (int, str)) else list(fold)
    out: list[int] = []
    for item in items:
        if str(item) == "all":
            out.extend(range(n_splits))
            continue
        try:
            f = int(item)
        except ValueError:
            raise InputError(f"--fold {item!r}: expected 0..{n_splits - 1} or all") from None
        if not 0 <= f < n_splits:
            raise InputError(f"--fold {f}: the splits have folds 0..{n_splits - 1}")
        out.append(f)
    return out


@restores_process_state
def train(
    work: str | Path,
    dataset_id: int,
    fold: int | str | Sequence[int | str] = 0,
    epochs: int | None = None,
    iterations_per_epoch: int | None = None,
    val_iterations: int | None = None,
    device: str = "auto",
    continue_training: bool = False,
    gpu_memory_target: float | None = None,
    configuration: str = CONFIGURATION,
    final_validation: bool | None = None,
    plans_override: dict[str, Any] | None = None,
    workers: int | None = None,
    seed: int | None = 0,
    force: bool = False,
) -> list[Path]:
    """Plan/preprocess once, then train each fold ("all" = every fold of the splits in turn).

    Returns the fold folders (each with checkpoint_final.pth). A fold that already has its
    final checkpoint is skipped unless `continue_training` or `force`. Short runs (`epochs`
    or `iterations_per_epoch` given) skip nnU-Net's final full validation by default.
    """
    for value, flag in (
        (epochs, "--epochs"),
        (iterations_per_epoch, "--iterations-per-epoch"),
        (val_iterations, "val_iterations"),
    ):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: must be >= 1")
    if continue_training and force:
        raise InputError("--continue and --force: choose one")
    check_device(device)
    check_plans_override(plans_override)
    check_plan_options(gpu_memory_target, configuration, workers)
    # every check before any folder is created (a typo'd WORK must leave nothing behind)
    name = find_dataset(work, dataset_id)
    check_built(Paths(Path(work)).raw / name)
    paths = set_environment(work, workers, create=False)
    splits = read_json(paths.preprocessed / name / "splits_final.json", "splits_final.json")
    folds = _folds(fold, len(splits))
    set_environment(work, workers)
    short = epochs is not None or iterations_per_epoch is not None or val_iterations is not None
    trainer = SHORT_TRAINER if short else FULL_TRAINER
    if short:
        os.environ["HNTSEG_EPOCHS"] = str(epochs or 1000)
        os.environ["HNTSEG_ITERATIONS"] = str(iterations_per_epoch or 250)
        os.environ["HNTSEG_VAL_ITERATIONS"] = str(
            val_iterations if val_iterations is not None else min(50, iterations_per_epoch or 50)
        )
        os.environ["HNTSEG_FINAL_VALIDATION"] = "1" if final_validation else "0"
    torch_device = select_device(device)
    status(f"train: device {describe_device(torch_device)}")
    if short:  # a warning, so that --quiet shows it too
        log.warning(
            f"SMOKE RUN: {os.environ['HNTSEG_EPOCHS']} epoch(s) x "
            f"{os.environ['HNTSEG_ITERATIONS']} iteration(s) ({trainer}); the method trains "
            "1000 x 250 - not a usable model"
        )
    plan_and_preprocess(
        work, dataset_id, gpu_memory_target, configuration, plans_override, workers, force=False
    )
    import numpy as np
    import torch
    from nnunetv2.run.run_training import run_training

    out = []
    for f in folds:
        fold_dir = model_folder(paths, name, trainer, configuration) / f"fold_{f}"
        final = fold_dir / "checkpoint_final.pth"
        if final.is_file() and not (continue_training or force):
            log.info(f"{final}: fold {f} already trained (use --continue or --force)")
            out.append(fold_dir)
            continue
        if seed is not None:
            torch.manual_seed(seed + f)
            np.random.seed((seed + f) % 2**32)  # noqa: NPY002 (nnU-Net uses the global RNG)
        log.info(f"{name}: training fold {f} ({trainer}, {PLANS}, {configuration})")
        with quiet_stdout():
            run_training(
                str(dataset_id),
                configuration,
                f,
                trainer_class_name=trainer,
                plans_identifier=PLANS,
                continue_training=continue_training and not force,
                device=torch_device,
            )
        if not final.is_file():
            raise InputError(f"{final}: nnU-Net finished without a final checkpoint")
        write_record(
            fold_dir / "hntseg_train.record.json",
            "train",
            {"splits_final.json": paths.preprocessed / name / "splits_final.json"},
            {
                "fold": f,
                "trainer": trainer,
                "plans": PLANS,
                "configuration": configuration,
                "epochs": int(os.environ["HNTSEG_EPOCHS"]) if short else 1000,
                "iterations_per_epoch": int(os.environ["HNTSEG_ITERATIONS"]) if short else 250,
                "plans_override": plans_override,
                "device": torch_device.type,
                "smoke_run": short,
            },
            [final],
            seed=seed,
        )
        status(f"fold {f}: {final}")
        out.append(fold_dir)
    return out

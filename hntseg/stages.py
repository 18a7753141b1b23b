"""The method's stages for `hntseg run`: one `Stage` adapter per step, and `default_stages`.

Each adapter wires a stage module's cohort function (`boxes_cohort`, `gradmap_cohort`, ...)
to the engine: what it reads, which options shape it and which files it must write.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hntseg.cohort import PHASES, boxes_path, gradmap_path
from hntseg.engine import Context, Stage
from hntseg.errors import HntsegError, InputError
from hntseg.io import read_json
from hntseg.log import log


def _files(root: Path, ids: Sequence[str], key: str, tag: str) -> dict[str, Path]:
    """{"tag/<id>": file} for one cohort-layout file of each patient (missing -> expected path)."""
    from hntseg.cohort import SUFFIXES, expected_path

    out: dict[str, Path] = {}
    for pid in ids:
        path = expected_path(root, pid, key)
        for suffix in SUFFIXES:
            candidate = expected_path(root, pid, key, suffix)
            if candidate.is_file():
                path = candidate
                break
        out[f"{tag}/{pid}"] = path
    return out


def _synth_stage() -> Stage:
    def run(ctx: Context) -> None:
        from hntseg.synth import synth_cohort

        s = ctx.config["synth"]
        spacing = tuple(s["spacing"]) if s["spacing"] else None
        synth_cohort(
            ctx.cohort, s["patients"], ctx.seed, tuple(s["size"]), spacing, force=ctx.force
        )

    def outputs(ctx: Context) -> list[Path]:
        from hntseg.cohort import FILES, expected_path

        n = ctx.config["synth"]["patients"]
        pids = [str(i) for i in range(1, n + 1)]
        return [ctx.cohort / "synth.json"] + [
            expected_path(ctx.cohort, pid, key) for pid in pids for key in FILES
        ]

    return Stage(
        "synth",
        run,
        inputs=lambda ctx: {},
        outputs=outputs,
        options=lambda ctx: {**ctx.config["synth"], "seed": ctx.seed, "cohort": str(ctx.cohort)},
        skip_reason=lambda ctx: (
            None
            if ctx.config["synth"]["enabled"]
            else "synth.enabled is false (the cohort is real)"
        ),
    )


def _register_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.register import register_cohort

        r = ctx.config["register"]
        return register_cohort(
            cohort=ctx.cohort,
            out=ctx.path("registered"),
            method=r["method"],
            preset=r["preset"],
            params=r["params"],
            threads=r["threads"],
            workers=r["workers"],
            seed=ctx.seed,
            ids=ctx.ids(),
            force=ctx.force,
            isolate=ctx.isolate,
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        ids = ctx.ids()
        return {
            **_files(ctx.cohort, ids, "preRT_T2", "preRT_T2"),
            **_files(ctx.cohort, ids, "preRT_mask", "preRT_mask"),
            **_files(ctx.cohort, ids, "midRT_T2", "midRT_T2"),
            **{
                f"params/{i}": Path(p) for i, p in enumerate(ctx.config["register"]["params"] or [])
            },
        }

    def outputs(ctx: Context) -> list[Path]:
        from hntseg.cohort import expected_path

        out = ctx.path("registered")
        keys = ("preRT_T2_registered", "preRT_mask_registered")
        return [expected_path(out, pid, k) for pid in ctx.ids() for k in keys]

    def skip_reason(ctx: Context) -> str | None:
        if ctx.config["register"]["method"] == "provided" and not ctx.config["register"]["out"]:
            return "method provided: the _registered files in the cohort are used"
        return None

    return Stage(
        "register",
        run,
        inputs,
        outputs,
        options=lambda ctx: {
            **{k: v for k, v in ctx.config["register"].items() if k not in ("workers",)},
            "seed": ctx.seed,
            "ids": ctx.ids(),
        },
        per_case=True,
        after=("synth",),
        skip_reason=skip_reason,
    )


def _registered_masks(ctx: Context, ids: Sequence[str]) -> dict[str, Path]:
    return _files(ctx.path("registered"), ids, "preRT_mask_registered", "registered_mask")


def _registered_t2(ctx: Context, root: Path, ids: Sequence[str]) -> dict[str, Path]:
    """The registered pre-RT T2s, when a channel of the dataset is made from them."""
    from hntseg.nnunet import parse_channels

    if "pre_t2_registered" not in parse_channels(ctx.config["dataset"]["channels"]):
        return {}
    return _files(root, ids, "preRT_T2_registered", "registered_t2")


def _boxes_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.boxes import boxes_cohort

        return boxes_cohort(
            cohort=ctx.cohort,
            registered=ctx.path("registered"),
            out=ctx.path("boxes"),
            margin=_margin(ctx.config["boxes"]["margin"]),
            seed=ctx.seed,
            ids=ctx.ids(),
            force=ctx.force,
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        ids = ctx.ids()
        return {
            **_registered_masks(ctx, ids),
            **_files(ctx.cohort, ids, "preRT_mask", "preRT_mask"),
        }

    def outputs(ctx: Context) -> list[Path]:

        out = ctx.path("boxes")
        return [boxes_path(out, pid, phase) for pid in ctx.ids() for phase in PHASES]

    return Stage(
        "boxes",
        run,
        inputs,
        outputs,
        options=lambda ctx: {**ctx.config["boxes"], "seed": ctx.seed, "ids": ctx.ids()},
        per_case=True,
        after=("synth", "register"),
    )


def _margin(value: Any) -> int | tuple[int, int]:
    return tuple(value) if isinstance(value, list) else int(value)  # type: ignore[return-value]


def _boxes_files(ctx: Context, ids: Sequence[str]) -> dict[str, Path]:

    out = ctx.path("boxes")
    return {f"boxes/{pid}_{phase}": boxes_path(out, pid, phase) for pid in ids for phase in PHASES}


def _gradmap_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.gradmap import gradmap_cohort

        g = ctx.config["gradmap"]
        return gradmap_cohort(
            cohort=ctx.cohort,
            boxes=ctx.path("boxes"),
            out=ctx.path("gradmap"),
            sigma=g["sigma"],
            gain=g["gain"],
            ids=ctx.ids(),
            force=ctx.force,
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        ids = ctx.ids()
        return {
            **_boxes_files(ctx, ids),
            **_files(ctx.cohort, ids, "midRT_T2", "midRT_T2"),
            **_files(ctx.cohort, ids, "preRT_T2", "preRT_T2"),
        }

    def outputs(ctx: Context) -> list[Path]:

        out = ctx.path("gradmap")
        return [gradmap_path(out, pid, phase) for pid in ctx.ids() for phase in PHASES]

    return Stage(
        "gradmap",
        run,
        inputs,
        outputs,
        options=lambda ctx: {**ctx.config["gradmap"], "ids": ctx.ids()},
        per_case=True,
        after=("synth", "boxes"),
    )


def _qc_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.qc import qc_cohort

        return qc_cohort(
            cohort=ctx.cohort,
            boxes=ctx.path("boxes"),
            gradmaps=ctx.path("gradmap"),
            out=ctx.path("qc"),
            registered=ctx.path("registered"),
            ids=ctx.ids(),
            phases=ctx.config["qc"]["phases"],
            force=ctx.force,
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        ids = ctx.ids()
        return {
            **_boxes_files(ctx, ids),
            **_gradmap_files(ctx, ids),
            **_registered_masks(ctx, ids),
            **_files(ctx.cohort, ids, "midRT_mask", "midRT_mask"),
            # what the pictures show under the boxes and outlines
            **_files(ctx.cohort, ids, "midRT_T2", "midRT_T2"),
            **_files(ctx.cohort, ids, "preRT_T2", "preRT_T2"),
            **_files(ctx.cohort, ids, "preRT_mask", "preRT_mask"),
        }

    def outputs(ctx: Context) -> list[Path]:
        from hntseg.qc import qc_path

        out = ctx.path("qc")
        phases = ctx.config["qc"]["phases"]
        return [qc_path(out, pid, phase) for pid in ctx.ids() for phase in phases]

    return Stage(
        "qc",
        run,
        inputs,
        outputs,
        options=lambda ctx: {**ctx.config["qc"], "ids": ctx.ids()},
        per_case=True,
        after=("synth", "register", "boxes", "gradmap"),
        skip_reason=lambda ctx: None if ctx.config["qc"]["enabled"] else "qc.enabled is false",
    )


def _gradmap_files(ctx: Context, ids: Sequence[str]) -> dict[str, Path]:

    out = ctx.path("gradmap")
    return {
        f"gradmap/{pid}_{phase}": gradmap_path(out, pid, phase) for pid in ids for phase in PHASES
    }


def dataset_dir(ctx: Context, root: str = "nnUNet_raw") -> Path:
    d = ctx.config["dataset"]
    return ctx.work / root / f"Dataset{d['id']:03d}_{d['name']}"


def _dataset_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.dataset import build_dataset

        d = ctx.config["dataset"]
        return build_dataset(
            cohort=ctx.cohort,
            work=ctx.work,
            dataset_id=d["id"],
            name=d["name"],
            channels=d["channels"],
            pre_rt=d["pre_rt"],
            registered=ctx.path("registered"),
            # ready maps/boxes when their stages wrote them (else computed from the masks)
            gradmaps=_folder_or_none(ctx.path("gradmap")),
            boxes=_folder_or_none(ctx.path("boxes")),
            margin=_margin(ctx.config["boxes"]["margin"]),
            seed=ctx.seed,
            folds=d["n_folds"],
            ids=ctx.ids(),
            force=ctx.force,
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        ids = ctx.ids()
        return {
            **_files(ctx.cohort, ids, "midRT_T2", "midRT_T2"),
            **_files(ctx.cohort, ids, "midRT_mask", "midRT_mask"),
            **_files(ctx.cohort, ids, "preRT_T2", "preRT_T2"),
            **_files(ctx.cohort, ids, "preRT_mask", "preRT_mask"),
            **_registered_masks(ctx, ids),
            **_registered_t2(ctx, ctx.path("registered"), ids),
            **_gradmap_files(ctx, ids),
        }

    def outputs(ctx: Context) -> list[Path]:
        from hntseg.dataset import case_files, case_name
        from hntseg.nnunet import DATASET_RECORD

        d, raw = ctx.config["dataset"], dataset_dir(ctx)
        phases = PHASES if d["pre_rt"] else ("midRT",)
        names = [case_name(pid, phase) for pid in ctx.ids() for phase in phases]
        return [
            raw / "dataset.json",
            dataset_dir(ctx, "nnUNet_preprocessed") / "splits_final.json",
            raw / DATASET_RECORD,  # removed while a rebuild is under way
            *case_files(raw, names, len(d["channels"])),
        ]

    return Stage(
        "dataset",
        run,
        inputs,
        outputs,
        options=lambda ctx: {
            **ctx.config["dataset"],
            "margin": ctx.config["boxes"]["margin"],
            "seed": ctx.seed,
            "ids": ctx.ids(),
        },
        after=("synth", "register", "gradmap"),
    )


def _folder_or_none(folder: Path) -> Path | None:
    return folder if folder.is_dir() else None


def _plan_stage() -> Stage:
    """nnU-Net's fingerprint, ResEnc M plans and preprocessing, once for all folds (so that
    fold jobs on a cluster do not race on it)."""

    def run(ctx: Context) -> Any:
        from hntseg.train import plan_and_preprocess

        return plan_and_preprocess(
            work=ctx.work,
            dataset_id=ctx.config["dataset"]["id"],
            plans_override=_plans_override(ctx),
            force=ctx.force or ctx.changed,
        )

    return Stage(
        "plan",
        run,
        inputs=_dataset_files,
        # the record is written last, once preprocessing finished
        outputs=lambda ctx: [
            dataset_dir(ctx, "nnUNet_preprocessed") / f"{_plans()}.json",
            dataset_dir(ctx, "nnUNet_preprocessed") / _preprocess_record(),
        ],
        options=lambda ctx: {
            "dataset": ctx.config["dataset"]["id"],
            "plans_override": _plans_override(ctx),
        },
        after=("dataset",),
        group="train",
    )


def _plans_override(ctx: Context) -> dict[str, Any] | None:
    t = ctx.config["train"]
    override = {k: t[k] for k in ("batch_size", "patch_size") if t.get(k)}
    return override or None


def _preprocess_record() -> str:
    from hntseg.nnunet import PREPROCESS_RECORD

    return PREPROCESS_RECORD


def _plans() -> str:
    from hntseg.nnunet import PLANS

    return PLANS


def _dataset_files(ctx: Context) -> dict[str, Path]:
    return {
        "dataset.json": dataset_dir(ctx) / "dataset.json",
        "splits_final.json": dataset_dir(ctx, "nnUNet_preprocessed") / "splits_final.json",
        "imagesTr": dataset_dir(ctx) / "imagesTr",
        "labelsTr": dataset_dir(ctx) / "labelsTr",
    }


def _fold_dir(ctx: Context, fold: int) -> Path:
    """nnUNet_results/DatasetNNN_x/<trainer>__<plans>__3d_fullres/fold_F for this config's
    trainer: nnU-Net's own for the paper's 1000 x 250, hntseg's short trainer otherwise."""
    from hntseg.nnunet import FULL_TRAINER, SHORT_TRAINER, Paths, model_folder

    t = ctx.config["train"]
    full = t["epochs"] == 1000 and t["iterations_per_epoch"] == 250
    name = dataset_dir(ctx).name
    folder = model_folder(Paths(ctx.work), name, FULL_TRAINER if full else SHORT_TRAINER)
    return folder / f"fold_{fold}"


def _checkpoint(ctx: Context, fold: int) -> Path:
    return _fold_dir(ctx, fold) / "checkpoint_final.pth"


FOLD_MARKER = "hntseg_fold.json"  # in the fold folder: what the fold there is trained for


def _train_stage(fold: int) -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.io import write_json
        from hntseg.train import train

        t = ctx.config["train"]
        full = t["epochs"] == 1000 and t["iterations_per_epoch"] == 250  # the paper's trainer
        folder = _fold_dir(ctx, fold)
        final, latest = folder / "checkpoint_final.pth", folder / "checkpoint_latest.pth"
        current = _fold_fingerprint(ctx, stage)
        marker = folder / FOLD_MARKER
        made_for = _read_marker(marker)
        if ctx.force:
            retrain = True
        elif made_for is not None:  # the fold on disk says which inputs and options made it
            retrain = made_for != current
        else:  # no marker (a fold from `hntseg train`, or an older hntseg): the last state
            retrain = ctx.changed and _fold_changed(ctx, stage)
        if retrain:
            # an interrupted retraining must never leave the old model (or the old run's
            # checkpoint to continue from) as if it were the new one
            for name in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
                (folder / name).unlink(missing_ok=True)
        resume = not retrain and latest.is_file() and not final.is_file()
        if resume:
            log.info("train-fold%d: continuing from %s", fold, latest)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(marker, {"fingerprint": current, "fold": fold})
        train(
            work=ctx.work,
            dataset_id=ctx.config["dataset"]["id"],
            fold=fold,
            epochs=None if full else t["epochs"],
            iterations_per_epoch=None if full else t["iterations_per_epoch"],
            device=ctx.device or ctx.config["device"],
            seed=ctx.seed,
            continue_training=resume,
            plans_override=_plans_override(ctx),
            force=retrain,
        )
        return None

    # no device among the options: it does not change what a finished fold is (the fold's
    # hntseg_train.record.json and run.json record the device used); a fold in progress
    # continues on the device of the current run
    stage = Stage(
        f"train-fold{fold}",
        run,
        inputs=lambda ctx: {
            **_dataset_files(ctx),
            "plans": dataset_dir(ctx, "nnUNet_preprocessed") / f"{_plans()}.json",
        },
        outputs=lambda ctx: [_checkpoint(ctx, fold)],
        options=lambda ctx: {
            "fold": fold,
            "epochs": ctx.config["train"]["epochs"],
            "iterations_per_epoch": ctx.config["train"]["iterations_per_epoch"],
            "batch_size": ctx.config["train"]["batch_size"],
            "seed": ctx.seed,
        },
        after=("dataset", "plan"),
        group="train",
        uses_device=True,
    )
    return stage


_NOT_FOLD_OPTIONS = ("device",)  # in train-fold states of older versions; not a fold's identity


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _fold_fingerprint(ctx: Context, stage: Stage) -> str:
    """The inputs (by content) and options a fold is trained for."""
    from hntseg.pipeline import hash_path

    inputs = {k: hash_path(v) for k, v in stage.inputs(ctx).items()}
    return hashlib.sha256(_canon([inputs, dict(stage.options(ctx))]).encode()).hexdigest()


def _read_marker(path: Path) -> str | None:
    try:
        data = read_json(path, "fold marker") if path.is_file() else None
    except HntsegError:
        return None
    return data.get("fingerprint") if isinstance(data, dict) else None


def _fold_changed(ctx: Context, stage: Stage) -> bool:
    """Whether a train-fold stage's inputs or options really differ from its last finished
    run (the state the pipeline passes in ctx.extra): states of older versions also hold the
    device, and a device change alone must not retrain a finished fold."""
    from hntseg.pipeline import hash_path

    state = ctx.extra.get("previous_state")
    try:
        inputs = {k: hash_path(v) for k, v in stage.inputs(ctx).items()}
        options = dict(stage.options(ctx))
    except HntsegError:
        return True
    old = state.get("options") if isinstance(state, dict) else None
    if not isinstance(old, dict):
        return True
    old = {k: v for k, v in old.items() if k not in _NOT_FOLD_OPTIONS}
    return _canon(state.get("inputs")) != _canon(inputs) or _canon(old) != _canon(options)


def _predict_ids(ctx: Context, whole: bool = False) -> list[str]:
    """Patients to predict (and score): predict.ids, else every patient of predict.cohort
    (with the top-level `ids` filter when it is the training cohort); this part's share
    with --num-parts unless `whole`."""
    from hntseg.cohort import shard

    root = ctx.path("predict_cohort")
    if ctx.config["predict"]["cohort"]:  # another cohort: the top-level `ids` do not apply
        have = ctx.patient_ids(root)
    else:
        have = ctx.all_ids(root)
    wanted = ctx.config["predict"]["ids"]
    ids = have
    if wanted:
        missing = [i for i in wanted if i not in have]
        if missing:
            raise InputError(f"{root}: predict.ids: no patient {', '.join(missing)}")
        ids = [i for i in have if i in set(wanted)]
    return ids if whole else shard(ids, ctx.num_parts, ctx.part_id)


def _predict_folds(ctx: Context) -> list[int]:
    folds = ctx.config["predict"]["folds"]
    return list(folds if folds is not None else ctx.config["train"]["folds"])


def _predict_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.predict import ensemble_predict

        p = ctx.config["predict"]
        root = ctx.path("predict_cohort")
        return ensemble_predict(
            input=root,
            registered=ctx.path("predict_registered"),
            # ready maps (e.g. from hand-edited boxes), else computed with the fixed margin
            gradmaps=p["gradmaps"],
            work=ctx.work,
            dataset_id=ctx.config["dataset"]["id"],
            out=ctx.path("predictions"),
            folds=_predict_folds(ctx),
            tta=p["tta"],
            cpu_bf16=p["cpu_bf16"],
            margin=p["margin"],
            device=ctx.device or ctx.config["device"],
            ids=_predict_ids(ctx),
            force=ctx.force,
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        root = ctx.path("predict_cohort")
        ids = _predict_ids(ctx)
        reg = _files(ctx.path("predict_registered"), ids, "preRT_mask_registered", "registered")
        ready = ctx.config["predict"]["gradmaps"]
        if ready:
            reg.update({f"gradmap/{i}": gradmap_path(ready, i, "midRT") for i in ids})
        return {
            **_files(root, ids, "midRT_T2", "midRT_T2"),
            **reg,
            **_registered_t2(ctx, ctx.path("predict_registered"), ids),
            **{f"fold{f}": _checkpoint(ctx, f) for f in _predict_folds(ctx)},
        }

    def outputs(ctx: Context) -> list[Path]:
        return [ctx.path("predictions") / f"{pid}.nii.gz" for pid in _predict_ids(ctx)]

    return Stage(
        "predict",
        run,
        inputs,
        outputs,
        options=lambda ctx: {
            **{k: v for k, v in ctx.config["predict"].items()},
            "folds": _predict_folds(ctx),
            "dataset": ctx.config["dataset"]["id"],
            "device": ctx.config["device"],
        },
        per_case=True,
        after=("synth", "register", "train", "plan"),
        uses_device=True,
        ids=_predict_ids,
    )


def _evaluate_stage() -> Stage:
    def gt_root(ctx: Context) -> Path:
        return ctx.path("predict_cohort")

    def run(ctx: Context) -> Any:
        from hntseg.evaluate import evaluate, find_masks

        e = ctx.config["evaluate"]
        out = ctx.path("evaluation")
        gt, pred = gt_root(ctx), ctx.path("predictions")
        if ctx.config["ids"] or ctx.config["predict"]["ids"]:  # only the selected patients
            ids = _predict_ids(ctx, whole=True)
            gt = _link_all(out / "_gt", find_masks(gt, "ground truth"), ids)
            pred = _link_all(out / "_pred", find_masks(pred, "prediction"), ids)
        summary = evaluate(
            pred_dir=pred, gt_dir=gt, out=out, hd95=e["hd95"], figures=e["figures"], force=ctx.force
        )
        if isinstance(summary, dict) and "dscagg" in summary:
            return {"dscagg": summary["dscagg"]}
        return None

    def inputs(ctx: Context) -> dict[str, Path]:
        root = gt_root(ctx)
        return {
            **_files(root, _predict_ids(ctx, whole=True), "midRT_mask", "midRT_mask"),
            "predictions": ctx.path("predictions"),
        }

    def skip_reason(ctx: Context) -> str | None:
        """New patients without mid-RT masks (segmentation only): nothing to score."""
        root = gt_root(ctx)
        if not root.is_dir():  # not written yet (synth): decided when it exists
            return None
        try:
            masks = _files(root, _predict_ids(ctx, whole=True), "midRT_mask", "m")
        except HntsegError:  # bad ids: the stage's inputs say so
            return None
        if masks and not any(p.is_file() for p in masks.values()):
            return f"no mid-RT masks in {root} to score against (segmentation only)"
        return None

    return Stage(
        "evaluate",
        run,
        inputs,
        outputs=lambda ctx: (
            [
                ctx.path("evaluation") / "cases.csv",
                ctx.path("evaluation") / "summary.json",
            ]
            + (
                [ctx.path("evaluation") / "figures" / "dsc.png"]
                if ctx.config["evaluate"]["figures"]
                else []
            )
        ),
        options=lambda ctx: {**ctx.config["evaluate"], "ids": _predict_ids(ctx, whole=True)},
        after=("synth", "predict"),
        skip_reason=skip_reason,
    )


def _link_all(folder: Path, files: Mapping[str, Path], ids: Sequence[str]) -> Path:
    """A fresh folder of symbolic links `<id><suffix>` to the given patients' files."""
    import shutil

    from hntseg.io import image_suffix

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for pid in ids:
        if pid in files:
            src = Path(files[pid])
            (folder / f"{pid}{image_suffix(src)}").symlink_to(src.resolve())
    return folder


def default_stages(config: Mapping[str, Any]) -> list[Stage]:
    """The method's stage table, in order; training expands into one stage per fold."""
    return [
        _synth_stage(),
        _register_stage(),
        _boxes_stage(),
        _gradmap_stage(),
        _qc_stage(),
        _dataset_stage(),
        _plan_stage(),
        *[_train_stage(f) for f in config["train"]["folds"]],
        _predict_stage(),
        _evaluate_stage(),
    ]

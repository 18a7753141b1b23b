"""ensemble-predict: trained nnU-Net folds -> uint8 masks on each mid-RT grid.

Method (Ren et al.): the five folds' final checkpoints are ensembled on the test cases.
Inputs per case are the channels the model was trained with (its dataset.json): mid-RT T2,
the gradient map from the registered pre-RT mask's boxes with a FIXED margin (default 4
voxels, the middle of the training range 2-6), and/or the registered pre-RT T2 / mask.
Gradient maps are computed on the fly and cached under OUT/.cache (with records).

One `nnUNetPredictor` is loaded for all cases (all folds' weights in memory). Per case
nnU-Net preprocesses once; each fold predicts (sliding window, Gaussian weighting, mirror
TTA unless `tta=False`); the folds' SOFTMAX probabilities are averaged (`ensemble=
"softmax"`, like `nnUNetv2_ensemble`; `"logits"` averages logits as `nnUNetv2_predict -f
0 1 2 3 4` does) and resampled back by nnU-Net to the original grid; the argmax is
written as uint8 with the mid-RT T2's exact geometry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from hntseg.errors import InputError, StageError
from hntseg.io import (
    Grid,
    check_not_constant,
    check_out_folder,
    check_outputs_apart,
    check_same_grid,
    image_suffix,
    read_image,
    read_mask,
    remove_stale,
    strip_suffix,
    write_image,
)
from hntseg.log import log, progress, quiet_stdout, status
from hntseg.machine import native_bf16
from hntseg.nnunet import (
    CONFIGURATION,
    FULL_TRAINER,
    SHORT_TRAINER,
    Paths,
    check_device,
    dataset_channels,
    describe_device,
    model_folder,
    restores_process_state,
    select_device,
    set_environment,
)
from hntseg.records import is_done, write_record

CHECKPOINT = "checkpoint_final.pth"
CHALLENGE_INPUTS = {
    "t2": "mid-rt-t2w-head-neck",
    "pre_mask_registered": "registered-pre-rt-head-neck-segmentation",
    "pre_t2_registered": "registered-pre-rt-head-neck",
}
CHALLENGE_OUTPUT = Path("images") / "mri-head-neck-segmentation" / "output.mha"
ENSEMBLES = ("softmax", "logits")
MODEL_FILES = ("plans.json", "dataset.json")  # what nnU-Net reads beside the checkpoints


@dataclass
class PredictCase:
    """One case to predict: an output id and, per channel, a file (or what to compute)."""

    id: str
    t2: Path
    files: dict[str, Path]  # channel -> ready file (gradmap: ready map or mask for the boxes)
    gradmap_from_mask: bool = False


def check_options(
    dataset_id: int, folds: Sequence[int], margin: int, ensemble: str, device: str
) -> tuple[list[int], int]:
    """Check ensemble-predict's options before any work: (folds, margin) as ints.

    Each problem is a one-line InputError naming the option.
    """
    if isinstance(dataset_id, bool) or not 1 <= int(dataset_id) <= 999:
        raise InputError(f"--dataset-id {dataset_id}: must be 1..999 (nnU-Net's three digits)")
    folds = [int(f) for f in folds]
    if not folds or len(set(folds)) != len(folds):
        raise InputError(f"--folds {folds}: give distinct fold numbers")
    if min(folds) < 0:
        raise InputError(f"--folds {folds}: fold numbers are >= 0")
    if isinstance(margin, bool) or int(margin) < 0:
        raise InputError(f"--margin {margin}: must be a fixed number of voxels >= 0")
    if ensemble not in ENSEMBLES:
        raise InputError(f"--ensemble {ensemble!r}: expected softmax or logits")
    check_device(device)
    return folds, int(margin)


def _check_folder(path: str | Path | None, option: str) -> Path | None:
    """An explicitly given input folder (None: not given) must exist."""
    if path is None or str(path) == "":
        return None
    path = Path(path)
    if not path.is_dir():
        raise InputError(
            f"{path}: {option} folder not found"
            if not path.exists()
            else f"{path}: {option} is not a folder"
        )
    return path


def find_model(
    work: str | Path,
    dataset_id: int,
    folds: Sequence[int],
    trainer: str | None = None,
    configuration: str = CONFIGURATION,
    checkpoint: str = CHECKPOINT,
) -> Path:
    """The model folder holding every requested fold's checkpoint (full trainer preferred).

    A fold never trained, or a model folder without its plans.json / dataset.json, is a
    one-line InputError naming the file it looked for. Creates nothing.
    """
    paths = Paths(Path(work).resolve())
    prefix = f"Dataset{int(dataset_id):03d}_"
    results = paths.results
    found = (
        sorted(p.name for p in results.glob(prefix + "*") if p.is_dir()) if results.is_dir() else []
    )
    if not found:
        raise InputError(
            f"{results / (prefix + '*')}: no trained model for dataset {dataset_id} "
            "(run hntseg train)"
        )
    if len(found) > 1:  # as find_dataset: never guess which model a user meant
        raise InputError(f"{results}: several models with id {dataset_id}: {', '.join(found)}")
    name = found[0]
    trainers = [trainer] if trainer else [FULL_TRAINER, SHORT_TRAINER]
    folders = [model_folder(paths, name, t, configuration) for t in trainers]
    for folder in folders:
        if all((folder / f"fold_{f}" / checkpoint).is_file() for f in folds):
            for file in MODEL_FILES:
                if not (folder / file).is_file():
                    raise InputError(
                        f"{folder / file}: missing from the trained model "
                        "(copy the whole model folder, not only the checkpoints)"
                    )
            return folder
    best = max(folders, key=lambda d: sum((d / f"fold_{f}" / checkpoint).is_file() for f in folds))
    missing = [f for f in folds if not (best / f"fold_{f}" / checkpoint).is_file()]
    f = missing[0]
    raise InputError(
        f"{best / f'fold_{f}' / checkpoint}: fold {f} was never trained "
        f"(run hntseg train --work {work} --dataset-id {dataset_id} --fold {f})"
    )


def model_channels(folder: Path) -> list[str]:
    """The hntseg channel keys of a trained model (from its dataset.json)."""
    return dataset_channels(folder / "dataset.json", "model dataset.json")


# --------------------------------------------------------------------------- inputs


def _ready_cases(folder: Path, channels: Sequence[str]) -> list[PredictCase]:
    """`<case>_0000.nii.gz`, `_0001`, ... in one folder (nnU-Net's input layout)."""
    firsts = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and strip_suffix(p).endswith("_0000") and not p.name.startswith(".")
    )
    cases = []
    for first in firsts:
        case = strip_suffix(first)[: -len("_0000")]
        suffix = image_suffix(first)
        files = {}
        for i, ch in enumerate(channels):
            path = folder / f"{case}_{i:04d}{suffix}"
            if not path.is_file():
                raise InputError(f"{path}: missing channel {i} ({ch}) of case {case}")
            files[ch] = path
        out_id = case[: -len("_midRT")] if case.endswith("_midRT") else case
        same = next((c for c in cases if c.id == out_id), None)
        if same is not None:  # both would be written to OUT/<id>.nii.gz
            raise InputError(
                f"{first}: case {case} and {same.t2.name} both give the output {out_id}.nii.gz"
            )
        cases.append(PredictCase(out_id, files["t2"], files))
    return cases


def _select_ids(
    cases: list[PredictCase], ids: Iterable[str] | None, folder: Path
) -> list[PredictCase]:
    """Only the cases named in `ids` (output ids, e.g. `5` for `5_midRT_0000`); an id with
    no case is an error, as for a cohort."""
    if ids is None:
        return cases
    wanted = {str(i) for i in ids}
    unknown = sorted(wanted - {c.id for c in cases})
    if unknown:
        raise InputError(f"{folder}: no ready case for id(s) {', '.join(unknown)}")
    return [c for c in cases if c.id in wanted]


def _cohort_cases(
    cohort: Path,
    channels: Sequence[str],
    registered: Path | None,
    gradmaps: Path | None,
    ids: Iterable[str] | None,
) -> list[PredictCase]:
    from hntseg.cohort import discover, expected_path, find_gradmap

    patients = discover(cohort, required=("midRT_T2",), ids=ids)
    reg_root = Path(registered) if registered else cohort
    if reg_root.resolve() == cohort.resolve():
        reg = {p.id: p for p in patients}
    else:
        reg = {p.id: p for p in discover(reg_root, required=(), check_readable=False)}

    def registered_file(pid: str, key: str) -> Path:
        path = reg[pid].get(key) if pid in reg else None
        if path is None:
            raise InputError(f"{expected_path(reg_root, pid, key)}: missing (patient {pid})")
        return path

    cases = []
    for p in patients:
        (t2,) = p.require("midRT_T2")
        files: dict[str, Path] = {"t2": t2}
        from_mask = False
        for ch in channels:
            if ch == "gradmap":
                ready = find_gradmap(gradmaps, p.id, "midRT") if gradmaps is not None else None
                if ready is not None:
                    files[ch] = ready
                else:
                    files[ch] = registered_file(p.id, "preRT_mask_registered")
                    from_mask = True
            elif ch == "pre_t2_registered":
                files[ch] = registered_file(p.id, "preRT_T2_registered")
            elif ch == "pre_mask_registered":
                files[ch] = registered_file(p.id, "preRT_mask_registered")
        cases.append(PredictCase(p.id, t2, files, from_mask))
    return cases


def _cached_gradmap(
    case: PredictCase, t2: sitk.Image, margin: int, cache: Path, force: bool = False
) -> sitk.Image:
    """The inference gradient map (fixed margin), cached with a record (`force`: made
    again); a cached file that is damaged is made again too."""
    from hntseg.boxes import find_boxes
    from hntseg.gradmap import gradient_map

    mask_path = case.files["gradmap"]
    out = cache / f"{case.id}_midRT_gradmap.nii.gz"
    rec = cache / f"{case.id}_midRT_gradmap.record.json"
    inputs = {"t2": case.t2, "registered_mask": mask_path}
    params = {"margin": margin, "sigma": 1.0, "gain": 2.0}
    if not force and is_done(rec, inputs, params):
        try:
            return read_image(out, "cached gradient map")
        except InputError as exc:
            log.warning(f"{exc}; made again")
    mask = read_mask(mask_path, "registered pre-RT mask")
    check_same_grid(t2, mask, mask_path, case.t2)
    image = gradient_map(t2, find_boxes(mask, margin, seed=None, source=str(mask_path)))
    rec.unlink(missing_ok=True)  # killed between the two writes: no old record vouches
    write_image(image, out)
    write_record(rec, "gradmap (ensemble-predict)", inputs, params, [out])
    return image


def load_case(
    case: PredictCase, channels: Sequence[str], margin: int, cache: Path, force: bool = False
) -> tuple[sitk.Image, np.ndarray, dict[str, Any]]:
    """(mid-RT T2, channels array (c, z, y, x) float32, nnU-Net image properties);
    `force` makes a cached gradient map again."""
    t2 = read_image(case.t2, "mid-RT T2")
    check_not_constant(t2, case.t2, "mid-RT T2")
    arrays = []
    for ch in channels:
        if ch == "t2":
            image = t2
        elif ch == "gradmap" and case.gradmap_from_mask:
            image = _cached_gradmap(case, t2, margin, cache, force)
        elif ch == "pre_mask_registered":
            image = read_mask(case.files[ch], "registered pre-RT mask")
        else:
            image = read_image(case.files[ch], ch)
        check_same_grid(t2, image, case.files.get(ch, case.t2), case.t2)
        arrays.append(sitk.GetArrayFromImage(image).astype(np.float32))
    props = {
        "sitk_stuff": {
            "spacing": t2.GetSpacing(),
            "origin": t2.GetOrigin(),
            "direction": t2.GetDirection(),
        },
        "spacing": [abs(s) for s in reversed(t2.GetSpacing())],  # (z, y, x), nnU-Net's order
    }
    return t2, np.stack(arrays), props


# --------------------------------------------------------------------------- model


def _bad_checkpoint(folder: Path, folds: Sequence[int], checkpoint: str) -> str | None:
    """The first fold checkpoint torch cannot read, as a message; None if all load (the
    model's failure to load is then not a damaged file, and keeps its traceback)."""
    import torch

    for f in folds:
        path = folder / f"fold_{f}" / checkpoint
        try:
            torch.load(path, map_location="cpu", weights_only=False)
        except Exception as bad:
            reason = str(bad).strip().splitlines()[-1] if str(bad).strip() else type(bad).__name__
            return f"{path}: cannot load the checkpoint ({reason[:200]})"
    return None


class Ensemble:
    """One nnU-Net predictor with every fold loaded; predicts a case, averaging the folds."""

    def __init__(
        self,
        folder: Path,
        folds: Sequence[int],
        device: Any,
        tta: bool = True,
        ensemble: str = "softmax",
        checkpoint: str = CHECKPOINT,
        tile_step_size: float = 0.5,
        cpu_bf16: bool = False,
    ):
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        if ensemble not in ENSEMBLES:
            raise InputError(f"--ensemble {ensemble!r}: expected softmax or logits")
        self.ensemble = ensemble
        # bfloat16 autocast on a CPU: opt-in, as nnU-Net runs CPUs in float32 (and CUDA in
        # float16 autocast, which it sets itself)
        self.cpu_bf16 = cpu_bf16 and device.type == "cpu"
        if cpu_bf16 and not self.cpu_bf16:
            log.warning(f"--cpu-bf16 ignored on device {device.type} (it applies to CPUs)")
        if self.cpu_bf16 and native_bf16() is False:
            log.warning(
                "--cpu-bf16: this CPU has no native bfloat16 (no avx512_bf16, amx_bf16 or bf16 "
                "in /proc/cpuinfo); torch emulates it, far slower than float32 (20x measured "
                "on an AVX2-only CPU); drop --cpu-bf16 here"
            )
        self.predictor = nnUNetPredictor(
            tile_step_size=tile_step_size,
            use_gaussian=True,
            use_mirroring=tta,
            perform_everything_on_device=device.type == "cuda",
            device=device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        try:
            self.predictor.initialize_from_trained_model_folder(
                str(folder), use_folds=tuple(folds), checkpoint_name=checkpoint
            )
        except Exception:  # a damaged checkpoint: say which, in one line; else a bug
            bad = _bad_checkpoint(folder, folds, checkpoint)
            if bad is None:
                raise
            raise InputError(bad) from None

    def predict(self, data: np.ndarray, props: dict[str, Any]) -> np.ndarray:
        """Channels (c, z, y, x) -> label array (z, y, x) uint8 on the input grid."""
        import torch
        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
        from nnunetv2.inference.export_prediction import (
            convert_predicted_logits_to_segmentation_with_correct_shape,
        )

        p = self.predictor
        ppa = PreprocessAdapterFromNpy(
            [data],
            [None],
            [props],
            [None],
            p.plans_manager,
            p.dataset_json,
            p.configuration_manager,
            num_threads_in_multithreaded=1,
            verbose=False,
        )
        dct = next(ppa)
        # The folds are looped here, not in nnU-Net's predict_logits_from_preprocessed_data:
        # that caps torch's threads at nnUNet_def_n_proc (the worker count, 1 on a 2-core
        # machine), which halved CPU speed.
        total = None
        net = getattr(p.network, "_orig_mod", p.network)  # torch.compile'd or not
        bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16)
        with torch.inference_mode():
            for params in p.list_of_parameters:
                net.load_state_dict(params)
                with bf16:
                    fold = p.predict_sliding_window_return_logits(dct["data"])
                fold = fold.to("cpu").float()
                if self.ensemble == "softmax":
                    fold = torch.softmax(fold, dim=0)
                total = fold if total is None else total.add_(fold)
            assert total is not None  # initialize_from_trained_model_folder loads >= 1 fold
            total /= len(p.list_of_parameters)
            # softmax: the log of the mean probabilities (nnU-Net's softmax gives them
            # back); logits: the mean logits, as nnUNetv2_predict ensembles
            logits = torch.log(total).clamp_(min=-1e4) if self.ensemble == "softmax" else total
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits,
            p.plans_manager,
            p.configuration_manager,
            p.label_manager,
            dct["data_properties"],
        )
        return np.asarray(seg).astype(np.uint8)


def _write_prediction(seg: np.ndarray, t2: sitk.Image, out_path: Path) -> None:
    from hntseg.io import from_array

    labels = set(np.unique(seg).tolist())
    if not labels <= {0, 1, 2}:
        raise InputError(f"{out_path}: model predicted labels {sorted(labels)}, expected 0/1/2")
    image = from_array(seg, t2)
    problem = Grid.of(t2).mismatch(Grid.of(image), tol=0.0)
    if problem:  # from_array copies the geometry, so this would be a bug
        raise RuntimeError(f"{out_path}: prediction not on the mid-RT grid: {problem}")
    write_image(image, out_path)


@restores_process_state
def ensemble_predict(
    input: str | Path,
    work: str | Path,
    dataset_id: int,
    out: str | Path,
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    tta: bool = True,
    device: str = "auto",
    registered: str | Path | None = None,
    gradmaps: str | Path | None = None,
    margin: int = 4,
    ids: Iterable[str] | None = None,
    trainer: str | None = None,
    ensemble: str = "softmax",
    cache: str | Path | None = None,
    force: bool = False,
    cpu_bf16: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
) -> list[Path]:
    """Predict every case of INPUT (a cohort, or a folder of `<case>_0000.nii.gz` ...) into
    OUT/<id>.nii.gz (uint8, mid-RT grid). Cases whose record matches are skipped unless
    `force`; a failing case is reported and the others go on (StageError at the end).
    `cpu_bf16` runs the network in bfloat16 on a CPU: faster, slightly different masks.
    `ids`: only these patients of a cohort, or these cases of a ready folder (by output id).
    `num_parts`/`part_id`: only this part of the cases (round-robin, for job arrays)."""
    from hntseg.cohort import report_gradmaps, shard

    shard(list(range(max(num_parts, 1))), num_parts, part_id)  # the part is valid
    folds, margin = check_options(dataset_id, folds, margin, ensemble, device)
    reg_dir = _check_folder(registered, "--registered")
    gradmap_dir = _check_folder(gradmaps, "--gradmaps")
    folder = find_model(work, dataset_id, folds, trainer)
    channels = model_channels(folder)
    src, out = Path(input), Path(out)
    if not src.is_dir():
        raise InputError(f"{src}: input folder not found")
    check_out_folder(out)  # before the model is loaded: a typo'd --out costs nothing
    ready = any(strip_suffix(p).endswith("_0000") for p in src.iterdir() if p.is_file())
    if ready:
        cases = _select_ids(_ready_cases(src, channels), ids, src)
    else:
        cases = _cohort_cases(src, channels, reg_dir, gradmap_dir, ids)
        if gradmap_dir is not None and "gradmap" in channels:
            given = sum(not c.gradmap_from_mask for c in cases)
            report_gradmaps(Path(gradmap_dir), given, len(cases))
    if not cases:
        raise InputError(f"{src}: no cases to predict")
    cases = shard(cases, num_parts, part_id)
    cache_dir = Path(cache) if cache else out / ".cache"
    checkpoints = {f"fold{f}": folder / f"fold_{f}" / CHECKPOINT for f in folds}
    params = {
        "folds": folds,
        "tta": tta,
        "margin": margin,
        "ensemble": ensemble,
        "channels": channels,
        "model": str(folder),
    }
    if cpu_bf16:  # only when set, so records written before the option still match
        params["cpu_bf16"] = True
    todo = []
    for case in cases:
        out_path = out / f"{case.id}.nii.gz"
        inputs = {**{f"channel/{k}": v for k, v in case.files.items()}, **checkpoints}
        rec = out / ".records" / f"{case.id}.record.json"
        if not force and is_done(rec, inputs, params):
            continue
        check_outputs_apart(inputs, (out_path,))
        todo.append((case, out_path, inputs, rec))
    outputs = [out / f"{c.id}.nii.gz" for c in cases]
    if not todo:
        log.info(f"{out}: all {len(cases)} predictions up to date")
        return outputs
    set_environment(work, workers=None, create=False)  # before nnunetv2 is imported
    torch_device = select_device(device)
    _announce("ensemble-predict", torch_device, folds, folder, tta, cpu_bf16)
    with quiet_stdout():  # nnU-Net's own prints (trainer lookup, device notes)
        model = Ensemble(folder, folds, torch_device, tta, ensemble, cpu_bf16=cpu_bf16)
    failed: list[str] = []
    for case, out_path, inputs, rec in progress(todo, "ensemble-predict"):
        try:
            # a case that now fails keeps no mask of an earlier run (evaluate would score it)
            remove_stale(rec, [out_path])
            t2, data, props = load_case(case, channels, margin, cache_dir, force)
            with quiet_stdout():
                seg = model.predict(data, props)
            _write_prediction(seg, t2, out_path)
            write_record(rec, "ensemble-predict", inputs, params, [out_path])
        except InputError as exc:
            log.error(str(exc))
            failed.append(f"{case.id}: {exc}")
    if failed:
        raise StageError(f"{len(failed)} of {len(todo)} case(s) failed; first: {failed[0]}")
    return outputs


def _announce(
    what: str, torch_device: Any, folds: Sequence[int], folder: Path, tta: bool, bf16: bool
) -> None:
    """Which device, folds and model a prediction uses; loudly, when a smoke-run model."""
    status(
        f"{what}: device {describe_device(torch_device)}, folds "
        f"{' '.join(map(str, folds))} of {folder.name}, TTA {'on' if tta else 'off'}"
        + (", bfloat16" if bf16 and torch_device.type == "cpu" else "")
    )
    if SHORT_TRAINER in folder.name:
        log.warning(f"{folder.name}: a SMOKE-RUN model (short training), not a usable model")


@restores_process_state
def challenge_predict(
    work: str | Path,
    dataset_id: int,
    input_root: str | Path = "/input",
    output_root: str | Path = "/output",
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    tta: bool = True,
    device: str = "auto",
    margin: int = 4,
    trainer: str | None = None,
    ensemble: str = "softmax",
    cpu_bf16: bool = False,
) -> Path:
    """Task 2 container mode: one patient's .mha inputs under INPUT_ROOT/images/... ->
    OUTPUT_ROOT/images/mri-head-neck-segmentation/output.mha (uint8, mid-RT grid)."""
    import tempfile

    folds, margin = check_options(dataset_id, folds, margin, ensemble, device)
    folder = find_model(work, dataset_id, folds, trainer)
    channels = model_channels(folder)
    images = Path(input_root) / "images"
    files: dict[str, Path] = {}
    for ch in ["t2", *channels]:
        key = "pre_mask_registered" if ch == "gradmap" else ch
        sub = images / CHALLENGE_INPUTS[key]
        found = sorted(sub.glob("*.mha")) if sub.is_dir() else []
        if len(found) != 1:
            raise InputError(f"{sub}: expected one .mha file, found {len(found)}")
        files[ch] = found[0]
    case = PredictCase("output", files["t2"], files, gradmap_from_mask="gradmap" in channels)
    out_path = Path(output_root) / CHALLENGE_OUTPUT
    check_out_folder(out_path.parent, "--output-root")  # before the model load, not after
    set_environment(work, workers=None, create=False)  # before nnunetv2 is imported
    torch_device = select_device(device)
    _announce("ensemble-predict (challenge)", torch_device, folds, folder, tta, cpu_bf16)
    with tempfile.TemporaryDirectory() as tmp:
        t2, data, props = load_case(case, channels, margin, Path(tmp))
    with quiet_stdout():
        model = Ensemble(folder, folds, torch_device, tta, ensemble, cpu_bf16=cpu_bf16)
        seg = model.predict(data, props)
    _write_prediction(seg, t2, out_path)
    return out_path

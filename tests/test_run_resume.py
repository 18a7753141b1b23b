"""`hntseg run` redoes what changed and never keeps a stale result: stage inputs, --force
reaching every stage, outputs rewritten by another run, in-place edits, fewer phantoms."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

from hntseg import pipeline
from hntseg.boxes import boxes_case, read_boxes
from hntseg.pipeline import load_config, run_pipeline


def _config(folder: Path, **changes) -> Path:
    """A tiny chain on 2 phantoms without nnU-Net: synth -> boxes -> gradmap -> qc."""
    data = {
        "work": "work",
        "cohort": "work/cohort",
        "synth": {"enabled": True, "patients": 2, "size": [32, 32, 8]},
        "register": {"method": "provided"},
        "skip": ["dataset", "train", "predict", "evaluate"],
    }
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"cfg{len(list(folder.glob('cfg*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(path: Path, **kwargs) -> dict[str, str]:
    record = run_pipeline(load_config(path), config_path=path, **kwargs)
    return {s["stage"]: s["status"] for s in record["stages"]}


def test_qc_is_redrawn_when_the_t2_it_shows_changes(tmp_path):
    """A T2 edited outside every box leaves its gradient map byte-identical, but the QC
    picture shows the T2: qc must redraw it (it watched boxes, maps and masks only)."""
    cfg = _config(tmp_path)
    _run(cfg)
    work = tmp_path / "work"
    t2 = work / "cohort" / "1" / "midRT" / "1_midRT_T2.nii.gz"
    png = next((work / "qc").rglob("1_midRT*.png"))
    before = png.read_bytes()
    image = sitk.ReadImage(str(t2))
    arr = sitk.GetArrayFromImage(image)
    boxes = read_boxes(next((work / "priors").rglob("1_midRT_boxes.json")))
    inside = np.zeros(arr.shape, bool)
    for box in boxes.boxes:
        inside[box.slices] = True
    arr[~inside] += 500.0  # outside every box: the gradient map does not change
    edited = sitk.GetImageFromArray(arr)
    edited.CopyInformation(image)
    sitk.WriteImage(edited, str(t2))
    gradmap = next((work / "priors").rglob("1_midRT_gradmap.nii.gz")).read_bytes()
    status = _run(cfg)
    assert next((work / "priors").rglob("1_midRT_gradmap.nii.gz")).read_bytes() == gradmap
    assert status["qc"] == "ran"
    assert png.read_bytes() != before


def test_force_reaches_synth_and_evaluate_and_predict(tmp_path, monkeypatch):
    """`--force STAGE` must redo the stage's finished cases; synth, evaluate and predict
    were called without it and answered "up to date"."""
    from hntseg import evaluate, predict, synth
    from hntseg.engine import Context

    path = _config(tmp_path)
    _run(path)  # the cohort, for the patient ids
    seen: dict[str, object] = {}

    def recorder(name):
        def call(*args, **kwargs):
            seen[name] = kwargs.get("force")
            return {}

        return call

    monkeypatch.setattr(synth, "synth_cohort", recorder("synth"))
    monkeypatch.setattr(evaluate, "evaluate", recorder("evaluate"))
    monkeypatch.setattr(predict, "ensemble_predict", recorder("predict"))
    cfg = load_config(path)
    stages = {s.name: s for s in pipeline.default_stages(cfg)}
    for name in ("synth", "evaluate", "predict"):
        stages[name].run(Context(cfg, force=True))
    assert seen == {"synth": True, "evaluate": True, "predict": True}


def test_outputs_rewritten_by_another_run_are_redone(tmp_path):
    """A whole run (margin 2-6), then a job array's two parts with margin 3 (their own
    state files), then the whole run again: its state vouched for the boxes the parts had
    rewritten, and the margin-3 boxes were kept."""
    a = _config(tmp_path, boxes={"margin": "2-6"})
    b = _config(tmp_path, boxes={"margin": 3})
    _run(a)
    boxes = next((tmp_path / "work" / "priors").rglob("1_midRT_boxes.json"))
    assert read_boxes(boxes).margin == (2, 6)
    for part in (0, 1):
        _run(b, num_parts=2, part_id=part)
    assert read_boxes(boxes).margin == 3
    status = _run(a)
    assert status["boxes"] == "ran" and read_boxes(boxes).margin == (2, 6)
    assert _run(a)["boxes"] == "skipped"  # and then it is done again


def test_qc_plan_follows_boxes_when_gradmap_is_supplied(tmp_path):
    """With gradmap in skip:, a margin change reruns boxes and therefore qc: the dry run
    said qc would be skipped."""
    _run(_config(tmp_path))
    from hntseg.engine import Context

    skip = ["gradmap", "dataset", "train", "predict", "evaluate"]
    cfg = load_config(_config(tmp_path, boxes={"margin": 4}, skip=skip))
    plan = {d.stage: d.action for d in pipeline.plan(Context(cfg), pipeline.default_stages(cfg))}
    assert plan["boxes"] == "run" and plan["qc"] == "run"


def test_an_in_place_edit_with_its_time_set_back_is_redone(tmp_path):
    """Same inode, same size, modification time restored (`touch -r`, `rsync --inplace
    -t`): the change time still tells, so the case is redone, not taken as done."""
    arr = np.zeros((6, 16, 16), np.uint8)
    arr[2:4, 3:6, 3:6] = 1
    mask = tmp_path / "m.nii"  # uncompressed: the edit keeps the size
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(mask))
    out = tmp_path / "b.json"
    assert boxes_case(mask, out, 0, seed=0)[1]
    st = mask.stat()
    moved = np.zeros_like(arr)
    moved[2:4, 9:12, 9:12] = 1
    data = mask.read_bytes()
    raw = sitk.GetImageFromArray(moved)
    sitk.WriteImage(raw, str(tmp_path / "n.nii"))
    new = (tmp_path / "n.nii").read_bytes()
    assert len(new) == len(data)
    with mask.open("r+b") as fh:  # the same inode
        fh.write(new)
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert mask.stat().st_ino == st.st_ino and mask.stat().st_mtime_ns == st.st_mtime_ns
    boxset, ran = boxes_case(mask, out, 0, seed=0)
    assert ran and boxset.boxes[0].start[2] == 9


def test_fewer_phantoms_remove_the_others_but_not_user_files(tmp_path):
    from hntseg.cohort import discover
    from hntseg.synth import synth_cohort

    root = tmp_path / "c"
    synth_cohort(root, 3, seed=0, size=(24, 24, 8))
    (root / "3" / "notes.txt").write_text("mine")
    synth_cohort(root, 2, seed=0, size=(32, 32, 8))
    assert not list((root / "3").rglob("*.nii.gz"))
    assert (root / "3" / "notes.txt").read_text() == "mine"
    (root / "3" / "notes.txt").unlink()
    synth_cohort(root, 3, seed=0, size=(32, 32, 8))
    synth_cohort(root, 1, seed=0, size=(32, 32, 8))
    assert not (root / "2").exists() and not (root / "3").exists()
    assert [p.id for p in discover(root, required=())] == ["1"]


def test_qc_out_is_an_option(tmp_path):
    """Pictures drawn into qc.out, then the default folder again: its old pictures must not
    be taken as done (qc's options left out `out`)."""
    path = _config(tmp_path, qc={"out": "work/qc_alt"})
    _run(path)
    cfg = load_config(path)
    options = next(s for s in pipeline.default_stages(cfg) if s.name == "qc").options
    from hntseg.engine import Context

    assert options(Context(cfg))["out"].endswith("qc_alt")

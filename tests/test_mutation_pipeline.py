"""Mutation-audit tests for `hntseg run`: config values reach their stage, the engine's
decisions (force, only, aliases, groups, changed inputs), run records and hashing.

Each test here kills mutants that the rest of the suite let through: a config option
dropped on its way to a stage function, a --force that no longer reaches the stage, a
forced run that records the wrong inputs, and so on. The heavy stage functions are
replaced by stubs that record their arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hntseg import pipeline
from hntseg.engine import Context, Stage
from hntseg.errors import HntsegError, InputError
from hntseg.io import read_json, write_json
from hntseg.pipeline import hash_path, resolve_config, run_pipeline


def _cohort(root: Path, n: int = 3) -> Path:
    for pid in range(1, n + 1):
        (root / str(pid) / "midRT").mkdir(parents=True)
        (root / str(pid) / "midRT" / f"{pid}_midRT_T2.nii.gz").write_bytes(b"x")
    return root


# every option away from its default, so that a stage wired to a constant is caught
CUSTOM = {
    "seed": 7,
    "device": "cpu",
    "register": {
        "method": "elastix",
        "preset": "challenge",
        "params": ["p.txt"],
        "threads": 3,
        "workers": 2,
    },
    "boxes": {"margin": 3},
    "gradmap": {"sigma": 2.5, "gain": 1.5},
    "qc": {"phases": ["midRT", "preRT"]},
    "dataset": {"id": 12, "name": "X", "channels": ["t2"], "pre_rt": False, "n_folds": 3},
    "train": {"folds": [0, 2], "epochs": 3, "iterations_per_epoch": 4, "batch_size": 2},
    "predict": {"margin": 6, "tta": False, "cpu_bf16": True, "folds": [1], "gradmaps": "gm"},
    "evaluate": {"hd95": "directed", "figures": False},
}


@pytest.fixture
def custom(tmp_path):
    cohort = _cohort(tmp_path / "c")
    data = {"cohort": str(cohort), "work": str(tmp_path / "w"), **CUSTOM}
    return resolve_config(data, "t", tmp_path)


def _stage(cfg: dict, name: str) -> Stage:
    return next(s for s in pipeline.default_stages(cfg) if s.name == name)


def _capture(monkeypatch, target: str) -> list[dict]:
    calls: list[dict] = []

    def fake(*args, **kwargs):
        calls.append({"args": args, **kwargs})

    monkeypatch.setattr(target, fake)
    return calls


# --------------------------------------------------------------------------- config -> stage


def test_register_gets_every_register_option(custom, monkeypatch, tmp_path):
    calls = _capture(monkeypatch, "hntseg.register.register_cohort")
    ctx = Context(custom, force=True)
    _stage(custom, "register").run(ctx)
    kw = calls[0]
    assert kw["method"] == "elastix" and kw["preset"] == "challenge"
    assert kw["params"] == [str(tmp_path / "p.txt")]
    assert kw["threads"] == 3 and kw["workers"] == 2 and kw["seed"] == 7
    assert kw["ids"] == ["1", "2", "3"] and kw["force"] is True
    assert kw["out"] == Path(custom["work"]) / "registered"


def test_boxes_gradmap_qc_get_their_options(custom, monkeypatch):
    boxes = _capture(monkeypatch, "hntseg.boxes.boxes_cohort")
    grad = _capture(monkeypatch, "hntseg.gradmap.gradmap_cohort")
    qc = _capture(monkeypatch, "hntseg.qc.qc_cohort")
    ctx = Context(custom, force=True)
    for name in ("boxes", "gradmap", "qc"):
        _stage(custom, name).run(ctx)
    assert boxes[0]["margin"] == 3 and boxes[0]["seed"] == 7 and boxes[0]["force"] is True
    assert grad[0]["sigma"] == 2.5 and grad[0]["gain"] == 1.5 and grad[0]["force"] is True
    assert qc[0]["phases"] == ["midRT", "preRT"] and qc[0]["force"] is True
    custom["boxes"]["margin"] = [2, 6]
    _stage(custom, "boxes").run(ctx)
    assert boxes[1]["margin"] == (2, 6)  # a range, not a fixed margin


def test_dataset_gets_its_options(custom, monkeypatch):
    calls = _capture(monkeypatch, "hntseg.dataset.build_dataset")
    _stage(custom, "dataset").run(Context(custom))
    kw = calls[0]
    assert kw["channels"] == ["t2"] and kw["pre_rt"] is False and kw["folds"] == 3
    assert kw["margin"] == 3 and kw["seed"] == 7 and kw["dataset_id"] == 12 and kw["name"] == "X"


def test_synth_gets_the_seed(custom, monkeypatch):
    calls = _capture(monkeypatch, "hntseg.synth.synth_cohort")
    _stage(custom, "synth").run(Context(custom))
    assert calls[0]["args"][2] == 7


def test_train_gets_device_seed_and_short_trainer(custom, monkeypatch):
    calls = _capture(monkeypatch, "hntseg.train.train")
    _stage(custom, "train-fold2").run(Context(custom, device="cuda"))
    kw = calls[0]
    assert kw["fold"] == 2 and kw["device"] == "cuda" and kw["seed"] == 7
    assert kw["epochs"] == 3 and kw["iterations_per_epoch"] == 4
    assert kw["plans_override"] == {"batch_size": 2}


def test_only_the_papers_epochs_and_iterations_pick_the_full_trainer(custom):
    from hntseg.nnunet import FULL_TRAINER, SHORT_TRAINER
    from hntseg.stages import _fold_dir

    for epochs, iters, trainer in ((1000, 250, FULL_TRAINER), (1000, 4, SHORT_TRAINER)):
        custom["train"].update(epochs=epochs, iterations_per_epoch=iters)
        assert _fold_dir(Context(custom), 0).parent.name.startswith(trainer + "__")


def test_predict_gets_its_options(custom, monkeypatch, tmp_path):
    calls = _capture(monkeypatch, "hntseg.predict.ensemble_predict")
    _stage(custom, "predict").run(Context(custom, device="cuda"))
    kw = calls[0]
    assert kw["tta"] is False and kw["cpu_bf16"] is True and kw["margin"] == 6
    assert kw["folds"] == [1] and kw["device"] == "cuda" and kw["dataset_id"] == 12
    assert kw["gradmaps"] == str(tmp_path / "gm")
    assert kw["ids"] == ["1", "2", "3"]


def test_predict_inputs_hold_the_folds_and_ready_gradmaps(custom):
    keys = set(_stage(custom, "predict").inputs(Context(custom)))
    assert {"fold1"} == {k for k in keys if k.startswith("fold")}  # predict.folds, not train's
    assert {"gradmap/1", "gradmap/2", "gradmap/3"} <= keys


def test_predict_ids_select_and_shard(custom):
    custom["predict"]["ids"] = ["3", "1"]
    stage = _stage(custom, "predict")
    assert stage.outputs(Context(custom)) == [
        Path(custom["work"]) / "predictions" / f"{i}.nii.gz" for i in ("1", "3")
    ]
    custom["predict"]["ids"] = None
    parts = [stage.ids(Context(custom, num_parts=2, part_id=p)) for p in (0, 1)]
    assert sorted(parts[0] + parts[1]) == ["1", "2", "3"] and not set(parts[0]) & set(parts[1])


def test_evaluate_gets_hd95_and_figures(custom, monkeypatch):
    calls = _capture(monkeypatch, "hntseg.evaluate.evaluate")
    _stage(custom, "evaluate").run(Context(custom))
    assert calls[0]["hd95"] == "directed" and calls[0]["figures"] is False


def test_evaluate_with_top_level_ids_scores_only_those(custom, monkeypatch):
    calls = _capture(monkeypatch, "hntseg.evaluate.evaluate")
    custom["ids"] = ["2"]
    monkeypatch.setattr(
        "hntseg.evaluate.find_masks",
        lambda root, what: {i: Path(root) / f"{i}.nii.gz" for i in ("1", "2", "3")},
    )
    _stage(custom, "evaluate").run(Context(custom))
    gt = Path(calls[0]["gt_dir"])
    assert gt.name == "_gt" and sorted(p.name for p in gt.iterdir()) == ["2.nii.gz"]


def test_evaluate_runs_when_some_masks_are_missing(custom):
    """Only a cohort without any mid-RT mask is segmentation-only."""
    cohort = Path(custom["cohort"])
    (cohort / "1" / "midRT" / "1_midRT_mask.nii.gz").write_bytes(b"x")
    assert _stage(custom, "evaluate").skip_reason(Context(custom)) is None


@pytest.mark.parametrize(
    "stage, section, key, value",
    [
        ("register", "", "seed", 8),
        ("register", "register", "preset", "fast"),
        ("boxes", "boxes", "margin", 5),
        ("gradmap", "gradmap", "sigma", 1.0),
        ("gradmap", "gradmap", "gain", 2.0),
        ("qc", "qc", "phases", ["midRT"]),
        ("dataset", "boxes", "margin", 5),
        ("dataset", "dataset", "pre_rt", True),
        ("train-fold0", "train", "batch_size", 4),
        ("train-fold0", "", "seed", 8),
        ("predict", "predict", "tta", True),
        ("predict", "predict", "margin", 2),
        ("evaluate", "evaluate", "hd95", "pooled"),
        ("evaluate", "evaluate", "figures", True),
    ],
)
def test_an_option_change_reruns_its_stage(custom, stage, section, key, value):
    before = dict(_stage(custom, stage).options(Context(custom)))
    (custom[section] if section else custom)[key] = value
    assert dict(_stage(custom, stage).options(Context(custom))) != before


def test_provided_registration_is_skipped_unless_out_is_set(custom):
    custom["register"]["method"] = "provided"
    assert "method provided" in _stage(custom, "register").skip_reason(Context(custom))
    custom["register"]["out"] = "/somewhere"
    assert _stage(custom, "register").skip_reason(Context(custom)) is None


def test_plan_is_forced_when_its_dataset_changed(tmp_path, monkeypatch):
    """nnU-Net's preprocessing of an old dataset must not be kept for a rebuilt one."""
    cfg = resolve_config({"cohort": str(_cohort(tmp_path / "c")), "work": "w"}, "t", tmp_path)
    ctx = Context(cfg)
    raw = pipeline.dataset_dir(ctx)
    for path in _stage(cfg, "plan").inputs(ctx).values():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            path.write_text("{}")
        else:
            path.mkdir(exist_ok=True)
    calls: list[dict] = []

    def fake_plan(**kw):
        calls.append(kw)
        for out in _stage(cfg, "plan").outputs(ctx):
            out.write_text("{}")

    monkeypatch.setattr("hntseg.train.plan_and_preprocess", fake_plan)
    stages = [_stage(cfg, "plan")]
    run_pipeline(cfg, stages)
    assert calls[-1]["force"] is False
    (raw / "dataset.json").write_text('{"changed": 1}')
    run_pipeline(cfg, stages)
    assert calls[-1]["force"] is True


# --------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    "data, check",
    [
        ({"dataset": {"id": 999}}, lambda c: c["dataset"]["id"] == 999),
        ({"gradmap": {"sigma": 100}}, lambda c: c["gradmap"]["sigma"] == 100.0),
        ({"boxes": {"margin": "3-3"}}, lambda c: c["boxes"]["margin"] == 3),
        ({"boxes": {"margin": 0}}, lambda c: c["boxes"]["margin"] == 0),
        ({"boxes": {"margin": [2, 2]}}, lambda c: c["boxes"]["margin"] == [2, 2]),
        ({"ids": [2, "5"]}, lambda c: c["ids"] == ["2", "5"]),
        ({"skip": ["registration"]}, lambda c: c["skip"] == ["register"]),
        ({"train": {"patch_size": [1, 1, 1]}}, lambda c: c["train"]["patch_size"] == [1, 1, 1]),
        (
            {"dataset": {"channels": "paper"}},
            lambda c: c["dataset"]["channels"] == ["t2", "gradmap"],
        ),
    ],
)
def test_edge_values_are_accepted(tmp_path, data, check):
    (tmp_path / "c").mkdir()
    assert check(resolve_config({"cohort": "c", **data}, "t", tmp_path))


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"train": {"folds": [0, 0]}}, "train.folds"),
        ({"qc": {"phases": ["midRT", "midRT"]}}, "qc.phases"),
        ({"boxes": {"margin": "6-2"}}, "boxes.margin"),
        ({"boxes": {"margin": [6, 2]}}, "boxes.margin"),
        ({"boxes": {"margin": -1}}, "boxes.margin"),
        ({"train": {"patch_size": [0, 1, 1]}}, "train.patch_size"),
        ({"qc": {"enabled": 1}}, "qc.enabled"),
        ({"seed": -1}, "seed: expected an integer >= 0"),
        ({"dataset": {"name": ""}}, "dataset.name"),
        ({"work": ""}, "work: expected a path"),
        ({"synth": {"spacing": [1.0, 1.0, 0]}}, "synth.spacing: expected three positive numbers"),
        ({"skip": ["synth"]}, "skip: synth is not skipped"),
        ({"skip": ["predict"]}, "predict.out: set it"),
        ({"predict": {"folds": [5]}}, "predict.folds: fold 5 does not exist"),
        ({"predict": {"cohort": "nowhere"}}, "predict.cohort"),
    ],
)
def test_bad_values_are_refused(tmp_path, data, needle):
    (tmp_path / "c").mkdir()
    with pytest.raises(InputError, match=needle):
        resolve_config({"cohort": "c", **data}, "t", tmp_path)


def test_synth_size_and_spacing_bounds(tmp_path):
    base = {"work": str(tmp_path / "w"), "synth": {"enabled": True}}
    for synth, ok in (
        ({"size": [8, 8, 8]}, True),
        ({"size": [8, 8, 7]}, False),
        ({"spacing": [1.0, 1.0, 0]}, False),
    ):
        data = {**base, "synth": {**base["synth"], **synth}}
        if ok:
            assert resolve_config(data, "t")["synth"]["size"] == [8, 8, 8]
        else:
            with pytest.raises(InputError, match="synth.s"):
                resolve_config(data, "t")


def test_every_path_is_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "c").mkdir()
    outs = {s: {"out": "o"} for s in ("register", "boxes", "gradmap", "qc", "predict", "evaluate")}
    outs["register"]["params"] = "p.txt"
    outs["predict"].update(registered="r", gradmaps="g")
    cfg = resolve_config({"cohort": "c", **outs}, "t", tmp_path)
    for section in outs:
        assert cfg[section]["out"] == str(tmp_path / "o"), section
    assert cfg["register"]["params"] == [str(tmp_path / "p.txt")]
    assert cfg["predict"]["registered"] == str(tmp_path / "r")
    assert cfg["predict"]["gradmaps"] == str(tmp_path / "g")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_config({"cohort": "~/c"}, "t", tmp_path / "elsewhere")["cohort"] == str(
        tmp_path / "c"
    )


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    from hntseg.config import load_config

    (tmp_path / "cfgdir" / "c").mkdir(parents=True)
    path = tmp_path / "cfgdir" / "x.yaml"
    path.write_text("cohort: c\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(path)["cohort"] == str(tmp_path / "cfgdir" / "c")


# --------------------------------------------------------------------------- engine


def _recording_stage(name: str, seen: list, out: str, **kw) -> Stage:
    """A stage that reads WORK/in.json, writes WORK/<out> and records (force, changed)."""

    def run(ctx: Context) -> dict:
        seen.append((name, ctx.force, ctx.changed))
        write_json(ctx.work / out, read_json(ctx.work / "in.json"))
        return {"n": 1}

    return Stage(
        name,
        run,
        inputs=lambda ctx: {"in": ctx.work / "in.json"},
        outputs=lambda ctx: [ctx.work / out],
        **kw,
    )


@pytest.fixture
def work(tmp_path):
    cohort = _cohort(tmp_path / "c", n=5)  # one per fold (the fake "dataset" stage)
    cfg = resolve_config({"cohort": str(cohort), "work": "w"}, "t", tmp_path)
    write_json(Path(cfg["work"]) / "in.json", {"v": 1})
    return cfg


def test_changed_inputs_reach_the_stage_as_ctx_changed(work):
    seen: list = []
    stages = [_recording_stage("a", seen, "a.json")]
    run_pipeline(work, stages)
    write_json(Path(work["work"]) / "in.json", {"v": 2})
    record = run_pipeline(work, stages)
    assert seen == [("a", False, False), ("a", False, True)]
    assert record["stages"][0]["result"] == {"n": 1}


def test_force_and_only_match_groups_and_aliases(work):
    seen: list = []
    stages = [
        _recording_stage("train-fold0", seen, "t.json", group="train"),
        _recording_stage("dataset", seen, "d.json"),
        _recording_stage("predict", seen, "p.json"),
    ]
    run_pipeline(work, stages)
    seen.clear()
    run_pipeline(work, stages, force=["train"])
    assert seen == [("train-fold0", True, False)]
    seen.clear()
    run_pipeline(work, stages, force=["build-dataset"])
    assert seen == [("dataset", True, False)]
    seen.clear()
    record = run_pipeline(
        work, stages, force=["ensemble-predict", "train"], only=["ensemble-predict"]
    )
    assert seen == [("predict", True, False)]
    assert [s["status"] for s in record["stages"]] == ["skipped", "skipped", "ran"]


def test_plan_lists_readers_of_a_group_that_runs(work):
    seen: list = []
    stages = [
        _recording_stage("train-fold0", seen, "t.json", group="train"),
        _recording_stage("predict", seen, "p.json", after=("train",)),
    ]
    run_pipeline(work, stages)
    (Path(work["work"]) / "t.json").unlink()
    plan = run_pipeline(work, stages, dry_run=True)["plan"]
    assert [d["action"] for d in plan] == ["run", "run"]
    assert "reads what train" in plan[1]["reason"]


def test_a_forced_run_records_its_inputs(work):
    """After --force, the next plain run skips the stage (its state holds the inputs)."""
    seen: list = []
    stages = [_recording_stage("a", seen, "a.json")]
    run_pipeline(work, stages)
    run_pipeline(work, stages, force=["a"])
    seen.clear()
    record = run_pipeline(work, stages)
    assert seen == [] and record["stages"][0]["status"] == "skipped"


def test_a_stage_that_writes_nothing_fails(work):
    stage = Stage(
        "lazy", lambda ctx: None, inputs=lambda ctx: {}, outputs=lambda ctx: [ctx.work / "x"]
    )
    with pytest.raises(HntsegError, match="stage lazy finished without writing it"):
        run_pipeline(work, [stage])
    saved = read_json(Path(work["work"]) / "run.json")
    assert saved["status"] == "failed" and saved["stages"][0]["status"] == "failed"
    assert "without writing" in saved["error"] and "without writing" in saved["stages"][0]["error"]
    assert not (Path(work["work"]) / ".hntseg/state/lazy.json").exists()


def test_every_run_is_kept_in_the_history(work):
    seen: list = []
    stages = [_recording_stage("a", seen, "a.json", per_case=True)]
    record = run_pipeline(work, stages)
    runs = Path(work["work"]) / ".hntseg" / "runs"
    kept = sorted(runs.glob("*.json"))
    assert len(kept) == 1 and read_json(kept[0]) == read_json(Path(work["work"]) / "run.json")
    assert read_json(kept[0])["status"] == record["status"] == "finished"
    run_pipeline(work, stages, num_parts=2, part_id=1)
    assert len(list(runs.glob("*.part1of2.json"))) == 1


def test_the_device_asked_for_is_the_one_requested(work, monkeypatch):
    asked: list = []

    def fake_device(requested):
        asked.append(requested)
        return requested, requested

    monkeypatch.setattr(pipeline, "_device", fake_device)
    seen: list = []
    cfg = {**work, "device": "cpu"}
    record = run_pipeline(cfg, [_recording_stage("a", seen, "a.json", uses_device=True)])
    assert asked == ["cpu"] and record["device"]["used"] == "cpu"


def test_as_many_patients_as_folds_is_enough_and_one_fewer_is_not(tmp_path):
    cohort = _cohort(tmp_path / "c", n=3)
    for n_folds, ok in ((3, True), (4, False)):
        cfg = resolve_config(
            {
                "cohort": str(cohort),
                "work": "w",
                "dataset": {"n_folds": n_folds},
                "train": {"folds": [0]},
            },
            "t",
            tmp_path,
        )
        if ok:
            run_pipeline(cfg, dry_run=True)
        else:
            with pytest.raises(InputError, match="gives 3 patient"):
                run_pipeline(cfg, dry_run=True)


def test_predict_ids_are_checked_up_front_with_synth_and_another_cohort(tmp_path):
    other = _cohort(tmp_path / "other", n=2)
    cfg = resolve_config(
        {
            "work": str(tmp_path / "w"),
            "synth": {"enabled": True},
            "predict": {"cohort": str(other), "ids": ["9"]},
        },
        "t",
    )
    with pytest.raises(InputError, match="predict.ids: no patient 9"):
        run_pipeline(cfg, dry_run=True)


def test_folder_hash_ignores_hidden_files_and_sees_rewrites(tmp_path):
    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a")
    h = hash_path(folder)
    (folder / ".hntseg-tmp-1.tmp").write_text("partial")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "b.txt").write_text("b")
    assert hash_path(folder) == h
    st = (folder / "sub" / "a.txt").stat()
    os.utime(folder / "sub" / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert hash_path(folder) != h  # same size and bytes, but rewritten


def test_file_hash_is_by_content(tmp_path):
    """A forced stage that rewrites identical bytes must not rerun what reads the file."""
    f = tmp_path / "a.json"
    f.write_text("{}")
    h = hash_path(f)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert hash_path(f) == h and h.startswith("sha256:")


def test_predict_ids_outside_the_top_level_ids_are_refused_up_front(tmp_path):
    """Bug: with predict.cohort unset the predict stage applies the top-level `ids`, so a
    predict.ids entry outside them stopped the run at prediction, after training, while
    the dry run passed."""
    cohort = _cohort(tmp_path / "c", n=5)
    cfg = resolve_config(
        {
            "cohort": str(cohort),
            "work": "w",
            "ids": ["1", "2", "3", "4"],
            "dataset": {"n_folds": 2},
            "train": {"folds": [0, 1]},
            "predict": {"ids": ["5"]},
        },
        "t",
        tmp_path,
    )
    with pytest.raises(InputError, match=r"predict\.ids: no patient 5"):
        run_pipeline(cfg, dry_run=True)
    cfg["predict"]["ids"] = ["4"]
    plan = run_pipeline(cfg, dry_run=True)["plan"]
    assert {d["stage"]: d["action"] for d in plan}["predict"] == "run"


def test_predict_ids_of_patients_synth_has_yet_to_write_are_fine(tmp_path):
    from hntseg.synth import synth_cohort

    cohort = tmp_path / "c"
    synth_cohort(cohort, patients=2, size=(16, 16, 8))
    data = {"cohort": str(cohort), "work": str(tmp_path / "w"), "dataset": {"n_folds": 2}}
    data["synth"] = {"enabled": True, "patients": 5, "size": [16, 16, 8]}
    data.update(train={"folds": [0, 1]}, predict={"ids": ["5"]})
    run_pipeline(resolve_config(data, "t"), dry_run=True)  # patient 5 comes from synth


def _fold_work(tmp_path, monkeypatch):
    """A fake dataset and plans for train-fold0, and a stand-in for nnU-Net training."""
    from hntseg.stages import FOLD_MARKER, _checkpoint

    base = {"cohort": str(_cohort(tmp_path / "c")), "work": "w", "train": {"folds": [0]}}
    base["dataset"] = {"n_folds": 2}
    cfg = resolve_config(base, "t", tmp_path)
    ctx = Context(cfg)
    for path in _stage(cfg, "train-fold0").inputs(ctx).values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    final = _checkpoint(ctx, 0)
    calls: list[dict] = []

    def fake_train(**kw):
        calls.append(kw)
        final.parent.mkdir(parents=True, exist_ok=True)
        final.write_bytes(b"trained")

    monkeypatch.setattr("hntseg.train.train", fake_train)
    monkeypatch.setattr(pipeline, "_device", lambda requested: (requested, requested))
    return base, final.parent / FOLD_MARKER, calls


def test_fold_without_marker_retrains_on_a_real_change_only(tmp_path, monkeypatch):
    """A fold without hntseg's marker (from `hntseg train`, an older hntseg) is judged by the
    last state: a device in an older state's options is no change, a new seed is."""
    base, marker, calls = _fold_work(tmp_path, monkeypatch)
    cfg = resolve_config(base, "t", tmp_path)
    run_pipeline(cfg, [_stage(cfg, "train-fold0")])
    state_file = Path(cfg["work"]) / ".hntseg" / "state" / "train-fold0.json"
    state = read_json(state_file)
    state["options"]["device"] = "auto"
    state["fingerprint"] = "older"
    write_json(state_file, state)
    marker.unlink()
    run_pipeline(cfg, [_stage(cfg, "train-fold0")])
    assert len(calls) == 2 and calls[-1]["force"] is False
    marker.unlink()
    cfg = resolve_config({**base, "seed": 1}, "t", tmp_path)
    run_pipeline(cfg, [_stage(cfg, "train-fold0")])
    assert calls[-1]["force"] is True


def test_force_train_retrains_a_finished_fold(tmp_path, monkeypatch):
    base, marker, calls = _fold_work(tmp_path, monkeypatch)
    cfg = resolve_config(base, "t", tmp_path)
    run_pipeline(cfg, [_stage(cfg, "train-fold0")])
    run_pipeline(cfg, [_stage(cfg, "train-fold0")], force=["train"])
    assert len(calls) == 2 and calls[-1]["force"] is True


def test_stage_inputs_name_what_each_stage_reads(custom):
    ctx = Context(custom)
    keys = {name: set(_stage(custom, name).inputs(ctx)) for name in ("register", "gradmap")}
    keys["train"] = set(_stage(custom, "train-fold0").inputs(ctx))
    assert "params/0" in keys["register"]  # a new parameter file reregisters
    assert {"boxes/1_midRT", "midRT_T2/1", "preRT_T2/1"} <= keys["gradmap"]
    assert "plans" in keys["train"]
    custom["dataset"]["channels"] = ["t2", "gradmap"]
    assert "gradmap/1_midRT" in set(_stage(custom, "dataset").inputs(Context(custom)))


def test_predict_reads_registered_t2_from_predict_registered(custom, tmp_path):
    custom["dataset"]["channels"] = ["t2", "pre_t2_registered"]
    custom["predict"]["registered"] = str(tmp_path / "reg")
    inputs = _stage(custom, "predict").inputs(Context(custom))
    assert str(inputs["registered_t2/1"]).startswith(str(tmp_path / "reg"))


def test_qc_disabled_is_skipped_and_evaluate_figures_are_outputs(custom):
    custom["qc"]["enabled"] = False
    assert _stage(custom, "qc").skip_reason(Context(custom)) == "qc.enabled is false"
    custom["evaluate"]["figures"] = True
    outs = _stage(custom, "evaluate").outputs(Context(custom))
    assert Path(custom["work"]) / "evaluation" / "figures" / "dsc.png" in outs


@pytest.mark.parametrize("stage, section, key, value", [("register", "register", "workers", 8)])
def test_an_option_that_does_not_change_results_does_not_rerun(custom, stage, section, key, value):
    before = dict(_stage(custom, stage).options(Context(custom)))
    custom[section][key] = value
    assert dict(_stage(custom, stage).options(Context(custom))) == before


def test_synth_cohort_defaults_to_work_cohort(tmp_path):
    cfg = resolve_config({"work": "w", "synth": {"enabled": True}}, "t", tmp_path)
    assert cfg["cohort"] == str(tmp_path / "w" / "cohort")


def test_skipped_stages_are_not_checked_up_front(tmp_path):
    """With dataset (or predict) in skip: the user supplies its files: neither the patient
    count against the folds nor predict.ids is checked against the cohort."""
    cohort = _cohort(tmp_path / "c", n=3)
    data = {"cohort": str(cohort), "work": "w", "skip": ["dataset"]}
    run_pipeline(resolve_config(data, "t", tmp_path), dry_run=True)  # 3 patients, 5 folds
    data = {"cohort": str(cohort), "work": "w", "dataset": {"n_folds": 2}}
    data.update(train={"folds": [0]}, skip=["predict"], predict={"ids": ["9"], "out": "p"})
    run_pipeline(resolve_config(data, "t", tmp_path), dry_run=True)

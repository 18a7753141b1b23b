"""Mutation audit of the CLI: every option reaches the library call it names, with the
value the user gave (or the documented default), and errors keep their exit codes.

The library functions are replaced by recorders bound to the real signatures, so a value
passed positionally to the wrong parameter shows up under the wrong name. Nothing runs.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from hntseg.cli import app
from hntseg.errors import HntsegError, InputError, StageError, one_line

runner = CliRunner()


class Recorded(HntsegError):
    """Raised by a recorder that is told to stop the command after the call."""

    exit_code = 3


def record(monkeypatch, module: str, name: str, result=None, stop: bool = False):
    """Replace module.name by a recorder; each call's arguments by parameter name, with the
    library's defaults filled in for those the command left out."""
    mod = importlib.import_module(module)
    sig = inspect.signature(getattr(mod, name))
    calls: list[dict] = []

    def fake(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        if stop:
            raise Recorded("recorded")
        return result

    monkeypatch.setattr(mod, name, fake)
    return calls


def call(args: list[str], code: int = 0):
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


# --- synth ------------------------------------------------------------------------------


def test_synth_options_reach_synth_cohort(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.synth", "synth_cohort", result=[])
    out = tmp_path / "c"
    call(
        ["synth", str(out), "-n", "3", "--seed", "5", "--size", "16x20x8"]
        + ["--spacing", "2x2x5", "--force"]
    )
    call(["synth", str(out)])
    given, default = calls
    assert given == {
        "out": out,
        "patients": 3,
        "seed": 5,
        "size": (16, 20, 8),
        "spacing": (2.0, 2.0, 5.0),
        "force": True,
    }
    assert default == {
        "out": out,
        "patients": 4,
        "seed": 0,
        "size": (128, 128, 32),
        "spacing": None,
        "force": False,
    }


# --- boxes ------------------------------------------------------------------------------


def test_boxes_single_case_options(monkeypatch, tmp_path):
    calls = record(
        monkeypatch, "hntseg.boxes", "boxes_case", result=(SimpleNamespace(boxes=[1, 2]), True)
    )
    out = tmp_path / "b.json"
    result = call(["boxes", "m.nii.gz", "-o", str(out), "--margin", "3", "--seed", "9", "--force"])
    assert "wrote 2 box(es)" in result.output
    call(["boxes", "m.nii.gz", "-o", str(out)])
    given, default = calls
    assert (given["margin"], given["seed"], given["force"]) == (3, 9, True)
    assert (default["margin"], default["seed"], default["force"]) == ((2, 6), 0, False)
    assert given["mask_path"] == Path("m.nii.gz") and given["out_path"] == out


def test_boxes_cohort_options(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.boxes", "boxes_cohort", result={})
    c, o, r = tmp_path / "c", tmp_path / "o", tmp_path / "r"
    call(
        ["boxes", "--cohort", str(c), "-o", str(o), "--registered", str(r), "--margin", "2-4"]
        + ["--seed", "5", "--phase", "preRT", "--ids", "1,2", "--ids", "3", "--num-parts", "3"]
        + ["--part-id", "2", "--force"]
    )
    call(["boxes", "--cohort", str(c), "-o", str(o)])
    given, default = calls
    assert given == {
        "cohort": c,
        "out": o,
        "registered": r,
        "margin": (2, 4),
        "seed": 5,
        "ids": ["1", "2", "3"],
        "phases": ("preRT",),
        "num_parts": 3,
        "part_id": 2,
        "force": True,
    }
    assert default == {
        "cohort": c,
        "out": o,
        "registered": None,
        "margin": (2, 6),
        "seed": 0,
        "ids": None,
        "phases": ("midRT", "preRT"),
        "num_parts": 1,
        "part_id": 0,
        "force": False,
    }


# --- gradmap ----------------------------------------------------------------------------


def test_gradmap_single_case_options(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.gradmap", "gradmap_case", result=True)
    out = tmp_path / "g.nii.gz"
    call(
        ["gradmap", "t2.nii.gz", "b.json", "-o", str(out), "--sigma", "1.5", "--gain", "3"]
        + ["--sigma-mm", "2.5", "--context", "4", "--force"]
    )
    call(["gradmap", "t2.nii.gz", "b.json", "-o", str(out)])
    given, default = calls
    assert given == {
        "t2_path": Path("t2.nii.gz"),
        "boxes_file": Path("b.json"),
        "out_path": out,
        "sigma": 1.5,
        "gain": 3.0,
        "sigma_mm": 2.5,
        "context": 4,
        "force": True,
    }
    assert (default["sigma"], default["gain"], default["sigma_mm"]) == (1.0, 2.0, None)
    assert (default["context"], default["force"]) == (0, False)


def test_gradmap_cohort_options(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.gradmap", "gradmap_cohort", result={})
    c, b, o = tmp_path / "c", tmp_path / "b", tmp_path / "o"
    base = ["gradmap", "--cohort", str(c), "--boxes", str(b), "-o", str(o)]
    call(
        [*base, "--sigma", "0.5", "--gain", "1.5", "--sigma-mm", "3", "--context", "2"]
        + ["--phase", "midRT", "--ids", "7 8", "--num-parts", "4", "--part-id", "3", "--force"]
    )
    call(base)
    given, default = calls
    assert given == {
        "cohort": c,
        "boxes": b,
        "out": o,
        "sigma": 0.5,
        "gain": 1.5,
        "sigma_mm": 3.0,
        "context": 2,
        "ids": ["7", "8"],
        "phases": ("midRT",),
        "num_parts": 4,
        "part_id": 3,
        "force": True,
    }
    assert default["phases"] == ("midRT", "preRT") and default["ids"] is None
    assert (default["sigma"], default["gain"], default["context"]) == (1.0, 2.0, 0)


# --- qc ---------------------------------------------------------------------------------


def test_qc_cohort_options(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.qc", "qc_cohort", result={})
    c, b, g, o, r = (tmp_path / n for n in "cbgor")
    base = ["qc", "--cohort", str(c), "--boxes", str(b), "-o", str(o)]
    call(
        [*base, "--gradmaps", str(g), "--registered", str(r), "--phase", "preRT,midRT"]
        + ["--ids", "4", "--num-parts", "2", "--part-id", "1", "--force"]
    )
    call(base)
    given, default = calls
    assert given == {
        "cohort": c,
        "boxes": b,
        "gradmaps": g,
        "out": o,
        "registered": r,
        "ids": ["4"],
        "phases": ("preRT", "midRT"),
        "num_parts": 2,
        "part_id": 1,
        "force": True,
    }
    # documented defaults: gradient maps from --boxes, mid-RT cases only
    assert default["gradmaps"] == b and default["phases"] == ("midRT",)
    assert default["registered"] is None and default["force"] is False


# --- build-dataset ----------------------------------------------------------------------


def test_build_dataset_options(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.dataset", "build_dataset", result=tmp_path / "raw")
    c, w, r, g = (tmp_path / n for n in "cwrg")
    base = ["build-dataset", str(c), "--work", str(w), "--dataset-id", "12"]
    call(
        [*base, "--name", "X", "--channels", "t2", "--registered", str(r), "--gradmaps", str(g)]
        + ["--no-pre-rt", "--margin", "3-5", "--seed", "4", "--folds", "3", "--force"]
    )
    call(base)
    given, default = calls
    expected = {"cohort": c, "work": w, "dataset_id": 12, "name": "X", "channels": "t2"}
    expected |= {"registered": r, "gradmaps": g, "boxes": None, "pre_rt": False}
    expected |= {"margin": "3-5", "seed": 4, "folds": 3, "ids": None, "force": True}
    assert given == expected
    from hntseg.nnunet import DEFAULT_CHANNELS

    assert default["channels"] == ",".join(DEFAULT_CHANNELS)  # the paper's t2 + gradmap
    assert (default["pre_rt"], default["margin"], default["seed"]) == (True, "2-6", 0)
    assert (default["folds"], default["force"], default["name"]) == (5, False, "HNTSMRG")


# --- train ------------------------------------------------------------------------------


def test_train_options(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.train", "train", result=[])
    base = ["train", "--work", str(tmp_path), "--dataset-id", "7", "--fold", "all"]
    call(
        [*base, "--epochs", "2", "--iterations-per-epoch", "3", "--device", "cpu"]
        + ["--continue", "--gpu-memory-target", "6", "--configuration", "2d", "--workers", "2"]
        + ["--force", "--batch-size", "4", "--patch-size", "48x64x64"]
    )
    call(base)
    given, default = calls
    assert given["work"] == tmp_path and given["dataset_id"] == 7 and given["fold"] == "all"
    assert (given["epochs"], given["iterations_per_epoch"]) == (2, 3)
    assert (given["device"], given["continue_training"], given["force"]) == ("cpu", True, True)
    assert (given["gpu_memory_target"], given["configuration"]) == (6.0, "2d")
    assert given["workers"] == 2
    assert given["plans_override"] == {"batch_size": 4, "patch_size": [48, 64, 64]}
    assert (default["epochs"], default["iterations_per_epoch"], default["workers"]) == (
        None,
        None,
        None,
    )
    assert (default["device"], default["continue_training"], default["force"]) == (
        "auto",
        False,
        False,
    )
    assert default["configuration"] == "3d_fullres" and default["plans_override"] is None
    call([*base, "--patch-size", "48,192,192"])
    assert calls[-1]["plans_override"] == {"patch_size": [48, 192, 192]}


# --- ensemble-predict -------------------------------------------------------------------


def test_ensemble_predict_options(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.predict", "ensemble_predict", result=[])
    i, w, o, r, g = (tmp_path / n for n in "iworg")
    base = ["ensemble-predict", str(i), "--work", str(w), "--dataset-id", "7", "--out", str(o)]
    call(
        [*base, "--folds", "0,2", "--folds", "4", "--no-tta", "--device", "cpu"]
        + ["--registered", str(r), "--gradmaps", str(g), "--margin", "6", "--ensemble", "logits"]
        + ["--num-parts", "3", "--part-id", "2", "--force", "--cpu-bf16", "--ids", "3,5"]
    )
    call(base)
    given, default = calls
    expected = {"input": i, "work": w, "dataset_id": 7, "out": o, "folds": [0, 2, 4]}
    expected |= {"tta": False, "device": "cpu", "registered": r, "gradmaps": g, "margin": 6}
    expected |= {"ids": ["3", "5"], "trainer": None, "ensemble": "logits", "cache": None}
    expected |= {"force": True, "cpu_bf16": True, "num_parts": 3, "part_id": 2}
    assert given == expected
    assert default["folds"] == [0, 1, 2, 3, 4] and default["tta"] is True
    assert (default["device"], default["margin"], default["ensemble"]) == ("auto", 4, "softmax")
    assert (default["force"], default["cpu_bf16"], default["num_parts"]) == (False, False, 1)
    assert default["registered"] is None and default["gradmaps"] is None
    assert default["ids"] is None


def test_challenge_predict_options(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.predict", "challenge_predict", result=tmp_path / "m")
    base = ["ensemble-predict", "--challenge", "--work", str(tmp_path), "--dataset-id", "7"]
    call(
        [*base, "--input-root", "in", "--output-root", "out", "--folds", "1", "--no-tta"]
        + ["--device", "cpu", "--margin", "5", "--ensemble", "logits", "--cpu-bf16"]
    )
    call(base)
    given, default = calls
    assert (given["input_root"], given["output_root"]) == (Path("in"), Path("out"))
    assert (given["folds"], given["tta"], given["device"]) == ([1], False, "cpu")
    assert (given["margin"], given["ensemble"], given["cpu_bf16"]) == (5, "logits", True)
    assert (default["input_root"], default["output_root"]) == (Path("/input"), Path("/output"))
    assert (default["folds"], default["tta"], default["margin"]) == ([0, 1, 2, 3, 4], True, 4)


# --- register ---------------------------------------------------------------------------


def _results(*statuses):
    return [SimpleNamespace(status=s) for s in statuses]


def test_register_cohort_options(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.register", "register_cohort", result=_results("ok"))
    c, o = tmp_path / "c", tmp_path / "o"
    base = ["register", str(c), "-o", str(o)]
    call(
        [*base, "--method", "identity", "--seed", "5", "--threads", "2", "-j", "3"]
        + ["--ids", "1,2", "--num-parts", "2", "--part-id", "1", "--force"]
    )
    call([*base, "--preset", "challenge"])
    call(base)
    given, challenge, default = calls
    expected = {"cohort": c, "out": o, "method": "identity", "preset": "fast", "params": None}
    expected |= {"seed": 5, "threads": 2, "workers": 3, "ids": ["1", "2"], "num_parts": 2}
    expected |= {"part_id": 1, "force": True, "raise_on_failure": True, "isolate": True}
    assert given == expected
    assert challenge["preset"] == "challenge" and challenge["method"] == "elastix"
    assert (default["method"], default["preset"], default["seed"]) == ("elastix", "fast", 0)
    assert (default["threads"], default["workers"], default["force"]) == (None, 1, False)
    assert default["raise_on_failure"] is True  # failed cases: exit 1, below


def test_register_cohort_failed_cases_exit_1(monkeypatch, tmp_path):
    import hntseg.register as reg

    def fails(*args, raise_on_failure=False, **kwargs):
        if raise_on_failure:
            raise StageError("register: 1 of 2 case(s) failed: 2")
        return _results("ok", "failed")

    monkeypatch.setattr(reg, "register_cohort", fails)
    result = call(["register", str(tmp_path / "c"), "-o", str(tmp_path / "o")], code=1)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "1 of 2 case(s) failed" in lines[0]


def test_register_single_case_options(monkeypatch, tmp_path):
    from hntseg.records import case_seed

    calls = record(monkeypatch, "hntseg.register", "register_case", result=_results("ok")[0])
    monkeypatch.setattr(importlib.import_module("hntseg.register"), "case_summary", str)
    base = ["register", "-o", str(tmp_path), "--method", "identity", "--pre-t2", "a"]
    base += ["--pre-mask", "b", "--mid-t2", "c", "--id", "p1"]
    call([*base, "--seed", "9", "--threads", "2", "--mid-mask", "d", "--force"])
    call([*base, "--seed", "10"])
    call(base)
    given, other, default = calls
    assert (given["pre_t2"], given["pre_mask"], given["mid_t2"]) == (
        Path("a"),
        Path("b"),
        Path("c"),
    )
    assert (given["out"], given["case_id"], given["method"]) == (tmp_path, "p1", "identity")
    assert (given["threads"], given["mid_mask"], given["force"]) == (2, Path("d"), True)
    # the case's own seed, from the global one, within elastix's RandomSeed range
    assert given["seed"] == case_seed(9, "p1", "register") & 0x7FFFFFFF
    assert default["seed"] == case_seed(0, "p1", "register") & 0x7FFFFFFF
    assert len({given["seed"], other["seed"], default["seed"]}) == 3
    for seen in calls:
        assert 0 <= seen["seed"] <= 0x7FFFFFFF
    assert (default["mid_mask"], default["force"], default["threads"]) == (None, False, None)
    assert default["preset"] == "fast"


def test_register_single_case_failure_is_one_line_exit_1(monkeypatch, tmp_path):
    import hntseg.register as reg

    def boom(*args, **kwargs):
        raise RuntimeError("itk::ExceptionObject\nLocation: x\nDescription: elastix broke")

    monkeypatch.setattr(reg, "register_case", boom)
    args = ["register", "-o", str(tmp_path), "--method", "identity", "--pre-t2", "a"]
    args += ["--pre-mask", "b", "--mid-t2", "c", "--id", "p1"]
    result = call(args, code=1)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "case p1 failed: elastix broke" in lines[0]


# --- evaluate ---------------------------------------------------------------------------


def test_evaluate_options(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.evaluate", "evaluate", stop=True)
    p, g, o = tmp_path / "p", tmp_path / "g", tmp_path / "o"
    call(
        ["evaluate", str(p), str(g), "-m", "dsc,hd95", "-m", "msd", "--hd95", "directed"]
        + ["-o", str(o), "--allow-missing", "--force", "--figures"],
        code=3,
    )
    call(["evaluate", str(p), str(g)], code=3)
    given, default = calls
    assert given == {
        "pred_dir": p,
        "gt_dir": g,
        "out": o,
        "metrics": ["dsc", "hd95", "msd"],
        "hd95": "directed",
        "allow_missing": True,
        "force": True,
        "figures": True,
    }
    assert default == {
        "pred_dir": p,
        "gt_dir": g,
        "out": None,
        "metrics": ["dscagg", "dsc", "hd95", "msd"],
        "hd95": "pooled",  # the paper's (MedPy)
        "allow_missing": False,
        "force": False,
        "figures": False,
    }


def test_evaluate_compare_and_volume_options(monkeypatch, tmp_path):
    cmp = record(monkeypatch, "hntseg.analysis", "compare", stop=True)
    vol = record(monkeypatch, "hntseg.analysis", "volume_change", stop=True)
    a, b, g, o = (tmp_path / n for n in "abgo")
    call(
        ["evaluate-compare", str(a), str(b), str(g), "-o", str(o), "--names", "base, grad"]
        + ["--allow-missing", "--ids", "3,1", "--ids", "7"],
        code=3,
    )
    call(["evaluate-compare", str(a), str(b), str(g)], code=3)
    assert cmp[0] == {
        "a_dir": a,
        "b_dir": b,
        "gt_dir": g,
        "out": o,
        "names": ("base", "grad"),
        "allow_missing": True,
        "ids": ["3", "1", "7"],
    }
    assert cmp[1]["names"] == ("A", "B") and cmp[1]["allow_missing"] is False
    assert cmp[1]["ids"] is None
    call(
        ["evaluate-volume", str(a), str(g), str(b), "-o", str(o), "--bins", "2,10,30"]
        + ["--allow-missing", "--ids", "2 5"],
        code=3,
    )
    call(["evaluate-volume", str(a), str(g), str(b)], code=3)
    assert vol[0] == {
        "pred_dir": a,
        "gt_dir": g,
        "pre_dir": b,
        "out": o,
        "bins": [2.0, 10.0, 30.0],
        "allow_missing": True,
        "ids": ["2", "5"],
    }
    assert vol[1]["bins"] == [5.0, 20.0] and vol[1]["out"] is None and vol[1]["ids"] is None


# --- run / demo / config ----------------------------------------------------------------


def test_run_options(monkeypatch, tmp_path):
    import hntseg.pipeline as pl

    monkeypatch.setattr(pl, "load_config", lambda path: {"cfg": str(path)})
    calls = record(monkeypatch, "hntseg.pipeline", "run_pipeline", result={"plan": []})
    printed = []
    monkeypatch.setattr(pl, "print_plan", printed.append)
    monkeypatch.setattr(pl, "summarize_run", lambda record: "SUMMARY-OF-RUN")
    cfg = tmp_path / "c.yaml"
    call(
        ["run", str(cfg), "--force", "boxes", "--force", "train", "--only", "dataset"]
        + ["--num-parts", "3", "--part-id", "2", "--dry-run"]
    )
    assert printed == [[]]
    loud = call(["run", str(cfg)])
    quiet = call(["--quiet", "run", str(cfg)])
    given, default, _ = calls
    assert given == {
        "config": {"cfg": str(cfg)},
        "stages": None,
        "force": ["boxes", "train"],
        "only": ["dataset"],
        "dry_run": True,
        "num_parts": 3,
        "part_id": 2,
        "config_path": cfg.resolve(),
        "isolate": True,
    }
    assert (default["force"], default["only"], default["dry_run"]) == ([], [], False)
    assert (default["num_parts"], default["part_id"]) == (1, 0)
    assert printed == [[]]  # no plan printed without --dry-run
    assert "SUMMARY-OF-RUN" in loud.output and "SUMMARY-OF-RUN" not in quiet.output


def test_demo_options(monkeypatch, tmp_path):
    calls = record(monkeypatch, "hntseg.demo", "run_demo", result={})
    call(["demo", "--out", str(tmp_path), "--patients", "3", "--register", "identity", "--force"])
    call(["demo"])
    assert calls[0] == {
        "out": tmp_path,
        "patients": 3,
        "force": True,
        "register": "identity",
        "isolate": True,
    }
    assert calls[1] == {
        "out": Path("demo_out"),
        "patients": 6,
        "force": False,
        "register": "provided",
        "isolate": True,
    }
    result = call(["demo", "--register", "bogus"], code=2)
    assert "--register 'bogus'" in result.output and len(calls) == 2


# --- the group: exit codes, one line, --quiet / --verbose -------------------------------


@pytest.mark.parametrize(("error", "code"), [(StageError, 1), (InputError, 2)])
def test_library_errors_keep_their_exit_code_on_one_line(monkeypatch, tmp_path, error, code):
    import hntseg.synth as synth

    def fails(*args, **kwargs):
        raise error("first part\nsecond part")

    monkeypatch.setattr(synth, "synth_cohort", fails)
    result = call(["synth", str(tmp_path / "c")], code=code)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines == ["error: first part second part"]


def test_quiet_and_verbose_reach_setup_logging(monkeypatch, tmp_path):
    import hntseg.cli as cli

    seen = []
    monkeypatch.setattr(cli, "setup_logging", lambda **kw: seen.append(kw))
    record(monkeypatch, "hntseg.synth", "synth_cohort", result=[])
    for flags in ([], ["--quiet"], ["-q"], ["--verbose"], ["-v"]):
        call([*flags, "synth", str(tmp_path / "c")])
    assert seen == [
        {"quiet": False, "verbose": False},
        {"quiet": True, "verbose": False},
        {"quiet": True, "verbose": False},
        {"quiet": False, "verbose": True},
        {"quiet": False, "verbose": True},
    ]


def test_bad_option_value_is_exit_2_not_1(tmp_path):
    result = call(["synth", str(tmp_path / "c"), "--patients", "many"], code=2)
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1


# --- errors.py and the shared option helpers --------------------------------------------


def test_error_exit_codes():
    assert HntsegError.exit_code == 2 and InputError.exit_code == 2
    assert StageError.exit_code == 1
    assert issubclass(InputError, HntsegError) and issubclass(StageError, HntsegError)


def test_one_line():
    itk = "ITK ERROR\nLocation: itkFoo.cxx:12\n  Description: cannot read file x  \nmore"
    assert one_line(RuntimeError(itk)) == "cannot read file x"
    assert one_line(RuntimeError("first\n\n  last line  \n\n")) == "last line"
    assert one_line(RuntimeError("")) == "RuntimeError"
    assert one_line(ValueError("x" * 400)) == "x" * 300
    assert one_line(ValueError("Description of the case: fine")) == "Description of the case: fine"
    # a stopped run, in run.json as on the console
    from hntseg.errors import Terminated

    assert one_line(KeyboardInterrupt()) == "stopped by Ctrl-C"
    assert one_line(Terminated()) == "stopped by SIGTERM"
    # ITK's ERROR line, not its stale errno line
    itk = "at x.cxx:490:\nITK ERROR: MetaImageIO(0x5579e0): File cannot be read\nReason: No such"
    assert one_line(RuntimeError(itk)) == "File cannot be read"


def test_split_ids_and_phases():
    from hntseg.cohort import PHASES
    from hntseg.commands import split_ids, split_phases

    assert split_ids(["1,2", "3 4", " 5 , 6 "]) == ["1", "2", "3", "4", "5", "6"]
    assert split_ids(None) is None and split_ids([]) is None
    assert split_phases(None) == PHASES == ("midRT", "preRT")
    assert split_phases(["preRT"]) == ("preRT",)
    assert split_phases(["midRT,preRT"]) == ("midRT", "preRT")

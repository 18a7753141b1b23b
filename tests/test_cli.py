"""CLI basics: help, version, synth, one-line errors and exit codes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from hntseg import __version__
from hntseg.cli import app

runner = CliRunner()


def test_version_and_help_list_stages():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in ("synth", "cohort"):
        assert stage in result.output


def test_synth_then_cohort(tmp_path):
    out = tmp_path / "c"
    result = runner.invoke(
        app, ["--quiet", "synth", str(out), "--patients", "2", "--size", "32x32x8"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["cohort", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 patients" in result.output


def test_missing_folder_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["cohort", str(tmp_path / "missing")])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cohort folder not found" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--size", "12x3"),
        ("--spacing", "1x1"),
        ("--spacing", "1x0x2"),
        ("--spacing", "nanx1x1"),
        ("--spacing", "infx1x1"),
        ("--spacing", "1e300x1x1"),
        ("--spacing", "1x1x1e-300"),
        ("--size", "100000x100000x1000"),
    ],
)
def test_bad_size_or_spacing_option_is_one_line(tmp_path, option, value):
    result = runner.invoke(app, ["synth", str(tmp_path / "c"), "-n", "1", option, value])
    assert result.exit_code == 2
    assert option in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_spacing_with_commas_and_rerun_skips(tmp_path):
    """Commas work for --spacing as for --size; a rerun with --spacing rewrites nothing."""
    out = tmp_path / "sp"
    args = ["--quiet", "synth", str(out), "-n", "2", "--size", "16,16,8", "--spacing", "2,2,5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    files = sorted(out.rglob("*.nii.gz"))
    before = [(p.stat().st_mtime_ns, p.stat().st_ino) for p in files]
    result = runner.invoke(app, [*args[:-1], "2x2x5"])
    assert result.exit_code == 0, result.output
    assert [(p.stat().st_mtime_ns, p.stat().st_ino) for p in files] == before


def _tiny_case(folder):
    """A 16x16x8 T2 and mask on one grid (files), for the single-case forms."""
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((8, 16, 16), np.uint8)
    arr[2:5, 4:9, 4:9] = 1
    t2 = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 16, 16)).astype(np.float32))
    sitk.WriteImage(t2, str(folder / "t2.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / "mask.nii.gz"))
    return folder / "t2.nii.gz", folder / "mask.nii.gz"


def test_quiet_hides_status_lines(tmp_path):
    """--quiet: no "wrote ..." lines from synth, boxes, gradmap, evaluate; the score table
    (evaluate's result) stays. Without --quiet the lines are there."""
    t2, mask = _tiny_case(tmp_path / "case")
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "1.nii.gz").write_bytes(mask.read_bytes())
    for quiet in (["--quiet"], []):
        d = tmp_path / ("quiet" if quiet else "loud")
        steps = [
            ["synth", str(d / "c"), "-n", "1", "--size", "16x16x8"],
            ["boxes", str(mask), "-o", str(d / "boxes.json")],
            ["gradmap", str(t2), str(d / "boxes.json"), "-o", str(d / "g.nii.gz")],
            ["evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"), "-o", str(d / "ev")],
        ]
        for args in steps:
            result = runner.invoke(app, [*quiet, *args])
            assert result.exit_code == 0, result.output
            assert "Traceback" not in result.output
            if args[0] == "evaluate":
                assert "DSCagg" in result.output  # the command's result, quiet or not
            said = "scores in" if args[0] == "evaluate" else "wrote"
            assert (said in result.output) == (not quiet), (args, result.output)


def test_quiet_silences_nnunet_progress_bars_and_stdout(monkeypatch):
    """--quiet reaches what nnU-Net prints: tqdm bars (from the environment) and stdout."""
    import os

    from hntseg.log import quiet_stdout, setup_logging

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    try:
        setup_logging(quiet=True)
        assert os.environ.get("TQDM_DISABLE") == "1"
        import contextlib
        import io

        from tqdm import tqdm

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), quiet_stdout():
            print("nnU-Net chatter")
            for _ in tqdm(range(3), desc="Preprocessing cases", disable=False):  # as nnU-Net
                pass
        assert out.getvalue() == "" and err.getvalue() == ""
    finally:
        setup_logging(quiet=False)


def test_quiet_keeps_warnings_logged_inside_nnunet_blocks(monkeypatch, capsys):
    """On a terminal the log goes through rich's console, which follows sys.stderr: inside
    quiet_stdout() (nnU-Net's chatter silenced) a warning of hntseg's was lost, although
    --quiet keeps warnings."""
    import hntseg.log as hlog

    monkeypatch.setattr(hlog, "_on_terminal", lambda: True)
    try:
        hlog.setup_logging(quiet=True)
        with hlog.quiet_stdout():
            print("nnU-Net chatter")
            hlog.log.warning("--cpu-bf16 ignored on device cuda")
        hlog.log.warning("after the block")
        err = capsys.readouterr()
        assert "--cpu-bf16 ignored" in err.err and "after the block" in err.err
        assert "chatter" not in err.out
    finally:
        monkeypatch.undo()
        hlog.setup_logging(quiet=False)


@pytest.mark.parametrize("tqdm_disable", [None, "0"])
def test_quiet_run_in_process_leaves_the_process_as_it_was(tmp_path, monkeypatch, tqdm_disable):
    """One --quiet CLI run in-process (a notebook, CliRunner) left the whole process quiet:
    is_quiet() True, TQDM_DISABLE=1 (every tqdm bar, the user's too), FutureWarnings
    ignored, hntseg's logger at WARNING on its own handler. A failing command too."""
    import logging
    import os
    import warnings

    from hntseg.log import is_quiet

    if tqdm_disable is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", tqdm_disable)
    synth = ["synth", "--patients", "1", "--size", "16x16x8"]
    result = runner.invoke(app, [*synth, str(tmp_path / "a")])  # imports what it needs
    assert result.exit_code == 0, result.output
    logger = logging.getLogger("hntseg")
    before = (list(warnings.filters), list(logger.handlers), logger.level, logger.propagate)
    for args, code in (([*synth, str(tmp_path / "b")], 0), (["cohort", str(tmp_path / "x")], 2)):
        result = runner.invoke(app, ["--quiet", *args])
        assert result.exit_code == code, result.output
        assert not is_quiet()
        assert os.environ.get("TQDM_DISABLE") == tqdm_disable
        after = (list(warnings.filters), list(logger.handlers), logger.level, logger.propagate)
        assert after == before


def test_log_lines_are_plain_off_a_terminal(capsys):
    """In a SLURM log rich wrapped at 80 columns and split paths in two (grep missed them),
    and padded every line with spaces to the console width."""
    from hntseg.log import log, setup_logging

    setup_logging()
    message = "/scratch/" + "x" * 150 + "/1/midRT/1_midRT_mask.nii.gz: not on the grid"
    log.error(message)
    log.info("short")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].endswith(f"ERROR {message}")
    assert lines[1].endswith("INFO short") and len(lines[1]) < 30
    log.info("[bold]%s[/]: run (%s)", "register", "no state", extra={"markup": True})
    assert capsys.readouterr().err.rstrip().endswith("INFO register: run (no state)")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["synth", "x", "--seed", "-1"], "Invalid value for '--seed'"),
        (["register", "--bogus"], "No such option: --bogus"),
        (["evaluate"], "Missing argument"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_option_errors_are_one_line(args, needle):
    """typer's usage box (5-6 lines) for a bad option value became one line, exit 2."""
    result = CliRunner().invoke(app, args)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.output


def test_force_color_does_not_make_a_log_file_a_terminal(capsys, monkeypatch):
    """FORCE_COLOR made rich treat a log file as a terminal: lines padded to 300 columns."""
    from hntseg.log import console, log, setup_logging

    monkeypatch.setattr(console, "_force_terminal", True)  # what FORCE_COLOR sets
    setup_logging()
    log.info("short")
    assert capsys.readouterr().err.rstrip("\n").endswith("INFO short")


def test_installed_version_is_the_package_version():
    """pyproject reads the version from hntseg.__version__: the two cannot drift apart."""
    from importlib.metadata import version

    assert version("hntseg") == __version__


@pytest.mark.parametrize(
    "stop, code, name", [(KeyboardInterrupt, 130, "Ctrl-C"), ("terminated", 143, "SIGTERM")]
)
def test_a_stopped_command_says_so_in_one_line(stop, code, name, tmp_path, monkeypatch):
    """Ctrl-C and SIGTERM (a cluster's time limit) end a command with one line and the
    shell's exit code for the signal (130, 143), not typer's "Aborted!" and exit code 1."""
    import hntseg.synth
    from hntseg.errors import Terminated

    exc = Terminated if stop == "terminated" else stop

    def stopped(*args, **kwargs):
        raise exc()

    monkeypatch.setattr(hntseg.synth, "synth_cohort", stopped)
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "c")])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == code and lines == [f"error: stopped by {name}"], result.output


def test_sigterm_unwinds_and_leaves_no_temporary_file(tmp_path):
    """The console entry point turns SIGTERM into the same unwinding as Ctrl-C, so the
    atomic writes under way remove their temporary files (the default action killed the
    process on the spot, leaving them)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "c"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hntseg", "synth", str(out), "-n", "200", "--size", "96x96x24"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(out.glob("*/midRT/*.nii.gz")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "error: stopped by SIGTERM" in output, output
    assert not [p for p in out.rglob("*") if p.name.startswith(".hntseg-tmp")]

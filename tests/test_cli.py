"""CLI basics: help, version, synth, one-line errors and exit codes."""

from __future__ import annotations

import pytest
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
    ("option", "value"), [("--size", "12x3"), ("--spacing", "1x1"), ("--spacing", "1x0x2")]
)
def test_bad_size_or_spacing_option_is_one_line(tmp_path, option, value):
    result = runner.invoke(app, ["synth", str(tmp_path / "c"), option, value])
    assert result.exit_code == 2
    assert option in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())

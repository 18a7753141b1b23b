"""Kills between an output and its record, unwritable or odd output paths, symlinked
inputs: the file interface never trusts stale records and bad paths are one-line errors."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hntseg import records
from hntseg.boxes import boxes_case
from hntseg.cli import app
from hntseg.errors import InputError
from hntseg.gradmap import gradmap_case
from hntseg.io import write_json

runner = CliRunner()


class Killed(BaseException):
    """Stands for SIGKILL between an output and its record (nothing after it runs)."""


def _kill_at_record(monkeypatch, module=records):
    def die(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(module, "write_record", die)


def _one_line(result, *needles: str) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "Traceback" not in result.output and all(n in lines[0] for n in needles), lines
    return lines[0]


def test_boxes_and_gradmap_killed_before_their_record_rerun(tiny_cohort, tmp_path, monkeypatch):
    """A run with other options killed after its output but before its record: the old
    record (of the first options) must not vouch for the new output."""
    mask = tiny_cohort / "1" / "preRT" / "1_preRT_mask.nii.gz"
    t2 = tiny_cohort / "1" / "preRT" / "1_preRT_T2.nii.gz"
    boxes, gm = tmp_path / "b.json", tmp_path / "g.nii.gz"
    boxes_case(mask, boxes, (2, 6), seed=0)
    gradmap_case(t2, boxes, gm)
    first = boxes.read_bytes(), gm.read_bytes()
    with monkeypatch.context() as m:
        _kill_at_record(m)
        with pytest.raises(Killed):
            boxes_case(mask, boxes, (2, 6), seed=1)
        with pytest.raises(Killed):
            gradmap_case(t2, boxes, gm, sigma=2.0)
    assert boxes.read_bytes() != first[0]  # the seed-1 boxes are there, without a record
    assert boxes_case(mask, boxes, (2, 6), seed=0)[1]  # redone, not "already done"
    assert gradmap_case(t2, boxes, gm)
    assert (boxes.read_bytes(), gm.read_bytes()) == first


def test_resume_does_not_reread_unchanged_inputs_but_sees_every_change(
    tiny_cohort, tmp_path, monkeypatch
):
    """A no-op rerun read every input image in full to hash it (on a real cohort, each
    stage re-read every T2). An input that is the file the record saw (device, inode, size,
    mtime) keeps its recorded hash; a rewrite or a touch is read again, and a content change
    is redone."""
    import shutil

    src = tiny_cohort / "1" / "preRT"
    mask, t2 = tmp_path / "m.nii.gz", tmp_path / "t.nii.gz"
    shutil.copy(src / "1_preRT_mask.nii.gz", mask)
    shutil.copy(src / "1_preRT_T2.nii.gz", t2)
    boxes, gm = tmp_path / "b.json", tmp_path / "g.nii.gz"
    boxes_case(mask, boxes, (2, 6), seed=0)
    assert gradmap_case(t2, boxes, gm)
    record = records.read_json(records.record_path(gm), "record")
    assert record["input_stat"]["t2"] == records.stat_key(t2)

    read: list[str] = []
    digest = records.file_digest

    def counting(path, *args):
        read.append(Path(path).name)
        return digest(path, {})  # no in-process cache: every call reads the file

    monkeypatch.setattr(records, "file_digest", counting)
    assert gradmap_case(t2, boxes, gm) is False and read == []  # done; nothing read
    os.utime(t2, ns=(t2.stat().st_atime_ns, t2.stat().st_mtime_ns + 10**9))  # touched
    assert gradmap_case(t2, boxes, gm) is False and read == ["t.nii.gz"]  # read, same bytes
    read.clear()
    import SimpleITK as sitk

    other = tmp_path / "other.nii.gz"
    image = sitk.ReadImage(str(t2))
    sitk.WriteImage(sitk.Square(image), str(other))  # another image on the same grid
    before = t2.read_bytes()
    with open(t2, "r+b") as f:  # rewritten in place: same inode
        f.write(other.read_bytes())
        f.truncate()
    assert t2.read_bytes() != before
    assert gradmap_case(t2, boxes, gm) is True and "t.nii.gz" in read


def test_evaluate_killed_before_its_record_reruns(tiny_cohort, tmp_path, monkeypatch):
    from hntseg import evaluate as ev

    out = tmp_path / "e"
    gt = tiny_cohort
    ev.evaluate(gt, gt, out=out, metrics=["dsc"])
    csv = (out / "cases.csv").read_bytes()
    with monkeypatch.context() as m:
        _kill_at_record(m)
        with pytest.raises(Killed):
            ev.evaluate(gt, gt, out=out, metrics=["dsc", "msd"], force=True)
    assert (out / "cases.csv").read_bytes() != csv
    ev.evaluate(gt, gt, out=out, metrics=["dsc"])
    assert (out / "cases.csv").read_bytes() == csv  # recomputed, not "up to date"


def test_long_names_and_unwritable_folders_are_one_line(tmp_path, monkeypatch):
    long = tmp_path / ("y" * 240 + ".json")  # legal; the temporary name must fit too
    assert write_json(long, {"a": 1}).is_file()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(InputError, match="read-only file system; cannot write x.json"):
        write_json(tmp_path / "x.json", {"a": 1})
    monkeypatch.undo()
    for too_long in (tmp_path / ("z" * 300) / "x.json", tmp_path / ("z" * 300 + ".json")):
        with pytest.raises(InputError, match="name too long"):
            write_json(too_long, {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == [long.name]  # no temporary file left
    assert records.is_done(tmp_path / ("r" * 300 + ".record.json"), {}, {}) is False


@pytest.mark.parametrize("command", ["boxes", "gradmap", "qc", "register"])
def test_out_that_is_a_file_is_one_error_not_one_per_case(tiny_cohort, tmp_path, command):
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = {
        "boxes": ["boxes", "--cohort", str(tiny_cohort)],
        "gradmap": ["gradmap", "--cohort", str(tiny_cohort), "--boxes", str(tmp_path)],
        "qc": ["qc", "--cohort", str(tiny_cohort), "--boxes", str(tmp_path)],
        "register": ["register", str(tiny_cohort), "--method", "identity"],
    }[command]
    for out in (afile, afile / "sub"):
        _one_line(runner.invoke(app, [*args, "--out", str(out)]), str(afile), "not a folder")


def test_build_dataset_work_that_is_a_file(tiny_cohort, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = ["build-dataset", str(tiny_cohort), "--work", str(afile), "--dataset-id", "9"]
    _one_line(runner.invoke(app, [*args, "--folds", "2"]), str(afile), "not a folder")
    assert afile.read_text() == "x"


def test_build_dataset_follows_symlinked_inputs(tiny_cohort, tmp_path):
    """A cohort of relative symlinks: the dataset holds hard links to the real files (Linux's
    link(2) linked the symlinks themselves, which dangled inside the dataset)."""
    link_root = tmp_path / "links" / "cohort"
    for src in tiny_cohort.rglob("*.nii.gz"):
        dst = link_root / src.relative_to(tiny_cohort)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(os.path.relpath(src, dst.parent))
    result = runner.invoke(
        app,
        [
            "build-dataset",
            str(link_root),
            "--work",
            str(tmp_path / "w"),
            "--dataset-id",
            "9",
            "--folds",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    raw = tmp_path / "w" / "nnUNet_raw" / "Dataset009_HNTSMRG"
    label = raw / "labelsTr" / "1_midRT.nii.gz"
    assert not label.is_symlink()
    assert label.samefile(tiny_cohort / "1" / "midRT" / "1_midRT_mask.nii.gz")
    shutil.rmtree(tmp_path / "links")  # the dataset does not depend on the links
    assert label.is_file() and (raw / "imagesTr" / "1_midRT_0000.nii.gz").is_file()

"""Cohort discovery in the HNTS-MRG layout."""

from __future__ import annotations

import shutil

import pytest

from hntseg.cohort import FILES, discover, expected_path, shard
from hntseg.errors import InputError


def test_discovers_every_file(tiny_cohort):
    patients = discover(tiny_cohort)
    assert [p.id for p in patients] == ["1", "2", "3", "4"]
    for p in patients:
        for key in FILES:
            assert p.get(key) == expected_path(tiny_cohort, p.id, key)


def test_optional_files_may_be_absent(tiny_cohort, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(tiny_cohort / "1", root / "1")
    (root / "1" / "midRT" / "1_midRT_mask.nii.gz").unlink()
    (root / "1" / "midRT" / "1_preRT_mask_registered.nii.gz").unlink()
    (patient,) = discover(root)
    assert not patient.has("midRT_mask") and not patient.has("preRT_mask_registered")
    with pytest.raises(InputError, match="1_preRT_mask_registered.nii.gz: missing"):
        patient.require("preRT_mask_registered")


def test_missing_required_file_names_path(tiny_cohort, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(tiny_cohort / "2", root / "2")
    (root / "2" / "midRT" / "2_midRT_T2.nii.gz").unlink()
    with pytest.raises(InputError, match=r"2/midRT/2_midRT_T2\.nii\.gz: missing"):
        discover(root)


def test_unreadable_file_names_path(tiny_cohort, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(tiny_cohort / "3", root / "3")
    (root / "3" / "preRT" / "3_preRT_mask.nii.gz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="3_preRT_mask.nii.gz: cannot read"):
        discover(root)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="cohort folder not found"):
        discover(tmp_path / "nope")
    with pytest.raises(InputError, match="no patients"):
        discover(tmp_path)


def test_numeric_id_order_and_selection(tiny_cohort, tmp_path):
    root = tmp_path / "c"
    for src, dst in (("1", "10"), ("2", "9")):
        shutil.copytree(tiny_cohort / src, root / dst)
        for f in (root / dst).rglob(f"{src}_*"):
            f.rename(f.with_name(dst + f.name[len(src) :]))
    assert [p.id for p in discover(root)] == ["9", "10"]
    assert [p.id for p in discover(root, ids=["10"])] == ["10"]
    with pytest.raises(InputError, match="no patient folder for id"):
        discover(root, ids=["5"])


def test_shard_partitions():
    items = list(range(10))
    parts = [shard(items, 3, i) for i in range(3)]
    assert sorted(sum(parts, [])) == items
    with pytest.raises(InputError, match="--part-id 3"):
        shard(items, 3, 3)
    with pytest.raises(InputError, match="--num-parts 0: must be at least 1"):
        shard(items, 0, 0)


def test_run_cases_isolates_failures_and_names_them(caplog):
    from hntseg.cohort import run_cases
    from hntseg.errors import InputError, StageError

    seen: list[str] = []

    def work(case: str) -> bool:
        seen.append(case)
        if case == "b":
            raise InputError("b.nii.gz: empty image")
        return case != "c"  # c: already done

    with pytest.raises(StageError, match=r"demo: 1 case\(s\) failed: 2_midRT"):
        run_cases("demo", [("1_midRT", "a"), ("2_midRT", "b"), ("3_midRT", "c")], work)
    assert seen == ["a", "b", "c"]  # the bad case did not stop the others
    assert run_cases("demo", [("1_midRT", "a"), ("3_midRT", "c")], work) == ["1_midRT", "3_midRT"]


def test_check_phases():
    from hntseg.cohort import check_phases
    from hntseg.errors import InputError

    assert check_phases(("preRT",)) == ["preRT"]
    with pytest.raises(InputError, match="--phase 'midrt'"):
        check_phases(["midRT", "midrt"])


def test_misnamed_patient_folder_is_an_error_not_dropped(tiny_cohort, tmp_path):
    """A folder with preRT/midRT but no <id>_... files: someone's patient, never skipped."""
    root = tmp_path / "c"
    shutil.copytree(tiny_cohort / "1", root / "1")
    shutil.copytree(tiny_cohort / "2", root / "9")  # patient 2's files in folder 9
    with pytest.raises(InputError, match=r"9: has preRT/midRT but no file named 9_<phase>"):
        discover(root)
    shutil.rmtree(root / "9")
    (root / "results").mkdir()  # a folder without preRT/midRT is not a patient: ignored
    assert [p.id for p in discover(root)] == ["1"]


def test_upper_case_suffix_is_named_in_the_error(tiny_cohort, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(tiny_cohort / "1", root / "1")
    t2 = root / "1" / "midRT" / "1_midRT_T2.nii.gz"
    t2.rename(t2.with_name("1_midRT_T2.NII.GZ"))
    with pytest.raises(InputError, match=r"missing \(patient 1\); found 1_midRT_T2\.NII\.GZ"):
        discover(root)


def test_two_formats_of_one_image_is_an_error(tiny_cohort, tmp_path):
    import SimpleITK as sitk

    root = tmp_path / "c"
    shutil.copytree(tiny_cohort / "1", root / "1")
    t2 = root / "1" / "preRT" / "1_preRT_T2.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(t2)), str(t2.with_name("1_preRT_T2.mha")))
    with pytest.raises(InputError, match=r"1_preRT_T2\.nii\.gz: also 1_preRT_T2\.mha"):
        discover(root)


def test_id_order_never_depends_on_hash_order(tmp_path):
    """'7' and '007' are the same number: ties broken by the text, so the splits are the
    same in every process (Python randomises string hashes per process)."""
    import subprocess
    import sys

    from hntseg.cohort import sort_key

    assert sorted(["10", "007", "abc", "7", "2"], key=sort_key) == ["2", "007", "7", "10", "abc"]
    code = (
        "from hntseg.dataset import make_splits;"
        "print(make_splits(['1', '2', '3', '007', '7', 'x'], 3, 0))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "PYTHONHASHSEED": seed},
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outs) == 1, outs
    assert sort_key("²") == (1, 0, "²")  # isdigit() but not a number int() can read


def test_empty_phase_folders_of_a_killed_run_are_not_a_patient(tiny_cohort, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(tiny_cohort / "1", root / "1")
    (root / "2" / "midRT").mkdir(parents=True)  # what a killed registration can leave
    assert [p.id for p in discover(root)] == ["1"]


@pytest.mark.parametrize("kind", ["folder", "symlink"])
def test_folder_or_broken_link_under_an_image_name_is_named(tiny_cohort, tmp_path, kind):
    """It was taken as absent: "missing" or, for an optional file, silently skipped."""
    root = tmp_path / "c"
    shutil.copytree(tiny_cohort / "1", root / "1")
    bad = root / "1" / "midRT" / "1_midRT_mask.nii.gz"
    bad.unlink()
    if kind == "folder":
        bad.mkdir()
    else:
        bad.symlink_to("elsewhere.nii.gz")
    what = "is a folder" if kind == "folder" else "is a broken symlink"
    with pytest.raises(InputError, match=f"1_midRT_mask.nii.gz: midRT_mask {what}"):
        discover(root, required=())

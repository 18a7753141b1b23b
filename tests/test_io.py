"""Image I/O, grid checks and mask validation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image
from hypothesis import given, settings
from hypothesis import strategies as st

from hntseg.errors import InputError
from hntseg.io import (
    Grid,
    array,
    check_same_grid,
    from_array,
    read_image,
    read_json,
    read_mask,
    validate_mask,
    write_image,
    write_json,
)


def test_roundtrip_keeps_geometry_and_axis_order(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (z, y, x)
    img = make_image(arr, spacing=(0.5, 0.7, 2.0), origin=(1.0, 2.0, 3.0))
    path = write_image(img, tmp_path / "a.nii.gz")
    back = read_image(path)
    assert back.GetSize() == (6, 5, 4)  # (x, y, z)
    assert Grid.of(back).shape == (4, 5, 6)
    assert np.allclose(back.GetSpacing(), (0.5, 0.7, 2.0))
    assert np.array_equal(array(back), arr)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_outputs_get_the_umask_mode_not_0600(tmp_path):
    import os

    umask = os.umask(0o022)
    os.umask(umask)
    path = write_json(tmp_path / "r.json", {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(TypeError):
        write_json(tmp_path / "x.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []
    assert not target.exists()


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputError, match=r"nope\.nii\.gz: image not found"):
        read_image(tmp_path / "nope.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    with pytest.raises(InputError, match="junk.nii.gz: cannot read"):
        read_image(junk)
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(InputError, match="bad.json: malformed"):
        read_json(bad)


def test_rejects_2d_and_nan(tmp_path):
    flat = sitk.GetImageFromArray(np.zeros((5, 5), np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="2D, expected 3D"):
        read_image(tmp_path / "flat.nii.gz")
    arr = np.zeros((3, 4, 5), np.float32)
    arr[1, 2, 3] = np.nan
    sitk.WriteImage(make_image(arr), str(tmp_path / "nan.mha"))
    with pytest.raises(InputError, match=r"nan\.mha: image contains NaN"):
        read_image(tmp_path / "nan.mha")


@pytest.mark.parametrize(
    ("values", "dtype", "message"),
    [
        ([0, 1, 3], np.uint8, "labels 3"),
        ([0, 1, 2, 255], np.uint8, "labels 255"),
        ([0.0, 1.5], np.float32, "non-integer"),
        ([0.0, np.nan], np.float32, "NaN"),
    ],
)
def test_mask_validation_rejects(values, dtype, message):
    arr = np.zeros((2, 2, 4), dtype)
    arr.flat[: len(values)] = values
    with pytest.raises(InputError, match=message):
        validate_mask(make_image(arr), "m.nii.gz")


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-3, 5), min_size=1, max_size=24),
    dtype=st.sampled_from([np.int8, np.int16, np.uint8, np.uint16, np.int32, np.float32]),
)
def test_mask_is_valid_exactly_when_every_value_is_a_label(values, dtype):
    """validate_mask decides by min and max (no np.unique over the volume): the same
    verdict as the definition, labels {0, 1, 2}, and a bad label is named."""
    if np.dtype(dtype).kind == "u":
        values = [abs(v) for v in values]
    arr = np.zeros((2, 3, 4), dtype)
    arr.flat[: len(values)] = values
    bad = sorted({v for v in arr.ravel().tolist() if v not in (0, 1, 2)})
    if bad:
        with pytest.raises(InputError, match=f"labels {int(bad[0])}"):
            validate_mask(make_image(arr), "m.nii.gz")
    else:
        out = validate_mask(make_image(arr), "m.nii.gz")
        assert np.array_equal(sitk.GetArrayFromImage(out), arr.astype(np.uint8))


def test_mask_validation_accepts_float_and_int_labels(tmp_path):
    arr = np.zeros((2, 3, 4), np.float32)
    arr[0, 0, :2] = [1.0, 2.0]
    sitk.WriteImage(make_image(arr), str(tmp_path / "m.nii.gz"))
    mask = read_mask(tmp_path / "m.nii.gz")
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(array(mask))) == {0, 1, 2}


def _img(size=(6, 5, 4), spacing=(0.5, 0.5, 2.0), origin=(0, 0, 0), direction=None):
    img = sitk.Image(list(size), sitk.sitkUInt8)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    return img


@pytest.mark.parametrize(
    ("other", "what"),
    [
        (_img(spacing=(0.5, 0.5, 2.5)), "spacing"),
        (_img(size=(6, 5, 5)), "size"),
        (_img(origin=(0, 0, 1.0)), "origin"),
        (_img(direction=(0, 1, 0, 1, 0, 0, 0, 0, 1)), "direction"),
    ],
)
def test_grid_check_rejects_mismatch(other, what):
    with pytest.raises(InputError, match=rf"other\.nii\.gz: not on the grid.*{what}"):
        check_same_grid(_img(), other, "other.nii.gz")


def test_flipped_axes_are_named_as_such_not_as_an_origin():
    """nibabel's RAS canonical copy of an LPS image: same space, x and y flipped, so the
    origin differs too; the message named the origin, not the direction to fix."""
    lps = _img(origin=(10.0, 20.0, 0.0))
    ras = _img(origin=(-12.0, -22.0, 0.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    with pytest.raises(InputError, match=r"direction .*axes flipped: reorient or resample"):
        check_same_grid(lps, ras, "ras.nii.gz")


def test_grid_check_accepts_tiny_float_noise():
    check_same_grid(_img(), _img(spacing=(0.5 + 1e-7, 0.5, 2.0)), "x")


def test_grid_dict_roundtrip_and_from_array():
    grid = Grid.of(_img(spacing=(0.4, 0.6, 1.2), origin=(1, 2, 3)))
    assert Grid.from_dict(grid.to_dict()) == grid
    assert grid.voxel_volume == pytest.approx(0.4 * 0.6 * 1.2)
    img = from_array(np.ones(grid.shape, np.uint8), grid)
    assert Grid.of(img) == grid
    with pytest.raises(ValueError):
        from_array(np.ones((1, 2, 3), np.uint8), grid)


def test_nan_in_nifti_is_caught_though_itk_reads_it_as_zero(tmp_path):
    arr = np.ones((4, 5, 6), np.float32)
    arr[1, 2, 3] = np.nan
    path = tmp_path / "t2.nii.gz"
    sitk.WriteImage(make_image(arr), str(path))
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # ITK's view
    with pytest.raises(InputError, match=r"t2\.nii\.gz: T2 contains NaN"):
        read_image(path, "T2")
    sitk.WriteImage(make_image(np.ones((4, 5, 6), np.float32)), str(path))
    read_image(path, "T2")  # a finite float NIfTI passes


@pytest.mark.parametrize(
    "name, message",
    [
        ("g.mhd", "cannot write an image there"),
        ("g.xyz", "cannot write"),
        ("d.nii.gz", "is a folder"),
    ],
)
def test_unwritable_image_paths_are_one_line_errors(tmp_path, name, message):
    (tmp_path / "d.nii.gz").mkdir()
    with pytest.raises(InputError, match=message) as exc:
        write_image(make_image(np.zeros((2, 3, 4), np.float32)), tmp_path / name)
    assert "\n" not in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.nii.gz"]  # nothing left behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        write_json(tmp_path / "file" / "r.json", {})


def test_record_outputs_hold_from_another_folder_and_inputs_must_exist(tmp_path, monkeypatch):
    from hntseg.records import is_done, write_record

    src = tmp_path / "in.txt"
    src.write_text("a")
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    out = write_json("../o/r.json", {})  # relative to this working directory
    rec = tmp_path / "o" / "r.record.json"
    write_record(rec, "t", {"src": src}, {"p": 1}, [out])
    monkeypatch.chdir(tmp_path)
    assert is_done(rec, {"src": src}, {"p": 1})
    assert not is_done(rec, {"src": src}, {"p": 2})
    src.unlink()
    assert not is_done(rec, {"src": src}, {"p": 1})  # no hashing of a missing file


@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_truncated_nifti_is_an_error_not_zeros(tmp_path, name, dtype):
    """ITK reads a NIfTI cut short with zeros for the missing slices and no error."""
    arr = (np.random.default_rng(0).random((10, 20, 20)) * 2).astype(dtype)
    path = write_image(make_image(arr), tmp_path / name)
    read_image(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"{name}: image is truncated or corrupt"):
        read_image(path)


def test_what_is_wrong_with_a_path_is_said(tmp_path, monkeypatch):
    import os

    (tmp_path / "folder.nii.gz").mkdir()
    (tmp_path / "dangling.nii.gz").symlink_to("gone.nii.gz")
    with pytest.raises(InputError, match="folder.nii.gz: mask is a folder"):
        read_mask(tmp_path / "folder.nii.gz")
    with pytest.raises(InputError, match=r"dangling.nii.gz: T2 is a broken symlink \(to gone"):
        read_image(tmp_path / "dangling.nii.gz", "T2")
    path = write_image(make_image(np.zeros((2, 3, 4), np.uint8)), tmp_path / "m.nii.gz")
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # root can read anything
    with pytest.raises(InputError, match="m.nii.gz: mask is not readable"):
        read_mask(path)


def test_nifti_short_by_less_than_its_header_is_caught(tmp_path):
    """The expected size counted the header's vox_offset, which nibabel reports as 0: a file
    short by up to 352 bytes passed (with the missing voxels read as 0)."""
    import nibabel

    arr = np.arange(20 * 21 * 7, dtype=np.int16).reshape(20, 21, 7)
    path = tmp_path / "a.nii"
    nibabel.save(nibabel.Nifti1Image(arr, np.eye(4)), str(path))
    read_image(path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(InputError, match=r"truncated or corrupt \(6132 of 6232 bytes\)"):
        read_image(path)


def test_valid_gzip_variants_are_read(tmp_path):
    """Bytes after the gzip stream (ITK ignores them) and multi-member gzip are no damage."""
    import gzip

    arr = (np.arange(10 * 20 * 20) % 3).astype(np.uint8).reshape(10, 20, 20)
    path = write_image(make_image(arr), tmp_path / "a.nii.gz")
    raw = gzip.decompress(path.read_bytes())
    variants = {
        "garbage.nii.gz": path.read_bytes() + b"trailing!",
        "zeros.nii.gz": path.read_bytes() + bytes(100),
        "members.nii.gz": gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]),
    }
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
        assert np.array_equal(array(read_mask(tmp_path / name)), arr), name


def test_grid_mismatch_shows_a_small_offset():
    """A 0.001 mm origin offset must be visible in the message, not two equal-looking
    rounded triples."""
    a = Grid((8, 8, 4), (0.5, 0.5, 2.0), (-120.3, -95.7, -40.1), tuple(np.eye(3).ravel()))
    b = Grid((8, 8, 4), (0.5, 0.5, 2.0), (-120.301, -95.7, -40.1), tuple(np.eye(3).ravel()))
    message = a.mismatch(b, tol=1e-5)
    assert "-120.301" in message and "differs by up to 0.001 mm" in message


def test_a_truncated_mha_is_not_reported_as_missing(tmp_path):
    """ITK's last line for a cut-short .mha is a stale 'No such file or directory'."""
    image = sitk.GetImageFromArray(np.ones((6, 32, 32), np.float32))
    whole = tmp_path / "whole.mha"
    sitk.WriteImage(image, str(whole))
    cut = tmp_path / "cut.mha"
    cut.write_bytes(whole.read_bytes()[:2000])
    with pytest.raises(InputError) as info:
        read_image(cut, "T2 image")
    message = str(info.value)
    assert "No such file" not in message and "cannot be read" in message
    assert message.startswith(f"{cut}: cannot read T2 image")

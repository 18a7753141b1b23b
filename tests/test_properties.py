"""Property-based invariants (hypothesis) of boxes, gradient maps, metrics, grids and splits.

Small synthetic volumes only (at most ~40^3 voxels). Each test names the invariant and the
promise it rests on (docs/*.md, the module docstrings, DESIGN.md). What the other test
files already check with @given (boxes contain their component with margins in range,
maps in [0, 1] and zero outside the boxes, pooled HD95/MSD equal MedPy, split basics) is
not repeated here.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_image
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from hntseg.analysis import spearman, wilcoxon_p
from hntseg.boxes import Box, BoxSet, find_boxes, parse_margin, read_boxes, write_boxes
from hntseg.cohort import shard, sort_key
from hntseg.dataset import make_splits
from hntseg.errors import InputError
from hntseg.evaluate import dscagg, load_pair, score_arrays
from hntseg.gradmap import box_gradient, gradient_map
from hntseg.io import Grid, from_array
from hntseg.metrics import component_counts, dice, surface_distances

FAST = settings(max_examples=15, deadline=None)
FACE = ndimage.generate_binary_structure(3, 1)

# --------------------------------------------------------------------------- helpers

SEEDS = st.integers(0, 2**31 - 1)
SHAPES = st.tuples(st.integers(3, 10), st.integers(4, 16), st.integers(4, 16))  # (z, y, x)
SPACINGS = st.tuples(
    st.floats(0.3, 3.0, allow_nan=False),
    st.floats(0.3, 3.0, allow_nan=False),
    st.floats(0.5, 4.0, allow_nan=False),
)  # (x, y, z) mm
ORIGINS = st.tuples(*[st.floats(-300.0, 300.0, allow_nan=False)] * 3)


@st.composite
def axis_directions(draw: st.DrawFn) -> tuple[float, ...]:
    """A row-major 3x3 signed axis permutation (voxel centres map onto voxel centres)."""
    perm = draw(st.permutations([0, 1, 2]))
    signs = draw(st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3))
    m = np.zeros((3, 3))
    for row, (col, sign) in enumerate(zip(perm, signs, strict=True)):
        m[row, col] = sign
    return tuple(float(v) for v in m.ravel())


@st.composite
def rotations(draw: st.DrawFn) -> tuple[float, ...]:
    """A row-major random proper rotation (an oblique scan)."""
    q = np.linalg.qr(np.random.default_rng(draw(SEEDS)).normal(size=(3, 3)))[0]
    return tuple(float(v) for v in (q * np.sign(np.linalg.det(q))).ravel())


def directions() -> st.SearchStrategy[tuple[float, ...]]:
    return st.one_of(axis_directions(), rotations())


image = make_image  # (z, y, x) array, (x, y, z) geometry


def label_mask(seed: int, shape: tuple[int, ...], threshold: float = 0.55) -> np.ndarray:
    """Random blobs of labels 1 and 2 (uint8, z, y, x)."""
    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random(shape), 1.0) > threshold
    return np.where(blobs, rng.integers(1, 3, size=shape), 0).astype(np.uint8)


def binary_blob(seed: int, shape: tuple[int, ...], quantile: float) -> np.ndarray:
    """A random non-empty boolean blob mask, often touching the image border."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random(shape), 1.0)
    m = noise > np.quantile(noise, quantile)
    if not m.any():
        m.flat[rng.integers(m.size)] = True
    return m


def t2_array(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth-ish random float64 'T2' with edges."""
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 0.7) * 1000.0 + rng.random(shape) * 50.0


@st.composite
def boxes_in(draw: st.DrawFn, shape: tuple[int, ...], n_max: int = 4) -> list[Box]:
    """Random (possibly overlapping) boxes inside an array of `shape`."""
    out = []
    for _ in range(draw(st.integers(1, n_max))):
        start, stop = [], []
        for n in shape:
            a = draw(st.integers(0, n - 1))
            b = draw(st.integers(a, n - 1))
            start.append(a)
            stop.append(b)
        out.append(Box(draw(st.sampled_from([1, 2])), tuple(start), tuple(stop)))
    return out


def box_key(b: Box) -> tuple:
    return (b.label, b.start, b.stop, b.component, b.voxels, b.margins_low, b.margins_high)


# --------------------------------------------------------------------------- boxes


@FAST
@given(
    seed=SEEDS,
    shape=SHAPES,
    spacing=SPACINGS,
    origin=ORIGINS,
    direction=directions(),
    margin=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    box_seed=st.integers(0, 10_000),
)
def test_boxes_are_index_ranges_independent_of_geometry(
    seed: int,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: tuple[float, ...],
    margin: tuple[int, int],
    box_seed: int,
) -> None:
    """Boxes are voxel index ranges on the mask's grid: spacing, origin and direction change
    nothing but `volume_mm3` (= voxels x voxel volume) and the grid recorded (docs/boxes.md)."""
    arr = label_mask(seed, shape)
    lo, hi = min(margin), max(margin)
    plain = find_boxes(image(arr), (lo, hi), seed=box_seed)
    placed = find_boxes(image(arr, spacing, origin, direction), (lo, hi), seed=box_seed)
    assert [box_key(b) for b in placed.boxes] == [box_key(b) for b in plain.boxes]
    voxel_volume = float(np.prod(spacing))
    for b in placed.boxes:
        assert b.volume_mm3 == pytest.approx(b.voxels * voxel_volume, rel=1e-9, abs=1e-6)
    assert placed.grid == Grid(shape[::-1], spacing, origin, direction)


@FAST
@given(
    seed=SEEDS,
    shape=SHAPES,
    pad_low=st.tuples(*[st.integers(0, 6)] * 3),
    pad_high=st.tuples(*[st.integers(0, 6)] * 3),
    margin=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    box_seed=st.integers(0, 10_000),
)
def test_boxes_move_with_the_mask(
    seed: int,
    shape: tuple[int, int, int],
    pad_low: tuple[int, int, int],
    pad_high: tuple[int, int, int],
    margin: tuple[int, int],
    box_seed: int,
) -> None:
    """Translation equivariance: padding the mask with background moves every box by the
    low padding (same seed -> same draws, drawn in component order), up to the clipping to
    the smaller image. Also exercises find_boxes' crop to the tumour extent."""
    arr = label_mask(seed, shape)
    lo, hi = min(margin), max(margin)
    small = find_boxes(image(arr), (lo, hi), seed=box_seed).boxes
    padded_arr = np.pad(arr, list(zip(pad_low, pad_high, strict=True)))
    big = find_boxes(image(padded_arr), (lo, hi), seed=box_seed).boxes
    assert len(big) == len(small)
    off, last = np.array(pad_low), np.array(shape) - 1
    for s, b in zip(small, big, strict=True):
        assert (s.label, s.component, s.voxels) == (b.label, b.component, b.voxels)
        assert (s.margins_low, s.margins_high) == (b.margins_low, b.margins_high)
        # the big box, moved back and clipped to the small image, is the small box
        assert tuple(np.clip(np.array(b.start) - off, 0, last)) == s.start
        assert tuple(np.clip(np.array(b.stop) - off, 0, last)) == s.stop


@FAST
@given(seed=SEEDS, shape=SHAPES, box_seed=st.integers(0, 10_000))
def test_label_1_boxes_ignore_label_2(
    seed: int, shape: tuple[int, int, int], box_seed: int
) -> None:
    """Labels are never merged and GTVp is drawn first: deleting every GTVn voxel leaves
    the GTVp boxes, random margins included, unchanged; with a fixed margin the GTVn boxes
    of a mask equal the GTVp boxes of that mask with the labels swapped (docs/boxes.md)."""
    arr = label_mask(seed, shape)
    full = find_boxes(image(arr), (2, 6), seed=box_seed).boxes
    only1 = find_boxes(image(np.where(arr == 1, 1, 0).astype(np.uint8)), (2, 6), box_seed)
    assert [box_key(b) for b in only1.boxes] == [box_key(b) for b in full if b.label == 1]

    swapped = np.choose(arr, [0, 2, 1]).astype(np.uint8)
    fixed = find_boxes(image(arr), 3).boxes
    fixed_swapped = find_boxes(image(swapped), 3).boxes

    def extents(boxes: list[Box], label: int) -> list[tuple]:
        return [(b.start, b.stop, b.voxels) for b in boxes if b.label == label]

    assert extents(fixed_swapped, 1) == extents(fixed, 2)
    assert extents(fixed_swapped, 2) == extents(fixed, 1)


@FAST
@given(
    seed=SEEDS,
    shape=SHAPES,
    pixel=st.sampled_from(
        [sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkInt32, sitk.sitkFloat32]
    ),
    box_seed=st.integers(0, 10_000),
)
def test_boxes_same_for_any_label_pixel_type(
    seed: int, shape: tuple[int, int, int], pixel: int, box_seed: int
) -> None:
    """A mask is its labels, whatever the pixel type holding them (io.validate_mask casts
    integer-valued masks to uint8): the same labels give the same boxes."""
    arr = label_mask(seed, shape)
    ref = find_boxes(image(arr), (2, 6), seed=box_seed)
    other = find_boxes(sitk.Cast(image(arr), pixel), (2, 6), seed=box_seed)
    assert [box_key(b) for b in other.boxes] == [box_key(b) for b in ref.boxes]


@FAST
@given(
    seed=SEEDS,
    shape=SHAPES,
    spacing=SPACINGS,
    origin=ORIGINS,
    direction=directions(),
    margin=st.one_of(st.integers(0, 5), st.tuples(st.integers(0, 3), st.integers(4, 7))),
    box_seed=st.one_of(st.none(), st.integers(0, 2**32)),
)
def test_boxes_file_roundtrip(
    seed: int,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: tuple[float, ...],
    margin: int | tuple[int, int],
    box_seed: int | None,
) -> None:
    """write_boxes then read_boxes gives back the same boxes, grid (to the last bit), seed
    and margin, and the file validates against the mask's own grid; writing twice gives the
    same bytes ("same mask + seed -> same bytes", docs/boxes.md)."""
    mask = image(label_mask(seed, shape), spacing, origin, direction)
    boxset = find_boxes(mask, margin, seed=box_seed, source="mask.nii.gz")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_boxes(Path(tmp) / "boxes.json", boxset)
        again = find_boxes(mask, margin, seed=box_seed, source="mask.nii.gz")
        same_bytes = write_boxes(Path(tmp) / "again.json", again).read_bytes()
        assert (same_bytes == path.read_bytes()) or box_seed is None
        back = read_boxes(path, Grid.of(mask))
    assert back.grid == boxset.grid == Grid.of(mask)
    assert [box_key(b) for b in back.boxes] == [box_key(b) for b in boxset.boxes]
    assert [b.volume_mm3 for b in back.boxes] == [b.volume_mm3 for b in boxset.boxes]
    assert back.seed == box_seed and back.margin == parse_margin(margin)


@settings(max_examples=40, deadline=None)
@given(lo=st.integers(0, 40), extra=st.integers(0, 40))
def test_parse_margin_forms_agree(lo: int, extra: int) -> None:
    """ "LO-HI", (LO, HI) and an int mean the same margin; LO == HI collapses to the int;
    HI < LO is refused (docs/boxes.md, --margin)."""
    hi = lo + extra
    expected = lo if lo == hi else (lo, hi)
    assert parse_margin(f"{lo}-{hi}") == parse_margin((lo, hi)) == expected
    assert parse_margin(f" {lo} - {hi} ") == expected
    assert parse_margin(str(lo)) == parse_margin(lo) == lo
    if hi > lo:
        with pytest.raises(InputError):
            parse_margin(f"{hi}-{lo}")


# --------------------------------------------------------------------------- gradient map


@st.composite
def t2_and_boxes(draw: st.DrawFn) -> tuple[np.ndarray, list[Box]]:
    shape = draw(SHAPES)
    return t2_array(draw(SEEDS), shape), draw(boxes_in(shape))


@FAST
@given(
    case=t2_and_boxes(),
    a=st.one_of(st.floats(0.05, 20.0), st.floats(-20.0, -0.05)),
    b=st.floats(-1000.0, 1000.0),
    context=st.integers(0, 3),
)
def test_gradmap_invariant_to_affine_intensity_change(
    case: tuple[np.ndarray, list[Box]], a: float, b: float, context: int
) -> None:
    """Each crop is min-max normalised, its gradient *magnitude* taken and rescaled to 0-1
    within the box (docs/gradmap.md), so a*T2 + b gives the same map for any a != 0 (a < 0
    flips the normalised crop to 1 - crop, whose gradient magnitude is the same). The T2's
    scanner scaling must not matter."""
    arr, boxes = case
    ref = image(arr)
    grid = Grid.of(ref)
    bs = BoxSet(boxes, grid)
    base = sitk.GetArrayFromImage(gradient_map(ref, bs, context=context))
    moved = sitk.GetArrayFromImage(gradient_map(image(a * arr + b), bs, context=context))
    np.testing.assert_allclose(moved, base, atol=2e-4)


@FAST
@given(case=t2_and_boxes(), context=st.integers(0, 3), seed=SEEDS)
def test_gradmap_depends_only_on_the_boxes_and_their_context(
    case: tuple[np.ndarray, list[Box]], context: int, seed: int
) -> None:
    """Only the box crops (padded by `context` voxels for the gradient) are read: changing
    the T2 anywhere farther than `context` voxels from every box leaves the map bit-identical
    (docs/gradmap.md: "Only the boxes are computed (crop first)", --context)."""
    arr, boxes = case
    near = np.zeros(arr.shape, bool)
    for box in boxes:
        lo = np.maximum(np.array(box.start) - context, 0)
        hi = np.array(box.stop) + 1 + context
        near[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    other = arr.copy()
    noise = np.random.default_rng(seed).random(arr.shape) * 5000.0 - 2500.0
    other[~near] = noise[~near]
    grid = Grid.of(image(arr))
    one = gradient_map(image(arr), BoxSet(boxes, grid), context=context)
    two = gradient_map(image(other), BoxSet(boxes, grid), context=context)
    assert np.array_equal(sitk.GetArrayFromImage(one), sitk.GetArrayFromImage(two))


@FAST
@given(case=t2_and_boxes(), gain=st.floats(0.0, 5.0), sigma=st.floats(0.5, 2.0))
def test_gradmap_box_values_span_zero_to_gain(
    case: tuple[np.ndarray, list[Box]], gain: float, sigma: float
) -> None:
    """Per box the gradient is rescaled to exactly 0-1, then times `gain`, clipped at 1: a
    box's values equal min(gain x (its gain-1 values), 1), its minimum is 0 and its maximum
    min(gain, 1) unless the box's gradient is flat (then all min(gain, 1))."""
    arr, boxes = case
    for box in boxes:
        unit = box_gradient(arr, box, sigma, 1.0).astype(np.float64)
        got = box_gradient(arr, box, sigma, gain)
        assert got.dtype == np.float32 and got.shape == box.shape
        np.testing.assert_allclose(got, np.minimum(unit * gain, 1.0), rtol=1e-6, atol=1e-7)
        top = np.float32(min(gain, 1.0))
        assert got.max() == pytest.approx(top, abs=1e-7)
        if not (unit == 1).all():
            assert unit.min() == 0.0 and unit.max() == 1.0


@FAST
@given(case=t2_and_boxes())
def test_gradmap_later_box_overwrites_and_disjoint_order_free(
    case: tuple[np.ndarray, list[Box]],
) -> None:
    """Boxes are applied in order and later ones overwrite (DESIGN: GTVn after GTVp): the
    last box's region holds exactly its own values, every voxel holds the value of the last
    box covering it, and reordering boxes that do not overlap changes nothing."""
    arr, boxes = case
    grid = Grid.of(image(arr))
    out = sitk.GetArrayFromImage(gradient_map(image(arr), BoxSet(boxes, grid)))
    owner = np.full(arr.shape, -1)
    for i, box in enumerate(boxes):
        owner[box.slices] = i
    for i, box in enumerate(boxes):
        own = box_gradient(arr, box)
        mine = owner[box.slices] == i
        assert np.array_equal(out[box.slices][mine], own[mine])
    assert (out[owner == -1] == 0).all()
    disjoint = [b for i, b in enumerate(boxes) if (owner[b.slices] == i).all()]
    only = [b for b in disjoint if all(not _overlap(b, c) for c in disjoint if c is not b)]
    if len(only) > 1:
        fwd = gradient_map(image(arr), BoxSet(only, grid))
        rev = gradient_map(image(arr), BoxSet(only[::-1], grid))
        assert np.array_equal(sitk.GetArrayFromImage(fwd), sitk.GetArrayFromImage(rev))


def _overlap(a: Box, b: Box) -> bool:
    return all(
        max(s0, s1) <= min(e0, e1)
        for s0, e0, s1, e1 in zip(a.start, a.stop, b.start, b.stop, strict=True)
    )


@FAST
@given(
    case=t2_and_boxes(),
    spacing=SPACINGS,
    origin=ORIGINS,
    direction=directions(),
    pixel=st.sampled_from([sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkInt16]),
)
def test_gradmap_on_the_t2_grid_and_spacing_ignored(
    case: tuple[np.ndarray, list[Box]],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: tuple[float, ...],
    pixel: int,
) -> None:
    """The map is float32 on the T2's exact grid (size, spacing, origin, direction), and with
    sigma in voxels ("spacing ignored", DESIGN.md) its values do not depend on the geometry."""
    arr, boxes = case
    t2 = sitk.Cast(image(arr, spacing, origin, direction), pixel)
    plain = sitk.Cast(image(arr), pixel)
    gm = gradient_map(t2, BoxSet(boxes, Grid.of(t2)))
    ref = gradient_map(plain, BoxSet(boxes, Grid.of(plain)))
    assert Grid.of(gm) == Grid.of(t2) and gm.GetPixelID() == sitk.sitkFloat32
    assert np.array_equal(sitk.GetArrayFromImage(gm), sitk.GetArrayFromImage(ref))


@FAST
@given(case=t2_and_boxes(), spacing=st.floats(0.3, 3.0), sigma=st.floats(0.5, 2.0))
def test_sigma_mm_on_isotropic_grid_is_sigma_in_voxels(
    case: tuple[np.ndarray, list[Box]], spacing: float, sigma: float
) -> None:
    """--sigma-mm X is converted per axis with the spacing (sigma = X / spacing voxels): on
    an isotropic grid of spacing s it equals --sigma X / s."""
    arr, boxes = case
    t2 = image(arr, (spacing,) * 3)
    bs = BoxSet(boxes, Grid.of(t2))
    mm = sitk.GetArrayFromImage(gradient_map(t2, bs, sigma_mm=sigma * spacing))
    vox = sitk.GetArrayFromImage(gradient_map(t2, bs, sigma=sigma))
    np.testing.assert_allclose(mm, vox, atol=1e-5)


@FAST
@given(case=t2_and_boxes(), sigma=st.floats(0.5, 2.0), more=st.integers(0, 2))
def test_context_at_kernel_radius_equals_whole_image_gradient(
    case: tuple[np.ndarray, list[Box]], sigma: float, more: int
) -> None:
    """docs/gradmap.md: with --context N >= the kernel radius int(4 sigma + 0.5) the values
    equal a whole-image gradient's inside the box (rescaled within the box, gain 2)."""
    arr, boxes = case
    whole = ndimage.gaussian_gradient_magnitude(arr, sigma)
    context = int(4 * sigma + 0.5) + more
    for box in boxes:
        ref = whole[box.slices]
        ref = (ref - ref.min()) / np.ptp(ref) if np.ptp(ref) > 0 else np.ones_like(ref)
        ours = box_gradient(arr, box, sigma, 2.0, context)
        np.testing.assert_allclose(ours, np.minimum(ref * 2.0, 1.0), atol=1e-5)


# --------------------------------------------------------------------------- metrics


@st.composite
def mask_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Two non-empty random blobs on a small grid and a (z, y, x) spacing."""
    shape = draw(SHAPES)
    a = binary_blob(draw(SEEDS), shape, draw(st.floats(0.5, 0.97)))
    b = binary_blob(draw(SEEDS), shape, draw(st.floats(0.5, 0.97)))
    sx, sy, sz = draw(SPACINGS)
    return a, b, (sz, sy, sx)


def distance_values(a: np.ndarray, b: np.ndarray, spacing_zyx) -> tuple[float, ...]:
    sd = surface_distances(a, b, spacing_zyx)
    assert sd is not None
    return (sd.hd95("pooled"), sd.hd95("directed"), sd.msd(), sd.hd())


@settings(max_examples=30, deadline=None)
@given(pair=mask_pairs())
def test_overlap_and_distances_symmetric(pair) -> None:
    """Dice, pooled and directed HD95, MSD and HD treat both masks alike (each is defined
    over both directions, docs/evaluate.md): swapping them changes no value; Dice is in
    [0, 1] and 1 exactly for identical masks, whose distances are all 0."""
    a, b, spacing = pair
    assert dice(a, b) == dice(b, a)
    assert 0.0 <= dice(a, b) <= 1.0
    # (MSD sums in another order: equal to rounding, not to the bit)
    swapped = distance_values(b, a, spacing)
    assert distance_values(a, b, spacing) == pytest.approx(swapped, rel=1e-12, abs=1e-12)
    assert dice(a, a.copy()) == 1.0
    assert distance_values(a, a.copy(), spacing) == (0.0, 0.0, 0.0, 0.0)
    if not np.array_equal(a, b):
        assert dice(a, b) < 1.0


@settings(max_examples=30, deadline=None)
@given(
    pair=mask_pairs(),
    pad_low=st.tuples(*[st.integers(0, 5)] * 3),
    pad_high=st.tuples(*[st.integers(0, 5)] * 3),
)
def test_distances_invariant_to_translating_both_masks(pair, pad_low, pad_high) -> None:
    """Moving both masks together inside a larger image (background outside the image, as
    MedPy) leaves Dice and every distance bit-identical, masks on the border included."""
    a, b, spacing = pair
    pads = list(zip(pad_low, pad_high, strict=True))
    pa, pb = np.pad(a, pads), np.pad(b, pads)
    assert dice(pa, pb) == dice(a, b)
    assert distance_values(pa, pb, spacing) == distance_values(a, b, spacing)


@settings(max_examples=30, deadline=None)
@given(pair=mask_pairs(), k=st.floats(0.1, 10.0))
def test_distances_scale_with_the_spacing(pair, k: float) -> None:
    """Distances are in mm: multiplying every spacing by k multiplies HD95 (both kinds), MSD
    and HD by k; Dice (a voxel-count ratio) does not change."""
    a, b, spacing = pair
    base = distance_values(a, b, spacing)
    scaled = distance_values(a, b, tuple(k * s for s in spacing))
    assert scaled == pytest.approx(tuple(k * v for v in base), rel=1e-9, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(pair=mask_pairs(), axis=st.integers(0, 2), perm=st.permutations([0, 1, 2]))
def test_distances_invariant_to_flips_and_axis_permutations(pair, axis: int, perm) -> None:
    """Surface distances are Euclidean in mm: mirroring both masks, or permuting the array
    axes together with the spacing, is an isometry and changes no metric."""
    a, b, spacing = pair
    base = distance_values(a, b, spacing)
    flipped = distance_values(np.flip(a, axis), np.flip(b, axis), spacing)
    assert flipped == pytest.approx(base, rel=1e-12, abs=1e-12)
    ta, tb = np.transpose(a, perm), np.transpose(b, perm)
    permuted = distance_values(ta, tb, tuple(spacing[p] for p in perm))
    assert permuted == pytest.approx(base, rel=1e-12, abs=1e-12)


@st.composite
def label_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Prediction and ground truth label maps (either may lack a structure) and (x, y, z)
    spacing."""
    shape = draw(SHAPES)
    threshold = draw(st.sampled_from([0.5, 0.55, 0.6, 1.1]))  # 1.1: empty
    pred = label_mask(draw(SEEDS), shape, threshold)
    gt = label_mask(draw(SEEDS), shape, draw(st.sampled_from([0.5, 0.55, 0.6, 1.1])))
    if draw(st.booleans()):  # sometimes drop a structure from one side
        side, label = draw(st.sampled_from([pred, gt])), draw(st.sampled_from([1, 2]))
        side[side == label] = 0
    return pred, gt, draw(SPACINGS)


def _same(x: float, y: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-12, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(case=label_pairs(), mode=st.sampled_from(["pooled", "directed"]))
def test_score_arrays_conventions_and_role_swap(case, mode: str) -> None:
    """Per structure (docs/evaluate.md): volumes = voxel count x voxel volume; DSC NaN iff
    both masks lack it, 0 if only one has it; HD95/MSD NaN iff either lacks it. Swapping
    prediction and ground truth keeps DSC/HD95/MSD, swaps the volumes and swaps FP with FN;
    TP + FN is the number of ground-truth components (face-connected)."""
    pred, gt, spacing = case
    rows = score_arrays(pred, gt, spacing, hd95=mode)
    swapped = score_arrays(gt, pred, spacing, hd95=mode)
    voxvol = spacing[0] * spacing[1] * spacing[2]
    for r, s in zip(rows, swapped, strict=True):
        p, g = pred == r["label"], gt == r["label"]
        n_p, n_g = int(p.sum()), int(g.sum())
        assert r["pred_mm3"] == n_p * voxvol and r["gt_mm3"] == n_g * voxvol
        assert r["tp_mm3"] == int((p & g).sum()) * voxvol
        assert math.isnan(r["dsc"]) == (n_p == 0 and n_g == 0)
        if (n_p == 0) != (n_g == 0):
            assert r["dsc"] == 0.0
        undefined = n_p == 0 or n_g == 0
        assert math.isnan(r["hd95"]) == undefined and math.isnan(r["msd"]) == undefined
        for key in ("dsc", "hd95", "msd", "tp_mm3"):
            assert _same(r[key], s[key]), key
        assert (r["pred_mm3"], r["gt_mm3"]) == (s["gt_mm3"], s["pred_mm3"])
        assert (r["fp"], r["fn"]) == (s["fn"], s["fp"])
        assert r["tp"] + r["fn"] == ndimage.label(g, structure=FACE)[1]
        assert r["fp"] <= ndimage.label(p, structure=FACE)[1]


@settings(max_examples=30, deadline=None)
@given(case=label_pairs())
def test_score_arrays_structures_independent(case) -> None:
    """GTVp and GTVn are scored separately: swapping labels 1 and 2 in both masks swaps the
    two rows' values and nothing else."""
    pred, gt, spacing = case
    swap = np.array([0, 2, 1], np.uint8)
    rows = score_arrays(pred, gt, spacing)
    other = score_arrays(swap[pred], swap[gt], spacing)
    keys = ("pred_mm3", "gt_mm3", "tp_mm3", "dsc", "hd95", "msd", "tp", "fp", "fn")
    for r, s in zip(rows, other[::-1], strict=True):
        assert all(_same(r[k], s[k]) for k in keys)


@st.composite
def cohorts(draw: st.DrawFn) -> list[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    return draw(st.lists(label_pairs(), min_size=1, max_size=4))


def _rows(cases) -> list[dict]:
    return [
        {"id": str(i), **row}
        for i, (pred, gt, spacing) in enumerate(cases)
        for row in score_arrays(pred, gt, spacing, metrics=("dscagg", "dsc"))
    ]


def _agg_same(x: dict, y: dict) -> bool:
    return all(_same(x[k], y[k]) for k in ("GTVp", "GTVn", "mean"))


@settings(max_examples=25, deadline=None)
@given(cases=cohorts(), k=st.floats(0.2, 5.0), seed=SEEDS, times=st.integers(2, 3))
def test_dscagg_invariants(cases, k: float, seed: int, times: int) -> None:
    """DSCagg (DESIGN.md, docs/evaluate.md) is in [0, 1]; independent of the order of the
    cases; unchanged by adding a case where both masks are empty, by scaling every case's
    voxels by the same factor, or by counting every case twice; for one case it is that
    case's DSC; a false-positive-only case never raises it. Cases weigh by physical volume:
    a case whose voxels are `times` times larger counts as that case `times` times."""
    rows = _rows(cases)
    agg = dscagg(rows)
    for name in ("GTVp", "GTVn"):
        assert math.isnan(agg[name]) or 0.0 <= agg[name] <= 1.0 + 1e-12
    order = np.random.default_rng(seed).permutation(len(cases))
    assert _agg_same(dscagg(_rows([cases[i] for i in order])), agg)
    pred0 = cases[0][0]
    empty = (np.zeros_like(pred0), np.zeros_like(pred0), cases[0][2])
    assert _agg_same(dscagg(_rows([*cases, empty])), agg)
    scaled = [(p, g, tuple(k * s for s in sp)) for p, g, sp in cases]
    assert _agg_same(dscagg(_rows(scaled)), agg)
    assert _agg_same(dscagg(rows + rows), agg)
    single = dscagg(_rows(cases[:1]))
    for row in _rows(cases[:1]):
        assert _same(single[row["structure"]], row["dsc"])
    fp_only = (np.ones_like(pred0), np.zeros_like(pred0), cases[0][2])
    worse = dscagg(_rows([*cases, fp_only]))
    for name in ("GTVp", "GTVn"):
        if not math.isnan(agg[name]):
            assert worse[name] <= agg[name] + 1e-12
    p0, g0, (sx, sy, sz) = cases[0]
    bigger = dscagg(_rows([(p0, g0, (sx, sy, sz * times)), *cases[1:]]))
    repeated = dscagg(_rows([*cases, *[cases[0]] * (times - 1)]))
    assert _agg_same(bigger, repeated)


@settings(max_examples=20, deadline=None)
@given(cases=st.lists(label_pairs(), min_size=2, max_size=4), spacing=SPACINGS)
def test_dscagg_on_a_common_grid_is_dice_of_the_stacked_cases(cases, spacing) -> None:
    """With one spacing for all cases, DSCagg per structure is the plain Dice of all cases'
    voxels pooled together (the sums over cases of |A and B| and |A| + |B|)."""
    cases = [(p, g, spacing) for p, g, _ in cases]
    agg = dscagg(_rows(cases))
    for label, name in ((1, "GTVp"), (2, "GTVn")):
        p = np.concatenate([(c[0] == label).ravel() for c in cases])
        g = np.concatenate([(c[1] == label).ravel() for c in cases])
        assert _same(agg[name], dice(p, g))


@settings(max_examples=30, deadline=None)
@given(pair=mask_pairs())
def test_component_counts_bounds(pair) -> None:
    """Lesion counts: TP + FN = ground-truth components, FP <= predicted components, and
    swapping the roles swaps FP and FN; a mask against itself has no FP or FN."""
    a, b, _ = pair
    tp, fp, fn = component_counts(a, b)
    n_a, n_b = ndimage.label(a, FACE)[1], ndimage.label(b, FACE)[1]
    assert tp + fn == n_b and 0 <= fp <= n_a
    assert component_counts(b, a)[1:] == (fn, fp)
    assert component_counts(a, a.copy()) == (n_a, 0, 0)


# --------------------------------------------------------------------------- grids, loading


@settings(max_examples=30, deadline=None)
@given(
    size=st.tuples(*[st.integers(1, 12)] * 3),
    spacing=SPACINGS,
    origin=ORIGINS,
    direction=directions(),
    axis=st.integers(0, 2),
)
def test_grid_roundtrips_and_mismatch(size, spacing, origin, direction, axis: int) -> None:
    """A Grid survives JSON (boxes.json) and from_array bit for bit; it matches itself;
    a change beyond the tolerance (1e-4) in spacing, origin or direction, or any change of
    size, is reported under its name, and float noise well below it is not."""
    grid = Grid(size, spacing, origin, direction)
    assert Grid.from_dict(json.loads(json.dumps(grid.to_dict()))) == grid
    assert Grid.of(from_array(np.zeros(grid.shape, np.float32), grid)) == grid
    assert grid.mismatch(grid) is None

    def bump(values: tuple[float, ...], delta: float) -> tuple[float, ...]:
        out = list(values)
        out[axis] += delta
        return tuple(out)

    noisy = Grid(size, bump(spacing, 1e-7), bump(origin, 1e-7), bump(direction, 1e-7))
    assert grid.mismatch(noisy) is None
    assert grid.mismatch(Grid(bump(size, 1), spacing, origin, direction)).startswith("size")
    off = Grid(size, bump(spacing, 1e-3), origin, direction)
    assert grid.mismatch(off).startswith("spacing")
    far = 1e-3 * max(1.0, max(spacing)) + 1e-3
    assert grid.mismatch(Grid(size, spacing, bump(origin, far), direction)).startswith("origin")
    turned = Grid(size, spacing, origin, bump(direction, 1e-3))
    assert grid.mismatch(turned).startswith("direction")


@settings(max_examples=12, deadline=None)
@given(
    seed=SEEDS,
    shape=st.tuples(st.integers(2, 6), st.integers(3, 10), st.integers(3, 10)),
    spacing=st.tuples(*[st.sampled_from([0.5, 0.75, 1.25, 2.0])] * 3),
    shift=st.tuples(*[st.integers(0, 3)] * 3),
    extra=st.tuples(*[st.integers(-1, 3)] * 3),
    direction=axis_directions(),
)
def test_prediction_on_a_shifted_grid_is_resampled_exactly(
    seed: int, shape, spacing, shift, extra, direction
) -> None:
    """A prediction of another size or origin but the same spacing is resampled nearest-
    neighbour onto the ground-truth grid (DESIGN.md, docs/evaluate.md): when its voxels sit
    on the ground-truth voxels (an integer shift, the grid grown or cut on the high side)
    the scored array is the prediction on the ground-truth grid, 0 where it had no voxel."""
    gt = label_mask(seed, shape)
    pred = label_mask(seed + 1, shape)
    shift_zyx, extra_zyx = shift[::-1], extra[::-1]
    big = np.pad(pred, [(s, max(e, 0)) for s, e in zip(shift_zyx, extra_zyx, strict=True)])
    keep = tuple(slice(0, n + s + e) for n, s, e in zip(shape, shift_zyx, extra_zyx, strict=True))
    big = big[keep]
    expected = pred.copy()
    for axis, e in enumerate(extra_zyx):
        if e < 0:
            expected[(slice(None),) * axis + (slice(shape[axis] + e, None),)] = 0
    gt_origin = (10.0, -20.0, 30.0)
    d = np.array(direction).reshape(3, 3)
    big_origin = tuple(np.array(gt_origin) - d @ (np.array(shift) * np.array(spacing)))
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = Path(tmp) / "gt.nii.gz", Path(tmp) / "pred.nii.gz"
        sitk.WriteImage(image(gt, spacing, gt_origin, direction), str(gt_path))
        sitk.WriteImage(image(big, spacing, big_origin, direction), str(pred_path))
        got, gt_arr, grid, resampled = load_pair(pred_path, gt_path)
    assert resampled == (any(shift) or any(extra))
    assert np.array_equal(gt_arr, gt) and np.array_equal(got, expected)
    assert grid.size == tuple(shape[::-1])


@settings(max_examples=12, deadline=None)
@given(
    seed=SEEDS,
    shape=st.tuples(st.integers(2, 6), st.integers(2, 8), st.integers(2, 8)),
    spacing=st.tuples(*[st.sampled_from([0.5, 0.75, 1.25, 2.0])] * 3),
    flips=st.tuples(*[st.booleans()] * 3),
    perm=st.permutations([0, 1, 2]),
)
def test_prediction_stored_in_another_orientation_is_scored_identically(
    seed: int, shape, spacing, flips, perm
) -> None:
    """The same labels in physical space, stored with flipped (or, at equal spacings,
    permuted) axes, are resampled nearest-neighbour back to the very same array: a
    prediction's scores do not depend on its file's axis order (only its spacing tuple must
    match the ground truth's)."""
    pred = label_mask(seed, shape)
    gt = label_mask(seed + 1, shape)
    origin = (10.0, -20.0, 30.0)
    moved = sitk.Flip(image(pred, spacing, origin), list(flips), False)
    spacing_kept = all(spacing[p] == spacing[i] for i, p in enumerate(perm))
    if spacing_kept:
        moved = sitk.PermuteAxes(moved, list(perm))
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = Path(tmp) / "gt.nii.gz", Path(tmp) / "pred.nii.gz"
        sitk.WriteImage(image(gt, spacing, origin), str(gt_path))
        sitk.WriteImage(moved, str(pred_path))
        got, gt_arr, _, resampled = load_pair(pred_path, gt_path)
    assert np.array_equal(got, pred) and np.array_equal(gt_arr, gt)
    turned = any(flips) or (spacing_kept and list(perm) != [0, 1, 2])
    assert resampled == turned


# --------------------------------------------------------------------------- splits


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 25),
    folds=st.integers(2, 6),
    seed=st.integers(0, 2**31),
    pre_rt=st.booleans(),
    dup=st.integers(0, 5),
)
def test_splits_case_membership(n: int, folds: int, seed: int, pre_rt: bool, dup: int) -> None:
    """Over the folds (DESIGN.md, Splits): every patient's mid-RT case is validated exactly
    once and trained on in every other fold; pre-RT cases are never validated and are
    trained on in all folds but their patient's; a fold's train and val never share a
    patient; repeating ids in the input changes nothing."""
    assume(n >= folds)
    ids = [str(i) for i in range(1, n + 1)]
    splits = make_splits(ids, folds, seed, pre_rt)
    assert make_splits(ids + ids[:dup], folds, seed, pre_rt) == splits
    for pid in ids:
        val_in = [i for i, s in enumerate(splits) if f"{pid}_midRT" in s["val"]]
        assert len(val_in) == 1
        for phase in ("midRT", "preRT") if pre_rt else ("midRT",):
            train_in = [i for i, s in enumerate(splits) if f"{pid}_{phase}" in s["train"]]
            assert train_in == [i for i in range(folds) if i != val_in[0]]
    for s in splits:
        assert all(c.endswith("_midRT") for c in s["val"])
        assert pre_rt or all(c.endswith("_midRT") for c in s["train"])
        assert len(set(s["train"])) == len(s["train"])
        val = {c.rsplit("_", 1)[0] for c in s["val"]}
        assert val.isdisjoint(c.rsplit("_", 1)[0] for c in s["train"])


@settings(max_examples=30, deadline=None)
@given(
    ids=st.lists(
        st.text("0123456789abcXY", min_size=1, max_size=4), min_size=2, max_size=20, unique=True
    ),
    folds=st.integers(2, 5),
    seed=st.integers(0, 2**31),
    order_seed=SEEDS,
)
def test_splits_do_not_depend_on_id_order(
    ids: list[str], folds: int, seed: int, order_seed: int
) -> None:
    """Seeded splits are a function of the set of ids and the seed ("same ids + seed -> same
    splits"), whatever order discovery lists them in, for any id spelling ("7", "007",
    "a1"); within a fold cases follow sort_key order."""
    assume(len(ids) >= folds)
    shuffled = [ids[i] for i in np.random.default_rng(order_seed).permutation(len(ids))]
    splits = make_splits(ids, folds, seed)
    assert make_splits(shuffled, folds, seed) == splits
    for s in splits:
        val = [c.rsplit("_", 1)[0] for c in s["val"]]
        assert val == sorted(val, key=sort_key)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 30), parts=st.integers(1, 8))
def test_shard_parts_partition_the_patients(n: int, parts: int) -> None:
    """--num-parts K --part-id I: the K parts are disjoint, together hold every patient
    once, and differ in size by at most one (round-robin)."""
    items = [f"p{i}" for i in range(n)]
    got = [shard(items, parts, i) for i in range(parts)]
    assert sorted(x for part in got for x in part) == sorted(items)
    assert sum(len(part) for part in got) == n
    assert max(map(len, got)) - min(map(len, got)) <= 1


# --------------------------------------------------------------------------- analyses


@settings(max_examples=40, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=3, max_size=15),
    scale=st.integers(1, 5),
    shift=st.integers(-50, 50),
)
def test_wilcoxon_and_spearman_invariants(pairs, scale: int, shift: int) -> None:
    """evaluate-compare / evaluate-volume statistics: the two-sided Wilcoxon p is symmetric
    in A and B, in [0, 1], and 1 when all pairs are equal; Spearman's rho depends only on
    ranks (a strictly increasing change of x or y keeps it), flips sign with x, and is NaN
    for a constant input."""
    x = np.array([p[0] for p in pairs], float) / 20.0
    y = np.array([p[1] for p in pairs], float) / 20.0
    p_xy, p_yx = wilcoxon_p(x, y), wilcoxon_p(y, x)
    assert p_xy == pytest.approx(p_yx, rel=1e-12) and 0.0 <= p_xy <= 1.0
    assert wilcoxon_p(x, x.copy()) == 1.0
    rho, p = spearman(x, y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert math.isnan(rho) and math.isnan(p)
        return
    assert -1.0 - 1e-12 <= rho <= 1.0 + 1e-12
    assert spearman(scale * x + shift, y**3)[0] == pytest.approx(rho, abs=1e-12)
    assert spearman(-x, y)[0] == pytest.approx(-rho, abs=1e-12)

"""Figures shared by the stages (matplotlib, headless, atomic PNG writes) and evaluate's
optional figures: the per-case DSC of each structure, and a picture of each structure's
worst cases so that a low score can be looked at before it is reported.

Figures are bare `matplotlib.figure.Figure`s, never pyplot: they need no backend and join
no global figure list, so a notebook's backend and its open figures are left as they were.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from hntseg.cohort import SUFFIXES
from hntseg.io import LABEL_NAMES, Grid, atomic_path, read_image, read_mask, resample_to

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn (it is slow to import)
    from matplotlib.figure import Figure

WORST = 3  # worst cases pictured per structure
PAD = 12  # voxels around the lesion in the zoomed panel
GT_COLOUR, PRED_COLOUR = "lime", "red"
MASK_END, T2_END = "_midRT_mask", "_midRT_T2"  # a mid-RT ground truth, the T2 beside it


def save_png(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure atomically (no timestamp, so same data = same bytes)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return path


def window(slice_: np.ndarray) -> tuple[float, float]:
    """Display range of an MR slice: robust to a few bright voxels."""
    lo, hi = np.percentile(slice_, (1, 99.5))
    return float(lo), float(hi if hi > lo else lo + 1)


# --------------------------------------------------------------------------- evaluate


def plot_dsc(rows: Sequence[dict[str, Any]], dscagg: dict[str, Any], path: str | Path) -> Path:
    """Per-case DSC of each structure (cases whose ground truth has it), DSCagg marked."""
    from matplotlib.figure import Figure

    names = list(LABEL_NAMES.values())
    fig = Figure(figsize=(2.4 + 1.6 * len(names), 4.2))
    ax = fig.subplots()
    rng = np.random.default_rng(0)  # fixed jitter: same rows, same picture
    labels = []
    for i, name in enumerate(names):
        values = [r["dsc"] for r in rows if r["structure"] == name and r["gt_mm3"] > 0]
        labels.append(f"{name}\n(n={len(values)})")
        if values:
            ax.boxplot([values], positions=[i], widths=0.5, showfliers=False)
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=12, alpha=0.7)
        agg = dscagg.get(name)
        if agg is not None:
            ax.plot([i - 0.3, i + 0.3], [agg, agg], color="black", lw=2)
            ax.text(i + 0.32, agg, f"DSCagg {agg:.3f}", va="center", fontsize=8)
    ax.set_xticks(range(len(names)), labels)
    ax.set_xlim(-0.6, len(names) - 0.1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("DSC per case")
    ax.set_title("cases whose ground truth has the structure")
    fig.tight_layout()
    return save_png(fig, path)


def worst_rows(rows: Sequence[dict[str, Any]], k: int = WORST) -> list[dict[str, Any]]:
    """The k lowest-DSC rows per structure among cases where the structure is in the
    ground truth or the prediction (ties by id, so the choice is stable)."""
    out = []
    for name in LABEL_NAMES.values():
        scored = [
            r
            for r in rows
            if r["structure"] == name
            and r["dsc"] is not None
            and np.isfinite(r["dsc"])
            and (r["gt_mm3"] > 0 or r["pred_mm3"] > 0)
        ]
        out += sorted(scored, key=lambda r: (r["dsc"], r["id"]))[:k]
    return out


def _t2_beside(gt: Path) -> Path | None:
    """The mid-RT T2 next to a cohort-layout ground truth (followed through a link), or None.

    Both files may have any suffix the cohort layout reads (`cohort.SUFFIXES`, tried in
    `discover`'s order), each its own: an .nrrd cohort, or a .nii.gz mask beside an .mha T2.
    """
    real = gt.resolve()
    mask_suffix = next((s for s in SUFFIXES if real.name.endswith(MASK_END + s)), None)
    if mask_suffix is None:
        return None
    stem = real.name[: -len(MASK_END + mask_suffix)] + T2_END
    return next((t2 for s in SUFFIXES if (t2 := real.with_name(stem + s)).is_file()), None)


def structure_masks(
    pred: Path | None, gt: Path, label: int
) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """(ground-truth image, its label mask, the prediction's label mask on its grid)."""
    g_img = read_mask(gt, "ground truth")
    g = sitk.GetArrayFromImage(g_img) == label
    if pred is None:
        return g_img, g, np.zeros_like(g)
    # nearest neighbour onto the ground truth's grid, as evaluate scores it
    p_img = resample_to(read_mask(pred, "prediction"), Grid.of(g_img), nearest=True)
    return g_img, g, sitk.GetArrayFromImage(p_img) == label


def slice_plane(direction: Sequence[float]) -> str:
    """The anatomical plane of the slices along array axis 0 (image axis k): axial,
    coronal or sagittal, by the patient axis that image axis runs closest to."""
    k_axis = np.abs(np.asarray(direction, float).reshape(3, 3)[:, 2])  # (x, y, z) components
    return ("sagittal", "coronal", "axial")[int(np.argmax(k_axis))]


def plot_case(row: dict[str, Any], pred: Path | None, gt: Path, path: str | Path) -> Path:
    """One structure of one case: ground truth (green) and prediction (red) outlines on the
    slice (array axis 0) where they disagree most, whole slice and a zoom; the T2 underneath,
    resampled onto the ground truth's grid if needed, when the ground truth sits in a cohort."""
    label = next(k for k, v in LABEL_NAMES.items() if v == row["structure"])
    g_img, g, p = structure_masks(pred, gt, label)
    grid = Grid.of(g_img)
    t2_path = _t2_beside(gt)
    t2 = None
    if t2_path is not None:
        t2_img = read_image(t2_path, "mid-RT T2")
        if grid.mismatch(Grid.of(t2_img)) is not None:  # under the masks, voxel for voxel
            t2_img = resample_to(t2_img, grid, nearest=False)
        t2 = sitk.GetArrayFromImage(t2_img)
    k = int(np.argmax((g ^ p).sum(axis=(1, 2)))) if (g ^ p).any() else int(np.argmax(g.sum((1, 2))))
    both = (g | p).any(axis=0)
    ys, xs = np.nonzero(both) if both.any() else (np.array([0]), np.array([0]))
    y0, y1 = max(ys.min() - PAD, 0), min(ys.max() + PAD + 1, g.shape[1])
    x0, x1 = max(xs.min() - PAD, 0), min(xs.max() + PAD + 1, g.shape[2])
    sx, sy = g_img.GetSpacing()[:2]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.6))
    axes = fig.subplots(1, 2)
    views = ((slice(None), slice(None)), (slice(y0, y1), slice(x0, x1)))  # whole, zoom
    for ax, (ys_, xs_) in zip(axes, views, strict=True):
        if t2 is not None:
            sl = t2[k][ys_, xs_]
            lo, hi = window(t2[k])
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, aspect=sy / sx, interpolation="nearest")
        else:
            ax.imshow(np.zeros(g[k][ys_, xs_].shape), cmap="gray", aspect=sy / sx)
        for mask, colour, style in ((g, GT_COLOUR, "solid"), (p, PRED_COLOUR, "dashed")):
            if mask[k][ys_, xs_].any():
                ax.contour(mask[k][ys_, xs_], [0.5], colors=colour, linestyles=style)
        ax.set_axis_off()
    axes[0].set_title(f"{slice_plane(grid.direction)} slice {k} (array axis 0)", fontsize=9)
    axes[1].set_title("zoom: ground truth green, prediction red dashed", fontsize=9)
    hd = row.get("hd95")
    hd_text = f", HD95 {hd:.1f} mm" if hd is not None and np.isfinite(hd) else ""
    fig.suptitle(
        f"patient {row['id']} {row['structure']}: DSC {row['dsc']:.3f}{hd_text}; "
        f"ground truth {row['gt_mm3'] / 1000:.2f} mL, prediction {row['pred_mm3'] / 1000:.2f} mL",
        fontsize=10,
    )
    fig.tight_layout()
    return save_png(fig, path, dpi=90)


def evaluation_figures(
    rows: Sequence[dict[str, Any]],
    dscagg: dict[str, Any],
    cases: Sequence[tuple[str, Path | None, Path]],
    out: str | Path,
) -> list[Path]:
    """OUT/figures/dsc.png and OUT/figures/worst_<structure>_<id>.png; returns the paths."""
    folder = Path(out) / "figures"
    files = {pid: (pred, gt) for pid, pred, gt in cases}
    paths = [plot_dsc(rows, dscagg, folder / "dsc.png")]
    for row in worst_rows(rows):
        pred, gt = files[row["id"]]
        name = f"worst_{row['structure']}_{row['id']}.png"
        paths.append(plot_case(row, pred, gt, folder / name))
    for old in folder.glob("worst_*.png"):  # pictures of cases no longer among the worst
        if old not in paths:
            old.unlink()
    return paths

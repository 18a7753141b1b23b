"""QC pictures: what a physicist looks at before trusting boxes and gradient maps.

One PNG per case; one row per box, on the slice through the box (along the image's third
axis, array axis 0) with most voxels of its label in the first mask, else its centre,
titled by its plane (`figures.slice_plane`) and index: the whole
T2 slice with every box that crosses it, a zoom on the box with the masks' outlines, and
the gradient map in the same zoom. Boxes: red GTVp, blue GTVn. Masks: one colour per mask,
solid outline GTVp, dashed GTVn.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from hntseg.boxes import BoxSet, read_boxes
from hntseg.cohort import Patient, boxes_path, find_gradmap, gradmap_path
from hntseg.errors import InputError
from hntseg.figures import save_png, slice_plane, window
from hntseg.io import Grid, check_out_folder, check_same_grid, read_image, read_mask

BOX_COLOURS = {1: "red", 2: "deepskyblue"}
MASK_COLOURS = ("yellow", "lime", "magenta", "orange")
LABEL_STYLES = {1: "solid", 2: "dashed"}
MAX_ROWS = 8  # boxes shown per picture (the largest first beyond that)
ZOOM_PAD = 12  # voxels around the box in the zoomed panels


def check_png(out_png: str | Path, option: str = "--out") -> Path:
    """The picture's path; a name that does not end in .png is an InputError (the file is
    always PNG, and a .jpg holding PNG bytes would mislead viewers and tools)."""
    out_png = Path(out_png)
    if out_png.suffix.lower() != ".png":
        raise InputError(
            f"{option} {out_png}: QC pictures are PNG files; give a name ending in .png"
        )
    return out_png


def mask_names(paths: Sequence[str | Path]) -> dict[str, Path]:
    """A distinct legend name per mask file: its name without the image extension, with as many
    parent folders as it takes to tell apart masks of the same name (a/8 and b/8). The same
    file given twice is an InputError."""
    from hntseg.io import strip_suffix

    paths = [Path(p) for p in paths]
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            also = f" (also as {seen[key]})" if seen[key] != path else ""
            raise InputError(f"--mask {path}: the same mask given twice{also}")
        seen[key] = path
    depth = [0] * len(paths)

    def name(i: int) -> str:
        folders = paths[i].parent.parts
        return "/".join([*folders[len(folders) - depth[i] :], strip_suffix(paths[i])])

    while True:
        names = [name(i) for i in range(len(paths))]
        clash = [i for i, n in enumerate(names) if names.count(n) > 1]
        grow = [i for i in clash if depth[i] < len(paths[i].parent.parts)]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    if len(set(names)) < len(names):  # e.g. x/8.nii.gz and x/8.mha: the full paths
        names = [str(p) for p in paths]
    return dict(zip(names, paths, strict=True))


def _slice_of(box, mask: np.ndarray | None) -> int:
    """The slice (array axis 0) to show for a box: the one with most voxels of the box's
    label in the first mask (its component, usually), else the box centre."""
    if mask is not None:
        counts = (mask[box.slices] == box.label).sum(axis=(1, 2))
        if counts.max() > 0:
            return box.start[0] + int(np.argmax(counts))
    return box.centre[0]


def check_grids(t2: sitk.Image, t2_path: Path, images: Mapping[Path, sitk.Image]) -> None:
    """InputError naming the first of these files that is not on the T2's grid."""
    for path, image in images.items():
        check_same_grid(t2, image, path, t2_path)


def qc_case(
    t2: sitk.Image,
    boxes: BoxSet,
    gradmap: sitk.Image,
    masks: Mapping[str, sitk.Image],
    out_png: str | Path,
    title: str | None = None,
) -> Path:
    """Write the QC picture of one case (PNG, atomic). Images must share the T2's grid."""
    out_png = check_png(out_png)
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    grid = Grid.of(t2)
    for name, image in [("gradient map", gradmap), ("boxes", boxes.grid), *masks.items()]:
        problem = grid.mismatch(image if isinstance(image, Grid) else Grid.of(image))
        if problem:
            raise InputError(f"{name}: not on the grid of the T2: {problem}")
    t2a = sitk.GetArrayViewFromImage(t2)
    gma = sitk.GetArrayViewFromImage(gradmap)
    maska = {k: sitk.GetArrayViewFromImage(v) for k, v in masks.items()}
    mask_colour = {k: MASK_COLOURS[i % len(MASK_COLOURS)] for i, k in enumerate(masks)}
    sx, sy = grid.spacing[0], grid.spacing[1]
    aspect = sy / sx
    plane = slice_plane(grid.direction)  # slices run along image axis k, whatever its plane

    shown = list(enumerate(boxes.boxes))
    if len(shown) > MAX_ROWS:  # keep the largest boxes, in file order
        keep = sorted(shown, key=lambda ib: -int(np.prod(ib[1].shape)))[:MAX_ROWS]
        shown = sorted(keep, key=lambda ib: ib[0])
    rows = max(1, len(shown))
    height = 4.3 * rows + 0.9  # inches; 0.9 for the title and legend
    fig = Figure(figsize=(13.5, height))
    axes = fig.subplots(rows, 3, squeeze=False)

    def outlines(ax, z, ys, xs):
        for name, arr in maska.items():
            sl = arr[z, ys, xs]
            for label in (1, 2):
                if (sl == label).any():
                    ax.contour(
                        sl == label,
                        levels=[0.5],
                        colors=mask_colour[name],
                        linestyles=LABEL_STYLES[label],
                        linewidths=1.2,
                    )

    def rects(ax, z, y0=0, x0=0, only=None):
        for j, b in enumerate(boxes.boxes):
            if only is not None and j != only:
                continue
            if b.start[0] <= z <= b.stop[0]:
                (_, y1, x1), (_, h, w) = b.start, b.shape
                ax.add_patch(
                    Rectangle(
                        (x1 - x0 - 0.5, y1 - y0 - 0.5),
                        w,
                        h,
                        fill=False,
                        edgecolor=BOX_COLOURS.get(b.label, "white"),
                        linewidth=1.5,
                    )
                )

    if not shown:
        z = grid.shape[0] // 2
        ax = axes[0, 0]
        lo, hi = window(t2a[z])
        ax.imshow(t2a[z], cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
        outlines(ax, z, slice(None), slice(None))
        ax.set_title(f"no boxes; T2 {plane} slice {z}")
        for a in axes[0, 1:]:
            a.axis("off")
        axes[0, 1].text(0.5, 0.5, "no boxes: gradient map all zero", ha="center", va="center")
    source = next(iter(maska.values()), None)
    for row, (j, b) in enumerate(shown):
        z = _slice_of(b, source)
        full = t2a[z]
        lo, hi = window(full)
        name = {1: "GTVp", 2: "GTVn"}.get(b.label, str(b.label))
        ax = axes[row, 0]
        ax.imshow(full, cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
        rects(ax, z)
        ax.set_title(f"box {j} ({name}) - T2 {plane} slice {z}", fontsize=10)
        y0 = max(b.start[1] - ZOOM_PAD, 0)
        y1 = min(b.stop[1] + ZOOM_PAD + 1, grid.shape[1])
        x0 = max(b.start[2] - ZOOM_PAD, 0)
        x1 = min(b.stop[2] + ZOOM_PAD + 1, grid.shape[2])
        ys, xs = slice(y0, y1), slice(x0, x1)
        ax = axes[row, 1]
        ax.imshow(full[ys, xs], cmap="gray", vmin=lo, vmax=hi, aspect=aspect)
        outlines(ax, z, ys, xs)
        rects(ax, z, y0, x0, only=j)
        vox = f"{b.voxels} vox, {b.volume_mm3 / 1000:.2f} mL" if b.volume_mm3 else "hand-made"
        ax.set_title(f"zoom, masks ({vox})", fontsize=10)
        ax = axes[row, 2]
        im = ax.imshow(gma[z, ys, xs], cmap="magma", vmin=0, vmax=1, aspect=aspect)
        outlines(ax, z, ys, xs)
        rects(ax, z, y0, x0, only=j)
        ax.set_title(f"gradient map, {plane} slice {z}", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        Line2D([], [], color=BOX_COLOURS[k], lw=2, label=f"box {v}")
        for k, v in ((1, "GTVp"), (2, "GTVn"))
    ]
    for name in masks:
        for label, style in LABEL_STYLES.items():
            handles.append(
                Line2D(
                    [],
                    [],
                    color=mask_colour[name],
                    ls=style,
                    label=f"{name} {'GTVp' if label == 1 else 'GTVn'}",
                )
            )
    top = 1 - 0.9 / height
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, top),
        ncol=min(len(handles), 6),
        fontsize=9,
        frameon=False,
    )
    more = (
        f" (showing {len(shown)} of {len(boxes.boxes)} boxes)"
        if len(shown) < len(boxes.boxes)
        else ""
    )
    fig.suptitle((title or "") + more, y=1 - 0.1 / height, va="top", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, top))
    return save_png(fig, out_png, dpi=80)


def qc_path(out: str | Path, pid: str, phase: str) -> Path:
    """OUT/<id>_<phase>_qc.png (flat, to page through)."""
    return Path(out) / f"{pid}_{phase}_qc.png"


def qc_cohort(
    cohort: str | Path,
    boxes: str | Path,
    gradmaps: str | Path,
    out: str | Path,
    registered: str | Path | None = None,
    ids: Iterable[str] | None = None,
    phases: Sequence[str] = ("midRT",),
    num_parts: int = 1,
    part_id: int = 0,
    force: bool = False,
) -> dict[str, Path]:
    """QC pictures for a cohort: OUT/<id>_<phase>_qc.png. Mid-RT: the mid-RT T2, its boxes and
    gradient map, the registered pre-RT mask and (if present) the mid-RT ground truth;
    pre-RT: the pre-RT T2 and mask. Failed cases are logged, then a StageError."""
    from hntseg.cohort import check_phases, discover, run_cases, shard
    from hntseg.records import check_record_owner, is_done, record_path, write_record

    phases = check_phases(phases)
    cohort = Path(cohort)
    check_out_folder(out)
    patients = discover(cohort, required=(), ids=ids)
    cases = shard([(p, f) for p in patients for f in phases], num_parts, part_id)
    reg_root = Path(registered) if registered is not None else cohort
    reg = {p.id: p for p in patients}
    midrt = any(phase == "midRT" for _, phase in cases)  # an empty part needs no folders
    if midrt and reg_root.resolve() != cohort.resolve():
        reg = {p.id: p for p in discover(reg_root, required=(), what="--registered folder")}
    for folder, option in ((boxes, "--boxes"), (gradmaps, "--gradmaps")):
        if cases and not Path(folder).is_dir():  # one error, not one per case (an empty
            raise InputError(f"{folder}: {option} folder not found")  # part has no cases)
    targets = {f"{p.id}_{phase}": qc_path(out, p.id, phase) for p, phase in cases}

    def work(case: tuple[Patient, str]) -> bool:
        p, phase = case
        target = targets[f"{p.id}_{phase}"]
        t2_path = p.require(f"{phase}_T2")[0]
        mask_paths: dict[str, Path] = {}
        if phase == "midRT":
            r = reg.get(p.id)
            if r is not None and r.has("preRT_mask_registered"):
                mask_paths["registered pre-RT"] = r.get("preRT_mask_registered")
            if p.has("midRT_mask"):
                mask_paths["mid-RT truth"] = p.get("midRT_mask")
        elif p.has("preRT_mask"):
            mask_paths["pre-RT"] = p.get("preRT_mask")
        inputs = {
            "t2": t2_path,
            "boxes": boxes_path(boxes, p.id, phase),
            "gradmap": find_gradmap(gradmaps, p.id, phase) or gradmap_path(gradmaps, p.id, phase),
            **{f"mask:{k}": v for k, v in mask_paths.items()},
        }
        for key in ("boxes", "gradmap"):
            if not inputs[key].is_file():
                raise InputError(f"{inputs[key]}: {key} file not found")
        rec = record_path(target)
        check_record_owner(rec, "qc")
        if not force and is_done(rec, inputs, {}):
            return False
        t2 = read_image(t2_path, "T2 image")
        boxset = read_boxes(inputs["boxes"], Grid.of(t2))
        gm = read_image(inputs["gradmap"], "gradient map")
        masks = {k: read_mask(v) for k, v in mask_paths.items()}
        check_grids(
            t2, t2_path, {inputs["gradmap"]: gm, **{mask_paths[k]: masks[k] for k in masks}}
        )
        rec.unlink(missing_ok=True)  # killed between the two writes: no old record vouches
        qc_case(t2, boxset, gm, masks, target, title=f"patient {p.id} {phase}")
        write_record(rec, "qc", inputs, {}, [target])
        return True

    done = run_cases("qc", ((f"{p.id}_{phase}", (p, phase)) for p, phase in cases), work)
    return {key: targets[key] for key in done}

"""`hntseg qc`: pictures of the boxes and gradient maps over the T2 and the masks."""

from __future__ import annotations

from pathlib import Path

import typer

from hntseg.commands import split_ids, split_phases
from hntseg.log import status


def add(app: typer.Typer) -> None:
    @app.command("qc")
    def qc(
        t2: Path | None = typer.Argument(None, help="T2 image (single-case form)."),
        boxes: Path | None = typer.Argument(None, help="boxes.json (single-case form)."),
        gradmap: Path | None = typer.Argument(None, help="gradient map (single-case form)."),
        out: Path = typer.Option(
            ..., "--out", "-o", help="A .png file (single case) or a folder (--cohort)."
        ),
        mask: list[Path] | None = typer.Option(
            None,
            "--mask",
            help="Single-case form: mask(s) to outline (repeatable); masks of the same file "
            "name are told apart by their folders.",
        ),
        cohort: Path | None = typer.Option(
            None, "--cohort", help="Cohort: writes OUT/<id>_<phase>_qc.png per case."
        ),
        boxes_dir: Path | None = typer.Option(None, "--boxes", help="Cohort form: boxes folder."),
        gradmaps: Path | None = typer.Option(
            None, "--gradmaps", help="Cohort form: gradient-map folder (default: --boxes)."
        ),
        registered: Path | None = typer.Option(
            None, "--registered", help="Folder with the registered pre-RT masks (default cohort)."
        ),
        phase: list[str] | None = typer.Option(
            None, "--phase", help="Cohort form: midRT and/or preRT (default midRT)."
        ),
        ids: list[str] | None = typer.Option(None, "--ids", help="Cohort form: only these ids."),
        num_parts: int = typer.Option(1, "--num-parts", help="Split the cohort into K parts."),
        part_id: int = typer.Option(0, "--part-id", help="Run part I of --num-parts."),
        force: bool = typer.Option(False, "--force", help="Redraw pictures that exist."),
    ) -> None:
        """Per box: the slice (along the third image axis) with most of its label; boxes,
        masks, gradient map."""
        from hntseg.errors import InputError

        if cohort is None:
            if t2 is None or boxes is None or gradmap is None:
                raise InputError("qc: give T2 BOXES GRADMAP, or --cohort COHORT --boxes DIR")
            from hntseg.boxes import read_boxes
            from hntseg.io import Grid, read_image, read_mask
            from hntseg.qc import check_grids, check_png, mask_names, qc_case

            check_png(out)
            names = mask_names(mask or [])
            image = read_image(t2, "T2 image")
            boxset = read_boxes(boxes, Grid.of(image))
            masks = {name: read_mask(m) for name, m in names.items()}
            gm = read_image(gradmap, "gradient map")
            check_grids(image, t2, {gradmap: gm, **{names[n]: masks[n] for n in masks}})
            qc_case(image, boxset, gm, masks, out, t2.name)
            status(f"wrote {out}")
            return
        if t2 is not None or boxes_dir is None:
            raise InputError("qc --cohort: give --boxes DIR and no T2/BOXES/GRADMAP arguments")
        from hntseg.qc import qc_cohort

        written = qc_cohort(
            cohort,
            boxes_dir,
            gradmaps or boxes_dir,
            out,
            registered,
            split_ids(ids),
            split_phases(phase) if phase else ("midRT",),
            num_parts,
            part_id,
            force,
        )
        status(f"QC pictures for {len(written)} case(s) in {out}")

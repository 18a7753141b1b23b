"""`hntseg gradmap`: the gradient-map prior channel, for one T2 or a whole cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from hntseg.commands import split_ids, split_phases
from hntseg.log import status


def add(app: typer.Typer) -> None:
    @app.command("gradmap")
    def gradmap(
        t2: Path | None = typer.Argument(None, help="T2 image (single-case form)."),
        boxes: Path | None = typer.Argument(
            None, help="boxes.json on the T2's grid (single-case form)."
        ),
        out: Path = typer.Option(
            ..., "--out", "-o", help="gradmap.nii.gz (single case) or a folder (--cohort)."
        ),
        cohort: Path | None = typer.Option(
            None,
            "--cohort",
            help="Cohort (HNTS-MRG layout): writes OUT/<id>/<id>_{midRT,preRT}_gradmap.nii.gz.",
        ),
        boxes_dir: Path | None = typer.Option(
            None, "--boxes", help="Cohort form: the folder written by `hntseg boxes --cohort`."
        ),
        sigma: float = typer.Option(1.0, "--sigma", help="Gaussian sigma in voxels (method: 1)."),
        gain: float = typer.Option(2.0, "--gain", help="Multiply the 0-1 map, clip at 1 (2)."),
        sigma_mm: float | None = typer.Option(
            None, "--sigma-mm", help="Physical sigma in mm instead of --sigma (not the method's)."
        ),
        context: int = typer.Option(
            0,
            "--context",
            help="Pad each crop by N voxels for the gradient only (no edge reflection "
            "artefacts; the method's is 0).",
        ),
        phase: list[str] | None = typer.Option(
            None, "--phase", help="Cohort form: midRT and/or preRT (default both)."
        ),
        ids: list[str] | None = typer.Option(None, "--ids", help="Cohort form: only these ids."),
        num_parts: int = typer.Option(1, "--num-parts", help="Split the cohort into K parts."),
        part_id: int = typer.Option(0, "--part-id", help="Run part I of --num-parts."),
        force: bool = typer.Option(False, "--force", help="Redo cases that are already done."),
    ) -> None:
        """Gradient magnitude of the T2 inside the boxes, rescaled 0-1, x gain, clipped at 1."""
        from hntseg.errors import InputError
        from hntseg.gradmap import check_params, gradmap_case, gradmap_cohort

        check_params(sigma, gain, sigma_mm, context)
        if cohort is None:
            if t2 is None or boxes is None or boxes_dir is not None:
                raise InputError("gradmap: give T2 and BOXES, or --cohort COHORT --boxes DIR")
            if gradmap_case(t2, boxes, out, sigma, gain, sigma_mm, context, force):
                status(f"wrote {out}")
            else:
                status(f"{out}: already done (use --force to redo)")
            return
        if t2 is not None or boxes is not None or boxes_dir is None:
            raise InputError("gradmap --cohort: give --boxes DIR and no T2/BOXES arguments")
        written = gradmap_cohort(
            cohort,
            boxes_dir,
            out,
            sigma,
            gain,
            sigma_mm,
            context,
            split_ids(ids),
            split_phases(phase),
            num_parts,
            part_id,
            force,
        )
        status(f"gradient maps for {len(written)} case(s) in {out}")

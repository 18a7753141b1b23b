"""`hntseg boxes`: tumour boxes from a mask (one file) or a whole cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from hntseg.commands import split_ids, split_phases
from hntseg.log import status

_PHASE_HELP = "Cohort form: which cases, midRT and/or preRT (repeatable; default both)."


def add(app: typer.Typer) -> None:
    @app.command("boxes")
    def boxes(
        mask: Path | None = typer.Argument(
            None, help="A mask (uint8, labels 0/1/2): the single-case form. Omit with --cohort."
        ),
        out: Path = typer.Option(
            ..., "--out", "-o", help="boxes.json (single case) or a folder (--cohort)."
        ),
        cohort: Path | None = typer.Option(
            None,
            "--cohort",
            help="Cohort (HNTS-MRG layout): writes OUT/<id>/<id>_midRT_boxes.json from the "
            "registered pre-RT mask and OUT/<id>/<id>_preRT_boxes.json from the pre-RT mask.",
        ),
        registered: Path | None = typer.Option(
            None,
            "--registered",
            help="Folder with <id>/midRT/<id>_preRT_mask_registered (default: the cohort).",
        ),
        margin: str = typer.Option(
            "2-6",
            "--margin",
            help="Margin per side in voxels: LO-HI drawn uniformly per side (training, the "
            "paper's 2-6) or N fixed (inference).",
        ),
        seed: int = typer.Option(
            0, "--seed", min=0, help="Global seed; each case derives its own."
        ),
        phase: list[str] | None = typer.Option(None, "--phase", help=_PHASE_HELP),
        ids: list[str] | None = typer.Option(None, "--ids", help="Cohort form: only these ids."),
        num_parts: int = typer.Option(1, "--num-parts", help="Split the cohort into K parts."),
        part_id: int = typer.Option(0, "--part-id", help="Run part I of --num-parts."),
        force: bool = typer.Option(False, "--force", help="Redo cases that are already done."),
    ) -> None:
        """Boxes around each 6-connected tumour component per label, with random margins."""
        from hntseg.boxes import boxes_case, boxes_cohort, parse_margin
        from hntseg.errors import InputError

        m = parse_margin(margin)
        if (mask is None) == (cohort is None):
            raise InputError("boxes: give either a MASK file or --cohort COHORT (not both)")
        if mask is not None:
            boxset, ran = boxes_case(mask, out, m, seed, force)
            if not ran:
                status(f"{out}: already done (use --force to redo)")
            else:
                status(f"wrote {len(boxset.boxes)} box(es) to {out}")
            return
        written = boxes_cohort(
            cohort,
            out,
            registered,
            m,
            seed,
            split_ids(ids),
            split_phases(phase),
            num_parts,
            part_id,
            force,
        )
        status(f"boxes for {len(written)} case(s) in {out}")

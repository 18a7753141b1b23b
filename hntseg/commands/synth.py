"""`hntseg synth`: a synthetic cohort in the HNTS-MRG layout."""

from __future__ import annotations

from pathlib import Path

import typer

from hntseg.log import status


def add(app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out: Path = typer.Argument(..., help="Cohort folder to write (HNTS-MRG layout)."),
        patients: int = typer.Option(4, "--patients", "-n", help="Number of patients (ids 1..N)."),
        seed: int = typer.Option(
            0, "--seed", min=0, help="Global seed; each patient derives its own."
        ),
        size: str = typer.Option(
            "128x128x32",
            "--size",
            help="Pre-RT grid, X x Y x Z voxels (or X,Y,Z), each 8-2048, at most 1024x1024x128 "
            "voxels in all (real median 512x512x75).",
        ),
        spacing: str | None = typer.Option(
            None,
            "--spacing",
            help="Voxel spacing in mm, X x Y x Z (or X,Y,Z), each 0.05-20, field of view at most "
            "1000 mm per axis (default: a 240x240x150 mm field of view).",
        ),
        force: bool = typer.Option(False, "--force", help="Rewrite patients that exist."),
    ) -> None:
        """Write a synthetic cohort with a known pre->mid deformation and shrinking tumours."""
        from hntseg.synth import parse_size, parse_spacing, synth_cohort

        sp = parse_spacing(spacing) if spacing is not None else None
        truths = synth_cohort(out, patients, seed, parse_size(size), sp, force)
        status(f"wrote {len(truths)} synthetic patients to {out} (seed {seed})")

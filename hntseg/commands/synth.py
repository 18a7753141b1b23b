"""`hntseg synth`: a synthetic cohort in the HNTS-MRG layout."""

from __future__ import annotations

from pathlib import Path

import typer

from hntseg.log import console


def add(app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out: Path = typer.Argument(..., help="Cohort folder to write (HNTS-MRG layout)."),
        patients: int = typer.Option(4, "--patients", "-n", help="Number of patients (ids 1..N)."),
        seed: int = typer.Option(0, "--seed", help="Global seed; each patient derives its own."),
        size: str = typer.Option(
            "128x128x32",
            "--size",
            help="Pre-RT grid, X x Y x Z voxels (real median 512x512x75).",
        ),
        spacing: str | None = typer.Option(
            None,
            "--spacing",
            help="Voxel spacing in mm, X x Y x Z (default: a 240x240x150 mm field of view).",
        ),
        force: bool = typer.Option(False, "--force", help="Rewrite patients that exist."),
    ) -> None:
        """Write a synthetic cohort with a known pre->mid deformation and shrinking tumours."""
        from hntseg.errors import InputError
        from hntseg.synth import parse_size, synth_cohort

        sp = None
        if spacing is not None:
            try:
                sp = tuple(float(v) for v in spacing.lower().split("x"))
            except ValueError:
                sp = ()
            if len(sp) != 3 or min(sp) <= 0:
                raise InputError(f"--spacing {spacing!r}: expected X x Y x Z mm, e.g. 0.5x0.5x2")
        truths = synth_cohort(out, patients, seed, parse_size(size), sp, force)
        console.print(f"wrote {len(truths)} synthetic patients to {out} (seed {seed})")

"""`hntseg cohort`: list a cohort's patients and which files each has."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def add(app: typer.Typer) -> None:
    @app.command("cohort")
    def cohort(
        root: Path = typer.Argument(..., help="Cohort folder in the HNTS-MRG layout."),
    ) -> None:
        """List patients and the files found for each (required: pre-RT T2 + mask, mid-RT T2)."""
        from hntseg.cohort import FILES, discover

        patients = discover(root)
        table = Table(title=f"{root}: {len(patients)} patients")
        table.add_column("id")
        for key in FILES:
            table.add_column(key)
        for p in patients:
            table.add_row(p.id, *("yes" if p.has(k) else "-" for k in FILES))
        Console().print(table)

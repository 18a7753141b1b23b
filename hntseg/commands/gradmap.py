"""CLI commands for this stage (filled in by the stage's issue)."""

import typer


def add(app: typer.Typer) -> None:
    """Register this module's commands on the app."""

"""The CLI's subcommands, one module each; helpers for options they share."""

from __future__ import annotations


def split_ids(values: list[str] | None) -> list[str] | None:
    """Repeatable `--ids` values, each comma- or space-separated, as one list (None: all)."""
    return [i for v in values for i in v.replace(",", " ").split()] if values else None


def split_phases(values: list[str] | None) -> tuple[str, ...]:
    """Repeatable `--phase` values as a tuple (default both phases, midRT and preRT)."""
    from hntseg.cohort import PHASES

    if not values:
        return PHASES
    return tuple(p for v in values for p in v.replace(",", " ").split())

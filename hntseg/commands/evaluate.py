"""`hntseg evaluate`, `hntseg evaluate-compare`, `hntseg evaluate-volume`: scores and the
paper's analyses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from hntseg.commands import split_ids

_PRED = "Predicted masks: a folder of <id>.nii.gz / <id>.mha / <id>_midRT_mask.nii.gz / "
_PRED += "<id>_preRT_mask_registered.nii.gz, or a cohort (its registered pre-RT masks)."
_GT = "Ground-truth mid-RT masks: a flat folder, or a cohort (<id>/midRT/<id>_midRT_mask)."
_IDS = "Only these ground-truth patients (e.g. one fold's validation ids: --ids 3,17,25)."


def _metrics(values: list[str] | None) -> list[str]:
    from hntseg.evaluate import METRICS

    if not values:
        return list(METRICS)
    return [m for v in values for m in v.replace(",", " ").split()]


def _num(value: Any, fmt: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt)


def _table(summary: dict[str, Any]):
    from rich.table import Table

    metrics = summary["metrics"]
    title = f"{summary['n_cases']} cases"
    if "hd95" in metrics:
        title += f", HD95 {summary['hd95_definition']}"
    table = Table(title=title)
    table.add_column("structure")
    cols = []
    if "dscagg" in metrics:
        cols.append(("DSCagg", lambda s, n: _num(summary["dscagg"][n])))
    if "dsc" in metrics:
        cols.append(("mean DSC", lambda s, n: _num(s["dsc"]["mean"])))
        cols.append(("median DSC", lambda s, n: _num(s["dsc"]["median"])))
    if "hd95" in metrics:
        cols.append(("median HD95 mm", lambda s, n: _num(s["hd95"]["median"], ".2f")))
    if "msd" in metrics:
        cols.append(("median MSD mm", lambda s, n: _num(s["msd"]["median"], ".2f")))
    cols.append(("empty GT", lambda s, n: str(s["n_empty_gt"])))
    cols.append(("TP/FP/FN lesions", lambda s, n: "{tp}/{fp}/{fn}".format(**s["components"])))
    for title, _ in cols:
        table.add_column(title, justify="right")
    for name, s in summary["structures"].items():
        table.add_row(name, *(f(s, name) for _, f in cols))
    if "dscagg" in metrics:
        table.add_row("mean", _num(summary["dscagg"]["mean"]), *([""] * (len(cols) - 1)))
    return table


def add(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate(
        pred_dir: Path = typer.Argument(..., help=_PRED),
        gt_dir: Path = typer.Argument(..., help=_GT),
        metrics: list[str] | None = typer.Option(
            None,
            "--metrics",
            "-m",
            help="Metrics: dscagg, dsc, hd95, msd (comma-separated or repeated; default all).",
        ),
        hd95: str = typer.Option(
            "pooled",
            "--hd95",
            help="HD95 definition: pooled (MedPy, the paper's) or directed (max of the two "
            "directed 95th percentiles, MONAI/DeepMind).",
        ),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Write OUT/cases.csv and OUT/summary.json."
        ),
        allow_missing: bool = typer.Option(
            False, "--allow-missing", help="Score a missing prediction as empty (as the challenge)."
        ),
        force: bool = typer.Option(False, "--force", help="Recompute even if OUT is up to date."),
        figures: bool = typer.Option(
            False,
            "--figures",
            help="Also write OUT/figures/: per-case DSC, and each structure's 3 worst cases "
            "(outlines on the mid-RT T2 when GT_DIR is a cohort).",
        ),
    ) -> None:
        """Score predictions against mid-RT ground truth: challenge DSCagg, DSC, HD95, MSD.

        The score table is the result (stdout) and is printed even with --quiet; --quiet
        drops only the "wrote ..." status lines."""
        from rich.console import Console

        from hntseg.evaluate import evaluate as run
        from hntseg.log import status

        summary = run(pred_dir, gt_dir, out, _metrics(metrics), hd95, allow_missing, force, figures)
        console = Console()
        console.print(_table(summary))
        if summary.get("missing_predictions"):  # part of the result: shown even when quiet
            console.print(f"missing predictions scored empty: {summary['missing_predictions']}")
        if out is not None:
            status(f"scores in {out / 'cases.csv'} and {out / 'summary.json'}")
            if figures:
                status(f"figures in {out / 'figures'}")

    @app.command("evaluate-compare")
    def evaluate_compare(
        a_dir: Path = typer.Argument(..., help="First prediction set (e.g. without gradient map)."),
        b_dir: Path = typer.Argument(..., help="Second prediction set (e.g. with gradient map)."),
        gt_dir: Path = typer.Argument(..., help=_GT),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Write compare.csv/.json and the violin plot compare.png."
        ),
        names: str = typer.Option("A,B", "--names", help="Labels of the two sets, 'A,B'."),
        allow_missing: bool = typer.Option(
            False, "--allow-missing", help="Score a missing prediction as empty."
        ),
        ids: list[str] | None = typer.Option(None, "--ids", help=_IDS),
    ) -> None:
        """Paired per-case DSC of two prediction sets, Wilcoxon signed-rank p per structure."""
        from rich.console import Console
        from rich.table import Table

        from hntseg.analysis import compare
        from hntseg.errors import InputError

        pair = [n.strip() for n in names.split(",")]
        if len(pair) != 2 or not all(pair) or pair[0] == pair[1]:
            raise InputError(f"--names {names!r}: expected two different labels, e.g. base,grad")
        result = compare(
            a_dir, b_dir, gt_dir, out, (pair[0], pair[1]), allow_missing, ids=split_ids(ids)
        )
        table = Table(title="paired DSC (cases with the structure in the ground truth)")
        for col in ("structure", "n", f"mean {pair[0]}", f"mean {pair[1]}", "Wilcoxon p"):
            table.add_column(col, justify="right")
        for name, s in result["structures"].items():
            table.add_row(
                name,
                str(s["n"]),
                _num(s[f"mean_{pair[0]}"]),
                _num(s[f"mean_{pair[1]}"]),
                _num(s["wilcoxon_p"], ".3g"),
            )
        Console().print(table)

    @app.command("evaluate-volume")
    def evaluate_volume(
        pred_dir: Path = typer.Argument(..., help=_PRED),
        gt_dir: Path = typer.Argument(..., help=_GT),
        pre_dir: Path = typer.Argument(
            ..., help="Pre-RT masks: a flat folder (<id>_preRT_mask...) or a cohort."
        ),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Write volume_change.csv/.json and the scatter plot .png."
        ),
        bins: str = typer.Option("5,20", "--bins", help="Mid-RT volume bin edges in mL."),
        allow_missing: bool = typer.Option(
            False, "--allow-missing", help="Score a missing prediction as empty."
        ),
        ids: list[str] | None = typer.Option(None, "--ids", help=_IDS),
    ) -> None:
        """Spearman correlation of volume change (pre-RT - mid-RT) with DSC, per volume bin."""
        from rich.console import Console
        from rich.table import Table

        from hntseg.analysis import volume_change
        from hntseg.errors import InputError

        try:
            edges = [float(b) for b in bins.split(",") if b.strip()]
        except ValueError:
            raise InputError(f"--bins {bins!r}: expected mL edges, e.g. 5,20") from None
        result = volume_change(
            pred_dir, gt_dir, pre_dir, out, edges, allow_missing, ids=split_ids(ids)
        )
        table = Table(title="Spearman: volume change (pre - mid, mL) vs DSC")
        for col in ("structure", "mid-RT volume", "n", "rho", "p"):
            table.add_column(col, justify="right")
        for name, s in result["structures"].items():
            table.add_row(name, "all", str(s["n"]), _num(s["rho"], ".3f"), _num(s["p"], ".3g"))
            for b in s["bins"]:
                table.add_row("", b["bin"], str(b["n"]), _num(b["rho"], ".3f"), _num(b["p"], ".3g"))
        Console().print(table)

"""`hntseg build-dataset`: a cohort + gradient maps -> an nnU-Net v2 raw dataset and splits."""

from __future__ import annotations

from pathlib import Path

import typer

from hntseg.log import status


def add(app: typer.Typer) -> None:
    @app.command("build-dataset")
    def build_dataset_cmd(
        cohort: Path = typer.Argument(..., help="Cohort folder (HNTS-MRG layout)."),
        work: Path = typer.Option(..., "--work", help="Work folder: nnUNet_raw etc. go here."),
        dataset_id: int = typer.Option(..., "--dataset-id", help="nnU-Net dataset id (1-999)."),
        name: str = typer.Option("HNTSMRG", "--name", help="Dataset name: DatasetNNN_<name>."),
        channels: str = typer.Option(
            "t2,gradmap",
            "--channels",
            help="Comma list of t2, gradmap, pre_t2_registered, pre_mask_registered "
            "(t2 first; t2 alone = the paper's no-gradient-map ablation).",
        ),
        registered: Path | None = typer.Option(
            None, "--registered", help="Folder with the registered pre-RT files (default: COHORT)."
        ),
        gradmaps: Path | None = typer.Option(
            None,
            "--gradmaps",
            help="Existing folder with ready gradient maps (OUT/<id>/<id>_<phase>_gradmap.nii.gz); "
            "missing maps are computed from the masks' boxes.",
        ),
        pre_rt: bool = typer.Option(
            True, "--pre-rt/--no-pre-rt", help="Add each patient's pre-RT scan as a training case."
        ),
        margin: str = typer.Option(
            "2-6", "--margin", help="Box margin range in voxels for the gradient maps (LO-HI)."
        ),
        seed: int = typer.Option(
            0, "--seed", min=0, help="Seed for the box margins and the folds."
        ),
        folds: int = typer.Option(5, "--folds", help="Number of cross-validation folds."),
        force: bool = typer.Option(False, "--force", help="Rebuild even if up to date."),
    ) -> None:
        """Write nnUNet_raw/DatasetNNN_<name> (imagesTr, labelsTr, dataset.json) and
        splits_final.json (folds over patients; validation = mid-RT cases only)."""
        from hntseg.dataset import build_dataset

        raw = build_dataset(
            cohort,
            work,
            dataset_id,
            name=name,
            channels=channels,
            registered=registered,
            gradmaps=gradmaps,
            pre_rt=pre_rt,
            margin=margin,
            seed=seed,
            folds=folds,
            force=force,
        )
        status(f"dataset: {raw}")

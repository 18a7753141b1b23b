"""`hntseg train`: plan/preprocess once (ResEnc M) and train nnU-Net v2 folds in-process."""

from __future__ import annotations

from pathlib import Path

import typer


def add(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        work: Path = typer.Option(..., "--work", help="Work folder given to build-dataset."),
        dataset_id: int = typer.Option(..., "--dataset-id", help="nnU-Net dataset id."),
        fold: str = typer.Option(..., "--fold", help="Fold number, or 'all' (each in turn)."),
        epochs: int | None = typer.Option(
            None, "--epochs", help="Shorter schedule (SMOKE RUN); default the method's 1000."
        ),
        iterations_per_epoch: int | None = typer.Option(
            None, "--iterations-per-epoch", help="Shorter epochs (SMOKE RUN); default 250."
        ),
        device: str = typer.Option("auto", "--device", help="auto, cuda, cpu or mps."),
        continue_training: bool = typer.Option(
            False, "--continue", help="Resume from the fold's latest checkpoint."
        ),
        gpu_memory_target: float | None = typer.Option(
            None, "--gpu-memory-target", help="GB for nnU-Net's planner (ResEnc M default 8)."
        ),
        configuration: str = typer.Option("3d_fullres", "--configuration", help="nnU-Net config."),
        workers: int | None = typer.Option(
            None, "--workers", help="Data-augmentation processes (default: CPUs - 1, <= 12)."
        ),
        force: bool = typer.Option(False, "--force", help="Retrain a fold that is finished."),
        batch_size: int | None = typer.Option(
            None, "--batch-size", help="Override the planned batch size (the paper: 8)."
        ),
        patch_size: str | None = typer.Option(
            None,
            "--patch-size",
            help="Override the planned patch, Z,Y,X voxels (the paper: 48,192,192); a multiple "
            "of the network's strides.",
        ),
    ) -> None:
        """Plan + preprocess with nnUNetPlannerResEncM (once), then train the fold(s).

        --batch-size / --patch-size are applied when the plans are made; later folds reuse
        those plans (give the same values, or none)."""
        from hntseg.errors import InputError
        from hntseg.train import train

        override: dict = {}
        if batch_size is not None:
            override["batch_size"] = batch_size
        if patch_size is not None:
            try:
                override["patch_size"] = [int(v) for v in patch_size.replace("x", ",").split(",")]
            except ValueError:
                raise InputError(
                    f"--patch-size {patch_size}: expected Z,Y,X whole numbers, e.g. 48,192,192"
                ) from None

        train(
            work,
            dataset_id,
            fold,
            epochs=epochs,
            iterations_per_epoch=iterations_per_epoch,
            device=device,
            continue_training=continue_training,
            gpu_memory_target=gpu_memory_target,
            configuration=configuration,
            workers=workers,
            force=force,
            plans_override=override or None,
        )

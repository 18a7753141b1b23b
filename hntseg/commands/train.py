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
    ) -> None:
        """Plan + preprocess with nnUNetPlannerResEncM (once), then train the fold(s)."""
        from hntseg.train import train

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
        )

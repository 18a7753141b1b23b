"""`hntseg ensemble-predict`: trained folds -> uint8 masks on each mid-RT grid."""

from __future__ import annotations

from pathlib import Path

import typer

from hntseg.commands import split_ids
from hntseg.log import status


def add(app: typer.Typer) -> None:
    @app.command("ensemble-predict")
    def predict_cmd(
        input: Path | None = typer.Argument(
            None, help="Cohort folder, or a folder of <case>_0000.nii.gz ... channel files."
        ),
        work: Path = typer.Option(..., "--work", help="Work folder with nnUNet_results."),
        dataset_id: int = typer.Option(..., "--dataset-id", help="nnU-Net dataset id."),
        out: Path | None = typer.Option(None, "--out", help="Output folder: OUT/<id>.nii.gz."),
        folds: list[str] = typer.Option(
            ["0,1,2,3,4"], "--folds", help="Folds to ensemble: 0,1,2,3,4 (or repeat --folds)."
        ),
        no_tta: bool = typer.Option(False, "--no-tta", help="Disable mirroring TTA (faster)."),
        device: str = typer.Option("auto", "--device", help="auto, cuda, cpu or mps."),
        registered: Path | None = typer.Option(
            None, "--registered", help="Folder with the registered pre-RT masks (default INPUT)."
        ),
        gradmaps: Path | None = typer.Option(
            None, "--gradmaps", help="Folder with ready mid-RT gradient maps (else computed)."
        ),
        margin: int = typer.Option(4, "--margin", help="Fixed box margin (voxels) at inference."),
        ensemble: str = typer.Option(
            "softmax", "--ensemble", help="Average the folds' softmax (default) or logits."
        ),
        challenge: bool = typer.Option(
            False, "--challenge", help="Task 2 container mode: .mha inputs under --input-root."
        ),
        input_root: Path = typer.Option(Path("/input"), "--input-root", help="Challenge input."),
        output_root: Path = typer.Option(
            Path("/output"), "--output-root", help="Challenge output."
        ),
        ids: list[str] | None = typer.Option(
            None, "--ids", help="Only these ids (patients of a cohort, or ready cases)."
        ),
        num_parts: int = typer.Option(1, "--num-parts", help="Split the cases into K parts."),
        part_id: int = typer.Option(0, "--part-id", help="Predict part I of --num-parts."),
        force: bool = typer.Option(False, "--force", help="Predict again even if up to date."),
        cpu_bf16: bool = typer.Option(
            False,
            "--cpu-bf16",
            help="On a CPU, run the network in bfloat16 (about 2x faster on CPUs with "
            "AVX512-BF16 or AMX; masks may differ at boundaries). Off: nnU-Net's float32.",
        ),
    ) -> None:
        """Ensemble the trained folds (one model load, folds' softmax averaged) on INPUT."""
        from hntseg.errors import InputError
        from hntseg.predict import challenge_predict, ensemble_predict

        try:
            folds = [int(f) for item in folds for f in item.replace(",", " ").split()]
        except ValueError:
            raise InputError(
                f"--folds {' '.join(folds)}: expected fold numbers, e.g. 0,1,2"
            ) from None

        if challenge:
            ignored = [
                name
                for name, value in (
                    ("INPUT", input),
                    ("--out", out),
                    ("--registered", registered),
                    ("--gradmaps", gradmaps),
                    ("--ids", ids),
                    ("--num-parts", num_parts != 1),
                    ("--force", force),
                )
                if value
            ]
            if ignored:  # the container's layout is fixed: say so rather than drop them
                raise InputError(
                    f"--challenge reads --input-root and writes --output-root; it takes no "
                    f"{', '.join(ignored)}"
                )
            path = challenge_predict(
                work,
                dataset_id,
                input_root,
                output_root,
                folds=folds,
                tta=not no_tta,
                device=device,
                margin=margin,
                ensemble=ensemble,
                cpu_bf16=cpu_bf16,
            )
            status(f"wrote {path}")
            return
        if input is None or out is None:
            raise InputError("ensemble-predict: give INPUT and --out (or --challenge)")
        paths = ensemble_predict(
            input,
            work,
            dataset_id,
            out,
            folds=folds,
            tta=not no_tta,
            device=device,
            registered=registered,
            gradmaps=gradmaps,
            margin=margin,
            ids=split_ids(ids),
            ensemble=ensemble,
            force=force,
            cpu_bf16=cpu_bf16,
            num_parts=num_parts,
            part_id=part_id,
        )
        status(f"{len(paths)} prediction(s) in {out}")

"""`hntseg run`, `hntseg demo`, `hntseg config`: the whole method from one config."""

from __future__ import annotations

from pathlib import Path

import typer


def add(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        config: Path = typer.Argument(..., help="YAML config (see `hntseg config --defaults`)."),
        force: list[str] = typer.Option(
            [], "--force", help="Rerun this stage even if done (repeatable; e.g. boxes, train)."
        ),
        only: list[str] = typer.Option(
            [], "--only", help="Run only this stage (repeatable; e.g. train-fold2, dataset)."
        ),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Print the plan (run / skip / why) and stop."
        ),
        num_parts: int = typer.Option(
            1, "--num-parts", help="Split per-case stages into K parts (job arrays)."
        ),
        part_id: int = typer.Option(0, "--part-id", help="Which part this job runs, 0..K-1."),
    ) -> None:
        """Run the whole method from a config; finished stages are skipped (resumable).

        Stages: synth, register, boxes, gradmap, qc, dataset, plan, train-fold<F>, predict,
        evaluate. A stage reruns when its inputs (hashed) or options changed or an output is
        missing. The record of the run is WORK/run.json."""
        from hntseg.log import console, is_quiet
        from hntseg.pipeline import load_config, print_plan, run_pipeline, summarize_run

        cfg = load_config(config)
        record = run_pipeline(
            cfg,
            force=force,
            only=only,
            dry_run=dry_run,
            num_parts=num_parts,
            part_id=part_id,
            config_path=config.resolve(),
            isolate=True,  # register: a crash fails its case only; Ctrl-C stops at once
        )
        if dry_run:
            from hntseg.pipeline import Decision

            print_plan([Decision(**d) for d in record["plan"]])
            return
        if not is_quiet():
            console.print(summarize_run(record))

    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for everything."),
        patients: int = typer.Option(6, "--patients", help="Synthetic patients."),
        register: str = typer.Option(
            "provided",
            "--register",
            help="provided (the phantoms' exact registration, fast), elastix (1-2 min per "
            "case on a CPU) or identity.",
        ),
        force: bool = typer.Option(False, "--force", help="Redo every stage."),
    ) -> None:
        """The whole method on synthetic phantoms with a SMOKE training on CPU (minutes).

        Prints where the masks, the score table and the QC pictures are; leaves its config
        in OUT/demo.yaml for `hntseg run`."""
        from hntseg.demo import run_demo
        from hntseg.errors import InputError

        if register not in ("provided", "elastix", "identity"):
            raise InputError(f"--register {register!r}: choose provided, elastix or identity")
        run_demo(out, patients=patients, force=force, register=register, isolate=True)

    @app.command("config")
    def config_cmd(
        defaults: bool = typer.Option(
            False, "--defaults", help="Print the complete, commented default config."
        ),
        check: Path | None = typer.Option(
            None, "--check", help="Validate a config and print it resolved (defaults filled in)."
        ),
    ) -> None:
        """Print the default config, or check one."""
        from hntseg.errors import InputError
        from hntseg.pipeline import default_config_text, load_config

        if defaults:
            typer.echo(default_config_text(), nl=False)
            return
        if check is not None:
            import yaml

            typer.echo(yaml.safe_dump(load_config(check), sort_keys=False), nl=False)
            return
        raise InputError("config: give --defaults or --check FILE")

"""`hntseg register`: pre-RT T2 and mask onto the mid-RT grid (elastix), a cohort or one case."""

from __future__ import annotations

from pathlib import Path

import typer

from hntseg.commands import split_ids
from hntseg.log import status


def add(app: typer.Typer) -> None:
    @app.command("register")
    def register(
        cohort: Path | None = typer.Argument(
            None, help="Cohort (HNTS-MRG layout). Omit for the single-case form (--pre-t2 ...)."
        ),
        out: Path = typer.Option(
            ..., "--out", "-o", help="Output folder: OUT/<id>/midRT/<id>_preRT_*_registered.*"
        ),
        method: str = typer.Option(
            "elastix",
            "--method",
            help="elastix (rigid + B-spline), provided (the organizers' _registered files) "
            "or identity (resample without deformation, a baseline).",
        ),
        preset: str = typer.Option(
            "fast", "--preset", help="fast (default) or challenge (the organizers' setup)."
        ),
        params: list[Path] | None = typer.Option(
            None,
            "--params",
            help="Your own elastix parameter file(s) instead of the preset's B-spline stage "
            "(repeat to chain several; --method elastix only); the rigid stage still "
            "follows --preset.",
        ),
        seed: int = typer.Option(
            0, "--seed", min=0, help="Global seed (elastix RandomSeed per case)."
        ),
        threads: int | None = typer.Option(
            None,
            "--threads",
            help="Threads per case (default: the CPUs this process may use / --workers); "
            "results depend on it, so set it for the same bytes on another machine.",
        ),
        workers: int = typer.Option(1, "--workers", "-j", help="Cases in parallel (processes)."),
        ids: list[str] | None = typer.Option(None, "--ids", help="Cohort form: only these ids."),
        num_parts: int = typer.Option(1, "--num-parts", help="Split the cohort into K parts."),
        part_id: int = typer.Option(0, "--part-id", help="Run part I of --num-parts."),
        force: bool = typer.Option(False, "--force", help="Redo cases that are already done."),
        pre_t2: Path | None = typer.Option(None, "--pre-t2", help="Single case: pre-RT T2."),
        pre_mask: Path | None = typer.Option(None, "--pre-mask", help="Single case: pre-RT mask."),
        mid_t2: Path | None = typer.Option(None, "--mid-t2", help="Single case: mid-RT T2."),
        mid_mask: Path | None = typer.Option(
            None,
            "--mid-mask",
            help="Single case, optional: mid-RT mask (Dice check only); must exist if given.",
        ),
        case_id: str = typer.Option(
            "case", "--id", help="Single case: the id, a plain name (OUT/<id>/...)."
        ),
    ) -> None:
        """Register pre-RT T2 + mask onto the mid-RT grid: rigid (SimpleITK) then elastix
        B-spline; image B-spline order 3, mask nearest neighbour; a record per case."""
        from hntseg.errors import HntsegError, InputError, StageError, one_line
        from hntseg.register import (
            case_summary,
            check_case_id,
            check_options,
            register_case,
            register_cohort,
        )

        # one check of the options for both forms, before any file is read (the cohort
        # form parses the parameter files in register_cohort, once)
        maps = check_options(method, preset, params, threads, workers, parse=cohort is None)
        single = any(p is not None for p in (pre_t2, pre_mask, mid_t2, mid_mask))
        if cohort is not None and single:
            raise InputError(
                "give either a COHORT folder or --pre-t2/--pre-mask/--mid-t2/--mid-mask, not both"
            )
        if cohort is None:
            if method == "provided":
                raise InputError("--method provided needs a COHORT (the organizers' files)")
            missing = [n for n, p in (("--pre-t2", pre_t2), ("--pre-mask", pre_mask),
                                      ("--mid-t2", mid_t2)) if p is None]  # fmt: skip
            if missing:
                raise InputError(f"give a COHORT folder, or all of {', '.join(missing)}")
            check_case_id(case_id)
            from hntseg.records import case_seed

            try:
                result = register_case(
                    pre_t2,
                    pre_mask,
                    mid_t2,  # type: ignore[arg-type]
                    out,
                    case_id,
                    method=method,
                    preset=preset,
                    params=params,
                    seed=case_seed(seed, case_id, "register") & 0x7FFFFFFF,
                    threads=threads,
                    mid_mask=mid_mask,
                    force=force,
                    maps=maps,
                    isolate=True,  # Ctrl-C stops it at once; a crash is one line
                )
            except HntsegError:
                raise
            except Exception as exc:  # elastix or I/O: one line, like a failed cohort case
                raise StageError(f"register: case {case_id} failed: {one_line(exc)}") from None
            results = [result]
            status(case_summary(result))
        else:
            results = register_cohort(
                cohort,
                out,
                method=method,
                preset=preset,
                params=params,
                seed=seed,
                threads=threads,
                workers=workers,
                ids=split_ids(ids),
                num_parts=num_parts,
                part_id=part_id,
                force=force,
                raise_on_failure=True,
                isolate=True,  # a crash fails its case only; Ctrl-C stops at once
            )
        done = sum(r.status == "ok" for r in results)
        skipped = sum(r.status == "skipped" for r in results)
        status(
            f"registered {done} case(s), {skipped} already done, into {out} "
            f"(method {method}" + (f", preset {preset})" if method == "elastix" else ")")
        )

"""`hntseg demo`: the whole method on a small synthetic cohort, in minutes on a laptop CPU.

It writes a config (`OUT/demo.yaml`, rerunnable with `hntseg run`), synthesises six
phantom patients, takes their registration (the phantoms' exact one, like the organizers'
files; `--register elastix` runs elastix, 1-2 min per case), draws boxes and gradient
maps, draws QC pictures, builds the nnU-Net dataset,
trains fold 0 for a handful of iterations on the CPU, predicts, scores and draws QC
pictures. The training is a SMOKE RUN: it proves the chain works end to end; the masks it
produces are not a trained model's and their Dice is low.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hntseg.io import make_folder, write_text
from hntseg.log import console

SMOKE_BANNER = (
    "SMOKE RUN — a few iterations on CPU, not a trained model; expect low Dice. "
    "The paper trains 1000 epochs x 250 iterations per fold on a GPU."
)


def demo_config(out: Path, patients: int = 6, register: str = "provided") -> dict[str, Any]:
    """The demo's config (before defaults): small phantoms, short CPU training, fold 0.

    Registration defaults to `provided`: the phantoms come with their exact registration
    (the `_registered` files), as the challenge data come with the organizers'. elastix
    (`register="elastix"`) takes one to two minutes per case on a laptop CPU.
    """
    return {
        "work": str(out),
        "cohort": str(out / "cohort"),
        "seed": 0,
        "device": "cpu",
        "synth": {"enabled": True, "patients": patients, "size": [64, 64, 16]},
        "register": {"method": register, "preset": "fast"},
        "dataset": {"id": 990, "name": "HNTSdemo"},
        "train": {"folds": [0], "epochs": 2, "iterations_per_epoch": 10, "batch_size": 2},
        "predict": {"tta": False},
    }


def run_demo(
    out: str | Path = "demo_out",
    patients: int = 6,
    force: bool = False,
    register: str = "provided",
    isolate: bool | None = None,
) -> dict:
    """Run the demo pipeline into `out`; returns the run record and prints where things are.
    `isolate`: see `register_cohort` (the CLI sets it)."""
    import yaml

    from hntseg.pipeline import STAGES, load_config, run_pipeline, summarize_run

    out = Path(out).resolve()
    make_folder(out)
    data = demo_config(out, patients, register)
    if register != "provided":
        # registration needs a tumour in the pre-RT mask: leave tumour-free phantoms out
        from hntseg.synth import synth_cohort

        s = data["synth"]
        truths = synth_cohort(out / "cohort", s["patients"], data["seed"], tuple(s["size"]))
        data["ids"] = [
            t["id"] for t in truths if any(v["preRT"] > 0 for v in t["volumes_ml"].values())
        ]
    config_path = out / "demo.yaml"
    header = (
        "# hntseg demo config: rerun with `hntseg run demo.yaml` (finished stages are skipped)\n"
        "# SMOKE RUN settings: train.epochs/iterations_per_epoch are tiny on purpose.\n"
    )
    write_text(config_path, header + yaml.safe_dump(data, sort_keys=False))  # atomic
    cfg = load_config(config_path)
    console.print(f"[bold yellow]{SMOKE_BANNER}[/]", soft_wrap=True)
    record = run_pipeline(
        cfg, force=list(STAGES) if force else [], config_path=config_path, isolate=isolate
    )
    console.print(summarize_run(record))
    console.print(where(cfg))
    console.print(f"[bold yellow]{SMOKE_BANNER}[/]", soft_wrap=True)
    return record


def where(cfg: dict[str, Any]) -> str:
    """Where the masks, the score table and the QC pictures are, and the headline score."""

    from hntseg.engine import Context

    ctx = Context(cfg)  # the stages' own folders, `out` options included
    evaluation = ctx.path("evaluation")
    lines = [
        f"masks:        {ctx.path('predictions')}/<id>.nii.gz",
        f"score table:  {evaluation / 'cases.csv'}  (summary: {evaluation / 'summary.json'})",
        f"QC pictures:  {ctx.path('qc')}/",
    ]
    if (evaluation / "figures").is_dir():
        lines.append(f"score plots:  {evaluation / 'figures'}/ (per-case DSC, worst cases)")
    summary_path = evaluation / "summary.json"
    if summary_path.is_file():
        from hntseg.evaluate import read_summary

        agg = read_summary(summary_path).get("dscagg") or {}
        if agg:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in agg.items() if isinstance(v, float))
            lines.append(f"DSCagg (smoke run, expect low): {shown}")
            lines.append(
                "  scored on the phantoms fold 0 saw or validated on: a check that every file "
                "is right, not an accuracy figure"
            )
    baseline = _baseline(cfg)
    if baseline:
        lines.append(f"for reference, the registered pre-RT mask as the prediction: {baseline}")
    return "\n".join(lines)


def _baseline(cfg: dict[str, Any]) -> str | None:
    """DSCagg of the registered pre-RT masks against the mid-RT truth (the method's prior)."""
    from hntseg.engine import Context
    from hntseg.evaluate import evaluate

    registered = Context(cfg).path("registered")  # the cohort itself for `provided`
    pred = registered if registered.is_dir() else Path(cfg["cohort"])
    try:
        summary = evaluate(pred, cfg["cohort"], metrics=("dscagg",))
    except Exception:  # a reference line only; never fail the demo for it
        return None
    agg = summary.get("dscagg") or {}
    return ", ".join(f"{k} {v:.3f}" for k, v in agg.items() if isinstance(v, float)) or None

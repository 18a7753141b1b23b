"""`hntseg run`: the whole method from one YAML config, resumable and shardable.

The engine is a table of stages. Each `Stage` names a function that does the work from
the resolved config and the work paths (a `Context`), the inputs whose contents decide
whether the work is still valid, the options that shape it, and the outputs that must
exist when it is done. Before a stage runs, the engine hashes its inputs and options; the
stage is skipped when that fingerprint equals the one stored after its last successful run
(`WORK/.hntseg/state/<stage>.json`) and every expected output exists. The state file is
written atomically after the stage finished, and the stage functions write their files
atomically, so a run killed at any moment restarts where it was and never counts a
partial file as done.

Hashing: a single file is hashed by content (SHA-256, `records.file_digest`); a folder by
the relative path, size and modification time of each file in it (cheap on a 150-patient
cohort; rewriting a file, even with the same bytes, counts as a change). Hidden files
(temporary files of atomic writes, `.hntseg/`) are ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from hntseg.config import (
    ALIASES,
    SCHEMA,
    STAGES,
    Opt,
    default_config,
    default_config_text,
    load_config,
    resolve_config,
)
from hntseg.engine import STATE_DIR, Context, Paths, Stage
from hntseg.errors import HntsegError, InputError, one_line
from hntseg.io import make_folder, read_json, write_json
from hntseg.log import console, log
from hntseg.records import file_digest, versions
from hntseg.stages import dataset_dir, default_stages

__all__ = [
    "ALIASES",
    "BIG_FILE",
    "SCHEMA",
    "STAGES",
    "STATE_DIR",
    "Context",
    "Decision",
    "Opt",
    "Paths",
    "Stage",
    "check_stage_names",
    "dataset_dir",
    "decide",
    "default_config",
    "default_config_text",
    "default_stages",
    "hash_path",
    "load_config",
    "plan",
    "print_plan",
    "resolve_config",
    "run_pipeline",
    "state_path",
    "summarize_run",
]


def _walk_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


BIG_FILE = 64 * 1024 * 1024  # files above this size are hashed by size and mtime


def _stat_line(f: Path, name: str) -> str:
    st = f.stat()
    return f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n"


def hash_path(path: Path | str) -> str:
    """Hash of a file's content (size + mtime above 64 MiB, e.g. checkpoints), or of a
    folder's file list with sizes and mtimes; "missing" when absent."""
    path = Path(path)
    if path.is_file():
        if path.stat().st_size > BIG_FILE:
            return "stat:" + hashlib.sha256(_stat_line(path, path.name).encode()).hexdigest()
        return "sha256:" + file_digest(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in _walk_files(path):
            h.update(_stat_line(f, str(f.relative_to(path))).encode())
        return "stat:" + h.hexdigest()
    return "missing"


def _fingerprint(inputs: Mapping[str, str], options: Mapping[str, Any]) -> str:
    blob = json.dumps({"inputs": inputs, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def state_path(ctx: Context, stage: Stage) -> Path:
    suffix = f".part{ctx.part_id}of{ctx.num_parts}" if ctx.sharded and stage.per_case else ""
    return ctx.path("state") / f"{stage.name}{suffix}.json"


@dataclass
class Decision:
    """What the plan says for one stage: run or skip, and why."""

    stage: str
    action: str  # "run" | "skip"
    reason: str
    changed: bool = False  # its inputs or options differ from its last finished run


def decide(
    ctx: Context,
    stage: Stage,
    force: bool = False,
    upstream_runs: Sequence[str] = (),
) -> tuple[Decision, dict[str, str], dict[str, Any]]:
    """Run or skip `stage` now, with the reason; also returns the input hashes and options."""
    if stage.section in ctx.config["skip"]:
        return Decision(stage.name, "skip", "in skip: (you supply its files)"), {}, {}
    if ctx.sharded and not stage.per_case:
        reason = "not a per-case stage: run it without --num-parts once all parts are done"
        return Decision(stage.name, "skip", reason), {}, {}
    why_not = stage.skip_reason(ctx)
    if why_not:
        return Decision(stage.name, "skip", why_not), {}, {}
    if ctx.sharded and stage.per_case and not _part_has_patients(ctx, stage):
        # more parts than patients: this part has nothing to do (and must not fail, or a
        # job array's dependants would never start)
        why = f"no patients in part {ctx.part_id} of {ctx.num_parts}"
        return Decision(stage.name, "skip", why), {}, {}
    try:
        options = dict(stage.options(ctx))
    except HntsegError:
        options = {}
    if force:
        return Decision(stage.name, "run", "forced (--force)"), {}, options
    if upstream_runs:
        # an upper bound: the real run skips it if those outputs come out byte-identical
        reason = f"reads what {', '.join(upstream_runs)} will write (skipped if unchanged)"
        return Decision(stage.name, "run", reason), {}, options
    try:
        inputs = {k: hash_path(v) for k, v in stage.inputs(ctx).items()}
    except HntsegError as exc:  # e.g. the cohort does not exist yet
        return Decision(stage.name, "run", f"inputs not ready ({exc})"), {}, options
    path = state_path(ctx, stage)
    if not path.is_file():
        return Decision(stage.name, "run", "no finished run recorded"), inputs, options
    state = _read_state(path)
    if state is None:
        return Decision(stage.name, "run", "state file unreadable"), inputs, options
    if state.get("fingerprint") != _fingerprint(inputs, options):
        old_in, old_opt = state.get("inputs", {}), state.get("options", {})
        changed = [k for k in sorted(set(inputs) | set(old_in)) if inputs.get(k) != old_in.get(k)]
        opts = [k for k in sorted(set(options) | set(old_opt)) if options.get(k) != old_opt.get(k)]
        parts = []
        if opts:
            parts.append("options changed: " + ", ".join(opts[:4]))
        if changed:
            more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
            parts.append("inputs changed: " + ", ".join(changed[:3]) + more)
        return (
            Decision(stage.name, "run", "; ".join(parts) or "fingerprint changed", changed=True),
            inputs,
            options,
        )
    try:
        outputs = list(stage.outputs(ctx))
    except HntsegError as exc:
        return Decision(stage.name, "run", f"outputs unknown ({exc})"), inputs, options
    missing = [p for p in outputs if not Path(p).exists()]
    if missing:
        reason = f"outputs incomplete: {len(missing)} missing, e.g. {missing[0]}"
        return Decision(stage.name, "run", reason), inputs, options
    rewritten = _rewritten(state.get("output_stats"), outputs)
    if rewritten:
        # by another config's run, a job array's part, or by hand: the state no longer
        # vouches for them (the stage's per-case records then say what to redo)
        reason = f"outputs rewritten since its last run: {len(rewritten)}, e.g. {rewritten[0]}"
        return Decision(stage.name, "run", reason), inputs, options
    return (
        Decision(stage.name, "skip", "done: same inputs and options, outputs complete"),
        inputs,
        options,
    )


def _output_stats(outputs: Sequence[str | Path]) -> dict[str, list[int]]:
    """Inode, size and modification time of each output file: which files a run left."""
    stats = {}
    for p in outputs:
        path = Path(p)
        if path.is_file():
            st = path.stat()
            stats[str(path)] = [st.st_ino, st.st_size, st.st_mtime_ns]
    return stats


def _rewritten(recorded: Any, outputs: Sequence[str | Path]) -> list[str]:
    """The outputs that are no longer the files the stage's last run left (none when the
    state predates this record)."""
    if not isinstance(recorded, dict):
        return []
    now = _output_stats([p for p in outputs if str(p) in recorded])
    return [p for p, stat in now.items() if recorded[p] != stat]


def _part_has_patients(ctx: Context, stage: Stage) -> bool:
    try:
        return bool(stage.ids(ctx) if stage.ids is not None else ctx.ids())
    except HntsegError:  # e.g. the cohort is not there yet: let the stage say so
        return True


def _match(names: Sequence[str], stage: Stage) -> bool:
    return any(ALIASES.get(n, n) in (stage.name, stage.section) for n in names)


def check_stage_names(names: Sequence[str], stages: Sequence[Stage], flag: str) -> None:
    known = {s.name for s in stages} | {s.section for s in stages} | set(ALIASES)
    for n in names:
        if n not in known:
            names_ = sorted(known, key=lambda k: (k not in STAGES, k))
            raise InputError(f"{flag} {n}: unknown stage; known: {', '.join(names_)}")


def plan(
    ctx: Context,
    stages: Sequence[Stage],
    force: Sequence[str] = (),
    only: Sequence[str] = (),
) -> list[Decision]:
    """The dry-run plan: for each stage, run or skip and why (nothing is written)."""
    decisions: list[Decision] = []
    will_run: set[str] = set()
    for stage in stages:
        if only and not _match(only, stage):
            decisions.append(Decision(stage.name, "skip", "not selected (--only)"))
            continue
        upstream = [u for u in stage.after if u in will_run]
        d, _, _ = decide(ctx, stage, _match(force, stage), upstream)
        if d.action == "run":
            will_run.add(stage.name)
            will_run.add(stage.section)
        decisions.append(d)
    return decisions


def _device(requested: str) -> tuple[str, str]:
    """(device type, description), e.g. ("cuda", "cuda (NVIDIA H200)"); an unavailable
    explicit choice is an InputError."""
    from hntseg.nnunet import describe_device, process_state_kept, select_device

    with process_state_kept():  # select_device sets torch's threads
        device = select_device(requested)
        return device.type, describe_device(device)


def _check_fold_count(ctx: Context, stages: Sequence[Stage], only: Sequence[str]) -> None:
    """Fewer patients than folds would stop the run at the dataset stage, after registration
    and the priors: say so before anything runs (the dry run too)."""
    dataset = [s for s in stages if s.name == "dataset"]
    if not dataset or ctx.sharded or "dataset" in ctx.config["skip"]:
        return
    if only and not _match(only, dataset[0]):
        return
    n_folds = ctx.config["dataset"]["n_folds"]
    synth = ctx.config["synth"]
    if synth["enabled"]:  # synth fills the cohort up to synth.patients
        count, where = synth["patients"], "synth.patients"
    elif ctx.cohort.is_dir():
        count, where = len(ctx.all_ids()), str(ctx.cohort)
    else:
        return
    if count < n_folds:
        raise InputError(
            f"dataset.n_folds {n_folds}: {where} gives {count} patient(s); need one per fold"
        )


def _check_predict_ids(ctx: Context, stages: Sequence[Stage], only: Sequence[str]) -> None:
    """A predict.ids entry without a patient folder would stop the run at prediction, after
    training: say so before anything runs (the dry run too), as for the top-level ids."""
    wanted = ctx.config["predict"]["ids"]
    predict = [s for s in stages if s.name == "predict"]
    if not wanted or not predict or "predict" in ctx.config["skip"]:
        return
    if only and not _match(only, predict[0]):
        return
    if ctx.config["synth"]["enabled"] and not ctx.config["predict"]["cohort"]:
        return  # synth has yet to write the patients
    root = ctx.path("predict_cohort")
    if not root.is_dir():
        return
    if ctx.config["predict"]["cohort"]:
        have = set(ctx.patient_ids(root))
    else:  # the training cohort: the top-level ids apply, as in the predict stage
        have = set(ctx.all_ids(root))
    missing = [str(i) for i in wanted if str(i) not in have]
    if missing:
        raise InputError(f"{root}: predict.ids: no patient {', '.join(missing)}")


def _elastix_versions() -> dict[str, str]:
    out = {}
    for name in ("itk", "itk-elastix"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_pipeline(
    config: dict[str, Any],
    stages: Sequence[Stage] | None = None,
    force: Sequence[str] = (),
    only: Sequence[str] = (),
    dry_run: bool = False,
    num_parts: int = 1,
    part_id: int = 0,
    config_path: str | Path | None = None,
    isolate: bool | None = None,
) -> dict[str, Any]:
    """Run the stages in order, skipping finished ones; returns the run record (run.json).

    `config` is a resolved config (`load_config` / `resolve_config`); `stages` defaults to
    the method's table (`default_stages`). With `dry_run`, only plans and returns the plan.
    `isolate`: see `register_cohort` (the CLI sets it).
    """
    from hntseg.cohort import shard

    if num_parts < 1:
        raise InputError(f"--num-parts {num_parts}: must be at least 1")
    shard(list(range(num_parts)), num_parts, part_id)  # checks 0 <= part_id < num_parts
    stages = list(stages) if stages is not None else default_stages(config)
    check_stage_names(force, stages, "--force")
    check_stage_names(only, stages, "--only")
    ctx = Context(config, num_parts=num_parts, part_id=part_id, isolate=isolate)
    _check_fold_count(ctx, stages, only)
    _check_predict_ids(ctx, stages, only)
    record: dict[str, Any] = {
        "hntseg_run": 1,
        "config_path": str(config_path) if config_path else None,
        "argv": sys.argv[1:],
        "config": config,
        "seeds": {
            "global": config["seed"],
            "per_case": "hntseg.records.case_seed(global, case id, purpose)",
        },
        "num_parts": num_parts,
        "part_id": part_id,
        "versions": {**versions(), **_elastix_versions()},
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "device": {"requested": config["device"], "used": None},
        "outputs": {
            name: str(ctx.path(key))
            for name, key in (
                ("cohort", "cohort"),
                ("registered", "registered"),
                ("boxes", "boxes"),
                ("gradient_maps", "gradmap"),
                ("qc_pictures", "qc"),
                ("nnunet_raw", "nnUNet_raw"),
                ("nnunet_results", "nnUNet_results"),
                ("predictions", "predictions"),
                ("evaluation", "evaluation"),
            )
        },
        "stages": [],
    }
    if dry_run:
        decisions = plan(ctx, stages, force, only)
        record["plan"] = [d.__dict__ for d in decisions]
        return record

    work = ctx.work
    make_folder(work)
    started = _now()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    suffix = f".part{part_id}of{num_parts}" if num_parts > 1 else ""
    run_paths = [work / f"run{suffix}.json", work / ".hntseg" / "runs" / f"{stamp}{suffix}.json"]
    record.update(started=started, finished=None, status="running")

    def save() -> None:
        for p in run_paths:
            write_json(p, record)

    save()
    try:
        _run_stages(ctx, stages, force, only, record, save)
    except BaseException as exc:  # whatever stopped the run, run.json says so
        running = [e for e in record["stages"] if e.get("status") == "running"]
        for entry in running:
            entry["status"] = "failed"
            entry.setdefault("error", one_line(exc))
        record.update(status="failed", finished=_now())
        record.setdefault("error", one_line(exc))
        save()
        raise
    record.update(status="finished", finished=_now())
    save()
    return record


def _run_stages(
    ctx: Context,
    stages: Sequence[Stage],
    force: Sequence[str],
    only: Sequence[str],
    record: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """Run or skip each stage in order, recording each in `record` (saved as it goes)."""
    config = ctx.config
    for stage in stages:
        entry: dict[str, Any] = {"stage": stage.name}
        record["stages"].append(entry)
        if only and not _match(only, stage):
            entry.update(status="skipped", reason="not selected (--only)")
            continue
        ctx.force = _match(force, stage)
        decision, inputs, options = decide(ctx, stage, ctx.force)
        ctx.changed = decision.changed
        entry.update(status="skipped" if decision.action == "skip" else "running")
        entry["reason"] = decision.reason
        if decision.action == "skip":
            log.debug("%s: skip (%s)", stage.name, decision.reason)
            if stage.section not in config["skip"] and not (ctx.sharded and not stage.per_case):
                entry["outputs"] = _short_outputs(ctx, stage)
            continue
        if stage.uses_device and ctx.device is None:
            ctx.device, record["device"]["used"] = _device(config["device"])
            log.info("device: %s", record["device"]["used"])
        log.info("[bold]%s[/]: run (%s)", stage.name, decision.reason, extra={"markup": True})
        save()
        # a stage that runs is not done until it finishes: drop its state first, so that a
        # killed or failed run can never be taken for a finished one (the stage may still
        # read the previous state from ctx.extra)
        state = state_path(ctx, stage)
        ctx.extra["previous_state"] = _read_state(state)
        state.unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            result = stage.run(ctx)
        except BaseException as exc:
            entry.update(status="failed", duration_s=round(time.perf_counter() - t0, 3))
            entry["error"] = one_line(exc)
            raise
        finally:
            ctx.forget_patients()  # it may have added or removed patients: find them again
        duration = time.perf_counter() - t0
        # hash the inputs again after the run: what the stage actually used
        inputs = {k: hash_path(v) for k, v in stage.inputs(ctx).items()}
        outputs = [str(p) for p in stage.outputs(ctx)]
        missing = [p for p in outputs if not Path(p).exists()]
        if missing:
            raise HntsegError(
                f"{missing[0]}: stage {stage.name} finished without writing it "
                f"({len(missing)} expected output(s) missing)"
            )
        write_json(
            state_path(ctx, stage),
            {
                "stage": stage.name,
                "fingerprint": _fingerprint(inputs, options),
                "inputs": inputs,
                "options": options,
                "outputs": outputs,
                "output_stats": _output_stats(outputs),
                "finished": _now(),
                "duration_s": round(duration, 3),
                "hntseg": versions()["hntseg"],
            },
        )
        entry.update(status="ran", duration_s=round(duration, 3))
        entry["outputs"] = _short_outputs(ctx, stage)
        if isinstance(result, dict) and len(result) <= 8:  # a summary, not a list of cases
            entry["result"] = result
        log.info("[bold]%s[/]: done in %.1f s", stage.name, duration, extra={"markup": True})
        save()


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        state = read_json(path, "stage state") if path.is_file() else None
    except InputError:
        return None
    return state if isinstance(state, dict) else None


def _short_outputs(ctx: Context, stage: Stage) -> list[str]:
    """The output folders/files of a stage for run.json (folders, not every case file)."""
    try:
        outs = [Path(p) for p in stage.outputs(ctx)]
    except HntsegError:
        return []
    if len(outs) <= 4:
        return [str(p) for p in outs]
    return [os.path.commonpath([str(p) for p in outs]) + os.sep]


def print_plan(decisions: Sequence[Decision]) -> None:
    """The plan as a table on the console (stderr)."""
    from rich.table import Table

    table = Table(title="hntseg run --dry-run: the plan")
    table.add_column("stage")
    table.add_column("action")
    table.add_column("why")
    for d in decisions:
        style = "bold green" if d.action == "run" else "dim"
        table.add_row(d.stage, f"[{style}]{d.action}[/]", d.reason)
    console.print(table)


def summarize_run(record: Mapping[str, Any]) -> str:
    """A few lines for the terminal: each stage's status and time, and where run.json is."""
    lines = []
    for s in record.get("stages", []):
        took = f" {s['duration_s']:.1f} s" if "duration_s" in s else ""
        why = f" ({s['reason']})" if s.get("status") == "skipped" and s.get("reason") else ""
        lines.append(f"  {s['stage']:<12} {s['status']}{took}{why}")
    work = Path(record["config"]["work"])
    suffix = f".part{record['part_id']}of{record['num_parts']}" if record["num_parts"] > 1 else ""
    lines.append(f"run record: {work / f'run{suffix}.json'}")
    return "\n".join(lines)

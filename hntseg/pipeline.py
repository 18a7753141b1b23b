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

import copy
import difflib
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from hntseg.errors import HntsegError, InputError
from hntseg.io import read_json, write_json
from hntseg.log import console, log
from hntseg.records import file_digest, versions

STAGES = ("synth", "register", "boxes", "gradmap", "qc", "dataset", "train", "predict", "evaluate")
ALIASES = {"build-dataset": "dataset", "ensemble-predict": "predict", "registration": "register"}
STATE_DIR = ".hntseg/state"

# --------------------------------------------------------------------------- config schema


@dataclass(frozen=True)
class Opt:
    """Type of one config value: kind, allowed choices, whether null is allowed."""

    kind: str  # int, float, bool, str, path, choice, margin, ints, strs, size3, spacing3, stages
    nullable: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None


SCHEMA: dict[str, Any] = {
    "cohort": Opt("path", nullable=True),
    "work": Opt("path"),
    "ids": Opt("strs", nullable=True),
    "seed": Opt("int", minimum=0),
    "device": Opt("choice", choices=("auto", "cuda", "cpu", "mps")),
    "skip": Opt("stages"),
    "synth": {
        "enabled": Opt("bool"),
        "patients": Opt("int", minimum=1),
        "size": Opt("size3"),
        "spacing": Opt("spacing3", nullable=True),
    },
    "register": {
        "method": Opt("choice", choices=("elastix", "provided", "identity")),
        "preset": Opt("choice", choices=("fast", "challenge")),
        "params": Opt("paths", nullable=True),
        "threads": Opt("int", nullable=True, minimum=1),
        "workers": Opt("int", minimum=1),
        "out": Opt("path", nullable=True),
    },
    "boxes": {"margin": Opt("margin"), "out": Opt("path", nullable=True)},
    "gradmap": {
        "sigma": Opt("float", minimum=0.0),
        "gain": Opt("float", minimum=0.0),
        "out": Opt("path", nullable=True),
    },
    "qc": {
        "enabled": Opt("bool"),
        "phases": Opt("phases"),
        "out": Opt("path", nullable=True),
    },
    "dataset": {
        "id": Opt("int", minimum=1, maximum=999),
        "name": Opt("str"),
        "channels": Opt("channels"),
        "pre_rt": Opt("bool"),
        "n_folds": Opt("int", minimum=2),
    },
    "train": {
        "folds": Opt("ints"),
        "epochs": Opt("int", minimum=1),
        "iterations_per_epoch": Opt("int", minimum=1),
        "batch_size": Opt("int", nullable=True, minimum=1),
    },
    "predict": {
        "cohort": Opt("path", nullable=True),
        "registered": Opt("path", nullable=True),
        "ids": Opt("strs", nullable=True),
        "gradmaps": Opt("path", nullable=True),
        "folds": Opt("ints", nullable=True),
        "margin": Opt("int", minimum=0),
        "tta": Opt("bool"),
        "out": Opt("path", nullable=True),
    },
    "evaluate": {
        "hd95": Opt("choice", choices=("pooled", "directed")),
        "figures": Opt("bool"),
        "out": Opt("path", nullable=True),
    },
}

_EXPECT = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "path": "a path (string)",
    "paths": "a path or a list of paths",
    "ints": "a list of integers",
    "strs": "a list of strings",
    "size3": "three integers >= 8 (x, y, z voxels), e.g. [64, 64, 16]",
    "spacing3": "three positive numbers (x, y, z mm), e.g. [0.5, 0.5, 2.0]",
    "margin": 'a number of voxels (e.g. 4) or a range "A-B" (e.g. "2-6")',
    "phases": "a list of midRT, preRT",
    "channels": "a list of channels (t2, gradmap, ...) or a set name (paper, no-gradmap, ...)",
    "stages": f"a list of stage names ({', '.join(STAGES)})",
}


def default_config_text() -> str:
    """The packaged, commented default config (what `hntseg config --defaults` prints)."""
    return resources.files("hntseg").joinpath("presets/default_config.yaml").read_text()


def default_config() -> dict[str, Any]:
    """The default config as a dict (parsed from the packaged YAML)."""
    import yaml

    return yaml.safe_load(default_config_text())


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check(value: Any, opt: Opt) -> tuple[bool, Any]:
    """(ok, normalised value) for one config value."""
    if value is None:
        return opt.nullable, None
    k = opt.kind
    if k == "int":
        ok = _is_int(value) and (opt.minimum is None or value >= opt.minimum)
        return ok and (opt.maximum is None or value <= opt.maximum), value
    if k == "float":
        ok = _is_num(value) and (opt.minimum is None or value >= opt.minimum)
        return ok, float(value) if ok else value
    if k == "bool":
        return isinstance(value, bool), value
    if k in ("str", "path"):
        return isinstance(value, str) and value != "", value
    if k == "choice":
        return isinstance(value, str) and value in opt.choices, value
    if k == "paths":
        items = [value] if isinstance(value, str) else value
        ok = isinstance(items, list) and bool(items) and all(isinstance(v, str) for v in items)
        return ok, items
    if k == "ints":
        ok = isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value)
        return ok and len(set(value)) == len(value), value
    if k == "strs":
        if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
            return True, [str(v) for v in value]
        return False, value
    if k == "size3":
        ok = isinstance(value, list) and len(value) == 3
        return ok and all(_is_int(v) and v >= 8 for v in value), value
    if k == "spacing3":
        ok = isinstance(value, list) and len(value) == 3
        return ok and all(_is_num(v) and v > 0 for v in value), value
    if k == "margin":
        return _parse_margin(value)
    if k == "channels":
        if isinstance(value, str):
            return True, value
        return _check(value, Opt("strs"))
    if k == "phases":
        ok = isinstance(value, list) and all(v in ("midRT", "preRT") for v in value)
        return ok and len(set(value)) == len(value), value
    if k == "stages":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return False, value
        names = [ALIASES.get(v, v) for v in value]
        return all(n in STAGES for n in names), names
    raise AssertionError(f"unknown option kind {k}")


def _parse_margin(value: Any) -> tuple[bool, Any]:
    """4 -> 4; "2-6" or [2, 6] -> [2, 6]."""
    if _is_int(value):
        return value >= 0, value
    if isinstance(value, str):
        parts = value.replace(" ", "").split("-")
        if len(parts) == 1 and parts[0].isdigit():
            return True, int(parts[0])
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            lo, hi = int(parts[0]), int(parts[1])
            return lo <= hi, [lo, hi] if lo < hi else lo
        return False, value
    if isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= 0 for v in value):
        return value[0] <= value[1], list(value)
    return False, value


def _validate(data: Any, schema: dict, source: str, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "top level"
        raise InputError(f"{source}: {where}: expected a mapping of options, got {data!r}")
    out = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise InputError(f"{source}: {dotted}: unknown key{hint}; known: {', '.join(schema)}")
        spec = schema[key]
        if isinstance(spec, dict):
            out[key] = _validate(value if value is not None else {}, spec, source, dotted + ".")
            continue
        ok, norm = _check(value, spec)
        if not ok:
            expect = _EXPECT.get(spec.kind, "")
            if spec.kind == "choice":
                expect = "one of " + ", ".join(spec.choices)
            if spec.minimum is not None and spec.maximum is not None:
                expect += f" in {spec.minimum:g}..{spec.maximum:g}"
            elif spec.minimum is not None:
                expect += f" >= {spec.minimum:g}"
            if spec.nullable:
                expect += " or null"
            raise InputError(f"{source}: {dotted}: expected {expect}, got {value!r}")
        out[key] = norm
    return out


def _merge(base: dict, over: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config(
    data: Mapping[str, Any] | None, source: str = "config", base: Path | None = None
) -> dict[str, Any]:
    """Validate user options, fill in defaults and make paths absolute (relative to `base`).

    Raises a one-line InputError naming the key for unknown keys and wrong types, and the
    folder for a missing cohort.
    """
    base = Path(base) if base is not None else Path.cwd()
    defaults = _validate(default_config(), SCHEMA, "packaged default config")
    user = _validate(dict(data or {}), SCHEMA, source)
    cfg = _merge(defaults, user)

    def absolute(p: str | None) -> str | None:
        if p is None:
            return None
        path = Path(os.path.expanduser(p))
        return str(path if path.is_absolute() else (base / path).resolve())

    cfg["work"] = absolute(cfg["work"])
    cfg["cohort"] = absolute(cfg["cohort"])
    if cfg["register"]["params"]:
        cfg["register"]["params"] = [absolute(p) for p in cfg["register"]["params"]]
    for section in ("register", "boxes", "gradmap", "qc", "predict", "evaluate"):
        cfg[section]["out"] = absolute(cfg[section]["out"])
    cfg["predict"]["cohort"] = absolute(cfg["predict"]["cohort"])
    cfg["predict"]["registered"] = absolute(cfg["predict"]["registered"])
    cfg["predict"]["gradmaps"] = absolute(cfg["predict"]["gradmaps"])

    if cfg["cohort"] is None:
        if not cfg["synth"]["enabled"]:
            raise InputError(f"{source}: cohort: missing (a folder in the HNTS-MRG layout)")
        cfg["cohort"] = str(Path(cfg["work"]) / "cohort")
    elif not cfg["synth"]["enabled"]:
        cohort = Path(cfg["cohort"])
        if not cohort.is_dir():
            what = "not a folder" if cohort.exists() else "cohort folder not found"
            raise InputError(f"{cohort}: {what} ({source}: cohort)")
    from hntseg import nnunet

    for key, check in (
        ("channels", lambda: nnunet.parse_channels(cfg["dataset"]["channels"])),
        ("name", lambda: nnunet.dataset_name(cfg["dataset"]["id"], cfg["dataset"]["name"])),
    ):
        try:
            check()
        except InputError as exc:
            problem = str(exc).split(": ", 1)[-1]
            raise InputError(f"{source}: dataset.{key}: {problem}") from None
    cfg["dataset"]["channels"] = list(nnunet.parse_channels(cfg["dataset"]["channels"]))
    n_folds = cfg["dataset"]["n_folds"]
    for key in ("train", "predict"):
        bad = [f for f in cfg[key]["folds"] or [] if f >= n_folds]
        if bad:
            raise InputError(
                f"{source}: {key}.folds: fold {bad[0]} does not exist "
                f"(dataset.n_folds is {n_folds}: folds 0..{n_folds - 1})"
            )
    if "synth" in cfg["skip"]:
        raise InputError(f"{source}: skip: synth is not skipped, disable it (synth.enabled)")
    if "evaluate" not in cfg["skip"] and "predict" in cfg["skip"] and not cfg["predict"]["out"]:
        raise InputError(f"{source}: predict.out: set it to your predictions when skipping predict")
    return cfg


def load_config(path: str | Path) -> dict[str, Any]:
    """Read, validate and resolve a YAML config file (see `resolve_config`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise InputError(f"{path}: not valid YAML ({problem}{where})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of options at the top level")
    return resolve_config(data, source=str(path), base=path.parent.resolve())


# --------------------------------------------------------------------------- the engine


@dataclass
class Context:
    """What a stage function gets: the resolved config, the work folders, the run's shard."""

    config: dict[str, Any]
    num_parts: int = 1
    part_id: int = 0
    device: str | None = None
    force: bool = False  # the stage now running was forced: redo its finished cases too
    changed: bool = False  # ... or its inputs/options changed since its last finished run
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return Path(self.config["work"])

    @property
    def cohort(self) -> Path:
        return Path(self.config["cohort"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def sharded(self) -> bool:
        return self.num_parts > 1

    def path(self, name: str) -> Path:
        """Folder of a stage's files: its `out` option, else the default under WORK."""
        cfg = self.config
        if name == "registered":
            if cfg["register"]["out"]:
                return Path(cfg["register"]["out"])
            if cfg["register"]["method"] == "provided":
                return self.cohort
            return self.work / "registered"
        if name in ("boxes", "gradmap"):
            return Path(cfg[name]["out"] or self.work / "priors")
        if name == "qc":
            return Path(cfg["qc"]["out"] or self.work / "qc")
        if name == "predictions":
            return Path(cfg["predict"]["out"] or self.work / "predictions")
        if name == "evaluation":
            return Path(cfg["evaluate"]["out"] or self.work / "evaluation")
        if name == "predict_cohort":
            return Path(cfg["predict"]["cohort"] or self.cohort)
        if name == "predict_registered":
            if cfg["predict"]["registered"]:
                return Path(cfg["predict"]["registered"])
            return (
                self.path("registered")
                if not cfg["predict"]["cohort"]
                else self.path("predict_cohort")
            )
        if name == "state":
            return self.work / STATE_DIR
        if name == "cohort":
            return self.cohort
        return self.work / name

    def all_ids(self, root: Path | None = None) -> list[str]:
        """Patient ids of the cohort (or `root`), restricted to the config's `ids`."""
        from hntseg.cohort import discover

        patients = discover(root or self.cohort, required=(), check_readable=False)
        ids = [p.id for p in patients]
        wanted = self.config.get("ids")
        if wanted:
            missing = [i for i in wanted if i not in ids]
            if missing:
                raise InputError(f"{root or self.cohort}: no patient folder for id(s) {missing}")
            ids = [i for i in ids if i in set(wanted)]
        return ids

    def ids(self, root: Path | None = None) -> list[str]:
        """The ids this run works on: all ids, or this part's share with --num-parts."""
        from hntseg.cohort import shard

        return shard(self.all_ids(root), self.num_parts, self.part_id)


Paths = Mapping[str, Path | str]


@dataclass(frozen=True)
class Stage:
    """One entry of the stage table.

    run(ctx) does the work (writing atomically); inputs(ctx) names the files/folders whose
    contents decide whether earlier work is still valid; options(ctx) the settings that
    shape the result; outputs(ctx) the files that must exist when the stage is done.
    `per_case` stages can be sharded with --num-parts/--part-id; `after` lists the stages
    whose outputs this one reads (for the dry-run plan). `group` is the config section
    and the name --force/--only/skip accept (e.g. `train` for `train-fold0`).
    """

    name: str
    run: Callable[[Context], Any]
    inputs: Callable[[Context], Paths]
    outputs: Callable[[Context], Sequence[Path]]
    options: Callable[[Context], Mapping[str, Any]] = lambda ctx: {}
    per_case: bool = False
    after: tuple[str, ...] = ()
    group: str = ""
    skip_reason: Callable[[Context], str | None] = lambda ctx: None

    @property
    def section(self) -> str:
        return self.group or self.name


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
    try:
        options = dict(stage.options(ctx))
    except HntsegError:
        options = {}
    if force:
        return Decision(stage.name, "run", "forced (--force)"), {}, options
    if upstream_runs:
        reason = f"reads what {', '.join(upstream_runs)} will write"
        return Decision(stage.name, "run", reason), {}, options
    try:
        inputs = {k: hash_path(v) for k, v in stage.inputs(ctx).items()}
    except HntsegError as exc:  # e.g. the cohort does not exist yet
        return Decision(stage.name, "run", f"inputs not ready ({exc})"), {}, options
    path = state_path(ctx, stage)
    if not path.is_file():
        return Decision(stage.name, "run", "no finished run recorded"), inputs, options
    try:
        state = read_json(path, "stage state")
    except InputError:
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
            Decision(stage.name, "run", "; ".join(parts) or "fingerprint changed"),
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
    return (
        Decision(stage.name, "skip", "done: same inputs and options, outputs complete"),
        inputs,
        options,
    )


def _match(names: Sequence[str], stage: Stage) -> bool:
    return any(ALIASES.get(n, n) in (stage.name, stage.section) for n in names)


def check_stage_names(names: Sequence[str], stages: Sequence[Stage], flag: str) -> None:
    known = {s.name for s in stages} | {s.section for s in stages} | set(ALIASES)
    for n in names:
        if n not in known:
            raise InputError(f"{flag} {n}: unknown stage; known: {', '.join(STAGES)}")


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
    from hntseg.nnunet import describe_device, select_device

    device = select_device(requested)
    return device.type, describe_device(device)


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
) -> dict[str, Any]:
    """Run the stages in order, skipping finished ones; returns the run record (run.json).

    `config` is a resolved config (`load_config` / `resolve_config`); `stages` defaults to
    the method's table (`default_stages`). With `dry_run`, only plans and returns the plan.
    """
    from hntseg.cohort import shard

    if num_parts < 1:
        raise InputError(f"--num-parts {num_parts}: must be at least 1")
    shard(list(range(num_parts)), num_parts, part_id)  # checks 0 <= part_id < num_parts
    stages = list(stages) if stages is not None else default_stages(config)
    check_stage_names(force, stages, "--force")
    check_stage_names(only, stages, "--only")
    ctx = Context(config, num_parts=num_parts, part_id=part_id)
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
    work.mkdir(parents=True, exist_ok=True)
    started = _now()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    suffix = f".part{part_id}of{num_parts}" if num_parts > 1 else ""
    run_paths = [work / f"run{suffix}.json", work / ".hntseg" / "runs" / f"{stamp}{suffix}.json"]
    record.update(started=started, finished=None, status="running")

    def save() -> None:
        for p in run_paths:
            write_json(p, record)

    save()
    for stage in stages:
        entry: dict[str, Any] = {"stage": stage.name}
        record["stages"].append(entry)
        if only and not _match(only, stage):
            entry.update(status="skipped", reason="not selected (--only)")
            continue
        ctx.force = _match(force, stage)
        decision, inputs, options = decide(ctx, stage, ctx.force)
        ctx.changed = "changed" in decision.reason
        entry.update(status="skipped" if decision.action == "skip" else "running")
        entry["reason"] = decision.reason
        if decision.action == "skip":
            log.debug("%s: skip (%s)", stage.name, decision.reason)
            if stage.section not in config["skip"] and not (ctx.sharded and not stage.per_case):
                entry["outputs"] = _short_outputs(ctx, stage)
            continue
        if stage.section in ("train", "predict") and ctx.device is None:
            ctx.device, record["device"]["used"] = _device(config["device"])
            log.info("device: %s", record["device"]["used"])
        log.info("[bold]%s[/]: run (%s)", stage.name, decision.reason, extra={"markup": True})
        save()
        t0 = time.perf_counter()
        try:
            result = stage.run(ctx)
        except BaseException as exc:
            entry.update(status="failed", duration_s=round(time.perf_counter() - t0, 3))
            entry["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            record.update(status="failed", finished=_now())
            save()
            raise
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
    record.update(status="finished", finished=_now())
    save()
    return record


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


# --------------------------------------------------------------------------- the method's stages


def _files(root: Path, ids: Sequence[str], key: str, tag: str) -> dict[str, Path]:
    """{"tag/<id>": file} for one cohort-layout file of each patient (missing -> expected path)."""
    from hntseg.cohort import SUFFIXES, expected_path

    out: dict[str, Path] = {}
    for pid in ids:
        path = expected_path(root, pid, key)
        for suffix in SUFFIXES:
            candidate = expected_path(root, pid, key, suffix)
            if candidate.is_file():
                path = candidate
                break
        out[f"{tag}/{pid}"] = path
    return out


def _synth_stage() -> Stage:
    def run(ctx: Context) -> None:
        from hntseg.synth import synth_cohort

        s = ctx.config["synth"]
        spacing = tuple(s["spacing"]) if s["spacing"] else None
        synth_cohort(ctx.cohort, s["patients"], ctx.seed, tuple(s["size"]), spacing)

    def outputs(ctx: Context) -> list[Path]:
        from hntseg.cohort import FILES, expected_path

        n = ctx.config["synth"]["patients"]
        pids = [str(i) for i in range(1, n + 1)]
        return [ctx.cohort / "synth.json"] + [
            expected_path(ctx.cohort, pid, key) for pid in pids for key in FILES
        ]

    return Stage(
        "synth",
        run,
        inputs=lambda ctx: {},
        outputs=outputs,
        options=lambda ctx: {**ctx.config["synth"], "seed": ctx.seed, "cohort": str(ctx.cohort)},
        skip_reason=lambda ctx: (
            None
            if ctx.config["synth"]["enabled"]
            else "synth.enabled is false (the cohort is real)"
        ),
    )


def _register_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.register import register_cohort

        r = ctx.config["register"]
        return register_cohort(
            cohort=ctx.cohort,
            out=ctx.path("registered"),
            method=r["method"],
            preset=r["preset"],
            params=r["params"],
            threads=r["threads"],
            workers=r["workers"],
            seed=ctx.seed,
            ids=ctx.ids(),
            force=ctx.force,
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        ids = ctx.ids()
        return {
            **_files(ctx.cohort, ids, "preRT_T2", "preRT_T2"),
            **_files(ctx.cohort, ids, "preRT_mask", "preRT_mask"),
            **_files(ctx.cohort, ids, "midRT_T2", "midRT_T2"),
            **{
                f"params/{i}": Path(p) for i, p in enumerate(ctx.config["register"]["params"] or [])
            },
        }

    def outputs(ctx: Context) -> list[Path]:
        from hntseg.cohort import expected_path

        out = ctx.path("registered")
        keys = ("preRT_T2_registered", "preRT_mask_registered")
        return [expected_path(out, pid, k) for pid in ctx.ids() for k in keys]

    def skip_reason(ctx: Context) -> str | None:
        if ctx.config["register"]["method"] == "provided" and not ctx.config["register"]["out"]:
            return "method provided: the _registered files in the cohort are used"
        return None

    return Stage(
        "register",
        run,
        inputs,
        outputs,
        options=lambda ctx: {
            **{k: v for k, v in ctx.config["register"].items() if k not in ("workers",)},
            "seed": ctx.seed,
            "ids": ctx.ids(),
        },
        per_case=True,
        after=("synth",),
        skip_reason=skip_reason,
    )


def _registered_masks(ctx: Context, ids: Sequence[str]) -> dict[str, Path]:
    return _files(ctx.path("registered"), ids, "preRT_mask_registered", "registered_mask")


def _boxes_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.boxes import boxes_cohort

        return boxes_cohort(
            cohort=ctx.cohort,
            registered=ctx.path("registered"),
            out=ctx.path("boxes"),
            margin=_margin(ctx.config["boxes"]["margin"]),
            seed=ctx.seed,
            ids=ctx.ids(),
            force=ctx.force,
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        ids = ctx.ids()
        return {
            **_registered_masks(ctx, ids),
            **_files(ctx.cohort, ids, "preRT_mask", "preRT_mask"),
        }

    def outputs(ctx: Context) -> list[Path]:
        out = ctx.path("boxes")
        return [
            out / pid / f"{pid}_{phase}_boxes.json" for pid in ctx.ids() for phase in _phases(ctx)
        ]

    return Stage(
        "boxes",
        run,
        inputs,
        outputs,
        options=lambda ctx: {**ctx.config["boxes"], "seed": ctx.seed, "ids": ctx.ids()},
        per_case=True,
        after=("synth", "register"),
    )


def _margin(value: Any) -> int | tuple[int, int]:
    return tuple(value) if isinstance(value, list) else int(value)  # type: ignore[return-value]


def _phases(ctx: Context) -> tuple[str, ...]:
    return ("midRT", "preRT")


def _boxes_files(ctx: Context, ids: Sequence[str]) -> dict[str, Path]:
    out = ctx.path("boxes")
    return {
        f"boxes/{pid}_{phase}": out / pid / f"{pid}_{phase}_boxes.json"
        for pid in ids
        for phase in _phases(ctx)
    }


def _gradmap_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.gradmap import gradmap_cohort

        g = ctx.config["gradmap"]
        return gradmap_cohort(
            cohort=ctx.cohort,
            boxes=ctx.path("boxes"),
            out=ctx.path("gradmap"),
            sigma=g["sigma"],
            gain=g["gain"],
            ids=ctx.ids(),
            force=ctx.force,
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        ids = ctx.ids()
        return {
            **_boxes_files(ctx, ids),
            **_files(ctx.cohort, ids, "midRT_T2", "midRT_T2"),
            **_files(ctx.cohort, ids, "preRT_T2", "preRT_T2"),
        }

    def outputs(ctx: Context) -> list[Path]:
        out = ctx.path("gradmap")
        return [
            out / pid / f"{pid}_{phase}_gradmap.nii.gz"
            for pid in ctx.ids()
            for phase in _phases(ctx)
        ]

    return Stage(
        "gradmap",
        run,
        inputs,
        outputs,
        options=lambda ctx: {**ctx.config["gradmap"], "ids": ctx.ids()},
        per_case=True,
        after=("synth", "boxes"),
    )


def _qc_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.qc import qc_cohort

        return qc_cohort(
            cohort=ctx.cohort,
            boxes=ctx.path("boxes"),
            gradmaps=ctx.path("gradmap"),
            out=ctx.path("qc"),
            registered=ctx.path("registered"),
            ids=ctx.ids(),
            phases=ctx.config["qc"]["phases"],
            force=ctx.force,
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        ids = ctx.ids()
        return {
            **_boxes_files(ctx, ids),
            **_gradmap_files(ctx, ids),
            **_registered_masks(ctx, ids),
            **_files(ctx.cohort, ids, "midRT_mask", "midRT_mask"),
        }

    def outputs(ctx: Context) -> list[Path]:
        out = ctx.path("qc")
        phases = ctx.config["qc"]["phases"]
        return [out / f"{pid}_{phase}_qc.png" for pid in ctx.ids() for phase in phases]

    return Stage(
        "qc",
        run,
        inputs,
        outputs,
        options=lambda ctx: {"phases": ctx.config["qc"]["phases"], "ids": ctx.ids()},
        per_case=True,
        after=("synth", "register", "gradmap"),
        skip_reason=lambda ctx: None if ctx.config["qc"]["enabled"] else "qc.enabled is false",
    )


def _gradmap_files(ctx: Context, ids: Sequence[str]) -> dict[str, Path]:
    out = ctx.path("gradmap")
    return {
        f"gradmap/{pid}_{phase}": out / pid / f"{pid}_{phase}_gradmap.nii.gz"
        for pid in ids
        for phase in _phases(ctx)
    }


def dataset_dir(ctx: Context, root: str = "nnUNet_raw") -> Path:
    d = ctx.config["dataset"]
    return ctx.work / root / f"Dataset{d['id']:03d}_{d['name']}"


def _dataset_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.dataset import build_dataset

        d = ctx.config["dataset"]
        return build_dataset(
            cohort=ctx.cohort,
            work=ctx.work,
            dataset_id=d["id"],
            name=d["name"],
            channels=d["channels"],
            pre_rt=d["pre_rt"],
            registered=ctx.path("registered"),
            gradmaps=ctx.path("gradmap"),
            boxes=ctx.path("boxes"),
            margin=_margin(ctx.config["boxes"]["margin"]),
            seed=ctx.seed,
            folds=d["n_folds"],
            ids=ctx.ids(),
            force=ctx.force,
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        ids = ctx.ids()
        return {
            **_files(ctx.cohort, ids, "midRT_T2", "midRT_T2"),
            **_files(ctx.cohort, ids, "midRT_mask", "midRT_mask"),
            **_files(ctx.cohort, ids, "preRT_T2", "preRT_T2"),
            **_files(ctx.cohort, ids, "preRT_mask", "preRT_mask"),
            **_registered_masks(ctx, ids),
            **_gradmap_files(ctx, ids),
        }

    def outputs(ctx: Context) -> list[Path]:
        return [
            dataset_dir(ctx) / "dataset.json",
            dataset_dir(ctx, "nnUNet_preprocessed") / "splits_final.json",
        ]

    return Stage(
        "dataset",
        run,
        inputs,
        outputs,
        options=lambda ctx: {
            **ctx.config["dataset"],
            "margin": ctx.config["boxes"]["margin"],
            "seed": ctx.seed,
            "ids": ctx.ids(),
        },
        after=("synth", "register", "gradmap"),
    )


def _plan_stage() -> Stage:
    """nnU-Net's fingerprint, ResEnc M plans and preprocessing, once for all folds (so that
    fold jobs on a cluster do not race on it)."""

    def run(ctx: Context) -> Any:
        from hntseg.train import plan_and_preprocess

        return plan_and_preprocess(
            work=ctx.work,
            dataset_id=ctx.config["dataset"]["id"],
            plans_override=_plans_override(ctx),
            force=ctx.force or ctx.changed,
        )

    return Stage(
        "plan",
        run,
        inputs=_dataset_files,
        outputs=lambda ctx: [dataset_dir(ctx, "nnUNet_preprocessed") / f"{_plans()}.json"],
        options=lambda ctx: {
            "dataset": ctx.config["dataset"]["id"],
            "plans_override": _plans_override(ctx),
        },
        after=("dataset",),
        group="train",
    )


def _plans_override(ctx: Context) -> dict[str, Any] | None:
    batch = ctx.config["train"]["batch_size"]
    return {"batch_size": batch} if batch else None


def _plans() -> str:
    from hntseg.nnunet import PLANS

    return PLANS


def _dataset_files(ctx: Context) -> dict[str, Path]:
    return {
        "dataset.json": dataset_dir(ctx) / "dataset.json",
        "splits_final.json": dataset_dir(ctx, "nnUNet_preprocessed") / "splits_final.json",
        "imagesTr": dataset_dir(ctx) / "imagesTr",
        "labelsTr": dataset_dir(ctx) / "labelsTr",
    }


def _fold_dir(ctx: Context, fold: int) -> Path:
    """nnUNet_results/DatasetNNN_x/<trainer>__<plans>__3d_fullres/fold_F for this config's
    trainer: nnU-Net's own for the paper's 1000 x 250, hntseg's short trainer otherwise."""
    from hntseg.nnunet import FULL_TRAINER, SHORT_TRAINER, Paths, model_folder

    t = ctx.config["train"]
    full = t["epochs"] == 1000 and t["iterations_per_epoch"] == 250
    name = dataset_dir(ctx).name
    folder = model_folder(Paths(ctx.work), name, FULL_TRAINER if full else SHORT_TRAINER)
    return folder / f"fold_{fold}"


def _checkpoint(ctx: Context, fold: int) -> Path:
    return _fold_dir(ctx, fold) / "checkpoint_final.pth"


def _train_stage(fold: int) -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.train import train

        t = ctx.config["train"]
        full = t["epochs"] == 1000 and t["iterations_per_epoch"] == 250  # the paper's trainer
        retrain = ctx.force or ctx.changed
        latest = _fold_dir(ctx, fold) / "checkpoint_latest.pth"
        resume = not retrain and latest.is_file() and not _checkpoint(ctx, fold).is_file()
        if resume:
            log.info("train-fold%d: continuing from %s", fold, latest)
        train(
            work=ctx.work,
            dataset_id=ctx.config["dataset"]["id"],
            fold=fold,
            epochs=None if full else t["epochs"],
            iterations_per_epoch=None if full else t["iterations_per_epoch"],
            device=ctx.device or ctx.config["device"],
            seed=ctx.seed,
            continue_training=resume,
            plans_override=_plans_override(ctx),
            force=retrain,
        )
        return None

    return Stage(
        f"train-fold{fold}",
        run,
        inputs=lambda ctx: {
            **_dataset_files(ctx),
            "plans": dataset_dir(ctx, "nnUNet_preprocessed") / f"{_plans()}.json",
        },
        outputs=lambda ctx: [_checkpoint(ctx, fold)],
        options=lambda ctx: {
            "fold": fold,
            "epochs": ctx.config["train"]["epochs"],
            "iterations_per_epoch": ctx.config["train"]["iterations_per_epoch"],
            "batch_size": ctx.config["train"]["batch_size"],
            "device": ctx.config["device"],
            "seed": ctx.seed,
        },
        after=("dataset", "plan"),
        group="train",
    )


def _predict_ids(ctx: Context, whole: bool = False) -> list[str]:
    """Patients to predict (and score): predict.ids, else every patient of predict.cohort
    (with the top-level `ids` filter when it is the training cohort); this part's share
    with --num-parts unless `whole`."""
    from hntseg.cohort import discover, shard

    root = ctx.path("predict_cohort")
    if ctx.config["predict"]["cohort"]:  # another cohort: the top-level `ids` do not apply
        have = [p.id for p in discover(root, required=(), check_readable=False)]
    else:
        have = ctx.all_ids(root)
    wanted = ctx.config["predict"]["ids"]
    ids = have
    if wanted:
        missing = [i for i in wanted if i not in have]
        if missing:
            raise InputError(f"{root}: predict.ids: no patient {', '.join(missing)}")
        ids = [i for i in have if i in set(wanted)]
    return ids if whole else shard(ids, ctx.num_parts, ctx.part_id)


def _predict_folds(ctx: Context) -> list[int]:
    folds = ctx.config["predict"]["folds"]
    return list(folds if folds is not None else ctx.config["train"]["folds"])


def _predict_stage() -> Stage:
    def run(ctx: Context) -> Any:
        from hntseg.predict import ensemble_predict

        p = ctx.config["predict"]
        root = ctx.path("predict_cohort")
        return ensemble_predict(
            input=root,
            registered=ctx.path("predict_registered"),
            # ready maps (e.g. from hand-edited boxes), else computed with the fixed margin
            gradmaps=p["gradmaps"],
            work=ctx.work,
            dataset_id=ctx.config["dataset"]["id"],
            out=ctx.path("predictions"),
            folds=_predict_folds(ctx),
            tta=p["tta"],
            margin=p["margin"],
            device=ctx.device or ctx.config["device"],
            ids=_predict_ids(ctx),
        )

    def inputs(ctx: Context) -> dict[str, Path]:
        root = ctx.path("predict_cohort")
        ids = _predict_ids(ctx)
        reg = _files(ctx.path("predict_registered"), ids, "preRT_mask_registered", "registered")
        ready = ctx.config["predict"]["gradmaps"]
        if ready:
            reg.update({f"gradmap/{i}": Path(ready) / i / f"{i}_midRT_gradmap.nii.gz" for i in ids})
        return {
            **_files(root, ids, "midRT_T2", "midRT_T2"),
            **reg,
            **{f"fold{f}": _checkpoint(ctx, f) for f in _predict_folds(ctx)},
        }

    def outputs(ctx: Context) -> list[Path]:
        return [ctx.path("predictions") / f"{pid}.nii.gz" for pid in _predict_ids(ctx)]

    return Stage(
        "predict",
        run,
        inputs,
        outputs,
        options=lambda ctx: {
            **{k: v for k, v in ctx.config["predict"].items()},
            "folds": _predict_folds(ctx),
            "dataset": ctx.config["dataset"]["id"],
            "device": ctx.config["device"],
        },
        per_case=True,
        after=("synth", "register", "train", "plan"),
    )


def _evaluate_stage() -> Stage:
    def gt_root(ctx: Context) -> Path:
        return ctx.path("predict_cohort")

    def run(ctx: Context) -> Any:
        from hntseg.evaluate import evaluate, find_masks

        e = ctx.config["evaluate"]
        out = ctx.path("evaluation")
        gt, pred = gt_root(ctx), ctx.path("predictions")
        if ctx.config["ids"] or ctx.config["predict"]["ids"]:  # only the selected patients
            ids = _predict_ids(ctx, whole=True)
            gt = _link_all(out / "_gt", find_masks(gt, "ground truth"), ids)
            pred = _link_all(out / "_pred", find_masks(pred, "prediction"), ids)
        summary = evaluate(pred_dir=pred, gt_dir=gt, out=out, hd95=e["hd95"])
        if isinstance(summary, dict) and "dscagg" in summary:
            return {"dscagg": summary["dscagg"]}
        return None

    def inputs(ctx: Context) -> dict[str, Path]:
        root = gt_root(ctx)
        return {
            **_files(root, _predict_ids(ctx, whole=True), "midRT_mask", "midRT_mask"),
            "predictions": ctx.path("predictions"),
        }

    return Stage(
        "evaluate",
        run,
        inputs,
        outputs=lambda ctx: [
            ctx.path("evaluation") / "cases.csv",
            ctx.path("evaluation") / "summary.json",
        ],
        options=lambda ctx: {**ctx.config["evaluate"], "ids": _predict_ids(ctx, whole=True)},
        after=("synth", "predict"),
    )


def _link_all(folder: Path, files: Mapping[str, Path], ids: Sequence[str]) -> Path:
    """A fresh folder of symbolic links `<id><suffix>` to the given patients' files."""
    import shutil

    from hntseg.io import image_suffix

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for pid in ids:
        if pid in files:
            src = Path(files[pid])
            (folder / f"{pid}{image_suffix(src)}").symlink_to(src.resolve())
    return folder


def default_stages(config: Mapping[str, Any]) -> list[Stage]:
    """The method's stage table, in order; training expands into one stage per fold."""
    return [
        _synth_stage(),
        _register_stage(),
        _boxes_stage(),
        _gradmap_stage(),
        _qc_stage(),
        _dataset_stage(),
        _plan_stage(),
        *[_train_stage(f) for f in config["train"]["folds"]],
        _predict_stage(),
        _evaluate_stage(),
    ]


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

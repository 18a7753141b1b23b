"""The `hntseg run` config: schema, loading, validation, defaults and resolving.

`load_config` reads a YAML file and `resolve_config` validates user options against
`SCHEMA` (one `Opt` per value), fills in the packaged defaults and makes paths absolute.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hntseg.errors import InputError

STAGES = ("synth", "register", "boxes", "gradmap", "qc", "dataset", "train", "predict", "evaluate")
ALIASES = {"build-dataset": "dataset", "ensemble-predict": "predict", "registration": "register"}


@dataclass(frozen=True)
class Opt:
    """Type of one config value: kind, allowed choices, whether null is allowed."""

    kind: str  # int, float, bool, str, path, choice, margin, ints, strs, size3, spacing3, stages
    nullable: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # strict lower bound (float kind)


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
        "sigma": Opt("float", above=0.0, maximum=100.0),  # gradmap.MAX_SIGMA
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
        "patch_size": Opt("patch3", nullable=True),
    },
    "predict": {
        "cohort": Opt("path", nullable=True),
        "registered": Opt("path", nullable=True),
        "ids": Opt("strs", nullable=True),
        "gradmaps": Opt("path", nullable=True),
        "folds": Opt("ints", nullable=True),
        "margin": Opt("int", minimum=0),
        "tta": Opt("bool"),
        "cpu_bf16": Opt("bool"),
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
    "ints": "a non-empty list of distinct integers >= 0",
    "strs": "a list of strings",
    "size3": "three integers >= 8 (x, y, z voxels), e.g. [64, 64, 16]",
    "spacing3": "three positive numbers (x, y, z mm), e.g. [0.5, 0.5, 2.0]",
    "patch3": "three whole numbers (z, y, x voxels), e.g. [48, 192, 192]",
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
    """A finite number (YAML's .inf and .nan are not settings)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
        ok = ok and (opt.above is None or value > opt.above)
        ok = ok and (opt.maximum is None or value <= opt.maximum)
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
        ok = isinstance(value, list) and bool(value) and all(_is_int(v) and v >= 0 for v in value)
        return ok and len(set(value)) == len(value), value
    if k == "strs":
        if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
            return True, [str(v) for v in value]
        return False, value
    if k == "size3":
        ok = isinstance(value, list) and len(value) == 3
        return ok and all(_is_int(v) and v >= 8 for v in value), value
    if k == "patch3":
        ok = isinstance(value, list) and len(value) == 3
        return ok and all(_is_int(v) and v >= 1 for v in value), value
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
        if len(parts) == 1 and parts[0].isdecimal():
            return True, int(parts[0])
        if len(parts) == 2 and all(p.isdecimal() for p in parts):
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
            elif spec.above is not None:
                expect += f" > {spec.above:g}"
                if spec.maximum is not None:
                    expect += f" and <= {spec.maximum:g}"
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
    if cfg["synth"]["enabled"]:
        from hntseg.synth import check_grid

        try:
            check_grid(cfg["synth"]["size"], cfg["synth"]["spacing"])
        except InputError as exc:
            raise InputError(f"{source}: synth.size / synth.spacing: {exc}") from None
    if cfg["synth"]["enabled"]:
        from hntseg.synth import check_synth_target

        check_synth_target(Path(cfg["cohort"]), f"{source}: cohort with synth.enabled")
    else:
        cohort = Path(cfg["cohort"])
        if not cohort.is_dir():
            what = "not a folder" if cohort.exists() else "cohort folder not found"
            raise InputError(f"{cohort}: {what} ({source}: cohort)")
    # the patients to segment are there before the run (predict.registered and .gradmaps
    # may be made by this run's own stages: the predict stage checks them)
    folder = cfg["predict"]["cohort"]
    if folder is not None and not Path(folder).is_dir():
        what = "not a folder" if Path(folder).exists() else "folder not found"
        raise InputError(f"{folder}: {what} ({source}: predict.cohort)")
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


def _unique_key_loader() -> type:
    """yaml's SafeLoader, refusing a key given twice in one mapping (YAML keeps the last
    silently: `seed: 1` ... `seed: 2` ran with 2)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def flatten_mapping(self, node):  # type: ignore[no-untyped-def]
            # SafeLoader merges (<<: *anchor) by rewriting a mapping node in place, once for
            # each mapping that merges it; check each node's own keys once, before that
            checked = self.__dict__.setdefault("_hntseg_checked", set())
            if id(node) not in checked:
                checked.add(id(node))
                seen = set()
                for key_node, _ in node.value:
                    if (
                        not isinstance(key_node, yaml.ScalarNode)  # SafeLoader reports these
                        or key_node.tag == "tag:yaml.org,2002:merge"
                    ):
                        continue
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} given twice", key_node.start_mark
                        )
                    seen.add(key)
            super().flatten_mapping(node)

    return UniqueKeyLoader


def load_config(path: str | Path) -> dict[str, Any]:
    """Read, validate and resolve a YAML config file (see `resolve_config`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_unique_key_loader())
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

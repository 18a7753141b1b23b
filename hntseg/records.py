"""Provenance records and resumability: what a stage did, and whether it is already done.

A record (`*.record.json` beside the outputs) holds the stage, inputs with their
SHA-256, parameters, seed, versions and outputs. A step is done when its record exists,
its fingerprint (hash of input contents + parameters) matches, and every output exists.
An input whose file is the one the record saw (same device, inode, size and modification
time) is not read again: its recorded SHA-256 stands, so a resumed run over a cohort does
not re-read every image (any change to those four, e.g. a rewrite, means reading it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from hntseg import __version__
from hntseg.errors import InputError
from hntseg.io import read_json, write_json

TRACKED_PACKAGES = (
    "numpy",
    "scipy",
    "SimpleITK",
    "itk-elastix",
    "nnunetv2",
    "torch",
)


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Versions of hntseg, Python and the packages that shape results (without importing them)."""
    out = {"hntseg": __version__, "python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def file_digest(path: str | Path, _cache: dict[tuple[str, ...], str] = {}) -> str:  # noqa: B006
    """SHA-256 of a file's bytes (cached within a process on path and `stat_key`)."""
    path = Path(path)
    key = (str(path.resolve()), *map(str, stat_key(path)))
    if key not in _cache:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _cache[key] = h.hexdigest()
    return _cache[key]


def fingerprint(
    inputs: Mapping[str, str | Path | None],
    params: Mapping[str, Any],
    digests: Mapping[str, str | None] | None = None,
) -> str:
    """Hash of input file contents and parameters: the identity of a piece of work.
    `digests`: SHA-256s already known (from a record whose file is unchanged)."""
    known = digests or {}
    payload = {
        "inputs": {
            k: (known.get(k) or file_digest(v)) if v is not None else None
            for k, v in inputs.items()
        },
        "params": params,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def stat_key(path: str | Path) -> list[int]:
    """Device, inode, size, modification and change times (ns): the same file, unchanged,
    when all match (a copy or rewrite gets another inode or time; the change time also
    catches an in-place rewrite whose modification time was set back, as `touch -r` or
    `rsync --inplace -t` do; a hard link or chmod changes it too, costing one re-read)."""
    st = Path(path).stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _unchanged_digests(
    record: Mapping[str, Any], inputs: Mapping[str, str | Path | None]
) -> dict[str, str]:
    """The recorded SHA-256 of each input whose file is the one the record saw."""
    shas, stats = record.get("input_sha256"), record.get("input_stat")
    if not isinstance(shas, dict) or not isinstance(stats, dict):
        return {}
    out = {}
    for k, v in inputs.items():
        sha = shas.get(k)
        if v is not None and isinstance(sha, str) and stats.get(k) == stat_key(v):
            out[k] = sha
    return out


def case_seed(seed: int, case_id: str, purpose: str = "") -> int:
    """A per-case seed from the global seed and the case id: independent of the other cases."""
    digest = hashlib.sha256(f"{seed}:{case_id}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def record_path(output: str | Path) -> Path:
    """The record beside an output file (`x_boxes.json` -> `x_boxes.record.json`)."""
    output = Path(output)
    name = output.name
    for suffix in (".nii.gz", ".json", ".png"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return output.with_name(name + ".record.json")


def check_record_owner(record: str | Path, stage: str) -> None:
    """Refuse a record that another stage wrote for another output of the same stem
    (`boxes -o x.json` and `gradmap -o x.nii.gz` both keep `x.record.json`): each would
    overwrite the other's, and both would be redone on every run."""
    record = Path(record)
    try:
        data = json.loads(record.read_text()) if record.is_file() else None
    except (OSError, ValueError):
        return  # unreadable: not done, and rewritten
    other = data.get("stage") if isinstance(data, dict) else None
    if isinstance(other, str) and other != stage:
        outputs = data.get("outputs") or ["?"]
        raise InputError(
            f"{record}: already the record of {other}'s output {outputs[0]}; give this "
            f"{stage} output another name"
        )


def write_record(
    path: str | Path,
    stage: str,
    inputs: Mapping[str, str | Path | None],
    params: Mapping[str, Any],
    outputs: Iterable[str | Path],
    seed: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a stage record atomically beside its outputs."""
    record = {
        "stage": stage,
        "fingerprint": fingerprint(inputs, params),
        "inputs": {k: (str(v) if v is not None else None) for k, v in inputs.items()},
        "input_sha256": {k: (file_digest(v) if v else None) for k, v in inputs.items()},
        "input_stat": {k: (stat_key(v) if v else None) for k, v in inputs.items()},
        "params": dict(params),
        "seed": seed,
        "outputs": [_relative(p, Path(path).parent) for p in outputs],
        "versions": versions(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        record.update(extra)
    return write_json(path, record)


def is_done(
    record_path: str | Path,
    inputs: Mapping[str, str | Path | None],
    params: Mapping[str, Any],
) -> bool:
    """True when the record matches these inputs and parameters and all its outputs exist."""
    record_path = Path(record_path)
    try:
        if not record_path.is_file():
            return False
    except OSError:  # e.g. a name too long: not done; writing it then says why
        return False
    if any(v is not None and not Path(v).is_file() for v in inputs.values()):
        return False  # the stage itself then reports the missing input
    try:
        record = read_json(record_path, "record")
    except Exception:
        return False
    if not isinstance(record, dict):  # valid JSON but not a record (a hand edit): redo
        return False
    if record.get("fingerprint") != fingerprint(inputs, params, _unchanged_digests(record, inputs)):
        return False
    base = record_path.parent
    outputs = record.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(p, str) for p in outputs):
        return False
    return all((base / p).exists() for p in outputs)


def _relative(path: str | Path, base: Path) -> str:
    """An output's path relative to its record's folder, so that a record still holds when
    the command runs from another folder or the whole folder is moved."""
    try:
        return os.path.relpath(Path(path).resolve(), base.resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())

"""The two types the stage table is made of: `Context` (what a stage function gets) and
`Stage` (one entry of the table). The engine that runs them is `hntseg.pipeline`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hntseg.errors import InputError

STATE_DIR = ".hntseg/state"


@dataclass
class Context:
    """What a stage function gets: the resolved config, the work folders, the run's shard."""

    config: dict[str, Any]
    num_parts: int = 1
    part_id: int = 0
    device: str | None = None
    force: bool = False  # the stage now running was forced: redo its finished cases too
    changed: bool = False  # ... or its inputs/options changed since its last finished run
    # register's cases in worker processes even with one worker (hntseg's CLI: True); None:
    # only when several workers share them (a script may lack the guard spawning needs)
    isolate: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # patient ids found under each folder, kept until a stage runs (see patient_ids)
    _found: dict[Path, list[str]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

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

    def patient_ids(self, root: Path) -> list[str]:
        """Ids of the patient folders under `root`, discovered once until forget_patients(),
        which the pipeline calls after each stage that runs (a no-op run asked some 20
        times, each a stat() of every case file)."""
        from hntseg.cohort import discover

        root = Path(root)
        if root not in self._found:
            patients = discover(root, required=(), check_readable=False)
            self._found[root] = [p.id for p in patients]
        return list(self._found[root])

    def forget_patients(self) -> None:
        """Drop the ids found so far: a stage that runs may add or remove patients."""
        self._found.clear()

    def all_ids(self, root: Path | None = None) -> list[str]:
        """Patient ids of the cohort (or `root`), restricted to the config's `ids`."""
        ids = self.patient_ids(root or self.cohort)
        wanted = self.config.get("ids")
        if wanted:
            have = set(ids)
            missing = [i for i in wanted if i not in have]
            if missing:
                shown = ", ".join(map(str, missing))
                raise InputError(f"{root or self.cohort}: no patient folder for id(s) {shown}")
            keep = set(wanted)
            ids = [i for i in ids if i in keep]
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
    and the name --force/--only/skip accept (e.g. `train` for `train-fold0`). `uses_device`
    stages (training, prediction) get the torch device chosen before they run.
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
    uses_device: bool = False
    # the patients a per-case stage works on in this part (default: ctx.ids())
    ids: Callable[[Context], Sequence[str]] | None = None

    @property
    def section(self) -> str:
        return self.group or self.name

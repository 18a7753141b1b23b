"""nnU-Net v2 environment helpers shared by build-dataset, train and ensemble-predict.

nnU-Net reads its folders from environment variables (`nnUNet_raw`, `nnUNet_preprocessed`,
`nnUNet_results`) and finds custom trainers through `nnUNet_extTrainer`. hntseg sets them
inside its own process from `--work`, so users never export anything; nnunetv2 2.8 reads
them lazily (`nnunetv2.paths._EnvPath`), but we still set them before importing it. The
stages that touch nnU-Net put this process's settings back when they return
(`restores_process_state`), so a notebook's next call and its own code see what they saw.
Also: dataset naming (`DatasetNNN_<name>`), the channel sets, device selection and the
number of data-augmentation workers.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from hntseg.errors import InputError
from hntseg.io import make_folder, read_json

PLANNER = "nnUNetPlannerResEncM"
PLANS = "nnUNetResEncUNetMPlans"
CONFIGURATION = "3d_fullres"
FULL_TRAINER = "nnUNetTrainer"  # the paper's: 1000 epochs x 250 iterations
SHORT_TRAINER = "nnUNetTrainerHntsegShort"  # hntseg/trainers/hntseg_short_trainer.py
TRAINERS_DIR = Path(__file__).resolve().parent / "trainers"
FILE_ENDING = ".nii.gz"
LABELS = {"background": 0, "GTVp": 1, "GTVn": 2}
# hntseg's records in nnU-Net's folders: the raw dataset's build, the plans + preprocessing
DATASET_RECORD = "hntseg_dataset.record.json"
PREPROCESS_RECORD = "hntseg_preprocess.record.json"
# nnU-Net's lazy paths and its external trainer path (nnUNet_extTrainer) came in 2.8: an
# older one keeps the first WORK of a process and cannot find hntseg's short trainer
NNUNET_VERSIONS = ((2, 8), (2, 9))  # [from, below)
# the variables hntseg sets for nnU-Net (and, HNTSEG_*, for its short trainer)
ENV_KEYS = (
    "nnUNet_raw",
    "nnUNet_preprocessed",
    "nnUNet_results",
    "nnUNet_extTrainer",
    "nnUNet_n_proc_DA",
    "nnUNet_def_n_proc",
    "HNTSEG_EPOCHS",
    "HNTSEG_ITERATIONS",
    "HNTSEG_VAL_ITERATIONS",
    "HNTSEG_FINAL_VALIDATION",
)

# channel key -> nnU-Net channel name. nnU-Net picks each channel's normalisation from its
# name: anything but CT/noNorm/zscore/rescale_to_0_1/rgb_to_0_1 is z-scored (T2 and the
# gradient map, as in the paper); a registered mask is given as-is ("noNorm").
CHANNELS: dict[str, str] = {
    "t2": "T2",
    "gradmap": "gradmap",
    "pre_t2_registered": "preRT_T2_registered",
    "pre_mask_registered": "noNorm",
}
DEFAULT_CHANNELS = ("t2", "gradmap")
CHANNEL_SETS = {
    "paper": ("t2", "gradmap"),
    "no-gradmap": ("t2",),
    "registered-pre": ("t2", "pre_t2_registered", "pre_mask_registered"),
    "gradmap-mask": ("t2", "gradmap", "pre_mask_registered"),
}


def parse_channels(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """'t2,gradmap' or ['t2', 'gradmap'] or a set name ('paper') -> validated channel keys."""
    if value is None:
        return DEFAULT_CHANNELS
    if isinstance(value, str):
        if value in CHANNEL_SETS:
            return CHANNEL_SETS[value]
        items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        items = [str(v).strip() for part in value for v in str(part).split(",") if v.strip()]
    if not items:
        raise InputError("--channels: empty channel list")
    unknown = [c for c in items if c not in CHANNELS]
    if unknown:
        raise InputError(
            f"--channels: unknown channel(s) {', '.join(unknown)}; "
            f"known: {', '.join(CHANNELS)} (or a set: {', '.join(CHANNEL_SETS)})"
        )
    if items[0] != "t2":
        raise InputError("--channels: the first channel must be t2 (the mid-RT T2)")
    if len(set(items)) != len(items):
        raise InputError(f"--channels: repeated channel in {','.join(items)}")
    return tuple(items)


def dataset_channels(path: Path, what: str = "dataset.json") -> list[str]:
    """The hntseg channel keys of a dataset.json: hntseg's own list when it wrote one, else
    nnU-Net's `channel_names` mapped back to keys (a dataset made by hand or another tool).
    A channel hntseg cannot make is an error naming the file."""
    data = read_json(path, what)
    extra = data.get("hntseg") if isinstance(data, dict) else None
    chans = extra.get("channels") if isinstance(extra, dict) else None
    if not chans:
        given = data.get("channel_names") if isinstance(data, dict) else None
        try:
            names = [given[k] for k in sorted(given, key=int)]  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError):
            names = []
        if not names:
            raise InputError(f"{path}: no valid channel_names in the {what}")
        reverse = {v: k for k, v in CHANNELS.items()}
        chans = [reverse.get(n, n) if isinstance(n, str) else n for n in names]
    if not isinstance(chans, list):
        raise InputError(f"{path}: hntseg.channels in the {what} is not a list")
    unknown = [str(c) for c in chans if not isinstance(c, str) or c not in CHANNELS]
    if unknown:
        raise InputError(
            f"{path}: channel(s) {', '.join(unknown)} in the {what} are not hntseg's "
            f"(known: {', '.join(CHANNELS)})"
        )
    return list(chans)


def dataset_name(dataset_id: int, name: str = "HNTSMRG") -> str:
    """nnU-Net's folder name: Dataset007_HNTSMRG."""
    if not 1 <= int(dataset_id) <= 999:
        raise InputError(f"--dataset-id {dataset_id}: must be 1..999 (nnU-Net's three digits)")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise InputError(f"--name {name!r}: use letters, digits, '-' or '_'")
    return f"Dataset{int(dataset_id):03d}_{name}"


@dataclass(frozen=True)
class Paths:
    """The three nnU-Net folders under WORK."""

    work: Path

    @property
    def raw(self) -> Path:
        return self.work / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        return self.work / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        return self.work / "nnUNet_results"


def id_folders(work: str | Path, dataset_id: int) -> list[Path]:
    """Every `DatasetNNN_*` folder of this id in nnUNet_raw, nnUNet_preprocessed and
    nnUNet_results: nnU-Net looks an id up in all three (`find_candidate_datasets`), and
    two names for one id make each of its calls by id fail."""
    paths = Paths(Path(work))
    prefix = f"Dataset{int(dataset_id):03d}_"
    return [
        p
        for root in (paths.raw, paths.preprocessed, paths.results)
        if root.is_dir()
        for p in sorted(root.glob(prefix + "*"))
        if p.is_dir()
    ]


def find_dataset(work: str | Path, dataset_id: int, what: str = "dataset") -> str:
    """The existing DatasetNNN_* name under WORK/nnUNet_raw (InputError if none, or if
    several names have this id in nnUNet_raw, nnUNet_preprocessed or nnUNet_results:
    nnU-Net would stop on that with a traceback, much later)."""
    if not 1 <= int(dataset_id) <= 999:
        raise InputError(f"--dataset-id {dataset_id}: must be 1..999 (nnU-Net's three digits)")
    raw = Paths(Path(work)).raw
    prefix = f"Dataset{int(dataset_id):03d}_"
    found = sorted(p.name for p in raw.glob(prefix + "*") if p.is_dir()) if raw.is_dir() else []
    if not found:
        raise InputError(
            f"{raw / (prefix + '*')}: no {what} with id {dataset_id} (run hntseg build-dataset)"
        )
    if len(found) > 1:
        raise InputError(f"{raw}: several datasets with id {dataset_id}: {', '.join(found)}")
    others = [p for p in id_folders(work, dataset_id) if p.name != found[0]]
    if others:
        raise InputError(
            f"{others[0]}: several datasets with id {dataset_id}: {found[0]} and "
            f"{others[0].name}; remove the folders of the one you do not want"
        )
    return found[0]


def check_workers(workers: int | None) -> None:
    """--workers: None (the machine's default) or >= 0."""
    if workers is not None and (isinstance(workers, bool) or int(workers) < 0):
        raise InputError(f"--workers {workers}: must be >= 0 (0 = no worker processes)")


@functools.lru_cache(maxsize=1)
def check_nnunet_version() -> str:
    """The installed nnunetv2 version; one outside NNUNET_VERSIONS is an InputError."""
    try:
        found = metadata.version("nnunetv2")
    except metadata.PackageNotFoundError:
        raise InputError("nnunetv2 is not installed (pip install 'nnunetv2>=2.8,<2.9')") from None
    numbers = tuple(int(n) for n in re.findall(r"\d+", found)[:2])
    (lo, hi) = NNUNET_VERSIONS
    if not lo <= numbers < hi:
        raise InputError(
            f"nnunetv2 {found} is installed; hntseg needs {lo[0]}.{lo[1]}.x "
            f"(pip install 'nnunetv2>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}')"
        )
    return found


F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """Inside, hntseg may set nnU-Net's variables, torch's thread count, and nnU-Net may
    switch matplotlib to Agg (its trainer does on import); on exit all three are as before.

    torch's threads are put back only when torch was imported before (otherwise nobody has
    chosen a count yet, and the allocation's CPUs set inside is the sensible one)."""
    env = {k: os.environ.get(k) for k in ENV_KEYS}
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    backend = _matplotlib_backend()
    try:
        yield
    finally:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if torch is not None and threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        _restore_backend(backend)


def restores_process_state(func: F) -> F:
    """`func` runs inside `process_state_kept` (for the stages that call nnU-Net)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with process_state_kept():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _restore_backend(before: str | None) -> None:
    """matplotlib's backend back to `before`; when none was chosen before (matplotlib not
    imported, as in a fresh Jupyter kernel, which only sets MPLBACKEND), back to what
    matplotlib would have chosen: MPLBACKEND, else its automatic choice."""
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is None:
        return
    target: Any = before
    if target is None:
        target = os.environ.get("MPLBACKEND") or getattr(
            matplotlib.rcsetup, "_auto_backend_sentinel", None
        )
    if target is not None and _matplotlib_backend() != target:
        matplotlib.use(target)


def _matplotlib_backend() -> str | None:
    """The backend chosen in this process, without choosing one; None if none yet."""
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is None:
        return None
    try:
        return matplotlib.get_backend(auto_select=False)
    except TypeError:  # matplotlib < 3.10: asking resolves it, so only once pyplot chose
        return matplotlib.get_backend() if "matplotlib.pyplot" in sys.modules else None


def set_environment(work: str | Path, workers: int | None = None, create: bool = True) -> Paths:
    """Point nnU-Net at WORK (and at hntseg's trainers) in this process; create the folders.

    `workers`: data-augmentation processes (`nnUNet_n_proc_DA`) and nnU-Net's default
    process count (`nnUNet_def_n_proc`); default from the machine unless already set.
    `create=False` creates nothing (prediction needs only the existing nnUNet_results).
    The variables stay set: callers run inside `process_state_kept`.
    """
    check_nnunet_version()
    paths = Paths(Path(work).resolve())
    if create:
        for folder in (paths.raw, paths.preprocessed, paths.results):
            make_folder(folder)
    os.environ["nnUNet_raw"] = str(paths.raw)
    os.environ["nnUNet_preprocessed"] = str(paths.preprocessed)
    os.environ["nnUNet_results"] = str(paths.results)
    ext = os.environ.get("nnUNet_extTrainer", "")
    if str(TRAINERS_DIR) not in ext.split(os.pathsep):
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(p for p in (str(TRAINERS_DIR), ext) if p)
    check_workers(workers)
    n = default_workers() if workers is None else int(workers)
    if workers is not None or "nnUNet_n_proc_DA" not in os.environ:
        os.environ["nnUNet_n_proc_DA"] = str(n)
    if workers is not None or "nnUNet_def_n_proc" not in os.environ:
        os.environ["nnUNet_def_n_proc"] = str(max(1, n))
    return paths


def default_workers() -> int:
    """Data-augmentation workers for this machine: CPUs minus one for the main process, <= 12."""
    from hntseg.machine import available_cpus

    return max(1, min(12, available_cpus() - 1))


def check_device(device: str | None) -> str:
    """The `--device` name, lower-cased (auto, cuda, cpu or mps); checked without torch."""
    name = (device or "auto").lower()
    if name not in ("auto", "cuda", "cpu", "mps"):
        raise InputError(f"--device {device!r}: expected auto, cuda, cpu or mps")
    return name


def nvidia_driver_present() -> bool:
    """Whether an NVIDIA kernel driver is loaded (a GPU node), whatever torch can see."""
    return Path(NVIDIA_DRIVER_FILE).is_file()


NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"


def select_device(device: str = "auto") -> Any:
    """auto -> cuda, else mps, else cpu; an unavailable explicit choice is an InputError."""
    device = check_device(device)
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else ("mps" if has_mps else "cpu")
        if device == "cpu" and nvidia_driver_present():
            from hntseg.log import log

            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            log.warning(
                "--device auto: this machine has an NVIDIA driver, but torch %s (%s) cannot "
                "use the GPU, so this runs on the CPU (slowly); use --device cuda to make "
                "this an error",
                torch.__version__,
                build,
            )
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU visible to torch")
    if device == "mps" and not has_mps:
        raise InputError("--device mps: Apple MPS is not available")
    if device == "cpu":
        from hntseg.machine import available_cpus

        torch.set_num_threads(available_cpus())
    return torch.device(device)


def describe_device(device: Any) -> str:
    """'cuda (NVIDIA H200)' / 'cpu (16 threads)' / 'mps'."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def model_folder(paths: Paths, name: str, trainer: str, configuration: str = CONFIGURATION) -> Path:
    """nnUNet_results/DatasetNNN_x/<trainer>__<plans>__<configuration>."""
    return paths.results / name / f"{trainer}__{PLANS}__{configuration}"

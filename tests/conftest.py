"""Shared fixtures: small synthetic images and a tiny synthetic cohort."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import settings

# CI replays the same examples every run (no flaky red builds); local runs explore.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_image(
    arr: np.ndarray, spacing=(0.5, 0.5, 2.0), origin=(0.0, 0.0, 0.0), direction=None
) -> sitk.Image:
    """A SimpleITK image from a (z, y, x) array with (x, y, z) spacing."""
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def patient_with_bad_grid(cohort: Path, dst: Path, pid: str, relative: str) -> Path:
    """Copy patient `pid` of `cohort` to `dst` and double the spacing of one of its files
    (`relative` to the patient folder): that file is then on another grid. Returns it."""
    import shutil

    shutil.copytree(cohort / pid, dst / pid)
    path = dst / pid / relative
    image = sitk.ReadImage(str(path))
    image.SetSpacing([2 * v for v in image.GetSpacing()])
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """Four synthetic patients at a small size (shared, read-only by convention)."""
    from hntseg.synth import synth_cohort

    root = tmp_path_factory.mktemp("cohort")
    synth_cohort(root, patients=4, seed=0, size=(64, 64, 16))
    return root


_FIGURES: list[str] = []


@pytest.fixture
def inline_pool(monkeypatch) -> list[int]:
    """hntseg.workers.Pool replaced by one that runs the tasks here, at once (monkeypatches
    reach them), its `init` first as a worker would; returns the sizes of the pools asked
    for."""
    import hntseg.workers

    sizes: list[int] = []

    class InlinePool(hntseg.workers.Pool):
        def __init__(self, workers: int, init=None) -> None:
            sizes.append(workers)
            super().__init__(workers, init)

        def imap_unordered(self, fn, tasks):
            if self.init is not None:
                self.init()
            for index, task in enumerate(tasks):
                yield hntseg.workers.Outcome(index, fn(task))

    monkeypatch.setattr(hntseg.workers, "Pool", InlinePool)
    return sizes


@pytest.fixture
def report():
    """Append a line to the 'figures' section printed at the end of the test run."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("figures reported by tests")
        for line in _FIGURES:
            terminalreporter.write_line(line)

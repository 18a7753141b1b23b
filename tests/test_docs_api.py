"""docs/api.md's notebook session runs as written (the first Python block; the second
trains, which the nnU-Net chain test covers)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_api_session_runs_as_written(tmp_path):
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines[:5]] == [[str(i), "ok"] for i in range(1, 6)]
    assert "'mean'" in lines[5]
    assert lines[6] == "refused: no_such_folder: prediction folder not found"
    assert (tmp_path / "work" / "nnUNet_raw" / "Dataset007_HNTSMRG" / "dataset.json").is_file()

"""`widthwise sweep --nproc 2`: each point is a real 2-process torchrun (DDP) run on the local executor (on Ray:
tests/app/sweep/test_ray.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from widthwise.app.sweep.store import read_results

from sweep_helpers import QUIET

pytestmark = [pytest.mark.usefixtures("data_cache"), pytest.mark.slow]


def test_points_run_on_two_processes_each(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sets = {**QUIET, "train.steps": 8, "train.checkpoint_every": 4, "train.eval_every": 4, "diagnostics.every": 4,
            "train.compile": False}
    sweep.write_text(yaml.safe_dump({"base": "tiny", "grid": {"optim.lr": [0.01, 3.0]}, "set": sets}))
    proc = subprocess.run([sys.executable, "-m", "widthwise", "sweep", str(sweep), "--out", str(tmp_path / "out"),
                           "--workers", "1", "--threads", "1", "--nproc", "2"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 local worker(s) x 2 processes x 1 thread(s)" in proc.stderr
    rows = {r["lr"]: r for r in read_results(tmp_path / "out")}
    assert rows[0.01]["status"] == "completed" and rows[3.0]["status"] == "diverged"  # exit codes through torchrun
    for row in rows.values():
        summary = json.loads((Path(row["run_dir"]) / "summary.json").read_text())
        assert summary["world_size"] == 2 and row["attempts"] == 1
    assert rows[0.01]["tokens"] == 8 * 8 * 32 and rows[0.01]["sigma_max"] > 0


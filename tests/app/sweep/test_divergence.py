"""Divergence is data: a sweep whose every point diverges finishes, its rows diverged, and a rerun repeats nothing."""

from __future__ import annotations

import pytest

from widthwise.app.sweep.driver import run_sweep
from widthwise.app.sweep.spec import parse_sweep
from widthwise.app.sweep.store import read_results
from widthwise.errors import EXIT_OK

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread")


def test_a_sweep_whose_points_all_diverge_finishes_with_them_recorded(tmp_path):
    spec = parse_sweep({"base": "tiny", "grid": {"optim.lr": [1e4, 3e4]},
                        "set": {"train.steps": 12, "train.divergence_factor": None, "diagnostics.every": 2,
                                "train.sample_tokens": 0, "train.tensorboard": False, "train.plots": False}})
    result = run_sweep(spec, tmp_path / "out", workers=2, threads=1, progress=False)
    assert result.exit_code == EXIT_OK and result.counts == {"completed": 0, "diverged": 2, "failed": 0}
    rows = read_results(tmp_path / "out")
    assert [r["status"] for r in rows] == ["diverged", "diverged"] and all(r["error"] is None for r in rows)
    again = run_sweep(spec, tmp_path / "out", workers=2, threads=1, progress=False)
    assert again.ran == 0 and again.counts == result.counts

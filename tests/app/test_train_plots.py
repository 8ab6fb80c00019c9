"""The run's plots: written for completed and diverged runs alike, non-finite values left out."""

from __future__ import annotations

import json

import pytest

from widthwise.cli import main
from widthwise.errors import EXIT_DIVERGED

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread")


def test_a_run_that_reaches_nan_with_plots_on_is_recorded_as_diverged_with_its_plots(tmp_path, capsys):
    run = tmp_path / "run"
    sets = ["train.steps=30", "optim.lr=1e4", "train.divergence_factor=null", "train.threads=1",
            "train.sample_tokens=0", "train.tensorboard=false", "diagnostics.every=null"]
    code = main(["train", "tiny", "--out", str(run), "--quiet", *(a for s in sets for a in ("--set", s))])
    assert code == EXIT_DIVERGED
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] < 30
    assert "nan" in (run / "metrics.jsonl").read_text().splitlines()[-1]  # the blow-up is in the last record
    for name in ("loss.png", "lr.png", "multipliers.png"):
        assert (run / "plots" / name).read_bytes()[:4] == b"\x89PNG", name
    assert "Traceback" not in capsys.readouterr().err

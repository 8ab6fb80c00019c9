"""Claim 1 of REPRODUCTION.md re-derived at a tiny size: the pipeline from sweep file to claim record, on real
training. A 2 x 2 (LR, WD) grid at width 32, 600 steps in steady state; the measured slope of the hidden matrices'
RMS against lr/wd must come out near the law's 1/2 (the full experiment: experiments/equilibrium)."""

from __future__ import annotations

import json

import pytest
from experiments.equilibrium import analyze as equilibrium

from experiments import lib
from widthwise.app.sweep.driver import run_sweep
from widthwise.app.sweep.spec import parse_sweep
from widthwise.app.sweep.store import read_results

SWEEP = {
    "base": "tiny",
    "grid": {"optim.lr": [0.01, 0.02], "optim.weight_decay": [1.0, 4.0]},
    "set": {"scaling.recipe": "sp", "scaling.base_width": None, "multipliers.kind": "none",
            "schedule.kind": "constant", "schedule.warmup": 20, "train.steps": 600, "train.batch_size": 4,
            "train.seq_len": 32, "train.dtype": "float32", "train.compile": False, "train.eval_every": 600,
            "train.eval_tokens": 1024, "train.checkpoint_every": 600, "train.sample_tokens": 0,
            "train.plots": False, "train.tensorboard": False, "diagnostics.every": 100,
            "diagnostics.gains": False},
}


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(lib, "FIGURES", tmp_path / "results" / "figures")
    return tmp_path


@pytest.mark.slow
def test_claim_1_rederived_at_tiny_size(results, data_cache, one_thread):
    out = results / "sweep"
    assert run_sweep(parse_sweep(SWEEP), out, workers=2, threads=1, progress=False).exit_code == 0
    rows = [r for r in read_results(out) if r["status"] == "completed"]
    assert len(rows) == 4 and min(r["relaxation_times"] for r in rows) > 5
    record, details = equilibrium.sqrt_law(rows)
    assert record["claim"] == "equilibrium_sqrt_law" and set(lib.CLAIM_KEYS) <= set(record)
    assert 0.35 < record["measured"] < 0.65, record["measured"]
    low, high = record["interval"]
    assert low < record["measured"] < high
    assert (results / "results" / "figures" / "equilibrium_sqrt_law.png").is_file()
    # the noise equilibrium sets the scale: real weights within a factor 2 of it
    assert 0.5 < details["rms_over_noise_equilibrium"]["median"] < 2.0
    path = lib.update_claims([record], results / "claims.json")
    assert [c["claim"] for c in json.loads(path.read_text())] == ["equilibrium_sqrt_law"]


def test_holds_is_true_false_or_inconclusive():
    assert lib.holds([0.45, 0.55], 0.5, 0.1) is True
    assert lib.holds([0.62, 0.68], 0.5, 0.1) is False
    assert lib.holds([0.0, 1.0], 0.5, 0.1) is None  # too wide to tell
    assert lib.holds([float("nan"), 1.0], 0.5, 0.1) is None


def test_claim_records_are_checked(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        lib.claim(claim="x", statement="s")
    fields = dict(claim="x", statement="s", source="p", measured=1.0, interval=[0.5, 1.5], expected=1.0, holds=True,
                  figures=[str(tmp_path / "absent.png")], command="c", setup={}, wall_s=1.0)
    with pytest.raises(ValueError, match="figures do not exist"):
        lib.claim(**fields)

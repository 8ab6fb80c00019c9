"""Every plot writer draws on its own matplotlib Figure: the caller's backend stays, pyplot is never imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

_SCRIPT = """
import json, sys
from pathlib import Path

import matplotlib

matplotlib.use("svg")  # the caller's backend (a notebook's, a GUI's): the plots must leave it alone
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/app", sys.argv[2] + "/app/analysis"]
out = Path(sys.argv[1])

from widthwise.cli import main

run = out / "run"
steps = ["train.steps=4", "schedule.warmup=1", "train.eval_every=2", "train.checkpoint_every=2", "diagnostics.every=2",
         "train.sample_tokens=0", "train.tensorboard=false", "train.compile=false", "train.threads=1"]
assert main(["train", "tiny", "--out", str(run), "--quiet", *(a for s in steps for a in ("--set", s))]) == 0
assert main(["diagnose", str(run), "--sequences", "2"]) == 0

from test_coord_check import synthetic
synthetic({"embed_out": 0.0, "attn_out": 1.0, "mlp_out": 0.0, "last_hidden": 0.0, "logits": 0.5}).plot(out / "cc.png")

from test_analyze import demo_rows
from widthwise.app.analysis.analyze import analyze
analyze(out / "sweep", rows=demo_rows(), plots=True)

from test_calibration import _rows
from widthwise.app.analysis.calibration import calibrate_rows, plot_calibration
plot_calibration(calibrate_rows(_rows()), out / "calibration.png")

from widthwise.app.bench.plots import OVERHEADS, VARIANT_STYLES, plot_bench
results = [{"width": w, "mode": "eager_fp32", "tokens_per_s": dict.fromkeys(VARIANT_STYLES, 1000.0 / w),
            "muon_vs_adamw": {"ratio": 1.1}, **{k: {"ratio": 1.0} for k in OVERHEADS}} for w in (32, 64)]
plot_bench({"results": results, "machine": {"cuda": None, "cpu": "cpu", "threads": 1},
            "plan": {"batch_size": 2, "seq_len": 16}, "load_average": {"before": [0.5], "after": [0.6]}},
           out / "bench.png")

print(json.dumps({"backend": matplotlib.get_backend(), "pyplot": "matplotlib.pyplot" in sys.modules,
                  "pngs": sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))}))
"""


@pytest.mark.slow
@pytest.mark.usefixtures("data_cache")
def test_plot_writers_leave_the_backend_and_pyplot_alone(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path), str(TESTS)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "svg" and result["pyplot"] is False, result
    pngs = set(result["pngs"])
    expected = {"run/plots/loss.png", "cc.png", "calibration.png", "bench.png", "sweep/plots/heatmaps.png"}
    assert expected <= pngs, pngs
    assert any(p.startswith("run/plots/diagnostics/") for p in pngs), pngs
    for name in pngs:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name

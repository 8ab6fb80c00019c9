"""A width sweep over the GQA ``tiny`` config at its own base width 16, end to end.

``tiny`` groups two queries per KV head; its base at width 16 has one head and one KV head, so at width 64
``k_proj`` is 32 x 64 against 16 x 16 (fan-out x2, fan-in x4). The plan takes each matrix's fan-in ratio, as muP
does, so the sweep runs instead of being refused for "inconsistent ratios 2, 4" before any run.
"""

from __future__ import annotations

import pytest
import yaml

from widthwise.app.sweep.driver import run_sweep
from widthwise.app.sweep.spec import load_sweep
from widthwise.app.sweep.store import read_results

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread")


@pytest.mark.slow
def test_tiny_gqa_sweep_at_widths_32_and_64(tmp_path):
    sets = {"train.plots": False, "train.tensorboard": False, "train.sample_tokens": 0, "train.steps": 6,
            "schedule.warmup": 2, "train.checkpoint_every": 6, "train.eval_every": 6, "train.eval_tokens": 512,
            "diagnostics.every": 6}
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "tiny", "grid": {"model.width": [32, 64]}, "set": sets}))
    result = run_sweep(load_sweep(sweep), tmp_path / "out", workers=1, threads=1, progress=False)
    assert result.exit_code == 0 and result.counts.get("completed") == 2, result
    rows = {r["width"]: r for r in read_results(tmp_path / "out")}
    assert set(rows) == {32, 64}
    for width, row in rows.items():
        assert row["status"] == "completed" and row["val_loss"] > 0, row
        model = row["config"]["model"]
        assert (model["heads"], model["kv_heads"]) == (width // 16, width // 32)  # GQA kept at both widths
        assert row["config"]["scaling"]["base_width"] == 16

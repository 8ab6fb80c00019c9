"""One sweep, one numerics: the driver resolves ``auto`` dtype/compile/NS once, every point runs and is recorded with
them, reruns keep them, and analyze refuses rows whose numerics differ. Each row also counts its relaxation times."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from widthwise.app import runtime
from widthwise.app.analysis.analyze import check_analyzable
from widthwise.app.rundir import RunDir
from widthwise.app.sweep.driver import run_sweep
from widthwise.app.sweep.spec import load_sweep
from widthwise.app.sweep.store import ResultsDB, db_path, read_results
from widthwise.app.sweep.worker import collect_result
from widthwise.errors import SweepError

from sweep_helpers import QUIET

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread")

STEPS, WD = 12, 0.1


def fake_probe(monkeypatch, bf16_speedup: float) -> None:
    """This process's timing probe reports bf16 ``bf16_speedup`` times faster than fp32."""
    monkeypatch.setattr(runtime, "matmul_seconds",
                        lambda n, dtype: 1e-3 / (bf16_speedup if dtype == torch.bfloat16 else 1.0))


def write_sweep(path: Path, lrs: list[float], data_cache: Path) -> Path:
    sets = {**QUIET, "train.steps": STEPS, "train.checkpoint_every": 6, "train.eval_every": 6,
            "diagnostics.every": 6, "schedule.kind": "constant", "schedule.warmup": 0,
            "optim.weight_decay": WD, "data.cache_dir": str(data_cache)}
    path.write_text(yaml.safe_dump({"base": "tiny", "grid": {"model.width": [64], "optim.lr": lrs}, "set": sets}))
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory, data_cache):
    """A real tiny sweep whose driver measured fp32 as this machine's fast path (in a fresh numerics cache)."""
    root = tmp_path_factory.mktemp("numerics")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WIDTHWISE_CACHE", str(root / "cache"))  # the numerics cache; data from data.cache_dir
        fake_probe(mp, 0.1)
        spec = load_sweep(write_sweep(root / "sweep.yaml", [0.01, 0.02], data_cache))
        result = run_sweep(spec, root / "out", workers=2, threads=1, progress=False)
    return root, result


def test_every_point_runs_and_is_recorded_with_the_drivers_numerics(swept):
    root, result = swept
    assert result.exit_code == 0 and result.counts["completed"] == 2
    with ResultsDB(db_path(root / "out")) as db:
        stored = json.loads(db.meta("numerics"))
    assert stored == {"train.device": "cpu", "train.dtype": "float32", "train.compile": False,
                      "optim.ns_dtype": "float32"}
    rows = read_results(root / "out")
    assert [r["numerics"] for r in rows] == ["cpu/float32/eager"] * 2
    for row in rows:
        assert row["config"]["train"]["dtype"] == "auto"  # the point as swept: its run id is unchanged
        run = RunDir(Path(row["run_dir"]))
        assert run.config().train.dtype == "float32" and run.config().train.compile is False  # given explicitly
        assert run.resolved()["runtime"]["dtype"] == "float32"


def test_a_rerun_keeps_the_sweeps_numerics_when_the_probe_now_says_bf16(swept, data_cache, monkeypatch):
    root, _ = swept
    monkeypatch.setenv("WIDTHWISE_CACHE", str(root / "fresh-cache"))  # a fresh measurement would pick bf16
    fake_probe(monkeypatch, 10.0)
    spec = load_sweep(write_sweep(root / "sweep.yaml", [0.01, 0.02, 0.005], data_cache))
    assert run_sweep(spec, root / "out", workers=1, threads=1, progress=False).ran == 1
    rows = read_results(root / "out")
    assert len(rows) == 3 and {r["numerics"] for r in rows} == {"cpu/float32/eager"}


def test_relaxation_times_are_steps_times_the_hidden_lr_and_wd(swept):
    """Constant schedule: ``steps * lr_hidden * wd_hidden``; robust at width 64 over base 32: LR / 2, WD * sqrt(2)."""
    root, _ = swept
    for row in read_results(root / "out"):
        expected = STEPS * (row["lr"] / 2) * (WD * math.sqrt(2))
        assert row["relaxation_times"] == pytest.approx(expected, rel=1e-12)
        assert set(row["relaxation_groups"]) == {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                                                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
        assert all(v == pytest.approx(expected, rel=1e-12) for v in row["relaxation_groups"].values())


def test_relaxation_times_follow_the_schedule_not_just_the_step_count(swept, tmp_path):
    """A warmup of 4 steps of 12 runs at LR 1/4, 2/4, 3/4, 4/4: 12 - 1.5 full-LR steps' worth."""
    root, _ = swept
    row = read_results(root / "out")[0]
    run = Path(row["run_dir"])
    data = yaml.safe_load((run / "config.yaml").read_text())
    data["schedule"]["warmup"] = 4
    (tmp_path / "summary.json").write_text((run / "summary.json").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    result = collect_result(tmp_path)
    assert result is not None
    assert result["relaxation_times"] == pytest.approx((STEPS - 1.5) * (row["lr"] / 2) * (WD * math.sqrt(2)))


def rows_with(*numerics: str | None) -> list[dict]:
    return [{"status": "completed", "lr": 0.01 * (i + 1), "numerics": n} for i, n in enumerate(numerics)]


def test_analyze_refuses_rows_whose_numerics_differ():
    rows = rows_with("cpu/bfloat16/eager", "cpu/bfloat16/eager", "cpu/float32/eager")
    with pytest.raises(SweepError, match=r"different numerics \(cpu/bfloat16/eager \(2 rows\), "
                                         r"cpu/float32/eager \(1 rows\)\)"):
        check_analyzable(rows, "SWEEP_DIR x")
    with pytest.raises(SweepError, match="different numerics"):  # Muon runs with two Newton-Schulz dtypes
        check_analyzable(rows_with("cpu/float32/eager/ns-float32", "cpu/float32/eager/ns-bfloat16"), "x")


def test_analyze_accepts_one_numerics_old_rows_without_and_adamw_beside_muon():
    check_analyzable(rows_with("cpu/float32/eager", None, "cpu/float32/eager"), "x")  # NULL: an older sweep
    check_analyzable(rows_with("cpu/float32/eager", "cpu/float32/eager/ns-float32"), "x")  # NS is Muon's alone
    check_analyzable(rows_with(None, None), "x")

"""`widthwise sweep` on local worker processes: real tiny runs, a diverging point, rerun without repeats, kill -9
of a worker and of the driver, failed runs and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from widthwise.app import trainer
from widthwise.app.config import apply_overrides
from widthwise.app.metrics import read_metrics
from widthwise.app.sweep.spec import expand, load_sweep
from widthwise.app.sweep.store import read_results
from widthwise.cli import main

from sweep_helpers import QUIET, checkpoint_steps, wait_for, worker_pids

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread")

def write_sweep(path: Path, grid: dict, **fixed) -> Path:
    sets = {**QUIET, "train.steps": 12, "train.checkpoint_every": 4, "train.eval_every": 6,
            "diagnostics.every": 6, **fixed}
    path.write_text(yaml.safe_dump({"base": "tiny", "grid": grid, "set": sets}))
    return path


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "widthwise", *args], capture_output=True, text=True, timeout=600,
                          **kw)


def by_lr(rows: list[dict]) -> dict:
    return {(r["width"], r["lr"]): r for r in rows}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    sweep = write_sweep(root / "sweep.yaml", {"model.width": [32, 64], "optim.lr": [0.01, 3.0]})
    proc = cli("sweep", str(sweep), "--out", str(root / "out"), "--workers", "2", "--threads", "1")
    return root, sweep, proc


def test_every_point_is_an_ordinary_run_recorded_in_sqlite(swept):
    root, _, proc = swept
    assert proc.returncode == 0, proc.stderr
    assert "2 completed, 2 diverged" in proc.stdout and "widthwise analyze" in proc.stdout
    assert "4 runs, 0 already done, 4 to run" in proc.stderr
    rows = by_lr(read_results(root / "out"))
    assert set(rows) == {(32, 0.01), (32, 3.0), (64, 0.01), (64, 3.0)}
    for width in (32, 64):
        ok, bad = rows[(width, 0.01)], rows[(width, 3.0)]
        assert ok["status"] == "completed" and ok["attempts"] == 1 and ok["error"] is None
        assert ok["val_loss"] > 0 and ok["final_train_loss"] > 0 and ok["steps"] == 12 and ok["tokens"] == 12 * 8 * 32
        assert ok["wall_s"] > 0 and ok["sigma_max"] > 0 and ok["gain"] > 0
        assert set(ok["layer_types"]) == {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
        assert bad["status"] == "diverged" and bad["val_loss"] is None  # the edge of the stable region: data
        run = Path(ok["run_dir"])
        for name in ("config.yaml", "summary.json", "metrics.jsonl", "diagnostics.jsonl", "plan.txt"):
            assert (run / name).is_file(), name
        assert json.loads((run / "summary.json").read_text())["val_loss"] == ok["val_loss"]
        assert (root / "out" / "logs" / f"{ok['name']}.log").is_file()
    assert rows[(64, 0.01)]["config"]["model"]["heads"] == 4  # heads follow width at head dim 16


def test_a_sweep_run_equals_the_same_config_trained_directly(swept, tmp_path):
    root, sweep, _ = swept
    point = next(p for p in expand(load_sweep(sweep)) if p.params == {"model.width": 64, "optim.lr": 0.01})
    config = apply_overrides(point.config, {"train.threads": 1, "train.progress": False})
    direct = trainer.start(config, tmp_path / "direct")
    assert direct.summary["val_loss"] == by_lr(read_results(root / "out"))[(64, 0.01)]["val_loss"]


def test_rerun_repeats_nothing_and_a_grown_grid_runs_only_the_new_points(swept):
    root, sweep, _ = swept
    out = root / "out"
    before = {r["name"]: (Path(r["run_dir"]) / "summary.json").stat().st_mtime_ns for r in read_results(out)}
    proc = cli("sweep", str(sweep), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "4 already done, 0 to run" in proc.stderr
    assert {r["name"]: (Path(r["run_dir"]) / "summary.json").stat().st_mtime_ns for r in read_results(out)} == before
    grown = write_sweep(root / "grown.yaml", {"model.width": [32, 64], "optim.lr": [0.01, 3.0, 0.003]})
    proc = cli("sweep", str(grown), "--out", str(out), "--quiet", "--workers", "2", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "6 runs, 4 already done, 2 to run" in proc.stderr
    rows = read_results(out)
    assert len(rows) == 6 and all(r["attempts"] == 1 for r in rows)
    assert {r["status"] for r in rows if r["lr"] == 0.003} == {"completed"}


@pytest.mark.slow
def test_kill_9_of_a_worker_and_of_the_driver_loses_and_repeats_nothing(tmp_path):
    sweep = write_sweep(tmp_path / "sweep.yaml", {"optim.lr": [0.01, 0.02]}, **{"train.steps": 80,
                        "train.checkpoint_every": 5, "train.eval_every": 40, "diagnostics.every": 40})
    out = tmp_path / "out"
    points = expand(load_sweep(sweep))
    first, second = (out / "runs" / p.name for p in points)
    driver = subprocess.Popen([sys.executable, "-m", "widthwise", "sweep", str(sweep), "--out", str(out),
                               "--workers", "1", "--threads", "1", "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # A worker killed mid-run: the driver resumes its run from the checkpoint.
        wait_for(lambda: any(s >= 10 for s in checkpoint_steps(first)), what="a checkpoint of the first run")
        (pid,) = worker_pids(first)
        os.kill(pid, signal.SIGKILL)
        # The driver killed while the second run trains: its worker checkpoints and leaves (parent-death signal).
        wait_for(lambda: any(s >= 10 for s in checkpoint_steps(second)), what="a checkpoint of the second run")
        assert (first / "summary.json").is_file()
        first_done = (first / "summary.json").stat().st_mtime_ns
        driver.kill()
        driver.wait()
        wait_for(lambda: not worker_pids(second), timeout=60, what="the orphaned worker to leave")
    finally:
        driver.kill()
        driver.wait()
    assert "killed by SIGKILL; resuming it from its checkpoint" in driver.stderr.read()
    rows = {r["name"]: r for r in read_results(out)}
    assert rows[first.name]["status"] == "completed" and rows[first.name]["attempts"] == 2
    assert rows[second.name]["status"] == "running"  # as the killed driver left it
    proc = cli("sweep", str(sweep), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "2 runs, 1 already done, 1 to run" in proc.stderr
    rows = {r["name"]: r for r in read_results(out)}
    assert [rows[p.name]["status"] for p in points] == ["completed", "completed"]
    assert rows[second.name]["attempts"] == 2
    assert (first / "summary.json").stat().st_mtime_ns == first_done  # not run again
    log = (out / "logs" / f"{second.name}.log").read_text()
    resumed_from = int(log.split("resuming")[1].split("from step ")[1].split(":")[0])
    assert resumed_from >= 10
    for run in (first, second):
        assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 81))
    # Nothing lost: the twice-interrupted runs log exactly the losses of uninterrupted ones.
    for point, run in zip(points, (first, second), strict=True):
        config = apply_overrides(point.config, {"train.threads": 1, "train.progress": False})
        direct = trainer.start(config, tmp_path / f"direct-{run.name}")
        assert [r["train_loss"] for r in read_metrics(run / "metrics.jsonl")] == \
            [r["train_loss"] for r in read_metrics(direct.run_dir / "metrics.jsonl")]
        assert rows[run.name]["val_loss"] == direct.summary["val_loss"]


def test_a_run_that_cannot_train_is_failed_with_its_reason_and_the_sweep_exits_1(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep.yaml", {"optim.lr": [0.01]})
    out = tmp_path / "out"
    (point,) = expand(load_sweep(sweep))
    (out / "runs" / point.name).mkdir(parents=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(load_sweep(sweep).to_dict()))  # a sweep whose run got corrupt
    (out / "runs" / point.name / "config.yaml").write_text("model: [\n")  # a corrupt run directory
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet", "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert f"failed: {point.name}" in err and "config.yaml is corrupt" in err
    (row,) = read_results(out)
    assert row["status"] == "failed" and "config.yaml is corrupt (not valid YAML" in row["error"]


def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "sweep.yaml", {"optim.lr": [0.01]})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"base": "tiny", "grid": {"optim.lr": [0.01, -1]}}))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    other = write_sweep(tmp_path / "other.yaml", {"optim.lr": [0.01]}, **{"train.steps": 13})
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "sweep.yaml").write_text(yaml.safe_dump(load_sweep(other).to_dict()))
    cases = [
        (["sweep", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")], "no such sweep file"),
        (["sweep", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")],
         "grid point {optim.lr: -1}: optim.lr: must be positive"),
        (["sweep", str(sweep), "--out", str(tmp_path / "busy")], "exists and is not a sweep directory"),
        (["sweep", str(sweep), "--out", str(tmp_path / "done")], "holds a sweep with another base, set or grid keys"),
        (["sweep", str(sweep), "--out", str(tmp_path / "o"), "--workers", "0"], "expected a positive integer"),
        (["sweep", str(sweep), "--out", str(tmp_path / "o"), "--executor", "slurm"], "invalid choice: 'slurm'"),
        (["sweep", str(sweep), "--out", str(tmp_path / "o"), "--address", "1.2.3.4:6379"],
         "--address is for --executor ray only"),
    ]
    for argv, expected in cases:
        assert _exit_code(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine" and len(list((tmp_path / "busy").iterdir())) == 1
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["sweep.yaml"]


def _exit_code(argv: list[str]) -> int:
    """``main``'s exit code, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)

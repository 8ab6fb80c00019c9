"""A sweep's archive (experiments/results/archive/<experiment>/<sweep>.tar.xz) keeps its finished runs without their
checkpoints; on a checkout without the sweep directory it is restored with the unfinished rows pending."""

from __future__ import annotations

import tarfile

import pytest

from experiments import lib
from widthwise.app.sweep.spec import expand, parse_sweep
from widthwise.app.sweep.store import ResultsDB, read_results


@pytest.fixture
def sweep(tmp_path, monkeypatch):
    """A sweep directory of 3 points: one completed, one diverged, one running (a live attempt), with run files."""
    monkeypatch.setattr(lib, "RESULTS", tmp_path / "results")
    monkeypatch.setenv("WIDTHWISE_EXPERIMENTS_OUT", str(tmp_path / "out"))
    points = expand(parse_sweep({"base": "tiny", "grid": {"optim.lr": [0.001, 0.002, 0.004]}}))
    root = lib.sweep_dir("exp", "grid")
    (root / "runs").mkdir(parents=True)
    (root / "sweep.yaml").write_text("base: tiny\n")
    with ResultsDB(root / "results.db") as db:
        db.add(points)
        for p, status in zip(points, ("completed", "diverged", "running"), strict=True):
            db.mark_running(p.run_id, "w0")
            if status != "running":
                db.record(p.run_id, {"status": status, "val_loss": 4.5 if status == "completed" else None})
            run = root / "runs" / p.name
            (run / "checkpoints" / "step_00000010").mkdir(parents=True)
            (run / "checkpoints" / "step_00000010" / "model.safetensors").write_bytes(b"x" * 1000)
            (run / "metrics.jsonl").write_text(f'{{"step": 1, "name": "{p.name}"}}\n')
    return root, points


def test_archive_keeps_finished_runs_without_checkpoints(sweep):
    root, points = sweep
    path = lib.archive("exp", "grid")
    assert path == lib.archive_path("exp", "grid") and path.is_file()
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
    assert {"results.db", "sweep.yaml", f"runs/{points[0].name}/metrics.jsonl",
            f"runs/{points[1].name}/metrics.jsonl"} <= names
    assert not any("checkpoints" in n for n in names)
    assert not any(points[2].name in n for n in names)  # the unfinished run trains again after a restore
    assert read_results(root)[2]["status"] == "running"  # the live sweep is untouched


def test_restore_unpacks_only_where_the_sweep_is_missing(sweep):
    root, points = sweep
    lib.archive("exp", "grid")
    assert not lib.restore("exp", "grid")  # the sweep is there: nothing to do
    import shutil

    shutil.rmtree(root)
    assert lib.restore("exp", "grid")
    rows = read_results(root)
    assert [r["status"] for r in rows] == ["completed", "diverged", "pending"]
    assert rows[0]["val_loss"] == 4.5
    assert (root / "runs" / points[0].name / "metrics.jsonl").read_text().count(points[0].name) == 1


def test_a_sweep_not_started_has_no_archive(tmp_path, monkeypatch):
    monkeypatch.setattr(lib, "RESULTS", tmp_path / "results")
    monkeypatch.setenv("WIDTHWISE_EXPERIMENTS_OUT", str(tmp_path / "out"))
    assert lib.archive("exp", "none") is None and not lib.restore("exp", "none")

"""results.db: one row per grid point, WAL, idempotent inserts, results and retries recorded."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest

from widthwise.app.sweep.spec import expand, parse_sweep
from widthwise.app.sweep.store import ResultsDB, read_results
from widthwise.errors import SweepError


@pytest.fixture
def points():
    return expand(parse_sweep({"base": "tiny", "grid": {"optim.lr": [0.01, 0.03]}, "seeds": [0, 1]}))


def test_rows_are_inserted_once_and_decoded(tmp_path, points):
    with ResultsDB(tmp_path / "results.db") as db:
        assert db.add(points) == 4
        assert db.add(points) == 0
        rows = db.rows()
    assert [r["run_id"] for r in rows] == [p.run_id for p in points]
    r = rows[1]
    assert r["status"] == "pending" and r["attempts"] == 0
    assert r["params"] == {"optim.lr": 0.01, "train.seed": 1}
    assert (r["lr"], r["weight_decay"], r["seed"], r["width"], r["base_width"]) == (0.01, 0.1, 1, 32, 16)
    assert (r["recipe"], r["optimizer"], r["multipliers"]) == ("robust", "adamw", "row_col")
    assert r["config"] == points[1].config.to_dict()
    assert r["layer_types"] == {}


def test_wal_mode_and_results(tmp_path, points):
    path = tmp_path / "results.db"
    with ResultsDB(path) as db:
        db.add(points)
        db.mark_running(points[0].run_id, "local:host")
        db.mark_pending(points[0].run_id, "attempt 1: killed")
        db.mark_running(points[0].run_id, "local:host")
        db.record(points[0].run_id, {"status": "completed", "val_loss": 5.1, "final_train_loss": 5.0, "tokens": 10,
                                     "steps": 3, "wall_s": 1.5, "tokens_per_s": 7.0, "sigma_max": 1.2, "gain": 0.8,
                                     "layer_types": {"mlp.up_proj": {"sigma_max": 1.2}}})
        db.record(points[1].run_id, {"status": "diverged", "final_train_loss": math.nan})
        with pytest.raises(ValueError, match="status must be one of"):
            db.record(points[2].run_id, {"status": "running"})
        assert db.counts() == {"pending": 2, "running": 0, "completed": 1, "diverged": 1, "failed": 0}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = read_results(tmp_path)
    assert rows[0]["attempts"] == 2 and rows[0]["error"] is None and rows[0]["val_loss"] == 5.1
    assert rows[0]["layer_types"] == {"mlp.up_proj": {"sigma_max": 1.2}}
    assert rows[0]["run_dir"].endswith(f"runs/{points[0].name}")
    assert rows[1]["status"] == "diverged" and rows[1]["final_train_loss"] is None  # NaN stored as NULL
    assert json.loads(json.dumps(rows))  # plain JSON types only


def test_read_results_errors(tmp_path):
    with pytest.raises(SweepError, match="no such directory"):
        read_results(tmp_path / "missing")
    with pytest.raises(SweepError, match="no results.db, not a widthwise sweep directory"):
        read_results(tmp_path)
    (tmp_path / "results.db").write_text("not a database" * 100)
    with pytest.raises(SweepError, match="results.db is unreadable"):
        read_results(tmp_path)


def test_a_schema_1_database_gains_the_new_columns_its_rows_null(tmp_path, points):
    """results.db of an earlier widthwise (no numerics, no relaxation times) opens, migrates, and takes new results."""
    path = tmp_path / "results.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT NOT NULL, params TEXT NOT NULL, config TEXT "
                "NOT NULL, status TEXT NOT NULL, val_loss REAL, final_train_loss REAL, tokens INTEGER, steps INTEGER, "
                "wall_s REAL, tokens_per_s REAL, width INTEGER, base_width INTEGER, recipe TEXT, optimizer TEXT, "
                "multipliers TEXT, lr REAL, weight_decay REAL, seed INTEGER, sigma_max REAL, gain REAL, layer_types "
                "TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, started_at REAL, "
                "finished_at REAL)")
    old.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    old.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    old.execute("INSERT INTO runs (run_id, name, params, config, status, val_loss) VALUES ('old', 'old', '{}', '{}', "
                "'completed', 5.0)")
    old.commit()
    old.close()
    with ResultsDB(path) as db:
        assert db.meta("schema_version") == "2"
        db.add(points[:1])
        db.record(points[0].run_id, {"status": "completed", "val_loss": 5.1, "numerics": "cpu/float32/eager",
                                     "relaxation_times": 0.3, "relaxation_groups": {"mlp.up_proj": 0.3}})
        db.set_meta("numerics", '{"train.dtype": "float32"}')
    with ResultsDB(path) as db:  # opening again migrates nothing twice
        rows = {r["run_id"]: r for r in db.rows()}
        assert db.meta("numerics") == '{"train.dtype": "float32"}' and db.meta("absent") is None
    assert rows["old"]["val_loss"] == 5.0
    assert (rows["old"]["numerics"], rows["old"]["relaxation_times"], rows["old"]["relaxation_groups"]) == (None,) * 3
    new = rows[points[0].run_id]
    assert (new["numerics"], new["relaxation_times"], new["relaxation_groups"]) == \
        ("cpu/float32/eager", 0.3, {"mlp.up_proj": 0.3})

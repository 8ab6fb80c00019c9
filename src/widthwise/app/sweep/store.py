"""``SWEEP_DIR/results.db``: one SQLite row per grid point (WAL mode), written by the sweep driver alone.

Workers never touch the database: they train into their run directory and the driver records what the run
directory says (:func:`widthwise.app.sweep.worker.collect_result`). A driver killed at any moment leaves rows that
say ``running``; the next driver resumes those runs from their checkpoints.

A database of an earlier schema gains the newer columns on opening (their values ``NULL`` in the old rows).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ...errors import SweepError
from .spec import Point

STATUSES = ("pending", "running", "completed", "diverged", "failed")
FINAL = ("completed", "diverged", "failed")
SCHEMA_VERSION = 2
_COLUMNS = {
    "run_id": "TEXT PRIMARY KEY", "name": "TEXT NOT NULL", "params": "TEXT NOT NULL", "config": "TEXT NOT NULL",
    "status": "TEXT NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'diverged', 'failed'))",
    "val_loss": "REAL", "final_train_loss": "REAL", "tokens": "INTEGER", "steps": "INTEGER", "wall_s": "REAL",
    "tokens_per_s": "REAL", "width": "INTEGER", "base_width": "INTEGER", "recipe": "TEXT", "optimizer": "TEXT",
    "multipliers": "TEXT", "lr": "REAL", "weight_decay": "REAL", "seed": "INTEGER", "sigma_max": "REAL",
    "gain": "REAL", "layer_types": "TEXT", "error": "TEXT", "attempts": "INTEGER NOT NULL DEFAULT 0",
    "worker": "TEXT", "started_at": "REAL", "finished_at": "REAL",
    # schema 2: what the run computed with, and how far it got towards the AdamW noise equilibrium
    "numerics": "TEXT", "relaxation_times": "REAL", "relaxation_groups": "TEXT",
}
#: The columns added after schema 1 (a schema-1 database gains them on opening).
_ADDED = ("numerics", "relaxation_times", "relaxation_groups")
_JSON = ("params", "config", "layer_types", "relaxation_groups")
#: What every row must hold for the sweep's readers.
_REQUIRED = ("run_id", "name", "params", "config", "status")
#: What a worker's result may set (``collect_result``'s keys).
RESULT_KEYS = ("status", "val_loss", "final_train_loss", "tokens", "steps", "wall_s", "tokens_per_s", "sigma_max",
               "gain", "layer_types", "error", "numerics", "relaxation_times", "relaxation_groups")


def db_path(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / "results.db"


class ResultsDB:
    """The ``runs`` table of a sweep. Every write is its own committed transaction."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        """Open (creating or migrating) ``path``; ``readonly``: open it as it is, changing nothing.

        A file that is not SQLite, or a database whose tables are not a sweep's, is a :class:`SweepError`
        (and is left untouched)."""
        self.path = Path(path)
        try:
            if readonly:
                uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
            else:
                self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self._check_schema()
            if not readonly:
                self._create()
        except (sqlite3.DatabaseError, SweepError) as err:
            if hasattr(self, "conn"):
                self.conn.close()
            if isinstance(err, SweepError):
                raise
            raise SweepError(f"{self.path} is unreadable, not an SQLite database ({err})") from None

    def _check_schema(self) -> None:
        """A foreign database (other tables, a ``runs`` table without a sweep's columns) is refused."""
        tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return
        if "runs" not in tables:
            raise SweepError(f"{self.path}: not a widthwise results database (no table runs; it has "
                             f"{', '.join(sorted(tables))[:100]})")
        have = {row["name"] for row in self.conn.execute("PRAGMA table_info(runs)")}
        missing = [name for name in _COLUMNS if name not in have and name not in _ADDED]
        if missing:
            raise SweepError(f"{self.path}: not a widthwise results database (table runs lacks column {missing[0]})")

    def _create(self) -> None:
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=60000")
        columns = ", ".join(f"{name} {kind}" for name, kind in _COLUMNS.items())
        with self.conn:
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
            have = {row["name"] for row in self.conn.execute("PRAGMA table_info(runs)")}
            for name, kind in _COLUMNS.items():
                if name not in have:  # an older schema: the new columns are nullable
                    self.conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta(self, key: str) -> str | None:
        """A sweep-wide value stored under ``key`` (``numerics``: the driver's resolved settings)."""
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:  # a database of no sweep yet (or a reader's view of one): no meta table
            return None
        return row["value"] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def add(self, points: Iterable[Point]) -> int:
        """Insert the points not in the table yet as ``pending``; how many were new."""
        new = 0
        with self.conn:
            for p in points:
                c = p.config
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO runs (run_id, name, params, config, status, width, base_width, recipe, "
                    "optimizer, multipliers, lr, weight_decay, seed) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, "
                    "?, ?)",
                    (p.run_id, p.name, json.dumps(p.params), json.dumps(c.to_dict()), c.model.width,
                     c.scaling.base_width or c.model.width, c.scaling.recipe, c.optim.name, c.multipliers.kind,
                     c.optim.lr, c.optim.weight_decay, c.train.seed))
                new += cur.rowcount
        return new

    def status(self, run_id: str) -> str | None:
        row = self.conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row["status"] if row else None

    def mark_running(self, run_id: str, worker: str) -> None:
        """A new attempt of ``run_id`` started on ``worker``."""
        with self.conn:
            self.conn.execute("UPDATE runs SET status = 'running', attempts = attempts + 1, worker = ?, "
                              "started_at = ?, error = NULL WHERE run_id = ?", (worker, time.time(), run_id))

    def mark_pending(self, run_id: str, error: str | None = None) -> None:
        """An attempt ended without a result (killed, interrupted): the run resumes later."""
        with self.conn:
            self.conn.execute("UPDATE runs SET status = 'pending', error = ? WHERE run_id = ?", (error, run_id))

    def record(self, run_id: str, result: Mapping[str, Any]) -> None:
        """Store a finished attempt's result (``status`` one of :data:`FINAL`)."""
        if result.get("status") not in FINAL:
            raise ValueError(f"record: status must be one of {FINAL}, got {result.get('status')!r}")
        values = {k: _sql_value(k, result.get(k)) for k in RESULT_KEYS}
        sets = ", ".join(f"{k} = ?" for k in values)
        with self.conn:
            self.conn.execute(f"UPDATE runs SET {sets}, finished_at = ? WHERE run_id = ?",
                              (*values.values(), time.time(), run_id))

    def rows(self) -> list[dict[str, Any]]:
        """All rows in insertion order, JSON columns decoded."""
        rows = []
        for row in self.conn.execute("SELECT * FROM runs ORDER BY rowid"):
            d = dict(row)
            rows.append(self._decoded(d))
        return rows

    def _decoded(self, d: dict[str, Any]) -> dict[str, Any]:
        """A row with its JSON columns decoded; a row no sweep wrote (NULLs, bad JSON, unknown status) is refused."""
        where = f"{self.path}: row {d.get('run_id')!r}"
        for key in _REQUIRED:
            if not isinstance(d.get(key), str) or not d[key]:
                raise SweepError(f"{where}: column {key} is {d.get(key)!r}, expected text; not a row a sweep wrote")
        if d["status"] not in STATUSES:
            raise SweepError(f"{where}: status {d['status']!r} is not one of {', '.join(STATUSES)}")
        for key in _JSON:
            if d.get(key) is None:
                d[key] = {} if key == "layer_types" else None
                continue
            try:
                d[key] = json.loads(d[key])
            except (TypeError, ValueError, RecursionError):
                raise SweepError(f"{where}: column {key} is not JSON ({str(d[key])[:40]!r})") from None
        if not isinstance(d["params"], dict) or not isinstance(d["config"], dict):
            raise SweepError(f"{where}: columns params and config must be JSON objects")
        return d

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for row in self.conn.execute("SELECT status, COUNT(*) AS n FROM runs GROUP BY status"):
            out[row["status"]] = row["n"]
        return out


def _sql_value(key: str, value: Any) -> Any:
    if key in _JSON:
        return json.dumps(value) if value is not None else None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every row of ``SWEEP_DIR/results.db`` (:class:`SweepError` when there is none), with ``run_dir`` added."""
    sweep_dir = Path(sweep_dir)
    path = db_path(sweep_dir)
    if not path.is_file():
        what = "no such directory" if not sweep_dir.is_dir() else "no results.db, not a widthwise sweep directory"
        raise SweepError(f"SWEEP_DIR {sweep_dir}: {what}")
    try:
        with ResultsDB(path, readonly=True) as db:
            rows = db.rows()
    except sqlite3.DatabaseError as err:
        raise SweepError(f"SWEEP_DIR {sweep_dir}: results.db is unreadable ({err})") from None
    except SweepError as err:
        raise SweepError(f"SWEEP_DIR {sweep_dir}: {str(err).replace(str(path), 'results.db', 1)}") from None
    for row in rows:
        row["run_dir"] = str((sweep_dir / "runs" / row["name"]).resolve())
    return rows

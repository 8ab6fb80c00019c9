"""``widthwise sweep``: run every grid point of a sweep file once, resumably, and record each in ``results.db``.

A sweep directory holds ``sweep.yaml`` (the sweep as run), ``results.db``, ``runs/<name>/`` (ordinary run
directories) and ``logs/<name>.log`` (each worker's output). Running the same command again resumes it:
completed and diverged runs are kept, runs that were going when the driver or a worker died continue from their
checkpoints. Diverged runs are results (the edge of the stable region); only runs that fail (a crash, bad input,
or killed :data:`MAX_ATTEMPTS` times) are errors.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ...errors import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, SweepError
from ..atomic import atomic_write_text
from ..setup import load_data
from .executors import Job, check_executor, make_executor
from .spec import Point, SweepSpec, expand, parse_sweep
from .store import FINAL, ResultsDB, db_path

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


@dataclass
class SweepResult:
    """How a ``run_sweep`` call ended: the counts by status, the failed runs and the exit code."""

    counts: dict[str, int]
    failed: list[str]
    wall_s: float
    exit_code: int
    ran: int


def default_workers(threads: int | None = None) -> tuple[int, int]:
    """``(workers, threads)`` sharing this machine's cores: 2 threads per worker where there are 4 cores or more."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads or (2 if cores >= 4 else 1)
    return max(1, cores // threads), threads


def prepare_sweep_dir(spec: SweepSpec, out: Path) -> None:
    """Create ``out`` or check that it holds this same sweep (grid values and seeds may grow or shrink)."""
    stored_file = out / "sweep.yaml"
    if stored_file.is_file():
        try:
            stored = parse_sweep(yaml.safe_load(stored_file.read_text(encoding="utf-8")), out, str(stored_file))
        except (yaml.YAMLError, SweepError) as err:
            raise SweepError(f"--out {out}: its sweep.yaml is corrupt ({err})") from None
        if not stored.same_experiment(spec):
            raise SweepError(f"--out {out}: holds a sweep with another base, set or grid keys ({stored_file}); "
                             "only grid values and seeds may change on a rerun: choose another --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SweepError(f"--out {out}: exists and is not a sweep directory; choose another --out")
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(exist_ok=True)
    except OSError as err:
        raise SweepError(f"--out {out}: cannot create it ({err.strerror or err})") from None
    atomic_write_text(stored_file, yaml.safe_dump(spec.to_dict(), sort_keys=False))


def _prepare_data(points: list[Point]) -> None:
    """Tokenize each distinct dataset once, here, before the workers start (they then only read the cache)."""
    seen = set()
    for p in points:
        d, t = p.config.data, p.config.train
        key = (d.path, d.vocab_size, t.seq_len, d.val_fraction, d.split_seed, d.cache_dir)
        if key not in seen:
            seen.add(key)
            data = load_data(p.config)
            logger.info(f"data {d.path or 'Shakespeare (bundled)'}: {len(data.train):,} training tokens")


def _log_tail(path: Path) -> str:
    """The last non-empty line of a worker log: what went wrong, in one line."""
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


@contextmanager
def _stop_on_signals():
    """SIGINT/SIGTERM set a flag: the driver stops launching, lets running workers checkpoint, then leaves."""
    state = {"signal": None}

    def handler(signum, frame):
        state["signal"] = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def run_sweep(spec: SweepSpec, out: Path, *, workers: int | None = None, threads: int | None = None,
              executor: str = "local", address: str | None = None, progress: bool = True) -> SweepResult:
    """Run the points of ``spec`` not yet finished in ``out``; record each in ``out/results.db``.

    Progress is a tqdm bar on stderr; what happens to runs is logged to the ``widthwise`` logger.
    """
    out = Path(out)
    started = time.perf_counter()
    check_executor(executor, address)
    points = expand(spec)
    prepare_sweep_dir(spec, out)
    _prepare_data(points)
    auto_workers, threads = default_workers(threads)
    workers = workers or auto_workers
    with ResultsDB(db_path(out)) as db:
        db.add(points)
        status = {p.run_id: db.status(p.run_id) for p in points}
        todo = [p for p in points if status[p.run_id] not in FINAL]
        todo.sort(key=lambda p: -p.config.model.width)  # widest first: the longest runs do not finish last
        logger.info(f"sweep {out}: {len(points)} runs, {len(points) - len(todo)} already done, {len(todo)} to run")
        if not todo:
            return _finish(db, points, out, started, 0)
        pool = make_executor(executor, workers, threads, address)
        logger.info(pool.describe())
        bar = tqdm(total=len(points), initial=len(points) - len(todo), unit="run", desc="sweep", file=sys.stderr,
                   disable=not progress or None, dynamic_ncols=True)
        queue = list(todo)
        interrupted = False
        try:
            with _stop_on_signals() as stop, logging_redirect_tqdm([logging.getLogger("widthwise")]):
                while queue or pool.running:
                    while queue and len(pool.running) < pool.slots and not stop["signal"]:
                        point = queue.pop(0)
                        db.mark_running(point.run_id, f"{pool.name}:{os.uname().nodename}")
                        pool.submit(Job(point, out / "runs" / point.name, out / "logs" / f"{point.name}.log"))
                    if stop["signal"]:
                        interrupted = True
                        break
                    for job, code, result in pool.poll(timeout=0.5):
                        again = _record(db, job, code, result)
                        if again:  # a killed run resumes first; one held by another process waits its turn
                            queue.insert(len(queue) if code == EXIT_BUSY else 0, job.point)
                        else:
                            _postfix(bar, db)
                            bar.update(1)
        finally:
            for job in pool.shutdown():
                db.mark_pending(job.point.run_id, "interrupted; resumes on the next run")
            bar.close()
        if interrupted:
            logger.info(f"interrupted ({stop['signal']}); running workers checkpointed; rerun the same command to "
                "resume")
            return SweepResult(db.counts(), [], time.perf_counter() - started, EXIT_INTERRUPTED, len(todo))
        return _finish(db, points, out, started, len(todo))


def _record(db: ResultsDB, job: Job, code: int, result: dict[str, Any] | None) -> bool:
    """Store the outcome of an attempt; whether the point must run again (killed, interrupted or busy)."""
    run_id = job.point.run_id
    if code in (EXIT_OK, EXIT_DIVERGED) and result is not None:
        db.record(run_id, result)
        return False
    if code in (EXIT_BAD_INPUT, EXIT_FAILED) or (code in (EXIT_OK, EXIT_DIVERGED) and result is None):
        error = _log_tail(job.log) or f"worker exited with code {code}"
        db.record(run_id, {"status": "failed", "error": error})
        logger.warning(f"run {job.point.name} failed: {error} (log: {job.log})")
        return False
    attempts = _row(db, run_id)["attempts"]
    how = f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else \
        f"exited with code {code}"
    if code == EXIT_BUSY:
        time.sleep(1.0)
        db.mark_pending(run_id, "another process held the run")
        return True
    if attempts >= MAX_ATTEMPTS:
        db.record(run_id, {"status": "failed", "error": f"worker {how} in {attempts} attempts (log: {job.log})"})
        logger.warning(f"run {job.point.name} failed: worker {how} in {attempts} attempts")
        return False
    db.mark_pending(run_id, f"attempt {attempts}: worker {how}")
    logger.warning(f"run {job.point.name}: worker {how}; resuming it from its checkpoint")
    return True


def _row(db: ResultsDB, run_id: str) -> dict[str, Any]:
    row = db.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return dict(row)


def _postfix(bar: tqdm, db: ResultsDB) -> None:
    c = db.counts()
    best = db.conn.execute("SELECT MIN(val_loss) FROM runs WHERE status = 'completed'").fetchone()[0]
    bar.set_postfix(done=c["completed"], diverged=c["diverged"], failed=c["failed"],
                    best=f"{best:.3f}" if best is not None else "-", refresh=False)


def _finish(db: ResultsDB, points: list[Point], out: Path, started: float, ran: int) -> SweepResult:
    ids = {p.run_id for p in points}
    rows = [r for r in db.rows() if r["run_id"] in ids]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "diverged", "failed")}
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    wall = time.perf_counter() - started
    logger.info(f"sweep {out}: {counts['completed']} completed, {counts['diverged']} diverged, "
        f"{counts['failed']} failed ({ran} run now, {wall:.0f} s); results in {db_path(out)}")
    for name in failed:
        logger.warning(f"  failed: {name} (log: {out / 'logs' / (name + '.log')})")
    return SweepResult(counts, failed, wall, EXIT_FAILED if failed else EXIT_OK, ran)

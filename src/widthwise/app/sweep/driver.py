"""``widthwise sweep``: run every grid point of a sweep file once, resumably, and record each in ``results.db``.

A sweep directory holds ``sweep.yaml`` (the sweep as run), ``results.db``, ``runs/<name>/`` (ordinary run
directories) and ``logs/<name>.log`` (each worker's output). Running the same command again resumes it:
completed and diverged runs are kept, runs that were going when the driver or a worker died continue from their
checkpoints. Diverged runs are results (the edge of the stable region); only runs that fail (a crash, bad input,
or killed :data:`MAX_ATTEMPTS` times) are errors.

Every point of a sweep computes with the same numerics: the driver resolves the ``auto`` device, dtype, compile and
Newton-Schulz settings once (:func:`resolve_numerics`), stores them in ``results.db`` so reruns keep them, and
gives them to every point as explicit values (runtime settings are outside the run id).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ...errors import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_DIVERGED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, SweepError
from ...models.llama import Llama
from ..atomic import atomic_write_text
from ..config import Config, apply_overrides
from ..inputs import load_yaml, read_text_file
from ..runtime import auto_compile, bf16_fast, estimated_step_s, numerics_cache_path, numerics_label
from ..setup import config_device, load_data, load_recipe, model_configs
from .executors import Job, check_executor, make_executor
from .spec import Point, SweepSpec, expand, parse_sweep
from .store import FINAL, ResultsDB, db_path
from .worker import lock_path, run_lock

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
            where = str(stored_file)
            stored = parse_sweep(load_yaml(read_text_file(stored_file, where, SweepError), where, SweepError), out,
                                 where)
        except SweepError as err:
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


def _prepare_data(points: list[Point]) -> dict[str, int]:
    """Tokenize each distinct dataset once, here, before the workers start (they then only read the cache); each
    point's vocabulary size."""
    vocab: dict[tuple, int] = {}
    sizes = {}
    for p in points:
        d, t = p.config.data, p.config.train
        key = (d.path, d.vocab_size, t.seq_len, d.val_fraction, d.split_seed, d.cache_dir)
        if key not in vocab:
            data = load_data(p.config)
            vocab[key] = data.vocab_size
            logger.info(f"data {d.path or 'Shakespeare (bundled)'}: {len(data.train):,} training tokens")
        sizes[p.run_id] = vocab[key]
    return sizes


#: The settings :func:`resolve_numerics` decides for a sweep, where a point leaves them ``auto``.
NUMERICS_KEYS = ("train.device", "train.dtype", "train.compile", "optim.ns_dtype")


def _flops_per_step(config: Config, vocab_size: int) -> float:
    model_cfg, _ = model_configs(config, config.model.vocab_size or vocab_size, load_recipe(config))
    with torch.device("meta"):
        model = Llama(model_cfg)
    t = config.train
    return model.flops_per_token(t.seq_len) * t.batch_size * t.seq_len


def resolve_numerics(points: list[Point], vocab_sizes: dict[str, int]) -> dict[str, Any]:
    """The sweep's values of :data:`NUMERICS_KEYS`, decided once on this machine (its cached measurements,
    :mod:`widthwise.app.runtime`): the first point's device; bf16 for dtype and Newton-Schulz where bf16 is fast
    there; compile where it pays (on a CPU: for every point that leaves it ``auto``, the cheapest included, so one
    decision holds for the whole sweep)."""
    device = config_device(points[0].config)
    dtype = "bfloat16" if bf16_fast(device) else "float32"
    compiles = []
    for p in points:
        t = p.config.train
        if t.compile == "auto":
            point_dtype = torch.bfloat16 if (dtype if t.dtype == "auto" else t.dtype) == "bfloat16" else torch.float32
            step_s = estimated_step_s(p.config.model.width, _flops_per_step(p.config, vocab_sizes[p.run_id]),
                                      point_dtype) if device.type == "cpu" else None
            compiles.append(auto_compile(device, t.steps, step_s))
    return {"train.device": device.type if device.index is None else str(device), "train.dtype": dtype,
            "train.compile": all(compiles), "optim.ns_dtype": dtype}


def with_numerics(point: Point, numerics: dict[str, Any]) -> Point:
    """``point`` with the sweep's ``numerics`` in place of its ``auto`` values (its explicit ones win); same run id."""
    data = point.config.to_dict()
    overrides = {k: v for k, v in numerics.items() if data[k.split(".")[0]][k.split(".")[1]] == "auto"}
    return replace(point, config=apply_overrides(point.config, overrides)) if overrides else point


def sweep_numerics(db: ResultsDB, points: list[Point], vocab_sizes: dict[str, int]) -> dict[str, Any]:
    """The numerics this sweep runs with: those stored in ``db`` by its first driver, else resolved and stored."""
    stored = db.meta("numerics")
    if stored is not None:
        try:
            numerics = json.loads(stored)
        except ValueError:
            numerics = None
        if not isinstance(numerics, dict):
            raise SweepError(f"{db.path}: its stored numerics {stored[:60]!r} are not a sweep's; not a results "
                             "database widthwise wrote")
        return numerics
    numerics = resolve_numerics(points, vocab_sizes)
    db.set_meta("numerics", json.dumps(numerics))
    return numerics


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
              executor: str = "local", address: str | None = None, progress: bool = True,
              nproc: int = 1) -> SweepResult:
    """Run the points of ``spec`` not yet finished in ``out``; record each in ``out/results.db``.

    ``nproc > 1`` (either executor): each run is ``nproc`` processes under torchrun, ``train.parallel`` ddp where
    the point leaves it ``none``; ``workers`` defaults to the cores over ``threads * nproc``.

    Progress is a tqdm bar on stderr; what happens to runs is logged to the ``widthwise`` logger.
    """
    out = Path(out)
    started = time.perf_counter()
    check_executor(executor, address)
    points = expand(spec, progress=progress)
    if db_path(out).exists():  # a garbage or foreign results.db is refused before anything in out is written
        ResultsDB(db_path(out), readonly=True).close()
    with run_lock(out) as locked:  # one driver per sweep directory: a second would run every point twice
        if not locked:
            raise SweepError(f"--out {out}: another widthwise sweep is running on it (it holds {lock_path(out)}); "
                             "wait for it to finish or choose another --out")
        return _run_locked(spec, points, out, started, workers=workers, threads=threads, executor=executor,
                           address=address, progress=progress, nproc=nproc)


def _run_locked(spec: SweepSpec, points: list[Point], out: Path, started: float, *, workers: int | None,
                threads: int | None, executor: str, address: str | None, progress: bool, nproc: int) -> SweepResult:
    """:func:`run_sweep` once ``points`` are validated and the sweep directory's lock is held."""
    prepare_sweep_dir(spec, out)
    vocab_sizes = _prepare_data(points)
    auto_workers, threads = default_workers(threads)
    workers = workers or max(1, auto_workers // nproc)
    with ResultsDB(db_path(out)) as db:
        db.add(points)
        status = {p.run_id: db.status(p.run_id) for p in points}
        todo = [p for p in points if status[p.run_id] not in FINAL]
        todo.sort(key=lambda p: -p.config.model.width)  # widest first: the longest runs do not finish last
        logger.info(f"sweep {out}: {len(points)} runs, {len(points) - len(todo)} already done, {len(todo)} to run")
        if not todo:
            return _finish(db, points, out, started, 0)
        numerics = sweep_numerics(db, points, vocab_sizes)
        label = numerics_label(numerics["train.device"], numerics["train.dtype"], numerics["train.compile"])
        logger.info(f"numerics {label} where a run leaves them auto (decided once for the sweep; this machine's "
                    f"measurements are cached in {numerics_cache_path()})")
        pool = make_executor(executor, workers, threads, address, nproc)
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
                        job = Job(with_numerics(point, numerics), out / "runs" / point.name,
                                  out / "logs" / f"{point.name}.log")
                        pool.submit(job)
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

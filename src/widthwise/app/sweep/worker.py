"""One sweep run in its own process: ``python -m widthwise.app.sweep.worker RUN_DIR --threads N`` (config on stdin).

The run is an ordinary ``widthwise train`` run directory: a first attempt starts it, any later attempt resumes it
from its latest checkpoint, a finished one is reported as it is. The process holds an exclusive lock on the run
for its lifetime, so two attempts never write the same directory, and on Linux it asks to receive SIGTERM when
its parent dies: a killed driver leaves checkpointed runs behind, not orphans. The exit code is the
trainer's (0 completed, 3 diverged, 130 interrupted, 2 bad input) or :data:`EXIT_BUSY`; the driver then reads
the result from the directory (:func:`collect_result`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import EXIT_BAD_INPUT, EXIT_BUSY, RunError, WidthwiseError
from ..console import setup_logging
from ..rundir import RunDir

logger = logging.getLogger("widthwise.app.sweep.worker")  # not __name__: that is "__main__" under python -m

_PR_SET_PDEATHSIG = 1


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on ``run_dir`` (released when the process dies); yields whether it got it."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def die_with_parent(parent: int | None) -> None:
    """SIGTERM this process when its parent exits (Linux ``prctl``; elsewhere nothing), then check it is alive."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def train_point(config_data: dict[str, Any], run_dir: Path, threads: int) -> int:
    """Start or resume the run of ``config_data`` in ``run_dir`` with ``threads`` threads; the exit code."""
    from .. import trainer
    from ..config import apply_overrides, from_dict

    with run_lock(run_dir) as locked:
        if not locked:
            logger.info(f"{run_dir} is being trained by another process")
            return EXIT_BUSY
        runtime = [f"train.threads={threads}", "train.progress=false"]
        try:
            if RunDir(run_dir).has_config():
                result = trainer.resume(run_dir, runtime)
            else:
                if run_dir.exists():  # a start killed before its config was written: no checkpoint can exist
                    shutil.rmtree(run_dir)
                config = apply_overrides(from_dict(config_data), runtime)
                result = trainer.start(config, run_dir)
        except WidthwiseError as err:
            logger.error(" ".join(str(err).split()))
            return EXIT_BAD_INPUT
        return result.exit_code


def collect_result(run_dir: Path) -> dict[str, Any] | None:
    """What a run directory says about its run: its summary and last diagnostics; ``None`` when unfinished."""
    run = RunDir(run_dir)
    try:
        summary = run.summary()
    except RunError:
        return None
    if summary is None or summary.get("status") not in ("completed", "diverged"):
        return None
    result = {k: summary.get(k) for k in ("status", "final_train_loss", "tokens", "steps", "wall_s", "tokens_per_s")}
    result["val_loss"] = summary.get("val_loss") if summary["status"] == "completed" else None
    result.update(diagnostics_summary(run.diagnostics_history()))
    result["error"] = None
    return result


def diagnostics_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """From the last ``diagnostics.jsonl`` record: mean sigma_max and sublayer gain of the block matrices, and per
    layer type the means over blocks of sigma_max, sublayer gain, RMS and equilibrium ratio."""
    from ...diagnostics.naming import block_index, pool_by_layer_type

    if not records:
        return {"sigma_max": None, "gain": None, "layer_types": {}}
    matrices = {n: m for n, m in records[-1].get("matrices", {}).items() if block_index(n) is not None}
    layer_types: dict[str, dict[str, float]] = {}
    pooled: dict[str, float | None] = {}
    for key in ("sigma_max", "sublayer_gain", "rms", "equilibrium_ratio"):
        values = {n: m.get(key) for n, m in matrices.items()}
        for kind, value in pool_by_layer_type(values).items():
            layer_types.setdefault(kind, {})[key] = value
        finite = [v for v in values.values() if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")]
        pooled[key] = sum(finite) / len(finite) if finite else None
    return {"sigma_max": pooled["sigma_max"], "gain": pooled["sublayer_gain"], "layer_types": layer_types}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m widthwise.app.sweep.worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parent", type=int, help="pid of the driver: exit when it is gone")
    args = parser.parse_args(argv)
    setup_logging()
    die_with_parent(args.parent)
    config_data = json.loads(sys.stdin.read())
    return train_point(config_data, args.run_dir, args.threads)


if __name__ == "__main__":
    sys.exit(main())

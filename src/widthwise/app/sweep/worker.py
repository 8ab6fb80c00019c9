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
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import EXIT_BAD_INPUT, EXIT_BUSY, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_OK, RunError, WidthwiseError
from ..atomic import file_lock
from ..console import setup_logging
from ..rundir import RunDir

logger = logging.getLogger("widthwise.app.sweep.worker")  # not __name__: that is "__main__" under python -m

_PR_SET_PDEATHSIG = 1


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on ``run_dir`` (released when the process dies); yields whether it got it.

    The lock file sits beside the run (the trainer's own lock is inside it, so a worker never blocks itself)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path(run_dir)) as got:
        yield got


def die_with_parent(parent: int | None) -> None:
    """SIGTERM this process when its parent exits (Linux ``prctl``; elsewhere nothing), then check it is alive."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def train_point(config_data: dict[str, Any], run_dir: Path, threads: int, nproc: int = 1) -> int:
    """Start or resume the run of ``config_data`` in ``run_dir`` with ``threads`` threads (per process, ``nproc``
    processes under torchrun); the exit code."""
    from .. import trainer
    from ..config import apply_overrides, from_dict

    with run_lock(run_dir) as locked:
        if not locked:
            logger.info(f"{run_dir} is being trained by another process")
            return EXIT_BUSY
        runtime = [f"train.threads={threads}", "train.progress=false"]
        if nproc > 1:
            return _torchrun(config_data, run_dir, runtime, nproc)
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


def _torchrun(config_data: dict[str, Any], run_dir: Path, runtime: list[str], nproc: int) -> int:
    """The run on ``nproc`` processes: ``torchrun --standalone`` of ``widthwise train`` (DDP unless the point asks
    for FSDP), which dies with this worker and gets the signals it gets; the trainer's exit code from the summary."""
    from ..config import from_dict

    parallel = config_data.get("train", {}).get("parallel", "none")
    sets = [*runtime, f"train.parallel={'ddp' if parallel == 'none' else parallel}"]
    spec = run_dir.parent / f".{run_dir.name}.config.yaml"
    if RunDir(run_dir).has_config():
        what = ["--resume", str(run_dir)]
    else:
        if run_dir.exists():  # a start killed before its config was written: no checkpoint can exist
            shutil.rmtree(run_dir)
        spec.write_text(from_dict(config_data).to_yaml(), encoding="utf-8")
        what = [str(spec), "--out", str(run_dir)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "widthwise", "train", *what, *[a for o in sets for a in ("--set", o)]]
    proc = subprocess.Popen(command, preexec_fn=lambda: die_with_parent(None))
    forward = {sig: signal.signal(sig, lambda signum, frame: proc.send_signal(signum))
               for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, old in forward.items():
            signal.signal(sig, old)
        spec.unlink(missing_ok=True)
    try:
        status = (RunDir(run_dir).summary() or {}).get("status")
    except RunError:
        status = None
    return {"completed": EXIT_OK, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED}.get(status, code)


def collect_result(run_dir: Path) -> dict[str, Any] | None:
    """What a run directory says about its run: its summary, numerics (:func:`run_numerics`), relaxation times
    (:func:`relaxation_summary`) and last diagnostics; ``None`` when unfinished."""
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
    result["numerics"] = run_numerics(run)
    result.update(relaxation_summary(run, int(summary.get("steps") or 0)))
    result["error"] = None
    return result


def run_numerics(run: RunDir) -> str | None:
    """The numerics the run computed with (``cpu/float32/eager``, :func:`numerics_label`), from its resolved runtime;
    ``None`` where config.yaml records none."""
    from ..runtime import numerics_label

    rt = run.resolved().get("runtime") or {}
    if not all(k in rt for k in ("device", "dtype", "compile")):
        return None
    return numerics_label(rt["device"], rt["dtype"], rt["compile"], rt.get("muon_ns_dtype"))


def relaxation_summary(run: RunDir, steps: int) -> dict[str, Any]:
    """How many relaxation times ``1/(lr*wd)`` the run's hidden matrices covered in its ``steps`` steps:
    ``relaxation_times``, the fewest over the hidden groups, and ``relaxation_groups``, per layer type.

    Each is ``sum_t lr_t * wd`` over the steps taken, ``lr_t`` the group's planned LR times the schedule's ratio at
    step ``t`` (recomputed from config.yaml: exact at every step whatever ``train.log_every``) and ``wd`` the
    plan's: the exponent of the decay ``prod_t (1 - lr_t wd)`` that forgets the initial weights. Unlike
    ``steps * lr * wd`` it counts warmup and the decayed tail at the LR they ran, which would otherwise overstate
    how settled a short run with warmup and cosine decay is. ``None`` for a run without hidden matrices.
    """
    from ...diagnostics.naming import layer_type
    from ...planning import Plan
    from ...schedules import ScheduleRatio

    config, plan = run.config(), Plan.from_dict(run.plan())
    o, s = config.optim, config.schedule
    ratio = ScheduleRatio(s.warmup, config.train.steps, s.kind, s.min_ratio, s.decay_fraction)
    ratio_sum = sum(ratio(t) for t in range(steps))
    groups: dict[str, float] = {}
    for p in plan.params.values():
        if p.role.value == "hidden":
            times = ratio_sum * p.lr(o.lr, o.muon_lr) * p.weight_decay(o.weight_decay)
            kind = layer_type(p.name)
            groups[kind] = min(groups.get(kind, times), times)
    return {"relaxation_times": min(groups.values()) if groups else None, "relaxation_groups": groups or None}


def diagnostics_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """From the last ``diagnostics.jsonl`` record: mean sigma_max and sublayer gain of the block matrices, and per
    layer type the means over blocks of sigma_max (the applied weight), sigma_max_stored (the stored ``V``; the
    same matrix where a record has no ``sigma_max_stored``: no multipliers), sublayer gain, RMS and equilibrium
    ratio."""
    from ...diagnostics.naming import block_index, pool_by_layer_type

    if not records:
        return {"sigma_max": None, "gain": None, "layer_types": {}}
    matrices = {n: m for n, m in records[-1].get("matrices", {}).items() if block_index(n) is not None}
    layer_types: dict[str, dict[str, float]] = {}
    pooled: dict[str, float | None] = {}
    for key in ("sigma_max", "sigma_max_stored", "sublayer_gain", "rms", "equilibrium_ratio"):
        values = {n: m.get(key, m.get("sigma_max")) if key == "sigma_max_stored" else m.get(key)
                  for n, m in matrices.items()}
        for kind, value in pool_by_layer_type(values).items():
            layer_types.setdefault(kind, {})[key] = value
        finite = [v for v in values.values() if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")]
        pooled[key] = sum(finite) / len(finite) if finite else None
    return {"sigma_max": pooled["sigma_max"], "gain": pooled["sublayer_gain"], "layer_types": layer_types}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m widthwise.app.sweep.worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun)")
    parser.add_argument("--parent", type=int, help="pid of the driver: exit when it is gone")
    args = parser.parse_args(argv)
    setup_logging()
    die_with_parent(args.parent)
    config_data = json.loads(sys.stdin.read())
    return train_point(config_data, args.run_dir, args.threads, args.nproc)


if __name__ == "__main__":
    sys.exit(main())

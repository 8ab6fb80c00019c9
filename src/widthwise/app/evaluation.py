"""``widthwise eval``: lm-eval's harness, in process, on a run or an HF folder; results in ``eval.json``.

The model is :func:`widthwise.app.export.load_model`'s plain HF model (a run is folded in memory, as ``export``
writes it), wrapped in lm-eval's ``HFLM``. The shipped tasks (:mod:`widthwise.app.eval_tasks`) are found first;
any other name is one of lm-eval's own tasks, which works where its data is available locally (these machines
reach no hub: the datasets library runs offline). ``eval.json`` goes into the run directory, or next to an HF
folder (``HF_DIR.eval.json``), and holds per task its headline metric, every metric with its standard error, and
``n`` (the items scored).

Standard errors of metrics without a closed form (perplexity, median, F1...) are bootstrapped by lm-eval, which by
default forks a ``multiprocessing.Pool`` of one process per CPU from this process. Forking a process that runs
torch's thread pools can deadlock the child (seen here: ``widthwise eval`` hung for good inside lm-eval's
``bootstrap_stderr``), so :func:`evaluate` runs the harness with lm-eval's ``DISABLE_MULTIPROC`` set: the same
draws (each chunk of 1,000 seeded by its index, as in the pool) in this process, no fork.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunError
from .atomic import atomic_write_text
from .defaults import default_cache_dir
from .eval_tasks import TASKS, build_tasks

__all__ = ["EVAL_FILE", "eval_file", "evaluate", "list_tasks", "read_eval"]

logger = logging.getLogger(__name__)

EVAL_FILE = "eval.json"
#: lm-eval's metric keys carry a filter name: ``acc,none``, ``acc_stderr,none``.
_FILTER = ",none"


#: lm-eval's switch from its forked bootstrap pool to the same draws in one process.
_NO_FORK = "DISABLE_MULTIPROC"


@contextlib.contextmanager
def _bootstrap_without_fork() -> Iterator[None]:
    """lm-eval's bootstrapped standard errors computed in this process (no fork), the environment restored after."""
    before = os.environ.get(_NO_FORK)
    os.environ[_NO_FORK] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[_NO_FORK]
        else:
            os.environ[_NO_FORK] = before


def list_tasks() -> dict[str, str]:
    """The shipped tasks and what each measures."""
    return {name: spec.description for name, spec in TASKS.items()}


def eval_file(path: Path) -> Path:
    """Where ``eval.json`` goes: inside a run directory, beside an HF folder (``HF_DIR.eval.json``)."""
    path = Path(path)
    return path / EVAL_FILE if (path / "config.yaml").is_file() else path.with_name(f"{path.name}.{EVAL_FILE}")


def read_eval(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``eval.json`` (``None`` when there is none or it is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ConfigError(f"eval: lm-eval is not installed ({err.name}); pip install 'widthwise[eval]'") from None
    return lm_eval, HFLM, TaskManager


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _task_result(name: str, raw: dict[str, Any], n: int | None, higher: dict[str, Any]) -> dict[str, Any]:
    metrics, stderr = {}, {}
    for key, value in raw.items():
        if not key.endswith(_FILTER):
            continue
        metric = key.removesuffix(_FILTER)
        if metric.endswith("_stderr"):
            stderr[metric.removesuffix("_stderr")] = _number(value)
        else:
            metrics[metric] = _number(value)
    spec = TASKS.get(name)
    headline = next((m for m in (spec.metrics if spec else ()) if m in metrics), next(iter(metrics), None))
    return {"metric": headline, "value": metrics.get(headline), "stderr": stderr.get(headline), "n": n,
            "higher_is_better": higher.get(headline),
            "metrics": {m: {"value": v, "stderr": stderr.get(m), "higher_is_better": higher.get(m)}
                        for m, v in metrics.items()}}


def evaluate(path: Path, tasks: Sequence[str], *, limit: int | None = None, batch_size: int = 16,
             step: int | None = None, write: bool = True) -> dict[str, Any]:
    """Score the model at ``path`` (run directory or HF folder) on ``tasks``; write and return ``eval.json``."""
    if not tasks:
        raise ConfigError("eval --tasks: name at least one task (widthwise eval --list shows the shipped ones)")
    path = Path(path)
    if not path.exists():
        raise RunError(f"eval {path}: no such run directory or model folder")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lm_eval, HFLM, TaskManager = _lm_eval()
    from .export import load_model

    ours = [t for t in tasks if t in TASKS]
    include = build_tasks(default_cache_dir()) if ours else None
    manager = TaskManager(include_path=str(include) if include else None,
                          include_defaults=len(ours) < len(tasks))
    unknown = [t for t in tasks if t not in ours and t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"eval --tasks: unknown task {unknown[0]!r}; shipped: {', '.join(TASKS)} (or any "
                          "lm-eval task whose data is available locally)")
    model, tokenizer = load_model(path, step)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    started = time.perf_counter()
    with _bootstrap_without_fork():
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=manager,
                                      log_samples=False, bootstrap_iters=1000, random_seed=0, numpy_random_seed=0,
                                      torch_random_seed=0)
    n_samples = out.get("n-samples", {})
    higher = out.get("higher_is_better", {})
    results = {name: _task_result(name, out["results"].get(name, {}), n_samples.get(name, {}).get("effective"),
                                  higher.get(name, {})) for name in tasks}
    result = {"model": str(path), "limit": limit, "wall_s": round(time.perf_counter() - started, 2),
              "lm_eval_version": getattr(lm_eval, "__version__", None), "tasks": results}
    if write:
        atomic_write_text(eval_file(path), json.dumps(result, indent=1) + "\n")
    return result

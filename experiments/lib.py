"""What every experiment shares: where sweeps and results live, running a sweep file, reading its runs, fits with
intervals, and the claim records of ``experiments/results/claims.json``.

Sweeps write under ``runs/experiments/<experiment>/<sweep>`` (git-ignored; ``WIDTHWISE_EXPERIMENTS_OUT`` moves it);
figures and numbers land in ``experiments/results`` (committed). Every sweep is an ordinary widthwise sweep
directory, so a killed reproduction resumes where it stopped. Each sweep's finished runs, without their
checkpoints, are also archived in ``experiments/results/archive/<experiment>/<sweep>.tar.xz`` (committed): on a fresh
checkout an analysis restores them, and a restored sweep resumes with only its unfinished points to train.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sqlite3
import statistics
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from widthwise.app.analysis.fits import fit_line
from widthwise.app.atomic import atomic_write_bytes, atomic_write_text
from widthwise.app.rundir import RunDir
from widthwise.app.sweep.spec import load_sweep
from widthwise.app.sweep.store import read_results

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
RESULTS = EXPERIMENTS / "results"
FIGURES = RESULTS / "figures"
CLAIMS = RESULTS / "claims.json"
#: The keys every claim record has (issue 15's contract for claims.json).
CLAIM_KEYS = ("claim", "statement", "source", "measured", "interval", "expected", "holds", "figures", "command",
              "setup", "wall_s")


def out_root() -> Path:
    return Path(os.environ.get("WIDTHWISE_EXPERIMENTS_OUT", ROOT / "runs" / "experiments"))


def sweep_file(experiment: str, name: str) -> Path:
    return EXPERIMENTS / experiment / f"{name}.yaml"


def sweep_dir(experiment: str, name: str) -> Path:
    return out_root() / experiment / name


def archive_path(experiment: str, name: str) -> Path:
    return RESULTS / "archive" / experiment / f"{name}.tar.xz"


def archive(experiment: str, name: str) -> Path | None:
    """Archive the sweep's finished runs (everything but their checkpoints) with a copy of its results.db whose
    unfinished rows read ``pending``; ``None`` when the sweep has not started. Safe while the sweep runs."""
    src = sweep_dir(experiment, name)
    if not (src / "results.db").is_file():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "results.db"
        live, copy = sqlite3.connect(f"file:{src / 'results.db'}?mode=ro", uri=True), sqlite3.connect(db)
        try:
            live.backup(copy)
            copy.execute("UPDATE runs SET status = 'pending', worker = NULL, started_at = NULL "
                         "WHERE status NOT IN ('completed', 'diverged', 'failed')")
            copy.commit()
            finished = [r[0] for r in copy.execute(
                "SELECT name FROM runs WHERE status IN ('completed', 'diverged', 'failed') ORDER BY name")]
        finally:
            live.close()
            copy.close()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
            tar.add(db, arcname="results.db")
            if (src / "sweep.yaml").is_file():
                tar.add(src / "sweep.yaml", arcname="sweep.yaml")
            for run in finished:
                for path in sorted((src / "runs" / run).rglob("*")):
                    rel_path = path.relative_to(src)
                    if path.is_file() and "checkpoints" not in rel_path.parts:
                        tar.add(path, arcname=str(rel_path))
    target = archive_path(experiment, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def restore(experiment: str, name: str) -> bool:
    """Unpack the sweep's archive where the sweep has no results.db (a fresh checkout); whether it did."""
    dst, src = sweep_dir(experiment, name), archive_path(experiment, name)
    if (dst / "results.db").is_file() or not src.is_file():
        return False
    dst.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src, mode="r:xz") as tar:
        tar.extractall(dst, filter="data")
    _rebase(dst / "sweep.yaml")
    return True


def _rebase(stored: Path) -> None:
    """Point a restored sweep's stored ``base:`` at this checkout's ``experiments/`` (a sweep run from another
    worktree stored that worktree's absolute path, which a resume elsewhere cannot load)."""
    if not stored.is_file():
        return
    text = stored.read_text(encoding="utf-8")
    here = str(Path(__file__).resolve().parent)
    fixed = re.sub(r"^base: \S*?/experiments/", f"base: {here}/", text, count=1, flags=re.M)
    if fixed != text:
        stored.write_text(fixed, encoding="utf-8")


def run_sweep_file(experiment: str, name: str, *, workers: int = 2, threads: int = 1, progress: bool = True) -> int:
    """Run (or resume) ``experiments/<experiment>/<name>.yaml`` into its sweep directory; the sweep's exit code."""
    from widthwise.app.sweep.driver import run_sweep

    result = run_sweep(load_sweep(sweep_file(experiment, name)), sweep_dir(experiment, name), workers=workers,
                       threads=threads, progress=progress)
    return result.exit_code


def rows(experiment: str, name: str, statuses: Sequence[str] = ("completed",)) -> list[dict[str, Any]]:
    """The sweep's result rows with one of ``statuses`` (each with ``run_dir``)."""
    return [r for r in read_results(sweep_dir(experiment, name)) if r["status"] in statuses]


def cpu_seconds(rows_: Iterable[Mapping[str, Any]]) -> float:
    """The summed training wall time of single-threaded runs: the CPU-seconds an experiment cost."""
    return float(sum(r.get("wall_s") or 0.0 for r in rows_))


def history(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's ``diagnostics.jsonl`` records."""
    return RunDir(Path(row["run_dir"])).diagnostics_history()


def metrics(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` records."""
    return RunDir(Path(row["run_dir"])).metrics()


# two-sided 95% Student t quantiles by degrees of freedom (1..30); larger: the normal 1.96
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(dof: int) -> float:
    """The two-sided 95% quantile of Student's t with ``dof`` degrees of freedom (``inf`` for none)."""
    if dof < 1:
        return math.inf
    return _T95[dof - 1] if dof <= len(_T95) else 1.96


@dataclass(frozen=True)
class Slope:
    """A least-squares slope with its 95% interval (Student t on the slope's standard error)."""

    value: float
    low: float
    high: float
    r2: float
    n: int

    @property
    def interval(self) -> list[float]:
        return [self.low, self.high]


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> Slope:
    """The exponent ``p`` of ``y ~ x^p`` fitted on log-log axes, with its 95% interval."""
    fit = fit_line([math.log(v) for v in x], [math.log(v) for v in y])
    half = t95(fit.n - 2) * fit.slope_se
    return Slope(fit.slope, fit.slope - half, fit.slope + half, fit.r2, fit.n)


def rel(path: Path) -> str:
    """``path`` relative to the repository root (how claims.json names figures); absolute when outside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def claim(**fields: Any) -> dict[str, Any]:
    """One claims.json record; ``ValueError`` if a key of :data:`CLAIM_KEYS` is missing or a figure does not exist."""
    missing = [k for k in CLAIM_KEYS if k not in fields]
    if missing:
        raise ValueError(f"claim {fields.get('claim')!r}: missing {', '.join(missing)}")
    absent = [f for f in fields["figures"] if not (ROOT / f).is_file()]
    if absent:
        raise ValueError(f"claim {fields['claim']!r}: figures do not exist: {', '.join(absent)}")
    return {k: fields[k] for k in CLAIM_KEYS} | {k: v for k, v in fields.items() if k not in CLAIM_KEYS}


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return None if not math.isfinite(x) else float(f"{x:.6g}")
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON (floats to 6 significant digits, non-finite as null), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_clean(data), indent=2) + "\n")
    return path


def update_claims(records: Sequence[Mapping[str, Any]], path: Path = CLAIMS) -> Path:
    """Merge ``records`` into claims.json by their ``claim`` id (the others are kept), in a stable order."""
    existing = json.loads(path.read_text()) if path.is_file() else []
    by_id = {r["claim"]: r for r in existing} | {r["claim"]: dict(r) for r in records}
    order = [c for c in CLAIM_ORDER if c in by_id] + sorted(c for c in by_id if c not in CLAIM_ORDER)
    return write_json(path, [by_id[c] for c in order])


#: The claims of issue 15, in its order.
CLAIM_ORDER = ("equilibrium_sqrt_law", "same_ratio_same_gain", "sigma_max_width_exponent", "transfer_robust_vs_mup",
               "lrm_gain_adamw", "lrm_gain_muon", "multiplier_wd_needed", "clip_exclusion_needed",
               "projector_scale_flat", "multiplier_width_exponent", "muon_width_rule")


def holds(interval: Sequence[float], expected: float, tolerance: float, max_width: float | None = None) -> bool | None:
    """Whether a measurement agrees with ``expected``: ``True`` when its interval reaches within ``tolerance`` of
    it, ``False`` when the whole interval lies farther, ``None`` (inconclusive) when the interval is wider than
    ``max_width`` (default ``4 * tolerance``) or not finite. The tolerance is each claim's, stated beside it."""
    low, high = interval
    if not (math.isfinite(low) and math.isfinite(high)) or high - low > (max_width or 4 * tolerance):
        return None
    return low - tolerance <= expected <= high + tolerance


def final_weights(row: Mapping[str, Any]) -> dict[str, Any]:
    """The run's last checkpointed model tensors (safetensors), by parameter name."""
    from safetensors.torch import load_file

    from widthwise.app.checkpoint import latest_checkpoint

    path = latest_checkpoint(Path(row["run_dir"]) / "checkpoints")
    if path is None:
        raise FileNotFoundError(f"{row['run_dir']}: no checkpoint")
    return load_file(str(path / "model.safetensors"))


def tail_mean(records: Sequence[Mapping[str, Any]], get, fraction: float = 0.25) -> float | None:
    """The mean of ``get(record)`` over the last ``fraction`` of ``records`` (at least one; non-finite skipped)."""
    tail = records[-max(1, round(len(records) * fraction)):]
    values = [v for v in (get(r) for r in tail) if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.fmean(values) if values else None


def _num(x: Any) -> str:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.3g}" if math.isfinite(x) else "-"
    return "-" if x is None else str(x)


def write_summary(path: Path | None = None, claims_path: Path | None = None) -> Path:
    """``experiments/results/summary.md``: one table row per claim of claims.json (REPRODUCTION.md quotes it)."""
    claims_path = claims_path or CLAIMS
    path = path or RESULTS / "summary.md"
    records = json.loads(claims_path.read_text()) if claims_path.is_file() else []
    lines = ["# Claims: measured against expected", "",
             "Generated by `python -m experiments.run` from `claims.json`; `holds`: yes / no / inconclusive.", "",
             "| claim | source | measured | interval | expected | holds | CPU-s | figures |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        interval = "[" + ", ".join(_num(v) for v in r["interval"]) + "]"
        verdict = {True: "yes", False: "no", None: "inconclusive"}[r["holds"]]
        figures = " ".join(f"[{Path(f).stem}]({Path(f).relative_to('experiments/results')})"
                           if f.startswith("experiments/results/") else f for f in r["figures"])
        lines.append(f"| `{r['claim']}` | {r['source'].split(',')[0]} | {_num(r['measured'])} | {interval} | "
                     f"{_num(r['expected'])} | {verdict} | {_num(r['wall_s'])} | {figures} |")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path

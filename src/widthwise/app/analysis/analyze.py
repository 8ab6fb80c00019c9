"""``widthwise analyze SWEEP_DIR``: where the LR x WD optimum sits at each width, and whether it transfers.

A sweep's rows are grouped into *families* (everything but width, LR, WD and seed: recipe, optimizer, multipliers
and any other varied key) and, inside a family, into *cells* ``(width, lr, weight_decay)`` whose seeds are averaged.
Per family and width: the best grid point, a sub-grid estimate of the optimum (a quadratic fit in log LR / log WD,
see :func:`fit_optimum`) and the ridge of best LR per WD value (the diagonal ridge of near-optimal (LR, WD) of Fan et
al., arXiv 2510.15262), also in their coordinates ``lr*wd`` and ``lr/wd`` of the hidden matrices, with the relaxation
times ``1/(lr*wd)`` the best run covered. Per family: how far the optimal base LR / WD move per width doubling, with
bootstrap confidence intervals, a verdict (``transfers``, ``drifts`` or ``inconclusive``, with reasons) and the regret
at the widest width of the optima found at narrower ones. Under a width-robust parametrization (muP, Yang et al. 2022,
arXiv 2203.03466; the robust rule LR ~ 1/width, WD ~ sqrt(width) of Fan et al.) the base values tuned on a proxy
should stay optimal at every width.

Writes ``SWEEP_DIR/optima.json`` (read by ``widthwise transfer``), ``SWEEP_DIR/report.md`` and ``SWEEP_DIR/plots/``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from .families import (
    Cell,
    Family,
    HiddenScaling,
    finite_or_none,
    grid_ratio,
    grid_value,
    group_families,
    is_finite,
    show_value,
)
from .optimum import best_grid_point, fit_optimum, ridge
from .verdict import (
    BOOTSTRAP_DRAWS,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    TRANSFER_FACTOR,
    bootstrap_intervals,
    edge_reasons,
    loss_noise,
    transfer_verdict,
)

#: An optimum whose run covered fewer relaxation times ``1/(lr*wd)`` than this is far from the AdamW equilibrium
#: (reached on that timescale: Kosson et al., arXiv 2305.17212), the steady state the robust rule is derived in.
MIN_RELAXATION_TIMES = 1.0
#: 2: ``verdict`` (one of :data:`VERDICTS`), ``reasons``, ``summary``, ``slopes`` with intervals, ``noise``, ``regret``,
#: ``warnings`` per family (``transfer`` gone); ``coordinates``, ``relaxation_times`` and ``best.seed_std`` per width.
OPTIMA_VERSION = 2

# ----------------------------------------------------------------------------------------------- regret


def regret(family: Family) -> dict[str, Any] | None:
    """The widest width's loss at each narrower width's optimum, minus its own best: what transferring costs.

    The narrower width's best grid point (base LR, WD) is looked up in the widest width's grid (same grid, no
    interpolation: our choice); ``regret`` is that cell's seed-mean loss minus the widest width's best, ``None`` when
    that run diverged or is missing (``status``). ``seed_std``: standard deviation over seeds of the widest width's
    loss at that point (``None`` with one seed), to set the regret against seed noise. ``None`` with fewer than two
    widths that have a completed optimum."""
    bests = {w: _best_cell(family, w) for w in family.widths}
    widths = [w for w, c in bests.items() if c is not None]
    if len(widths) < 2:
        return None
    widest, top = widths[-1], bests[widths[-1]]
    rows = []
    for w in widths[:-1]:
        src = bests[w]
        cell = family.cells.get((widest, src.lr, src.weight_decay))
        status = cell.status if cell is not None else "missing"
        loss = cell.val_loss if cell is not None else None
        rows.append({"width": w, "lr": src.lr, "weight_decay": src.weight_decay, "status": status, "val_loss": loss,
                     "regret": None if loss is None else loss - top.val_loss,
                     "seed_std": cell.seed_std if cell is not None else None})
    return {"width": widest, "best_val_loss": top.val_loss, "best_seed_std": top.seed_std, "from": rows}


def _best_cell(family: Family, width: int) -> Cell | None:
    best = best_grid_point(family.loss_grid(width))
    return None if best is None else family.cells[(width, family.lr_grid[best[1]], family.wd_grid[best[0]])]


# ----------------------------------------------------------------------------------------------- optima


def coordinates(hidden: HiddenScaling | None, lr: float, weight_decay: float, width: int) -> dict[str, Any] | None:
    """The hidden matrices' absolute ``lr``, ``weight_decay``, ``lr_times_wd`` and ``lr_over_wd`` at ``width`` for base
    values ``lr``/``weight_decay``: Fan et al. (arXiv 2510.15262)'s coordinates, ``lr/wd`` setting the steady-state
    norm (``rms(W) -> sqrt(lr / (2 wd))``) and ``lr*wd`` the speed of reaching it. ``None`` without a scaling."""
    if hidden is None:
        return None
    h_lr, h_wd = hidden.at(lr, weight_decay, width)
    return {"lr": h_lr, "weight_decay": h_wd, "lr_times_wd": h_lr * h_wd, "lr_over_wd": h_lr / h_wd if h_wd else None}


def family_optima(family: Family, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """One family's entry of ``optima.json``: grids, per-width best/fit/ridge/counts/coordinates/relaxation times,
    the verdict with its reasons and slopes (intervals: :func:`bootstrap_intervals`), the
    regret (:func:`regret`) and warnings (runs far from steady state at an optimum).

    A width where every run diverged or failed has ``best``, ``fit`` = ``None`` and an empty ``ridge``."""
    lr_grid, wd_grid = family.lr_grid, family.wd_grid
    per_width: dict[str, Any] = {}
    fitted: list[tuple[int, dict[str, Any]]] = []
    edges: list[str] = []
    unsettled: dict[int, float] = {}
    for width in family.widths:
        cells = [c for c in family.cells.values() if c.width == width]
        grid = family.loss_grid(width)
        cell = _best_cell(family, width)
        entry: dict[str, Any] = {"best": None, "fit": None, "ridge": ridge(lr_grid, wd_grid, grid)}
        entry.update({k: sum(getattr(c, k) for c in cells) for k in ("runs", "completed", "diverged", "failed")})
        entry.update(sigma_max=None, gain=None, coordinates=None, relaxation_times=None)
        if cell is not None:
            entry["best"] = {"lr": cell.lr, "weight_decay": cell.weight_decay, "val_loss": cell.val_loss,
                             "seed_std": cell.seed_std, "run_id": cell.run_id, "run_dir": cell.run_dir}
            fit = entry["fit"] = fit_optimum(lr_grid, wd_grid, grid)
            entry.update(sigma_max=finite_or_none(cell.sigma_max), gain=finite_or_none(cell.gain),
                         coordinates=coordinates(family.hidden, fit["lr"], fit["weight_decay"], width),
                         relaxation_times=cell.relaxation_times)
            fitted.append((width, fit))
            edges += edge_reasons(width, cell.lr, cell.weight_decay, lr_grid, wd_grid)
            if cell.relaxation_times is not None and cell.relaxation_times < MIN_RELAXATION_TIMES:
                unsettled[width] = cell.relaxation_times
        per_width[str(width)] = entry
    warnings = [steady_state_warning(family.label, unsettled)] if unsettled else []
    widths = [w for w, _ in fitted]
    sigma, noise = loss_noise(family)
    intervals: dict[str, list[float]] = {}
    if sigma is not None and len(widths) > 1 and grid_ratio(lr_grid) is not None:
        intervals = bootstrap_intervals(widths, [family.loss_grid(w) for w in widths],
                                        [_seed_counts(family, w) for w in widths], lr_grid, wd_grid, sigma, draws,
                                        seed)
    verdict = transfer_verdict(widths, [f["lr"] for _, f in fitted], [f["weight_decay"] for _, f in fitted], lr_grid,
                               wd_grid, edges=edges, intervals=intervals, noise=noise)
    return {"label": family.label, "params": family.params, "recipe": family.recipe, "optimizer": family.optimizer,
            "multipliers": family.multipliers, "base_width": family.base_width, "lr_grid": lr_grid,
            "wd_grid": wd_grid, "widths": family.widths, "per_width": per_width, **verdict,
            "noise": {"sigma": sigma, "source": noise, "draws": draws, "confidence": CONFIDENCE},
            "regret": regret(family), "warnings": warnings}


def steady_state_warning(label: str, unsettled: Mapping[int, float]) -> str:
    """The warning for widths whose best run covered fewer than :data:`MIN_RELAXATION_TIMES` relaxation times."""
    widths = ", ".join(f"{w} ({t:.2g})" for w, t in unsettled.items())
    return (f"{label}: the best run at width{'s' * (len(unsettled) > 1)} {widths} covered fewer than "
            f"{MIN_RELAXATION_TIMES:g} relaxation time 1/(lr*wd) of the hidden matrices: far from the AdamW "
            "equilibrium the robust rule is derived in (Fan et al., arXiv 2510.15262), the optimum may still move "
            "with longer training")


def _seed_counts(family: Family, width: int) -> np.ndarray:
    """Completed seeds per cell at ``width``, as ``[wd index, lr index]``."""
    counts = np.zeros((len(family.wd_grid), len(family.lr_grid)))
    for j, wd in enumerate(family.wd_grid):
        for i, lr in enumerate(family.lr_grid):
            cell = family.cells.get((width, lr, wd))
            counts[j, i] = len(cell.losses) if cell is not None else 0
    return counts


def compute_optima(families: Sequence[Family]) -> dict[str, Any]:
    """The content of ``optima.json`` for the families of a sweep."""
    return {"version": OPTIMA_VERSION, "families": [family_optima(f) for f in families]}


def check_analyzable(rows: Sequence[Mapping[str, Any]], where: str) -> None:
    """Raise ``SweepError`` unless some run completed, the LR takes two or more values and the runs share their
    numerics (device/dtype/compile; Muon runs also the Newton-Schulz dtype; rows without numerics, of older sweeps,
    pass)."""
    from ...errors import SweepError

    numerics: dict[str, int] = {}
    for r in rows:
        if r.get("numerics"):
            numerics[r["numerics"]] = numerics.get(r["numerics"], 0) + 1
    if len({n.split("/ns-")[0] for n in numerics}) > 1 or len({n for n in numerics if "/ns-" in n}) > 1:
        have = ", ".join(f"{n} ({c} rows)" for n, c in numerics.items())
        raise SweepError(f"{where}: the runs computed with different numerics ({have}); their losses are not "
                         "comparable: rerun the odd ones with the same train.dtype/train.compile/optim.ns_dtype")

    if not any(r.get("status") == "completed" for r in rows):
        counts = _status_counts(rows)
        have = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no runs"
        raise SweepError(f"{where}: no completed runs to analyze ({have})")
    lrs = {grid_value(r["lr"]) for r in rows if r.get("lr") is not None}
    if len(lrs) < 2:
        raise SweepError(f"{where}: the LR is not varied (optim.lr={', '.join(map(show_value, lrs)) or 'none'}); "
                         "analyze needs an optim.lr grid")


def _status_counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row.get("status"))] = counts.get(str(row.get("status")), 0) + 1
    return counts


# ----------------------------------------------------------------------------------------------- report


PLOT_NOTES = {
    "heatmaps": "Each panel is one width's LR x WD grid of validation loss (darker is lower; grey x: diverged or "
                "failed). Look for the star (best grid point) and the cross (sub-grid fit) staying in the same place "
                "along a row: that is transfer. The line is the ridge of best LR per WD.",
    "loss_vs_lr": "Validation loss against base LR at each width's best WD, one line per width (darker is wider). "
                  "Under a recipe that transfers the minima line up vertically; minima sliding left mean wider models "
                  "want a smaller base LR.",
    "optimum_vs_width": "The fitted optimal base LR and WD against width; a flat line is transfer, crossing one "
                        "faint grid line per doubling is a drift of one grid step. Hollow markers: optimum on the "
                        "grid edge.",
    "sigma_gain_vs_width": "Top singular value and sublayer gain of the hidden matrices at each width's optimum: "
                           "the robust rule (LR ~ 1/width, WD ~ sqrt(width)) keeps both flat across widths "
                           "(Fan et al., arXiv 2510.15262); a trend means the matrices' scale drifts with width.",
}


def _fmt(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _steps_text(steps: float | None) -> str:
    return "-" if steps is None else f"{0.0 if abs(steps) < 0.005 else steps:+.2f}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _ci(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "-"
    ci = entry["ci"]
    return f"{entry['slope']:+.2f}" + ("" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]")


def _regret_lines(fam: Mapping[str, Any]) -> list[str]:
    r = fam.get("regret")
    if not r:
        return []
    lines = ["", f"Regret at width {r['width']} (the widest): its loss at each narrower width's best grid point minus "
             f"its own best ({_fmt(r['best_val_loss'], '.4f')}, seed std {_fmt(r['best_seed_std'], '.2g')}).", "",
             "| from width | lr | wd | loss there | regret | seed std |", "|---" * 6 + "|"]
    for t in r["from"]:
        regret_text = _fmt(t["regret"], "+.4f") if t["regret"] is not None else t["status"]
        lines.append(f"| {t['width']} | {_fmt(t['lr'])} | {_fmt(t['weight_decay'])} | {_fmt(t['val_loss'], '.4f')} | "
                     f"{regret_text} | {_fmt(t['seed_std'], '.2g')} |")
    return lines


def evaluations(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``widthwise eval`` results of the sweep's runs that have an ``eval.json``, in row order."""
    found = []
    for row in rows:
        try:
            data = json.loads((Path(row["run_dir"]) / "eval.json").read_text(encoding="utf-8"))
        except (KeyError, TypeError, OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("tasks"), dict):
            found.append({"name": row.get("name"), "params": row.get("params") or {}, "val_loss": row.get("val_loss"),
                          "tasks": data["tasks"]})
    return found


def _eval_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    evals = evaluations(rows)
    if not evals:
        return []
    tasks = sorted({t for e in evals for t in e["tasks"]})
    lines = ["", "## Downstream evaluation", "", "Runs with an `eval.json` (`widthwise eval RUN_DIR --tasks ...`): "
             "each task's headline metric +- its standard error.", "",
             "| run | params | val loss | " + " | ".join(tasks) + " |", "|---" * (3 + len(tasks)) + "|"]
    for e in evals:
        cells = []
        for t in tasks:
            r = e["tasks"].get(t) or {}
            cells.append("-" if r.get("value") is None else
                         f"{r.get('metric')} {_fmt(r['value'], '.4g')} +- {_fmt(r.get('stderr'), '.2g')}")
        params = ", ".join(f"{k}={show_value(v)}" for k, v in e["params"].items())
        lines.append(f"| {e['name']} | {params} | {_fmt(e['val_loss'], '.4f')} | " + " | ".join(cells) + " |")
    return lines


def render_report(optima: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], sweep_dir: Path,
                  plots: Sequence[Path] = ()) -> str:
    """``report.md``: sweep size, warnings, the families' verdicts side by side, per-width optima, regret, plots."""
    counts = _status_counts(rows)
    wall = sum(float(r["wall_s"]) for r in rows if is_finite(r.get("wall_s")))
    tol = math.log2(TRANSFER_FACTOR)
    lines = [f"# Sweep analysis: {Path(sweep_dir).name}", "",
             f"{len(rows)} runs: {counts.get('completed', 0)} completed, {counts.get('diverged', 0)} diverged, "
             f"{counts.get('failed', 0)} failed" + "".join(f", {n} {s}" for s, n in counts.items()
                                                        if s not in ("completed", "diverged", "failed"))
             + f"; total run time {_duration(wall)} (wall_s summed over runs: {wall:.0f} s).", "",
             "Optimal base LR / WD per family and width are in `optima.json`; `widthwise transfer SWEEP_DIR --width W` "
             "turns them into a config for width W. Slopes are exponents of the optimal base LR / WD against width "
             f"(a factor 2^slope per doubling) with {CONFIDENCE:.0%} bootstrap intervals over the loss noise; a family "
             f"**transfers** when every interval lies within +-{tol:.2f} (x{TRANSFER_FACTOR:g} per doubling), "
             "**drifts** when one lies entirely outside, and is **inconclusive** otherwise or when an optimum sits on "
             "a grid edge."]
    warnings = [w for fam in optima["families"] for w in fam.get("warnings", [])]
    if warnings:
        lines += ["", "## Warnings", "", *(f"- {_sentence(w)}" for w in warnings)]
    lines += ["", "## Families", "", "| family | widths | LR slope [CI] | WD slope [CI] | verdict |",
              "|---|---|---|---|---|"]
    for fam in optima["families"]:
        lines.append(f"| {fam['label']} | {', '.join(map(str, fam['widths']))} | {_ci(fam['slopes']['lr'])} | "
                     f"{_ci(fam['slopes']['wd'])} | **{fam['verdict']}** |")
    for fam in optima["families"]:
        noise = fam["noise"]
        lines += ["", f"## {fam['label']}", "", f"{_sentence(fam['summary'])}", "",
                  *(f"- {_sentence(r)}" for r in fam["reasons"]), *([""] if fam["reasons"] else []),
                  f"LR grid: {', '.join(_fmt(v) for v in fam['lr_grid'])}; WD grid: "
                  f"{', '.join(_fmt(v) for v in fam['wd_grid'])}; base width {fam['base_width']}. Loss noise "
                  f"{_fmt(noise['sigma'], '.2g')} per seed ({noise['source']}).", "",
                  "Hidden lr*wd and lr/wd are the hidden matrices' absolute values at the fitted optimum (Fan et al., "
                  "arXiv 2510.15262: lr/wd sets the steady-state norm, lr*wd the speed of reaching it); relax. is the "
                  "relaxation times 1/(lr*wd) the best run covered.", "",
                  "| width | runs | best lr | best wd | val loss | seed std | fit lr | fit wd | fit method "
                  "| hidden lr*wd | hidden lr/wd | relax. | sigma_max | gain | diverged | failed |", "|---" * 16 + "|"]
        for width, entry in fam["per_width"].items():
            best, fit, coords = entry["best"] or {}, entry["fit"] or {}, entry["coordinates"] or {}
            method = fit.get("method", "-") + (" (edge)" if fit.get("at_edge") else "")
            lines.append(f"| {width} | {entry['runs']} | {_fmt(best.get('lr'))} | {_fmt(best.get('weight_decay'))} | "
                         f"{_fmt(best.get('val_loss'), '.4f')} | {_fmt(best.get('seed_std'), '.2g')} | "
                         f"{_fmt(fit.get('lr'))} | {_fmt(fit.get('weight_decay'))} | {method} | "
                         f"{_fmt(coords.get('lr_times_wd'))} | {_fmt(coords.get('lr_over_wd'))} | "
                         f"{_fmt(entry['relaxation_times'], '.2g')} | {_fmt(entry['sigma_max'])} | "
                         f"{_fmt(entry['gain'])} | {entry['diverged']} | {entry['failed']} |")
        lines += _regret_lines(fam)
    lines += _eval_lines(rows)
    if plots:
        lines += ["", "## Plots"]
        for path in plots:
            name = Path(path).stem
            lines += ["", f"![{name.replace('_', ' ')}](plots/{Path(path).name})", "", PLOT_NOTES.get(name, "")]
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------- entry point


def analyze(sweep_dir: Path, rows: list[dict] | None = None, plots: bool = True) -> dict:
    """Analyze a sweep: write ``optima.json``, ``report.md`` and (``plots``) ``plots/*.png`` into ``sweep_dir``.

    ``rows`` default to :func:`widthwise.app.sweep.store.read_results`. Returns the optima with two extra keys not
    written to ``optima.json``: ``report`` (path) and ``plots`` (paths). ``SweepError`` when no run completed or
    the LR is not varied."""
    sweep_dir = Path(sweep_dir)
    if rows is None:
        from ..sweep.store import read_results

        rows = read_results(sweep_dir)
    check_analyzable(rows, f"SWEEP_DIR {sweep_dir}")
    families = group_families(rows)
    optima = compute_optima(families)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / "optima.json", json.dumps(optima, indent=1, allow_nan=False) + "\n")
    written: list[Path] = []
    if plots:
        from .plots import write_analysis_plots

        written = write_analysis_plots(sweep_dir / "plots", families, optima)
    report = sweep_dir / "report.md"
    atomic_write_text(report, render_report(optima, rows, sweep_dir, written))
    return {**optima, "report": str(report), "plots": [str(p) for p in written]}

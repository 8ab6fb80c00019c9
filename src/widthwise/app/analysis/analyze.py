"""``widthwise analyze SWEEP_DIR``: where the LR x WD optimum sits at each width, and whether it transfers.

A sweep's rows are grouped into *families* (everything but width, LR, WD and seed: recipe, optimizer, multipliers
and any other varied key) and, inside a family, into *cells* ``(width, lr, weight_decay)`` whose seeds are averaged.
Per family and width: the best grid point, a sub-grid estimate of the optimum (a quadratic fit in log LR / log WD,
see :func:`fit_optimum`) and the ridge of best LR per WD value (the diagonal ridge of near-optimal (LR, WD) of Fan et
al., arXiv 2510.15262). Per family: how far the optimal base LR / WD move per width doubling, in grid steps, and a
verdict. Under a width-robust parametrization (muP, Yang et al. 2022, arXiv 2203.03466; the robust rule LR ~ 1/width,
WD ~ sqrt(width) of Fan et al.) the base values tuned on a proxy should stay optimal at every width.

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
    Family,
    finite_or_none,
    grid_ratio,
    grid_value,
    group_families,
    is_finite,
    log_position,
    show_value,
)
from .fits import fit_line

#: A family "transfers" when its optimal base LR (and WD) change by at most this factor per width doubling: x1.25
#: compounds to x2 over a 16x width range, the most a 2x-spaced grid can absorb between proxy and target.
TRANSFER_FACTOR = 1.25
OPTIMA_VERSION = 1

# ----------------------------------------------------------------------------------------------- optimum


def best_grid_point(grid: np.ndarray) -> tuple[int, int] | None:
    """``(wd index, lr index)`` of the lowest finite loss in ``grid`` (``None`` when every cell is NaN)."""
    if not np.isfinite(grid).any():
        return None
    flat = int(np.nanargmin(np.where(np.isfinite(grid), grid, np.nan)))
    return divmod(flat, grid.shape[1])


def fit_parabola(x: Sequence[float], z: Sequence[float]) -> tuple[float, float] | None:
    """Vertex ``(x0, z0)`` of the least-squares parabola ``z = a + b x + c x^2``, ``None`` unless it is convex,
    determined (three or more distinct ``x``) and its vertex lies within the span of ``x``."""
    x, z = np.asarray(x, float), np.asarray(z, float)
    if len(np.unique(x)) < 3:
        return None
    (a, b, c), *_ = np.linalg.lstsq(np.stack([np.ones_like(x), x, x * x], axis=1), z, rcond=None)
    if not c > 1e-12 * max(1.0, float(np.abs(z).max())):
        return None
    x0 = -b / (2 * c)
    if not x.min() - 1e-9 <= x0 <= x.max() + 1e-9:
        return None
    return float(x0), float(a + b * x0 / 2)


def fit_paraboloid(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> tuple[float, float, float] | None:
    """Minimum ``(x0, y0, z0)`` of the least-squares quadratic ``z = a + b x + c y + d x^2 + e y^2 + f x y``,
    ``None`` unless the design has full rank (six parameters), the Hessian is positive definite and the minimum
    lies within the bounding box of the points."""
    x, y, z = (np.asarray(v, float) for v in (x, y, z))
    design = np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=1)
    if len(z) < 6 or np.linalg.matrix_rank(design) < 6:
        return None
    (a, b, c, d, e, f), *_ = np.linalg.lstsq(design, z, rcond=None)
    hessian = np.array([[2 * d, f], [f, 2 * e]])
    scale = 1e-12 * max(1.0, float(np.abs(z).max()))
    if not (hessian[0, 0] > scale and np.linalg.det(hessian) > scale * scale):
        return None
    x0, y0 = np.linalg.solve(hessian, [-b, -c])
    inside = x.min() - 1e-9 <= x0 <= x.max() + 1e-9 and y.min() - 1e-9 <= y0 <= y.max() + 1e-9
    if not inside:
        return None
    return float(x0), float(y0), float(a + (b * x0 + c * y0) / 2)


def _axis_fit(grid_values: Sequence[float], line: np.ndarray, k: int) -> tuple[float, float] | None:
    """Parabola in log value through the optimum ``k`` of ``line`` and its two neighbours: ``(log position of the
    vertex, fitted loss)``, ``None`` at an edge, next to a NaN or a value of 0, or when not convex."""
    if not 0 < k < len(line) - 1 or not np.isfinite(line[k - 1:k + 2]).all() or grid_values[k - 1] <= 0:
        return None
    coords = np.array([log_position(v, grid_values) for v in grid_values[k - 1:k + 2]])
    fit = fit_parabola(coords - coords[1], line[k - 1:k + 2])
    return None if fit is None else (fit[0] + coords[1], fit[1])


def fit_optimum(lr_grid: Sequence[float], wd_grid: Sequence[float], grid: np.ndarray) -> dict[str, Any] | None:
    """Sub-grid estimate of the optimum of a loss ``grid[wd index, lr index]`` (NaN: diverged, failed, missing).

    Works in log LR and log WD. Tries, in order:

    - ``quadratic-2d``: least squares of a full quadratic (with cross term, so a diagonal LR-WD ridge is followed)
      on the best grid point and its finite neighbours in the 3x3 block around it; needs the optimum inside the
      grid on both axes, all four axis neighbours finite, six or more points, a convex fit and its minimum inside
      the block;
    - ``quadratic-1d``: a parabola along each varied axis through the optimum and its two neighbours, the other
      coordinate held at the grid optimum (``quadratic-1d-lr`` / ``-wd`` when only that axis could be fitted);
    - ``grid``: the best grid point itself.

    An axis whose optimum is on the first or last grid value is never extrapolated: ``at_edge`` is then true and
    that coordinate is the grid value. ``val_loss`` is the fitted loss at the estimate (the grid loss for ``grid``).
    Returns ``None`` when no cell has a loss.
    """
    best = best_grid_point(grid)
    if best is None:
        return None
    j, i = best
    lr_varied, wd_varied = len(lr_grid) > 1, len(wd_grid) > 1
    lr_edge = lr_varied and i in (0, len(lr_grid) - 1)
    wd_edge = wd_varied and j in (0, len(wd_grid) - 1)
    result = {"lr": float(lr_grid[i]), "weight_decay": float(wd_grid[j]), "val_loss": float(grid[j, i]),
              "method": "grid", "at_edge": bool(lr_edge or wd_edge)}
    if lr_varied and wd_varied and not (lr_edge or wd_edge):
        fit2 = _fit_block(lr_grid, wd_grid, grid, i, j)
        if fit2 is not None:
            x0, y0, z0 = fit2
            result.update(lr=_exp_step(x0, lr_grid), weight_decay=_exp_step(y0, wd_grid), val_loss=z0,
                          method="quadratic-2d")
            return result
    fit_lr = _axis_fit(lr_grid, grid[j, :], i) if lr_varied else None
    fit_wd = _axis_fit(wd_grid, grid[:, i], j) if wd_varied else None
    drop = 0.0
    if fit_lr is not None:
        result["lr"] = _exp_step(fit_lr[0], lr_grid)
        drop += grid[j, i] - fit_lr[1]
    if fit_wd is not None:
        result["weight_decay"] = _exp_step(fit_wd[0], wd_grid)
        drop += grid[j, i] - fit_wd[1]
    result["val_loss"] = float(grid[j, i] - drop)
    fitted = [name for name, fit, varied in (("lr", fit_lr, lr_varied), ("wd", fit_wd, wd_varied)) if varied and fit]
    all_varied = [name for name, varied in (("lr", lr_varied), ("wd", wd_varied)) if varied]
    if fitted:
        result["method"] = "quadratic-1d" if fitted == all_varied else f"quadratic-1d-{fitted[0]}"
    return result


def _exp_step(position: float, grid: Sequence[float]) -> float:
    """Back from a :func:`log_position` to a value."""
    return float(math.exp(position * math.log(grid_ratio(grid) or math.e)))


def _fit_block(lr_grid: Sequence[float], wd_grid: Sequence[float], grid: np.ndarray, i: int,
               j: int) -> tuple[float, float, float] | None:
    """:func:`fit_paraboloid` on the finite cells of the 3x3 block around ``(j, i)``, centred on it; ``None`` unless
    its four axis neighbours are finite and no WD in the block is 0."""
    if wd_grid[j - 1] <= 0:
        return None
    block = [(jj, ii) for jj in (j - 1, j, j + 1) for ii in (i - 1, i, i + 1) if np.isfinite(grid[jj, ii])]
    if not all((jj, ii) in block for jj, ii in ((j - 1, i), (j + 1, i), (j, i - 1), (j, i + 1))):
        return None
    u0, v0 = log_position(lr_grid[i], lr_grid), log_position(wd_grid[j], wd_grid)
    fit = fit_paraboloid([log_position(lr_grid[ii], lr_grid) - u0 for _, ii in block],
                         [log_position(wd_grid[jj], wd_grid) - v0 for jj, _ in block], [grid[b] for b in block])
    return None if fit is None else (fit[0] + u0, fit[1] + v0, fit[2])


def ridge(lr_grid: Sequence[float], wd_grid: Sequence[float], grid: np.ndarray) -> list[dict[str, float]]:
    """Per WD value with any finite loss, the best LR along the LR axis (parabola through the best grid LR and its
    neighbours when possible, else the grid value): the diagonal ridge of near-optimal (LR, WD)."""
    points = []
    for j, wd in enumerate(wd_grid):
        line = grid[j, :]
        if not np.isfinite(line).any():
            continue
        i = int(np.nanargmin(line))
        fit = _axis_fit(lr_grid, line, i)
        points.append({"weight_decay": float(wd), "lr": _exp_step(fit[0], lr_grid) if fit else float(lr_grid[i])})
    return points


# ----------------------------------------------------------------------------------------------- transfer


def _drift(widths: Sequence[int], values: Sequence[float], grid: Sequence[float]) -> tuple[float, float]:
    """``(slope, steps per doubling)``: the least-squares slope of ``log(values)`` against ``log(widths)`` and the
    same drift in grid steps, ``slope * log 2 / log(grid ratio)`` (a value of 0 at its :func:`log_position`)."""
    steps = fit_line([math.log2(w) for w in widths], [log_position(v, grid) for v in values]).slope
    return steps * math.log(grid_ratio(grid)) / math.log(2), steps


def _signed(x: float) -> str:
    return f"{0.0 if abs(x) < 0.05 else x:+.1f}"


def transfer_verdict(widths: Sequence[int], lrs: Sequence[float], wds: Sequence[float], lr_grid: Sequence[float],
                     wd_grid: Sequence[float], edge_widths: Sequence[int] = ()) -> dict[str, Any]:
    """Does the optimum (``lrs``/``wds`` at ``widths``) stay put as width grows?

    Fits ``log(opt) ~ slope * log(width)`` by least squares over the widths; ``slope * log 2 / log(grid ratio)`` is
    the drift in grid steps per width doubling (grid ratio: :func:`grid_ratio`). Verdict ``transfers`` when the LR
    changes by at most :data:`TRANSFER_FACTOR` per doubling (and the WD too, when it is varied), else ``drifts``;
    ``insufficient`` with fewer than two widths or an LR grid of one value. ``edge_widths`` (widths whose optimum
    lies on the grid edge) are named in the summary: there the drift is a lower bound.
    """
    out: dict[str, Any] = {"lr_slope": None, "wd_slope": None, "lr_steps_per_doubling": None,
                           "wd_steps_per_doubling": None, "verdict": "insufficient"}
    lr_ratio, wd_ratio = grid_ratio(lr_grid), grid_ratio(wd_grid)
    if len(set(widths)) < 2 or lr_ratio is None:
        n = len(set(widths))
        out["summary"] = ("insufficient: the LR is not varied" if lr_ratio is None else
                          f"insufficient: an optimum at {n} width{'s' * (n != 1)}, the drift needs two or more")
        return out
    out["lr_slope"], out["lr_steps_per_doubling"] = _drift(widths, lrs, lr_grid)
    text = (f"optimal LR moves {_signed(out['lr_steps_per_doubling'])} grid steps (x{2 ** out['lr_slope']:.2g}) "
            "per width doubling")
    ok = 2 ** abs(out["lr_slope"]) <= TRANSFER_FACTOR
    if wd_ratio is not None:
        out["wd_slope"], out["wd_steps_per_doubling"] = _drift(widths, wds, wd_grid)
        text += f", WD {_signed(out['wd_steps_per_doubling'])} steps (x{2 ** out['wd_slope']:.2g})"
        ok = ok and 2 ** abs(out["wd_slope"]) <= TRANSFER_FACTOR
    out["verdict"] = "transfers" if ok else "drifts"
    text += ": transfers" if ok else ": does not transfer"
    if edge_widths:
        text += f" (optimum on the grid edge at width {', '.join(map(str, edge_widths))}: widen the grid there)"
    out["summary"] = text
    return out


# ----------------------------------------------------------------------------------------------- optima


def family_optima(family: Family) -> dict[str, Any]:
    """One family's entry of ``optima.json``: grids, per-width best/fit/ridge/counts and the transfer verdict.

    A width where every run diverged or failed has ``best``, ``fit`` = ``None`` and an empty ``ridge``."""
    lr_grid, wd_grid = family.lr_grid, family.wd_grid
    per_width: dict[str, Any] = {}
    fitted: list[tuple[int, dict[str, Any]]] = []
    for width in family.widths:
        cells = [c for c in family.cells.values() if c.width == width]
        grid = family.loss_grid(width)
        best = best_grid_point(grid)
        entry: dict[str, Any] = {"best": None, "fit": None, "ridge": ridge(lr_grid, wd_grid, grid)}
        entry.update({k: sum(getattr(c, k) for c in cells) for k in ("runs", "completed", "diverged", "failed")})
        entry.update(sigma_max=None, gain=None)
        if best is not None:
            cell = family.cells[(width, lr_grid[best[1]], wd_grid[best[0]])]
            entry["best"] = {"lr": cell.lr, "weight_decay": cell.weight_decay, "val_loss": cell.val_loss,
                             "run_id": cell.run_id, "run_dir": cell.run_dir}
            entry["fit"] = fit_optimum(lr_grid, wd_grid, grid)
            entry.update(sigma_max=finite_or_none(cell.sigma_max), gain=finite_or_none(cell.gain))
            fitted.append((width, entry["fit"]))
        per_width[str(width)] = entry
    edges = [w for w, fit in fitted if fit["at_edge"]]
    transfer = transfer_verdict([w for w, _ in fitted], [f["lr"] for _, f in fitted],
                                [f["weight_decay"] for _, f in fitted], lr_grid, wd_grid, edges)
    return {"label": family.label, "params": family.params, "recipe": family.recipe, "optimizer": family.optimizer,
            "multipliers": family.multipliers, "base_width": family.base_width, "lr_grid": lr_grid,
            "wd_grid": wd_grid, "widths": family.widths, "per_width": per_width, "transfer": transfer}


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


def render_report(optima: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], sweep_dir: Path,
                  plots: Sequence[Path] = ()) -> str:
    """``report.md``: sweep size, the families' verdicts side by side, per-width optima, the plots."""
    counts = _status_counts(rows)
    wall = sum(float(r["wall_s"]) for r in rows if is_finite(r.get("wall_s")))
    lines = [f"# Sweep analysis: {Path(sweep_dir).name}", "",
             f"{len(rows)} runs: {counts.get('completed', 0)} completed, {counts.get('diverged', 0)} diverged, "
             f"{counts.get('failed', 0)} failed" + "".join(f", {n} {s}" for s, n in counts.items()
                                                        if s not in ("completed", "diverged", "failed"))
             + f"; total run time {_duration(wall)} (wall_s summed over runs: {wall:.0f} s).", "",
             "Optimal base LR / WD per family and width are in `optima.json`; `widthwise transfer SWEEP_DIR --width W` "
             "turns them into a config for width W. Drift is in grid steps per width doubling; a family transfers "
             f"when its optimal LR and WD change by at most x{TRANSFER_FACTOR:g} per doubling.", "",
             "## Families", "", "| family | widths | LR steps/doubling | WD steps/doubling | verdict |",
             "|---|---|---|---|---|"]
    for fam in optima["families"]:
        t = fam["transfer"]
        lines.append(f"| {fam['label']} | {', '.join(map(str, fam['widths']))} | "
                     f"{_steps_text(t['lr_steps_per_doubling'])} | {_steps_text(t['wd_steps_per_doubling'])} | "
                     f"**{t['verdict']}** |")
    for fam in optima["families"]:
        lines += ["", f"## {fam['label']}", "", f"{_sentence(fam['transfer']['summary'])}", "",
                  f"LR grid: {', '.join(_fmt(v) for v in fam['lr_grid'])}; WD grid: "
                  f"{', '.join(_fmt(v) for v in fam['wd_grid'])}; base width {fam['base_width']}.", "",
                  "| width | runs | best lr | best wd | val loss | fit lr | fit wd | fit method | sigma_max | gain "
                  "| diverged | failed |", "|---" * 12 + "|"]
        for width, entry in fam["per_width"].items():
            best, fit = entry["best"] or {}, entry["fit"] or {}
            method = fit.get("method", "-") + (" (edge)" if fit.get("at_edge") else "")
            lines.append(f"| {width} | {entry['runs']} | {_fmt(best.get('lr'))} | {_fmt(best.get('weight_decay'))} | "
                         f"{_fmt(best.get('val_loss'), '.4f')} | {_fmt(fit.get('lr'))} | "
                         f"{_fmt(fit.get('weight_decay'))} | {method} | {_fmt(entry['sigma_max'])} | "
                         f"{_fmt(entry['gain'])} | {entry['diverged']} | {entry['failed']} |")
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

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
    log_position,
    show_value,
)
from .fits import fit_line

#: A family "transfers" when its optimal base LR (and WD) change by at most this factor per width doubling: x1.25
#: compounds to x2 over a 16x width range, the most a 2x-spaced grid can absorb between proxy and target.
TRANSFER_FACTOR = 1.25
#: Coverage of the slopes' bootstrap confidence intervals (our choice).
CONFIDENCE = 0.9
#: Bootstrap replicates per family and the RNG seed that makes ``analyze`` deterministic (our choices).
BOOTSTRAP_DRAWS = 200
BOOTSTRAP_SEED = 0
#: Half-width, in grid steps, of the window whose quadratic-fit residuals estimate the loss noise when every cell
#: has a single seed (our choice).
NOISE_WINDOW = 2
#: An optimum whose run covered fewer relaxation times ``1/(lr*wd)`` than this is far from the AdamW equilibrium
#: (reached on that timescale: Kosson et al., arXiv 2305.17212), the steady state the robust rule is derived in.
MIN_RELAXATION_TIMES = 1.0
VERDICTS = ("transfers", "drifts", "inconclusive")
#: 2: ``verdict`` (one of :data:`VERDICTS`), ``reasons``, ``summary``, ``slopes`` with intervals, ``noise``, ``regret``,
#: ``warnings`` per family (``transfer`` gone); ``coordinates``, ``relaxation_times`` and ``best.seed_std`` per width.
OPTIMA_VERSION = 2

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


def _positions(values: Sequence[float], grid: Sequence[float]) -> list[float]:
    return [log_position(v, grid) for v in values]


def _drift(widths: Sequence[int], values: Sequence[float], grid: Sequence[float]) -> tuple[float, float]:
    """``(slope, steps per doubling)``: the least-squares slope of ``log2(values)`` against ``log2(widths)`` (the
    exponent of ``value ~ width^slope``, so a factor ``2^slope`` per doubling) and the same drift in grid steps,
    ``slope * log 2 / log(grid ratio)`` (a value of 0 at its :func:`log_position`)."""
    steps = fit_line([math.log2(w) for w in widths], _positions(values, grid)).slope
    return steps * math.log(grid_ratio(grid)) / math.log(2), steps


def _signed(x: float) -> str:
    return f"{0.0 if abs(x) < 0.05 else x:+.1f}"


def edge_reasons(width: int, lr: float, weight_decay: float, lr_grid: Sequence[float],
                 wd_grid: Sequence[float]) -> list[str]:
    """Why a width's best grid point ``(lr, weight_decay)`` leaves the drift unmeasured: one reason per varied axis
    whose best value is the grid's first or last, naming the edge and which way to extend the grid."""
    out = []
    for name, value, grid in (("LR", lr, lr_grid), ("WD", weight_decay, wd_grid)):
        if len(grid) < 2 or value not in (grid[0], grid[-1]):
            continue
        if value == grid[-1]:
            out.append(f"width {width}: the best {name} ({value:.3g}) is the largest of the grid: extend the {name} "
                       "grid upward")
        elif value > 0:
            out.append(f"width {width}: the best {name} ({value:.3g}) is the smallest of the grid: extend the {name} "
                       "grid downward")
        else:
            out.append(f"width {width}: the best {name} is 0, the smallest of the grid: add small positive values "
                       f"below {grid[1]:.3g}")
    return out


def loss_noise(family: Family) -> tuple[float | None, str]:
    """``(sigma, source)``: the standard deviation of one seed's loss about its cell's expectation.

    The pooled within-cell standard deviation over every cell with two or more completed seeds (all widths); with
    one seed per cell, the pooled residual standard deviation of a quadratic in log LR / log WD fitted, per width,
    to the finite cells within :data:`NOISE_WINDOW` grid steps of the best point (our choice: it also counts what a
    quadratic misses, so it errs large). ``None`` when neither has a degree of freedom."""
    ss, dof = 0.0, 0
    for cell in family.cells.values():
        if cell.val_loss is not None and len(cell.losses) > 1:
            ss += (len(cell.losses) - 1) * cell.seed_std ** 2
            dof += len(cell.losses) - 1
    if dof:
        return math.sqrt(ss / dof), f"the seed spread ({dof} degrees of freedom)"
    for width in family.widths:
        ss_w, dof_w = _window_residuals(family.lr_grid, family.wd_grid, family.loss_grid(width))
        ss, dof = ss + ss_w, dof + dof_w
    if dof:
        return math.sqrt(ss / dof), f"one seed per cell: residuals of local quadratic fits ({dof} degrees of freedom)"
    return None, "one seed per cell and too few grid points around the optima to measure the loss noise"


def _window_fit(lr_grid: Sequence[float], wd_grid: Sequence[float],
                grid: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray, float, int] | None:
    """A quadratic in log LR (and log WD when varied) fitted by least squares to the finite cells within
    :data:`NOISE_WINDOW` grid steps of the best point: ``(cells, fitted losses there, residual sum of squares,
    degrees of freedom)``, ``None`` when it has no degree of freedom."""
    best = best_grid_point(grid)
    if best is None:
        return None
    j, i = best
    u0, v0 = log_position(lr_grid[i], lr_grid), log_position(wd_grid[j], wd_grid)
    cells = [(jj, ii) for jj in range(max(0, j - NOISE_WINDOW), min(len(wd_grid), j + NOISE_WINDOW + 1))
             for ii in range(max(0, i - NOISE_WINDOW), min(len(lr_grid), i + NOISE_WINDOW + 1))
             if np.isfinite(grid[jj, ii])]
    u = np.array([log_position(lr_grid[ii], lr_grid) - u0 for _, ii in cells])
    v = np.array([log_position(wd_grid[jj], wd_grid) - v0 for jj, _ in cells])
    z = np.array([grid[c] for c in cells])
    columns = [np.ones_like(u), u, u * u]
    if len(wd_grid) > 1:
        columns += [v, v * v, u * v]
    design = np.stack(columns, axis=1)
    dof = len(z) - int(np.linalg.matrix_rank(design))
    if dof <= 0:
        return None
    coef, *_ = np.linalg.lstsq(design, z, rcond=None)
    fitted = design @ coef
    return cells, fitted, float(((fitted - z) ** 2).sum()), dof


def _window_residuals(lr_grid: Sequence[float], wd_grid: Sequence[float], grid: np.ndarray) -> tuple[float, int]:
    """``(residual sum of squares, degrees of freedom)`` of :func:`_window_fit` ((0, 0) without one)."""
    fit = _window_fit(lr_grid, wd_grid, grid)
    return (0.0, 0) if fit is None else fit[2:]


def smoothed_grid(lr_grid: Sequence[float], wd_grid: Sequence[float], grid: np.ndarray) -> np.ndarray:
    """``grid`` with the cells of :func:`_window_fit` replaced by the fitted quadratic: the bootstrap's model of the
    expected losses around the optimum (``grid`` itself when there is no fit)."""
    fit = _window_fit(lr_grid, wd_grid, grid)
    out = np.array(grid, float)
    if fit is not None:
        for cell, value in zip(fit[0], fit[1], strict=True):
            out[cell] = value
    return out


def _slopes(widths: Sequence[int], grids: Sequence[np.ndarray], lr_grid: Sequence[float],
            wd_grid: Sequence[float]) -> dict[str, float]:
    """The :func:`_drift` slopes of the :func:`fit_optimum` optima of ``grids`` (``wd`` only when the WD is varied)."""
    fits = [fit_optimum(lr_grid, wd_grid, g) for g in grids]
    out = {"lr": _drift(widths, [f["lr"] for f in fits], lr_grid)[0]}
    if len(wd_grid) > 1:
        out["wd"] = _drift(widths, [f["weight_decay"] for f in fits], wd_grid)[0]
    return out


def bootstrap_intervals(widths: Sequence[int], grids: Sequence[np.ndarray], counts: Sequence[np.ndarray],
                        lr_grid: Sequence[float], wd_grid: Sequence[float], sigma: float, draws: int = 200,
                        seed: int = 0) -> dict[str, list[float]]:
    """:data:`CONFIDENCE` intervals of the optimum's drift slopes (``{"lr": [lo, hi], "wd": [lo, hi]}``, ``wd`` only
    when the WD is varied), by a parametric bootstrap of the seed-mean loss grids ``grids``.

    The model of the expected losses is each width's :func:`smoothed_grid`; a replicate adds independent noise
    ``N(0, sigma^2 / n)`` to every finite cell (``n``: the cell's completed seeds, ``counts``; ``sigma``:
    :func:`loss_noise`), re-finds each width's optimum with :func:`fit_optimum` (the best grid point may move, as
    grid noise moves it) and refits the slopes. The interval is the basic (pivotal) bootstrap one: the observed slope
    minus the replicates' quantiles of their deviation from the model's own slope (our choice: it covered a planted
    slope at about the nominal rate where the plain percentile interval, drawn around the noisy grid, over-covered).
    ``seed`` fixes the RNG, so ``analyze`` is deterministic."""
    rng = np.random.default_rng(seed)
    observed = _slopes(widths, grids, lr_grid, wd_grid)
    model = [smoothed_grid(lr_grid, wd_grid, g) for g in grids]
    centre = _slopes(widths, model, lr_grid, wd_grid)
    scales = [sigma / np.sqrt(np.maximum(n, 1)) for n in counts]
    samples: dict[str, list[float]] = {k: [] for k in observed}
    for _ in range(draws):
        noisy = [g + rng.standard_normal(g.shape) * s for g, s in zip(model, scales, strict=True)]
        for k, v in _slopes(widths, noisy, lr_grid, wd_grid).items():
            samples[k].append(v - centre[k])
    quantiles = ((1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2)
    out = {}
    for k, deviations in samples.items():
        lo, hi = np.quantile(deviations, quantiles)
        out[k] = [float(observed[k] - hi), float(observed[k] - lo)]
    return out


def _slope_entry(slope: float, steps: float, ci: Sequence[float] | None) -> dict[str, Any]:
    return {"slope": slope, "ci": None if ci is None else list(ci), "steps_per_doubling": steps,
            "factor_per_doubling": 2 ** slope, "factor_ci": None if ci is None else [2 ** ci[0], 2 ** ci[1]]}


def _ci_text(entry: Mapping[str, Any]) -> str:
    if entry["ci"] is None:
        return ""
    lo, hi = entry["factor_ci"]
    return f", {CONFIDENCE:.0%} CI x{lo:.2g}..x{hi:.2g}"


def transfer_verdict(widths: Sequence[int], lrs: Sequence[float], wds: Sequence[float], lr_grid: Sequence[float],
                     wd_grid: Sequence[float], *, edges: Sequence[str] = (),
                     intervals: Mapping[str, Sequence[float] | None] | None = None,
                     noise: str = "") -> dict[str, Any]:
    """Does the optimum (``lrs``/``wds`` at ``widths``) stay put as width grows?

    Slopes: least squares of ``log2(optimum)`` on ``log2(width)`` (:func:`_drift`), a factor ``2^slope`` per width
    doubling; ``intervals`` are their confidence intervals (``{"lr": [lo, hi], "wd": ...}``, from
    :func:`bootstrap_intervals`; missing: unknown). The tolerance is ``|slope| <= log2(TRANSFER_FACTOR)``. Verdict:

    - ``inconclusive`` when ``edges`` (reasons from :func:`edge_reasons`: an optimum on a grid edge pins the slope,
      often to exactly 0) is not empty, with fewer than two widths or an LR grid of one value;
    - else ``drifts`` when the interval of the LR or (varied) WD slope lies entirely outside the tolerance;
    - else ``transfers`` when every interval lies entirely inside it;
    - else ``inconclusive`` (an interval straddles the tolerance, or is unknown: ``noise`` says why).

    Returns ``verdict``, ``reasons`` (strings), ``summary`` and ``slopes`` (``lr``/``wd``: ``slope``, ``ci``,
    ``steps_per_doubling``, ``factor_per_doubling``, ``factor_ci``; ``None`` where not measured).
    """
    out: dict[str, Any] = {"verdict": "inconclusive", "reasons": list(edges), "slopes": {"lr": None, "wd": None}}
    n = len(set(widths))
    if n < 2 or grid_ratio(lr_grid) is None:
        out["reasons"].append("the LR is not varied" if grid_ratio(lr_grid) is None else
                              f"an optimum at {n} width{'s' * (n != 1)}: the drift needs two or more")
        out["summary"] = "inconclusive: " + "; ".join(out["reasons"])
        return out
    intervals = intervals or {}
    tol = math.log2(TRANSFER_FACTOR)
    states = {}
    for name, values, grid in (("lr", lrs, lr_grid), ("wd", wds, wd_grid)):
        if grid_ratio(grid) is None:
            continue
        entry = _slope_entry(*_drift(widths, values, grid), intervals.get(name))
        out["slopes"][name] = entry
        ci, label = entry["ci"], name.upper()
        if ci is None:
            states[name] = "unknown"
            out["reasons"].append(f"no confidence interval for the {label} slope: {noise or 'no noise estimate'}")
            continue
        shown = f"{label} slope's {CONFIDENCE:.0%} interval [{ci[0]:+.2f}, {ci[1]:+.2f}] per doubling"
        if -tol <= ci[0] and ci[1] <= tol:
            states[name] = "inside"
        elif ci[0] > tol or ci[1] < -tol:
            states[name] = "outside"
            out["reasons"].append(f"the {shown} lies outside the tolerance +-{tol:.2f} (x{TRANSFER_FACTOR:g})")
        else:
            states[name] = "straddles"
            out["reasons"].append(f"the {shown} straddles the tolerance +-{tol:.2f} (x{TRANSFER_FACTOR:g}): add "
                                  "seeds or widths")
    if edges:
        verdict = "inconclusive"
    elif "outside" in states.values():
        verdict = "drifts"
    elif all(s == "inside" for s in states.values()):
        verdict = "transfers"
    else:
        verdict = "inconclusive"
    out["verdict"] = verdict
    lr, wd = out["slopes"]["lr"], out["slopes"]["wd"]
    text = (f"optimal LR moves {_signed(lr['steps_per_doubling'])} grid steps (x{lr['factor_per_doubling']:.2g}"
            f"{_ci_text(lr)}) per width doubling")
    if wd is not None:
        text += f", WD {_signed(wd['steps_per_doubling'])} steps (x{wd['factor_per_doubling']:.2g}{_ci_text(wd)})"
    out["summary"] = f"{text}: {verdict}"
    return out


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

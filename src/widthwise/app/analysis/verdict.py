"""Whether a family's optimum transfers across widths: drift slopes per doubling with bootstrap intervals, grid
edges that leave the drift unmeasured, and the verdict ``transfers`` | ``drifts`` | ``inconclusive`` with reasons."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .families import Family, grid_ratio, log_position
from .fits import fit_line
from .optimum import best_grid_point, fit_optimum

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
VERDICTS = ("transfers", "drifts", "inconclusive")


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

"""Where the loss is lowest on one width's LR x WD grid: the best grid point, a sub-grid quadratic optimum in
log LR / log WD that never extrapolates past the grid, and the ridge of best LR per WD value (the diagonal ridge
of near-optimal (LR, WD) of Fan et al., arXiv 2510.15262)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .families import grid_ratio, log_position


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

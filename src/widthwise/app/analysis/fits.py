"""Least-squares lines: the one fit behind every slope widthwise reports (power laws in width, drift per doubling)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LineFit", "fit_line"]


@dataclass(frozen=True)
class LineFit:
    """``y ~ intercept + slope * x``: ``r2``, the residual standard deviation and the slope's standard error."""

    slope: float
    intercept: float
    r2: float
    residual_std: float
    slope_se: float
    n: int


def fit_line(x: Sequence[float], y: Sequence[float]) -> LineFit:
    """Ordinary least squares of ``y`` on ``x``; ``ValueError`` unless ``x`` has two distinct values.

    A power law ``v ~ w^p`` is ``fit_line(log w, log v)`` (``slope = p``). With two points the fit is exact and
    ``residual_std`` and ``slope_se`` are 0 (nothing measures the noise).
    """
    if len(x) != len(y):
        raise ValueError(f"fit: {len(x)} x values but {len(y)} y values")
    if len(set(x)) < 2:
        raise ValueError(f"fit: a line needs two distinct x values, got {sorted(set(x))}")
    n, mx, my = len(x), statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
    intercept = my - slope * mx
    ss_res = sum((b - intercept - slope * a) ** 2 for a, b in zip(x, y, strict=True))
    ss_tot = sum((b - my) ** 2 for b in y)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 1e-300 else 1.0
    std = math.sqrt(ss_res / (n - 2)) if n > 2 else 0.0
    return LineFit(slope, intercept, r2, std, std / math.sqrt(sxx), n)

"""``widthwise calibrate``: measure how sigma_max (or the sublayer gain) scales with width, solve for the WD exponent.

Fan et al. 2025 (arXiv 2510.15262) find that in steady state a hidden matrix's top singular value behaves as
``sigma_max ~ sqrt(eta/lam) * d^alpha`` (``alpha = 0.75`` for AdamW on LLaMA), the sublayer gain alike. This module
does not assume the ``sqrt(eta/lam)``: it measures ``sigma_max ~ eta^a * lam^-b`` in a 2x2 (LR, WD) design at one
width (:func:`fit_lr_wd_exponents`), fits ``sigma_max ~ d^p`` over runs at several widths under a recipe with
``eta ~ d^-e_lr`` and ``lam ~ d^e_wd`` (:func:`fit_width_exponent`), and derives the WD exponent that holds the
metric width-invariant at the same LR exponent, ``e_wd* = e_wd + p/b`` (:func:`derived_wd_exponent`; our derivation
from Fan et al.'s law, which is its ``a = b = 1/2`` case ``e_wd + 2p``). Without the (LR, WD) runs the paper's
``a = b = 1/2`` is assumed and the result says so.

The fitted matrix is by default the stored ``V`` (``weights="stored"``): the equilibrium that sets the law pins the
trained tensor, while learnable multipliers (``W = diag(r) V diag(c)``, arXiv 2601.04890) exist to escape it;
``weights="effective"`` fits the applied ``W``. Without multipliers the two are one matrix. Layer types are fitted
one by one and pooled on log scale with inverse-variance weights (:func:`pool_estimates`). The runs come from the
sweep driver as result rows.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ...diagnostics.naming import sort_layer_types
from ...errors import SweepError
from ...recipes import Recipe
from ..atomic import atomic_savefig, atomic_write_text
from ..config import config_keys, from_dict
from ..plotting import colormap, subplots
from ..setup import load_recipe
from .fits import fit_line

#: ``metric`` -> ``weights`` -> the per-layer-type key of a sweep result row (``row["layer_types"][t]``).
METRICS = {"sigma_max": {"stored": "sigma_max_stored", "effective": "sigma_max"},
           "gain": {"effective": "sublayer_gain"}}
WEIGHTS = ("stored", "effective")
#: Config keys that may differ between the runs of one calibration: the width, its heads and what a run resolves
#: from it (forward multipliers), the seed, runtime settings.
FREE_KEYS = config_keys("width", "forward", "seed", "runtime")
#: Config keys the (LR, WD) premise runs vary, besides :data:`FREE_KEYS`.
PREMISE_KEYS = ("optim.lr", "optim.muon_lr", "optim.weight_decay")
POOLED = "pooled"
#: The paper's premise ``sigma_max ~ sqrt(eta/lam)``: ``(a, b) = (1/2, 1/2)``, used when no premise runs are given.
ASSUMED_PREMISE = (0.5, 0.5)
#: Smallest standard error a pooling weight uses (exponent units): a lucky exact fit of 3-4 points must not take
#: all the weight (:func:`pool_estimates`).
SE_FLOOR = 0.01


def intrinsic_exponent(measured: float, lr_exponent: float, wd_exponent: float, a: float = 0.5,
                       b: float = 0.5) -> float:
    """``alpha = p + a e_lr + b e_wd``: the width exponent of the metric at fixed ``eta`` and ``lam``.

    With ``metric ~ eta^a lam^-b d^alpha`` (Fan et al. 2025, arXiv 2510.15262: ``a = b = 1/2``), a run with
    ``eta ~ d^-e_lr`` and ``lam ~ d^e_wd`` sees ``metric ~ d^p``, ``p = alpha - a e_lr - b e_wd``. A width-invariant
    robust run (``p = 0``, ``e_lr = 1``, ``e_wd = 0.5``) gives the paper's ``alpha = 0.75``.
    """
    return measured + a * lr_exponent + b * wd_exponent


def invariant_wd_exponent(alpha: float, lr_exponent: float, a: float = 0.5, b: float = 0.5) -> float:
    """``e_wd* = (alpha - a e_lr) / b``: the WD exponent that makes ``eta^a lam^-b d^alpha`` width-invariant.

    ``a = b = 1/2`` is Fan et al.'s ``2 alpha - e_lr`` (arXiv 2510.15262): with ``eta ~ d^-1`` (muP) and
    ``alpha = 0.75``, ``lam ~ d^0.5``, their robust rule.
    """
    return (alpha - a * lr_exponent) / b


def derived_wd_exponent(p: float, wd_exponent: float, b: float, p_se: float = 0.0,
                        b_se: float = 0.0) -> tuple[float, float]:
    """``(e_wd*, standard error)`` with ``e_wd* = e_wd + p / b``: the WD exponent that holds the metric width-invariant.

    Our derivation from Fan et al.'s law (arXiv 2510.15262) with measured instead of assumed exponents. Let the
    steady-state metric of a hidden matrix be ``sigma = C eta^a lam^-b d^alpha`` (the paper: ``a = b = 1/2``,
    ``alpha = 0.75``). A recipe sets ``eta = eta_0 m^-e_lr``, ``lam = lam_0 m^e_wd`` with ``m = d / d_0``, so
    ``sigma ~ m^-(a e_lr) m^-(b e_wd) d^alpha`` and the runs at several widths measure ``sigma ~ d^p`` with

        p = alpha - a e_lr - b e_wd.

    Keeping ``e_lr`` and replacing ``e_wd`` by ``e_wd*`` gives ``sigma ~ d^(alpha - a e_lr - b e_wd*)``; width
    invariance needs ``alpha - a e_lr - b e_wd* = 0``, i.e. ``e_wd* = (alpha - a e_lr) / b = (p + b e_wd) / b``:

        e_wd* = e_wd + p / b.

    ``a`` drops out (the LR exponent is kept) and only ``b``, the WD response, converts the measured width slope into
    a WD exponent change; ``a = b = 1/2`` gives today's ``e_wd + 2p`` (``= 2 alpha - e_lr``). ``p`` (width runs) and
    ``b`` (LR x WD runs) come from disjoint runs, so their errors are independent:
    ``se^2 = (p_se / b)^2 + (p b_se / b^2)^2`` (first order). :class:`SweepError` unless ``b > 0``: a WD that does
    not lower the metric cannot hold it invariant.
    """
    if not (math.isfinite(b) and b > 0):
        raise SweepError(f"the measured WD exponent b = {b:g} of metric ~ lam^-b is not positive: weight "
                         "decay does not lower the metric in these runs (not in steady state?), so no WD exponent "
                         "holds it width-invariant; raise the steps or optim.weight_decay, or assume b = 1/2")
    value = wd_exponent + p / b
    se = math.hypot(p_se / b, p * b_se / b**2)
    return value, se


@dataclass(frozen=True)
class Pooled:
    """An inverse-variance weighted mean: ``value``, its ``se``, the normalised ``weights`` and the Birge ratio."""

    value: float
    se: float
    weights: dict[str, float]
    birge: float  # sqrt(chi2 / (k - 1)) of the estimates around the mean (1 with one estimate)


def pool_estimates(estimates: Mapping[str, float], ses: Mapping[str, float], floor: float = SE_FLOOR) -> Pooled:
    """Inverse-variance weighted mean of per-layer-type estimates (exponents: slopes on log scale).

    Weights ``w_t = 1 / max(se_t, floor)^2``; mean ``sum w_t x_t / sum w_t``; standard error
    ``max(1, R) / sqrt(sum w_t)`` with the Birge ratio ``R = sqrt(sum w_t (x_t - mean)^2 / (k - 1))``: when the
    layer types scatter more than their own errors say (they are different matrices), the error is scaled up to
    that scatter rather than shrinking with the number of layer types.
    """
    if not estimates:
        raise SweepError("nothing to pool: no layer type was measured")
    w = {t: 1.0 / max(float(ses[t]), floor) ** 2 for t in estimates}
    total = sum(w.values())
    mean = sum(w[t] * estimates[t] for t in estimates) / total
    k = len(estimates)
    birge = math.sqrt(sum(w[t] * (estimates[t] - mean) ** 2 for t in estimates) / (k - 1)) if k > 1 else 1.0
    return Pooled(mean, max(1.0, birge) / math.sqrt(total), {t: v / total for t, v in w.items()}, birge)


def recipe_exponents(recipe: Recipe, optimizer: str, adjust_lr_fn: str | None = None) -> tuple[float, float]:
    """``(e_lr, e_wd)`` of the hidden matrices under ``optimizer`` as the plan resolves them: :meth:`Recipe.exponents`.

    The algebra of arXiv 2510.15262 (:func:`intrinsic_exponent`) applies to these exponents. Under Muon ``eta`` is
    its nominal LR (before ``adjust_lr_fn``'s shape factor, which ``alpha`` then absorbs); the derived WD exponent
    ``e_wd + 2p`` does not depend on that convention.
    """
    return recipe.exponents(optimizer, adjust_lr_fn)


@dataclass(frozen=True)
class Fit:
    """Least squares ``log(value) = intercept + exponent * log(width)`` (natural logs).

    ``residual_std`` is the residuals' standard deviation in log units (``n - 2`` degrees of freedom; 0 with
    ``n = 2``), ``exponent_se`` the exponent's standard error.
    """

    exponent: float
    intercept: float
    r2: float
    residual_std: float
    exponent_se: float
    n: int

    def predict(self, width: float) -> float:
        return math.exp(self.intercept) * width**self.exponent

    def to_dict(self) -> dict[str, float | int]:
        return {"exponent": self.exponent, "intercept": self.intercept, "r2": self.r2,
                "residual_std": self.residual_std, "exponent_se": self.exponent_se, "n": self.n}


def fit_width_exponent(widths: Sequence[float], values: Sequence[float | None]) -> Fit:
    """The power law ``value ~ width^exponent`` through the finite positive values (others are left out).

    :class:`SweepError` (a ``ValueError``) unless the values cover at least 3 distinct widths.
    """
    if len(widths) != len(values):
        raise SweepError(f"fit: {len(widths)} widths but {len(values)} values")
    pairs = [(float(w), float(v)) for w, v in zip(widths, values, strict=True)
             if _positive(w) and _positive(v)]
    distinct = sorted({w for w, _ in pairs})
    if len(distinct) < 3:
        dropped = len(values) - len(pairs)
        raise SweepError(f"a width exponent needs finite positive values at >= 3 distinct widths, got "
                         f"{len(distinct)} ({', '.join(f'{w:g}' for w in distinct) or 'none'})"
                         + (f"; {dropped} missing or non-positive values left out" if dropped else ""))
    line = fit_line([math.log(w) for w, _ in pairs], [math.log(v) for _, v in pairs])
    return Fit(line.slope, line.intercept, line.r2, line.residual_std, line.slope_se, line.n)


@dataclass(frozen=True)
class PremiseFit:
    """Least squares ``log(value) = intercept + a log(eta) - b log(lam)`` (natural logs) over (LR, WD) points.

    ``residual_std`` is in log units with ``n - 3`` degrees of freedom (0, and the errors 0, when ``n = 3``);
    ``a_se`` and ``b_se`` are the standard errors. A pooled premise (:func:`pool_estimates` of the layer types')
    has no intercept or residual of its own (``None``); an assumed one has ``n = 0``.
    """

    a: float
    b: float
    a_se: float
    b_se: float
    intercept: float | None
    residual_std: float | None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "a_se": self.a_se, "b": self.b, "b_se": self.b_se, "intercept": self.intercept,
                "residual_std": self.residual_std, "n": self.n}


def fit_lr_wd_exponents(lrs: Sequence[float], wds: Sequence[float], values: Sequence[float]) -> PremiseFit:
    """``value ~ lr^a * wd^-b`` by least squares on log scale (intercept, ``a``, ``b``): the measured premise.

    With Fan et al.'s ``sigma_max ~ sqrt(eta/lam)`` (arXiv 2510.15262) ``a = b = 1/2``. A 2x2 design (LR x {1, 2},
    WD x {1, 2}) gives 4 points for 3 parameters: one degree of freedom for the residual. :class:`SweepError`
    unless the values are finite and positive and the points vary LR and WD independently.
    """
    if not len(lrs) == len(wds) == len(values):
        raise SweepError(f"premise fit: {len(lrs)} LRs, {len(wds)} WDs and {len(values)} values")
    if not all(_positive(v) for v in (*lrs, *wds, *values)):
        raise SweepError("premise fit: LRs, WDs and values must be finite and positive")
    x1 = [math.log(v) for v in lrs]
    x2 = [-math.log(v) for v in wds]
    y = [math.log(v) for v in values]
    n = len(y)
    m1, m2, my = statistics.fmean(x1), statistics.fmean(x2), statistics.fmean(y)
    s11 = sum((u - m1) ** 2 for u in x1)
    s22 = sum((u - m2) ** 2 for u in x2)
    s12 = sum((u - m1) * (v - m2) for u, v in zip(x1, x2, strict=True))
    s1y = sum((u - m1) * (v - my) for u, v in zip(x1, y, strict=True))
    s2y = sum((u - m2) * (v - my) for u, v in zip(x2, y, strict=True))
    det = s11 * s22 - s12**2
    if n < 3 or det <= 1e-12 * max(s11 * s22, 1e-300):
        raise SweepError(f"premise fit: {n} (LR, WD) points do not vary LR and WD independently; a 2x2 design "
                         "(LR x {1, 2}, WD x {1, 2}) is the smallest that does")
    a = (s22 * s1y - s12 * s2y) / det
    b = (s11 * s2y - s12 * s1y) / det
    intercept = my - a * m1 - b * m2
    ss_res = sum((v - intercept - a * u - b * w) ** 2 for u, w, v in zip(x1, x2, y, strict=True))
    var = ss_res / (n - 3) if n > 3 else 0.0
    return PremiseFit(a, b, math.sqrt(var * s22 / det), math.sqrt(var * s11 / det), intercept, math.sqrt(var), n)


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@dataclass(frozen=True)
class LayerCalibration:
    """One layer type's (or the pooled) measurement: seed-mean values per width, fit, the premise ``(a, b)`` it
    used, ``alpha`` and ``e_wd*`` (``None`` where its ``b`` is not positive) with its standard error."""

    name: str
    widths: list[int]
    values: list[float]
    fit: Fit
    a: float
    b: float
    alpha: float
    wd_exponent: float | None  # e_wd*: the exponent that would hold this layer type's metric width-invariant
    wd_exponent_se: float | None
    weight: float = 1.0  # its share of the pooled estimate (pooled: 1)

    def to_dict(self) -> dict[str, Any]:
        return {"widths": self.widths, "values": self.values, "fit": self.fit.to_dict(), "a": self.a, "b": self.b,
                "alpha": self.alpha, "wd_exponent": self.wd_exponent, "wd_exponent_se": self.wd_exponent_se,
                "weight": self.weight}


@dataclass(frozen=True)
class Premise:
    """``metric ~ lr^a * wd^-b``: measured (:func:`fit_lr_wd_exponents` per layer type, pooled) or assumed (1/2, 1/2).

    ``points`` are the (LR, WD) of the runs at ``width``, base values (the hidden matrices' LR: Muon's
    ``optim.muon_lr`` where set); ``values`` per layer type the seed means at those points.
    """

    measured: bool
    pooled: PremiseFit
    width: int | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    layers: dict[str, PremiseFit] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"measured": self.measured, "width": self.width, "points": [list(p) for p in self.points],
                "pooled": self.pooled.to_dict(), "layers": {t: f.to_dict() for t, f in self.layers.items()},
                "values": self.values}


def assumed_premise() -> Premise:
    a, b = ASSUMED_PREMISE
    return Premise(False, PremiseFit(a, b, 0.0, 0.0, None, None, 0))


@dataclass
class Calibration:
    """The result of :func:`calibrate_rows`: fits, derived exponents and the calibrated recipe."""

    metric: str
    weights: str  # stored | effective: which matrix the metric was measured on
    optimizer: str
    base_recipe: Recipe
    recipe: Recipe  # the base recipe with exponent_field set to the derived exponent
    exponent_field: str  # wd_exponent | muon_wd_exponent
    lr_exponent: float  # e_lr and e_wd the runs used (Muon's for optimizer muon)
    wd_exponent: float
    derived_exponent: float  # pooled e_wd*, rounded to 3 decimals
    derived_exponent_se: float
    base_width: int
    widths: list[int]
    seeds: dict[int, int]  # runs averaged per width
    pooled: LayerCalibration
    layers: dict[str, LayerCalibration]
    premise: Premise = field(default_factory=assumed_premise)
    skipped: list[str] = field(default_factory=list)  # layer types not measured at every width
    warnings: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def alpha(self) -> float:
        return self.pooled.alpha

    @property
    def metric_label(self) -> str:
        """The fitted quantity in words: ``sigma_max of the stored V`` etc."""
        what = {"stored": "stored V", "effective": "effective diag(r) V diag(c)"}[self.weights]
        return f"{self.metric} of the {what}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "weights": self.weights, "optimizer": self.optimizer,
                "base_recipe": self.base_recipe.to_dict(), "recipe": self.recipe.to_dict(),
                "exponent_field": self.exponent_field, "lr_exponent": self.lr_exponent,
                "wd_exponent": self.wd_exponent, "alpha": self.alpha, "derived_exponent": self.derived_exponent,
                "derived_exponent_se": self.derived_exponent_se, "base_width": self.base_width,
                "widths": self.widths, "seeds": {str(w): n for w, n in self.seeds.items()},
                "premise": self.premise.to_dict(), "pooled": self.pooled.to_dict(),
                "layers": {t: c.to_dict() for t, c in self.layers.items()}, "skipped": self.skipped,
                "warnings": self.warnings, "note": self.note}


def _flat(config: Mapping[str, Any]) -> dict[str, str]:
    return {f"{s}.{k}": json.dumps(v, sort_keys=True, default=str) for s, section in config.items()
            if isinstance(section, Mapping) for k, v in section.items()}


def _check_one_experiment(rows: list[dict[str, Any]], free: Sequence[str] = FREE_KEYS,
                          what: str = "width and seed") -> None:
    """The rows must share recipe and optimizer, and their configs differ only in ``free`` keys."""
    for key in ("recipe", "optimizer"):
        seen = sorted({str(r.get(key)) for r in rows})
        if len(seen) > 1:
            raise SweepError(f"calibration needs runs of one recipe and optimizer; the rows hold {key}s "
                             f"{', '.join(seen)}: pass the rows of one family")
    flats = [_flat(r["config"]) for r in rows]
    for key in sorted(set().union(*flats) - set(free)):
        seen = sorted({f.get(key, "<missing>") for f in flats})
        if len(seen) > 1:
            raise SweepError(f"calibration runs must differ only in {what}; {key} takes "
                             f"{', '.join(seen[:4])}{' ...' if len(seen) > 4 else ''}: pass the rows of one point")


def _seed_means(rows: list[dict[str, Any]], get, key=lambda r: int(r["width"])) -> tuple[list, list[float]]:
    by_key: dict[Any, list[float]] = {}
    for r in rows:
        value = get(r)
        if _positive(value):
            by_key.setdefault(key(r), []).append(float(value))
    keys = sorted(by_key)
    return keys, [statistics.fmean(by_key[k]) for k in keys]


def _layer_value(layer_key: str):
    return lambda r, t: ((r.get("layer_types") or {}).get(t) or {}).get(layer_key)


def resolve_weights(metric: str, weights: str | None) -> str:
    """``weights`` checked against ``metric`` (``None``: ``stored`` for sigma_max, ``effective`` for the gain)."""
    if metric not in METRICS:
        raise SweepError(f"calibration metric {metric!r}: expected one of {', '.join(METRICS)}")
    if weights is None:
        return "stored" if "stored" in METRICS[metric] else "effective"
    if weights not in WEIGHTS:
        raise SweepError(f"calibration weights {weights!r}: expected one of {', '.join(WEIGHTS)}")
    if weights not in METRICS[metric]:
        raise SweepError(f"calibration metric {metric} is measured on the {', '.join(METRICS[metric])} weights "
                         f"only, not {weights}: the sublayer gain is what the layer applies")
    return weights


def hidden_lr(config: Mapping[str, Any]) -> float:
    """The hidden matrices' base LR in a row's config: ``optim.muon_lr`` under Muon where set, else ``optim.lr``."""
    optim = config["optim"]
    if optim.get("name") == "muon" and optim.get("muon_lr") is not None:
        return float(optim["muon_lr"])
    return float(optim["lr"])


def measure_premise(rows: list[dict[str, Any]], reference: list[dict[str, Any]], layer_key: str,
                    types: Sequence[str]) -> Premise:
    """Fit ``metric ~ lr^a * wd^-b`` per layer type in ``types`` over the premise runs ``rows`` (one width, an
    (LR, WD) design, seeds averaged per point) and pool ``a`` and ``b`` with :func:`pool_estimates`.

    The runs must be the experiment of ``reference`` (the width runs) but for width, LR, WD and seed.
    """
    done = [r for r in rows if r.get("status") == "completed"]
    if not done:
        raise SweepError(f"the (LR, WD) premise needs completed runs; got {len(rows)} rows, none completed")
    _check_one_experiment(done + reference[:1], (*FREE_KEYS, *PREMISE_KEYS), "width, LR, WD and seed")
    widths = sorted({int(r["width"]) for r in done})
    if len(widths) != 1:
        raise SweepError(f"the (LR, WD) premise runs must share one width, got {widths}")
    point = lambda r: (hidden_lr(r["config"]), float(r["config"]["optim"]["weight_decay"]))  # noqa: E731
    get = _layer_value(layer_key)
    layers, values, points = {}, {}, []
    for t in types:
        pts, vals = _seed_means(done, lambda r, t=t: get(r, t), key=point)
        if len({p[0] for p in pts}) < 2 or len({p[1] for p in pts}) < 2:
            continue
        layers[t] = fit_lr_wd_exponents([p[0] for p in pts], [p[1] for p in pts], vals)
        values[t], points = vals, pts
    if not layers:
        raise SweepError(f"the (LR, WD) premise needs {layer_key} at 2 LRs x 2 WDs at width {widths[0]}; the "
                         "completed runs do not measure it there")
    pa = pool_estimates({t: f.a for t, f in layers.items()}, {t: f.a_se for t, f in layers.items()})
    pb = pool_estimates({t: f.b for t, f in layers.items()}, {t: f.b_se for t, f in layers.items()})
    n = sum(f.n for f in layers.values())
    return Premise(True, PremiseFit(pa.value, pb.value, pa.se, pb.se, None, None, n), widths[0], points, layers,
                   values)


def _layer(name: str, widths: list[int], values: list[float], fit: Fit, premise: PremiseFit, e_lr: float,
           e_wd: float, weight: float = 1.0) -> LayerCalibration:
    alpha = intrinsic_exponent(fit.exponent, e_lr, e_wd, premise.a, premise.b)
    if premise.b > 0:
        wd, se = derived_wd_exponent(fit.exponent, e_wd, premise.b, fit.exponent_se, premise.b_se)
    else:
        wd = se = None
    return LayerCalibration(name, widths, values, fit, premise.a, premise.b, alpha, wd, se, weight)


def calibrate_rows(rows: list[dict[str, Any]], metric: str = "sigma_max", weights: str | None = None,
                   premise_rows: list[dict[str, Any]] | None = None) -> Calibration:
    """Fit the metric's width exponent over completed sweep rows and derive the width-invariant WD exponent.

    ``rows`` are result rows (:func:`widthwise.app.sweep.store.read_results`) of one experiment at >= 3 widths:
    one recipe and optimizer, configs that differ only in width and seed (seeds are averaged per width). Each
    hidden layer type (``row["layer_types"]``) measured at every width is fitted, on the stored ``V``
    (``weights="stored"``, the default for sigma_max) or the effective weight; the pooled exponent is their
    inverse-variance weighted mean (:func:`pool_estimates`), the pooled values per width the weighted geometric mean.
    ``premise_rows`` (runs at one width in an (LR, WD) design, :func:`measure_premise`) measure
    ``metric ~ lr^a wd^-b``; without them ``a = b = 1/2`` is assumed. The new recipe takes the pooled
    ``e_wd + p/b`` (:func:`derived_wd_exponent`). :class:`SweepError` otherwise.
    """
    weights = resolve_weights(metric, weights)
    layer_key = METRICS[metric][weights]
    done = [r for r in rows if r.get("status") == "completed"]
    if not done:
        raise SweepError(f"calibration needs completed runs; got {len(rows)} rows, none completed")
    _check_one_experiment(done)
    config = from_dict(done[0]["config"])
    base = load_recipe(config)
    optimizer = config.optim.name
    e_lr, e_wd = recipe_exponents(base, optimizer, config.optim.adjust_lr_fn)
    get = _layer_value(layer_key)
    types = sort_layer_types({t for r in done for t in (r.get("layer_types") or {})})
    measured = {t: _seed_means(done, lambda r, t=t: get(r, t)) for t in types}
    widths = sorted({w for lw, _ in measured.values() for w in lw})
    if len(widths) < 3:
        hint = (" (rows collected before widthwise recorded the stored V's sigma_max: pass weights effective)"
                if weights == "stored" else "")
        raise SweepError(f"calibration needs {layer_key} at >= 3 widths, the completed runs measure it at "
                         f"{', '.join(map(str, widths)) or 'none'}: add widths (and keep diagnostics on){hint}")
    fitted = {t: (lw, lv) for t, (lw, lv) in measured.items() if lw == widths}
    skipped = [t for t in types if t not in fitted]
    fits = {t: fit_width_exponent(lw, lv) for t, (lw, lv) in fitted.items()}
    if premise_rows is None:
        premise = assumed_premise()
    else:
        premise = measure_premise(premise_rows, done, layer_key, list(fitted))
    pool = pool_estimates({t: f.exponent for t, f in fits.items()}, {t: f.exponent_se for t, f in fits.items()})
    layers = {t: _layer(t, widths, fitted[t][1], fits[t], premise.layers.get(t, premise.pooled), e_lr, e_wd,
                        pool.weights[t]) for t in fitted}
    # on log scale the pooled values' OLS slope is exactly the weighted mean of the slopes (same widths)
    pooled_values = [math.exp(sum(pool.weights[t] * math.log(fitted[t][1][i]) for t in fitted))
                     for i in range(len(widths))]
    pooled_fit = replace(fit_width_exponent(widths, pooled_values), exponent=pool.value, exponent_se=pool.se)
    pooled = _layer(POOLED, widths, pooled_values, pooled_fit, premise.pooled, e_lr, e_wd)
    if pooled.wd_exponent is None:
        derived_wd_exponent(pool.value, e_wd, premise.pooled.b)  # raises, naming b
    derived = round(pooled.wd_exponent, 3) + 0.0
    exponent_field = "muon_wd_exponent" if optimizer == "muon" else "wd_exponent"
    changes: dict[str, Any] = {"name": f"calibrated-{base.name}", exponent_field: derived}
    if optimizer == "muon":  # pin the LR exponent the derivation assumed (else adjust_lr_fn decides it)
        changes["muon_lr_exponent"] = e_lr
    first = next(iter(fitted))
    seeds = {w: sum(1 for r in done if int(r["width"]) == w and _positive(get(r, first))) for w in widths}
    base_width = int(done[0].get("base_width") or config.scaling.base_width or widths[0])
    cal = Calibration(metric, weights, optimizer, base, replace(base, **changes), exponent_field, e_lr, e_wd, derived,
                      pooled.wd_exponent_se, base_width, widths, seeds, pooled, layers, premise, skipped)
    cal.warnings = _warnings(cal)
    cal.note = _note(cal)
    return cal


def _warnings(cal: Calibration) -> list[str]:
    out = []
    fit = cal.pooled.fit
    if fit.r2 < 0.8 and fit.residual_std > 0.05:
        out.append(f"the pooled power law fits poorly (r2={fit.r2:.2f}): the exponent is uncertain")
    if fit.exponent_se > 0.1:
        out.append(f"the pooled exponent's standard error is {fit.exponent_se:.2f}: add widths or seeds")
    spread = [t for t, c in cal.layers.items()
              if c.wd_exponent is None or abs(c.wd_exponent - cal.pooled.wd_exponent) > 0.25]
    if spread:
        out.append(f"layer types disagree with the pooled exponent by more than 0.25: {', '.join(spread)}")
    pre = cal.premise.pooled
    if not cal.premise.measured:
        out.append("the premise sigma ~ sqrt(lr/wd) (a = b = 1/2) is assumed, not measured")
    elif pre.b < 2 * pre.b_se:
        out.append(f"the measured WD exponent b = {pre.b:.3f} ± {pre.b_se:.3f} is not clearly positive: the derived "
                   "exponent is unreliable")
    if cal.derived_exponent < 0:
        out.append(f"the derived {cal.exponent_field} {cal.derived_exponent} is negative: WD would shrink with width")
    return out


def _note(cal: Calibration) -> str:
    pre = cal.premise.pooled
    premise = (f"measured at width {cal.premise.width} from an (lr, wd) design: {cal.metric} ~ lr^a wd^-b with "
               f"a = {pre.a:.3f} ± {pre.a_se:.3f}, b = {pre.b:.3f} ± {pre.b_se:.3f}" if cal.premise.measured else
               "assumed, a = b = 1/2 as in arXiv 2510.15262 (sigma ~ sqrt(eta/lam))")
    return (f"{cal.metric_label} ~ d^p measured under {cal.base_recipe.name} ({cal.optimizer}: "
            f"lr ~ d^-{cal.lr_exponent:g}, wd ~ d^{cal.wd_exponent:g}), layer types pooled by inverse-variance "
            f"weights: p = {cal.pooled.fit.exponent:.3f} ± {cal.pooled.fit.exponent_se:.3f}. Premise {premise}. "
            f"Our derivation from sigma ~ lr^a wd^-b d^alpha: alpha = p + a e_lr + b e_wd = {cal.alpha:.3f} and "
            f"{cal.exponent_field} = e_wd + p/b = {cal.derived_exponent:g} ± {cal.derived_exponent_se:.3f}. Assumes "
            f"the runs reached the steady state; confirm with a sweep under {cal.recipe.name}. Use it with "
            "scaling.recipe: <this file> and no scaling.overrides of that field.")


def write_calibration(cal: Calibration, out_dir: Path) -> dict[str, Path]:
    """Write ``recipe.yaml`` (loads as ``scaling.recipe``), ``calibration.json`` and ``calibration.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = cal.to_dict()
    summary = {k: data[k] for k in ("metric", "weights", "optimizer", "widths", "base_width", "seeds", "lr_exponent",
                                    "wd_exponent", "alpha", "exponent_field", "derived_exponent",
                                    "derived_exponent_se")}
    pre = data["premise"]
    summary.update(base_recipe=cal.base_recipe.name, fitted=cal.metric_label, pooled_fit=data["pooled"]["fit"],
                   premise={"measured": pre["measured"], "width": pre["width"], **pre["pooled"]},
                   layers={t: {"fit": c["fit"], "a": c["a"], "b": c["b"], "weight": c["weight"], "alpha": c["alpha"],
                               "wd_exponent": c["wd_exponent"], "wd_exponent_se": c["wd_exponent_se"]}
                           for t, c in data["layers"].items()},
                   warnings=cal.warnings, note=cal.note)
    header = (f"# widthwise calibrate: {cal.exponent_field} = {cal.derived_exponent:g} ± {cal.derived_exponent_se:.3f}"
              f" from {cal.metric_label} at widths {', '.join(map(str, cal.widths))}\n"
              f"# use: scaling: {{recipe: {out_dir / 'recipe.yaml'}}}\n")
    paths = {"recipe": out_dir / "recipe.yaml", "json": out_dir / "calibration.json",
             "plot": out_dir / "calibration.png"}
    text = header + yaml.safe_dump({"recipe": cal.recipe.to_dict(), "calibration": _rounded(summary)},
                                   sort_keys=False)
    atomic_write_text(paths["recipe"], text)
    atomic_write_text(paths["json"], json.dumps(data, indent=1) + "\n")
    plot_calibration(cal, paths["plot"])
    return paths


def _rounded(data: Any) -> Any:
    """``data`` with floats at 6 significant digits (readable YAML; calibration.json keeps full precision)."""
    if isinstance(data, float):
        return float(f"{data:.6g}")
    if isinstance(data, Mapping):
        return {k: _rounded(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_rounded(v) for v in data]
    return data


def plot_calibration(cal: Calibration, path: Path) -> Path:
    """Metric vs width per layer type with fitted power laws (pooled in black), and the derived recipe's prediction.

    The right panel rescales each value by ``(d/d_base)^(-b (e_wd* - e_wd))`` with the pooled premise ``b``: what
    the derived WD exponent would change in steady state. The pooled line turns flat; a layer type keeps its own
    residual slope.
    """
    from matplotlib import ticker

    shift = cal.premise.pooled.b * (cal.derived_exponent - cal.wd_exponent)
    fig, axes = subplots(1, 2, figsize=(13, 6.2), sharey=True)
    colors = colormap("tab10")
    panels = [(axes[0], 0.0, f"measured under {cal.base_recipe.name} ({cal.optimizer}, {_exp_text(cal, False)})"),
              (axes[1], shift, f"predicted under {cal.recipe.name} ({_exp_text(cal, True)})")]
    entries = [(t, c, colors(i % 10), 1.3, "o") for i, (t, c) in enumerate(cal.layers.items())]
    entries.append((POOLED, cal.pooled, "black", 2.6, "s"))
    for ax, s, title in panels:
        for name, c, color, lw, marker in entries:
            scale = [(w / cal.base_width) ** -s for w in c.widths]
            ys = [v * k for v, k in zip(c.values, scale, strict=True)]
            p = c.fit.exponent - s
            xs = _span(c.widths)
            line = [c.fit.predict(x) * (x / cal.base_width) ** -s for x in xs]
            ax.plot(xs, line, color=color, lw=lw, alpha=0.9, zorder=3 if name == POOLED else 2)
            ax.plot(c.widths, ys, marker, color=color, ms=6 if name == POOLED else 4.5, ls="none",
                    label=f"{name}: p = {p:+.3f} ± {c.fit.exponent_se:.3f}", zorder=3 if name == POOLED else 2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.minorticks_off()
        ax.set_xticks(cal.widths, [str(w) for w in cal.widths])
        ax.set_xlabel("width d")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False,
                  title=f"fitted {cal.metric} ~ d^p (± standard error; pooled: inverse-variance weighted)",
                  title_fontsize=8)
    axes[0].set_ylabel(f"{cal.metric_label} (seed mean)")
    axes[0].set_yticks(_log_ticks(*axes[0].get_ylim()))
    axes[0].yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:.3g}"))
    pre = cal.premise.pooled
    premise = (f"measured {cal.metric} ~ lr^{pre.a:.2f} wd^-{pre.b:.2f}" if cal.premise.measured
               else "assumed sqrt(lr/wd)")
    fig.suptitle(f"widthwise calibrate ({cal.weights} weights): alpha = {cal.alpha:.3f}, {cal.exponent_field} "
                 f"{cal.wd_exponent:g} -> {cal.derived_exponent:g} ± {cal.derived_exponent_se:.3f} = e_wd + p/b "
                 f"({premise})", fontsize=11)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    return Path(path)


def _exp_text(cal: Calibration, derived: bool) -> str:
    wd = cal.derived_exponent if derived else cal.wd_exponent
    return f"lr ~ d^{-cal.lr_exponent:g}, wd ~ d^{wd:g}"


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Readable ticks for a log axis from ``lo`` to ``hi``: 1-2-3-5 steps, or 5 rounded geometric steps when few."""
    ticks = [m * 10**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 3, 5) if lo <= m * 10**e <= hi]
    if len(ticks) >= 3:
        return ticks
    return [float(f"{lo * (hi / lo) ** ((i + 0.5) / 5):.2g}") for i in range(5)]


def _span(widths: list[int]) -> list[float]:
    lo, hi = math.log(min(widths)), math.log(max(widths))
    return [math.exp(lo + (hi - lo) * i / 20) for i in range(21)]

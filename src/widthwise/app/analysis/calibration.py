"""``widthwise calibrate``: measure how sigma_max (or the sublayer gain) scales with width, solve for the WD exponent.

Fan et al. 2025 (arXiv 2510.15262) find that in steady state a hidden matrix's top singular value behaves as
``sigma_max ~ sqrt(eta/lam) * d^alpha`` (``alpha = 0.75`` for AdamW on LLaMA), the sublayer gain alike. Under a
recipe with ``eta ~ d^-e_lr`` and ``lam ~ d^e_wd`` a run therefore measures ``sigma_max ~ d^p`` with
``p = alpha - (e_lr + e_wd) / 2``. From runs at several widths this module fits ``p``, recovers ``alpha`` and
derives the WD exponent that holds the metric width-invariant at the same LR exponent:
``e_wd* = 2 * alpha - e_lr`` (equivalently ``e_wd + 2p``). The runs come from the sweep driver as result rows.
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

#: ``metric`` -> (pooled row key, per-layer-type key) of a sweep result row.
METRICS = {"sigma_max": ("sigma_max", "sigma_max"), "gain": ("gain", "sublayer_gain")}
#: Config keys that may differ between the runs of one calibration: the width, its heads and what a run resolves
#: from it (forward multipliers), the seed, runtime settings.
FREE_KEYS = config_keys("width", "forward", "seed", "runtime")
POOLED = "pooled"


def intrinsic_exponent(measured: float, lr_exponent: float, wd_exponent: float) -> float:
    """``alpha = p + (e_lr + e_wd) / 2``: the width exponent of sigma_max at fixed ``eta/lam``.

    Fan et al. 2025 (arXiv 2510.15262): ``sigma_max ~ sqrt(eta/lam) * d^alpha`` in steady state. A run with
    ``eta ~ d^-e_lr`` and ``lam ~ d^e_wd`` sees ``sigma_max ~ d^p`` with ``p = alpha - (e_lr + e_wd)/2``.
    A width-invariant robust run (``p = 0``, ``e_lr = 1``, ``e_wd = 0.5``) gives the paper's ``alpha = 0.75``.
    """
    return measured + (lr_exponent + wd_exponent) / 2


def invariant_wd_exponent(alpha: float, lr_exponent: float) -> float:
    """``e_wd* = 2 * alpha - e_lr``: the WD exponent that makes ``sqrt(eta/lam) * d^alpha`` width-invariant.

    Fan et al. 2025 (arXiv 2510.15262): with ``eta ~ d^-1`` (muP) and ``alpha = 0.75``, ``lam ~ d^0.5``,
    their robust rule.
    """
    return 2 * alpha - lr_exponent


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


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@dataclass(frozen=True)
class LayerCalibration:
    """One layer type's (or the pooled) measurement: seed-mean values per width, fit, ``alpha``, ``e_wd*``."""

    name: str
    widths: list[int]
    values: list[float]
    fit: Fit
    alpha: float
    wd_exponent: float  # e_wd*: the exponent that would hold this layer type's metric width-invariant

    def to_dict(self) -> dict[str, Any]:
        return {"widths": self.widths, "values": self.values, "fit": self.fit.to_dict(), "alpha": self.alpha,
                "wd_exponent": self.wd_exponent}


@dataclass
class Calibration:
    """The result of :func:`calibrate_rows`: fits, derived exponents and the calibrated recipe."""

    metric: str
    optimizer: str
    base_recipe: Recipe
    recipe: Recipe  # the base recipe with exponent_field set to the derived exponent
    exponent_field: str  # wd_exponent | muon_wd_exponent
    lr_exponent: float  # e_lr and e_wd the runs used (Muon's for optimizer muon)
    wd_exponent: float
    derived_exponent: float  # pooled e_wd*, rounded to 3 decimals
    base_width: int
    widths: list[int]
    seeds: dict[int, int]  # runs averaged per width
    pooled: LayerCalibration
    layers: dict[str, LayerCalibration]
    skipped: list[str] = field(default_factory=list)  # layer types measured at fewer than 3 widths
    warnings: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def alpha(self) -> float:
        return self.pooled.alpha

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "optimizer": self.optimizer, "base_recipe": self.base_recipe.to_dict(),
                "recipe": self.recipe.to_dict(), "exponent_field": self.exponent_field,
                "lr_exponent": self.lr_exponent, "wd_exponent": self.wd_exponent, "alpha": self.alpha,
                "derived_exponent": self.derived_exponent, "base_width": self.base_width, "widths": self.widths,
                "seeds": {str(w): n for w, n in self.seeds.items()}, "pooled": self.pooled.to_dict(),
                "layers": {t: c.to_dict() for t, c in self.layers.items()}, "skipped": self.skipped,
                "warnings": self.warnings, "note": self.note}


def _flat(config: Mapping[str, Any]) -> dict[str, str]:
    return {f"{s}.{k}": json.dumps(v, sort_keys=True, default=str) for s, section in config.items()
            if isinstance(section, Mapping) for k, v in section.items()}


def _check_one_experiment(rows: list[dict[str, Any]]) -> None:
    """The rows must share recipe and optimizer, and their configs differ only in :data:`FREE_KEYS`."""
    for key in ("recipe", "optimizer"):
        seen = sorted({str(r.get(key)) for r in rows})
        if len(seen) > 1:
            raise SweepError(f"calibration needs runs of one recipe and optimizer; the rows hold {key}s "
                             f"{', '.join(seen)}: pass the rows of one family")
    flats = [_flat(r["config"]) for r in rows]
    for key in sorted(set().union(*flats) - set(FREE_KEYS)):
        seen = sorted({f.get(key, "<missing>") for f in flats})
        if len(seen) > 1:
            raise SweepError(f"calibration runs must differ only in width and seed; {key} takes "
                             f"{', '.join(seen[:4])}{' ...' if len(seen) > 4 else ''}: pass the rows of one point")


def _seed_means(rows: list[dict[str, Any]], get) -> tuple[list[int], list[float]]:
    by_width: dict[int, list[float]] = {}
    for r in rows:
        value = get(r)
        if _positive(value):
            by_width.setdefault(int(r["width"]), []).append(float(value))
    widths = sorted(by_width)
    return widths, [statistics.fmean(by_width[w]) for w in widths]


def _layer(name: str, widths: list[int], values: list[float], e_lr: float, e_wd: float) -> LayerCalibration:
    fit = fit_width_exponent(widths, values)
    alpha = intrinsic_exponent(fit.exponent, e_lr, e_wd)
    return LayerCalibration(name, widths, values, fit, alpha, invariant_wd_exponent(alpha, e_lr))


def calibrate_rows(rows: list[dict[str, Any]], metric: str = "sigma_max") -> Calibration:
    """Fit the metric's width exponent over completed sweep rows and derive the width-invariant WD exponent.

    ``rows`` are result rows (:func:`widthwise.app.sweep.store.read_results`) of one experiment at >= 3 widths:
    one recipe and optimizer, configs that differ only in width and seed (seeds are averaged per width).
    Fits each hidden layer type (``row["layer_types"]``) and the pooled value (``row["sigma_max"]`` or
    ``row["gain"]``); the new recipe takes the pooled exponent. :class:`SweepError` otherwise.
    """
    if metric not in METRICS:
        raise SweepError(f"calibration metric {metric!r}: expected one of {', '.join(METRICS)}")
    pooled_key, layer_key = METRICS[metric]
    done = [r for r in rows if r.get("status") == "completed"]
    if not done:
        raise SweepError(f"calibration needs completed runs; got {len(rows)} rows, none completed")
    _check_one_experiment(done)
    config = from_dict(done[0]["config"])
    base = load_recipe(config)
    optimizer = config.optim.name
    e_lr, e_wd = recipe_exponents(base, optimizer, config.optim.adjust_lr_fn)
    widths, values = _seed_means(done, lambda r: r.get(pooled_key))
    if len(widths) < 3:
        raise SweepError(f"calibration needs {metric} at >= 3 widths, the completed runs measure it at "
                         f"{', '.join(map(str, widths)) or 'none'}: add widths (and keep diagnostics on)")
    pooled = _layer(POOLED, widths, values, e_lr, e_wd)
    layers, skipped = {}, []
    types = {t for r in done for t in (r.get("layer_types") or {})}
    for t in sort_layer_types(types):
        lw, lv = _seed_means(done, lambda r, t=t: ((r.get("layer_types") or {}).get(t) or {}).get(layer_key))
        if len(lw) >= 3:
            layers[t] = _layer(t, lw, lv, e_lr, e_wd)
        else:
            skipped.append(t)
    derived = round(pooled.wd_exponent, 3) + 0.0
    exponent_field = "muon_wd_exponent" if optimizer == "muon" else "wd_exponent"
    changes: dict[str, Any] = {"name": f"calibrated-{base.name}", exponent_field: derived}
    if optimizer == "muon":  # pin the LR exponent the derivation assumed (else adjust_lr_fn decides it)
        changes["muon_lr_exponent"] = e_lr
    seeds = {w: sum(1 for r in done if int(r["width"]) == w and _positive(r.get(pooled_key))) for w in widths}
    base_width = int(done[0].get("base_width") or config.scaling.base_width or widths[0])
    cal = Calibration(metric, optimizer, base, replace(base, **changes), exponent_field, e_lr, e_wd, derived,
                      base_width, widths, seeds, pooled, layers, skipped)
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
    spread = [t for t, c in cal.layers.items() if abs(c.wd_exponent - cal.pooled.wd_exponent) > 0.25]
    if spread:
        out.append(f"layer types disagree with the pooled exponent by more than 0.25: {', '.join(spread)}")
    if cal.derived_exponent < 0:
        out.append(f"the derived {cal.exponent_field} {cal.derived_exponent} is negative: WD would shrink with width")
    return out


def _note(cal: Calibration) -> str:
    return (f"{cal.metric} ~ d^p measured under {cal.base_recipe.name} ({cal.optimizer}: lr ~ d^-{cal.lr_exponent:g}, "
            f"wd ~ d^{cal.wd_exponent:g}); steady state sigma ~ sqrt(eta/lam) d^alpha (arXiv 2510.15262) gives "
            f"alpha = p + (e_lr + e_wd)/2 = {cal.alpha:.3f} and {cal.exponent_field} = 2 alpha - e_lr = "
            f"{cal.derived_exponent:g}. Assumes the runs reached the steady state; confirm with a sweep under "
            f"{cal.recipe.name}. Use it with scaling.recipe: <this file> and no scaling.overrides of that field.")


def write_calibration(cal: Calibration, out_dir: Path) -> dict[str, Path]:
    """Write ``recipe.yaml`` (loads as ``scaling.recipe``), ``calibration.json`` and ``calibration.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = cal.to_dict()
    summary = {k: data[k] for k in ("metric", "optimizer", "widths", "base_width", "seeds", "lr_exponent",
                                    "wd_exponent", "alpha", "exponent_field", "derived_exponent")}
    summary.update(base_recipe=cal.base_recipe.name, pooled_fit=data["pooled"]["fit"],
                   layers={t: {"fit": c["fit"], "alpha": c["alpha"], "wd_exponent": c["wd_exponent"]}
                           for t, c in data["layers"].items()},
                   warnings=cal.warnings, note=cal.note)
    header = (f"# widthwise calibrate: {cal.exponent_field} = {cal.derived_exponent:g} from {cal.metric} at widths "
              f"{', '.join(map(str, cal.widths))}\n# use: scaling: {{recipe: {out_dir / 'recipe.yaml'}}}\n")
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

    The right panel rescales each value by ``(d/d_base)^(-(e_wd* - e_wd)/2)``: what the derived WD exponent
    would change in steady state. The pooled line turns flat; a layer type keeps its own residual slope.
    """
    from matplotlib import ticker

    shift = (cal.derived_exponent - cal.wd_exponent) / 2
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
                  title=f"fitted {cal.metric} ~ d^p (± standard error)", title_fontsize=8)
    axes[0].set_ylabel(f"{cal.metric} (seed mean)")
    axes[0].set_yticks(_log_ticks(*axes[0].get_ylim()))
    axes[0].yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:.3g}"))
    fig.suptitle(f"widthwise calibrate: alpha = {cal.alpha:.3f}, {cal.exponent_field} {cal.wd_exponent:g} -> "
                 f"{cal.derived_exponent:g} (arXiv 2510.15262: {cal.metric} ~ sqrt(eta/lam) d^alpha)", fontsize=11)
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

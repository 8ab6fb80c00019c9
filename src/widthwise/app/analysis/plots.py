"""Figures of ``widthwise analyze``: loss over the LR x WD grid, loss against LR per width, the optimum and the
diagnostics at the optimum against width. Each function draws one figure from the grouped families and the optima
(:mod:`widthwise.app.analysis.analyze`) and returns its path."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_savefig
from ..plotting import colormap, figure, subplots
from .families import Family, log_position

DPI = 120
LOSS_LABEL = "validation loss (nats/token)"
#: Colour scale of the losses: up to the minimum plus this many times (median - minimum), so that near-diverged
#: cells (losses far above the rest) do not wash out the region around the optimum.
CLIP_SPREAD = 3.0


def write_analysis_plots(out: Path, families: Sequence[Family], optima: Mapping[str, Any]) -> list[Path]:
    """All figures of ``widthwise analyze`` into the folder ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [plot_heatmaps(out / "heatmaps.png", families, optima),
            plot_loss_vs_lr(out / "loss_vs_lr.png", families, optima),
            plot_optimum_vs_width(out / "optimum_vs_width.png", optima),
            plot_sigma_gain_vs_width(out / "sigma_gain_vs_width.png", optima)]


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path, dpi=DPI)
    return path


def _entries(optima: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {entry["label"]: entry for entry in optima["families"]}


def _wrap(label: str, width: int = 60) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def _tick(value: float) -> str:
    return f"{value:.2g}"


def loss_range(values: Sequence[float]) -> tuple[float, float, bool]:
    """``(low, high, clipped)`` of a loss colour scale: the minimum to at most ``min + CLIP_SPREAD * (median - min)``
    of the finite ``values`` (``clipped``: some value lies above ``high``)."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return 0.0, 1.0, False
    low, top = min(finite), max(finite)
    high = min(top, low + CLIP_SPREAD * (statistics.median(finite) - low))
    if high <= low:
        high = low + 1e-3 * max(1.0, abs(low))
    return low, high, top > high


def _fraction(value: float, grid: Sequence[float]) -> float:
    """Fractional grid index of ``value`` (interpolated in log value): where to draw it on an index axis."""
    positions = [log_position(v, grid) for v in grid]
    return float(np.interp(log_position(value, grid), positions, np.arange(len(grid))))


def _width_colors(widths: Sequence[int]) -> dict[int, Any]:
    """Sequential colours by width: light for narrow, dark for wide."""
    cmap = colormap("Blues")
    widths = sorted(set(widths))
    return {w: cmap(0.4 + 0.6 * k / max(1, len(widths) - 1)) for k, w in enumerate(widths)}


# ----------------------------------------------------------------------------------------------- heatmaps


def plot_heatmaps(path: Path, families: Sequence[Family], optima: Mapping[str, Any]) -> Path:
    """Per family (row) and width (column): validation loss over the LR x WD grid, best grid point (star), sub-grid
    fit (cross), ridge of best LR per WD (line); diverged/failed cells grey with an x, cells not run white."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    entries = _entries(optima)
    columns = max(len(f.widths) for f in families)
    n_lr = max(len(f.lr_grid) for f in families)
    heights = [max(2.0, 0.42 * len(f.wd_grid) + 1.6) for f in families]
    fig = figure(figsize=(max(2.6, 0.48 * n_lr + 1.1) * columns + 1.3, sum(heights) + 0.5), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(len(families), 1, height_ratios=heights))
    for subfig, family in zip(subfigs, families, strict=True):
        _family_heatmaps(subfig, family, entries[family.label], columns)
    handles = [Line2D([], [], ls="", marker="*", ms=12, mfc="white", mec="black", label="best grid point"),
               Line2D([], [], ls="", marker="P", ms=9, mfc="red", mec="white", label="sub-grid fit"),
               Line2D([], [], color="red", lw=1.5, ls="--", label="ridge: best LR per WD"),
               Patch(fc="0.75", ec="0.5", label="x: diverged / failed"),
               Patch(fc="white", ec="0.5", label="not run (yet)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    return _save(fig, path)


def _family_heatmaps(subfig, family: Family, entry: Mapping[str, Any], columns: int) -> None:
    lr_grid, wd_grid, widths = family.lr_grid, family.wd_grid, family.widths
    grids = {w: family.loss_grid(w) for w in widths}
    low, high, clipped = loss_range([v for g in grids.values() for v in g.ravel()])
    cmap = colormap("viridis").with_extremes(bad="0.75")
    axes = subfig.subplots(1, columns, squeeze=False)[0]
    subfig.suptitle(f"{_wrap(family.label, 90)}: {entry['verdict']}", fontsize=10)
    for k, ax in enumerate(axes):
        if k >= len(widths):
            ax.set_visible(False)
            continue
        width = widths[k]
        image = ax.imshow(grids[width], origin="lower", cmap=cmap, vmin=low, vmax=high, aspect="auto")
        _mark_cells(ax, grids[width], family.status_grid(width), low, high)
        _mark_optimum(ax, entry["per_width"][str(width)], lr_grid, wd_grid)
        ax.set_xticks(range(len(lr_grid)), [_tick(v) for v in lr_grid], rotation=45 if len(lr_grid) > 4 else 0,
                      fontsize=7)
        ax.set_yticks(range(len(wd_grid)), [_tick(v) for v in wd_grid], fontsize=7)
        ax.set_xlabel("base LR (log grid)", fontsize=8)
        if k == 0:
            ax.set_ylabel("base WD (log grid)", fontsize=8)
        ax.set_title(f"width {width}", fontsize=9)
    if any(np.isfinite(g).any() for g in grids.values()):
        bar = subfig.colorbar(image, ax=list(axes[:len(widths)]), extend="max" if clipped else "neither",
                              shrink=0.9, pad=0.02)
        bar.ax.set_title("val loss\n(nats/token)", fontsize=7)
        bar.ax.tick_params(labelsize=7)


def _mark_cells(ax, grid: np.ndarray, status: list[list[str]], low: float, high: float) -> None:
    """Loss values written in the cells (small grids), an x on diverged/failed cells, white on cells not run."""
    from matplotlib.patches import Rectangle

    write_values = grid.shape[0] <= 8 and grid.shape[1] <= 8
    for j, row in enumerate(status):
        for i, state in enumerate(row):
            if state in ("diverged", "failed"):
                ax.text(i, j, "x", ha="center", va="center", fontsize=11, color="0.3")
            elif state in ("pending", "missing"):
                ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, fc="white", ec="0.85", lw=0.5))
            elif write_values:
                shade = (grid[j, i] - low) / (high - low)
                ax.text(i, j + 0.3, f"{grid[j, i]:.4g}", ha="center", va="center", fontsize=6,
                        color="white" if shade < 0.55 else "black")


def _mark_optimum(ax, entry: Mapping[str, Any], lr_grid: Sequence[float], wd_grid: Sequence[float]) -> None:
    best, fit, ridge = entry["best"], entry["fit"], entry["ridge"]
    if len(ridge) > 1:
        ax.plot([_fraction(p["lr"], lr_grid) for p in ridge], [wd_grid.index(p["weight_decay"]) for p in ridge],
                color="red", lw=1.5, ls="--", zorder=3)
    if best is not None:
        ax.plot(lr_grid.index(best["lr"]), wd_grid.index(best["weight_decay"]), marker="*", ms=17, mfc="white",
                mec="black", ls="", zorder=4)
    if fit is not None:
        ax.plot(_fraction(fit["lr"], lr_grid), _fraction(fit["weight_decay"], wd_grid), marker="P", ms=8,
                mfc="red", mec="white", ls="", zorder=5)


# ----------------------------------------------------------------------------------------------- loss vs LR


def plot_loss_vs_lr(path: Path, families: Sequence[Family], optima: Mapping[str, Any]) -> Path:
    """Per family one panel: validation loss against base LR, one line per width at that width's best WD (light:
    narrow, dark: wide); diverged points as x on the top edge. Under a transferring recipe the minima line up."""
    entries = _entries(optima)
    columns = min(2, len(families))
    rows = -(-len(families) // columns)
    fig, axes = subplots(rows, columns, figsize=(6.4 * columns, 3.8 * rows), squeeze=False, layout="constrained")
    colors = _width_colors([w for f in families for w in f.widths])
    for ax, family in zip(axes.flat, families, strict=False):
        _loss_panel(ax, family, entries[family.label], colors)
    for ax in list(axes.flat)[len(families):]:
        ax.set_visible(False)
    return _save(fig, path)


def _panel_wd(entry: Mapping[str, Any], width: int, wd_grid: Sequence[float]) -> float:
    """The WD whose LR line is drawn at ``width``: its best WD, else the most frequent best WD of the other widths."""
    best = entry["per_width"][str(width)]["best"]
    if best is not None:
        return best["weight_decay"]
    others = [e["best"]["weight_decay"] for e in entry["per_width"].values() if e["best"] is not None]
    return statistics.mode(others) if others else wd_grid[len(wd_grid) // 2]


def _loss_panel(ax, family: Family, entry: Mapping[str, Any], colors: Mapping[int, Any]) -> None:
    lr_grid, wd_grid = family.lr_grid, family.wd_grid
    lines = {}
    for width in family.widths:
        j = wd_grid.index(_panel_wd(entry, width, wd_grid))
        lines[width] = (family.loss_grid(width)[j], family.status_grid(width)[j], wd_grid[j])
    low, high, _ = loss_range([v for losses, _, _ in lines.values() for v in losses])
    pad = 0.06 * (high - low)
    ax.set_xscale("log")
    ax.set_ylim(low - pad, high + pad)
    top = ax.get_xaxis_transform()
    for rank, (width, (losses, status, wd)) in enumerate(lines.items()):
        ok = np.isfinite(losses)
        lrs = np.asarray(lr_grid)
        wd_text = f", WD {_tick(wd)}" if len(wd_grid) > 1 else ""
        ax.plot(lrs[ok], losses[ok], marker="o", ms=4, color=colors[width], label=f"width {width}{wd_text}")
        if ok.any():
            k = int(np.nanargmin(np.where(ok, losses, np.nan)))
            ax.plot(lrs[k], losses[k], marker="o", ms=9, mfc=colors[width], mec="black", ls="", zorder=4)
        bad = [lr for lr, s in zip(lr_grid, status, strict=True) if s in ("diverged", "failed")]
        if bad:  # (an empty unclipped line would still count at the figure's origin in the layout)
            ax.plot(bad, [0.97 - 0.035 * rank] * len(bad), transform=top, marker="x", ms=7, mew=2, ls="",
                    color=colors[width], clip_on=False)
    ax.set_xticks(lr_grid, [_tick(v) for v in lr_grid], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel("base learning rate (log scale)")
    ax.set_ylabel(LOSS_LABEL)
    if not any(np.isfinite(losses).any() for losses, _, _ in lines.values()):
        ax.text(0.5, 0.5, "every run diverged or failed", ha="center", va="center", transform=ax.transAxes,
                color="0.4")
        ax.set_yticks([])
    lr = entry["slopes"]["lr"]
    steps = None if lr is None else lr["steps_per_doubling"]
    drift = f", LR {0.0 if abs(steps) < 0.005 else steps:+.2f} grid steps per doubling" if steps is not None else ""
    ax.set_title(f"{_wrap(family.label)}\n{entry['verdict']}{drift}", fontsize=9)
    ax.grid(alpha=0.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="big dot: best LR; x on top: diverged",
              title_fontsize=7, frameon=False)


# ----------------------------------------------------------------------------------------------- optimum vs width


def _width_axis(ax, widths: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    if widths:
        ax.set_xticks(sorted(set(widths)), [str(w) for w in sorted(set(widths))])
        ax.set_xlim(min(widths) / 1.3, max(widths) * 1.3)
    ax.minorticks_off()
    ax.set_xlabel("width d_model (log scale)")


def _value_axis(ax, grid: Sequence[float]) -> None:
    """Log value axis spanning ``grid``, its values as faint horizontal lines (symlog when the grid holds 0)."""
    positive = [v for v in grid if v > 0]
    if not positive:
        return
    if len(positive) < len(grid):
        ax.set_yscale("symlog", linthresh=min(positive))
    else:
        ax.set_yscale("log")
    ax.set_ylim(min(grid) / 1.4 if min(grid) > 0 else -0.1 * min(positive), max(grid) * 1.4)
    for value in grid:
        ax.axhline(value, color="0.85", lw=0.8, zorder=0)
    ax.set_yticks(list(grid), [_tick(v) for v in grid], fontsize=7)
    ax.minorticks_off()


def _family_styles(optima: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Colour, marker and line style per family (families that coincide stay distinguishable)."""
    cmap = colormap("tab10")
    markers, dashes = "osD^v", ("-", "--", ":", "-.")
    return {entry["label"]: {"color": cmap(k % 10), "marker": markers[k % len(markers)],
                             "ls": dashes[k % len(dashes)]} for k, entry in enumerate(optima["families"])}


def _log_y(ax, values: Sequence[float]) -> None:
    """Log y axis over ``values`` (at least a factor ~2.3 shown) with plain tick labels (``4``, ``0.5``) at
    1, 2, 3, 5, 7 x 10^k instead of ``4 x 10^0``."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_yscale("log")
    low, high = min(values), max(values)
    ax.set_ylim(min(low / 1.25, high / 2.3), max(high * 1.25, low * 2.3))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 3, 5, 7)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def _figure_legend(fig, axes, notes: Sequence[Any] = ()) -> None:
    """One legend under the figure with every distinct label of ``axes``, then the ``notes`` (legend handles)."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    handles.update({h.get_label(): h for h in notes})
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize=8, frameon=False,
                   ncol=1 if len(handles) < 3 else 2)


def plot_optimum_vs_width(path: Path, optima: Mapping[str, Any]) -> Path:
    """Fitted optimal base LR and WD against width, log-log, one line per family; hollow markers: optimum on the
    grid edge; x on the bottom edge: every run at that width diverged or failed; faint lines: the grid values."""
    fig, (ax_lr, ax_wd) = subplots(1, 2, figsize=(11, 4.8), layout="constrained")
    styles = _family_styles(optima)
    families = optima["families"]
    for ax, key, name in ((ax_lr, "lr", "lr_grid"), (ax_wd, "weight_decay", "wd_grid")):
        _value_axis(ax, sorted({v for f in families for v in f[name]}))
        for fam in families:
            style = styles[fam["label"]]
            fits = [(int(w), e["fit"]) for w, e in fam["per_width"].items() if e["fit"] is not None]
            label = f"{fam['label']}: {fam['verdict']}"
            if fits:
                ax.plot([w for w, _ in fits], [f[key] for _, f in fits], color=style["color"], ls=style["ls"],
                        lw=1.5, label=label)
            for width, fit in fits:
                ax.plot(width, fit[key], marker=style["marker"], ms=7, ls="", mec=style["color"],
                        mfc="white" if fit["at_edge"] else style["color"])
            dead = [int(w) for w, e in fam["per_width"].items() if e["fit"] is None]
            if dead:
                ax.plot(dead, [0.03] * len(dead), transform=ax.get_xaxis_transform(), marker="x", ms=8, mew=2,
                        ls="", color=style["color"], label=None if fits else label)
        _width_axis(ax, [w for f in families for w in f["widths"]])
    ax_lr.set_ylabel("optimal base LR (log scale)")
    ax_lr.set_title("optimal base learning rate (sub-grid fit)", fontsize=10)
    ax_wd.set_ylabel("optimal base WD (log scale)")
    single_wd = all(len(f["wd_grid"]) < 2 for f in families)
    ax_wd.set_title("optimal base weight decay" + (" (WD not varied)" if single_wd else ""), fontsize=10)
    from matplotlib.lines import Line2D

    notes = [Line2D([], [], ls="", marker="o", mfc="white", mec="0.3", label="hollow: optimum on the grid edge"),
             Line2D([], [], ls="", marker="x", mew=2, color="0.3", label="x at the bottom: every run diverged/failed")]
    _figure_legend(fig, [ax_lr], notes)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- sigma / gain


def plot_sigma_gain_vs_width(path: Path, optima: Mapping[str, Any]) -> Path:
    """sigma_max and sublayer gain of the hidden matrices at each width's best point against width, log-log, one
    line per family (a panel says so when no run recorded diagnostics)."""
    fig, axes = subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    styles = _family_styles(optima)
    families = optima["families"]
    panels = (("sigma_max", "top singular value sigma_max", "mean sigma_max of hidden matrices"),
              ("gain", "sublayer gain rms(Wx)/rms(x)", "mean sublayer gain of hidden matrices"))
    for ax, (key, ylabel, title) in zip(axes, panels, strict=True):
        drawn: list[float] = []
        for fam in families:
            points = [(int(w), e[key]) for w, e in fam["per_width"].items() if e[key] is not None and e[key] > 0]
            if points:
                drawn += [v for _, v in points]
                style = styles[fam["label"]]
                ax.plot(*zip(*points, strict=True), marker=style["marker"], ls=style["ls"], ms=6,
                        color=style["color"], label=fam["label"])
        _width_axis(ax, [w for f in families for w in f["widths"]])
        if drawn:
            _log_y(ax, drawn)
            ax.grid(alpha=0.25)
        else:
            ax.text(0.5, 0.5, "no diagnostics recorded", ha="center", va="center", transform=ax.transAxes,
                    color="0.4")
            ax.set_yticks([])
        ax.set_ylabel(f"{ylabel} (log scale)" if drawn else ylabel)
        ax.set_title(f"{title} at each width's optimum", fontsize=10)
    _figure_legend(fig, axes)
    return _save(fig, path)

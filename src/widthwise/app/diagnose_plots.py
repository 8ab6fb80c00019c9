"""Plots of ``widthwise diagnose``: spectra, sigma_max by layer, norms against the equilibrium, gains, multipliers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..diagnostics.equilibrium import equilibrium_rms
from ..diagnostics.naming import LAYER_ORDER, block_index, layer_type, sort_layer_types
from .atomic import atomic_savefig
from .plotting import colormap, subplots


def _grid(n: int, cols: int = 4, size: tuple[float, float] = (3.3, 2.6), **kwargs):
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False, **kwargs)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:n]


def _figure_legend(fig, axes) -> None:
    """One legend for the figure: every distinct label of its panels, in the lower right corner."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower right", fontsize=8, frameon=True)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def write_diagnostic_plots(
    out: Path,
    result: Mapping[str, Any],
    spectra: Mapping[str, torch.Tensor],
    multipliers: Mapping[str, torch.Tensor],
    history: list[dict[str, Any]],
    abm: Mapping[str, Mapping[str, Any]],
    title: str = "",
) -> list[Path]:
    """Write the diagnostic figures into ``out`` and return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [_spectra(out / "spectra.png", spectra, title), _sigma_max(out / "sigma_max.png", result)]
    written.append(_equilibrium(out / "equilibrium.png", result, history, abm))
    written.append(_gains(out / "gains.png", result, history))
    if multipliers:
        written.append(_multiplier_histograms(out / "multipliers.png", multipliers))
    drift = [(r["step"], r["symmetry"]) for r in history if r.get("symmetry")]
    if drift or result["multipliers"].get("symmetry"):
        written.append(_symmetry(out / "symmetry.png", drift, result))
    return written


def _spectra(path: Path, spectra: Mapping[str, torch.Tensor], title: str) -> Path:
    """Singular values of each matrix (index normalised to [0, 1]), one panel per layer type, a line per block."""
    by_type: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, sv in spectra.items():
        by_type.setdefault(layer_type(name), []).append((block_index(name) or 0, sv))
    types = sort_layer_types(by_type)
    fig, axes = _grid(len(types))
    cmap = colormap("viridis")
    depth = max((b for entries in by_type.values() for b, _ in entries), default=0) + 1
    for ax, kind in zip(axes, types, strict=True):
        for b, sv in sorted(by_type[kind], key=lambda e: e[0]):
            x = torch.linspace(0, 1, len(sv))
            ax.semilogy(x, sv.clamp_min(1e-12), color=cmap(b / max(1, depth - 1)), lw=1.2,
                        label=f"block {b}" if len(by_type[kind]) > 1 else None)
        ax.set_title(f"{kind} ({len(by_type[kind][0][1])} values)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=7)
        if len(by_type[kind]) > 1 and ax is axes[1 if len(axes) > 1 else 0]:
            ax.legend(fontsize=6)
    fig.supxlabel("singular value index / count", fontsize=9)
    fig.supylabel("singular value (effective weight)", fontsize=9)
    fig.suptitle(f"{title}: singular-value spectra by layer type (colour: block depth)", fontsize=10)
    fig.tight_layout()
    return atomic_savefig(fig, path, dpi=110)


def _sigma_max(path: Path, result: Mapping[str, Any]) -> Path:
    """Top singular value by block for each layer type (solid: effective weight, dashed: stored weight)."""
    matrices = result["matrices"]
    in_blocks = {n: m for n, m in matrices.items() if block_index(n) is not None}
    outside = {n: m for n, m in matrices.items() if block_index(n) is None}
    fig, (ax, ax2) = subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    for i, kind in enumerate(sort_layer_types(m["layer_type"] for m in in_blocks.values())):
        pts = sorted((block_index(n), m) for n, m in in_blocks.items() if m["layer_type"] == kind)
        blocks = [b for b, _ in pts]
        ax.plot(blocks, [m["sigma_max"] for _, m in pts], "o-", color=f"C{i}", label=kind)
        if all("sigma_max_stored" in m for _, m in pts):
            ax.plot(blocks, [m["sigma_max_stored"] for _, m in pts], "x--", color=f"C{i}", alpha=0.6)
    ax.set_xlabel("block")
    ax.set_ylabel("sigma_max")
    ax.set_yscale("log")
    ax.set_title("top singular value by layer (solid: applied weight, dashed x: stored V)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    names = list(outside)
    ax2.bar(range(len(names)), [outside[n]["sigma_max"] for n in names], color="C0", label="applied")
    if names and all("sigma_max_stored" in outside[n] for n in names):
        ax2.plot(range(len(names)), [outside[n]["sigma_max_stored"] for n in names], "kx", label="stored V")
    ax2.set_xticks(range(len(names)), [layer_type(n) for n in names], fontsize=8)
    ax2.set_title("outside the blocks", fontsize=9)
    ax2.grid(alpha=0.3, axis="y")
    ax2.legend(fontsize=7)
    fig.suptitle(f"{Path(result['run_dir']).name} at step {result['step']}: sigma_max "
                 f"(width {result['width']}, recipe {result['recipe']})", fontsize=10)
    fig.tight_layout()
    return atomic_savefig(fig, path, dpi=110)


def _equilibrium(path: Path, result: Mapping[str, Any], history: list[dict[str, Any]],
                 abm: Mapping[str, Mapping[str, Any]]) -> Path:
    """RMS of each stored matrix over training against its ABM reference and the instantaneous equilibrium."""
    matrices = result["matrices"]
    types = sort_layer_types(m["layer_type"] for m in matrices.values())
    fig, axes = _grid(len(types), sharex=True)
    for ax, kind in zip(axes, types, strict=True):
        names = sorted((n for n, m in matrices.items() if m["layer_type"] == kind), key=lambda n: block_index(n) or 0)
        for i, name in enumerate(names):
            pts = [(r["step"], r["matrices"][name]["rms"]) for r in history
                   if _finite(r.get("matrices", {}).get(name, {}).get("rms"))]
            if not pts:
                pts = [(result["step"], matrices[name]["rms"])]
            ax.plot(*zip(*pts, strict=True), "o-" if len(pts) == 1 else "-", ms=3, lw=1, alpha=0.8,
                    color=colormap("viridis")(i / max(1, len(names) - 1)),
                    label="rms(V) by block" if i == 0 else None)
        ref = abm.get(names[0]) if names else None
        if ref is not None and ref["trajectory"]:
            steps = range(1, len(ref["trajectory"]) + 1)
            ax.plot(steps, ref["trajectory"], color="k", lw=1.8, label="ABM (noise only)")
            if ref["optimizer"] == "adamw" and ref["weight_decay"] > 0:
                eq = [equilibrium_rms(lr, ref["weight_decay"]) for lr in ref["lrs"]]
                ax.plot(steps, eq, color="grey", ls="--", lw=1, label="equilibrium at lr(t)")
        ax.set_title(kind, fontsize=9)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=7)
    _figure_legend(fig, axes)
    fig.supxlabel("step", fontsize=9)
    fig.supylabel("RMS of the stored weight", fontsize=9)
    fig.suptitle("weight norms against the AdamW noise equilibrium (ABM: same optimizer, schedule, WD and init, "
                 "i.i.d. N(0,1) gradients)", fontsize=9)
    fig.tight_layout()
    return atomic_savefig(fig, path, dpi=110)


def _gains(path: Path, result: Mapping[str, Any], history: list[dict[str, Any]]) -> Path:
    """Sublayer gains over training by layer type (mean over blocks, band: min to max), and block-level gains."""
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for r in history:
        by_type: dict[str, list[float]] = {}
        for name, m in r.get("matrices", {}).items():
            if _finite(m.get("sublayer_gain")):
                by_type.setdefault(layer_type(name), []).append(m["sublayer_gain"])
        for name, g in (r.get("blocks") or {}).items():
            if _finite(g):
                by_type.setdefault(f"block {layer_type(name)}", []).append(g)
        for kind, vals in by_type.items():
            series.setdefault(kind, []).append((r["step"], sum(vals) / len(vals), min(vals), max(vals)))
    fig, ax = subplots(figsize=(8, 4.5))
    if series:
        for i, kind in enumerate(sorted(series, key=lambda k: (k.startswith("block"), LAYER_ORDER.index(k)
                                                                if k in LAYER_ORDER else 99, k))):
            steps, mean, lo, hi = zip(*series[kind], strict=True)
            style = "--" if kind.startswith("block") else "-"
            ax.plot(steps, mean, style, color=f"C{i % 10}", label=kind, lw=1.5)
            ax.fill_between(steps, lo, hi, color=f"C{i % 10}", alpha=0.06)
        ax.set_xlabel("step")
        ax.set_title("sublayer gains rms(Wx)/rms(x) over training (mean over blocks; band: min-max)", fontsize=9)
    else:
        pooled = {k: v["sublayer_gain"] for k, v in result["layer_types"].items() if "sublayer_gain" in v}
        kinds = sort_layer_types(pooled)
        ax.bar(range(len(kinds)), [pooled[k] for k in kinds])
        ax.set_xticks(range(len(kinds)), kinds, rotation=30, fontsize=8)
        ax.set_title(f"sublayer gains at step {result['step']} (no diagnostics.jsonl: enable diagnostics.every "
                     "for the history)", fontsize=9)
    ax.set_ylabel("gain")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    if series:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return atomic_savefig(fig, path, dpi=110)


def _multiplier_histograms(path: Path, values: Mapping[str, torch.Tensor]) -> Path:
    """Histogram of the learned multipliers per layer type (rows and columns overlaid; all blocks pooled)."""
    by_layer: dict[str, dict[str, list[torch.Tensor]]] = {}
    for name, v in values.items():
        kind = layer_type(name)
        layer, _, part = kind.rpartition(".")
        by_layer.setdefault(layer or kind, {}).setdefault(part, []).append(v.flatten().float())
    layers = sort_layer_types(by_layer)
    fig, axes = _grid(len(layers))
    for ax, layer in zip(axes, layers, strict=True):
        for i, (part, tensors) in enumerate(sorted(by_layer[layer].items())):
            v = torch.cat(tensors).numpy()
            ax.hist(v, bins=40, density=True, alpha=0.55, color=f"C{i}", label=f"{part} ({len(v)})")
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_title(layer, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.supxlabel("multiplier value", fontsize=9)
    fig.suptitle("learned multipliers (density; all blocks pooled; dotted: init 1)", fontsize=10)
    fig.tight_layout()
    return atomic_savefig(fig, path, dpi=110)


def _symmetry(path: Path, drift: list[tuple[int, dict[str, float]]], result: Mapping[str, Any]) -> Path:
    """Symmetry-drift monitors over training (log2 ratios the loss cannot see; 0 = balanced)."""
    fig, ax = subplots(figsize=(8, 4))
    if not drift:
        drift = [(result["step"], result["multipliers"]["symmetry"])]
    keys = sorted({k for _, d in drift for k in d})
    families = sorted({k.split(".")[0] for k in keys})
    for key in keys:
        pts = [(s, d[key]) for s, d in drift if _finite(d.get(key))]
        color = f"C{families.index(key.split('.')[0]) % 10}"
        ax.plot(*zip(*pts, strict=True), "o-" if len(pts) == 1 else "-", color=color, lw=1, alpha=0.8, ms=3,
                label=key.split(".")[0] if key == next(k for k in keys if k.split(".")[0] == key.split(".")[0])
                else None)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("log2 ratio")
    ax.set_title("symmetry drift of the multipliers (one line per monitor; 0 = balanced, +-1 = a factor 2)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return atomic_savefig(fig, path, dpi=110)

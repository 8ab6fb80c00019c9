"""Plots of a run from its ``metrics.jsonl``: loss curves, learning rate, multipliers over time."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_savefig
from .plotting import subplots

if TYPE_CHECKING:
    from .rundir import RunDir

logger = logging.getLogger(__name__)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def write_plots(run: RunDir) -> list[Path]:
    """Write ``plots/loss.png``, ``plots/lr.png`` and (with multipliers) ``plots/multipliers.png`` from the metrics."""
    with warnings.catch_warnings():  # ticks of extreme values (an lr of 1e308) overflow numpy's power: cosmetic
        warnings.simplefilter("ignore", RuntimeWarning)
        return _write_plots(run)


def _save(fig, path: Path, written: list[Path]) -> None:
    """Lay out and write ``fig`` to ``path`` (added to ``written``); values matplotlib cannot place (an lr of
    1e308 spans more than its ticks can count) skip that plot with a warning, never the run's record."""
    try:
        fig.tight_layout()
        atomic_savefig(fig, path, dpi=120)
    except (ValueError, OverflowError) as err:
        logger.warning(f"plot {path.name} not written: matplotlib cannot draw these values ({err})")
        return
    written.append(path)


def _write_plots(run: RunDir) -> list[Path]:
    records = run.metrics()
    out = run.plots_dir
    out.mkdir(exist_ok=True)
    written = []
    train = [(r["tokens"], r["train_loss"]) for r in records if _finite(r.get("train_loss"))]
    val = [(r["tokens"], r["val_loss"]) for r in records if _finite(r.get("val_loss"))]
    fig, ax = subplots(figsize=(7, 4.2))
    if train:
        ax.plot(*zip(*train, strict=True), lw=0.8, alpha=0.5, color="C0", label="train (per step)")
        window = max(1, len(train) // 50)
        if window > 1:
            smooth = [sum(v for _, v in train[max(0, i - window + 1):i + 1]) / len(train[max(0, i - window + 1):i + 1])
                      for i in range(len(train))]
            ax.plot([t for t, _ in train], smooth, lw=1.6, color="C0", label=f"train ({window}-step mean)")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", ms=4, lw=1.6, color="C3", label="validation")
    ax.set_xlabel("tokens")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"{run.path.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, out / "loss.png", written)

    lr = [(r["step"], r["lr"]) for r in records if _finite(r.get("lr"))]
    if lr:
        fig, ax = subplots(figsize=(7, 3))
        ax.plot(*zip(*lr, strict=True), color="C2")
        ax.set_xlabel("step")
        ax.set_ylabel("base learning rate")
        ax.set_title("learning rate schedule (each group: base x plan factor)")
        ax.grid(alpha=0.3)
        _save(fig, out / "lr.png", written)

    mult = [(r["step"], r["multipliers"]) for r in records if r.get("multipliers")]
    if mult:
        _multiplier_plot(mult, out / "multipliers.png", written)
    return written


def _multiplier_plot(mult: list[tuple[int, dict]], path: Path, written: list[Path]) -> None:
    """One panel per layer (all blocks pooled): row and column multipliers, mean with a +-1 std band."""
    layers: dict[str, list[str]] = {}
    for key in sorted({k for _, stats in mult for k in stats}):
        layer, _, part = key.rpartition(".")
        layers.setdefault(layer or key, []).append(key)
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), sharex=True, squeeze=False)
    for ax, (layer, keys) in zip(axes.flat, layers.items(), strict=False):
        for i, key in enumerate(keys):  # a diverged run's last statistics are "nan"/"inf": left out, like its loss
            pts = [(s, st[key]) for s, st in mult if key in st and _finite(st[key].get("mean"))
                   and _finite(st[key].get("std"))]
            steps = [s for s, _ in pts]
            mean = [st["mean"] for _, st in pts]
            std = [st["std"] for _, st in pts]
            part = key.rpartition(".")[2]
            ax.plot(steps, mean, "o-" if i == 0 else "s--", ms=3, color=f"C{i}", label=part)
            ax.fill_between(steps, [m - d for m, d in zip(mean, std, strict=True)],
                            [m + d for m, d in zip(mean, std, strict=True)], color=f"C{i}", alpha=0.15)
        ax.axhline(1.0, color="grey", lw=0.6, ls=":")
        ax.set_title(layer, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.set_visible(False)
    fig.suptitle("learnable multipliers over training (all blocks pooled; mean, band = +-1 std)", fontsize=10)
    fig.supxlabel("step", fontsize=9)
    _save(fig, path, written)

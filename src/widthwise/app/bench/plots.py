"""One figure of a bench report: throughput, the near-1 ratios with their targets, and Muon against AdamW."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..atomic import atomic_savefig
from ..plotting import subplots
from .runner import TARGETS

#: The ratios that should sit at 1 (one colour each); the line style tells the mode.
OVERHEADS = ("multiplier_train_overhead", "trainer_vs_plain_loop", "folded_inference_ratio", "diagnostics_overhead")
VARIANT_STYLES = {"row_col": "o", "none": "s", "muon": "^", "plain_loop": "x"}


def _ratio(entry: Any) -> float:
    return entry["ratio"] if isinstance(entry, dict) else entry


def _spread(rows: list[dict[str, Any]], key: str) -> list[list[float]] | None:
    """Error bars from each point's [min, max] over its repeats (``None`` where a figure has no repeats)."""
    entries = [r[key] for r in rows]
    if not all(isinstance(e, dict) and "repeat_min" in e for e in entries):
        return None
    return [[e["ratio"] - e["repeat_min"] for e in entries], [e["repeat_max"] - e["ratio"] for e in entries]]


def plot_bench(report: dict[str, Any], path: Path) -> Path:
    """Write the report's plot to ``path`` (PNG, atomically) and return it."""
    import matplotlib

    fig, (speed, overhead, muon) = subplots(1, 3, figsize=(16, 4.8))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    modes = sorted({r["mode"] for r in report["results"]})
    for m, mode in enumerate(modes):
        style = ("-", "--", ":")[m % 3]
        rows = sorted((r for r in report["results"] if r["mode"] == mode), key=lambda r: r["width"])
        widths = [r["width"] for r in rows]
        for v, (variant, marker) in enumerate(VARIANT_STYLES.items()):
            speed.plot(widths, [r["tokens_per_s"][variant] for r in rows], style, marker=marker, color=colors[v],
                       label=f"{variant}, {mode}")
        for k, key in enumerate(OVERHEADS):
            values = [_ratio(r[key]) for r in rows]
            overhead.errorbar(widths, values, yerr=_spread(rows, key), fmt=style, marker="o", color=colors[k],
                              capsize=3, label=f"{key}, {mode}")
        control = [_ratio(r["control_ratio"]) for r in rows if "control_ratio" in r]
        if len(control) == len(rows):  # the A/A control: the noise floor the step ratios are read against
            overhead.errorbar(widths, control, yerr=_spread(rows, "control_ratio"), fmt=style, marker="d",
                              color="grey", capsize=3, label=f"A/A control (noise), {mode}")
        own = [r.get("multiplier_own_work") for r in rows]
        if all(v is not None for v in own):  # 1 + the multipliers' own work: what their step ratio is made of
            overhead.plot(widths, [1 + v for v in own], style, marker="*", color=colors[0], alpha=0.6,
                          label=f"1 + multipliers' own work, {mode}")
        muon.plot(widths, [_ratio(r["muon_vs_adamw"]) for r in rows], style, marker="^", color=colors[2],
                  label=f"Muon / AdamW step, {mode}")
    for k, key in enumerate(OVERHEADS):
        if key in TARGETS:
            overhead.axhline(TARGETS[key], color=colors[k], lw=0.8, ls=(0, (1, 3)))
    overhead.axhline(1.0, color="black", lw=0.8)
    for ax, title, ylabel in ((speed, "training throughput (median step)", "tokens/s"),
                              (overhead, "should be 1 (dotted: targets; bars: range over repeats)",
                               "time ratio, side by side"),
                              (muon, "Muon on hidden matrices vs AdamW", "step time ratio")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    speed.set_yscale("log")
    machine = report["machine"]
    plan, load = report["plan"], report["load_average"]
    fig.suptitle(f"widthwise bench: {machine['cuda'] or machine['cpu']}, {machine['threads']} thread(s), batch "
                 f"{plan['batch_size']}x{plan['seq_len']} tokens, load average {load['before'][0]:.2f} -> "
                 f"{load['after'][0]:.2f}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    atomic_savefig(fig, path)
    return path

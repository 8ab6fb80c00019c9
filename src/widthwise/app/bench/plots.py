"""One figure of a bench report: throughput, the near-1 ratios with their targets, and Muon against AdamW."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_savefig
from ..plotting import subplots
from .runner import TARGETS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The ratios that should sit at 1 (one colour each); the line style tells the mode.
OVERHEADS = ("multiplier_train_overhead", "trainer_vs_plain_loop", "folded_inference_ratio", "diagnostics_overhead")
VARIANT_STYLES = {"row_col": "o", "none": "s", "muon": "^", "plain_loop": "x"}
#: How far apart (in octaves of width) the modes' ratios sit at one width.
DODGE = 0.08


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
    path = Path(path)
    atomic_savefig(bench_figure(report), path)
    return path


def bench_figure(report: dict[str, Any]) -> Figure:
    """The report's figure: each panel's legend below it, where it hides no point (a bench at one width puts
    every point in the middle of its panel)."""
    import matplotlib

    fig, (speed, overhead, muon) = subplots(1, 3, figsize=(16, 6.4))
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    modes = sorted({r["mode"] for r in report["results"]})
    all_widths = [r["width"] for r in report["results"]]
    for m, mode in enumerate(modes):
        style = ("-", "--", ":")[m % 3]
        rows = sorted((r for r in report["results"] if r["mode"] == mode), key=lambda r: r["width"])
        widths = [r["width"] for r in rows]
        # side by side within a width, so one mode's bars do not hide the other's (the x axis is log 2)
        dodged = [w * 2 ** (DODGE * (m - (len(modes) - 1) / 2)) for w in widths]
        for v, (variant, marker) in enumerate(VARIANT_STYLES.items()):
            speed.plot(widths, [r["tokens_per_s"][variant] for r in rows], style, marker=marker, color=colors[v],
                       label=f"{variant}, {mode}")
        for k, key in enumerate(OVERHEADS):
            values = [_ratio(r[key]) for r in rows]
            overhead.errorbar(dodged, values, yerr=_spread(rows, key), fmt=style, marker="o", color=colors[k],
                              capsize=3, label=f"{key}, {mode}")
        control = [_ratio(r["control_ratio"]) for r in rows if "control_ratio" in r]
        if len(control) == len(rows):  # the A/A control: the noise floor the step ratios are read against
            overhead.errorbar(dodged, control, yerr=_spread(rows, "control_ratio"), fmt=style, marker="d",
                              color="grey", capsize=3, label=f"A/A control (noise), {mode}")
        own = [r.get("multiplier_own_work") for r in rows]
        if all(v is not None for v in own):  # 1 + the multipliers' own work: what their step ratio is made of
            overhead.plot(dodged, [1 + v for v in own], style, marker="*", color=colors[0], alpha=0.6,
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
        ax.set_xlim(min(all_widths) / 2**0.5, max(all_widths) * 2**0.5)  # half an octave each side, one width too
        ax.set_xlabel("width")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    speed.set_yscale("log")
    machine = report["machine"]
    plan, load = report["plan"], report["load_average"]
    fig.suptitle(f"widthwise bench: {machine['cuda'] or machine['cpu']}, {machine['threads']} thread(s), batch "
                 f"{plan['batch_size']}x{plan['seq_len']} tokens, load average {load['before'][0]:.2f} -> "
                 f"{load['after'][0]:.2f}", fontsize=10)
    fig.tight_layout()
    return fig

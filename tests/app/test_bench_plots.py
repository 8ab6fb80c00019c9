"""The bench figure: every legend below its panel, and each mode's ratios side by side within a width."""

from __future__ import annotations

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from widthwise.app.bench.plots import OVERHEADS, VARIANT_STYLES, bench_figure, plot_bench


def _report(widths: tuple[int, ...], modes: tuple[str, ...]) -> dict:
    results = [{"width": w, "mode": mode, "tokens_per_s": dict.fromkeys(VARIANT_STYLES, 1000.0 / w),
                "muon_vs_adamw": {"ratio": 1.1}, "control_ratio": {"ratio": 1.0},
                **{k: {"ratio": 1.05, "repeat_min": 1.0, "repeat_max": 1.1} for k in OVERHEADS}}
               for mode in modes for w in widths]
    return {"results": results, "machine": {"cuda": None, "cpu": "cpu", "threads": 1},
            "plan": {"batch_size": 2, "seq_len": 16}, "load_average": {"before": [0.5], "after": [0.6]}}


@pytest.mark.parametrize("widths", [(256,), (128, 256, 512)])
def test_every_legend_sits_below_its_panel_where_it_hides_no_point(widths):
    fig = bench_figure(_report(widths, ("compile", "eager_fp32")))
    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax in fig.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert legend.y1 < ax.get_window_extent(renderer).y0, ax.get_title()
        lo, hi = ax.get_xlim()  # one width too: the panel spans half an octave either side
        assert lo == pytest.approx(min(widths) / 2**0.5) and hi == pytest.approx(max(widths) * 2**0.5)


def test_each_modes_ratios_sit_apart_within_a_width():
    fig = bench_figure(_report((256,), ("compile", "eager_fp32")))
    overhead = fig.axes[1]
    xs = {round(float(line.get_xdata()[0]), 6) for line in overhead.get_lines() if line.get_marker() == "o"}
    assert len(xs) == 2 and min(xs) < 256 < max(xs)


def test_the_figure_is_written(tmp_path):
    path = plot_bench(_report((64,), ("eager_fp32",)), tmp_path / "bench.png")
    assert path.read_bytes()[:4] == b"\x89PNG"

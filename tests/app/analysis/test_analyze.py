"""``widthwise analyze`` on synthetic sweep rows: cells and families, the sub-grid fit, the ridge, the transfer
verdict, optima.json / report.md / plots end to end. No training: rows are dicts in the results format."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from widthwise.app.analysis.analyze import (
    analyze,
    best_grid_point,
    fit_optimum,
    fit_parabola,
    fit_paraboloid,
    ridge,
    transfer_verdict,
)
from widthwise.app.analysis.families import aggregate_cells, grid_ratio, group_families
from widthwise.app.analysis.plots import write_analysis_plots

LRS = [2.5e-4 * 2**k for k in range(8)]  # 2.5e-4 .. 3.2e-2, ratio 2
WDS = [0.025 * 2**k for k in range(5)]  # 0.025 .. 0.4, ratio 2
PNGS = ("heatmaps.png", "loss_vs_lr.png", "optimum_vs_width.png", "sigma_gain_vs_width.png")


def bowl(lr, wd, lr0, wd0, a=3.0, b=0.08, c=0.03, d=0.0):
    """Loss quadratic in log LR / log WD with its minimum ``a`` at ``(lr0, wd0)`` (``d``: cross term, a ridge)."""
    u, v = np.log(np.asarray(lr) / lr0), np.log(np.asarray(wd) / wd0)
    return a + b * u * u + c * v * v + d * u * v


def make_row(width, lr, wd, val_loss, *, status="completed", seed=0, recipe="robust", optimizer="adamw",
             multipliers="row_col", extra=None, sigma_max=10.0, gain=2.5, wall_s=5.0):
    """One results row in the contract's format."""
    params = {"model.width": width, "model.heads": max(1, width // 16), "optim.lr": lr, "optim.weight_decay": wd,
              "scaling.recipe": recipe, "train.seed": seed, **(extra or {})}
    done = status == "completed"
    return {"run_id": f"{hash((width, lr, wd, seed, recipe, str(extra))) & 0xFFFFFFFFFFFF:012x}",
            "name": f"w{width}-lr{lr:g}-wd{wd:g}-{recipe}-s{seed}", "run_dir": f"/nowhere/w{width}", "params": params,
            "status": status, "val_loss": val_loss if done else None, "final_train_loss": val_loss if done else None,
            "tokens": 1000, "steps": 10, "wall_s": wall_s, "tokens_per_s": 200.0, "width": width, "base_width": 32,
            "recipe": recipe, "optimizer": optimizer, "multipliers": multipliers, "lr": lr, "weight_decay": wd,
            "seed": seed, "sigma_max": sigma_max if done else None, "gain": gain if done else None,
            "layer_types": {}, "config": {}, "error": "boom" if status == "failed" else None, "attempts": 1}


def family_rows(widths, lr0, wd0=0.11, *, lrs=LRS, wds=WDS, seeds=(0,), diverge=lambda w, lr: lr >= 0.032,
                sigma=lambda w: 10.0, level=lambda w: 3.0, cross=0.0, **kw):
    """A full LR x WD grid per width on :func:`bowl` with minimum ``level(width)`` at ``(lr0(width), wd0)``; seeds
    get +-0.01 noise that averages out."""
    rows = []
    noise = {0: 0.01, 1: -0.01} if len(seeds) > 1 else {0: 0.0}
    for w in widths:
        for lr in lrs:
            for wd in wds:
                for s in seeds:
                    if diverge(w, lr):
                        rows.append(make_row(w, lr, wd, None, status="diverged", seed=s, **kw))
                    else:
                        loss = float(bowl(lr, wd, lr0(w), wd0, a=level(w), d=cross)) + noise[s]
                        rows.append(make_row(w, lr, wd, loss, seed=s, sigma_max=sigma(w), **kw))
    return rows


def demo_rows():
    """Two families: robust (optimum fixed across widths) and mup (optimal LR halves per width doubling, width 512
    all diverged), two seeds, a failed run, diverged runs at the top of the LR grid, a diagonal LR-WD ridge, wider
    is better."""
    widths = (32, 64, 128, 256)
    shape = {"level": lambda w: 3.0 - 0.05 * math.log2(w / 32), "cross": 0.04}
    rows = family_rows(widths, lambda w: 4.3e-3, seeds=(0, 1), recipe="robust", **shape)
    rows += family_rows((*widths, 512), lambda w: 8.5e-3 * 32 / w, recipe="mup", multipliers="none", **shape,
                        diverge=lambda w, lr: w == 512 or lr >= 0.016 * 64 / w,
                        sigma=lambda w: 4.0 * (w / 32) ** 0.5)
    rows.append(make_row(64, LRS[0], WDS[0], None, status="failed", seed=2, recipe="robust"))
    return rows


def grid_of(lr0, wd0, lrs=LRS, wds=WDS, **kw):
    lr, wd = np.meshgrid(lrs, wds)
    return bowl(lr, wd, lr0, wd0, **kw)


# ----------------------------------------------------------------------------------------------- fits


def test_fit_2d_recovers_off_grid_optimum_with_cross_term():
    grid = grid_of(4.3e-3, 0.11, d=0.05)  # a diagonal ridge: the 1-D conditional minima miss (lr0, wd0)
    fit = fit_optimum(LRS, WDS, grid)
    assert fit["method"] == "quadratic-2d" and fit["at_edge"] is False
    assert fit["lr"] == pytest.approx(4.3e-3, rel=1e-6)
    assert fit["weight_decay"] == pytest.approx(0.11, rel=1e-6)
    assert fit["val_loss"] == pytest.approx(3.0, abs=1e-9)


def test_fit_1d_single_wd_and_per_axis():
    single = grid_of(1.3e-3, 0.1, wds=[0.1])
    fit = fit_optimum(LRS, [0.1], single)
    assert fit["method"] == "quadratic-1d" and not fit["at_edge"]
    assert fit["lr"] == pytest.approx(1.3e-3, rel=1e-6) and fit["weight_decay"] == 0.1
    assert fit["val_loss"] == pytest.approx(3.0, abs=1e-9)
    # separable surface with a WD neighbour of the optimum diverged: no 2-D fit, LR still fitted exactly in 1-D
    grid = grid_of(4.3e-3, 0.11)
    j, i = best_grid_point(grid)
    grid[j + 1, i] = np.nan
    fit = fit_optimum(LRS, WDS, grid)
    assert fit["method"] == "quadratic-1d-lr"
    assert fit["lr"] == pytest.approx(4.3e-3, rel=1e-6) and fit["weight_decay"] == WDS[j]


def test_fit_falls_back_at_the_grid_edge():
    grid = grid_of(0.1, 0.11)  # optimal LR beyond the largest grid value
    fit = fit_optimum(LRS, WDS, grid)
    assert fit["at_edge"] is True and fit["method"] == "quadratic-1d-wd"
    assert fit["lr"] == LRS[-1] and fit["weight_decay"] == pytest.approx(0.11, rel=1e-6)
    edge = fit_optimum(LRS, [0.1], grid_of(1e-4, 0.1, wds=[0.1]))
    assert edge == {"lr": LRS[0], "weight_decay": 0.1, "val_loss": pytest.approx(edge["val_loss"]),
                    "method": "grid", "at_edge": True}


def test_non_convex_fits_are_rejected():
    x = np.array([-1.0, 0.0, 1.0])
    assert fit_parabola(x, -(x**2)) is None  # concave
    assert fit_parabola(x, np.ones(3)) is None  # flat
    assert fit_parabola(x, (x - 0.3) ** 2) == pytest.approx((0.3, 0.0))
    u, v = (a.ravel() for a in np.meshgrid(x, x))
    assert fit_paraboloid(u, v, u**2 - v**2) is None  # saddle
    assert fit_paraboloid(u, v, (u - 5) ** 2 + v**2) is None  # minimum outside the block
    # centre lowest on both axes, but the diagonals make the best 2-D quadratic a saddle: fall back to 1-D
    block = np.array([[2.0, 1.0, 0.05], [1.0, 0.0, 1.0], [0.05, 1.0, 2.0]])
    grid = np.full((5, 5), 9.0)
    grid[1:4, 1:4] = block
    fit = fit_optimum(LRS[:5], WDS, grid)
    assert fit["method"] == "quadratic-1d"
    assert fit["lr"] == pytest.approx(LRS[2]) and fit["weight_decay"] == pytest.approx(WDS[2])
    alone = np.full((5, 5), np.nan)  # no finite neighbour: the grid point itself
    alone[2, 2] = 3.0
    assert fit_optimum(LRS[:5], WDS, alone) == {"lr": LRS[2], "weight_decay": WDS[2], "val_loss": 3.0,
                                               "method": "grid", "at_edge": False}


def test_ridge_follows_the_diagonal():
    grid = grid_of(4.3e-3, 0.11, d=0.05)
    points = ridge(LRS, WDS, grid)
    assert [p["weight_decay"] for p in points] == WDS
    for p in points:  # d L / d u = 0 at u = -d v / (2 b)
        expected = 4.3e-3 * math.exp(-0.05 * math.log(p["weight_decay"] / 0.11) / (2 * 0.08))
        assert p["lr"] == pytest.approx(expected, rel=1e-6)
    assert points[0]["lr"] > points[-1]["lr"]
    grid[0, :] = np.nan  # a WD whose runs all diverged has no ridge point
    assert [p["weight_decay"] for p in ridge(LRS, WDS, grid)] == WDS[1:]


def test_grid_ratio_is_the_median_step():
    assert grid_ratio([1e-3, 2e-3, 4e-3, 1.6e-2]) == pytest.approx(2.0)
    assert grid_ratio([0.1]) is None


def test_zero_weight_decay_in_the_grid():
    wds = [0.0, 0.01, 0.1]
    grid = grid_of(4.3e-3, 0.01, wds=[1e-3, 0.01, 0.1])  # the WD-0 row is the smallest WD
    fit = fit_optimum(LRS, wds, grid)  # no log-parabola through WD 0: that axis stays on the grid
    assert fit["method"] == "quadratic-1d-lr" and fit["weight_decay"] == 0.01
    assert fit["lr"] == pytest.approx(4.3e-3, rel=1e-6)
    t = transfer_verdict([32, 64, 128], [1e-3] * 3, [0.0, 0.01, 0.1], LRS, wds)
    assert t["wd_steps_per_doubling"] == pytest.approx(1.0) and t["verdict"] == "drifts"  # 0 sits a step below 0.01


# ----------------------------------------------------------------------------------------------- cells, families


def test_seed_averaging_and_exclusion_counts():
    rows = [make_row(64, 1e-3, 0.1, 3.0, seed=0, sigma_max=1.0), make_row(64, 1e-3, 0.1, 3.2, seed=1, sigma_max=3.0),
            make_row(64, 2e-3, 0.1, 2.0, seed=0), make_row(64, 2e-3, 0.1, None, status="diverged", seed=1),
            make_row(64, 4e-3, 0.1, float("nan"), seed=0), make_row(64, 8e-3, 0.1, 2.9, seed=0),
            make_row(64, 8e-3, 0.1, None, status="failed", seed=1), make_row(64, 1.6e-2, 0.1, None, status="pending")]
    cells = aggregate_cells(rows)
    a = cells[(64, 1e-3, 0.1)]
    assert (a.val_loss, a.sigma_max, a.runs, a.completed, a.status) == (pytest.approx(3.1), 2.0, 2, 2, "ok")
    b = cells[(64, 2e-3, 0.1)]  # one diverged seed: the point diverged, its good seed does not count
    assert (b.val_loss, b.diverged, b.completed, b.status) == (None, 1, 1, "diverged")
    assert cells[(64, 4e-3, 0.1)].status == "diverged"  # NaN loss
    c = cells[(64, 8e-3, 0.1)]
    assert (c.val_loss, c.failed, c.status) == (2.9, 1, "ok")
    assert cells[(64, 1.6e-2, 0.1)].status == "pending"
    family = group_families(rows)[0]
    grid = family.loss_grid(64)
    assert np.isnan(grid[0, 1]) and np.isnan(grid[0, 2]) and grid[0, 3] == 2.9
    assert best_grid_point(grid) == (0, 3)  # 2.0 (diverged seed) and NaN are not candidates


def test_families_split_by_recipe_and_other_varied_keys():
    rows = family_rows((32,), lambda w: 1e-3, recipe="robust") + family_rows((32,), lambda w: 1e-3, recipe="mup")
    rows += family_rows((32, 64), lambda w: 1e-3, recipe="robust", extra={"model.depth": 4})
    families = group_families(rows)
    labels = [f.label for f in families]
    assert labels == ["recipe=mup optimizer=adamw multipliers=row_col",
                      "recipe=robust optimizer=adamw multipliers=row_col",
                      "recipe=robust optimizer=adamw multipliers=row_col model.depth=4"]
    assert families[2].params == {"model.depth": 4, "scaling.recipe": "robust"}
    assert families[2].widths == [32, 64] and families[1].widths == [32]  # model.heads varies with width: an axis
    assert families[0].lr_grid == LRS and families[0].wd_grid == WDS


# ----------------------------------------------------------------------------------------------- transfer


def _verdict(rows):
    from widthwise.app.analysis.analyze import family_optima

    return family_optima(group_families(rows)[0])["transfer"]


def test_verdict_transfers_when_the_optimum_stays():
    t = _verdict(family_rows((32, 64, 128, 256), lambda w: 4.3e-3))
    assert t["verdict"] == "transfers"
    assert t["lr_steps_per_doubling"] == pytest.approx(0.0, abs=1e-6)
    assert t["wd_steps_per_doubling"] == pytest.approx(0.0, abs=1e-6)
    assert "transfers" in t["summary"] and "not" not in t["summary"]


def test_verdict_drifts_when_the_optimal_lr_halves_per_doubling():
    t = _verdict(family_rows((32, 64, 128, 256), lambda w: 8.5e-3 * 32 / w))
    assert t["verdict"] == "drifts"
    assert t["lr_slope"] == pytest.approx(-1.0, abs=1e-6)
    assert t["lr_steps_per_doubling"] == pytest.approx(-1.0, abs=1e-6)  # grid ratio 2
    assert t["summary"].startswith("optimal LR moves -1.0 grid steps (x0.5) per width doubling")
    assert t["summary"].endswith("does not transfer")


def test_verdict_counts_wd_drift_and_needs_two_widths():
    wd_drift = transfer_verdict([32, 64, 128], [1e-3] * 3, [0.1, 0.2, 0.4], LRS, WDS)
    assert wd_drift["verdict"] == "drifts" and wd_drift["wd_steps_per_doubling"] == pytest.approx(1.0)
    single_wd = transfer_verdict([32, 64], [1e-3, 1.1e-3], [0.1, 0.1], LRS, [0.1])
    assert single_wd["verdict"] == "transfers" and single_wd["wd_steps_per_doubling"] is None
    edge = transfer_verdict([32, 64], [LRS[-1]] * 2, [0.1] * 2, LRS, WDS, edge_widths=[64])
    assert edge["verdict"] == "transfers" and "grid edge at width 64" in edge["summary"]
    one = _verdict(family_rows((64,), lambda w: 4.3e-3))
    assert one["verdict"] == "insufficient" and one["lr_slope"] is None and "1 width" in one["summary"]


# ----------------------------------------------------------------------------------------------- end to end


def test_analyze_end_to_end(tmp_path):
    rows = demo_rows()
    out = analyze(tmp_path, rows=rows)
    saved = json.loads((tmp_path / "optima.json").read_text())
    assert "report" not in saved and "plots" not in saved
    assert {k: v for k, v in out.items() if k not in ("report", "plots")} == saved
    assert saved["version"] == 1
    mup, robust = saved["families"]
    assert robust["label"] == "recipe=robust optimizer=adamw multipliers=row_col"
    assert mup["label"] == "recipe=mup optimizer=adamw multipliers=none"
    assert robust["params"] == {"scaling.recipe": "robust"} and robust["base_width"] == 32
    assert robust["lr_grid"] == LRS and robust["wd_grid"] == WDS and robust["widths"] == [32, 64, 128, 256]
    assert set(robust["per_width"]) == {"32", "64", "128", "256"}
    w64 = robust["per_width"]["64"]
    assert set(w64) == {"best", "fit", "ridge", "runs", "completed", "diverged", "failed", "sigma_max", "gain"}
    assert (w64["runs"], w64["completed"], w64["diverged"], w64["failed"]) == (81, 70, 10, 1)
    assert w64["best"]["lr"] == 4e-3 and w64["best"]["weight_decay"] == 0.1
    expected = float(bowl(4e-3, 0.1, 4.3e-3, 0.11, a=2.95, d=0.04))
    assert w64["best"]["val_loss"] == pytest.approx(expected)  # the seeds' noise averaged out
    assert isinstance(w64["best"]["run_id"], str)
    assert w64["fit"]["method"] == "quadratic-2d" and w64["fit"]["lr"] == pytest.approx(4.3e-3, rel=1e-6)
    assert w64["fit"]["weight_decay"] == pytest.approx(0.11, rel=1e-6)
    assert len(w64["ridge"]) == len(WDS) and w64["sigma_max"] == 10.0 and w64["gain"] == 2.5
    assert robust["transfer"]["verdict"] == "transfers"
    assert mup["transfer"]["verdict"] == "drifts"
    assert mup["transfer"]["lr_steps_per_doubling"] == pytest.approx(-1.0, abs=1e-6)
    dead = mup["per_width"]["512"]
    assert dead["best"] is None and dead["fit"] is None and dead["ridge"] == [] and dead["diverged"] == 40

    report = (tmp_path / "report.md").read_text()
    assert "521 runs: 390 completed, 130 diverged, 1 failed" in report
    for fam in saved["families"]:
        assert f"## {fam['label']}" in report
    assert "**transfers**" in report and "**drifts**" in report
    for name in PNGS:
        assert f"](plots/{name})" in report
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert out["report"] == str(tmp_path / "report.md")
    assert sorted(out["plots"]) == sorted(str(tmp_path / "plots" / n) for n in PNGS)


def test_analyze_without_plots_and_errors(tmp_path):
    from widthwise.errors import SweepError

    out = analyze(tmp_path, rows=family_rows((32,), lambda w: 1e-3), plots=False)
    assert out["plots"] == [] and not (tmp_path / "plots").exists() and "![" not in (tmp_path / "report.md").read_text()
    pending = [make_row(32, lr, 0.1, None, status=s) for lr, s in ((1e-3, "pending"), (2e-3, "failed"))]
    with pytest.raises(SweepError, match="no completed runs"):
        analyze(tmp_path, rows=pending)
    with pytest.raises(SweepError, match="LR is not varied"):
        analyze(tmp_path, rows=[make_row(32, 1e-3, wd, 3.0) for wd in (0.1, 0.2)])


def test_plots_cope_with_degenerate_sweeps(tmp_path):
    from widthwise.app.analysis.analyze import compute_optima

    rows = family_rows((64,), lambda w: 1e-3, wds=[0.1], sigma=lambda w: None)  # one width, one WD, no diagnostics
    rows += family_rows((32, 64), lambda w: 1e-3, recipe="mup", diverge=lambda w, lr: w == 64)  # a dead width
    rows += [make_row(32, lr, 0.1, None, status="diverged", recipe="sp") for lr in LRS]  # a dead family
    for row in rows:
        row["gain"] = None
    families = group_families(rows)
    paths = write_analysis_plots(tmp_path, families, compute_optima(families))
    assert [p.name for p in paths] == list(PNGS) and all(p.stat().st_size > 5_000 for p in paths)

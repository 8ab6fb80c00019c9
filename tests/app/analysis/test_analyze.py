"""``widthwise analyze`` on synthetic sweep rows: cells and families, the sub-grid fit, the ridge, the transfer
verdict, optima.json / report.md / plots end to end. No training: rows are dicts in the results format."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from widthwise.app.analysis.analyze import analyze
from widthwise.app.analysis.families import aggregate_cells, grid_ratio, group_families
from widthwise.app.analysis.optimum import best_grid_point, fit_optimum, fit_parabola, fit_paraboloid, ridge
from widthwise.app.analysis.plots import write_analysis_plots
from widthwise.app.analysis.verdict import bootstrap_intervals, edge_reasons, transfer_verdict

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
    t = transfer_verdict([32, 64, 128], [1e-3] * 3, [0.0, 0.01, 0.1], LRS, wds,
                         intervals={"lr": [-0.1, 0.1], "wd": [2.0, 4.0]})
    wd = t["slopes"]["wd"]
    assert wd["steps_per_doubling"] == pytest.approx(1.0) and t["verdict"] == "drifts"  # 0 sits a step below 0.01
    assert edge_reasons(32, 1e-3, 0.0, LRS, wds) == [
        "width 32: the best WD is 0, the smallest of the grid: add small positive values below 0.01"]


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


def _optima(rows, **kw):
    from widthwise.app.analysis.analyze import family_optima

    return family_optima(group_families(rows)[0], **kw)


def test_verdict_transfers_when_a_fixed_interior_optimum_has_seed_noise():
    rng = np.random.default_rng(7)
    rows = family_rows((32, 64, 128, 256), lambda w: 4.3e-3, seeds=(0, 1), cross=0.03)
    for row in rows:
        if row["val_loss"] is not None:
            row["val_loss"] += float(rng.normal(0, 0.004))
    t = _optima(rows)
    assert t["verdict"] == "transfers" and t["reasons"] == []
    tol = math.log2(1.25)
    for axis in ("lr", "wd"):
        lo, hi = t["slopes"][axis]["ci"]
        assert -tol < lo < t["slopes"][axis]["slope"] < hi < tol and hi - lo > 0.01  # noise widens the interval
    assert t["noise"]["sigma"] == pytest.approx(0.0002**0.5, rel=0.2) and "seed spread" in t["noise"]["source"]
    assert t["summary"].endswith(": transfers") and "90% CI" in t["summary"]
    assert _optima(rows) == t  # fixed RNG seed: deterministic


def test_verdict_drifts_when_the_optimal_lr_halves_per_doubling():
    t = _optima(family_rows((32, 64, 128, 256), lambda w: 8.5e-3 * 32 / w))
    assert t["verdict"] == "drifts"
    lr = t["slopes"]["lr"]
    assert lr["slope"] == pytest.approx(-1.0, abs=1e-6) and lr["factor_per_doubling"] == pytest.approx(0.5)
    assert lr["steps_per_doubling"] == pytest.approx(-1.0, abs=1e-6)  # grid ratio 2
    assert lr["ci"][1] < -math.log2(1.25)
    assert t["summary"].startswith("optimal LR moves -1.0 grid steps (x0.5, 90% CI")
    assert t["summary"].endswith(": drifts") and "lies outside the tolerance" in t["reasons"][0]


@pytest.mark.parametrize(("lr0", "wd0", "edge"), [
    (4.3e-3, 1.0, "the best WD (0.4) is the largest of the grid: extend the WD grid upward"),
    (1e-4, 0.11, "the best LR (0.00025) is the smallest of the grid: extend the LR grid downward")])
def test_an_optimum_on_the_grid_edge_at_every_width_is_inconclusive(lr0, wd0, edge):
    t = _optima(family_rows((32, 64, 128), lambda w: lr0, wd0))
    axis = "wd" if wd0 == 1.0 else "lr"
    assert t["slopes"][axis]["slope"] == 0.0  # pinned to the edge: a slope of exactly 0, which proves nothing
    assert t["verdict"] == "inconclusive"
    assert [r for r in t["reasons"] if "grid" in r and "width" in r] == [f"width {w}: {edge}" for w in (32, 64, 128)]


def test_verdict_straddling_unknown_and_too_few_widths():
    tol = math.log2(1.25)
    t = transfer_verdict([32, 64, 128], [1e-3] * 3, [0.1] * 3, LRS, WDS, intervals={"lr": [-0.1, 0.1],
                                                                                     "wd": [-0.1, tol + 0.1]})
    assert t["verdict"] == "inconclusive" and "WD slope's 90% interval [-0.10, +0.42] per doubling straddles" in \
        t["reasons"][0]
    single_wd = transfer_verdict([32, 64], [1e-3, 1.1e-3], [0.1, 0.1], LRS, [0.1], intervals={"lr": [0.1, 0.2]})
    assert single_wd["verdict"] == "transfers" and single_wd["slopes"]["wd"] is None
    unknown = transfer_verdict([32, 64], [1e-3] * 2, [0.1] * 2, LRS, WDS, noise="one seed per cell")
    assert unknown["verdict"] == "inconclusive" and "no confidence interval for the LR slope: one seed per cell" in \
        unknown["reasons"][0]
    one = _optima(family_rows((64,), lambda w: 4.3e-3))
    assert one["verdict"] == "inconclusive" and one["slopes"]["lr"] is None and "1 width" in one["summary"]
    assert one["regret"] is None


def test_bootstrap_interval_covers_a_planted_slope_at_about_the_nominal_rate():
    widths, true, sigma, seeds = (32, 64, 128), -0.5, 0.01, 2
    lr, wd = np.meshgrid(LRS, WDS)
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(100):
        grids = [bowl(lr, wd, 4e-3 * (w / 32) ** true, 0.11, d=0.02) + rng.normal(0, sigma, (seeds, *lr.shape)).mean(0)
                 for w in widths]
        ci = bootstrap_intervals(widths, grids, [np.full(lr.shape, seeds)] * 3, LRS, WDS, sigma, draws=60)["lr"]
        hits += ci[0] <= true <= ci[1]
    assert 0.8 <= hits / 100 <= 0.97


def test_regret_at_the_widest_width_equals_the_hand_computed_loss_gap():
    # width 32 is best at LRS[3] = 2e-3, width 64 at LRS[4] = 4e-3; both at WD 0.1 (grid points: no sub-grid shift)
    rows = family_rows((32, 64), lambda w: LRS[3] if w == 32 else LRS[4], 0.1, seeds=(0, 1))
    r = _optima(rows)["regret"]
    assert (r["width"], r["best_val_loss"], r["best_seed_std"]) == (64, pytest.approx(3.0), pytest.approx(0.0002**0.5))
    (row,) = r["from"]
    assert (row["width"], row["lr"], row["weight_decay"], row["status"]) == (32, LRS[3], 0.1, "ok")
    assert row["regret"] == pytest.approx(0.08 * math.log(2) ** 2)  # b * ln(4e-3 / 2e-3)^2 of the bowl
    assert row["seed_std"] == pytest.approx(0.0002**0.5)  # losses 3.0384 +- 0.01
    dead = family_rows((32, 64), lambda w: LRS[3] if w == 32 else LRS[4], 0.1, diverge=lambda w, lr: w == 64 and
                       lr == LRS[3])
    assert _optima(dead)["regret"]["from"][0] | {"lr": 0} == {"width": 32, "lr": 0, "weight_decay": 0.1,
                                                               "status": "diverged", "val_loss": None,
                                                               "regret": None, "seed_std": None}


def test_the_papers_coordinates_and_relaxation_times_at_the_optimum():
    rows = family_rows((32, 128), lambda w: 4e-3, 0.1)  # robust, base width 32: at 128 lr / 4, wd * 2
    opt = _optima(rows)
    c = opt["per_width"]["128"]["coordinates"]
    assert c == pytest.approx({"lr": 1e-3, "weight_decay": 0.2, "lr_times_wd": 2e-4, "lr_over_wd": 5e-3})
    assert opt["per_width"]["32"]["coordinates"]["lr_over_wd"] == pytest.approx(4e-3 / 0.1)
    assert opt["per_width"]["128"]["relaxation_times"] == pytest.approx(10 * 2e-4)  # 10 steps, no warmup
    (warning,) = opt["warnings"]
    assert warning.startswith("recipe=robust optimizer=adamw multipliers=row_col: the best run at widths 32 (0.004), "
                              "128 (0.002) covered fewer than 1 relaxation time")
    for row in rows:  # the results' own column wins over the estimate from the config
        row["relaxation_times"] = 3.0 if row["width"] == 128 else 0.5
    opt = _optima(rows)
    assert opt["per_width"]["128"]["relaxation_times"] == 3.0
    assert opt["warnings"] == [opt["warnings"][0]] and "width 32 (0.5) covered" in opt["warnings"][0]
    sp = _optima(family_rows((64,), lambda w: 4e-3, 0.1, recipe="sp"))["per_width"]["64"]["coordinates"]
    assert sp == pytest.approx({"lr": 4e-3, "weight_decay": 0.1, "lr_times_wd": 4e-4, "lr_over_wd": 4e-2})


# ----------------------------------------------------------------------------------------------- end to end


def test_analyze_end_to_end(tmp_path):
    rows = demo_rows()
    out = analyze(tmp_path, rows=rows)
    saved = json.loads((tmp_path / "optima.json").read_text())
    assert "report" not in saved and "plots" not in saved
    assert {k: v for k, v in out.items() if k not in ("report", "plots")} == saved
    assert saved["version"] == 2
    mup, robust = saved["families"]
    assert robust["label"] == "recipe=robust optimizer=adamw multipliers=row_col"
    assert mup["label"] == "recipe=mup optimizer=adamw multipliers=none"
    assert robust["params"] == {"scaling.recipe": "robust"} and robust["base_width"] == 32
    assert robust["lr_grid"] == LRS and robust["wd_grid"] == WDS and robust["widths"] == [32, 64, 128, 256]
    assert set(robust["per_width"]) == {"32", "64", "128", "256"}
    w64 = robust["per_width"]["64"]
    assert set(w64) == {"best", "fit", "ridge", "runs", "completed", "diverged", "failed", "sigma_max", "gain",
                        "coordinates", "relaxation_times"}
    assert (w64["runs"], w64["completed"], w64["diverged"], w64["failed"]) == (81, 70, 10, 1)
    assert w64["best"]["lr"] == 4e-3 and w64["best"]["weight_decay"] == 0.1
    expected = float(bowl(4e-3, 0.1, 4.3e-3, 0.11, a=2.95, d=0.04))
    assert w64["best"]["val_loss"] == pytest.approx(expected)  # the seeds' noise averaged out
    assert isinstance(w64["best"]["run_id"], str)
    assert w64["fit"]["method"] == "quadratic-2d" and w64["fit"]["lr"] == pytest.approx(4.3e-3, rel=1e-6)
    assert w64["fit"]["weight_decay"] == pytest.approx(0.11, rel=1e-6)
    assert len(w64["ridge"]) == len(WDS) and w64["sigma_max"] == 10.0 and w64["gain"] == 2.5
    assert robust["verdict"] == "transfers" and robust["reasons"] == []
    assert mup["verdict"] == "drifts"
    assert mup["slopes"]["lr"]["steps_per_doubling"] == pytest.approx(-1.0, abs=1e-6)
    assert [t["regret"] for t in robust["regret"]["from"]] == [0.0, 0.0, 0.0]
    assert [t["status"] for t in mup["regret"]["from"]] == ["diverged", "diverged", "ok"]  # 512 dead: widest is 256
    dead = mup["per_width"]["512"]
    assert dead["best"] is None and dead["fit"] is None and dead["ridge"] == [] and dead["diverged"] == 40

    report = (tmp_path / "report.md").read_text()
    assert "521 runs: 390 completed, 130 diverged, 1 failed" in report
    for fam in saved["families"]:
        assert f"## {fam['label']}" in report
    assert "**transfers**" in report and "**drifts**" in report and "## Warnings" in report
    assert "Regret at width 256 (the widest)" in report and "| hidden lr*wd | hidden lr/wd |" in report
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


def test_the_report_shows_eval_results_where_present(tmp_path):
    rows = family_rows((32, 64), lambda w: 4.3e-3)
    analyze(tmp_path, rows=rows, plots=False)
    assert "## Downstream evaluation" not in (tmp_path / "report.md").read_text()
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    task = {"metric": "acc_mutual_info", "value": 0.3456, "stderr": 0.021, "n": 500}
    (run / "eval.json").write_text(json.dumps({"tasks": {"shakespeare_next_line": task}}))
    rows[3]["run_dir"] = str(run)
    analyze(tmp_path, rows=rows, plots=False)
    report = (tmp_path / "report.md").read_text()
    assert "## Downstream evaluation" in report and "| run | params | val loss | shakespeare_next_line |" in report
    assert f"| {rows[3]['name']} | " in report and "acc_mutual_info 0.3456 +- 0.021 |" in report
    assert report.count("acc_mutual_info") == 1  # only the run that has an eval.json

"""Claims 1 and 2: the AdamW equilibrium of real weights, and equal LR/WD ratios reaching equal sublayer gains.

Claim 1 (``equilibrium_sqrt_law``): every hidden matrix's steady-state RMS (the mean over the last quarter of the
run's diagnostics) against ``lr/wd`` on log-log axes; the law ``rms ~ sqrt(lr/wd)`` is slope 1/2. Beside it the
two-exponent fit ``rms ~ lr^a wd^-b``, the ratio to the noise-driven equilibrium (:func:`equilibrium_rms`), and
real trajectories against their "Adam Brownian motion" twin (:func:`abm_trajectory`, same schedule and init).

Claim 2 (``same_ratio_same_gain``, arXiv 2510.15262 Figure 1 in miniature): the mean sublayer gain of the MLP
matrices over training for (lr, wd) x {1, 2, 4, 1/2} and (lr, 2wd), (lr, wd/2); the spread among the equal-ratio
runs against the shift that doubling WD makes (the paper: x1/sqrt 2).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from widthwise.app.atomic import atomic_savefig
from widthwise.app.plotting import subplots
from widthwise.diagnostics.equilibrium import abm_trajectory, equilibrium_rms
from widthwise.diagnostics.naming import block_index, layer_type
from widthwise.schedules import ScheduleRatio

from .. import lib

NAME = "equilibrium"
SWEEPS = ("sweep",)
#: The reference point of claim 2 (an interior point of the grid) and the ratios it is compared at.
REFERENCE = (0.005, 0.8)
SAME_RATIO = (0.5, 1.0, 2.0, 4.0)
#: Agreement bands (our choice): an exponent within 0.1, a gain ratio within 0.1 of 1/sqrt 2.
SLOPE_TOLERANCE = 0.1
RATIO_TOLERANCE = 0.1
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
COMMAND = "python -m experiments.run equilibrium"


def hidden_names(record: Mapping[str, Any]) -> list[str]:
    return [n for n, m in record["matrices"].items() if block_index(n) is not None and m.get("weight_decay")]


def steady(records: Sequence[Mapping[str, Any]], name: str, key: str) -> float | None:
    return lib.tail_mean(records, lambda r: r["matrices"][name].get(key))


def setup(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    c = rows[0]["config"]
    return {"model": f"LLaMA-style, {c['model']['depth']} blocks, width {c['model']['width']}, heads "
                     f"{c['model']['heads']}/{c['model']['kv_heads']} (q/kv), vocab {c['data']['vocab_size']}",
            "optimizer": "AdamW (PyTorch-coupled WD), no multipliers, standard parametrization",
            "widths": [c["model"]["width"]], "steps": c["train"]["steps"],
            "tokens_per_run": c["train"]["steps"] * c["train"]["batch_size"] * c["train"]["seq_len"],
            "schedule": f"{c['schedule']['kind']} after {c['schedule']['warmup']} warmup steps",
            "seeds": sorted({r["seed"] for r in rows}), "runs": len(rows),
            "grid": {"lr": sorted({r["lr"] for r in rows}), "weight_decay": sorted({r["weight_decay"] for r in rows})}}


def equilibrium_points(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One point per (run, hidden matrix): lr, wd, steady RMS, the noise equilibrium and relaxation times."""
    points = []
    for row in rows:
        records = lib.history(row)
        betas = tuple(row["config"]["optim"]["betas"])
        for name in hidden_names(records[-1]):
            m = records[-1]["matrices"][name]
            value = steady(records, name, "rms")
            if value is None:
                continue
            points.append({"run": row["name"], "matrix": name, "type": layer_type(name), "lr": m["lr"],
                           "weight_decay": m["weight_decay"], "rms": value,
                           "abm_rms": equilibrium_rms(m["lr"], m["weight_decay"], betas=betas),
                           "relaxations": row["relaxation_times"]})
    return points


def two_exponent_fit(points: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``log rms = c + a log lr - b log wd`` by least squares, with 95% intervals of ``a`` and ``b``."""
    x = np.array([[1.0, math.log(p["lr"]), -math.log(p["weight_decay"])] for p in points])
    y = np.array([math.log(p["rms"]) for p in points])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    dof = len(y) - 3
    cov = np.linalg.inv(x.T @ x) * float(resid @ resid) / dof
    half = lib.t95(dof) * np.sqrt(np.diag(cov))
    return {"a": coef[1], "a_interval": [coef[1] - half[1], coef[1] + half[1]],
            "b": coef[2], "b_interval": [coef[2] - half[2], coef[2] + half[2]]}


def run_means(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per run, the geometric mean RMS over its hidden matrices (the runs are the independent samples)."""
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for p in points:
        runs.setdefault(p["run"], []).append(p)
    return [{"lr": ps[0]["lr"], "weight_decay": ps[0]["weight_decay"],
             "rms": math.exp(statistics.fmean(math.log(p["rms"]) for p in ps)),
             "abm_rms": ps[0]["abm_rms"], "relaxations": ps[0]["relaxations"]} for ps in runs.values()]


def abm_comparison(rows: Sequence[Mapping[str, Any]], count: int = 3) -> list[dict[str, Any]]:
    """For the slowest, a middle and the fastest-relaxing run: each MLP matrix type's RMS trajectory (block 0)
    against its ABM twin driven by N(0, 1) gradients at the same LR schedule, WD, init std and shape."""
    ordered = sorted(rows, key=lambda r: r["lr"] * r["weight_decay"])
    picks = [ordered[0], ordered[len(ordered) // 2], ordered[-1]][:count]
    out = []
    for row in picks:
        records = lib.history(row)
        c = row["config"]
        ratio = ScheduleRatio(c["schedule"]["warmup"], c["train"]["steps"], c["schedule"]["kind"],
                              c["schedule"]["min_ratio"], c["schedule"]["decay_fraction"])
        every = c["diagnostics"]["every"]
        plan = {p["name"]: p for p in lib.RunDir(Path(row["run_dir"])).plan()["params"]}
        for kind in MLP:
            name = f"blocks.0.{kind}.weight"
            m = records[-1]["matrices"][name]
            lrs = [m["lr"] * ratio(t) for t in range(c["train"]["steps"])]
            entry = plan[name]
            abm = abm_trajectory(lrs, m["weight_decay"], init_std=entry["init_std"], shape=tuple(entry["shape"]),
                                 betas=tuple(c["optim"]["betas"]), every=every)
            steps = [r["step"] for r in records if r["step"] > 0]
            real = [r["matrices"][name]["rms"] for r in records if r["step"] > 0]
            abm_at = [abm[s // every - 1] for s in steps]
            log_ratio = [math.log(a / b) for a, b in zip(real, abm_at, strict=True)]
            out.append({"run": row["name"], "matrix": name, "lr": m["lr"], "weight_decay": m["weight_decay"],
                        "steps": steps, "real": real, "abm": abm_at,
                        "final_ratio": real[-1] / abm_at[-1],
                        "rms_log_deviation": math.sqrt(statistics.fmean(x * x for x in log_ratio))})
    return out


def plot_equilibrium(means: Sequence[Mapping[str, Any]], points: Sequence[Mapping[str, Any]], slope: lib.Slope,
                     abm: Sequence[Mapping[str, Any]], path: Path) -> Path:
    fig, (ax, bx) = subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    x = [p["lr"] / p["weight_decay"] for p in points]
    ax.scatter(x, [p["rms"] for p in points], s=6, alpha=0.3, color="0.5", label="each hidden matrix")
    xm = [m["lr"] / m["weight_decay"] for m in means]
    ax.scatter(xm, [m["rms"] for m in means], s=28, color="C0", label="run (geometric mean)", zorder=3)
    grid = np.geomspace(min(xm), max(xm), 50)
    c = math.exp(statistics.fmean(math.log(m["rms"]) - slope.value * math.log(v)
                                  for m, v in zip(means, xm, strict=True)))
    ax.plot(grid, c * grid ** slope.value, color="C0", label=f"fit: slope {slope.value:.3f} "
            f"[{slope.low:.3f}, {slope.high:.3f}]")
    eq = sorted((m["lr"] / m["weight_decay"], m["abm_rms"]) for m in means)
    ax.scatter([e[0] for e in eq], [e[1] for e in eq], marker="x", color="k", s=22,
               label="noise equilibrium of each run (ABM, exact)")
    ax.set(xscale="log", yscale="log", xlabel="lr / wd", ylabel="steady-state weight RMS",
           title="Real training: RMS against lr/wd (slope 1/2 expected)")
    ax.legend(fontsize=8)
    for i, a in enumerate(abm):
        if not a["matrix"].endswith("down_proj.weight"):
            continue
        color = f"C{i // len(MLP)}"
        bx.plot(a["steps"], a["real"], color=color, label=f"real, lr {a['lr']:g}, wd {a['weight_decay']:g}")
        bx.plot(a["steps"], a["abm"], color=color, ls="--", label="ABM twin")
    bx.set(xlabel="step", ylabel="RMS (block 0 mlp.down_proj)", title="Real weights against their ABM trajectory")
    bx.legend(fontsize=7)
    return atomic_savefig(fig, path, dpi=120)


def gain_series(row: Mapping[str, Any]) -> tuple[list[int], list[float]]:
    """The mean sublayer gain of the MLP matrices at each diagnostics step."""
    steps, gains = [], []
    for r in lib.history(row):
        values = [m["sublayer_gain"] for n, m in r["matrices"].items()
                  if layer_type(n) in MLP and isinstance(m.get("sublayer_gain"), (int, float))]
        if values:
            steps.append(r["step"])
            gains.append(statistics.fmean(values))
    return steps, gains


def spectrum(row: Mapping[str, Any], kinds: Sequence[str] = MLP) -> np.ndarray:
    """The final singular values of the MLP matrices, averaged over blocks and types after sorting."""
    weights = lib.final_weights(row)
    spectra = [np.linalg.svd(w.double().numpy(), compute_uv=False) for n, w in weights.items()
               if n.endswith(".weight") and layer_type(n) in kinds and w.ndim == 2]
    k = min(len(s) for s in spectra)
    return np.mean([s[:k] for s in spectra], axis=0)


def same_ratio(rows: Sequence[Mapping[str, Any]], path: Path) -> dict[str, Any]:
    lr0, wd0 = REFERENCE
    by = {(r["lr"], r["weight_decay"]): r for r in rows}

    def find(lr: float, wd: float) -> Mapping[str, Any] | None:
        return next((r for (a, b), r in by.items() if math.isclose(a, lr) and math.isclose(b, wd)), None)

    cases = {f"({f:g} lr, {f:g} wd)": find(lr0 * f, wd0 * f) for f in SAME_RATIO}
    cases["(lr, 2 wd)"] = find(lr0, 2 * wd0)
    cases["(lr, wd/2)"] = find(lr0, wd0 / 2)
    missing = [k for k, v in cases.items() if v is None]
    if missing:
        raise ValueError(f"{NAME}: runs missing for {', '.join(missing)}")
    series = {k: gain_series(r) for k, r in cases.items()}
    final = {k: lib.tail_mean([{"g": g} for g in s[1]], lambda x: x["g"]) for k, s in series.items()}
    sigma = {k: lib.tail_mean(lib.history(r), lambda x: statistics.fmean(
        m["sigma_max"] for n, m in x["matrices"].items() if layer_type(n) in MLP)) for k, r in cases.items()}
    equal = [final[f"({f:g} lr, {f:g} wd)"] for f in SAME_RATIO]
    ref = final["(1 lr, 1 wd)"]
    spread = max(equal) / min(equal)  # among equal-ratio runs
    slow = equal[:-1]  # without the fastest, (4 lr, 4 wd): a shrink 1 - lr*wd of 16x the reference's per step
    spread_slow = max(slow) / min(slow)
    up, down = final["(lr, 2 wd)"] / ref, final["(lr, wd/2)"] / ref
    log_sd = statistics.stdev(math.log(g) for g in equal)  # seed-free noise scale of one run's log gain
    fig, (ax, bx) = subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for i, (k, (steps, gains)) in enumerate(series.items()):
        ls = "--" if k in ("(lr, 2 wd)", "(lr, wd/2)") else "-"
        ax.plot(steps, gains, ls=ls, color=f"C{i}", label=k)
        bx.plot(np.arange(1, len(s := spectrum(cases[k])) + 1), s, ls=ls, color=f"C{i}", label=k)
    ax.set(xlabel="step", ylabel="mean sublayer gain, MLP matrices", title=f"Sublayer gain over training (reference "
           f"lr {lr0:g}, wd {wd0:g})")
    ax.legend(fontsize=8)
    bx.set(xscale="log", yscale="log", xlabel="index", ylabel="singular value (MLP, mean over blocks)",
           title="Final spectra")
    atomic_savefig(fig, path, dpi=120)
    return {"final_gain": final, "final_sigma_max": sigma, "equal_ratio_spread": spread,
            "equal_ratio_spread_without_4x": spread_slow, "wd_x2_ratio": up,
            "wd_half_ratio": down, "log_gain_sd_equal_ratio": log_sd,
            "wd_x2_interval": [up * math.exp(-lib.t95(len(equal) - 1) * log_sd),
                               up * math.exp(lib.t95(len(equal) - 1) * log_sd)],
            "sigma_wd_x2_ratio": sigma["(lr, 2 wd)"] / sigma["(1 lr, 1 wd)"],
            "relaxations": {k: r["relaxation_times"] for k, r in cases.items()}}


def sqrt_law(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Claim 1's record and details from the runs of an (LR, WD) grid."""
    points = equilibrium_points(rows)
    means = run_means(points)
    slope = lib.loglog_slope([m["lr"] / m["weight_decay"] for m in means], [m["rms"] for m in means])
    per_type = {}
    for kind in sorted({p["type"] for p in points}):
        ps = [p for p in points if p["type"] == kind]
        s = lib.loglog_slope([p["lr"] / p["weight_decay"] for p in ps], [p["rms"] for p in ps])
        per_type[kind] = {"slope": s.value, "interval": s.interval}
    two = two_exponent_fit(means)
    abm = abm_comparison(rows)
    lib.FIGURES.mkdir(parents=True, exist_ok=True)
    figure = plot_equilibrium(means, points, slope, abm, lib.FIGURES / "equilibrium_sqrt_law.png")
    ratios = [m["rms"] / m["abm_rms"] for m in means]
    relax = [m["relaxations"] for m in means]
    base = setup(rows)
    base["relaxation_times"] = [min(relax), max(relax)]
    details = {"runs": means, "per_layer_type": per_type, "two_exponent_fit": two, "abm": [
        {k: v for k, v in a.items() if k not in ("steps", "real", "abm")} for a in abm],
        "rms_over_noise_equilibrium": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}}
    record = lib.claim(
        claim="equilibrium_sqrt_law",
        statement="In AdamW's steady state a matrix's RMS is set by the hyperparameters: rms ~ sqrt(lr/wd), i.e. "
                  "slope 1/2 of log rms against log(lr/wd), as for a matrix driven by pure noise.",
        source="Kosson et al. 2024 (arXiv 2305.17212), rotational equilibrium; background of arXiv 2601.04890 "
               "section 2 and arXiv 2510.15262 section 3",
        measured=slope.value, interval=slope.interval, expected=0.5,
        holds=lib.holds(slope.interval, 0.5, SLOPE_TOLERANCE), tolerance=SLOPE_TOLERANCE,
        figures=[lib.rel(figure)], command=COMMAND, setup=base, wall_s=lib.cpu_seconds(rows),
        also={"measured_is": "slope of log(run's geometric-mean hidden RMS) on log(lr/wd), 95% t interval",
              "a_lr_exponent": two["a"], "a_interval": two["a_interval"], "b_wd_exponent": two["b"],
              "b_interval": two["b_interval"], "rms_over_noise_equilibrium_median": statistics.median(ratios),
              "abm_final_ratio": {f"{a['matrix']} lr {a['lr']:g} wd {a['weight_decay']:g}": a["final_ratio"]
                                  for a in abm}},
    )
    return record, details


def same_ratio_claim(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Claim 2's record and details (needs the reference point's six runs)."""
    ratio = same_ratio(rows, lib.FIGURES / "same_ratio_same_gain.png")
    base = setup(rows)
    base["relaxation_times"] = ratio["relaxations"]
    expected = 1 / math.sqrt(2)
    record = lib.claim(
        claim="same_ratio_same_gain",
        statement="Runs with the same lr/wd converge to the same sublayer gain and spectrum (only at different "
                  "speeds); doubling WD lowers the gain by ~1/sqrt(2).",
        source="arXiv 2510.15262, Figure 1 (FFN matrices, 20k steps)",
        measured=ratio["wd_x2_ratio"], interval=ratio["wd_x2_interval"], expected=expected,
        holds=(None if ratio["equal_ratio_spread"] >= 1 / ratio["wd_x2_ratio"] else
               lib.holds(ratio["wd_x2_interval"], expected, RATIO_TOLERANCE, max_width=1.0)),
        tolerance=RATIO_TOLERANCE,
        figures=[lib.rel(lib.FIGURES / "same_ratio_same_gain.png")], command=COMMAND, setup=base,
        wall_s=lib.cpu_seconds(rows),
        also={"measured_is": "final MLP sublayer gain at (lr, 2wd) / at (lr, wd)",
              "equal_ratio_spread_max_over_min": ratio["equal_ratio_spread"],
              "equal_ratio_spread_without_4x": ratio["equal_ratio_spread_without_4x"],
              "final_gain": ratio["final_gain"], "wd_half_ratio": ratio["wd_half_ratio"],
              "sigma_max_wd_x2_ratio": ratio["sigma_wd_x2_ratio"],
              "interval_from": "the equal-ratio runs' log-gain spread (t, 3 dof)"},
    )
    return record, ratio


def analyze() -> list[dict[str, Any]]:
    rows = lib.rows(NAME, "sweep")
    if not rows:
        raise ValueError(f"{NAME}: no completed runs")
    claim1, details = sqrt_law(rows)
    claim2, ratio = same_ratio_claim(rows)
    lib.write_json(lib.RESULTS / f"{NAME}.json", details | {"same_ratio": ratio})
    return [claim1, claim2]

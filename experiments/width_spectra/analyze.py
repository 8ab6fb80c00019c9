"""Claims 3 and 8: how the steady state scales with width at one fixed (LR, WD).

Claim 3 (``sigma_max_width_exponent``): the top singular value of each hidden matrix type against width, fitted
``sigma_max ~ d^alpha`` per type and pooled (:func:`calibrate_rows`, the code behind ``widthwise calibrate``; the
paper: alpha = 0.75); from the same runs and the (LR, WD) premise design at width 32, calibrate's derived WD
exponent (for the runs' width-constant LR, and for muP's LR ~ 1/d, where the paper's rule is lam ~ d^0.5).

Claim 8 (``multiplier_width_exponent``): the same widths with scalar multipliers; the learned multipliers against
width. The head has none (the paper's placement): its scale is the final RMSNorm gain, whose RMS we fit; attention
logits scale with the product of the query and key scalars and their input norm's gain squared.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from widthwise.app.analysis.calibration import calibrate_rows, invariant_wd_exponent, write_calibration
from widthwise.app.atomic import atomic_savefig
from widthwise.app.plotting import subplots
from widthwise.diagnostics.naming import block_index, layer_type

from .. import lib

NAME = "width_spectra"
SWEEPS = ("widths", "premise")
COMMAND = "python -m experiments.run width_spectra"
EXPONENT_TOLERANCE = 0.1  # our choice: an exponent within 0.1
#: The head's learned scale decays "slightly slower than muP's 1/d": agreement when it lies in [-1.3, -0.5]
#: (expected -1, tolerance 0.3 either way; our reading of "slightly").
HEAD_EXPECTED, HEAD_TOLERANCE = -1.0, 0.3


def setup(rows: Sequence[Mapping[str, Any]], multipliers: str) -> dict[str, Any]:
    c = rows[0]["config"]
    return {"model": f"LLaMA-style, {c['model']['depth']} blocks, head dim "
                     f"{c['model']['width'] // c['model']['heads']} (heads follow the width), vocab "
                     f"{c['data']['vocab_size']}",
            "optimizer": f"AdamW at a fixed lr {c['optim']['lr']:g}, wd {c['optim']['weight_decay']:g} at every "
                         f"width (standard parametrization), multipliers {multipliers}",
            "widths": sorted({r["width"] for r in rows}), "steps": c["train"]["steps"],
            "tokens_per_run": c["train"]["steps"] * c["train"]["batch_size"] * c["train"]["seq_len"],
            "schedule": f"{c['schedule']['kind']} after {c['schedule']['warmup']} warmup steps",
            "seeds": sorted({r["seed"] for r in rows}),
            "relaxation_times": sorted({round(r["relaxation_times"], 2) for r in rows})}


def claim3(rows: Sequence[Mapping[str, Any]], premise: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    cal = calibrate_rows(list(rows), metric="sigma_max", weights="stored", premise_rows=list(premise))
    paths = write_calibration(cal, lib.RESULTS / NAME)
    alpha, se = cal.alpha, cal.pooled.fit.exponent_se
    interval = [alpha - 1.96 * se, alpha + 1.96 * se]
    a, b = cal.premise.pooled.a, cal.premise.pooled.b
    mup_wd = invariant_wd_exponent(alpha, 1.0, a, b)
    figure = paths["plot"]  # calibrate's own plot: sigma_max per layer type against width, with the fits
    per_type = {t: {"alpha": c.alpha, "se": c.fit.exponent_se} for t, c in cal.layers.items()}
    return lib.claim(
        claim="sigma_max_width_exponent",
        statement="At fixed (lr, wd) in AdamW's steady state the top singular value of a hidden matrix grows as "
                  "d^0.75, so keeping it width-invariant under muP's lr ~ 1/d needs wd ~ d^0.5.",
        source="arXiv 2510.15262, section 3 (sigma_max ~ sqrt(eta/lam) d^0.75) and its robust rule",
        measured=alpha, interval=interval, expected=0.75, holds=lib.holds(interval, 0.75, EXPONENT_TOLERANCE),
        tolerance=EXPONENT_TOLERANCE, figures=[lib.rel(figure)], command=COMMAND, setup=setup(rows, "none"),
        wall_s=lib.cpu_seconds(rows) + lib.cpu_seconds(premise),
        also={"per_layer_type": per_type, "alpha_unweighted_mean_of_types": statistics.fmean(
                  v["alpha"] for v in per_type.values()), "premise_a": a, "premise_b": b,
              "calibrate_derived_wd_exponent_at_constant_lr": cal.derived_exponent,
              "calibrate_derived_wd_exponent_se": cal.derived_exponent_se,
              "implied_wd_exponent_at_mup_lr": mup_wd, "paper_wd_exponent_at_mup_lr": 0.5,
              "calibration": lib.rel(paths["json"]), "interval_from": "1.96 x the pooled standard error"},
    )


def learned_scales(row: Mapping[str, Any]) -> dict[str, float]:
    """The final learned scales of a run with scalar multipliers, averaged over blocks (absolute values)."""
    w = lib.final_weights(row)
    by_type: dict[str, list[float]] = {}
    for name, t in w.items():
        if name.endswith(".scalar"):
            kind = layer_type(name.replace(".parametrizations.weight.0.scalar", ".weight.scalar"))
            by_type.setdefault(kind, []).append(abs(float(t)))
    out = {k: statistics.fmean(v) for k, v in by_type.items()}
    out["head (final norm gain rms)"] = float(w["norm.weight"].pow(2).mean().sqrt())
    qk = []
    for i in sorted({block_index(n) for n in w if block_index(n) is not None}):
        q = abs(float(w[f"blocks.{i}.attn.q_proj.parametrizations.weight.0.scalar"]))
        k = abs(float(w[f"blocks.{i}.attn.k_proj.parametrizations.weight.0.scalar"]))
        g = float(w[f"blocks.{i}.attn_norm.weight"].pow(2).mean())
        qk.append(q * k * g)
    out["q.k (q x k scalars x attn-norm gain^2)"] = statistics.fmean(qk)
    return out


def claim8(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    per_run = [(r["width"], learned_scales(r)) for r in rows]
    kinds = sorted(per_run[0][1])
    widths = sorted({w for w, _ in per_run})
    fits, values = {}, {}
    for kind in kinds:
        means = [statistics.fmean(s[kind] for w, s in per_run if w == width) for width in widths]
        values[kind] = means
        x = [w for w, s in per_run]
        y = [s[kind] for w, s in per_run]
        fit = lib.loglog_slope(x, y)
        fits[kind] = {"exponent": fit.value, "interval": fit.interval, "r2": fit.r2}
    head = fits["head (final norm gain rms)"]
    # the matrices themselves: the stored V's RMS per layer type against width (width-independent expected)
    stored = {}
    for t in sorted(rows[0]["layer_types"]):
        pts = [(r["width"], r["layer_types"][t]["rms"]) for r in rows if r["layer_types"].get(t, {}).get("rms")]
        fit = lib.loglog_slope([w for w, _ in pts], [v for _, v in pts])
        stored[t] = {"exponent": fit.value, "interval": fit.interval}
    fig, ax = subplots(figsize=(10, 4.8), layout="constrained")
    for i, kind in enumerate(kinds):
        ax.plot(widths, values[kind], "o-", color=f"C{i % 10}", label=f"{kind}: d^{fits[kind]['exponent']:.2f}")
    ax.plot(widths, [values["head (final norm gain rms)"][0] * widths[0] / w for w in widths], "k--", lw=1,
            label="1/d from the narrowest (muP's head)")
    qk = values["q.k (q x k scalars x attn-norm gain^2)"]
    ax.plot(widths, [qk[0] * (widths[0] / w) ** 2 for w in widths], "k:", lw=1, label="1/d^2 (muP's q.k)")
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="learned scale (mean over blocks and seeds)",
           title="Learned scalar multipliers at fixed (lr, wd) across widths (q/k, o/v, up/down pairs coincide)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure = atomic_savefig(fig, lib.FIGURES / "multiplier_width_exponent.png", dpi=120)
    return lib.claim(
        claim="multiplier_width_exponent",
        statement="With fixed (lr, wd) across widths, matrix norms stay width-independent and the learned "
                  "multipliers supply the width compensation; the head's decays slightly slower than muP's 1/d.",
        source="arXiv 2601.04890, width study with scalar multipliers (widths 128-4096)",
        measured=head["exponent"], interval=head["interval"], expected=HEAD_EXPECTED,
        holds=lib.holds(head["interval"], HEAD_EXPECTED, HEAD_TOLERANCE, max_width=1.0), tolerance=HEAD_TOLERANCE,
        figures=[lib.rel(figure)], command=COMMAND, setup=setup(rows, "scalar (placement all: the head has none)"),
        wall_s=lib.cpu_seconds(rows), also={"exponents": fits, "stored_rms_width_exponents": stored,
                                            "values_by_width": {"widths": widths, **values}},
    )


def analyze() -> list[dict[str, Any]]:
    rows = lib.rows(NAME, "widths")
    premise = lib.rows(NAME, "premise")
    none = [r for r in rows if r["multipliers"] == "none"]
    scalar = [r for r in rows if r["multipliers"] == "scalar"]
    records = [claim3(none, premise)]
    if scalar:
        records.append(claim8(scalar))
    lib.write_json(lib.RESULTS / f"{NAME}.json", {r["claim"]: r for r in records})
    return records


"""Claim 9 (``muon_width_rule``): which width rule keeps Muon's LR optimum in place from width 32 to 256?

Three families of one sweep (``scaling.overrides``): ours (the robust recipe's Muon exponents at
``match_rms_adamw``: hidden lr x m^-1/2, wd x m^1/2), muP's Adam rule on Muon (lr x 1/m, wd constant) and no width
rule. Each is analysed by ``widthwise analyze`` (drift per doubling with bootstrap intervals, verdict, regret), as
in claim 4.
"""

from __future__ import annotations

import math
from typing import Any

from widthwise.app.analysis.analyze import analyze as analyze_sweep
from widthwise.app.atomic import atomic_savefig
from widthwise.app.plotting import subplots

from .. import lib
from ..transfer.analyze import family_summary

NAME = "muon_width"
SWEEPS = ("sweep",)
COMMAND = "python -m experiments.run muon_width"


def rule(family: dict[str, Any]) -> str:
    o = family["params"].get("scaling.overrides") or {}
    if not o:
        return "ours (lr m^-1/2, wd m^1/2)"
    if o.get("muon_lr_exponent") == 1.0:
        return "muP's Adam rule (lr 1/m)"
    return "no width rule"


def analyze() -> list[dict[str, Any]]:
    rows = lib.rows(NAME, "sweep", ("completed", "diverged"))
    optima = analyze_sweep(lib.sweep_dir(NAME, "sweep"), rows=lib.rows(NAME, "sweep", ("completed", "diverged",
                                                                                        "pending", "running")))
    summaries = {rule(f): family_summary(f) for f in optima["families"]}
    fig, axes = subplots(1, len(summaries), figsize=(4.6 * len(summaries), 4.2), layout="constrained",
                         squeeze=False)
    for ax, fam in zip(axes[0], optima["families"], strict=True):
        name = rule(fam)
        s = summaries[name]
        picked = [r for r in rows if (r["params"].get("scaling.overrides") or {}) ==
                  (fam["params"].get("scaling.overrides") or {})]
        for i, w in enumerate(s["widths"]):
            pts = sorted((r["lr"], r["val_loss"]) for r in picked if r["width"] == w and r["val_loss"] is not None)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{i}", label=f"width {w}")
        ax.set(xscale="log", xlabel="base LR (proxy width 32)", ylabel="validation loss",
               title=f"Muon, {name}\n{s['verdict']}")
        lrs = sorted({r["lr"] for r in picked})
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs], minor=False, rotation=30)
        ax.set_xticks([], minor=True)
        ax.legend(fontsize=7)
    figure = atomic_savefig(fig, lib.FIGURES / "muon_width_rule.png", dpi=120)
    ours = summaries.get("ours (lr m^-1/2, wd m^1/2)", {})
    slope = ours.get("lr_slope") or {}
    holds = {"transfers": True, "drifts": False}.get(ours.get("verdict"))
    c = rows[0]["config"]
    record = lib.claim(
        claim="muon_width_rule",
        statement="widthwise's Muon rule (hidden lr x m^-1/2 and wd x m^1/2 at adjust_lr_fn=match_rms_adamw) keeps "
                  "the LR optimum in place across widths, where muP's Adam rule on Muon (double scaling) or no "
                  "rule do not.",
        source="our derivation (rules.muon_lr_exponent / muon_wd_exponent), against Megatron-LM's report that "
               "muP's Adam scaling on top of Muon breaks transfer",
        measured=slope.get("slope", math.nan), interval=slope.get("ci") or [math.nan, math.nan], expected=0.0,
        holds=holds, figures=[lib.rel(figure)], command=COMMAND,
        setup={"model": f"as claim 4 (tiny architecture, {c['model']['depth']} blocks, head dim 16)",
               "optimizer": f"Muon (hidden matrices, adjust_lr_fn {c['optim']['adjust_lr_fn']}), AdamW on the rest "
                            f"(robust recipe), wd {c['optim']['weight_decay']:g}",
               "widths": sorted({r["width"] for r in rows}), "steps": c["train"]["steps"],
               "tokens_per_run": c["train"]["steps"] * c["train"]["batch_size"] * c["train"]["seq_len"],
               "seeds": sorted({r["seed"] for r in rows}), "lr_grid": sorted({r["lr"] for r in rows})},
        wall_s=lib.cpu_seconds(rows),
        also={"measured_is": "ours: exponent of the optimal base LR against width, 90% bootstrap interval",
              "families": summaries, "verdicts": {k: v["verdict"] for k, v in summaries.items()}},
    )
    lib.write_json(lib.RESULTS / f"{NAME}.json", {"families": summaries})
    return [record]

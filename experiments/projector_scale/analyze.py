"""Claim 7 (``projector_scale_flat``): move one group's equilibrium norm and see whether the loss cares.

The MLP output projectors take LR x S and WD / S, which leaves their relaxation time ``1/(lr wd)`` alone and moves
their equilibrium norm ``sqrt(lr / 2wd)`` by S. Without multipliers the model must live with the new scale; with a
learnable scalar on each projector it can undo it (the learned scalar ~ 1/S). The paper: loss flat in S with
multipliers, degrading without.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from typing import Any

from widthwise.app.atomic import atomic_savefig
from widthwise.app.plotting import subplots
from widthwise.errors import SweepError

from .. import lib

NAME = "projector_scale"
SWEEPS = ("sweep",)
COMMAND = "python -m experiments.run projector_scale"
PATTERN = r"mlp\.down_proj\.weight$"
#: The learned scalar undoes the move (exponent -1 against S) within this (our choice).
EXPONENT_TOLERANCE = 0.3


def scale(row: Mapping[str, Any]) -> float:
    scales = row["config"]["scaling"]["param_scales"] or {}
    return float(scales.get(PATTERN, {}).get("lr", 1.0))


def projector_state(row: Mapping[str, Any]) -> dict[str, float]:
    """Block-mean RMS of the stored projector ``V`` and block-mean |learned scalar| (1 without multipliers)."""
    w = lib.final_weights(row)
    stored = [float(t.pow(2).mean().sqrt()) for n, t in w.items()
              if "mlp.down_proj" in n and (n.endswith("weight.original") or n.endswith("down_proj.weight"))]
    scalars = [abs(float(t)) for n, t in w.items() if "mlp.down_proj" in n and n.endswith(".scalar")]
    return {"stored_rms": statistics.fmean(stored), "scalar": statistics.fmean(scalars) if scalars else 1.0}


def seed_sd() -> float | None:
    """The seed-to-seed sd of one run's validation loss at this width, pooled from claim 5's runs (same model and
    length class; our stand-in, as this sweep runs one seed); from the committed lrm_gain.json where those runs
    are not on this machine."""
    from ..lrm_gain.analyze import cells, pooled_seed_sd

    try:
        sd, dof = pooled_seed_sd(cells(lib.rows("lrm_gain", "gain")))
    except SweepError:
        path = lib.RESULTS / "lrm_gain.json"
        if not path.is_file():
            return None
        details = json.loads(path.read_text())
        sd, dof = details.get("pooled_seed_sd"), details.get("dof")
    return sd if dof else None


def analyze() -> list[dict[str, Any]]:
    rows = lib.rows(NAME, "sweep", ("completed", "diverged"))
    by_kind: dict[str, list[tuple[float, Mapping[str, Any]]]] = {}
    for r in rows:
        by_kind.setdefault(r["multipliers"], []).append((scale(r), r))
    table = {}
    for kind, items in by_kind.items():
        items.sort(key=lambda x: x[0])
        table[kind] = [{"S": s, "val_loss": r["val_loss"], "status": r["status"], **projector_state(r)}
                       for s, r in items]
    spreads = {k: max(e["val_loss"] for e in v if e["val_loss"] is not None) -
               min(e["val_loss"] for e in v if e["val_loss"] is not None) for k, v in table.items()}
    fits = {}
    for kind, entries in table.items():
        ok = [e for e in entries if e["val_loss"] is not None]
        fits[kind] = {"stored_rms_vs_S": lib.loglog_slope([e["S"] for e in ok], [e["stored_rms"] for e in ok]).value}
        if kind != "none":
            f = lib.loglog_slope([e["S"] for e in ok], [e["scalar"] for e in ok])
            fits[kind]["scalar_vs_S"] = {"exponent": f.value, "interval": f.interval}
            eff = [e["scalar"] * e["stored_rms"] for e in ok]
            fits[kind]["effective_rms_vs_S"] = lib.loglog_slope([e["S"] for e in ok], eff).value
    sd = seed_sd()
    fig, (ax, bx) = subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for i, (kind, entries) in enumerate(sorted(table.items())):
        ok = [e for e in entries if e["val_loss"] is not None]
        ax.errorbar([e["S"] for e in ok], [e["val_loss"] for e in ok], yerr=sd, fmt="o-", color=f"C{i}", capsize=3,
                    label=f"multipliers {kind} (spread {spreads[kind]:.3f})")
        bx.plot([e["S"] for e in ok], [e["stored_rms"] for e in ok], "o-", color=f"C{i}",
                label=f"stored V rms, {kind}")
        if kind != "none":
            bx.plot([e["S"] for e in ok], [e["scalar"] for e in ok], "s--", color=f"C{i}",
                    label=f"learned scalar ({fits[kind]['scalar_vs_S']['exponent']:+.2f})")
    bx.plot([0.25, 4], [4, 0.25], "k:", lw=1, label="1/S")
    ax.set(xscale="log", xlabel="S (projector lr x S, wd / S)", ylabel="validation loss",
           title="Loss against the projectors' equilibrium scale")
    ax.legend(fontsize=8)
    bx.set(xscale="log", yscale="log", xlabel="S", ylabel="value (block mean)",
           title="Projector norm and learned scalar")
    bx.legend(fontsize=7)
    figure = atomic_savefig(fig, lib.FIGURES / "projector_scale_flat.png", dpi=120)
    with_, without = spreads.get("scalar"), spreads.get("none")
    measured = with_ / without if with_ is not None and without else math.nan
    scal = fits.get("scalar", {}).get("scalar_vs_S")
    noise = 2 * math.sqrt(2) * sd if sd else None  # two sd of a difference of two single-seed losses
    # inconclusive also when nothing degrades without multipliers beyond the noise: nothing for them to flatten
    if with_ is None or without is None or noise is None or without <= noise:
        holds = None
    elif without - with_ > noise and scal and abs(scal["exponent"] + 1) <= EXPONENT_TOLERANCE:
        holds = True
    elif with_ >= without - (noise or 0) / 2:
        holds = False
    else:
        holds = None
    interval = ([max(0.0, (with_ - noise) / (without + noise)), (with_ + noise) / max(without - noise, 1e-9)]
                if noise and with_ is not None and without else [math.nan, math.nan])
    c = rows[0]["config"]
    record = lib.claim(
        claim="projector_scale_flat",
        statement="Scaling a group's lr by S and wd by 1/S moves its equilibrium norm by S; with scalar multipliers "
                  "the loss stays flat (the multiplier learns ~1/S), without them it degrades.",
        source="arXiv 2601.04890, the projector scale sweep (section 3)",
        measured=measured, interval=interval, expected="well below 1 (flat with multipliers, degrading without)",
        holds=holds, figures=[lib.rel(figure)], command=COMMAND,
        setup={"model": f"width {c['model']['width']}, {c['model']['depth']} blocks", "recipe":
               f"{c['scaling']['recipe']} base {c['scaling']['base_width']}, AdamW lr {c['optim']['lr']:g}, wd "
               f"{c['optim']['weight_decay']:g}", "group": "every block's mlp.down_proj",
               "S": sorted({scale(r) for r in rows}),
               "widths": [c["model"]["width"]], "steps": c["train"]["steps"],
               "tokens_per_run": c["train"]["steps"] * c["train"]["batch_size"] * c["train"]["seq_len"],
               "seeds": sorted({r["seed"] for r in rows}),
               "relaxation_times": sorted({round(r["relaxation_times"], 2) for r in rows})},
        wall_s=lib.cpu_seconds(rows),
        also={"measured_is": "loss spread over S with scalar multipliers / without", "spreads": spreads,
              "fits": fits, "table": table, "seed_sd_used": sd,
              "interval_from": "the spreads +- 2 sd of a single-seed loss difference (sd pooled from lrm_gain)"},
    )
    lib.write_json(lib.RESULTS / f"{NAME}.json", {"table": table, "fits": fits, "spreads": spreads})
    return [record]

"""Claims 5 and 6: what learnable multipliers buy, and the two stability rules they need.

Claim 5 (``lrm_gain_adamw``, ``lrm_gain_muon``): each (optimizer, multiplier kind) at its own best LR of a sqrt(2)
grid (the mean validation loss over seeds); the gain is the loss without multipliers minus the loss with them
(positive: they help), its interval from the seed spread pooled over every cell (Student t). Beside it the AdamW ->
Muon gain without multipliers (the paper found the two gains equal) and the gap over training at the best LRs (the
paper: it keeps widening during the constant-LR phase).

Claim 6 (``multiplier_wd_needed``, ``clip_exclusion_needed``): row+column multipliers at one LR without their weight
decay, and counted in the clip norm, against the paper's setting; the drift along the query/key symmetry
(``log2 rms(W_q)/rms(W_k)``) over training, the loss, and how often the clip fires.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from widthwise.app.atomic import atomic_savefig
from widthwise.app.plotting import subplots
from widthwise.errors import SweepError

from .. import lib

NAME = "lrm_gain"
SWEEPS = ("gain", "ablations")
COMMAND = "python -m experiments.run lrm_gain"
KINDS = ("none", "scalar", "row_col")
EXPECTED_GAIN = "positive (the paper: a lower loss, +1.2 benchmark points with Adam and +1.1 with Muon)"


def cells(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, float], dict[int, float]]:
    """``(optimizer, kind, lr) -> {seed: val_loss}`` over completed runs."""
    out: dict[tuple[str, str, float], dict[int, float]] = {}
    for r in rows:
        if r["val_loss"] is not None:
            out.setdefault((r["optimizer"], r["multipliers"], r["lr"]), {})[r["seed"]] = r["val_loss"]
    return out


def pooled_seed_sd(table: Mapping[Any, Mapping[int, float]]) -> tuple[float, int]:
    """The within-cell standard deviation of one seed's loss, pooled over cells with 2+ seeds, and its dof."""
    ss, dof = 0.0, 0
    for losses in table.values():
        if len(losses) > 1:
            ss += (len(losses) - 1) * statistics.variance(losses.values())
            dof += len(losses) - 1
    return (math.sqrt(ss / dof) if dof else math.nan), dof


def best(table: Mapping[tuple[str, str, float], Mapping[int, float]], optimizer: str, kind: str) -> dict[str, Any]:
    """The best LR of ``(optimizer, kind)`` by mean loss over seeds, whether it is on the grid's edge."""
    lrs = sorted(lr for (o, k, lr) in table if o == optimizer and k == kind)
    if not lrs:
        raise ValueError(f"{NAME}: no runs of {optimizer}/{kind}")
    means = {lr: statistics.fmean(table[(optimizer, kind, lr)].values()) for lr in lrs}
    lr = min(means, key=means.get)
    return {"lr": lr, "loss": means[lr], "seeds": dict(table[(optimizer, kind, lr)]), "by_lr": means,
            "edge": lr in (lrs[0], lrs[-1]) and len(lrs) > 1}


def difference(a: Mapping[str, Any], b: Mapping[str, Any], sd: float, dof: int) -> dict[str, Any]:
    """``a.loss - b.loss`` (positive: ``b`` is better), with a 95% interval from the pooled seed sd and the per-seed
    (paired) differences."""
    value = a["loss"] - b["loss"]
    se = sd * math.sqrt(1 / len(a["seeds"]) + 1 / len(b["seeds"]))
    half = lib.t95(dof) * se
    paired = [a["seeds"][s] - b["seeds"][s] for s in sorted(set(a["seeds"]) & set(b["seeds"]))]
    return {"value": value, "interval": [value - half, value + half], "per_seed": paired}


def paired(table: Mapping[tuple[str, str, float], Mapping[int, float]], optimizer: str, kind: str,
           a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any] | None:
    """The best-vs-best gain with a paired interval: seeds share data order and init, so the sd of a per-seed
    difference ``none - kind`` is pooled over the LRs where both ran every seed (Student t on its dof)."""
    ss, dof = 0.0, 0
    for (o, k, lr), losses in table.items():
        other = table.get((o, "none", lr))
        if (o, k) != (optimizer, kind) or other is None:
            continue
        common = sorted(set(losses) & set(other))
        if len(common) > 1:
            ss += (len(common) - 1) * statistics.variance([other[s] - losses[s] for s in common])
            dof += len(common) - 1
    common = sorted(set(a["seeds"]) & set(b["seeds"]))
    if not dof or not common:
        return None
    diffs = [a["seeds"][s] - b["seeds"][s] for s in common]
    value, half = statistics.fmean(diffs), lib.t95(dof) * math.sqrt(ss / dof) / math.sqrt(len(diffs))
    return {"value": value, "interval": [value - half, value + half], "sd": math.sqrt(ss / dof), "dof": dof}


def sign_holds(interval: Sequence[float]) -> bool | None:
    """Positive (the claimed direction) when the whole interval is above 0, not when it is below, else unknown."""
    return True if interval[0] > 0 else False if interval[1] < 0 else None


def val_curve(row: Mapping[str, Any]) -> dict[int, float]:
    return {m["step"]: m["val_loss"] for m in lib.metrics(row) if m.get("val_loss") is not None}


def curves(rows: Sequence[Mapping[str, Any]], optimizer: str, kind: str, lr: float) -> dict[int, float]:
    """The seed-mean validation loss over training of ``(optimizer, kind, lr)``."""
    picked = [val_curve(r) for r in rows if (r["optimizer"], r["multipliers"], r["lr"]) == (optimizer, kind, lr)]
    steps = sorted(set.intersection(*(set(c) for c in picked)))
    return {s: statistics.fmean(c[s] for c in picked) for s in steps}


def widening(rows: Sequence[Mapping[str, Any]], optimizer: str, kind: str, b0: Mapping[str, Any],
             b1: Mapping[str, Any]) -> dict[str, Any]:
    """The gap (no multipliers minus ``kind``) over training at each one's best LR, and its slope per 1k steps
    over the constant-LR phase (after warmup, before the decay)."""
    c = rows[0]["config"]
    steps_total, warm = c["train"]["steps"], c["schedule"]["warmup"]
    decay_start = steps_total * (1 - c["schedule"]["decay_fraction"])
    base, other = curves(rows, optimizer, "none", b0["lr"]), curves(rows, optimizer, kind, b1["lr"])
    steps = sorted(set(base) & set(other))
    gap = {s: base[s] - other[s] for s in steps}
    stable = [s for s in steps if warm < s <= decay_start]
    slope = (lib.fit_line(stable, [gap[s] for s in stable]).slope * 1000) if len(stable) > 2 else None
    return {"gap": gap, "constant_phase_slope_per_1k_steps": slope, "decay_starts": decay_start}


def plot_gain(table, bests, gaps, sd: float, path):
    fig, axes = subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    for ax, optimizer in zip(axes[:2], ("adamw", "muon"), strict=True):
        for i, kind in enumerate(KINDS):
            if (optimizer, kind) not in bests:
                continue
            by = bests[(optimizer, kind)]["by_lr"]
            ax.errorbar(list(by), list(by.values()), yerr=sd / math.sqrt(2) if math.isfinite(sd) else None,
                        fmt="o-", color=f"C{i}", capsize=3, label=kind)
        ax.set(xscale="log", xlabel="base LR (proxy width 32)", ylabel="validation loss (mean of seeds)",
               title=f"{optimizer}: loss against LR")
        ax.legend(fontsize=8)
    ax = axes[2]
    for i, ((optimizer, kind), g) in enumerate(gaps.items()):
        ax.plot(list(g["gap"]), list(g["gap"].values()), "o-" if optimizer == "adamw" else "s--", color=f"C{i}",
                label=f"{optimizer}: none - {kind}")
    ax.axhline(0, color="0.6", lw=0.8)
    if gaps:
        ax.axvline(next(iter(gaps.values()))["decay_starts"], color="0.6", ls=":", lw=0.8, label="decay starts")
    ax.set(xlabel="step", ylabel="validation loss gap (positive: multipliers better)",
           title="Gap over training (each at its best LR)")
    ax.legend(fontsize=7)
    return atomic_savefig(fig, path, dpi=120)


def gain_claims(rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    table = cells(rows)
    sd, dof = pooled_seed_sd(table)
    optimizers = sorted({o for o, _, _ in table})
    bests = {(o, k): best(table, o, k) for o in optimizers for k in KINDS if any(
        (o, k) == (a, b) for a, b, _ in table)}
    gains = {(o, k): difference(bests[(o, "none")], bests[(o, k)], sd, dof)
             for (o, k) in bests if k != "none" and (o, "none") in bests}
    gaps = {(o, k): widening(rows, o, k, bests[(o, "none")], bests[(o, k)]) for (o, k) in gains}
    muon_gain = (difference(bests[("adamw", "none")], bests[("muon", "none")], sd, dof)
                 if ("muon", "none") in bests and ("adamw", "none") in bests else None)
    figure = plot_gain(table, bests, gaps, sd, lib.FIGURES / "lrm_gain.png")
    c = rows[0]["config"]
    setup = {"model": f"LLaMA-style, {c['model']['depth']} blocks, width {c['model']['width']}, heads "
                      f"{c['model']['heads']}/{c['model']['kv_heads']}, vocab {c['data']['vocab_size']}",
             "recipe": f"{c['scaling']['recipe']}, base width {c['scaling']['base_width']}, wd "
                       f"{c['optim']['weight_decay']:g}",
             "widths": [c["model"]["width"]], "steps": c["train"]["steps"],
             "tokens_per_run": c["train"]["steps"] * c["train"]["batch_size"] * c["train"]["seq_len"],
             "schedule": f"wsd, warmup {c['schedule']['warmup']}, decay over the last "
                         f"{c['schedule']['decay_fraction']:.0%}",
             "lr_grid": sorted({r["lr"] for r in rows}), "seeds": sorted({r["seed"] for r in rows}),
             "multipliers": "placement all (head none), lr = base lr, wd 2e-3, out of the clip norm",
             "relaxation_times": sorted({round(r["relaxation_times"], 2) for r in rows})}
    records = []
    for optimizer in optimizers:
        key = (optimizer, "row_col")
        if key not in gains:
            continue
        g = gains[key]
        also = {"scalar_gain": gains.get((optimizer, "scalar")),
                "paired_gain": paired(table, optimizer, "row_col", bests[(optimizer, "none")], bests[key]),
                "paired_scalar_gain": paired(table, optimizer, "scalar", bests[(optimizer, "none")],
                                             bests[(optimizer, "scalar")]) if (optimizer, "scalar") in bests else None,
                "best": {
            k: {x: bests[(optimizer, k)][x] for x in ("lr", "loss", "edge")} for k in KINDS if (optimizer, k) in bests},
            "pooled_seed_sd": sd, "pooled_seed_dof": dof,
            "gap_over_training": {k[1]: v for k, v in gaps.items() if k[0] == optimizer},
            "adamw_to_muon_gain_without_multipliers": muon_gain,
            "interval_from": "t (pooled seed sd over every cell) on the difference of seed means"}
        records.append(lib.claim(
            claim=f"lrm_gain_{optimizer}",
            statement=f"Learnable (row+column) multipliers lower the loss under {optimizer}, each at its own best "
                      "LR, and the gap keeps widening during the constant-LR phase.",
            source="arXiv 2601.04890, Table 2 (Falcon-H1-0.5B: Adam 30.80 -> 32.01, Muon 31.88 -> 32.98) and its "
                   "loss curves",
            measured=g["value"], interval=g["interval"], expected=EXPECTED_GAIN, holds=sign_holds(g["interval"]),
            figures=[lib.rel(figure)], command=COMMAND, setup=setup,
            wall_s=lib.cpu_seconds([r for r in rows if r["optimizer"] == optimizer]), also=also))
    details = {"bests": {f"{o}/{k}": v for (o, k), v in bests.items()},
               "gains": {f"{o}/{k}": v for (o, k), v in gains.items()}, "adamw_to_muon": muon_gain,
               "gaps": {f"{o}/{k}": v for (o, k), v in gaps.items()}, "pooled_seed_sd": sd, "dof": dof}
    return records, details


def qk_drift(row: Mapping[str, Any]) -> tuple[list[int], list[float]]:
    """The largest |query/key drift| over the blocks (log2 units) at each diagnostics step."""
    steps, values = [], []
    for r in lib.history(row):
        sym = {k: v for k, v in (r.get("symmetry") or {}).items() if k.startswith("qk.")}
        if sym:
            steps.append(r["step"])
            values.append(max(abs(v) for v in sym.values()))
    return steps, values


def clip_fraction(row: Mapping[str, Any]) -> float:
    clip = row["config"]["optim"]["grad_clip"]
    norms = [m["grad_norm"] for m in lib.metrics(row) if "grad_norm" in m]
    return sum(n > clip for n in norms) / len(norms)


def baseline(gain_rows: Sequence[Mapping[str, Any]] | None, details: Mapping[str, Any], lr: float) -> dict[int, float]:
    """AdamW without multipliers at ``lr``, by seed: from claim 5's runs, or where they are not on this machine
    from the committed ``lrm_gain.json`` (its best cell, when that is at ``lr``)."""
    if gain_rows is not None:
        return {r["seed"]: r["val_loss"] for r in gain_rows if (r["optimizer"], r["multipliers"], r["lr"]) ==
                ("adamw", "none", lr) and r["val_loss"] is not None}
    cell = details.get("bests", {}).get("adamw/none", {})
    return {int(k): v for k, v in cell.get("seeds", {}).items()} if cell.get("lr") == lr else {}


def ablation_claims(rows: Sequence[Mapping[str, Any]], none: Mapping[int, float]) -> list[dict]:
    def variant(row):
        return (row["config"]["multipliers"]["weight_decay"] > 0, bool(row["config"]["optim"]["clip_multipliers"]))

    groups: dict[tuple[bool, bool], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(variant(r), []).append(r)
    names = {(True, False): "paper (wd 2e-3, out of the clip)", (False, False): "no multiplier WD",
             (True, True): "in the clip norm", (False, True): "neither"}
    summary = {}
    for key, rs in groups.items():
        done = [r for r in rs if r["status"] == "completed" and r["val_loss"] is not None]
        drifts = [qk_drift(r) for r in rs]
        summary[key] = {"name": names[key], "losses": {r["seed"]: r["val_loss"] for r in done},
                        "diverged": sum(r["status"] == "diverged" for r in rs), "runs": len(rs),
                        "final_qk_drift": statistics.fmean(d[1][-1] for d in drifts if d[1]) if any(
                            d[1] for d in drifts) else None,
                        "clip_fraction": statistics.fmean(clip_fraction(r) for r in rs), "drift_series": drifts[0]}
    lr = rows[0]["lr"]
    table = {k: v["losses"] for k, v in summary.items()}
    table["none"] = none
    sd, dof = pooled_seed_sd(table)

    def diff(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any]:
        return difference({"loss": statistics.fmean(a.values()), "seeds": a},
                          {"loss": statistics.fmean(b.values()), "seeds": b}, sd, dof)

    paper = summary[(True, False)]["losses"]
    fig, (ax, bx) = subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for i, s in enumerate(sorted(summary.values(), key=lambda v: v["name"])):
        steps, values = s["drift_series"]
        ax.plot(steps, values, "o-", color=f"C{i}", label=s["name"])
        bx.bar(i, statistics.fmean(s["losses"].values()) if s["losses"] else math.nan, color=f"C{i}",
               label=s["name"])
    if none:
        bx.axhline(statistics.fmean(none.values()), color="k", ls="--", lw=1, label="no multipliers")
    ax.set(xlabel="step", ylabel="max over blocks |log2 rms(W_q)/rms(W_k)|", title="Query/key symmetry drift")
    ax.legend(fontsize=8)
    bx.set(ylabel="validation loss (mean of seeds)", title=f"Loss at lr {lr:g} (row+column, AdamW)", xticks=[])
    lo = min(statistics.fmean(s["losses"].values()) for s in summary.values() if s["losses"])
    bx.set_ylim(lo - 0.03, None)
    bx.legend(fontsize=7)
    figure = atomic_savefig(fig, lib.FIGURES / "multiplier_ablations.png", dpi=120)
    c = rows[0]["config"]
    setup = {"model": f"width {c['model']['width']}, {c['model']['depth']} blocks (as lrm_gain)",
             "optimizer": f"AdamW, lr {lr:g}, wd {c['optim']['weight_decay']:g}, clip {c['optim']['grad_clip']:g}",
             "multipliers": "row_col, placement all", "widths": [c["model"]["width"]], "steps": c["train"]["steps"],
             "tokens_per_run": c["train"]["steps"] * c["train"]["batch_size"] * c["train"]["seq_len"],
             "seeds": sorted({r["seed"] for r in rows})}
    no_wd = diff(summary[(False, False)]["losses"], paper)
    in_clip = diff(summary[(True, True)]["losses"], paper)
    gain_paper = diff(none, paper) if none else None
    gain_clip = diff(none, summary[(True, True)]["losses"]) if none else None
    wall = lib.cpu_seconds(rows)
    clean = {names[k]: {x: v[x] for x in ("losses", "diverged", "final_qk_drift", "clip_fraction")}
             for k, v in summary.items()}
    return [
        lib.claim(
            claim="multiplier_wd_needed",
            statement="Without weight decay the multipliers drift along forward-pass symmetries (W_Q/W_K product, "
                      "residual scale, norm gain vs columns) until activations blow up.",
            source="arXiv 2601.04890, section 4.3 (stability rule 1: wd 2e-3 on all multipliers)",
            measured=no_wd["value"], interval=no_wd["interval"],
            expected="positive loss cost without WD, a growing symmetry drift, NaN in bf16 in long runs",
            holds=sign_holds(no_wd["interval"]), figures=[lib.rel(figure)], command=COMMAND, setup=setup,
            wall_s=wall, also={"measured_is": "loss(no multiplier WD) - loss(paper's setting)", "variants": clean}),
        lib.claim(
            claim="clip_exclusion_needed",
            statement="Counting the multipliers in the global gradient norm clips everything early and erases "
                      "their gain.",
            source="arXiv 2601.04890, section 4.3 (stability rule 2)",
            measured=in_clip["value"], interval=in_clip["interval"],
            expected="positive: a higher loss, the multipliers' gain erased",
            holds=sign_holds(in_clip["interval"]), figures=[lib.rel(figure)], command=COMMAND, setup=setup,
            wall_s=wall, also={"measured_is": "loss(multipliers in the clip norm) - loss(paper's setting)",
                               "gain_over_no_multipliers_paper_setting": gain_paper,
                               "gain_over_no_multipliers_in_clip": gain_clip, "variants": clean}),
    ]


GAIN_CLAIMS = ("lrm_gain_adamw", "lrm_gain_muon")


def analyze() -> list[dict[str, Any]]:
    try:
        gain_rows = lib.rows(NAME, "gain", ("completed", "diverged"))
    except SweepError:  # its runs are not on this machine and not archived: keep what was committed
        gain_rows = None
    if gain_rows is not None:
        records, details = gain_claims(gain_rows)
    else:
        details = json.loads((lib.RESULTS / f"{NAME}.json").read_text())
        records = [c for c in details.pop("claims") if c["claim"] in GAIN_CLAIMS]
    try:
        ablation_rows = lib.rows(NAME, "ablations", ("completed", "diverged"))
    except SweepError:  # not started yet
        ablation_rows = []
    if ablation_rows:
        records += ablation_claims(ablation_rows, baseline(gain_rows, details, ablation_rows[0]["lr"]))
    lib.write_json(lib.RESULTS / f"{NAME}.json", details | {"claims": records})
    return records

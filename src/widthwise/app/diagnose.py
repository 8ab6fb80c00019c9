"""``widthwise diagnose RUN_DIR``: measure a trained run's checkpoint and plot its diagnostics over training.

Writes ``RUN_DIR/diagnostics.json`` and ``RUN_DIR/plots/diagnostics/*.png``. Per matrix: exact spectra
(top singular value, stable rank) of the weight the layer applies and of the stored weight, RMS of the stored
weight against the AdamW noise equilibrium at the group's real LR and WD and against the "Adam Brownian
motion" reference run with the same schedule from the same init, and the sublayer gain on validation text.
Per layer type of multipliers: statistics and symmetry drift. Over training (from ``diagnostics.jsonl``):
sigma_max, norms against the equilibrium prediction, gains, drift.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils import parametrize

from ..diagnostics.equilibrium import abm_trajectory, equilibrium_report
from ..diagnostics.gains import gain_summary, sublayer_gains
from ..diagnostics.matrices import as_linear_map, effective_weight, matrix_sites, stored_weight
from ..diagnostics.multiplier_stats import drift_warnings, multiplier_stats, multiplier_values, symmetry_drift
from ..diagnostics.naming import layer_type, pool_by_layer_type, sort_layer_types
from ..diagnostics.spectra import rms
from ..errors import RunError
from ..roles import parameter_sites
from .config import apply_overrides
from .rundir import RunDir
from .session import Session

logger = logging.getLogger(__name__)

#: Elements of the tensor an AdamW ABM reference simulates (RMS is per element, so the shape does not matter).
ABM_SHAPE = (128, 128)


def diagnose(run_dir: Path, *, step: int | None = None, sequences: int = 16, plots: bool = True) -> dict[str, Any]:
    """Measure the run's checkpoint (the latest, or ``step``), write ``diagnostics.json`` and plots; return it."""
    run = RunDir.open(run_dir, "diagnose")
    config = apply_overrides(run.config(), ["train.compile=false", "train.dtype=float32", "train.progress=false"])
    ckpt = run.checkpoint(step)
    if ckpt is None:
        raise RunError(f"diagnose {run.path}: no checkpoint to measure (the run wrote none yet)")
    session = Session(config)
    session.load_state_dict(ckpt.session_state())
    model, built = session.model, session.built
    model.eval()
    logger.info(f"diagnosing {run.path} at step {ckpt.step}")

    sites = matrix_sites(model, built.plan.roles())
    matrices: dict[str, dict[str, Any]] = {}
    spectra: dict[str, torch.Tensor] = {}
    for name, site in sites.items():
        eff = as_linear_map(effective_weight(site), site)
        sv = _svdvals(eff)
        spectra[name] = sv
        entry: dict[str, Any] = {
            "role": built.plan[name].role.value, "layer_type": layer_type(name), "shape": list(site.shape),
            "sigma_max": float(sv[0]), "stable_rank": float((sv**2).sum() / sv[0] ** 2) if sv[0] != 0 else 0.0,
            "rms_effective": rms(eff),
        }
        if parametrize.is_parametrized(site.module, site.tensor_name):  # the applied weight is not V
            entry["sigma_max_stored"] = float(_svdvals(as_linear_map(stored_weight(site), site))[0])
        matrices[name] = entry

    report = equilibrium_report(model, built.optimizer)
    abm = _abm_references(session, report, ckpt.step)
    for name, entry in report.items():
        if name not in matrices:
            continue
        m = matrices[name]
        m.update(rms=entry["rms"], lr=entry["lr"], weight_decay=entry["weight_decay"], optimizer=entry["optimizer"],
                 equilibrium_rms=entry["equilibrium_rms"], equilibrium_ratio=entry["ratio"],
                 relaxation_steps=entry["relaxation_steps"])
        ref = abm.get(name)
        if ref is not None:
            m["relaxation"] = ref["relaxation"]
            m["abm_rms"] = ref["trajectory"][-1] if ref["trajectory"] else None
            m["abm_ratio"] = m["rms"] / m["abm_rms"] if m["abm_rms"] else None
    for name, site in sites.items():
        matrices[name].setdefault("rms", rms(stored_weight(site)))

    batch = _gain_batch(session, sequences)
    gains = sublayer_gains(model, batch)
    module_names = {s.module_name for s in sites.values()}
    for name, site in sites.items():
        if site.module_name in gains:
            matrices[name]["sublayer_gain"] = gains[site.module_name]

    drift = symmetry_drift(model)
    result: dict[str, Any] = {
        "run_dir": str(run.path), "step": ckpt.step, "recipe": built.recipe.name, "optimizer": config.optim.name,
        "width": built.model_config.width, "base_width": built.base_config.width,
        "gain_sequences": int(batch.shape[0]), "matrices": matrices,
        "blocks": {k: v for k, v in gains.items() if k not in module_names},
        "gains": gain_summary(gains),
        "layer_types": _pooled(matrices),
        "multipliers": {"stats": multiplier_stats(model), "symmetry": drift,
                        "warnings": drift_warnings(drift, config.diagnostics.drift_threshold) if drift else []},
        "notes": _notes(matrices),
    }
    run.write_diagnosis(result)
    if plots:
        from .diagnose_plots import write_diagnostic_plots

        history = run.diagnostics_history(up_to=ckpt.step)
        result["plots"] = [str(p) for p in write_diagnostic_plots(
            run.diagnosis_plots_dir, result, spectra, multiplier_values(model), history, abm, title=run.path.name)]
    return result


def _svdvals(matrix: torch.Tensor) -> torch.Tensor:
    """Exact singular values (CPU); all NaN for a matrix holding non-finite values (a run that blew up)."""
    matrix = matrix.cpu()
    if not bool(torch.isfinite(matrix).all()):
        return torch.full((min(matrix.shape),), float("nan"))
    return torch.linalg.svdvals(matrix)


def _gain_batch(session: Session, sequences: int) -> torch.Tensor:
    xs = torch.cat([x for x, _ in session.val])[:sequences]
    return xs.to(session.runtime.device)


def _abm_references(session: Session, report: dict[str, dict], step: int) -> dict[str, dict[str, Any]]:
    """Per matrix, the ABM trajectory of its group (same optimizer, LR schedule, WD and init) up to ``step``.

    Matrices sharing (optimizer, peak LR, WD, init std, and for Muon the shape) share one simulation.
    """
    plan, scheduler = session.built.plan, session.built.scheduler
    ratio = scheduler.lr_lambdas[0]
    ratios = [ratio(t) for t in range(step)]
    sites = parameter_sites(session.model)
    groups = {id(p): g for g in session.built.optimizer.param_groups for p in g["params"]}
    cache: dict[tuple, dict[str, Any]] = {}
    out: dict[str, dict[str, Any]] = {}
    for name, entry in report.items():
        group = groups.get(id(sites[name].param))
        init_std = plan[name].init_std
        if group is None or step == 0 or not init_std:
            continue
        peak = group.get("initial_lr", group["lr"])
        wd = group["weight_decay"]
        muon = entry["optimizer"] == "muon"
        shape = tuple(sites[name].param.shape) if muon else ABM_SHAPE
        key = (entry["optimizer"], peak, wd, init_std, shape)
        if key not in cache:
            lrs = [peak * r for r in ratios]
            kwargs: dict[str, Any] = {"optimizer": entry["optimizer"]}
            if not muon and "betas" in group:
                kwargs["betas"] = tuple(group["betas"])
            cache[key] = {"trajectory": abm_trajectory(lrs, wd, init_std=init_std, shape=shape, **kwargs),
                          "relaxation": sum(lrs) * wd, "lrs": lrs, "weight_decay": wd, "init_std": init_std,
                          "optimizer": entry["optimizer"]}
        out[name] = cache[key]
    return out


def _pooled(matrices: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = ("sigma_max", "sigma_max_stored", "rms", "equilibrium_ratio", "abm_ratio", "sublayer_gain", "stable_rank")
    pooled: dict[str, dict[str, float]] = {}
    for key in keys:
        for kind, value in pool_by_layer_type({n: m.get(key) for n, m in matrices.items()
                                               if isinstance(m.get(key), (int, float))}).items():
            pooled.setdefault(kind, {})[key] = value
    return {kind: pooled[kind] for kind in sort_layer_types(pooled)}


def _notes(matrices: dict[str, dict[str, Any]]) -> list[str]:
    """Plain-language readings of the numbers (how far from equilibrium the run got)."""
    notes = []
    relax = [m["relaxation"] for m in matrices.values() if isinstance(m.get("relaxation"), float)]
    if relax and max(relax) < 1:
        notes.append(f"the run lasted {max(relax):.2f} relaxation times (sum of lr*wd) at most: the weights have not "
                     "reached the noise equilibrium yet; compare rms with abm_rms (same schedule and init), not with "
                     "equilibrium_rms")
    above = sorted(n for n, m in matrices.items() if isinstance(m.get("abm_ratio"), float) and m["abm_ratio"] > 1.5)
    if above:
        notes.append(f"{len(above)} matrices sit over 1.5x their ABM reference (signal-driven growth), e.g. {above[0]}")
    return notes


__all__ = ["diagnose"]

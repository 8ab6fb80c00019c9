"""Diagnostics during training: one call every N steps gives a ``diagnostics.jsonl`` record.

Cheap enough to run inside a training loop (the cost is measured by ``widthwise bench``
and stored in each run's ``summary.json``): power iteration warm-started from the previous call, one forward
pass over a few fixed sequences for the sublayer gains (from the second call on stopped before the head where its
gain is cheaper from its input and weight than from the logits), and reductions over the weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..roles import ParamSite
from .equilibrium import equilibrium_report
from .gains import gain_modules, gain_summary, sublayer_gains
from .matrices import effective_weight, matrix_sites, stored_weight
from .multiplier_stats import SymmetryMonitor, drift_warnings, multiplier_groups, multiplier_stats
from .naming import pool_by_layer_type
from .spectra import rms_many, site_matrices, top_sigmas


class TrainingDiagnostics:
    """Measures a model (and its optimizer's live LR/WD) every time :meth:`measure` is called.

    Per matrix ``sigma_max`` is the top singular value of the weight the layer applies; where that is not the
    stored tensor (learnable multipliers ``diag(r) V diag(c)``, fixed scales) ``sigma_max_stored`` is the stored
    ``V``'s, from its own warm-started power iteration over those matrices only (elsewhere the two are one matrix).

    ``batch`` is the fixed input of the sublayer gains (the same sequences every time, so gains are
    comparable across steps); ``None`` skips gains. A symmetry-drift warning is reported once per monitor,
    when it first passes ``drift_threshold`` (log2 units).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        batch: Any = None,
        *,
        spectra: bool = True,
        drift_threshold: float = 3.0,
    ) -> None:
        self.model, self.optimizer, self.batch = model, optimizer, batch
        self.spectra, self.drift_threshold = spectra, drift_threshold
        self.warned: set[str] = set()
        # What does not change while the model trains, found once: classification walks every module (and
        # builds every effective weight through hasattr), which cost more than the measurements themselves.
        self.sites = matrix_sites(model)
        #: Matrices whose applied weight is not the stored one (learnable multipliers, fixed scales).
        self.parametrized = [n for n, s in self.sites.items() if parametrize.is_parametrized(s.module, s.tensor_name)]
        self.gain_modules = gain_modules(model) if batch is not None else {}
        #: The measured layer that the first measurement found called last (a head), if an ``nn.Linear``: later
        #: gains stop the forward there (``sublayer_gains(stop_at=...)``); ``""`` until that first measurement.
        self.gains_stop_at: str | None = ""
        self.matrix_modules = {s.module_name for s in self.sites.values()}
        self.multipliers = multiplier_groups(model)
        self.symmetry = SymmetryMonitor(model)

    @torch.no_grad()
    def measure(self, step: int) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        """``(record, tensorboard scalars, new warnings)`` for the model as it is at ``step``.

        Each parametrized weight is built once (``parametrize.cached``): the gains' forward pass reuses the
        effective weights the spectra and RMS measured.
        """
        with parametrize.cached():
            return self._measure(step)

    def _measure(self, step: int) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        matrices: dict[str, dict[str, Any]] = {name: {} for name in self.sites}
        # Each effective weight is built once per measurement, shared by its RMS, sigma_max and the qk drift.
        built = {name: effective_weight(self.sites[name]) for name in self.parametrized}

        def applied(site: ParamSite) -> torch.Tensor:
            return built[site.name] if site.name in built else effective_weight(site)

        for name, value in zip(self.parametrized, rms_many([built[n] for n in self.parametrized]), strict=True):
            matrices[name]["rms_effective"] = value
        if self.spectra:
            for name, sigma in top_sigmas(site_matrices(self.sites, applied), "effective").items():
                matrices[name]["sigma_max"] = sigma
            if self.parametrized:  # the stored V of the others is the matrix just measured: not measured twice
                stored = top_sigmas(site_matrices(self.sites, stored_weight, self.parametrized), "stored")
                for name in self.parametrized:
                    matrices[name]["sigma_max_stored"] = stored[name]
        if self.optimizer is not None:
            for name, entry in equilibrium_report(self.model, self.optimizer, sites=self.sites).items():
                matrices[name].update(rms=entry["rms"], lr=entry["lr"], weight_decay=entry["weight_decay"],
                                      equilibrium_rms=entry["equilibrium_rms"], equilibrium_ratio=entry["ratio"])
        missing = [name for name in self.sites if "rms" not in matrices[name]]
        for name, value in zip(missing, rms_many([self.sites[n].param for n in missing]), strict=True):
            matrices[name]["rms"] = value
        record: dict[str, Any] = {"step": step, "matrices": matrices}
        if self.batch is not None:
            gains = self._gains()
            for name, site in self.sites.items():
                if site.module_name in gains:
                    matrices[name]["sublayer_gain"] = gains[site.module_name]
            record["blocks"] = {k: v for k, v in gains.items() if k not in self.matrix_modules}
            record["gains"] = gain_summary(gains)
        stats = multiplier_stats(self.model, groups=self.multipliers)
        if stats:
            record["multipliers"] = stats
        drift = self.symmetry(applied)
        if drift:
            record["symmetry"] = drift
        record["warnings"] = drift_warnings(drift, self.drift_threshold) if drift else []
        fresh = {k: v for k, v in drift.items() if abs(v) > self.drift_threshold and k not in self.warned}
        self.warned.update(fresh)
        new = drift_warnings(fresh, self.drift_threshold) if fresh else []
        return record, self.scalars(record), new

    def _gains(self) -> dict[str, float]:
        if self.gains_stop_at != "":
            return sublayer_gains(self.model, self.batch, modules=self.gain_modules, stop_at=self.gains_stop_at)
        order: list[str] = []
        gains = sublayer_gains(self.model, self.batch, modules=self.gain_modules, order=order)
        last = order[-1] if order else None
        fits = last is not None and order.count(last) == 1 and type(self.gain_modules[last]) is nn.Linear
        self.gains_stop_at = last if fits else None
        return gains

    @staticmethod
    def scalars(record: dict[str, Any]) -> dict[str, dict[str, float]]:
        """The TensorBoard view of a record: each measure pooled over blocks by layer type."""
        out: dict[str, dict[str, float]] = {}
        for key in ("sigma_max", "rms", "equilibrium_ratio", "sublayer_gain"):
            pooled = pool_by_layer_type({n: m[key] for n, m in record["matrices"].items()
                                         if _finite(m.get(key))})
            if pooled:
                out[key] = pooled
        if record.get("symmetry"):
            out["symmetry"] = {k: v for k, v in record["symmetry"].items() if _finite(v)}
        if record.get("gains"):
            out["gains"] = {k: v for k, v in record["gains"].items() if _finite(v)}
        return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

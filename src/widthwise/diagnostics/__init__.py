"""Diagnostics: spectra, sublayer gains, the noise equilibrium, multipliers.

The measurements the two papers' arguments rest on (BRIEF sections 1-3): top singular values that scale as
``sqrt(eta/lam) d^0.75`` and sublayer gains that must match across widths (arXiv 2510.15262), weight norms
pinned at the AdamW weight-decay/noise equilibrium and multipliers that escape it (arXiv 2601.04890).
"""

from .equilibrium import abm_trajectory, equilibrium_report, equilibrium_rms, relaxation_steps
from .gains import gain_summary, sublayer_gains
from .monitor import TrainingDiagnostics
from .multiplier_stats import drift_warnings, multiplier_stats, multiplier_values, symmetry_drift
from .spectra import rms, singular_values, spectral_summary, stable_rank, stable_ranks, top_singular_values

__all__ = [
    "TrainingDiagnostics",
    "abm_trajectory",
    "drift_warnings",
    "equilibrium_report",
    "equilibrium_rms",
    "gain_summary",
    "multiplier_stats",
    "multiplier_values",
    "relaxation_steps",
    "rms",
    "singular_values",
    "spectral_summary",
    "stable_rank",
    "stable_ranks",
    "sublayer_gains",
    "symmetry_drift",
    "top_singular_values",
]

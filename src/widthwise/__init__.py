"""widthwise: width-robust LLM pretraining.

Learnable multipliers (arXiv 2601.04890) and robust layerwise LR/WD scaling (arXiv 2510.15262), with muP,
AdamW and Muon, for any ``nn.Module``.
"""

from .clipping import clip_grad_norm_
from .diagnostics import (
    TrainingDiagnostics,
    abm_trajectory,
    drift_warnings,
    equilibrium_report,
    equilibrium_rms,
    gain_summary,
    multiplier_stats,
    relaxation_steps,
    singular_values,
    spectral_summary,
    stable_rank,
    sublayer_gains,
    symmetry_drift,
    top_singular_values,
)
from .forward import apply_forward_multipliers
from .initialization import init_weights
from .multipliers import add_multipliers, fold_multipliers, multiplier_parameters
from .optim.build import build_optimizer
from .optim.combined import CombinedOptimizer
from .optim.muon import BatchedMuon
from .planning import ForwardMultiplier, ParamPlan, Plan, plan
from .recipes import PRESETS, Recipe, get_recipe
from .roles import Role, classify
from .schedules import lr_schedule

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "BatchedMuon",
    "CombinedOptimizer",
    "ForwardMultiplier",
    "ParamPlan",
    "Plan",
    "Recipe",
    "Role",
    "TrainingDiagnostics",
    "abm_trajectory",
    "add_multipliers",
    "apply_forward_multipliers",
    "build_optimizer",
    "classify",
    "clip_grad_norm_",
    "drift_warnings",
    "equilibrium_report",
    "equilibrium_rms",
    "fold_multipliers",
    "gain_summary",
    "get_recipe",
    "init_weights",
    "lr_schedule",
    "multiplier_parameters",
    "multiplier_stats",
    "plan",
    "relaxation_steps",
    "singular_values",
    "spectral_summary",
    "stable_rank",
    "sublayer_gains",
    "symmetry_drift",
    "top_singular_values",
]

"""widthwise: width-robust LLM pretraining.

Learnable multipliers (arXiv 2601.04890) and robust layerwise LR/WD scaling (arXiv 2510.15262), with muP,
AdamW and Muon, for any ``nn.Module``.

The public names load on first use (PEP 562), so ``import widthwise`` (and the command line's ``--help``) stays
cheap until a name is touched; ``widthwise.<submodule>`` imports that submodule.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the submodule that defines it.
_EXPORTS = {
    "clip_grad_norm_": "clipping",
    "clip_groups": "clipping",
    "TrainingDiagnostics": "diagnostics",
    "abm_trajectory": "diagnostics",
    "drift_warnings": "diagnostics",
    "equilibrium_report": "diagnostics",
    "equilibrium_rms": "diagnostics",
    "gain_summary": "diagnostics",
    "multiplier_stats": "diagnostics",
    "relaxation_steps": "diagnostics",
    "singular_values": "diagnostics",
    "spectral_summary": "diagnostics",
    "stable_rank": "diagnostics",
    "sublayer_gains": "diagnostics",
    "symmetry_drift": "diagnostics",
    "top_singular_values": "diagnostics",
    "apply_forward_multipliers": "forward",
    "init_weights": "initialization",
    "add_multipliers": "multipliers",
    "fold_multipliers": "multipliers",
    "multiplier_parameters": "multipliers",
    "build_optimizer": "optim.build",
    "CombinedOptimizer": "optim.combined",
    "BatchedMuon": "optim.muon",
    "ForwardMultiplier": "planning",
    "ParamPlan": "planning",
    "Plan": "planning",
    "plan": "planning",
    "PRESETS": "recipes",
    "Recipe": "recipes",
    "get_recipe": "recipes",
    "Role": "roles",
    "classify": "roles",
    "lr_schedule": "schedules",
}

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
    "clip_groups",
    "drift_warnings",
    "equilibrium_report",
    "equilibrium_rms",
    "fold_multipliers",
    "gain_summary",
    "get_recipe",
    "init_weights",
    "load_model",
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

if TYPE_CHECKING:
    from .clipping import clip_grad_norm_, clip_groups
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


def load_model(path: Any, step: int | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a plain HF model of a run directory (multipliers folded, as ``widthwise export``
    writes it) or of an HF folder. Needs the ``hf`` extra; loads the application only when called."""
    return importlib.import_module(".app.export", __name__).load_model(path, step)


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first use (or the submodule ``name`` itself)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

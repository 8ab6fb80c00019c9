"""Recipes: how each role's learning rate, weight decay, init and forward multipliers scale with width.

A recipe is a set of exponents; :func:`role_scaling` turns a role and a width multiplier into factors with
the pure rules of :mod:`widthwise.rules`. The presets, each named after what it reproduces:

===================  =========  ==========  ==========  ===============  ====================  ==================
recipe               hidden lr  hidden wd   hidden      embedding/head   head output,          source
                                            init std    lr, wd           attention
===================  =========  ==========  ==========  ===============  ====================  ==================
``sp``               1          1           0.02        1, 1             1, 1/sqrt(d_head)     GPT-2's training
``mup``              1/m        m           0.02/sqrt m 1, 1             1/m, 1/d_head         microsoft/mup
                                                                                               ``MuAdamW``
``mup_constant_wd``  1/m        1           0.02/sqrt m 1, 1             1/m, 1/d_head         Tensor Programs V
``robust``           1/m        sqrt(m)     0.02/sqrt m 1, 0             1/m, 1/d_head         Fan et al. 2025
===================  =========  ==========  ==========  ===============  ====================  ==================

``m`` is each parameter's own width multiplier (a hidden matrix's fan-in ratio, :mod:`widthwise.width`).
Vectors (norm gains, biases) always take lr factor 1 and no weight decay. The hidden columns are AdamW's;
hidden matrices trained by Muon take :meth:`Recipe.exponents` ``("muon", adjust_lr_fn)`` instead, whose
weight-decay exponent is our derivation (:func:`rules.muon_wd_exponent`), not a published rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from . import rules
from .roles import Role


@dataclass(frozen=True)
class Recipe:
    """Width-scaling exponents and conventions. Build one with :func:`get_recipe`.

    ``lr_exponent``/``wd_exponent``: hidden ``lr ~ m^-lr_exponent``, ``wd ~ m^wd_exponent`` under AdamW.
    ``init_exponent``: hidden init std ``~ m^-init_exponent`` from ``init_std`` at the base width.
    ``output_exponent``: the head's output is multiplied by ``m^-output_exponent``.
    ``attention_scale``: ``standard`` | ``mup`` | ``mup_exact`` (:func:`rules.attention_query_multiplier`).
    ``vector_like_wd``: whether embeddings and the head are decayed (robust: no).
    ``muon_lr_exponent``/``muon_wd_exponent``: hidden-matrix exponents under Muon; ``None`` derives them
    from Muon's ``adjust_lr_fn`` (:func:`rules.muon_lr_exponent`, the spectral rule;
    :func:`rules.muon_wd_exponent`, our derivation) when the recipe scales with width and keeps 0 (no scaling)
    for ``sp``. :meth:`exponents` resolves them.
    """

    name: str
    lr_exponent: float
    wd_exponent: float
    init_exponent: float
    output_exponent: float
    attention_scale: str
    vector_like_wd: bool
    init_std: float = 0.02
    muon_lr_exponent: float | None = None
    muon_wd_exponent: float | None = None

    def __post_init__(self) -> None:
        if self.attention_scale not in rules.ATTENTION_SCALES:
            raise ValueError(
                f"recipe {self.name!r}: unknown attention_scale {self.attention_scale!r}; "
                f"expected one of {', '.join(rules.ATTENTION_SCALES)}"
            )
        for f in ("lr_exponent", "wd_exponent", "init_exponent", "output_exponent", "init_std"):
            value = getattr(self, f)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"recipe {self.name!r}: {f} must be a finite number, got {value!r}")
        if not self.init_std > 0:
            raise ValueError(f"recipe {self.name!r}: init_std must be positive, got {self.init_std!r}")

    @property
    def scales_with_width(self) -> bool:
        return self.lr_exponent != 0

    def exponents(self, optimizer: str = "adamw",
                  adjust_lr_fn: str | None = rules.DEFAULT_MUON_ADJUST_LR_FN) -> tuple[float, float]:
        """``(lr_exponent, wd_exponent)`` of the hidden matrices under ``optimizer``: ``lr ~ m^-e_lr``, ``wd ~ m^e_wd``.

        ``adamw``: the recipe's own. ``muon``: the spectral LR rule for Muon's ``adjust_lr_fn``
        (:func:`rules.muon_lr_exponent`) and our noise-equilibrium derivation for its WD
        (:func:`rules.muon_wd_exponent`, not a published rule) when the recipe scales with width, 0 for ``sp``;
        every width-scaling preset (``mup``, ``mup_constant_wd``, ``robust``) gets the same pair, whatever its
        AdamW WD exponent. The recipe's ``muon_lr_exponent``/``muon_wd_exponent`` replace the derived values.
        """
        if optimizer not in rules.OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(rules.OPTIMIZERS)}")
        if optimizer == "adamw":
            return float(self.lr_exponent), float(self.wd_exponent)
        scale = 1.0 if self.scales_with_width else 0.0
        lr, wd = rules.muon_lr_exponent(adjust_lr_fn) * scale, rules.muon_wd_exponent(adjust_lr_fn) * scale
        if self.muon_lr_exponent is not None:
            lr = self.muon_lr_exponent
        if self.muon_wd_exponent is not None:
            wd = self.muon_wd_exponent
        return float(lr), float(wd)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"recipe: unknown field {unknown[0]!r}")
        return cls(**data)


PRESETS: dict[str, Recipe] = {
    # Standard parametrization as GPT-2 trains (openai/gpt-2 code, HF GPT2Config, nanoGPT): init std 0.02, one LR
    # and WD for every matrix, nothing scales with width. Not Tensor Programs V's SP, whose init is 1/sqrt(fan_in)
    # (get_recipe("sp", init_exponent=0.5) gives its fan-in law, anchored at 0.02 at the base width).
    "sp": Recipe("sp", 0.0, 0.0, 0.0, 0.0, "standard", vector_like_wd=True),
    # microsoft/mup's MuAdamW with its defaults (mup 1.0.0, mup/optim.py MuAdam): matrix-like parameters
    # (infshape.ninf() == 2) take lr / width_mult and weight_decay * width_mult, so torch AdamW's decoupled
    # shrink lr * wd stays constant; vector-like ones (embedding, head, ninf() <= 1) keep both. With muP's
    # init (Tensor Programs V, Table 3) and its readout 1/m and attention 1/d_head.
    "mup": Recipe("mup", 1.0, 1.0, 0.5, 1.0, "mup", vector_like_wd=True),
    # muP for Adam (Yang et al. 2022, arXiv 2203.03466, Table 3) with the weight decay held constant across
    # widths (the paper does not scale WD; lr * wd then falls as 1/m).
    "mup_constant_wd": Recipe("mup_constant_wd", 1.0, 0.0, 0.5, 1.0, "mup", vector_like_wd=True),
    # Robust layerwise scaling (Fan et al. 2025, arXiv 2510.15262): muP LR and init, wd ~ sqrt(d) on
    # matrices, vector-like parameters (embeddings, head, norms, biases) undecayed.
    "robust": Recipe("robust", 1.0, 0.5, 0.5, 1.0, "mup", vector_like_wd=False),
}


def get_recipe(recipe: str | Recipe | Mapping[str, Any] = "robust", **overrides: Any) -> Recipe:
    """A preset (``sp``, ``mup``, ``mup_constant_wd``, ``robust``), a ``Recipe`` or a recipe dict, with field overrides.

    >>> get_recipe("robust", wd_exponent=1.0).wd_exponent
    1.0
    """
    if isinstance(recipe, Recipe):
        base = recipe
    elif isinstance(recipe, Mapping):
        base = Recipe.from_dict(recipe)
    elif isinstance(recipe, str):
        if recipe not in PRESETS:
            raise ValueError(f"unknown recipe {recipe!r}; expected one of {', '.join(PRESETS)}")
        base = PRESETS[recipe]
    else:
        raise ValueError(f"recipe must be a name, a Recipe or a dict, got {type(recipe).__name__}")
    known = {f.name for f in fields(Recipe)} - {"name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown recipe override {unknown[0]!r}; expected some of {', '.join(sorted(known))}")
    return replace(base, **overrides) if overrides else base


@dataclass(frozen=True)
class Scaling:
    """What a recipe prescribes for one parameter.

    ``lr``/``wd`` multiply the base learning rate and weight decay (``wd=None`` for multipliers, whose decay
    is absolute: ``multiplier_weight_decay``). ``init`` is ``normal`` (with ``init_std``), ``ones``,
    ``zeros`` or ``None`` (left as it is).
    """

    lr: float
    wd: float | None
    init: str | None
    init_std: float | None = None


def role_scaling(recipe: Recipe, role: Role, m: float, tensor_name: str = "weight", is_norm: bool = False,
                 optimizer: str = "adamw", adjust_lr_fn: str | None = rules.DEFAULT_MUON_ADJUST_LR_FN) -> Scaling:
    """The recipe's factors and init for a parameter of ``role`` at width multiplier ``m``.

    ``optimizer`` is the one that trains this parameter: hidden matrices under ``muon`` take Muon's exponents
    (:meth:`Recipe.exponents`, never Adam's ``1/m`` on top), everything else AdamW's.
    """
    if role is Role.HIDDEN:
        lr_exponent, wd_exponent = recipe.exponents(optimizer, adjust_lr_fn)
        return Scaling(
            lr=rules.hidden_lr_factor(m, lr_exponent),
            wd=rules.hidden_wd_factor(m, wd_exponent),
            init="normal",
            init_std=rules.hidden_init_std(recipe.init_std, m, recipe.init_exponent),
        )
    if role in (Role.EMBEDDING, Role.HEAD):
        return Scaling(lr=1.0, wd=1.0 if recipe.vector_like_wd else 0.0, init="normal", init_std=recipe.init_std)
    if role is Role.MULTIPLIER:
        return Scaling(lr=1.0, wd=None, init=None)
    init = "zeros" if tensor_name == "bias" else "ones" if is_norm else None
    return Scaling(lr=1.0, wd=0.0, init=init)

"""``init_weights``: the recipe's initialisation, plus its fixed forward multipliers."""

from __future__ import annotations

import torch
from torch import nn

from .forward import apply_forward_multipliers
from .planning import Plan
from .roles import parameter_sites


def init_weights(
    model: nn.Module,
    plan: Plan,
    *,
    generator: torch.Generator | None = None,
    forward_multipliers: bool = True,
) -> nn.Module:
    """Initialise ``model`` as ``plan`` says and install the plan's fixed forward multipliers.

    Matrices (``hidden``, ``embedding``, ``head``) are drawn from ``N(0, init_std^2)`` (hidden:
    ``recipe.init_std * m^-init_exponent``; the stored matrix ``V`` when it has multipliers); norm gains are
    set to 1 and biases to 0; learnable multipliers and other vectors are left as they are.
    """
    sites = parameter_sites(model)
    unknown = sorted(set(sites) - set(plan.params))
    if unknown:
        raise ValueError(f"parameter {unknown[0]!r} is not in the plan: was it added after ww.plan()?")
    with torch.no_grad():
        for name, site in sites.items():
            entry = plan.params[name]
            if entry.init == "normal":
                site.param.normal_(0.0, entry.init_std, generator=generator)
            elif entry.init == "ones":
                site.param.fill_(1.0)
            elif entry.init == "zeros":
                site.param.zero_()
    if forward_multipliers:
        apply_forward_multipliers(model, plan)
    return model

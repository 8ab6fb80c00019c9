"""Which parameters are matrices, and the weight a layer actually applies."""

from __future__ import annotations

import torch
from torch import nn

from ..roles import ParamSite, Role, classify, matrix_axes, parameter_sites

MATRIX_ROLES = (Role.EMBEDDING, Role.HIDDEN, Role.HEAD)


def matrix_sites(model: nn.Module, roles: dict[str, Role] | None = None) -> dict[str, ParamSite]:
    """Every matrix-like parameter (role ``embedding``, ``hidden`` or ``head``, 2-D or more) by canonical name.

    A tied embedding/head is one parameter and appears once (under the embedding's name). ``roles`` (from a
    plan: ``plan.roles()``) replaces the default classification.
    """
    sites = parameter_sites(model)
    roles = classify(model, sites=sites) if roles is None else roles
    return {name: site for name, site in sites.items()
            if roles.get(name) in MATRIX_ROLES and site.param.ndim >= 2}


def stored_weight(site: ParamSite) -> torch.Tensor:
    """The trained tensor ``V`` (what the optimizer updates and weight decay shrinks), detached."""
    return site.param.detach()


def effective_weight(site: ParamSite) -> torch.Tensor:
    """The weight the layer applies: ``V`` with every parametrization on it (learnable multipliers, fixed scales)."""
    with torch.no_grad():
        return getattr(site.module, site.tensor_name).detach()


def as_linear_map(weight: torch.Tensor, site: ParamSite | None = None) -> torch.Tensor:
    """``weight`` as a 2-D ``(out, in)`` float matrix (embeddings transposed, >2-D flattened over inputs)."""
    w = weight
    if site is not None:
        out_axis, _ = matrix_axes(site.module)
        if out_axis != 0:
            w = w.transpose(0, out_axis)
    return w.reshape(w.shape[0], -1).float()

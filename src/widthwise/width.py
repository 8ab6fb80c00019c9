"""Width multipliers derived from a model and its base (a smaller instance of the same model).

Nothing is typed in: every ratio comes from comparing a parameter's shape with the same-named parameter of
the base model, which may live on the meta device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import nn

from .roles import ParamSite, Role, fan_ratios, parameter_sites

_REL_TOL = 1e-9


def base_shapes(base: nn.Module) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for every parameter of ``base`` except widthwise multipliers."""
    return {name: site.shape for name, site in parameter_sites(base).items() if site.multiplier_of is None}


def check_same_parameters(sites: Mapping[str, ParamSite], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise ``ValueError`` unless model and base have the same parameter names (multipliers aside)."""
    model_names = [n for n, s in sites.items() if s.multiplier_of is None]
    missing = [n for n in model_names if n not in shapes]
    extra = [n for n in shapes if n not in set(model_names)]
    if missing:
        raise ValueError(f"parameter {missing[0]!r} has no counterpart in the base model ({len(missing)} missing)")
    if extra:
        raise ValueError(f"base parameter {extra[0]!r} does not exist in the model ({len(extra)} extra)")


def check_comparable(name: str, shape: tuple[int, ...], base_shape: tuple[int, ...]) -> None:
    """``ValueError`` naming the parameter unless ``shape`` and ``base_shape`` have one rank and no empty base dim."""
    if len(shape) != len(base_shape):
        raise ValueError(f"parameter {name!r}: shape {shape} and base shape {base_shape} differ in rank; build the "
                         "base from the same model code at a smaller width")
    if any(b <= 0 for b in base_shape):
        raise ValueError(f"parameter {name!r}: base shape {base_shape} has an empty dimension; give the base model "
                         "at least one unit in every dimension")


def dimension_ratios(shape: tuple[int, ...], base_shape: tuple[int, ...]) -> tuple[float, ...]:
    """Each dimension's own width ratio ``d / d_base`` (muP's ``InfDim.width_mult``, one per dimension)."""
    return tuple(d / b for d, b in zip(shape, base_shape, strict=True))


def shape_ratio(name: str, shape: tuple[int, ...], base_shape: tuple[int, ...]) -> float:
    """The single ratio by which the scaled dimensions of ``shape`` exceed ``base_shape`` (1 if none do).

    For parameters whose rules need one width (vectors, multipliers, parameters of rank 0 or 1). A different
    number of dimensions, an empty base dimension, or two dimensions scaled by different ratios is a
    ``ValueError`` naming the parameter and what to change.
    """
    check_comparable(name, shape, base_shape)
    ratios = dimension_ratios(shape, base_shape)
    scaled = [r for r in ratios if r != 1]
    if any(not math.isclose(r, scaled[0], rel_tol=_REL_TOL) for r in scaled):
        raise ValueError(
            f"parameter {name!r}: shape {shape} against base {base_shape} scales its dimensions by "
            f"inconsistent ratios {', '.join(f'{r:g}' for r in ratios)}, and its role's rules need one width; "
            "give it a matrix role (roles={pattern: 'hidden'}: rules in its fan-in) or a base that scales its "
            "dimensions alike"
        )
    return scaled[0] if scaled else 1.0


def width_multiplier(site: ParamSite, role: Role, base_shape: tuple[int, ...] | None) -> float:
    """The width multiplier ``m`` that a parameter's scaling rules use, per dimension as muP defines it.

    Matrices (rank >= 2) of role hidden or head: their fan-in ratio, whatever their fan-out does (muP's
    ``1/fan_in`` LR and init; microsoft/mup's ``InfShape.width_mult()`` of a matrix is its fan-in's), so a GQA
    ``k_proj`` whose KV heads grow by 2 while the width grows by 4 takes ``m = 4``. Embedding matrices: the
    fan-out ratio (their width; display only, the embedding's rules do not scale). Vectors, multipliers and
    other parameters of rank < 2: the one ratio their scaled dimensions share (:func:`shape_ratio`).
    Without a base counterpart (multipliers): 1.
    """
    if base_shape is None:
        return 1.0
    if site.param.ndim >= 2 and role in (Role.HIDDEN, Role.HEAD, Role.EMBEDDING):
        check_comparable(site.name, site.shape, base_shape)
        out_ratio, in_ratio = fan_ratios(site, base_shape)
        return out_ratio if role is Role.EMBEDDING else in_ratio
    return shape_ratio(site.name, site.shape, base_shape)

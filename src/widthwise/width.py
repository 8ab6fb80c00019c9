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


def shape_ratio(name: str, shape: tuple[int, ...], base_shape: tuple[int, ...]) -> float:
    """The single ratio by which the scaled dimensions of ``shape`` exceed ``base_shape`` (1 if none do).

    A different number of dimensions, an empty base dimension, or two dimensions scaled by different
    ratios is a ``ValueError`` naming the parameter.
    """
    if len(shape) != len(base_shape):
        raise ValueError(f"parameter {name!r}: shape {shape} and base shape {base_shape} differ in rank")
    if any(b <= 0 for b in base_shape):
        raise ValueError(f"parameter {name!r}: base shape {base_shape} has an empty dimension")
    ratios = [d / b for d, b in zip(shape, base_shape, strict=True)]
    scaled = [r for r in ratios if r != 1]
    if any(not math.isclose(r, scaled[0], rel_tol=_REL_TOL) for r in scaled):
        raise ValueError(
            f"parameter {name!r}: shape {shape} against base {base_shape} scales its dimensions by "
            f"inconsistent ratios {', '.join(f'{r:g}' for r in ratios)}"
        )
    return scaled[0] if scaled else 1.0


def width_multiplier(site: ParamSite, role: Role, base_shape: tuple[int, ...] | None) -> float:
    """The width multiplier ``m`` that a parameter's scaling rules use.

    hidden and head: the fan-in ratio (muP's ``1/fan_in`` rules); embedding: the fan-out ratio (its width);
    vector: the ratio of its dimension. Multipliers without a base counterpart get 1.
    """
    if base_shape is None:
        return 1.0
    common = shape_ratio(site.name, site.shape, base_shape)
    if site.param.ndim < 2 or role in (Role.VECTOR, Role.MULTIPLIER):
        return common
    out_ratio, in_ratio = fan_ratios(site, base_shape)
    return out_ratio if role is Role.EMBEDDING else in_ratio

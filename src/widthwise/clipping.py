"""``clip_grad_norm_`` without the learnable multipliers (arXiv 2601.04890, section 4.3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .multipliers import multiplier_parameters


@dataclass(frozen=True)
class ClipGroups:
    """A model's parameters split for clipping: the multipliers apart from everything else (each a list)."""

    params: list[nn.Parameter]
    multipliers: list[nn.Parameter]


def clip_groups(model: nn.Module) -> ClipGroups:
    """Split ``model``'s parameters into the multipliers and the rest, for :func:`clip_grad_norm_`.

    Walking the modules is what costs in a clip (0.2-0.5 ms a step on a small model, more than the norm itself);
    a training loop whose parameters do not change computes the split once and passes it as ``groups``.
    """
    multipliers = multiplier_parameters(model)
    excluded = {id(p) for p in multipliers}
    return ClipGroups([p for p in model.parameters() if id(p) not in excluded], multipliers)


def clip_grad_norm_(
    model: nn.Module,
    max_norm: float,
    norm_type: float = 2.0,
    *,
    multiplier_max_norm: float | None = None,
    include_multipliers: bool = False,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    groups: ClipGroups | None = None,
) -> torch.Tensor:
    """Clip the gradients of every parameter except the multipliers to ``max_norm``; return their norm.

    Like ``torch.nn.utils.clip_grad_norm_``, but the total norm leaves out widthwise's learnable multipliers:
    their gradients sum over whole rows, columns or matrices, are large, and including them clipped every
    step early in training and erased the multipliers' gain in the paper. The multipliers' own gradients are
    left untouched, unless ``multiplier_max_norm`` is given, in which case they are clipped as a separate
    group to that norm. ``include_multipliers=True`` is plain ``torch.nn.utils.clip_grad_norm_`` over every
    parameter, the setting the paper warns against (for ablations; ``multiplier_max_norm`` must then be ``None``).
    ``groups``: ``model``'s split from :func:`clip_groups`, computed once instead of at every call.
    """
    if include_multipliers and multiplier_max_norm is not None:
        raise ValueError("include_multipliers=True clips the multipliers with everything else: "
                         "multiplier_max_norm must be None")
    groups = groups if groups is not None else clip_groups(model)
    params = [p for p in groups.params if p.grad is not None]
    multipliers = [p for p in groups.multipliers if p.grad is not None]
    if include_multipliers:
        return torch.nn.utils.clip_grad_norm_(params + multipliers, max_norm, norm_type, error_if_nonfinite, foreach)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite, foreach)
    if multiplier_max_norm is not None:
        torch.nn.utils.clip_grad_norm_(multipliers, multiplier_max_norm, norm_type, error_if_nonfinite, foreach)
    return total

"""``clip_grad_norm_`` without the learnable multipliers (arXiv 2601.04890, section 4.3)."""

from __future__ import annotations

import torch
from torch import nn

from .multipliers import multiplier_parameters


def clip_grad_norm_(
    model: nn.Module,
    max_norm: float,
    norm_type: float = 2.0,
    *,
    multiplier_max_norm: float | None = None,
    include_multipliers: bool = False,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> torch.Tensor:
    """Clip the gradients of every parameter except the multipliers to ``max_norm``; return their norm.

    Like ``torch.nn.utils.clip_grad_norm_``, but the total norm leaves out widthwise's learnable multipliers:
    their gradients sum over whole rows, columns or matrices, are large, and including them clipped every
    step early in training and erased the multipliers' gain in the paper. The multipliers' own gradients are
    left untouched, unless ``multiplier_max_norm`` is given, in which case they are clipped as a separate
    group to that norm. ``include_multipliers=True`` is plain ``torch.nn.utils.clip_grad_norm_`` over every
    parameter, the setting the paper warns against (for ablations; ``multiplier_max_norm`` must then be ``None``).
    """
    if include_multipliers:
        if multiplier_max_norm is not None:
            raise ValueError("include_multipliers=True clips the multipliers with everything else: "
                             "multiplier_max_norm must be None")
        params = [p for p in model.parameters() if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite, foreach)
    multipliers = multiplier_parameters(model)
    excluded = {id(p) for p in multipliers}
    params = [p for p in model.parameters() if id(p) not in excluded and p.grad is not None]
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite, foreach)
    if multiplier_max_norm is not None:
        torch.nn.utils.clip_grad_norm_(
            [p for p in multipliers if p.grad is not None], multiplier_max_norm, norm_type, error_if_nonfinite, foreach
        )
    return total

"""``clip_grad_norm_`` without the learnable multipliers (arXiv 2601.04890, section 4.3)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from .multipliers import multiplier_parameters
from .roles import unwrap


@dataclass(frozen=True)
class ClipGroups:
    """A model's parameters split for clipping: the multipliers apart from everything else (each a list).

    ``source`` is a weak reference to the (unwrapped) model the split was made from, so that a split passed
    with another model is refused rather than clipping the wrong parameters; ``None`` for a split made by hand.
    """

    params: list[nn.Parameter]
    multipliers: list[nn.Parameter]
    source: weakref.ReferenceType[nn.Module] | None = field(default=None, repr=False, compare=False)

    def made_from(self, model: nn.Module) -> bool:
        """Whether this split was made from ``model`` (wrappers looked through), or by hand (no ``source``)."""
        return self.source is None or self.source() is unwrap(model)


def clip_groups(model: nn.Module) -> ClipGroups:
    """Split ``model``'s parameters into the multipliers and the rest, for :func:`clip_grad_norm_`.

    Walking the modules is what costs in a clip (0.2-0.5 ms a step on a small model, more than the norm itself);
    a training loop whose parameters do not change computes the split once and passes it as ``groups``.
    """
    multipliers = multiplier_parameters(model)
    excluded = {id(p) for p in multipliers}
    return ClipGroups([p for p in model.parameters() if id(p) not in excluded], multipliers,
                      weakref.ref(unwrap(model)))


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
    ``groups``: ``model``'s split from :func:`clip_groups`, computed once instead of at every call; a split
    made from another model raises ``ValueError``.
    """
    if include_multipliers and multiplier_max_norm is not None:
        raise ValueError("include_multipliers=True clips the multipliers with everything else: "
                         "multiplier_max_norm must be None")
    if groups is None:
        groups = clip_groups(model)
    elif not groups.made_from(model):
        raise ValueError(f"clip_grad_norm_: groups= was split from another model than this "
                         f"{type(unwrap(model)).__name__}; make it with clip_groups(model) for this model")
    params = [p for p in groups.params if p.grad is not None]
    multipliers = [p for p in groups.multipliers if p.grad is not None]
    if include_multipliers:
        return torch.nn.utils.clip_grad_norm_(params + multipliers, max_norm, norm_type, error_if_nonfinite, foreach)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite, foreach)
    if multiplier_max_norm is not None:
        torch.nn.utils.clip_grad_norm_(multipliers, multiplier_max_norm, norm_type, error_if_nonfinite, foreach)
    return total

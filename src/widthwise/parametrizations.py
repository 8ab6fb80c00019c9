"""The two forward multipliers widthwise attaches to weights, as ``torch.nn.utils.parametrize`` modules.

``Multipliers`` are learnable (arXiv 2601.04890); ``FixedScale`` carries the fixed forward multipliers a
recipe needs (muP's head ``1/m``, the ``1/d_head`` attention scale). Both compute the effective weight once
per forward from the stored one, so the cost is O(weight size), not O(tokens x width), and both fold back
into the weight exactly (:func:`widthwise.fold_multipliers`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .fused_multipliers import scaled_embedding, scaled_weight, unfused_weight

MULTIPLIER_KINDS = ("scalar", "row", "col", "row_col")


def axis_view(ndim: int, axis: int) -> tuple[int, ...]:
    """Shape that broadcasts a vector along ``axis`` of an ``ndim``-dimensional weight."""
    view = [1] * ndim
    view[axis] = -1
    return tuple(view)


class Multipliers(nn.Module):
    """Learnable multipliers of one weight: ``s * V`` (``scalar``) or ``diag(r) @ V @ diag(c)``.

    ``row`` has one entry per output feature (``r_i``), ``col`` one per input feature (``c_j``), in the
    sense of the layer as a linear map: for ``nn.Embedding`` the outputs are the embedding dimensions and
    the inputs are the vocabulary entries. ``init`` is the initial value of the whole multiplier; with
    ``row_col`` it sits on the row and the column starts at 1.
    """

    def __init__(
        self,
        kind: str,
        weight: torch.Tensor,
        out_axis: int,
        in_axis: int,
        init: float = 1.0,
    ) -> None:
        super().__init__()
        if kind not in MULTIPLIER_KINDS:
            raise ValueError(f"unknown multiplier kind {kind!r}; expected one of {', '.join(MULTIPLIER_KINDS)}")
        self.kind = kind
        factory = {"dtype": weight.dtype, "device": weight.device}
        self.scalar = nn.Parameter(torch.full((), float(init), **factory)) if kind == "scalar" else None
        self.row = None
        self.col = None
        if kind in ("row", "row_col"):
            self.row = nn.Parameter(torch.full((weight.shape[out_axis],), float(init), **factory))
        if kind in ("col", "row_col"):
            col_init = 1.0 if self.row is not None else float(init)
            self.col = nn.Parameter(torch.full((weight.shape[in_axis],), col_init, **factory))
        self.out_axis, self.in_axis = out_axis, in_axis
        self.row_view = axis_view(weight.ndim, out_axis)
        self.col_view = axis_view(weight.ndim, in_axis)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The effective weight, in one fused pass (:func:`widthwise.fused_multipliers.scaled_weight`)."""
        return scaled_weight(weight, self.scalar, self.row, self.col, self.out_axis, self.in_axis)

    def unfused(self, weight: torch.Tensor) -> torch.Tensor:
        """The same weight as separate element-wise products differentiated by autograd (the reference)."""
        return unfused_weight(weight, self.scalar, self.row, self.col, self.out_axis, self.in_axis)

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


class FixedScale(nn.Module):
    """A fixed, non-learnable forward multiplier: ``value * tensor`` (applied to a weight and its bias)."""

    def __init__(self, value: float, kind: str) -> None:
        super().__init__()
        self.value = float(value)
        self.kind = kind

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * self.value

    def extra_repr(self) -> str:
        return f"kind={self.kind}, value={self.value:.6g}"


WIDTHWISE_PARAMETRIZATIONS = (Multipliers, FixedScale)


_ORDER = "_widthwise_tensor_order"


def attach(module: nn.Module, tensor: str, parametrization: nn.Module) -> None:
    """Register ``parametrization`` on ``module.<tensor>``, remembering the module's parameter order.

    An ``nn.Embedding`` that gets learnable multipliers on its weight also gets :func:`_embedding_forward`
    on the class ``parametrize`` made for this one module, so a lookup scales only the rows it reads; the
    class, and that forward with it, goes when the last parametrization is removed (:func:`fold`).
    """
    if not hasattr(module, _ORDER):
        object.__setattr__(module, _ORDER, (list(module._parameters), list(module._buffers)))
    parametrize.register_parametrization(module, tensor, parametrization)
    if isinstance(module, nn.Embedding) and tensor == "weight" and isinstance(parametrization, Multipliers):
        type(module).forward = _embedding_forward


def _embedding_forward(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """``nn.Embedding.forward`` with the multipliers applied to the looked-up rows only (same values).

    Used when the weight carries exactly one parametrization, widthwise's learnable multipliers, and the
    embedding has no ``max_norm``, ``scale_grad_by_freq`` or ``sparse``; otherwise the plain forward, which
    builds the whole table.
    """
    plist = self.parametrizations["weight"]
    mult = plist[0]
    if (len(plist) != 1 or not isinstance(mult, Multipliers) or mult.scalar is not None or mult.out_axis != 1
            or self.max_norm is not None
            or self.scale_grad_by_freq or self.sparse):
        return nn.Embedding.forward(self, ids)
    return scaled_embedding(ids, plist.original, mult.row, mult.col, self.padding_idx)


def fold(module: nn.Module, tensor: str) -> None:
    """Fold every parametrization of ``module.<tensor>`` into it and restore the plain module.

    ``torch.nn.utils.parametrize.remove_parametrizations`` keeps the parameter object (``set_``) but
    re-registers it last; the original order comes back, so ``state_dict`` keys match a model that never
    had multipliers, order included.
    """
    parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
    order = getattr(module, _ORDER, None)
    if order is None or parametrize.is_parametrized(module):
        return
    for table, names in ((module._parameters, order[0]), (module._buffers, order[1])):
        items = dict(table)
        table.clear()
        table.update({n: items.pop(n) for n in names if n in items})
        table.update(items)
    object.__delattr__(module, _ORDER)

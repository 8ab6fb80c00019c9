"""Fixed forward multipliers a recipe needs, applied to any model as ``FixedScale`` parametrizations.

muP multiplies the head's output by ``1/m`` and scales attention logits as ``1/d_head``. widthwise applies
both without touching the model's code: the head's weight and bias are multiplied by ``1/m`` (so its
output is), and the query projection's weight and bias by ``s`` (so ``q.k/sqrt(d_head)`` becomes
``s * q.k/sqrt(d_head)``; RoPE is linear, so the order does not matter). A model with a norm on the queries
(QK-norm) gets the scale on that norm's gain instead, since the norm would undo it on the projection.
``fold_multipliers`` folds them into the weights for export.
"""

from __future__ import annotations

import math

from torch import nn
from torch.nn.utils import parametrize

from . import rules
from .parametrizations import FixedScale, attach
from .planning import ForwardMultiplier, Plan
from .recipes import Recipe, get_recipe
from .roles import unwrap


def _installed(module: nn.Module, tensor: str, kind: str) -> FixedScale | None:
    if not parametrize.is_parametrized(module, tensor):
        return None
    return next((p for p in module.parametrizations[tensor] if isinstance(p, FixedScale) and p.kind == kind), None)


def _get_module(model: nn.Module, fm: ForwardMultiplier) -> nn.Module:
    try:
        return unwrap(model).get_submodule(fm.module)
    except AttributeError:
        raise ValueError(f"forward multiplier: the plan names module {fm.module!r}, which the model lacks") from None


def apply_forward_multipliers(model: nn.Module, plan: Plan) -> list[ForwardMultiplier]:
    """Install the plan's fixed forward multipliers on ``model`` (idempotent); return those installed now.

    Installing a multiplier that is already there with the same value does nothing; a different value is
    a ``ValueError`` (the model was prepared for another plan).
    """
    added = []
    for fm in plan.forward_multipliers:
        module = _get_module(model, fm)
        present = [_installed(module, t, fm.kind) for t in fm.tensors]
        if all(p is not None for p in present):
            if any(p.value != fm.value for p in present):
                raise ValueError(f"{fm.module!r} already carries the {fm.kind} multiplier x"
                                 f"{present[0].value:.6g}, the plan asks for {fm.value:.6g}")
            continue
        for tensor, p in zip(fm.tensors, present, strict=True):
            if p is None:
                attach(module, tensor, FixedScale(fm.value, fm.kind))
        added.append(fm)
    return added


def missing_forward_multipliers(model: nn.Module, plan: Plan) -> list[ForwardMultiplier]:
    """The plan's forward multipliers that ``model`` does not carry."""
    return [fm for fm in plan.forward_multipliers
            if any(_installed(_get_module(model, fm), t, fm.kind) is None for t in fm.tensors)]


def named_forward_multipliers(
    recipe: str | Recipe, width: int, base_width: int, head_dim: int, base_head_dim: int
) -> dict[str, float]:
    """The recipe's forward multipliers as the named floats of a model config (Falcon-H1 style): the fields
    ``embedding_multiplier``, ``head_multiplier`` and ``attention_scale`` of :class:`widthwise.models.LlamaConfig`.

    ``head_multiplier = rules.output_multiplier(width / base_width, recipe.output_exponent)`` and
    ``attention_scale = rules.attention_query_multiplier(head_dim, base_head_dim, recipe.attention_scale)
    / sqrt(head_dim)``: the query multiplier the library would put on ``q_proj``, folded into the scale.
    """
    recipe = get_recipe(recipe)
    query = rules.attention_query_multiplier(head_dim, base_head_dim, recipe.attention_scale)
    return {
        "embedding_multiplier": 1.0,
        "head_multiplier": rules.output_multiplier(width / base_width, recipe.output_exponent),
        "attention_scale": query / math.sqrt(head_dim),
    }

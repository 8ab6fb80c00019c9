"""widthwise's plan and optimizer in ``transformers.Trainer``.

``Trainer`` takes an optimizer and a scheduler (``optimizers=(opt, sched)``) and callbacks, which is all it takes:

.. code-block:: python

    kit = trainer_kit(model, plan, lr=3e-3, weight_decay=0.1, total_steps=1000, warmup=100)
    args = TrainingArguments(..., max_steps=1000, max_grad_norm=0)   # widthwise clips, without the multipliers
    Trainer(model=model, args=args, train_dataset=data, **kit).train()

The optimizer runs the plan's per-group LR and WD (:func:`widthwise.build_optimizer`), the schedule is relative
(:func:`widthwise.lr_schedule`: every group keeps its ratio), and :class:`WidthwiseClip` clips the gradients with
:func:`widthwise.clip_grad_norm_` (the multipliers left out of the norm, arXiv 2601.04890) right before each
optimizer step. Trainer's own clip (``max_grad_norm``) would put the multipliers in the norm, so it must be 0.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from transformers import TrainerCallback

from ..clipping import ClipGroups, clip_grad_norm_, clip_groups
from ..optim.build import build_optimizer
from ..planning import Plan
from ..schedules import lr_schedule

__all__ = ["WidthwiseClip", "trainer_kit"]


class WidthwiseClip(TrainerCallback):
    """Clip with :func:`widthwise.clip_grad_norm_` before every optimizer step; ``norms``: the norms it measured."""

    def __init__(self, max_norm: float | None = 1.0, multiplier_max_norm: float | None = None) -> None:
        self.max_norm = math.inf if max_norm is None else float(max_norm)
        self.multiplier_max_norm = multiplier_max_norm
        self.norms: list[float] = []
        self._groups: ClipGroups | None = None  # the model's split, made at its first step (again if it changes)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.max_grad_norm and args.max_grad_norm > 0:
            raise ValueError(f"TrainingArguments.max_grad_norm={args.max_grad_norm}: set it to 0 with WidthwiseClip "
                             "(Trainer's clip would count the multipliers in the norm; widthwise clips without them)")

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                              **kwargs: Any) -> None:
        if self._groups is None or not self._groups.made_from(model):
            self._groups = clip_groups(model)
        norm = clip_grad_norm_(model, self.max_norm, multiplier_max_norm=self.multiplier_max_norm,
                               groups=self._groups)
        self.norms.append(float(norm))


def trainer_kit(model: nn.Module, plan: Plan, *, lr: float, weight_decay: float, total_steps: int, warmup: int = 0,
                schedule: str = "cosine", max_grad_norm: float | None = 1.0, **optimizer_kwargs: Any) -> dict[str, Any]:
    """``{"optimizers": (optimizer, scheduler), "callbacks": [WidthwiseClip]}`` for ``Trainer(**kit)``.

    ``lr`` and ``weight_decay`` are base values (meaningful at the plan's base width); ``optimizer_kwargs`` go to
    :func:`widthwise.build_optimizer` (``betas``, ``muon_lr``, ...). ``total_steps`` is Trainer's ``max_steps``.
    """
    optimizer = build_optimizer(model, plan, lr=lr, weight_decay=weight_decay, **optimizer_kwargs)
    scheduler = lr_schedule(optimizer, warmup, total_steps, schedule)
    return {"optimizers": (optimizer, scheduler), "callbacks": [WidthwiseClip(max_grad_norm)]}

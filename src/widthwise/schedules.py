"""``lr_schedule``: warmup + cosine / WSD / constant, applied *relative* to each group's own LR.

A scheduler that writes one absolute LR into every group (``g["lr"] = get_lr(step)``) erases per-group
width scaling; this one is a ``torch.optim.lr_scheduler.LambdaLR``, which multiplies each group's initial
LR by the same ratio, so the plan's per-group ratios survive every step.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("cosine", "wsd", "constant")


class ScheduleRatio:
    """The LR ratio at a step: linear warmup over ``warmup`` steps, then the ``kind`` of decay to ``total``.

    ``cosine``: half-cosine from 1 to ``min_ratio``; ``wsd`` (warmup-stable-decay): 1 until the last
    ``decay_fraction`` of the steps, then linear to ``min_ratio``; ``constant``: 1. Past ``total`` the
    ratio stays at its final value. A plain object, so ``LambdaLR.state_dict()`` saves it.
    """

    def __init__(self, warmup: int, total: int, kind: str = "cosine", min_ratio: float = 0.1,
                 decay_fraction: float = 0.2) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule kind {kind!r}; expected one of {', '.join(SCHEDULES)}")
        if not (isinstance(total, int) and total > 0):
            raise ValueError(f"schedule total must be a positive number of steps, got {total!r}")
        if not (isinstance(warmup, int) and 0 <= warmup <= total):
            raise ValueError(f"schedule warmup must be between 0 and total={total}, got {warmup!r}")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"schedule min_ratio must be in [0, 1], got {min_ratio!r}")
        if not 0.0 < decay_fraction <= 1.0:
            raise ValueError(f"schedule decay_fraction must be in (0, 1], got {decay_fraction!r}")
        self.warmup, self.total, self.kind = warmup, total, kind
        self.min_ratio, self.decay_fraction = float(min_ratio), float(decay_fraction)

    @property
    def decay_start(self) -> int:
        """The step where the decay begins (its ratio is still 1; later ones are lower); ``total`` for ``constant``."""
        if self.kind == "cosine":
            return self.warmup
        if self.kind == "constant":
            return self.total
        return self.total - max(1, round(self.decay_fraction * (self.total - self.warmup)))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            span = max(1, self.total - self.warmup)
            progress = min(1.0, (step - self.warmup) / span)
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        start = self.decay_start
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / (self.total - start))
        return 1.0 - (1.0 - self.min_ratio) * progress


def lr_schedule(
    optimizer: Optimizer,
    warmup: int,
    total: int,
    kind: str = "cosine",
    *,
    min_ratio: float = 0.1,
    decay_fraction: float = 0.2,
    last_epoch: int = -1,
) -> LambdaLR:
    """A ``LambdaLR`` scaling every group of ``optimizer`` by :class:`ScheduleRatio`; call ``.step()`` per step."""
    return LambdaLR(optimizer, ScheduleRatio(warmup, total, kind, min_ratio, decay_fraction), last_epoch=last_epoch)

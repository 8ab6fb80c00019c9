"""``CombinedOptimizer``: several ``torch.optim`` optimizers (Muon on matrices, AdamW on the rest) as one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["CombinedOptimizer"]


class CombinedOptimizer(Optimizer):
    """Several optimizers behind one ``Optimizer``: ``step``, ``zero_grad``, ``param_groups``, state dicts.

    ``param_groups`` are the children's own group dicts, looked up on every access (a child's
    ``load_state_dict`` replaces its dicts), so an LR scheduler that edits them drives the children.
    ``state_dict()`` is ``{"optimizers": {name: child.state_dict()}}``.
    """

    def __init__(self, optimizers: Mapping[str, Optimizer]) -> None:
        self.optimizers = dict(optimizers)
        groups = [g for opt in self.optimizers.values() for g in opt.param_groups]
        super().__init__([{"params": list(g["params"])} for g in groups], defaults={})  # hooks, checks
        del self.__dict__["_base_groups"]
        self._initialised = True

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        if not self.__dict__.get("_initialised", False):  # the base class's own copy, during __init__ only
            return self.__dict__.setdefault("_base_groups", [])
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    @param_groups.setter
    def param_groups(self, value: Any) -> None:
        if self.__dict__.get("_initialised", False):
            raise ValueError("CombinedOptimizer.param_groups are its children's; edit those")
        self.__dict__["_base_groups"] = value

    @property
    def state(self) -> dict:  # type: ignore[override]
        return {p: s for opt in self.optimizers.values() for p, s in opt.state.items()}

    @state.setter
    def state(self, value: Any) -> None:  # the base class assigns an empty state once
        if value:
            raise ValueError("CombinedOptimizer.state is the union of its children's; load a state_dict instead")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        saved = state_dict.get("optimizers") if isinstance(state_dict, Mapping) else None
        if not isinstance(saved, Mapping) or set(saved) != set(self.optimizers):
            raise ValueError(
                f"optimizer state holds {sorted(saved) if isinstance(saved, Mapping) else 'no optimizers'}, "
                f"this optimizer has {sorted(self.optimizers)}"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(saved[name])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_initialised", False):
            raise ValueError("add parameter groups to one of CombinedOptimizer.optimizers")
        super().add_param_group(param_group)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={type(opt).__name__}({len(opt.param_groups)} groups)"
                          for name, opt in self.optimizers.items())
        return f"CombinedOptimizer({inner})"

"""``build_optimizer``: per-group learning rates and weight decays from a plan, AdamW or Muon + AdamW."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import AdamW, Optimizer

from ..forward import missing_forward_multipliers
from ..multipliers import DEFAULT_MULTIPLIER_WD
from ..planning import Plan
from ..recipes import muon_scaling
from ..roles import Role, parameter_sites
from .muon import NS_DTYPES, BatchedMuon

OPTIMIZERS = ("adamw", "muon")


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


def build_optimizer(
    model: nn.Module,
    plan: Plan,
    optimizer: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    *,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    multiplier_lr: float | None = None,
    multiplier_weight_decay: float = DEFAULT_MULTIPLIER_WD,
    muon_lr: float | None = None,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = "match_rms_adamw",
    ns_dtype: str = "auto",
    check_forward_multipliers: bool = True,
    **adamw_kwargs: Any,
) -> Optimizer:
    """An optimizer whose groups carry ``lr * lr_factor`` and ``weight_decay * wd_factor`` from ``plan``.

    ``lr`` and ``weight_decay`` are base values, meaningful at the base width; AdamW defaults to the LLM
    pretraining ``betas=(0.9, 0.95)``; other AdamW arguments (``fused``, ``foreach``, ...) pass through.
    Multipliers take AdamW with
    ``multiplier_lr`` (default: the vector-like LR, ``lr``) and the absolute ``multiplier_weight_decay``.

    ``optimizer="muon"``: Muon (:class:`widthwise.optim.muon.BatchedMuon`, a batched ``torch.optim.Muon``) on the
    ``hidden`` matrices, AdamW on everything else, as one :class:`CombinedOptimizer`. Muon's width rule is the
    spectral one (:func:`widthwise.rules.muon_lr_factor`, :func:`widthwise.rules.muon_wd_factor`), never muP's
    Adam ``1/m`` on top. ``muon_lr`` defaults to ``lr``:
    with the default ``adjust_lr_fn="match_rms_adamw"`` Muon's update RMS matches AdamW's, so one base LR
    serves both; with ``"original"`` pass a Muon-sized ``muon_lr`` (e.g. 0.02). ``ns_dtype``: the dtype of
    Muon's Newton-Schulz iteration, ``"auto"`` (bf16 where bf16 matmuls are fast, else fp32), ``"bfloat16"``
    (bitwise ``torch.optim.Muon`` on CPU) or ``"float32"``.

    Each group also records ``role``, ``lr_factor``, ``wd_factor`` and ``width_mult``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    if ns_dtype not in NS_DTYPES:
        raise ValueError(f"unknown ns_dtype {ns_dtype!r}; expected one of {', '.join(NS_DTYPES)}")
    numbers = {"lr": lr, "weight_decay": weight_decay, "multiplier_weight_decay": multiplier_weight_decay}
    for label, value in numbers.items():
        if not (isinstance(value, (int, float)) and value >= 0):
            raise ValueError(f"{label} must be a non-negative number, got {value!r}")
    if check_forward_multipliers:
        missing = missing_forward_multipliers(model, plan)
        if missing:
            fm = missing[0]
            raise ValueError(
                f"the plan's {fm.kind} multiplier x{fm.value:.6g} on {fm.module!r} is not installed: call "
                "ww.init_weights(model, plan) or ww.apply_forward_multipliers(model, plan) first"
            )
    sites = parameter_sites(model)
    unknown = sorted(set(sites) - set(plan.params))
    if unknown:
        raise ValueError(f"parameter {unknown[0]!r} is not in the plan: was it added after ww.plan()?")
    stale = sorted(set(plan.params) - set(sites))
    if stale:
        raise ValueError(f"the plan names {stale[0]!r}, which the model lacks: was the plan made for another model?")

    adamw_groups: dict[tuple, dict] = {}
    muon_groups: dict[tuple, dict] = {}
    base_muon_lr = lr if muon_lr is None else muon_lr
    for name, site in sites.items():
        if not site.param.requires_grad:
            continue
        entry = plan.params[name]
        if tuple(site.param.shape) != entry.shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(site.param.shape)}, the plan says {entry.shape}")
        if optimizer == "muon" and entry.role is Role.HIDDEN:
            if site.param.ndim != 2:
                raise ValueError(f"Muon takes 2-D matrices; hidden parameter {name!r} has shape {entry.shape} "
                                 "(give it another role, or use optimizer='adamw')")
            lr_x, wd_x = muon_scaling(plan.recipe, entry.width_mult, adjust_lr_fn)
            groups, group_lr, group_wd = muon_groups, base_muon_lr * lr_x, weight_decay * wd_x
        elif entry.role is Role.MULTIPLIER:
            lr_x, wd_x = 1.0, None
            groups = adamw_groups
            group_lr = lr if multiplier_lr is None else multiplier_lr
            group_wd = multiplier_weight_decay
        else:
            lr_x, wd_x = entry.lr_factor, entry.wd_factor
            groups, group_lr, group_wd = adamw_groups, lr * lr_x, weight_decay * wd_x
        key = (entry.role.value, entry.width_mult, lr_x, wd_x)
        group = groups.setdefault(key, {
            "params": [], "lr": group_lr, "weight_decay": group_wd, "role": entry.role.value,
            "lr_factor": lr_x, "wd_factor": wd_x, "width_mult": entry.width_mult, "names": [],
        })
        group["params"].append(site.param)
        group["names"].append(name)

    if not adamw_groups and not muon_groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    adamw = AdamW(list(adamw_groups.values()), lr=lr, betas=betas, eps=eps, **adamw_kwargs) if adamw_groups else None
    if optimizer == "adamw":
        return adamw
    muon = BatchedMuon(list(muon_groups.values()), lr=base_muon_lr, momentum=momentum, nesterov=nesterov,
                       ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype) if muon_groups else None
    children = {k: v for k, v in (("muon", muon), ("adamw", adamw)) if v is not None}
    return CombinedOptimizer(children)


def muon_ns_dtype(optimizer: Optimizer) -> str | None:
    """The Newton-Schulz dtype an optimizer from :func:`build_optimizer` resolved for Muon; ``None`` without Muon."""
    children = optimizer.optimizers if isinstance(optimizer, CombinedOptimizer) else {"": optimizer}
    for child in children.values():
        if isinstance(child, BatchedMuon):
            return child.param_groups[0]["ns_dtype"]
    return None


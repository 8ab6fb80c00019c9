"""``build_optimizer``: the plan's per-parameter learning rates and weight decays as optimizer groups.

The plan (:func:`widthwise.plan`) decides each parameter's optimizer and its final LR and WD; this module only
groups what it says, AdamW alone or Muon + AdamW as one :class:`CombinedOptimizer`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import AdamW, Optimizer
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from ..forward import missing_forward_multipliers
from ..planning import ParamPlan, Plan
from ..roles import parameter_sites
from ..rules import OPTIMIZERS
from .combined import CombinedOptimizer
from .muon import NS_DTYPES, BatchedMuon

try:  # torch builds without distributed support have no DTensor, hence no sharded parameters
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - not on the supported builds
    DTensor = None

__all__ = ["OPTIMIZERS", "build_optimizer", "fused_adamw_supported", "is_sharded", "muon_ns_dtype"]

#: Settings that change factors: they belong to :func:`widthwise.plan`, named as ``plan`` takes them.
PLAN_SETTINGS = {"multiplier_lr": "multiplier_lr", "multiplier_weight_decay": "multiplier_weight_decay",
                 "adjust_lr_fn": "muon_adjust_lr_fn"}
#: AdamW arguments that choose its implementation: given any, :func:`build_optimizer` leaves the choice to them.
IMPLEMENTATION_SETTINGS = {"fused", "foreach", "capturable", "differentiable"}


def build_optimizer(
    model: nn.Module,
    plan: Plan,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    *,
    optimizer: str | None = None,
    muon_lr: float | None = None,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    ns_dtype: str = "auto",
    check_forward_multipliers: bool = True,
    **adamw_kwargs: Any,
) -> Optimizer:
    """An optimizer whose groups run exactly the plan's values: :meth:`ParamPlan.lr` and :meth:`ParamPlan.weight_decay`.

    ``lr`` and ``weight_decay`` are base values, meaningful at the base width; ``muon_lr`` (default ``lr``) is
    Muon's base LR. The plan says which optimizer trains each parameter (``ww.plan(..., optimizer=...)``), with
    which factors, Muon's ``adjust_lr_fn`` and the multipliers' own LR and WD; ``optimizer=`` here is accepted
    only if it agrees with the plan. AdamW defaults to the LLM pretraining ``betas=(0.9, 0.95)``; other AdamW
    arguments (``fused``, ``foreach``, ...) pass through. Given none of ``fused``, ``foreach``, ``capturable``
    and ``differentiable``, AdamW runs torch's fused kernel wherever it has one for every parameter's device and
    dtype (:func:`fused_adamw_supported`; CPU included, where torch's own default is its per-tensor loop): the
    same update, one kernel per group instead of a dozen per tensor (width 128 on one CPU thread: 9.2 -> 2.9 ms
    a step), rounded differently in the last bit (``fused=False`` gives torch's default back).

    A Muon plan gives Muon (:class:`widthwise.optim.muon.BatchedMuon`, a batched ``torch.optim.Muon``) on the
    hidden matrices and AdamW on everything else, as one :class:`CombinedOptimizer`; on matrices that FSDP2's
    ``fully_shard`` sharded, Muon is :class:`widthwise.optim.distributed_muon.DistributedMuon` (Newton-Schulz on
    whole matrices, spread over the ranks). ``ns_dtype``: the dtype of
    Muon's Newton-Schulz iteration, ``"auto"`` (bf16 where bf16 matmuls are fast, else fp32), ``"bfloat16"``
    (bitwise ``torch.optim.Muon`` on CPU) or ``"float32"``.

    Each group also records ``role``, ``lr_factor``, ``wd_factor``, ``width_mult`` and ``names``.
    """
    moved = sorted(set(adamw_kwargs) & set(PLAN_SETTINGS))
    if moved:
        raise ValueError(f"{moved[0]} belongs to the plan: pass {PLAN_SETTINGS[moved[0]]}= to ww.plan()")
    if optimizer is not None and optimizer != plan.optimizer:
        raise ValueError(f"optimizer={optimizer!r} disagrees with the plan's {plan.optimizer!r}: "
                         "choose the optimizer with ww.plan(..., optimizer=...)")
    if ns_dtype not in NS_DTYPES:
        raise ValueError(f"unknown ns_dtype {ns_dtype!r}; expected one of {', '.join(NS_DTYPES)}")
    numbers = {"lr": lr, "weight_decay": weight_decay, **({} if muon_lr is None else {"muon_lr": muon_lr})}
    for label, value in numbers.items():
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
            hint = " (the optimizer is the plan's: ww.plan(..., optimizer=...))" if isinstance(value, str) else ""
            raise ValueError(f"{label} must be a non-negative number, got {value!r}{hint}")
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

    groups: dict[str, dict[tuple, dict[str, Any]]] = {name: {} for name in OPTIMIZERS}
    sharded: list[str] = []  # Muon's matrices that FSDP2 sharded
    for name, site in sites.items():
        if not site.param.requires_grad:
            continue
        entry = plan.params[name]
        if tuple(site.param.shape) != entry.shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(site.param.shape)}, the plan says {entry.shape}")
        if entry.optimizer == "muon" and is_sharded(site.param):
            from .distributed_muon import supports

            if not supports(site.param):
                raise ValueError(
                    f"Muon cannot train {name!r}: it is sharded with placements {site.param.placements} on a "
                    f"{site.param.device_mesh.ndim}-D mesh, and Newton-Schulz on a shard is not Newton-Schulz on "
                    "the matrix; the distributed Muon takes FSDP2's row shards (Shard(0), 1-D mesh) only"
                )
            sharded.append(name)
        group = groups[entry.optimizer].setdefault(_group_key(entry), _group(entry, lr, weight_decay, muon_lr))
        group["params"].append(site.param)
        group["names"].append(name)

    if not any(groups.values()):
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    adamw_groups, muon_groups = list(groups["adamw"].values()), list(groups["muon"].values())
    if (adamw_groups and not set(adamw_kwargs) & IMPLEMENTATION_SETTINGS
            and fused_adamw_supported([p for g in adamw_groups for p in g["params"]])):
        adamw_kwargs["fused"] = True  # else torch's default (foreach on CUDA): fused=False would force its loop
    adamw = AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, **adamw_kwargs) if adamw_groups else None
    if plan.optimizer == "adamw":
        return adamw  # type: ignore[return-value]  # not None: every trainable parameter is AdamW's
    muon = None
    muon_names = [n for g in muon_groups for n in g["names"]]
    if sharded and len(sharded) < len(muon_names):
        whole = next(n for n in muon_names if n not in sharded)
        raise ValueError(f"Muon's matrices are sharded ({sharded[0]!r}) and not ({whole!r}): shard all or none")
    if muon_groups:
        if sharded:
            from .distributed_muon import DistributedMuon as muon_class
        else:
            muon_class = BatchedMuon
        muon = muon_class(muon_groups, lr=lr if muon_lr is None else muon_lr, momentum=momentum, nesterov=nesterov,
                           ns_steps=ns_steps, adjust_lr_fn=plan.muon_adjust_lr_fn, ns_dtype=ns_dtype)
    return CombinedOptimizer({k: v for k, v in (("muon", muon), ("adamw", adamw)) if v is not None})


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel takes every one of ``params``: floating point, on a device it has the
    kernel for (CPU, CUDA, ...; not ``meta``)."""
    devices = set(_get_fused_kernels_supported_devices())
    return bool(params) and all(p.device.type in devices and torch.is_floating_point(p) for p in params)


def is_sharded(param: torch.Tensor) -> bool:
    """Whether ``param`` is a DTensor split over ranks (any placement but ``Replicate``), as FSDP2 leaves it."""
    if DTensor is None or not isinstance(param, DTensor):
        return False
    return any(not placement.is_replicate() for placement in param.placements)


def _group_key(entry: ParamPlan) -> tuple:
    return (entry.role.value, entry.width_mult, entry.lr_factor, entry.wd_factor, entry.fixed_lr, entry.fixed_wd)


def _group(entry: ParamPlan, lr: float, weight_decay: float, muon_lr: float | None) -> dict[str, Any]:
    return {"params": [], "lr": entry.lr(lr, muon_lr), "weight_decay": entry.weight_decay(weight_decay),
            "role": entry.role.value, "lr_factor": entry.lr_factor, "wd_factor": entry.wd_factor,
            "width_mult": entry.width_mult, "names": []}


def muon_ns_dtype(optimizer: Optimizer) -> str | None:
    """The Newton-Schulz dtype an optimizer from :func:`build_optimizer` resolved for Muon; ``None`` without Muon."""
    children = optimizer.optimizers if isinstance(optimizer, CombinedOptimizer) else {"": optimizer}
    for child in children.values():
        if isinstance(child, BatchedMuon):
            return child.param_groups[0]["ns_dtype"]
    return None


"""The weight-decay / noise equilibrium of AdamW, its "Adam Brownian motion" reference, and a per-matrix report.

A matrix whose gradient is noise performs a random walk that coupled weight decay pulls back: its RMS settles
at ``~sqrt(lr / (2 wd))`` within ``~1 / (lr wd)`` steps, set by the hyperparameters, not the data (Kosson et al.
2024, "Rotational equilibrium", arXiv 2305.17212). Fan et al. (arXiv 2510.15262) build their width rule
``eta/lam ~ d^-1.5`` on this; learnable multipliers (arXiv 2601.04890) exist to escape it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import AdamW, Muon, Optimizer

from ..roles import ParamSite
from .matrices import matrix_sites, stored_weight
from .spectra import rms, rms_many

ABM_OPTIMIZERS = ("adamw", "muon")


def _check_betas(betas: Sequence[float]) -> tuple[float, float]:
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    return float(betas[0]), float(betas[1])


def equilibrium_rms(
    lr: float, weight_decay: float, *, betas: Sequence[float] = (0.9, 0.95), exact: bool = True
) -> float:
    """The stationary RMS of an AdamW matrix driven by i.i.d. Gaussian gradient noise (PyTorch-coupled WD).

    First order (``exact=False``): ``sqrt(lr / (2 wd))``, Adam's update having unit long-run variance per
    element (Kosson et al., arXiv 2305.17212). ``exact=True`` solves the discrete recursion
    ``W <- a W - lr u`` with ``a = 1 - lr wd`` and ``u = m / sqrt(v)``:
    ``Var(W) = lr^2 / (1 - a^2) * sum_h a^|h| C_u(h)`` with ``C_u`` the autocovariance of ``u``. For
    ``v = 1``, ``u`` is the momentum-filtered noise, ``C_u(h) = (1-b1)/(1+b1) b1^|h|``, giving
    ``lr^2 (1-b1)/(1+b1) (1 + a b1) / ((1 - a b1)(1 - a^2))``. On top, the fluctuation of Adam's second
    moment, ``v = 1 + d`` with ``d = (1-b2) sum_j b2^j (z_j^2 - 1)``, expanded as
    ``v^-1/2 = 1 - d/2 + 3 d^2/8`` to first order in ``1 - b2`` (with ``s(x) = (1 + a x) / (1 - a x)``):
    the ``d^2`` terms add ``(1-b1)/(1+b1) Var(d) (3/4 s(b1) + 1/4 s(b1 b2))``, ``Var(d) = 2 (1-b2)/(1+b2)``;
    the ``d`` terms, through ``E[z^2 (z^2 - 1)] = 2``, subtract
    ``(1-b1)^2 (1-b2) / (1 - b1^2 b2) * (s(b1) + s(b1 b2))``.

    Checked against torch AdamW on N(0, 1) gradients (256x256 or 512x512, >= 40 relaxation times, stationary):
    simulated RMS / this value is 1.0006-1.0007 for ``betas=(0.9, 0.95)`` at ``lr wd`` 3e-3..3e-2 (0.989
    without the ``b2`` terms; 0.88-0.98 first order) and within 0.25% for ``b1`` in 0..0.99 and ``b2`` in
    0.8..0.999; the residual, ``O((1-b2)^2)``, is largest for small ``b1`` (+0.25% at ``b1 <= 0.5``,
    ``b2 = 0.95``). A run is stationary only after ``1 / (lr wd)`` steps and Adam's windows ``1 / (1-b1)``,
    ``1 / (1-b2)``. Assumes Gaussian noise far above ``eps``; ``lr wd >= 2`` has no equilibrium (``inf``),
    nor has ``wd == 0``.
    """
    if lr < 0 or weight_decay < 0:
        raise ValueError(f"lr and weight_decay must be non-negative, got {lr!r}, {weight_decay!r}")
    b1, b2 = _check_betas(betas)
    if lr == 0:
        return 0.0
    if weight_decay == 0 or lr * weight_decay >= 2:
        return math.inf
    if not exact:
        return math.sqrt(lr / (2 * weight_decay))
    a = 1 - lr * weight_decay

    def s(x: float) -> float:  # sum_h (a x)^|h|
        return (1 + a * x) / (1 - a * x)

    var_m = (1 - b1) / (1 + b1)
    var_d = 2 * (1 - b2) / (1 + b2)
    linear = (1 - b1) ** 2 * (1 - b2) / (1 - b1 * b1 * b2)
    long_run = var_m * s(b1) + var_m * var_d * (0.75 * s(b1) + 0.25 * s(b1 * b2)) - linear * (s(b1) + s(b1 * b2))
    return math.sqrt(lr * lr * long_run / (1 - a * a))


def relaxation_steps(lr: float, weight_decay: float) -> float:
    """``1 / (lr wd)``: the steps AdamW's decay takes to forget the initial weights (``inf`` if either is 0)."""
    if lr < 0 or weight_decay < 0:
        raise ValueError(f"lr and weight_decay must be non-negative, got {lr!r}, {weight_decay!r}")
    return math.inf if lr == 0 or weight_decay == 0 else 1.0 / (lr * weight_decay)


def abm_trajectory(
    lrs: Sequence[float],
    weight_decay: float,
    *,
    init_std: float,
    shape: tuple[int, ...] = (256, 256),
    optimizer: str = "adamw",
    betas: Sequence[float] = (0.9, 0.95),
    eps: float = 1e-8,
    momentum: float = 0.95,
    nesterov: bool = True,
    adjust_lr_fn: str | None = "match_rms_adamw",
    seed: int = 0,
    every: int = 1,
) -> list[float]:
    """"Adam Brownian motion": the RMS trajectory of a matrix driven by i.i.d. N(0, 1) gradients.

    A tensor of ``shape`` starts at N(0, ``init_std``^2) and is stepped by the real ``torch.optim.AdamW`` (or
    ``torch.optim.Muon``, 2-D only, with ``momentum``/``nesterov``/``adjust_lr_fn``) at learning rate
    ``lrs[t]`` on step ``t`` (a run's schedule) and coupled ``weight_decay``. Returns the RMS after steps
    ``every, 2 every, ...`` and after the last step. Init and noise come from a private generator seeded
    by ``seed``; the global RNG is untouched. AdamW acts per element, so a moderate ``shape`` only sets the
    sampling noise of the RMS; Muon orthogonalizes the whole matrix, so there the shape matters. A
    noise-dominated weight of a real run follows this trajectory (the equilibrium of Kosson et al., arXiv
    2305.17212; :func:`equilibrium_rms` is its constant-LR limit for AdamW).
    """
    if optimizer not in ABM_OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(ABM_OPTIMIZERS)}")
    if optimizer == "muon" and len(shape) != 2:
        raise ValueError(f"Muon takes 2-D matrices, got shape {tuple(shape)}")
    if every < 1 or init_std < 0 or weight_decay < 0 or any(lr < 0 for lr in lrs):
        raise ValueError("need every >= 1 and non-negative init_std, weight_decay and learning rates")
    generator = torch.Generator().manual_seed(seed)
    weight = nn.Parameter(torch.randn(tuple(shape), generator=generator) * init_std)
    if optimizer == "adamw":
        opt: Optimizer = AdamW([weight], lr=0.0, betas=_check_betas(betas), eps=eps, weight_decay=weight_decay)
    else:
        opt = Muon([weight], lr=0.0, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                   adjust_lr_fn=adjust_lr_fn)
    group = opt.param_groups[0]
    trajectory = []
    for step, lr in enumerate(lrs, start=1):
        group["lr"] = float(lr)
        weight.grad = torch.randn(weight.shape, generator=generator)
        opt.step()
        if step % every == 0 or step == len(lrs):
            trajectory.append(rms(weight))
    return trajectory


def _holders(optimizer: Optimizer) -> dict[int, tuple[dict[str, Any], str]]:
    """``{id(param): (param group, kind)}`` over the optimizer's parameters, looking into a CombinedOptimizer's
    children.

    ``kind`` is ``"muon"``, ``"adamw"`` (AdamW, or Adam with decoupled decay) or the optimizer's class name.
    """
    children = getattr(optimizer, "optimizers", None)
    found: dict[int, tuple[dict[str, Any], str]] = {}
    for child in children.values() if isinstance(children, Mapping) else [optimizer]:
        for group in child.param_groups:
            if isinstance(child, Muon) or ("ns_steps" in group and "betas" not in group):
                kind = "muon"
            elif isinstance(child, AdamW) or group.get("decoupled_weight_decay") is True:
                kind = "adamw"
            else:
                kind = type(child).__name__.lower()
            for p in group["params"]:
                found.setdefault(id(p), (group, kind))
    return found


def equilibrium_report(
    model: nn.Module, optimizer: Optimizer, *, betas: Sequence[float] | None = None,
    sites: Mapping[str, ParamSite] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each matrix's stored-weight RMS against the AdamW noise equilibrium of its current param group.

    Per matrix (canonical name; matrices the optimizer does not hold are skipped): ``rms`` of the stored
    ``V`` (what weight decay acts on), the group's current ``lr`` and ``weight_decay``, ``optimizer``
    (``"adamw"``, ``"muon"`` or another optimizer's class name), ``role`` (the group's, if recorded),
    ``equilibrium_rms`` (:func:`equilibrium_rms` with the group's betas, or ``betas``; ``None`` unless AdamW
    with ``lr > 0`` and ``weight_decay > 0``), ``ratio`` (``rms`` over it, or ``None``) and
    ``relaxation_steps``. A ratio near 1 after many relaxation times marks a noise-pinned matrix. ``sites``: the
    model's :func:`~widthwise.diagnostics.matrices.matrix_sites`, found beforehand.
    """
    report = {}
    holders = _holders(optimizer)
    held = {name: (site, holders[id(site.param)])
            for name, site in (matrix_sites(model) if sites is None else sites).items() if id(site.param) in holders}
    values = rms_many([stored_weight(site) for site, _ in held.values()])
    for (name, (_, (group, kind))), value in zip(held.items(), values, strict=True):
        lr, wd = float(group["lr"]), float(group.get("weight_decay", 0.0))
        eq = None
        if kind == "adamw" and wd > 0 and lr > 0:
            eq = equilibrium_rms(lr, wd, betas=group.get("betas", (0.9, 0.95)) if betas is None else betas)
        report[name] = {
            "rms": value, "lr": lr, "weight_decay": wd, "optimizer": kind, "role": group.get("role"),
            "equilibrium_rms": eq, "ratio": value / eq if eq else None,
            "relaxation_steps": relaxation_steps(lr, wd),
        }
    return report

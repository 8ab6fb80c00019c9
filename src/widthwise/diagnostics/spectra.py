"""Singular-value diagnostics of a model's matrices: top singular value, spectra, stable rank, RMS.

Fan et al. (arXiv 2510.15262) observe that in AdamW's steady state each matrix's spectrum scales as
``sqrt(eta/lam)`` with an invariant shape, and use matching top singular values between a proxy and a target
width to confirm hyperparameter transfer. ``sigma_max`` here comes from warm-started power iteration, cheap
enough to log during training; :func:`singular_values` gives the exact spectra.

A model's matrices are those of :func:`widthwise.diagnostics.matrices.matrix_sites`, keyed by canonical
parameter name; ``which="effective"`` measures the weight the layer applies (learnable multipliers of
arXiv 2601.04890 and fixed scales included), ``which="stored"`` the trained tensor ``V``. A mapping of
name -> tensor (2-D or more, flattened to ``(shape[0], -1)``) is measured as given.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Collection, Mapping

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from ..roles import ParamSite
from .matrices import as_linear_map, effective_weight, matrix_sites, stored_weight

WHICH = ("effective", "stored")
ModelOrTensors = nn.Module | Mapping[str, torch.Tensor]
Matrices = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (warm-start key, 2-D float32 matrix)

# Warm start: the last singular vector per matrix, keyed by the stored parameter (model input) or the
# tensor passed (mapping input). ``weakref.WeakKeyDictionary`` cannot hold tensors (its lookups compare
# keys with ``==``, elementwise for tensors), so torch's identity-keyed variant is used.
_WARM: dict[str, WeakIdKeyDictionary] = {key: WeakIdKeyDictionary() for key in (*WHICH, "mapping")}
# Power iterations each matrix took in the latest :func:`top_singular_values` call (a diagnostic of the warm start).
last_iterations: dict[str, int] = {}


def _matrices(model_or_tensors: ModelOrTensors, which: str,
              names: Collection[str] | None = None) -> tuple[Matrices, str]:
    """``({name: (warm-start key, 2-D float32 matrix)}, cache name)`` of a model's matrices or a mapping
    (only those in ``names`` when given)."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {', '.join(WHICH)}, got {which!r}")
    if isinstance(model_or_tensors, nn.Module):
        measure = effective_weight if which == "effective" else stored_weight
        return site_matrices(matrix_sites(model_or_tensors), measure, names), which
    if not isinstance(model_or_tensors, Mapping):
        raise TypeError(f"expected an nn.Module or a mapping of name -> tensor, got {type(model_or_tensors).__name__}")
    low = [name for name, t in model_or_tensors.items() if t.ndim < 2]
    if low:
        raise ValueError(f"matrices must be 2-D or more; {', '.join(map(repr, low))} "
                         f"{'is' if len(low) == 1 else 'are'} not")
    return {name: (t, t.detach().reshape(t.shape[0], -1).float())
            for name, t in model_or_tensors.items() if names is None or name in names}, "mapping"


def site_matrices(sites: Mapping[str, ParamSite], weight: Callable[[ParamSite], torch.Tensor],
                  names: Collection[str] | None = None) -> Matrices:
    """``{name: (warm-start key, 2-D float32 matrix)}`` of ``sites`` (those in ``names`` if given), ``weight(site)``
    giving each one's tensor (:func:`effective_weight`, :func:`stored_weight`, or a lookup of weights built
    already): the input of :func:`top_sigmas`."""
    return {name: (site.param, as_linear_map(weight(site), site)) for name, site in sites.items()
            if names is None or name in names}


#: Vectors in the iterated subspace. A single vector converges at the rate sigma_2/sigma_1, which is close to 1
#: in random-like weight matrices (the top of a Marchenko-Pastur bulk); a block with Rayleigh-Ritz converges at
#: sigma_{k+1}/sigma_1 and does not stall between near-equal top singular values.
BLOCK = 8
#: Iterations a warm start takes at least: the subspace moved since the last call, one step may not show it.
MIN_WARM_ITERS = 2


def _cold_block(n: int, k: int, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """An orthonormal ``(n, k)`` start from a private generator seeded by the shape (never the global RNG)."""
    seed = zlib.crc32(repr(shape).encode())
    v = torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return torch.linalg.qr(v).Q.to(device)


def _power_iteration(
    w: torch.Tensor, v: torch.Tensor, tol: float, max_iters: int, min_iters: int = 1
) -> tuple[float, torch.Tensor, int]:
    """``(sigma_max, subspace, iterations)`` of the 2-D ``w`` by block power (subspace) iteration from ``v``.

    ``v`` is an ``(n, k)`` block on the smaller side of ``w``; each iteration applies ``W^T W``,
    re-orthonormalises (QR) and takes the top Ritz value of the ``k x k`` projected problem, so ``sigma``
    never exceeds the true ``sigma_max`` and rises towards it. Stops when it changes by less than ``tol``
    (relative) after at least ``min_iters`` iterations, or after ``max_iters``. A zero matrix gives 0, a
    non-finite one NaN.
    """
    a = w if w.shape[0] >= w.shape[1] else w.T
    # A finite sum means finite entries (a NaN or inf entry makes the sum NaN or inf): one pass, no mask; an
    # overflowing sum of finite entries falls through to the exact test.
    if not math.isfinite(float(a.sum())) and not bool(torch.isfinite(a).all()):
        return math.nan, v, 0
    sigma, iters = 0.0, 0
    av = a @ v
    while iters < max_iters:
        q = torch.linalg.qr(a.T @ av).Q
        aq = a @ q  # the next iteration's ``a @ v``: two products with ``a`` per iteration, not three
        new = float(torch.linalg.eigvalsh(aq.T @ aq)[-1].clamp_min(0).sqrt())
        iters += 1
        if new == 0:
            return 0.0, v, iters
        v, av = q, aq
        converged = abs(new - sigma) <= tol * new
        sigma = new
        if converged and iters >= min_iters:
            break
    return sigma, v, iters


def top_sigmas(matrices: Matrices, cache_name: str, tol: float = 1e-4, max_iters: int = 200,
               warm_start: bool = True) -> dict[str, float]:
    """Power-iteration ``sigma_max`` of resolved matrices (:func:`site_matrices`), warm-started from and stored to
    the warm start of ``cache_name`` (``"effective"``, ``"stored"``: shared with :func:`top_singular_values`)."""
    if tol <= 0 or max_iters < 1:
        raise ValueError(f"need tol > 0 and max_iters >= 1, got tol={tol!r}, max_iters={max_iters!r}")
    cache = _WARM[cache_name]
    result: dict[str, float] = {}
    last_iterations.clear()
    with torch.no_grad():
        for name, (key, w) in matrices.items():
            shape = (int(w.shape[0]), int(w.shape[1]))
            n = min(shape)
            k = min(BLOCK, n)
            v = cache.get(key) if warm_start else None
            warm = v is not None and v.shape == (n, k) and v.device == w.device
            if not warm:
                v = _cold_block(n, k, shape, w.device)
            sigma, v, iters = _power_iteration(w, v, tol, max_iters, MIN_WARM_ITERS if warm else 1)
            if warm and not sigma > 0:  # the old subspace fell into the new matrix's null space (or went NaN)
                sigma, v, more = _power_iteration(w, _cold_block(n, k, shape, w.device), tol, max_iters)
                iters += more
            cache[key] = v
            result[name] = sigma
            last_iterations[name] = iters
    return result


def top_singular_values(
    model_or_tensors: ModelOrTensors,
    *,
    which: str = "effective",
    tol: float = 1e-4,
    max_iters: int = 200,
    warm_start: bool = True,
    names: Collection[str] | None = None,
) -> dict[str, float]:
    """``sigma_max`` of every matrix (of those in ``names`` if given) by block power iteration on ``W^T W``, in
    float32 on the weight's device.

    With ``warm_start`` each matrix restarts from the singular subspace of the previous call (per stored
    parameter or passed tensor, separately per ``which``), so a call during training typically converges in
    2-5 iterations (applications of ``W^T W`` to a block of :data:`BLOCK` vectors; ~10-40 from cold). Cold
    starts draw from a private generator seeded by the shape, never the global RNG, so training stays
    bitwise reproducible. Stops at a relative
    change of sigma below ``tol`` or after ``max_iters``; the iterations each matrix took are left in
    :data:`last_iterations`.
    """
    matrices, cache_name = _matrices(model_or_tensors, which, names)
    return top_sigmas(matrices, cache_name, tol, max_iters, warm_start)


def _svdvals(matrices: Matrices) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {name: torch.linalg.svdvals(w.cpu()) for name, (_, w) in matrices.items()}


def singular_values(model_or_tensors: ModelOrTensors, *, which: str = "effective") -> dict[str, torch.Tensor]:
    """The exact singular values of every matrix (``torch.linalg.svdvals``, float32 on CPU, descending)."""
    return _svdvals(_matrices(model_or_tensors, which)[0])


def rms(weight: torch.Tensor) -> float:
    """``sqrt(mean(W**2))``, the entry scale AdamW's noise equilibrium sets (Kosson et al., arXiv 2305.17212)."""
    return float(weight.detach().double().pow(2).mean().sqrt())


def _stable_rank(frobenius: float, sigma: float) -> float:
    return frobenius**2 / sigma**2 if sigma > 0 else math.nan


def stable_rank(weight: torch.Tensor) -> float:
    """``||W||_F^2 / sigma_max^2`` of a matrix (2-D or more, flattened) with the exact ``sigma_max``; NaN if zero."""
    if weight.ndim < 2:
        raise ValueError(f"expected a matrix (2-D or more), got shape {tuple(weight.shape)}")
    w = weight.detach().reshape(weight.shape[0], -1).double().cpu()
    return _stable_rank(float(w.norm()), float(torch.linalg.matrix_norm(w, ord=2)))


def spectral_summary(
    model_or_tensors: ModelOrTensors, *, which: str = "effective", exact: bool = False
) -> dict[str, dict[str, float]]:
    """Per matrix ``{"sigma_max", "rms", "stable_rank", "frobenius"}``.

    ``sigma_max`` is exact (svdvals) with ``exact=True``, else from warm-started power iteration (default
    tolerance, sharing :func:`top_singular_values`' warm start); the stable rank uses that ``sigma_max``.
    """
    matrices, cache_name = _matrices(model_or_tensors, which)
    if exact:
        sigmas = {name: float(s[0]) if s.numel() else 0.0 for name, s in _svdvals(matrices).items()}
    else:
        sigmas = top_sigmas(matrices, cache_name, 1e-4, 200, True)
    summary = {}
    for name, (_, w) in matrices.items():
        fro = float(w.double().norm())
        summary[name] = {"sigma_max": sigmas[name], "rms": rms(w), "stable_rank": _stable_rank(fro, sigmas[name]),
                         "frobenius": fro}
    return summary


def stable_ranks(
    model_or_tensors: ModelOrTensors, *, which: str = "effective", exact: bool = False
) -> dict[str, float]:
    """``||W||_F^2 / sigma_max^2`` of every matrix, by default with the power-iteration ``sigma_max``."""
    return {name: s["stable_rank"] for name, s in spectral_summary(model_or_tensors, which=which, exact=exact).items()}


def rms_values(model_or_tensors: ModelOrTensors, *, which: str = "effective") -> dict[str, float]:
    """:func:`rms` of every matrix."""
    return {name: rms(w) for name, (_, w) in _matrices(model_or_tensors, which)[0].items()}

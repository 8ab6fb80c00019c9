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

import contextlib
import functools
import math
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence

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
#: Most bytes of matrices iterated as one batch on a CPU (at least one matrix). Each iteration streams the batch
#: twice: at width 256, batches of up to 2-4 MiB took 15-20% less time than one matrix at a time and than unbounded
#: batches (one thread, a 1 MiB L2 per core); on other devices a group is one batch.
CPU_BATCH_BYTES = 2 << 20


@functools.lru_cache(maxsize=64)
def _cold_block(n: int, k: int, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """An orthonormal ``(n, k)`` start from a private generator seeded by the shape (never the global RNG);
    cached, not to be modified."""
    seed = zlib.crc32(repr(shape).encode())
    v = torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return torch.linalg.qr(v).Q.to(device)


def _oriented(w: torch.Tensor) -> torch.Tensor:
    """``w``, or its transpose if it is wider than tall: the iterated block lives on the smaller side."""
    return w if w.shape[0] >= w.shape[1] else w.T


def _finite(a: torch.Tensor) -> list[bool]:
    """Per matrix of the batch ``a`` (``(B, m, n)``): whether all its entries are finite."""
    # A finite sum means finite entries (a NaN or inf entry makes the sum NaN or inf): one pass, no mask; an
    # overflowing sum of finite entries falls through to the exact test.
    ok = a.sum((1, 2)).isfinite()
    return (ok if bool(ok.all()) else ok | a.isfinite().flatten(1).all(1)).tolist()


def _power_iteration(
    a: torch.Tensor, v: torch.Tensor, tol: float, max_iters: int, min_iters: list[int]
) -> tuple[list[float], torch.Tensor, list[int]]:
    """``(sigma_max, subspace, iterations)`` per matrix of the batch ``a`` (``(B, m, n)``, ``m >= n``) by block
    power (subspace) iteration from ``v`` (``(B, n, k)``).

    Each iteration applies ``A^T A``, re-orthonormalises (QR) and takes the top Ritz value of the ``k x k``
    projected problem, so ``sigma`` never exceeds the true ``sigma_max`` and rises towards it. A matrix stops
    when its ``sigma`` changes by less than ``tol`` (relative) after at least its ``min_iters`` iterations, or
    after ``max_iters``, and leaves the batch: what it reports does not depend on the others. One whose
    ``sigma`` comes out 0 (a zero matrix) or not finite stops there, keeping its previous subspace.
    """
    sigma_out, iters_out, v_out = [0.0] * len(a), [0] * len(a), v.clone()
    members, sigma = list(range(len(a))), [0.0] * len(a)  # the batch's rows: which matrix, its last sigma
    # Products in row form, ``(k, n) @ (n, m)`` and ``(k, m) @ (m, n)``: a GEMM with k = 8 output columns, as in
    # ``a.mT @ (a @ v)``, ran 2-4x slower (MKL, one thread) than one with k output rows.
    va = v.mT @ a.mT  # ``(a @ v).mT``
    for iters in range(1, max_iters + 1):
        q = torch.linalg.qr((va @ a).mT).Q
        qa = q.mT @ a.mT  # the next iteration's ``va``: two products with ``a`` per iteration, not three
        new = _top_eigenvalues(qa @ qa.mT).clamp_min(0).sqrt().tolist()
        done = [not 0 < s < math.inf or (abs(s - old) <= tol * s and iters >= least) or iters == max_iters
                for s, old, least in zip(new, sigma, min_iters, strict=True)]
        if any(done):
            for row in (row for row, stop in enumerate(done) if stop):
                sigma_out[members[row]], iters_out[members[row]] = new[row], iters
                v_out[members[row]] = q[row] if 0 < new[row] < math.inf else v[row]
            keep = [row for row, stop in enumerate(done) if not stop]
            if not keep:
                break
            index = torch.tensor(keep, device=a.device)
            a, q, qa = a[index], q[index], qa[index]
            members, new, min_iters = ([x[row] for row in keep] for x in (members, new, min_iters))
        v, va, sigma = q, qa, new
    return sigma_out, v_out, iters_out


def _top_eigenvalues(gram: torch.Tensor) -> torch.Tensor:
    """The largest eigenvalue of each symmetric ``k x k`` matrix of the batch ``gram``; NaN for one whose
    eigensolver fails (entries that overflowed: a diverging run's weights), not an error for the whole batch."""
    try:
        return torch.linalg.eigvalsh(gram)[:, -1]
    except torch.linalg.LinAlgError:
        out = torch.full(gram.shape[:1], math.nan, dtype=gram.dtype, device=gram.device)
        for row, matrix in enumerate(gram):
            if bool(matrix.isfinite().all()):
                with contextlib.suppress(torch.linalg.LinAlgError):
                    out[row] = torch.linalg.eigvalsh(matrix)[-1]
        return out


def _iterate_rows(a: torch.Tensor, v: torch.Tensor, rows: list[int], min_iters: list[int], tol: float,
                  max_iters: int, sigma: list[float], iters: list[int]) -> None:
    """:func:`_power_iteration` over the matrices ``rows`` of the batch ``a`` from ``v``: their ``sigma`` set,
    their subspaces written to ``v``, their iterations added to ``iters``."""
    if not rows:
        return
    every = len(rows) == len(a)
    index = torch.tensor(rows, device=a.device)
    found, subspaces, more = _power_iteration(a if every else a[index], v if every else v[index], tol, max_iters,
                                              min_iters)
    v[index] = subspaces
    for row, s, extra in zip(rows, found, more, strict=True):
        sigma[row], iters[row] = s, iters[row] + extra


def _group_sigmas(entries: list[tuple[torch.Tensor, torch.Tensor]], cache: WeakIdKeyDictionary, tol: float,
                  max_iters: int, warm_start: bool) -> tuple[list[float], list[int]]:
    """``(sigma_max, iterations)`` of ``(warm-start key, matrix)`` pairs of one oriented shape, dtype and device,
    iterated as one batch, each from its subspace in ``cache`` (where it fits) and stored back there.

    A warm start whose ``sigma`` is not > 0 (the old subspace fell into the new matrix's null space) is
    retried cold; a non-finite matrix gives NaN and keeps its subspace.
    """
    a = torch.stack([_oriented(w) for _, w in entries])
    n, device = a.shape[2], a.device
    k = min(BLOCK, n)
    starts = [cache.get(key) if warm_start else None for key, _ in entries]
    warm = [v is not None and v.shape == (n, k) and v.device == device for v in starts]
    v = torch.stack([start if ok else _cold_block(n, k, tuple(w.shape), device)
                     for start, ok, (_, w) in zip(starts, warm, entries, strict=True)])
    sigma, iters = [math.nan] * len(entries), [0] * len(entries)
    rows = [row for row, ok in enumerate(_finite(a)) if ok]
    _iterate_rows(a, v, rows, [MIN_WARM_ITERS if warm[row] else 1 for row in rows], tol, max_iters, sigma, iters)
    again = [row for row in rows if warm[row] and not sigma[row] > 0]
    if again:
        v[again] = torch.stack([_cold_block(n, k, tuple(entries[row][1].shape), device) for row in again])
        _iterate_rows(a, v, again, [1] * len(again), tol, max_iters, sigma, iters)
    for (key, _), subspace in zip(entries, v, strict=True):
        cache[key] = subspace
    return sigma, iters


def _batches(matrices: Matrices) -> list[list[str]]:
    """The names of ``matrices`` by oriented shape, dtype and device, in batches of at most
    :data:`CPU_BATCH_BYTES` on a CPU (at least one matrix each)."""
    groups: dict[tuple[torch.Size, torch.dtype, torch.device], list[str]] = {}
    for name, (_, w) in matrices.items():
        groups.setdefault((_oriented(w).shape, w.dtype, w.device), []).append(name)
    batches = []
    for (shape, dtype, device), names in groups.items():
        size = len(names) if device.type != "cpu" else max(1, CPU_BATCH_BYTES // (shape.numel() * dtype.itemsize))
        batches += [names[i:i + size] for i in range(0, len(names), size)]
    return batches


def top_sigmas(matrices: Matrices, cache_name: str, tol: float = 1e-4, max_iters: int = 200,
               warm_start: bool = True) -> dict[str, float]:
    """Power-iteration ``sigma_max`` of resolved matrices (:func:`site_matrices`), warm-started from and stored to
    the warm start of ``cache_name`` (``"effective"``, ``"stored"``: shared with :func:`top_singular_values`).

    ``sigma_max`` is the diagnostic of Fan et al. (arXiv 2510.15262), measured during training: matrices of one
    shape (up to transposition) on one device are iterated together as a batch (on a CPU, of at most
    :data:`CPU_BATCH_BYTES`), each to its own convergence, a few batched calls per iteration instead of a few per
    matrix.
    """
    if tol <= 0 or max_iters < 1:
        raise ValueError(f"need tol > 0 and max_iters >= 1, got tol={tol!r}, max_iters={max_iters!r}")
    sigmas: dict[str, float] = {}
    iterations: dict[str, int] = {}
    with torch.no_grad():
        for names in _batches(matrices):
            entries = [matrices[name] for name in names]
            sigma, iters = _group_sigmas(entries, _WARM[cache_name], tol, max_iters, warm_start)
            sigmas.update(zip(names, sigma, strict=True))
            iterations.update(zip(names, iters, strict=True))
    last_iterations.clear()
    last_iterations.update((name, iterations[name]) for name in matrices)
    return {name: sigmas[name] for name in matrices}


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
    """``sqrt(mean(W**2))``, the entry scale AdamW's noise equilibrium sets (Kosson et al., arXiv 2305.17212),
    accumulated in float64; NaN for an empty tensor."""
    return rms_many([weight])[0]


def rms_many(weights: Sequence[torch.Tensor]) -> list[float]:
    """:func:`rms` of each tensor: the float64 norms of all in one call per device (``torch._foreach_norm``), a
    third of the cost of one reduction per tensor (58 matrices: 5.6 against 16 ms)."""
    out = [math.nan] * len(weights)
    by_device: dict[torch.device, list[int]] = {}
    for i, w in enumerate(weights):
        if w.numel():
            by_device.setdefault(w.device, []).append(i)
    for indices in by_device.values():
        norms = torch._foreach_norm([weights[i].detach() for i in indices], 2, dtype=torch.float64)
        for i, norm in zip(indices, torch.stack(norms).tolist(), strict=True):
            out[i] = norm / math.sqrt(weights[i].numel())
    return out


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

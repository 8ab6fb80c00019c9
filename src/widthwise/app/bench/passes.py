"""The learnable multipliers' own passes, timed apart from the rest of a training step, with the caches cold.

A step ratio (``row_col`` against no multipliers) moves by a few percent between runs on a shared machine, more
than the multipliers cost. What they add to a step is the element-wise work of building ``diag(r) V diag(c)`` and
of its backward, plus the update of their tiny tensors. :func:`isolated_passes` times the first on the model's own
weights (shapes and values): every effective weight built and differentiated for a fixed ``dL/dW`` in one autograd
call, against the weights used as they are (``leaf``: what a model with the multipliers folded does with them,
only the gradient's accumulation). A step's matrix products evict the weights from the caches before the
multipliers' passes read them, so each call here starts after writing :data:`EVICT_MB` of other memory (more than
the last-level cache of the CPUs we measure on). The same tensors serve every path, so where the model lies in
memory biases none of them; interleaved in a shuffled order, medians.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...fused_multipliers import scaled_embedding, scaled_weight, unfused_weight
from ...parametrizations import Multipliers
from .timing import timed

#: MiB written before each timed call, to empty the caches (a 2-core EPYC's L3 holds 32 MiB; an H100's L2 50 MB).
EVICT_MB = 64

Matrix = tuple[torch.Tensor, Multipliers]


def multiplied_weights(model: nn.Module) -> tuple[list[Matrix], Matrix | None]:
    """``(V, multipliers)`` of every matrix layer of ``model`` with learnable multipliers, and its input embedding's
    (``None`` if it has none), which takes the looked-up-rows path."""
    matrices: list[Matrix] = []
    embedding: Matrix | None = None
    for module in model.modules():
        for plist in getattr(module, "parametrizations", {}).values():
            mult = plist[0]
            if not isinstance(mult, Multipliers):
                continue
            if isinstance(module, nn.Embedding):
                embedding = (plist.original, mult)
            else:
                matrices.append((plist.original, mult))
    return matrices, embedding


@contextmanager
def bypassed(model: nn.Module) -> Iterator[None]:
    """``model`` without its learnable multipliers' passes, for timing only: every :class:`Multipliers` hands back
    ``V`` itself and an embedding looks ``V`` up (through any other parametrization of it), so the forward and
    backward run the same matrix products on the same tensors, without the multipliers' element-wise work. The
    outputs differ (the multipliers are not applied); the model is restored on leaving."""
    patched: list[nn.Module] = []
    try:
        for module in model.modules():
            if isinstance(module, Multipliers):
                module.forward = _identity
                patched.append(module)
            elif isinstance(module, nn.Embedding) and any(
                    isinstance(p, Multipliers) for plist in getattr(module, "parametrizations", {}).values()
                    for p in plist):
                module.forward = partial(nn.Embedding.forward, module)
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def _identity(weight: torch.Tensor) -> torch.Tensor:
    return weight


def matrix_paths(matrices: list[Matrix]) -> dict[str, Callable[[], list[torch.Tensor]]]:
    """Ways to build the effective weights (autograd-connected to ``V``, ``r``, ``c``): ``widthwise`` (the default
    dispatch of :func:`~widthwise.fused_multipliers.scaled_weight`), ``products`` (autograd's element-wise
    products for every weight), ``fused`` (the closed-form backward for every weight), ``leaf`` (``V`` itself)."""
    def build(fused: bool | None) -> Callable[[], list[torch.Tensor]]:
        return lambda: [scaled_weight(v, m.scalar, m.row, m.col, m.out_axis, m.in_axis, fused=fused)
                        for v, m in matrices]

    def products() -> list[torch.Tensor]:
        return [unfused_weight(v, m.scalar, m.row, m.col, m.out_axis, m.in_axis) for v, m in matrices]

    def leaf() -> list[torch.Tensor]:
        return [v for v, _ in matrices]

    return {"widthwise": build(None), "products": products, "fused": build(True), "leaf": leaf}


EmbeddingPath = Callable[[torch.Tensor, torch.Tensor, Multipliers], torch.Tensor]


def isolated_passes(model: nn.Module, ids: torch.Tensor, rounds: int, paths: tuple[str, ...] = ("widthwise", "leaf"),
                    extra: Mapping[str, Callable[[], list[torch.Tensor]]] | None = None, evict_mb: int = EVICT_MB,
                    seed: int = 0, extra_embedding: Mapping[str, EmbeddingPath] | None = None) -> dict[str, Any]:
    """Milliseconds of the multipliers' forward + backward on ``model``'s weights, each path against ``leaf``.

    ``paths`` picks from :func:`matrix_paths` (``leaf`` is always timed); ``extra`` adds named builders of the
    same weights (e.g. a compiled one). The embedding, if it has multipliers, is timed on the batch ``ids``: its
    looked-up rows (``embedding``) against a plain lookup; ``extra_embedding`` adds named lookups
    ``f(ids, V, multipliers)`` (e.g. compiled ones), timed the same way. Returns the medians (``median_ms``),
    each path's cost above ``leaf`` (``ms_above_leaf``; the embedding's paths above the plain lookup, under their
    names) and what was timed.
    """
    matrices, embedding = multiplied_weights(model)
    if not matrices:
        raise ValueError(f"{type(model).__name__} has no matrix layer with learnable multipliers")
    device = matrices[0][0].device
    generator = torch.Generator(device).manual_seed(seed)
    grads = [torch.randn(v.shape, generator=generator, device=device, dtype=v.dtype) for v, _ in matrices]
    builders = {name: f for name, f in matrix_paths(matrices).items() if name in (*paths, "leaf")}
    builders.update(extra or {})
    fns: dict[str, Callable[[], None]] = {name: (lambda f=f: torch.autograd.backward(f(), grads))
                                          for name, f in builders.items()}
    if embedding is not None:
        table, mult = embedding
        ids = ids.to(device)
        rows_grad = torch.randn(*ids.shape, table.shape[1], generator=generator, device=device, dtype=table.dtype)
        fns["embedding"] = lambda: scaled_embedding(ids, table, mult.row, mult.col).backward(rows_grad)
        fns["embedding_leaf"] = lambda: F.embedding(ids, table).backward(rows_grad)
        for name, lookup in (extra_embedding or {}).items():
            fns[name] = lambda f=lookup: f(ids, table, mult).backward(rows_grad)
    params = list(model.parameters())
    evict = torch.empty(evict_mb << 18, device=device)  # float32: 2^18 elements a MiB

    def call(fn: Callable[[], None]) -> float:
        if evict_mb:
            evict.fill_(1.0)
        seconds = timed(fn, device)
        for p in params:
            p.grad = None
        return seconds

    for fn in fns.values():  # one untimed call each (and a compiled path's compilation)
        call(fn)
    times: dict[str, list[float]] = {name: [] for name in fns}
    order, shuffle = list(fns), random.Random(seed)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            times[name].append(call(fns[name]))
    ms = {name: round(1e3 * statistics.median(t), 4) for name, t in times.items()}
    above = {name: round(ms[name] - ms["leaf"], 4) for name in builders if name != "leaf"}
    if embedding is not None:
        for name in ("embedding", *(extra_embedding or {})):
            above[name] = round(ms[name] - ms["embedding_leaf"], 4)
    return {"median_ms": ms, "ms_above_leaf": above, "rounds": rounds, "evict_mb": evict_mb,
            "matrices": len(matrices), "weight_elements": sum(v.numel() for v, _ in matrices),
            "embedding_lookups": ids.numel() if embedding is not None else 0}

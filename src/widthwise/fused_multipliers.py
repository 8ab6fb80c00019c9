"""Learnable multipliers at the cost of one pass: the effective weight and its gradients, written by hand.

The multipliers of arXiv 2601.04890 (BRIEF section 2) make a layer apply ``W = s V`` or
``W = diag(r) V diag(c)`` (``W_ij = r_i V_ij c_j``). Built as separate element-wise products, autograd
walks each product twice backwards (one pass for the gradient of each factor, one to reduce it) and the
effective weight is written twice forwards. The fused path (weights of at least :data:`FUSED_MIN_NUMEL`
elements in eager mode) writes ``W = V * (r c^T)`` once and its backward uses the closed forms of BRIEF
section 2, with ``G = dL/dW``:

- ``dL/dV_ij = r_i c_j G_ij`` (one product with the outer product saved from the forward);
- ``dL/dr_i = sum_j V_ij c_j G_ij`` and ``dL/dc_j = sum_i r_i V_ij G_ij``: one product ``G * V`` and two
  matrix-vector products (BLAS ``gemv``) instead of two products and two reductions per factor;
- ``dL/ds = sum_ij V_ij G_ij``: one dot product (BLAS ``dot``), no temporary.

The input embedding is a lookup, not a matrix product: building its whole ``vocab x width`` table each step
costs O(vocab x width) while the lookup itself is O(tokens x width). :func:`scaled_embedding` applies the
multipliers to the looked-up rows only, ``h_n = V[t_n] * (r * c[t_n])`` (same products in the same order
as the table, so the folded table gives bit-identical outputs), and is chosen where it touches fewer
elements (``tokens < vocab``; otherwise the table, built once, is cheaper).

Which path runs where was chosen by measurement (our benchmark: eager fp32, one thread, 2-core AMD EPYC
with other jobs running, load average 5-6; forward + backward, medians of alternating repetitions). Weights:
:data:`FUSED_MIN_NUMEL`. The embedding (microseconds: old table / fused table / rows / no multipliers):

- 4096 x 128, 1,024 tokens: 3474 / 3368 / 1671 / 770; 4,096 tokens: 2511 / 2601 / 2676 / 1208;
  8,192 tokens: 3211 / 3252 / 5292 / 2178;
- 4096 x 256, 1,024 tokens: 7240 / 6198 / 2181 / 910; 4,096 tokens: 8251 / 4859 / 5526 / 1850;
  8,192 tokens: 5188 / 4795 / 8178 / 2383.

The rows win below ``tokens = vocab`` and lose above it, hence the switch there.

Under ``torch.compile`` the plain element-wise expressions are traced and inductor fuses them (forward and
backward) into loops of its own. Against the hand-written backward traced instead (``fused=True``; our
benchmarks ``multiplier_floor.py`` and ``compiled_dispatch.py``, demo model, 1,024 tokens a step, 2 threads, 2-core
AMD EPYC with AVX512-BF16): on the effective weights alone, caches cold, the compiled hand-written backward took
1.34-1.46 ms against 1.40-1.54 ms at width 128, 2.18-2.67 against 2.21-2.73 at 256 and 6.98 against 7.09 at 512
(seven runs, 100 rounds each); in whole compiled bf16 training steps, paired over 30-40 interleaved rounds, the
two tied (fused / products 1.000, 1.001, 1.003 at width 128; 0.999, 1.002 at 256). The simpler traced expression
is kept. For the embedding's rows the two compiled paths also tied (0.12-0.22 ms above a compiled plain lookup).

In eager mode on a CPU these passes remain memory-bound work of O(in x out) per weight per step; against the
O(tokens x in x out) matrix products they cost a few percent at 1,024 tokens per step and well under 1% from
8,192 (see the report of issue 19 for the step-time figures).

A Linear layer could also apply the multipliers to its activations, ``y = r * (V (c * x))``, never building
``W``: that costs O(tokens x (in + out)) element-wise passes against O(in x out) here, a loss at training
batch sizes (tokens > in*out/(in+out), i.e. beyond ~width/2 tokens); ``widthwise bench`` reports the
comparison (``multiplier_paths``). It is not used.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

#: Smallest weight (elements) that takes the fused path in eager mode. Below it, the per-call Python cost of a
#: ``torch.autograd.Function`` (~10 us forward and backward) outweighs the passes it saves, and autograd's own
#: C++ products, ``V * (r c^T)`` (:func:`unfused_weight`), are faster. Measured (our benchmarks, ``row_col``, 1
#: thread, 2-core AMD EPYC with AVX512-BF16, interleaved in shuffled order, medians):
#:
#: - forward + backward of the whole demo model (width 128, 1,024 tokens; weights of 8K-45K elements), the same
#:   model object on each path, 40-50 rounds, four runs (the last on a loaded machine): ``V * addr(r, c)`` (the
#:   previous small path, whose backward is two ``gemv``) 142.6 / 145.8 / 147.3 / 158.8 ms, the products 141.2 /
#:   143.0 / 144.6 / 157.4 ms; in another run ``addr`` 142.3, the Function 145.3 ms. ``addr`` alone runs 5x
#:   slower than the outer product (34 against 6 us at 352 x 128), more than its ``gemv`` backward saves;
#: - at width 256 (up to 704 x 256 = 180K elements) the paths were within the run-to-run noise (+-2%);
#: - one 1024 x 1024 layer at 2,048 tokens, forward + backward over the plain layer: the Function +3.9 ms, the
#:   products +10.0 ms (the fused path's fewer weight-sized passes win once a weight outgrows the caches).
FUSED_MIN_NUMEL = 1 << 17


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _no_autocast(grad: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for a backward run inside an autocast region (entering a context costs ~10 us: only then)."""
    if _autocasting(grad):
        return torch.autocast(grad.device.type, enabled=False)
    return contextlib.nullcontext()


def _view(vector: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[axis] = -1
    return vector.view(shape)


def unfused_weight(
    weight: torch.Tensor,
    scalar: torch.Tensor | None = None,
    row: torch.Tensor | None = None,
    col: torch.Tensor | None = None,
    out_axis: int = 0,
    in_axis: int = 1,
) -> torch.Tensor:
    """``s * V`` or ``V * (r c^T)`` as plain element-wise products, differentiated by autograd.

    The reference the fused paths are tested against, and the expression ``torch.compile`` traces. Every
    path multiplies in the same order, ``V_ij * (r_i * c_j)``, so a folded weight and the rows
    :func:`scaled_embedding` looks up agree to the bit.
    """
    if scalar is not None:
        return weight * scalar
    return weight * _outer(row, col, weight.ndim, out_axis, in_axis)


def _outer(row: torch.Tensor | None, col: torch.Tensor | None, ndim: int, out_axis: int, in_axis: int) -> torch.Tensor:
    """``r_i c_j`` broadcast to the weight (or just the row or column factor, as a view)."""
    if row is None:
        return _view(col, ndim, in_axis)
    if col is None:
        return _view(row, ndim, out_axis)
    return _view(row, ndim, out_axis) * _view(col, ndim, in_axis)


def _reduce(gv: torch.Tensor, weight_vector: torch.Tensor | None, axis: int, other: int) -> torch.Tensor:
    """``sum over every axis but `axis` of gv * w`` where ``w`` (along ``other``, or 1) weights the sum.

    For a matrix, one ``gemv`` (``gv @ w`` or ``gv^T @ w``) or one row/column sum; our derivation of the
    closed forms' reductions (BRIEF section 2) as BLAS calls.
    """
    if gv.ndim == 2:
        matrix = gv if axis == 0 else gv.t()
        if weight_vector is None:
            return matrix.sum(1)
        return torch.mv(matrix, weight_vector)
    if weight_vector is not None:
        gv = gv * _view(weight_vector, gv.ndim, other)
    dims = [d for d in range(gv.ndim) if d != axis]
    return gv.sum(dims)


class _ScaledWeight(torch.autograd.Function):
    """``W = s V`` or ``W = V * (r c^T)`` with the closed-form gradients of BRIEF section 2 (arXiv 2601.04890)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, scalar: torch.Tensor | None, row: torch.Tensor | None,
                col: torch.Tensor | None, out_axis: int, in_axis: int) -> torch.Tensor:
        ctx.axes = (out_axis, in_axis)
        if scalar is not None:
            ctx.save_for_backward(weight, scalar)
            return weight * scalar
        factor = _outer(row, col, weight.ndim, out_axis, in_axis)
        ctx.save_for_backward(weight, factor, row, col)
        return weight * factor

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        need_v, need_s, need_r, need_c = ctx.needs_input_grad[:4]
        out_axis, in_axis = ctx.axes
        with _no_autocast(grad):  # reductions in the gradient's own dtype
            if len(ctx.saved_tensors) == 2:
                weight, scalar = ctx.saved_tensors
                grad_v = grad * scalar if need_v else None
                # dL/ds = sum_ij V_ij G_ij
                grad_s = torch.dot(grad.reshape(-1), weight.reshape(-1).to(grad.dtype)) if need_s else None
                return grad_v, grad_s, None, None, None, None
            weight, factor, row, col = ctx.saved_tensors
            if torch.is_grad_enabled():  # create_graph: the factor again, from the inputs, so it is differentiated
                factor = _outer(row, col, weight.ndim, out_axis, in_axis)
            grad_v = grad * factor if need_v else None  # dL/dV_ij = r_i c_j G_ij
            grad_r = grad_c = None
            if need_r or need_c:
                gv = grad * weight
                # dL/dr_i = sum_j V_ij c_j G_ij ; dL/dc_j = sum_i r_i V_ij G_ij
                grad_r = _reduce(gv, col, out_axis, in_axis).to(row.dtype) if need_r else None
                grad_c = _reduce(gv, row, in_axis, out_axis).to(col.dtype) if need_c else None
        return grad_v, None, grad_r, grad_c, None, None


def scaled_weight(
    weight: torch.Tensor,
    scalar: torch.Tensor | None = None,
    row: torch.Tensor | None = None,
    col: torch.Tensor | None = None,
    out_axis: int = 0,
    in_axis: int = 1,
    *,
    fused: bool | None = None,
) -> torch.Tensor:
    """The effective weight ``s V`` or ``diag(r) V diag(c)`` (``W_ij = r_i V_ij c_j``), by the faster path.

    Give ``scalar`` alone, or ``row`` and/or ``col`` (vectors along ``out_axis`` / ``in_axis``).
    ``fused=True``: a :class:`torch.autograd.Function` whose backward is the closed form of BRIEF section 2
    (arXiv 2601.04890), see the module docstring; ``False``: :func:`unfused_weight`; ``None`` (default): fused
    in eager mode for weights of at least :data:`FUSED_MIN_NUMEL` elements, autograd's own products for smaller
    ones, and under ``torch.compile`` the plain expression (inductor fuses it itself).
    """
    if scalar is None and row is None and col is None:
        return weight
    if fused is None:
        fused = weight.numel() >= FUSED_MIN_NUMEL and not _compiling()
    if fused:
        return _ScaledWeight.apply(weight, scalar, row, col, out_axis, in_axis)
    return unfused_weight(weight, scalar, row, col, out_axis, in_axis)


def _autocasting(tensor: torch.Tensor) -> bool:
    device = tensor.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


class _ScaledEmbedding(torch.autograd.Function):
    """``h_n = V[t_n] * (r * c[t_n])``: the rows a batch looks up, with hand-written gradients (our derivation).

    With ``g_n = dL/dh_n`` and ``e_n = V[t_n]``: ``dL/dV[t] = sum_{n: t_n = t} r c_t g_n`` (the embedding's
    own scatter-add of ``g_n * r * c[t_n]``), ``dL/dr = sum_n c[t_n] (g_n * e_n)`` and
    ``dL/dc_t = sum_{n: t_n = t} <g_n * e_n, r>``: the closed forms of BRIEF section 2 restricted to the
    rows that were looked up (``G`` is zero on the others).
    """

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, row: torch.Tensor | None,
                col: torch.Tensor | None, padding_idx: int | None) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = F.embedding(flat, weight)  # (N, width)
        col_t = col[flat] if col is not None else None
        factor = _outer(col_t, row, 2, 0, 1)  # (N, width), (1, width) or (N, 1)
        out = rows * factor
        ctx.save_for_backward(flat, rows, factor, row, col_t, weight, col)
        ctx.vocab, ctx.padding_idx, ctx.has = weight.shape[0], padding_idx, (row is not None, col is not None)
        return out.view(*ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        flat, rows, factor, row, col_t, weight, col = ctx.saved_tensors
        has_row, has_col = ctx.has
        if torch.is_grad_enabled():  # create_graph: the forward's intermediates again, differentiably
            rows = F.embedding(flat, weight)
            col_t = col[flat] if col is not None else None
            factor = _outer(col_t, row, 2, 0, 1)
        _, need_v, need_r, need_c, _ = ctx.needs_input_grad
        g = grad.reshape(-1, rows.shape[1])
        if ctx.padding_idx is not None:  # the padding token's lookups give no gradient, as in F.embedding
            g = g.masked_fill((flat == ctx.padding_idx)[:, None], 0)
        grad_v = grad_r = grad_c = None
        with _no_autocast(grad):
            if need_v:
                grad_v = torch.ops.aten.embedding_dense_backward(g * factor, flat, ctx.vocab, -1, False)
                grad_v = grad_v.to(rows.dtype)
            if need_r or need_c:
                ge = g * rows
                if need_r:  # dL/dr = sum_n c[t_n] (g_n * e_n)
                    grad_r = (torch.mv(ge.t(), col_t) if col_t is not None else ge.sum(0)).to(row.dtype)
                if need_c:  # dL/dc_t = sum_{n: t_n = t} <g_n * e_n, r>
                    per_token = torch.mv(ge, row) if row is not None else ge.sum(1)
                    grad_c = per_token.new_zeros(ctx.vocab).index_add_(0, flat, per_token).to(col_t.dtype)
        return None, grad_v, grad_r if has_row else None, grad_c if has_col else None, None


def scaled_embedding(
    ids: torch.Tensor,
    weight: torch.Tensor,
    row: torch.Tensor | None = None,
    col: torch.Tensor | None = None,
    padding_idx: int | None = None,
    *,
    fused: bool | None = None,
) -> torch.Tensor:
    """``F.embedding(ids, diag(c) V diag(r))`` for a ``vocab x width`` table, touching only the looked-up rows.

    ``row`` has one entry per embedding dimension (the layer's outputs), ``col`` one per vocabulary entry
    (its inputs), as :class:`widthwise.parametrizations.Multipliers` lays them out for ``nn.Embedding``.
    ``fused=None`` (default): with ``ids.numel() >= vocab`` the whole table is built once
    (:func:`scaled_weight`) and looked up, which is then the smaller job; otherwise the looked-up rows, by the
    hand-written backward in eager mode and as plain row-wise products under ``torch.compile``. ``True``: the
    rows by the hand-written backward, ``False``: the rows as plain products, whatever the size and mode.
    """
    if fused is None:
        if ids.numel() >= weight.shape[0]:
            table = scaled_weight(weight, None, row, col, 1, 0)
            return F.embedding(ids, table, padding_idx)
        fused = not _compiling()
    if not fused:
        factor = row if col is None else col[ids].unsqueeze(-1) * (row if row is not None else 1)
        if padding_idx is not None:  # the padding token's lookups give the multipliers no gradient either
            factor = torch.where((ids == padding_idx).unsqueeze(-1), factor.detach(), factor)
        return F.embedding(ids, weight, padding_idx) * factor
    return _ScaledEmbedding.apply(ids, weight, row, col, padding_idx)

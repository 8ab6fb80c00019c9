"""The fused multiplier paths against autograd through the plain products (closed forms of BRIEF section 2)."""

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import widthwise as ww
from widthwise import fused_multipliers as fm
from widthwise.models import Llama, LlamaConfig
from widthwise.parametrizations import Multipliers

KINDS = {"row_col": ("row", "col"), "row": ("row",), "col": ("col",), "scalar": ("scalar",)}
F64 = torch.float64


def _factors(kind, shape, out_axis, in_axis, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    parts = KINDS[kind]

    def leaf(size):
        return (torch.rand(size, generator=g, dtype=dtype) + 0.5).requires_grad_(True)

    scalar = leaf(()) if "scalar" in parts else None
    row = leaf(shape[out_axis]) if "row" in parts else None
    col = leaf(shape[in_axis]) if "col" in parts else None
    weight = torch.randn(shape, generator=g, dtype=dtype).requires_grad_(True)
    return weight, scalar, row, col


def _inputs(weight, scalar, row, col):
    return [t for t in (weight, scalar, row, col) if t is not None]


def _grads(tensors, out, upstream):
    return torch.autograd.grad(out, tensors, upstream)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("shape,axes", [((5, 7), (0, 1)), ((7, 5), (1, 0)), ((4, 4), (0, 1)), ((3, 9), (1, 0))])
def test_fused_weight_passes_gradcheck(kind, shape, axes):
    weight, scalar, row, col = _factors(kind, shape, *axes)

    def fn(*args):
        it = iter(args)
        w = next(it)
        s, r, c = (next(it) if t is not None else None for t in (scalar, row, col))
        return fm.scaled_weight(w, s, r, c, *axes, fused=True)

    inputs = tuple(_inputs(weight, scalar, row, col))
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("shape,axes", [
    ((128, 128), (0, 1)),  # attention q/o
    ((64, 128), (0, 1)),  # GQA k/v: kv_heads * head_dim outputs, width inputs
    ((352, 128), (0, 1)),  # SwiGLU gate/up
    ((128, 352), (0, 1)),  # SwiGLU down
    ((512, 96), (1, 0)),  # an embedding table seen as a linear map (vocab x width)
])
def test_fused_weight_equals_autograd_through_the_products(kind, shape, axes):
    weight, scalar, row, col = _factors(kind, shape, *axes)
    upstream = torch.randn(shape, dtype=F64)
    tensors = _inputs(weight, scalar, row, col)
    fused = fm.scaled_weight(weight, scalar, row, col, *axes, fused=True)
    plain = fm.unfused_weight(weight, scalar, row, col, *axes)
    assert fused.grad_fn is not None and "ScaledWeight" in type(fused.grad_fn).__name__
    torch.testing.assert_close(fused, plain, rtol=0, atol=0)
    for a, b in zip(_grads(tensors, fused, upstream), _grads(tensors, plain, upstream), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_closed_forms_of_brief_section_2():
    weight, _, row, col = _factors("row_col", (6, 9), 0, 1)
    G = torch.randn(6, 9, dtype=F64)
    gv, gr, gc = _grads([weight, row, col], fm.scaled_weight(weight, None, row, col, fused=True), G)
    V, r, c = weight.detach(), row.detach(), col.detach()
    torch.testing.assert_close(gv, r[:, None] * c[None, :] * G)  # dL/dV_ij = r_i c_j G_ij
    torch.testing.assert_close(gr, (V * c[None, :] * G).sum(1))  # dL/dr_i = sum_j V_ij c_j G_ij
    torch.testing.assert_close(gc, (r[:, None] * V * G).sum(0))  # dL/dc_j = sum_i r_i V_ij G_ij
    weight, scalar, _, _ = _factors("scalar", (6, 9), 0, 1)
    (gs,) = _grads([scalar], fm.scaled_weight(weight, scalar, fused=True), G)
    torch.testing.assert_close(gs, (weight.detach() * G).sum())  # dL/ds = sum_ij V_ij G_ij


def test_only_the_gradients_asked_for():
    weight, _, row, col = _factors("row_col", (4, 6), 0, 1)
    weight.requires_grad_(False)
    out = fm.scaled_weight(weight, None, row, col, fused=True)
    gr, gc = torch.autograd.grad(out.sum(), [row, col])
    assert gr.shape == (4,) and gc.shape == (6,)


def test_default_path_by_size():
    small = _factors("row_col", (8, 8), 0, 1, dtype=torch.float32)
    large = _factors("row_col", (fm.FUSED_MIN_NUMEL // 64, 64), 0, 1, dtype=torch.float32)
    assert "ScaledWeight" not in type(fm.scaled_weight(*small).grad_fn).__name__
    assert "ScaledWeight" in type(fm.scaled_weight(*large).grad_fn).__name__
    assert fm.scaled_weight(large[0]) is large[0]  # no multipliers: the weight itself


@pytest.mark.parametrize("shape,axes", [((6, 9), (0, 1)), ((9, 6), (1, 0))])
def test_small_row_col_is_autograd_products_equal_to_the_fused_path(shape, axes):
    weight, _, row, col = _factors("row_col", shape, *axes)
    upstream = torch.randn(shape, dtype=F64)
    small = fm.scaled_weight(weight, None, row, col, *axes)
    fused = fm.scaled_weight(weight, None, row, col, *axes, fused=True)
    assert type(small.grad_fn).__name__ == "MulBackward0"  # V * (r c^T): no Python Function, no addr
    assert {type(f).__name__ for f, _ in small.grad_fn.next_functions if f is not None} >= {"MulBackward0"}
    torch.testing.assert_close(small, fused, rtol=0, atol=0)  # the same products in the same order
    for a, b in zip(_grads([weight, row, col], small, upstream), _grads([weight, row, col], fused, upstream),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _embedding_reference(ids, weight, row, col, padding_idx):
    return F.embedding(ids, fm.unfused_weight(weight, None, row, col, 1, 0), padding_idx)


@pytest.mark.parametrize("kind", ["row_col", "row", "col"])
@pytest.mark.parametrize("padding_idx", [None, 3])
def test_embedding_rows_equal_the_whole_table(kind, padding_idx):
    weight, _, row, col = _factors(kind, (50, 12), 1, 0)
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
    ids[0, :3] = 3  # repeated ids, the padding id among them
    tensors = _inputs(weight, None, row, col)
    fast = fm.scaled_embedding(ids, weight, row, col, padding_idx)
    ref = _embedding_reference(ids, weight, row, col, padding_idx)
    assert "ScaledEmbedding" in type(fast.grad_fn).__name__
    torch.testing.assert_close(fast, ref, rtol=0, atol=0)  # same products in the same order
    upstream = torch.randn(fast.shape, dtype=F64)
    for a, b in zip(_grads(tensors, fast, upstream), _grads(tensors, ref, upstream), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["row_col", "row", "col"])
def test_embedding_rows_pass_gradcheck(kind):
    weight, _, row, col = _factors(kind, (9, 4), 1, 0)
    ids = torch.tensor([[1, 4, 4], [8, 0, 1]])
    present = [t is not None for t in (row, col)]

    def fn(w, *vectors):
        it = iter(vectors)
        r, c = (next(it) if p else None for p in present)
        return fm.scaled_embedding(ids, w, r, c)

    inputs = tuple(_inputs(weight, None, row, col))
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


def test_embedding_with_many_tokens_builds_the_table_once():
    weight, _, row, col = _factors("row_col", (10, 4), 1, 0)
    ids = torch.randint(0, 10, (4, 5))  # 20 lookups >= 10 rows
    out = fm.scaled_embedding(ids, weight, row, col)
    assert "Embedding" in type(out.grad_fn).__name__ and "Scaled" not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, _embedding_reference(ids, weight, row, col, None), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["row_col", "row", "col"])
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_traced_expressions_match_in_eager(monkeypatch, kind, padding_idx):
    """The plain expressions ``torch.compile`` traces give the fused paths' values and gradients."""
    weight, _, row, col = _factors(kind, (40, 6), 1, 0)
    ids = torch.randint(0, 40, (2, 5), generator=torch.Generator().manual_seed(3))
    ids[0, 0] = ids[1, 1] = 2
    tensors = _inputs(weight, None, row, col)
    fused = fm.scaled_embedding(ids, weight, row, col, padding_idx)
    assert "ScaledEmbedding" in type(fused.grad_fn).__name__
    plain = fm.scaled_embedding(ids, weight, row, col, padding_idx, fused=False)
    assert "ScaledEmbedding" not in type(plain.grad_fn).__name__
    monkeypatch.setattr(fm, "_compiling", lambda: True)
    traced = fm.scaled_embedding(ids, weight, row, col, padding_idx)
    assert type(traced.grad_fn) is type(plain.grad_fn)  # under compile the default is the plain expression
    torch.testing.assert_close(plain, traced, rtol=0, atol=0)
    forced = fm.scaled_embedding(ids, weight, row, col, padding_idx, fused=True)
    assert "ScaledEmbedding" in type(forced.grad_fn).__name__  # fused=True holds whatever the mode
    torch.testing.assert_close(traced, fused, rtol=0, atol=0)
    upstream = torch.randn(fused.shape, dtype=F64)
    for a, b in zip(_grads(tensors, traced, upstream), _grads(tensors, fused, upstream), strict=True):
        torch.testing.assert_close(a, b)


def test_bf16_forward_and_autocast():
    weight, _, row, col = _factors("row_col", (96, 64), 0, 1, dtype=torch.float32)
    ref = fm.unfused_weight(weight, None, row, col).detach()
    low = fm.scaled_weight(*(t.detach().bfloat16() for t in (weight,)), None, row.detach().bfloat16(),
                           col.detach().bfloat16(), fused=True)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=2e-2, atol=2e-2)
    x = torch.randn(5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = F.linear(x, fm.scaled_weight(weight, None, row, col, fused=True))
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert weight.grad.dtype == row.grad.dtype == col.grad.dtype == torch.float32
    assert all(torch.isfinite(t.grad).all() for t in (weight, row, col))


# ---- the model: the new path against the old one -------------------------------------------------------------


def _old_forward(self, weight):
    """The multipliers' forward before fusion, verbatim: two products differentiated by autograd."""
    if self.scalar is not None:
        weight = weight * self.scalar
    if self.row is not None:
        weight = weight * self.row.view(self.row_view)
    if self.col is not None:
        weight = weight * self.col.view(self.col_view)
    return weight


def _legacy(model):
    """Put ``model`` back on the old path: the old forward, the whole embedding table per lookup."""
    for m in model.modules():
        if isinstance(m, Multipliers):
            m.forward = types.MethodType(_old_forward, m)
        if "forward" in type(m).__dict__ and type(m).__name__.startswith("Parametrized"):
            delattr(type(m), "forward")
    return model


def _model(seed=0, kind="row_col"):
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(width=32, depth=2, heads=4, kv_heads=2, vocab_size=256, max_seq_len=16))
    ww.add_multipliers(model, kind=kind)
    with torch.no_grad():
        for p in ww.multiplier_parameters(model):
            p.uniform_(0.7, 1.3)
    return model


def _train(model, steps=4):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(5)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 256, (2, 16), generator=g)
        loss = model(x, torch.roll(x, -1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["row_col", "row", "col"])
def test_training_losses_equal_the_old_path(monkeypatch, kind):
    monkeypatch.setattr(fm, "FUSED_MIN_NUMEL", 0)  # every matrix on the fused path, the embedding on its rows
    new, old = _model(kind=kind), _legacy(_model(kind=kind))
    assert "forward" in type(new.embed).__dict__ and "forward" not in type(old.embed).__dict__
    new_losses, old_losses = _train(new), _train(old)
    assert new_losses == pytest.approx(old_losses, rel=1e-5)
    for (name, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    folded_new, folded_old = ww.fold_multipliers(new).state_dict(), ww.fold_multipliers(old).state_dict()
    assert list(folded_new) == list(folded_old)
    for name in folded_new:
        torch.testing.assert_close(folded_new[name], folded_old[name], rtol=1e-4, atol=1e-5, msg=name)


def test_fold_is_exact_and_removes_the_row_lookup(monkeypatch):
    monkeypatch.setattr(fm, "FUSED_MIN_NUMEL", 0)
    model = _model()
    _train(model, steps=2)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        before = model(x)
    ww.fold_multipliers(model)
    assert type(model.embed) is nn.Embedding
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_state_dict_names_unchanged_and_old_checkpoints_load(monkeypatch):
    monkeypatch.setattr(fm, "FUSED_MIN_NUMEL", 0)
    old = _legacy(_model(seed=1))
    _train(old, steps=2)
    state = old.state_dict()
    assert "embed.parametrizations.weight.original" in state and "embed.parametrizations.weight.0.row" in state
    assert "blocks.0.attn.k_proj.parametrizations.weight.0.col" in state
    new = _model(seed=2)
    assert list(new.state_dict()) == list(state)
    new.load_state_dict(state)
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x), rtol=1e-5, atol=1e-6)


def test_deepcopy_keeps_the_row_lookup():
    model = _model()
    twin = copy.deepcopy(model)
    x = torch.randint(0, 256, (1, 8))
    assert "forward" in type(twin.embed).__dict__
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=0, atol=0)
    ww.fold_multipliers(twin)
    assert type(twin.embed) is nn.Embedding and "forward" in type(model.embed).__dict__

"""Multiplier gradients against the closed forms of arXiv 2601.04890 (BRIEF section 2)."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

from widthwise.parametrizations import FixedScale, Multipliers


def _linear_with(kind, out_f=5, in_f=7, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(in_f, out_f, bias=False).double()
    parametrize.register_parametrization(layer, "weight", Multipliers(kind, layer.weight, 0, 1))
    mult = layer.parametrizations.weight[0]
    with torch.no_grad():
        for p in mult.parameters():
            p.uniform_(0.5, 1.5)
    return layer, mult


def _upstream_grad(layer, x, target):
    """G = dL/dW for the effective weight W, computed without any multiplier machinery."""
    w = layer.weight.detach().clone().requires_grad_(True)
    F.mse_loss(x @ w.T, target).backward()
    return w.grad


def test_row_col_gradients_match_closed_form():
    layer, mult = _linear_with("row_col")
    x, target = torch.randn(11, 7, dtype=torch.float64), torch.randn(11, 5, dtype=torch.float64)
    G = _upstream_grad(layer, x, target)
    F.mse_loss(layer(x), target).backward()
    V, r, c = layer.parametrizations.weight.original, mult.row.detach(), mult.col.detach()
    Vd = V.detach()
    # dL/dr_i = sum_j V_ij c_j G_ij ; dL/dc_j = sum_i r_i V_ij G_ij ; dL/dV_ij = r_i c_j G_ij
    torch.testing.assert_close(mult.row.grad, (Vd * c[None, :] * G).sum(1))
    torch.testing.assert_close(mult.col.grad, (r[:, None] * Vd * G).sum(0))
    torch.testing.assert_close(V.grad, r[:, None] * c[None, :] * G)


def test_scalar_gradient_matches_closed_form():
    layer, mult = _linear_with("scalar")
    x, target = torch.randn(9, 7, dtype=torch.float64), torch.randn(9, 5, dtype=torch.float64)
    G = _upstream_grad(layer, x, target)
    F.mse_loss(layer(x), target).backward()
    V = layer.parametrizations.weight.original
    torch.testing.assert_close(mult.scalar.grad, (V.detach() * G).sum())  # dL/ds = sum_ij V_ij G_ij
    torch.testing.assert_close(V.grad, mult.scalar.detach() * G)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["row", "col", "row_col", "scalar"]), out_f=st.integers(1, 9), in_f=st.integers(1, 9))
def test_effective_weight_is_diag_r_V_diag_c(kind, out_f, in_f):
    layer, mult = _linear_with(kind, out_f, in_f)
    V = layer.parametrizations.weight.original.detach()
    r = mult.row.detach() if mult.row is not None else torch.ones(out_f, dtype=V.dtype)
    c = mult.col.detach() if mult.col is not None else torch.ones(in_f, dtype=V.dtype)
    s = mult.scalar.detach() if mult.scalar is not None else 1.0
    torch.testing.assert_close(layer.weight.detach(), s * torch.diag(r) @ V @ torch.diag(c))


def test_embedding_rows_are_features_and_columns_are_tokens():
    emb = nn.Embedding(10, 4).double()
    parametrize.register_parametrization(emb, "weight", Multipliers("row_col", emb.weight, 1, 0))
    mult = emb.parametrizations.weight[0]
    assert mult.row.shape == (4,) and mult.col.shape == (10,)
    with torch.no_grad():
        mult.row.copy_(torch.arange(1.0, 5.0))
        mult.col.copy_(torch.arange(1.0, 11.0))
    ids = torch.tensor([3])
    expected = emb.parametrizations.weight.original[3] * torch.arange(1.0, 5.0) * 4.0  # token 3 -> col 4.0
    torch.testing.assert_close(emb(ids)[0], expected.to(torch.float64))


def test_init_sits_on_row_for_row_col():
    m = Multipliers("row_col", torch.zeros(3, 2), 0, 1, init=0.25)
    assert torch.equal(m.row, torch.full((3,), 0.25)) and torch.equal(m.col, torch.ones(2))
    assert Multipliers("scalar", torch.zeros(3, 2), 0, 1, init=0.5).scalar.item() == 0.5


def test_fixed_scale():
    f = FixedScale(0.125, "output")
    assert torch.equal(f(torch.ones(2)), torch.full((2,), 0.125))
    assert list(f.parameters()) == [] and list(f.buffers()) == []

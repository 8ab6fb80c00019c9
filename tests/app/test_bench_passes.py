"""The multipliers' isolated passes: what is timed is the parametrization's own work, and the figures add up."""

from __future__ import annotations

import time

import pytest
import torch
from tests.helpers import llama, tokens

import widthwise as ww
from widthwise.app.bench.passes import bypassed, isolated_passes, matrix_paths, multiplied_weights
from widthwise.fused_multipliers import scaled_embedding


def _model(dtype: torch.dtype = torch.float32):
    model = llama(64, layers=2).to(dtype)
    ww.add_multipliers(model, kind="row_col", placement="all")
    with torch.no_grad():  # multipliers away from 1, so a path that dropped one would show
        for p in ww.multiplier_parameters(model):
            p.uniform_(0.5, 1.5)
    return model


def test_multiplied_weights_are_every_matrix_with_multipliers_and_the_embedding_apart():
    model = _model()
    matrices, embedding = multiplied_weights(model)
    assert len(matrices) == 2 * 7  # 2 blocks x q, k, v, o, gate, up, down; the head gets none
    layers = model.model.layers
    assert matrices[0][0] is layers[0].self_attn.q_proj.parametrizations.weight.original
    assert embedding[0] is model.model.embed_tokens.parametrizations.weight.original
    assert embedding[1] is model.model.embed_tokens.parametrizations.weight[0]


def test_every_path_builds_the_layers_weights_with_the_same_gradients():
    model = _model(torch.float64)
    matrices, _ = multiplied_weights(model)
    modules = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and hasattr(m, "parametrizations")]
    grads = [torch.randn(v.shape, dtype=torch.float64) for v, _ in matrices]
    inputs = [t for v, m in matrices for t in (v, m.row, m.col)]
    expected = [m.weight for m in modules]
    reference = torch.autograd.grad(sum((w * g).sum() for w, g in zip(expected, grads, strict=True)), inputs)
    paths = matrix_paths(matrices)
    assert set(paths) == {"widthwise", "products", "fused", "leaf"}
    assert all(w is v for w, (v, _) in zip(paths["leaf"](), matrices, strict=True))
    for name in ("widthwise", "products", "fused"):
        built = paths[name]()
        for w, e in zip(built, expected, strict=True):
            torch.testing.assert_close(w, e, rtol=0, atol=1e-14)
        got = torch.autograd.grad(sum((w * g).sum() for w, g in zip(built, grads, strict=True)), inputs)
        for a, b in zip(got, reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_isolated_passes_time_each_path_and_the_embedding_against_plain_use():
    model = _model()

    def busy() -> list[torch.Tensor]:  # 20 ms of this thread's CPU time: at least 20 ms by either clock of `timed`
        start = time.thread_time()
        while time.thread_time() - start < 0.02:
            pass
        return [v for v, _ in multiplied_weights(model)[0]]

    looked_up = []

    def plain_rows(ids, table, mult):  # an extra embedding path: the plain products on the looked-up rows
        looked_up.append(ids.shape)
        return scaled_embedding(ids, table, mult.row, mult.col, fused=False)

    r = isolated_passes(model, tokens(2, 8, 128), rounds=3, paths=("widthwise", "fused"), extra={"busy": busy},
                        evict_mb=1, extra_embedding={"plain_rows": plain_rows})
    assert set(r["median_ms"]) == {"widthwise", "fused", "leaf", "busy", "embedding", "embedding_leaf", "plain_rows"}
    assert set(r["ms_above_leaf"]) == {"widthwise", "fused", "busy", "embedding", "plain_rows"}
    assert looked_up == [(2, 8)] * 4  # one untimed call, then once a round, on the batch
    assert r["ms_above_leaf"]["plain_rows"] == pytest.approx(
        r["median_ms"]["plain_rows"] - r["median_ms"]["embedding_leaf"], abs=2e-4)
    assert r["median_ms"]["busy"] >= 20  # the busy loop is timed, whatever else the machine runs
    for name in ("widthwise", "fused", "busy"):  # what a path adds is its median less the plain weights' median
        assert r["ms_above_leaf"][name] == pytest.approx(r["median_ms"][name] - r["median_ms"]["leaf"], abs=2e-4)
    assert r["ms_above_leaf"]["embedding"] == pytest.approx(
        r["median_ms"]["embedding"] - r["median_ms"]["embedding_leaf"], abs=2e-4)
    assert all(v > 0 for v in r["median_ms"].values())
    assert r["matrices"] == 14 and r["embedding_lookups"] == 16 and r["rounds"] == 3 and r["evict_mb"] == 1
    assert r["weight_elements"] == sum(v.numel() for v, _ in multiplied_weights(model)[0])
    assert all(p.grad is None for p in model.parameters())  # nothing left behind


def test_isolated_passes_refuse_a_model_without_multipliers():
    with pytest.raises(ValueError, match="LlamaForCausalLM has no matrix layer with learnable multipliers"):
        isolated_passes(llama(64, layers=1), tokens(), rounds=1)


def test_bypassed_runs_the_model_on_its_stored_weights_then_restores_it():
    model = _model()
    x = tokens(2, 8, 128)
    before = model(x).logits
    plain = llama(64, layers=2)  # the same stored weights, no multipliers: what the bypassed forward must compute
    plain.load_state_dict({k.replace(".parametrizations.weight.original", ".weight"): v
                           for k, v in model.state_dict().items() if ".parametrizations.weight.0." not in k})
    with bypassed(model):
        bypassed_out = model(x, labels=x)
        bypassed_out.loss.backward()
    torch.testing.assert_close(bypassed_out.logits, plain(x).logits)
    assert all(p.grad is None for p in ww.multiplier_parameters(model))  # no multiplier pass ran
    torch.testing.assert_close(model(x).logits, before, rtol=0, atol=0)  # restored: the multipliers apply again
    assert not any("forward" in vars(m) for m in model.modules())

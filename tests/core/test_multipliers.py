"""add_multipliers placements, persistence, compile, and exact folding after real training."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import widthwise as ww
from widthwise.parametrizations import FixedScale, Multipliers

from helpers import gpt2, llama, mlp, tokens


def _perturb(model):
    """Move every multiplier away from 1, as training would."""
    with torch.no_grad():
        for p in ww.multiplier_parameters(model):
            p.uniform_(0.5, 2.0)
    return model


def _mult(model, module_name):
    return model.get_submodule(module_name).parametrizations.weight[-1]


def test_all_placement_covers_matrices_and_embedding_not_head():
    model = llama(64)
    added = ww.add_multipliers(model, kind="row_col", placement="all")
    assert "model.embed_tokens.weight" in added
    assert "lm_head.weight" not in added
    assert len(added) == 1 + 2 * 7  # embedding + 7 matrices per block
    q = _mult(model, "model.layers.0.self_attn.q_proj")
    assert q.row.shape == (64,) and q.col.shape == (64,)
    emb = _mult(model, "model.embed_tokens")
    assert emb.row.shape == (64,) and emb.col.shape == (128,)  # features x vocabulary


@pytest.mark.parametrize(("kind", "params"), [("scalar", {"scalar"}), ("row", {"row"}), ("col", {"col"}),
                                              ("row_col", {"row", "col"})])
def test_kinds(kind, params):
    model = llama(64)
    ww.add_multipliers(model, kind=kind)
    m = _mult(model, "model.layers.0.mlp.up_proj")
    assert {n for n, _ in m.named_parameters()} == params


def test_symmetry_free_follows_the_papers_table():
    model = llama(64)
    added = ww.add_multipliers(model, kind="row_col", placement="symmetry_free")
    layer = "model.layers.0"
    expected = {f"{layer}.self_attn.q_proj": "row", f"{layer}.self_attn.o_proj": "row_col",
                f"{layer}.mlp.gate_proj": "row", f"{layer}.mlp.down_proj": "row_col", "model.embed_tokens": "row_col"}
    for module_name, kind in expected.items():
        assert _mult(model, module_name).kind == kind
    for module_name in (f"{layer}.self_attn.k_proj", f"{layer}.self_attn.v_proj", f"{layer}.mlp.up_proj"):
        assert f"{module_name}.weight" not in added
    # kind restricts the table: columns only
    model = llama(64)
    added = ww.add_multipliers(model, kind="col", placement="symmetry_free")
    assert {a.split(".")[-2] for a in added} == {"embed_tokens", "o_proj", "down_proj"}


def test_symmetry_free_needs_a_name_map_for_unknown_layers():
    model = gpt2(64)
    with pytest.raises(ValueError, match="c_attn.weight' matches no slot"), pytest.warns(UserWarning, match="tied"):
        ww.add_multipliers(model, placement="symmetry_free")
    model = gpt2(64)
    with pytest.warns(UserWarning, match="'transformer.wte.weight' is shared with 'lm_head.weight'"):
        added = ww.add_multipliers(model, placement="symmetry_free",
                                   name_map={"q": r"^c_attn$", "up": r"^c_fc$", "down": r"^c_proj$"})
    assert "transformer.wpe.weight" in added and "transformer.h.0.attn.c_attn.weight" in added
    assert "transformer.h.0.mlp.c_fc.weight" not in added  # "up": no multipliers in the table
    with pytest.raises(ValueError, match="vector multipliers"):
        ww.add_multipliers(llama(64), kind="scalar", placement="symmetry_free")
    with pytest.raises(ValueError, match="unknown slot 'qkv'"):
        ww.add_multipliers(llama(64), placement="symmetry_free", name_map={"qkv": "c_attn"})


def test_regex_placement_and_errors():
    model = llama(64)
    added = ww.add_multipliers(model, kind="scalar", placement=[r"mlp\.down_proj"])
    assert added == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match="already has learnable multipliers"):
        ww.add_multipliers(model, placement="all")
    assert not ww.multiplier_parameters(model.model.layers[0].self_attn)  # refused call changed nothing
    with pytest.raises(ValueError, match=r"'nope' matches no 2-D weight of LlamaForCausalLM \(no parameter\)"):
        ww.add_multipliers(llama(64), placement=["nope"])
    with pytest.raises(ValueError, match=r"'norm' matches no 2-D weight .*only 'model.layers.0.input_layernorm"):
        ww.add_multipliers(llama(64), placement=[r"norm"])
    added = ww.add_multipliers(llama(64), placement=[r"layers\.0\."])  # matrices among what it matches
    assert len(added) == 7
    with pytest.raises(ValueError, match="unknown multiplier kind 'diag'"):
        ww.add_multipliers(llama(64), kind="diag")
    with pytest.raises(ValueError, match="unknown placement 'most'"):
        ww.add_multipliers(llama(64), placement="most")


def test_init_values_and_dict():
    model = llama(64)
    ww.add_multipliers(model, kind="scalar", init={r"q_proj": 0.5})
    assert _mult(model, "model.layers.0.self_attn.q_proj").scalar.item() == 0.5
    assert _mult(model, "model.layers.0.self_attn.k_proj").scalar.item() == 1.0
    with pytest.raises(ValueError, match="init regex 'lm_head'"):
        ww.add_multipliers(llama(64), init={"lm_head": 0.5})


def test_outputs_unchanged_at_init(x_tokens):
    plain = llama(64)
    model = copy.deepcopy(plain)
    ww.add_multipliers(model)
    torch.testing.assert_close(model(x_tokens).logits, plain(x_tokens).logits, rtol=0, atol=0)


def test_tied_weights_are_left_out_with_a_warning_or_refused():
    model = llama(64, tie_word_embeddings=True)
    with pytest.warns(UserWarning, match="tied weights"):
        added = ww.add_multipliers(model)
    assert "model.embed_tokens.weight" not in added
    with pytest.raises(ValueError, match="tied to 'lm_head.weight'"):
        ww.add_multipliers(llama(64, tie_word_embeddings=True), placement=["embed_tokens"])


def test_state_dict_roundtrip_and_deepcopy(x_tokens, tmp_path):
    from safetensors.torch import load_file, save_file

    model = llama(64)
    ww.add_multipliers(model)
    _perturb(model)
    clone = copy.deepcopy(model)
    torch.testing.assert_close(clone(x_tokens).logits, model(x_tokens).logits, rtol=0, atol=0)
    assert isinstance(clone.model.layers[0].mlp.up_proj.parametrizations.weight[0], Multipliers)

    save_file(model.state_dict(), tmp_path / "model.safetensors")
    fresh = llama(64, seed=5)
    ww.add_multipliers(fresh)
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))
    torch.testing.assert_close(fresh(x_tokens).logits, model(x_tokens).logits, rtol=0, atol=0)


@pytest.mark.slow
def test_torch_compile_matches_eager(x_tokens):
    model = llama(64)
    ww.add_multipliers(model)
    _perturb(model)
    eager_loss = model(x_tokens, labels=x_tokens).loss
    eager_loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model)
    loss = compiled(x_tokens, labels=x_tokens).loss
    loss.backward()
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[n], rtol=1e-4, atol=1e-5, msg=n)


def _train(model, plan, steps=8, lr=1e-2):
    opt = ww.build_optimizer(model, plan, lr=lr, weight_decay=0.1)
    model.train()
    for step in range(steps):
        x = tokens(seed=step)
        loss = model(x, labels=x).loss
        loss.backward()
        ww.clip_grad_norm_(model, 1.0)
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.mark.parametrize("optimizer", ["adamw", pytest.param("muon", marks=pytest.mark.slow)])
def test_fold_after_training_is_exact_and_plain(optimizer, x_tokens):
    model = llama(128)
    ww.add_multipliers(model, kind="row_col")
    plan = ww.plan(model, base=llama(64, meta=True), recipe="robust", optimizer=optimizer, attention_scale="mup_exact")
    ww.init_weights(model, plan)
    _train(model, plan)
    mults = ww.multiplier_parameters(model)
    assert any((p - 1).abs().max() > 1e-3 for p in mults), "multipliers did not move"
    with torch.no_grad():
        before = model(x_tokens).logits
    ww.fold_multipliers(model)
    with torch.no_grad():
        after = model(x_tokens).logits
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)  # fp32 precision
    never = llama(128)
    assert list(model.state_dict()) == list(never.state_dict())
    assert [type(m) for m in model.modules()] == [type(m) for m in never.modules()]
    assert not any(isinstance(m, (Multipliers, FixedScale)) for m in model.modules())
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert list(model.buffers()) and [n for n, _ in model.named_buffers()] == [n for n, _ in never.named_buffers()]


def test_fold_mlp_and_embedding():
    model = nn.Sequential(nn.Embedding(20, 16), nn.Linear(16, 16), nn.Linear(16, 5))
    ww.add_multipliers(model, roles={r"^2\.weight$": "head"})
    _perturb(model)
    ids = torch.randint(0, 20, (4, 3))
    before = model(ids)
    ww.fold_multipliers(model)
    torch.testing.assert_close(model(ids), before, rtol=0, atol=0)
    assert list(model.state_dict()) == ["0.weight", "1.weight", "1.bias", "2.weight", "2.bias"]


def test_fold_refuses_to_change_a_tied_weight():
    model = llama(64, tie_word_embeddings=True)
    plan = ww.plan(model, base=llama(32, meta=True, tie_word_embeddings=True))
    ww.init_weights(model, plan)  # installs the head's 1/m on the shared weight's head use
    with pytest.raises(ValueError, match="tied to model.embed_tokens.weight"):
        ww.fold_multipliers(model)


def test_fold_tied_identity_is_fine(x_tokens):
    model = llama(64, tie_word_embeddings=True)
    plan = ww.plan(model, base=llama(64, meta=True, tie_word_embeddings=True))  # m = 1: nothing to fold
    ww.init_weights(model, plan)
    ww.fold_multipliers(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_fold_leaves_foreign_parametrizations():
    layer = nn.Linear(4, 4)
    nn.utils.parametrizations.orthogonal(layer)
    ww.fold_multipliers(layer)
    assert hasattr(layer, "parametrizations")


def test_multiplier_free_mlp_keeps_working_with_base():
    model, base = mlp(64), mlp(16)
    added = ww.add_multipliers(model, base=base)
    assert added == ["0.weight", "2.weight"]  # the readout 4.weight is found by shape


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(["scalar", "row", "col", "row_col"]), d_in=st.integers(1, 12), d_out=st.integers(1, 12),
       vocab=st.integers(2, 20), bias=st.booleans())
def test_fold_is_exact_for_any_shape_and_kind(kind, d_in, d_out, vocab, bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(vocab, d_in), nn.Linear(d_in, d_out, bias=bias))
    ww.add_multipliers(model, kind=kind, placement=["."])
    _perturb(model)
    ids = torch.randint(0, vocab, (3, 5))
    before = model(ids)
    ww.fold_multipliers(model)
    torch.testing.assert_close(model(ids), before, rtol=0, atol=0)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "1.weight"] + (["1.bias"] if bias else [])

"""Role classification on the models users bring."""

import pytest
import torch
from torch import nn

import widthwise as ww
from widthwise import Role
from widthwise.roles import canonical_name, classify, parameter_sites
from widthwise.width import base_shapes

from helpers import gpt2, llama, mlp


def test_canonical_names():
    assert canonical_name("a.b.parametrizations.weight.original") == "a.b.weight"
    assert canonical_name("a.parametrizations.weight.0.row") == "a.weight.row"
    assert canonical_name("parametrizations.weight.original") == "weight"
    assert canonical_name("a.b.weight") == "a.b.weight"


def test_llama_roles():
    roles = classify(llama(64))
    assert roles["model.embed_tokens.weight"] is Role.EMBEDDING
    assert roles["lm_head.weight"] is Role.HEAD
    assert roles["model.norm.weight"] is Role.VECTOR
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert roles[f"model.layers.1.self_attn.{name}.weight"] is Role.HIDDEN
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert roles[f"model.layers.0.mlp.{name}.weight"] is Role.HIDDEN
    assert roles["model.layers.0.input_layernorm.weight"] is Role.VECTOR
    assert len(roles) == len(list(llama(64).parameters()))


def test_llama_with_biases():
    roles = classify(llama(64, attention_bias=True, mlp_bias=True))
    assert roles["model.layers.0.self_attn.q_proj.bias"] is Role.VECTOR
    assert roles["model.layers.0.mlp.down_proj.bias"] is Role.VECTOR
    assert roles["model.layers.0.self_attn.q_proj.weight"] is Role.HIDDEN


def test_tied_llama_is_one_parameter_one_role():
    model = llama(64, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    sites = parameter_sites(model)
    roles = classify(model)
    assert "lm_head.weight" not in roles
    assert roles["model.embed_tokens.weight"] is Role.EMBEDDING
    assert sites["model.embed_tokens.weight"].aliases == ["lm_head.weight"]


def test_gpt2_conv1d_biases_and_tied_head():
    model = gpt2(64)
    roles = classify(model)
    assert roles["transformer.wte.weight"] is Role.EMBEDDING  # tied with lm_head
    assert roles["transformer.wpe.weight"] is Role.EMBEDDING
    assert roles["transformer.h.0.attn.c_attn.weight"] is Role.HIDDEN  # fused QKV (Conv1D, stored in x out)
    assert roles["transformer.h.0.mlp.c_fc.bias"] is Role.VECTOR
    assert roles["transformer.h.0.ln_1.bias"] is Role.VECTOR


def test_plain_mlp_roles_come_from_shapes():
    model, base = mlp(128), mlp(32)
    roles = classify(model, base_shapes=base_shapes(base))
    assert roles["0.weight"] is Role.EMBEDDING  # fixed fan-in, scaled fan-out: input layer
    assert roles["2.weight"] is Role.HIDDEN
    assert roles["4.weight"] is Role.HEAD  # scaled fan-in, fixed fan-out: readout
    assert roles["4.bias"] is Role.VECTOR
    # without a base there is no way to tell: everything 2-D is hidden
    assert set(classify(model).values()) == {Role.HIDDEN, Role.VECTOR}


def test_named_head_and_raw_embedding_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_emb = nn.Parameter(torch.zeros(16, 8))
            self.body = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

    roles = classify(Net())
    assert roles["pos_emb"] is Role.EMBEDDING
    assert roles["body.weight"] is Role.HIDDEN
    assert roles["head.weight"] is Role.HEAD


def test_overrides_first_match_wins():
    roles = classify(llama(64), roles={r"q_proj\.weight": "vector", r"proj\.weight": "head"})
    assert roles["model.layers.0.self_attn.q_proj.weight"] is Role.VECTOR
    assert roles["model.layers.0.self_attn.k_proj.weight"] is Role.HEAD


def test_override_errors():
    with pytest.raises(ValueError, match="'nothing_here' matches no parameter"):
        classify(llama(64), roles={"nothing_here": "hidden"})
    with pytest.raises(ValueError, match="unknown role 'matrix'"):
        classify(llama(64), roles={"q_proj": "matrix"})
    with pytest.raises(ValueError, match="not a valid regex"):
        classify(llama(64), roles={"(": "hidden"})


def test_classification_ignores_ddp_style_wrapping_when_done_before():
    # users classify before wrapping; multipliers added first still classify as multipliers
    model = llama(64)
    ww.add_multipliers(model)
    roles = classify(model)
    assert roles["model.layers.0.self_attn.q_proj.weight"] is Role.HIDDEN
    assert roles["model.layers.0.self_attn.q_proj.weight.row"] is Role.MULTIPLIER
    assert roles["model.embed_tokens.weight.col"] is Role.MULTIPLIER

"""Fixed forward multipliers on any model: head 1/m and muP's 1/d_head attention."""

import copy
import math

import pytest
import torch

import widthwise as ww
from widthwise.forward import missing_forward_multipliers, named_forward_multipliers

from helpers import llama, mlp


def test_head_multiplier_scales_logits(x_tokens):
    model = llama(128)
    plain = copy.deepcopy(model)
    plan = ww.plan(model, base=llama(32, meta=True), recipe="mup")
    assert [(f.module, f.kind, f.value) for f in plan.forward_multipliers] == [("lm_head", "output", 0.25)]
    ww.apply_forward_multipliers(model, plan)
    torch.testing.assert_close(model(x_tokens).logits, 0.25 * plain(x_tokens).logits)


def test_query_multiplier_equals_changing_the_attention_scale(x_tokens):
    # muP's q.k/d_head: HF Llama computes q.k * attn.scaling; a query multiplier s must equal scaling * s.
    model = llama(128, head_dim=32)
    reference = copy.deepcopy(model)
    plan = ww.plan(model, base=llama(32, meta=True, head_dim=32), recipe="mup", attention_scale="mup_exact")
    query = [f for f in plan.forward_multipliers if f.kind == "query"]
    assert len(query) == 2 and query[0].module == "model.layers.0.self_attn.q_proj"
    assert query[0].value == pytest.approx(32**-0.5)
    ww.apply_forward_multipliers(model, plan)
    for layer in reference.model.layers:
        layer.self_attn.scaling = 1 / 32  # q.k / d_head exactly
    reference.lm_head.weight.data *= 0.25
    torch.testing.assert_close(model(x_tokens).logits, reference(x_tokens).logits, rtol=1e-5, atol=1e-6)


def test_query_multiplier_when_head_dim_grows():
    plan = ww.plan(llama(128, head_dim=64), base=llama(128, meta=True, head_dim=16), recipe="robust")
    q = next(f for f in plan.forward_multipliers if f.kind == "query")
    assert q.value == pytest.approx(0.5)  # sqrt(16/64): base-matched 1/d_head
    assert ww.plan(llama(128), base=llama(32, meta=True), recipe="sp").forward_multipliers == []


def test_query_bias_is_scaled_too(x_tokens):
    model = llama(64, attention_bias=True)
    plan = ww.plan(model, recipe="mup", attention_scale="mup_exact")
    q = next(f for f in plan.forward_multipliers if f.kind == "query")
    assert q.tensors == ("weight", "bias")


def test_qk_norm_gets_the_scale_on_its_gain():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = Qwen3ForCausalLM(cfg)
    plan = ww.plan(model, recipe="mup", attention_scale="mup_exact")
    q = next(f for f in plan.forward_multipliers if f.kind == "query")
    assert q.module == "model.layers.0.self_attn.q_norm"


def test_apply_is_idempotent_and_detects_conflicts():
    model = llama(128)
    plan = ww.plan(model, base=llama(32, meta=True))
    assert missing_forward_multipliers(model, plan) == plan.forward_multipliers
    assert len(ww.apply_forward_multipliers(model, plan)) == 1
    assert ww.apply_forward_multipliers(model, plan) == []
    assert missing_forward_multipliers(model, plan) == []
    other = ww.plan(llama(128), base=llama(64, meta=True))
    with pytest.raises(ValueError, match="already carries the output multiplier x0.25"):
        ww.apply_forward_multipliers(model, other)


def test_mlp_head_found_by_shape_gets_the_multiplier():
    plan = ww.plan(mlp(64), base=mlp(16), recipe="mup")
    assert [(f.module, f.value, f.tensors) for f in plan.forward_multipliers] == [("4", 0.25, ("weight", "bias"))]


def test_attention_without_head_dim_is_refused():
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(8, 24)

    with pytest.raises(ValueError, match="exposes no integer `head_dim`"):
        ww.plan(Attention(), recipe="mup")
    assert ww.plan(Attention(), recipe="mup", attention_scale="standard").forward_multipliers == []
    assert ww.plan(Attention(), recipe="mup", forward_multipliers=False).forward_multipliers == []


def test_named_forward_multipliers_follow_the_recipe():
    sp = named_forward_multipliers("sp", 256, 64, head_dim=32, base_head_dim=32)
    assert sp == {"embedding_multiplier": 1.0, "head_multiplier": 1.0, "attention_scale": 1 / math.sqrt(32)}
    for name in ("mup", "robust"):
        fixed = named_forward_multipliers(ww.get_recipe(name), 256, 64, head_dim=32, base_head_dim=32)
        assert fixed == {"embedding_multiplier": 1.0, "head_multiplier": 0.25, "attention_scale": 1 / math.sqrt(32)}
        grown = named_forward_multipliers(name, 256, 64, head_dim=128, base_head_dim=32)
        assert grown["head_multiplier"] == 0.25
        assert grown["attention_scale"] == pytest.approx(math.sqrt(32) / 128)  # sqrt(d_base) / d_head
    exact = named_forward_multipliers(ww.get_recipe("mup", attention_scale="mup_exact"), 128, 64, 64, 32)
    assert exact["attention_scale"] == pytest.approx(1 / 64)
    assert named_forward_multipliers("sp", 256, 64, 128, 32)["attention_scale"] == pytest.approx(1 / math.sqrt(128))

"""Width multipliers derived from model and base shapes."""

import pytest
import torch
from torch import nn

import widthwise as ww

from helpers import llama, mlp


def test_multipliers_from_llama_and_meta_base():
    p = ww.plan(llama(256), base=llama(64, meta=True), recipe="robust")
    assert p["model.layers.0.self_attn.q_proj.weight"].width_mult == 4
    assert p["model.layers.0.mlp.down_proj.weight"].width_mult == 4  # fan-in is the ffn width
    assert p["model.embed_tokens.weight"].width_mult == 4  # its output width
    assert p["lm_head.weight"].width_mult == 4  # its fan-in
    assert p["model.norm.weight"].width_mult == 4


def test_no_base_means_m_equals_one():
    p = ww.plan(llama(64), recipe="robust")
    assert {e.width_mult for e in p} == {1.0}
    assert {e.lr_factor for e in p} == {1.0}


def test_fractional_ratio():
    p = ww.plan(mlp(48), base=mlp(32), recipe="mup")
    assert p["2.weight"].width_mult == pytest.approx(1.5)
    assert p["2.weight"].lr_factor == pytest.approx(1 / 1.5)


def test_name_mismatch_names_the_parameter():
    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 4)

    with pytest.raises(ValueError, match="'0.weight' has no counterpart in the base"):
        ww.plan(mlp(32), base=Other())
    with pytest.raises(ValueError, match="base parameter 'extra' does not exist"):
        base = mlp(16)
        base.register_parameter("extra", nn.Parameter(torch.zeros(3)))
        ww.plan(mlp(32), base=base)


def test_matrices_take_their_fan_in_ratio_whatever_their_fan_out_does():
    # muP's InfShape.width_mult() of an inf x inf matrix is its fan-in's: out 32 -> 128 (x4), in 32 -> 64 (x2): m = 2
    model = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 128), nn.Linear(128, 2))
    base = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 2))
    p = ww.plan(model, base=base, recipe="mup")
    h = p["1.weight"]
    assert (h.role.value, h.width_mult, h.lr_factor, h.wd_factor) == ("hidden", 2.0, 0.5, 2.0)
    assert h.init_std == pytest.approx(0.02 / 2**0.5)
    assert p["1.bias"].width_mult == 4.0  # a vector: its one dimension's ratio
    assert p["2.weight"].width_mult == 4.0  # the head: its fan-in, 32 -> 128


def test_gqa_kv_projection_narrower_than_the_group_ratio():
    # width 64 (4 heads, 2 KV heads of 16) against a base of width 16 with one head and one KV head:
    # k_proj 32 out x 64 in vs 16 x 16, fan-out ratio 2 and fan-in ratio 4; muP uses the fan-in's 4.
    model, base = llama(64), llama(16, meta=True)  # helpers: heads = width // 16, KV heads = max(1, width // 32)
    p = ww.plan(model, base=base, recipe="robust")
    for name in ("k_proj", "v_proj", "q_proj", "o_proj"):
        e = p[f"model.layers.0.self_attn.{name}.weight"]
        assert (e.width_mult, e.lr_factor, e.wd_factor, e.init_std) == (4.0, 0.25, 2.0, 0.01), name
    assert p["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)


def test_inconsistent_ratio_where_one_width_is_needed_names_the_parameter_and_the_fix():
    model, base = nn.Module(), nn.Module()
    model.w = nn.Parameter(torch.zeros(64, 128))
    base.w = nn.Parameter(torch.zeros(32, 32))
    with pytest.raises(ValueError, match=r"parameter 'w'.*inconsistent ratios 2, 4.*roles=\{pattern: 'hidden'\}"):
        ww.plan(model, base=base, roles={"w": "vector"})
    assert ww.plan(model, base=base, roles={"w": "hidden"})["w"].width_mult == 4.0  # the fix the message names


def test_rank_mismatch():
    model, base = nn.Module(), nn.Module()
    model.w = nn.Parameter(torch.zeros(4, 4))
    base.w = nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match="differ in rank"):
        ww.plan(model, base=base)


def test_base_with_or_without_multipliers():
    model = llama(128)
    ww.add_multipliers(model)
    base = llama(64, meta=True)
    p1 = ww.plan(model, base=base)
    ww.add_multipliers(base)
    p2 = ww.plan(model, base=base)
    assert p1.to_dict() == p2.to_dict()

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


def test_inconsistent_ratio_names_the_parameter():
    model = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 128), nn.Linear(128, 2))
    base = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 2))
    with pytest.raises(ValueError, match=r"parameter '1.weight'.*inconsistent ratios 4, 2"):
        ww.plan(model, base=base)


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

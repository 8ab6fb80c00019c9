"""The plan: table, per-recipe factors on a real model, JSON/YAML round trip."""

import pytest

import widthwise as ww
from widthwise import Plan, Role

from helpers import llama


@pytest.fixture(scope="module")
def robust_plan():
    model = llama(256)
    ww.add_multipliers(model)
    return ww.plan(model, base=llama(64, meta=True), recipe="robust")


def test_robust_factors_on_llama(robust_plan):
    h = robust_plan["model.layers.0.mlp.up_proj.weight"]
    assert (h.role, h.width_mult, h.lr_factor, h.wd_factor) == (Role.HIDDEN, 4, 0.25, 2.0)
    assert h.init == "normal" and h.init_std == pytest.approx(0.01)
    e = robust_plan["model.embed_tokens.weight"]
    assert (e.lr_factor, e.wd_factor, e.init_std) == (1.0, 0.0, 0.02)
    assert robust_plan["lm_head.weight"].wd_factor == 0.0
    assert robust_plan["model.norm.weight"].init == "ones"
    mult = robust_plan["model.layers.0.mlp.up_proj.weight.row"]
    assert (mult.role, mult.wd_factor, mult.init) == (Role.MULTIPLIER, None, None)


def test_mup_and_sp_factors():
    model, base = llama(256), llama(64, meta=True)
    mup = ww.plan(model, base=base, recipe="mup")
    sp = ww.plan(model, base=base, recipe="sp")
    name = "model.layers.1.self_attn.o_proj.weight"
    assert (mup[name].lr_factor, mup[name].wd_factor, mup[name].init_std) == (0.25, 1.0, 0.01)
    assert (sp[name].lr_factor, sp[name].wd_factor, sp[name].init_std) == (1.0, 1.0, 0.02)
    assert mup["lm_head.weight"].wd_factor == 1.0
    assert sp.forward_multipliers == []


def test_table_shows_roles_factors_and_lr_wd(robust_plan):
    text = str(robust_plan)
    assert text.splitlines()[0].startswith("widthwise plan: recipe=robust")
    header = text.splitlines()[1].split()
    assert header == ["name", "role", "shape", "width", "x", "lr", "x", "wd", "x", "lr*wd", "x", "init", "std"]
    line = next(row for row in text.splitlines() if row.startswith("model.layers.0.mlp.up_proj.weight "))
    assert line.split() == ["model.layers.0.mlp.up_proj.weight", "hidden", "512x256", "4", "0.25", "2", "0.5", "0.01"]
    assert "forward multiplier: lm_head (output) x 0.25 on weight" in text
    absolute = robust_plan.table(lr=3e-3, weight_decay=0.1)
    line = next(row for row in absolute.splitlines() if row.startswith("model.layers.0.mlp.up_proj.weight "))
    assert line.split()[-3:] == ["0.00075", "0.2", "0.00015"]
    line = next(row for row in absolute.splitlines() if row.startswith("model.layers.0.mlp.up_proj.weight.row "))
    assert line.split()[-3:] == ["0.003", "0.002", "6e-06"]


def test_roundtrip_json_and_yaml(robust_plan):
    assert Plan.from_json(robust_plan.to_json()) == robust_plan
    assert Plan.from_yaml(robust_plan.to_yaml()) == robust_plan
    assert robust_plan.names("head") == ["lm_head.weight"]
    assert robust_plan.roles()["lm_head.weight"] is Role.HEAD
    assert len(robust_plan) == len(list(robust_plan))


def test_roundtrip_keeps_overrides_and_tied_aliases():
    model = llama(64, tie_word_embeddings=True)
    p = ww.plan(model, base=llama(32, meta=True, tie_word_embeddings=True), recipe="robust", wd_exponent=1.0)
    back = Plan.from_yaml(p.to_yaml())
    assert back.recipe.wd_exponent == 1.0
    assert back["model.embed_tokens.weight"].aliases == ("lm_head.weight",)
    assert back.forward_multipliers[0].module == "lm_head"


def test_malformed_plans():
    with pytest.raises(ValueError, match="not a widthwise plan"):
        Plan.from_dict({"version": 99})
    with pytest.raises(ValueError, match="malformed widthwise plan"):
        Plan.from_dict({"version": 1, "recipe": {}})


def test_replanning_a_prepared_model_gives_the_same_plan():
    model, base = llama(128), llama(32, meta=True)
    ww.add_multipliers(model)
    first = ww.plan(model, base=base)
    ww.init_weights(model, first)  # installs the head's fixed 1/m: a parametrization on lm_head.weight
    assert ww.plan(model, base=base) == first

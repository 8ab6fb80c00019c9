"""Presets, overrides and per-role scaling."""

import pytest

from widthwise import Role, get_recipe
from widthwise.recipes import Recipe, muon_scaling, role_scaling


def test_presets_at_m4():
    sp, mup, robust = (get_recipe(n) for n in ("sp", "mup", "robust"))
    h = {r.name: role_scaling(r, Role.HIDDEN, 4.0) for r in (sp, mup, robust)}
    assert (h["sp"].lr, h["sp"].wd, h["sp"].init_std) == (1.0, 1.0, 0.02)
    assert (h["mup"].lr, h["mup"].wd, h["mup"].init_std) == (0.25, 1.0, 0.01)
    assert (h["robust"].lr, h["robust"].wd, h["robust"].init_std) == (0.25, 2.0, 0.01)
    for role in (Role.EMBEDDING, Role.HEAD):
        assert role_scaling(sp, role, 4.0).wd == 1.0
        assert role_scaling(mup, role, 4.0).wd == 1.0
        assert role_scaling(robust, role, 4.0).wd == 0.0
        assert all(role_scaling(r, role, 4.0).lr == 1.0 for r in (sp, mup, robust))
    for r in (sp, mup, robust):
        v = role_scaling(r, Role.VECTOR, 4.0, "weight", is_norm=True)
        assert (v.lr, v.wd, v.init) == (1.0, 0.0, "ones")
        assert role_scaling(r, Role.VECTOR, 4.0, "bias").init == "zeros"
        mult = role_scaling(r, Role.MULTIPLIER, 4.0)
        assert (mult.lr, mult.wd, mult.init) == (1.0, None, None)


def test_overrides_express_other_conventions():
    muadamw = get_recipe("mup", wd_exponent=1.0)  # mup's MuAdamW: eta*lam constant
    s = role_scaling(muadamw, Role.HIDDEN, 8.0)
    assert s.lr * s.wd == pytest.approx(1.0)
    assert get_recipe(muadamw) is muadamw
    assert get_recipe(muadamw.to_dict()) == muadamw


def test_muon_scaling():
    robust = get_recipe("robust")
    assert muon_scaling(robust, 4.0, "original") == (1.0, 1.0)
    assert muon_scaling(robust, 4.0, "match_rms_adamw") == pytest.approx((0.5, 2.0))
    assert muon_scaling(get_recipe("sp"), 4.0, "match_rms_adamw") == (1.0, 1.0)
    custom = get_recipe("robust", muon_lr_exponent=1.0, muon_wd_exponent=0.0)
    assert muon_scaling(custom, 4.0, "original") == (0.25, 1.0)


def test_bad_recipes():
    with pytest.raises(ValueError, match="unknown recipe 'mu'"):
        get_recipe("mu")
    with pytest.raises(ValueError, match="unknown recipe override 'lr_exp'"):
        get_recipe("robust", lr_exp=1)
    with pytest.raises(ValueError, match="attention_scale"):
        get_recipe("robust", attention_scale="nope")
    with pytest.raises(ValueError, match="wd_exponent must be a finite number"):
        get_recipe("robust", wd_exponent="half")
    with pytest.raises(ValueError, match="unknown field 'extra'"):
        Recipe.from_dict({**get_recipe("sp").to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="must be a name"):
        get_recipe(3)

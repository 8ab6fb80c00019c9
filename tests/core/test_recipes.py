"""Presets, overrides and per-role scaling."""

from dataclasses import replace

import pytest

from widthwise import Role, get_recipe
from widthwise.recipes import PRESETS, Recipe, role_scaling


def test_presets_at_m4():
    sp, mup, mup_cwd, robust = (get_recipe(n) for n in ("sp", "mup", "mup_constant_wd", "robust"))
    everything = (sp, mup, mup_cwd, robust)
    h = {r.name: role_scaling(r, Role.HIDDEN, 4.0) for r in everything}
    assert (h["sp"].lr, h["sp"].wd, h["sp"].init_std) == (1.0, 1.0, 0.02)
    assert (h["mup"].lr, h["mup"].wd, h["mup"].init_std) == (0.25, 4.0, 0.01)  # MuAdamW: lr / m, wd * m
    assert h["mup"].lr * h["mup"].wd == 1.0  # AdamW's shrink lr * wd held constant
    assert (h["mup_constant_wd"].lr, h["mup_constant_wd"].wd, h["mup_constant_wd"].init_std) == (0.25, 1.0, 0.01)
    assert (h["robust"].lr, h["robust"].wd, h["robust"].init_std) == (0.25, 2.0, 0.01)
    for role in (Role.EMBEDDING, Role.HEAD):
        assert role_scaling(sp, role, 4.0).wd == 1.0
        assert role_scaling(mup, role, 4.0).wd == 1.0
        assert role_scaling(mup_cwd, role, 4.0).wd == 1.0
        assert role_scaling(robust, role, 4.0).wd == 0.0
        assert all(role_scaling(r, role, 4.0).lr == 1.0 for r in everything)
    for r in everything:
        v = role_scaling(r, Role.VECTOR, 4.0, "weight", is_norm=True)
        assert (v.lr, v.wd, v.init) == (1.0, 0.0, "ones")
        assert role_scaling(r, Role.VECTOR, 4.0, "bias").init == "zeros"
        mult = role_scaling(r, Role.MULTIPLIER, 4.0)
        assert (mult.lr, mult.wd, mult.init) == (1.0, None, None)


def test_presets_and_their_forward_conventions():
    assert list(PRESETS) == ["sp", "mup", "mup_constant_wd", "robust"]
    for name in ("mup", "mup_constant_wd", "robust"):
        r = get_recipe(name)
        assert (r.init_exponent, r.output_exponent, r.attention_scale) == (0.5, 1.0, "mup")
    sp = get_recipe("sp")  # GPT-2's constant 0.02 init, not Tensor Programs V's fan-in SP
    assert (sp.init_exponent, sp.output_exponent, sp.attention_scale, sp.init_std) == (0.0, 0.0, "standard", 0.02)


def test_overrides_express_other_conventions():
    classic = get_recipe("mup", wd_exponent=0.0)  # Tensor Programs V's constant WD, by override
    assert replace(classic, name="mup_constant_wd") == get_recipe("mup_constant_wd")
    s = role_scaling(classic, Role.HIDDEN, 8.0)
    assert (s.lr, s.wd) == (0.125, 1.0)
    assert get_recipe(classic) is classic
    assert get_recipe(classic.to_dict()) == classic


@pytest.mark.parametrize(("name", "optimizer", "adjust", "expected"), [
    # AdamW: the recipe's own exponents (module docstring table)
    ("sp", "adamw", None, (0.0, 0.0)), ("mup", "adamw", None, (1.0, 1.0)),
    ("mup_constant_wd", "adamw", None, (1.0, 0.0)), ("robust", "adamw", None, (1.0, 0.5)),
    # Muon: the spectral LR rule and our WD derivation for width-scaling recipes, never Adam's 1/m; sp does not
    # scale. All three width-scaling presets coincide there.
    ("robust", "muon", "match_rms_adamw", (0.5, 0.5)), ("robust", "muon", "original", (0.0, 0.0)),
    ("robust", "muon", None, (0.0, 0.0)), ("mup", "muon", "match_rms_adamw", (0.5, 0.5)),
    ("mup_constant_wd", "muon", "match_rms_adamw", (0.5, 0.5)), ("mup", "muon", "original", (0.0, 0.0)),
    ("sp", "muon", "match_rms_adamw", (0.0, 0.0)), ("sp", "muon", "original", (0.0, 0.0)),
])
def test_exponents_per_optimizer(name, optimizer, adjust, expected):
    assert get_recipe(name).exponents(optimizer, adjust) == expected


def test_exponents_overrides_and_errors():
    assert get_recipe("robust").exponents() == (1.0, 0.5)
    assert get_recipe("robust").exponents("muon") == (0.5, 0.5)  # default adjust_lr_fn: match_rms_adamw
    custom = get_recipe("robust", muon_lr_exponent=1.0, muon_wd_exponent=0.0)
    assert custom.exponents("muon", "match_rms_adamw") == (1.0, 0.0)
    assert get_recipe("sp", muon_wd_exponent=1.0).exponents("muon", "original") == (0.0, 1.0)
    assert custom.exponents("adamw") == (1.0, 0.5)  # Muon's overrides leave AdamW alone
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        custom.exponents("sgd")
    with pytest.raises(ValueError, match="unknown Muon adjust_lr_fn 'spectral'"):
        custom.exponents("muon", "spectral")


def test_role_scaling_under_muon_at_m4():
    robust = get_recipe("robust")
    h = role_scaling(robust, Role.HIDDEN, 4.0, optimizer="muon", adjust_lr_fn="match_rms_adamw")
    assert (h.lr, h.wd, h.init_std) == (pytest.approx(0.5), pytest.approx(2.0), pytest.approx(0.01))
    assert role_scaling(robust, Role.HIDDEN, 4.0, optimizer="muon", adjust_lr_fn="original").lr == 1.0
    e = role_scaling(robust, Role.EMBEDDING, 4.0, optimizer="muon")
    assert (e.lr, e.wd) == (1.0, 0.0)


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

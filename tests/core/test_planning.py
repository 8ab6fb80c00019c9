"""The plan: table, per-recipe and per-optimizer factors on a real model, JSON/YAML round trip."""

import warnings

import pytest

import widthwise as ww
from widthwise import ParamPlan, Plan, Role
from widthwise.planning import PLAN_VERSION

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
    assert (mult.role, mult.wd_factor, mult.fixed_wd, mult.init) == (Role.MULTIPLIER, None, 2e-3, None)
    assert robust_plan.optimizer == "adamw" and {p.optimizer for p in robust_plan} == {"adamw"}


@pytest.mark.parametrize(("recipe", "adjust", "lr_x", "wd_x"), [
    ("robust", "match_rms_adamw", 0.5, 2.0), ("robust", "original", 1.0, 1.0), ("mup", "match_rms_adamw", 0.5, 2.0),
    ("sp", "match_rms_adamw", 1.0, 1.0),
])
@pytest.mark.filterwarnings("ignore:recipe 'sp' trains the learnable multipliers")
def test_muon_plans_carry_the_spectral_rule(recipe, adjust, lr_x, wd_x):
    model = llama(256)
    ww.add_multipliers(model)
    p = ww.plan(model, base=llama(64, meta=True), recipe=recipe, optimizer="muon", muon_adjust_lr_fn=adjust)
    assert (p.optimizer, p.muon_adjust_lr_fn) == ("muon", adjust)
    h = p["model.layers.0.mlp.up_proj.weight"]
    assert (h.optimizer, h.lr_factor, h.wd_factor) == ("muon", pytest.approx(lr_x), pytest.approx(wd_x))
    assert h.lr(3e-3) == pytest.approx(3e-3 * lr_x) and h.lr(3e-3, muon_lr=0.02) == pytest.approx(0.02 * lr_x)
    assert h.weight_decay(0.1) == pytest.approx(0.1 * wd_x)
    e = p["model.embed_tokens.weight"]
    assert e.optimizer == "adamw" and e.lr(3e-3, muon_lr=0.02) == 3e-3  # muon_lr is Muon's only
    assert p["model.layers.0.mlp.up_proj.weight.row"].optimizer == "adamw"


def test_param_plan_values_and_checks():
    fixed = ParamPlan("m", Role.MULTIPLIER, (4,), 1.0, None, None, None, fixed_lr=0.01, fixed_wd=0.0)
    assert (fixed.lr(3e-3, 0.02), fixed.weight_decay(0.1)) == (0.01, 0.0)
    with pytest.raises(ValueError, match="give exactly one of lr_factor and fixed_lr"):
        ParamPlan("m", Role.MULTIPLIER, (4,), 1.0, 1.0, None, None, fixed_lr=0.01, fixed_wd=0.0)
    with pytest.raises(ValueError, match="give exactly one of wd_factor and fixed_wd"):
        ParamPlan("m", Role.VECTOR, (4,), 1.0, 1.0, None, None)
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        ParamPlan("w", Role.HIDDEN, (4, 4), 1.0, 1.0, 1.0, "normal", optimizer="sgd")
    with pytest.raises(ValueError, match=r"Muon takes 2-D matrices; hidden parameter 'w' has shape \(4, 4, 4\)"):
        ParamPlan("w", Role.HIDDEN, (4, 4, 4), 1.0, 1.0, 1.0, "normal", optimizer="muon")


def test_mup_and_sp_factors():
    model, base = llama(256), llama(64, meta=True)
    mup = ww.plan(model, base=base, recipe="mup")
    classic = ww.plan(model, base=base, recipe="mup_constant_wd")
    sp = ww.plan(model, base=base, recipe="sp")
    name = "model.layers.1.self_attn.o_proj.weight"
    assert (mup[name].lr_factor, mup[name].wd_factor, mup[name].init_std) == (0.25, 4.0, 0.01)  # MuAdamW
    assert (classic[name].lr_factor, classic[name].wd_factor, classic[name].init_std) == (0.25, 1.0, 0.01)
    assert (sp[name].lr_factor, sp[name].wd_factor, sp[name].init_std) == (1.0, 1.0, 0.02)
    assert mup["lm_head.weight"].wd_factor == classic["lm_head.weight"].wd_factor == 1.0
    assert sp.forward_multipliers == []


def test_gqa_base_narrower_than_the_kv_ratio_plans_per_dimension():
    # base width 16: one head, one KV head; width 64: 4 heads, 2 KV heads. k_proj 32x64 vs 16x16: fan-in x4.
    p = ww.plan(llama(64), base=llama(16, meta=True), recipe="mup")
    k = p["model.layers.0.self_attn.k_proj.weight"]
    assert (k.shape, k.width_mult, k.lr_factor, k.wd_factor, k.init_std) == ((32, 64), 4.0, 0.25, 4.0, 0.01)
    assert p["model.layers.0.self_attn.q_proj.weight"].width_mult == 4.0  # 64x64 vs 16x16: both ratios 4


def test_multipliers_under_sp_warn_that_their_lr_does_not_follow_width():
    model = llama(128)
    ww.add_multipliers(model)
    with pytest.warns(UserWarning, match=r"recipe 'sp'.*multipliers.*width-constant"):
        ww.plan(model, base=llama(64, meta=True), recipe="sp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ww.plan(model, base=llama(64, meta=True), recipe="mup")  # LR scales with width: no warning
        ww.plan(model, recipe="sp")  # no base, nothing scales: nothing to warn about
        ww.plan(llama(128), base=llama(64, meta=True), recipe="sp")  # no multipliers


def test_table_shows_roles_factors_and_lr_wd(robust_plan):
    text = str(robust_plan)
    assert text.splitlines()[0].startswith("widthwise plan: recipe=robust")
    assert "optimizer=adamw" in text.splitlines()[0]
    header = text.splitlines()[1].split()
    assert header == ["name", "role", "optimizer", "shape", "width", "x", "lr", "x", "wd", "x", "lr*wd", "x", "init",
                      "std"]
    line = next(row for row in text.splitlines() if row.startswith("model.layers.0.mlp.up_proj.weight "))
    assert line.split() == ["model.layers.0.mlp.up_proj.weight", "hidden", "adamw", "512x256", "4", "0.25", "2", "0.5",
                            "0.01"]
    line = next(row for row in text.splitlines() if row.startswith("model.layers.0.mlp.up_proj.weight.row "))
    assert line.split()[2:] == ["adamw", "512", "1", "1", "=0.002", "-", "-"]  # the multipliers' absolute WD
    assert "forward multiplier: lm_head (output) x 0.25 on weight" in text
    absolute = robust_plan.table(lr=3e-3, weight_decay=0.1)
    line = next(row for row in absolute.splitlines() if row.startswith("model.layers.0.mlp.up_proj.weight "))
    assert line.split()[-3:] == ["0.00075", "0.2", "0.00015"]
    line = next(row for row in absolute.splitlines() if row.startswith("model.layers.0.mlp.up_proj.weight.row "))
    assert line.split()[-3:] == ["0.003", "0.002", "6e-06"]
    with pytest.raises(ValueError, match="pass both lr and weight_decay"):
        robust_plan.table(lr=3e-3)


def test_muon_table_shows_what_muon_runs():
    model = llama(256)
    ww.add_multipliers(model)
    p = ww.plan(model, base=llama(64, meta=True), optimizer="muon")
    text = p.table(lr=3e-3, weight_decay=0.1, muon_lr=0.02)
    assert "optimizer=muon muon_adjust_lr_fn=match_rms_adamw" in text.splitlines()[0]
    line = next(row for row in text.splitlines() if row.startswith("model.layers.0.mlp.up_proj.weight "))
    # Muon's spectral rule (lr x m^-1/2 = 0.5, wd x m^1/2 = 2) on Muon's base lr 0.02, not AdamW's 0.25 on 3e-3
    assert line.split()[2:] == ["muon", "512x256", "4", "0.5", "2", "1", "0.01", "0.01", "0.2", "0.002"]
    line = next(row for row in text.splitlines() if row.startswith("model.embed_tokens.weight "))
    assert line.split()[2] == "adamw" and line.split()[-3:] == ["0.003", "0", "0"]


def test_roundtrip_json_and_yaml(robust_plan):
    assert Plan.from_json(robust_plan.to_json()) == robust_plan
    assert Plan.from_yaml(robust_plan.to_yaml()) == robust_plan
    model = llama(256)
    ww.add_multipliers(model)
    muon = ww.plan(model, base=llama(64, meta=True), optimizer="muon", muon_adjust_lr_fn="original",
                   multiplier_lr=1e-2, multiplier_weight_decay=0.0)
    for back in (Plan.from_json(muon.to_json()), Plan.from_yaml(muon.to_yaml())):
        assert back == muon and (back.optimizer, back.muon_adjust_lr_fn) == ("muon", "original")
        assert back["model.layers.0.mlp.up_proj.weight"].optimizer == "muon"
        assert back["model.layers.0.mlp.up_proj.weight.row"].fixed_lr == 1e-2
        assert back.table(lr=3e-3, weight_decay=0.1) == muon.table(lr=3e-3, weight_decay=0.1)
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
        Plan.from_dict({"version": PLAN_VERSION, "recipe": {}})


def test_old_plans_are_refused_in_one_line(robust_plan):
    old = robust_plan.to_dict()
    old["version"] = 1  # before plans carried each parameter's optimizer and final factors
    for key in ("optimizer", "muon_adjust_lr_fn"):
        del old[key]
    for p in old["params"]:
        for key in ("optimizer", "fixed_lr", "fixed_wd"):
            del p[key]
    with pytest.raises(ValueError) as err:
        Plan.from_dict(old)
    assert PLAN_VERSION == 2
    assert str(err.value) == ("not a widthwise plan of version 2 (got version 1): re-plan the model with ww.plan()")


def test_replanning_a_prepared_model_gives_the_same_plan():
    model, base = llama(128), llama(32, meta=True)
    ww.add_multipliers(model)
    first = ww.plan(model, base=base)
    ww.init_weights(model, first)  # installs the head's fixed 1/m: a parametrization on lm_head.weight
    assert ww.plan(model, base=base) == first


def test_scales_multiply_the_matched_parameters_lr_and_wd_on_top_of_the_recipe():
    model, base = llama(128), llama(64)
    plain = ww.plan(model, base, "robust")
    scaled = ww.plan(model, base, "robust", scales={r"mlp\.down_proj\.weight$": {"lr": 4.0, "weight_decay": 0.25},
                                                    r"self_attn\.o_proj": {"lr": 0.5}})
    for name, p in scaled.params.items():
        q = plain[name]
        if name.endswith("mlp.down_proj.weight"):
            assert (p.lr(1e-2), p.weight_decay(0.1)) == pytest.approx((4 * q.lr(1e-2), q.weight_decay(0.1) / 4))
        elif "self_attn.o_proj" in name:
            assert (p.lr(1e-2), p.weight_decay(0.1)) == pytest.approx((q.lr(1e-2) / 2, q.weight_decay(0.1)))
        else:
            assert p == q, name


def test_scales_apply_to_multipliers_absolute_values_first_match_wins():
    model = llama(64)
    ww.add_multipliers(model)
    p = ww.plan(model, recipe="sp", multiplier_lr=0.01, multiplier_weight_decay=0.002,
                scales={r"q_proj\.weight\.row$": {"lr": 3.0, "weight_decay": 0.0}, r"q_proj": {"lr": 100.0}})
    row = p["model.layers.0.self_attn.q_proj.weight.row"]
    assert (row.lr(1.0), row.weight_decay(1.0)) == pytest.approx((0.03, 0.0))
    assert p["model.layers.0.self_attn.q_proj.weight"].lr(1e-3) == pytest.approx(0.1)


@pytest.mark.parametrize("scales, match", [
    ({"nothing_here": {"lr": 2.0}}, "matches no parameter"),
    ({"q_proj": {"lr": 0.0}}, "lr must be a positive"),
    ({"q_proj": {"weight_decay": -1.0}}, "weight_decay must be a non-negative"),
    ({"q_proj": {"momentum": 2.0}}, "keys among lr, weight_decay"),
    ({"q_proj(": {"lr": 2.0}}, "is not a regex"),
])
def test_bad_scales_are_refused_naming_the_entry(scales, match):
    with pytest.raises(ValueError, match=match):
        ww.plan(llama(64), recipe="sp", scales=scales)

"""Building a run from a config: base model, FFN proportional to width, forward multipliers, absorption."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from widthwise.app.config import load_config
from widthwise.app.setup import _base_heads, at_width, build, load_recipe, model_configs, plan_for
from widthwise.diagnostics.multiplier_stats import multiplier_stats
from widthwise.diagnostics.naming import layer_type
from widthwise.errors import ConfigError
from widthwise.planning import WidthConstantMultipliersWarning


def test_base_keeps_head_dim_and_ffn_scales_exactly():
    c = load_config("demo")
    model, base = model_configs(c, 4096, load_recipe(c))
    assert (base.width, base.heads, base.kv_heads) == (64, 2, 1)
    assert model.head_dim == base.head_dim == 32
    assert model.ffn_hidden == 2 * base.ffn_hidden == 384
    assert model.head_multiplier == 0.5  # robust: 1/m, m = 128/64
    assert model.attention_scale == pytest.approx(1 / math.sqrt(32))  # d_head fixed: standard scale
    assert model.embedding_multiplier == 1.0


def test_plan_follows_the_recipe():
    c = load_config("tiny", ["model.width=64", "scaling.base_width=16", "model.heads=2", "model.kv_heads=1"])
    built = build(c, 300, torch.device("cpu"))
    q = built.plan["blocks.0.attn.q_proj.weight"]
    assert (q.role.value, q.width_mult, q.lr_factor, q.wd_factor) == ("hidden", 4.0, 0.25, 2.0)
    emb = built.plan["embed.weight"]
    assert (emb.lr_factor, emb.wd_factor) == (1.0, 0.0)
    assert built.model_config.head_multiplier == 0.25
    # the head dim grew from 8 (base 16 / 2 heads) to 32: muP scales logits as sqrt(d_base)/d_head
    mup = build(load_config("tiny", ["model.width=64", "scaling.recipe=mup", "model.heads=2"]), 300,
                torch.device("cpu"))
    assert mup.model_config.attention_scale == pytest.approx(math.sqrt(8) / 32)


def test_width_that_breaks_the_ffn_ratio_is_refused():
    with pytest.raises(ConfigError, match="model.width"):
        c = load_config("tiny", ["model.width=40", "model.heads=2", "scaling.base_width=24"])
        model_configs(c, 300, load_recipe(c))


def test_absorb_forward_moves_fixed_multipliers_into_learnable_ones():
    overrides = ["model.width=64", "scaling.base_width=16", "model.heads=2", "model.kv_heads=1",
                 "model.embedding_multiplier=2.0", "scaling.recipe=mup"]
    fixed = build(load_config("tiny", overrides), 300, torch.device("cpu"))
    absorbed = build(load_config("tiny", [*overrides, "multipliers.absorb_forward=true"]), 300, torch.device("cpu"))
    assert absorbed.model_config.embedding_multiplier == 1.0 and absorbed.declared_config.embedding_multiplier == 2.0
    row = dict(absorbed.model.embed.parametrizations.weight[0].named_parameters())["row"]
    assert torch.all(row == 2.0)
    idx = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(absorbed.model(idx), fixed.model(idx), rtol=1e-5, atol=1e-5)


def test_recipe_file_and_overrides(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("recipe: {name: calibrated, lr_exponent: 1.0, wd_exponent: 0.4, init_exponent: 0.5, "
                    "output_exponent: 1.0, attention_scale: mup, vector_like_wd: false}\n")
    c = load_config("tiny", [f"scaling.recipe={path}", "scaling.overrides={wd_exponent: 0.3}"])
    assert load_recipe(c).wd_exponent == 0.3 and load_recipe(c).name == "calibrated"
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(load_config("tiny", [f"scaling.recipe={tmp_path}/none.yaml"]))
    with pytest.raises(ConfigError, match="unknown recipe override"):
        load_recipe(load_config("tiny", ["scaling.overrides={wd_exp: 1}"]))


def test_multiplier_stats_by_layer_type():
    assert layer_type("blocks.3.attn.q_proj.weight.row") == "attn.q_proj.row"
    assert layer_type("embed.weight.col") == "embed.col"
    built = build(load_config("tiny"), 300, torch.device("cpu"))
    stats = multiplier_stats(built.model)
    assert stats["attn.q_proj.row"] == {"mean": 1.0, "std": 0.0, "min": 1.0, "max": 1.0}
    assert "head.row" not in stats  # the paper's placement leaves the head alone
    assert len(stats) == 16


def test_muon_plan_table_shows_what_the_optimizer_runs():
    # tiny at width 64, base 16, Muon: the hidden matrices run lr 0.01 * 4^-1/2 (spectral rule), not AdamW's 0.01/4
    c = load_config("tiny", ["model.width=64", "scaling.base_width=16", "optim.name=muon", "multipliers.lr=0.02",
                             "multipliers.weight_decay=0.001"])
    built = build(c, 300, torch.device("cpu"))
    assert (built.plan.optimizer, built.plan.muon_adjust_lr_fn) == ("muon", "match_rms_adamw")
    table = built.plan.table(c.optim.lr, c.optim.weight_decay, muon_lr=c.optim.muon_lr)
    row = next(line.split() for line in table.splitlines() if line.startswith("blocks.0.attn.q_proj.weight "))
    assert row[2] == "muon" and row[-3:] == ["0.005", "0.2", "0.001"]
    groups = built.optimizer.optimizers["muon"].param_groups
    muon = next(g for g in groups if "blocks.0.attn.q_proj.weight" in g["names"])
    assert muon["initial_lr"] == pytest.approx(0.005) and muon["weight_decay"] == pytest.approx(0.2)
    row = next(line.split() for line in table.splitlines() if line.startswith("blocks.0.attn.q_proj.weight.row "))
    assert row[2] == "adamw" and row[-3:-1] == ["0.02", "0.001"]  # multipliers.lr / weight_decay, via the plan


@pytest.mark.parametrize(("heads", "kv_heads", "width", "base_width", "expected"), [
    (2, 1, 32, 16, (1, 1)),  # tiny at base 16: one head cannot keep 2 queries per KV head, so one KV head
    (4, 2, 64, 16, (1, 1)),
    (4, 2, 128, 64, (2, 1)),  # the group ratio kept
    (8, 4, 128, 48, (3, 1)),  # 3 heads, ratio 2: the largest divisor of 3 with at least that ratio
    (4, 4, 64, 16, (1, 1)),
    (4, 2, 64, 24, (4, 2)),  # the head dim (16) does not divide the base width: the heads are kept
])
def test_base_heads(heads, kv_heads, width, base_width, expected):
    assert _base_heads(heads, kv_heads, width, base_width) == expected


@pytest.mark.parametrize("width", [32, 64])
def test_tiny_gqa_at_base_16_builds_per_dimension(width):
    # tiny: head dim 16, 2 queries per KV head; base width 16 has one head and one KV head. At width 64 k_proj is
    # 32 out x 64 in against 16 x 16: fan-out x2, fan-in x4, which used to be refused as "inconsistent ratios 2, 4".
    c = at_width(load_config("tiny"), width)
    built = build(c, 300, torch.device("cpu"))
    assert (built.model_config.heads, built.model_config.kv_heads) == (width // 16, width // 32)
    assert (built.base_config.width, built.base_config.heads, built.base_config.kv_heads) == (16, 1, 1)
    m = width / 16
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        e = built.plan[f"blocks.0.attn.{name}.weight"]
        assert (e.width_mult, e.lr_factor, e.wd_factor) == (m, 1 / m, m**0.5), name  # robust, fan-in m
        assert e.init_std == pytest.approx(0.02 / m**0.5)
    assert built.plan["blocks.0.attn.k_proj.weight"].shape == (16 * (width // 32), width)


def test_sp_multiplier_warning_comes_from_the_run_not_from_checks():
    """A sweep plans every point on the meta device first: those checks stay quiet, the run itself warns once."""
    config = load_config("tiny", ["scaling.recipe=sp", "model.width=64", "model.heads=4", "scaling.base_width=32"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_for(config, 512)
    with pytest.warns(WidthConstantMultipliersWarning):
        build(config, 512, torch.device("cpu"))


def test_param_scales_and_clip_multipliers_reach_the_plan_and_are_checked():
    config = load_config("tiny", [r"scaling.param_scales={'mlp\.down_proj\.weight$': {lr: 2, weight_decay: 0.5}}"])
    plain = plan_for(load_config("tiny"), 512)
    scaled = plan_for(config, 512)
    name = "blocks.0.mlp.down_proj.weight"
    assert scaled[name].lr(1.0) == pytest.approx(2 * plain[name].lr(1.0))
    assert scaled[name].weight_decay(1.0) == pytest.approx(plain[name].weight_decay(1.0) / 2)
    with pytest.raises(ConfigError, match=r"^scaling.param_scales: 'nope' matches no parameter"):
        plan_for(load_config("tiny", ["scaling.param_scales={'nope': {lr: 2}}"]), 512)
    with pytest.raises(ConfigError, match=r"^optim.clip_multipliers: .* multipliers.max_norm"):
        load_config("tiny", ["optim.clip_multipliers=true", "multipliers.max_norm=1.0"])

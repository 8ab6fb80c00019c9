"""widthwise calibrate: the exponent rules, power-law fits, calibration of sweep rows and the written recipe."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from widthwise import get_recipe
from widthwise.app.analysis.calibration import (
    calibrate_rows,
    fit_width_exponent,
    intrinsic_exponent,
    invariant_wd_exponent,
    recipe_exponents,
    write_calibration,
)
from widthwise.app.config import apply_overrides, load_config
from widthwise.app.setup import at_width, load_recipe
from widthwise.errors import SweepError

LAYERS = ("attn.q_proj", "attn.o_proj", "mlp.down_proj")


def test_robust_rule_from_the_paper():
    assert invariant_wd_exponent(0.75, 1.0) == 0.5  # AdamW + LLaMA: alpha 0.75, muP LR -> lam ~ sqrt(d)


def test_intrinsic_exponent_hand_values():
    assert intrinsic_exponent(0.0, 1.0, 0.5) == 0.75  # width-invariant robust run
    assert invariant_wd_exponent(intrinsic_exponent(0.0, 1.0, 0.5), 1.0) == 0.5
    assert intrinsic_exponent(0.25, 1.0, 0.0) == 0.75  # muP, constant WD: sigma grows as d^0.25
    assert invariant_wd_exponent(intrinsic_exponent(0.25, 1.0, 0.0), 1.0) == 0.5
    assert intrinsic_exponent(0.75, 0.0, 0.0) == 0.75  # SP: alpha shows unmasked
    assert invariant_wd_exponent(0.75, 0.0) == 1.5


def test_recipe_exponents_are_the_recipes_own():
    robust = get_recipe("robust")
    assert recipe_exponents(robust, "muon", "match_rms_adamw") == (0.5, 0.5)
    assert recipe_exponents(robust, "muon", "original") == (0.0, 0.0)
    assert recipe_exponents(get_recipe("sp"), "muon", "match_rms_adamw") == (0.0, 0.0)
    assert recipe_exponents(get_recipe("robust", muon_wd_exponent=1.0), "muon", "original") == (0.0, 1.0)
    assert recipe_exponents(robust, "adamw") == (1.0, 0.5)
    custom = get_recipe("robust", muon_lr_exponent=0.3)
    assert recipe_exponents(custom, "muon", "match_rms_adamw") == custom.exponents("muon", "match_rms_adamw")
    # Muon, match_rms_adamw under robust: measured p = 0.1 -> alpha = 0.1 + (0.5 + 0.5)/2 = 0.6 -> e_wd* = 0.7
    alpha = intrinsic_exponent(0.1, *recipe_exponents(robust, "muon", "match_rms_adamw"))
    assert alpha == pytest.approx(0.6)
    assert invariant_wd_exponent(alpha, 0.5) == pytest.approx(0.7)


def test_fit_recovers_a_power_law():
    widths = [32, 64, 128, 256]
    fit = fit_width_exponent(widths, [3.0 * w**0.37 for w in widths])
    assert fit.exponent == pytest.approx(0.37)
    assert math.exp(fit.intercept) == pytest.approx(3.0)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.residual_std == pytest.approx(0.0, abs=1e-9)
    assert fit.n == 4
    assert fit.predict(512) == pytest.approx(3.0 * 512**0.37)
    noisy = fit_width_exponent(widths + widths, [w**-0.5 * f for w in widths for f in (1.05,)]
                               + [w**-0.5 / 1.05 for w in widths])
    assert noisy.exponent == pytest.approx(-0.5)
    assert noisy.residual_std == pytest.approx(math.log(1.05) * math.sqrt(8 / 6))
    flat = fit_width_exponent([1, 2, 4], [2.0, 2.0, 2.0])
    assert (flat.exponent, flat.r2) == (pytest.approx(0.0), 1.0)


def test_fit_needs_three_widths_with_positive_values():
    with pytest.raises(SweepError, match=">= 3 distinct widths, got 2 \\(32, 64\\)"):
        fit_width_exponent([32, 64, 64], [1.0, 2.0, 2.1])
    with pytest.raises(SweepError, match="got 2 .*1 missing or non-positive"):
        fit_width_exponent([32, 64, 128], [1.0, 2.0, float("nan")])
    with pytest.raises(ValueError, match="3 widths but 2 values"):
        fit_width_exponent([32, 64, 128], [1.0, 2.0])


def _rows(p: float = 0.25, recipe: str = "mup", optimizer: str = "adamw", widths=(16, 32, 64, 128),
          seeds=(0, 1), layer_p: dict[str, float] | None = None, metric_keys=("sigma_max", "sigma_max")):
    """Completed rows whose metric grows as ``width^p`` (per layer type ``layer_p``), seeds 5% apart."""
    base = load_config("tiny", ["model.kv_heads=2", f"scaling.recipe={recipe}", f"optim.name={optimizer}"])
    layer_p = layer_p or dict.fromkeys(LAYERS, p)
    rows = []
    for w in widths:
        config = at_width(base, w)
        for s in seeds:
            f = 1.05 if s % 2 else 1 / 1.05
            cfg = apply_overrides(config, {"train.seed": s}).to_dict()
            rows.append({
                "run_id": f"{w:04d}{s:08d}", "status": "completed", "width": w, "base_width": 16, "seed": s,
                "recipe": recipe, "optimizer": optimizer, "multipliers": "row_col", "lr": 0.01, "weight_decay": 0.1,
                metric_keys[0]: 2.0 * w**p * f, "config": cfg,
                "layer_types": {t: {metric_keys[1]: 1.5 * w**q * f, "rms": 0.1} for t, q in layer_p.items()},
            })
    return rows


def test_calibrate_recovers_a_planted_exponent():
    rows = _rows(p=0.25, layer_p={"attn.q_proj": 0.25, "attn.o_proj": 0.15, "mlp.down_proj": 0.35})
    rows.append({**rows[0], "status": "diverged", "sigma_max": 1e9})  # ignored
    cal = calibrate_rows(rows)
    assert cal.widths == [16, 32, 64, 128]
    assert cal.seeds == {16: 2, 32: 2, 64: 2, 128: 2}
    assert (cal.lr_exponent, cal.wd_exponent) == (1.0, 0.0)
    assert cal.pooled.fit.exponent == pytest.approx(0.25)
    assert cal.alpha == pytest.approx(0.75)
    assert cal.derived_exponent == 0.5
    assert cal.layers["attn.o_proj"].alpha == pytest.approx(0.65)
    assert cal.layers["mlp.down_proj"].wd_exponent == pytest.approx(0.7)
    assert cal.recipe.name == "calibrated-mup"
    assert cal.recipe.wd_exponent == 0.5
    assert cal.recipe.lr_exponent == 1.0 and cal.recipe.attention_scale == "mup"
    assert cal.exponent_field == "wd_exponent"
    assert "2510.15262" in cal.note
    json.dumps(cal.to_dict())


def test_calibrate_robust_run_keeps_robust_and_gain_metric():
    cal = calibrate_rows(_rows(p=0.0, recipe="robust", metric_keys=("gain", "sublayer_gain")), metric="gain")
    assert cal.alpha == pytest.approx(0.75)
    assert cal.derived_exponent == 0.5
    assert set(cal.layers) == set(LAYERS)


def test_calibrate_muon_writes_the_muon_exponent():
    cal = calibrate_rows(_rows(p=0.1, recipe="robust", optimizer="muon"))
    assert (cal.lr_exponent, cal.wd_exponent) == (0.5, 0.5)  # match_rms_adamw, the config default
    assert cal.alpha == pytest.approx(0.6)
    assert cal.exponent_field == "muon_wd_exponent"
    assert (cal.recipe.muon_wd_exponent, cal.recipe.muon_lr_exponent) == (0.7, 0.5)
    assert cal.recipe.wd_exponent == 0.5  # AdamW's (vector-like parameters are not hidden; unchanged)


def test_calibrate_rejects_bad_rows():
    with pytest.raises(SweepError, match="at >= 3 widths.*16, 32"):
        calibrate_rows(_rows(widths=(16, 32)))
    with pytest.raises(SweepError, match="recipes mup, robust"):
        calibrate_rows(_rows(recipe="mup") + _rows(recipe="robust"))
    mixed = _rows()
    mixed[0]["config"]["optim"]["lr"] = 0.003
    with pytest.raises(SweepError, match="differ only in width and seed; optim.lr"):
        calibrate_rows(mixed)
    with pytest.raises(SweepError, match="none completed"):
        calibrate_rows([{**r, "status": "failed"} for r in _rows()])
    with pytest.raises(SweepError, match="metric 'rms'"):
        calibrate_rows(_rows(), metric="rms")
    no_diag = [{**r, "sigma_max": None, "layer_types": {}} for r in _rows()]
    with pytest.raises(SweepError, match="sigma_max at >= 3 widths.*none"):
        calibrate_rows(no_diag)


def test_write_calibration_loads_as_a_recipe(tmp_path):
    cal = calibrate_rows(_rows(p=0.25, recipe="mup"))
    paths = write_calibration(cal, tmp_path / "cal")
    assert {p.name for p in paths.values()} == {"recipe.yaml", "calibration.json", "calibration.png"}
    assert all(p.stat().st_size > 0 for p in paths.values())
    data = yaml.safe_load(paths["recipe"].read_text())
    assert data["calibration"]["derived_exponent"] == 0.5
    assert data["calibration"]["alpha"] == pytest.approx(0.75)
    assert set(data["calibration"]["layers"]) == set(LAYERS)
    config = load_config("tiny", [f"scaling.recipe={paths['recipe']}"])
    recipe = load_recipe(config)
    assert recipe == cal.recipe
    assert (recipe.name, recipe.wd_exponent, recipe.lr_exponent) == ("calibrated-mup", 0.5, 1.0)
    assert json.loads(paths["json"].read_text())["derived_exponent"] == 0.5
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_relaxation_times_use_the_hidden_exponents_the_optimizer_resolves():
    from widthwise.app.calibrate import relaxation_times

    config = load_config("tiny", ["model.kv_heads=2", "scaling.base_width=32", "optim.lr=0.01",
                                  "optim.weight_decay=1.0", "train.steps=500", "schedule.warmup=50"])
    # robust AdamW at 4x the base: lr 0.01/4, wd 1.0*2 over 500 - 50/2 steps
    assert relaxation_times(config, 128) == pytest.approx(475 * 0.01 / 4 * 2.0)
    assert relaxation_times(config, 32) == pytest.approx(475 * 0.01)
    # Muon with match_rms_adamw: hidden lr ~ m^-0.5, wd ~ m^0.5 (Recipe.exponents), so lr*wd is width-free
    muon = apply_overrides(config, {"optim.name": "muon"})
    assert relaxation_times(muon, 128) == pytest.approx(475 * 0.01)

"""widthwise calibrate: the exponent rules, power-law fits, calibration of sweep rows and the written recipe."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from widthwise import get_recipe
from widthwise.app.analysis.calibration import (
    calibrate_rows,
    derived_wd_exponent,
    fit_lr_wd_exponents,
    fit_width_exponent,
    intrinsic_exponent,
    invariant_wd_exponent,
    pool_estimates,
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
          seeds=(0, 1), layer_p: dict[str, float] | None = None, metric_keys=("sigma_max", "sigma_max_stored"),
          effective_p: dict[str, float] | None = None):
    """Completed rows whose metric grows as ``width^p`` (per layer type ``layer_p``), seeds 5% apart; with
    ``effective_p`` the effective sigma_max grows as ``width^q`` (the stored V's as ``layer_p``)."""
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
                "layer_types": {t: {metric_keys[1]: 1.5 * w**q * f, "rms": 0.1,
                                    **({"sigma_max": 0.7 * w**effective_p[t] * f} if effective_p else {})}
                                for t, q in layer_p.items()},
            })
    return rows


def _premise_rows(a: float = 0.5, b: float = 0.5, layer_ab: dict[str, tuple[float, float]] | None = None,
                  width: int = 16, key: str = "sigma_max_stored", noise: dict | None = None, **kw):
    """Completed runs at one width, lr x {1, 2}, wd x {1, 2} (base 0.01, 0.1), metric ~ lr^a wd^-b per layer type."""
    base = _rows(widths=(width,), seeds=(0,), **kw)[0]
    layer_ab = layer_ab or dict.fromkeys(LAYERS, (a, b))
    rows = []
    for lr in (0.01, 0.02):
        for wd in (0.1, 0.2):
            cfg = json.loads(json.dumps(base["config"]))
            cfg["optim"].update(lr=lr, weight_decay=wd)
            f = (noise or {}).get((lr, wd), 1.0)
            rows.append({**base, "run_id": f"p{lr}{wd}", "lr": lr, "weight_decay": wd, "config": cfg,
                         "layer_types": {t: {key: 3.0 * lr**ta * wd**-tb * f} for t, (ta, tb) in layer_ab.items()}})
    return rows


def test_derived_wd_exponent_hand_values():
    # a = b = 1/2 is today's rule e_wd* = e_wd + 2p = 2 alpha - e_lr
    for p, e_lr, e_wd in ((0.25, 1.0, 0.0), (0.0, 1.0, 0.5), (0.1, 0.5, 0.5), (-0.2, 0.0, 1.0)):
        value, se = derived_wd_exponent(p, e_wd, 0.5)
        assert value == pytest.approx(e_wd + 2 * p) and se == 0
        assert value == pytest.approx(2 * intrinsic_exponent(p, e_lr, e_wd) - e_lr)
    # measured b = 0.4: e_wd* = 0.5 + 0.1/0.4 = 0.75; se = hypot(0.02/0.4, 0.1*0.05/0.16) = hypot(0.05, 0.03125)
    value, se = derived_wd_exponent(0.1, 0.5, 0.4, p_se=0.02, b_se=0.05)
    assert value == pytest.approx(0.75)
    assert se == pytest.approx(math.sqrt(0.05**2 + 0.03125**2))
    # consistency with alpha: a = 0.3, b = 0.4, e_lr = 1, e_wd = 0.5, p = 0.1 -> alpha = 0.1 + 0.3 + 0.2 = 0.6,
    # and (alpha - a e_lr)/b = (0.6 - 0.3)/0.4 = 0.75, the same e_wd*: a drops out
    alpha = intrinsic_exponent(0.1, 1.0, 0.5, a=0.3, b=0.4)
    assert alpha == pytest.approx(0.6)
    assert invariant_wd_exponent(alpha, 1.0, a=0.3, b=0.4) == pytest.approx(0.75)
    with pytest.raises(SweepError, match="b = -0.1 .* not positive"):
        derived_wd_exponent(0.1, 0.5, -0.1)


def test_lr_wd_fit_recovers_planted_exponents():
    lrs, wds = [0.01, 0.02, 0.01, 0.02], [0.1, 0.1, 0.2, 0.2]
    fit = fit_lr_wd_exponents(lrs, wds, [3.0 * lr**0.5 * wd**-0.4 for lr, wd in zip(lrs, wds, strict=True)])
    assert abs(fit.a - 0.5) < 1e-9 and abs(fit.b - 0.4) < 1e-9
    assert abs(math.exp(fit.intercept) - 3.0) < 1e-9
    assert fit.residual_std < 1e-9 and fit.a_se < 1e-9 and fit.n == 4
    # one point off by 1.1: the interaction residual; in a 2x2 design each residual is +-log(1.1)/4,
    # so residual_std = sqrt(4 (log 1.1 / 4)^2 / 1) = log(1.1)/2, and se(a) = se(b) = s / log 2
    values = [3.0 * lr**0.5 * wd**-0.4 for lr, wd in zip(lrs, wds, strict=True)]
    values[3] *= 1.1
    noisy = fit_lr_wd_exponents(lrs, wds, values)
    assert noisy.a == pytest.approx(0.5 + math.log(1.1) / 2 / math.log(2))
    assert noisy.b == pytest.approx(0.4 - math.log(1.1) / 2 / math.log(2))
    assert noisy.residual_std == pytest.approx(math.log(1.1) / 2)
    assert noisy.a_se == pytest.approx(math.log(1.1) / 2 / math.log(2))
    assert noisy.b_se == pytest.approx(noisy.a_se)
    with pytest.raises(SweepError, match="vary LR and WD independently"):
        fit_lr_wd_exponents([0.01, 0.02, 0.04], [0.1, 0.2, 0.4], [1.0, 2.0, 3.0])


def test_pooling_is_inverse_variance_weighted_with_the_birge_ratio():
    # weights 1/0.1^2 = 100 and 1/0.05^2 = 400: mean (100*0.1 + 400*0.3)/500 = 0.26;
    # chi2 = 100*0.16^2 + 400*0.04^2 = 3.2 over 1 dof, se = sqrt(3.2)/sqrt(500) = 0.08
    pooled = pool_estimates({"x": 0.1, "y": 0.3}, {"x": 0.1, "y": 0.05})
    assert pooled.value == pytest.approx(0.26)
    assert pooled.weights == pytest.approx({"x": 0.2, "y": 0.8})
    assert pooled.birge == pytest.approx(math.sqrt(3.2))
    assert pooled.se == pytest.approx(0.08)
    # agreeing estimates: the error is the inverse-variance one, 1/sqrt(500); an exact fit is floored at 0.01
    assert pool_estimates({"x": 0.2, "y": 0.2}, {"x": 0.1, "y": 0.05}).se == pytest.approx(1 / math.sqrt(500))
    assert pool_estimates({"x": 0.2, "y": 0.4}, {"x": 0.0, "y": 0.01}).weights == pytest.approx({"x": 0.5, "y": 0.5})


#: mup's AdamW exponents, whatever the preset's WD exponent is (the expectations below follow it)
E_LR, E_WD = recipe_exponents(get_recipe("mup"), "adamw")


def test_calibrate_recovers_a_planted_exponent():
    rows = _rows(p=0.25, layer_p={"attn.q_proj": 0.25, "attn.o_proj": 0.15, "mlp.down_proj": 0.35})
    rows.append({**rows[0], "status": "diverged", "sigma_max": 1e9})  # ignored
    cal = calibrate_rows(rows)
    assert cal.widths == [16, 32, 64, 128]
    assert cal.seeds == {16: 2, 32: 2, 64: 2, 128: 2}
    assert (cal.lr_exponent, cal.wd_exponent) == (E_LR, E_WD)
    # exact fits: every layer type's se is floored alike, so the weights are equal and the pooled p the mean
    assert cal.pooled.fit.exponent == pytest.approx(0.25)
    assert {t: c.weight for t, c in cal.layers.items()} == pytest.approx(dict.fromkeys(LAYERS, 1 / 3))
    assert cal.alpha == pytest.approx(0.25 + (E_LR + E_WD) / 2)
    assert cal.derived_exponent == round(E_WD + 0.5, 3)
    assert cal.layers["attn.o_proj"].alpha == pytest.approx(0.15 + (E_LR + E_WD) / 2)
    assert cal.layers["mlp.down_proj"].wd_exponent == pytest.approx(E_WD + 0.7)
    assert cal.recipe.name == "calibrated-mup"
    assert cal.recipe.wd_exponent == cal.derived_exponent
    assert cal.recipe.lr_exponent == 1.0 and cal.recipe.attention_scale == "mup"
    assert cal.exponent_field == "wd_exponent" and cal.weights == "stored"
    assert not cal.premise.measured and (cal.premise.pooled.a, cal.premise.pooled.b) == (0.5, 0.5)
    assert any("assumed" in w for w in cal.warnings)
    assert "2510.15262" in cal.note and "stored V" in cal.note
    json.dumps(cal.to_dict(), allow_nan=False)


def test_pooling_weights_the_layer_types_by_their_fits_errors():
    rows = _rows(p=0.2, layer_p={"attn.q_proj": 0.1, "attn.o_proj": 0.3, "mlp.down_proj": 0.2}, seeds=(0,))
    for r in rows:  # q_proj scatters around its power law: a larger standard error, a smaller weight
        r["layer_types"]["attn.q_proj"]["sigma_max_stored"] *= 1.2 if r["width"] in (16, 64) else 1 / 1.2
    cal = calibrate_rows(rows)
    fits = {t: c.fit for t, c in cal.layers.items()}
    w = {t: 1 / max(f.exponent_se, 0.01) ** 2 for t, f in fits.items()}
    mean = sum(w[t] * fits[t].exponent for t in w) / sum(w.values())
    assert fits["attn.q_proj"].exponent_se > 0.05 and cal.layers["attn.q_proj"].weight < 0.01
    assert cal.pooled.fit.exponent == pytest.approx(mean)
    assert cal.pooled.fit.exponent == pytest.approx(0.25, abs=0.01)  # not the plain mean, ~0.2
    # the pooled values are the weighted geometric mean per width: their own slope is the pooled exponent
    assert fit_width_exponent(cal.widths, cal.pooled.values).exponent == pytest.approx(mean)


def test_calibrate_fits_the_stored_or_the_effective_weights_as_asked():
    stored_p = {"attn.q_proj": 0.3, "attn.o_proj": 0.2, "mlp.down_proj": 0.4}
    effective_p = {"attn.q_proj": 0.0, "attn.o_proj": 0.1, "mlp.down_proj": -0.1}
    rows = _rows(layer_p=stored_p, effective_p=effective_p)
    stored, effective = calibrate_rows(rows), calibrate_rows(rows, weights="effective")
    assert stored.weights == "stored" and effective.weights == "effective"
    assert stored.layers["mlp.down_proj"].fit.exponent == pytest.approx(0.4)
    assert effective.layers["mlp.down_proj"].fit.exponent == pytest.approx(-0.1)
    assert stored.pooled.fit.exponent == pytest.approx(0.3) and effective.pooled.fit.exponent == pytest.approx(0.0)
    assert stored.derived_exponent == round(E_WD + 0.6, 3) and effective.derived_exponent == round(E_WD, 3)
    assert stored.to_dict()["weights"] == "stored" and "of the stored V" in stored.note
    assert "effective diag(r) V diag(c)" in effective.note
    with pytest.raises(SweepError, match="sublayer_gain at >= 3 widths"):
        calibrate_rows(rows, metric="gain")  # the gain is the effective layer's: not in these rows
    with pytest.raises(SweepError, match="effective weights only, not stored"):
        calibrate_rows(rows, metric="gain", weights="stored")
    with pytest.raises(SweepError, match="sigma_max_stored at >= 3 widths.*weights effective"):
        calibrate_rows(_rows(metric_keys=("sigma_max", "sigma_max")))  # rows without the stored V's sigma


def test_calibrate_with_a_measured_premise_uses_e_wd_plus_p_over_b():
    layer_ab = {"attn.q_proj": (0.5, 0.4), "attn.o_proj": (0.6, 0.5), "mlp.down_proj": (0.4, 0.25)}
    cal = calibrate_rows(_rows(p=0.1), premise_rows=_premise_rows(layer_ab=layer_ab))
    pre = cal.premise
    assert pre.measured and pre.width == 16 and sorted(pre.points) == [(0.01, 0.1), (0.01, 0.2), (0.02, 0.1),
                                                                       (0.02, 0.2)]
    for t, (a, b) in layer_ab.items():
        assert abs(pre.layers[t].a - a) < 1e-9 and abs(pre.layers[t].b - b) < 1e-9
        assert cal.layers[t].wd_exponent == pytest.approx(E_WD + 0.1 / b)
        assert cal.layers[t].alpha == pytest.approx(0.1 + a * E_LR + b * E_WD)
    # exact fits: equal (floored) weights, pooled a = mean 0.5, b = mean 0.3833; e_wd* = e_wd + 0.1/b
    b = (0.4 + 0.5 + 0.25) / 3
    assert pre.pooled.a == pytest.approx(0.5) and pre.pooled.b == pytest.approx(b)
    assert cal.derived_exponent == round(E_WD + 0.1 / b, 3)
    # uncertainty: se(p) from the pooled width fit, se(b) from the pooled premise (Birge-scaled scatter)
    p_se, b_se = cal.pooled.fit.exponent_se, pre.pooled.b_se
    assert b_se == pytest.approx(math.sqrt(sum((x - b) ** 2 for x in (0.4, 0.5, 0.25)) / 2) / math.sqrt(3))
    assert cal.derived_exponent_se == pytest.approx(math.hypot(p_se / b, 0.1 * b_se / b**2))
    assert "assumed" not in " ".join(cal.warnings) and "e_wd + p/b" in cal.note
    data = cal.to_dict()
    assert data["premise"]["measured"] and data["premise"]["pooled"]["b"] == pytest.approx(b)
    json.dumps(data, allow_nan=False)


def test_premise_runs_must_be_the_same_experiment_and_lower_the_metric():
    rows = _rows(p=0.1)
    with pytest.raises(SweepError, match="not positive"):
        calibrate_rows(rows, premise_rows=_premise_rows(b=-0.2))
    other = _premise_rows()
    for r in other:
        r["config"]["train"]["steps"] = 7
    with pytest.raises(SweepError, match="differ only in width, LR, WD and seed; train.steps"):
        calibrate_rows(rows, premise_rows=other)
    with pytest.raises(SweepError, match="none completed"):
        calibrate_rows(rows, premise_rows=[{**r, "status": "failed"} for r in _premise_rows()])


def test_calibrate_robust_run_keeps_robust_and_gain_metric():
    cal = calibrate_rows(_rows(p=0.0, recipe="robust", metric_keys=("gain", "sublayer_gain")), metric="gain")
    assert cal.alpha == pytest.approx(0.75)
    assert cal.derived_exponent == 0.5 and cal.weights == "effective"
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
    with pytest.raises(SweepError, match="weights 'both'"):
        calibrate_rows(_rows(), weights="both")
    no_diag = [{**r, "sigma_max": None, "layer_types": {}} for r in _rows()]
    with pytest.raises(SweepError, match="sigma_max_stored at >= 3 widths.*none"):
        calibrate_rows(no_diag)


def test_write_calibration_loads_as_a_recipe(tmp_path):
    cal = calibrate_rows(_rows(p=0.25, recipe="mup"), premise_rows=_premise_rows(b=0.4))
    derived = round(E_WD + 0.25 / 0.4, 3)
    paths = write_calibration(cal, tmp_path / "cal")
    assert {p.name for p in paths.values()} == {"recipe.yaml", "calibration.json", "calibration.png"}
    assert all(p.stat().st_size > 0 for p in paths.values())
    text = paths["recipe"].read_text()
    assert "from sigma_max of the stored V" in text.splitlines()[0]
    data = yaml.safe_load(text)
    assert data["calibration"]["derived_exponent"] == derived and data["calibration"]["weights"] == "stored"
    assert data["calibration"]["premise"]["measured"] and data["calibration"]["premise"]["b"] == pytest.approx(0.4)
    assert data["calibration"]["alpha"] == pytest.approx(0.25 + 0.5 * E_LR + 0.4 * E_WD)
    assert set(data["calibration"]["layers"]) == set(LAYERS)
    config = load_config("tiny", [f"scaling.recipe={paths['recipe']}"])
    recipe = load_recipe(config)
    assert recipe == cal.recipe
    assert (recipe.name, recipe.wd_exponent, recipe.lr_exponent) == ("calibrated-mup", derived, 1.0)
    saved = json.loads(paths["json"].read_text())
    assert saved["derived_exponent"] == derived and saved["weights"] == "stored"
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


def test_the_results_row_carries_the_stored_v_sigma_per_layer_type():
    from widthwise.app.sweep.worker import diagnostics_summary

    record = {"matrices": {
        "blocks.0.mlp.up_proj.weight": {"sigma_max": 4.0, "sigma_max_stored": 2.0},
        "blocks.1.mlp.up_proj.weight": {"sigma_max": 6.0, "sigma_max_stored": 4.0},
        "blocks.0.attn.q_proj.weight": {"sigma_max": 5.0},  # no multipliers: the stored V is the applied matrix
        "head.weight": {"sigma_max": 9.0}}}
    types = diagnostics_summary([record])["layer_types"]
    assert types["mlp.up_proj"]["sigma_max"] == 5.0 and types["mlp.up_proj"]["sigma_max_stored"] == 3.0
    assert types["attn.q_proj"]["sigma_max_stored"] == 5.0

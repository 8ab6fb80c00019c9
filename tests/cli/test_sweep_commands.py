"""`widthwise analyze`, `transfer` and `calibrate` end to end on real tiny sweeps (results.db, run directories)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from widthwise.app.config import load_config
from widthwise.app.setup import load_recipe, plan_for
from widthwise.app.sweep.store import read_results
from widthwise.cli import main

from sweep_helpers import QUIET

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread")

SETTINGS = {**QUIET, "train.steps": 16, "train.checkpoint_every": 8, "train.eval_every": 8, "diagnostics.every": 8}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("swept")
    sweep = root / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "tiny", "grid": {"model.width": [32, 64], "optim.lr": [0.003, 0.01, 0.03],
                                                              "optim.weight_decay": [0.1, 0.4]}, "set": SETTINGS}))
    assert main(["sweep", str(sweep), "--out", str(root / "out"), "--quiet", "--workers", "2", "--threads", "1"]) == 0
    return root / "out"


def test_analyze_writes_optima_report_and_plots_from_a_real_sweep(sweep_dir, capsys):
    assert main(["analyze", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    optima = json.loads((sweep_dir / "optima.json").read_text())
    (fam,) = optima["families"]
    assert fam["label"] == "recipe=robust optimizer=adamw multipliers=row_col" and fam["label"] in out
    assert fam["widths"] == [32, 64] and fam["lr_grid"] == [0.003, 0.01, 0.03] and fam["wd_grid"] == [0.1, 0.4]
    rows = read_results(sweep_dir)
    for width in (32, 64):
        entry = fam["per_width"][str(width)]
        assert entry["runs"] == 6 and entry["completed"] == 6
        best = min((r for r in rows if r["width"] == width), key=lambda r: r["val_loss"])
        assert (entry["best"]["lr"], entry["best"]["weight_decay"]) == (best["lr"], best["weight_decay"])
        assert entry["best"]["val_loss"] == best["val_loss"] and entry["best"]["run_id"] == best["run_id"]
        assert (sweep_dir / entry["best"]["run_dir"] / "config.yaml").is_file()
        assert 0.003 <= entry["fit"]["lr"] <= 0.03 and len(entry["ridge"]) == 2
        assert entry["sigma_max"] == best["sigma_max"] and entry["gain"] == best["gain"]
    # WD grid of two values: its optimum is on an edge at every width, so the verdict cannot be "transfers"
    assert fam["verdict"] == "inconclusive" and fam["summary"] in out and "extend the WD grid" in out
    report = (sweep_dir / "report.md").read_text()
    for name in ("heatmaps", "loss_vs_lr", "optimum_vs_width", "sigma_gain_vs_width"):
        assert (sweep_dir / "plots" / f"{name}.png").stat().st_size > 10_000
        assert f"(plots/{name}.png)" in report
    assert f"**{fam['verdict']}**" in report and "Regret at width 64" in report


def test_transfer_writes_a_trainable_config_at_the_target_width(sweep_dir, tmp_path, capsys):
    if not (sweep_dir / "optima.json").is_file():
        assert main(["analyze", str(sweep_dir), "--no-plots"]) == 0
    optima = json.loads((sweep_dir / "optima.json").read_text())
    fit = optima["families"][0]["per_width"]["64"]["fit"]
    target = tmp_path / "wide.yaml"
    assert main(["transfer", str(sweep_dir), "--width", "256", "--out", str(target)]) == 0
    out = capsys.readouterr().out
    config = load_config(target)
    assert (config.model.width, config.model.heads, config.scaling.base_width) == (256, 16, 32)
    assert (config.optim.lr, config.optim.weight_decay) == (fit["lr"], fit["weight_decay"])
    assert config.train.steps == 16 and config.scaling.recipe == "robust"
    assert "plan at width 256" in out and "blocks.0.mlp.up_proj.weight" in out
    # robust at 8x the base width: hidden LR / 8, WD x sqrt(8), in the plan and as the absolute values shown
    up = plan_for(config, config.data.vocab_size).params["blocks.0.mlp.up_proj.weight"]  # (any vocab: a hidden matrix)
    lr, wd = up.lr(config.optim.lr, config.optim.muon_lr), up.weight_decay(config.optim.weight_decay)
    assert lr == pytest.approx(fit["lr"] / 8, rel=1e-12) and wd == pytest.approx(fit["weight_decay"] * 8 ** 0.5)
    row = next(line for line in out.splitlines() if line.startswith("blocks.0.mlp.up_proj.weight "))
    shown = [float(cell) for cell in row.split()[-3:]]  # the table's last columns: lr, wd, lr*wd
    assert shown == pytest.approx([lr, wd, lr * wd], rel=1e-3)  # printed to 4 significant digits
    assert main(["transfer", str(sweep_dir), "--width", "256", "--out", str(target)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["transfer", str(sweep_dir), "--width", "40", "--out", str(tmp_path / "b.yaml")]) == 2
    assert "not a positive multiple of the head dim 16" in capsys.readouterr().err
    assert main(["transfer", str(tmp_path), "--width", "256", "--out", str(tmp_path / "c.yaml")]) == 2
    assert "widthwise analyze" in capsys.readouterr().err
    assert not (tmp_path / "b.yaml").exists() and not (tmp_path / "c.yaml").exists()


@pytest.mark.slow
def test_calibrate_fits_the_exponent_and_writes_a_recipe_the_trainer_accepts(tmp_path, capsys):
    out = tmp_path / "cal"
    argv = ["calibrate", "--widths", "32,64,128", "--steps", "24", "--out", str(out), "--quiet", "--workers", "2",
            "--threads", "1", "--set", "optim.weight_decay=2.5", "--set", "optim.lr=0.03",
            "--set", "diagnostics.every=12"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "relaxation times covered" in text and "premise runs at width 32: lr 0.03, 0.06 x wd 2.5, 5" in text
    assert "fitted: sigma_max of the stored V (stored weights)" in text
    assert "a = " in text and "b = " in text and "width exponent p = " in text
    assert "wd_exponent = e_wd + p/b = " in text and " ± " in text
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["widths"] == [32, 64, 128] and cal["metric"] == "sigma_max" and cal["weights"] == "stored"
    assert set(cal["layers"]) >= {"attn.q_proj", "mlp.down_proj"}
    rows = read_results(out)
    assert sorted(r["width"] for r in rows) == [32, 64, 128] and {r["status"] for r in rows} == {"completed"}
    assert {r["config"]["schedule"]["kind"] for r in rows} == {"constant"}
    assert all(v["sigma_max_stored"] > 0 for r in rows for v in r["layer_types"].values())
    premise = read_results(out / "premise")
    assert {(r["width"], r["config"]["optim"]["lr"], r["config"]["optim"]["weight_decay"]) for r in premise} == {
        (32, lr, wd) for lr in (0.03, 0.06) for wd in (2.5, 5.0)}
    # the derivation: e_wd* = e_wd + p/b, with p and b the pooled measured exponents (robust: e_wd = 0.5)
    p, b = cal["pooled"]["fit"]["exponent"], cal["premise"]["pooled"]["b"]
    assert cal["premise"]["measured"] and cal["derived_exponent_se"] > 0
    assert cal["derived_exponent"] == pytest.approx(round(0.5 + p / b, 3), abs=1e-3)
    recipe_file = out / "recipe.yaml"
    recipe = load_recipe(load_config("tiny", [f"scaling.recipe={recipe_file}"]))
    assert recipe.wd_exponent == cal["derived_exponent"] and recipe.lr_exponent == 1.0
    assert (out / "calibration.png").stat().st_size > 10_000
    assert main(argv) == 0  # a rerun resumes the finished sweeps and refits
    err = capsys.readouterr().err
    assert "3 already done, 0 to run" in err and "4 already done, 0 to run" in err
    assert main([*argv, "--weights", "effective", "--premise", "assumed"]) == 0  # no new runs: the effective W
    text = capsys.readouterr().out
    assert "effective diag(r) V diag(c) (effective weights)" in text and "premise (assumed)" in text
    effective = json.loads((out / "calibration.json").read_text())
    assert effective["weights"] == "effective" and not effective["premise"]["measured"]
    assert effective["pooled"]["fit"]["exponent"] != pytest.approx(p)  # multipliers: another matrix, another slope
    assert main(["calibrate", "--metric", "gain", "--weights", "stored", "--out", str(tmp_path / "y")]) == 2
    assert "--weights: calibration metric gain" in capsys.readouterr().err
    assert main(["calibrate", "--widths", "32,64", "--out", str(tmp_path / "x")]) == 2
    assert "need at least 3 different widths" in capsys.readouterr().err

"""widthwise transfer on a hand-built sweep directory: run configs under runs/ and an optima.json."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from widthwise.app.config import load_config
from widthwise.app.rundir import RunDir
from widthwise.app.setup import at_width, build, load_recipe, model_configs, resolved_config
from widthwise.app.transfer import transfer_config, write_transfer
from widthwise.errors import ConfigError, SweepError

FIT = {"lr": 0.004, "weight_decay": 0.1}  # base values of every family's fit; best points differ from them
FAMILIES = [("robust", "adamw", "transfers"), ("mup", "adamw", "drifts"), ("robust", "muon", "transfers")]
VERSION = 2


def _write_run(run_dir, recipe: str, optimizer: str, width: int, *overrides: str) -> None:
    """A run's config.yaml as the trainer writes it (through RunDir, with what the run resolved), no training."""
    base = load_config("tiny", ["model.kv_heads=2", f"scaling.recipe={recipe}", f"optim.name={optimizer}",
                                "optim.lr=0.003", "optim.weight_decay=0.2", "train.seed=3", *overrides])
    config = at_width(base, width)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        built = build(config, 512, torch.device("meta"))
    RunDir(run_dir).write_config(config, resolved_config(built, {"runtime": {"device": "cpu"}}), built.plan, "plan")


def _to_legacy(run_dir) -> None:
    """Rewrite a run's config.yaml in the earlier layout: resolved model/scaling values in the user's fields."""
    data = yaml.safe_load((run_dir / "config.yaml").read_text())
    for section in ("model", "scaling"):
        data[section].update(data["resolved"].pop(section))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _family(sweep_dir, recipe: str, optimizer: str, verdict: str, widths=(16, 32)) -> dict:
    per_width = {}
    for w in widths:
        name = f"w{w}-{recipe}-{optimizer}"
        _write_run(sweep_dir / "runs" / name, recipe, optimizer, w)
        best = {"lr": 0.003, "weight_decay": 0.2, "val_loss": 5.0, "run_id": f"{w:012d}", "run_dir": f"runs/{name}"}
        per_width[str(w)] = {"best": best, "fit": {**FIT, "val_loss": 4.9, "method": "quadratic", "at_edge": w == 16},
                             "ridge": [], "runs": 9, "completed": 9, "diverged": 0, "failed": 0,
                             "sigma_max": 2.0, "gain": 1.5}
    label = f"recipe={recipe} optimizer={optimizer} multipliers=row_col"
    return {"label": label, "params": {"scaling.recipe": recipe, "optim.name": optimizer}, "recipe": recipe,
            "optimizer": optimizer, "multipliers": "row_col", "base_width": 16, "lr_grid": [0.001, 0.003, 0.01],
            "wd_grid": [0.05, 0.1, 0.2], "widths": list(widths), "per_width": per_width,
            "verdict": verdict, "reasons": ["an optimum on the grid edge"] if verdict == "inconclusive" else [],
            "summary": f"the optimum {'moves' if verdict == 'drifts' else 'stays'} with width",
            "slopes": {"lr": {"slope": 0.3 if verdict == "drifts" else 0.0, "ci": [0.2, 0.4]}, "wd": None},
            "regret": {"width": widths[-1], "best_val_loss": 5.0, "best_seed_std": None,
                       "from": [{"width": w, "lr": 0.003, "weight_decay": 0.2, "status": "ok", "val_loss": 5.02,
                                 "regret": 0.02, "seed_std": 0.004} for w in widths[:-1]]},
            "warnings": []}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    families = [_family(root, *f) for f in FAMILIES]
    (root / "optima.json").write_text(json.dumps({"version": VERSION, "families": families}))
    return root


def _row(table: str, name: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if line.startswith(name + " "))


def test_robust_transfer_to_4x_base_width(sweep_dir, tmp_path):
    t = transfer_config(sweep_dir, 64, recipe="robust", optimizer="adamw")
    assert (t.family, t.from_width, t.lr, t.weight_decay) == (
        "recipe=robust optimizer=adamw multipliers=row_col", 32, 0.004, 0.1)
    assert (t.verdict, t.warnings) == ("transfers", [])
    c = t.config
    assert (c.model.width, c.model.heads, c.model.kv_heads, c.scaling.base_width) == (64, 4, 4, 16)
    assert (c.optim.lr, c.optim.weight_decay, c.train.seed) == (0.004, 0.1, 3)
    assert c.model.head_multiplier is None and c.model.attention_scale is None  # resolved at 32, released
    q = _row(t.plan_table, "blocks.0.attn.q_proj.weight")  # ... lr wd lr*wd: base lr / 4, base wd * 2
    assert q[1] == "hidden" and q[-3:-1] == ["0.001", "0.2"]
    assert _row(t.plan_table, "embed.weight")[-3:-1] == ["0.004", "0"]  # vector-like: lr kept, no decay
    groups = [line.split() for line in t.plan_table.splitlines() if line.startswith("adamw ")]
    assert ["hidden", "14", "4", "0.001", "0.2"] in [g[1:6] for g in groups]  # peak LR, not warmup's first step

    out = write_transfer(t, tmp_path / "target.yaml")
    text = out.read_text()
    assert text.startswith("# widthwise transfer: train config for width 64\n")
    assert "# from width 32" in text and "# verdict: transfers" in text and str(sweep_dir.resolve()) in text
    loaded = load_config(out)
    assert loaded == c
    assert (loaded.model.width, loaded.optim.lr, loaded.optim.weight_decay, loaded.scaling.base_width) == (
        64, 0.004, 0.1, 16)
    model_cfg, _ = model_configs(loaded, 512, load_recipe(loaded))
    assert model_cfg.head_multiplier == 0.25  # 1/m at the new width, not the 0.5 the width-32 run resolved


def test_write_refuses_to_overwrite(sweep_dir, tmp_path):
    t = transfer_config(sweep_dir, 64, recipe="robust", optimizer="adamw")
    out = tmp_path / "target.yaml"
    out.write_text("keep me\n")
    with pytest.raises(SweepError, match="exists; pass --force"):
        write_transfer(t, out)
    assert out.read_text() == "keep me\n"
    write_transfer(t, out, force=True)
    assert load_config(out).model.width == 64


def test_muon_family_lists_muon_groups(sweep_dir):
    t = transfer_config(sweep_dir, 128, optimizer="muon")
    assert t.config.optim.name == "muon"
    muon = [line.split() for line in t.plan_table.splitlines() if line.startswith("muon ")]
    # match_rms_adamw at m = 8: lr / sqrt(8), wd * sqrt(8)
    assert muon and muon[0][1] == "hidden" and muon[0][4:6] == [f"{0.004 / 8**0.5:.4g}", f"{0.1 * 8**0.5:.4g}"]


def test_drifting_family_warns_and_from_width(sweep_dir):
    t = transfer_config(sweep_dir, 64, recipe="mup", from_width=16)
    assert t.verdict == "drifts" and t.from_width == 16
    text = " | ".join(t.warnings)
    assert "not the family's widest (32)" in text
    assert "verdict is 'drifts': the optimum moves with width" in text
    assert "width^+0.30" in text and f"x{4**0.3:.3g}" in text
    assert "edge of the grid" in text


def test_inconclusive_family_warns_with_its_reasons_and_the_regret_is_shown(tmp_path, capsys):
    from widthwise.cli import main

    family = _family(tmp_path, "robust", "adamw", "inconclusive")
    family["warnings"] = ["recipe=robust ...: the best run at width 32 (0.2) covered fewer than 1 relaxation time"]
    (tmp_path / "optima.json").write_text(json.dumps({"version": VERSION, "families": [family]}))
    t = transfer_config(tmp_path, 64)  # warned, not refused
    assert t.verdict == "inconclusive" and t.config.optim.lr == 0.004
    assert "the sweep's verdict is 'inconclusive': an optimum on the grid edge" in t.warnings
    assert t.warnings[-1].endswith("covered fewer than 1 relaxation time")
    assert t.regret_lines() == ["regret at width 32 of width 16's optimum (lr 0.003, wd 0.2): +0.0200 (seed std 0.004)"]
    assert main(["transfer", str(tmp_path), "--width", "64", "--out", str(tmp_path / "t.yaml")]) == 0
    captured = capsys.readouterr()
    assert "regret at width 32 of width 16's optimum" in captured.out and "(inconclusive)" in captured.out
    (tmp_path / "optima.json").write_text(json.dumps({"version": 1, "families": [family]}))
    with pytest.raises(SweepError, match="not an optima file of version 2; rerun `widthwise analyze"):
        transfer_config(tmp_path, 64)


def test_family_selection_errors(sweep_dir):
    with pytest.raises(SweepError, match="3 sweep families match: .*pick one with --recipe \\(mup, robust\\), "
                                         "--optimizer \\(adamw, muon\\)"):
        transfer_config(sweep_dir, 64)
    with pytest.raises(SweepError, match="2 sweep families match recipe=robust: .*pick one with --optimizer"):
        transfer_config(sweep_dir, 64, recipe="robust")
    with pytest.raises(SweepError, match="no sweep family matches recipe=sp; the families are: 'recipe=robust"):
        transfer_config(sweep_dir, 64, recipe="sp")
    with pytest.raises(SweepError, match="--from-width 48: .*at widths 16, 32"):
        transfer_config(sweep_dir, 64, recipe="mup", from_width=48)
    t = transfer_config(sweep_dir, 64, family="recipe=robust optimizer=muon multipliers=row_col")
    assert t.config.optim.name == "muon"


def test_missing_optima_and_bad_widths(sweep_dir, tmp_path):
    with pytest.raises(SweepError, match="optima.json: no such file; run `widthwise analyze"):
        transfer_config(tmp_path, 64)
    with pytest.raises(ConfigError, match="--width: 40 is not a positive multiple of the head dim 16"):
        transfer_config(sweep_dir, 40, recipe="mup")
    with pytest.raises(ConfigError, match="--width: 8 is not"):
        transfer_config(sweep_dir, 8, recipe="mup")


def test_config_from_results_when_the_run_dir_is_gone(sweep_dir, tmp_path, monkeypatch):
    from widthwise.app.sweep import store

    optima = json.loads((sweep_dir / "optima.json").read_text())
    family = optima["families"][0]
    best = family["per_width"]["32"]["best"]
    del best["run_dir"]
    (tmp_path / "optima.json").write_text(json.dumps({"version": VERSION, "families": [family]}))
    with pytest.raises(SweepError, match="no run directory \\(none named\\) and its results cannot be read"):
        transfer_config(tmp_path, 64)
    config = yaml.safe_load((sweep_dir / "runs" / "w32-robust-adamw" / "config.yaml").read_text())
    config = {k: v for k, v in config.items() if k not in ("plan", "resolved")}
    monkeypatch.setattr(store, "read_results", lambda d: [{"run_id": best["run_id"], "config": config}])
    t = transfer_config(tmp_path, 64)
    assert (t.config.model.width, t.config.optim.lr, t.config.train.seed) == (64, 0.004, 3)
    monkeypatch.setattr(store, "read_results", lambda d: [])
    with pytest.raises(SweepError, match="nor a row in results.db"):
        transfer_config(tmp_path, 64)


def test_the_runs_config_yaml_keeps_null_forward_multipliers_and_transfer_keeps_them_null(sweep_dir):
    data = yaml.safe_load((sweep_dir / "runs" / "w32-robust-adamw" / "config.yaml").read_text())
    assert [data["model"][k] for k in ("vocab_size", "embedding_multiplier", "head_multiplier", "attention_scale")] \
        == [None, None, None, None] and data["scaling"]["base_width"] == 16
    assert data["resolved"]["model"]["head_multiplier"] == 0.5 and data["resolved"]["model"]["vocab_size"] == 512
    t = transfer_config(sweep_dir, 64, recipe="robust", optimizer="adamw")
    m = t.config.model
    assert (m.vocab_size, m.embedding_multiplier, m.head_multiplier, m.attention_scale) == (None, None, None, None)
    assert not any("model." in w for w in t.warnings)


def _one_family_sweep(root, *overrides: str, legacy: bool = False):
    family = _family(root, "robust", "adamw", "transfers", widths=(32,))
    run_dir = root / "runs" / "w32-robust-adamw"
    _write_run(run_dir, "robust", "adamw", 32, *overrides)
    if legacy:
        _to_legacy(run_dir)
    (root / "optima.json").write_text(json.dumps({"version": VERSION, "families": [family]}))
    return transfer_config(root, 64)


def test_a_forward_multiplier_the_user_set_stays_with_a_warning(tmp_path):
    # 0.5 is what the recipe gives at width 32: set by the user, it is still the user's, not a resolved value
    t = _one_family_sweep(tmp_path, "model.head_multiplier=0.5")
    assert t.config.model.head_multiplier == 0.5 and t.config.model.attention_scale is None
    assert t.warnings == ["model.head_multiplier is set to 0.5 in the run's config; it stays fixed at every width"]


def test_a_run_of_the_earlier_layout_has_its_resolved_multipliers_released(tmp_path):
    t = _one_family_sweep(tmp_path, legacy=True)
    m = t.config.model
    assert (m.embedding_multiplier, m.head_multiplier, m.attention_scale) == (None, None, None)
    assert m.vocab_size == 512  # a resolved vocabulary in the user's field is harmless: the data gives the same
    assert len(t.warnings) == 1 and "earlier layout" in t.warnings[0] and "model.head_multiplier" in t.warnings[0]
    model_cfg, _ = model_configs(t.config, 512, load_recipe(t.config))
    assert model_cfg.head_multiplier == 0.25

"""The coordinate check: it separates ``sp`` from ``mup``/``robust``; fits, verdicts, files and the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from widthwise.app.config import load_config
from widthwise.app.coord_check import (
    ACTIVATIONS,
    CoordCheck,
    check_grid,
    coord_check,
    default_config,
    fit_slope,
    heads_at,
)
from widthwise.cli import main
from widthwise.errors import ConfigError

SMALL = (32, 64, 128)
GROWING = ("attn_out", "mlp_out", "last_hidden", "logits")


pytestmark = pytest.mark.usefixtures("data_cache")


@pytest.fixture(scope="module")
def small() -> CoordCheck:
    """The default check at widths 32..128, 5 steps, all three recipes (a few seconds on one thread)."""
    return coord_check(default_config(), SMALL, steps=5, progress=False)


# -- the acceptance test ---------------------------------------------------------------------------------------
def test_coord_check_separates_sp_from_mup_and_robust(small):
    slopes = small.slopes()
    for m in GROWING:
        assert slopes["sp"][m] > 0.7, (m, slopes["sp"])
    for recipe in ("mup", "robust"):
        for m in ACTIVATIONS:
            assert abs(slopes[recipe][m]) < 0.3, (recipe, m, slopes[recipe])
    verdict = small.verdict()
    assert verdict["sp"]["verdict"] == "grows" and not verdict["sp"]["passes"]
    assert verdict["sp"]["worst"][0][0] in GROWING
    assert verdict["mup"]["passes"] and verdict["robust"]["passes"]


def test_spectral_measures_follow_the_activations(small):
    slopes = small.slopes()
    assert slopes["sp"]["sigma_max/hidden"] > 0.4 and slopes["sp"]["gain/matrix_mean"] > 0.4
    for recipe in ("mup", "robust"):
        assert abs(slopes[recipe]["sigma_max/hidden"]) < 0.2 and abs(slopes[recipe]["gain/matrix_mean"]) < 0.2
    assert {"sigma_max/attn.q_proj", "sigma_max/mlp.down_proj", "gain/attn", "gain/mlp"} <= set(small.measures())


def test_records_cover_the_grid(small):
    per_run = {(r["recipe"], r["width"], r["seed"]) for r in small.records}
    assert len(per_run) == 3 * len(SMALL)
    steps = {r["step"] for r in small.records if r["measure"] == "logits"}
    assert steps == set(range(6))
    losses = [r for r in small.records if r["measure"] == "train_loss"]
    assert {r["step"] for r in losses} == set(range(1, 6))
    assert all(math.isfinite(r["value"]) and r["value"] > 0 for r in small.records)
    assert small.widths == list(SMALL) and small.lr == 3e-3


def test_same_batches_for_every_recipe(small):
    """At the base width sp and mup are the same model (m = 1), so the same data gives the same numbers."""
    def at_base(recipe):
        return [r["value"] for r in small.records if r["recipe"] == recipe and r["width"] == SMALL[0]]

    assert at_base("sp") == pytest.approx(at_base("mup"), rel=1e-5)


def test_global_rng_untouched():
    state = torch.get_rng_state()
    coord_check(default_config(), (32, 64), recipes=("sp",), steps=1, progress=False, spectral=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_seeds_are_averaged():
    check = coord_check(default_config(), (32, 64), recipes=("mup",), steps=1, seeds=(0, 1), progress=False,
                        spectral=False)
    assert {r["seed"] for r in check.records} == {0, 1}
    per_seed = [CoordCheck([r for r in check.records if r["seed"] == s], check.widths, check.recipes, 1, [s], 1e-3)
                for s in (0, 1)]
    for m in ACTIVATIONS:
        mean = (per_seed[0].slopes()["mup"][m] + per_seed[1].slopes()["mup"][m]) / 2
        assert check.slopes()["mup"][m] == pytest.approx(mean, abs=1e-9)


# -- fits and verdicts on synthetic records ----------------------------------------------------------------------
def synthetic(exponents: dict[str, float], widths=(64, 128, 256), steps=1) -> CoordCheck:
    records = [{"recipe": "r", "width": w, "seed": 0, "step": s, "measure": m, "value": 0.1 * w**e}
               for m, e in exponents.items() for w in widths for s in range(steps + 1)]
    return CoordCheck(records, list(widths), ["r"], steps, [0], 1e-3)


def test_fit_slope_recovers_exponents():
    assert fit_slope([64, 128, 256], [0.5 * w**1.5 for w in (64, 128, 256)]) == pytest.approx(1.5)
    assert fit_slope([64, 128], [1.0, 1.0]) == 0
    assert fit_slope([64, 128], [1.0, math.nan]) == math.inf
    assert fit_slope([64, 128], [1.0, 0.0]) == math.inf


@pytest.mark.parametrize(("exponents", "label", "passes"), [
    ({m: 0.0 for m in ACTIVATIONS}, "flat", True),
    ({**{m: 0.0 for m in ACTIVATIONS}, "logits": 1.0}, "grows", False),
    ({**{m: 0.0 for m in ACTIVATIONS}, "mlp_out": -0.5}, "shrinks", True),
    ({**{m: 0.0 for m in ACTIVATIONS}, "sigma_max/hidden": 2.0}, "flat", True),  # spectral: shown, not judged
])
def test_verdict(exponents, label, passes):
    verdict = synthetic(exponents).verdict()["r"]
    assert verdict["verdict"] == label and verdict["passes"] is passes


def test_verdict_threshold_and_worst():
    check = synthetic({"attn_out": 0.2, "mlp_out": 0.4, "logits": -0.1})
    assert check.verdict(threshold=0.3)["r"]["worst"] == [["mlp_out", pytest.approx(0.4)]]
    assert check.verdict(threshold=0.5)["r"]["verdict"] == "flat"


def test_diverged_value_counts_as_growth():
    check = synthetic({"logits": 0.0})
    check.records[-1]["value"] = math.nan  # the widest model's logits at the last step
    assert check.slopes()["r"]["logits"] == math.inf
    assert check.verdict()["r"]["verdict"] == "grows"
    assert check.to_dict()["slopes"]["r"]["logits"] is None  # valid JSON, no NaN/Infinity


def test_save_and_plot(tmp_path):
    check = synthetic({"embed_out": 0.0, "attn_out": 1.0, "mlp_out": 0.5, "logits": 0.0, "sigma_max/hidden": 0.7,
                       "gain/matrix_mean": 0.0}, steps=3)
    check.save(tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    assert {"widths", "recipes", "steps", "seeds", "lr", "slopes", "verdict", "records"} <= set(data)
    back = CoordCheck.from_dict(data)
    assert back.slopes()["r"] == pytest.approx(check.slopes()["r"])
    check.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "c.png").stat().st_size > 20_000


def test_table():
    text = synthetic({m: 1.0 if m == "logits" else 0.0 for m in ACTIVATIONS}).table()
    assert "logits" in text.splitlines()[0] and "+1.00" in text and "grows (fails)" in text


# -- the grid ---------------------------------------------------------------------------------------------------
def test_heads_keep_head_dim_and_group_ratio():
    config = load_config("tiny")  # width 32, 2 heads, 1 kv head: head dim 16, groups of 2
    assert heads_at(config, 128) == (8, 4)
    assert heads_at(config, 16) == (1, 1)  # one head cannot be grouped by 2: plain multi-head


@pytest.mark.parametrize(("widths", "recipes", "message"), [
    ([64], ["sp"], "widths: need at least 2"),
    ([64, 64], ["sp"], "widths: need at least 2"),
    ([64, 72], ["sp"], "widths: 72 is not a multiple of the head dim 16"),
    ([64, 0], ["sp"], "widths: expected positive integers"),
    ([64, 128], ["nope"], "recipes: unknown recipe 'nope'"),
    ([64, 128], [], "recipes: need at least one"),
])
def test_check_grid_rejects(widths, recipes, message):
    with pytest.raises(ConfigError, match=message):
        check_grid(default_config(), widths, recipes, 5, [0])


def test_check_grid_sorts():
    assert check_grid(default_config(), [128, 32, 64], ["sp"], 1, [0]) == [32, 64, 128]


# -- the command line -------------------------------------------------------------------------------------------
def test_cli_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "cc"
    code = main(["coord-check", "--out", str(out), "--widths", "32,64", "--steps", "2", "--recipes", "sp,mup",
                 "--quiet"])
    stdout = capsys.readouterr().out
    assert code == 0
    data = json.loads((out / "coord_check.json").read_text())
    assert data["widths"] == [32, 64] and data["recipes"] == ["sp", "mup"] and data["steps"] == 2
    assert data["verdict"]["sp"]["verdict"] == "grows" and data["verdict"]["mup"]["passes"]
    assert (out / "coord_check.png").stat().st_size > 20_000
    assert "grows (fails)" in stdout and "coord_check.png" in stdout


def test_cli_config_file_and_overrides(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model: {width: 64, depth: 1, heads: 2, kv_heads: 2}\n"
                      "train: {batch_size: 4, seq_len: 16, threads: 1}\ndata: {vocab_size: 512}\n")
    out = tmp_path / "cc"
    code = main(["coord-check", str(config), "--out", str(out), "--widths", "64,128", "--steps", "1",
                 "--recipes", "mup", "--seeds", "2", "--set", "optim.lr=1e-3", "--quiet"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "coord_check.json").read_text())
    assert data["lr"] == 1e-3 and data["seeds"] == [0, 1]
    assert data["config"]["model"]["depth"] == 1


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "widthwise", "coord-check", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("args", "needle"), [
    (["--widths", "64,abc"], "--widths"),
    (["--widths", "64"], "--widths"),
    (["--widths", "64,100"], "--widths: 100 is not a multiple of the head dim"),
    (["--recipes", "sp,bogus"], "--recipes: unknown recipe 'bogus'"),
    (["--steps", "0"], "--steps"),
    (["--seeds", "-1"], "--seeds"),
    (["--set", "scaling.recipe=sp"], "--set scaling.recipe"),
    (["--set", "model.nope=1"], "model.nope"),
    (["no-such-config"], "no-such-config"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, args, needle):
    out = tmp_path / "cc"
    try:
        code = main(["coord-check", "--out", str(out), *args])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and needle in lines[0], err
    assert not out.exists()


def test_cli_refuses_non_empty_out(tmp_path):
    out = tmp_path / "cc"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    proc = cli("--out", str(out), "--widths", "32,64", "--quiet")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"widthwise: error: --out {out}: already exists and is not empty; "
                                                "choose another --out"]
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_default_widths_separate_recipes():
    """The default check (widths 64..512, 5 steps, lr 3e-3): the numbers the docs quote."""
    check = coord_check(default_config(), progress=False)
    slopes = check.slopes()
    assert min(slopes["sp"][m] for m in ("attn_out", "mlp_out", "last_hidden")) > 1.0
    assert slopes["sp"]["logits"] > 0.3
    for recipe in ("mup", "robust"):
        assert max(abs(slopes[recipe][m]) for m in ACTIVATIONS) < 0.3, slopes[recipe]
    assert [v["verdict"] for v in check.verdict().values()] == ["grows", "flat", "flat"]

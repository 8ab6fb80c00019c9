"""Diagnostics in a real run: `diagnostics.jsonl` during training, `widthwise diagnose` after it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from widthwise.app.metrics import read_metrics
from widthwise.app.rundir import RunDir
from widthwise.app.setup import build
from widthwise.cli import main
from widthwise.diagnostics.matrices import as_linear_map, effective_weight, matrix_sites, stored_weight

FAST = ["train.threads=1", "train.progress=false"]


def sets(*overrides: str) -> list[str]:
    return [a for o in (*FAST, *overrides) for a in ("--set", o)]


pytestmark = pytest.mark.usefixtures("data_cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "tiny", "--out", str(run), *sets()]) == 0
    return run


@pytest.fixture(scope="module")
def diagnosed(run) -> dict:
    assert main(["diagnose", str(run)]) == 0
    return json.loads((run / "diagnostics.json").read_text())


def _model_at(run: Path, step: int | None = None):
    rundir = RunDir.open(run)
    built = build(rundir.config(), rundir.resolved()["model"]["vocab_size"], torch.device("cpu"))
    built.model.load_state_dict(rundir.checkpoint(step).model, strict=False)
    return built


def test_training_logs_diagnostics_at_the_cadence(run):
    records = read_metrics(run / "diagnostics.jsonl")
    assert [r["step"] for r in records] == [10, 20, 30]
    last = records[-1]
    q = last["matrices"]["blocks.0.attn.q_proj.weight"]
    for key in ("sigma_max", "sigma_max_stored", "rms", "rms_effective", "lr", "weight_decay", "equilibrium_rms",
                "equilibrium_ratio", "sublayer_gain"):
        assert isinstance(q[key], float) and q[key] > 0, key
    assert last["matrices"]["embed.weight"]["equilibrium_rms"] is None  # robust: embeddings take no decay
    assert {"blocks.0.attn", "blocks.0.mlp"} <= set(last["blocks"])
    assert "attn.q_proj.row" in last["multipliers"] and last["symmetry"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["diagnostics_overhead"] > 0 and summary["diagnostics_s"] > 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_power_iteration_in_training_matches_exact_spectra_of_the_checkpoint(run):
    """The warm-started sigma_max logged at step 30 is the checkpoint's exact top singular value (1%)."""
    logged = read_metrics(run / "diagnostics.jsonl")[-1]["matrices"]
    built = _model_at(run)
    for name, site in matrix_sites(built.model).items():
        exact = torch.linalg.svdvals(as_linear_map(effective_weight(site), site))[0].item()
        assert logged[name]["sigma_max"] == pytest.approx(exact, rel=0.01), name
        assert logged[name]["rms"] == pytest.approx(stored_weight(site).pow(2).mean().sqrt().item(), rel=1e-5)


def test_diagnose_writes_the_contract(run, diagnosed):
    d = diagnosed
    assert d["step"] == 30 and d["recipe"] == "robust" and d["width"] == 32 and d["base_width"] == 16
    built = _model_at(run)
    sites = matrix_sites(built.model)
    assert set(d["matrices"]) == set(sites)
    for name, site in sites.items():
        m = d["matrices"][name]
        exact = torch.linalg.svdvals(as_linear_map(effective_weight(site), site))
        assert m["sigma_max"] == pytest.approx(exact[0].item(), rel=1e-5)
        assert m["stable_rank"] == pytest.approx((exact**2).sum().item() / exact[0].item() ** 2, rel=1e-4)
    q = d["matrices"]["blocks.1.mlp.down_proj.weight"]
    for key in ("sigma_max", "rms", "equilibrium_rms", "sublayer_gain", "abm_rms", "abm_ratio", "relaxation",
                "sigma_max_stored", "lr", "weight_decay"):
        assert isinstance(q[key], float) and q[key] > 0, key
    assert q["equilibrium_ratio"] == pytest.approx(q["rms"] / q["equilibrium_rms"])
    assert q["abm_ratio"] == pytest.approx(q["rms"] / q["abm_rms"])
    # 30 steps are a small fraction of 1/(lr*wd): the note says the equilibrium is not reached
    assert q["relaxation"] < 1 and any("relaxation" in n for n in d["notes"])
    assert "attn.q_proj" in d["layer_types"] and d["gains"]["matrix_mean"] > 0
    assert "attn.q_proj.row" in d["multipliers"]["stats"] and d["multipliers"]["symmetry"]
    for plot in ("spectra", "sigma_max", "equilibrium", "gains", "multipliers", "symmetry"):
        assert (run / "plots" / "diagnostics" / f"{plot}.png").stat().st_size > 10_000, plot


def test_abm_reference_is_comparable_early_in_training(run, diagnosed):
    """30 steps in, both the weight and its ABM reference are still close to their common init."""
    q = diagnosed["matrices"]["blocks.0.attn.q_proj.weight"]
    assert 0.5 < q["abm_ratio"] < 2.0


def test_diagnose_an_older_checkpoint_and_a_run_without_history(run, tmp_path, capsys):
    assert main(["diagnose", str(run), "--step", "20"]) == 0
    assert json.loads((run / "diagnostics.json").read_text())["step"] == 20
    plain = tmp_path / "plain"
    assert main(["train", "tiny", "--out", str(plain), *sets("diagnostics.every=null", "train.steps=10",
                                                               "multipliers.kind=none")]) == 0
    assert not (plain / "diagnostics.jsonl").exists()
    assert main(["diagnose", str(plain)]) == 0
    d = json.loads((plain / "diagnostics.json").read_text())
    assert d["multipliers"]["stats"] == {} and "sigma_max_stored" not in d["matrices"]["head.weight"]
    assert (plain / "plots" / "diagnostics" / "gains.png").exists()
    assert not (plain / "plots" / "diagnostics" / "multipliers.png").exists()


def _bad(capsys, *argv: str) -> str:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith(("widthwise: error:", "widthwise diagnose: error:")), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_diagnose_bad_input_is_one_line_exit_2(run, tmp_path, capsys):
    assert "no such run directory" in _bad(capsys, "diagnose", str(tmp_path / "missing"))
    assert "not a widthwise run directory" in _bad(capsys, "diagnose", str(tmp_path))
    assert "step_00000007" in _bad(capsys, "diagnose", str(run), "--step", "7")
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run / "config.yaml", empty / "config.yaml")
    assert "no checkpoint" in _bad(capsys, "diagnose", str(empty))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(run, corrupt, ignore=shutil.ignore_patterns("tensorboard"))
    (corrupt / "config.yaml").write_text("model: [unclosed\n")
    assert "config.yaml is corrupt" in _bad(capsys, "diagnose", str(corrupt))
    assert "invalid int" in _bad(capsys, "diagnose", str(run), "--step", "x")


def test_diagnose_reports_a_blown_up_matrix_as_nan(run, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(run, broken, ignore=shutil.ignore_patterns("tensorboard"))
    weights_file = broken / "checkpoints" / "step_00000030" / "model.safetensors"
    weights = load_file(weights_file)
    weights["blocks.1.mlp.up_proj.parametrizations.weight.original"][0, 0] = float("nan")
    save_file(weights, weights_file)
    assert main(["diagnose", str(broken), "--no-plots"]) == 0
    d = json.loads((broken / "diagnostics.json").read_text())
    assert d["matrices"]["blocks.1.mlp.up_proj.weight"]["sigma_max"] == "nan"
    assert isinstance(d["matrices"]["blocks.0.mlp.up_proj.weight"]["sigma_max"], float)

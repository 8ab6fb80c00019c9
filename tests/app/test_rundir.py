"""RunDir: the run directory's layout, its reads and writes, its errors, and run dirs of the earlier layout."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from widthwise.app.checkpoint import Checkpoint
from widthwise.app.config import load_config
from widthwise.app.rundir import RunDir
from widthwise.app.setup import build, resolved_config
from widthwise.cli import main
from widthwise.errors import RunError

FAST = ["train.threads=1", "train.progress=false"]


def sets(*overrides: str) -> list[str]:
    return [a for o in (*FAST, *overrides) for a in ("--set", o)]


def _written(tmp_path, *overrides: str) -> tuple[RunDir, object]:
    """A run directory whose config.yaml is written as the trainer writes it (no training)."""
    config = load_config("tiny", list(overrides))
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        built = build(config, 512, torch.device("meta"))
    run = RunDir.create(tmp_path / "run")
    run.write_config(config, resolved_config(built, {"runtime": {"device": "cpu"}, "data_fingerprint": "abc"}),
                     built.plan, built.plan.table(config.optim.lr, config.optim.weight_decay))
    return run, config


def test_config_yaml_keeps_the_users_nulls_and_holds_resolved_values_under_resolved(tmp_path):
    run, config = _written(tmp_path, "model.attention_scale=0.3")
    data = yaml.safe_load(run.config_file.read_text())
    assert data["model"]["vocab_size"] is None and data["model"]["head_multiplier"] is None
    assert data["model"]["attention_scale"] == 0.3  # set by the user: kept as written
    assert data["resolved"]["model"] == {"vocab_size": 512, "embedding_multiplier": 1.0, "head_multiplier": 0.5,
                                         "attention_scale": 0.3}
    assert data["resolved"]["scaling"] == {"base_width": 16} and data["resolved"]["data_fingerprint"] == "abc"
    assert {k: v for k, v in data.items() if k not in ("resolved", "plan")} == config.to_dict()
    opened = RunDir.open(run.path)
    assert opened.config() == config and not opened.legacy
    assert opened.resolved() == data["resolved"]
    assert {p["name"]: p["role"] for p in opened.plan()["params"]}["head.weight"] == "head"
    assert "lr*wd" in run.plan_file.read_text()
    assert run.checkpoints_dir.is_dir()
    assert load_config(run.config_file) == config  # a run's config.yaml is a config to train again


def test_round_trip_of_every_file(tmp_path):
    run, _ = _written(tmp_path)
    assert run.summary() is None and run.samples() is None and run.metrics() == []
    assert run.checkpoint() is None and run.checkpoint_steps() == []
    logs = run.open_logs(diagnostics=True, tensorboard=False)
    for step in (1, 2, 3):
        logs.write({"step": step, "tokens": 8 * step, "train_loss": float("nan") if step == 3 else 1.0 / step})
        logs.write({"step": step, "sigma_max": 2.0}, stream="diagnostics")
    logs.close()
    assert [r["step"] for r in run.metrics()] == [1, 2, 3] and run.metrics()[-1]["train_loss"] == "nan"
    assert [r["step"] for r in run.diagnostics_history(up_to=2)] == [1, 2]
    run.open_logs(diagnostics=True, tensorboard=False, resume_step=1).close()  # a resume from step 1 drops 2, 3
    assert [r["step"] for r in run.metrics()] == [1] and len(run.diagnostics_history()) == 1
    run.write_summary({"status": "completed", "steps": 3, "val_loss": float("inf")})
    assert run.summary() == {"status": "completed", "steps": 3, "val_loss": "inf"}
    run.write_samples("To be")
    assert run.samples() == "To be"
    run.write_diagnosis({"step": 3, "sigma_max": float("nan")})
    assert json.loads(run.diagnosis_file.read_text()) == {"step": 3, "sigma_max": "nan"}
    for step in (5, 10):
        run.save_checkpoint(Checkpoint(step, {"w": torch.full((2,), float(step))}, {}, {}, {}, {"tokens": step}),
                            keep=2)
    assert run.checkpoint_steps() == [5, 10] and run.checkpoint().step == 10
    assert run.checkpoint(5).model["w"].tolist() == [5.0, 5.0] and run.checkpoint(5).state == {"tokens": 5}
    run.plots_dir.mkdir()
    assert set(run.outputs()) == {"plots", "metrics", "samples"}


def test_missing_or_corrupt_files_are_run_errors_naming_them(tmp_path):
    with pytest.raises(RunError, match=r"^--resume .*missing: no such run directory"):
        RunDir.open(tmp_path / "missing", "--resume")
    with pytest.raises(RunError, match="diagnose .*: no config.yaml, not a widthwise run directory"):
        RunDir.open(tmp_path, "diagnose")
    run, _ = _written(tmp_path)
    with pytest.raises(RunError, match="--out .*run: already exists and is not empty; use --resume"):
        RunDir.create(run.path)
    with pytest.raises(RunError, match=r"RUN_DIR .*: no checkpoint step_00000007 in .*checkpoints \(have: none\)"):
        RunDir.open(run.path).checkpoint(7)
    run.summary_file.write_text("{not json")
    with pytest.raises(RunError, match="sweep run .*: summary.json is corrupt"):
        RunDir(run.path, "sweep run").summary()
    run.config_file.write_text("model: {width: [}\n")
    with pytest.raises(RunError, match="config.yaml is corrupt \\(not valid YAML"):
        RunDir.open(run.path)
    run.config_file.write_text("model: {colour: red}\n")
    with pytest.raises(RunError, match="config.yaml is corrupt \\(unknown key model.colour"):
        RunDir.open(run.path)
    run.config_file.write_text("- a list\n")
    with pytest.raises(RunError, match="config.yaml is corrupt \\(not a mapping of sections\\)"):
        RunDir.open(run.path)


def _to_legacy(run: RunDir) -> None:
    """Rewrite config.yaml as the earlier layout wrote it: resolved model/scaling values in the user's fields."""
    data = yaml.safe_load(run.config_file.read_text())
    for section in ("model", "scaling"):
        data[section].update(data["resolved"].pop(section))
    run.config_file.write_text(yaml.safe_dump(data, sort_keys=False))


def test_legacy_layout_reads_its_resolved_values_from_the_users_fields(tmp_path):
    run, _ = _written(tmp_path)
    resolved = run.resolved()
    _to_legacy(run)
    legacy = RunDir.open(run.path)
    assert legacy.legacy and legacy.config().model.head_multiplier == 0.5
    assert legacy.resolved() == resolved


@pytest.mark.usefixtures("data_cache")
def test_a_run_of_the_earlier_layout_resumes_exactly_and_diagnoses(tmp_path):
    constant = ("schedule.kind=constant",)
    reference = tmp_path / "reference"
    assert main(["train", "tiny", "--out", str(reference), *sets(*constant, "train.steps=20")]) == 0
    old = tmp_path / "old"
    assert main(["train", "tiny", "--out", str(old), *sets(*constant, "train.steps=10")]) == 0
    _to_legacy(RunDir(old))
    assert main(["train", "--resume", str(old), "--set", "train.steps=20"]) == 0
    assert [r["train_loss"] for r in RunDir(old).metrics()] == [r["train_loss"] for r in RunDir(reference).metrics()]
    assert main(["diagnose", str(old), "--no-plots"]) == 0
    assert json.loads(RunDir(old).diagnosis_file.read_text())["step"] == 20

"""`widthwise train` end to end: the run directory contract, resume after SIGKILL, divergence, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from widthwise.app.metrics import read_metrics
from widthwise.app.runtime import bf16_fast
from widthwise.cli import main

FAST = ["train.threads=1", "train.progress=false"]


pytestmark = pytest.mark.usefixtures("data_cache")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "widthwise", *args], capture_output=True, text=True, timeout=300)


def sets(*overrides: str) -> list[str]:
    return [a for o in (*FAST, *overrides) for a in ("--set", o)]


def losses(run: Path) -> list[float]:
    return [r["train_loss"] for r in read_metrics(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    proc = cli("train", "tiny", "--out", str(run), *sets())
    assert proc.returncode == 0, proc.stderr
    assert "completed: 30 steps" in proc.stdout
    return run


def test_tiny_run_directory_contract(tiny_run):
    config = __import__("yaml").safe_load((tiny_run / "config.yaml").read_text())
    assert config["model"]["vocab_size"] is None and config["model"]["head_multiplier"] is None  # as the user left them
    resolved = config["resolved"]
    assert resolved["model"]["vocab_size"] >= 257 and resolved["scaling"]["base_width"] == 16
    assert resolved["model"]["head_multiplier"] == 0.5  # robust recipe: head 1/m with m = 32/16
    assert config["resolved"]["runtime"]["muon_ns_dtype"] is None  # AdamW only
    roles = {p["name"]: p["role"] for p in config["plan"]["params"]}
    assert roles["head.weight"] == "head" and roles["blocks.0.attn.q_proj.weight"] == "hidden"
    assert roles["blocks.0.attn.q_proj.weight.row"] == "multiplier"
    records = read_metrics(tiny_run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 31))
    assert {"step", "tokens", "train_loss", "lr", "grad_norm", "tokens_per_s"} <= set(records[0])
    assert records[-1]["tokens"] == 30 * 8 * 32
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30]
    assert "attn.q_proj.row" in records[-1]["multipliers"]
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 30 and summary["tokens"] == 7680
    for key in ("final_train_loss", "val_loss", "wall_s", "tokens_per_s", "tokens_per_s_median"):
        assert summary[key] > 0, key
    assert summary["val_loss"] < records[0]["train_loss"] - 0.5, "tiny run should learn something"
    assert (tiny_run / "checkpoints" / "latest").read_text().strip() == "step_00000030"
    for plot in ("loss.png", "lr.png", "multipliers.png"):
        assert (tiny_run / "plots" / plot).stat().st_size > 10_000
    assert list((tiny_run / "tensorboard").glob("events.out.tfevents.*"))
    assert len((tiny_run / "samples.txt").read_text().strip()) > 20
    assert "lr*wd" in (tiny_run / "plan.txt").read_text()


def test_out_naming_an_existing_run_is_refused_and_nothing_changes(tiny_run, capsys):
    before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*") if p.is_file()}
    assert main(["train", "tiny", "--out", str(tiny_run), *sets()]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists" in err and "--resume" in err
    assert before == {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*") if p.is_file()}


def test_resume_of_a_completed_run_does_nothing(tiny_run, capsys):
    before = (tiny_run / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", str(tiny_run)]) == 0
    assert (tiny_run / "metrics.jsonl").read_bytes() == before


def test_deterministic_given_the_seed(tiny_run, tmp_path):
    assert main(["train", "tiny", "--out", str(tmp_path / "again"), *sets()]) == 0
    assert losses(tmp_path / "again") == losses(tiny_run)
    assert main(["train", "tiny", "--out", str(tmp_path / "seed1"), *sets("train.seed=1")]) == 0
    assert losses(tmp_path / "seed1") != losses(tiny_run)


def _kill_when(proc: subprocess.Popen, metrics: Path, lines: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= lines:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()


@pytest.mark.parametrize("kill_after", [4, *(pytest.param(k, marks=pytest.mark.slow) for k in (23, 41))])
def test_sigkill_then_resume_gives_exactly_the_uninterrupted_losses(tmp_path, kill_after):
    overrides = ("train.steps=48", "train.checkpoint_every=7", "train.eval_every=12")
    reference = tmp_path / "reference"
    assert main(["train", "tiny", "--out", str(reference), *sets(*overrides)]) == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "widthwise", "train", "tiny", "--out", str(run),
                             *sets(*overrides)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, run / "metrics.jsonl", kill_after)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "summary.json").exists()
    done = cli("train", "--resume", str(run))
    assert done.returncode == 0, done.stderr
    assert losses(run) == losses(reference)
    ref_val = [r.get("val_loss") for r in read_metrics(reference / "metrics.jsonl")]
    assert [r.get("val_loss") for r in read_metrics(run / "metrics.jsonl")] == ref_val
    assert json.loads((run / "summary.json").read_text())["val_loss"] == ref_val[-1]
    # diagnostics (every 10 steps in tiny) neither disturb the run nor get logged twice across the kill
    diag, ref_diag = read_metrics(run / "diagnostics.jsonl"), read_metrics(reference / "diagnostics.jsonl")
    assert [r["step"] for r in diag] == [r["step"] for r in ref_diag] == [10, 20, 30, 40, 48]
    for got, want in zip(diag, ref_diag, strict=True):
        assert {n: m["rms"] for n, m in got["matrices"].items()} == {n: m["rms"] for n, m in want["matrices"].items()}


def test_sigterm_checkpoints_and_says_interrupted(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "widthwise", "train", "tiny", "--out", str(run),
                             *sets("train.steps=400", "train.checkpoint_every=1000")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.01)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{summary['steps']:08d}"
    assert "--resume" in err


def test_extending_steps(tmp_path, capsys):
    run = tmp_path / "const"
    assert main(["train", "tiny", "--out", str(run), *sets("schedule.kind=constant", "train.steps=20")]) == 0
    assert main(["train", "--resume", str(run), "--set", "train.steps=30"]) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")][-1] == 30
    cos = tmp_path / "cos"
    assert main(["train", "tiny", "--out", str(cos), *sets("train.steps=20")]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(cos), "--set", "train.steps=30"]) == 2
    assert "cosine schedule" in capsys.readouterr().err
    assert main(["train", "--resume", str(cos), "--set", "model.width=64"]) == 2
    assert "cannot change on resume" in capsys.readouterr().err
    wsd = tmp_path / "wsd"
    assert main(["train", "tiny", "--out", str(wsd), *sets("schedule.kind=wsd", "train.steps=20")]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(wsd), "--set", "train.steps=30"]) == 2
    assert "wsd schedule was planned for 20 steps and has been decaying since step 17" in capsys.readouterr().err


@pytest.mark.slow  # resume exactness has its fast variants (AdamW) in the default run
def test_muon_run_records_its_newton_schulz_dtype_and_resumes_exactly(tmp_path):
    """The resolved Newton-Schulz dtype is in config.yaml, and the optimizer state brings it back on resume."""
    muon = ("optim.name=muon", "schedule.kind=constant")
    reference = tmp_path / "reference"
    assert main(["train", "tiny", "--out", str(reference), *sets(*muon, "train.steps=12")]) == 0
    run = tmp_path / "extended"
    assert main(["train", "tiny", "--out", str(run), *sets(*muon, "train.steps=6")]) == 0
    assert main(["train", "--resume", str(run), "--set", "train.steps=12"]) == 0
    assert losses(run) == losses(reference)
    config = __import__("yaml").safe_load((run / "config.yaml").read_text())
    expected = "bfloat16" if bf16_fast(torch.device("cpu")) else "float32"  # the cached machine decision
    assert config["resolved"]["runtime"]["muon_ns_dtype"] == expected


def test_tied_model_resumes_exactly(tmp_path):
    """Tied weights are stored once in the checkpoint and restored to both names."""
    tied = ("model.tie_embeddings=true", "schedule.kind=constant")
    reference = tmp_path / "reference"
    assert main(["train", "tiny", "--out", str(reference), *sets(*tied, "train.steps=24")]) == 0
    run = tmp_path / "extended"
    assert main(["train", "tiny", "--out", str(run), *sets(*tied, "train.steps=12")]) == 0
    assert main(["train", "--resume", str(run), "--set", "train.steps=24"]) == 0
    assert losses(run) == losses(reference)


def test_divergence_exit_3(tmp_path):
    run = tmp_path / "div"
    proc = cli("train", "tiny", "--out", str(run), *sets("train.divergence_factor=0.5"))
    assert proc.returncode == 3, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 2
    assert "diverged at step 2" in proc.stderr
    assert (run / "plots" / "loss.png").exists()
    blowup = tmp_path / "blowup"
    assert main(["train", "tiny", "--out", str(blowup),
                 *sets("optim.lr=30.0", "scaling.recipe=sp", "optim.grad_clip=null", "multipliers.kind=none")]) == 3
    assert json.loads((blowup / "summary.json").read_text())["status"] == "diverged"
    assert main(["train", "--resume", str(blowup)]) == 3


def _bad(capsys, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("widthwise: error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "demoo", "--out", "{tmp}/r"], "unknown config 'demoo'"),
        (["train", "tiny", "--out", "{tmp}/r", "--set", "model.colour=red"], "unknown key model.colour"),
        (["train", "tiny", "--out", "{tmp}/r", "--set", "train.steps=many"], "train.steps: expected an integer"),
        (["train", "tiny", "--out", "{tmp}/r", "--set", "model.width=-32"], "model.width: must be positive"),
        (["train", "tiny", "--out", "{tmp}/r", "--set", "model.heads=3"], "model.heads: 3 does not divide"),
        (["train", "tiny", "--out", "{tmp}/r", "--set", "model.kv_heads=4", "--set", "model.heads=2"],
         "model.kv_heads: 4 does not divide"),
        (["train", "tiny", "--out", "{tmp}/r", "--set", "scaling.recipe=mupp"], "scaling.recipe: unknown recipe"),
        (["train", "tiny", "--out", "{tmp}/r", "--set", "optim.name=lion"], "optim.name: unknown value 'lion'"),
        (["train", "tiny", "--out", "{tmp}/r", "--set", "multipliers.kind=diag"], "multipliers.kind"),
        (["train", "tiny", "--out", "{tmp}/r", "--set", "data.path={tmp}/nowhere"], "does not exist"),
        (["train", "tiny", "--out", "{tmp}/r", "--set", "data.path={tmp}/empty"], "empty"),
        (["train", "tiny", "--out", "{tmp}/r", "--set", "data.path={tmp}/short.txt"], "too short"),
        (["train", "--resume", "{tmp}/missing"], "no such run directory"),
        (["train", "--resume", "{tmp}/empty"], "not a widthwise run directory"),
        (["train", "tiny"], "--out RUN_DIR is required"),
        (["train", "tiny", "--out", "{tmp}/r", "--resume", "{tmp}/r"], "--resume takes the run directory only"),
        (["train", "tiny", "--out", "{tmp}/r", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "short.txt").write_text("To be, or not to be.\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        err = _bad(capsys, *argv, *([] if argv[0] != "train" or "--resume" in argv else sets()))
    except SystemExit as exit_:  # argparse's own errors
        assert exit_.code == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
    assert expected in err, err
    assert not (tmp_path / "r").exists(), "a refused run left a directory behind"


def test_corrupt_run_is_refused_clearly(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "summary.json").unlink()  # pretend it was interrupted
    step = run / "checkpoints" / "step_00000030"
    (step / "model.safetensors").write_bytes(b"\x00" * 20)
    assert "model.safetensors" in _bad(capsys, "train", "--resume", str(run))
    (run / "config.yaml").write_text("model: {width: [}\n")
    assert "config.yaml is corrupt" in _bad(capsys, "train", "--resume", str(run))


def test_several_processes_need_train_parallel(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "train.parallel: none, but WORLD_SIZE=2" in _bad(capsys, "train", "tiny", "--out", str(tmp_path / "r"),
                                                            *sets())


def test_a_batch_that_does_not_split_into_micro_steps_is_refused(tmp_path, capsys):
    assert "train.grad_accum: 3 does not divide train.batch_size=8" in _bad(
        capsys, "train", "tiny", "--out", str(tmp_path / "r"), *sets("train.grad_accum=3"))


def test_entry_point_reports_bad_input_without_traceback(tmp_path):
    proc = cli("train", "tiny", "--out", str(tmp_path / "r"), "--set", "model.heads=3")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "widthwise: error: model.heads: 3 does not divide model.width=32"


def test_steps_between_log_lines_skip_the_loss_and_norm_collectives(tmp_path, monkeypatch):
    """The global-batch mean of the loss (an all-reduce under torchrun) and the gathered grad norm are taken only
    at the steps whose metrics.jsonl line reads them (log_every, the first, the last): not every step."""
    from widthwise.app.distributed import Distributed

    means = []
    original = Distributed.mean
    monkeypatch.setattr(Distributed, "mean", lambda self, value: means.append(1) or original(self, value))
    run = tmp_path / "r"
    assert main(["train", "tiny", "--out", str(run), *sets(
        "train.steps=7", "train.log_every=3", "train.eval_every=100", "train.checkpoint_every=100",
        "diagnostics.every=null", "train.plots=false", "train.sample_tokens=0", "train.tensorboard=false",
        "train.eval_tokens=512")]) == 0
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 3, 6, 7] and len(means) == 4
    assert all(r["grad_norm"] > 0 and r["train_loss"] > 0 for r in records)

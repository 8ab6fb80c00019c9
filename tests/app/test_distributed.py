"""`widthwise train` under real `torchrun --standalone --nproc_per_node=2` on CPU/gloo (DDP, FSDP2, grad_accum):
the same global batch as one process gives the same losses, grad norms and diagnostics; rank 0 alone writes; a
SIGKILLed rank ends the job; resume is exact at the same world size and continues at world size 1."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from widthwise.app.metrics import read_metrics

pytestmark = [pytest.mark.usefixtures("data_cache"), pytest.mark.slow]

#: The tiny config with learnable row+column multipliers, 20 steps, fp32 eager (the float sums are the only
#: difference between the runs), diagnostics and validation every 10 steps, checkpoints every 5 (all kept).
COMMON = ["train.steps=20", "train.checkpoint_every=5", "train.keep_checkpoints=4", "train.compile=false",
          "train.dtype=float32", "train.threads=1", "train.progress=false", "train.tensorboard=false",
          "train.plots=false", "train.sample_tokens=8", "multipliers.kind=row_col"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _args(*overrides: str) -> list[str]:
    return [a for o in (*COMMON, *overrides) for a in ("--set", o)]


def _train(out: Path, nproc: int, *overrides: str, resume: bool = False) -> subprocess.Popen:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
              if nproc > 1 else [sys.executable])
    what = ["--resume", str(out)] if resume else ["tiny", "--out", str(out)]
    return subprocess.Popen([*launch, "-m", "widthwise", "train", *what, *_args(*overrides)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out + err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """AdamW and Muon: one process; DDP and FSDP2 on 2 ranks (2 micro-steps each in two of them); global batch 8."""
    root = tmp_path_factory.mktemp("dist")
    muon = ("optim.name=muon", "optim.ns_dtype=float32")
    spec = {"one": (1, ()), "ddp": (2, ("train.parallel=ddp",)),
            "fsdp": (2, ("train.parallel=fsdp", "train.grad_accum=2")),
            "muon_one": (1, muon), "muon_ddp": (2, ("train.parallel=ddp", "train.grad_accum=2", *muon)),
            "muon_fsdp": (2, ("train.parallel=fsdp", *muon))}
    outs = {}
    for name, (nproc, overrides) in spec.items():  # one after the other: 2 cores
        outs[name] = _done(_train(root / name, nproc, *overrides))
    assert outs["ddp"].count("completed: 20 steps") == 1  # rank 0 reports, rank 1 does not
    return {name: root / name for name in spec}


def _close(a: float, b: float, rel: float = 1e-5) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


@pytest.mark.parametrize("name", ["ddp", "fsdp", "muon_ddp", "muon_fsdp"])
def test_two_ranks_match_one_process_with_the_same_global_batch(runs, name):
    single = "muon_one" if name.startswith("muon") else "one"
    one, two = read_metrics(runs[single] / "metrics.jsonl"), read_metrics(runs[name] / "metrics.jsonl")
    assert [r["step"] for r in two] == list(range(1, 21))  # each step once: only rank 0 writes
    for a, b in zip(one, two, strict=True):
        assert a["tokens"] == b["tokens"] and a["lr"] == b["lr"]
        assert _close(a["train_loss"], b["train_loss"]), (a["step"], a["train_loss"], b["train_loss"])
        assert _close(a["grad_norm"], b["grad_norm"], 1e-4), (a["step"], a["grad_norm"], b["grad_norm"])
    assert _close(one[-1]["val_loss"], two[-1]["val_loss"])
    assert one[-1]["train_loss"] < one[0]["train_loss"] - 0.5  # it trains: the comparison is not of constants
    summary = json.loads((runs[name] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["tokens"] == 20 * 8 * 32


@pytest.mark.parametrize("name", ["ddp", "fsdp", "muon_fsdp"])
def test_diagnostics_are_over_whole_tensors_and_logged_once(runs, name):
    single = "muon_one" if name.startswith("muon") else "one"
    one = read_metrics(runs[single] / "diagnostics.jsonl")
    two = read_metrics(runs[name] / "diagnostics.jsonl")
    assert [r["step"] for r in two] == [10, 20]
    for a, b in zip(one, two, strict=True):
        for matrix, m in a["matrices"].items():
            for key in ("sigma_max", "rms", "sublayer_gain", "equilibrium_ratio"):
                if m.get(key) is not None:
                    assert _close(m[key], b["matrices"][matrix][key], 1e-4), (matrix, key)
    stats = read_metrics(runs[name] / "metrics.jsonl")[-1]["multipliers"]
    expected = read_metrics(runs[single] / "metrics.jsonl")[-1]["multipliers"]
    assert stats.keys() == expected.keys()
    for key, values in expected.items():
        assert stats[key] == pytest.approx(values, rel=1e-4, abs=1e-6), key


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _rank_pid(launcher: int, rank: int) -> int | None:
    for child in _children(launcher):
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return child
    return None


def test_sigkill_of_a_rank_ends_the_job_and_resume_is_exact(runs, tmp_path):
    run = tmp_path / "killed"
    proc = _train(run, 2, "train.parallel=fsdp", "train.grad_accum=2")
    latest = run / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None and proc.poll() is None, "the job ended before it could be killed"
    os.kill(victim, signal.SIGKILL)
    tick = time.monotonic()
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and time.monotonic() - tick < 120  # the job ends, it does not hang
    assert "SIGKILL" in err  # torchrun names the rank that died and how
    summary = run / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] != "completed"

    _done(_train(run, 2, resume=True))
    resumed, whole = read_metrics(run / "metrics.jsonl"), read_metrics(runs["fsdp"] / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 21))
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in whole]  # bit for bit


@pytest.mark.parametrize(("name", "single"), [("fsdp", "one"), ("muon_fsdp", "muon_one")])
def test_a_two_rank_run_resumes_in_one_process(runs, tmp_path, name, single):
    import shutil

    run = tmp_path / "single"
    shutil.copytree(runs[name], run)
    (run / "summary.json").unlink()  # as if stopped after the checkpoint of step 10
    for step in (15, 20):
        shutil.rmtree(run / "checkpoints" / f"step_{step:08d}", ignore_errors=True)
    (run / "checkpoints" / "latest").write_text("step_00000010\n")
    printed = _done(_train(run, 1, resume=True))
    assert "written by 2 processes, resumed by 1" in printed
    assert "1 process (train.parallel=fsdp takes effect under torchrun)" in printed
    resumed, one = read_metrics(run / "metrics.jsonl"), read_metrics(runs[single] / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, 21))
    for a, b in zip(one[10:], resumed[10:], strict=True):
        assert _close(a["train_loss"], b["train_loss"]), (a["step"], a["train_loss"], b["train_loss"])
    assert json.loads((run / "summary.json").read_text())["world_size"] == 1


def test_bad_input_is_one_line_on_every_rank_and_nothing_is_overwritten(runs):
    before = (runs["one"] / "metrics.jsonl").read_bytes()
    proc = _train(runs["one"], 2, "train.parallel=ddp")  # --out names an existing run: rank 0 refuses, all stop
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.startswith("widthwise: error:")]
    assert len(lines) == 2 and all("already exists and is not empty" in line for line in lines), err[-2000:]
    assert not re.search(r"\[rank\d\]: Traceback", err)  # none from the ranks (torchrun prints its own)
    assert (runs["one"] / "metrics.jsonl").read_bytes() == before


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path):
    run = tmp_path / "stopped"
    proc = _train(run, 2, "train.parallel=ddp")
    latest = run / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    rank1 = _rank_pid(proc.pid, 1)
    assert rank1 is not None and proc.poll() is None, "the job ended before it could be signalled"
    os.kill(rank1, signal.SIGTERM)  # rank 0 is not signalled: it learns it from rank 1
    proc.communicate(timeout=240)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 5 <= summary["steps"] < 20
    assert latest.read_text().strip() == f"step_{summary['steps']:08d}"


def test_a_rank_that_stops_answering_ends_the_job_with_one_line(tmp_path):
    run = tmp_path / "hung"
    proc = _train(run, 2, "train.parallel=ddp", "train.dist_timeout_s=10", "diagnostics.every=null")
    latest = run / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    rank0, rank1 = _rank_pid(proc.pid, 0), _rank_pid(proc.pid, 1)
    assert rank0 is not None and rank1 is not None and proc.poll() is None
    os.kill(rank1, signal.SIGSTOP)  # alive, but it answers no collective
    try:
        deadline = time.monotonic() + 120
        while Path(f"/proc/{rank0}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{rank0}").exists(), "rank 0 hung"
    finally:
        os.kill(rank1, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "rank 0: lost the other ranks" in err and "train.dist_timeout_s=10 s" in err, err[-3000:]

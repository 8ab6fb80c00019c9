"""Fault injection with real processes and signals (issue 18): SIGKILLs at random moments, inside a checkpoint
write, during evaluation and diagnostics, a run another process holds, a full disk and a read-only run directory.

Each training process is a fork of the test process running ``widthwise.cli.main`` (a real process, with its own
pid, killed by a real SIGKILL; forking skips the 4 s interpreter and torch start-up of ``python -m widthwise``). A
kill at a precise moment is asked for with a profile hook in the child (:func:`_at`): it sends the signal to its
own process when the code reaches that moment, and the code under test runs unchanged.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from widthwise.app.rundir import RunDir
from widthwise.cli import main

pytestmark = pytest.mark.usefixtures("data_cache")

#: tiny, 24 steps: checkpoints every 4 (keep 2, so pruning starts at step 12), validation every 6, diagnostics every
#: 10 (tiny's), no plots, TensorBoard or sample: about 2 s a run.
STEPS = 24
QUICK = ("train.threads=1", "train.progress=false", "train.plots=false", "train.tensorboard=false",
         "train.sample_tokens=0", f"train.steps={STEPS}", "train.checkpoint_every=4", "train.eval_every=6")
Hook = Callable[[FrameType, str, Any], bool]


def sets(*overrides: str) -> list[str]:
    return [a for o in (*QUICK, *overrides) for a in ("--set", o)]


def records(run: Path, stream: str = "metrics") -> list[dict[str, Any]]:
    return RunDir(run).metrics() if stream == "metrics" else RunDir(run).diagnostics_history()


def _same_run(run: Path, reference: Path) -> None:
    """``run`` logged exactly what ``reference`` did: losses, validation losses, diagnostics, each step once."""
    got, want = records(run), records(reference)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["train_loss"] for r in got] == [r["train_loss"] for r in want]
    assert [r.get("val_loss") for r in got] == [r.get("val_loss") for r in want]
    diag, ref = records(run, "diagnostics"), records(reference, "diagnostics")
    assert [r["step"] for r in diag] == [r["step"] for r in ref]
    for a, b in zip(diag, ref, strict=True):
        assert {n: m["rms"] for n, m in a["matrices"].items()} == {n: m["rms"] for n, m in b["matrices"].items()}
    assert RunDir(run).summary()["status"] == "completed"
    assert not [p for p in run.rglob("*.tmp")], "a killed write's temporary file is left"
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["latest", f"step_{STEPS - 4:08d}", f"step_{STEPS:08d}"], left  # pruned; no killed write left


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every killed one must reproduce."""
    run = tmp_path_factory.mktemp("faults") / "reference"
    assert main(["train", "tiny", "--out", str(run), *sets()]) == 0
    return run


# -- the child process ------------------------------------------------------------------------------------------
def _child(argv: list[str], hook: Hook | None, sig: int, log: str) -> None:
    with open(log, "w") as err:
        os.dup2(err.fileno(), 2)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the process ends with os._exit)
    sys.stderr = open(log, "a")  # noqa: SIM115
    if hook is not None:
        def profile(frame: FrameType, event: str, arg: Any) -> None:
            if hook(frame, event, arg):
                sys.setprofile(None)
                os.kill(os.getpid(), sig)
                time.sleep(60)  # SIGSTOP: stay here until the test resumes or kills this process
        sys.setprofile(profile)
    code = 1
    try:
        code = main(argv)
    finally:
        sys.setprofile(None)
        os._exit(code)


def spawn(tmp: Path, argv: list[str], hook: Hook | None = None, sig: int = signal.SIGKILL) -> multiprocessing.Process:
    """``widthwise ARGV`` in a forked process (stderr in ``tmp/child.log``), signalling itself where ``hook`` says."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv, hook, sig, str(tmp / "child.log")))
    proc.start()
    return proc


def _at(name: str, event: str = "call", nth: int = 1, where: Callable[[FrameType], bool] | None = None) -> Hook:
    """A hook true at the ``nth`` ``event`` (call, return, c_call) of the function ``name`` (a Python function's
    code name, or a builtin's ``__name__`` for c_call), where ``where(frame)`` holds."""
    count = [0]

    def hook(frame: FrameType, ev: str, arg: Any) -> bool:
        if ev != event:
            return False
        got = getattr(arg, "__name__", None) if ev == "c_call" else frame.f_code.co_name
        if got != name or (where is not None and not where(frame)):
            return False
        count[0] += 1
        return count[0] == nth
    return hook


def _inside(name: str, nth: int, then: Hook) -> Hook:
    """``then``, counted only inside the ``nth`` outermost call of functions named ``name`` (code name; a method
    and the function it calls may share it)."""
    calls, depth = [0], [0]

    def hook(frame: FrameType, ev: str, arg: Any) -> bool:
        if frame.f_code.co_name == name and ev in ("call", "return"):
            calls[0] += ev == "call" and depth[0] == 0
            depth[0] += 1 if ev == "call" else -1
            return False
        return calls[0] == nth and depth[0] > 0 and then(frame, ev, arg)
    return hook


def _killed(proc: multiprocessing.Process, timeout: float = 120) -> None:
    proc.join(timeout)
    assert proc.exitcode == -signal.SIGKILL, f"exit code {proc.exitcode}: not killed where asked"


def _kill_at_random(proc: multiprocessing.Process, run: Path, rng: random.Random, after: int) -> bool:
    """SIGKILL ``proc`` a random 0-150 ms after its metrics.jsonl holds ``after`` lines (at once if it reaches its
    last steps sooner: on a quiet machine the tiny run can finish within the delay); whether it was killed."""
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 120

    def lines() -> int:
        return metrics.read_bytes().count(b"\n") if metrics.exists() else 0

    while proc.is_alive() and time.monotonic() < deadline:
        if lines() >= after:
            until = time.monotonic() + rng.uniform(0, 0.15)
            while time.monotonic() < until and lines() < STEPS - 2:
                time.sleep(0.001)
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.join(120)
    return proc.exitcode == -signal.SIGKILL


# -- SIGKILL at random moments ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("kills", "every"), [(3, 4), pytest.param(10, 4, marks=pytest.mark.slow),
                                              pytest.param(8, 1, marks=pytest.mark.slow)])
def test_repeated_sigkills_at_random_moments_then_resume_give_the_uninterrupted_run(reference, tmp_path, kills, every):
    """``kills`` SIGKILLs in a row, each at a random moment of a different attempt (a step, a checkpoint write, a
    validation, a diagnostics measurement); then a resume ends exactly as the uninterrupted run. ``every=1``
    checkpoints every step, so most kills land inside a checkpoint write."""
    rng = random.Random(kills * 100 + every)
    run = tmp_path / "run"
    start = ["train", "tiny", "--out", str(run), *sets(f"train.checkpoint_every={every}")]
    resume = ["train", "--resume", str(run)]
    survived = 0
    for i in range(kills):
        after = rng.randint(2, STEPS - 4)
        proc = spawn(tmp_path, start if i == 0 or not RunDir(run).has_config() else resume)
        survived += _kill_at_random(proc, run, rng, after)
        assert RunDir(run).summary() is None, "the run finished before it could be killed"
    assert survived == kills
    assert main([*resume, "--set", f"train.checkpoint_every={4}"]) == 0
    _same_run(run, reference)


# -- SIGKILL inside a checkpoint write, at each of its moments ---------------------------------------------------
def _in_save(frame: FrameType) -> bool:
    return frame.f_code.co_name == "save_checkpoint"


def _latest(frame: FrameType) -> bool:
    return frame.f_code.co_name == "atomic_write_bytes" and Path(frame.f_locals["path"]).name == "latest"


#: Moments of the third checkpoint write (step 12, the first that prunes): weights written; optimizer state written;
#: folder complete, not renamed; renamed, `latest` not replaced; `latest`'s temp file written, not renamed; before
#: pruning; pruning half done.
MOMENTS = {
    "weights-written": lambda: _at("save_file", "return", 3),
    "optimizer-written": lambda: _inside("save_checkpoint", 3, _at("save", "return")),
    "before-rename": lambda: _at("replace", "c_call", 3, _in_save),
    "before-latest": lambda: _inside("save_checkpoint", 3, _at("atomic_write_text")),
    "latest-half-replaced": lambda: _at("replace", "c_call", 3, _latest),
    "before-prune": lambda: _at("_prune", "call", 3),
    "mid-prune": lambda: _inside("_prune", 3, _at("unlink", "c_call", 2)),
}
FAST_MOMENTS = ("weights-written", "before-rename", "latest-half-replaced")


def _temp_holds(*files: str) -> Callable[[Path], bool]:
    return lambda d: [sorted(p.name for p in t.iterdir()) for t in d.glob(".step_00000012.*")] == [sorted(files)]


#: What each kill leaves in checkpoints/ (proof that it landed there), and the step `latest` names.
LEFT: dict[str, tuple[int, Callable[[Path], bool]]] = {
    "weights-written": (8, _temp_holds("model.safetensors")),
    "optimizer-written": (8, _temp_holds("model.safetensors", "optimizer.pt")),
    "before-rename": (8, _temp_holds("model.safetensors", "optimizer.pt", "state.json")),
    "before-latest": (8, lambda d: (d / "step_00000012" / "state.json").is_file()),
    "latest-half-replaced": (8, lambda d: len(list(d.glob(".latest.*.tmp"))) == 1),
    "before-prune": (12, lambda d: all((d / f"step_{s:08d}" / "state.json").is_file() for s in (4, 8, 12))),
    "mid-prune": (12, lambda d: 0 < len(list((d / "step_00000004").iterdir())) < 3),
}


@pytest.mark.parametrize("moment", [pytest.param(m, marks=[] if m in FAST_MOMENTS else [pytest.mark.slow])
                                    for m in MOMENTS])
def test_sigkill_inside_a_checkpoint_write_then_resume_is_exact(reference, tmp_path, moment):
    run = tmp_path / "run"
    _killed(spawn(tmp_path, ["train", "tiny", "--out", str(run), *sets()], MOMENTS[moment]()))
    step, left = LEFT[moment]
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{step:08d}"  # a complete checkpoint
    assert left(run / "checkpoints"), sorted(p.name for p in (run / "checkpoints").iterdir())
    assert main(["train", "--resume", str(run)]) == 0
    _same_run(run, reference)


@pytest.mark.parametrize("name", ["config.yaml", pytest.param("plan.txt", marks=pytest.mark.slow)])
def test_sigkill_inside_an_atomic_write_of_the_run_leaves_nothing_once_resumed(reference, tmp_path, name):
    """Killed between writing the temporary file of ``name`` and renaming it: the resume removes the temporary
    file (under the run's lock) and trains exactly."""
    def at_rename(frame: FrameType) -> bool:
        return frame.f_code.co_name == "atomic_write_bytes" and Path(frame.f_locals["path"]).name == name

    run = tmp_path / "run"
    _killed(spawn(tmp_path, ["train", "tiny", "--out", str(run), *sets()], _at("replace", "c_call", 1, at_rename)))
    assert len(list(run.glob(f".{name}.*.tmp"))) == 1
    if not (run / "config.yaml").exists():  # killed before the run's first config.yaml: start again
        assert main(["train", "tiny", "--out", str(run), *sets()]) == 0
    else:
        assert main(["train", "--resume", str(run)]) == 0
    _same_run(run, reference)


# -- SIGKILL during validation and diagnostics ------------------------------------------------------------------
@pytest.mark.parametrize(("within", "nth"), [("evaluate", 2), ("measure", 2)])
def test_sigkill_during_validation_or_diagnostics_then_resume_is_exact(reference, tmp_path, within, nth):
    """Killed halfway through the second validation (step 12) or the second diagnostics measurement (step 20):
    the step's record is not half-written into the logs, and the resume repeats nothing."""
    run = tmp_path / "run"
    hook = _inside(within, nth, _at("forward", "call", 5) if within == "evaluate" else _at("rms_many", "call", 2))
    _killed(spawn(tmp_path, ["train", "tiny", "--out", str(run), *sets()], hook))
    assert main(["train", "--resume", str(run)]) == 0
    _same_run(run, reference)


def test_sigkill_during_diagnose_leaves_the_run_and_a_rerun_gives_the_same_result(reference, tmp_path):
    run = shutil.copytree(reference, tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _killed(spawn(tmp_path, ["diagnose", str(run), "--no-plots"], _at("_svdvals", "call", 3)))
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing half-written
    assert main(["diagnose", str(run), "--no-plots"]) == 0
    assert RunDir(run).diagnosis_file.is_file()


# -- a run another process holds --------------------------------------------------------------------------------
def _stopped(proc: multiprocessing.Process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        assert proc.is_alive()
        time.sleep(0.01)
    raise AssertionError("the child never stopped")


def test_a_run_a_live_process_trains_is_refused_and_its_sigkill_frees_it(reference, tmp_path, capsys):
    """While a process trains a run (stopped mid-training, holding it), `train --resume` and `train --out` of it are
    one line, exit 2, and change nothing; once that process is SIGKILLed its lock is gone and the resume is exact."""
    run = tmp_path / "run"
    proc = spawn(tmp_path, ["train", "tiny", "--out", str(run), *sets()], _at("evaluate", "call", 2),
                 sig=signal.SIGSTOP)
    try:
        _stopped(proc)
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        for argv in (["train", "--resume", str(run)], ["train", "tiny", "--out", str(run), *sets()]):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip()
            assert "\n" not in err and "Traceback" not in err, err
            assert "another widthwise process is training this run" in err or "already exists" in err, err
        assert main(["train", "--resume", str(run)]) == 2
        assert "another widthwise process is training this run" in capsys.readouterr().err
        assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
    assert main(["train", "--resume", str(run)]) == 0  # the dead process's lock does not block
    _same_run(run, reference)


def test_a_start_that_has_not_written_its_config_yet_is_not_joined_by_a_second(tmp_path, capsys):
    """Two `train --out` of one new folder: the second, while the first holds the lock but has written nothing else,
    is refused with one line."""
    run = tmp_path / "run"
    proc = spawn(tmp_path, ["train", "tiny", "--out", str(run), *sets()], _at("write_config"), sig=signal.SIGSTOP)
    try:
        _stopped(proc)
        assert sorted(p.name for p in run.iterdir()) == [".widthwise.lock"]
        assert main(["train", "tiny", "--out", str(run), *sets()]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "another widthwise process is training this run" in err, err
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
    assert sorted(p.name for p in run.iterdir()) == [".widthwise.lock"]


# -- a full disk and a read-only run directory (real mounts) ----------------------------------------------------
def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here (needs root and mount permission): {proc.stderr.strip()}")


def _hashes(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def tmpfs(tmp_path):
    where = tmp_path / "tmpfs"
    where.mkdir()
    _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where))
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("free", [500_000, 60_000, 4_000])
def test_a_full_disk_is_one_line_exit_2_and_the_previous_checkpoint_stays(tmpfs, capsys, free):
    """A 4 MiB tmpfs filled to ``free`` bytes under a run at its step-4 checkpoint: the resume's next write fails
    (the checkpoint's weights, its optimizer state, or a log line), one line naming it and the full disk, exit 2;
    the step-4 checkpoint is byte for byte intact, `latest` names it, and no partial checkpoint is left."""
    run = tmpfs / "run"
    short = sets("train.steps=4", "schedule.kind=constant", "schedule.warmup=1")
    assert main(["train", "tiny", "--out", str(run), *short]) == 0
    (run / "summary.json").unlink()
    capsys.readouterr()
    kept = _hashes(run / "checkpoints")
    stat = os.statvfs(tmpfs)
    (tmpfs / "filler").write_bytes(b"\0" * max(stat.f_bavail * stat.f_frsize - free, 0))
    assert main(["train", "--resume", str(run), "--set", "train.steps=8"]) == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("widthwise: error")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(run) in lines[0], lines
    assert _hashes(run / "checkpoints") == kept
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000004"]
    (tmpfs / "filler").unlink()
    assert main(["train", "--resume", str(run), "--set", "train.steps=8"]) == 0  # space again: it continues


def test_a_read_only_run_directory_is_one_line_exit_2(reference, tmp_path, capsys):
    """The run directory bind-mounted read-only (root ignores permission bits): `train --resume` and `train --out`
    under it are one line naming it, exit 2, nothing changed."""
    run = shutil.copytree(reference, tmp_path / "run")
    (run / "summary.json").unlink()
    _mount("--bind", str(run), str(run))
    try:
        _mount("-o", "remount,ro,bind", str(run))
        before = _hashes(run)
        assert main(["train", "--resume", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Read-only file system" in err and str(run) in err, err
        assert _hashes(run) == before
    finally:
        subprocess.run(["umount", "-l", str(run)], check=False)

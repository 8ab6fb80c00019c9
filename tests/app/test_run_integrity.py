"""Run-directory integrity (issue 18): no run inside another, pruning deletes only widthwise's checkpoint folders,
resume refuses a config.yaml edited since the checkpoint (naming the field), a run lock, crash logs in the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from widthwise.app import trainer
from widthwise.app.checkpoint import Checkpoint, save_checkpoint
from widthwise.app.rundir import RunDir
from widthwise.cli import main

pytestmark = pytest.mark.usefixtures("data_cache")

#: The smallest run that checkpoints mid-way: tiny, 10 steps (checkpoint at 5), no plots, TensorBoard or sample.
QUICK = ("train.threads=1", "train.progress=false", "train.plots=false", "train.tensorboard=false",
         "train.sample_tokens=0", "schedule.kind=constant", "train.checkpoint_every=5", "train.eval_every=5")


def sets(*overrides: str) -> list[str]:
    return [a for o in (*QUICK, *overrides) for a in ("--set", o)]


def losses(run: Path) -> list[float]:
    return [r["train_loss"] for r in RunDir(run).metrics()]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "warning" not in line and "resuming" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def halfway(tmp_path_factory) -> tuple[Path, Path]:
    """A run stopped at step 5 (``summary.json`` removed: as if killed after its checkpoint), and the same run
    trained to 10 steps uninterrupted."""
    root = tmp_path_factory.mktemp("integrity")
    assert main(["train", "tiny", "--out", str(root / "full"), *sets("train.steps=10")]) == 0
    assert main(["train", "tiny", "--out", str(root / "half"), *sets("train.steps=5")]) == 0
    (root / "half" / "summary.json").unlink()
    return root / "half", root / "full"


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _edit(run: Path, section: str, key: str, value: object) -> None:
    data = yaml.safe_load((run / "config.yaml").read_text())
    data[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _hashes(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".widthwise.lock"}


# -- no run inside another --------------------------------------------------------------------------------------
@pytest.mark.parametrize("inside", ["checkpoints/x", "checkpoints/step_00000099", "plots/a/b", "x"])
def test_a_run_inside_another_run_is_refused_and_changes_nothing(halfway, tmp_path, capsys, inside):
    run = _copy(halfway[0], tmp_path / "run")
    before = _hashes(run)
    assert main(["train", "tiny", "--out", str(run / inside), *sets("train.steps=5")]) == 2
    line = one_line(capsys)
    assert f"inside the run directory {run}" in line and "--out" in line, line
    assert not (run / inside).exists() and _hashes(run) == before


def test_pruning_deletes_only_the_checkpoint_folders_widthwise_wrote(tmp_path):
    """A folder under checkpoints/ that widthwise did not write (another run, a user's notes, a link) survives
    pruning, even named like a checkpoint; the run's own old checkpoints and killed writes' temp folders go."""
    ckpts = tmp_path / "checkpoints"
    foreign = {"step_00000001/config.yaml": "mine\n", "step_00000002/notes.txt": "mine\n",
               ".step_00000003.abc/notes.txt": "mine\n", "step_x/state.json": "{}"}
    for name, text in foreign.items():
        (ckpts / name).parent.mkdir(parents=True, exist_ok=True)
        (ckpts / name).write_text(text)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "state.json").write_text("{}")
    (ckpts / "step_00000004").symlink_to(tmp_path / "elsewhere")
    (ckpts / ".step_00000009.killed").mkdir()  # a killed write's temp folder: widthwise's own
    (ckpts / ".step_00000009.killed" / "model.safetensors").write_bytes(b"partial")
    import torch

    for step in (5, 6, 7, 8):
        save_checkpoint(ckpts, Checkpoint(step, {"w": torch.ones(2)}, {}, {}, {}, {}), keep=2)
    names = sorted(p.name for p in ckpts.iterdir())
    assert names == [".step_00000003.abc", "latest", "step_00000001", "step_00000002", "step_00000004",
                     "step_00000007", "step_00000008", "step_x"]
    for name, text in foreign.items():
        assert (ckpts / name).read_text() == text
    assert (tmp_path / "elsewhere" / "state.json").read_text() == "{}"


def test_a_foreign_folder_in_the_way_of_a_checkpoint_is_refused_not_deleted(tmp_path):
    import torch

    (tmp_path / "step_00000005").mkdir()
    (tmp_path / "step_00000005" / "notes.txt").write_text("mine\n")
    from widthwise.errors import CheckpointError

    with pytest.raises(CheckpointError, match="was not written by widthwise"):
        save_checkpoint(tmp_path, Checkpoint(5, {"w": torch.ones(2)}, {}, {}, {}, {}))
    assert (tmp_path / "step_00000005" / "notes.txt").read_text() == "mine\n"


# -- resume checks config.yaml against the checkpoint -----------------------------------------------------------
@pytest.mark.parametrize(("section", "key", "value", "recorded"), [
    ("optim", "lr", 0.02, "0.01"), ("model", "width", 64, "32"), ("schedule", "warmup", 1, "5"),
    ("train", "seed", 3, "0")])
def test_resume_refuses_a_config_yaml_edited_since_the_checkpoint_naming_the_field(
        halfway, tmp_path, capsys, section, key, value, recorded):
    run = _copy(halfway[0], tmp_path / "run")
    _edit(run, section, key, value)
    before = _hashes(run)
    assert main(["train", "--resume", str(run), "--set", "train.steps=10"]) == 2
    line = one_line(capsys)
    assert f"{section}.{key}={recorded}" in line and f"{section}.{key}={value}" in line and "config.yaml" in line, line
    assert _hashes(run) == before  # config.yaml not rewritten, no step trained


def _old_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of the halfway run whose step-5 checkpoint records no config, as an earlier widthwise wrote it."""
    run = _copy(src, dst)
    state = run / "checkpoints" / "step_00000005" / "state.json"
    data = json.loads(state.read_text())
    data.pop("config", None)
    state.write_text(json.dumps(data))
    return run


def test_a_checkpoint_without_a_recorded_config_resumes_with_a_warning(halfway, tmp_path, capsys):
    """Checkpoints of earlier versions record no config: accepted, with a warning, and the resume is exact."""
    run = _old_checkpoint(halfway[0], tmp_path / "run")
    assert main(["train", "--resume", str(run), "--set", "train.steps=10"]) == 0
    assert "records no config" in capsys.readouterr().err
    assert losses(run) == losses(halfway[1])


def test_an_old_checkpoint_under_an_edited_width_is_one_line_not_a_shape_traceback(halfway, tmp_path, capsys):
    run = _old_checkpoint(halfway[0], tmp_path / "run")
    _edit(run, "model", "width", 64)
    assert main(["train", "--resume", str(run), "--set", "train.steps=10"]) == 2
    line = one_line(capsys)
    assert "weights do not fit the model" in line and "size mismatch" in line, line


# -- the lock ---------------------------------------------------------------------------------------------------
def test_a_run_another_process_holds_is_refused_on_resume_and_on_out(halfway, tmp_path, capsys):
    run = _copy(halfway[0], tmp_path / "run")
    before = _hashes(run)
    with RunDir(run).hold():  # another open file description: flock refuses it as it refuses another process
        assert main(["train", "--resume", str(run), "--set", "train.steps=10"]) == 2
        assert "another widthwise process is training this run" in one_line(capsys)
        fresh = tmp_path / "fresh"
        with RunDir(fresh).hold():  # a start that has taken its lock and not yet written config.yaml
            assert main(["train", "tiny", "--out", str(fresh), *sets("train.steps=5")]) == 2
            assert "another widthwise process is training this run" in one_line(capsys)
    assert _hashes(run) == before
    assert main(["train", "--resume", str(run), "--set", "train.steps=10"]) == 0  # released: it trains
    assert losses(run) == losses(halfway[1])


# -- an unexpected exception: its traceback in the run's crash.log ----------------------------------------------
def test_an_unexpected_exception_while_training_writes_its_traceback_into_the_run(tmp_path, capsys, monkeypatch):
    """A bug (here an exception injected into the loop's multiplier statistics) is one line naming RUN/crash.log,
    exit 1. (Without a run the traceback goes to the cache: tests/cli/test_bad_inputs.py.)"""
    def broken(*args, **kwargs):
        raise RuntimeError("injected bug")

    monkeypatch.setattr(trainer, "multiplier_stats", broken)
    run = tmp_path / "run"
    assert main(["train", "tiny", "--out", str(run), *sets("train.steps=5")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line, = [line for line in err.splitlines() if line.startswith("widthwise: error")]
    assert line == f"widthwise: error: internal error: RuntimeError: injected bug (traceback in {run / 'crash.log'})"
    log = (run / "crash.log").read_text()
    assert "Traceback (most recent call last)" in log and "injected bug" in log


def test_a_start_the_session_refuses_leaves_no_folder_and_an_interrupted_start_can_start_again(tmp_path, capsys):
    """The lock makes the folder before the session checks the config: a refused start takes it away again, and a
    folder a killed start left (its lock, an empty checkpoints/, a temporary config.yaml) is accepted by --out."""
    run = tmp_path / "run"
    assert main(["train", "tiny", "--out", str(run), *sets("train.steps=5", "model.vocab_size=100")]) == 2
    assert "model.vocab_size" in one_line(capsys)
    assert not run.exists()
    (run / "checkpoints").mkdir(parents=True)
    (run / ".widthwise.lock").touch()
    (run / ".config.yaml.abcd1234.tmp").write_text("partial")
    assert main(["train", "tiny", "--out", str(run), *sets("train.steps=5")]) == 0
    assert not list(run.glob("*.tmp"))

"""Checkpoints: atomic writes (a failure mid-write leaves the previous one), pruning, clear errors."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import torch

from widthwise.app import checkpoint as ck
from widthwise.app.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from widthwise.errors import CheckpointError


def _ckpt(step: int) -> Checkpoint:
    model = {"w": torch.full((3, 2), float(step)), "b": torch.arange(3.0)}
    opt = {"state": {0: {"exp_avg": torch.ones(2), "step": torch.tensor(float(step))}}, "param_groups": [{"lr": 1e-3}]}
    return Checkpoint(step, model, opt, {"last_epoch": step}, {"torch": torch.get_rng_state()}, {"tokens": step * 10})


def test_roundtrip_and_latest(tmp_path):
    save_checkpoint(tmp_path, _ckpt(5))
    path = latest_checkpoint(tmp_path)
    assert path.name == "step_00000005"
    got = load_checkpoint(path)
    assert got.step == 5 and got.state["tokens"] == 50
    assert torch.equal(got.model["w"], torch.full((3, 2), 5.0))
    assert torch.equal(got.optimizer["state"][0]["exp_avg"], torch.ones(2))
    assert torch.equal(got.rng["torch"], torch.get_rng_state())


def test_keeps_newest(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, _ckpt(step), keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000003", "step_00000004"]


@pytest.mark.parametrize("fail_at", ["save_file", "torch.save", "replace"])
def test_failure_mid_write_leaves_previous_checkpoint(tmp_path, monkeypatch, fail_at):
    save_checkpoint(tmp_path, _ckpt(1))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    if fail_at == "save_file":
        monkeypatch.setattr(ck, "save_file", boom)
    elif fail_at == "torch.save":
        monkeypatch.setattr(ck.torch, "save", boom)
    else:
        real = os.replace

        def replace(src, dst):
            if "step_00000002" in str(dst):
                raise OSError("killed")
            return real(src, dst)

        monkeypatch.setattr(ck.os, "replace", replace)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, _ckpt(2))
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert load_checkpoint(latest_checkpoint(tmp_path)).step == 1
    assert not list(tmp_path.glob(".step_*")), "temporary folder left behind"



def _save_big(directory: str) -> None:
    big = Checkpoint(1, {"w": torch.zeros(4096, 4096)}, {"state": {}, "param_groups": []}, {}, {}, {})
    save_checkpoint(directory, big)
    os._exit(0)


def test_a_write_killed_inside_the_weights_writer_is_cleaned_at_the_next_save(tmp_path):
    """A real SIGKILL while safetensors writes the 64 MB weights: the folder it leaves (holding the writer's own
    temporary file) is widthwise's, so the next checkpoint removes it."""
    proc = multiprocessing.get_context("fork").Process(target=_save_big, args=(str(tmp_path),))
    proc.start()
    deadline, found = time.monotonic() + 60, []
    while not found and proc.is_alive() and time.monotonic() < deadline:
        found = [f for d in tmp_path.glob(".step_*") for f in d.iterdir() if f.name not in ck.FILES]
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL and found, "the write was not caught inside the weights writer"
    assert [p.name for p in tmp_path.glob(".step_*/*")] == [found[0].name]  # the writer's temporary file, alone
    save_checkpoint(tmp_path, _ckpt(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000002"]

def test_corrupt_parts_are_named(tmp_path):
    path = save_checkpoint(tmp_path, _ckpt(3))
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path)
    path = save_checkpoint(tmp_path, _ckpt(4))
    (path / "optimizer.pt").write_bytes(b"\x80garbage")
    with pytest.raises(CheckpointError, match="optimizer.pt"):
        load_checkpoint(path)
    path = save_checkpoint(tmp_path, _ckpt(5))
    (path / "state.json").write_text("{")
    with pytest.raises(CheckpointError, match="state.json"):
        load_checkpoint(path)
    (tmp_path / "latest").write_text("step_99999999\n")
    with pytest.raises(CheckpointError, match="latest"):
        latest_checkpoint(tmp_path)


def test_no_checkpoint_yet(tmp_path):
    assert latest_checkpoint(tmp_path) is None

"""Helpers of the sweep tests: find worker processes, read checkpoint steps, wait for a condition."""

from __future__ import annotations

import time
from pathlib import Path

#: Settings that make tiny sweep runs fast: no plots, TensorBoard or samples; multi-head attention at base 32.
QUIET = {"train.plots": False, "train.tensorboard": False, "train.sample_tokens": 0, "model.kv_heads": 2,
         "scaling.base_width": 32}


def worker_pids(run_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"widthwise.app.sweep.worker" in cmd and str(run_dir).encode() in cmd:
                pids.append(int(entry.name))
    return pids


def checkpoint_steps(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoints"
    return sorted(int(p.name.split("_")[-1]) for p in folder.glob("step_*")) if folder.is_dir() else []


def wait_for(condition, timeout: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)

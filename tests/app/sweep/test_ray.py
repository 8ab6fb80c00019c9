"""`widthwise sweep --executor ray` on a real local Ray instance (127.0.0.1): the same runs as the local executor,
a diverging point recorded as data, and a worker killed mid-run resumed from its checkpoint."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest
import ray
import yaml

from widthwise.app import trainer
from widthwise.app.config import apply_overrides
from widthwise.app.metrics import read_metrics
from widthwise.app.sweep.driver import run_sweep
from widthwise.app.sweep.spec import expand, load_sweep
from widthwise.app.sweep.store import read_results

from sweep_helpers import QUIET, checkpoint_steps, worker_pids

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread")


@pytest.mark.slow
def test_ray_sweep_runs_the_grid_resumes_a_killed_worker_and_matches_direct_training(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": "tiny", "grid": {"optim.lr": [0.01, 3.0]}, "set": {
        **QUIET, "train.steps": 60, "train.checkpoint_every": 5, "train.eval_every": 30, "diagnostics.every": 30}}))
    points = expand(load_sweep(sweep))
    good = tmp_path / "out" / "runs" / points[0].name
    killed: list[int] = []

    def kill_once() -> None:  # kill -9 the training process of the first point once it has a checkpoint
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            pids = worker_pids(good)
            if pids and any(s >= 10 for s in checkpoint_steps(good)):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.02)

    killer = threading.Thread(target=kill_once, daemon=True)
    killer.start()
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("widthwise.app.sweep").addHandler(handler)
    try:
        result = run_sweep(load_sweep(sweep), tmp_path / "out", workers=2, threads=1, executor="ray", progress=False)
    finally:
        logging.getLogger("widthwise.app.sweep").removeHandler(handler)
    killer.join()
    assert not ray.is_initialized()  # the instance it started is shut down
    assert result.exit_code == 0 and result.counts == {"completed": 1, "diverged": 1, "failed": 0}
    assert killed, "the worker finished before it could be killed"
    assert any("Ray cluster with 2 CPU(s)" in m for m in messages)
    assert any("killed by SIGKILL; resuming it from its checkpoint" in m for m in messages)
    rows = {r["lr"]: r for r in read_results(tmp_path / "out")}
    assert rows[3.0]["status"] == "diverged" and rows[3.0]["attempts"] == 1
    assert rows[0.01]["status"] == "completed" and rows[0.01]["attempts"] == 2
    assert rows[0.01]["worker"].startswith("ray:")
    assert [r["step"] for r in read_metrics(good / "metrics.jsonl")] == list(range(1, 61))
    config = apply_overrides(points[0].config, {"train.threads": 1, "train.progress": False})
    direct = trainer.start(config, tmp_path / "direct")
    assert rows[0.01]["val_loss"] == direct.summary["val_loss"]
    assert [r["train_loss"] for r in read_metrics(good / "metrics.jsonl")] == \
        [r["train_loss"] for r in read_metrics(direct.run_dir / "metrics.jsonl")]

"""`widthwise sweep --executor ray` on a real local Ray instance (127.0.0.1), one for the module: the same runs as the
local executor, a diverging point recorded as data, a worker killed mid-run resumed from its checkpoint, and a run
of two processes (torchrun) as one task that reserves both processes' CPUs."""

from __future__ import annotations

import json
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
from widthwise.app.sweep.executors import RayExecutor, tasks_that_fit
from widthwise.app.sweep.spec import expand, load_sweep
from widthwise.app.sweep.store import read_results
from widthwise.errors import SweepError

from sweep_helpers import QUIET, checkpoint_steps, worker_pids

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread", "local_ray")


@pytest.fixture(scope="module")
def local_ray(data_cache):
    """The instance a sweep starts where no cluster is given (2 CPUs on 127.0.0.1), started once for the module
    (about 8 s); the sweeps of the tests find it running and use it. Shut down by the executor that started it."""
    executor = RayExecutor(workers=2, threads=1)
    assert executor.started_here and executor.slots == 2
    yield executor
    executor.shutdown()
    assert not ray.is_initialized()


def run_logged(*args, **kwargs):
    """:func:`run_sweep` and the messages it logged."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("widthwise.app.sweep")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return run_sweep(*args, **kwargs), messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


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
    result, messages = run_logged(load_sweep(sweep), tmp_path / "out", workers=2, threads=1, executor="ray",
                                  progress=False)
    killer.join()
    assert ray.is_initialized()  # the module's instance: a sweep shuts down only one it started
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


@pytest.mark.slow  # a Ray task of a 2-rank torchrun: 50 s; make test (CI) runs it, as test_nproc's local one
def test_a_point_on_two_processes_runs_as_one_ray_task_of_a_two_rank_torchrun(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sets = {**QUIET, "train.steps": 2, "schedule.warmup": 1, "train.checkpoint_every": 2, "train.eval_every": 2,
            "diagnostics.every": 2, "train.compile": False}
    sweep.write_text(yaml.safe_dump({"base": "tiny", "grid": {"optim.lr": [0.01]}, "set": sets}))
    result, messages = run_logged(load_sweep(sweep), tmp_path / "out", workers=1, threads=1, executor="ray",
                                  progress=False, nproc=2)
    assert result.exit_code == 0 and result.counts == {"completed": 1, "diverged": 0, "failed": 0}
    assert "Ray, 1 task(s) at a time x 2 processes x 1 thread(s)" in messages
    [row] = read_results(tmp_path / "out")
    assert row["worker"].startswith("ray:") and row["attempts"] == 1 and row["tokens"] == 2 * 8 * 32
    summary = json.loads((tmp_path / "out" / "runs" / expand(load_sweep(sweep))[0].name / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "completed"


def test_a_ray_task_reserves_every_process_of_its_run_and_a_cluster_too_small_is_refused(local_ray):
    two = RayExecutor(workers=1, threads=1, nproc=2)  # the module's 2-CPU instance, no GPU
    assert not two.started_here and two.slots == 1
    assert two.resources == {"num_cpus": 2, "num_gpus": 0} and local_ray.resources == {"num_cpus": 1, "num_gpus": 0}
    assert two.describe() == "Ray, 1 task(s) at a time x 2 processes x 1 thread(s)"
    with pytest.raises(SweepError) as err:
        RayExecutor(workers=1, threads=2, nproc=2)
    assert str(err.value) == ("--threads 2 --nproc 2: a run needs 4 CPU(s) on one node, and the Ray cluster's nodes "
                              "have at most 2 CPU(s)")
    assert ray.is_initialized()  # refused without touching an instance it did not start
    # A run never spans nodes: on GPU nodes a task of 2 processes needs 2 of one node's GPUs and 2 x threads CPUs.
    nodes = [{"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 1}, {"CPU": 64}]
    assert tasks_that_fit(nodes, num_cpus=4, num_gpus=2) == 2
    assert tasks_that_fit(nodes, num_cpus=4, num_gpus=0) == 4 + 4 + 16
    assert tasks_that_fit(nodes, num_cpus=4, num_gpus=8) == 0

"""Where sweep runs execute: a pool of local worker processes, or tasks on a Ray cluster.

Both start the same worker process per attempt (:mod:`widthwise.app.sweep.worker`), with ``threads`` threads each
(and, where a run asks for ``nproc`` processes, a torchrun of them beneath it), and report ``(job, exit code,
result)`` when an attempt ends. An exit code below 0 means the worker was killed by that signal (or, on Ray, lost
with its node or worker).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import SweepError
from .spec import Point
from .worker import collect_result

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
Finished = tuple["Job", int, "dict[str, Any] | None"]


@dataclass
class Job:
    """One attempt at a grid point: its run directory and the log its worker appends to."""

    point: Point
    run_dir: Path
    log: Path


def worker_command(run_dir: Path, threads: int, parent: int, nproc: int = 1) -> list[str]:
    return [sys.executable, "-m", "widthwise.app.sweep.worker", str(run_dir), "--threads", str(threads),
            "--parent", str(parent), "--nproc", str(nproc)]


def worker_env(threads: int) -> dict[str, str]:
    """The environment of a worker: the threads it may use, for every library that reads them."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    return env


def run_attempt(config: dict[str, Any], run_dir: str, threads: int, log: str,
                nproc: int = 1) -> tuple[int, dict[str, Any] | None]:
    """One attempt, to completion, in a child process of the caller (``nproc`` processes under torchrun beneath it);
    ``(exit code, result)``. Ray runs this."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(worker_command(Path(run_dir), threads, os.getpid(), nproc), stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.STDOUT, env=worker_env(threads))
    try:
        proc.communicate(json.dumps(config).encode())
    except BaseException:  # cancelled: let the worker checkpoint before leaving
        proc.terminate()
        proc.wait()
        raise
    return proc.returncode, collect_result(Path(run_dir))


class LocalExecutor:
    """``workers`` runs at a time on this machine, each ``nproc`` process(es) (torchrun) of ``threads`` threads."""

    name = "local"

    def __init__(self, workers: int, threads: int, nproc: int = 1) -> None:
        self.slots, self.threads, self.nproc = workers, threads, nproc
        self.running: dict[subprocess.Popen, Job] = {}

    def describe(self) -> str:
        ranks = f" x {self.nproc} processes" if self.nproc > 1 else ""
        return f"{self.slots} local worker(s){ranks} x {self.threads} thread(s)"

    def submit(self, job: Job) -> None:
        log = open(job.log, "ab")  # noqa: SIM115 - the child writes to it until it exits
        try:
            proc = subprocess.Popen(worker_command(job.run_dir, self.threads, os.getpid(), self.nproc),
                                    stdin=subprocess.PIPE,
                                    stdout=log, stderr=subprocess.STDOUT, env=worker_env(self.threads))
        finally:
            log.close()
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(job.point.config.to_dict()).encode())
        proc.stdin.close()
        self.running[proc] = job

    def poll(self, timeout: float) -> list[Finished]:
        deadline = time.monotonic() + timeout
        while True:
            done = [(proc, code) for proc in self.running if (code := proc.poll()) is not None]
            if done or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        out = []
        for proc, code in done:
            job = self.running.pop(proc)
            out.append((job, code, collect_result(job.run_dir)))
        return out

    def shutdown(self) -> list[Job]:
        """SIGTERM every worker (each checkpoints and leaves), wait for them; the jobs that were running."""
        for proc in self.running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        jobs = list(self.running.values())
        self.running.clear()
        return jobs


class RayExecutor:
    """The same attempts as Ray tasks: an existing cluster at ``address``, or a local instance on 127.0.0.1 sized
    for ``workers`` tasks. Each task reserves ``num_cpus = threads * nproc`` and, on a cluster with GPUs,
    ``num_gpus = nproc`` (one per process; Ray sets the task's ``CUDA_VISIBLE_DEVICES`` and torchrun's ranks
    inherit it), all on one node: a run of several processes is a ``torchrun --standalone`` job there. Run
    directories must be on a filesystem the nodes share.
    """

    name = "ray"

    def __init__(self, workers: int, threads: int, address: str | None = None, nproc: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise SweepError("--executor ray: Ray is not installed; pip install 'widthwise[ray]'") from None
        self.ray = ray
        self.threads, self.nproc = threads, nproc
        self.started_here = not ray.is_initialized()
        if self.started_here:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers * threads * nproc, _node_ip_address="127.0.0.1", include_dashboard=False,
                         log_to_driver=False)
        cluster = ray.cluster_resources()
        cpus, gpus = int(cluster.get("CPU", 0)), int(cluster.get("GPU", 0))
        #: What each task reserves on its node.
        self.resources = {"num_cpus": threads * nproc, "num_gpus": nproc if gpus else 0}
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive", True)]
        self.slots = tasks_that_fit(nodes, **self.resources)
        if not self.slots:
            if self.started_here:
                ray.shutdown()
            raise SweepError(self._too_small(nodes))
        self.remote = ray.remote(run_attempt).options(**self.resources, max_retries=2)
        self.running: dict[Any, Job] = {}
        logger.info(f"Ray cluster with {cpus} CPU(s)" + (f" and {gpus} GPU(s)" if gpus else ""))

    def _too_small(self, nodes: list[dict[str, float]]) -> str:
        wants = {"CPU": self.resources["num_cpus"], "GPU": self.resources["num_gpus"]}
        need = [f"{count} {kind}(s)" for kind, count in wants.items() if count]
        has = [f"{max((int(n.get(kind, 0)) for n in nodes), default=0)} {kind}(s)" for kind, c in wants.items() if c]
        return (f"--threads {self.threads} --nproc {self.nproc}: a run needs {' and '.join(need)} on one node, and the "
                f"Ray cluster's nodes have at most {' and '.join(has)}")

    def describe(self) -> str:
        ranks = f" x {self.nproc} processes" if self.nproc > 1 else ""
        gpus = f", {self.resources['num_gpus']} GPU(s) per run" if self.resources["num_gpus"] else ""
        return f"Ray, {self.slots} task(s) at a time{ranks} x {self.threads} thread(s){gpus}"

    def submit(self, job: Job) -> None:
        ref = self.remote.remote(job.point.config.to_dict(), str(job.run_dir), self.threads, str(job.log), self.nproc)
        self.running[ref] = job

    def poll(self, timeout: float) -> list[Finished]:
        if not self.running:
            time.sleep(min(timeout, 0.05))
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=timeout)
        out = []
        for ref in ready:
            job = self.running.pop(ref)
            try:
                code, result = self.ray.get(ref)
            except Exception:  # the task's worker or node died (after Ray's own retries)
                code, result = -int(signal.SIGKILL), collect_result(job.run_dir)
            out.append((job, code, result))
        return out

    def shutdown(self) -> list[Job]:
        """Cancel the running tasks (their workers get SIGTERM and checkpoint); the jobs that were running."""
        for ref in self.running:
            self.ray.cancel(ref, force=False)
        jobs = list(self.running.values())
        if self.running:
            self.ray.wait(list(self.running), num_returns=len(self.running), timeout=120)
        self.running.clear()
        if self.started_here:
            self.ray.shutdown()
        return jobs


def tasks_that_fit(nodes: list[dict[str, float]], num_cpus: int, num_gpus: int) -> int:
    """How many tasks of ``num_cpus`` CPUs and ``num_gpus`` GPUs fit at once on ``nodes`` (each node's Ray
    resources), a task never spanning two nodes."""
    def fit(node: dict[str, float]) -> int:
        n = int(node.get("CPU", 0)) // num_cpus
        return min(n, int(node.get("GPU", 0)) // num_gpus) if num_gpus else n

    return sum(fit(node) for node in nodes)


def check_executor(name: str, address: str | None) -> None:
    """Reject an unknown executor or a Ray address without Ray before anything starts (whether a Ray cluster can
    hold a run's processes is checked once it is reached, by :class:`RayExecutor`)."""
    if name not in EXECUTORS:
        raise SweepError(f"--executor: unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}")
    if address and name != "ray":
        raise SweepError("--address is for --executor ray only")
    if address and address not in ("auto", "local"):
        check_reachable(address)


#: Seconds :func:`check_reachable` waits for a Ray cluster's address to accept a connection.
RAY_CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` that accepts a TCP connection within ``timeout`` seconds; else a
    :class:`SweepError` (Ray itself would keep retrying an unreachable address for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SweepError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        why = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise SweepError(f"--address {address}: cannot reach a Ray cluster there ({why}, waited up to "
                         f"{timeout:.0f} s)") from None


def make_executor(name: str, workers: int, threads: int, address: str | None = None,
                  nproc: int = 1) -> LocalExecutor | RayExecutor:
    check_executor(name, address)
    if name == "ray":
        return RayExecutor(workers, threads, address, nproc)
    return LocalExecutor(workers, threads, nproc)

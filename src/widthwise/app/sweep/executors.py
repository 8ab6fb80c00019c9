"""Where sweep runs execute: a pool of local worker processes, or tasks on a Ray cluster.

Both start the same worker process per attempt (:mod:`widthwise.app.sweep.worker`), with ``threads`` threads each, and
report ``(job, exit code, result)`` when an attempt ends. An exit code below 0 means the worker was killed by that
signal (or, on Ray, lost with its node or worker).
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


def run_attempt(config: dict[str, Any], run_dir: str, threads: int, log: str) -> tuple[int, dict[str, Any] | None]:
    """One attempt, to completion, in a child process of the caller; ``(exit code, result)``. Ray runs this."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(worker_command(Path(run_dir), threads, os.getpid()), stdin=subprocess.PIPE,
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
    """The same attempts as Ray tasks (``num_cpus=threads`` each): an existing cluster at ``address``, or a local
    instance on 127.0.0.1 with ``workers * threads`` CPUs. Run directories must be on a filesystem the nodes share.
    """

    name = "ray"

    def __init__(self, workers: int, threads: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise SweepError("--executor ray: Ray is not installed; pip install 'widthwise[ray]'") from None
        self.ray = ray
        self.threads = threads
        self.started_here = not ray.is_initialized()
        if self.started_here:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=workers * threads, _node_ip_address="127.0.0.1", include_dashboard=False,
                         log_to_driver=False)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        self.slots = max(1, cpus // threads) if address or not self.started_here else workers
        if cpus < threads:
            raise SweepError(f"--threads {threads}: the Ray cluster has only {cpus} CPU(s)")
        self.remote = ray.remote(run_attempt).options(num_cpus=threads, max_retries=2)
        self.running: dict[Any, Job] = {}
        logger.info(f"Ray cluster with {cpus} CPU(s)")

    def describe(self) -> str:
        return f"Ray, {self.slots} task(s) at a time x {self.threads} thread(s)"

    def submit(self, job: Job) -> None:
        ref = self.remote.remote(job.point.config.to_dict(), str(job.run_dir), self.threads, str(job.log))
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


def check_executor(name: str, address: str | None, nproc: int = 1) -> None:
    """Reject an unknown executor, a Ray address without Ray, or several processes per run on Ray, before anything
    starts."""
    if name not in EXECUTORS:
        raise SweepError(f"--executor: unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}")
    if address and name != "ray":
        raise SweepError("--address is for --executor ray only")
    if nproc > 1 and name != "local":
        raise SweepError("--nproc: several processes per run run on the local executor only (on Ray, see "
                         "docs/limitations.md)")
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
    check_executor(name, address, nproc)
    if name == "ray":
        return RayExecutor(workers, threads, address)
    return LocalExecutor(workers, threads, nproc)

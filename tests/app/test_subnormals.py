"""Subnormal floats flushed to zero on every CPU thread a step runs on, not only the calling one."""

from __future__ import annotations

import pytest
import torch

from widthwise.app.runtime import resolve_runtime
from widthwise.app.subnormals import flush_subnormals, subnormals_survive


@pytest.fixture
def two_threads():
    """Two torch threads with their pool started, and this process's flush mode and thread count put back after."""
    threads, flushed = torch.get_num_threads(), subnormals_survive() == 0
    torch.set_num_threads(2)
    (torch.ones(1 << 20) * 2).sum()  # the OpenMP pool's worker exists from here on
    yield
    torch.set_num_threads(2)
    flush_subnormals(flushed)
    torch.set_num_threads(threads)


def test_torchs_own_switch_leaves_the_worker_threads_computing_with_subnormals(two_threads):
    """Why :func:`flush_subnormals` exists: ``torch.set_flush_denormal`` sets the calling thread only."""
    flush_subnormals(False)
    assert subnormals_survive(1 << 20) == 1 << 20
    torch.set_flush_denormal(True)
    assert 0 < subnormals_survive(1 << 20) < 1 << 20  # the main thread's half flushed, the worker's not


def test_every_thread_of_the_pool_flushes_and_threads_made_later_too(two_threads):
    flush_subnormals(False)
    assert flush_subnormals() == 2
    assert subnormals_survive() == 0
    torch.set_num_threads(2)  # unchanged pool: still flushed
    assert subnormals_survive() == 0
    assert flush_subnormals(False) == 2
    assert subnormals_survive() == 1 << 20


def test_a_cpu_runtime_flushes_unless_told_not_to(two_threads):
    flush_subnormals(False)
    kept = resolve_runtime("cpu", "float32", False, 2, 64, flush=False)
    assert kept.subnormals_flushed == 0 and subnormals_survive() == 1 << 20
    assert "subnormals" not in kept.describe()
    runtime = resolve_runtime("cpu", "float32", False, 2, 64)
    assert runtime.subnormals_flushed == 2 and subnormals_survive() == 0
    assert "subnormals flushed" in runtime.describe() and runtime.to_dict()["subnormals_flushed"] == 2

"""The allocator setting: a CPU training step stops faulting its freed tensors back in (glibc)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from widthwise.app import allocator

PROBE = """
import resource, sys, torch
torch.set_num_threads(1)
if sys.argv[1] == "on":
    from widthwise.app.allocator import retain_freed_memory
    assert retain_freed_memory()
model = torch.nn.Sequential(torch.nn.Linear(256, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 4096))
x = torch.randn(512, 256)
def step():
    model(x).logsumexp(-1).mean().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def _faults_per_step(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in allocator._USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.slow  # two interpreters with torch: make test (CI) runs it; the wiring test below is fast
def test_a_step_no_longer_faults_its_tensors_in_once_freed_memory_is_kept():
    """A step of 12 MB of activations and 8 MB of logits: thousands of page faults a step by default (measured
    10,740), a few hundred at most once the process keeps what it frees (measured 409)."""
    default, kept = _faults_per_step("off"), _faults_per_step("on")
    assert default > 2000 and kept * 5 < default, (default, kept)


def test_an_allocator_the_environment_sets_is_left_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert allocator.retain_freed_memory() is False
    monkeypatch.setattr(allocator, "_done", None)  # the next caller decides again


def test_a_cpu_runtime_keeps_freed_memory(monkeypatch):
    from widthwise.app.runtime import resolve_runtime

    for name in allocator._USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(allocator, "_done", None)
    resolve_runtime("cpu", "float32", False, 1, 64)
    assert allocator._done is True

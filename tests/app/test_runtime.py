"""The fast path is chosen by measurement: bf16 only where it is faster, compile only where it pays."""

from __future__ import annotations

import pytest
import torch

from widthwise.app import runtime
from widthwise.app.runtime import compile_pays, resolve_runtime


def test_compile_pays_only_for_long_runs():
    assert not compile_pays(400, 0.3)  # the demo: saves ~36 s, costs ~45 s
    assert compile_pays(2000, 0.3)
    assert not compile_pays(10_000, 0.001)


def test_bf16_is_chosen_by_the_probe(monkeypatch):
    speeds = {torch.float32: 1.0, torch.bfloat16: 10.0}  # bf16 10x slower, as on CPUs without bf16 units
    monkeypatch.setattr(runtime, "matmul_seconds", lambda n, dtype: speeds[dtype] * 1e-3)
    slow = resolve_runtime("cpu", "auto", "auto", 1, 64, 1e9, 100)
    assert slow.dtype == torch.float32 and slow.bf16_probe_speedup == pytest.approx(0.1)
    speeds[torch.bfloat16] = 0.1  # AMX-class: bf16 10x faster
    fast = resolve_runtime("cpu", "auto", "auto", 1, 64, 1e9, 100)
    assert fast.dtype == torch.bfloat16
    assert resolve_runtime("cpu", "float32", False, 1, 64).dtype == torch.float32


def test_step_estimate_uses_the_measured_matmul_speed(monkeypatch):
    monkeypatch.setattr(runtime, "matmul_seconds", lambda n, dtype: 2 * n**3 / 100e9)  # 100 GFLOP/s
    r = resolve_runtime("cpu", "float32", "auto", 1, 64, flops_per_step=50e9, steps=10)
    assert r.estimated_step_s == pytest.approx(50e9 / (100e9 * runtime.MATMUL_EFFICIENCY))
    assert r.compile is False
    assert resolve_runtime("cpu", "float32", "auto", 1, 64, 50e9, steps=200).compile is True  # 200 x 1 s x 0.3 > 45 s


def test_explicit_cuda_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")  # never the case in CI
    with pytest.raises(ValueError, match="train.device: cuda requested"):
        resolve_runtime("cuda", "auto", "auto", 1, 64)


def test_bf16_probe_stays_small_at_any_width(monkeypatch):
    """A CPU without bf16 units is 50-100x slower in bf16: probing at the model's scale cost 14 s at width 256."""
    asked = []
    monkeypatch.setattr(runtime, "matmul_seconds", lambda n, dtype: asked.append((n, dtype)) or 1e-3)
    resolve_runtime("cpu", "auto", "auto", 1, 512, 1e9, 100)
    assert {n for n, dtype in asked if dtype == torch.bfloat16} == {runtime.BF16_PROBE_SIZE}
    assert max(n for n, _ in asked) == 1024  # fp32 speed is still measured at the model's scale

"""The bf16-or-fp32 probe: measured once per process, consistent with its threshold."""

from __future__ import annotations

import pytest
import torch

from widthwise import hardware


def test_cpu_bf16_is_fast_follows_the_cached_probe():
    speedup = hardware.cpu_bf16_speedup()
    assert speedup > 0
    before = hardware.cpu_bf16_speedup.cache_info()
    assert hardware.bf16_is_fast(torch.device("cpu")) == (speedup >= hardware.BF16_MIN_SPEEDUP)
    assert hardware.bf16_is_fast("cpu") == hardware.bf16_is_fast(torch.device("cpu"))
    after = hardware.cpu_bf16_speedup.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 3  # served from the cache, not re-measured


def test_the_probe_keeps_the_best_of_its_rounds(monkeypatch):
    seconds = iter([0.016, 0.025, 0.001, 0.030, 0.002, 0.020])  # fp32, bf16 interleaved; a slow first fp32 round
    monkeypatch.setattr(hardware, "matmul_seconds", lambda size, dtype: next(seconds))
    hardware.cpu_bf16_speedup.cache_clear()
    try:
        assert hardware.cpu_bf16_speedup() == pytest.approx(0.001 / 0.020)
    finally:
        hardware.cpu_bf16_speedup.cache_clear()


def test_other_devices_are_not_bf16_fast():
    assert hardware.bf16_is_fast(torch.device("meta")) is False


def test_matmul_seconds_is_positive():
    assert hardware.matmul_seconds(32, torch.float32, repeats=3) > 0

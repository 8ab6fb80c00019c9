"""The fast path is chosen by measurement: bf16 only where it is faster, compile only where it pays; measured once
per machine and cached, so a noisy probe cannot make two runs of one config compute differently."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from widthwise.app import runtime
from widthwise.app.config import load_config
from widthwise.app.runtime import compile_pays, resolve_runtime
from widthwise.app.session import Session


@pytest.fixture(autouse=True)
def numerics_cache(tmp_path, monkeypatch):
    """A fresh, empty numerics cache for each test (``$WIDTHWISE_CACHE``)."""
    monkeypatch.setenv("WIDTHWISE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / runtime.NUMERICS_FILE


def fake_probe(monkeypatch, bf16_speedup: float) -> list:
    """The timing probe reports bf16 ``bf16_speedup`` times faster than fp32; returns the calls it gets."""
    calls = []

    def seconds(n, dtype):
        calls.append((n, dtype))
        return 1e-3 / (bf16_speedup if dtype == torch.bfloat16 else 1.0)

    monkeypatch.setattr(runtime, "matmul_seconds", seconds)
    return calls


def test_compile_pays_only_for_long_runs():
    assert not compile_pays(400, 0.3)  # the demo: saves ~36 s, costs ~45 s
    assert compile_pays(2000, 0.3)
    assert not compile_pays(10_000, 0.001)


def test_bf16_is_chosen_by_the_probe(monkeypatch, tmp_path):
    fake_probe(monkeypatch, 0.1)  # bf16 10x slower, as on CPUs without bf16 units
    slow = resolve_runtime("cpu", "auto", "auto", 1, 64, 1e9, 100)
    assert slow.dtype == torch.float32 and slow.bf16_probe_speedup == pytest.approx(0.1)
    monkeypatch.setenv("WIDTHWISE_CACHE", str(tmp_path / "other"))  # another machine's cache
    fake_probe(monkeypatch, 10.0)  # AMX-class: bf16 10x faster
    fast = resolve_runtime("cpu", "auto", "auto", 1, 64, 1e9, 100)
    assert fast.dtype == torch.bfloat16
    assert resolve_runtime("cpu", "float32", False, 1, 64).dtype == torch.float32  # explicit values win
    assert runtime.resolve_ns_dtype("auto", torch.device("cpu")) == "bfloat16"  # Muon's NS: the same decision
    assert runtime.resolve_ns_dtype("float32", torch.device("cpu")) == "float32"


def test_a_miss_measures_and_writes_the_cache_a_hit_measures_nothing(monkeypatch, numerics_cache):
    calls = fake_probe(monkeypatch, 10.0)
    assert resolve_runtime("cpu", "auto", "auto", 1, 64, 1e9, 100).dtype == torch.bfloat16
    entry = json.loads(numerics_cache.read_text())[runtime.machine_key()]
    assert entry["bf16"]["dtype"] == "bfloat16" and len(entry["bf16"]["speedups"]) == runtime.NUMERICS_PROBES
    assert entry["fp32_flops_256"] == pytest.approx(2 * 256**3 / 1e-3)
    calls.clear()
    fake_probe(monkeypatch, 0.1)  # the probe now disagrees: the cached decision stands
    again = resolve_runtime("cpu", "auto", "auto", 1, 64, 1e9, 100)
    assert again.dtype == torch.bfloat16 and again.bf16_probe_speedup == pytest.approx(10.0)
    assert calls == []  # fp32 speed at this width was cached too


def test_the_margin_keeps_a_cpu_near_the_threshold_on_fp32(monkeypatch, tmp_path):
    """x1.35 clears the 1.3 threshold but not its margin: fp32, once and for all, instead of flipping with load."""
    fake_probe(monkeypatch, runtime.BF16_MIN_SPEEDUP + 0.05)
    assert resolve_runtime("cpu", "auto", False, 1, 64).dtype == torch.float32
    monkeypatch.setenv("WIDTHWISE_CACHE", str(tmp_path / "other"))
    fake_probe(monkeypatch, runtime.BF16_MIN_SPEEDUP * runtime.BF16_MARGIN * 1.05)
    assert resolve_runtime("cpu", "auto", False, 1, 64).dtype == torch.bfloat16


def test_the_decision_is_the_median_of_several_probes(monkeypatch):
    """One probe read under load (a spike) does not decide: the median of the interleaved pairs does."""
    readings = iter([1e-3, 1e-4, 1e-3, 1e-4, 1e-3, 1e-2, 1e-3, 1e-4, 1e-3, 1e-4])  # fp32, bf16, ...: one bf16 spike
    monkeypatch.setattr(runtime, "matmul_seconds", lambda n, dtype: next(readings))
    decision = runtime.machine_measure("bf16", runtime._probe_bf16)
    assert decision["dtype"] == "bfloat16" and decision["speedup"] == pytest.approx(10.0)


def test_a_corrupt_cache_is_logged_and_rewritten(monkeypatch, numerics_cache, caplog):
    numerics_cache.parent.mkdir(parents=True)
    for junk in ("{not json", "[1, 2]"):
        numerics_cache.write_text(junk)
        fake_probe(monkeypatch, 0.1)
        with caplog.at_level(logging.WARNING, logger="widthwise.app.runtime"):
            assert resolve_runtime("cpu", "auto", False, 1, 64).dtype == torch.float32
        assert sum("numerics cache" in r.message for r in caplog.records) == 1
        caplog.clear()
        assert json.loads(numerics_cache.read_text())[runtime.machine_key()]["bf16"]["dtype"] == "float32"


def test_another_machine_key_measures_again_and_keeps_both(monkeypatch, numerics_cache):
    fake_probe(monkeypatch, 0.1)
    assert resolve_runtime("cpu", "auto", False, 1, 64).dtype == torch.float32
    monkeypatch.setattr(runtime, "machine_key", lambda: "another CPU [0123456789ab] torch 9.9")  # or a new torch
    fake_probe(monkeypatch, 10.0)
    assert resolve_runtime("cpu", "auto", False, 1, 64).dtype == torch.bfloat16
    assert len(json.loads(numerics_cache.read_text())) == 2


def test_the_machine_key_names_the_cpu_and_torch():
    key = runtime.machine_key()
    assert key == runtime.machine_key() and key.endswith(f"torch {torch.__version__}") and "[" in key


@pytest.mark.usefixtures("one_thread")
def test_two_fresh_runs_of_one_config_compute_alike_when_the_probe_disagrees(monkeypatch, data_cache):
    """The measured failure: a probe read near the threshold flipped one of four runs to fp32 and its loss. Here the
    second run's probe says bf16 is 10x faster; it keeps the first run's cached fp32, and its losses exactly."""
    config = load_config("tiny", ["train.threads=1", "train.progress=false", "diagnostics.every=null",
                                  f"data.cache_dir={data_cache}", "train.seed=3"])

    def losses() -> tuple[torch.dtype, list[float]]:
        session = Session(config)
        return session.runtime.dtype, [float(session.train_step()[0]) for _ in range(4)]

    fake_probe(monkeypatch, 0.1)
    first = losses()
    fake_probe(monkeypatch, 10.0)
    second = losses()
    assert first[0] == second[0] == torch.float32
    assert first[1] == second[1]


def test_step_estimate_uses_the_measured_matmul_speed(monkeypatch):
    monkeypatch.setattr(runtime, "matmul_seconds", lambda n, dtype: 2 * n**3 / 100e9)  # 100 GFLOP/s
    r = resolve_runtime("cpu", "float32", "auto", 1, 64, flops_per_step=50e9, steps=10)
    assert r.estimated_step_s == pytest.approx(50e9 / (100e9 * runtime.MATMUL_EFFICIENCY))
    assert r.compile is False
    assert resolve_runtime("cpu", "float32", "auto", 1, 64, 50e9, steps=200).compile is True  # 200 x 1 s x 0.3 > 45 s
    monkeypatch.setattr(runtime, "matmul_seconds", lambda n, dtype: 2 * n**3 / 1e9)  # a busy moment: 100x slower
    cached = resolve_runtime("cpu", "float32", "auto", 1, 64, flops_per_step=50e9, steps=10)
    assert cached.estimated_step_s == pytest.approx(r.estimated_step_s)  # the machine's speed, measured once


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

"""The multiplier-overhead benchmark runs at a tiny size and reports every figure (no timing asserts)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    """The benchmark script ``benchmarks/<name>.py`` as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_multiplier_overhead_benchmark_reports_its_figures(capsys):
    result = load("multiplier_overhead").main(["--width", "64", "--depth", "1", "--vocab", "128", "--batch", "2",
                                               "--seq", "8", "--steps", "3", "--warmup", "1"])
    assert result["steps_per_variant"] == 3
    assert result["pair_ratio_p25"] <= result["pair_ratio_median"] <= result["pair_ratio_p75"]
    assert result["multiplier_train_overhead"] > 0 and result["tokens_per_s_none"] > 0
    assert len(result["loadavg_before"]) == 3
    assert '"multiplier_train_overhead"' in capsys.readouterr().out


def test_trainer_throughput_benchmark_reports_every_variant(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WIDTHWISE_CACHE", str(tmp_path))
    result = load("trainer_throughput").main(["--config", "tiny", "--steps", "2", "--bf16-steps", "1", "--warmup", "1",
                          "--variants", "eager_fp32,eager_bf16", "--set", "train.threads=1"])
    assert result["steps_measured"] == {"eager_fp32": 2, "eager_bf16": 1}
    assert result["tokens_per_s"]["eager_fp32"] > 0 and result["speedup_vs_eager_fp32"]["eager_fp32"] == 1.0
    assert '"tokens_per_s"' in capsys.readouterr().out


def test_diagnostics_overhead_benchmark_reports_its_figures(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WIDTHWISE_CACHE", str(tmp_path))
    result = load("diagnostics_overhead").main(["--config", "tiny", "--rounds", "2", "--every", "3",
                                                "--set", "train.threads=1"])
    assert result["every"] == 3 and result["rounds"] == 2 and result["gain_sequences"] == 4
    assert result["overhead"] == pytest.approx(result["measure_s_median"] / (3 * result["step_s_median"]), rel=1e-3)
    assert all(v > 0 for v in result["components_s_median"].values())
    assert '"overhead"' in capsys.readouterr().out

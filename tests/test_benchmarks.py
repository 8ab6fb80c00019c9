"""The HF multiplier-overhead benchmark script runs at a tiny size and reports every figure (no timing asserts)."""

import importlib.util
from pathlib import Path

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

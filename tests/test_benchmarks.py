"""The multiplier-overhead benchmark runs at a tiny size and reports every figure (no timing asserts)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "multiplier_overhead.py"


def test_multiplier_overhead_benchmark_reports_its_figures(capsys):
    spec = importlib.util.spec_from_file_location("multiplier_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--width", "64", "--depth", "1", "--vocab", "128", "--batch", "2", "--seq", "8",
                          "--reps", "2", "--steps", "1", "--warmup", "1"])
    assert result["steps_per_variant"] == 2
    assert result["multiplier_train_overhead"] > 0 and result["tokens_per_s_none"] > 0
    assert len(result["loadavg_before"]) == 3
    assert '"multiplier_train_overhead"' in capsys.readouterr().out

"""The benchmark scripts run at a tiny size and report every figure (no timing asserts)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from widthwise.app.bench.figures import VARIANTS
from widthwise.app.bench.passes import multiplied_weights
from widthwise.app.bench.sessions import Setting, session

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str):
    """The benchmark script ``benchmarks/<name>.py`` as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dynamo looks a traced function's module up by name
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


FLOOR = ["--config", "tiny", "--width", "32", "--batch", "2", "--seq", "16", "--rounds", "2", "--steps", "2",
         "--evict-mb", "1", "--threads", "1", "--set", "model.kv_heads=2", "--set", "scaling.base_width=32"]


def _check_floor(result: dict, paths: set[str], embedding: set[str] = frozenset()) -> None:
    assert set(result["ms_above_leaf"]) == paths | embedding | {"embedding"}
    assert set(result["median_ms"]) == paths | embedding | {"leaf", "embedding", "embedding_leaf"}
    assert result["matrices"] == 2 * 7 and result["tokens_per_step"] == 32 and result["step_ms"] > 0
    assert set(result["share_of_step"]) == set(result["ms_above_leaf"]) and len(result["loadavg_before"]) == 3


def test_multiplier_floor_benchmark_reports_each_path(data_cache, capsys):
    result = load("multiplier_floor").main([*FLOOR, "--no-compile"])
    _check_floor(result, {"widthwise", "products", "fused"})
    assert '"ms_above_leaf"' in capsys.readouterr().out


@pytest.mark.slow
def test_multiplier_floor_benchmark_compiles_the_floor(data_cache):
    result = load("multiplier_floor").main(FLOOR)
    _check_floor(result, {"widthwise", "products", "fused", "compiled", "compiled_fused"},
                 {"embedding_compiled", "embedding_compiled_fused", "embedding_compiled_leaf"})
    ms = result["median_ms"]
    assert result["compiled_embedding_cost"] == {  # read against the compiled plain lookup
        name: pytest.approx(ms[name] - ms["embedding_compiled_leaf"], abs=2e-4)
        for name in ("embedding_compiled", "embedding_compiled_fused")}


@pytest.mark.slow
def test_gains_forward_benchmark_times_the_stop_before_the_head(data_cache, capsys):
    result = load("gains_forward").main(["--config", "tiny", "--width", "32", "--seq", "16", "--sequences", "4",
                                         "--steps", "1", "--rounds", "2", "--threads", "1",
                                         "--set", "scaling.base_width=32"])
    assert set(result["median_ms"]) == {"plain", "full", "stopped"} and all(result["median_ms"].values())
    assert result["head"] == "head" and result["tokens"] == 64 and result["max_rel_difference"] < 1e-5
    assert '"max_rel_difference"' in capsys.readouterr().out


@pytest.mark.slow
def test_the_gpu_check_script_runs_its_bench_and_writes_what_comes_back(data_cache, tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "DEVICE": "cpu", "MODES": "eager_fp32",
           "WIDTHS": "32", "BATCH": "2", "SEQ": "16", "REPS": "2", "ROUNDS": "1"}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "tiny", "--threads", "1", "--set",
                           "model.kv_heads=2", "--set", "scaling.base_width=32"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert [r["width"] for r in report["results"]] == [32] and report["plan"]["repeats"] == 1
    assert report["plan"]["seq_len"] == 16 and report["muon_optimizer"]
    assert "torch" in (tmp_path / "env.txt").read_text() and (tmp_path / "bench_gpu.png").stat().st_size
    assert "results:" in (tmp_path / "log.txt").read_text()
    failed = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "tiny"], env={**env, "WIDTHS": "0"},
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2  # the bench's exit code comes through the pipe to tee


@pytest.mark.slow
def test_merged_update_benchmark_moves_the_parameters_as_todays_path_does(data_cache, capsys):
    result = load("merged_update").main(["--config", "tiny", "--width", "32", "--rounds", "2", "--evict-mb", "1",
                                         "--threads", "1", "--no-compile", "--set", "model.kv_heads=2",
                                         "--set", "scaling.base_width=32"])
    assert result["matrices"] == 2 * 7 and not result["compiled"]
    assert result["merged_vs_today_rel_diff"] < 1e-5 and result["rebuilt_w_rel_diff"] < 1e-6
    assert set(result["median_ms"]) == {"plain", "plain_compiled", "today", "merged"}
    assert '"ms_above_plain"' in capsys.readouterr().out


@pytest.mark.slow
def test_merged_step_benchmark_trains_as_todays_path_does(data_cache, capsys):
    result = load("merged_step").main(["--config", "tiny", "--width", "32", "--batch-size", "2", "--rounds", "2",
                                       "--threads", "1", "--no-compile", "--set", "model.kv_heads=2",
                                       "--set", "scaling.base_width=32"])
    gaps = result["same_state_gaps"]
    assert max(gaps["V"], gaps["r"], gaps["c"]) < 1e-3 and gaps["W_rebuilt"] < 1e-6
    assert set(result["median_ms"]) == {"none", "none_aa", "row_col", "merged"} and all(result["median_ms"].values())
    assert result["tokens_per_step"] == 256 and not result["compiled"] and result["first_merged_step_s"] >= 0
    assert '"ratio_to_none"' in capsys.readouterr().out


DISPATCH = ["--config", "tiny", "--width", "32", "--batch-size", "2", "--seq", "16", "--rounds", "2", "--warmup", "1",
            "--threads", "1", "--set", "model.kv_heads=2", "--set", "scaling.base_width=32"]


def _check_dispatch(result: dict) -> None:
    assert set(result["median_ms"]) == {"none", "none_aa", "products", "fused"}
    for parts in result["median_ms"].values():
        assert parts["step"] == pytest.approx(parts["forward_backward"] + parts["update"], rel=0.5)
        assert parts["forward_backward"] > 0 and parts["update"] > 0
    assert result["hand_written_layers"] == 2 * 7 and result["tokens_per_step"] == 32
    assert set(result["ratio_to_none"]) == {"none_aa", "products", "fused"} and result["fused_over_products_paired"] > 0


def test_compiled_dispatch_benchmark_puts_every_matrix_on_the_hand_written_backward(data_cache, capsys):
    module = load("compiled_dispatch")
    result = module.main([*DISPATCH, "--mode", "eager_fp32"])
    _check_dispatch(result)
    assert result["mode"] == "eager_fp32" and '"fused_over_products_paired"' in capsys.readouterr().out
    run = session(Setting("tiny", 32, "eager_fp32", 2, 16, 1), ["model.kv_heads=2", "scaling.base_width=32",
                                                                 *VARIANTS["row_col"]])
    layers = [m for m in run.model.modules() if isinstance(m, torch.nn.Linear) and hasattr(m, "parametrizations")]
    assert "ScaledWeight" not in type(layers[0].weight.grad_fn).__name__  # tiny weights: the products by default
    assert module.on_hand_written_backward(run) == len(multiplied_weights(run.model)[0]) == len(layers)
    assert all("ScaledWeight" in type(m.weight.grad_fn).__name__ for m in layers)


@pytest.mark.slow
def test_compiled_dispatch_benchmark_compiles_both_paths(data_cache):
    result = load("compiled_dispatch").main(DISPATCH)
    _check_dispatch(result)
    assert result["mode"] == "compile" and "compile on" in result["runtime"]

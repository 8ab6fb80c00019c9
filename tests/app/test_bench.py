"""``widthwise bench`` end to end at a tiny size (the output's shape, never timings), and its bad inputs."""

from __future__ import annotations

import json
import time

import pytest
import torch

from widthwise.app.bench.runner import TARGETS, bench_plan, table
from widthwise.app.bench.sessions import PlainLoop, Setting, bench_config, session
from widthwise.cli import main
from widthwise.errors import ConfigError

TINY = ["tiny", "--widths", "64,32", "--batch-size", "2", "--seq-len", "16", "--reps", "2", "--rounds", "1",
        "--threads", "1", "--quiet", "--set", "model.kv_heads=2", "--set", "scaling.base_width=32",
        "--scale-tokens", "64"]
PER_POINT = ("multiplier_train_overhead", "folded_inference_ratio", "unfolded_inference_ratio", "muon_vs_adamw",
             "trainer_vs_plain_loop", "control_ratio")
STEP_RATIOS = ("multiplier_train_overhead", "muon_vs_adamw", "trainer_vs_plain_loop", "control_ratio")


@pytest.fixture(scope="module")
def report(data_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "BENCH.json"
    code = main(["bench", "--quick", "--out", str(out), *TINY])
    assert code == 0
    return out, json.loads(out.read_text())


def test_bench_quick_writes_every_figure_per_width(report, capsys):
    out, r = report
    assert r["quick"] is True and r["plan"]["widths"] == [64, 32] and r["plan"]["modes"] == ["eager_fp32"]
    assert len(r["load_average"]["before"]) == 3 and r["machine"]["torch"] == torch.__version__
    assert isinstance(r["machine"]["cpu_features"], list) and r["machine"]["cpu"]
    assert [p["width"] for p in r["results"]] == [64, 32]
    for p in r["results"]:
        assert p["mode"] == "eager_fp32" and p["tokens_per_step"] == 32
        for key in PER_POINT:
            fig = p[key]
            assert fig["ratio"] > 0 and fig["pair_p25"] <= fig["pair_median"] <= fig["pair_p75"]
            if key in STEP_RATIOS:  # 2 steps x 5 repeats (quick)
                assert fig["reps"] == 10 and fig["repeats"] == 5
                assert fig["repeat_min"] <= fig["repeat_median"] <= fig["repeat_max"]
        lo, hi = p["diagnostics_overhead_range"]
        assert lo <= hi and lo > 1
    # quick: the at-scale point (64 tokens a step: 4 sequences) at the smallest width only
    assert "at_scale" not in r["results"][0]
    scale = r["results"][1]["at_scale"]
    assert scale["tokens_per_step"] == 64
    assert set(scale["step_s"]) == {"row_col", "none", "none_control", "plain_loop"}
    assert scale["trainer_vs_plain_loop"]["repeats"] == 5 and scale["multiplier_train_overhead"]["ratio"] > 0
    assert scale["trainer_vs_plain_loop"]["reps"] == 10 and r["plan"]["scale_reps"] == 2  # 2 steps x 5 repeats
    assert scale["control_ratio"]["reps"] == 10 and "control_ratio" in r["summary"]["at_scale"]
    assert scale["multiplier_costs"]["forward_backward_ratio"]["reps"] == 4
    assert r["summary"]["at_scale"]["trainer_vs_plain_loop"]["target"] == 1.01
    text = table(r)
    assert "at 64 tokens a step, width 32 eager_fp32: mult " in text
    assert "multipliers' share, width 64 eager_fp32: forward + backward " in text
    assert text.count("; alone, caches cold: matrices ") == 3 and text.count(": own work ") == 3
    assert "x the same model without them), update " in text
    assert scale["multiplier_own_work"] is not None and scale["multiplier_costs"]["isolated"]["rounds"] == 12
    assert "at scale: multiplier_train_overhead <= 1.01" in text
    for p in r["results"]:
        assert set(p["tokens_per_s"]) == {"row_col", "none", "muon", "none_control", "plain_loop"}
        assert all(v > 0 for v in p["tokens_per_s"].values())
        assert p["diagnostics_overhead"] > 1 and p["diagnostics_every"] == 50
        costs = p["multiplier_costs"]
        assert costs["forward_backward_ratio"]["reps"] == 10 and set(costs["update_s"]) == {"row_col", "none"}
        assert set(costs["forward_backward_s"]) == {"multipliers", "bypassed"}  # eager: the same model object
        assert costs["forward_backward_against"] == "bypassed"
        assert isinstance(costs["forward_backward_ms"], float) and isinstance(costs["update_ms"], float)
        isolated = costs["isolated"]  # eager: the multipliers' passes alone, 3 rounds per round of the others
        assert isolated["matrices"] == 2 * 7 and isolated["rounds"] == 30 and isolated["embedding_lookups"] == 32
        assert set(isolated["ms_above_leaf"]) == {"widthwise", "embedding"}
        own = costs["forward_backward_ms"] + costs["update_ms"]
        assert p["multiplier_own_work"] == pytest.approx(own / (1e3 * p["step_s"]["row_col"]), abs=1e-5)
        assert p["power_iteration_speedup"] > 0 and 0 <= p["power_iteration_rel_error"] < 1e-3
        assert p["matrices"] == 2 * 7 + 2  # 2 blocks x 7 projections, the embedding and the head
        assert 0 < p["data_loader_share"] < 1 and p["achieved_tflops"] > 0
        assert 0 < p["mfu"] < 1 and "measured" in p["peak_source"]
        assert p["folded_outputs_match"] is True and p["muon_ns_dtype"] in ("float32", "bfloat16")
        for shape in ("square", "ffn"):
            assert set(p["multiplier_paths"][shape]) == {"shape", "weight_vs_plain", "activations_vs_plain",
                                                         "activations_vs_weight"}
    m = r["muon_optimizer"]
    assert m["width"] == 32  # the smallest width, wherever it is listed
    assert m["bf16_bit_identical_to_torch"] is True and len(m["matrices"]) == 7
    assert set(r["summary"]) >= set(TARGETS) | {"muon_vs_adamw", "power_iteration_rel_error", "data_loader_share"}
    for key, target in TARGETS.items():
        s = r["summary"][key]
        assert s["target"] == target and s["met"] == (s["max"] <= target)
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.slow
def test_bench_full_plan_compiles_and_prints_the_table(data_cache, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--out", str(out), "--no-plot", *TINY[:1], "--widths", "32", *TINY[3:],
                 "--scale-tokens", "0"]) == 0  # the at-scale point: the quick test's
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [p["mode"] for p in report["results"]] == ["eager_fp32", report["results"][1]["mode"]]
    assert report["results"][1]["mode"] in ("compile_fp32", "compile_bf16") and "compile on" in \
        report["results"][1]["runtime"]
    compiled = report["results"][1]  # compiled: against the folded copy, no isolated passes, no own-work share
    assert compiled["multiplier_costs"]["forward_backward_against"] == "folded"
    assert compiled["multiplier_costs"]["isolated"] is None and compiled["multiplier_own_work"] is None
    assert "x the folded model, same weights), update " in text
    assert "trainer/plain" in text and "targets: multiplier_train_overhead <= 1.02" in text and str(out) in text
    assert "at 32 tokens a step (the worst case)" in text and "at scale" not in text
    assert json.loads(out.read_text())["quick"] is False and not out.with_suffix(".png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--modes", "warp"], "--modes: unknown mode 'warp'"),
    (["--widths", "40"], "--widths: 40 is not a positive multiple of the head dim 16"),
    (["--set", "optim.name=sgd"], "optim.name"),
    (["--reps", "0"], "--reps: expected a positive integer"),
    (["--device", "tpu"], "--device: invalid choice"),
])
def test_bench_bad_input_is_one_line_and_exit_2(data_cache, tmp_path, capsys, args, message):
    out = tmp_path / "b.json"
    code = _exit_code(["bench", "tiny", "--out", str(out), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bench_out_directory_is_refused(data_cache, tmp_path, capsys):
    assert main(["bench", "tiny", "--out", str(tmp_path), "--quiet"]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_compile_mode_resolves_its_dtype_and_config():
    s = Setting("tiny", 32, "compile", 2, 16, 1)
    config = bench_config(s, ["model.kv_heads=2"])
    assert config.train.compile is True and s.label() in ("compile_fp32", "compile_bf16")
    assert config.train.dtype == ("bfloat16" if s.label() == "compile_bf16" else "float32")
    assert bench_config(Setting("tiny", 32, "eager_fp32", 2, 16, 1)).train.compile is False
    with pytest.raises(ConfigError, match="--modes"):
        bench_plan(True, modes=["fast"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device: train.device: cuda requested but no CUDA device"):
            bench_config(Setting("tiny", 32, "compile", 2, 16, 1, device="cuda"))


def test_plain_loop_is_plain_pytorch_on_the_same_model(data_cache, one_thread):
    run = session(Setting("tiny", 32, "eager_fp32", 4, 16, 1), ["model.kv_heads=2", "scaling.base_width=32"])
    plain = PlainLoop(run)
    assert type(plain.optimizer) is torch.optim.AdamW
    # the very tensors the trainer trains (no second model elsewhere in memory), with the trainer's AdamW kernel
    assert plain.model is run.model and plain.optimizer.defaults["fused"] is True is run.optimizer.defaults["fused"]
    ours = sorted((g["lr"], g["initial_lr"], g["weight_decay"]) for g in run.built.optimizer.param_groups)
    assert sorted((g["lr"], g["initial_lr"], g["weight_decay"]) for g in plain.optimizer.param_groups) == ours
    assert {k: v.shape for k, v in plain.model.state_dict().items()} == \
        {k: v.shape for k, v in run.model.state_dict().items()}
    losses = [plain.step() for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses))) and min(losses[-3:]) < losses[0]


def _exit_code(argv: list[str]) -> int:
    """``main``'s exit code, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_a_ratio_reports_its_spread_over_repeats_and_the_cpu_its_kind():
    from widthwise.app.bench.timing import clock, cpu_kind, ratio

    fig = ratio([1.0, 1.1, 2.0, 2.2, 3.0, 3.3], [1.0] * 6, repeats=3)  # three runs of 2 rounds, in order
    assert (fig["repeats"], fig["repeat_min"], fig["repeat_median"], fig["repeat_max"]) == (3, 1.05, 2.1, 3.15)
    assert fig["ratio"] == 2.1 and fig["ratio_of_medians"] == 2.1  # the figure: the median over the repeats
    assert ratio([1.0, 1.0, 9.0, 1.0, 1.0, 1.0], [1.0] * 6, repeats=3)["ratio"] == 1.0
    assert fig["reps"] == 6 and "repeats" not in ratio([1.0, 2.0], [1.0, 1.0])
    assert ratio([1.0, 2.0], [1.0, 1.0], repeats=5)["repeats"] == 2  # never more repeats than rounds
    info = {"cpu": "Xeon", "cpu_features": ["avx2", "avx512f", "avx512_bf16"], "cpu_count": 2, "threads": 1}
    assert cpu_kind(info) == "Xeon (AVX512-BF16), 2 CPUs, 1 threads"
    assert "(AVX2)" in cpu_kind({**info, "cpu_features": ["avx2"]})
    threads = torch.get_num_threads()
    try:  # one CPU thread: CPU time, which another process holding the core does not inflate
        torch.set_num_threads(1)
        assert clock() is time.process_time and clock(torch.device("cuda")) is time.perf_counter
        torch.set_num_threads(2)
        assert clock() is time.perf_counter
    finally:
        torch.set_num_threads(threads)


def test_training_steps_build_fresh_sessions_each_repeat_with_an_a_a_control(data_cache, one_thread):
    from widthwise.app.bench import figures

    setting = Setting("tiny", 32, "eager_fp32", 2, 16, 1)
    overrides = ["model.kv_heads=2", "scaling.base_width=32"]
    built: list[object] = []
    real = figures.session

    def counted(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    figures.session = counted
    try:
        steps, runs = figures.training_steps(setting, ["row_col", "none"], reps=2, repeats=3, warmup=1,
                                             overrides=overrides)
    finally:
        figures.session = real
    assert set(steps) == {"row_col", "none", "none_control", "plain_loop"}
    assert all(len(t) == 2 * 3 for t in steps.values())  # reps x repeats, in the order they ran
    assert len(built) == 3 * 3 and len({id(s) for s in built}) == 9  # three sessions, afresh in each repeat
    assert set(runs) == {"row_col", "none", "none_control"} and all(r in built[-3:] for r in runs.values())
    assert runs["none_control"].config.multipliers.kind == "none" and runs["none_control"] is not runs["none"]

"""Multiplier summaries and drift along forward-pass symmetries (arXiv 2601.04890, section 4.3)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from widthwise.diagnostics.multiplier_stats import (
    drift_warnings,
    layer_type,
    multiplier_stats,
    multiplier_values,
    symmetry_drift,
)
from widthwise.multipliers import add_multipliers

from helpers import gpt2, llama, mlp, tokens


@pytest.fixture
def tiny() -> nn.Module:
    """The trainer's reference model: row+col multipliers (all 1) everywhere but the head."""
    from widthwise.app.config import load_config
    from widthwise.app.setup import build

    return build(load_config("tiny"), 300, torch.device("cpu")).model.eval()


def mult(module: nn.Module, part: str) -> torch.Tensor:
    return getattr(module.parametrizations.weight[0], part)


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens(vocab=300))


def rms(t: torch.Tensor) -> float:
    return t.detach().double().pow(2).mean().sqrt().item()


def without(drift: dict[str, float], *keys: str) -> dict[str, float]:
    return {k: v for k, v in drift.items() if k not in keys}


def test_stats_keep_the_trainer_keys(tiny):
    assert layer_type("blocks.3.attn.q_proj.weight.row") == "attn.q_proj.row"
    stats = multiplier_stats(tiny)
    assert stats["attn.q_proj.row"] == {"mean": 1.0, "std": 0.0, "min": 1.0, "max": 1.0}
    assert len(stats) == 16 and "embed.col" in stats and "head.row" not in stats
    with torch.no_grad():
        mult(tiny.blocks[0].mlp.up_proj, "col").copy_(torch.linspace(0, 2, 32))
    pooled = torch.cat([torch.linspace(0, 2, 32), torch.ones(32)])
    assert stats != multiplier_stats(tiny)
    assert multiplier_stats(tiny)["mlp.up_proj.col"] == pytest.approx(
        {"mean": pooled.mean().item(), "std": pooled.std().item(), "min": 0.0, "max": 2.0})


def test_values_are_detached_cpu_copies(tiny):
    values = multiplier_values(tiny)
    assert len(values) == 2 + 2 * 7 * 2
    row = values["blocks.1.attn.k_proj.weight.row"]
    assert row.shape == (16,) and row.dtype == torch.float32 and row.device.type == "cpu"
    assert not row.requires_grad and values["embed.weight.col"].shape == (300,)
    row.fill_(5)
    assert torch.equal(mult(tiny.blocks[1].attn.k_proj, "row"), torch.ones(16))
    assert multiplier_values(mlp()) == {}


def test_drift_is_zero_at_init(tiny):
    drift = symmetry_drift(tiny)
    expected = {f"{kind}.blocks.{i}.{where}" for i in range(2)
                for kind, where in (("qk", "attn"), ("vo", "attn"), ("up_down", "mlp"),
                                    ("norm_vs_cols", "attn_norm"), ("norm_vs_cols", "mlp_norm"))}
    assert set(drift) == expected | {"residual"}  # the head has no multipliers: no monitor on the final norm
    for i, block in enumerate(tiny.blocks):
        attn = block.attn
        stored = math.log2(rms(attn.q_proj.parametrizations.weight.original)
                           / rms(attn.k_proj.parametrizations.weight.original))
        assert drift.pop(f"qk.blocks.{i}.attn") == pytest.approx(stored, abs=1e-6)  # init noise only
        assert abs(stored) < 0.5
    assert drift == {k: 0.0 for k in drift}
    assert drift_warnings(symmetry_drift(tiny)) == []


def test_qk_symmetry(tiny):
    before, out = symmetry_drift(tiny), logits(tiny)
    with torch.no_grad():
        mult(tiny.blocks[0].attn.q_proj, "row").mul_(4)
        mult(tiny.blocks[0].attn.k_proj, "row").div_(4)
    torch.testing.assert_close(logits(tiny), out, rtol=1e-5, atol=1e-6)  # the loss cannot see it
    after = symmetry_drift(tiny)
    assert after["qk.blocks.0.attn"] - before["qk.blocks.0.attn"] == pytest.approx(4.0, abs=1e-5)
    assert without(after, "qk.blocks.0.attn") == pytest.approx(without(before, "qk.blocks.0.attn"), abs=1e-6)
    lines = drift_warnings(after, threshold_log2=3.0)
    factor = 2 ** after["qk.blocks.0.attn"]  # 16 times the init's (small) imbalance
    assert len(lines) == 1 and lines[0].startswith("qk.blocks.0.attn") and f"factor {factor:.3g}" in lines[0]
    assert "multipliers.weight_decay" in lines[0]
    assert drift_warnings(after, threshold_log2=4.5) == []


def test_residual_scale_symmetry(tiny):
    for module in tiny.modules():  # RMSNorm is exactly scale-invariant only without its eps
        if hasattr(module, "eps"):
            module.eps = 0.0
    before, out = symmetry_drift(tiny), logits(tiny)
    writers = [tiny.embed] + [m for b in tiny.blocks for m in (b.attn.o_proj, b.mlp.down_proj)]
    with torch.no_grad():
        for module in writers:
            mult(module, "row").mul_(16)
    torch.testing.assert_close(logits(tiny), out, rtol=1e-4, atol=1e-5)
    after = symmetry_drift(tiny)
    assert after["residual"] == pytest.approx(4.0, abs=1e-5)
    assert without(after, "residual") == pytest.approx(without(before, "residual"), abs=1e-6)
    assert [line.split(" ")[0] for line in drift_warnings(after)] == ["residual"]


def test_norm_gain_against_reader_columns(tiny):
    before, out = symmetry_drift(tiny), logits(tiny)
    block = tiny.blocks[1]
    with torch.no_grad():
        block.mlp_norm.weight.mul_(4)
        for module in (block.mlp.gate_proj, block.mlp.up_proj):
            mult(module, "col").div_(4)
    torch.testing.assert_close(logits(tiny), out, rtol=1e-5, atol=1e-6)
    after = symmetry_drift(tiny)
    key = "norm_vs_cols.blocks.1.mlp_norm"
    assert after[key] == pytest.approx(4.0, abs=1e-5)
    assert without(after, key) == pytest.approx(without(before, key), abs=1e-6)


@pytest.mark.parametrize(("key", "first", "second"), [("vo", "attn.v_proj", "attn.o_proj"),
                                                     ("up_down", "mlp.up_proj", "mlp.down_proj")])
def test_value_output_and_up_down_symmetries(tiny, key, first, second):
    before, out = symmetry_drift(tiny), logits(tiny)
    block = tiny.blocks[0]
    with torch.no_grad():
        mult(block.get_submodule(first), "row").mul_(0.25)
        mult(block.get_submodule(second), "col").mul_(4)
    torch.testing.assert_close(logits(tiny), out, rtol=1e-5, atol=1e-6)
    after = symmetry_drift(tiny)
    name = f"{key}.blocks.0.{first.partition('.')[0]}"
    assert after[name] == pytest.approx(-4.0, abs=1e-5)
    assert without(after, name) == pytest.approx(without(before, name), abs=1e-6)


def test_warnings_threshold_and_non_finite():
    lines = drift_warnings({"qk.a": 2.9, "residual": -3.5, "norm_vs_cols.n": float("nan")})
    assert [line.split(" ")[0] for line in lines] == ["residual", "norm_vs_cols.n"]
    assert "11.3" in lines[0] and "residual-stream" in lines[0]
    assert "non-finite" in lines[1]


def test_models_get_only_the_monitors_that_apply():
    assert symmetry_drift(mlp()) == {}
    model = llama()
    assert set(symmetry_drift(model)) == {"qk.model.layers.0.self_attn", "qk.model.layers.1.self_attn"}
    add_multipliers(model)
    keys = set(symmetry_drift(model))
    assert "residual" in keys and "norm_vs_cols.model.layers.1.post_attention_layernorm" in keys
    assert "up_down.model.layers.0.mlp" in keys and len(keys) == 11
    free = llama()
    add_multipliers(free, placement="symmetry_free")  # q rows only, k/v/up none: no column or v/up monitor
    assert set(symmetry_drift(free)) == {"qk.model.layers.0.self_attn", "qk.model.layers.1.self_attn", "residual"}
    head = llama()
    add_multipliers(head, kind="col", placement=[r"^lm_head\."])  # the final norm's readers get columns
    assert set(symmetry_drift(head)) == {"qk.model.layers.0.self_attn", "qk.model.layers.1.self_attn",
                                         "norm_vs_cols.model.norm"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tied = gpt2()
        add_multipliers(tied)  # the tied embedding gets none; the fused c_attn has no q/k slot
    assert symmetry_drift(tied) == {}


def test_name_map_and_wrappers(tiny):
    drift = symmetry_drift(tiny)
    assert symmetry_drift(torch.compile(tiny)) == drift
    assert not any(k.startswith("qk.") for k in symmetry_drift(tiny, name_map={"q": r"^none$"}))

"""Sublayer gains g = rms(W x) / rms(x) (Fan et al., arXiv 2510.15262) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from widthwise.diagnostics.gains import gain_summary, sublayer_gains
from widthwise.models.llama import rope_tables
from widthwise.multipliers import multiplier_parameters

from helpers import gpt2, llama, tokens


def rms(x: torch.Tensor) -> float:
    return x.double().pow(2).mean().sqrt().item()


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    """The trainer's reference model (row+col multipliers everywhere but the head), multipliers set off 1."""
    from widthwise.app.config import load_config
    from widthwise.app.setup import build

    model = build(load_config("tiny"), 300, torch.device("cpu")).model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in multiplier_parameters(model):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_hooks_with_kwargs for m in model.modules())


def test_linear_gain_by_hand():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]]))
        lin.bias.copy_(torch.tensor([0.5, 0.0]))
    model = nn.Sequential(lin)
    x = torch.tensor([[1.0, 0.0, 2.0], [3.0, 1.0, 1.0]])
    # W x + b = [[1.5, -2], [5.5, 0]]: rms = sqrt(36.5 / 4); rms(x) = sqrt(16 / 6)
    expected = math.sqrt(36.5 / 4) / math.sqrt(16 / 6)
    assert sublayer_gains(model, x) == {"0": pytest.approx(expected, rel=1e-6)}


def test_embeddings_are_skipped_and_repeated_calls_pooled():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.lin = nn.Linear(4, 4, bias=False)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.lin(self.lin(self.emb(idx)))

    torch.manual_seed(0)
    model, idx = Twice(), torch.tensor([[1, 2, 3]])
    gains = sublayer_gains(model, idx)
    with torch.no_grad():
        x0 = model.emb(idx)
        x1 = model.lin(x0)
        x2 = model.lin(x1)
    pooled_in = math.sqrt((x0.pow(2).sum() + x1.pow(2).sum()).item() / 24)
    pooled_out = math.sqrt((x1.pow(2).sum() + x2.pow(2).sum()).item() / 24)
    assert gains == {"lin": pytest.approx(pooled_out / pooled_in, rel=1e-5)}


def test_reference_model_by_hand(tiny):
    idx = tokens(vocab=300)
    gains = sublayer_gains(tiny, idx)
    cfg, b0 = tiny.config, tiny.blocks[0]
    with torch.no_grad():
        h = tiny.embed(idx) * cfg.embedding_multiplier
        cos, sin = rope_tables(idx.shape[1], cfg.head_dim, cfg.rope_theta, idx.device)
        a_in = b0.attn_norm(h)
        a_out = b0.attn(a_in, cos, sin)
        u = b0.mlp_norm(h + a_out)
        inner = F.silu(b0.mlp.gate_proj(u)) * b0.mlp.up_proj(u)
        mults = b0.mlp.down_proj.parametrizations.weight
        w = mults[0].row[:, None] * mults.original * mults[0].col[None, :]  # diag(r) V diag(c), by hand
        y = inner @ w.T
        final = tiny.norm(tiny.blocks[1](h + a_out + y, cos, sin))
    assert gains["blocks.0.mlp.down_proj"] == pytest.approx(rms(y) / rms(inner), rel=1e-5)
    assert gains["blocks.0.mlp"] == pytest.approx(rms(y) / rms(u), rel=1e-5)
    assert gains["blocks.0.attn"] == pytest.approx(rms(a_out) / rms(a_in), rel=1e-5)
    # the head's gain is the module's own output: the fixed head multiplier is applied outside it
    assert gains["head"] == pytest.approx(rms(tiny.head(final)) / rms(final), rel=1e-5)
    slots = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
             "mlp.down_proj", "attn", "mlp"]
    assert set(gains) == {f"blocks.{i}.{s}" for i in range(2) for s in slots} | {"head"}


def test_multipliers_enter_the_gain(tiny):
    idx = tokens(vocab=300)
    before = sublayer_gains(tiny, idx)
    row = tiny.blocks[1].attn.q_proj.parametrizations.weight[0].row
    with torch.no_grad():
        row.mul_(2)
    try:
        after = sublayer_gains(tiny, idx)
    finally:
        with torch.no_grad():
            row.div_(2)
    assert after["blocks.1.attn.q_proj"] == pytest.approx(2 * before["blocks.1.attn.q_proj"], rel=1e-5)
    assert after["blocks.0.attn.q_proj"] == pytest.approx(before["blocks.0.attn.q_proj"], rel=1e-6)


def test_batch_forms_agree(tiny):
    idx = tokens(vocab=300)
    plain = sublayer_gains(tiny, idx)
    assert sublayer_gains(tiny, (idx, idx)) == pytest.approx(plain)  # model(idx, targets) -> loss
    assert sublayer_gains(tiny, {"idx": idx}) == pytest.approx(plain)


def test_summary_pools_blocks(tiny):
    gains = sublayer_gains(tiny, tokens(vocab=300))
    summary = gain_summary(gains)
    q = [gains[f"blocks.{i}.attn.q_proj"] for i in range(2)]
    assert summary["attn.q_proj"] == pytest.approx(sum(q) / 2)
    assert summary["mlp"] == pytest.approx((gains["blocks.0.mlp"] + gains["blocks.1.mlp"]) / 2)
    hidden = [v for k, v in gains.items() if k != "head" and not k.endswith((".attn", ".mlp"))]
    assert len(hidden) == 14
    assert summary["matrix_mean"] == pytest.approx(sum(hidden) / len(hidden))
    assert summary["head"] == gains["head"]


def test_hooks_removed_mode_restored_no_graph(tiny):
    tiny.train()
    tiny.blocks[1].eval()  # a mixed state comes back module by module
    seen = []
    probe = tiny.head.register_forward_hook(lambda m, a, out: seen.append((out.requires_grad, m.training)))
    try:
        sublayer_gains(tiny, tokens(vocab=300))
    finally:
        probe.remove()
    assert seen == [(False, False)]  # no autograd graph, measured in eval mode
    assert no_hooks(tiny)
    assert tiny.training and tiny.blocks[0].training and not tiny.blocks[1].training
    assert not any(m.training for m in tiny.blocks[1].modules())
    assert all(p.grad is None for p in tiny.parameters())
    with pytest.raises(IndexError):  # a failing forward still cleans up
        sublayer_gains(tiny, tokens(vocab=1000, seed=3) + 300)
    assert no_hooks(tiny) and tiny.training and not tiny.blocks[1].training
    tiny.eval()


def test_eval_mode_makes_dropout_deterministic():
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.Linear(16, 4)).train()
    x = torch.randn(32, 8)
    assert sublayer_gains(model, x) == sublayer_gains(model, x)
    assert model.training and model[1].training


def test_compiled_and_data_parallel_models_match_eager(tiny):
    idx = tokens(vocab=300)
    eager = sublayer_gains(tiny, idx)
    compiled = torch.compile(tiny)
    assert sublayer_gains(compiled, idx) == eager  # keys without the ``_orig_mod.`` prefix
    assert sublayer_gains(nn.DataParallel(tiny), idx) == eager
    assert no_hooks(tiny)


def test_hf_llama_blocks_and_layers():
    model = llama()
    ids = tokens()
    gains = sublayer_gains(model, {"input_ids": ids})
    assert sublayer_gains(model, ids) == pytest.approx(gains)
    slots = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
             "mlp.up_proj", "mlp.down_proj", "self_attn", "mlp"]
    assert set(gains) == {f"model.layers.{i}.{s}" for i in range(2) for s in slots} | {"lm_head"}
    # independent measurement of the attention block: HF passes ``hidden_states`` as a keyword, returns a tuple
    attn, captured = model.model.layers[1].self_attn, {}
    pre = attn.register_forward_pre_hook(lambda m, a, kw: captured.update(x=kw["hidden_states"]), with_kwargs=True)
    post = attn.register_forward_hook(lambda m, a, out: captured.update(y=out[0]))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        pre.remove()
        post.remove()
    assert gains["model.layers.1.self_attn"] == pytest.approx(rms(captured["y"]) / rms(captured["x"]), rel=1e-5)
    assert "model.embed_tokens" not in gains
    summary = gain_summary(gains)
    assert "lm_head" in summary and "self_attn.q_proj" in summary and "matrix_mean" in summary


def test_gpt2_conv1d_layers():
    model = gpt2()
    ids = tokens()
    gains = sublayer_gains(model, ids)
    slots = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "attn", "mlp"]
    # the head is tied to ``wte`` (one parameter, role embedding) and still measured as a layer; wte/wpe are not
    assert set(gains) == {f"transformer.h.{i}.{s}" for i in range(2) for s in slots} | {"lm_head"}
    fc, captured = model.transformer.h[0].mlp.c_fc, {}
    hook = fc.register_forward_pre_hook(lambda m, a: captured.update(x=a[0]))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        hook.remove()
    x = captured["x"]
    y = x @ fc.weight + fc.bias  # Conv1D: x W + b, W of shape (in, out)
    assert gains["transformer.h.0.mlp.c_fc"] == pytest.approx(rms(y) / rms(x), rel=1e-5)
    summary = gain_summary(gains)
    assert summary["lm_head"] == gains["lm_head"]
    convs = [v for k, v in gains.items() if k.endswith(("c_attn", "c_proj", "c_fc"))]
    assert summary["matrix_mean"] == pytest.approx(sum(convs) / len(convs))  # the head left out


def test_layers_reading_one_input_reduce_it_once_with_the_same_gains(tiny, monkeypatch):
    from widthwise.diagnostics import gains as module

    idx = tokens(2, 8, 300)
    before = sublayer_gains(tiny, idx)
    calls: list[tuple[int, ...]] = []
    real = module._sum_squares

    def counted(x):
        calls.append(tuple(x.shape))
        return real(x)

    monkeypatch.setattr(module, "_sum_squares", counted)
    after = sublayer_gains(tiny, idx)
    assert after == before
    q, k, v = (f"blocks.0.attn.{p}_proj" for p in "qkv")
    assert {q, k, v} <= set(after)
    # q, k and v read the attention norm's output and gate/up the MLP norm's: one reduction each, not three / two
    layers = len(after)
    blocks = len(tiny.blocks)
    assert len(calls) == 2 * layers - blocks * (2 + 1)


def test_a_long_sum_of_squares_is_summed_in_chunks_as_exactly(monkeypatch):
    from widthwise.diagnostics import gains as module

    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0)) * 1e3
    exact = x.double().square().sum().item()
    whole = module._sum_squares(x)
    monkeypatch.setattr(module, "DOT_CHUNK", 128)  # 24 chunks, the last a short one
    chunked = module._sum_squares(x)
    assert whole.dtype == chunked.dtype == torch.float32
    assert whole.item() == pytest.approx(exact, rel=1e-6) and chunked.item() == pytest.approx(exact, rel=1e-6)
    assert module._sum_squares(x.T).item() == pytest.approx(exact, rel=1e-6)  # a non-contiguous view


def test_a_linear_layers_output_squares_from_its_input_and_weight_alone():
    from widthwise.diagnostics.gains import _linear_output_squares

    g = torch.Generator().manual_seed(0)
    for bias in (False, True):
        layer = nn.Linear(5, 7, bias=bias)
        with torch.no_grad():
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        x = torch.randn(2, 3, 5, generator=g)
        direct = F.linear(x.double(), layer.weight.double(), None if not bias else layer.bias.double())
        assert _linear_output_squares(layer, x).item() == pytest.approx(direct.square().sum().item(), rel=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast does not round it to bf16
            assert _linear_output_squares(layer, x).item() == pytest.approx(direct.square().sum().item(), rel=1e-5)


class _Called:
    """Counts the forward calls of a module (a forward hook, so a call stopped before its forward is not one)."""

    def __init__(self, module: nn.Module) -> None:
        self.count = 0
        self.handle = module.register_forward_hook(lambda *args: setattr(self, "count", self.count + 1))


def test_stopping_at_the_head_gives_the_same_gains_without_the_logits(tiny):
    idx = tokens(4, 16, 300)  # 64 tokens: d (n + V) = 32 x 364 < n V = 64 x 300, the head's Gram is the cheaper
    order: list[str] = []
    full = sublayer_gains(tiny, idx, order=order)
    assert order[-1] == "head" and order.count("head") == 1
    head = _Called(tiny.head)
    try:
        stopped = sublayer_gains(tiny, idx, stop_at="head")
        assert head.count == 0  # the head's matmul never ran
        assert stopped.keys() == full.keys()
        assert stopped == pytest.approx(full, rel=1e-5)
        few = tokens(1, 4, 300)  # 4 tokens: the logits are the cheaper, the head runs as usual, exactly as before
        assert sublayer_gains(tiny, few, stop_at="head") == sublayer_gains(tiny, few) and head.count == 2
    finally:
        head.handle.remove()
    assert no_hooks(tiny) and not any(m._forward_pre_hooks for m in tiny.modules())
    with pytest.raises(ValueError, match="stop_at='embed' is not a measured module"):
        sublayer_gains(tiny, idx, stop_at="embed")


def test_hf_llama_stops_at_its_lm_head_with_the_same_gains():
    model = llama()
    ids = tokens(8, 32)  # 256 tokens: d (n + V) = 64 x 384 < n V = 256 x 128
    order: list[str] = []
    full = sublayer_gains(model, ids, order=order)
    assert order[-1] == "lm_head"
    head = _Called(model.lm_head)
    try:
        assert sublayer_gains(model, {"input_ids": ids}, stop_at="lm_head") == pytest.approx(full, rel=1e-5)
    finally:
        head.handle.remove()
    assert head.count == 0

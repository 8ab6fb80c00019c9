"""The reference LLaMA: equal to HF's LlamaForCausalLM, planned and folded by widthwise, compiled, sampled."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import widthwise as ww
from widthwise import Role
from widthwise.forward import named_forward_multipliers
from widthwise.models import Llama, LlamaConfig

from helpers import tokens

VOCAB = 101


def config(width: int = 64, **kw) -> LlamaConfig:
    fields = {"depth": 2, "heads": 4, "kv_heads": 2, "vocab_size": VOCAB, "max_seq_len": 128, **kw}
    return LlamaConfig(width=width, **fields)


def model(width: int = 64, seed: int = 0, meta: bool = False, **kw) -> Llama:
    torch.manual_seed(seed)
    if meta:
        with torch.device("meta"):
            return Llama(config(width, **kw))
    return Llama(config(width, **kw))


def randomize(m: torch.nn.Module, seed: int = 0) -> None:
    """Weights far from init (norm gains too), so every parameter matters to the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.copy_(1 + 0.2 * noise if p.ndim == 1 else 0.1 * noise)


def ids(batch: int = 2, seq: int = 12, seed: int = 1) -> torch.Tensor:
    return tokens(batch, seq, VOCAB, seed)


# --- numerical equivalence with Hugging Face ---------------------------------------------------------------------


def hf_name(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "embed":
        return "model.embed_tokens.weight"
    if parts[0] == "norm":
        return "model.norm.weight"
    if parts[0] == "head":
        return "lm_head.weight"
    layer, sub = parts[1], parts[2]
    rest = {"attn": "self_attn", "mlp": "mlp"}.get(sub)
    if rest is not None:
        return f"model.layers.{layer}.{rest}.{'.'.join(parts[3:])}"
    norm = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}[sub]
    return f"model.layers.{layer}.{norm}.weight"


@pytest.mark.parametrize("tied", [False, True])
def test_matches_hf_llama(tied):
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    ours = model(tie_embeddings=tied)
    hf_cfg = HFConfig(
        hidden_size=64, intermediate_size=ours.config.ffn_hidden, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=128,
        tie_word_embeddings=tied, attention_bias=False, mlp_bias=False, attn_implementation="sdpa",
    )
    hf = LlamaForCausalLM(hf_cfg).eval()
    randomize(hf)
    hf_params = dict(hf.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    assert len(names) == len(hf_params)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            p.copy_(hf_params[hf_name(name)])
    assert (ours.head.weight is ours.embed.weight) == tied
    x = ids(seq=24)
    with torch.no_grad():
        expected = hf(x).logits
        got = ours(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        hf_loss = hf(x, labels=x).loss
        torch.testing.assert_close(ours(x[:, :-1], targets=x[:, 1:]), hf_loss, atol=1e-5, rtol=1e-5)


def test_state_dict_holds_parameters_only_and_meta_build_materializes():
    m = model()
    assert list(m.state_dict()) == [n for n, _ in m.named_parameters()]
    assert list(m.buffers()) == []
    meta = model(meta=True)
    meta.to_empty(device="cpu")
    meta.load_state_dict(m.state_dict())
    x = ids()
    assert torch.equal(meta(x), m(x))


# --- widthwise integration ---------------------------------------------------------------------------------------


def test_plan_roles_and_width_multipliers():
    # ffn_mult=3 keeps the SwiGLU hidden size proportional to width (8/3 * 64 rounds up to 192, * 128 to 352)
    m = model(128, ffn_mult=3.0)
    added = ww.add_multipliers(m, kind="row_col", placement="all")
    assert "embed.weight" in added and "head.weight" not in added
    p = ww.plan(m, base=model(64, ffn_mult=3.0, meta=True), recipe="robust", forward_multipliers=False)
    roles = p.roles()
    assert roles["embed.weight"] is Role.EMBEDDING
    assert roles["head.weight"] is Role.HEAD
    for proj in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                 "mlp.down_proj"):
        assert roles[f"blocks.1.{proj}.weight"] is Role.HIDDEN
        assert roles[f"blocks.1.{proj}.weight.row"] is Role.MULTIPLIER
        assert p[f"blocks.1.{proj}.weight"].width_mult == 2
        assert p[f"blocks.1.{proj}.weight"].lr_factor == 0.5
    for norm in ("blocks.0.attn_norm.weight", "blocks.0.mlp_norm.weight", "norm.weight"):
        assert roles[norm] is Role.VECTOR and p[norm].init == "ones"
    assert p["embed.weight"].width_mult == 2 and p["head.weight"].width_mult == 2
    assert p["blocks.0.attn.q_proj.weight"].init_std == pytest.approx(0.02 / math.sqrt(2))
    assert p.forward_multipliers == []


def test_symmetry_free_placement():
    m = model()
    added = ww.add_multipliers(m, kind="row_col", placement="symmetry_free")
    got = {n: m.get_submodule(n.rpartition(".")[0]).parametrizations.weight[0].kind for n in added}
    expected = {"embed.weight": "row_col"}
    for i in range(2):
        expected |= {f"blocks.{i}.attn.q_proj.weight": "row", f"blocks.{i}.attn.o_proj.weight": "row_col",
                     f"blocks.{i}.mlp.gate_proj.weight": "row", f"blocks.{i}.mlp.down_proj.weight": "row_col"}
    assert got == expected


@pytest.mark.parametrize("placement", ["all", "symmetry_free"])
def test_fold_keeps_logits(placement):
    m = model()
    randomize(m)
    ww.add_multipliers(m, kind="row_col", placement=placement)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for mult in ww.multiplier_parameters(m):
            mult.copy_(torch.exp(0.3 * torch.randn(mult.shape, generator=g)))
    x = ids()
    with torch.no_grad():
        before = m(x)
        ww.fold_multipliers(m)
        after = m(x)
    assert list(m.state_dict()) == [n for n, _ in model().named_parameters()]
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)


def test_tied_model_skips_embedding_and_plans():
    m = model(128, ffn_mult=3.0, tie_embeddings=True)
    randomize(m)
    with pytest.warns(UserWarning, match="'embed.weight' is shared with 'head.weight'"):
        added = ww.add_multipliers(m, placement="all")
    assert "embed.weight" not in added and len(added) == 2 * 7
    base = model(64, ffn_mult=3.0, tie_embeddings=True, meta=True)
    p = ww.plan(m, base=base, recipe="robust", forward_multipliers=False)
    assert p["embed.weight"].role is Role.EMBEDDING and p["embed.weight"].aliases == ("head.weight",)
    assert "head.weight" not in p.params
    x = ids()
    with torch.no_grad():
        before = m(x)
        after = ww.fold_multipliers(m)(x)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)
    assert m.head.weight is m.embed.weight


def test_native_multipliers_equal_the_library_ones():
    """Config fields from ``named_forward_multipliers`` == widthwise's own FixedScale multipliers on the plain model."""
    kw = {"heads": 2, "kv_heads": 1, "ffn_mult": 3.0}  # head_dim 32 at width 64 -> 64 at width 128
    plain = model(128, **kw)
    randomize(plain)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    plan = ww.plan(plain, base=model(64, meta=True, **kw), recipe="robust")
    assert {f.module for f in plan.forward_multipliers} == {"head", "blocks.0.attn.q_proj", "blocks.1.attn.q_proj"}
    ww.apply_forward_multipliers(plain, plan)
    native = model(128, **kw, **named_forward_multipliers("robust", 128, 64, head_dim=64, base_head_dim=32))
    native.load_state_dict(state)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(native(x), plain(x), atol=1e-5, rtol=1e-5)


# --- forward multipliers, validation ----------------------------------------------------------------------------


def test_head_embedding_and_attention_multipliers_act_as_documented():
    x = ids()
    ref = model()
    randomize(ref)
    state = ref.state_dict()

    def variant(**kw) -> torch.Tensor:
        m = model(**kw)
        m.load_state_dict(state)
        with torch.no_grad():
            return m(x)

    base_logits = variant()
    # (applied to the head's input: equal up to the rounding of a product taken before the matmul's sum)
    torch.testing.assert_close(variant(head_multiplier=3.0), 3.0 * base_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(variant(attention_scale=1 / math.sqrt(16)), base_logits)
    assert not torch.allclose(variant(attention_scale=1 / 16), base_logits, atol=1e-3)

    def equals_scaled_weights(field: dict, suffix: str, factor: float, tol: float) -> None:
        """The model with ``field`` set equals the plain model with the ``suffix`` weights times ``factor``."""
        m = model(**field)
        m.load_state_dict(state)
        m2 = model()
        m2.load_state_dict({k: v * factor if k.endswith(suffix) else v for k, v in state.items()})
        with torch.no_grad():
            torch.testing.assert_close(m(x), m2(x), atol=tol, rtol=tol)

    # scale s on q.k == query projection multiplied by s * sqrt(head_dim)
    equals_scaled_weights({"attention_scale": 0.05}, "q_proj.weight", 0.05 * math.sqrt(16), 1e-5)
    # embedding multiplier c == an embedding table multiplied by c
    equals_scaled_weights({"embedding_multiplier": 2.5}, "embed.weight", 2.5, 1e-6)


class _VocabWideOps(torch.utils._python_dispatch.TorchDispatchMode):
    """The aten ops that write a tensor as large as the logits (``numel``)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.ops.append(func.overloadpacket.__name__)
        return out


def test_the_head_multiplier_costs_no_pass_over_the_logits():
    x = ids()
    m = model(head_multiplier=0.3)
    randomize(m)
    numel = x.numel() * VOCAB
    with _VocabWideOps(numel) as seen:
        m(x)
    assert [op for op in seen.ops if op not in ("view", "_unsafe_view")] == ["mm"]  # the head's matmul alone
    with _VocabWideOps(numel) as seen:
        m(x, x).backward()
    assert "mul" not in seen.ops
    plain = model().double()
    plain.load_state_dict(m.state_dict())
    with torch.no_grad():  # the same function: in float64 equal to rounding
        torch.testing.assert_close(m.double()(x), 0.3 * plain(x), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"width": 0}, "model.width: must be a positive integer, got 0"),
        ({"depth": -1}, "model.depth"),
        ({"vocab_size": 2.5}, "model.vocab_size"),
        ({"heads": True}, "model.heads"),
        ({"multiple_of": 0}, "model.multiple_of"),
        ({"max_seq_len": 0}, "model.max_seq_len"),
        ({"heads": 6, "kv_heads": 2}, "model.heads: 6 does not divide model.width=64"),
        ({"heads": 4, "kv_heads": 3}, "model.kv_heads: 3 does not divide model.heads=4"),
        ({"width": 60, "heads": 4, "kv_heads": 2}, "head_dim = width/heads = 15 is odd"),
        ({"ffn_mult": 0.0}, "model.ffn_mult"),
        ({"rope_theta": -1.0}, "model.rope_theta"),
        ({"norm_eps": 0.0}, "model.norm_eps"),
        ({"embedding_multiplier": 0.0}, "model.embedding_multiplier"),
        ({"head_multiplier": float("inf")}, "model.head_multiplier"),
        ({"attention_scale": float("nan")}, "model.attention_scale"),
    ],
)
def test_validate_names_the_field(overrides, message):
    cfg = config(**{k: v for k, v in overrides.items() if k != "width"}, width=overrides.get("width", 64))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        cfg.validate()
    with pytest.raises(ValueError, match="model."):
        Llama(cfg)


def test_config_derived_sizes():
    assert config().head_dim == 16 and config().ffn_hidden == 192
    assert config(96).ffn_hidden == 256
    assert config(ffn_mult=2.0).ffn_hidden == 128
    assert config(ffn_mult=8 / 3, multiple_of=1).ffn_hidden == 171


# --- compile, loss, generation, accounting ------------------------------------------------------------------------


@pytest.mark.slow
def test_compile_matches_eager():
    """One graph (``fullgraph=True``: no graph breaks), multipliers' parametrizations included."""
    m = model()
    randomize(m)
    ww.add_multipliers(m, placement="symmetry_free")
    x = ids()
    compiled = torch.compile(m, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), atol=1e-5, rtol=1e-5)


def test_loss_is_cross_entropy_of_the_logits():
    m = model()
    randomize(m)
    x, y = ids(), ids(seed=2)
    y[0, 3] = -100  # ignored, as in F.cross_entropy
    with torch.no_grad():
        logits = m(x)
        loss = m(x, targets=y)
    assert loss.ndim == 0 and loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1)))
    with pytest.raises(ValueError, match="max_seq_len=128"):
        m(ids(seq=129))


def test_generate_shape_determinism_and_greedy():
    m = model(max_seq_len=16)
    randomize(m)
    prompt = ids(seq=10)
    out = m.generate(prompt, 9, generator=torch.Generator().manual_seed(0))  # runs past max_seq_len: cropped
    assert out.shape == (2, 19) and torch.equal(out[:, :10], prompt)
    assert int(out.min()) >= 0 and int(out.max()) < VOCAB
    again = m.generate(prompt, 9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    greedy = m.generate(prompt, 3, temperature=0.0)
    with torch.no_grad():
        first = m(prompt)[:, -1].argmax(-1)
    assert torch.equal(greedy[:, 10], first)
    top1 = m.generate(prompt, 3, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(top1, greedy)


def test_flops_and_parameter_counts_by_hand():
    m = model()  # width 64, depth 2, heads 4, kv_heads 2 (head_dim 16), ffn 192, vocab 101
    attn = 64 * 64 + 2 * 64 * 32 + 64 * 64
    mlp = 3 * 64 * 192
    n = 2 * (attn + mlp) + 64 * VOCAB
    assert n == 104_768
    assert m.flops_per_token(16) == 6 * 104_768 + 12 * 2 * 64 * 16 == 653_184
    norms = 5 * 64
    assert m.num_parameters() == n + norms
    assert m.num_parameters(exclude_embedding=False) == n + norms + VOCAB * 64
    tied = model(tie_embeddings=True)
    assert tied.num_parameters() == tied.num_parameters(exclude_embedding=False) == n + norms
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ww.add_multipliers(m, kind="scalar")
    assert m.num_parameters() == n + norms + 2 * 7  # the embedding's multiplier goes with the embedding


def test_a_swiglu_size_that_does_not_scale_with_width_is_planned_by_each_matrix_fan_in():
    """192 at width 64, 352 at 128 (rounded to multiples of 32): muP takes each matrix's fan-in ratio."""
    uneven = ww.plan(model(128), base=model(64, meta=True))
    assert uneven["blocks.0.mlp.up_proj.weight"].width_mult == 2  # fan-in: the width
    assert uneven["blocks.0.mlp.down_proj.weight"].width_mult == pytest.approx(352 / 192)  # fan-in: the SwiGLU size
    p = ww.plan(model(192, heads=6), base=model(96, heads=6, meta=True))  # 8/3: 256 -> 512
    assert p["blocks.0.mlp.down_proj.weight"].width_mult == 2

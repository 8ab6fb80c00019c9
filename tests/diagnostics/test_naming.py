"""Layer-type names and the matrices diagnostics measure."""

from __future__ import annotations

import math

import torch

from widthwise.app.config import load_config
from widthwise.app.setup import build
from widthwise.diagnostics.matrices import as_linear_map, effective_weight, matrix_sites, stored_weight
from widthwise.diagnostics.naming import block_index, layer_type, pool_by_layer_type, sort_layer_types

from helpers import llama


def test_layer_type_pools_the_same_slot_of_every_block():
    assert layer_type("blocks.3.attn.q_proj.weight.row") == "attn.q_proj.row"
    assert layer_type("blocks.0.mlp.down_proj.weight") == "mlp.down_proj"
    assert layer_type("model.layers.11.self_attn.q_proj.weight") == "self_attn.q_proj"
    assert layer_type("transformer.h.2.attn.c_attn.weight") == "attn.c_attn"
    assert layer_type("embed.weight") == "embed" and layer_type("head.weight") == "head"
    assert block_index("blocks.3.attn.q_proj.weight") == 3 and block_index("head.weight") is None


def test_pool_by_layer_type_averages_finite_values_over_blocks():
    pooled = pool_by_layer_type({"blocks.0.attn.q_proj.weight": 1.0, "blocks.1.attn.q_proj.weight": 3.0,
                                 "blocks.2.attn.q_proj.weight": math.nan, "head.weight": 5.0, "embed.weight": None,
                                 "blocks.3.attn.q_proj.weight": "inf", "blocks.0.mlp.up_proj.weight": "nan"})
    assert pooled == {"attn.q_proj": 2.0, "head": 5.0}  # a diverged run's "inf"/"nan" strings are left out too
    assert sort_layer_types(["head", "zeta", "attn.q_proj", "embed", "mlp.up_proj"]) == [
        "embed", "attn.q_proj", "mlp.up_proj", "head", "zeta"]


def test_matrix_sites_are_the_matrices_once_with_their_applied_weights():
    built = build(load_config("tiny", ["model.tie_embeddings=true"]), 300, torch.device("cpu"))
    sites = matrix_sites(built.model)
    assert "embed.weight" in sites and "head.weight" not in sites  # tied: one parameter, once
    assert not any(n.endswith((".row", ".col")) or "norm" in n for n in sites)
    assert len(sites) == 1 + 2 * 7
    q = sites["blocks.0.attn.q_proj.weight"]
    with torch.no_grad():
        q.module.parametrizations.weight[0].row.fill_(2.0)
    assert torch.equal(effective_weight(q), 2.0 * stored_weight(q))
    emb = sites["embed.weight"]
    assert as_linear_map(stored_weight(emb), emb).shape == (32, 300)  # (out, in): width x vocab


def test_hf_model_matrices_follow_its_roles():
    sites = matrix_sites(llama(64))
    assert "lm_head.weight" in sites and "model.embed_tokens.weight" in sites
    assert "model.layers.0.self_attn.q_proj.weight" in sites
    assert not any("layernorm" in n for n in sites)

"""init_weights follows the plan: stds by role and width, ones/zeros for vectors, multipliers kept."""

import pytest
import torch

import widthwise as ww

from helpers import llama


def test_init_stds_follow_the_recipe():
    model = llama(256, attention_bias=True)
    ww.add_multipliers(model, init=0.5)
    plan = ww.plan(model, base=llama(64, meta=True, attention_bias=True), recipe="mup")
    mults = {id(p) for p in ww.multiplier_parameters(model)}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in mults:
                p.fill_(7.0)
    ww.init_weights(model, plan, generator=torch.Generator().manual_seed(0))
    up = model.model.layers[0].mlp.up_proj.parametrizations.weight.original
    assert up.std().item() == pytest.approx(0.02 / 2, rel=0.02)  # hidden: 0.02 * 4^-1/2
    emb = model.model.embed_tokens.parametrizations.weight.original
    assert emb.std().item() == pytest.approx(0.02, rel=0.02)
    head = model.lm_head.parametrizations.weight.original
    assert head.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(model.model.norm.weight, torch.ones(256))
    assert torch.equal(model.model.layers[0].self_attn.q_proj.bias, torch.zeros(256))
    # learnable multipliers keep their values (init 0.5 on rows)
    assert torch.equal(model.model.layers[0].mlp.up_proj.parametrizations.weight[0].row, torch.full((512,), 0.5))
    # the head's 1/m is installed
    assert model.lm_head.parametrizations.weight[0].value == 0.25


def test_init_is_deterministic():
    a, b = llama(64, seed=1), llama(64, seed=2)
    plan = ww.plan(a)
    ww.init_weights(a, plan, generator=torch.Generator().manual_seed(3))
    ww.init_weights(b, plan, generator=torch.Generator().manual_seed(3))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_init_refuses_params_outside_the_plan():
    model = llama(64)
    plan = ww.plan(model)
    ww.add_multipliers(model)
    with pytest.raises(ValueError, match="is not in the plan: was it added after ww.plan"):
        ww.init_weights(model, plan)


def test_init_without_forward_multipliers():
    model = llama(128)
    plan = ww.plan(model, base=llama(64, meta=True))
    ww.init_weights(model, plan, forward_multipliers=False)
    assert not hasattr(model.lm_head, "parametrizations")

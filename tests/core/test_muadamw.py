"""The ``mup`` preset against microsoft/mup's ``MuAdamW`` (mup 1.0.0, installed by ``make install``).

Conventions compared, per parameter of an HF ``LlamaForCausalLM`` (untied), after mup's ``set_base_shapes``:

- mup calls a parameter matrix-like when two of its dimensions are "infinite" (differ from the base:
  ``infshape.ninf() == 2``) and gives it ``lr / width_mult`` and ``weight_decay * width_mult``, ``width_mult``
  being its fan-in's ratio (``InfShape.main``, the last infinite dimension). widthwise's ``hidden`` role and its
  fan-in width multiplier must pick exactly those parameters and those values.
- Everything else (``ninf() <= 1``: the embedding, the head, norm gains) keeps the group's lr and weight decay.
  widthwise's ``mup`` does the same for the embedding and head, but never decays norm gains and biases (no
  preset does). MuAdamW keeps whatever decay the groups it is given carry, so it is given the usual two groups
  (decay on matrices, none on 1-D parameters, as nanoGPT's ``configure_optimizers``); that is the comparable
  setting, and there every lr and weight decay must be equal, exactly.
- mup wants the head as a ``MuReadout`` (``set_base_shapes`` asserts it unless ``do_assert=False``); its weight is
  vector-like either way, and its forward ``1/width_mult`` is our head's output multiplier.
- ``rescale_params=False``: mup's re-scaling of biases at set_base_shapes is init, not optimizer groups.
"""

from __future__ import annotations

import pytest
from mup import MuAdamW, set_base_shapes

import widthwise as ww

from helpers import llama

LR, WD = 3e-3, 0.1


def _groups_by_param(optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize(("width", "base_width"), [(64, 16), (128, 32), (256, 64)])
def test_mup_preset_equals_muadamw_groups(width, base_width):
    # (64, 16): the GQA case, k_proj/v_proj grow 2x in fan-out and 4x in fan-in (helpers' heads, kv heads)
    model, base = llama(width), llama(base_width, meta=True)
    theirs = llama(width)
    set_base_shapes(theirs, base, rescale_params=False, do_assert=False)
    params = dict(theirs.named_parameters())
    decay = [p for p in params.values() if p.ndim >= 2]
    no_decay = [p for p in params.values() if p.ndim < 2]
    mu = _groups_by_param(MuAdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=LR, weight_decay=WD))

    plan = ww.plan(model, base=base, recipe="mup")
    named = dict(model.named_parameters())  # plain names: init_weights parametrizes the head (its 1/m)
    ww.init_weights(model, plan)
    ours = _groups_by_param(ww.build_optimizer(model, plan, lr=LR, weight_decay=WD))
    ours_by_name = {n: ours[id(p)] for n, p in named.items()}

    matrix_like = {n for n, p in params.items() if p.infshape.ninf() == 2}
    assert matrix_like == set(plan.names("hidden"))
    assert any(p.infshape[0].width_mult() != p.infshape[1].width_mult() for n, p in params.items()
               if n in matrix_like) == (width == 64)  # the GQA projections: fan-out and fan-in ratios differ
    for name, p in params.items():
        assert ours_by_name[name] == mu[id(p)], name  # (lr, weight_decay), exactly
        if name in matrix_like:
            assert plan[name].width_mult == p.infshape.width_mult()
    head = next(f for f in plan.forward_multipliers if f.kind == "output")
    assert head.value == 1 / params["lm_head.weight"].infshape.width_mult()  # MuReadout's forward 1/width_mult


def test_mup_constant_wd_is_not_muadamw():
    model, base = llama(64), llama(16, meta=True)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert ww.plan(model, base=base, recipe="mup_constant_wd")[q].wd_factor == 1.0
    assert ww.plan(model, base=base, recipe="mup")[q].wd_factor == 4.0

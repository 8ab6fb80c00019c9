"""Clipping leaves the multipliers out of the norm (arXiv 2601.04890, section 4.3)."""

import gc

import pytest
import torch

import widthwise as ww
from widthwise.clipping import ClipGroups

from helpers import llama, tokens


def _grads(model):
    x = tokens()
    model(x, labels=x).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_norm_excludes_multipliers_and_leaves_their_grads():
    model = llama(64)
    ww.add_multipliers(model)
    grads = _grads(model)
    mult_ids = {id(p) for p in ww.multiplier_parameters(model)}
    others = [p for p in model.parameters() if id(p) not in mult_ids]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in others]))
    total = ww.clip_grad_norm_(model, max_norm=1e-3)
    torch.testing.assert_close(total, expected)
    for n, p in model.named_parameters():
        if id(p) in mult_ids:
            assert torch.equal(p.grad, grads[n]), n  # untouched
        else:
            torch.testing.assert_close(p.grad, grads[n] * (1e-3 / (expected + 1e-6)), msg=n)


def test_optional_separate_multiplier_clipping():
    model = llama(64)
    ww.add_multipliers(model)
    _grads(model)
    ww.clip_grad_norm_(model, 1e9, multiplier_max_norm=1e-4)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ww.multiplier_parameters(model)]))
    assert norm.item() <= 1.0001e-4


def test_without_multipliers_equals_torch():
    a = llama(64)
    b = llama(64)
    _grads(a)
    _grads(b)
    torch.testing.assert_close(ww.clip_grad_norm_(a, 0.5), torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_include_multipliers_is_plain_torch_clipping_over_every_parameter():
    a, b = llama(64), llama(64)
    b.load_state_dict(a.state_dict())
    ww.add_multipliers(a)
    ww.add_multipliers(b)
    _grads(a)
    _grads(b)
    total = ww.clip_grad_norm_(a, 1e-3, include_multipliers=True)
    torch.testing.assert_close(total, torch.nn.utils.clip_grad_norm_(list(b.parameters()), 1e-3))
    assert total > ww.clip_grad_norm_(b, 1e9)  # the multipliers' gradients are in it
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)
    with pytest.raises(ValueError, match="multiplier_max_norm must be None"):
        ww.clip_grad_norm_(a, 1.0, include_multipliers=True, multiplier_max_norm=1.0)


def test_clip_groups_split_every_parameter_once_with_the_multipliers_apart():
    model = llama(64)
    ww.add_multipliers(model)
    groups = ww.clip_groups(model)
    assert groups.multipliers == ww.multiplier_parameters(model) and groups.multipliers
    ids = [id(p) for p in groups.params + groups.multipliers]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("kwargs", [{}, {"multiplier_max_norm": 1e-4}, {"include_multipliers": True}])
def test_groups_made_once_clip_as_the_model_does_without_walking_it(kwargs):
    a, b = llama(64), llama(64)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        ww.add_multipliers(m)
        _grads(m)
    groups = ww.clip_groups(b)

    def no_walk(*args, **kw):
        raise AssertionError("the model was walked")

    b.modules = b.parameters = b.named_modules = no_walk  # the split made once is all the clip may use
    torch.testing.assert_close(ww.clip_grad_norm_(b, 1e-3, groups=groups, **kwargs),
                               ww.clip_grad_norm_(a, 1e-3, **kwargs))
    split = ww.clip_groups(a)
    for pa, pb in zip(split.params + split.multipliers, groups.params + groups.multipliers, strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_a_split_clips_only_the_model_it_was_made_from():
    a, b = llama(64), llama(64)
    for m in (a, b):
        ww.add_multipliers(m)
        _grads(m)
    groups = ww.clip_groups(a)
    before = [p.grad.clone() for p in b.parameters()]
    with pytest.raises(ValueError, match="groups= was split from another model than this Llama"):
        ww.clip_grad_norm_(b, 1e-3, groups=groups)
    assert all(torch.equal(p.grad, g) for p, g in zip(b.parameters(), before, strict=True))  # nothing clipped
    wrapped = torch.compile(a)  # a wrapper (not compiled until called) is the same model
    torch.testing.assert_close(ww.clip_grad_norm_(wrapped, 1e9, groups=groups), ww.clip_grad_norm_(a, 1e9))
    assert ClipGroups(groups.params, groups.multipliers).made_from(b)  # made by hand: the caller's word is taken
    del a, wrapped
    gc.collect()
    assert not groups.made_from(b)  # the model it came from is gone: nothing else takes its place

"""CombinedOptimizer: Muon + AdamW behind one Optimizer, trains, saves and resumes exactly, refuses misuse."""

import copy

import pytest
import torch

import widthwise as ww
from widthwise import CombinedOptimizer

from helpers import llama, tokens


@pytest.fixture
def setup():
    model = llama(128)
    ww.add_multipliers(model)
    plan = ww.plan(model, base=llama(32, meta=True), recipe="robust", optimizer="muon")
    ww.init_weights(model, plan, generator=torch.Generator().manual_seed(0))
    return model, plan


def test_combined_optimizer_trains_saves_and_resumes_exactly(setup):
    model, plan = setup
    twin = copy.deepcopy(model)

    def run(m, opt, sched, steps):
        for step in steps:
            x = tokens(seed=step)
            m(x, labels=x).loss.backward()
            ww.clip_grad_norm_(m, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()

    opt = ww.build_optimizer(model, plan, lr=3e-3, weight_decay=0.1)
    assert isinstance(opt, CombinedOptimizer)
    sched = ww.lr_schedule(opt, warmup=2, total=8)
    run(model, opt, sched, range(4))
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt, saved_sched = copy.deepcopy(opt.state_dict()), sched.state_dict()
    assert set(saved_opt["optimizers"]) == {"muon", "adamw"}
    run(model, opt, sched, range(4, 8))

    twin.load_state_dict(saved_model)
    opt2 = ww.build_optimizer(twin, plan, lr=3e-3, weight_decay=0.1)
    sched2 = ww.lr_schedule(opt2, warmup=2, total=8)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    run(twin, opt2, sched2, range(4, 8))
    for (n, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert len(opt.state) == sum(len(o.state) for o in opt.optimizers.values())


def test_param_groups_are_the_childrens(setup):
    model, plan = setup
    opt = ww.build_optimizer(model, plan)
    children = [g for o in opt.optimizers.values() for g in o.param_groups]
    assert len(opt.param_groups) == len(children) and all(a is b for a, b in zip(opt.param_groups, children,
                                                                                  strict=True))
    assert repr(opt).startswith("CombinedOptimizer(muon=BatchedMuon(")


def test_misuse_is_refused(setup):
    model, plan = setup
    opt = ww.build_optimizer(model, plan)
    with pytest.raises(ValueError, match="optimizer state holds"):
        opt.load_state_dict({"state": {}, "param_groups": []})
    with pytest.raises(ValueError, match="add parameter groups to one of"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    with pytest.raises(ValueError, match="are its children's"):
        opt.param_groups = []

"""Relative LR schedules keep per-group ratios."""

import math

import pytest
import torch

import widthwise as ww
from widthwise.schedules import ScheduleRatio

from helpers import llama


def test_cosine_values():
    r = ScheduleRatio(warmup=4, total=14, kind="cosine", min_ratio=0.1)
    assert [r(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert r(4) == 1.0
    assert r(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # 0.55
    assert r(14) == pytest.approx(0.1) and r(100) == pytest.approx(0.1)


def test_wsd_and_constant_values():
    r = ScheduleRatio(warmup=2, total=12, kind="wsd", min_ratio=0.0, decay_fraction=0.2)
    assert r(0) == 0.5 and r(5) == 1.0 and r(9) == 1.0
    assert r(10) == pytest.approx(0.0 + 1.0) and r(11) == pytest.approx(0.5) and r(12) == 0.0
    c = ScheduleRatio(warmup=0, total=5, kind="constant")
    assert [c(s) for s in range(7)] == [1.0] * 7


def test_per_group_ratios_survive_every_step():
    model = llama(128)
    plan = ww.plan(model, base=llama(32, meta=True))
    ww.apply_forward_multipliers(model, plan)
    opt = ww.build_optimizer(model, plan, lr=1e-2, weight_decay=0.1)
    sched = ww.lr_schedule(opt, warmup=3, total=10, kind="cosine")
    base = [g["initial_lr"] for g in opt.param_groups]
    assert base == [pytest.approx(1e-2 * g["lr_factor"]) for g in opt.param_groups]
    for step in range(12):
        ratio = ScheduleRatio(3, 10)(step)
        for g, b in zip(opt.param_groups, base, strict=True):
            assert g["lr"] == pytest.approx(b * ratio)
        opt.step()
        sched.step()


def test_schedule_state_roundtrip():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = ww.lr_schedule(opt, warmup=2, total=10, kind="wsd", min_ratio=0.05)
    for _ in range(5):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([p], lr=1.0)
    sched2 = ww.lr_schedule(opt2, warmup=0, total=1, kind="constant")
    sched2.load_state_dict(state)
    assert sched2.lr_lambdas[0].kind == "wsd" and sched2.lr_lambdas[0].min_ratio == 0.05
    assert sched2.last_epoch == 5


@pytest.mark.parametrize(("kw", "match"), [({"kind": "linear"}, "unknown schedule kind"),
                                           ({"warmup": 20}, "warmup must be between"),
                                           ({"total": 0}, "total must be a positive"),
                                           ({"min_ratio": 2}, "min_ratio"),
                                           ({"decay_fraction": 0}, "decay_fraction")])
def test_bad_schedules(kw, match):
    args = {"warmup": 2, "total": 10, **kw}
    with pytest.raises(ValueError, match=match):
        ScheduleRatio(**args)


def test_decay_start():
    assert ScheduleRatio(10, 100, "cosine").decay_start == 10
    assert ScheduleRatio(10, 100, "constant").decay_start == 100
    wsd = ScheduleRatio(10, 100, "wsd", decay_fraction=0.2)
    assert wsd.decay_start == 82  # the last 18 of the 90 post-warmup steps
    assert wsd(81) == 1.0 and wsd(82) == 1.0 and wsd(83) < 1.0

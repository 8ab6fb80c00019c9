"""build_optimizer: group values from the plan, Muon + AdamW as one optimizer, errors."""

import copy

import pytest
import torch

import widthwise as ww
from widthwise import CombinedOptimizer
from widthwise.optim.build import muon_ns_dtype

from helpers import llama, tokens


@pytest.fixture
def setup():
    model = llama(128)
    ww.add_multipliers(model)
    plan = ww.plan(model, base=llama(32, meta=True), recipe="robust")
    ww.init_weights(model, plan, generator=torch.Generator().manual_seed(0))
    return model, plan


def _group(opt, role):
    return next(g for g in opt.param_groups if g["role"] == role)


def test_adamw_groups_carry_base_times_factor(setup):
    model, plan = setup
    opt = ww.build_optimizer(model, plan, "adamw", lr=3e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    hidden = _group(opt, "hidden")
    assert hidden["lr"] == pytest.approx(3e-3 / 4) and hidden["weight_decay"] == pytest.approx(0.1 * 2)
    assert len(hidden["params"]) == 2 * 7
    for role in ("embedding", "head", "vector"):
        assert _group(opt, role)["lr"] == pytest.approx(3e-3) and _group(opt, role)["weight_decay"] == 0.0
    mult = _group(opt, "multiplier")
    assert mult["lr"] == pytest.approx(3e-3) and mult["weight_decay"] == pytest.approx(2e-3)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))
    opt = ww.build_optimizer(model, plan, lr=1e-3, weight_decay=0.1, multiplier_lr=1e-2, multiplier_weight_decay=0)
    assert _group(opt, "multiplier")["lr"] == 1e-2 and _group(opt, "multiplier")["weight_decay"] == 0


def test_muon_on_hidden_adamw_elsewhere(setup):
    model, plan = setup
    opt = ww.build_optimizer(model, plan, "muon", lr=3e-3, weight_decay=0.1)
    assert isinstance(opt, CombinedOptimizer) and isinstance(opt, torch.optim.Optimizer)
    muon, adamw = opt.optimizers["muon"], opt.optimizers["adamw"]
    assert isinstance(muon, ww.BatchedMuon) and isinstance(muon, torch.optim.Muon)
    assert isinstance(adamw, torch.optim.AdamW)
    hidden = {id(p) for g in muon.param_groups for p in g["params"]}
    assert hidden == {id(model.get_parameter(n.replace(".weight", ".parametrizations.weight.original")))
                      for n in plan.names("hidden")}
    g = muon.param_groups[0]
    # match_rms_adamw: lr x m^-1/2, wd x m^1/2 (spectral rule), not Adam's 1/m
    assert g["lr"] == pytest.approx(3e-3 / 2) and g["weight_decay"] == pytest.approx(0.2)
    assert g["adjust_lr_fn"] == "match_rms_adamw" and g["ns_dtype"] in ("bfloat16", "float32")  # "auto" resolved
    orig = ww.build_optimizer(model, plan, "muon", lr=3e-3, muon_lr=0.02, weight_decay=0.1, adjust_lr_fn="original")
    assert orig.optimizers["muon"].param_groups[0]["lr"] == pytest.approx(0.02)
    assert orig.optimizers["muon"].param_groups[0]["weight_decay"] == pytest.approx(0.1)
    assert _group(opt, "multiplier") in adamw.param_groups
    fp32 = ww.build_optimizer(model, plan, "muon", ns_dtype="float32")
    assert {g["ns_dtype"] for g in fp32.optimizers["muon"].param_groups} == {"float32"}
    assert muon_ns_dtype(fp32) == "float32" and muon_ns_dtype(orig) == g["ns_dtype"]
    assert muon_ns_dtype(ww.build_optimizer(model, plan, "adamw")) is None


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

    opt = ww.build_optimizer(model, plan, "muon", lr=3e-3, weight_decay=0.1)
    sched = ww.lr_schedule(opt, warmup=2, total=8)
    run(model, opt, sched, range(4))
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt, saved_sched = copy.deepcopy(opt.state_dict()), sched.state_dict()
    assert set(saved_opt["optimizers"]) == {"muon", "adamw"}
    run(model, opt, sched, range(4, 8))

    twin.load_state_dict(saved_model)
    opt2 = ww.build_optimizer(twin, plan, "muon", lr=3e-3, weight_decay=0.1)
    sched2 = ww.lr_schedule(opt2, warmup=2, total=8)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    run(twin, opt2, sched2, range(4, 8))
    for (n, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert len(opt.state) == sum(len(o.state) for o in opt.optimizers.values())


def test_forward_multipliers_must_be_installed():
    model = llama(128)
    plan = ww.plan(model, base=llama(32, meta=True))
    with pytest.raises(ValueError, match=r"output multiplier x0.25 on 'lm_head' is not installed"):
        ww.build_optimizer(model, plan)
    ww.apply_forward_multipliers(model, plan)
    ww.build_optimizer(model, plan)


def test_errors(setup):
    model, plan = setup
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        ww.build_optimizer(model, plan, "sgd")
    with pytest.raises(ValueError, match="lr must be a non-negative number"):
        ww.build_optimizer(model, plan, lr=-1)
    with pytest.raises(ValueError, match="unknown Muon adjust_lr_fn 'spectral'"):
        ww.build_optimizer(model, plan, "muon", adjust_lr_fn="spectral")
    with pytest.raises(ValueError, match="unknown ns_dtype 'half'"):
        ww.build_optimizer(model, plan, "muon", ns_dtype="half")
    # a 1-D parameter sent to Muon (via a role override), named
    bad = ww.plan(model, base=llama(32, meta=True), roles={r"model\.norm\.weight": "hidden"})
    with pytest.raises(ValueError, match=r"Muon takes 2-D matrices; hidden parameter 'model.norm.weight'"):
        ww.build_optimizer(model, bad, "muon")
    # a parameter in no group
    other = llama(128)
    ww.apply_forward_multipliers(other, ww.plan(other, base=llama(32, meta=True)))
    with pytest.raises(ValueError, match="is not in the plan"):
        ww.build_optimizer(model, ww.plan(other, base=llama(32, meta=True)))
    with pytest.raises(ValueError, match="which the model lacks"):
        ww.build_optimizer(other, plan, check_forward_multipliers=False)
    with pytest.raises(ValueError, match="optimizer state holds"):
        ww.build_optimizer(model, plan, "muon").load_state_dict({"state": {}, "param_groups": []})
    with pytest.raises(ValueError, match="add parameter groups to one of"):
        ww.build_optimizer(model, plan, "muon").add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})


def test_frozen_parameters_are_skipped(setup):
    model, plan = setup
    model.model.embed_tokens.parametrizations.weight.original.requires_grad_(False)
    opt = ww.build_optimizer(model, plan)
    assert all(g["role"] != "embedding" for g in opt.param_groups)


def test_wrapped_models_keep_their_plan(setup, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model, plan = setup
    n_params = len(list(model.parameters()))
    compiled = torch.compile(model)  # names carry `_orig_mod.`; nothing compiles until it is called
    assert sum(len(g["params"]) for g in ww.build_optimizer(compiled, plan).param_groups) == n_params
    assert ww.plan(compiled, base=torch.compile(llama(32, meta=True)), recipe="robust") == plan
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)  # names carry `module.`
        opt = ww.build_optimizer(ddp, plan, "muon")
        assert sum(len(g["params"]) for g in opt.param_groups) == n_params
        x = tokens()
        ddp(x, labels=x).loss.backward()
        ww.clip_grad_norm_(ddp, 1.0)
        opt.step()
        assert ww.plan(ddp, base=llama(32, meta=True)) == plan
        with torch.no_grad():
            before = ddp(x).logits
        ww.fold_multipliers(ddp)
        assert not ww.multiplier_parameters(model) and not hasattr(model.lm_head, "parametrizations")
        with torch.no_grad():
            torch.testing.assert_close(ddp(x).logits, before, rtol=1e-6, atol=1e-6)
    finally:
        dist.destroy_process_group()

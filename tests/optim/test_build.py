"""build_optimizer: groups run exactly the plan's values (and the printed table's), AdamW or Muon + AdamW, errors."""

import pytest
import torch

import widthwise as ww
from widthwise import CombinedOptimizer
from widthwise.models import Llama, LlamaConfig
from widthwise.optim.build import muon_ns_dtype

from helpers import llama, tokens

LR, WD, MUON_LR = 3e-3, 0.1, 0.02


@pytest.fixture
def setup():
    model = llama(128)
    ww.add_multipliers(model)
    plan = ww.plan(model, base=llama(32, meta=True), recipe="robust")
    ww.init_weights(model, plan, generator=torch.Generator().manual_seed(0))
    return model, plan


def _muon_plan(model, **kw):
    return ww.plan(model, base=llama(32, meta=True), recipe="robust", optimizer="muon", **kw)


def _group(opt, role):
    return next(g for g in opt.param_groups if g["role"] == role)


def _reference(width: int, meta: bool = False) -> Llama:  # width 64 against base 16
    cfg = LlamaConfig(width=width, depth=2, heads=2, kv_heads=1, vocab_size=64, ffn_mult=4.0, multiple_of=16,
                      max_seq_len=32)
    with torch.device("meta") if meta else torch.device("cpu"):
        model = Llama(cfg)
    ww.add_multipliers(model, kind="row_col")
    return model


def _hf(width: int, meta: bool = False):  # width 128 against base 32 (kv heads scale with width)
    model = llama(2 * width, meta=meta)
    ww.add_multipliers(model, kind="row_col")
    return model


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """The printed plan table as ``{name: {column: cell}}``; columns are found from the dashed rule under the header."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("----"))
    spans, start = [], 0
    for dashes in lines[rule].split("  "):
        spans.append((start, start + len(dashes)))
        start += len(dashes) + 2
    header = [lines[rule - 1][a:b].strip() for a, b in spans]
    rows = {}
    for line in lines[rule + 1:]:
        if line.startswith("forward multiplier:"):
            break
        cells = dict(zip(header, (line[a:b].strip() for a, b in spans), strict=True))
        rows[cells["name"]] = cells
    return rows


@pytest.mark.parametrize("recipe", ["sp", "mup", "robust"])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
@pytest.mark.parametrize("builder", [_reference, _hf], ids=["reference", "hf"])
@pytest.mark.filterwarnings("ignore::widthwise.planning.WidthConstantMultipliersWarning")  # sp on purpose
def test_table_and_groups_run_the_same_values(builder, optimizer, recipe):
    model = builder(64)
    reference = builder is _reference  # the reference model applies its own forward multipliers
    plan = ww.plan(model, base=builder(16, meta=True), recipe=recipe, optimizer=optimizer,
                   forward_multipliers=not reference)
    opt = ww.build_optimizer(model, plan, lr=LR, weight_decay=WD, muon_lr=MUON_LR,
                             check_forward_multipliers=False)
    children = opt.optimizers if isinstance(opt, CombinedOptimizer) else {"adamw": opt}
    assert set(children) == ({"muon", "adamw"} if optimizer == "muon" else {"adamw"})
    groups = {name: (child, g) for child, o in children.items() for g in o.param_groups for name in g["names"]}
    rows = parse_table(plan.table(lr=LR, weight_decay=WD, muon_lr=MUON_LR))
    assert set(rows) == set(groups) == set(plan.params)
    for name, (child, group) in groups.items():
        entry, row = plan[name], rows[name]
        assert entry.optimizer == child == row["optimizer"], name
        assert entry.lr(LR, MUON_LR) == group["lr"] and entry.weight_decay(WD) == group["weight_decay"], name
        assert float(row["lr"]) == pytest.approx(group["lr"], rel=5e-4), name
        assert float(row["wd"]) == pytest.approx(group["weight_decay"], rel=5e-4, abs=1e-12), name
        assert float(row["lr*wd"]) == pytest.approx(group["lr"] * group["weight_decay"], rel=5e-4, abs=1e-15), name
        assert (group["lr_factor"], group["wd_factor"], group["width_mult"]) == (
            entry.lr_factor, entry.wd_factor, entry.width_mult)
    hidden = [n for n in plan.names("hidden") if n.endswith("weight")]
    assert hidden and all(plan[n].optimizer == optimizer and plan[n].width_mult == 4 for n in hidden)
    assert all(plan[n].optimizer == "adamw" for n in plan.params if n not in hidden)
    mults = plan.names("multiplier")
    assert mults and all(groups[n][1]["lr"] == LR and groups[n][1]["weight_decay"] == 2e-3 for n in mults)


def test_adamw_groups_carry_base_times_factor(setup):
    model, plan = setup
    opt = ww.build_optimizer(model, plan, lr=LR, weight_decay=WD, optimizer="adamw")
    assert isinstance(opt, torch.optim.AdamW)
    hidden = _group(opt, "hidden")
    assert hidden["lr"] == pytest.approx(LR / 4) and hidden["weight_decay"] == pytest.approx(WD * 2)
    entry = plan[hidden["names"][0]]
    assert (hidden["lr"], hidden["weight_decay"]) == (entry.lr(LR), entry.weight_decay(WD))
    assert len(hidden["params"]) == 2 * 7
    for role in ("embedding", "head", "vector"):
        assert _group(opt, role)["lr"] == pytest.approx(LR) and _group(opt, role)["weight_decay"] == 0.0
    mult = _group(opt, "multiplier")
    assert mult["lr"] == pytest.approx(LR) and mult["weight_decay"] == pytest.approx(2e-3)
    assert (mult["lr_factor"], mult["wd_factor"]) == (1.0, None)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_adamw_runs_torchs_fused_kernel_where_it_has_one(setup):
    """CPU parameters: fused AdamW by default (torch's own default is its per-tensor loop, 3x slower), the plan's
    LR and WD unchanged; an explicit implementation choice is kept; meta parameters get torch's default."""
    model, plan = setup
    opt = ww.build_optimizer(model, plan, lr=LR, weight_decay=WD)
    assert all(g["fused"] is True and not g["foreach"] for g in opt.param_groups)
    for chosen in ({"fused": False}, {"foreach": True}, {"differentiable": True}):
        other = ww.build_optimizer(model, plan, lr=LR, weight_decay=WD, **chosen)
        assert all(g["fused"] in (None, False) for g in other.param_groups), chosen
        assert [(g["lr"], g["weight_decay"]) for g in other.param_groups] == [
            (g["lr"], g["weight_decay"]) for g in opt.param_groups]
    meta = llama(128, meta=True)
    assert all(not g["fused"] for g in ww.build_optimizer(meta, ww.plan(meta, recipe="sp")).param_groups)
    muon = ww.build_optimizer(model, _muon_plan(model), lr=LR, weight_decay=WD)
    assert all(g["fused"] is True for g in muon.optimizers["adamw"].param_groups)
    copies = [[torch.nn.Parameter(p.detach().clone()) for p in g["params"]] for g in opt.param_groups]
    pairs = list(zip(copies, opt.param_groups, strict=True))
    torch_fused = torch.optim.AdamW([{"params": ps, "lr": g["lr"], "weight_decay": g["weight_decay"]}
                                     for ps, g in pairs], betas=(0.9, 0.95), fused=True)
    for ps, g in pairs:
        for copy, p in zip(ps, g["params"], strict=True):
            p.grad = torch.randn_like(p)
            copy.grad = p.grad.clone()
    opt.step()
    torch_fused.step()
    assert all(torch.equal(c, p) for ps, g in pairs for c, p in zip(ps, g["params"], strict=True))


def test_multiplier_settings_come_from_the_plan(setup):
    model, _ = setup
    plan = ww.plan(model, base=llama(32, meta=True), multiplier_lr=1e-2, multiplier_weight_decay=0)
    entry = plan["model.layers.0.mlp.up_proj.weight.row"]
    assert (entry.lr_factor, entry.fixed_lr, entry.wd_factor, entry.fixed_wd) == (None, 1e-2, None, 0.0)
    assert (entry.lr(LR, MUON_LR), entry.weight_decay(WD)) == (1e-2, 0.0)
    opt = ww.build_optimizer(model, plan, lr=1e-3, weight_decay=WD)
    assert _group(opt, "multiplier")["lr"] == 1e-2 and _group(opt, "multiplier")["weight_decay"] == 0
    row = parse_table(plan.table(lr=1e-3, weight_decay=WD))["model.layers.0.mlp.up_proj.weight.row"]
    assert (row["lr x"], row["wd x"], row["lr*wd x"], row["lr"], row["wd"]) == ("=0.01", "=0", "-", "0.01", "0")


def test_muon_on_hidden_adamw_elsewhere(setup):
    model, _ = setup
    plan = _muon_plan(model)
    opt = ww.build_optimizer(model, plan, lr=LR, weight_decay=WD)
    assert isinstance(opt, CombinedOptimizer) and isinstance(opt, torch.optim.Optimizer)
    muon, adamw = opt.optimizers["muon"], opt.optimizers["adamw"]
    assert isinstance(muon, ww.BatchedMuon) and isinstance(muon, torch.optim.Muon)
    assert isinstance(adamw, torch.optim.AdamW)
    hidden = {id(p) for g in muon.param_groups for p in g["params"]}
    assert hidden == {id(model.get_parameter(n.replace(".weight", ".parametrizations.weight.original")))
                      for n in plan.names("hidden")}
    g = muon.param_groups[0]
    # match_rms_adamw: lr x m^-1/2, wd x m^1/2 (spectral rule), not Adam's 1/m
    assert g["lr"] == pytest.approx(LR / 2) and g["weight_decay"] == pytest.approx(0.2)
    assert (g["lr_factor"], g["wd_factor"]) == (pytest.approx(0.5), pytest.approx(2.0))
    assert g["adjust_lr_fn"] == "match_rms_adamw" and g["ns_dtype"] in ("bfloat16", "float32")  # "auto" resolved
    orig = ww.build_optimizer(model, _muon_plan(model, muon_adjust_lr_fn="original"), lr=LR, muon_lr=MUON_LR,
                              weight_decay=WD)
    og = orig.optimizers["muon"].param_groups[0]
    assert og["lr"] == pytest.approx(MUON_LR) and og["weight_decay"] == pytest.approx(WD)
    assert og["adjust_lr_fn"] == "original"
    assert _group(opt, "multiplier") in adamw.param_groups
    fp32 = ww.build_optimizer(model, plan, ns_dtype="float32")
    assert {g["ns_dtype"] for g in fp32.optimizers["muon"].param_groups} == {"float32"}
    assert muon_ns_dtype(fp32) == "float32" and muon_ns_dtype(orig) == og["ns_dtype"]
    assert muon_ns_dtype(ww.build_optimizer(model, ww.plan(model, base=llama(32, meta=True)))) is None


def test_forward_multipliers_must_be_installed():
    model = llama(128)
    plan = ww.plan(model, base=llama(32, meta=True))
    with pytest.raises(ValueError, match=r"output multiplier x0.25 on 'lm_head' is not installed"):
        ww.build_optimizer(model, plan)
    ww.apply_forward_multipliers(model, plan)
    ww.build_optimizer(model, plan)


def test_errors(setup):
    model, plan = setup
    with pytest.raises(ValueError, match="optimizer='muon' disagrees with the plan's 'adamw'"):
        ww.build_optimizer(model, plan, optimizer="muon")
    with pytest.raises(ValueError, match=r"lr must be a non-negative number, got 'muon' \(the optimizer is the plan"):
        ww.build_optimizer(model, plan, "muon")
    with pytest.raises(ValueError, match="lr must be a non-negative number"):
        ww.build_optimizer(model, plan, lr=-1)
    with pytest.raises(ValueError, match="muon_lr must be a non-negative number"):
        ww.build_optimizer(model, plan, muon_lr=-1)
    for moved, name in (("adjust_lr_fn", "muon_adjust_lr_fn"), ("multiplier_lr", "multiplier_lr"),
                        ("multiplier_weight_decay", "multiplier_weight_decay")):
        with pytest.raises(ValueError, match=f"{moved} belongs to the plan: pass {name}= to ww.plan"):
            ww.build_optimizer(model, plan, **{moved: 0.1})
    with pytest.raises(ValueError, match="unknown ns_dtype 'half'"):
        ww.build_optimizer(model, _muon_plan(model), ns_dtype="half")
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        ww.plan(model, optimizer="sgd")
    with pytest.raises(ValueError, match="unknown Muon adjust_lr_fn 'spectral'"):
        ww.plan(model, muon_adjust_lr_fn="spectral")
    with pytest.raises(ValueError, match="multiplier_weight_decay must be a non-negative finite number"):
        ww.plan(model, multiplier_weight_decay=-1)
    with pytest.raises(ValueError, match="multiplier_lr must be a non-negative finite number"):
        ww.plan(model, multiplier_lr=float("nan"))
    # a 1-D parameter sent to Muon (via a role override), named when planning
    with pytest.raises(ValueError, match=r"Muon takes 2-D matrices; hidden parameter 'model.norm.weight'"):
        _muon_plan(model, roles={r"model\.norm\.weight": "hidden"})
    # a parameter in no group
    other = llama(128)
    ww.apply_forward_multipliers(other, ww.plan(other, base=llama(32, meta=True)))
    with pytest.raises(ValueError, match="is not in the plan"):
        ww.build_optimizer(model, ww.plan(other, base=llama(32, meta=True)))
    with pytest.raises(ValueError, match="which the model lacks"):
        ww.build_optimizer(other, plan, check_forward_multipliers=False)


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
        muon_plan = _muon_plan(ddp)
        opt = ww.build_optimizer(ddp, muon_plan)
        assert sum(len(g["params"]) for g in opt.param_groups) == n_params
        x = tokens()
        ddp(x, labels=x).loss.backward()
        ww.clip_grad_norm_(ddp, 1.0)
        opt.step()
        assert ww.plan(ddp, base=llama(32, meta=True)) == plan
        assert _muon_plan(ddp) == muon_plan
        with torch.no_grad():
            before = ddp(x).logits
        ww.fold_multipliers(ddp)
        assert not ww.multiplier_parameters(model) and not hasattr(model.lm_head, "parametrizations")
        with torch.no_grad():
            torch.testing.assert_close(ddp(x).logits, before, rtol=1e-6, atol=1e-6)
    finally:
        dist.destroy_process_group()

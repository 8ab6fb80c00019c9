"""widthwise's plan, optimizer, schedule and clip inside a real `transformers.Trainer`, against the plain loop."""

from __future__ import annotations

import pytest
import torch

import widthwise as ww
from widthwise.app.hf_trainer import WidthwiseClip, trainer_kit

from helpers import llama

STEPS, BATCH, SEQ = 6, 4, 16


def prepared(seed: int = 0):
    torch.manual_seed(seed)
    model = llama(64).train()
    ww.add_multipliers(model, kind="row_col", placement="all")
    plan = ww.plan(model, base=llama(32, meta=True), recipe="robust")
    ww.init_weights(model, plan, generator=torch.Generator().manual_seed(seed))
    return model, plan


def batch() -> torch.Tensor:
    return torch.randint(0, 128, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))


def args(tmp_path, **kw):
    from transformers import TrainingArguments

    defaults = dict(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=BATCH, max_grad_norm=0,
                    logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                    dataloader_num_workers=0, seed=0)
    return TrainingArguments(**{**defaults, **kw})


def test_trainer_runs_exactly_the_plain_widthwise_loop(tmp_path):
    from transformers import Trainer

    x = batch()
    data = [{"input_ids": row, "labels": row} for row in x]  # one batch per step, the same each step

    model, plan = prepared()
    kit = trainer_kit(model, plan, lr=3e-3, weight_decay=0.1, total_steps=STEPS, warmup=2, max_grad_norm=0.5)
    trainer = Trainer(model=model, args=args(tmp_path), train_dataset=data, **kit)
    trainer.train()

    ref, ref_plan = prepared()
    opt = ww.build_optimizer(ref, ref_plan, lr=3e-3, weight_decay=0.1)
    sched = ww.lr_schedule(opt, 2, STEPS, "cosine")
    norms = []
    for _ in range(STEPS):
        ref(input_ids=x, labels=x).loss.backward()
        norms.append(float(ww.clip_grad_norm_(ref, 0.5)))
        opt.step()
        sched.step()
        opt.zero_grad()

    clip = kit["callbacks"][0]
    assert clip.norms == pytest.approx(norms, rel=1e-4) and max(norms) > 0.5  # it clipped, multipliers left out
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)
    optimizer = kit["optimizers"][0]
    ratios = {g["lr"] / g["initial_lr"] for g in optimizer.param_groups}
    assert len(ratios) == 1  # the schedule is relative: every group kept its plan factor
    assert len({g["lr"] for g in optimizer.param_groups}) > 1
    mults = ww.multiplier_parameters(model)
    assert mults and any(not torch.equal(m, torch.ones_like(m)) for m in mults)  # the multipliers trained
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == STEPS and losses[-1] < losses[0]


def test_trainers_own_clip_is_refused(tmp_path):
    from transformers import Trainer

    model, plan = prepared()
    kit = trainer_kit(model, plan, lr=3e-3, weight_decay=0.1, total_steps=STEPS)
    x = batch()
    trainer = Trainer(model=model, args=args(tmp_path, max_grad_norm=1.0),
                      train_dataset=[{"input_ids": r, "labels": r} for r in x], **kit)
    with pytest.raises(ValueError, match="max_grad_norm=1.0: set it to 0"):
        trainer.train()
    assert isinstance(kit["callbacks"][0], WidthwiseClip)


def test_the_clip_callback_splits_each_model_it_is_given(tmp_path):
    a, _ = prepared(0)
    b, _ = prepared(1)
    clip, x = WidthwiseClip(max_norm=1e9), batch()
    for model in (a, b, a):
        model.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
        clip.on_pre_optimizer_step(args(tmp_path), None, None, model=model)
        assert clip.norms[-1] == pytest.approx(float(ww.clip_grad_norm_(model, 1e9)), rel=1e-6)
    assert clip.norms[0] == pytest.approx(clip.norms[2]) and clip.norms[0] != pytest.approx(clip.norms[1])

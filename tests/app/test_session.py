"""Session: the trainer's steps from a Config with no run directory; its state carries a run on exactly."""

from __future__ import annotations

import copy
import math

import pytest

from widthwise.app.checkpoint import Checkpoint
from widthwise.app.config import load_config
from widthwise.app.rundir import RunDir
from widthwise.app.session import Session
from widthwise.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("data_cache", "one_thread")

FAST = ["train.threads=1", "train.progress=false", "diagnostics.every=null", "schedule.kind=constant"]


@pytest.fixture(scope="module")
def config():
    return load_config("tiny", FAST)


def _losses(session: Session, steps: int) -> list[float]:
    return [float(session.train_step()[0]) for _ in range(steps)]


def test_a_session_trains_and_writes_nothing(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    session = Session(config)
    losses = _losses(session, 4)
    assert (session.step, session.tokens) == (4, 4 * 8 * 32)
    assert all(math.isfinite(x) for x in losses)
    assert session.lr() == pytest.approx(config.optim.lr * 4 / 5)  # warmup: 5 steps
    assert math.isfinite(session.evaluate())
    assert session.optimizer is session.built.optimizer and session.plan is session.built.plan
    resolved = session.resolved()
    assert resolved["model"]["vocab_size"] == session.data.vocab_size and resolved["scaling"]["base_width"] == 16
    assert resolved["data_fingerprint"] == session.data.fingerprint
    assert list(tmp_path.iterdir()) == []  # no run directory, nothing else either


def test_state_dict_round_trips_to_identical_next_losses(config):
    first = Session(config)
    _losses(first, 3)
    state = copy.deepcopy(first.state_dict())
    expected = _losses(first, 3)
    again = Session(config)
    again.load_state_dict(state)
    assert (again.step, again.tokens) == (3, 3 * 8 * 32)
    assert _losses(again, 3) == expected
    assert again.evaluate() == first.evaluate()


def test_state_survives_a_checkpoint_on_disk_with_the_trainers_extras(config, tmp_path):
    first = Session(config)
    _losses(first, 2)
    run = RunDir(tmp_path / "run")
    run.save_checkpoint(Checkpoint.of(first.state_dict(), elapsed_s=1.5), keep=1)
    expected = _losses(first, 2)
    ckpt = run.checkpoint()
    assert ckpt.step == 2 and ckpt.state["elapsed_s"] == 1.5
    again = Session(config)
    again.load_state_dict(ckpt.session_state())
    assert _losses(again, 2) == expected


def test_a_state_that_does_not_fit_is_a_checkpoint_error(config):
    session = Session(config)
    state = session.state_dict()
    with pytest.raises(CheckpointError, match="checkpoint step 0: the training data changed"):
        session.load_state_dict({**state, "data_fingerprint": "other"})
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        session.load_state_dict({**state, "model": {"nope": next(iter(state["model"].values()))}})


def test_grad_accum_splits_the_same_global_batch_into_micro_steps(config):
    from widthwise.app.config import apply_overrides

    whole, split = Session(config), Session(apply_overrides(config, ["train.grad_accum=4"]))
    a, b = _losses(whole, 4), _losses(split, 4)
    assert split.tokens == whole.tokens == 4 * 8 * 32  # tokens and schedule count the global batch
    assert b == pytest.approx(a, rel=1e-5)
    assert a[0] != a[-1]


def test_a_state_written_by_two_ranks_loads_in_one_process(config):
    session = Session(config)
    expected = _losses(Session(config), 2)
    session.load_state_dict({**copy.deepcopy(session.state_dict()), "world_size": 2})  # whole tensors: any world
    assert _losses(session, 2) == expected


def test_a_session_flushes_subnormals_unless_its_config_says_not(config):
    from widthwise.app.config import apply_overrides
    from widthwise.app.subnormals import flush_subnormals, subnormals_survive

    try:
        flush_subnormals(False)
        kept = Session(apply_overrides(config, ["train.flush_subnormals=false"]))
        assert kept.runtime.subnormals_flushed == 0 and subnormals_survive() > 0
        assert Session(config).runtime.subnormals_flushed >= 1 and subnormals_survive() == 0
    finally:
        flush_subnormals()  # as every session leaves this process


def test_the_update_splits_the_parameters_for_the_clip_once(config):
    session, reference = Session(config), Session(config)
    assert session.built.clip_groups is None and session.built.multiplier_names  # tiny has multipliers
    _losses(session, 1)
    groups = session.built.clip_groups
    assert groups.multipliers and len(groups.params) + len(groups.multipliers) == len(list(session.model.parameters()))

    def no_walk(*args, **kwargs):
        raise AssertionError("the model was walked")

    model = session.model
    model.modules = model.parameters = model.named_modules = no_walk  # later steps use the split made at the first
    assert _losses(session, 2) == _losses(reference, 3)[1:]
    assert session.built.clip_groups is groups

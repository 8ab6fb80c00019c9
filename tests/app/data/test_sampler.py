"""Batch sampling: deterministic epochs, exact resume, rank sharding, and a fixed validation set."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from widthwise.app.data import BatchSampler, validation_batches
from widthwise.errors import DataError


def stream(n: int) -> np.ndarray:
    """Token i is i: a window is identified by its first token."""
    return np.arange(n, dtype=np.uint32)


@pytest.fixture
def memmapped(tmp_path) -> np.ndarray:
    file = tmp_path / "train.bin"
    stream(5000).astype(np.uint16).tofile(file)
    return np.memmap(file, dtype=np.uint16, mode="r", shape=(5000,))


def draw(sampler: BatchSampler, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [sampler.next_batch() for _ in range(n)]


def starts(sampler: BatchSampler, n: int) -> list[int]:
    return [int(s) for x, _ in draw(sampler, n) for s in x[:, 0]]


def test_batches_are_shifted_int64_windows(memmapped):
    sampler = BatchSampler(memmapped, batch_size=4, seq_len=16, seed=0)
    x, y = sampler.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:], y[:, :-1])
    assert sampler.tokens is memmapped  # gathered per batch, never copied whole


def test_each_epoch_is_a_permutation_of_non_overlapping_windows():
    n, seq_len = 1000, 9
    sampler = BatchSampler(stream(n), batch_size=5, seq_len=seq_len, seed=3)
    windows = sampler.windows
    assert windows == (n - seq_len + 1) // (seq_len + 1) == 99
    seen = starts(sampler, 60)  # 300 windows: three epochs and a bit, batches crossing epoch ends
    for epoch in range(3):
        block = seen[epoch * windows : (epoch + 1) * windows]
        offset = min(block)
        assert 0 <= offset < seq_len
        assert sorted(block) == [offset + i * (seq_len + 1) for i in range(windows)]
        assert block != sorted(block)  # shuffled
    assert sampler.epoch == 3
    assert seen[:windows] != seen[windows : 2 * windows]


def test_offsets_cover_the_range():
    sampler = BatchSampler(stream(2000), batch_size=199, seq_len=9, seed=0)
    assert sampler.windows == 199
    offsets = {min(starts(sampler, 1)) for _ in range(60)}
    assert offsets == set(range(9))


def test_deterministic_and_seeded():
    a = starts(BatchSampler(stream(3000), 8, 20, seed=7), 30)
    assert a == starts(BatchSampler(stream(3000), 8, 20, seed=7), 30)
    assert a != starts(BatchSampler(stream(3000), 8, 20, seed=8), 30)


def test_shortest_stream_has_one_window():
    sampler = BatchSampler(stream(17), batch_size=3, seq_len=16, seed=0)
    assert sampler.windows == 1
    x, _ = sampler.next_batch()
    assert x[:, 0].tolist() == [0, 0, 0] and sampler.epoch == 3
    with pytest.raises(DataError, match=r"16 train tokens cannot fill one window of seq_len \+ 1 = 17"):
        BatchSampler(stream(16), batch_size=3, seq_len=16, seed=0)


def test_resume_reproduces_the_next_batches(memmapped):
    sampler = BatchSampler(memmapped, batch_size=6, seq_len=32, seed=11, rank=1, world_size=3)
    draw(sampler, 10)  # 180 windows of 151: into the second epoch
    state = json.loads(json.dumps(sampler.state_dict()))  # it goes through a JSON checkpoint
    expected = draw(sampler, 9)
    resumed = BatchSampler(memmapped, batch_size=6, seq_len=32, seed=11, rank=1, world_size=3)
    resumed.load_state_dict(state)
    assert resumed.epoch == state["epoch"] > 0
    for (x, y), (rx, ry) in zip(expected, draw(resumed, 9), strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(20, 400), seq_len=st.integers(1, 12), batch=st.integers(1, 5), world=st.integers(1, 3),
    seed=st.integers(0, 2**32), k=st.integers(0, 25), m=st.integers(1, 10),
)
def test_resume_property(n, seq_len, batch, world, seed, k, m):
    rank = seed % world
    tokens = stream(max(n, seq_len + 1))
    sampler = BatchSampler(tokens, batch, seq_len, seed, rank, world)
    draw(sampler, k)
    resumed = BatchSampler(tokens, batch, seq_len, seed, rank, world)
    resumed.load_state_dict(sampler.state_dict())
    assert starts(resumed, m) == starts(sampler, m)


def test_state_is_rank_independent_and_ranks_shard_the_global_batch():
    tokens = stream(4000)
    ranks = [BatchSampler(tokens, 4, 24, seed=5, rank=r, world_size=2) for r in range(2)]
    single = BatchSampler(tokens, 8, 24, seed=5)
    for _ in range(25):  # > one epoch: 159 windows, 8 a step
        (x0, y0), (x1, y1) = (s.next_batch() for s in ranks)
        x, y = single.next_batch()
        assert set(x0[:, 0].tolist()).isdisjoint(x1[:, 0].tolist())
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()


def test_resume_with_another_world_size_and_the_same_global_batch():
    tokens = stream(4000)
    single = BatchSampler(tokens, 8, 24, seed=5)
    draw(single, 3)
    ranks = [BatchSampler(tokens, 4, 24, seed=5, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.load_state_dict(single.state_dict())
    x, _ = single.next_batch()
    assert torch.equal(torch.cat([r.next_batch()[0] for r in ranks]), x)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seq_len": 32}, "seq_len"),
        ({"batch_size": 8}, "global_batch"),
        ({"world_size": 2, "rank": 1}, "global_batch"),
        ({"tokens": stream(3000)}, "windows"),
        ({"tokens": stream(2001)}, "tokens"),
        ({"seed": 1}, "seed"),
    ],
)
def test_state_for_other_geometry_is_refused(change, field):
    kwargs = {"tokens": stream(2000), "batch_size": 4, "seq_len": 16, "seed": 0}
    state = BatchSampler(**kwargs).state_dict()
    other = BatchSampler(**{**kwargs, **change})
    with pytest.raises(DataError, match=rf"^data sampler state: .*{field} "):
        other.load_state_dict(state)


@pytest.mark.parametrize(
    "state", [{}, {"epoch": 0}, None, "epoch 1"],
)
def test_malformed_state_is_refused(state):
    with pytest.raises(DataError, match=r"^data sampler state: not a BatchSampler state"):
        BatchSampler(stream(100), 2, 8, seed=0).load_state_dict(state)


def test_out_of_range_position_is_refused():
    sampler = BatchSampler(stream(100), 2, 8, seed=0)
    state = {**sampler.state_dict(), "position": sampler.windows}
    with pytest.raises(DataError, match=r"invalid position"):
        sampler.load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"seq_len": 0}, {"rank": 2, "world_size": 2}, {"seed": -1}, {"world_size": 0}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        BatchSampler(**{"tokens": stream(100), "batch_size": 2, "seq_len": 8, "seed": 0, **kwargs})


def test_validation_takes_consecutive_windows_when_short():
    batches = validation_batches(stream(100), batch_size=4, seq_len=9, max_tokens=1000)
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x[:, 0].tolist() == [10 * i for i in range(10)] and torch.equal(y, x + 1)
    assert x.dtype == y.dtype == torch.int64 and x.shape[1] == 9


def test_validation_strides_over_a_long_stream():
    tokens = stream(100_000)
    batches = validation_batches(tokens, batch_size=8, seq_len=99, max_tokens=2000)
    first = torch.cat([x for x, _ in batches])[:, 0].tolist()
    assert len(first) == 20 and sum(x.numel() for x, _ in batches) <= 2000
    assert first[0] == 0 and first[-1] > 90_000 and all(s % 100 == 0 for s in first)
    gaps = np.diff(first)
    assert gaps.min() >= 100 and gaps.max() - gaps.min() <= 100  # evenly spread, non-overlapping
    again = validation_batches(tokens, batch_size=8, seq_len=99, max_tokens=2000)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again, strict=True))
    assert len(validation_batches(tokens, 8, 99, max_tokens=10)) == 1  # one window at least


def test_validation_too_short():
    with pytest.raises(DataError, match=r"9 validation tokens cannot fill one window of seq_len \+ 1 = 10"):
        validation_batches(stream(9), batch_size=2, seq_len=9, max_tokens=100)

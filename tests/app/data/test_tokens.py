"""Token streams: split by document, cached as memmaps, reused, and never read half-written."""

import json
import math
import os

import numpy as np
import pytest

import widthwise.app.data.tokenizer as tokenizer_module
import widthwise.app.data.tokens as tokens_module
from widthwise.app.data import Document, load_documents, prepare_data, split_documents
from widthwise.app.data.tokens import token_dtype
from widthwise.errors import DataError


@pytest.fixture(scope="module")
def plays():
    return load_documents(None)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "bundled-data-cache"  # shared with test_data_tokenizer.py
    return prepare_data(None, 512, 64, cache), cache


def _segments(stream: np.ndarray, eos: int) -> list[np.ndarray]:
    """The documents of a stream: the runs of tokens each ended by eos."""
    ends = np.flatnonzero(stream == eos)
    assert ends[-1] == len(stream) - 1
    return np.split(np.asarray(stream), ends + 1)[:-1]


def test_bundled_corpus_prepared(plays, bundled):
    data, cache = bundled
    assert isinstance(data.train, np.memmap) and isinstance(data.val, np.memmap)
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    assert data.train.ndim == 1 and not data.train.flags.writeable and not data.val.flags.writeable
    assert data.vocab_size == 512 and data.eos_id == 0 and len(data.fingerprint) == 64
    assert (data.train_documents, data.val_documents) == (36, 2)  # ceil(0.05 * 38)
    assert int(data.train.max()) < 512 and len(data.train) > 2_000_000 and len(data.val) > 50_000
    assert [p.name for p in cache.glob("tokens-*")] == [f"tokens-{data.fingerprint[:16]}"]

    train_docs, val_docs = split_documents(plays, 0.05, 0)
    assert not {d.name for d in val_docs} & {d.name for d in train_docs}
    for stream, docs in ((data.train, train_docs), (data.val, val_docs)):
        segments = _segments(stream, data.eos_id)
        assert len(segments) == len(docs)  # one eos after each document, nowhere else
        assert [data.tokenizer.decode(s.tolist()) for s in segments] == [d.text for d in docs]


def test_second_call_reuses_the_cache(bundled, monkeypatch):
    data, cache = bundled

    def forbidden(*args, **kwargs):
        raise AssertionError("rebuilt despite a valid cache")

    monkeypatch.setattr(tokens_module, "_write_stream", forbidden)
    monkeypatch.setattr(tokenizer_module, "train_tokenizer", forbidden)
    again = prepare_data(None, 512, 256, cache)  # seq_len is checked, not part of the cache
    assert again.fingerprint == data.fingerprint
    assert np.array_equal(again.train, data.train) and np.array_equal(again.val, data.val)
    assert (again.train_documents, again.val_documents) == (36, 2)


def test_corpus_too_short_for_seq_len(bundled):
    data, cache = bundled
    with pytest.raises(DataError) as err:
        prepare_data(None, 512, 1_000_000, cache)
    message = str(err.value)
    assert message.startswith("data: corpus too short: ") and "\n" not in message
    assert f"{len(data.train)} train and {len(data.val)} validation tokens for seq_len 1000000" in message


@pytest.mark.parametrize("val_fraction", [0, -0.1, 0.51, 1.0, math.nan, True, "0.1"])
def test_val_fraction_out_of_range(tmp_path, val_fraction):
    with pytest.raises(DataError, match=r"^data\.val_fraction: "):
        prepare_data(None, 512, 64, tmp_path, val_fraction=val_fraction)


def test_bad_vocab_and_path_are_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"^data\.vocab_size: 100 "):
        prepare_data(None, 100, 64, tmp_path)
    with pytest.raises(DataError, match=r"^data\.path: .*absent does not exist"):
        prepare_data(tmp_path / "absent", 512, 64, tmp_path)


def test_token_dtype():
    assert token_dtype(512) == np.uint16 and token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.uint32


def test_split_is_by_name_and_seed():
    docs = [Document(f"doc{i}", f"text {i}") for i in range(40)]
    train, val = split_documents(docs, 0.1, 0)
    assert len(val) == 4 and len(train) == 36 and [d for d in docs if d in val] == val  # corpus order kept
    assert split_documents(docs[::-1], 0.1, 0)[1] == val[::-1]  # same documents, whatever the order
    assert {d.name for d in split_documents(docs, 0.1, 1)[1]} != {d.name for d in val}
    assert [len(split_documents(docs[:n], 0.5, 0)[1]) for n in (1, 2, 3, 5)] == [0, 1, 2, 3]
    assert len(split_documents(docs[:30], 0.1, 0)[1]) == 3  # 0.1 * 30 is 3.0000000000000004


@pytest.fixture
def small(tmp_path, plays):
    """A folder of ten 4000-character slices of Hamlet."""
    hamlet = next(d for d in plays if d.name == "tragedies/hamlet").text
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(10):
        (folder / f"part{i:02}.txt").write_text(hamlet[i * 4000 : (i + 1) * 4000], encoding="utf-8")
    return folder, tmp_path / "cache"


def _spy(monkeypatch) -> list:
    calls = []
    real = tokens_module._write_stream

    def spy(*args, **kwargs):
        calls.append(args[0].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokens_module, "_write_stream", spy)
    return calls


def test_split_seed_and_fraction_give_other_streams(small):
    folder, cache = small
    a = prepare_data(folder, 300, 16, cache, val_fraction=0.2)
    b = prepare_data(folder, 300, 16, cache, val_fraction=0.2, split_seed=1)
    c = prepare_data(folder, 300, 16, cache, val_fraction=0.3)
    assert (a.train_documents, a.val_documents, c.val_documents) == (8, 2, 3)
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    assert len(list(cache.glob("tokens-*"))) == 3 and len(list(cache.glob("tokenizer-*"))) == 1
    assert not np.array_equal(a.val, b.val)
    assert len(a.train) + len(a.val) == len(b.train) + len(b.val)


def test_single_document_splits_its_stream(tmp_path, plays):
    text = next(d for d in plays if d.name == "tragedies/macbeth").text[:20_000]
    file = tmp_path / "macbeth.txt"
    file.write_text(text, encoding="utf-8")
    data = prepare_data(file, 300, 32, tmp_path / "cache", val_fraction=0.1)
    assert (data.train_documents, data.val_documents) == (1, 1)
    whole = [*data.tokenizer.encode(text).ids, data.eos_id]
    assert np.concatenate([data.train, data.val]).tolist() == whole
    assert len(data.train) == int(len(whole) * 0.9)


def test_crash_before_rename_leaves_nothing_to_trust(small, monkeypatch):
    folder, cache = small
    real_replace = os.replace

    def crash(src, dst):
        if os.path.basename(dst).startswith("tokens-"):
            raise OSError("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(tokens_module.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        prepare_data(folder, 300, 16, cache, val_fraction=0.2)
    assert [p.name for p in cache.iterdir()] == [next(cache.glob("tokenizer-*")).name]  # no cache, no temp folder
    monkeypatch.setattr(tokens_module.os, "replace", real_replace)
    calls = _spy(monkeypatch)
    data = prepare_data(folder, 300, 16, cache, val_fraction=0.2)
    assert calls == ["train.bin", "val.bin"] and data.val_documents == 2
    fresh = prepare_data(folder, 300, 16, cache.parent / "fresh", val_fraction=0.2)
    assert np.array_equal(data.train, fresh.train) and data.fingerprint == fresh.fingerprint


@pytest.mark.parametrize("damage", ["truncate train", "drop meta", "garble meta", "other fingerprint", "temp leftover"])
def test_damaged_cache_is_rebuilt(small, monkeypatch, damage):
    folder, cache = small
    good = prepare_data(folder, 300, 16, cache, val_fraction=0.2)
    train, val = np.array(good.train), np.array(good.val)
    directory = cache / f"tokens-{good.fingerprint[:16]}"
    meta = directory / "meta.json"
    del good
    if damage == "truncate train":
        with open(directory / "train.bin", "r+b") as f:
            f.truncate(100)
    elif damage == "drop meta":
        meta.unlink()
    elif damage == "garble meta":
        meta.write_text('{"format": 1, "dtype": "uint16"', encoding="utf-8")
    elif damage == "other fingerprint":
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "fingerprint": "0" * 64}), encoding="utf-8")
    else:  # a crash mid-build leaves a temporary folder; it is ignored, the finished cache is still used
        leftover = cache / f".{directory.name}.tmp-crashed"
        leftover.mkdir()
        (leftover / "train.bin").write_bytes(b"\x01\x02")
    calls = _spy(monkeypatch)
    again = prepare_data(folder, 300, 16, cache, val_fraction=0.2)
    assert calls == ([] if damage == "temp leftover" else ["train.bin", "val.bin"])
    assert np.array_equal(again.train, train) and np.array_equal(again.val, val)
    assert json.loads(meta.read_text())["train_tokens"] == len(train)


def test_short_validation_split_suggests_a_larger_fraction(small):
    folder, cache = small
    too_short = r"^data: corpus too short: \d+ train and \d+ validation tokens for seq_len 3000; .*data\.val_fraction"
    with pytest.raises(DataError, match=too_short):
        prepare_data(folder, 300, 3000, cache, val_fraction=0.1)


def test_numpy_settings_are_accepted(small):
    folder, cache = small
    a = prepare_data(folder, np.int64(300), np.int64(16), cache, val_fraction=np.float32(0.25), split_seed=np.int64(0))
    b = prepare_data(folder, 300, 16, cache, val_fraction=0.25, split_seed=0)
    assert a.fingerprint == b.fingerprint and a.val_documents == 3

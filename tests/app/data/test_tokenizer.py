"""The byte-level BPE tokenizer: trained once on the bundled corpus, cached, lossless, and piece-safe."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import widthwise.app.data.tokenizer as tokenizer_module
from widthwise.app.data import EOS, Document, corpus_fingerprint, load_documents, load_tokenizer
from widthwise.app.data.tokenizer import text_pieces
from widthwise.errors import DataError


@pytest.fixture(scope="module")
def plays():
    return load_documents(None)


@pytest.fixture(scope="module")
def trained(plays, tmp_path_factory):
    # Shared with test_data_tokens.py (same session folder) so the bundled corpus is trained on only once.
    cache = tmp_path_factory.getbasetemp() / "bundled-data-cache"
    return load_tokenizer(plays, 512, cache), cache


def test_trained_on_bundled_corpus(plays, trained):
    tok, cache = trained
    assert tok.get_vocab_size() == 512 and tok.token_to_id(EOS) == 0
    file = cache / f"tokenizer-{corpus_fingerprint(plays)[:16]}-v512.json"
    assert [p.name for p in cache.glob("tokenizer-*")] == [file.name]
    hamlet = next(d for d in plays if d.name == "tragedies/hamlet").text
    ids = tok.encode(hamlet).ids
    assert tok.decode(ids) == hamlet
    assert len(ids) < len(hamlet) / 1.5  # merges learned from the plays compress them (about 1.9 chars a token)
    assert EOS not in hamlet and 0 not in ids


@pytest.mark.parametrize("text", ["caf\u00e9 \U0001f600 \u4e2d\u6587", "\t tab\r\n and  spaces \n", "\x00\x01\xff", ""])
def test_any_text_round_trips(trained, text):
    tok = trained[0]
    assert tok.decode(tok.encode(text).ids) == text


def test_second_call_loads_the_cache(plays, trained, monkeypatch):
    tok, cache = trained
    file = next(cache.glob("tokenizer-*"))
    before = file.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained despite a valid cache")

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", no_training)
    again = load_tokenizer(plays, 512, cache)
    assert again.to_str() == tok.to_str()
    assert file.stat().st_mtime_ns == before


def _small_corpus():
    return [Document("a", "to be or not to be, that is the question\n" * 3), Document("b", "the rest is silence\n")]


@pytest.mark.parametrize("damage", [None, b"", b"{not json", b'{"version": "1.0"}'])
def test_corrupt_cache_is_retrained(tmp_path, damage):
    docs = _small_corpus()
    good = load_tokenizer(docs, 300, tmp_path)
    file = next(tmp_path.iterdir())
    text = file.read_text(encoding="utf-8")
    file.write_bytes(text[: len(text) // 2].encode() if damage is None else damage)  # None: truncated
    again = load_tokenizer(docs, 300, tmp_path)
    assert again.to_str() == good.to_str()
    assert file.read_text(encoding="utf-8") == text
    assert [p.name for p in tmp_path.iterdir()] == [file.name]


def test_small_corpus_may_have_fewer_tokens_than_asked(tmp_path):
    tok = load_tokenizer(_small_corpus(), 5000, tmp_path)
    assert 257 <= tok.get_vocab_size() < 5000
    assert (tmp_path / f"tokenizer-{corpus_fingerprint(_small_corpus())[:16]}-v5000.json").exists()


@pytest.mark.parametrize("vocab_size", [0, 256, True, 2**31 + 1, 512.0])
def test_vocab_size_out_of_range(tmp_path, vocab_size):
    with pytest.raises(DataError, match=r"^data\.vocab_size: .* out of range"):
        load_tokenizer(_small_corpus(), vocab_size, tmp_path)
    assert not any(tmp_path.iterdir())


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        load_tokenizer(_small_corpus(), 300, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(tokenizer_module.os, "replace", os.rename)
    assert load_tokenizer(_small_corpus(), 300, tmp_path).get_vocab_size() > 257


def test_pieces_encode_exactly_like_the_whole(plays, trained):
    tok = trained[0]
    hamlet = next(d for d in plays if d.name == "tragedies/hamlet").text
    pieces = text_pieces(hamlet, 2000)
    assert len(pieces) > 50 and "".join(pieces) == hamlet
    assert all(len(p) >= 2000 for p in pieces[:-1])
    joined = [i for enc in tok.encode_batch_fast(pieces) for i in enc.ids]
    assert joined == tok.encode(hamlet).ids
    assert text_pieces("no safe cut " * 100, 10) == ["no safe cut " * 100]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab'sé1.\n \t\r\u00a0\x1c\u3000"), max_size=60), st.integers(1, 8))
def test_pieces_are_exact_for_any_text(trained, text, size):
    tok = trained[0]
    pieces = text_pieces(text, size)
    assert "".join(pieces) == text
    assert [i for enc in tok.encode_batch_fast(pieces) for i in enc.ids] == tok.encode(text).ids

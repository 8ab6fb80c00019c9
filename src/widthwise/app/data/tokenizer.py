"""Byte-level BPE tokenizer trained on the corpus, cached per (corpus fingerprint, vocab size).

Byte-level means every string encodes (no unknown token) and ``decode(encode(text)) == text``. The only
special token is ``<|endoftext|>`` (id 0), appended after each document. On a small corpus BPE may run out
of merges before ``vocab_size``: the real size is ``tokenizer.get_vocab_size()``.
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ...errors import DataError
from ..atomic import atomic_write_text
from .corpus import Document, corpus_fingerprint

EOS = "<|endoftext|>"
MIN_VOCAB = 257  # 256 bytes + <|endoftext|>
MAX_VOCAB = 2**31
PIECE_CHARS = 1 << 20
LARGE_CORPUS_CHARS = 50_000_000  # progress bars above this many characters
# A newline between two non-space characters: the ByteLevel regex never joins text across it, so cutting
# after it leaves the pre-tokens (and thus the tokens) exactly as they are in the whole text.
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")


def text_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters that encode to exactly the tokens of the whole.

    Long documents are encoded in pieces so that encoding runs in parallel and in bounded memory.
    """
    pieces, start = [], 0
    while len(text) - start > size:
        cut = _SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        pieces.append(text[start : cut.end()])
        start = cut.end()
    pieces.append(text[start:])
    return pieces


def check_vocab_size(vocab_size: int) -> int:
    """``vocab_size`` as an int, or a :class:`DataError` if it is not an integer in 257..2**31."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral):
        valid = False
    else:
        vocab_size, valid = int(vocab_size), MIN_VOCAB <= vocab_size <= MAX_VOCAB
    if not valid:
        raise DataError(
            f"data.vocab_size: {vocab_size!r} is out of range: need an integer in {MIN_VOCAB}..{MAX_VOCAB} "
            f"(256 byte tokens + {EOS} at least)"
        )
    return vocab_size


def train_tokenizer(documents: Sequence[Document], vocab_size: int) -> Tokenizer:
    """A fresh byte-level BPE tokenizer trained on ``documents`` (no caching)."""
    vocab_size = check_vocab_size(vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    large = sum(len(d.text) for d in documents) >= LARGE_CORPUS_CHARS
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=large,
    )

    def pieces() -> Iterator[str]:
        for doc in documents:
            yield from text_pieces(doc.text)

    tokenizer.train_from_iterator(pieces(), trainer)
    return tokenizer


def make_cache_dir(cache_dir: str | os.PathLike) -> Path:
    cache_dir = Path(cache_dir).expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data cache: cannot create {cache_dir}: {err.strerror or err}") from None
    return cache_dir


def _load_cached(file: Path, vocab_size: int) -> Tokenizer | None:
    """The tokenizer in ``file``, or None if it is missing, corrupt or not one of ours."""
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception:  # missing or corrupt: the Rust side raises plain Exceptions
        return None
    if tokenizer.token_to_id(EOS) is None or not MIN_VOCAB <= tokenizer.get_vocab_size() <= vocab_size:
        return None
    return tokenizer


def load_tokenizer(
    documents: Sequence[Document], vocab_size: int, cache_dir: str | os.PathLike, *, fingerprint: str | None = None
) -> Tokenizer:
    """The tokenizer for ``documents``: loaded from ``cache_dir`` or trained and cached there.

    The cache file is ``tokenizer-<fingerprint[:16]>-v<vocab_size>.json``, written atomically; a corrupt
    one is retrained and replaced. ``fingerprint`` (``corpus_fingerprint(documents)``) may be passed to
    avoid hashing the corpus twice.
    """
    vocab_size = check_vocab_size(vocab_size)
    fingerprint = fingerprint or corpus_fingerprint(documents)
    file = make_cache_dir(cache_dir) / f"tokenizer-{fingerprint[:16]}-v{vocab_size}.json"
    tokenizer = _load_cached(file, vocab_size)
    if tokenizer is None:
        tokenizer = train_tokenizer(documents, vocab_size)
        atomic_write_text(file, tokenizer.to_str())
    return tokenizer

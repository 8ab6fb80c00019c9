"""Token streams: the corpus split by document, tokenized once and cached as raw memmaps.

``prepare_data`` loads the documents, trains or loads the tokenizer, splits the documents into train and
validation, encodes each split as one stream (every document followed by ``<|endoftext|>``) and caches the
streams under ``cache_dir/tokens-<fingerprint[:16]>/`` as ``train.bin`` and ``val.bin`` (raw native-endian
``uint16``, or ``uint32`` above 65536 tokens) plus ``meta.json`` (dtype, lengths, document counts).

The cache is built in a temporary folder with ``meta.json`` written last, then renamed into place, so a
crash never leaves a half-written cache that a later run would trust; a cache is used only if its
``meta.json`` matches the expected fingerprint and both files have the recorded lengths. Concurrent
builders (several ranks) are safe but redundant: prefer preparing on one rank, then a barrier.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import operator
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from ...errors import DataError
from ..atomic import fsync_dir
from .corpus import Document, corpus_fingerprint, load_documents
from .tokenizer import EOS, LARGE_CORPUS_CHARS, check_vocab_size, load_tokenizer, make_cache_dir, text_pieces

FORMAT = 1
ENCODE_BATCH_CHARS = 8 << 20  # characters handed to one encode_batch call


@dataclass
class TokenData:
    """Train and validation token streams (read-only memmaps) and the tokenizer that made them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    vocab_size: int  # tokenizer.get_vocab_size(): may be below the requested size on a small corpus
    eos_id: int
    fingerprint: str  # corpus + tokenizer + split: store it in checkpoints and compare on resume
    train_documents: int
    val_documents: int


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype for token ids below ``vocab_size``: uint16 up to 65536 tokens, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def split_documents(
    documents: Sequence[Document], val_fraction: float, split_seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """(train, validation) documents, each in corpus order.

    The ``ceil(val_fraction * n)`` documents (at least 1, at most ``n - 1``) that come first when ranked by
    ``sha256(f"{split_seed}:{name}")`` are validation: the split depends only on the seed and the names.
    A single document is all train here (``prepare_data`` splits its token stream instead).
    """
    n = len(documents)
    if n < 2:
        return list(documents), []
    count = min(n - 1, max(1, math.ceil(val_fraction * n - 1e-9)))
    rank = sorted(range(n), key=lambda i: hashlib.sha256(f"{split_seed}:{documents[i].name}".encode()).digest())
    val = set(rank[:count])
    return [d for i, d in enumerate(documents) if i not in val], [d for i, d in enumerate(documents) if i in val]


def _batches(documents: Sequence[Document]) -> Iterator[list[tuple[str, bool]]]:
    """(piece, ends a document) pairs, grouped into batches of about ENCODE_BATCH_CHARS characters."""
    batch, chars = [], 0
    for doc in documents:
        pieces = text_pieces(doc.text)
        for i, piece in enumerate(pieces):
            batch.append((piece, i == len(pieces) - 1))
            chars += len(piece)
            if chars >= ENCODE_BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def _write_stream(file: Path, documents: Sequence[Document], tokenizer: Tokenizer, dtype, eos_id: int, bar) -> int:
    """Encode ``documents`` (each followed by eos) into ``file``; returns the number of tokens."""
    eos = np.array([eos_id], dtype=dtype)
    count = 0
    with open(file, "wb") as out:
        for batch in _batches(documents):
            encodings = tokenizer.encode_batch_fast([piece for piece, _ in batch], add_special_tokens=False)
            parts = []
            for (_, ends_document), encoding in zip(batch, encodings, strict=True):
                parts.append(np.asarray(encoding.ids, dtype=dtype))
                if ends_document:
                    parts.append(eos)
            tokens = np.concatenate(parts)
            out.write(tokens.tobytes())
            count += tokens.size
            bar.update(sum(len(piece) for piece, _ in batch))
        out.flush()
        os.fsync(out.fileno())
    return count


def _move_tail(source: Path, target: Path, keep: int, itemsize: int) -> None:
    """Move everything after the first ``keep`` tokens of ``source`` into ``target``."""
    with open(source, "r+b") as src:
        src.seek(keep * itemsize)
        tail = src.read()
        src.truncate(keep * itemsize)
        os.fsync(src.fileno())
    with open(target, "wb") as out:
        out.write(tail)
        os.fsync(out.fileno())


def _read_meta(directory: Path, fingerprint: str) -> dict | None:
    """The cache's metadata if it is complete and for ``fingerprint``; None otherwise."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        itemsize = np.dtype(meta["dtype"]).itemsize
        complete = (
            meta["format"] == FORMAT
            and meta["fingerprint"] == fingerprint
            and meta["dtype"] in ("uint16", "uint32")
            and all(
                (directory / f"{split}.bin").stat().st_size == meta[f"{split}_tokens"] * itemsize
                for split in ("train", "val")
            )
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if complete else None


def _build(
    directory: Path, documents: Sequence[Document], tokenizer: Tokenizer, fingerprint: str, val_fraction: float,
    split_seed: int,
) -> dict:
    """Tokenize into a temporary folder, then rename it to ``directory``; returns its metadata."""
    vocab_size, eos_id = tokenizer.get_vocab_size(), tokenizer.token_to_id(EOS)
    dtype = token_dtype(vocab_size)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
    try:
        chars = sum(len(d.text) for d in documents)
        quiet = True if chars < LARGE_CORPUS_CHARS else None  # None: tqdm shows itself only on a terminal
        with tqdm(total=chars, desc="tokenizing", unit="char", unit_scale=True, file=sys.stderr, disable=quiet) as bar:
            if len(documents) == 1:
                total = _write_stream(tmp / "train.bin", documents, tokenizer, dtype, eos_id, bar)
                n_train = int(total * (1 - val_fraction))
                _move_tail(tmp / "train.bin", tmp / "val.bin", n_train, dtype.itemsize)
                n_val, docs_train, docs_val = total - n_train, 1, 1
            else:
                train_docs, val_docs = split_documents(documents, val_fraction, split_seed)
                n_train = _write_stream(tmp / "train.bin", train_docs, tokenizer, dtype, eos_id, bar)
                n_val = _write_stream(tmp / "val.bin", val_docs, tokenizer, dtype, eos_id, bar)
                docs_train, docs_val = len(train_docs), len(val_docs)
        meta = {
            "format": FORMAT, "fingerprint": fingerprint, "dtype": dtype.name, "vocab_size": vocab_size,
            "eos_id": eos_id, "train_tokens": n_train, "val_tokens": n_val, "train_documents": docs_train,
            "val_documents": docs_val, "val_fraction": val_fraction, "split_seed": split_seed,
        }
        with open(tmp / "meta.json", "w", encoding="utf-8") as out:  # last: its presence marks a complete cache
            json.dump(meta, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        fsync_dir(tmp)
        if directory.exists():
            if (existing := _read_meta(directory, fingerprint)) is not None:  # another process finished first
                return existing
            shutil.rmtree(directory)  # a stale or damaged cache
        try:
            os.replace(tmp, directory)
        except OSError:
            if (existing := _read_meta(directory, fingerprint)) is None:
                raise
            return existing
        fsync_dir(directory.parent)
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def data_fingerprint(corpus: str, tokenizer: Tokenizer, vocab_size: int, val_fraction: float, split_seed: int) -> str:
    """sha256 hex identifying the token streams: corpus, tokenizer (its full JSON) and split settings."""
    key = {
        "format": FORMAT, "corpus": corpus, "tokenizer": hashlib.sha256(tokenizer.to_str().encode()).hexdigest(),
        "vocab_size": vocab_size, "val_fraction": float(val_fraction), "split_seed": split_seed,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def prepare_data(
    path: str | os.PathLike | None, vocab_size: int, seq_len: int, cache_dir: str | os.PathLike,
    val_fraction: float = 0.05, split_seed: int = 0,
) -> TokenData:
    """Token streams for the corpus at ``path`` (``None``: bundled Shakespeare), built once and cached.

    Documents are split whole (see :func:`split_documents`). A corpus of one document is split inside its
    token stream instead: the first ``1 - val_fraction`` of it is train, the rest validation (and both
    ``train_documents`` and ``val_documents`` are 1). Each split needs at least ``seq_len + 1`` tokens.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 < val_fraction <= 0.5:
        raise DataError(f"data.val_fraction: {val_fraction!r} is out of range: need a number in (0, 0.5]")
    val_fraction, split_seed = float(val_fraction), operator.index(split_seed)
    vocab_size = check_vocab_size(vocab_size)
    if isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    cache_dir = make_cache_dir(cache_dir)
    documents = load_documents(path)
    corpus = corpus_fingerprint(documents)
    tokenizer = load_tokenizer(documents, vocab_size, cache_dir, fingerprint=corpus)
    fingerprint = data_fingerprint(corpus, tokenizer, vocab_size, val_fraction, split_seed)
    directory = cache_dir / f"tokens-{fingerprint[:16]}"
    meta = _read_meta(directory, fingerprint)
    if meta is None:
        meta = _build(directory, documents, tokenizer, fingerprint, val_fraction, split_seed)
    n_train, n_val = meta["train_tokens"], meta["val_tokens"]
    if min(n_train, n_val) < seq_len + 1:
        fix = "raise data.val_fraction, " if n_train > seq_len else ""
        raise DataError(
            f"data: corpus too short: {n_train} train and {n_val} validation tokens for seq_len {seq_len}; each "
            f"split needs at least seq_len + 1 = {seq_len + 1} ({fix}add text or lower seq_len)"
        )
    return TokenData(
        train=np.memmap(directory / "train.bin", dtype=meta["dtype"], mode="r", shape=(n_train,)),
        val=np.memmap(directory / "val.bin", dtype=meta["dtype"], mode="r", shape=(n_val,)),
        tokenizer=tokenizer,
        vocab_size=tokenizer.get_vocab_size(),
        eos_id=tokenizer.token_to_id(EOS),
        fingerprint=fingerprint,
        train_documents=meta["train_documents"],
        val_documents=meta["val_documents"],
    )

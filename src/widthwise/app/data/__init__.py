"""Training data: documents (bundled Shakespeare or your files), a byte-level BPE tokenizer, cached token
streams split by document, and deterministic, resumable batch sampling.

Every user-facing problem raises :class:`DataError` with a one-line message naming the file or setting.
"""

from ...errors import DataError
from .corpus import Document, corpus_fingerprint, load_documents
from .sampler import BatchSampler, validation_batches
from .tokenizer import EOS, load_tokenizer
from .tokens import TokenData, prepare_data, split_documents

__all__ = [
    "EOS",
    "BatchSampler",
    "DataError",
    "Document",
    "TokenData",
    "corpus_fingerprint",
    "load_documents",
    "load_tokenizer",
    "prepare_data",
    "split_documents",
    "validation_batches",
]

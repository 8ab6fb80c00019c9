"""Fixtures shared by the tests; model builders live in ``helpers``."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import tokens


@pytest.fixture
def x_tokens() -> torch.Tensor:
    return tokens()


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One data cache for the test session (tokenizers + token memmaps of the bundled corpus) via ``$WIDTHWISE_CACHE``:
    each tokenizer is trained once, not once per module."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("WIDTHWISE_CACHE")
    os.environ["WIDTHWISE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("WIDTHWISE_CACHE")
    else:
        os.environ["WIDTHWISE_CACHE"] = old


@pytest.fixture(scope="module")
def one_thread():
    """Run single-threaded: on a shared CPU, 2-thread kernels on small tensors (AdamW's sqrt, svdvals) were
    measured 20-200x slower than 1 thread whenever another process was busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

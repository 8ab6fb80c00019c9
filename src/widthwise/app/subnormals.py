"""Flush subnormal floats to zero on every CPU thread a training step runs on (x86 FTZ/DAZ, Arm FZ).

Training makes subnormal numbers (below 1.2e-38 in fp32 and bf16) once a softmax sharpens (``exp(-90)``-sized
probabilities in attention and in the loss's backward, and their products), and CPUs take slow paths on some
operations with them. Measured (our benchmark, 2-core AMD EPYC with AVX512-BF16, one thread, 2^20 elements):
a product whose results are subnormal ran 1.46x the time of one with normal results, 0.99x flushed; products and
sums with subnormal inputs 1.0-1.08x. In a training step the effect was not resolved on this shared machine
(the demo model at width 128, ``row_col`` multipliers against none, 8,192 tokens a step, eager fp32, one thread;
30 training steps first, then interleaved steps of each variant, flushed and not): a first run of 10 rounds made
the model with multipliers 1.105x faster flushed (the model without: 1.018x), a second of 12 rounds 1.014x
(0.989x), and at 1,024 tokens (40 rounds) 0.959x (0.997x), all within the machine's step-to-step noise. It is on
by default (``train.flush_subnormals``) because it costs nothing measurable and removes the slow paths where a
CPU has them; it changes values only below 1.2e-38, which no update or loss can resolve. Not helped by it:
``exp`` with results in the subnormal range ran 36x slower than with normal results, flushed or not (its
vectorised kernel's own slow path).

The flag is a per-thread register, and a thread copies its creator's at birth. ``torch.set_flush_denormal`` sets
the calling thread's only, so the worker threads of torch's OpenMP pool (ATen's element-wise and reduction
kernels, and MKL's, which runs on the same pool) that already exist would keep computing with subnormals:
measured, half the elements of a two-thread product stayed subnormal. :func:`flush_subnormals` also sets it on
each of them, by running ``torch.set_flush_denormal`` once on every thread of an OpenMP parallel region of that
same pool (``GOMP_parallel`` of torch's libgomp); threads made later copy it from the thread that makes them.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from functools import cache

import torch

log = logging.getLogger(__name__)

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@cache
def _libgomp() -> ctypes.CDLL | None:
    """torch's loaded GNU OpenMP runtime (found in this process's memory map), or None (another runtime, not Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]), None)
    except OSError:
        return None
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)  # the already loaded library: the same pool torch's kernels use
        lib.GOMP_parallel.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        lib.GOMP_parallel.restype = None
    except (OSError, AttributeError):
        return None
    return lib


def flush_subnormals(on: bool = True) -> int:
    """Set (``on``) or clear the flush-to-zero mode on this thread and every thread of torch's OpenMP pool.

    Returns how many threads took the setting (0 where the CPU has no such mode). Where the pool is not GNU
    OpenMP's, only the calling thread and the threads it makes later are set, and a debug line says so.
    """
    if not torch.set_flush_denormal(on):
        return 0
    gomp = _libgomp()
    if gomp is None:
        log.debug("no GNU OpenMP runtime found: subnormals flushed on the calling thread only")
        return 1
    seen: set[int] = set()  # native thread ids (each callback holds the GIL)

    @_CALLBACK
    def set_on_this_thread(_: int | None) -> None:
        torch.set_flush_denormal(on)
        seen.add(threading.get_native_id())

    gomp.GOMP_parallel(set_on_this_thread, None, torch.get_num_threads(), 0)
    return len(seen)


def subnormals_survive(numel: int = 1 << 20) -> int:
    """How many of ``numel`` subnormal inputs stay non-zero through an element-wise product spread over torch's
    threads (0: every thread flushes them; ``numel``: none does)."""
    # The bits of a subnormal (about 1.5e-39), written as integers: a float fill would itself be flushed.
    x = torch.full((numel,), 0x00100000, dtype=torch.int32).view(torch.float32)
    return int(((x * 1.0) != 0).sum())

"""Keep freed memory in the process on Linux/glibc, so a CPU training step does not page-fault its tensors in again.

glibc's ``malloc`` serves blocks above a threshold (128 KiB, raised as such blocks are freed, up to 32 MiB) with
``mmap`` and gives them back with ``munmap``, and trims the heap's free top above twice that. A training step
allocates and frees the same large tensors (logits, activations, gradients, the multipliers' effective weights)
every step, so each step asks the kernel for those pages again: it faults every 4 KiB page in and zeroes it.
Measured (our benchmark: the demo model at width 128 with ``row_col`` multipliers, 1,024 tokens a step, eager
fp32, one thread, 2-core AMD EPYC, three processes each way alternating, 25 steps each): 6,400 minor page faults
a step and 191-211 ms a step by default; 1 fault a step and 156-183 ms with the thresholds raised
(:func:`retain_freed_memory`).

Raising them is what ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` do from the environment; a user who
set either (or ``GLIBC_TUNABLES``, or preloads another allocator) keeps their choice. The cost is that memory freed
after the step's peak stays with the process instead of going back to the system, which training reuses at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap (``mallopt`` takes an ``int``); the heap is never trimmed.
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 2**31 - 1
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")

_done: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); whether they are raised.

    Nothing is changed off Linux/glibc or where the environment already sets the allocator
    (:data:`_USER_SETTINGS`).
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(os.environ.get(name) for name in _USER_SETTINGS):
        log.debug("allocator left as the environment sets it")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                             TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
    return _done

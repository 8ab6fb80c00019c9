"""What this machine's matmuls are fast at: bf16 or fp32, decided by measurement on a CPU.

CPUs with AMX are ~10x faster in bf16; CPUs without bf16 units are 5-100x *slower* (bf16 is emulated), so
bf16 is used on a CPU only where a matmul probe shows it clearly faster. On CUDA, bf16 wherever supported.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch

#: bf16 must beat fp32 by this factor on a CPU matmul probe to be chosen.
BF16_MIN_SPEEDUP = 1.3
#: bf16 is compared with fp32 at this fixed size: big enough to use the vector/matrix units, small enough
#: that a CPU without bf16 units (50-100x slower there) answers in well under a second.
BF16_PROBE_SIZE = 256
#: :func:`cpu_bf16_speedup` keeps the best of this many probes: a busy shared CPU only adds time, in spikes (a
#: 2-thread fp32 probe read 0.27 ms in one process and 16 ms in the next while another process ran).
PROBE_ROUNDS = 3


def matmul_seconds(size: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Median seconds of one ``size``-square matmul in ``dtype`` on the CPU."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # warm up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@functools.cache
def cpu_bf16_speedup() -> float:
    """fp32 seconds / bf16 seconds of a ``BF16_PROBE_SIZE`` matmul on the CPU (> 1: bf16 faster); measured once
    per process, the best of ``PROBE_ROUNDS`` interleaved probes of each."""
    fp32, bf16 = [], []
    for _ in range(PROBE_ROUNDS):
        fp32.append(matmul_seconds(BF16_PROBE_SIZE, torch.float32))
        bf16.append(matmul_seconds(BF16_PROBE_SIZE, torch.bfloat16))
    return min(fp32) / max(min(bf16), 1e-9)


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 matmuls pay on ``device``: CUDA where the GPU supports bf16, a CPU where the probe
    (:func:`cpu_bf16_speedup`) beats fp32 by ``BF16_MIN_SPEEDUP``, no other device."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_speedup() >= BF16_MIN_SPEEDUP
    return False

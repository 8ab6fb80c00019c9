"""The fast path, chosen by measurement: device, autocast dtype, ``torch.compile``, threads.

``auto`` settings are resolved once at the start of a run and recorded in its config. bf16 autocast is used
only where it is fast: on CUDA when the GPU supports it, on a CPU only when a bf16 matmul at the model's
width measures clearly faster than fp32 (CPUs with AMX are ~10x faster in bf16; CPUs without bf16 units
are 5-100x *slower*, so assuming bf16 would be a disaster there).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from ..hardware import BF16_MIN_SPEEDUP, BF16_PROBE_SIZE, matmul_seconds

#: Measured at the demo size on a 2-core AVX2 CPU (the trainer's own step, README "Measured"): compile makes an fp32
#: training step ~1.4x faster (saves ~30% of it) and costs ~30-50 s of cold compilation.
COMPILE_SAVING = 0.3
COMPILE_COST_S = 45.0
#: A training step runs its matmuls at about this fraction of the probe's dense-matmul speed.
MATMUL_EFFICIENCY = 0.5


@dataclass(frozen=True)
class Runtime:
    """Resolved execution settings of a run."""

    device: torch.device
    dtype: torch.dtype  # autocast dtype; float32 means no autocast
    compile: bool
    threads: int
    bf16_probe_speedup: float | None = None
    estimated_step_s: float | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        dtype = "fp32" if self.dtype == torch.float32 else "bf16 autocast"
        probe = "" if self.bf16_probe_speedup is None else f", bf16/fp32 matmul speed x{self.bf16_probe_speedup:.2f}"
        return f"{self.device} {dtype}, compile {'on' if self.compile else 'off'}, {self.threads} threads{probe}"

    def to_dict(self) -> dict:
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."), "compile": self.compile,
                "threads": self.threads, "bf16_probe_speedup": self.bf16_probe_speedup,
                "estimated_step_s": self.estimated_step_s}


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; an explicit ``cuda`` without a GPU is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda requested but no CUDA device is available")
    return device


def compile_pays(steps: int, step_s: float) -> bool:
    """Whether ``torch.compile`` earns back its cold compilation over ``steps`` eager steps of ``step_s``."""
    return steps * step_s * COMPILE_SAVING > COMPILE_COST_S


def resolve_runtime(device: str, dtype: str, compile: str | bool, threads: int | None, width: int,
                    flops_per_step: float = 0.0, steps: int = 0) -> Runtime:
    """Resolve ``auto`` settings into a :class:`Runtime`.

    On a CPU, matmul probes measure fp32 speed at the model's scale and bf16 against fp32 at
    ``BF16_PROBE_SIZE``: bf16 autocast is chosen only if it is at least ``BF16_MIN_SPEEDUP`` faster, and
    ``torch.compile`` only if the run's estimated eager time (``flops_per_step`` at the measured fp32 speed) is
    long enough to earn back compilation.
    On CUDA: bf16 where supported, compile on.
    """
    dev = resolve_device(device)
    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or torch.get_num_threads()
    torch.set_num_threads(threads)
    probe = step_s = None
    if dev.type == "cpu" and (dtype == "auto" or compile == "auto"):
        n = max(128, min(4 * width, 1024))
        fp32_s = matmul_seconds(n, torch.float32)
        step_s = flops_per_step / (2 * n**3 / fp32_s * MATMUL_EFFICIENCY)
        if dtype == "auto":
            size = BF16_PROBE_SIZE
            probe = matmul_seconds(size, torch.float32) / max(matmul_seconds(size, torch.bfloat16), 1e-9)
    if dtype == "auto":
        if dev.type == "cuda":
            chosen = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        else:
            chosen = torch.bfloat16 if probe >= BF16_MIN_SPEEDUP else torch.float32
    else:
        chosen = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    if compile == "auto":
        use_compile = dev.type == "cuda" or compile_pays(steps, step_s / (probe if chosen == torch.bfloat16 else 1))
    else:
        use_compile = bool(compile)
    return Runtime(dev, chosen, use_compile, threads, probe, step_s)

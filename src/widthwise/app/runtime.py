"""The fast path, chosen by measurement: device, autocast dtype, ``torch.compile``, threads.

``auto`` settings are resolved at the start of a run and recorded in its config. bf16 autocast is used only
where it is fast: on CUDA when the GPU supports it, on a CPU only when a bf16 matmul measures clearly faster than
fp32 (CPUs with AMX are ~10x faster in bf16; CPUs without bf16 units are 5-100x *slower*, so assuming bf16 would
be a disaster there). Muon's ``optim.ns_dtype: auto`` takes the same decision (:func:`resolve_ns_dtype`).

A CPU's measurements are taken once per machine and cached (:func:`machine_measure`): a timing probe read under
load would otherwise flip the dtype between two runs of one config, and with it their losses. The cache is
``numerics.json`` in the widthwise cache dir, one entry per machine key (:func:`machine_key`: CPU model, a hash
of its flags, torch version), written atomically under a file lock, so concurrent runs measure once and agree. The
bf16 decision takes the median of :data:`NUMERICS_PROBES` probes and needs ``BF16_MIN_SPEEDUP * BF16_MARGIN``,
so a CPU near the threshold settles on fp32 instead of flipping. Delete the file to measure again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..hardware import BF16_MIN_SPEEDUP, BF16_PROBE_SIZE, matmul_seconds
from .allocator import retain_freed_memory
from .atomic import atomic_write_text, file_lock
from .defaults import default_cache_dir
from .subnormals import flush_subnormals

logger = logging.getLogger(__name__)

#: Measured at the demo size on a 2-core AVX2 CPU (the trainer's own step, README "Measured"): compile makes an fp32
#: training step ~1.4x faster (saves ~30% of it) and costs ~30-50 s of cold compilation.
COMPILE_SAVING = 0.3
COMPILE_COST_S = 45.0
#: A training step runs its matmuls at about this fraction of the probe's dense-matmul speed.
MATMUL_EFFICIENCY = 0.5
#: The cached bf16 decision takes the median of this many interleaved fp32/bf16 probe pairs.
NUMERICS_PROBES = 5
#: bf16's median speedup must reach ``BF16_MIN_SPEEDUP`` times this: a probe read x1.25 against 1.3 under load
#: flipped one of four runs to fp32; with the margin such a CPU settles on fp32 once.
BF16_MARGIN = 1.25
NUMERICS_FILE = "numerics.json"


@dataclass(frozen=True)
class Runtime:
    """Resolved execution settings of a run."""

    device: torch.device
    dtype: torch.dtype  # autocast dtype; float32 means no autocast
    compile: bool
    threads: int
    bf16_probe_speedup: float | None = None
    estimated_step_s: float | None = None
    subnormals_flushed: int = 0  # threads that flush subnormal floats to zero (:mod:`widthwise.app.subnormals`)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        dtype = "fp32" if self.dtype == torch.float32 else "bf16 autocast"
        probe = "" if self.bf16_probe_speedup is None else f", bf16/fp32 matmul speed x{self.bf16_probe_speedup:.2f}"
        flushed = ", subnormals flushed" if self.subnormals_flushed else ""
        return (f"{self.device} {dtype}, compile {'on' if self.compile else 'off'}, {self.threads} threads{flushed}"
                f"{probe}")

    def to_dict(self) -> dict:
        return {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."), "compile": self.compile,
                "threads": self.threads, "bf16_probe_speedup": self.bf16_probe_speedup,
                "estimated_step_s": self.estimated_step_s, "subnormals_flushed": self.subnormals_flushed}


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; an explicit ``cuda`` without a GPU is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda requested but no CUDA device is available")
    return device


def numerics_label(device: str, dtype: str, compile: bool, ns_dtype: str | None = None) -> str:
    """``cpu/float32/eager``: what decides a run's rounding; Muon runs add ``/ns-<dtype>`` (Newton-Schulz)."""
    label = f"{torch.device(device).type}/{dtype}/{'compiled' if compile else 'eager'}"
    return label if ns_dtype is None else f"{label}/ns-{ns_dtype}"


def machine_key() -> str:
    """This machine's key in the numerics cache: CPU model and a hash of its flags, and the torch version."""
    model, flags = platform.processor() or platform.machine(), ""
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        model, flags = fields.get("model name", model), fields.get("flags", fields.get("Features", ""))
    digest = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
    return f"{model} [{digest}] torch {torch.__version__}"


def numerics_cache_path() -> Path:
    """``numerics.json`` in :func:`widthwise.app.defaults.default_cache_dir`."""

    return default_cache_dir() / NUMERICS_FILE


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """The cache's entries by machine key; a missing file is empty, a corrupt one is logged and ignored."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as err:
        logger.warning(f"numerics cache {path} is unreadable ({err.__class__.__name__}); measuring again")
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        logger.warning(f"numerics cache {path} is corrupt (not a mapping of machines); measuring again")
        return {}
    return data


def machine_measure(name: str, measure: Callable[[], Any]) -> Any:
    """This machine's cached value of ``name``, measured (``measure()``, JSON) and stored on a miss.

    Where the cache cannot be written (a read-only home), the value is measured and used uncached.
    """
    path, key = numerics_cache_path(), machine_key()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(path.name + ".lock"), wait=True):  # one measures, the others read
            data = _read_cache(path)
            entry = data.setdefault(key, {})
            if name not in entry:
                entry[name] = measure()
                atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
            return entry[name]
    except OSError as err:
        logger.warning(f"numerics cache {path}: cannot write it ({err.strerror or err}); measuring uncached")
        return measure()


def _probe_bf16() -> dict[str, Any]:
    """The median fp32/bf16 speed ratio of :data:`NUMERICS_PROBES` interleaved probes, and the dtype it picks."""
    speedups = [matmul_seconds(BF16_PROBE_SIZE, torch.float32) / max(matmul_seconds(BF16_PROBE_SIZE, torch.bfloat16),
                                                                     1e-9) for _ in range(NUMERICS_PROBES)]
    median = statistics.median(speedups)
    dtype = "bfloat16" if median >= BF16_MIN_SPEEDUP * BF16_MARGIN else "float32"
    return {"dtype": dtype, "speedup": median, "speedups": speedups}


def cpu_bf16() -> tuple[bool, float]:
    """Whether bf16 is this CPU's fast dtype, and the median speedup that decided it (cached per machine)."""
    probe = machine_measure("bf16", _probe_bf16)
    return probe["dtype"] == "bfloat16", float(probe["speedup"])


def bf16_fast(device: torch.device) -> bool:
    """bf16 pays on ``device``: CUDA where supported, a CPU by its cached probe (:func:`cpu_bf16`)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16()[0]


def resolve_ns_dtype(ns_dtype: str, device: torch.device) -> str:
    """Muon's Newton-Schulz dtype: ``auto`` is bf16 where :func:`bf16_fast`, else fp32; others as given."""
    if ns_dtype != "auto":
        return ns_dtype
    return "bfloat16" if bf16_fast(device) else "float32"


def cpu_fp32_flops(size: int) -> float:
    """This CPU's fp32 matmul FLOP/s at ``size`` (cached per machine and size)."""
    return float(machine_measure(f"fp32_flops_{size}", lambda: 2 * size**3 / matmul_seconds(size, torch.float32)))


def estimated_step_s(width: int, flops_per_step: float, dtype: torch.dtype) -> float:
    """Seconds of an eager CPU step of ``flops_per_step`` at the cached fp32 speed at the model's scale (bf16: its
    cached speedup)."""
    n = max(128, min(4 * width, 1024))
    step_s = flops_per_step / (cpu_fp32_flops(n) * MATMUL_EFFICIENCY)
    return step_s / cpu_bf16()[1] if dtype == torch.bfloat16 else step_s


def compile_pays(steps: int, step_s: float) -> bool:
    """Whether ``torch.compile`` earns back its cold compilation over ``steps`` eager steps of ``step_s``."""
    return steps * step_s * COMPILE_SAVING > COMPILE_COST_S


def auto_compile(device: torch.device, steps: int, step_s: float | None) -> bool:
    """``train.compile: auto``: on on CUDA; on a CPU where ``steps`` eager steps of ``step_s`` earn it back."""
    return device.type == "cuda" or (step_s is not None and compile_pays(steps, step_s))


def resolve_runtime(device: str, dtype: str, compile: str | bool, threads: int | None, width: int,
                    flops_per_step: float = 0.0, steps: int = 0, *, flush: bool = True) -> Runtime:
    """Resolve ``auto`` settings into a :class:`Runtime`.

    On a CPU, bf16 autocast is chosen only where this machine's cached probe (:func:`cpu_bf16`) found it fast,
    and ``torch.compile`` only if the run's estimated eager time (:func:`estimated_step_s`) is long enough to earn
    back compilation. On CUDA: bf16 where supported, compile on. Explicit values win. On a CPU, ``flush``
    makes every thread flush subnormal floats to zero (:func:`~widthwise.app.subnormals.flush_subnormals`;
    ``False`` leaves the threads as they are).
    """
    dev = resolve_device(device)
    if dev.type == "cpu":
        retain_freed_memory()
    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS", 0)) or torch.get_num_threads()
    torch.set_num_threads(threads)
    flushed = flush_subnormals() if dev.type == "cpu" and flush else 0
    if dtype == "auto":
        chosen = torch.bfloat16 if bf16_fast(dev) else torch.float32
    else:
        chosen = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    probe = cpu_bf16()[1] if dev.type == "cpu" and dtype == "auto" else None
    step_s = estimated_step_s(width, flops_per_step, chosen) if dev.type == "cpu" and compile == "auto" else None
    use_compile = auto_compile(dev, steps, step_s) if compile == "auto" else bool(compile)
    return Runtime(dev, chosen, use_compile, threads, probe, step_s, flushed)

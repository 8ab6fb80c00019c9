"""Side-by-side timing on a shared, noisy machine: interleaved repetitions, medians, paired ratios.

Every figure of ``widthwise bench`` is a ratio of two things measured in one process, taking turns
(``A B C``, then ``C B A``, ...), so a load spike from another process hits both sides alike; each side's
time is the median over repetitions, and the ratio comes with the quartiles of the per-round ratios, which
show how much the machine wobbled. The load average is recorded with every figure.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def synchronize(device: torch.device | None = None) -> None:
    """Wait for queued GPU work, so a timer measures it (a no-op on the CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | None = None) -> float:
    """Seconds one call of ``fn`` takes, queued GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved(
    fns: Mapping[str, Callable[[], Any]], reps: int, warmup: int = 1, device: torch.device | None = None
) -> dict[str, list[float]]:
    """``{name: [seconds per call]}``: ``warmup`` untimed calls each, then ``reps`` rounds in alternating order."""
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(reps):
        for name in names if i % 2 == 0 else reversed(names):
            times[name].append(timed(fns[name], device))
    return times


def ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """``median(numerator) / median(denominator)`` with the median and quartiles of the per-round ratios."""
    pairs = sorted(a / b for a, b in zip(numerator, denominator, strict=True))
    quartiles = statistics.quantiles(pairs, n=4, method="inclusive") if len(pairs) > 1 else [pairs[0]] * 3
    return {
        "ratio": round(statistics.median(numerator) / statistics.median(denominator), 4),
        "pair_median": round(statistics.median(pairs), 4),
        "pair_p25": round(quartiles[0], 4),
        "pair_p75": round(quartiles[2], 4),
        "reps": len(pairs),
    }


def median_s(times: list[float]) -> float:
    """The median of ``times``, rounded to microseconds."""
    return round(statistics.median(times), 6)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (what else the machine was doing)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

"""Side-by-side timing on a shared, noisy machine: interleaved repetitions, medians, paired ratios, CPU time.

Every figure of ``widthwise bench`` is a ratio of two things measured in one process, taking turns
(``A B C``, then ``C B A``, ...), so a load spike from another process hits both sides alike; each side's
time is the median over repetitions, and the ratio comes with the quartiles of the per-round ratios, which
show how much the machine wobbled; over repeated measurements (``repeats``) it is their median, with their
range. On one CPU thread the times are the process's CPU time (:func:`clock`), so the time another process
held the core is not counted. The load average is recorded with every figure.
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


def clock(device: torch.device | None = None) -> Callable[[], float]:
    """The timer of a figure: on one CPU thread the process's CPU time (``time.process_time``: the seconds it
    ran, not those another process held the core, so a busy machine moves the figures less); else wall time."""
    if (device is None or device.type == "cpu") and torch.get_num_threads() == 1:
        return time.process_time
    return time.perf_counter


def timed(fn: Callable[[], Any], device: torch.device | None = None) -> float:
    """Seconds one call of ``fn`` takes (by :func:`clock`), queued GPU work included."""
    now = clock(device)
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return now() - start


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


def ratio(numerator: list[float], denominator: list[float], repeats: int = 1) -> dict[str, Any]:
    """``median(numerator) / median(denominator)`` with the median and quartiles of the per-round ratios.

    ``repeats`` > 1 splits the rounds, in the order they ran, into that many consecutive repeats (whole
    measurements, each its own ratio of medians): ``ratio`` is then their median (``ratio_of_medians`` the
    figure over all rounds), and ``repeat_min``/``repeat_max`` show how far it moves between runs, which the
    per-round quartiles (neighbouring steps) understate.
    """
    pairs = sorted(a / b for a, b in zip(numerator, denominator, strict=True))
    quartiles = statistics.quantiles(pairs, n=4, method="inclusive") if len(pairs) > 1 else [pairs[0]] * 3
    out: dict[str, Any] = {
        "ratio": round(statistics.median(numerator) / statistics.median(denominator), 4),
        "pair_median": round(statistics.median(pairs), 4),
        "pair_p25": round(quartiles[0], 4),
        "pair_p75": round(quartiles[2], 4),
        "reps": len(pairs),
    }
    repeats = max(1, min(repeats, len(pairs)))
    if repeats > 1:  # the figure is then the median over the repeats, within their range
        size = len(pairs) // repeats
        ratios = [statistics.median(numerator[i * size:(i + 1) * size])
                  / statistics.median(denominator[i * size:(i + 1) * size]) for i in range(repeats)]
        out.update(ratio=round(statistics.median(ratios), 4), ratio_of_medians=out["ratio"], repeats=repeats,
                   repeat_median=round(statistics.median(ratios), 4), repeat_min=round(min(ratios), 4),
                   repeat_max=round(max(ratios), 4))
    return out


def median_s(times: list[float]) -> float:
    """The median of ``times``, rounded to microseconds."""
    return round(statistics.median(times), 6)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (what else the machine was doing)."""
    return [round(x, 2) for x in os.getloadavg()]


#: CPU features that decide matmul speed, as /proc/cpuinfo names them (the "kind" of CPU a figure comes from).
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine() -> dict[str, Any]:
    """What the figures were measured on: the CPU's name and matmul features, threads, torch, the GPU if any."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu": _cpu_name(), "cpu_features": cpu_features(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(), "cpu_clock": clock(torch.device("cpu")).__name__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def cpu_kind(info: dict[str, Any]) -> str:
    """``machine()`` in a few words: the CPU name and its matmul features (``AVX512-BF16``, ``AVX2``...)."""
    features = info.get("cpu_features") or []
    best = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in features), None)
    kind = best.upper().replace("_", "-") if best else "no AVX2"
    return f"{info.get('cpu', 'unknown')} ({kind}), {info.get('cpu_count')} CPUs, {info.get('threads')} threads"


def cpu_features() -> list[str]:
    """Those of :data:`CPU_FEATURES` the CPU has (empty where /proc/cpuinfo is not readable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [name for name in CPU_FEATURES if name in flags]
    except OSError:
        pass
    return []


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

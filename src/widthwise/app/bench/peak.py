"""Peak matmul throughput, the denominator of model FLOPs utilisation (MFU).

On a GPU, the vendor's dense (no sparsity) tensor-core peak for the autocast dtype; on a CPU, which has no
such spec sheet figure we can trust, the measured throughput of one large square matmul in that dtype, so a
CPU "MFU" reads as "fraction of this machine's own dense-matmul speed".
"""

from __future__ import annotations

import torch

from ...hardware import matmul_seconds

#: Dense peak FLOP/s by GPU name fragment: (bf16 tensor core, fp32 without TF32). NVIDIA data sheets (SXM parts).
GPU_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L40S": (362e12, 91.6e12),
    "L4": (121e12, 30.3e12),
}
#: Side of the square matmul that measures a CPU's peak.
CPU_PROBE_SIZE = 1024
#: The peak is the best of this many probes (each a median of 5): a probe slowed by another process would
#: understate the peak and overstate MFU (a single probe once read 71 GFLOP/s where the best was 91).
CPU_PROBE_ROUNDS = 3


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    """``(FLOP/s, where the figure comes from)``; ``(None, reason)`` for a GPU not in :data:`GPU_PEAKS`."""
    bf16 = dtype == torch.bfloat16
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, (peak_bf16, peak_fp32) in GPU_PEAKS.items():
            if fragment in name:
                return (peak_bf16 if bf16 else peak_fp32), f"{name}: data-sheet dense {'bf16' if bf16 else 'fp32'} peak"
        return None, f"{name}: no peak figure known"
    seconds = min(matmul_seconds(CPU_PROBE_SIZE, dtype) for _ in range(CPU_PROBE_ROUNDS))
    return 2 * CPU_PROBE_SIZE**3 / seconds, f"measured {CPU_PROBE_SIZE}^3 {'bf16' if bf16 else 'fp32'} CPU matmul"

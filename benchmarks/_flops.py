"""The device's peak FLOP/s (for model FLOPs utilisation, MFU) and its measured memory bandwidth (for
the weight-read floor of a decode step) in the benchmarks.

MFU = counted FLOPs of one step / step time / peak FLOP/s. The FLOPs are counted, not estimated (the
suite wraps one step in ``torch.utils.flop_counter.FlopCounterMode``, which records every matmul,
convolution and attention kernel dispatched, forward and backward; element-wise work is not counted,
the usual MFU convention). The peak is the vendor's dense (no sparsity) bf16 tensor-core figure of the
GPU, looked up by device name; ``--peak-tflops`` overrides it; on a CPU it is measured with a large
bf16 matmul (so a CPU's "MFU" is relative to what its matmul reaches, and says so).
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass

import torch

__all__ = ["PEAK_BF16_DENSE", "Peak", "measured_bandwidth", "measured_matmul_peak", "peak_flops"]

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, most specific name first: a
# pattern is searched in torch.cuda.get_device_name() (e.g. "NVIDIA H100 80GB HBM3", "NVIDIA H200").
PEAK_BF16_DENSE: tuple[tuple[str, float], ...] = (
    (r"H200 NVL", 835.5e12),
    (r"H200", 989.4e12),  # SXM
    (r"GH200", 989.4e12),
    (r"H100 NVL", 835.5e12),
    (r"H100 PCIe", 756.0e12),
    (r"H100", 989.4e12),  # SXM
    (r"A100", 312.0e12),
    (r"A800", 312.0e12),
    (r"L40S", 362.05e12),
    (r"L40\b", 181.05e12),
    (r"\bL4\b", 121.0e12),
    (r"\bA10\b", 125.0e12),
)


@dataclass(frozen=True)
class Peak:
    """``flops``: peak FLOP/s used for MFU; ``source``: where it came from, printed with the table."""

    flops: float
    source: str


def measured_matmul_peak(device: torch.device, *, size: int, reps: int = 3) -> float:
    """FLOP/s of a ``size`` x ``size`` bf16 matmul on ``device`` (median of ``reps`` after a warm-up)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    times = []
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times[1:])


def peak_flops(device: torch.device, *, override_tflops: float | None, matmul_size: int) -> Peak | None:
    """The peak to divide by: ``override_tflops`` if given; a GPU's table entry (None if its name is
    not in :data:`PEAK_BF16_DENSE`: pass ``--peak-tflops``); on a CPU a measured bf16 matmul rate."""
    if override_tflops is not None:
        return Peak(flops=override_tflops * 1e12, source=f"--peak-tflops {override_tflops:g}")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for pattern, flops in PEAK_BF16_DENSE:
            if re.search(pattern, name):
                return Peak(flops=flops, source=f"{name}: dense bf16 data-sheet peak")
        return None
    flops = measured_matmul_peak(device, size=matmul_size)
    return Peak(flops=flops, source=f"measured: {matmul_size}x{matmul_size} bf16 matmul on {device.type}")


def measured_bandwidth(device: torch.device, *, nbytes: int, reps: int = 5) -> float:
    """Memory bandwidth in bytes/s: a copy of an ``nbytes`` buffer reads and writes ``nbytes`` each
    (the best of ``reps`` after a warm-up: other load only slows a copy down). A batch-1 decode step
    cannot beat weight bytes / this."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    times = []
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * nbytes / min(times[1:])

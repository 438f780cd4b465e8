"""Effective bandwidth: the bytes a step must move / its time, against the device's copy bandwidth.

Bytes per parameter (the least traffic the update can have):

* SGD with momentum, fp32: read p, g, buf (12 B), write p, buf (8 B): ``SGD_MOMENTUM_FP32 = 20``.
* AdamW / Adam, fp32: read p, g, exp_avg, exp_avg_sq (16 B), write p, exp_avg, exp_avg_sq (12 B):
  ``ADAMW_FP32 = 28``; with amsgrad max_exp_avg_sq is read and written too: ``ADAMW_AMSGRAD_FP32 = 36``.

The yardstick is measured on the same device, as the Triton tutorials judge a bandwidth-bound
kernel: ``dst.copy_(src)`` of ``COPY_NUMEL`` fp32 elements (128 MiB on CPU, 1 GiB on CUDA, at most a
quarter of the GPU's memory for both buffers) counts ``2 * 4 * numel`` bytes (read src, write dst).
A comparison times the copy as one more contender in its rounds (``CopyProbe``), so it sees the
same conditions as the methods, and alone before and after the run
(``measure_copy_bandwidth``). On a CPU with write-allocate caches a copy really moves 3 x size
(dst is read before it is written) while SGD updates p and buf in place, so shares above 100%
happen there: on CPU the share is informative only.
"""

from __future__ import annotations

import torch

from .timing import calls_per_round, interleaved_rounds, percentile

SGD_MOMENTUM_FP32 = 20  # bytes per parameter: read p, g, buf (12 B), write p, buf (8 B)
ADAMW_FP32 = 28  # read p, g, exp_avg, exp_avg_sq (16 B), write p, exp_avg, exp_avg_sq (12 B)
ADAMW_AMSGRAD_FP32 = 36  # and max_exp_avg_sq read and written (8 B)
COPY_NUMEL = {"cpu": 2**25, "cuda": 2**28}  # fp32 elements of the copy probe (128 MiB / 1 GiB)


def gbps(nbytes: float, seconds: float) -> float:
    """Gigabytes (1e9) per second."""
    return nbytes / seconds / 1e9


class CopyProbe:
    """``dst.copy_(src)`` over two preallocated fp32 buffers; ``nbytes`` = 2 x their size."""

    def __init__(self, device: torch.device, numel: int | None = None) -> None:
        n = numel or COPY_NUMEL[device.type]
        if device.type == "cuda" and numel is None:  # two fp32 buffers: at most a quarter of the memory
            n = min(n, torch.cuda.get_device_properties(device).total_memory // 32)
        self.numel = n
        self.src = torch.randn(n, device=device)
        self.dst = torch.empty_like(self.src)
        self.nbytes = 2 * self.src.element_size() * n

    def __call__(self) -> None:
        self.dst.copy_(self.src)


def measure_copy_bandwidth(device: torch.device, repeats: int, numel_: int | None = None) -> dict[str, object]:
    """The device's copy bandwidth alone: median of ``max(repeats, 5)`` rounds of about 50 ms."""
    probe = CopyProbe(device, numel_)
    for _ in range(3):
        probe()
    calls = calls_per_round(probe, 0.05, device)
    rounds, _ = interleaved_rounds({"copy": (probe, calls)}, max(repeats, 5), device)
    med = percentile(rounds["copy"], 50)
    return dict(numel=probe.numel, bytes=probe.nbytes, median_s=med, gbps=gbps(probe.nbytes, med), round_s=rounds["copy"])

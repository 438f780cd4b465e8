"""CUDA only: kernel launches, memcpy/memset and host syncs per step.

* launches: GPU kernel activities ``torch.profiler`` records over ``n`` calls (memcpy/memset counted
  apart), divided by ``n``; the JSON also keeps the profiler's count of ``cuda*Synchronize`` calls;
* syncs: the warnings ``torch.cuda.set_sync_debug_mode("warn")`` raises over ``n`` calls (every
  synchronizing call: ``.item()``, ``float(tensor)``, ``cudaStreamSynchronize`` ...), divided by ``n``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from .memory import quiet_stderr
from .timing import sync

_SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def cuda_counts(fn: Callable[[], object], n: int, device: torch.device) -> dict[str, float]:
    """Kernel launches, memcpy/memset and host syncs per call of ``fn``, over ``n`` calls."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        sync(device)
    kernels = memops = sync_calls = 0
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            if e.name.startswith(("Memcpy", "Memset")):
                memops += 1
            else:
                kernels += 1
        elif e.name in _SYNC_CALLS:
            sync_calls += 1
    sync_calls -= 1  # the sync() closing the window
    prev = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(n):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode(prev)
    syncs = sum(1 for w in caught if "synchroniz" in str(w.message).lower())
    sync(device)
    return dict(
        launches_per_step=kernels / n,
        memcpy_per_step=memops / n,
        syncs_per_step=syncs / n,
        sync_calls_per_step=max(sync_calls, 0) / n,
    )

"""Peak extra memory of one step: what it allocates beyond what was live before it.

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats``, minus the bytes
  allocated before the step.
* CPU: ``torch.profiler.profile(profile_memory=True)`` around the step. Every allocation and free of
  the CPU allocator inside the window is an ``Allocation`` event in the profiler's event tree
  (``prof.profiler.kineto_results.experimental_event_tree()``, torch's own source for
  ``profile_memory``) with its signed size; ``cpu_allocations`` sums them: bytes allocated (frees
  ignored), the largest single allocation, and the peak of their running sum (live extra bytes).

Both count only memory from torch's allocator, not Python objects.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import torch

from .timing import sync


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (kineto prints "USDT ... profiler_start/stop" lines there)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _walk(nodes):
    for node in nodes:
        yield node
        yield from _walk(node.children)


def cpu_allocations(fn: Callable[[], object]) -> dict[str, int]:
    """Run ``fn()`` under the profiler; the CPU allocator's traffic inside it: ``count`` and ``bytes``
    of the allocations, the ``largest`` one, and the ``peak`` of live extra bytes."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes = [
        n.extra_fields.alloc_size
        for n in _walk(prof.profiler.kineto_results.experimental_event_tree())
        if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu"
    ]
    live = peak = 0
    for s in sizes:
        live += s
        peak = max(peak, live)
    allocs = [s for s in sizes if s > 0]
    return dict(count=len(allocs), bytes=sum(allocs), largest=max(allocs, default=0), peak=peak)


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory ``fn()`` allocates beyond what was live before it (see the module docstring)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    return int(cpu_allocations(fn)["peak"])

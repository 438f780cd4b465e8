"""The one place the benchmarks touch fused_lr's private names (the library's layout may change).

Only ``benchmarks/host_overhead.py`` needs them: it replaces the Triton SGD kernel's launch by a
no-op to time the host work of a Triton-path step on CPU tensors, and counts the steps that took
the optimizer's cached launch plan. Everything else uses public names only
(``fused_lr.FusedSGD``, ``fused_lr.lr_scheduler``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class _NoLaunch:
    """Stands in for the jitted kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def triton_kernels_importable() -> bool:
    """Whether fused_lr found Triton (and so has an SGD kernel to launch)."""
    from fused_lr import _triton_path

    return _triton_path._sgd_kernels is not None


@contextlib.contextmanager
def sgd_launch_stubbed() -> Iterator[None]:
    """Inside: launching the Triton SGD kernel does nothing. The stand-in is named like the
    interpreter's function type, which fused_lr's device check looks for, so CPU tensors pass it
    (with ``TRITON_INTERPRET=1`` set before triton is imported)."""
    from fused_lr import _triton_path

    kernels = _triton_path._sgd_kernels
    real = kernels.sgd_kernel
    kernels.sgd_kernel = type("InterpretedFunction", (_NoLaunch,), {})()
    try:
        yield
    finally:
        kernels.sgd_kernel = real


def fast_steps(opt) -> int:
    """Steps of a ``FusedSGD`` that reused its cached launch plan (the steady-state path)."""
    return opt._fast_steps

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
    """Stands in for the jitted kernel: ``kernel[grid](...)`` does nothing (but append
    ``(grid, args, kwargs)`` to ``record`` while it is a list)."""

    def __init__(self) -> None:
        self.record: list | None = None

    def __getitem__(self, grid):
        def launch(*args, **kwargs) -> None:
            if self.record is not None:
                self.record.append((grid, args, kwargs))

        return launch


def triton_kernels_importable() -> bool:
    """Whether fused_lr found Triton (and so has an SGD kernel to launch)."""
    from fused_lr.engine import runtime

    return runtime.mt_kernels is not None


@contextlib.contextmanager
def sgd_launch_stubbed(kernel: str = "sgd") -> Iterator[tuple[object, _NoLaunch]]:
    """Inside: launching the Triton SGD kernel (``kernel="adamw"``: the AdamW kernel) does
    nothing. fused_lr's device check asks whether the kernels were built by the interpreter, so CPU
    tensors pass it when ``TRITON_INTERPRET=1`` was set before triton is imported. Yields the real
    kernel and the stub (set ``stub.record`` to a list to record the launches)."""
    import importlib

    module = importlib.import_module(f"fused_lr.kernels.{kernel}")
    name = f"{kernel}_kernel"
    real = getattr(module, name)
    stub = _NoLaunch()
    setattr(module, name, stub)
    try:
        yield real, stub
    finally:
        setattr(module, name, real)


def count_steady_steps(opt) -> list[bool]:
    """Starts recording, for each step of a ``FusedSGD``, whether it reused its cached launch plan
    (the steady-state path); returns the list it appends to. Wraps the optimizer's
    ``_step_steady``, which returns True when it made the step."""
    took: list[bool] = []
    steady = opt._step_steady

    def counted(*args, **kwargs):
        result = steady(*args, **kwargs)
        took.append(result)
        return result

    opt._step_steady = counted
    return took

"""LambdaLR callables on the device: is this one plain arithmetic that torch ops evaluate on the
device step counter (``lambda_runs_on_device``), (the others are tabulated on the host)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["lambda_runs_on_device", "eval_lambda_on_device"]

# Tensor methods that read a value back to the host (a sync on CUDA) or leave torch altogether.
_HOST_READS = frozenset(
    {
        "__bool__",
        "__float__",
        "__int__",
        "__index__",
        "__complex__",
        "item",
        "tolist",
        "numpy",
        "__array__",
        "__len__",
        "__iter__",
    }
)


class _HostReadError(RuntimeError):
    pass


class _ForbidHostReads(TorchFunctionMode):
    """Raise on any tensor operation that would read a value back to the host."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _HOST_READS:
            raise _HostReadError(f"host read through Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


# Epochs at which a candidate device lambda is compared with its host evaluation: the start,
# small values, typical milestones (10, 30, 100), off-by-one neighbours and a large count.
_PROBE_EPOCHS = (0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 15, 29, 30, 31, 50, 99, 100, 101, 257, 1000, 4099)
# Relative agreement required between the tensor and the host evaluation: both are float64, so
# the same arithmetic agrees to a few ulps; 1e-12 leaves room for pow/exp ulp differences between
# libm and ATen while rejecting any real change of formula.
_PROBE_RTOL = 1e-12


def lambda_runs_on_device(fn: Callable[[int], float]) -> bool:
    """True when ``fn(epoch)`` is plain arithmetic that torch ops evaluate on a float64 tensor.

    The callable is evaluated on a 0-dim float64 tensor with every host read forbidden (``if``,
    ``min``/``max`` on the value, ``math.*``, indexing a list, ``int()``...). It must return a
    tensor that agrees with the host evaluation ``fn(int(epoch))`` at every probe epoch.
    Anything else (an exception, a non-tensor result, a disagreement) means it is tabulated: this
    never raises, whatever the callable does at a probe epoch.
    """
    for epoch in _PROBE_EPOCHS:
        # The tensor first: a callable that is not plain arithmetic (a branch, a lookup) fails
        # there, before any host call (a stateful callable is called as little as possible).
        try:
            with _ForbidHostReads():
                dev = fn(torch.tensor(float(epoch), dtype=torch.float64))
        except Exception:  # noqa: BLE001 - any failure on a tensor means it is not plain arithmetic
            return False
        if not isinstance(dev, Tensor) or dev.numel() != 1 or not dev.is_floating_point():
            return False
        try:
            host = float(fn(epoch))
        except Exception:  # noqa: BLE001 - undefined at a probe epoch (valid only over the run): tabulate it
            return False
        dev_val = float(dev.detach().reshape(()).to(torch.float64))
        if math.isnan(host) or math.isnan(dev_val):
            if not (math.isnan(host) and math.isnan(dev_val)):
                return False
            continue
        if math.isinf(host) or math.isinf(dev_val):
            if host != dev_val:
                return False
            continue
        if abs(dev_val - host) > _PROBE_RTOL * max(abs(host), 1e-300):
            return False
    return True


def eval_lambda_on_device(fn: Callable, step: Tensor) -> Tensor:
    """``fn(t)`` as a float64 0-dim tensor on ``step``'s device (``fn`` passed the check above)."""
    t = step.reshape(()).to(torch.float64)
    return fn(t).reshape(()).to(torch.float64)

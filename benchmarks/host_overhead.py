"""Host-side cost of one Triton-path step, measurable without a GPU.

On a GPU, small-tensor workloads (ResNet-50's 161 tensors, 1,000 small tensors) are bound by the
Python/C++ work the host does per step, not by the kernel. This script measures that host work for
``FusedSGD(backend="triton")`` + a fused_lr scheduler on CPU tensors, with the kernel launch
replaced by a no-op (so neither the interpreter nor a GPU is involved), beside the torch path
(``backend="torch"``, which does run its CPU kernel) for scale::

    python benchmarks/host_overhead.py            # ResNet-50 shapes and 1,000 small tensors

What it does not include: Triton's own launcher (argument packing, ~tens of microseconds per launch
on a GPU, one launch per dtype per step), and whatever the GPU driver adds. It is a lower bound for
the Triton path's per-step host cost, and shows how that cost scales with the tensor count:
steady-state steps reuse the cached launch plan after O(1) Python work per tensor
(``EngineState.steady_update``); the first step (and any step after the parameter set changes) builds it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # lets the Triton path accept CPU tensors; the launch is stubbed

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import param_sets  # noqa: E402

import fused_lr  # noqa: E402
import fused_lr.lr_scheduler as fused  # noqa: E402
from fused_lr.engine import runtime  # noqa: E402
from fused_lr.kernels import sgd as sgd_kernels  # noqa: E402


class _NoLaunch:
    """Stands in for the jitted kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _setup(shapes, backend):
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = fused_lr.FusedSGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, backend=backend)
    sched = fused.CosineAnnealingLR(opt, T_max=10_000)
    return opt, sched


def _count_steady_steps(opt) -> list[bool]:
    """Records, for each step of ``opt``, whether it took the steady-state path (wraps the
    optimizer's ``_step_steady``, which returns True when it made the step)."""
    took: list[bool] = []
    steady = opt._step_steady

    def counted(*args, **kwargs):
        took.append(steady(*args, **kwargs))
        return took[-1]

    opt._step_steady = counted
    return took


def measure(shapes, rounds: int = 9, steps: int = 30) -> dict[str, float]:
    """Median microseconds per ``opt.step(); sched.step()``: first step and steady state of the
    Triton path (launch stubbed), steady state of the torch path; alternating order."""
    if runtime.mt_kernels is None:
        raise SystemExit("triton is not installed")
    real = sgd_kernels.sgd_kernel
    tri = _setup(shapes, "triton")
    torch_path = _setup(shapes, "torch")
    steady = _count_steady_steps(tri[0])
    sgd_kernels.sgd_kernel = _NoLaunch()
    try:
        t0 = time.perf_counter()
        tri[0].step()
        tri[1].step()
        first = (time.perf_counter() - t0) * 1e6
        times = {"triton": [], "torch": []}
        for r in range(rounds):
            order = (("triton", tri), ("torch", torch_path)) if r % 2 == 0 else (("torch", torch_path), ("triton", tri))
            for name, (opt, sched) in order:
                t0 = time.perf_counter()
                for _ in range(steps):
                    opt.step()
                    sched.step()
                times[name].append((time.perf_counter() - t0) / steps * 1e6)
        return {
            "triton_first_us": first,
            "triton_steady_us": statistics.median(times["triton"]),
            "torch_path_us": statistics.median(times["torch"]),
            "fast_steps": sum(steady),
        }
    finally:
        sgd_kernels.sgd_kernel = real


def main() -> None:
    torch.set_num_threads(1)
    sets = {
        "ResNet-50 shapes (161 tensors)": param_sets.resnet50_shapes(),
        "1,000 small tensors (1k elements each)": param_sets.many_small(1000, 1000),
    }
    print(f"torch {torch.__version__}, 1 thread; microseconds per opt.step() + sched.step() (median)")
    print(f"{'parameter set':42} {'triton first':>13} {'triton steady':>14} {'torch path':>11}")
    for name, shapes in sets.items():
        r = measure(shapes)
        print(f"{name:42} {r['triton_first_us']:13.0f} {r['triton_steady_us']:14.0f} {r['torch_path_us']:11.0f}")


if __name__ == "__main__":
    main()

"""Host-side cost of one Triton-path step, measurable without a GPU.

On a GPU, small-tensor workloads (ResNet-50's 161 tensors, 1,000 small tensors) are bound by the
Python/C++ work the host does per step, not by the kernel. This comparison measures that host work
for ``FusedSGD(backend="triton")`` (and ``FusedAdamW(backend="triton")``) + a fused_lr
``CosineAnnealingLR`` on CPU tensors, with the kernel launch replaced by a no-op (so neither the
interpreter nor a GPU is involved), beside the torch path (``backend="torch"``, which does run its
CPU kernel) for scale::

    python benchmarks/host_overhead.py            # ResNet-50 shapes and 1,000 small tensors, SGD and AdamW

Both methods are the harness's (``harness.methods.fused`` / ``fused_adamw``); the rounds alternate their order and
the figure is the median over rounds (``harness.timing``). The first step of the Triton path is
timed alone: it builds the launch plan.

What it does not include: Triton's own launcher (argument packing, ~tens of microseconds per launch
on a GPU, one launch per dtype per step), and whatever the GPU driver adds. It is a lower bound for
the Triton path's per-step host cost, and shows how that cost scales with the tensor count:
steady-state steps reuse the cached launch plan after O(1) Python work per tensor; the first step
(and any step after the parameter set changes) builds it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # lets the Triton path accept CPU tensors; the launch is stubbed

import torch  # noqa: E402

import fused_lr.lr_scheduler  # noqa: E402

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # benchmarks/ holds harness and param_sets
    sys.path.insert(0, str(_HERE))

import param_sets  # noqa: E402
from harness import _internal  # noqa: E402
from harness.methods import Method, Schedule, fused, fused_adamw  # noqa: E402
from harness.params import make_params  # noqa: E402
from harness.timing import interleaved_rounds, spread  # noqa: E402

CPU = torch.device("cpu")
HYPER = {"sgd": dict(lr=0.1, momentum=0.9, weight_decay=1e-4), "adamw": dict(lr=1e-3, weight_decay=0.01)}
COSINE = Schedule("cosine_iter", "CosineAnnealingLR", dict(T_max=10_000))
METHODS = {
    "sgd": {"triton": fused("fused_lr[triton], launch stubbed", "triton"), "torch": fused("fused_lr[torch]", "torch")},
    "adamw": {"triton": Method("FusedAdamW[triton], launch stubbed", fused_adamw("triton"), fused_lr.lr_scheduler),
              "torch": Method("FusedAdamW[torch]", fused_adamw("torch"), fused_lr.lr_scheduler)},
}


def measure(shapes, rounds: int = 9, steps: int = 30, optimizer: str = "sgd") -> dict[str, float]:
    """Median microseconds per ``opt.step(); sched.step()``: first step and steady state of the
    Triton path (launch stubbed), steady state of the torch path; alternating order. ``optimizer``:
    "sgd" (FusedSGD) or "adamw" (FusedAdamW)."""
    if not _internal.triton_kernels_importable():
        raise SystemExit("triton is not installed")
    with _internal.sgd_launch_stubbed(optimizer):
        runners = {k: m.build(make_params(shapes), COSINE, CPU, HYPER[optimizer]) for k, m in METHODS[optimizer].items()}
        t0 = time.perf_counter()
        runners["triton"].iteration()
        first = (time.perf_counter() - t0) * 1e6
        steady = _internal.count_steady_steps(runners["triton"].opt)
        times, errors = interleaved_rounds({k: (r.iteration, steps) for k, r in runners.items()}, rounds, CPU)
    if errors:
        raise RuntimeError(errors)
    return {
        "triton_first_us": first,
        "triton_steady_us": spread(times["triton"])["median_s"] * 1e6,
        "torch_path_us": spread(times["torch"])["median_s"] * 1e6,
        "fast_steps": sum(steady),
    }


def main() -> None:
    torch.set_num_threads(1)
    sets = {
        "ResNet-50 shapes (161 tensors)": param_sets.resnet50_shapes(),
        "1,000 small tensors (1k elements each)": param_sets.many_small(1000, 1000),
    }
    print(f"torch {torch.__version__}, 1 thread; microseconds per opt.step() + sched.step() (median)")
    print(f"{'optimizer':10} {'parameter set':42} {'triton first':>13} {'triton steady':>14} {'torch path':>11}")
    for optimizer in ("sgd", "adamw"):
        for name, shapes in sets.items():
            r = measure(shapes, optimizer=optimizer)
            print(f"{optimizer:10} {name:42} {r['triton_first_us']:13.0f} {r['triton_steady_us']:14.0f} "
                  f"{r['torch_path_us']:11.0f}")


if __name__ == "__main__":
    main()

"""Host-side cost of one optimizer + scheduler step, measurable without a GPU.

On a GPU, small-tensor workloads (ResNet-50's 161 tensors, 1,000 small tensors) are bound by the
Python/C++ work the host does per step, not by the kernels. This comparison measures that host
work on CPU tensors with every update kernel replaced by a no-op, side by side in one run:

* stock: ``torch.optim.SGD(fused=True)`` (``torch.optim.AdamW(fused=True)``) + torch's
  ``CosineAnnealingLR`` (``torch._fused_sgd_`` / ``torch._fused_adamw_`` stubbed);
* torch path, CUDA branch: ``FusedSGD(backend="torch")`` (``FusedAdamW``) + fused_lr's ``CosineAnnealingLR``, taking
  the code it takes on an accelerator (``fused_lr._device.host_reads_free`` answers False: the LR
  stays a device tensor, AMP skips are decided on the device); ``torch._fused_sgd_`` stubbed;
* Triton path: ``FusedSGD(backend="triton")`` (``FusedAdamW``) + fused_lr's ``CosineAnnealingLR``, the kernel
  launch stubbed (the first step is timed alone: it builds the launch plan);
* floor: torch's step wrapper around an empty step plus reading every parameter's ``.grad`` and
  address and comparing them with the last step's (``_Floor``): the least a step that reuses
  device address tables can do in Python while staying memory-safe. No Triton-path figure can be
  below it;
* Triton's launcher, apart (``_TritonLauncher``): the Python work ``JITFunction.run`` does for the
  launches of one steady Triton-path step before it calls the driver (binding and specializing the
  arguments, the compiled-kernel cache key), with Triton's binder built for a CUDA sm_90 target.
  The Triton column stubs the launch, so this comes on top of it on a GPU.

::

    python benchmarks/host_overhead.py            # ResNet-50 shapes, 1,000 small tensors, 2 tensors; SGD and AdamW

Each figure is the median over rounds that alternate the methods' order (``harness.timing``);
ratios are to stock in the same run. What it does not include: the C part of Triton's launcher
and the driver, stock's C++ ``_fused_sgd_`` / ``_fused_adamw_`` call (stubbed), and the launches of
the scheduler's tiny torch ops (each one CUDA launch on a GPU, a few microseconds each). It is a
lower bound for each method's host cost, and shows how that cost scales with the tensor count.
"""

from __future__ import annotations

import contextlib
import operator
import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # lets the Triton path accept CPU tensors; the launch is stubbed

import torch  # noqa: E402

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # benchmarks/ holds harness and param_sets
    sys.path.insert(0, str(_HERE))

import param_sets  # noqa: E402
from harness import _internal  # noqa: E402
from harness.methods import Method, Schedule, fused, fused_adamw, stock, stock_adamw  # noqa: E402
from harness.params import make_params  # noqa: E402
from harness.timing import interleaved_rounds, spread  # noqa: E402

import fused_lr  # noqa: E402

CPU = torch.device("cpu")
HYPER = {"sgd": dict(lr=0.1, momentum=0.9, weight_decay=1e-4), "adamw": dict(lr=1e-3, weight_decay=0.01)}
COSINE = Schedule("cosine_iter", "CosineAnnealingLR", dict(T_max=10_000))
_SWITCH = getattr(fused_lr, "_device", None)  # (older fused_lr versions have no switch to the CUDA branch)
_TORCH_COLUMN = "fused_lr[torch], CUDA branch" if _SWITCH is not None else "fused_lr[torch], CPU code"
METHODS = {
    "sgd": {
        "stock": stock("torch SGD(fused=True)", "fused"),
        "torch": fused(_TORCH_COLUMN, "torch"),
        "triton": fused("fused_lr[triton], launch stubbed", "triton"),
    },
    "adamw": {
        "stock": Method("torch AdamW(fused=True)", stock_adamw("fused"), torch.optim.lr_scheduler),
        "torch": Method(_TORCH_COLUMN, fused_adamw("torch"), fused_lr.lr_scheduler),
        "triton": Method("FusedAdamW[triton], launch stubbed", fused_adamw("triton"), fused_lr.lr_scheduler),
    },
}
_STOCK_KERNELS = ("_fused_sgd_", "_fused_adamw_", "_fused_adam_")


@contextlib.contextmanager
def _accelerator_branch_and_no_kernels():
    """torch's fused SGD / Adam / AdamW kernels do nothing, and fused_lr's torch path takes its accelerator code
    (where the installed fused_lr has the switch: ``fused_lr._device``; older versions time their
    CPU code, and the column says so)."""
    _device = _SWITCH
    real_fused = {name: getattr(torch, name) for name in _STOCK_KERNELS}
    real_free = _device.host_reads_free if _device is not None else None
    for name in _STOCK_KERNELS:
        setattr(torch, name, lambda *args, **kwargs: None)
    if _device is not None:
        _device.host_reads_free = lambda device: False
    try:
        yield
    finally:
        for name, fn in real_fused.items():
            setattr(torch, name, fn)
        if _device is not None:
            _device.host_reads_free = real_free


class _EmptyStep(torch.optim.Optimizer):
    """A torch optimizer whose step does nothing: what torch's step wrapper (profiler label, step
    hooks) and ``torch.no_grad()`` cost by themselves; every torch optimizer pays them."""

    def __init__(self, params) -> None:
        super().__init__(params, {})

    @torch.no_grad()
    def step(self, closure=None):
        return None


class _Floor:
    """A lower bound for the host cost of any Python optimizer step that keeps device address
    tables across steps (fused_lr's Triton path): torch's step wrapper around an empty step, plus
    the per-tensor reads such tables need each step to stay memory-safe, reading every
    parameter's ``.grad`` (a grad replaced by ``zero_grad()`` + backward) and every parameter's
    address (``p.data = ...``) and comparing them with the last step's. No scheduler step, no
    launch, no other check. (Stock fused SGD passes its lists to C++ each step and needs neither.)"""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.params = params
        self.opt = _EmptyStep(params)
        self.grad_ids = [id(p.grad) for p in params]
        self.addresses = tuple(p.data_ptr() for p in params)

    def iteration(self) -> None:
        self.opt.step()
        same = list(map(id, map(_GRAD, self.params))) == self.grad_ids
        same = tuple(map(torch.Tensor.data_ptr, self.params)) == self.addresses and same
        if not same:
            raise RuntimeError("the floor's parameters changed")


_GRAD = operator.attrgetter("grad")


class _TritonLauncher:
    """The Python part of Triton's launcher (``JITFunction.run`` before the driver is called) for
    the launches one steady Triton-path step makes, as they would run for a CUDA sm_90 device:
    binding the arguments and computing their specialization (``create_function_from_signature``'s
    binder, built with the CUDA backend), then the compiled-kernel cache key. Not included: the
    driver's device and stream queries, the C launcher packing the arguments, ``cuLaunchKernel``.
    Uses Triton internals; ``error`` says why it cannot run where they differ."""

    def __init__(self, kernel, launches: list) -> None:
        self.launches = launches
        self.error: str | None = None
        try:
            from triton import knobs
            from triton.backends.compiler import GPUTarget
            from triton.compiler import make_backend
            from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature

            # Under TRITON_INTERPRET=1 the kernel is an InterpretedFunction: the same function and
            # jit options as a JITFunction, which is what a GPU run launches.
            jit = JITFunction(kernel.fn, **kernel.kwargs)
            self._binder = create_function_from_signature(jit.signature, jit.params,
                                                          make_backend(GPUTarget("cuda", 90, 32)))
            self._key = compute_cache_key
            self._knobs = knobs
            self._key_cache: dict = {}
            self.iteration()
        except Exception as e:  # noqa: BLE001 - another Triton version: reported, not measured
            self.error = f"{type(e).__name__}: {e}"

    def iteration(self) -> None:
        knobs = self._knobs
        for grid, args, kwargs in self.launches:
            kwargs = dict(kwargs)
            kwargs["debug"] = kwargs.get("debug", False) or knobs.runtime.debug
            kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
            kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
            bound, specialization, options = self._binder(*args, **kwargs)
            self._key(self._key_cache, specialization, options)
            if callable(grid):
                grid(bound)
            tuple(bound.values())


def measure(shapes, rounds: int = 9, steps: int = 30, optimizer: str = "sgd") -> dict[str, float]:
    """Median microseconds per ``opt.step(); sched.step()`` in steady state of each method (see the
    module docstring), and the Triton path's first step; alternating order. ``optimizer``: "sgd"
    (SGD / FusedSGD) or "adamw" (AdamW / FusedAdamW). ``launcher_us``: Triton's launcher
    (``_TritonLauncher``) for the launches of one steady step, None where it cannot be measured."""
    if not _internal.triton_kernels_importable():
        raise SystemExit("triton is not installed")
    with _internal.sgd_launch_stubbed(optimizer) as (kernel, stub), _accelerator_branch_and_no_kernels():
        runners = {k: m.build(make_params(shapes), COSINE, CPU, HYPER[optimizer]) for k, m in METHODS[optimizer].items()}
        floor_params = make_params(shapes)
        for p in floor_params:
            p.grad = torch.zeros_like(p)
        runners["floor"] = _Floor(floor_params)
        t0 = time.perf_counter()
        runners["triton"].iteration()
        first = (time.perf_counter() - t0) * 1e6
        stub.record = launches = []
        runners["triton"].iteration()  # (a steady step: its launches)
        stub.record = None
        launcher = _TritonLauncher(kernel, launches)
        if launcher.error is None:
            runners["launcher"] = launcher
        steady = _internal.count_steady_steps(runners["triton"].opt)
        times, errors = interleaved_rounds({k: (r.iteration, steps) for k, r in runners.items()}, rounds, CPU)
    if errors:
        raise RuntimeError(errors)
    return {
        "triton_first_us": first,
        "triton_steady_us": spread(times["triton"])["median_s"] * 1e6,
        "torch_cuda_branch_us": spread(times["torch"])["median_s"] * 1e6,
        "stock_us": spread(times["stock"])["median_s"] * 1e6,
        "floor_us": spread(times["floor"])["median_s"] * 1e6,
        "launches": len(launches),
        "launcher_us": spread(times["launcher"])["median_s"] * 1e6 if "launcher" in times else None,
        "launcher_error": launcher.error,
        "fast_steps": sum(steady),
    }


def main() -> None:
    torch.set_num_threads(1)
    sets = {
        "ResNet-50 shapes (161 tensors)": param_sets.resnet50_shapes(),
        "1,000 small tensors (1k elements each)": param_sets.many_small(1000, 1000),
        # Almost no per-tensor work: what a step costs whatever the model (checks, scheduler step, launch).
        "2 tensors (the per-step constant)": [(64, 8), (300,)],
    }
    print(f"torch {torch.__version__}, 1 thread; microseconds per opt.step() + sched.step() (median; kernels stubbed)")
    print(f"fused_lr from {Path(fused_lr.__file__).parent}; torch path column: {_TORCH_COLUMN}")
    print(f"{'optimizer':9} {'parameter set':40} {'stock':>7} {'torch path CUDA':>21} {'triton steady':>19} "
          f"{'triton 1st':>11} {'floor':>17} {'+ Triton launcher':>20}")
    notes = set()
    for optimizer in ("sgd", "adamw"):
        for name, shapes in sets.items():
            r = measure(shapes, optimizer=optimizer)
            stock_us = r["stock_us"]
            torch_us, triton_us, launcher_us = r["torch_cuda_branch_us"], r["triton_steady_us"], r["launcher_us"]
            launcher = (f"{launcher_us:6.0f} x{r['launches']} ({launcher_us / stock_us:4.2f}x)" if launcher_us is not None
                        else f"{'n/a':>20}")
            if r["launcher_error"]:
                notes.add(f"Triton launcher not measured: {r['launcher_error']}")
            print(f"{optimizer:9} {name:40} {stock_us:7.0f} {torch_us:12.0f} ({torch_us / stock_us:4.2f}x) "
                  f"{triton_us:10.0f} ({triton_us / stock_us:4.2f}x) {r['triton_first_us']:11.0f} "
                  f"{r['floor_us']:8.0f} ({r['floor_us'] / stock_us:4.2f}x) {launcher}")
    print("floor: torch's step wrapper around an empty step + reading and comparing every parameter's .grad and "
          "address (what a step reusing device address tables must check; a lower bound for the triton column)")
    print("+ Triton launcher: the Python part of Triton's launcher (argument binding and specialization, cache key) "
          "for the steady step's launches (xN), for a CUDA sm_90 target; not in the triton column, which stubs "
          "the launch (stock's C++ launch is not in the stock column either)")
    for note in sorted(notes):
        print(note)


if __name__ == "__main__":
    main()

"""Methods and schedules as data: what a comparison times, built the same way for every cell.

A ``Method`` names an optimizer factory ``(params, **hyper) -> optimizer``, the module its scheduler
classes come from (``fused_lr.lr_scheduler`` or ``torch.optim.lr_scheduler``), whether its step runs
compiled, whether it is a baseline (the others' times are reported as ratios to it), and
``unavailable(device)``: None where it can run, else the reason, shown in the table's footnote.

A ``Schedule`` names a scheduler class present under one name in both modules, its keyword
arguments, and how often it steps; it is built the way the parity tests build their pairs
(``getattr(stock, name)(opt, **kw)`` beside ``getattr(fused, name)(opt, **kw)``).

``Method.build`` gives a ``Runner``: ``iteration()`` = one optimizer step, plus the scheduler step
when it is due (with a 0-dim device metric for plateau schedules: a validation loss computed on the
device; stock's scheduler calls ``float()`` on it, a host sync on a GPU, fused_lr's never reads it).

The stock factories (``stock_sgd("foreach" | "fused" | "forloop")``, ``stock_adamw(...)``) are the
references ``tests/test_benchmark_harness.py`` checks every benchmark method against before it is
timed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
import torch.optim.lr_scheduler as stock_schedulers

import fused_lr
import fused_lr.lr_scheduler as fused_schedulers

from .timing import sync

# torch.optim.SGD's implementation flags, by the name the benchmarks and tests give them.
# "default": no flag, torch picks (what torch's compiled-optimizer recipe uses).
STOCK_SGD = {"forloop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True), "default": {}}
# torch.optim.AdamW's, the same plus "capturable" (foreach with capturable=True: the step counts and
# bias corrections stay on the device, the form CUDA-graph users run; accelerators only).
STOCK_ADAMW = dict(STOCK_SGD, capturable=dict(foreach=True, capturable=True))


@dataclass(frozen=True)
class Schedule:
    """A scheduler class (same name in both modules), its arguments and its stepping period."""

    name: str
    scheduler: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    every: int = 1  # iterations between scheduler steps
    metric: bool = False  # stepped with a metric (ReduceLROnPlateau)

    def build(self, schedulers: ModuleType, opt):
        return getattr(schedulers, self.scheduler)(opt, **self.kwargs)


class Runner:
    """One method on one set with one schedule: ``iteration()`` = opt step (+ scheduler step when due)."""

    def __init__(self, opt, sched, schedule: Schedule, device: torch.device, opt_step=None) -> None:
        self.opt, self.sched, self.schedule = opt, sched, schedule
        self.opt_step = opt_step if opt_step is not None else opt.step
        self.metric = torch.ones((), device=device) if schedule.metric else None
        self.i = 0
        self.compile_calls_s: list[float] | None = None

    def iteration(self) -> None:
        self.opt_step()
        self.i += 1
        if self.i % self.schedule.every == 0:
            if self.metric is not None:
                self.sched.step(self.metric)
            else:
                self.sched.step()


def always_available(device: torch.device) -> None:
    return None


@dataclass(frozen=True)
class Method:
    """One column of a comparison: how to build its optimizer and scheduler, and where it can run."""

    name: str
    optimizer: Callable[..., torch.optim.Optimizer]  # (params, **hyper) -> optimizer
    schedulers: ModuleType  # fused_lr.lr_scheduler or torch.optim.lr_scheduler
    unavailable: Callable[[torch.device], str | None] = always_available
    baseline: bool = False  # other methods' medians are reported as ratios to this one's
    compiled: bool = False  # the step runs as torch.compile(opt.step), with a tensor LR

    def build(self, params: list[torch.Tensor], schedule: Schedule, device: torch.device, hyper: dict) -> Runner:
        if self.compiled:
            return _compiled_runner(self, params, schedule, device, hyper)
        opt = self.optimizer(params, **hyper)
        return Runner(opt, schedule.build(self.schedulers, opt), schedule, device)


def stock_sgd(kind: str) -> Callable[..., torch.optim.Optimizer]:
    """``torch.optim.SGD`` with one of its implementations: "foreach", "fused", "forloop", "default"."""
    return functools.partial(torch.optim.SGD, **STOCK_SGD[kind])


def fused_sgd(backend: str) -> Callable[..., torch.optim.Optimizer]:
    """``fused_lr.FusedSGD(backend=backend)``; raises where it would run another implementation."""

    def make(params, **hyper):
        opt = fused_lr.FusedSGD(params, backend=backend, **hyper)
        if opt.implementation != backend:
            raise RuntimeError(f"FusedSGD(backend={backend!r}).implementation == {opt.implementation!r}")
        return opt

    return make


def stock_adamw(kind: str) -> Callable[..., torch.optim.Optimizer]:
    """``torch.optim.AdamW`` with one of its implementations (``STOCK_ADAMW``)."""
    return functools.partial(torch.optim.AdamW, **STOCK_ADAMW[kind])


def fused_adamw(backend: str) -> Callable[..., torch.optim.Optimizer]:
    """``fused_lr.FusedAdamW(backend=backend)``; raises where it would run another implementation."""

    def make(params, **hyper):
        opt = fused_lr.FusedAdamW(params, backend=backend, **hyper)
        if opt.implementation != backend:
            raise RuntimeError(f"FusedAdamW(backend={backend!r}).implementation == {opt.implementation!r}")
        return opt

    return make


def capturable_unavailable(device: torch.device) -> str | None:
    """torch's capturable optimizers need an accelerator (it refuses CPU parameters)."""
    return None if device.type == "cuda" else f"capturable=True needs a CUDA device (this run is on {device.type})"


def stock(name: str, kind: str, **kw) -> Method:
    """A stock ``torch.optim.SGD`` implementation + the stock scheduler."""
    return Method(name, stock_sgd(kind), stock_schedulers, **kw)


def fused(name: str, backend: str, **kw) -> Method:
    """``FusedSGD(backend=backend)`` + the fused_lr scheduler."""
    return Method(name, fused_sgd(backend), fused_schedulers, **kw)


def triton_unavailable(device: torch.device) -> str | None:
    """Why ``FusedSGD(backend="triton")`` cannot run on ``device``, or None when it can."""
    if device.type != "cuda":
        return f"needs a CUDA device (this run is on {device.type}; on CPU Triton only runs in its interpreter)"
    try:
        fused_sgd("triton")([torch.zeros(4, device=device, requires_grad=True)], lr=0.01)
    except Exception as e:  # noqa: BLE001 - the reason goes into the footnote
        return f"{type(e).__name__}: {e}"
    return None


_COMPILED: dict[str, Any] = {}  # the compiled optimizer of the current parameter set


def forget_compiled() -> None:
    """Drop the compiled optimizer kept for the current parameter set."""
    _COMPILED.clear()


def _compiled_runner(method: Method, params, schedule: Schedule, device: torch.device, hyper: dict) -> Runner:
    """torch's recipe for a compiled optimizer with a scheduler: a tensor LR, and
    ``@torch.compile(fullgraph=False) def step(): opt.step()``; the scheduler runs outside it (it
    writes the tensor LR with ``fill_``, so nothing recompiles).

    One compiled optimizer per parameter set, reused by that set's schedules within a process (its
    LR tensor reset and a fresh scheduler attached): a cold CPU compile of a 1,000-tensor step takes
    minutes, and compiling it again per schedule would measure nothing new. The first two calls
    compile (the second again: stock SGD creates its momentum buffers at the first); their times
    are kept as ``compile_calls_s``.
    """
    cached = _COMPILED.get("entry")
    if cached is not None and cached["params"] is params:
        opt, step = cached["opt"], cached["step"]
        for g in opt.param_groups:
            g["lr"].fill_(hyper["lr"])
            g.pop("initial_lr", None)
        return Runner(opt, schedule.build(method.schedulers, opt), schedule, device, opt_step=step)
    forget_compiled()
    torch._dynamo.reset()  # a new set: no stale cache entries, no recompile limit
    opt = method.optimizer(params, **dict(hyper, lr=torch.tensor(hyper["lr"], device=device)))

    @torch.compile(fullgraph=False)
    def step():
        opt.step()

    calls = []
    for _ in range(2):
        t0 = time.perf_counter()
        step()
        sync(device)
        calls.append(time.perf_counter() - t0)
    _COMPILED["entry"] = dict(params=params, opt=opt, step=step)
    runner = Runner(opt, schedule.build(method.schedulers, opt), schedule, device, opt_step=step)
    runner.compile_calls_s = calls
    return runner

"""One-command benchmark: fused_lr against stock torch.optim.SGD on this machine, side by side.

Run from the repository root::

    python benchmarks/run.py            # full: every set x every schedule x every method
    python benchmarks/run.py --quick    # < 2 minutes on a 2-core CPU (what it covers: see QUICK below)

Options: ``--out DIR`` (default ``benchmarks/results``), ``--device cpu|cuda`` (default: CUDA when
available), ``--sets NAME ...`` (resnet50 gpt2_small many_small one_large), ``--schedules NAME ...``
(step_epoch cosine_iter plateau_epoch), ``--repeats N`` (timing rounds), ``--threads N``
(``torch.set_num_threads``; default torch's choice, recorded), ``--no-compile``, ``--print-slug``.

What is measured
================
Methods (columns), all built over the *same* parameter and gradient tensors of a set (each
optimizer keeps its own momentum buffers), with momentum 0.9, weight decay 1e-4, lr 0.01:

* ``fused_lr[torch]``  ``fused_lr.FusedSGD(backend="torch")`` + the fused_lr scheduler
* ``fused_lr[triton]`` ``fused_lr.FusedSGD(backend="triton")`` + the fused_lr scheduler, only where
  ``implementation == "triton"`` is possible (a CUDA device with Triton); otherwise skipped, and the
  table's footnote says why
* ``stock foreach``    ``torch.optim.SGD(foreach=True)`` + the stock scheduler
* ``stock fused``      ``torch.optim.SGD(fused=True)`` + the stock scheduler
* ``torch.compile``    ``torch.optim.SGD(lr=torch.tensor(0.01))`` whose step runs as
  ``@torch.compile(fullgraph=False) def step(): opt.step()`` (torch's recipe for compiled optimizers
  with a scheduler), + the stock scheduler outside it (it writes the tensor LR with ``fill_``, so
  nothing recompiles). Its first calls (compilation; stock SGD creates its momentum buffers at the
  first step, so the second call compiles again) are reported separately as ``compile_calls_s``;
  every cell compiles in its own process. Inductor's on-disk cache (on by default in torch) makes a
  compile cheaper when an identical graph was compiled before (an earlier cell or run); the JSON
  says whether that cache folder existed before the run. A failure is recorded as text and shown
  as "n/a". (With ``--in-process`` the compiled optimizer is reused by a set's other schedules.)

Schedules (one iteration = one ``opt.step()`` plus the scheduler step when it is due):

* ``step_epoch``    ``StepLR(step_size=3, gamma=0.9)`` stepped once per epoch of ``EPOCH_STEPS`` = 10
  iterations (gamma 0.9, not 0.1: a run of thousands of steps must not push the LR into float32
  denormals, which slow a CPU for reasons unrelated to the code under test)
* ``cosine_iter``   ``CosineAnnealingLR(T_max=1000)`` stepped every iteration
* ``plateau_epoch`` ``ReduceLROnPlateau(factor=0.5, patience=1, min_lr=1e-4)`` stepped once per
  epoch on a device metric (a 0-dim tensor on the parameters' device; stock's scheduler calls
  ``float()`` on it, a host sync on a GPU; fused_lr's never reads it)

A 10-iteration epoch is far shorter than a real one, so per-epoch scheduler costs weigh more here
than in training: read the per-epoch rows as an upper bound on that overhead.

Parameter sets (rows), from ``benchmarks/param_sets.py``: ``resnet50`` (161 tensors, 25.6M),
``gpt2_small`` (148 tensors, 124M), ``many_small`` = ``many_small(1000, 1024)`` (1,000 tensors of
1,024 elements: per-tensor overhead dominates), ``one_large`` = ``one_large(2**24)`` (16.8M
elements in one tensor: bandwidth dominates). All fp32.

Each cell (set x schedule) runs in a fresh Python process (``--in-process`` turns this off), so
no cell inherits the allocator state of the cells before it. Measured on the 2-core CPU this was
written on: in one process, stock foreach (~100 MB of temporaries per ResNet-50 step) took 35 ms in
a set's first cell and 56 ms in the next, whatever the schedule; in fresh processes 41-44 ms in both.

Per cell (set x schedule x method):

* step time: ``repeats`` rounds; in each round every method runs ``n`` iterations back to back
  (``n`` a multiple of the epoch length, chosen so a round lasts about ``target_s``), timed with
  ``time.perf_counter`` (CPU) or ``torch.cuda.Event`` pairs with a synchronize after the round
  (CUDA); one figure per round = elapsed / n. The order of methods alternates between rounds
  (ABCD, DCBA, ABCD, ...). Reported: median over rounds and the p20-p80 spread.
* ratio to each stock baseline: this method's median / the baseline's median (< 1: faster).
* effective bandwidth: ``20 * numel / median`` bytes/s (fp32 SGD with momentum reads p, g, buf and
  writes p, buf), and its share of the copy bandwidth: a ``dst.copy_(src)`` of ``COPY_NUMEL`` fp32
  elements (2 * 4 * COPY_NUMEL bytes counted) is timed as one more contender in every round of the
  cell, so it sees the same conditions (a shared machine's load drifts); the median gives the cell's
  copy GB/s. It is also measured alone before and after the run (recorded in ``copy_bandwidth``).
  On a CPU with write-allocate caches a copy really moves 3 x size (dst is read before it is
  written) while SGD updates p and buf in place, so shares above 100% happen there.
* peak extra memory of one iteration at an epoch boundary (optimizer step + scheduler step), after
  warm-up: CUDA: ``torch.cuda.max_memory_allocated()`` minus the allocated bytes before the step
  (after ``reset_peak_memory_stats``). CPU: ``torch.profiler.profile(profile_memory=True)``; every
  CPU-allocator allocation and free inside the window is an event with its signed size; the figure
  is the peak of their running sum (the method of ``benchmarks/bench_cpu_memory.py``). Both count
  only memory from torch's allocator (not Python objects).
* CUDA only: kernel launches per iteration = GPU kernel activities recorded by ``torch.profiler``
  over one epoch (memcpy/memset counted separately), divided by the epoch length; host syncs per
  iteration = the warnings ``torch.cuda.set_sync_debug_mode("warn")`` raises over one epoch
  (synchronizing calls such as ``.item()``, ``float(tensor)``, ``cudaStreamSynchronize``) divided by
  the epoch length; the JSON also keeps the profiler's count of ``cuda*Synchronize`` calls.

QUICK (``--quick``) covers: sets resnet50, many_small, one_large (gpt2_small skipped on CPU, kept
on CUDA); schedule cosine_iter on every set plus step_epoch on resnet50; 5 rounds of about 0.1 s
per method (CUDA: 0.05 s); torch.compile only on one_large on CPU (cold CPU compiles of a
161-tensor step take over a minute on a small CPU, of 1,000 tensors over 6 minutes), on every set
on CUDA. A full CPU run with torch.compile therefore takes long (``--no-compile`` to skip it).

Output: one table on stdout; ``<out>/<device-slug>-<YYYY-MM-DD>.json`` and ``.png`` (a result of
another device is never overwritten: the slug names the device, and an existing file of the same
device and date gets the next free suffix ``-2``, ``-3``, ...). JSON keys: see ``JSON_KEYS`` and
``CELL_KEYS``/``METHOD_KEYS``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import fused_lr  # noqa: E402
import fused_lr.lr_scheduler as fused_sched  # noqa: E402
import torch.optim.lr_scheduler as stock_sched  # noqa: E402
from param_sets import gpt2_small_shapes, make_params, many_small, numel, one_large, resnet50_shapes  # noqa: E402

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
BYTES_PER_PARAM = 20  # fp32 SGD with momentum: read p, g, buf (12 B), write p, buf (8 B)
EPOCH_STEPS = 10  # iterations per "epoch" for the per-epoch schedules
COPY_NUMEL = {"cpu": 2**25, "cuda": 2**28}  # fp32 elements of the copy-bandwidth probe (128 MiB / 1 GiB)
BASELINES = ("stock foreach", "stock fused")

JSON_KEYS = (
    "schema", "created", "command", "quick", "device", "host", "versions", "git", "settings",
    "copy_bandwidth", "skipped_methods", "notes", "cells", "elapsed_s",
)
CELL_KEYS = ("set", "schedule", "tensors", "params", "bytes_per_step", "copy_gbps", "copy_round_s", "methods")
METHOD_KEYS = (
    "status", "error", "median_s", "p20_s", "p80_s", "round_s", "steps_per_round",
    "ratio", "gbps", "copy_share", "peak_extra_bytes", "launches_per_step", "memcpy_per_step",
    "syncs_per_step", "sync_calls_per_step", "compile_calls_s",
)

# --------------------------------------------------------------------------------------- sets


@dataclass(frozen=True)
class ParamSet:
    name: str
    shapes: list[tuple[int, ...]]

    @property
    def numel(self) -> int:
        return numel(self.shapes)


PARAM_SETS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "resnet50": resnet50_shapes,
    "gpt2_small": gpt2_small_shapes,
    "many_small": lambda: many_small(1000, 1024),
    "one_large": lambda: one_large(2**24),
}


def make_device_params(shapes, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """fp32 leaf tensors of ``shapes`` on ``device`` with ``.grad`` set once to random values."""
    return make_params(shapes, seed=seed, device=device)


# --------------------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class Schedule:
    """A scheduler and how often it steps: every ``every`` iterations, with a metric or not."""

    name: str
    every: int
    fused: Callable[[Any], Any]  # FusedSGD -> fused_lr scheduler
    stock: Callable[[Any], Any]  # torch.optim.SGD -> stock scheduler
    metric: bool = False


SCHEDULES: dict[str, Schedule] = {
    "step_epoch": Schedule(
        "step_epoch", EPOCH_STEPS,
        lambda o: fused_sched.StepLR(o, step_size=3, gamma=0.9),
        lambda o: stock_sched.StepLR(o, step_size=3, gamma=0.9),
    ),
    "cosine_iter": Schedule(
        "cosine_iter", 1,
        lambda o: fused_sched.CosineAnnealingLR(o, T_max=1000),
        lambda o: stock_sched.CosineAnnealingLR(o, T_max=1000),
    ),
    "plateau_epoch": Schedule(
        "plateau_epoch", EPOCH_STEPS,
        lambda o: fused_sched.ReduceLROnPlateau(o, factor=0.5, patience=1, min_lr=1e-4),
        lambda o: stock_sched.ReduceLROnPlateau(o, factor=0.5, patience=1, min_lr=1e-4),
        metric=True,
    ),
}


# --------------------------------------------------------------------------------------- methods


class Runner:
    """One method on one set with one schedule: ``iteration()`` = opt step (+ scheduler step when due)."""

    def __init__(self, opt, sched, schedule: Schedule, device: torch.device, opt_step=None) -> None:
        self.opt, self.sched, self.schedule = opt, sched, schedule
        self.opt_step = opt_step if opt_step is not None else opt.step
        # The plateau metric: a 0-dim device tensor, as a validation loss computed on the device.
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


@dataclass(frozen=True)
class Method:
    name: str
    build: Callable[[list[torch.Tensor], Schedule, torch.device], Runner]


def _hp() -> dict[str, float]:
    return dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def _fused_lr(backend: str):
    def build(params, schedule, device):
        opt = fused_lr.FusedSGD(params, backend=backend, **_hp())
        if opt.implementation != backend:
            raise RuntimeError(f"FusedSGD(backend={backend!r}).implementation == {opt.implementation!r}")
        return Runner(opt, schedule.fused(opt), schedule, device)

    return build


def _stock(**kw):
    def build(params, schedule, device):
        opt = torch.optim.SGD(params, **kw, **_hp())
        return Runner(opt, schedule.stock(opt), schedule, device)

    return build


_COMPILED: dict[str, Any] = {}  # the compiled optimizer of the current parameter set


def _compiled(params, schedule, device):
    """torch's recipe: tensor LR, ``@torch.compile(fullgraph=False) def step(): opt.step()``.

    One compiled optimizer per parameter set, reused by that set's schedules (its LR tensor reset
    to ``LR`` and a fresh stock scheduler attached): a cold CPU compile of a 1,000-tensor step takes
    minutes, and compiling it again per schedule would measure nothing new.
    """
    cached = _COMPILED.get("entry")
    if cached is not None and cached["params"] is params:
        opt, step = cached["opt"], cached["step"]
        for g in opt.param_groups:
            g["lr"].fill_(LR)
            g.pop("initial_lr", None)
        runner = Runner(opt, schedule.stock(opt), schedule, device, opt_step=step)
        runner.compile_calls_s = None  # compiled in this set's first cell
        return runner
    _COMPILED.clear()
    torch._dynamo.reset()  # a new set: no stale cache entries, no recompile limit
    hp = _hp()
    hp["lr"] = torch.tensor(LR, device=device)
    opt = torch.optim.SGD(params, **hp)

    @torch.compile(fullgraph=False)
    def step():
        opt.step()

    # The first two calls compile (the second again: stock SGD creates its momentum buffers at the first).
    calls = []
    for _ in range(2):
        t0 = time.perf_counter()
        step()
        _sync(device)
        calls.append(time.perf_counter() - t0)
    _COMPILED["entry"] = dict(params=params, opt=opt, step=step)
    runner = Runner(opt, schedule.stock(opt), schedule, device, opt_step=step)
    runner.compile_calls_s = calls
    return runner


METHODS: dict[str, Method] = {
    "fused_lr[torch]": Method("fused_lr[torch]", _fused_lr("torch")),
    "fused_lr[triton]": Method("fused_lr[triton]", _fused_lr("triton")),
    "stock foreach": Method("stock foreach", _stock(foreach=True)),
    "stock fused": Method("stock fused", _stock(fused=True)),
    "torch.compile": Method("torch.compile", _compiled),
}


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why ``FusedSGD(backend="triton")`` cannot run on ``device``, or None when it can."""
    if device.type != "cuda":
        return f"needs a CUDA device (this run is on {device.type}; on CPU Triton only runs in its interpreter)"
    try:
        p = torch.zeros(4, device=device, requires_grad=True)
        opt = fused_lr.FusedSGD([p], lr=LR, backend="triton")
        if opt.implementation != "triton":
            return f"FusedSGD(backend='triton').implementation == {opt.implementation!r}"
    except Exception as e:  # noqa: BLE001 - the reason goes into the footnote
        return f"{type(e).__name__}: {e}"
    return None


# --------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn: Callable[[], None], n: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``n`` back-to-back calls (CUDA: events, then synchronize)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        _sync(device)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of ``xs``, ``q`` in [0, 100]."""
    s = sorted(xs)
    if not s:
        return math.nan
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def round_order(names: list[str], r: int) -> list[str]:
    """Method order of round ``r``: ABCD, DCBA, ABCD, ..."""
    return list(names) if r % 2 == 0 else list(reversed(names))


def measure_copy_bandwidth(device: torch.device, repeats: int, numel_: int | None = None) -> dict[str, Any]:
    """The device's copy bandwidth: median time of ``dst.copy_(src)``, 2 * 4 * numel bytes moved."""
    n = numel_ or COPY_NUMEL[device.type]
    if device.type == "cuda" and numel_ is None:  # two fp32 buffers: at most a quarter of the memory
        n = min(n, torch.cuda.get_device_properties(device).total_memory // 32)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    per_call = max(1, round(0.05 / max(time_steps(lambda: dst.copy_(src), 1, device), 1e-7)))
    rounds = [time_steps(lambda: dst.copy_(src), per_call, device) for _ in range(max(repeats, 5))]
    med = percentile(rounds, 50)
    nbytes = 2 * 4 * n
    del src, dst
    return dict(numel=n, bytes=nbytes, median_s=med, gbps=nbytes / med / 1e9, round_s=rounds)


def summarize(round_s: dict[str, list[float]], numel_: int, copy_gbps: float | None) -> dict[str, dict[str, Any]]:
    """Median, p20/p80, ratios to the stock baselines and bandwidth, per method, from per-round seconds."""
    out: dict[str, dict[str, Any]] = {}
    medians = {m: percentile(ts, 50) for m, ts in round_s.items() if ts}
    for m, ts in round_s.items():
        if not ts:
            continue
        med = medians[m]
        gbps = BYTES_PER_PARAM * numel_ / med / 1e9
        out[m] = dict(
            median_s=med,
            p20_s=percentile(ts, 20),
            p80_s=percentile(ts, 80),
            round_s=list(ts),
            ratio={b: med / medians[b] for b in BASELINES if b in medians},
            gbps=gbps,
            copy_share=(gbps / copy_gbps) if copy_gbps else None,
        )
    return out


# --------------------------------------------------------------------------------------- memory, launches, syncs


@contextlib.contextmanager
def _quiet_stderr():
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


def peak_extra_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak memory ``fn()`` allocates beyond what was live before it (see the module docstring)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for n in _walk(prof.profiler.kineto_results.experimental_event_tree()):
        if n.tag == _EventType.Allocation and n.extra_fields.device.type == "cpu":
            live += n.extra_fields.alloc_size
            peak = max(peak, live)
    return int(peak)


def cuda_counts(fn: Callable[[], None], n: int, device: torch.device) -> dict[str, float]:
    """Kernel launches, memcpy/memset and host syncs per call of ``fn``, over ``n`` calls (CUDA)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        _sync(device)
    kernels = memops = sync_calls = 0
    for e in prof.events():
        name = e.name
        if e.device_type == DeviceType.CUDA:
            if name.startswith(("Memcpy", "Memset")):
                memops += 1
            else:
                kernels += 1
        elif name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"):
            sync_calls += 1
    sync_calls -= 1  # the _sync() closing the window
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
    _sync(device)
    return dict(
        launches_per_step=kernels / n,
        memcpy_per_step=memops / n,
        syncs_per_step=syncs / n,
        sync_calls_per_step=max(sync_calls, 0) / n,
    )


# --------------------------------------------------------------------------------------- one cell


def _error_text(e: BaseException) -> str:
    lines = traceback.format_exception_only(type(e), e)
    text = "".join(lines).strip()
    return text if len(text) <= 2000 else text[:2000] + " ..."


def measure(
    methods: list[Method],
    param_set: ParamSet,
    schedule: Schedule,
    repeats: int,
    *,
    device: torch.device | str = "cpu",
    target_s: float = 0.1,
    copy_gbps: float | None = None,
    copy_probe: tuple[torch.Tensor, torch.Tensor] | None = None,
    params: list[torch.Tensor] | None = None,
    extras: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``methods`` side by side on ``param_set`` with ``schedule``: one result cell.

    Every method is built over the same tensors, warmed up (past one epoch boundary), then timed in
    ``repeats`` rounds of ``n`` iterations each (``n`` a multiple of ``schedule.every``, about
    ``target_s`` per round), in alternating order. A method whose build or run raises is kept as
    ``status="error"`` with the error text; the others go on. ``extras`` adds memory (and on CUDA
    launches and syncs). With ``copy_probe=(src, dst)``, ``dst.copy_(src)`` is timed in every round
    as one more contender, and the cell's bandwidth shares use that copy bandwidth (measured under the
    same conditions as the methods); else ``copy_gbps``.
    """
    device = torch.device(device)
    tick = progress or (lambda _msg: None)
    if params is None:
        params = make_device_params(param_set.shapes, device)
    results: dict[str, dict[str, Any]] = {}
    runners: dict[str, Runner] = {}
    steps: dict[str, int] = {}
    every = schedule.every
    for m in methods:
        try:
            r = m.build(params, schedule, device)
            for _ in range(every + 2):  # momentum buffers exist, one scheduler step happened
                r.iteration()
            _sync(device)
            est = min(time_steps(r.iteration, every, device) / 1.0 for _ in range(2))
            steps[m.name] = max(every, math.ceil(target_s / max(est, 1e-7) / every) * every)
            runners[m.name] = r
            results[m.name] = dict(status="ok", error=None, compile_calls_s=r.compile_calls_s)
        except Exception as e:  # noqa: BLE001 - recorded, shown as n/a
            results[m.name] = dict(status="error", error=_error_text(e))
    tick("warm-up")
    round_s: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    copy_s: list[float] = []
    if copy_probe is not None:
        src, dst = copy_probe
        copy_fn = lambda: dst.copy_(src)  # noqa: E731
        copy_n = max(1, round(target_s / 2 / max(time_steps(copy_fn, 2, device), 1e-7)))
        names.append("copy")
    for rnd in range(repeats):
        for name in round_order(names, rnd):
            if name == "copy":
                copy_s.append(time_steps(copy_fn, copy_n, device))
                continue
            if results[name]["status"] != "ok":
                continue
            try:
                round_s[name].append(time_steps(runners[name].iteration, steps[name], device))
            except Exception as e:  # noqa: BLE001
                results[name].update(status="error", error=_error_text(e))
                round_s[name] = []
        tick(f"round {rnd + 1}/{repeats}")
    cell_copy_gbps = None
    if copy_s:
        cell_copy_gbps = 2 * src.element_size() * src.numel() / percentile(copy_s, 50) / 1e9
        copy_gbps = cell_copy_gbps
    for name, figures in summarize(
        {n: ts for n, ts in round_s.items() if results[n]["status"] == "ok"}, param_set.numel, copy_gbps
    ).items():
        results[name].update(figures, steps_per_round=steps[name])
    if extras:
        for name, r in runners.items():
            if results[name]["status"] != "ok":
                continue
            try:
                # Align to an epoch boundary: the measured iteration includes a scheduler step.
                while (r.i + 1) % every:
                    r.iteration()
                results[name]["peak_extra_bytes"] = peak_extra_bytes(r.iteration, device)
                if device.type == "cuda":
                    results[name].update(cuda_counts(r.iteration, every, device))
            except Exception as e:  # noqa: BLE001
                results[name]["extras_error"] = _error_text(e)
        tick("memory")
    for res in results.values():
        for k in METHOD_KEYS:
            res.setdefault(k, None)
    return dict(
        set=param_set.name,
        schedule=schedule.name,
        tensors=len(param_set.shapes),
        params=param_set.numel,
        bytes_per_step=BYTES_PER_PARAM * param_set.numel,
        copy_gbps=cell_copy_gbps if cell_copy_gbps is not None else copy_gbps,
        copy_round_s=copy_s,
        methods=results,
    )


# --------------------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """Which (set, schedule, methods) cells to run."""

    cells: list[tuple[str, str, list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def make_plan(args, device: torch.device, methods: list[str]) -> Plan:
    plan = Plan()
    sets = args.sets or list(PARAM_SETS)
    schedules = args.schedules or list(SCHEDULES)
    if args.quick:
        if device.type == "cpu" and not args.sets:
            sets = [s for s in sets if s != "gpt2_small"]
            plan.notes.append("--quick on CPU: gpt2_small skipped")
        if not args.schedules:
            plan.notes.append("--quick: cosine_iter on every set, step_epoch on resnet50 only, no plateau_epoch")
    for s in sets:
        for sc in schedules:
            if args.quick and not args.schedules and not (sc == "cosine_iter" or (sc == "step_epoch" and s == "resnet50")):
                continue
            ms = list(methods)
            if "torch.compile" in ms and args.quick and device.type == "cpu" and s != "one_large":
                ms.remove("torch.compile")
            plan.cells.append((s, sc, ms))
    if args.quick and device.type == "cpu" and "torch.compile" in methods:
        plan.notes.append("--quick on CPU: torch.compile measured on one_large only (cold CPU compiles take minutes)")
    return plan


# --------------------------------------------------------------------------------------- environment


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def device_slug(device: torch.device) -> str:
    name = slugify(device_name(device))
    return name if device.type == "cuda" else f"cpu-{name}"


def unique_stem(out_dir: Path, stem: str, suffixes=(".json", ".png")) -> Path:
    """``out_dir/stem``, or ``stem-2``, ``stem-3``, ... : the first whose files do not exist yet."""
    k = 1
    while True:
        cand = stem if k == 1 else f"{stem}-{k}"
        if not any((out_dir / (cand + s)).exists() for s in suffixes):
            return out_dir / cand
        k += 1


def git_info() -> dict[str, Any]:
    def git(*a):
        return subprocess.run(["git", *a], cwd=_HERE.parent, capture_output=True, text=True, timeout=20).stdout.strip()

    try:
        return dict(commit=git("rev-parse", "HEAD") or None, dirty=bool(git("status", "--porcelain")))
    except (OSError, subprocess.SubprocessError):
        return dict(commit=None, dirty=None)


def environment(device: torch.device) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    dev: dict[str, Any] = dict(type=device.type, name=device_name(device), slug=device_slug(device))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev.update(
            total_memory=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    return dict(
        device=dev,
        host=dict(
            cpu_model=cpu_model(),
            cpu_count=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
            platform=platform.platform(),
        ),
        versions=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            triton=triton_version,
            fused_lr=getattr(fused_lr, "__version__", None),
        ),
        git=git_info(),
    )


# --------------------------------------------------------------------------------------- output


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, width: int = 30, stream=None) -> None:
        self.total, self.done, self.width = max(total, 1), 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.perf_counter()
        self.label = ""
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def set_label(self, label: str) -> None:
        self.label = label
        if not self.tty:
            print(f"[{self.done}/{self.total}] {label}", file=self.stream, flush=True)

    def __call__(self, msg: str) -> None:
        self.done = min(self.done + 1, self.total)
        if self.tty:
            fill = round(self.width * self.done / self.total)
            bar = "#" * fill + "-" * (self.width - fill)
            line = f"\r[{bar}] {self.done}/{self.total} {time.perf_counter() - self.t0:5.0f}s {self.label} {msg}"
            self.stream.write(line[:150].ljust(150))
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "n/a"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _fmt_bytes(b: int | None) -> str:
    if b is None:
        return "n/a"
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= k:
            return f"{b / k:.1f} {unit}"
    return f"{b} B"


def format_table(report: dict[str, Any]) -> str:
    """The one table: a row per (set, schedule, method), then footnotes."""
    cuda = report["device"]["type"] == "cuda"
    head = ["set", "schedule", "method", "median", "p20-p80", "x foreach", "x fused", "GB/s", "% copy", "copy GB/s",
            "peak extra"]
    if cuda:
        head += ["launches", "syncs"]
    rows = []
    for cell in report["cells"]:
        label = f"{cell['set']} ({cell['tensors']}, {cell['params'] / 1e6:.1f}M)"
        for name, r in cell["methods"].items():
            if r["status"] != "ok":
                rows.append([label, cell["schedule"], name, "n/a"] + [""] * (len(head) - 4))
                label = ""
                continue
            ratio = r["ratio"] or {}
            row = [
                label,
                cell["schedule"],
                name,
                _fmt_time(r["median_s"]),
                f"{_fmt_time(r['p20_s'])}-{_fmt_time(r['p80_s'])}",
                f"{ratio['stock foreach']:.2f}" if "stock foreach" in ratio else "n/a",
                f"{ratio['stock fused']:.2f}" if "stock fused" in ratio else "n/a",
                f"{r['gbps']:.1f}",
                f"{100 * r['copy_share']:.0f}%" if r["copy_share"] is not None else "n/a",
                f"{cell['copy_gbps']:.1f}" if cell.get("copy_gbps") else "n/a",
                _fmt_bytes(r["peak_extra_bytes"]),
            ]
            if cuda:
                row += [
                    "n/a" if r["launches_per_step"] is None else f"{r['launches_per_step']:.1f}",
                    "n/a" if r["syncs_per_step"] is None else f"{r['syncs_per_step']:.2f}",
                ]
            rows.append(row)
            label = ""
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths)), "-+-".join("-" * w for w in widths)]
    prev_set = None
    for row in rows:
        if row[0] and prev_set is not None:
            lines.append("-+-".join("-" * w for w in widths))
        prev_set = row[0] or prev_set
        lines.append(" | ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    cb = report["copy_bandwidth"]
    dev = report["device"]
    foot = [
        f"device: {dev['name']} ({dev['type']}), torch {report['versions']['torch']}, "
        f"threads {report['host']['torch_threads']}; copy probe dst.copy_(src) of {cb['numel'] * 4 / 2**20:.0f} MiB",
        "median/p20-p80: one iteration (opt.step() + the scheduler step when due) over "
        f"{report['settings']['repeats']} rounds, alternating method order; x foreach / x fused: median / the "
        "stock baseline's median (< 1 = faster)",
        f"GB/s: {BYTES_PER_PARAM} bytes/param (fp32 SGD with momentum) / median; % copy: share of the copy bandwidth "
        "timed in the same rounds as the cell's methods (column 'copy GB/s'; "
        f"before/after the run: {cb['start_gbps']:.1f} / {cb['end_gbps']:.1f} GB/s), counted as 2 x size bytes" + ("; on a CPU with write-allocate caches a copy really moves 3 x size (dst is read before "
                            "it is written) while SGD updates p and buf in place, so shares above 100% are possible"
                            if not cuda else ""),
        "peak extra: " + ("torch.cuda.max_memory_allocated delta" if cuda else
                          "peak of the CPU allocator's live extra bytes (torch.profiler profile_memory)")
        + " over one iteration with a scheduler step",
    ]
    if cuda:
        foot.append("launches: GPU kernels per iteration (torch.profiler); syncs: "
                    "torch.cuda.set_sync_debug_mode('warn') warnings per iteration")
    for name, why in report["skipped_methods"].items():
        foot.append(f"{name}: skipped: {why}")
    for cell in report["cells"]:
        for name, r in cell["methods"].items():
            if r["status"] != "ok":
                err = (r["error"] or "").splitlines()[-1:] or [""]
                foot.append(f"{name} on {cell['set']}/{cell['schedule']}: n/a: {err[0][:200]}")
            elif r.get("compile_calls_s"):
                calls = " + ".join(f"{c:.1f} s" for c in r["compile_calls_s"])
                foot.append(f"{name} on {cell['set']}/{cell['schedule']}: first calls (compile) {calls}")
    foot += report["notes"]
    return "\n".join(lines + [""] + ["* " + f for f in foot])


def plot(report: dict[str, Any], path: Path) -> Path:
    """Bars of step time per (set, schedule) and method (log scale), and a panel of copy-bandwidth share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = report["cells"]
    methods: list[str] = []
    for c in cells:
        for m in c["methods"]:
            if m not in methods:
                methods.append(m)
    labels = [f"{c['set']}\n{c['schedule']}" for c in cells]
    fig, (ax_t, ax_b) = plt.subplots(2, 1, figsize=(max(7.0, 1.6 * len(cells) + 2), 8), sharex=True)
    width = 0.8 / max(len(methods), 1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, m in enumerate(methods):
        xs, ts, lo, hi, shares = [], [], [], [], []
        for i, c in enumerate(cells):
            r = c["methods"].get(m)
            if not r or r["status"] != "ok":
                continue
            xs.append(i + (j - (len(methods) - 1) / 2) * width)
            ts.append(r["median_s"] * 1e3)
            lo.append((r["median_s"] - r["p20_s"]) * 1e3)
            hi.append((r["p80_s"] - r["median_s"]) * 1e3)
            shares.append(100 * (r["copy_share"] or 0))
        color = colors[j % len(colors)]
        ax_t.bar(xs, ts, width, yerr=[lo, hi], capsize=2, label=m, color=color)
        ax_b.bar(xs, shares, width, label=m, color=color)
    ax_t.set_yscale("log")
    fmt = matplotlib.ticker.FuncFormatter(lambda y, _pos: f"{y:g}")
    ax_t.yaxis.set_major_formatter(fmt)
    ax_t.yaxis.set_minor_formatter(fmt)
    ax_t.tick_params(axis="y", which="minor", labelsize=7)
    ax_t.set_ylabel("step time, ms (median, p20-p80; log)")
    ax_t.grid(axis="y", which="both", alpha=0.3)
    ax_b.set_ylabel("% of copy bandwidth\n(dst.copy_(src) timed in the same rounds)")
    ax_b.axhline(100, color="gray", lw=0.8, ls="--")
    ax_b.grid(axis="y", alpha=0.3)
    ax_b.set_xticks(range(len(cells)))
    ax_b.set_xticklabels(labels, fontsize=8)
    dev = report["device"]
    fig.suptitle(
        "fused_lr vs stock SGD: one optimizer step + its scheduler step (fp32, momentum 0.9)\n"
        f"{dev['name']} ({dev['type']}, {report['host']['torch_threads']} threads), "
        f"torch {report['versions']['torch']}, {report['created'][:10]}",
        fontsize=9,
        y=0.995,
    )
    handles, names = ax_t.get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=min(len(methods), 5), fontsize=8, bbox_to_anchor=(0.5, 0.945))
    fig.tight_layout(rect=(0, 0, 1, 0.91))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: Path, stem: str | None = None) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.png`` into ``out_dir`` at the first free suffix."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    if stem is None:
        stem = f"{report['device']['slug']}-{report['created'][:10]}"
    base = unique_stem(out_dir, stem)
    json_path = base.with_name(base.name + ".json")
    png_path = base.with_name(base.name + ".png")
    # Reserve the name first (exclusive create), so two runs at once cannot take the same file.
    with open(json_path, "x") as f:
        json.dump(report, f, indent=1, default=str)
        f.write("\n")
    try:
        plot(report, png_path)
    except Exception as e:  # noqa: BLE001 - the figures are in the JSON
        report.setdefault("notes", []).append(f"PNG not written: {_error_text(e)}")
        png_path = None
    return json_path, png_path


# --------------------------------------------------------------------------------------- cell processes


def _cell_in_subprocess(spec: dict[str, Any], tick: Callable[[str], None]) -> dict[str, Any]:
    """Run one cell in a fresh interpreter (``run.py --cell SPEC``); a crash becomes an error cell."""
    import json
    import tempfile

    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", json.dumps(spec)]
    cell = None
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        for line in proc.stdout:
            if line.startswith("TICK "):
                tick(line[5:].strip())
            elif line.startswith("CELL_JSON "):
                cell = json.loads(line[10:])
        rc = proc.wait()
        err.seek(0)
        err_text = err.read()
    noise = ("Profiler record function",)
    for line in err_text.splitlines():  # pass the worker's warnings on, without known noise
        if line.strip() and not any(n in line for n in noise):
            print(line, file=sys.stderr)
    if cell is None:
        tail = "\n".join(err_text.strip().splitlines()[-5:])
        shapes = spec["shapes"]
        cell = dict(
            set=spec["set"], schedule=spec["schedule"], tensors=len(shapes), params=numel(shapes),
            bytes_per_step=BYTES_PER_PARAM * numel(shapes), copy_gbps=None, copy_round_s=[],
            methods={m: {**{k: None for k in METHOD_KEYS}, "status": "error",
                         "error": f"cell process exited with {rc}: {tail}"} for m in spec["methods"]},
        )
    return cell


def _cell_worker(spec: dict[str, Any]) -> int:
    """The child side of ``_cell_in_subprocess``: measure one cell, print it as JSON on stdout."""
    import json

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    n = spec["copy_numel"]
    probe = (torch.randn(n, device=device), torch.empty(n, device=device))
    cell = measure(
        [METHODS[m] for m in spec["methods"]],
        ParamSet(spec["set"], [tuple(x) for x in spec["shapes"]]),
        SCHEDULES[spec["schedule"]],
        spec["repeats"],
        device=device,
        target_s=spec["target_s"],
        copy_probe=probe,
        progress=lambda msg: print(f"TICK {msg}", flush=True),
    )
    print("CELL_JSON " + json.dumps(cell, default=str), flush=True)
    return 0


# --------------------------------------------------------------------------------------- main


def run_benchmark(
    sets: dict[str, list[tuple[int, ...]]],
    cells: list[tuple[str, str, list[str]]],
    *,
    device: torch.device,
    repeats: int,
    target_s: float,
    methods: dict[str, Method] | None = None,
    skipped: dict[str, str] | None = None,
    notes: list[str] | None = None,
    command: list[str] | None = None,
    quick: bool = False,
    out_dir: Path | None = None,
    copy_numel: int | None = None,
    progress: bool = True,
    isolate: bool = False,
) -> tuple[dict[str, Any], Path | None, Path | None]:
    """Measure ``cells`` [(set name, schedule name, method names)], write JSON + PNG when ``out_dir``.

    ``isolate``: each cell in a fresh Python process (what ``main`` does; methods by name from
    ``METHODS`` only), so no cell inherits the allocator state of the cells before it.
    """
    t_start = time.perf_counter()
    methods = methods or METHODS
    inductor_cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
        __import__("tempfile").gettempdir(), f"torchinductor_{__import__('getpass').getuser()}"
    )
    report: dict[str, Any] = dict(
        schema=1,
        created=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        command=command if command is not None else [sys.executable, *sys.argv],
        quick=quick,
        **environment(device),
        settings=dict(
            repeats=repeats,
            target_round_s=target_s,
            epoch_steps=EPOCH_STEPS,
            lr=LR,
            momentum=MOMENTUM,
            weight_decay=WEIGHT_DECAY,
            dtype="float32",
            bytes_per_param=BYTES_PER_PARAM,
            inductor_cache_dir=inductor_cache,
            inductor_cache_existed=os.path.isdir(inductor_cache),
            cells_isolated=isolate,
        ),
        skipped_methods=dict(skipped or {}),
        notes=list(notes or []),
        cells=[],
    )
    bar = Progress(2 + sum(repeats + 2 for _ in cells)) if progress else None
    tick = bar if bar else (lambda _m: None)
    if bar:
        bar.set_label("copy bandwidth")
    copy_start = measure_copy_bandwidth(device, repeats, copy_numel)
    report["copy_bandwidth"] = dict(copy_start)
    tick("done")
    n_copy = copy_start["numel"]
    copy_probe = (torch.randn(n_copy, device=device), torch.empty(n_copy, device=device))
    by_set: dict[str, list[tuple[str, list[str]]]] = {}
    for s, sc, ms in cells:
        by_set.setdefault(s, []).append((sc, ms))
    if isolate:
        del copy_probe
        for s, sc, ms in cells:
            if bar:
                bar.set_label(f"{s}/{sc}")
            spec = dict(set=s, shapes=sets[s], schedule=sc, methods=ms, repeats=repeats, target_s=target_s,
                        device=str(device), copy_numel=n_copy, threads=torch.get_num_threads())
            report["cells"].append(_cell_in_subprocess(spec, tick))
        by_set = {}
        copy_probe = None
    for s, todo in by_set.items():
        pset = ParamSet(s, sets[s])
        params = make_device_params(pset.shapes, device)
        for sc, ms in todo:
            if bar:
                bar.set_label(f"{s}/{sc}")
            cell = measure(
                [methods[m] for m in ms], pset, SCHEDULES[sc], repeats,
                device=device, target_s=target_s, copy_probe=copy_probe,
                params=params, progress=tick,
            )
            report["cells"].append(cell)
        _COMPILED.clear()
        del params
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # Measured again at the end, for the record: shares use each cell's own copy measurement.
    del copy_probe
    if bar:
        bar.set_label("copy bandwidth")
    copy_end = measure_copy_bandwidth(device, repeats, copy_numel)
    tick("done")
    report["copy_bandwidth"] = dict(copy_start, start_gbps=copy_start["gbps"], end_gbps=copy_end["gbps"],
                                    gbps=max(copy_start["gbps"], copy_end["gbps"]))
    if bar:
        bar.close()
    report["elapsed_s"] = time.perf_counter() - t_start
    json_path = png_path = None
    if out_dir is not None:
        json_path, png_path = write_report(report, out_dir)
    return report, json_path, png_path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the short run (< 2 min on a 2-core CPU); see QUICK in the docstring")
    p.add_argument("--out", type=Path, default=_HERE / "results", help="output folder (default benchmarks/results)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    p.add_argument("--sets", nargs="+", choices=list(PARAM_SETS), default=None)
    p.add_argument("--schedules", nargs="+", choices=list(SCHEDULES), default=None)
    p.add_argument("--repeats", type=int, default=None, help="timing rounds per cell (default 5 quick, 11 full)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile column")
    p.add_argument("--print-slug", action="store_true", help="print the device slug and exit")
    p.add_argument("--in-process", action="store_true", help="run every cell in this process (default: one process per cell)")
    p.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: one cell, JSON spec
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cell is not None:
        import json

        return _cell_worker(json.loads(args.cell))
    dev_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev_type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available", file=sys.stderr)
        return 2
    device = torch.device(dev_type)
    if args.print_slug:
        print(device_slug(device))
        return 0
    # One thread count for the whole run (torch's default unless --threads), recorded in the JSON.
    torch.set_num_threads(args.threads or torch.get_num_threads())
    repeats = args.repeats or (5 if args.quick else 11)
    target_s = (0.05 if device.type == "cuda" else 0.1) if args.quick else (0.1 if device.type == "cuda" else 0.3)
    skipped: dict[str, str] = {}
    names = list(METHODS)
    why = triton_unavailable_reason(device)
    if why:
        names.remove("fused_lr[triton]")
        skipped["fused_lr[triton]"] = why
    if args.no_compile:
        names.remove("torch.compile")
        skipped["torch.compile"] = "--no-compile"
    plan = make_plan(args, device, names)
    report, json_path, png_path = run_benchmark(
        {s: PARAM_SETS[s]() for s in {c[0] for c in plan.cells}},
        plan.cells,
        device=device,
        repeats=repeats,
        target_s=target_s,
        skipped=skipped,
        notes=plan.notes,
        command=[Path(sys.executable).name, *sys.argv] if argv is None else ["run.py", *argv],
        quick=args.quick,
        out_dir=args.out,
        isolate=not args.in_process,
    )
    print(format_table(report))
    print(f"\nwrote {json_path}\nwrote {png_path}" if png_path else f"\nwrote {json_path} (no PNG)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

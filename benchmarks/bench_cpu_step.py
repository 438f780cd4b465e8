"""CPU step time: one optimizer step + one scheduler step, fused_lr against stock torch.optim.SGD.

Run: ``pytest benchmarks`` (with the memory checks) or
``pytest benchmarks --benchmark-only`` (see benchmarks/conftest.py).

Cases, each in its own ``benchmark.group`` so the three implementations line up (the methods of
``compare_sgd.py``, built by ``harness.methods``):

* ``fused_lr``        ``fused_lr.FusedSGD(backend="torch")`` + ``fused_lr.lr_scheduler.StepLR``
* ``stock_fused``     ``torch.optim.SGD(fused=True)``        + ``torch.optim.lr_scheduler.StepLR``
* ``stock_foreach``   ``torch.optim.SGD(foreach=True)``      + ``torch.optim.lr_scheduler.StepLR``

on ResNet-50's parameter shapes (161 tensors, 25.6M fp32) and 200 tensors x 1000. SGD with
momentum 0.9 and weight decay 1e-4; gradients set once to random values; three warm-up steps first,
so every timed step is a steady-state one (momentum buffers exist). ``extra_info`` carries the
parameter count and the effective bandwidth at the median (SGD with momentum moves 20 bytes per fp32
parameter: read p, g, buf; write p, buf).

StepLR(step_size=30, gamma=0.9) rather than gamma=0.1: a benchmark runs hundreds of steps, and a
0.1 decay every 30 would drive the LR into float32 denormals within ~1100 steps, where a CPU slows
down for reasons unrelated to the code under test.
"""

from __future__ import annotations

import pytest
import torch
from compare_sgd import HYPER, METHODS
from harness.bandwidth import SGD_MOMENTUM_FP32, gbps
from harness.methods import Schedule
from param_sets import make_params, many_small, numel, resnet50_shapes

STEP_LR = Schedule("step_lr", "StepLR", dict(step_size=30, gamma=0.9))
WARMUP_STEPS = 3

# pytest ids (and pytest-benchmark names) -> the methods of compare_sgd.py
IMPLS = {"fused_lr": "fused_lr[torch]", "stock_fused": "stock fused", "stock_foreach": "stock foreach"}
PARAM_SETS = {
    "resnet50": resnet50_shapes,
    "many_small_200x1000": lambda: many_small(200, 1000),
}


def make_optimizer(impl: str, params: list[torch.Tensor]):
    """``(optimizer, StepLR)`` for ``impl`` over ``params``, after WARMUP_STEPS steady-state warm-up steps."""
    runner = METHODS[IMPLS[impl]].build(params, STEP_LR, torch.device("cpu"), HYPER)
    for _ in range(WARMUP_STEPS):
        runner.iteration()
    return runner.opt, runner.sched


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("set_name", PARAM_SETS)
def test_step_with_steplr(benchmark, set_name, impl):
    shapes = PARAM_SETS[set_name]()
    params = make_params(shapes)
    opt, sched = make_optimizer(impl, params)

    def step():
        opt.step()
        sched.step()

    n = numel(shapes)
    benchmark.group = f"cpu step+StepLR: {set_name} ({len(shapes)} tensors, {n:,} params)"
    benchmark.extra_info.update(impl=impl, tensors=len(shapes), params=n, threads=torch.get_num_threads())
    benchmark(step)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when benchmarks are disabled (plain `pytest benchmarks`)
        benchmark.extra_info["GB/s at median"] = round(gbps(n * SGD_MOMENTUM_FP32, stats.stats.median), 2)
    assert all(torch.isfinite(p).all() for p in params)

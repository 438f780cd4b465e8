"""CPU memory of a steady-state step: FusedSGD allocates no per-parameter temporaries.

Run: ``pytest benchmarks`` (which also times the step
benchmarks). These are plain tests, not timings: ``--benchmark-only`` skips them.

Method: ``harness.memory.cpu_allocations`` (``torch.profiler.profile(profile_memory=True)``: every
allocation and free of the CPU allocator inside the window, with its signed size) around one
``opt.step()`` and, separately, one ``sched.step()``, after warm-up steps (momentum buffers exist):
bytes allocated (frees ignored), the largest single allocation, and the peak of live extra bytes.

Positive control: stock ``SGD(foreach=True)`` allocates ``grad + weight_decay * param`` for every
parameter; the test asserts the method sees at least that (4 bytes per fp32 parameter), so "fused_lr
allocated nothing parameter-sized" is not an artefact of a profiler that sees nothing.
"""

from __future__ import annotations

import pytest
from bench_cpu_step import IMPLS, PARAM_SETS, make_optimizer
from harness.memory import cpu_allocations
from param_sets import make_params, numel

# Bytes fused_lr's scheduler step may allocate beyond stock's. fused_lr.lr_scheduler.StepLR.step()
# evaluates the closed form lr_at() in torch ops on (n_groups,)-shaped float64 tensors and writes
# the result into the optimizer's LR buffer: with one group, a dozen 8-byte scalars (measured: 12
# allocations, 89 bytes, torch 2.13 CPU). 1 KiB leaves room for 10x that (more ops, more groups,
# allocator rounding) and is still smaller than any parameter-sized temporary could be here: the
# smallest ResNet-50 tensor (a BatchNorm weight, 64 fp32) is 256 bytes, and the test also demands
# that no single allocation reaches the smallest parameter's size; one temporary per parameter
# would be 102 MB on ResNet-50.
SCHED_ALLOWANCE_BYTES = 1024


@pytest.mark.parametrize("set_name", PARAM_SETS)
def test_fused_step_allocates_no_per_parameter_temporaries(set_name, capsys):
    shapes = PARAM_SETS[set_name]()
    smallest = min(numel([s]) for s in shapes) * 4  # bytes of the smallest fp32 parameter
    n = numel(shapes)
    measured = {}
    for impl in IMPLS:
        opt, sched = make_optimizer(impl, make_params(shapes))
        measured[impl] = {"opt.step": cpu_allocations(opt.step), "sched.step": cpu_allocations(sched.step)}
        del opt, sched

    with capsys.disabled():
        print(f"\n[{set_name}: {len(shapes)} tensors, {n:,} params] CPU bytes allocated in one steady-state step")
        for impl, parts in measured.items():
            print("  " + f"{impl:<14}" + "  ".join(f"{part}: {m}" for part, m in parts.items()))

    fused, stock = measured["fused_lr"], measured["stock_fused"]
    # The optimizer step itself: nothing beyond stock fused SGD (which allocates nothing here).
    assert fused["opt.step"]["bytes"] <= stock["opt.step"]["bytes"], measured
    # The scheduler step: only the closed form's scalars.
    assert fused["sched.step"]["bytes"] <= stock["sched.step"]["bytes"] + SCHED_ALLOWANCE_BYTES, measured
    for part in ("opt.step", "sched.step"):
        assert fused[part]["largest"] < smallest, (part, fused[part], smallest)
    # Positive control: the profiler does see per-parameter temporaries where there are some.
    assert measured["stock_foreach"]["opt.step"]["bytes"] >= 4 * n, measured["stock_foreach"]

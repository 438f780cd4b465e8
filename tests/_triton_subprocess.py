"""Checks of the Triton kernels under Triton's CPU interpreter, run in a child process.

Triton decides at import time whether ``@triton.jit`` functions are compiled or interpreted, and
other test modules in the pytest process may already have imported ``triton`` without the
interpreter. So ``tests/test_triton_interpreter.py`` runs this file as a script in a fresh
interpreter with ``TRITON_INTERPRET=1``:

    python tests/_triton_subprocess.py RESULT_JSON CASE [CASE ...]

Each case runs in a ``try`` block; ``RESULT_JSON`` receives ``{case: {"ok", "message",
"seconds"}}`` so that the parent reports every failure with its message and traceback.

References (all on CPU, float64 for LRs):
* LRs: ``fused_lr.schedules.lr_at`` (torch ops).
* Parameters and momentum buffers:
  - ``stock``: ``torch.optim.SGD(foreach=False)`` with each group's LR set from ``lr_at`` every step;
  - ``opmath``: the kernel's algorithm, order and precision written in torch ops (float32 math for
    16/32-bit storage, float64 for float64, one round-to-nearest-even to storage per step);
  - ``exact``: the same algorithm in float64 with float64 state (no storage rounding at all),
    used to compare the accuracy of the kernel and stock on bfloat16.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    if "triton" in sys.modules:  # pragma: no cover - only when imported wrongly
        raise SystemExit("triton was imported before TRITON_INTERPRET=1 was set")
    os.environ["TRITON_INTERPRET"] = "1"

import json
import math
import time
import traceback
from collections.abc import Callable

import torch

# ------------------------------------------------------------------------------------------------
# Tolerances (each justified where it is defined)
# ------------------------------------------------------------------------------------------------

# lr_at kernel vs fused_lr.schedules.lr_at, relative. Powers (STEP, EXPONENTIAL, MULTISTEP, integral
# POLYNOMIAL): the kernel multiplies by squaring (<= 2 * log2(k) + 1 correctly rounded products:
# <= 81 ulp = 9e-15 at k = 1e12) while torch calls a libm pow (< 1 ulp); real POLYNOMIAL powers go
# through exp2(p * log2(x)), ~(|p log2 x| + 2) ulp < 1e-14 here. COSINE-like kinds (COSINE,
# WARMUP_COSINE, WSD): both compute the angle with the same roundings (COSINE's t mod 2*T_max is
# exact in both); only cos itself differs (numpy vs ATen, each within ~1-4 ulp of 1.0), an
# *absolute* error of <= 1e-15 * amplitude in the LR, which near the minimum (1 + cos -> 0) is
# large relative to the LR itself; hence the extra absolute term. 1e-12 leaves two orders of
# magnitude over these bounds and is still 1e9 times smaller than an off-by-one-step error.
# INVERSE_SQRT: numpy's sqrt is correctly rounded, ATen's CPU float64 sqrt is not always (it
# returns 0.7071067811865475 for sqrt(0.5), 1 ulp low): 1 ulp, within LR_RTOL.
# CONSTANT, TABLE, DIRECT, CONSTANT_FACTOR and LINEAR do the same float64 operations in the same
# order and must agree exactly under the interpreter, which does not contract multiply-adds (a GPU
# build may, changing them by an ulp).
LR_RTOL = 1e-12
LR_COSINE_ATOL_PER_AMPLITUDE = 1e-14
# Underflow: gamma ** k below the smallest normal float64 (2.2e-308) loses relative precision in
# both implementations (subnormals); such LRs are zero for every practical purpose.
LR_ATOL_UNDERFLOW = 1e-300

# Kernel vs stock torch.optim.SGD(foreach=False), per dtype (rtol, atol).
# float32: stock's for-loop runs ATen CPU ops, where `add(x, alpha=a)` is a fused multiply-add
# (one rounding) and each op rounds to float32; the interpreted kernel runs numpy float32 ops
# without contraction (two roundings). Each step may thus differ by 1-2 ulp per operation (~4
# roundings on the path to p), and SGD with these small LRs is a contraction, so differences add up
# over N = 20 steps without growing: 20 steps * ~4 ulp (6e-8) ~ 5e-6 relative -> rtol 1e-5, with
# atol 1e-6 for elements that pass through zero. (The same bound conftest.py uses for the torch
# path, for the same reason.)
# float64: the same argument with eps = 1.1e-16 gives ~1e-14 -> rtol 1e-12, atol 1e-13.
STOCK_TOL = {
    torch.float32: (1e-5, 1e-6),
    torch.float64: (1e-12, 1e-13),
}

# bfloat16 vs stock: stock computes each op in float32 but rounds every intermediate tensor
# (grad + wd*p, momentum*buf, the buffer, the nesterov grad) to bfloat16 (2^-9 relative each); the
# kernel rounds only p and buf, once per step. Both round p and buf once per step from values that
# differ by stock's extra roundings (a few 2^-9 of the update); the stored results then land on
# the same bfloat16 value or one ulp apart. Such one-ulp flips go up as often as down, buffers
# decay by `momentum` each step, and the parameter's update lr*g is small against p, so over the
# 20 steps the differences stay at a few ulps. Bound: 4 ulps of the largest magnitude M the tensor
# (or its buffer) held during the run, 4 * 2^-7 * M = 2^-5 * M (an ulp at magnitude M is at most
# 2^-7 * M). Observed on this data: at most ~1.7 such ulps. This is loose by nature (bfloat16 has
# 8 bits); the tight checks are kernel == opmath bit for bit, and "the kernel is at least as
# accurate as stock" against the exact float64 trajectory (RMS over all elements).
BF16_STOCK_FRACTION_OF_MAX = 2.0**-5


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def mismatch(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, what: str) -> str | None:
    """None when |actual - expected| <= atol + rtol * |expected| everywhere; else a description."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().reshape(-1), expected.detach().double().reshape(-1)
    diff = (a - e).abs()
    bound = atol + rtol * e.abs()
    bad = diff > bound
    if not bool(bad.any()):
        return None
    i = int(torch.argmax(diff - bound))
    return (
        f"{what}: {int(bad.sum())}/{bad.numel()} elements beyond rtol={rtol:g}, atol={atol:g}; worst at "
        f"flat index {i}: got {a[i].item()!r}, expected {e[i].item()!r} (|diff| {diff[i].item():.3e}); "
        f"max |diff| {diff.max().item():.3e}"
    )


def check_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Bitwise equality (NaN-free data), with an informative message."""
    msg = mismatch(actual, expected, rtol=0.0, atol=0.0, what=what)
    if msg:
        raise AssertionError(msg + " (bitwise equality expected)")


def check_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, what: str) -> None:
    msg = mismatch(actual, expected, rtol=rtol, atol=atol, what=what)
    if msg:
        raise AssertionError(msg)


# ------------------------------------------------------------------------------------------------
# Case: lr_at
# ------------------------------------------------------------------------------------------------


def case_lr_at() -> str:
    from fused_lr.kernels import schedule as K

    from fused_lr import schedules as S

    rows = [
        S.constant_row(0.1),
        S.step_row(0.1, 1, 0.5),
        S.step_row(0.1, 3, 0.1),
        S.step_row(0.3, 30, 0.9),
        S.step_row(0.05, 7, 1.0),
        S.exponential_row(0.1, 0.9),
        S.exponential_row(0.2, 0.999),
        S.exponential_row(0.01, 1.0),
        S.cosine_row(0.1, 10, 0.0),
        S.cosine_row(0.1, 7.5, 1e-3),  # non-integral T_max
        S.cosine_row(0.5, 1000, 0.0),
        S.cosine_row(0.1, 1, 0.05),
        S.table_row(0.5, 2, 4),  # reads table[2..5], then stays at table[5]
        S.table_row(2.0, 0, 1),
        S.direct_row(0.1, 0.0333),
        S.multistep_row(0.1, 0.5, 7, 4),  # milestones table[7:11] = 3, 5, 5 (repeated), 20
        S.multistep_row(0.2, 0.1, 9, 5),  # runs past the end of the table
        S.constant_factor_row(0.1, 0.25, 5),
        S.linear_row(0.1, 0.1, 1.0, 10),
        S.linear_row(0.1, 1.0, 0.0, 7),
        S.polynomial_row(0.1, 20, 1.0),
        S.polynomial_row(0.1, 20, 2.5),
        S.polynomial_row(0.1, 7, 0.5),
        S.warmup_cosine_row(0.1, 5, 50, 0.1),
        S.warmup_cosine_row(0.1, 0, 30, 0.0),
        S.wsd_row(0.1, 3, 10, 10, 0.1, 0),
        S.wsd_row(0.1, 3, 10, 10, 0.1, 1),
        S.wsd_row(0.1, 3, 10, 10, 0.0, 2),
        S.wsd_row(0.1, 0, 10, 0, 0.0, 0),  # no decay steps: straight to the floor
        S.inverse_sqrt_row(0.1, 4),
        S.inverse_sqrt_row(0.1, 0),
        S.cosine_restarts_row(0.1, 3, 1, 1e-3),
        S.cosine_restarts_row(0.1, 2, 2, 0.0),
        S.cosine_restarts_row(0.2, 5, 3, 1e-4, 0.5),  # a fractional epoch from step(epoch)
        S.cosine_power_row(0.1, 20, 1e-3, 1.0),  # optax's cosine decay: CosineAnnealingLR up to T_max
        S.cosine_power_row(0.1, 20, 0.0, 2.5),
        S.cosine_power_row(0.1, 7, 1e-4, 3.0),
    ]
    # A sequence (torch's SequentialLR): warmup 0..5, cosine 5..25, then StepLR; the group's row
    # points at its three piece rows, which are also evaluated on their own (at t - start).
    seq = len(rows)
    rows.append(S.sequential_row(0.1, 3, seq + 1))
    rows.append(S.as_piece(S.linear_row(0.1, 0.01, 1.0, 5), 0, 5, seq))
    rows.append(S.as_piece(S.cosine_row(0.1, 20, 1e-4), 5, 25, seq))
    rows.append(S.as_piece(S.step_row(0.1, 3, 0.5), 25, math.inf, seq))
    # Cycles (torch's CyclicLR in its three modes, a momentum row cycling downwards, a cycle with no
    # down phase; OneCycleLR in its four variants, one with a fractional pct_start * total_steps).
    rows += [
        S.cyclic_row(0.01, 0.1, 10.0, 0.5, 0, 1.0),
        S.cyclic_row(0.01, 0.1, 11.0, 4.0 / 11.0, 1, 1.0),
        S.cyclic_row(0.01, 0.1, 6.0, 0.5, 2, 0.999),
        S.cyclic_row(0.9, 0.8, 10.0, 0.5, 0, 1.0),
        S.cyclic_row(0.01, 0.1, 5.0, 1.0, 0, 1.0),
        S.one_cycle_row(0.004, 100, 30.0, 0.1, 4e-7, False, False),
        S.one_cycle_row(0.004, 100, 30.0, 0.1, 4e-7, False, True),
        S.one_cycle_row(0.004, 77, 0.3 * 77, 0.1, 4e-7, True, False),
        S.one_cycle_row(0.95, 77, 0.3 * 77, 0.85, 0.95, True, True),
        S.one_cycle_row(0.004, 2**41, 0.25 * 2**41, 0.1, 4e-7, False, False),
    ]
    # A product (torch's ChainedScheduler): ConstantLR x ExponentialLR x MultiStepLR factors.
    prod = len(rows)
    rows.append(S.product_row(0.1, 3, prod + 1))
    rows.append(S.as_piece(S.constant_factor_row(1.0, 0.1, 2), 0, math.inf, prod))
    rows.append(S.as_piece(S.exponential_row(1.0, 0.9), 0, math.inf, prod))
    rows.append(S.as_piece(S.multistep_row(1.0, 0.5, 7, 4), 0, math.inf, prod))
    table = torch.tensor([9.0, 9.0, 1.0, 0.5, 0.25, 0.125, 7.0, 3.0, 5.0, 5.0, 20.0], dtype=torch.float64)
    desc = torch.tensor(rows, dtype=torch.float64)
    steps = sorted(
        set(range(0, 24))
        | {29, 30, 31, 59, 60, 61, 99, 100, 101, 999, 1000, 1001, 1999, 2000, 2001, 2999, 3000}
        | {10**6, 10**6 + 1, 10**9 + 7, 10**12 - 1, 10**12, 10**12 + 1, 10**12 + 7, 2**40, 2**53 - 1}
    )
    steps_t = torch.tensor(steps, dtype=torch.int64)
    out = torch.full((len(steps), len(rows)), float("nan"), dtype=torch.float64)
    K.lr_at_kernel[(len(steps), len(rows))](out, steps_t, desc, table, table.numel(), len(rows))
    ref = torch.stack([S.lr_at(torch.tensor([s]), desc, table) for s in steps])

    Kind, Col = S.Kind, S.Col
    exact_kinds = {Kind.CONSTANT, Kind.TABLE, Kind.DIRECT, Kind.CONSTANT_FACTOR, Kind.LINEAR}
    cosine_kinds = {Kind.COSINE, Kind.WARMUP_COSINE, Kind.WSD, Kind.COSINE_RESTARTS, Kind.SEQUENTIAL,
                    Kind.ONE_CYCLE, Kind.COSINE_POWER}
    missing = set(Kind) - {int(k) for k in desc[:, Col.KIND].tolist()}
    assert not missing, f"add rows for kinds {sorted(missing)}"
    kinds = [Kind(int(k)) for k in desc[:, Col.KIND].tolist()]
    worst = 0.0
    failures = []
    for j, kind in enumerate(kinds):
        for i, s in enumerate(steps):
            if kind == Kind.ONE_CYCLE and s > desc[j, S.col(Kind.ONE_CYCLE, "total_steps")].item():
                continue  # past total_steps torch raises; the angle would grow without bound
            got, exp = out[i, j].item(), ref[i, j].item()
            if kind in exact_kinds:
                ok = got == exp
            else:
                bound = LR_RTOL * abs(exp) + LR_ATOL_UNDERFLOW
                if kind in cosine_kinds:
                    # The cosine's amplitude: |base| + |its other end| (eta_min; OneCycleLR: the
                    # peak, its floor being smaller; the large-model schedules: base * min_lr_ratio;
                    # a sequence's pieces share its base).
                    base = desc[j, Col.BASE].item()
                    other = {Kind.COSINE: lambda: desc[j, S.col(kind, "eta_min")].item(),
                             Kind.COSINE_POWER: lambda: desc[j, S.col(kind, "eta_min")].item(),
                             Kind.COSINE_RESTARTS: lambda: desc[j, S.col(kind, "eta_min")].item(),
                             Kind.ONE_CYCLE: lambda: desc[j, S.col(kind, "peak")].item(),
                             Kind.WARMUP_COSINE: lambda: base * desc[j, S.col(kind, "min_lr_ratio")].item(),
                             Kind.WSD: lambda: base * desc[j, S.col(kind, "min_lr_ratio")].item(),
                             Kind.SEQUENTIAL: lambda: 0.0}[kind]()
                    bound += LR_COSINE_ATOL_PER_AMPLITUDE * (abs(base) + abs(other))
                ok = abs(got - exp) <= bound
                if exp != 0:
                    worst = max(worst, abs(got - exp) / abs(exp))
            if not ok:
                failures.append(
                    f"row {j} ({kind.name} {desc[j, Col.BASE:Col.P2].tolist()}), step {s}: kernel {got!r}, "
                    f"torch {exp!r}, rel {abs(got - exp) / max(abs(exp), 1e-300):.2e}"
                )
    if failures:
        raise AssertionError(f"{len(failures)} LR mismatches:\n" + "\n".join(failures[:20]))
    return f"{len(steps)} steps x {len(rows)} rows; worst relative difference {worst:.2e}"


# ------------------------------------------------------------------------------------------------
# Case: SGD trajectories
# ------------------------------------------------------------------------------------------------


def _option_combinations():
    """Every valid combination of torch.optim.SGD's options (nesterov needs momentum > 0 and
    dampening == 0, as torch enforces)."""
    combos = []
    for momentum in (0.0, 0.9):
        for dampening in (0.0, 0.1):
            for nesterov in (False, True):
                if nesterov and (momentum == 0 or dampening != 0):
                    continue
                for weight_decay in (0.0, 1e-2):
                    for maximize in (False, True):
                        combos.append((momentum, dampening, weight_decay, nesterov, maximize))
    return combos


def _schedule_rows(n_groups: int):
    """One schedule per group, cycling through ten kinds; boundaries fall inside the 20 steps."""
    from fused_lr import schedules as S

    makers = [
        lambda lr: S.constant_row(lr),
        lambda lr: S.step_row(lr, 5, 0.5),
        lambda lr: S.exponential_row(lr, 0.93),
        lambda lr: S.cosine_row(lr, 8, 1e-3),  # past T_max at 8, back up until 16
        lambda lr: S.table_row(lr, 3, 10),  # table[3..12], then stays at table[12]
        lambda lr: S.direct_row(lr, lr),  # p0 rewritten every step below
        lambda lr: S.multistep_row(lr, 0.5, 14, 3),  # milestones 4, 9, 9
        lambda lr: S.linear_row(lr, 0.2, 1.0, 6),
        lambda lr: S.warmup_cosine_row(lr, 3, 15, 0.1),
        lambda lr: S.wsd_row(lr, 2, 6, 8, 0.05, 2),
    ]
    rows = [makers[g % len(makers)](0.02 + 0.01 * (g % 7)) for g in range(n_groups)]
    table = [1.0, 1.0, 1.0] + [1.0 - 0.07 * i for i in range(10)] + [5.0] + [4.0, 9.0, 9.0]
    return rows, table


def _reference_step(p, g, buf, first, hyper, lr, compute_dtype):
    """The kernel's update in torch ops: separate (unfused) float32 / float64 operations in the
    kernel's order, state rounded once to storage. Returns the new (p, buf) in storage dtype;
    ``buf`` is None when momentum is 0."""
    momentum, dampening, weight_decay, nesterov, maximize = hyper[:5]
    # Python floats next to tensors are rounded to the tensor's dtype, as the kernel rounds its
    # float64 scalars to the compute type.
    pc, gc = p.to(compute_dtype), g.to(compute_dtype)
    if maximize:
        gc = -gc
    if weight_decay != 0:
        gc = gc + weight_decay * pc
    new_buf = None
    if momentum != 0:
        bc = gc.clone() if first else momentum * buf.to(compute_dtype) + (1.0 - dampening) * gc
        gc = gc + momentum * bc if nesterov else bc
        new_buf = bc.to(p.dtype)
    pc = pc - lr * gc
    return pc.to(p.dtype), new_buf


_SEEDS = {torch.float32: 1, torch.bfloat16: 2, torch.float64: 3, torch.float16: 4}


class _CountPlanBuilds:
    """Counts the engine's plan builds (wraps ``fused_lr.engine.plan.build_plan``)."""

    def __init__(self):
        from fused_lr.engine import plan as P

        self.builds = 0
        self._module, self._real = P, P.build_plan

    def __enter__(self):
        def counted(*args, **kwargs):
            self.builds += 1
            return self._real(*args, **kwargs)

        self._module.build_plan = counted
        return self

    def __exit__(self, *exc):
        self._module.build_plan = self._real


def _sgd_triton_call(params, grads, bufs, first, group_of, combos, lr, cache, flags, ticket):
    """``sgd_triton`` on the tensors ``params[i]`` of groups ``group_of[i]``: a tensor whose
    ``first[i]`` is set gets its first-step flag (its slot is its index in these lists)."""
    from fused_lr.functional.sgd import sgd_triton

    flags[: len(first)] = torch.tensor(first, dtype=torch.int8)
    momentum, dampening, weight_decay, nesterov, maximize = (list(c) for c in zip(*combos))
    sgd_triton(params, grads, bufs, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
               nesterov=nesterov, maximize=maximize, group_index=group_of, first_flags=flags,
               flag_slots=list(range(len(params))), ticket=ticket, cache=cache)


def _run_sgd(dtype: torch.dtype, n_steps: int, sizes, launch_config: dict | None) -> str:
    from fused_lr.kernels import schedule as K

    from fused_lr import engine
    from fused_lr import schedules as S

    gen = torch.Generator().manual_seed(_SEEDS[dtype])
    combos = _option_combinations()
    n_groups = len(combos)
    rows, table_list = _schedule_rows(n_groups)
    desc = torch.tensor(rows, dtype=torch.float64)
    table = torch.tensor(table_list, dtype=torch.float64)
    counter = torch.zeros(1, dtype=torch.int64)
    momentum_of = [c[0] for c in combos]
    nesterov_of = [c[3] for c in combos]

    # Tensors: group k gets one size from the list, rotating, and even groups a second one, so
    # every size meets several option combinations and schedule kinds. Tensor "late" has no grad
    # before step LATE (its first momentum step comes later than everyone else's); tensor "skip"
    # has no grad at step SKIP (a None grad mid-run).
    shapes, group_of = [], []
    for k in range(n_groups):
        for j in (k, k + 2) if k % 2 == 0 else (k,):
            shapes.append(sizes[j % len(sizes)])
            group_of.append(k)
    LATE, SKIP = 7, 11
    late_idx = next(i for i, g in enumerate(group_of) if momentum_of[g] != 0 and shapes[i] != ())
    skip_idx = next(i for i, g in enumerate(group_of) if nesterov_of[g])

    init = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    kern_p = [t.clone() for t in init]
    kern_buf: dict[int, torch.Tensor] = {}
    ref_p = [t.clone() for t in init]
    ref_buf: dict[int, torch.Tensor] = {}
    exact_p = [t.double() for t in init]
    exact_buf: dict[int, torch.Tensor] = {}
    stock_p = [t.clone().requires_grad_(True) for t in init]
    stock = torch.optim.SGD(
        [
            dict(
                params=[stock_p[i] for i in range(len(shapes)) if group_of[i] == k],
                lr=0.1,
                momentum=c[0],
                dampening=c[1],
                weight_decay=c[2],
                nesterov=c[3],
                maximize=c[4],
            )
            for k, c in enumerate(combos)
        ],
        foreach=False,
    )
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    cache = engine.PlanCache()
    flags, ticket = torch.zeros(len(shapes), dtype=torch.int8), torch.zeros(1, dtype=torch.int32)
    builds_when_unchanged = []
    max_abs: dict = {}
    prev_set = None

    ctx = engine.override_launch_config(**launch_config) if launch_config else _nullcontext()
    with ctx, _CountPlanBuilds() as plans:
        for step in range(n_steps):
            # Kind.DIRECT rows: the host (standing in for torch ops on the device) writes their lr.
            for k, row in enumerate(rows):
                if row[S.Col.KIND] == S.Kind.DIRECT:
                    desc[k, S.col(S.Kind.DIRECT, "lr")] = row[S.Col.BASE] / (1.0 + 0.3 * step)
            # Stock gets torch's LRs; the opmath reference gets the kernel's own float64 LRs (they
            # may differ from torch's by a few ulp, see LR_RTOL, which float64 storage would show).
            lrs = S.lr_at(counter, desc, table).tolist()
            kernel_lrs = torch.empty(1, n_groups, dtype=torch.float64)
            K.lr_at_kernel[(1, n_groups)](kernel_lrs, counter, desc, table, table.numel(), n_groups)
            kernel_lrs = kernel_lrs[0].tolist()
            has_grad = [not ((i == late_idx and step < LATE) or (i == skip_idx and step == SKIP)) for i in range(len(shapes))]
            grads = [
                torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) if h else None for s, h in zip(shapes, has_grad)
            ]

            # --- kernel ---
            idx = [i for i in range(len(shapes)) if has_grad[i]]
            firsts = []
            for i in idx:
                first = momentum_of[group_of[i]] != 0 and i not in kern_buf
                if first:
                    kern_buf[i] = torch.empty_like(kern_p[i])
                firsts.append(first)
            builds_before = plans.builds
            _sgd_triton_call(
                [kern_p[i] for i in idx],
                [grads[i] for i in idx],
                [kern_buf.get(i) for i in idx],
                firsts,
                [group_of[i] for i in idx],
                combos,
                engine.DeviceLR(desc, table, counter),
                cache,
                flags,
                ticket,
            )
            if prev_set == (tuple(idx), tuple(sorted(kern_buf))):
                builds_when_unchanged.append(plans.builds - builds_before)
            prev_set = (tuple(idx), tuple(sorted(kern_buf)))

            # --- references ---
            for i in idx:
                h = combos[group_of[i]]
                lr = kernel_lrs[group_of[i]]
                first = h[0] != 0 and i not in ref_buf
                ref_p[i], nb = _reference_step(ref_p[i], grads[i], ref_buf.get(i), first, h, lr, compute)
                exact_p[i], eb = _reference_step(exact_p[i], grads[i].double(), exact_buf.get(i), first, h, lr, torch.float64)
                if nb is not None:
                    ref_buf[i], exact_buf[i] = nb, eb
            for i, p in enumerate(stock_p):
                p.grad = grads[i].clone() if has_grad[i] else None
            for k, pg in enumerate(stock.param_groups):
                pg["lr"] = lrs[k]
            stock.step()

            _compare(dtype, step, shapes, group_of, combos, kern_p, kern_buf, ref_p, ref_buf, stock_p, stock, max_abs)
            counter += 1

    if any(builds_when_unchanged):
        raise AssertionError(f"plans rebuilt on steps whose parameter set did not change: {builds_when_unchanged}")
    if dtype == torch.bfloat16:
        _check_bf16_accuracy(shapes, kern_p, kern_buf, stock_p, stock, exact_p, exact_buf)
    n_el = sum(math.prod(s) for s in shapes)
    return f"{dtype}: {n_groups} groups, {len(shapes)} tensors, {n_el} elements, {n_steps} steps, {plans.builds} plan builds"


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _compare(dtype, step, shapes, group_of, combos, kern_p, kern_buf, ref_p, ref_buf, stock_p, stock, max_abs):
    """Kernel vs opmath reference (bitwise) and vs stock (STOCK_TOL, or the bf16 bound, which
    updates ``max_abs``: the largest magnitude each stock tensor has held so far)."""
    for i in range(len(shapes)):
        what = f"step {step}, tensor {i} {tuple(shapes[i])}, group {group_of[i]} {combos[group_of[i]]}"
        check_equal(kern_p[i], ref_p[i], f"param vs opmath reference, {what}")
        stock_buf = stock.state[stock_p[i]].get("momentum_buffer") if stock_p[i] in stock.state else None
        for key, t in ((("p", i), stock_p[i]), (("buf", i), stock_buf)):
            if t is not None:
                max_abs[key] = max(max_abs.get(key, 0.0), t.detach().double().abs().max().item())
        assert (i in kern_buf) == (i in ref_buf) == (stock_buf is not None), f"{what}: buffer presence differs"
        if i in kern_buf:
            check_equal(kern_buf[i], ref_buf[i], f"momentum buffer vs opmath reference, {what}")
        if dtype in STOCK_TOL:
            rtol, atol = STOCK_TOL[dtype]
            check_close(kern_p[i], stock_p[i], rtol=rtol, atol=atol, what=f"param vs stock SGD, {what}")
            if i in kern_buf:
                check_close(kern_buf[i], stock_buf, rtol=rtol, atol=atol, what=f"momentum buffer vs stock SGD, {what}")
        elif dtype == torch.bfloat16:
            check_close(
                kern_p[i],
                stock_p[i],
                rtol=0.0,
                atol=BF16_STOCK_FRACTION_OF_MAX * max_abs[("p", i)],
                what=f"bf16 param vs stock SGD, {what}",
            )
            if i in kern_buf:
                check_close(
                    kern_buf[i],
                    stock_buf,
                    rtol=0.0,
                    atol=BF16_STOCK_FRACTION_OF_MAX * max_abs[("buf", i)],
                    what=f"bf16 momentum buffer vs stock SGD, {what}",
                )


def _check_bf16_accuracy(shapes, kern_p, kern_buf, stock_p, stock, exact_p, exact_buf):
    """The kernel (one rounding per step) is at least as accurate as stock's bf16 for-loop (several)
    against the exact float64 trajectory, in RMS over all elements of all tensors."""

    def rms(pairs):
        sq = sum(float(((a.detach().double() - b) ** 2).sum()) for a, b in pairs)
        n = sum(b.numel() for _, b in pairs)
        return math.sqrt(sq / max(n, 1))

    k_p = rms([(kern_p[i], exact_p[i]) for i in range(len(shapes))])
    s_p = rms([(stock_p[i], exact_p[i]) for i in range(len(shapes))])
    k_b = rms([(kern_buf[i], exact_buf[i]) for i in kern_buf])
    s_b = rms([(stock.state[stock_p[i]]["momentum_buffer"], exact_buf[i]) for i in kern_buf])
    if not (k_p <= s_p and k_b <= s_b):
        raise AssertionError(
            f"bf16 kernel less accurate than stock vs exact float64: params RMS {k_p:.3e} (stock {s_p:.3e}), "
            f"buffers RMS {k_b:.3e} (stock {s_b:.3e})"
        )


# Sizes: 0-dim, 1, odd, just over 8 blocks of 128, and 2-D; 1025 and 1320 exceed the test chunk
# (2 blocks of 256 = 512 elements), so tensors span several programs.
SMALL_SIZES = [(), (1,), (127,), (1025,), (33, 40)]
# A test-only launch configuration: the interpreter runs each program in Python, so small blocks
# keep the cases quick. Production values are covered by case_production_config.
SMALL_CONFIG = dict(BLOCK_SIZE=256, CHUNK_BLOCKS=2)


def case_sgd_fp32() -> str:
    return _run_sgd(torch.float32, 20, SMALL_SIZES, SMALL_CONFIG)


def case_sgd_bf16() -> str:
    return _run_sgd(torch.bfloat16, 20, SMALL_SIZES, SMALL_CONFIG)


def case_sgd_fp64_fp16() -> str:
    a = _run_sgd(torch.float64, 8, SMALL_SIZES, SMALL_CONFIG)
    b = _run_sgd(torch.float16, 8, SMALL_SIZES, SMALL_CONFIG)
    return a + "; " + b


# Gradient-norm kernels (fused clipping). Partials: each program sums its chunk's squares per lane
# (CHUNK_BLOCKS terms each, in the accumulation type) and then across BLOCK_SIZE lanes by a tree:
# relative error <= (CHUNK_BLOCKS + log2(BLOCK_SIZE) + 1) * u for sums of non-negative terms,
# u = 2**-24 for the float32 accumulation (16-bit and 32-bit grads): ~12 * 6e-8 = 7e-7 here ->
# rtol 2e-6; float64 accumulation -> 1e-14. Max |g| is exact. The finalize kernel reduces the
# float64 partials the same way (one extra rounding per level, float64): its norm is compared to
# a float64 reference rounded to the norm dtype, within 1 ulp of that dtype; the coefficient is
# then checked *exactly* against torch's formula applied to the kernel's own norm (same IEEE ops).
NORM_PARTIAL_RTOL = {torch.float16: 2e-6, torch.bfloat16: 2e-6, torch.float32: 2e-6, torch.float64: 1e-14}


def case_grad_norm() -> str:
    from fused_lr.kernels import grad_norm as N
    from fused_lr.kernels import multi_tensor as K

    from fused_lr.engine.runtime import KERNEL_DTYPES, triton_dtype

    dtype_map = {d: triton_dtype(d) for d in KERNEL_DTYPES}
    block, chunk_blocks = 128, 2
    chunk = block * chunk_blocks
    gen = torch.Generator().manual_seed(7)
    sizes = [1, 255, 256, 700, 1031]
    checked = 0
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        grads = [torch.randn(n, generator=gen, dtype=torch.float64).mul(3).to(dtype) for n in sizes]
        grads[3][300] = float("nan")  # chunk 1 of tensor 3
        grads[4][5] = -float("inf")  # chunk 0 of tensor 4
        chunks = [(k, st, min(st + chunk, g.numel())) for k, g in enumerate(grads) for st in range(0, g.numel(), chunk)]
        addrs = torch.tensor([g.data_ptr() for g in grads], dtype=torch.int64)
        numels = torch.tensor([g.numel() for g in grads], dtype=torch.int64)
        table = torch.tensor(chunks, dtype=torch.int64).reshape(-1, 3)
        for norm_inf in (False, True):
            offset = 3
            partials = torch.full((offset + len(chunks),), -1.0, dtype=torch.float64)
            N.grad_norm_partials_kernel[(len(chunks),)](
                addrs,
                numels,
                table,
                partials,
                offset,
                DTYPE=dtype_map[dtype],
                COMPUTE_DTYPE=K.compute_dtype(dtype_map[dtype]),
                ALIGNED=False,
                NORM_INF=norm_inf,
                BLOCK_SIZE=block,
                CHUNK_BLOCKS=chunk_blocks,
            )
            if partials[:offset].tolist() != [-1.0] * offset:
                raise AssertionError("partials written outside this launch's slots")
            for i, (k, st, _) in enumerate(chunks):
                x = grads[k][st : st + chunk].double()
                want = x.abs().max() if norm_inf else x.square().sum()
                got = partials[offset + i]
                if want.isnan() or got.isnan():
                    if not (want.isnan() and got.isnan()):
                        raise AssertionError(f"{dtype} inf={norm_inf} chunk {i}: got {got.item()}, want {want.item()}")
                elif want.isinf() or got.isinf():
                    if got.item() != want.item():
                        raise AssertionError(f"{dtype} inf={norm_inf} chunk {i}: got {got.item()}, want {want.item()}")
                elif norm_inf and got.item() != want.item():
                    raise AssertionError(f"{dtype} inf-norm chunk {i}: got {got.item()!r}, want {want.item()!r}")
                elif abs(got.item() - want.item()) > NORM_PARTIAL_RTOL[dtype] * want.item():
                    raise AssertionError(f"{dtype} chunk {i}: got {got.item()!r}, want {want.item()!r}")
                checked += 1

    # Finalize: more partials than one FINALIZE_BLOCK, an extra partial, a loss scale, both clamp sides.
    for norm_dtype in (torch.float32, torch.float64):
        for norm_inf in (False, True):
            for max_norm, poison in ((0.5, None), (1e9, None), (1.0, "nan"), (1.0, "inf")):
                n = 2 * N.FINALIZE_BLOCK + 37
                partials = torch.rand(n, generator=gen, dtype=torch.float64) * 10
                extra = torch.tensor([123.0 if norm_inf else 5.0], dtype=torch.float64)
                if poison:
                    partials[N.FINALIZE_BLOCK + 11] = float(poison)
                scale = torch.tensor([4.0])
                norm_out = torch.zeros(1, dtype=norm_dtype)
                coef = torch.zeros(1, dtype=torch.float64)
                N.grad_norm_finalize_kernel[(1,)](
                    partials,
                    n,
                    extra,
                    scale,
                    torch.tensor([max_norm], dtype=torch.float64),
                    norm_out,
                    coef,
                    NORM_INF=norm_inf,
                    NORM_DTYPE=dtype_map[norm_dtype],
                    BLOCK=N.FINALIZE_BLOCK,
                )
                ref64 = torch.maximum(partials.max(), extra[0]) if norm_inf else (partials.sum() + extra[0]).sqrt()
                want = (ref64.to(norm_dtype) / scale.to(norm_dtype)).reshape(())
                got = norm_out.reshape(())
                what = f"finalize {norm_dtype} inf={norm_inf} max_norm={max_norm} poison={poison}"
                if poison:
                    if not (got.isnan() if poison == "nan" else got.isinf()):
                        raise AssertionError(f"{what}: norm {got.item()}")
                elif abs(got.item() - want.item()) > torch.finfo(norm_dtype).eps * want.item():
                    raise AssertionError(f"{what}: norm {got.item()!r} vs {want.item()!r}")
                want_coef = torch.clamp(max_norm / (got + 1e-6), max=1.0)
                if not (torch.equal(coef.reshape(()).to(norm_dtype), want_coef) or (want_coef.isnan() and coef.isnan().all())):
                    raise AssertionError(f"{what}: coef {coef.item()!r} vs {want_coef.item()!r}")
                if not coef.isnan().all() and coef.to(norm_dtype).reshape(()).item() != coef.item():
                    raise AssertionError(f"{what}: coef not exactly representable in the norm dtype")
                checked += 1
    return f"{checked} partial and finalize checks"


def case_production_config() -> str:
    """The production BLOCK_SIZE / CHUNK_BLOCKS on a tensor spanning two chunks and a partial block,
    next to a tensor whose address is not 16-byte aligned (the ALIGNED=False specialization)."""
    from fused_lr.kernels import multi_tensor as K

    from fused_lr import engine
    from fused_lr import schedules as S
    from fused_lr.engine import runtime as R

    chunk = R.BLOCK_SIZE * R.CHUNK_BLOCKS
    big_n = 2 * chunk + R.BLOCK_SIZE + 3
    messages = []
    for dtype in (torch.float32, torch.bfloat16):
        gen = torch.Generator().manual_seed(7)
        big = torch.randn(big_n, generator=gen).to(dtype)
        storage = torch.randn(3001, generator=gen).to(dtype)
        odd = storage[1:]  # data_ptr() % 16 != 0
        assert odd.data_ptr() % K.ALIGNMENT != 0
        params = [big, odd]
        ref = [t.clone() for t in params]
        bufs = [torch.empty_like(t) for t in params]
        ref_bufs = [None, None]
        hyper = [(0.9, 0.0, 1e-2, True, False)]
        desc = torch.tensor([S.cosine_row(0.1, 2, 1e-3)], dtype=torch.float64)
        table = torch.ones(1, dtype=torch.float64)
        counter = torch.zeros(1, dtype=torch.int64)
        cache = engine.PlanCache()
        flags, ticket = torch.zeros(2, dtype=torch.int8), torch.zeros(1, dtype=torch.int32)
        for step in range(2):
            grads = [torch.randn(t.shape, generator=gen).to(dtype) for t in params]
            lr = S.lr_at(counter, desc, table).item()
            _sgd_triton_call(
                params, grads, bufs, [step == 0] * 2, [0, 0], hyper, engine.DeviceLR(desc, table, counter), cache, flags, ticket
            )
            for i in range(2):
                ref[i], ref_bufs[i] = _reference_step(ref[i], grads[i], ref_bufs[i], step == 0, hyper[0], lr, torch.float32)
                check_equal(params[i], ref[i], f"{dtype} production config, step {step}, param {i}")
                check_equal(bufs[i], ref_bufs[i], f"{dtype} production config, step {step}, buffer {i}")
            counter += 1
        launch = cache._plans[next(iter(cache._plans))].launches[0]
        assert launch.n_chunks == 3 + 1, f"expected 3 chunks for the big tensor and 1 for the other, got {launch.n_chunks}"
        assert not launch.static_aligned, "the misaligned view should select ALIGNED=False"
        messages.append(f"{dtype}: {big_n} + {odd.numel()} elements, {launch.n_chunks} programs")
    return "; ".join(messages)


def case_engine_state_lists() -> str:
    """The engine with another optimizer's kernel: tests/_toy_kernel.py, two state lists and one
    hyper column, two groups (one without state), float32 and float64 tensors (two launches, the
    last one writing back), five steps with the schedule deferred by one step each time, a step AMP
    skips (on which a late tensor takes its first step: its flag must survive the skip) and one
    with a loss scale. Parameters and both state lists must equal the toy's update written in torch
    ops in the same order and precision; the counter and the LRs written back must be the step's."""
    import _toy_kernel as T

    from fused_lr import engine
    from fused_lr import schedules as S

    gen = torch.Generator().manual_seed(11)
    desc = torch.tensor([S.step_row(0.1, 2, 0.5), S.cosine_row(0.05, 4, 1e-3)], dtype=torch.float64)
    table, counter = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.int64)
    lr_buf = torch.zeros(2, dtype=torch.float64)
    scales = [0.5, 0.0]  # group 1 keeps no state
    shapes = [
        ((), torch.float32, 0),
        ((5,), torch.float32, 0),
        ((300,), torch.float32, 0),
        ((7,), torch.float32, 1),
        ((130,), torch.float64, 0),
        ((33,), torch.float32, 0),
    ]
    LATE, SKIP, SCALED = 5, 2, 3  # tensor LATE first steps at SKIP; SCALED divides by a loss scale
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(d) for s, d, _ in shapes]
    refs = [p.clone() for p in params]
    states: dict[int, tuple] = {}  # tensor index -> (sum, max)
    ref_states: dict[int, tuple] = {}
    flags, ticket, cache = torch.zeros(len(shapes), dtype=torch.int8), torch.zeros(1, dtype=torch.int32), engine.PlanCache()
    with engine.override_launch_config(BLOCK_SIZE=128, CHUNK_BLOCKS=2):
        for t in range(5):
            idx = [i for i in range(len(shapes)) if i != LATE or t >= SKIP]
            grads = {i: torch.randn(shapes[i][0], generator=gen, dtype=torch.float64).to(shapes[i][1]) for i in idx}
            for i in idx:
                if scales[shapes[i][2]] != 0 and i not in states:
                    states[i] = (torch.empty_like(params[i]), torch.empty_like(params[i]))
                    flags[i] = 1
            found_inf = torch.ones(1) if t == SKIP else None
            grad_scale = torch.full((1,), 4.0) if t in (SKIP, SCALED) else None
            before = ([p.clone() for p in params], {i: tuple(x.clone() for x in st) for i, st in states.items()})
            # NaN: every LR must be stored by this step's final launch, group 1's (no tensor in
            # that float64 launch) by its finishing program.
            lr_buf.fill_(float("nan"))
            engine.multi_tensor_update(
                T.SPEC,
                [params[i] for i in idx],
                [grads[i] for i in idx],
                [[states[i][k] if i in states else None for i in idx] for k in range(2)],
                [shapes[i][2] for i in idx],
                [(sc,) for sc in scales],
                engine.DeviceLR(desc, table, counter, advance=1, lr_out=lr_buf),
                ticket=ticket,
                first_flags=flags,
                flag_slots=idx,
                cache=cache,
                grad_scale=grad_scale,
                found_inf=found_inf,
            )
            if int(counter) != t + 1:
                raise AssertionError(f"step {t}: the counter is {int(counter)}, want {t + 1}")
            want_lrs = S.lr_at(counter, desc, table).tolist()
            if not all(abs(a - b) <= 1e-12 * abs(b) for a, b in zip(lr_buf.tolist(), want_lrs)):  # NaN fails
                raise AssertionError(f"step {t}: LRs written back {lr_buf.tolist()}, want {want_lrs}")
            if t == SKIP:
                if not all(torch.equal(a, b) for a, b in zip(before[0], params)) or any(
                    not torch.equal(a, b) for i, st in before[1].items() for a, b in zip(st, states[i]) if i != LATE
                ):
                    raise AssertionError("a step AMP skipped changed a parameter or a state tensor")
                if int(flags[LATE]) != 1:
                    raise AssertionError("a first step AMP skipped cleared its flag")
                continue
            for i in idx:
                d = torch.float64 if shapes[i][1] == torch.float64 else torch.float32
                lr = torch.tensor(lr_buf[shapes[i][2]].item(), dtype=torch.float64).to(d)
                scale = torch.tensor(scales[shapes[i][2]], dtype=torch.float64).to(d)
                g = grads[i].to(d) / 4.0 if grad_scale is not None else grads[i].to(d)
                p = refs[i].to(d)
                if scale != 0:
                    if i in ref_states:
                        s, m = (x.to(d) for x in ref_states[i])
                        s, m = s + g, torch.maximum(m, g.abs())
                    else:
                        s, m = g, g.abs()
                    ref_states[i] = (s.to(shapes[i][1]), m.to(shapes[i][1]))
                    p = p - lr * (scale * s)
                else:
                    p = p - lr * g
                refs[i] = p.to(shapes[i][1])
                check_equal(params[i], refs[i], f"toy kernel step {t}, tensor {i}: param")
                for k, name in enumerate(("sum", "max")):
                    if i in ref_states:
                        check_equal(states[i][k], ref_states[i][k], f"toy kernel step {t}, tensor {i}: {name}")
            if int(flags.sum()) != 0:
                raise AssertionError(f"step {t}: first-step flags not cleared: {flags.tolist()}")
    return f"{len(shapes)} tensors, 2 groups, 2 dtypes, 2 state lists, 5 steps (one skipped, one scaled)"


def _bits_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Bitwise equality of the integer views, except that a NaN only has to meet a NaN (NaN bits
    are not portable: torch's vectorized CPU conversions, numpy and the GPU each pick their own)."""
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
    a, e = actual.view(view), expected.view(view)
    nan_a, nan_e = actual.isnan(), expected.isnan()
    bad = ((a != e) & ~(nan_a & nan_e)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise AssertionError(f"{what}: {bad.numel()} of {a.numel()} differ; first at {i}: "
                             f"{actual[i].item()!r} (0x{int(a[i]) & 0xFFFFFFFF:x}) vs "
                             f"{expected[i].item()!r} (0x{int(e[i]) & 0xFFFFFFFF:x})")


def case_kernel_shape() -> str:
    """Kernel-shape pieces of kernels/multi_tensor.py, each against torch:

    * bfloat16: ``round_to_bf16`` (the software rounding under the interpreter) and
      ``round_to_bf16_software`` give torch's ``float32 -> bfloat16`` bits (a NaN for a NaN) on every
      upper half-word with the lower ones that decide the rounding (0x0000, 0x7FFF, 0x8000 both
      parities, 0x8001, 0xFFFF: ties, carries into the exponent, overflow to inf, subnormals,
      NaNs) and on 2**20 random bit patterns;
    * unscaling: ``amp_reciprocal`` + ``unscale`` for power-of-two scales (the reciprocal branch,
      edge exponents included) and other scales (the division branch), float32 and float64, give
      the bits of torch's ``(g / scale) * clip`` (a NaN for a NaN), on normal, subnormal, huge, zero, inf and NaN
      gradients;
    * chunking: a launch with smaller, balanced chunks (``runtime.chunk_blocks`` with a GPU's SM
      count) updates bit for bit as with one chunk per tensor, and writes back the same LRs."""
    import _shape_kernels as SK
    import triton

    from fused_lr import engine
    from fused_lr import schedules as S
    from fused_lr.engine import runtime as R

    messages = []

    # --- bfloat16 rounding ---
    upper = torch.arange(1 << 16, dtype=torch.int64) << 16
    lows = torch.tensor([0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=torch.int64)
    edge = (upper[:, None] | lows[None, :]).flatten()
    rand = torch.randint(0, 1 << 32, (1 << 20,), generator=torch.Generator().manual_seed(5), dtype=torch.int64)
    bits = torch.cat([edge, rand])
    x = bits.to(torch.int32).view(torch.float32)  # int64 -> int32 wraps: the low 32 bits
    hw, sw = torch.empty(x.numel(), dtype=torch.bfloat16), torch.empty(x.numel(), dtype=torch.bfloat16)
    block = 1 << 14
    SK.bf16_kernel[(triton.cdiv(x.numel(), block),)](x, hw, sw, x.numel(), BLOCK=block)
    want = x.to(torch.bfloat16)
    _bits_equal(sw, want, "round_to_bf16_software vs torch's float32 -> bfloat16")
    _bits_equal(hw, want, "round_to_bf16 (interpreted) vs torch's float32 -> bfloat16")
    messages.append(f"bf16: {x.numel()} inputs ({int(x.isnan().sum())} NaN) equal torch's bits")

    # --- unscaling: the reciprocal and division branches ---
    gen = torch.Generator().manual_seed(6)
    f32 = torch.finfo(torch.float32)
    powers = [2.0**k for k in (-126, -64, -1, 0, 1, 16, 24, 100, 127)]
    others = [2.0**-127, 2.0**-149, 3.0, 0.1, 65535.0, 1.5 * 2.0**16, float(f32.max), 0.0, float("inf"), float("nan")]
    n_checked = 0
    for dtype in (torch.float32, torch.float64):
        info = torch.finfo(dtype)
        g = torch.cat([
            torch.randn(4000, generator=gen, dtype=torch.float64).mul(2.0 ** torch.randint(-40, 40, (4000,), generator=gen)),
            torch.tensor([0.0, -0.0, info.tiny, -info.tiny, info.tiny / 8, info.max, -info.max, float(f32.max),
                          float(f32.tiny), float("inf"), -float("inf"), float("nan")], dtype=torch.float64),
        ]).to(dtype)
        block = triton.next_power_of_2(g.numel())
        for scale_value in powers + others:
            scale = torch.tensor([scale_value], dtype=torch.float32)
            for clip_value in (1.0, 0.37):
                clip = torch.tensor([clip_value], dtype=torch.float64)
                out, exact = torch.empty_like(g), torch.zeros(1, dtype=torch.int8)
                SK.unscale_kernel[(1,)](g, scale, clip, out, exact, g.numel(), COMPUTE_DTYPE=R.triton_dtype(dtype),
                                     BLOCK=block)
                want_exact = scale_value in powers
                if bool(exact) != want_exact:
                    raise AssertionError(f"amp_reciprocal(scale={scale_value!r}): exact={bool(exact)}, want {want_exact}")
                want = (g / scale.to(dtype)) * clip.to(dtype)
                _bits_equal(out, want, f"unscale {dtype}, scale {scale_value!r}, clip {clip_value} "
                                       f"({'reciprocal' if want_exact else 'division'} branch) vs torch's division")
                n_checked += 1
    messages.append(f"unscale: {n_checked} (dtype, scale, clip) cases, both branches, equal torch's division")

    # --- chunk size from the SM count: smaller, balanced chunks change no bit ---
    sizes = [1000, 300, 1, 2048]
    hyper = [(0.9, 0.0, 1e-2, False, False), (0.0, 0.0, 0.0, False, False)]
    group_of = [0, 1, 0, 1]
    desc = torch.tensor([S.cosine_row(0.1, 5, 1e-3), S.step_row(0.05, 2, 0.5)], dtype=torch.float64)
    table = torch.ones(1, dtype=torch.float64)
    results = {}
    real_sm_count = R.sm_count
    config = dict(BLOCK_SIZE=128, CHUNK_BLOCKS=8, MIN_CHUNK_BLOCKS=2, PROGRAMS_PER_SM=4)
    for sms in (None, 4):
        gen = torch.Generator().manual_seed(8)
        params = [torch.randn(n, generator=gen) for n in sizes]
        bufs = [torch.empty_like(p) for p in params]
        counter, lr_out = torch.zeros(1, dtype=torch.int64), torch.zeros(2, dtype=torch.float64)
        cache = engine.PlanCache()
        flags, ticket = torch.zeros(len(sizes), dtype=torch.int8), torch.zeros(1, dtype=torch.int32)
        R.sm_count = lambda device, sms=sms: sms
        try:
            with engine.override_launch_config(**config):
                for step in range(3):
                    grads = [torch.randn(n, generator=gen) for n in sizes]
                    lr_out.fill_(float("nan"))
                    _sgd_triton_call(params, grads, bufs, [step == 0] * len(sizes), group_of, hyper,
                                     engine.DeviceLR(desc, table, counter, advance=1, lr_out=lr_out), cache, flags, ticket)
        finally:
            R.sm_count = real_sm_count
        launch = cache._plans[next(iter(cache._plans))].launches[0]
        rows = launch.chunks.tolist()
        covered = [[] for _ in sizes]
        for k, start, end in rows:
            covered[k].append((start, end))
            if start % config["BLOCK_SIZE"] or not 0 < end - start <= config["BLOCK_SIZE"] * launch.chunk_blocks:
                raise AssertionError(f"chunk {(k, start, end)}: not block-aligned or over {launch.chunk_blocks} blocks")
        for k, spans in enumerate(covered):
            edges = [0] + [e for _, e in spans]
            blocks = -(-sizes[k] // config["BLOCK_SIZE"])
            if [s for s, _ in spans] != edges[:-1] or edges[-1] != sizes[k] or len(spans) != -(-blocks // launch.chunk_blocks):
                raise AssertionError(f"tensor {k}: chunks {spans} do not tile [0, {sizes[k]}) in the fewest chunks")
        want_lr = S.lr_at(counter, desc, table)
        if not torch.equal(lr_out, want_lr):
            raise AssertionError(f"sms={sms}: LRs written back {lr_out.tolist()}, want {want_lr.tolist()}")
        results[sms] = (params, bufs, lr_out, launch.chunk_blocks, len(rows))
    (p0, b0, l0, cb0, n0), (p1, b1, l1, cb1, n1) = results[None], results[4]
    if (cb0, n0) != (8, 1 + 1 + 1 + 2) or (cb1, n1) != (2, 4 + 2 + 1 + 8):
        raise AssertionError(f"chunking: (chunk blocks, programs) {(cb0, n0)} without SMs, {(cb1, n1)} with 4 SMs")
    for i in range(len(sizes)):
        check_equal(p1[i], p0[i], f"param {i}: smaller chunks vs one chunk per tensor")
        if hyper[group_of[i]][0] != 0:
            check_equal(b1[i], b0[i], f"buffer {i}: smaller chunks vs one chunk per tensor")
    check_equal(l1, l0, "LRs written back: smaller chunks vs one chunk per tensor")
    messages.append(f"chunks: {n0} programs of <= {cb0} blocks and {n1} of <= {cb1} blocks update the same bits")
    return "; ".join(messages)


CASES: dict[str, Callable[[], str]] = {
    "lr_at": case_lr_at,
    "sgd_fp32": case_sgd_fp32,
    "sgd_bf16": case_sgd_bf16,
    "sgd_fp64_fp16": case_sgd_fp64_fp16,
    "production_config": case_production_config,
    "grad_norm": case_grad_norm,
    "engine_state_lists": case_engine_state_lists,
    "kernel_shape": case_kernel_shape,
}


def main(argv: list[str]) -> int:
    out_path, names = argv[0], argv[1:]
    results = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            message = CASES[name]()
            results[name] = dict(ok=True, message=message)
        except Exception:  # noqa: BLE001 - reported to the parent with its traceback
            results[name] = dict(ok=False, message=traceback.format_exc())
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['seconds']} s", flush=True)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

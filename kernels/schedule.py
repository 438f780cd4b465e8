"""The learning rate at step ``t`` as a Triton device function: ``lr_at(step, desc, table, group)``.

This is the Triton twin of ``fused_lr.schedules.lr_at`` (the torch-op reference); the formulas, the
row layout of the description and the kind codes are documented there and repeated here only as
far as the code needs them. The update kernel calls ``lr_at`` once per program, so everything is
float64 scalar math: its cost is negligible next to the memory traffic of the update.

Row layout (``desc[r]``, float64, ``DESC_WIDTH`` columns):
``kind, base_lr, p0, p1, p2, p3, p4, start, end, owner, edit_from, edit_to, edit_a, edit_b``. A
row is evaluated at the local step ``t - start`` (``start`` is 0 for a group's own row); a
group's value is then replaced by ``edit_a + edit_b * (lr - edit_a)`` (``edit_a`` when
``edit_b == 0``) for ``edit_from <= t < edit_to``. ``KIND_SEQUENTIAL`` (p0 = number of pieces,
p1 = first piece row) first moves to its active piece: the last of its piece rows whose ``start``
is ``<= t`` (the pieces' starts ascend).

Formulas (``t`` = the int64 step counter; ``warmup`` = ``base_lr * t / p0`` while ``p0 > 0`` and
``t < p0``, taking precedence in the last three kinds)::

    KIND_CONSTANT     base_lr
    KIND_STEP         base_lr * p1 ** floor(t / max(int(p0), 1))          (gamma = p1)
    KIND_EXPONENTIAL  base_lr * p0 ** t                                   (gamma = p0)
    KIND_COSINE       p1 + (base_lr - p1) * (1 + cos(pi * (t mod 2 T) / T)) / 2
                      with T = p0 if p0 > 0 else 1, eta_min = p1
    KIND_TABLE        base_lr * table[clamp(int(p0) + min(max(t, 0), max(int(p1), 1) - 1))]
    KIND_DIRECT       p0
    KIND_MULTISTEP    base_lr * p0 ** #{j in [p1, p1 + p2) : table[j] <= t}
    KIND_CONSTANT_FACTOR  base_lr * p0 if t < p1 else base_lr
    KIND_LINEAR       base_lr * (p0 + (p1 - p0) * min(T, t) / T),  T = p2 if p2 > 0 else 1
    KIND_POLYNOMIAL   base_lr * (1 - min(T, t) / T) ** p1,          T = p0 if p0 > 0 else 1
    KIND_WARMUP_COSINE  warmup; t >= p1: floor; else floor + (base_lr - floor) *
                      (1 + cos(pi * clamp((t - p0) / S, 0, 1))) / 2,  floor = base_lr * p2,
                      S = p1 - p0 if p1 > p0 else 1
    KIND_WSD          warmup; t < p1: base_lr; else with q = clamp((t - p1) / D, 0, 1)
                      (q = 1 when p2 <= 0), D = p2 if p2 > 0 else 1, floor = base_lr * p3:
                      p4 == 0: base_lr - (base_lr - floor) * q;  p4 == 1: the cosine of
                      KIND_WARMUP_COSINE with q;  else: base_lr - (base_lr - floor) * sqrt(q)
    KIND_INVERSE_SQRT warmup; else base_lr * sqrt(W / max(t, 1)),  W = p0 if p0 > 0 else 1
    KIND_COSINE_RESTARTS  e = t + p3; T_mult = p1 > 1: walk the cycles (start += T_i,
                      T_i *= T_mult: exact, at most log_{T_mult}(e / T_0) + 1 iterations) to the
                      one holding e; T_mult = 1: T_cur = e mod T_0 (exact); then the half cosine
                      from base_lr to eta_min = p2 at T_cur / T_i
    KIND_CYCLIC       c = floor(1 + t / S), x = 1 + t / S - c, S = p1, r = p2,
                      f = x / r if x <= r else (x - 1) / (r - 1);
                      base_lr + (p0 - base_lr) * f * a with a = 1 (p3 == 0), 1 / 2 ** (c - 1)
                      (p3 == 1), p4 ** t (p3 == 2)
    KIND_ONE_CYCLE    torch's phases with X = p1 (= float(pct_start * total_steps)), T = p0:
                      ends X - 1, then (three-phase, p4 >= 2) 2 X - 2, then T - 1; in the phase
                      from a to b, q = (t - a) / (b - a), anneal start -> end: linear (p4 odd)
                      (end - start) * q + start, else end + (start - end) / 2 * (cos(pi q) + 1);
                      values: base_lr -> p2 -> p3 (two phases), base_lr -> p2 -> base_lr -> p3
    KIND_PRODUCT      base_lr * prod of the p0 factor rows from row p1 (ChainedScheduler)
    KIND_COSINE_POWER p1 + (base_lr - p1) * ((1 + cos(pi * q)) / 2) ** p2, q = min(t, T) / T,
                      T = p0 if p0 > 0 else 1 (optax's cosine decay with an exponent)

How each piece stays exact, or within a few ulp, on both the GPU and Triton's CPU interpreter:

* Integer powers (STEP, EXPONENTIAL) use binary exponentiation: at most 2 * 64 correctly
  rounded float64 multiplications, so the relative error is below ~130 ulp (3e-14) even at
  ``t = 2**63 - 1`` and below 9e-15 at ``t = 1e12``, against a correctly rounded ``pow``. No
  transcendental is involved, so no libdevice accuracy question arises.
* ``t mod 2T`` must be exact for giant step counts (torch's ``remainder`` of floats is). Triton's
  ``%`` on float64 compiles for NVIDIA to ``x - trunc(x / y) * y``, which is off by one period
  when ``x / y`` rounds up to an integer, so ``_fmod_floor`` computes the quotient, then corrects
  it with exact fused multiply-adds (the remainder of two floats is always representable).
* ``cos`` of a float64 compiles to libdevice's ``__nv_cos`` (max error 2 ulp, CUDA's documented
  bound) and runs as numpy's ``cos`` under the interpreter.
* Real powers (KIND_POLYNOMIAL with a non-integral power) use ``exp2(p * log2(x))`` in float64
  (libdevice ``__nv_exp2`` / ``__nv_log2`` on the GPU, numpy under the interpreter): relative
  error ~ (|p * log2(x)| + 2) ulp, below 1e-14 for any LR above 1e-300. Integral powers (torch's
  default power=1.0) take the exact squaring path.
* ``sqrt`` of a float64 (WSD's 1-sqrt shape, INVERSE_SQRT) is IEEE ``sqrt.rn.f64`` on the GPU
  (checked in the AOT test) and numpy's correctly rounded ``sqrt`` under the interpreter.
* Python float literals next to float64 operands stay float64 (``math.pi`` is not rounded to
  float32); checked by the interpreter test and visible in the PTX as ``0d400921FB54442D18``.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "DESC_WIDTH",
    "KIND_CONSTANT",
    "KIND_STEP",
    "KIND_EXPONENTIAL",
    "KIND_COSINE",
    "KIND_TABLE",
    "KIND_DIRECT",
    "KIND_MULTISTEP",
    "KIND_CONSTANT_FACTOR",
    "KIND_LINEAR",
    "KIND_POLYNOMIAL",
    "KIND_WARMUP_COSINE",
    "KIND_WSD",
    "KIND_INVERSE_SQRT",
    "KIND_COSINE_RESTARTS",
    "KIND_SEQUENTIAL",
    "KIND_CYCLIC",
    "KIND_ONE_CYCLE",
    "KIND_PRODUCT",
    "KIND_COSINE_POWER",
    "lr_at",
    "lr_at_kernel",
]

# Duplicated from fused_lr.schedules so that kernel files never import the host package;
# tests/test_triton_interpreter.py checks that both sets of values agree.
# Columns (fused_lr.schedules.Col); a kind's parameters P0..P4 are named per kind in
# fused_lr.schedules.PARAMS (the comments at each use below repeat the names).
DESC_WIDTH = tl.constexpr(14)
COL_BASE = tl.constexpr(1)
COL_P0 = tl.constexpr(2)
COL_P1 = tl.constexpr(3)
COL_P2 = tl.constexpr(4)
COL_P3 = tl.constexpr(5)
COL_P4 = tl.constexpr(6)
COL_START = tl.constexpr(7)
COL_EDIT_FROM = tl.constexpr(10)
COL_EDIT_TO = tl.constexpr(11)
COL_EDIT_A = tl.constexpr(12)
COL_EDIT_B = tl.constexpr(13)
KIND_CONSTANT = tl.constexpr(0)
KIND_STEP = tl.constexpr(1)
KIND_EXPONENTIAL = tl.constexpr(2)
KIND_COSINE = tl.constexpr(3)
KIND_TABLE = tl.constexpr(4)
KIND_DIRECT = tl.constexpr(5)
KIND_MULTISTEP = tl.constexpr(6)
KIND_CONSTANT_FACTOR = tl.constexpr(7)
KIND_LINEAR = tl.constexpr(8)
KIND_POLYNOMIAL = tl.constexpr(9)
KIND_WARMUP_COSINE = tl.constexpr(10)
KIND_WSD = tl.constexpr(11)
KIND_INVERSE_SQRT = tl.constexpr(12)
KIND_COSINE_RESTARTS = tl.constexpr(13)
KIND_SEQUENTIAL = tl.constexpr(14)
KIND_CYCLIC = tl.constexpr(15)
KIND_ONE_CYCLE = tl.constexpr(16)
KIND_PRODUCT = tl.constexpr(17)
KIND_COSINE_POWER = tl.constexpr(18)


@triton.jit
def _powi(x, n):
    """``x ** n`` for a float64 scalar ``x`` and an int64 scalar ``n`` (any sign), by squaring."""
    if n < 0:
        x = 1.0 / x
        n = -n
    result = tl.full((), 1.0, tl.float64)
    while n > 0:
        result = tl.where((n & 1) == 1, result * x, result)
        x = x * x
        n = n >> 1
    return result


@triton.jit
def _floor_div(a, b):
    """``floor(a / b)`` for int64 scalars, ``b > 0`` (Triton's ``//`` truncates toward zero)."""
    q = a // b
    return tl.where(a - q * b < 0, q - 1, q)


@triton.jit
def _fmod_floor(x, y):
    """``x - floor(x / y) * y`` for float64 scalars, ``y > 0``, exact (torch.remainder's value).

    ``q = floor(x / y)`` can be one too large when the rounded quotient reaches the next integer;
    the remainder's sign shows it. ``fma(-q, y, x)`` rounds once, and with the right ``q`` the
    exact remainder is representable, so the result is exact.
    """
    q = tl.floor(x / y)
    r = tl.fma(-q, y, x)
    q = tl.where(r < 0, q - 1.0, q)
    q = tl.where(r >= y, q + 1.0, q)
    return tl.fma(-q, y, x)


@triton.jit
def _powf(x, y):
    """``x ** y`` for float64 scalars, ``x >= 0`` (torch.pow's value for the bases used here)."""
    if y == tl.floor(y) and tl.abs(y) < 9.0e18:
        result = _powi(x, y.to(tl.int64))
    elif x == 0.0:
        result = x  # 0 ** y = 0 for y > 0 (a negative real power of 0 would be inf; never a schedule)
    else:
        result = tl.exp2(y * tl.log2(x))
    return result


@triton.jit
def _half_cosine(lo, hi, q):
    """``lo + (hi - lo) * (1 + cos(pi * q)) / 2`` (the torch reference's association)."""
    return lo + (hi - lo) * (1.0 + tl.cos(3.141592653589793 * q)) / 2.0


# noinline: one copy of this (large, float64) function in the binary, called from its few call
# sites (the group's LR, a cycled momentum, the finishing program), instead of one inlined copy per
# site. It is called once or twice per program, so the call costs nothing measurable; the update
# kernels' machine code shrinks about threefold and compiles about twice as fast
# (tests/test_triton_aot.py reports the sizes).
@triton.jit(noinline=True)
def lr_at(step, desc_ptr, table_ptr, table_numel, group):
    """float64 learning rate of schedule row ``group`` at step ``step`` (see the module docstring).

    Args:
        step: int64 scalar, the scheduler's step counter ``t``.
        desc_ptr: pointer to float64 ``[rows, DESC_WIDTH]``, contiguous (the schedule rows).
        table_ptr: pointer to float64 ``[table_numel]`` (tabulated multipliers of KIND_TABLE rows;
            never read for other kinds).
        table_numel: int scalar, number of elements behind ``table_ptr`` (>= 1).
        group: int scalar, the row to evaluate.

    Returns:
        float64 scalar.

    A composite row first picks the rows to evaluate: ``KIND_SEQUENTIAL`` its active piece (the
    last of its piece rows whose ``start`` is ``<= t``; the pieces' starts ascend),
    ``KIND_PRODUCT`` all of its factor rows (the result is ``base_lr`` times their product).
    One loop then evaluates them with ``_row_lr``, so the per-kind code is inlined once.
    """
    row = desc_ptr + group.to(tl.int64) * DESC_WIDTH
    kind = tl.load(row).to(tl.int32)
    t_int = step.to(tl.int64)
    first = group.to(tl.int64)
    count = tl.full((), 1, tl.int64)
    scale = tl.full((), 1.0, tl.float64)
    if kind == KIND_SEQUENTIAL:
        n_pieces = tl.load(row + COL_P0).to(tl.int64)  # count
        first_piece = tl.load(row + COL_P1).to(tl.int64)  # first
        chosen = first_piece
        for k in range(1, n_pieces):
            piece_start = tl.load(desc_ptr + (first_piece + k) * DESC_WIDTH + COL_START)
            chosen = tl.where(t_int.to(tl.float64) >= piece_start, first_piece + k, chosen)
        first = chosen
    elif kind == KIND_PRODUCT:
        count = tl.load(row + COL_P0).to(tl.int64)  # count
        first = tl.load(row + COL_P1).to(tl.int64)  # first
        scale = tl.load(row + COL_BASE)
    lr = scale
    for k in range(0, count):
        lr = lr * _row_lr(desc_ptr + (first + k) * DESC_WIDTH, t_int, table_ptr, table_numel)
    # An LR assigned to the group on the host, carried on as torch's recurrence carries it: the
    # row's edit columns (empty on every row but an edited group's).
    t_global = t_int.to(tl.float64)
    if (t_global >= tl.load(row + COL_EDIT_FROM)) & (t_global < tl.load(row + COL_EDIT_TO)):
        a = tl.load(row + COL_EDIT_A)
        b = tl.load(row + COL_EDIT_B)
        lr = tl.where(b == 0.0, a, a + b * (lr - a))
    return lr


@triton.jit
def _row_lr(row, t_int, table_ptr, table_numel):
    """float64 value of one plain (non-composite) row at the global step ``t_int``."""
    kind = tl.load(row).to(tl.int32)
    # Every row runs on its local step (a piece starts later; a group's own row has start 0).
    t_int = tl.maximum(t_int - tl.load(row + COL_START).to(tl.int64), 0)
    base = tl.load(row + COL_BASE)
    p0 = tl.load(row + COL_P0)
    p1 = tl.load(row + COL_P1)
    t = t_int.to(tl.float64)
    lr = base
    if kind == KIND_STEP:
        # Integer floor division: exact for every step count, unlike a float quotient.
        step_size = tl.maximum(p0.to(tl.int64), 1)
        lr = base * _powi(p1, _floor_div(t_int, step_size))
    elif kind == KIND_EXPONENTIAL:
        lr = base * _powi(p0, t_int)
    elif kind == KIND_COSINE:
        t_max = tl.where(p0 > 0, p0, 1.0)
        # cos is 2*T_max periodic in t: reduce first so the angle stays small at giant t.
        phase = _fmod_floor(t_int.to(tl.float64), 2.0 * t_max)
        # Same association as the torch reference: (pi * phase) / t_max. The literal is math.pi
        # (a module-level tl.constexpr times a tensor breaks the interpreter; a float literal
        # next to a float64 operand stays float64).
        lr = p1 + (base - p1) * (1.0 + tl.cos(3.141592653589793 * phase / t_max)) / 2.0
    elif kind == KIND_COSINE_POWER:
        # T_max = p0, eta_min = p1, exponent = p2; constant eta_min past T_max.
        t_max = tl.where(p0 > 0, p0, 1.0)
        q = tl.minimum(t, t_max) / t_max
        decay = _powf((1.0 + tl.cos(3.141592653589793 * q)) / 2.0, tl.load(row + COL_P2))
        lr = p1 + (base - p1) * decay
    elif kind == KIND_TABLE:
        length = tl.maximum(p1.to(tl.int64), 1)
        idx = p0.to(tl.int64) + tl.minimum(tl.maximum(t_int, 0), length - 1)
        idx = tl.minimum(tl.maximum(idx, 0), tl.maximum(table_numel.to(tl.int64) - 1, 0))
        lr = base * tl.load(table_ptr + idx)
    elif kind == KIND_DIRECT:
        lr = p0
    elif kind == KIND_MULTISTEP:
        # Milestones table[p1 : p1 + p2] (sorted, repeats included); count those <= t.
        first = tl.maximum(tl.ceil(p1), 0.0).to(tl.int64)
        last = tl.minimum(tl.ceil(p1 + tl.load(row + COL_P2)), table_numel.to(tl.float64)).to(tl.int64)
        passed = tl.zeros((), tl.int64)
        for j in range(first, last):
            passed += (tl.load(table_ptr + j) <= t).to(tl.int64)
        lr = base * _powi(p0, passed)
    elif kind == KIND_CONSTANT_FACTOR:
        lr = tl.where(t < p1, base * p0, base)
    elif kind == KIND_LINEAR:
        p2 = tl.load(row + COL_P2)
        total = tl.where(p2 > 0, p2, 1.0)
        m = tl.minimum(total, t)
        lr = base * ((p0 * (total - m) + p1 * m) / total)
    elif kind == KIND_POLYNOMIAL:
        total = tl.where(p0 > 0, p0, 1.0)
        lr = base * _powf(1.0 - tl.minimum(total, t) / total, p1)
    elif kind >= KIND_WARMUP_COSINE and kind <= KIND_INVERSE_SQRT:
        # Shared linear warmup from 0 while t < W = p0 (W > 0).
        p2 = tl.load(row + COL_P2)
        p3 = tl.load(row + COL_P3)
        p4 = tl.load(row + COL_P4)
        if p0 > 0 and t < p0:
            lr = base * t / p0
        elif kind == KIND_WARMUP_COSINE:
            floor = base * p2
            span = tl.where(p1 > p0, p1 - p0, 1.0)
            q = tl.minimum(tl.maximum((t - p0) / span, 0.0), 1.0)
            lr = tl.where(t >= p1, floor, _half_cosine(floor, base, q))
        elif kind == KIND_WSD:
            floor = base * p3
            d = tl.where(p2 > 0, p2, 1.0)
            q = tl.minimum(tl.maximum((t - p1) / d, 0.0), 1.0)
            q = tl.where((p2 <= 0) & (t >= p1), 1.0, q)
            if p4 == 0:
                decayed = base - (base - floor) * q
            elif p4 == 1:
                decayed = _half_cosine(floor, base, q)
            else:
                decayed = base - (base - floor) * tl.sqrt(q)
            lr = tl.where(t >= p1, decayed, base)
        else:
            w = tl.where(p0 > 0, p0, 1.0)
            lr = base * tl.sqrt(w / tl.maximum(t, 1.0))
    elif kind == KIND_COSINE_RESTARTS:
        e = t + tl.load(row + COL_P3)
        t0 = tl.where(p0 > 0, p0, 1.0)
        if p1 > 1:
            start = tl.zeros((), tl.float64)
            t_i = t0
            while e >= start + t_i:
                start += t_i
                t_i = t_i * p1
            t_cur = e - start
        else:
            t_i = t0
            t_cur = _fmod_floor(e, t0)
        eta_min = tl.load(row + COL_P2)
        lr = eta_min + (base - eta_min) * (1.0 + tl.cos(3.141592653589793 * t_cur / t_i)) / 2.0
    elif kind == KIND_CYCLIC:
        ratio = tl.load(row + COL_P2)
        mode = tl.load(row + COL_P3)
        gamma = tl.load(row + COL_P4)
        size = tl.where(p1 > 0, p1, 1.0)
        cycle = tl.floor(1.0 + t / size)
        x = 1.0 + t / size - cycle
        f = tl.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
        if mode == 0:
            amp = tl.full((), 1.0, tl.float64)
        elif mode == 1:
            amp = 1.0 / _powf(tl.full((), 2.0, tl.float64), cycle - 1.0)
        else:
            amp = _powi(gamma, t_int)
        lr = base + (p0 - base) * f * amp
    elif kind == KIND_ONE_CYCLE:
        peak = tl.load(row + COL_P2)
        final = tl.load(row + COL_P3)
        flags = tl.load(row + COL_P4)
        three = flags >= 2
        linear = (flags == 1) | (flags == 3)
        e1 = p1 - 1.0
        e2 = tl.where(three, 2.0 * p1 - 2.0, p0 - 1.0)
        e3 = p0 - 1.0
        ph1 = t <= e1
        ph2 = (t > e1) & ((t <= e2) | (flags < 2))
        a = tl.where(ph1, 0.0, tl.where(ph2, e1, e2))
        b = tl.where(ph1, e1, tl.where(ph2, e2, e3))
        v_start = tl.where(ph1, base, tl.where(ph2, peak, base))
        v_end = tl.where(ph1, peak, tl.where(ph2, tl.where(three, base, final), final))
        q = (t - a) / (b - a)
        if linear:
            lr = (v_end - v_start) * q + v_start
        else:
            lr = v_end + (v_start - v_end) / 2.0 * (tl.cos(3.141592653589793 * q) + 1.0)
    return lr


@triton.jit(do_not_specialize=["table_numel", "n_rows"])
def lr_at_kernel(
    out_ptr,  # *fp64 [n_steps, n_rows]: out[i, g] = lr of row g at steps[i]
    steps_ptr,  # *int64 [n_steps]: the step counts to evaluate
    desc_ptr,  # *fp64 [n_rows, DESC_WIDTH]: schedule rows
    table_ptr,  # *fp64 [table_numel]: tabulated multipliers (KIND_TABLE)
    table_numel,  # int: elements behind table_ptr
    n_rows,  # int: rows of desc
):
    """Evaluate ``lr_at`` for every (step, row) pair: one program per pair. Used by the tests
    (and handy for debugging a description); the optimizer calls ``lr_at`` inside its update."""
    i = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    step = tl.load(steps_ptr + i)
    tl.store(out_ptr + i * n_rows + g, lr_at(step, desc_ptr, table_ptr, table_numel, g))

"""Device-resident learning-rate schedules: the description format and the torch-op reference.

A schedule is *data*: one row of float64 numbers per parameter group, plus an int64 step counter,
both held on the parameters' device. The learning rate at step ``t`` is one closed-form function
``lr_at(t, desc, table)`` of that data. It is written here in torch ops (any device, never reads a
value back to the host, so it can be captured in a CUDA graph) and, in ``fused_lr.kernels``, as a
Triton device function; both are tested against each other and against ``torch.optim.lr_scheduler``.

Closed forms instead of torch's chained recurrences: they do not drift, and resuming at any step is
exact. Everything is computed in float64, like torch's Python floats.

Row layout (``desc[r]``, float64, ``DESC_WIDTH`` columns; rows ``0 .. groups-1`` are the parameter
groups, in order; a composite schedule (``KIND_SEQUENTIAL``) appends its pieces as further rows)::

    col 0  kind        one of the KIND_* codes below
    col 1  base_lr     the group's initial learning rate (``initial_lr``)
    col 2..6  p0..p4   kind-specific parameters
    col 7  start       a piece row: the step its piece starts at; the row is evaluated at the local
                       step ``t - start`` (0 for a group's own row)
    col 8  end         a piece row: the step its piece ends at (exclusive; inf for the last piece)
    col 9  owner       a piece row: the group it belongs to; -1 for a group's own row
    col 10..13 edit    from, to, a, b: on a group's row, for global steps ``from <= t < to`` the
                       group's LR is ``a + b * (lr - a)`` (``a`` when ``b == 0``) instead of ``lr``:
                       how an LR assigned to ``param_groups[i]["lr"]`` carries on as torch's
                       recurrences carry it (a multiplicative schedule: ``a = 0``, ``b`` the ratio
                       of the assigned LR to the schedule's, ``to = inf``; a closed form torch
                       recomputes at every step: ``b = 0``, ``a`` the assigned LR, ``to = from + 1``).
                       Empty (``from = to = 0``) on every other row.

Kinds (``t`` is the scheduler's ``last_epoch``, an integer >= 0)::

    KIND_CONSTANT     lr = base_lr
    KIND_STEP         lr = base_lr * gamma ** floor(t / step_size)            p0=step_size, p1=gamma
    KIND_EXPONENTIAL  lr = base_lr * gamma ** t                               p0=gamma
    KIND_COSINE       lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2
                                                                             p0=T_max, p1=eta_min
                      (periodic with period 2*T_max past T_max, exactly as torch's recurrence;
                      t is reduced modulo 2*T_max first so giant step counts keep full precision)
    KIND_TABLE        lr = base_lr * table[offset + min(t, length - 1)]       p0=offset, p1=length
                      (a tabulated multiplier, used for LambdaLR callables that cannot run on a
                      tensor; the host extends the table before the counter reaches its end)
    KIND_DIRECT       lr = p0                                                  p0 = the lr itself
                      (written on the device by torch ops each scheduler step, for LambdaLR
                      callables that are plain arithmetic and so run on a device tensor)
    KIND_MULTISTEP    lr = base_lr * gamma ** #{milestones m : m <= t}        p0=gamma, p1=offset,
                      (the sorted milestones, repeats included, are         p2=count
                      table[offset : offset + count])
    KIND_CONSTANT_FACTOR  lr = base_lr * (factor if t < total_iters else 1)   p0=factor, p1=total_iters
    KIND_LINEAR       lr = base_lr * (start + (end - start) * min(t, total_iters) / total_iters)
                                                                             p0=start, p1=end,
                                                                             p2=total_iters
    KIND_POLYNOMIAL   lr = base_lr * (1 - min(t, total_iters) / total_iters) ** power
                                                                             p0=total_iters, p1=power

Large-model schedules (not in torch; ``W`` warmup steps, linear warmup ``base_lr * t / W`` from 0,
peak exactly at ``t = W``; ``floor = base_lr * min_lr_ratio``)::

    KIND_WARMUP_COSINE  t < W: base_lr * t / W;  W <= t < T: floor + (base_lr - floor) *
                        (1 + cos(pi * (t - W) / (T - W))) / 2;  t >= T: floor
                                                                 p0=W, p1=T, p2=min_lr_ratio
    KIND_WSD            warmup, then base_lr until ``decay_start``, then over D steps with
                        p = min((t - decay_start) / D, 1):
                          shape 0 linear   base_lr - (base_lr - floor) * p
                          shape 1 cosine   floor + (base_lr - floor) * (1 + cos(pi * p)) / 2
                          shape 2 1-sqrt   base_lr - (base_lr - floor) * sqrt(p)
                                                                 p0=W, p1=decay_start, p2=D,
                                                                 p3=min_lr_ratio, p4=shape
    KIND_INVERSE_SQRT   t < W: base_lr * t / W;  t >= W: base_lr * sqrt(W / t)   p0=W
                        (W = 0: base_lr / sqrt(max(t, 1)))

Composition (torch's SequentialLR)::

    KIND_SEQUENTIAL   the group's LR is that of its active piece: the piece row r (owner = this
                      group) with start_r <= t < end_r, evaluated at t - start_r
                                                         p0=number of pieces, p1=first piece row

Warm restarts (torch's CosineAnnealingWarmRestarts; ``e = t + offset`` is the position in the
series of cycles: in a plain run the epoch, ``offset`` being the fractional part last passed to
``step(epoch)``; after an assignment of ``T_cur`` / ``T_i`` the series restarts there)::

    KIND_COSINE_RESTARTS  cycle i has length T_i = T_0 * T_mult**i and starts at
                          S_i = T_0 * (T_mult**i - 1) / (T_mult - 1) (S_i = i * T_0 when T_mult = 1);
                          with i the cycle containing e and T_cur = e - S_i:
                          lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2
                                                         p0=T_0, p1=T_mult, p2=eta_min, p3=offset

Cycles (torch's CyclicLR and OneCycleLR; a momentum schedule is the same kind with other values)::

    KIND_CYCLIC       c = floor(1 + t / S), x = 1 + t / S - c (S = total cycle size),
                      f = x / r if x <= r else (x - 1) / (r - 1) (r = step_size_up / S),
                      lr = base_lr + (max_lr - base_lr) * f * scale, with scale
                      1 (mode 0, triangular), 1 / 2 ** (c - 1) (mode 1, triangular2),
                      gamma ** t (mode 2, exp_range)
                                                 p0=max_lr, p1=S, p2=r, p3=mode, p4=gamma
    KIND_ONE_CYCLE    torch's phases (X = float(pct_start * T)): e1 = X - 1; two phases (initial -> max until e1,
                      max -> min until T - 1) or three (initial -> max, max -> initial until
                      2 * X - 2, initial -> min until T - 1); within a phase from step a to
                      b, q = (t - a) / (b - a) and the value anneals start -> end by
                      cos: end + (start - end) / 2 * (1 + cos(pi * q));  linear: (end - start) * q + start
                                                 base_lr = initial, p0=T, p1=X, p2=max, p3=min,
                                                 p4 = 2 * three_phase + (anneal == linear)

Products (torch's ChainedScheduler of multiplicative schedulers)::

    KIND_PRODUCT      lr = base_lr * prod(factor rows): piece rows (owner = this group, start 0,
                      end inf) with base_lr 1, each the factor of one chained scheduler
                                                 p0=number of factors, p1=first factor row

A momentum schedule (CyclicLR / OneCycleLR ``cycle_momentum``) is a further standalone row after
the groups and pieces; ``DeviceSchedule.momentum_rows`` maps a group to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

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
    "CYCLIC_MODES",
    "WSD_SHAPES",
    "KIND_NAMES",
    "constant_row",
    "step_row",
    "exponential_row",
    "cosine_row",
    "table_row",
    "direct_row",
    "multistep_row",
    "constant_factor_row",
    "linear_row",
    "polynomial_row",
    "warmup_cosine_row",
    "wsd_row",
    "inverse_sqrt_row",
    "cosine_restarts_row",
    "sequential_row",
    "cyclic_row",
    "one_cycle_row",
    "product_row",
    "as_piece",
    "lr_at",
    "lr_table",
    "lambda_runs_on_device",
]

DESC_WIDTH = 14
# Steps the host evaluates at once from the CPU mirror (DeviceSchedule._host_values).
HOST_BLOCK = 64
_INT64_MAX = 2**63 - 1
COL_START, COL_END, COL_OWNER = 7, 8, 9
COL_EDIT_FROM, COL_EDIT_TO, COL_EDIT_A, COL_EDIT_B = 10, 11, 12, 13
EDIT_COLS = slice(COL_EDIT_FROM, COL_EDIT_B + 1)

KIND_CONSTANT = 0
KIND_STEP = 1
KIND_EXPONENTIAL = 2
KIND_COSINE = 3
KIND_TABLE = 4
KIND_DIRECT = 5
KIND_MULTISTEP = 6
KIND_CONSTANT_FACTOR = 7
KIND_LINEAR = 8
KIND_POLYNOMIAL = 9
KIND_WARMUP_COSINE = 10
KIND_WSD = 11
KIND_INVERSE_SQRT = 12
KIND_COSINE_RESTARTS = 13
KIND_SEQUENTIAL = 14
KIND_CYCLIC = 15
KIND_ONE_CYCLE = 16
KIND_PRODUCT = 17

# Scale modes of KIND_CYCLIC, by code (torch's CyclicLR modes).
CYCLIC_MODES = {"triangular": 0, "triangular2": 1, "exp_range": 2}

# Cooldown shapes of KIND_WSD, by code.
WSD_SHAPES = {"linear": 0, "cosine": 1, "1-sqrt": 2}

KIND_NAMES = {
    KIND_CONSTANT: "constant",
    KIND_STEP: "step",
    KIND_EXPONENTIAL: "exponential",
    KIND_COSINE: "cosine",
    KIND_TABLE: "table",
    KIND_DIRECT: "direct",
    KIND_MULTISTEP: "multistep",
    KIND_CONSTANT_FACTOR: "constant_factor",
    KIND_LINEAR: "linear",
    KIND_POLYNOMIAL: "polynomial",
    KIND_WARMUP_COSINE: "warmup_cosine",
    KIND_WSD: "wsd",
    KIND_INVERSE_SQRT: "inverse_sqrt",
    KIND_COSINE_RESTARTS: "cosine_restarts",
    KIND_SEQUENTIAL: "sequential",
    KIND_CYCLIC: "cyclic",
    KIND_ONE_CYCLE: "one_cycle",
    KIND_PRODUCT: "product",
}


def _row(kind: int, base_lr: float, *params: float) -> list[float]:
    row = [float(kind), float(base_lr), *map(float, params)]
    if len(row) > COL_START:
        raise AssertionError(f"schedule row has too many parameters: {row}")
    return row + [0.0] * (COL_START - len(row)) + [0.0, 0.0, -1.0] + [0.0, 0.0, 0.0, 1.0]


def constant_row(base_lr: float) -> list[float]:
    """``lr = base_lr``."""
    return _row(KIND_CONSTANT, base_lr)


def step_row(base_lr: float, step_size: int, gamma: float) -> list[float]:
    """``lr = base_lr * gamma ** floor(t / step_size)`` (torch's StepLR)."""
    return _row(KIND_STEP, base_lr, step_size, gamma)


def exponential_row(base_lr: float, gamma: float) -> list[float]:
    """``lr = base_lr * gamma ** t`` (torch's ExponentialLR)."""
    return _row(KIND_EXPONENTIAL, base_lr, gamma)


def cosine_row(base_lr: float, T_max: float, eta_min: float) -> list[float]:
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (CosineAnnealingLR)."""
    return _row(KIND_COSINE, base_lr, T_max, eta_min)


def table_row(base_lr: float, offset: int, length: int) -> list[float]:
    """``lr = base_lr * table[offset + min(t, length - 1)]``."""
    return _row(KIND_TABLE, base_lr, offset, length)


def direct_row(base_lr: float, lr: float) -> list[float]:
    """``lr = p0``, a value kept current on the device by torch ops."""
    return _row(KIND_DIRECT, base_lr, lr)


def multistep_row(base_lr: float, gamma: float, offset: int, count: int) -> list[float]:
    """``lr = base_lr * gamma ** (number of milestones <= t)`` (torch's MultiStepLR)."""
    return _row(KIND_MULTISTEP, base_lr, gamma, offset, count)


def constant_factor_row(base_lr: float, factor: float, total_iters: int) -> list[float]:
    """``lr = base_lr * (factor if t < total_iters else 1)`` (torch's ConstantLR)."""
    return _row(KIND_CONSTANT_FACTOR, base_lr, factor, total_iters)


def linear_row(base_lr: float, start: float, end: float, total_iters: int) -> list[float]:
    """``lr = base_lr * (start + (end - start) * min(t, total_iters) / total_iters)`` (LinearLR)."""
    return _row(KIND_LINEAR, base_lr, start, end, total_iters)


def polynomial_row(base_lr: float, total_iters: int, power: float) -> list[float]:
    """``lr = base_lr * (1 - min(t, total_iters) / total_iters) ** power`` (PolynomialLR)."""
    return _row(KIND_POLYNOMIAL, base_lr, total_iters, power)


def warmup_cosine_row(base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> list[float]:
    """Linear warmup to ``base_lr`` at ``warmup_steps``, cosine to ``base_lr * min_lr_ratio`` at ``total_steps``."""
    return _row(KIND_WARMUP_COSINE, base_lr, warmup_steps, total_steps, min_lr_ratio)


def wsd_row(base_lr: float, warmup_steps: int, decay_start: int, decay_steps: int, min_lr_ratio: float, shape: int) -> list[float]:
    """Warmup-stable-decay: warmup, constant ``base_lr``, cooldown of ``decay_steps`` from ``decay_start``."""
    return _row(KIND_WSD, base_lr, warmup_steps, decay_start, decay_steps, min_lr_ratio, shape)


def inverse_sqrt_row(base_lr: float, warmup_steps: int) -> list[float]:
    """Linear warmup, then ``base_lr * sqrt(warmup_steps / t)``."""
    return _row(KIND_INVERSE_SQRT, base_lr, warmup_steps)


def cosine_restarts_row(base_lr: float, T_0: float, T_mult: int, eta_min: float, offset: float = 0.0) -> list[float]:
    """Cosine annealing with warm restarts (torch's CosineAnnealingWarmRestarts) at ``e = t + offset``."""
    return _row(KIND_COSINE_RESTARTS, base_lr, T_0, T_mult, eta_min, offset)


def sequential_row(base_lr: float, n_pieces: int, first_piece_row: int) -> list[float]:
    """A group's row whose LR is its active piece's (torch's SequentialLR)."""
    return _row(KIND_SEQUENTIAL, base_lr, n_pieces, first_piece_row)


def cyclic_row(base: float, peak: float, total_size: float, step_ratio: float, mode: int, gamma: float) -> list[float]:
    """torch's CyclicLR between ``base`` and ``peak`` (for momentum: base = max_momentum, peak = base_momentum)."""
    return _row(KIND_CYCLIC, base, peak, total_size, step_ratio, mode, gamma)


def one_cycle_row(initial: float, total_steps: int, pct_steps: float, peak: float, final: float,
                  three_phase: bool, linear: bool) -> list[float]:
    """torch's OneCycleLR; ``pct_steps = float(pct_start * total_steps)`` as torch computes it.

    For momentum: ``initial = final = max_momentum``, ``peak = base_momentum``."""
    return _row(KIND_ONE_CYCLE, initial, total_steps, pct_steps, peak, final, 2 * int(three_phase) + int(linear))


def product_row(base_lr: float, n_factors: int, first_factor_row: int) -> list[float]:
    """A group's row whose LR is ``base_lr`` times the product of its factor rows (ChainedScheduler)."""
    return _row(KIND_PRODUCT, base_lr, n_factors, first_factor_row)


def as_piece(row: Sequence[float], start: float, end: float, owner: int) -> list[float]:
    """``row`` as a piece of group ``owner``'s sequence, active for ``start <= t < end``."""
    out = list(row)
    out[COL_START], out[COL_END], out[COL_OWNER] = float(start), float(end), float(owner)
    return out


def lr_at(
    step: Tensor,
    desc: Tensor,
    table: Tensor | None = None,
    kinds: Iterable[int] | None = None,
    n_groups: int | None = None,
    edits: bool = True,
) -> Tensor:
    """Learning rate of every group at step ``step``, in torch ops, without a host read.

    Args:
        step: int64 tensor with one element (the step counter ``t``), on ``desc``'s device.
        desc: float64 tensor ``[groups, DESC_WIDTH]`` (see the module docstring).
        table: float64 tensor of tabulated multipliers (needed only for ``KIND_TABLE`` rows).
        kinds: the kind codes present in ``desc``, known on the host; only those formulas are
            evaluated. ``None`` evaluates every kind (every kind but ``KIND_TABLE`` without a table).
        n_groups: how many leading rows are parameter groups (the rest are pieces); ``None``: all.
        edits: apply the rows' edit columns (``False`` when the host knows none is active, or to
            get the schedule's own value under an edit).

    Returns:
        float64 tensor ``[n_groups]``.
    """
    if kinds is None:
        kinds = set(KIND_NAMES) if table is not None else set(KIND_NAMES) - {KIND_TABLE, KIND_MULTISTEP}
    kinds = set(kinds)
    # One step: scalar math against the [rows] columns. Several (lr_table): a [steps, 1] column
    # that broadcasts every formula to [steps, rows].
    t_int = step.reshape(()) if step.numel() == 1 else step.reshape(-1, 1)
    if t_int.dtype != torch.int64:
        t_int = t_int.to(torch.int64)
    kind, base, p0, p1, p2, p3, p4, start, end, owner, e_from, e_to, e_a, e_b = desc.unbind(1)
    t_global = t_int
    if kinds & {KIND_SEQUENTIAL, KIND_PRODUCT}:
        # Each row at its local step (pieces start later, a factor of a product may run behind or
        # ahead of the counter); inactive pieces clamp at 0, unused.
        t_int = (t_int - start.to(torch.int64)).clamp_min(0)
    t = t_int.to(torch.float64)
    out = base if step.numel() == 1 else base.expand(step.numel(), base.shape[0])
    single = len(kinds) == 1

    def pick(code: int, value: Tensor, current: Tensor) -> Tensor:
        # With one kind present every row has it: no mask (fewer ops on the per-step path).
        return value if single else torch.where(kind == code, value, current)

    if KIND_STEP in kinds:
        # Integer floor division: exact for every step count, unlike a float quotient.
        n_decays = torch.div(t_int, p0.to(torch.int64).clamp_min(1), rounding_mode="floor")
        out = pick(KIND_STEP, base * torch.pow(p1, n_decays.to(torch.float64)), out)
    if KIND_EXPONENTIAL in kinds:
        out = pick(KIND_EXPONENTIAL, base * torch.pow(p0, t), out)
    if KIND_COSINE in kinds:
        t_max = torch.where(p0 > 0, p0, torch.ones_like(p0))
        # cos is 2*T_max periodic in t; reduce first (fmod of floats is exact) so the angle stays
        # small and precise at giant step counts.
        phase = torch.remainder(t, 2.0 * t_max)
        cos_lr = p1 + (base - p1) * (1.0 + torch.cos(math.pi * phase / t_max)) / 2.0
        out = pick(KIND_COSINE, cos_lr, out)
    if KIND_TABLE in kinds:
        if table is None:
            raise ValueError("a KIND_TABLE schedule row needs its table")
        length = p1.to(torch.int64).clamp_min(1)
        idx = p0.to(torch.int64) + torch.minimum(t_int.clamp_min(0), length - 1)
        idx = idx.clamp(0, max(table.numel() - 1, 0))
        out = pick(KIND_TABLE, base * table[idx], out)
    if KIND_DIRECT in kinds:
        out = pick(KIND_DIRECT, p0, out)
    if KIND_MULTISTEP in kinds:
        if table is None:
            raise ValueError("a KIND_MULTISTEP schedule row needs its table of milestones")
        j = torch.arange(table.numel(), device=desc.device, dtype=torch.float64)
        mine = (j >= p1[:, None]) & (j < (p1 + p2)[:, None])  # [groups, table]
        passed = (mine & (table <= t.unsqueeze(-1))).sum(dim=-1).to(torch.float64)
        out = pick(KIND_MULTISTEP, base * torch.pow(p0, passed), out)
    if KIND_CONSTANT_FACTOR in kinds:
        out = pick(KIND_CONSTANT_FACTOR, torch.where(t < p1, base * p0, base), out)
    if KIND_LINEAR in kinds:
        total = torch.where(p2 > 0, p2, torch.ones_like(p2))
        # Weighted form: exactly end_factor at t >= total_iters (no start - start cancellation residue).
        m = torch.minimum(total, t)
        lin = base * ((p0 * (total - m) + p1 * m) / total)
        out = pick(KIND_LINEAR, lin, out)
    if KIND_POLYNOMIAL in kinds:
        total = torch.where(p0 > 0, p0, torch.ones_like(p0))
        poly = base * torch.pow(1.0 - torch.minimum(total, t) / total, p1)
        out = pick(KIND_POLYNOMIAL, poly, out)
    if kinds & {KIND_WARMUP_COSINE, KIND_WSD, KIND_INVERSE_SQRT}:
        # Shared linear warmup from 0: base * t / W while t < W (W = p0 for all three kinds).
        warm = p0 > 0
        w = torch.where(warm, p0, torch.ones_like(p0))
        in_warmup = warm & (t < p0)
        warmup_lr = base * t / w
    if KIND_WARMUP_COSINE in kinds:
        floor = base * p2
        span = torch.where(p1 > p0, p1 - p0, torch.ones_like(p1))
        prog = torch.clamp((t - p0) / span, 0.0, 1.0)
        cos_lr = floor + (base - floor) * (1.0 + torch.cos(math.pi * prog)) / 2.0
        cos_lr = torch.where(t >= p1, floor, cos_lr)
        out = pick(KIND_WARMUP_COSINE, torch.where(in_warmup, warmup_lr, cos_lr), out)
    if KIND_WSD in kinds:
        floor = base * p3
        d = torch.where(p2 > 0, p2, torch.ones_like(p2))
        prog = torch.clamp((t - p1) / d, 0.0, 1.0)
        prog = torch.where((p2 <= 0) & (t >= p1), torch.ones_like(prog), prog)
        linear = base - (base - floor) * prog
        cosine = floor + (base - floor) * (1.0 + torch.cos(math.pi * prog)) / 2.0
        one_minus_sqrt = base - (base - floor) * torch.sqrt(prog)
        decayed = torch.where(p4 == 0, linear, torch.where(p4 == 1, cosine, one_minus_sqrt))
        wsd = torch.where(t >= p1, decayed, base)
        out = pick(KIND_WSD, torch.where(in_warmup, warmup_lr, wsd), out)
    if KIND_INVERSE_SQRT in kinds:
        inv = base * torch.sqrt(torch.where(warm, p0, torch.ones_like(p0)) / torch.clamp_min(t, 1.0))
        out = pick(KIND_INVERSE_SQRT, torch.where(in_warmup, warmup_lr, inv), out)
    if KIND_COSINE_RESTARTS in kinds:
        e = t + p3
        t0 = torch.where(p0 > 0, p0, torch.ones_like(p0))
        geo = p1 > 1
        m = torch.where(geo, p1, torch.full_like(p1, 2.0))

        def cycle_start(n):
            return t0 * (torch.pow(m, n) - 1.0) / (m - 1.0)

        # Cycle index from the geometric series, then corrected by one either way so that
        # start(n) <= e < start(n + 1) holds exactly (the log can round across a boundary).
        n = torch.floor(torch.log(e * (m - 1.0) / t0 + 1.0) / torch.log(m))
        n = torch.where(cycle_start(n) > e, n - 1.0, n)
        n = torch.where(cycle_start(n + 1.0) <= e, n + 1.0, n)
        t_cur = torch.where(geo, e - cycle_start(n), torch.remainder(e, t0))
        t_i = torch.where(geo, t0 * torch.pow(m, n), t0)
        restart_lr = p2 + (base - p2) * (1.0 + torch.cos(math.pi * t_cur / t_i)) / 2.0
        out = pick(KIND_COSINE_RESTARTS, restart_lr, out)
    if KIND_CYCLIC in kinds:
        size = torch.where(p1 > 0, p1, torch.ones_like(p1))
        cycle = torch.floor(1.0 + t / size)
        x = 1.0 + t / size - cycle
        f = torch.where(x <= p2, x / p2, (x - 1.0) / (p2 - 1.0))
        scale = torch.where(
            p3 == 0, torch.ones_like(t), torch.where(p3 == 1, 1.0 / torch.pow(2.0, cycle - 1.0), torch.pow(p4, t))
        )
        out = pick(KIND_CYCLIC, base + (p0 - base) * f * scale, out)
    if KIND_ONE_CYCLE in kinds:
        three = p4 >= 2
        linear = torch.remainder(p4, 2.0) == 1
        e1 = p1 - 1.0
        e2 = torch.where(three, 2.0 * p1 - 2.0, p0 - 1.0)
        e3 = p0 - 1.0
        ph1 = t <= e1
        ph2 = ~ph1 & ((t <= e2) | ~three)
        a = torch.where(ph1, torch.zeros_like(t), torch.where(ph2, e1, e2))
        b = torch.where(ph1, e1, torch.where(ph2, e2, e3))
        v_start = torch.where(ph1, base, torch.where(ph2, p2, base))
        v_end = torch.where(ph1, p2, torch.where(ph2, torch.where(three, base, p3), p3))
        q = (t - a) / (b - a)
        cos_v = v_end + (v_start - v_end) / 2.0 * (torch.cos(math.pi * q) + 1.0)
        lin_v = (v_end - v_start) * q + v_start
        out = pick(KIND_ONE_CYCLE, torch.where(linear, lin_v, cos_v), out)
    if kinds & {KIND_SEQUENTIAL, KIND_PRODUCT}:
        is_piece = owner >= 0
        owner_idx = owner.clamp_min(0).to(torch.int64)
        owner_kind = kind[owner_idx]
        pieces_out = out
    if KIND_SEQUENTIAL in kinds:
        tg = t_global.to(torch.float64)
        active = is_piece & (owner_kind == KIND_SEQUENTIAL) & (tg >= start) & (tg < end)
        chosen = torch.zeros(out.shape, dtype=out.dtype, device=out.device).index_add_(
            -1, owner_idx, torch.where(active, pieces_out, 0.0)
        )
        out = torch.where(kind == KIND_SEQUENTIAL, chosen, out)
    if KIND_PRODUCT in kinds:
        factor = is_piece & (owner_kind == KIND_PRODUCT)
        src = torch.where(factor, pieces_out, 1.0)
        prod = torch.ones(out.shape, dtype=out.dtype, device=out.device).scatter_reduce_(
            -1, owner_idx.expand(src.shape), src, "prod"
        )
        out = torch.where(kind == KIND_PRODUCT, base * prod, out)
    if edits:
        tg = t_global.to(torch.float64)
        edited = torch.where(e_b == 0, e_a, e_a + e_b * (out - e_a))
        out = torch.where((tg >= e_from) & (tg < e_to), edited, out)
    return out if n_groups is None else out[..., :n_groups]


def lr_table(
    steps: Tensor,
    desc: Tensor,
    table: Tensor | None = None,
    kinds: Iterable[int] | None = None,
    n_groups: int | None = None,
    edits: bool = True,
) -> Tensor:
    """``lr_at`` at many steps in one evaluation: float64 ``[len(steps), n_groups]``, element for
    element the same arithmetic as ``lr_at`` at each step (the host uses it to answer a block of
    future steps at once)."""
    steps = steps.reshape(-1)
    rows = desc.shape[0] if n_groups is None else n_groups
    return lr_at(steps, desc, table, kinds, n_groups, edits).reshape(steps.numel(), rows)


# ---------------------------------------------------------------------------------------------
# LambdaLR callables: can this one run on a device tensor?
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# The device schedule a scheduler attaches to its optimizer
# ---------------------------------------------------------------------------------------------


def _copy_to_device(dst: Tensor, src: Tensor) -> None:
    """``dst.copy_(src)`` from host memory without blocking the host on an accelerator: the values
    go through a pinned staging tensor (the caching host allocator keeps it alive until the copy
    has run), so the host never waits for the device's queue."""
    if dst.device.type == "cpu":
        dst.copy_(src)
    else:
        dst.copy_(src.pin_memory(), non_blocking=True)


class DeviceSchedule:
    """Description rows, multiplier table and int64 step counter of one optimizer, on its device.

    ``desc``/``table``/``counter`` live on the device and are what ``lr_at`` (torch ops) and the
    Triton kernel read. ``desc_host``/``table_host`` are CPU mirrors, so the host can answer
    ``get_last_lr()`` from its own step count without reading the device.

    ``direct_fns`` maps a group index to a LambdaLR callable evaluated on the device counter
    (``KIND_DIRECT`` rows): ``write_lr`` stores ``base_lr * fn(t)`` in the row's ``p0``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.counter = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.desc_host = torch.zeros(0, DESC_WIDTH, dtype=torch.float64)
        self.n_groups = 0
        self.desc = self.desc_host.to(self.device)
        self.table_host = torch.zeros(1, dtype=torch.float64)
        self.table = self.table_host.to(self.device)
        self.kinds: frozenset[int] = frozenset()
        self.direct_fns: dict[int, Callable] = {}
        self.momentum_rows: dict[int, int] = {}
        self.edited = False  # some group row has a non-empty edit (see set_edit)
        self.dirty = False  # desc_host changed since desc was last copied (see set_starts_host)
        # Scheduler steps taken on the host but not yet applied to ``counter``: on the Triton path
        # the next update kernel applies them (one launch for opt.step() + sched.step()).
        self.pending = 0
        # The counter's value as the host knows it (kept beside every change the host makes or
        # asks a kernel to make): a CPU device answers its LRs without reading the counter.
        self.host_step = 0
        # CPU mirror values for a block of steps (start, [block, rows] tensor, the same as lists):
        # the host answers get_last_lr(), momenta and (on a CPU device) the LR itself from it.
        self._block: tuple[int, Tensor, list] | None = None

    def set_rows(
        self,
        rows: Sequence[Sequence[float]],
        table: Sequence[float] | None = None,
        direct_fns: dict[int, Callable] | None = None,
        n_groups: int | None = None,
        momentum_rows: dict[int, int] | None = None,
    ) -> None:
        """Replace the description (a host-to-device copy: done at construction, load and table growth).

        ``rows`` holds one row per group, then any piece rows (``n_groups`` says how many are groups),
        then any momentum rows (``momentum_rows`` maps a group to its momentum row)."""
        desc_host = torch.tensor([list(r) for r in rows], dtype=torch.float64).reshape(-1, DESC_WIDTH)
        table_host = torch.tensor(list(table) if table else [1.0], dtype=torch.float64)
        self.desc_host = desc_host
        self.table_host = table_host
        self.desc = desc_host.to(self.device)
        self.table = table_host.to(self.device)
        self.kinds = frozenset(int(k) for k in desc_host[:, 0].tolist())
        self.direct_fns = dict(direct_fns or {})
        self.n_groups = desc_host.shape[0] if n_groups is None else n_groups
        self._block = None
        self.momentum_rows = dict(momentum_rows or {})
        for g, r in self.momentum_rows.items():
            if not (0 <= g < self.n_groups and self.n_groups <= r < desc_host.shape[0]):
                raise AssertionError(f"momentum row {r} of group {g} outside the description")
        self.edited = bool((desc_host[: self.n_groups, COL_EDIT_TO] > desc_host[: self.n_groups, COL_EDIT_FROM]).any())

    def invalidate(self) -> None:
        """Forget host values computed ahead: call after editing ``desc`` in place."""
        self._block = None

    def set_edit(self, group: int, start: float, stop: float, a: float, b: float) -> None:
        """Group ``group``'s LR is ``a + b * (lr - a)`` (``a`` when ``b == 0``) for steps in
        ``[start, stop)`` (the edit columns; see the module docstring). One small host-to-device
        copy, asynchronous on an accelerator; nothing is read back."""
        row = self.desc_host[group]
        row[EDIT_COLS] = torch.tensor([float(start), float(stop), float(a), float(b)], dtype=torch.float64)
        _copy_to_device(self.desc[group, EDIT_COLS], row[EDIT_COLS])
        self._block = None
        self.edited = bool(
            (self.desc_host[: self.n_groups, COL_EDIT_TO] > self.desc_host[: self.n_groups, COL_EDIT_FROM]).any()
        )

    def set_edits(self, edits: dict[int, tuple[float, float, float, float]]) -> None:
        """Several groups' edits (``{group: (from, to, a, b)}``) in one host-to-device copy."""
        if not edits:
            return
        for g, values in edits.items():
            self.desc_host[g, EDIT_COLS] = torch.tensor([float(v) for v in values], dtype=torch.float64)
        n = self.n_groups
        _copy_to_device(self.desc[:n, EDIT_COLS], self.desc_host[:n, EDIT_COLS])
        self._block = None
        self.edited = bool((self.desc_host[:n, COL_EDIT_TO] > self.desc_host[:n, COL_EDIT_FROM]).any())

    def set_starts_host(self, rows: Sequence[int], starts: Sequence[float]) -> None:
        """Move pieces' ``start`` on the CPU mirror only (the host's values follow at once);
        ``sync()`` copies the description to the device before the device next reads it."""
        for r, v in zip(rows, starts):
            self.desc_host[r, COL_START] = float(v)
        self._block = None
        self.dirty = True

    def sync(self) -> None:
        """Copy the CPU mirror's description to the device if it changed there (one copy)."""
        if self.dirty:
            _copy_to_device(self.desc, self.desc_host)
            self.dirty = False

    def edits(self) -> dict[int, tuple[float, float, float, float]]:
        """The groups' non-empty edits: ``{group: (from, to, a, b)}`` (to carry them into a rebuilt
        description)."""
        out = {}
        for g in range(self.n_groups):
            frm, to, a, b = self.desc_host[g, EDIT_COLS].tolist()
            if to > frm:
                out[g] = (frm, to, a, b)
        return out

    def raw_host_lrs(self, step: int) -> list[float]:
        """The schedule's own LRs at ``step`` (CPU mirror), ignoring the edit columns."""
        desc = self.desc_host
        if self.direct_fns:
            desc = desc.clone()
            for g, fn in self.direct_fns.items():
                desc[g, 2] = desc[g, 1] * float(fn(step))
        return lr_at(torch.tensor([step], dtype=torch.int64), desc, self.table_host, self.kinds, self.n_groups,
                     edits=False).tolist()

    def _host_values(self, step: int) -> tuple[tuple[int, Tensor, list], int]:
        """Every row's value at ``step`` from the CPU mirror, computed ``HOST_BLOCK`` steps at a
        time with ``lr_table`` (one evaluation answers the next steps too)."""
        blk = self._block
        if blk is None or not blk[0] <= step < blk[0] + len(blk[2]):  # (no tensor op on a hit)
            count = max(1, min(HOST_BLOCK, _INT64_MAX - step))
            vals = lr_table(torch.arange(step, step + count, dtype=torch.int64), self.desc_host, self.table_host,
                            self.kinds, edits=self.edited)
            blk = self._block = (step, vals, vals.tolist())
        return blk, step - blk[0]

    # On a CPU device the "device" is the host: no sync to avoid, so the host block answers the LR
    # (a copy of one row instead of ~12 tiny tensor ops). Tests switch it off to exercise the
    # device path on CPU tensors.
    host_answers_on_cpu = True

    def _cpu_fast(self) -> bool:
        # Device-mode lambdas (KIND_DIRECT rows) change the description every step: no block.
        # Inside torch.compile the device path is traced instead: host-side step numbers would be
        # guarded on and recompile every step.
        return (
            self.host_answers_on_cpu
            and self.device.type == "cpu"
            and not self.direct_fns
            and not torch.compiler.is_compiling()
        )

    def set_step(self, step: int) -> None:
        self.counter.fill_(step)
        self.pending = 0
        self.host_step = step

    def advance(self) -> None:
        self.counter.add_(1)
        self.host_step += 1

    def kernel_applied(self) -> None:
        """The update kernel advanced the counter by the pending steps and wrote the LRs."""
        self.host_step += self.pending
        self.pending = 0

    def defer_advance(self) -> None:
        """Count a scheduler step for the next update kernel to apply; no device work, except
        re-evaluating device-mode lambdas (``KIND_DIRECT`` rows) at the step the kernel will use."""
        self.pending += 1
        if self.direct_fns:
            t = self.counter + self.pending
            for g, fn in self.direct_fns.items():
                self.desc[g, 2].copy_(self.desc[g, 1] * eval_lambda_on_device(fn, t))

    def apply_pending(self, lr_buf: Tensor) -> None:
        """Apply deferred steps with torch ops (when no kernel ran to apply them)."""
        if self.pending:
            self.counter.add_(self.pending)
            self.host_step += self.pending
            self.pending = 0
        self.write_lr(lr_buf)

    def write_lr(self, lr_buf: Tensor) -> None:
        """``lr_buf[:] = lr_at(counter)`` on the device: no host read, capturable."""
        if self.dirty:
            self.sync()
        if self._cpu_fast():
            blk, k = self._host_values(self.host_step)
            lr_buf.copy_(blk[1][k, : self.n_groups])
            return
        for g, fn in self.direct_fns.items():
            self.desc[g, 2].copy_(self.desc[g, 1] * eval_lambda_on_device(fn, self.counter))
        lr_buf.copy_(lr_at(self.counter, self.desc, self.table, self.kinds, self.n_groups, self.edited))

    def host_lrs(self, step: int) -> list[float]:
        """The same ``lr_at`` evaluated on the CPU mirror at a host-known step."""
        if not self.direct_fns:
            blk, k = self._host_values(step)
            return blk[2][k][: self.n_groups]
        # Device-mode lambdas: their rows' values at this step, on a copy of the mirror.
        desc = self.desc_host.clone()
        for g, fn in self.direct_fns.items():
            desc[g, 2] = desc[g, 1] * float(fn(step))
        return lr_at(torch.tensor([step], dtype=torch.int64), desc, self.table_host, self.kinds, self.n_groups,
                     self.edited).tolist()

    def host_momenta(self, step: int) -> dict[int, float]:
        """Momentum of every group with a momentum schedule at a host-known step (CPU mirror)."""
        if not self.momentum_rows:
            return {}
        blk, k = self._host_values(step)
        return {g: blk[2][k][r] for g, r in self.momentum_rows.items()}

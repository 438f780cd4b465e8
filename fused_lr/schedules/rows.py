"""The schedule as data: the ``Kind`` of a row, its named columns, and one factory per kind.

A schedule is one row of float64 numbers per parameter group (``DESC_WIDTH`` columns, ``Col``),
plus further rows for pieces of composites and for momentum schedules, and an int64 step counter
(``fused_lr.schedules.device``). Every row has the same columns::

    KIND       the row's Kind
    BASE       the group's initial learning rate (``initial_lr``)
    P0..P4     the kind's parameters, named in ``PARAMS[kind]`` (``col(kind, name)``)
    START      a piece: the step it starts at; a row is evaluated at the local step ``t - start``
               (0 for a group's own row; a product's factor may start before or after 0)
    END        a piece: the step its piece ends at (exclusive; inf for the last piece)
    OWNER      a piece: the group it belongs to; -1 for a group's own row
    EDIT_FROM, EDIT_TO, EDIT_A, EDIT_B
               on a group's row, for global steps ``EDIT_FROM <= t < EDIT_TO`` the group's LR is
               ``A + B * (lr - A)`` (``A`` when ``B == 0``) instead of ``lr``: how an LR assigned to
               ``param_groups[i]["lr"]`` carries on as torch's recurrences carry it (a
               multiplicative schedule: ``A = 0``, ``B`` the ratio of the assigned LR to the
               schedule's, ``EDIT_TO = inf``; a closed form torch recomputes at every step:
               ``B = 0``, ``A`` the assigned LR, ``EDIT_TO = EDIT_FROM + 1``). Empty on other rows.

Each factory's docstring is the one place its formula is written in prose (``t`` is the scheduler's
``last_epoch``, an integer >= 0); the formula itself is written twice, in torch ops
(``fused_lr.schedules.lr_at``) and in Triton (``fused_lr.kernels.schedule``), and both are tested
against each other and against ``torch.optim.lr_scheduler``. Closed forms, not torch's chained
recurrences: they do not drift, and resuming at any step is exact. All float64, like torch's
Python floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

__all__ = [
    "Kind",
    "Col",
    "DESC_WIDTH",
    "PARAMS",
    "col",
    "CYCLIC_MODES",
    "WSD_SHAPES",
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
    "cosine_power_row",
    "as_piece",
    "shift_table",
]


class Kind(IntEnum):
    """The formula a row follows (its code is column ``Col.KIND``; kernels/schedule.py repeats the
    codes as constexprs, tests/test_triton_interpreter.py checks they agree)."""

    CONSTANT = 0
    STEP = 1
    EXPONENTIAL = 2
    COSINE = 3
    TABLE = 4
    DIRECT = 5
    MULTISTEP = 6
    CONSTANT_FACTOR = 7
    LINEAR = 8
    POLYNOMIAL = 9
    WARMUP_COSINE = 10
    WSD = 11
    INVERSE_SQRT = 12
    COSINE_RESTARTS = 13
    SEQUENTIAL = 14
    CYCLIC = 15
    ONE_CYCLE = 16
    PRODUCT = 17
    COSINE_POWER = 18


class Col:
    """The columns of every row (see the module docstring): plain ints, so that code traced by
    torch.compile indexes with them as with any int."""

    KIND = 0
    BASE = 1
    P0 = 2
    P1 = 3
    P2 = 4
    P3 = 5
    P4 = 6
    START = 7
    END = 8
    OWNER = 9
    EDIT_FROM = 10
    EDIT_TO = 11
    EDIT_A = 12
    EDIT_B = 13
    NAMES = ("KIND", "BASE", "P0", "P1", "P2", "P3", "P4", "START", "END", "OWNER",
             "EDIT_FROM", "EDIT_TO", "EDIT_A", "EDIT_B")


DESC_WIDTH = len(Col.NAMES)
EDIT_COLS = slice(Col.EDIT_FROM, Col.EDIT_B + 1)

# Each kind's parameters, in column order from P0 (what its factory takes besides base_lr).
PARAMS: dict[Kind, tuple[str, ...]] = {
    Kind.CONSTANT: (),
    Kind.STEP: ("step_size", "gamma"),
    Kind.EXPONENTIAL: ("gamma",),
    Kind.COSINE: ("T_max", "eta_min"),
    Kind.TABLE: ("offset", "length"),
    Kind.DIRECT: ("lr",),
    Kind.MULTISTEP: ("gamma", "offset", "count"),
    Kind.CONSTANT_FACTOR: ("factor", "total_iters"),
    Kind.LINEAR: ("start", "end", "total_iters"),
    Kind.POLYNOMIAL: ("total_iters", "power"),
    Kind.WARMUP_COSINE: ("warmup_steps", "total_steps", "min_lr_ratio"),
    Kind.WSD: ("warmup_steps", "decay_start", "decay_steps", "min_lr_ratio", "shape"),
    Kind.INVERSE_SQRT: ("warmup_steps",),
    Kind.COSINE_RESTARTS: ("T_0", "T_mult", "eta_min", "offset"),
    Kind.SEQUENTIAL: ("count", "first"),
    Kind.CYCLIC: ("peak", "total_size", "step_ratio", "mode", "gamma"),
    Kind.ONE_CYCLE: ("total_steps", "pct_steps", "peak", "final", "flags"),
    Kind.PRODUCT: ("count", "first"),
    Kind.COSINE_POWER: ("T_max", "eta_min", "exponent"),
}


def col(kind: Kind, name: str) -> int:
    """The column of ``kind``'s parameter ``name``."""
    return Col.P0 + PARAMS[kind].index(name)


# Scale modes of Kind.CYCLIC, by code (torch's CyclicLR modes).
CYCLIC_MODES = {"triangular": 0, "triangular2": 1, "exp_range": 2}

# Cooldown shapes of Kind.WSD, by code.
WSD_SHAPES = {"linear": 0, "cosine": 1, "1-sqrt": 2}


def _row(kind: Kind, base_lr: float, **params: float) -> list[float]:
    names = PARAMS[kind]
    if set(params) != set(names):
        raise AssertionError(f"{kind.name} row takes {names}, got {sorted(params)}")
    row = [0.0] * DESC_WIDTH
    row[Col.KIND], row[Col.BASE] = float(kind), float(base_lr)
    for i, name in enumerate(names):
        row[Col.P0 + i] = float(params[name])
    row[Col.OWNER], row[Col.EDIT_B] = -1.0, 1.0
    return row


def constant_row(base_lr: float) -> list[float]:
    """``lr = base_lr``."""
    return _row(Kind.CONSTANT, base_lr)


def step_row(base_lr: float, step_size: int, gamma: float) -> list[float]:
    """``lr = base_lr * gamma ** floor(t / step_size)`` (torch's StepLR)."""
    return _row(Kind.STEP, base_lr, step_size=step_size, gamma=gamma)


def exponential_row(base_lr: float, gamma: float) -> list[float]:
    """``lr = base_lr * gamma ** t`` (torch's ExponentialLR)."""
    return _row(Kind.EXPONENTIAL, base_lr, gamma=gamma)


def cosine_row(base_lr: float, T_max: float, eta_min: float) -> list[float]:
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (CosineAnnealingLR):
    periodic with period ``2 * T_max`` past ``T_max``, exactly as torch's recurrence; ``t`` is
    reduced modulo ``2 * T_max`` first, so giant step counts keep full precision."""
    return _row(Kind.COSINE, base_lr, T_max=T_max, eta_min=eta_min)


def cosine_power_row(base_lr: float, T_max: float, eta_min: float, exponent: float) -> list[float]:
    """optax's cosine decay with an exponent: with ``q = min(t, T_max) / T_max``,
    ``lr = eta_min + (base_lr - eta_min) * ((1 + cos(pi * q)) / 2) ** exponent``; constant
    ``eta_min`` past ``T_max`` (``exponent = 1`` is CosineAnnealingLR up to ``T_max``)."""
    return _row(Kind.COSINE_POWER, base_lr, T_max=T_max, eta_min=eta_min, exponent=exponent)


def table_row(base_lr: float, offset: int, length: int) -> list[float]:
    """``lr = base_lr * table[offset + min(t, length - 1)]``: a multiplier tabulated on the host
    (LambdaLR callables that cannot run on a tensor); the host extends the table ahead of ``t``."""
    return _row(Kind.TABLE, base_lr, offset=offset, length=length)


def direct_row(base_lr: float, lr: float) -> list[float]:
    """``lr = lr``: the value itself, written on the device by torch ops at each scheduler step
    (LambdaLR callables that are plain arithmetic, evaluated on the device counter)."""
    return _row(Kind.DIRECT, base_lr, lr=lr)


def multistep_row(base_lr: float, gamma: float, offset: int, count: int) -> list[float]:
    """``lr = base_lr * gamma ** #{milestones m : m <= t}`` (torch's MultiStepLR); the sorted
    milestones, repeats included, are ``table[offset : offset + count]``."""
    return _row(Kind.MULTISTEP, base_lr, gamma=gamma, offset=offset, count=count)


def constant_factor_row(base_lr: float, factor: float, total_iters: int) -> list[float]:
    """``lr = base_lr * (factor if t < total_iters else 1)`` (torch's ConstantLR)."""
    return _row(Kind.CONSTANT_FACTOR, base_lr, factor=factor, total_iters=total_iters)


def linear_row(base_lr: float, start: float, end: float, total_iters: int) -> list[float]:
    """``lr = base_lr * (start + (end - start) * min(t, total_iters) / total_iters)`` (LinearLR)."""
    return _row(Kind.LINEAR, base_lr, start=start, end=end, total_iters=total_iters)


def polynomial_row(base_lr: float, total_iters: int, power: float) -> list[float]:
    """``lr = base_lr * (1 - min(t, total_iters) / total_iters) ** power`` (PolynomialLR)."""
    return _row(Kind.POLYNOMIAL, base_lr, total_iters=total_iters, power=power)


def warmup_cosine_row(base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> list[float]:
    """With ``W = warmup_steps``, ``T = total_steps``, ``floor = base_lr * min_lr_ratio``:
    ``t < W``: ``base_lr * t / W`` (the peak exactly at ``t = W``); ``W <= t < T``:
    ``floor + (base_lr - floor) * (1 + cos(pi * (t - W) / (T - W))) / 2``; ``t >= T``: ``floor``."""
    return _row(Kind.WARMUP_COSINE, base_lr, warmup_steps=warmup_steps, total_steps=total_steps,
                min_lr_ratio=min_lr_ratio)


def wsd_row(base_lr: float, warmup_steps: int, decay_start: int, decay_steps: int, min_lr_ratio: float,
            shape: int) -> list[float]:
    """Warmup-stable-decay: the warmup of ``warmup_cosine_row``, then ``base_lr`` until
    ``decay_start``, then over ``D = decay_steps`` steps with ``p = min((t - decay_start) / D, 1)``
    and ``floor = base_lr * min_lr_ratio``: shape 0 (linear) ``base_lr - (base_lr - floor) * p``,
    1 (cosine) ``floor + (base_lr - floor) * (1 + cos(pi * p)) / 2``, 2 (1-sqrt)
    ``base_lr - (base_lr - floor) * sqrt(p)``."""
    return _row(Kind.WSD, base_lr, warmup_steps=warmup_steps, decay_start=decay_start, decay_steps=decay_steps,
                min_lr_ratio=min_lr_ratio, shape=shape)


def inverse_sqrt_row(base_lr: float, warmup_steps: int) -> list[float]:
    """``t < W``: ``base_lr * t / W``; then ``base_lr * sqrt(W / t)`` (``W = warmup_steps``;
    ``W = 0``: ``base_lr / sqrt(max(t, 1))``)."""
    return _row(Kind.INVERSE_SQRT, base_lr, warmup_steps=warmup_steps)


def cosine_restarts_row(base_lr: float, T_0: float, T_mult: int, eta_min: float, offset: float = 0.0) -> list[float]:
    """torch's CosineAnnealingWarmRestarts at the position ``e = t + offset`` in its series of
    cycles (in a plain run the epoch, ``offset`` being the fractional part last passed to
    ``step(epoch)``; after an assignment of ``T_cur`` / ``T_i`` the series restarts there): cycle
    ``i`` has length ``T_i = T_0 * T_mult ** i`` and starts at ``S_i = T_0 * (T_mult ** i - 1) /
    (T_mult - 1)`` (``i * T_0`` when ``T_mult = 1``); with ``i`` the cycle holding ``e`` and
    ``T_cur = e - S_i``: ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``."""
    return _row(Kind.COSINE_RESTARTS, base_lr, T_0=T_0, T_mult=T_mult, eta_min=eta_min, offset=offset)


def sequential_row(base_lr: float, n_pieces: int, first_piece_row: int) -> list[float]:
    """torch's SequentialLR: the group's LR is that of its active piece, the piece row ``r``
    (owner = this group, rows ``first .. first + count - 1``) with ``START_r <= t < END_r``,
    evaluated at ``t - START_r``."""
    return _row(Kind.SEQUENTIAL, base_lr, count=n_pieces, first=first_piece_row)


def cyclic_row(base: float, peak: float, total_size: float, step_ratio: float, mode: int, gamma: float) -> list[float]:
    """torch's CyclicLR between ``base`` and ``peak`` (for momentum: ``base = max_momentum``,
    ``peak = base_momentum``): with ``S = total_size``, ``r = step_ratio``,
    ``c = floor(1 + t / S)``, ``x = 1 + t / S - c``, ``f = x / r if x <= r else (x - 1) / (r - 1)``:
    ``lr = base + (peak - base) * f * scale``, ``scale`` 1 (mode 0, triangular),
    ``1 / 2 ** (c - 1)`` (mode 1, triangular2), ``gamma ** t`` (mode 2, exp_range)."""
    return _row(Kind.CYCLIC, base, peak=peak, total_size=total_size, step_ratio=step_ratio, mode=mode, gamma=gamma)


def one_cycle_row(initial: float, total_steps: int, pct_steps: float, peak: float, final: float,
                  three_phase: bool, linear: bool) -> list[float]:
    """torch's OneCycleLR with ``X = pct_steps = float(pct_start * total_steps)`` as torch computes
    it and ``T = total_steps``: phases end at ``X - 1`` and ``T - 1`` (initial -> peak -> final), or
    with ``three_phase`` at ``X - 1``, ``2 X - 2``, ``T - 1`` (initial -> peak -> initial -> final);
    within a phase from step ``a`` to ``b``, ``q = (t - a) / (b - a)`` and the value anneals
    ``start -> end`` by cos: ``end + (start - end) / 2 * (1 + cos(pi * q))``, or linearly:
    ``(end - start) * q + start``. (``flags = 2 * three_phase + linear``; for momentum:
    ``initial = final = max_momentum``, ``peak = base_momentum``.)"""
    return _row(Kind.ONE_CYCLE, initial, total_steps=total_steps, pct_steps=pct_steps, peak=peak, final=final,
                flags=2 * int(three_phase) + int(linear))


def product_row(base_lr: float, n_factors: int, first_factor_row: int) -> list[float]:
    """torch's ChainedScheduler of multiplicative schedulers: ``lr = base_lr * prod(factor rows)``,
    the rows ``first .. first + count - 1`` (owner = this group, base 1), each the factor of one
    scheduler, evaluated at ``t - START`` (a factor may run behind or ahead of the counter)."""
    return _row(Kind.PRODUCT, base_lr, count=n_factors, first=first_factor_row)


def as_piece(row: Sequence[float], start: float, end: float, owner: int) -> list[float]:
    """``row`` as a piece of group ``owner``'s composite, active for ``start <= t < end``."""
    out = list(row)
    out[Col.START], out[Col.END], out[Col.OWNER] = float(start), float(end), float(owner)
    return out


def shift_table(row: Sequence[float], shift: int) -> list[float]:
    """``row`` with its table offset moved by ``shift`` (rows that read the table), for rows
    taken out of one description into another whose table is longer."""
    out = list(row)
    kind = Kind(int(out[Col.KIND]))
    if kind in (Kind.TABLE, Kind.MULTISTEP):
        out[col(kind, "offset")] += shift
    return out

"""``lr_at(step, desc, table)``: every group's learning rate at a step, in torch ops.

The torch-op twin of ``fused_lr.kernels.schedule.lr_at``: any device, never reads a value back to
the host (so a scheduler step can be captured in a CUDA graph), float64 throughout. One function
per ``Kind`` (``_formula``) computes that kind's value for every row; the formulas are documented
once, in the row factories of ``fused_lr.schedules.rows``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .rows import PARAMS, Col, Kind

__all__ = ["lr_at", "lr_table"]


class _Rows:
    """The columns of a description and the step, broadcast against each other: ``t`` (float64)
    and ``t_int`` (int64) are the rows' local steps; ``p(kind, name)`` a kind's parameter column."""

    def __init__(self, desc: Tensor, t_int: Tensor, table: Tensor | None) -> None:
        self.cols = desc.unbind(1)  # one op for every column view
        self.base = self.cols[Col.BASE]
        self.t_int = t_int
        self.t = t_int.to(torch.float64)
        self.table = table
        self.device = desc.device

    def p(self, kind: Kind, name: str) -> Tensor:
        return self.cols[Col.P0 + PARAMS[kind].index(name)]


def _positive_or_one(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, torch.ones_like(x))


_FORMULAS: dict[Kind, Callable[[_Rows], Tensor]] = {}


def _formula(kind: Kind):
    def register(fn: Callable[[_Rows], Tensor]) -> Callable[[_Rows], Tensor]:
        _FORMULAS[kind] = fn
        return fn

    return register


@_formula(Kind.CONSTANT)
def _constant(r: _Rows) -> Tensor:
    return r.base


@_formula(Kind.STEP)
def _step(r: _Rows) -> Tensor:
    # Integer floor division: exact for every step count, unlike a float quotient.
    n_decays = torch.div(r.t_int, r.p(Kind.STEP, "step_size").to(torch.int64).clamp_min(1), rounding_mode="floor")
    return r.base * torch.pow(r.p(Kind.STEP, "gamma"), n_decays.to(torch.float64))


@_formula(Kind.EXPONENTIAL)
def _exponential(r: _Rows) -> Tensor:
    return r.base * torch.pow(r.p(Kind.EXPONENTIAL, "gamma"), r.t)


@_formula(Kind.COSINE)
def _cosine(r: _Rows) -> Tensor:
    t_max, eta_min = _positive_or_one(r.p(Kind.COSINE, "T_max")), r.p(Kind.COSINE, "eta_min")
    # cos is 2*T_max periodic in t; reduce first (fmod of floats is exact) so the angle stays
    # small and precise at giant step counts.
    phase = torch.remainder(r.t, 2.0 * t_max)
    return eta_min + (r.base - eta_min) * (1.0 + torch.cos(math.pi * phase / t_max)) / 2.0


@_formula(Kind.COSINE_POWER)
def _cosine_power(r: _Rows) -> Tensor:
    t_max, eta_min = _positive_or_one(r.p(Kind.COSINE_POWER, "T_max")), r.p(Kind.COSINE_POWER, "eta_min")
    q = torch.minimum(r.t, t_max) / t_max
    decay = torch.pow((1.0 + torch.cos(math.pi * q)) / 2.0, r.p(Kind.COSINE_POWER, "exponent"))
    return eta_min + (r.base - eta_min) * decay


@_formula(Kind.TABLE)
def _table(r: _Rows) -> Tensor:
    if r.table is None:
        raise ValueError("a Kind.TABLE schedule row needs its table")
    length = r.p(Kind.TABLE, "length").to(torch.int64).clamp_min(1)
    idx = r.p(Kind.TABLE, "offset").to(torch.int64) + torch.minimum(r.t_int.clamp_min(0), length - 1)
    idx = idx.clamp(0, max(r.table.numel() - 1, 0))
    return r.base * r.table[idx]


@_formula(Kind.DIRECT)
def _direct(r: _Rows) -> Tensor:
    return r.p(Kind.DIRECT, "lr")


@_formula(Kind.MULTISTEP)
def _multistep(r: _Rows) -> Tensor:
    if r.table is None:
        raise ValueError("a Kind.MULTISTEP schedule row needs its table of milestones")
    offset, count = r.p(Kind.MULTISTEP, "offset"), r.p(Kind.MULTISTEP, "count")
    j = torch.arange(r.table.numel(), device=r.device, dtype=torch.float64)
    mine = (j >= offset[:, None]) & (j < (offset + count)[:, None])  # [rows, table]
    passed = (mine & (r.table <= r.t.unsqueeze(-1))).sum(dim=-1).to(torch.float64)
    return r.base * torch.pow(r.p(Kind.MULTISTEP, "gamma"), passed)


@_formula(Kind.CONSTANT_FACTOR)
def _constant_factor(r: _Rows) -> Tensor:
    factor, total = r.p(Kind.CONSTANT_FACTOR, "factor"), r.p(Kind.CONSTANT_FACTOR, "total_iters")
    return torch.where(r.t < total, r.base * factor, r.base)


@_formula(Kind.LINEAR)
def _linear(r: _Rows) -> Tensor:
    start, end = r.p(Kind.LINEAR, "start"), r.p(Kind.LINEAR, "end")
    total = _positive_or_one(r.p(Kind.LINEAR, "total_iters"))
    # Weighted form: exactly end_factor at t >= total_iters (no start - start cancellation residue).
    m = torch.minimum(total, r.t)
    return r.base * ((start * (total - m) + end * m) / total)


@_formula(Kind.POLYNOMIAL)
def _polynomial(r: _Rows) -> Tensor:
    total = _positive_or_one(r.p(Kind.POLYNOMIAL, "total_iters"))
    return r.base * torch.pow(1.0 - torch.minimum(total, r.t) / total, r.p(Kind.POLYNOMIAL, "power"))


def _with_warmup(r: _Rows, kind: Kind, after: Tensor) -> Tensor:
    """The large-model schedules' linear warmup from 0, ``base * t / W`` while ``t < W``."""
    w = r.p(kind, "warmup_steps")
    warm = w > 0
    warmup_lr = r.base * r.t / torch.where(warm, w, torch.ones_like(w))
    return torch.where(warm & (r.t < w), warmup_lr, after)


@_formula(Kind.WARMUP_COSINE)
def _warmup_cosine(r: _Rows) -> Tensor:
    w, total = r.p(Kind.WARMUP_COSINE, "warmup_steps"), r.p(Kind.WARMUP_COSINE, "total_steps")
    floor = r.base * r.p(Kind.WARMUP_COSINE, "min_lr_ratio")
    span = torch.where(total > w, total - w, torch.ones_like(total))
    prog = torch.clamp((r.t - w) / span, 0.0, 1.0)
    cos_lr = floor + (r.base - floor) * (1.0 + torch.cos(math.pi * prog)) / 2.0
    return _with_warmup(r, Kind.WARMUP_COSINE, torch.where(r.t >= total, floor, cos_lr))


@_formula(Kind.WSD)
def _wsd(r: _Rows) -> Tensor:
    start, steps = r.p(Kind.WSD, "decay_start"), r.p(Kind.WSD, "decay_steps")
    floor = r.base * r.p(Kind.WSD, "min_lr_ratio")
    shape = r.p(Kind.WSD, "shape")
    prog = torch.clamp((r.t - start) / _positive_or_one(steps), 0.0, 1.0)
    prog = torch.where((steps <= 0) & (r.t >= start), torch.ones_like(prog), prog)
    linear = r.base - (r.base - floor) * prog
    cosine = floor + (r.base - floor) * (1.0 + torch.cos(math.pi * prog)) / 2.0
    one_minus_sqrt = r.base - (r.base - floor) * torch.sqrt(prog)
    decayed = torch.where(shape == 0, linear, torch.where(shape == 1, cosine, one_minus_sqrt))
    return _with_warmup(r, Kind.WSD, torch.where(r.t >= start, decayed, r.base))


@_formula(Kind.INVERSE_SQRT)
def _inverse_sqrt(r: _Rows) -> Tensor:
    w = r.p(Kind.INVERSE_SQRT, "warmup_steps")
    inv = r.base * torch.sqrt(_positive_or_one(w) / torch.clamp_min(r.t, 1.0))
    return _with_warmup(r, Kind.INVERSE_SQRT, inv)


@_formula(Kind.COSINE_RESTARTS)
def _cosine_restarts(r: _Rows) -> Tensor:
    e = r.t + r.p(Kind.COSINE_RESTARTS, "offset")
    t0 = _positive_or_one(r.p(Kind.COSINE_RESTARTS, "T_0"))
    t_mult, eta_min = r.p(Kind.COSINE_RESTARTS, "T_mult"), r.p(Kind.COSINE_RESTARTS, "eta_min")
    geo = t_mult > 1
    m = torch.where(geo, t_mult, torch.full_like(t_mult, 2.0))

    def cycle_start(n):
        return t0 * (torch.pow(m, n) - 1.0) / (m - 1.0)

    # Cycle index from the geometric series, then corrected by one either way so that
    # start(n) <= e < start(n + 1) holds exactly (the log can round across a boundary).
    n = torch.floor(torch.log(e * (m - 1.0) / t0 + 1.0) / torch.log(m))
    n = torch.where(cycle_start(n) > e, n - 1.0, n)
    n = torch.where(cycle_start(n + 1.0) <= e, n + 1.0, n)
    t_cur = torch.where(geo, e - cycle_start(n), torch.remainder(e, t0))
    t_i = torch.where(geo, t0 * torch.pow(m, n), t0)
    return eta_min + (r.base - eta_min) * (1.0 + torch.cos(math.pi * t_cur / t_i)) / 2.0


@_formula(Kind.CYCLIC)
def _cyclic(r: _Rows) -> Tensor:
    peak, ratio = r.p(Kind.CYCLIC, "peak"), r.p(Kind.CYCLIC, "step_ratio")
    mode, gamma = r.p(Kind.CYCLIC, "mode"), r.p(Kind.CYCLIC, "gamma")
    size = _positive_or_one(r.p(Kind.CYCLIC, "total_size"))
    cycle = torch.floor(1.0 + r.t / size)
    x = 1.0 + r.t / size - cycle
    f = torch.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
    scale = torch.where(
        mode == 0, torch.ones_like(r.t), torch.where(mode == 1, 1.0 / torch.pow(2.0, cycle - 1.0), torch.pow(gamma, r.t))
    )
    return r.base + (peak - r.base) * f * scale


@_formula(Kind.ONE_CYCLE)
def _one_cycle(r: _Rows) -> Tensor:
    total, x = r.p(Kind.ONE_CYCLE, "total_steps"), r.p(Kind.ONE_CYCLE, "pct_steps")
    peak, final, flags = r.p(Kind.ONE_CYCLE, "peak"), r.p(Kind.ONE_CYCLE, "final"), r.p(Kind.ONE_CYCLE, "flags")
    t, base = r.t, r.base
    three = flags >= 2
    linear = torch.remainder(flags, 2.0) == 1
    e1 = x - 1.0
    e2 = torch.where(three, 2.0 * x - 2.0, total - 1.0)
    e3 = total - 1.0
    ph1 = t <= e1
    ph2 = ~ph1 & ((t <= e2) | ~three)
    a = torch.where(ph1, torch.zeros_like(t), torch.where(ph2, e1, e2))
    b = torch.where(ph1, e1, torch.where(ph2, e2, e3))
    v_start = torch.where(ph1, base, torch.where(ph2, peak, base))
    v_end = torch.where(ph1, peak, torch.where(ph2, torch.where(three, base, final), final))
    q = (t - a) / (b - a)
    cos_v = v_end + (v_start - v_end) / 2.0 * (torch.cos(math.pi * q) + 1.0)
    lin_v = (v_end - v_start) * q + v_start
    return torch.where(linear, lin_v, cos_v)


_COMPOSITES = {int(Kind.SEQUENTIAL), int(Kind.PRODUCT)}


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
        step: int64 tensor with one element (the step counter ``t``), on ``desc``'s device; or
            several steps (``lr_table``).
        desc: float64 tensor ``[rows, DESC_WIDTH]`` (``fused_lr.schedules.rows``).
        table: float64 tensor of tabulated values (needed by ``Kind.TABLE`` / ``Kind.MULTISTEP`` rows).
        kinds: the kinds present in ``desc``, known on the host; only those formulas are
            evaluated. ``None``: every kind (but the table kinds without a table).
        n_groups: how many leading rows are parameter groups (the rest are pieces); ``None``: all.
        edits: apply the rows' edit columns (``False`` when the host knows none is active, or to
            get the schedule's own value under an edit).

    Returns:
        float64 tensor ``[n_groups]`` (``[steps, n_groups]`` for several steps).
    """
    if kinds is None:
        kinds = set(Kind) if table is not None else set(Kind) - {Kind.TABLE, Kind.MULTISTEP}
    kinds = {int(k) for k in kinds}  # (plain ints: traced by torch.compile like any int)
    # One step: scalar math against the [rows] columns. Several (lr_table): a [steps, 1] column
    # that broadcasts every formula to [steps, rows].
    t_int = step.reshape(()) if step.numel() == 1 else step.reshape(-1, 1)
    if t_int.dtype != torch.int64:
        t_int = t_int.to(torch.int64)
    t_global = t_int
    cols = desc.unbind(1)
    kind, start, owner = cols[Col.KIND], cols[Col.START], cols[Col.OWNER]
    if kinds & _COMPOSITES:
        # Each row at its local step (pieces start later, a factor of a product may run behind or
        # ahead of the counter); inactive pieces clamp at 0, unused.
        t_int = (t_int - start.to(torch.int64)).clamp_min(0)
    rows = _Rows(desc, t_int, table)
    out = rows.base if step.numel() == 1 else rows.base.expand(step.numel(), rows.base.shape[0])
    plain = [k for k in sorted(kinds) if k not in _COMPOSITES]
    for k in plain:
        value = _FORMULAS[k](rows)
        # With one kind present every row has it: no mask (fewer ops on the per-step path).
        out = value if len(kinds) == 1 else torch.where(kind == k, value, out)
    if kinds & _COMPOSITES:
        is_piece = owner >= 0
        owner_idx = owner.clamp_min(0).to(torch.int64)
        owner_kind = kind[owner_idx]
        pieces_out = out
    if Kind.SEQUENTIAL in kinds:
        tg = t_global.to(torch.float64)
        active = is_piece & (owner_kind == int(Kind.SEQUENTIAL)) & (tg >= start) & (tg < cols[Col.END])
        chosen = torch.zeros(out.shape, dtype=out.dtype, device=out.device).index_add_(
            -1, owner_idx, torch.where(active, pieces_out, 0.0)
        )
        out = torch.where(kind == int(Kind.SEQUENTIAL), chosen, out)
    if Kind.PRODUCT in kinds:
        factor = is_piece & (owner_kind == int(Kind.PRODUCT))
        src = torch.where(factor, pieces_out, 1.0)
        prod = torch.ones(out.shape, dtype=out.dtype, device=out.device).scatter_reduce_(
            -1, owner_idx.expand(src.shape), src, "prod"
        )
        out = torch.where(kind == int(Kind.PRODUCT), rows.base * prod, out)
    if edits:
        tg = t_global.to(torch.float64)
        a, b = cols[Col.EDIT_A], cols[Col.EDIT_B]
        edited = torch.where(b == 0, a, a + b * (out - a))
        out = torch.where((tg >= cols[Col.EDIT_FROM]) & (tg < cols[Col.EDIT_TO]), edited, out)
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
    n = desc.shape[0] if n_groups is None else n_groups
    return lr_at(steps, desc, table, kinds, n_groups, edits).reshape(steps.numel(), n)

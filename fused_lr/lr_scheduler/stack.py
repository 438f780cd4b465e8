"""Several schedulers built on one optimizer and each stepped: torch's chain of recurrences."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.optim.lr_scheduler as stock_lr_scheduler
from torch.optim import Optimizer

from .. import schedules as S
from .._lr_state import GroupLRs
from ._base import _FusedLRScheduler, _host_work, _lr_value
from .composite import _Composer


class _Stack:
    """Schedulers built one after another on the same optimizer and each stepped by the user.

    torch chains them: each ``step()`` applies its scheduler's recurrence to the LR the others
    left (``scheduler1.step(); scheduler2.step()`` in torch's docs). Two forms:

    * **product** — every member is multiplicative (StepLR, MultiStepLR, ExponentialLR, ConstantLR,
      LinearLR, PolynomialLR, MultiplicativeLR, a product ChainedScheduler): the LR is
      ``base_lr * prod(member factor at that member's own step)``, one closed form on the device
      (``Kind.PRODUCT``). The device counter holds one member's step count (the *counter member*);
      every other member's factor rows start ``counter - its step`` steps later, which the host
      keeps current (an upload only when members are not stepped in lockstep; the counter moves to
      another member when that one is stepped alone). An assigned LR scales the product, as
      torch's recurrences carry it.
    * **host** — any other member (cosine, lambdas, cycles...): torch's recurrences do not compose
      into a closed form, so each member's step computes every group's LR on the host with torch's
      own scheduler (``_torch_step_lrs``) and writes it into the edit columns (one small copy per
      step; under CUDA-graph replay this form does not advance: use ChainedScheduler there).
    """

    def __init__(self, optimizer: Optimizer, others: list, new: _FusedLRScheduler, previous: Any) -> None:
        self.optimizer = optimizer
        self.members = [*others, new]
        self.product = all(m._multiplicative() for m in self.members)
        carried = previous._sched.edits() if previous is not None and previous._sched is not None else {}
        host = dict(getattr(previous, "_host_driven", {}))
        n = len(optimizer.param_groups)
        self._host_driven = {g: math.inf for g in (host if self.product else range(n))}
        counter = getattr(previous, "_counter", previous)
        self._counter = counter if any(counter is m for m in self.members) else self.members[0]
        self._alone = 0  # steps of one non-counter member since the counter member last stepped
        self._last_stepped = None
        # Carried edits: a multiplicative one scales every later step (whatever the counter holds).
        self._mul = {g: e[3] for g, e in carried.items() if e[1] == math.inf and e[2] == 0.0} if self.product else {}
        self._sched = None
        self.rebuild()

    @property
    def _lrs(self) -> GroupLRs:
        """The optimizer's LR state (``fused_lr._lr_state``): group["lr"] and the device buffer."""
        return GroupLRs.of(self.optimizer)

    def has(self, sched: Any) -> bool:
        return any(sched is m for m in self.members)

    @property
    def _t0(self) -> int:
        return max(self._counter.last_epoch, 0)

    def rebuild(self, keep_edits: bool = True) -> None:
        """The composed description at the members' current steps, attached to the optimizer
        (``keep_edits=False``: without the effect of assigned LRs, as after a load)."""
        opt = self.optimizer
        if not keep_edits:
            self._mul = {}
            self._host_driven = {} if self.product else self._host_driven
        n = len(opt.param_groups)
        self._pieces: list[tuple[int, Any]] = []  # (factor row, member) of the product
        if self.product:
            comp = _Composer(n)
            descs = [m._describe() for m in self.members]
            for g in range(n):
                first = comp.n + len(comp.pieces)
                for m, desc in zip(self.members, descs):
                    row, _ = comp.take(desc, g)
                    if int(row[S.Col.KIND]) == S.Kind.PRODUCT:  # a product chain: its factors, appended by take
                        end = comp.n + len(comp.pieces)
                        rows = range(end - int(row[S.col(S.Kind.PRODUCT, "count")]), end)
                    else:
                        row = list(row)
                        row[S.Col.BASE] = 1.0  # a factor: the group's base_lr is the product's
                        rows = [comp.add_piece(row, g)]
                    self._pieces += [(r, m) for r in rows]
                comp.groups[g] = S.product_row(self.members[0].base_lrs[g], comp.n + len(comp.pieces) - first, first)
            rows, table, direct, mom = comp.describe()
        else:
            # Every group is host-driven: any member's rows do (the edit columns override them).
            # No momentum rows: each cycling member sets group["momentum"] on the host, as torch's.
            rows, table, direct, *_ = self._counter._describe()
            mom = None
        sched = S.DeviceSchedule(self._lrs.buf.device)
        sched.set_rows(rows, table, direct, n_groups=n, momentum_rows=mom)
        self._sched = sched
        self._place_pieces()
        sched.sync()
        sched.set_step(self._t0)
        sched.set_edits({g: (-math.inf, math.inf, 0.0, b) for g, b in self._mul.items()})
        self._drive({})
        self._lrs.attach(self, sched)

    def _place_pieces(self) -> None:
        """Each factor row runs at its member's own step: start = counter - member step."""
        if self._pieces:
            t0 = self._t0
            self._sched.set_starts_host([r for r, _ in self._pieces], [t0 - max(m.last_epoch, 0) for _, m in self._pieces])

    def _drive(self, values: dict[int, float]) -> None:
        """Host-driven groups take ``values`` (else their current LR) for the counter's current step."""
        if not self._host_driven:
            return
        t0 = self._t0
        floats = self._lrs.current()
        self._sched.set_edits({g: (t0, t0 + 1, values.get(g, floats[g]), 0.0) for g in self._host_driven})

    # -------------------------------------------------------------- the optimizer's interface

    def _lrs_assigned(self, changes: list) -> None:
        t0 = self._t0
        current = self._sched.host_lrs(t0)
        raw = None
        host = {}
        for g, value in changes:
            x = _lr_value(value)
            if abs(x - current[g]) <= _FusedLRScheduler._SAME_LR_RTOL * abs(current[g]):
                continue
            if g not in self._host_driven:
                raw = raw if raw is not None else self._sched.raw_host_lrs(t0)
                if raw[g] != 0.0:
                    self._mul[g] = x / raw[g]
                    self._sched.set_edit(g, -math.inf, math.inf, 0.0, self._mul[g])
                    continue
                self._host_driven[g] = math.inf  # 0 times anything is 0: follow torch on the host
                self._mul.pop(g, None)
            host[g] = x
        self._drive(host)
        if not self._sched.pending:
            self._lrs.write(self._sched)

    # -------------------------------------------------------------- members' steps

    def initial_step(self, member: _FusedLRScheduler) -> None:
        """``member`` was just built: its initial step, chained onto the others' LRs."""
        previous = self._lrs.current()
        _host_work(self._after_member_step, member, previous, True)

    def member_step(self, member: _FusedLRScheduler, epoch: int | None, changes: list) -> None:
        self._lrs.apply(changes)
        previous = self._lrs.current()
        member._step_count += 1
        if epoch is None:
            member.last_epoch += 1
        else:
            if member._stock_step_warnings:
                warnings.warn(stock_lr_scheduler.EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=3)
            member.last_epoch = epoch
        sched = self._sched
        rebuild = member._grow_tables(member.last_epoch)
        if rebuild:
            member._build_schedule()  # its own description (its rows are composed here)
        if member is self._counter:
            self._alone = 0
            if rebuild:
                pass
            elif epoch is None and self._lrs.defers_schedule(sched):
                sched.defer_advance()  # the next update kernel advances the counter
            elif epoch is None:
                sched.advance()
            else:
                sched.set_step(self._t0)
        else:
            self._alone = self._alone + 1 if self._last_stepped is member else 1
            if self._alone >= 2:
                # Stepped twice with the counter member idle (a scheduler left behind): this one
                # holds the counter from now on, so its steps advance it without uploads.
                self._counter, self._alone, rebuild = member, 0, True
        self._last_stepped = member
        if rebuild:
            self.rebuild()
        elif self._pieces:
            self._place_pieces()
        _host_work(self._after_member_step, member, previous, False)

    def _after_member_step(self, member: _FusedLRScheduler, previous: list[float], initial: bool) -> None:
        if self._host_driven:
            values = member._torch_step_lrs(previous, max(member.last_epoch, 0), initial)
            self._drive({g: values[g] for g in self._host_driven})
        sched = self._sched
        if not sched.pending:
            self._lrs.write(sched)
        values = sched.host_lrs(self._t0)
        opt = self.optimizer
        self._lrs.publish(values)
        member._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else v
                           for g, v in zip(opt.param_groups, values)]
        member._write_momenta()

"""Schedulers made of schedulers: SequentialLR, ChainedScheduler, PerGroupLR."""

from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.optim.lr_scheduler as stock_lr_scheduler
from torch.optim import Optimizer

from .. import schedules as S
from .._lr_state import GroupLRs
from ._base import (
    _check_optimizer,
    _FusedLRScheduler,
    _int_arg,
    _lr_value,
    set_momentum,
    uses_beta1,
)
from .closed_forms import (
    ConstantLR,
    ExponentialLR,
    LinearLR,
    MultiStepLR,
    PolynomialLR,
    StepLR,
)
from .lambdas import LambdaLR, MultiplicativeLR
from .plateau import ReduceLROnPlateau


def _check_parts(name: str, schedulers, optimizer: Optimizer, *, reject: tuple, label: str = "scheduler at index {i}",
                 same_step: bool = False) -> list:
    """The parts of a composite scheduler (SequentialLR, ChainedScheduler, PerGroupLR): fused_lr
    schedulers with a closed form (none of ``reject``), of ``optimizer``, at one step when
    ``same_step``. Raises naming the part (``label`` with its index) before anything changes."""
    schedulers = list(schedulers)
    if not schedulers:
        raise ValueError(f"{name} expects at least one scheduler, but got no scheduler.")
    for i, sub in enumerate(schedulers):
        where = label.format(i=i)
        if isinstance(sub, (ReduceLROnPlateau, stock_lr_scheduler.ReduceLROnPlateau)):
            raise ValueError(
                f"{name} does not support `ReduceLROnPlateau` ({where}): its LR follows the metrics passed to "
                "step(), not the step count, so it has no closed form"
            )
        if not isinstance(sub, _FusedLRScheduler) or isinstance(sub, reject):
            raise TypeError(
                f"{name} combines fused_lr schedulers with a closed form; {where} is a "
                f"{type(sub).__module__}.{type(sub).__name__}"
            )
        if sub.optimizer is not optimizer:
            raise ValueError(f"{name} expects all schedulers to belong to the same optimizer, but {where} has another")
    epochs = {sub.last_epoch for sub in schedulers}
    if same_step and len(epochs) != 1:
        raise ValueError(f"{name} needs schedulers at the same step; their last_epoch values are {sorted(epochs)}")
    return schedulers


class SequentialLR(_FusedLRScheduler):
    """Runs fused_lr schedulers one after another, switching at the milestones, on the device.

    Same signature as ``torch.optim.lr_scheduler.SequentialLR``: ``schedulers[i]`` drives the LR
    from ``milestones[i - 1]`` (0 for the first) until ``milestones[i]``, restarted at its own step
    0, as torch does (``scheduler.step(0)`` at the milestone). The usual warmup:
    ``SequentialLR(opt, [LinearLR(opt, 0.01, total_iters=W), CosineAnnealingLR(opt, T - W)], [W])``.

    Each scheduler becomes a set of piece rows of one description, and the device picks the active
    piece from the step counter: the switch costs no host work and survives CUDA-graph replay.
    The schedulers must be fused_lr schedulers of the same optimizer with a closed form: not
    ``ReduceLROnPlateau`` (torch rejects it too), ``MultiplicativeLR`` (its chained product has no
    restart at a milestone), ``PerGroupLR`` or another ``SequentialLR``. LambdaLR pieces are
    tabulated (their callables run at the piece's local epoch, called by each step as torch's
    are; see :class:`LambdaLR`'s table mode).

    A ``ChainedScheduler`` part behaves as in torch. First in the sequence, it drives the LR until
    the first milestone with torch's values there, which are not the chain's own: torch resets the
    LRs and steps each chained part once more from step -1, outside the initial mode (so an
    ``ExponentialLR`` part has decayed once at step 0). They are computed by torch's own
    schedulers on a stand-in optimizer and tabulated (the table grows as a LambdaLR's does); the
    chain's parts must therefore be freshly built, with torch twins, without momentum cycling.
    Later in the sequence, torch's ``SequentialLR.step`` raises ``NotImplementedError`` on reaching
    its milestone (it restarts the part with ``_update_lr(0)``, which needs a ``get_lr`` that
    ``ChainedScheduler`` lacks): so does this one, before anything changes.
    """

    def __init__(self, optimizer: Optimizer, schedulers, milestones, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "SequentialLR")
        # Another sequence or per-group schedules have piece rows of their own that a sequence's
        # pieces cannot hold; MultiplicativeLR's product has no restart. A chain is tabulated.
        schedulers = _check_parts(type(self).__name__, schedulers, optimizer,
                                  reject=(SequentialLR, MultiplicativeLR, PerGroupLR))
        for i, sub in enumerate(schedulers):
            if getattr(sub, "cycle_momentum", False):
                raise ValueError(
                    f"{type(self).__name__}: scheduler at index {i} ({type(sub).__name__}) cycles momentum, which a "
                    "sequence cannot hand over on the device; pass cycle_momentum=False (or use it alone / in PerGroupLR)"
                )
            if isinstance(sub, ChainedScheduler) and i == 0:
                sub._check_twins(f"{type(self).__name__}: the ChainedScheduler at index 0")
        milestones = list(milestones)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more than the "
                f"number of milestone points, but got number of schedulers {len(schedulers)} and the "
                f"number of milestones to be equal to {len(milestones)}"
            )
        for i, m in enumerate(milestones):
            _int_arg(f"milestones[{i}]", m, 1)
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {milestones}")
        self._schedulers = schedulers
        self._milestones = [int(m) for m in milestones]
        # torch resets the LRs to initial_lr before its first piece's initial step.
        GroupLRs.of(optimizer).publish([_lr_value(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups])
        super().__init__(optimizer, last_epoch)


    def _active(self, step: int) -> tuple[Any, int, float]:
        """The piece active at ``step``: (scheduler, its first step, the step it ends at)."""
        starts = [0, *self._milestones]
        ends = [*self._milestones, math.inf]
        i = bisect.bisect_right(self._milestones, step)
        return self._schedulers[i], starts[i], ends[i]

    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        # The active piece's recurrence, until the next milestone restarts the next piece from its
        # closed form (torch's scheduler.step(0)).
        sub, start, end = self._active(step)
        kind, stop = sub._edit_policy(group, step - start)
        return kind, min(start + stop, end)

    def _torch_step_lrs(self, lrs: list[float], epoch: int, initial: bool = False) -> list[float]:
        sub, start, _ = self._active(epoch)
        if epoch == start:
            return self._sched.raw_host_lrs(epoch)
        return sub._torch_step_lrs(lrs, epoch - start)
    def _describe(self):
        n = len(self.optimizer.param_groups)
        k = len(self._schedulers)
        starts = [0, *self._milestones]
        ends = [*self._milestones, math.inf]
        rows = [S.sequential_row(b, k, n + g * k) for g, b in enumerate(self.base_lrs)]
        pieces: list[list[float]] = [[] for _ in range(n * k)]
        table: list[float] = []
        for i, sub in enumerate(self._schedulers):
            sub_rows, sub_table, *_ = self._tabulated(sub)
            shift = len(table)
            table.extend(sub_table or [])
            for g, row in enumerate(sub_rows):
                pieces[g * k + i] = S.as_piece(S.shift_table(row, shift), starts[i], ends[i], g)
        return rows + pieces, table, None

    def _grow_tables(self, epoch: int) -> bool:
        # Lambda pieces and a chain are always tabulated here (device-mode lambdas too); a piece's
        # local step is at most the global one, so growing by the global step covers it.
        grew = [sub._grow_lambda_tables(epoch) if isinstance(sub, LambdaLR)
                else sub._grow_horizon(epoch) if isinstance(sub, ChainedScheduler)
                else sub._grow_tables(epoch)
                for sub in self._schedulers]
        return any(grew)

    def _check_step(self, epoch: int) -> None:
        # Only sequences with a later ChainedScheduler or a LambdaLR piece have host work here (a
        # plain sequence traces nothing under torch.compile).
        for i, sub in enumerate(self._schedulers):
            if isinstance(sub, ChainedScheduler) and i > 0 and epoch >= self._milestones[i - 1]:
                raise NotImplementedError(
                    f"SequentialLR cannot step to {epoch}: torch's SequentialLR restarts the scheduler at index {i} "
                    f"at milestone {self._milestones[i - 1]} with _update_lr(0), which a ChainedScheduler does "
                    "not implement (torch 2.13 raises NotImplementedError there too); put the ChainedScheduler first"
                )
        if any(isinstance(sub, LambdaLR) for sub in self._schedulers) and not torch.compiler.is_compiling():
            i = bisect.bisect_right(self._milestones, epoch)
            sub = self._schedulers[i]
            if isinstance(sub, LambdaLR):
                # torch's step calls the active piece's callables at its local epoch (all tabulated here).
                sub._at_step(epoch - ([0, *self._milestones][i]), sub.lr_lambdas)

    def _tabulated(self, sub):
        """``sub``'s description with device-mode lambdas tabulated (they would see the global step)."""
        if isinstance(sub, ChainedScheduler):
            if sub is not self._schedulers[0]:
                # Never active: the step reaching its milestone raises, as torch's does.
                return [S.constant_row(b) for b in sub.base_lrs], None, None
            rows, table = [], []
            for column in sub._simulate(in_sequence=True)[0]:
                rows.append(S.table_row(1.0, len(table), len(column)))
                table.extend(column)
            return rows, table, None
        if isinstance(sub, LambdaLR) and "device" in sub.modes:
            saved = sub.modes
            sub.modes = ["table"] * len(saved)
            try:
                return sub._describe()
            finally:
                sub.modes = saved
        return sub._describe()

    def _build_schedule(self) -> None:
        sched = S.DeviceSchedule(self._lrs.buf.device)
        rows, table, direct = self._describe()
        sched.set_rows(rows, table, direct, n_groups=len(self.optimizer.param_groups))
        self._sched = sched

    def state_dict(self) -> dict[str, Any]:
        """torch's keys: ``_milestones``, ``last_epoch``, ``_schedulers`` (their state dicts)..."""
        sd = super().state_dict()
        sd["_milestones"] = list(self._milestones)
        sd["_schedulers"] = [sub.state_dict() for sub in self._schedulers]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        subs = state_dict.get("_schedulers")
        if subs is None or len(subs) != len(self._schedulers):
            raise ValueError(
                f"state_dict has {0 if subs is None else len(subs)} schedulers, this SequentialLR has {len(self._schedulers)}"
            )
        milestones = list(state_dict.get("_milestones", self._milestones))
        if milestones != self._milestones:
            raise ValueError(f"state_dict milestones {milestones} differ from this SequentialLR's {self._milestones}")
        backups = [sub.state_dict() for sub in self._schedulers]
        try:
            for sub, sd in zip(self._schedulers, subs):
                sub.load_state_dict(sd)
            super().load_state_dict({"base_lrs": state_dict.get("base_lrs", self.base_lrs), **state_dict})
        except Exception:
            for sub, sd in zip(self._schedulers, backups):
                sub.load_state_dict(sd)
            self._rebuild(keep_edits=False)
            self._lrs.write(self._sched)
            raise


class _Composer:
    """Builds one description from rows taken out of other schedulers' descriptions."""

    def __init__(self, n_groups: int) -> None:
        self.n = n_groups
        self.groups: list[list[float] | None] = [None] * n_groups
        self.pieces: list[list[float]] = []
        self.table: list[float] = []
        self.direct: dict[int, Callable] = {}
        self.moms: list[tuple[int, list[float]]] = []

    def take(self, desc, g: int) -> tuple[list[float], int]:
        """Group ``g``'s row of ``desc`` (its pieces appended here); also returns the table shift."""
        rows, table, direct, *more = desc
        shift = len(self.table)
        self.table.extend(table or [])
        row = S.shift_table(rows[g], shift)
        kind = S.Kind(int(row[S.Col.KIND]))
        if kind in (S.Kind.SEQUENTIAL, S.Kind.PRODUCT):
            count, first = int(row[S.col(kind, "count")]), int(row[S.col(kind, "first")])
            row[S.col(kind, "first")] = float(self.n + len(self.pieces))
            for k in range(count):
                piece = S.shift_table(rows[first + k], shift)
                piece[S.Col.OWNER] = float(g)
                self.pieces.append(piece)
        if direct and g in direct:
            self.direct[g] = direct[g]
        mom = more[0] if more and more[0] else {}
        if g in mom:
            self.moms.append((g, S.shift_table(rows[mom[g]], shift)))
        return row, shift

    def add_piece(self, row, owner: int) -> int:
        self.pieces.append(S.as_piece(row, 0.0, math.inf, owner))
        return self.n + len(self.pieces) - 1

    def describe(self):
        first_mom = self.n + len(self.pieces)
        rows = list(self.groups) + self.pieces + [r for _, r in self.moms]
        mom = {g: first_mom + j for j, (g, _) in enumerate(self.moms)}
        return rows, self.table, self.direct or None, mom


class _Composite(_FusedLRScheduler):
    """A scheduler made of other fused_lr schedulers of the same optimizer, on one counter."""

    _schedulers: list

    def _init_from_parts(self, optimizer: Optimizer) -> None:
        # No initial step of its own (torch's ChainedScheduler has none): continue at the parts' step.
        first = self._schedulers[0]
        self.optimizer = optimizer
        self.base_lrs = list(first.base_lrs)
        self.last_epoch = first.last_epoch
        self._step_count = first._step_count
        self._get_lr_called_within_step = False
        self._is_initial = False
        self._host_driven = {}
        self._sched = None
        self._rebuild()
        self._join()  # the parts drove the LRs until now; this composite does from here
        self._lrs.write(self._sched)
        self._publish()

    def _grow_tables(self, epoch: int) -> bool:
        grew = [sub._grow_tables(epoch) for sub in self._schedulers]
        return any(grew)

    def _check_step(self, epoch: int) -> None:
        for sub in self._schedulers:
            sub._check_step(epoch)

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        for sub in self._schedulers:  # keep the parts' bookkeeping (and state_dicts) in step
            sub.last_epoch = self.last_epoch
            sub._step_count = self._step_count

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["_schedulers"] = [sub.state_dict() for sub in self._schedulers]
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        subs = state_dict.get("_schedulers")
        if subs is None or len(subs) != len(self._schedulers):
            raise ValueError(
                f"state_dict has {0 if subs is None else len(subs)} schedulers, this {type(self).__name__} "
                f"has {len(self._schedulers)}"
            )
        sd = dict(state_dict)
        if "last_epoch" not in sd:  # torch's ChainedScheduler keeps no step of its own
            sd["last_epoch"] = subs[0]["last_epoch"] if isinstance(subs[0], dict) and "last_epoch" in subs[0] else None
        sd.setdefault("base_lrs", self.base_lrs)
        backups = [sub.state_dict() for sub in self._schedulers]
        own_backup = super().state_dict()
        try:
            for sub, s in zip(self._schedulers, subs):
                sub.load_state_dict(s)
            super().load_state_dict(sd)
        except Exception:
            for sub, s in zip(self._schedulers, backups):
                sub.load_state_dict(s)
            super().load_state_dict(own_backup)
            raise


class ChainedScheduler(_Composite):
    """torch's ChainedScheduler on the device: one counter, no host switching.

    Same signature as ``torch.optim.lr_scheduler.ChainedScheduler`` plus the keyword-only
    ``horizon``. torch steps every scheduler in turn, each applying its recurrence to the LR the
    previous one left. Two device forms, chosen at construction (``scheduler.mode`` tells which):

    * ``"product"`` — when every part is multiplicative (``StepLR``, ``MultiStepLR``,
      ``ExponentialLR``, ``ConstantLR``, ``LinearLR``, ``PolynomialLR``, ``MultiplicativeLR``),
      the chain is the product of their closed-form factors, ``lr = base_lr * prod(factor_i(t))``
      (``fused_lr.schedules.Kind.PRODUCT``): exact at any step, nothing tabulated.
    * ``"table"`` — otherwise (cosine, lambdas, cycles, warm restarts: torch's chained form
      has no closed form), the chain's LRs are computed on the host ahead of time by running
      torch's own schedulers with the same arguments on a stand-in optimizer, for steps
      ``[0, horizon)``, and kept on the device as a table that doubles when ``last_epoch``
      passes three quarters of it (under CUDA-graph replay give a ``horizon`` covering the run).
      The parts must be freshly built (``last_epoch=-1``), pure functions of the step, with a
      torch twin (not the large-model schedules) and without momentum cycling.

    ``step()`` steps the chain; the parts' ``last_epoch`` follow for state_dict. Do not step the
    parts themselves. As torch's, each part's ``get_last_lr()`` reports the LR the chain held right
    after that part's step: the LR with the parts up to it at the new step and the later ones still
    at the previous step (the last part's is the chain's LR).
    """

    _MULTIPLICATIVE_PARTS = ()  # filled in below, once the classes exist

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._parts_lrs = None
        super().load_state_dict(state_dict)

    def _part_lr(self, part: _FusedLRScheduler) -> list[float]:
        """``part.get_last_lr()``: torch's ``_last_lr`` of that part of the chain (computed when
        asked, once per step: a chain step itself does no host work for it)."""
        cache = self.__dict__.get("_parts_lrs")
        if cache is None or cache[0] != self.last_epoch:
            cache = self._parts_lrs = (self.last_epoch, self._part_lrs())
        return list(cache[1][next(i for i, sub in enumerate(self._schedulers) if sub is part)])

    def _part_lrs(self) -> list[list[float]]:
        """torch's ``_last_lr`` of every part at ``last_epoch``: ``lrs[i][g]``."""
        t = max(self.last_epoch, 0)
        if self.mode == "table":
            return [[column[t] for column in columns] for columns in self._simulate()[1]]
        # Product of closed-form factors F_j: part i has stepped the chain to base * F_0(t) ...
        # F_i(t) * F_{i+1}(t - 1) ... (torch's recurrences multiply by F_j(t) / F_j(t - 1)).
        sched = self._sched
        before = None
        if t > 0:  # (first: the block of host values that starts at t - 1 holds t too)
            blk, k = sched._host_values(t - 1)
            before = blk[2][k]
        blk, k = sched._host_values(t)
        now = blk[2][k]
        lrs = [[0.0] * len(self.base_lrs) for _ in self._schedulers]
        for g, base in enumerate(self.base_lrs):
            first = int(sched.desc_host[g, S.col(S.Kind.PRODUCT, "first")])
            for i in range(len(self._schedulers)):
                lr = base
                for j in range(len(self._schedulers)):
                    if j <= i:
                        lr *= now[first + j]
                    elif before is not None:
                        lr *= before[first + j]
                lrs[i][g] = lr
        return lrs


    def __init__(self, schedulers, optimizer: Optimizer | None = None, *, horizon: int = 1024) -> None:
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError("ChainedScheduler expects at least one scheduler to be chained, but got no scheduler.")
        for i, sub in enumerate(schedulers):
            if not hasattr(sub, "optimizer"):
                raise TypeError(f"ChainedScheduler at index {i} should have `optimizer` as its attribute.")
        optimizer = optimizer or schedulers[0].optimizer
        _check_optimizer(optimizer, "ChainedScheduler")
        self._schedulers = _check_parts("ChainedScheduler", schedulers, optimizer, reject=(_Composite,), same_step=True)
        self.horizon = _int_arg("horizon", horizon, 1)
        self.mode = "product" if all(isinstance(s, self._MULTIPLICATIVE_PARTS) for s in schedulers) else "table"
        if self.mode == "table":
            self._check_twins("ChainedScheduler")
        self._init_from_parts(optimizer)
        for sub in schedulers:
            sub._chained_by = self  # its get_last_lr() reports the chain's value (see _part_lr)


    def _multiplicative(self) -> bool:
        return self.mode == "product"

    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        return ("mul", math.inf) if self.mode == "product" else ("host", math.inf)

    def _torch_step_lrs(self, lrs: list[float], epoch: int, initial: bool = False) -> list[float]:
        for sub in self._schedulers:  # torch steps each part on the LR the previous one left
            lrs = sub._torch_step_lrs(lrs, epoch, initial)
        return lrs

    def _check_twins(self, where: str) -> None:
        """The parts can be re-run as torch's own schedulers (``_simulate``): torch twins, freshly
        built, no momentum cycling. Raises naming the part otherwise."""
        for i, sub in enumerate(self._schedulers):
            twin = getattr(stock_lr_scheduler, type(sub).__name__, None)
            if twin is None or isinstance(sub, SequentialLR):
                raise ValueError(
                    f"{where}: scheduler at index {i} ({type(sub).__name__}) has no closed-form chained "
                    "composition and no torch twin to tabulate it with; use SequentialLR or PerGroupLR"
                )
            if getattr(sub, "cycle_momentum", False):
                raise ValueError(
                    f"{where}: scheduler at index {i} ({type(sub).__name__}) cycles momentum, which a "
                    "tabulated chain does not carry; pass cycle_momentum=False"
                )
            if sub.last_epoch != 0 or sub._ctor_args[1].get("last_epoch", -1) != -1:
                raise ValueError(
                    f"{where}: scheduler at index {i} is at step {sub.last_epoch}; a tabulated chain "
                    "needs freshly built schedulers (resume the chain with load_state_dict instead)"
                )

    def _simulate(self, in_sequence: bool = False) -> tuple[list[list[float]], list[list[list[float]]]]:
        """torch's chained LRs for steps [0, horizon) from torch's own schedulers on a stand-in
        optimizer: ``values[g][t]``, and each part's ``get_last_lr()`` ``parts[i][g][t]``.

        ``in_sequence``: as the first scheduler of torch's SequentialLR, which resets the LRs to
        ``initial_lr``, undoes every part's initial step (``last_epoch -= 1``) and steps the chain
        once (each part outside the initial mode)."""
        cached = self.__dict__.get("_simulated")
        if cached is not None and cached[0] == (self.horizon, in_sequence, tuple(self.base_lrs)):
            return cached[1]
        groups = self.optimizer.param_groups
        stand_in = torch.optim.SGD(
            [
                {"params": [torch.zeros(1)], "lr": base, "momentum": g.get("momentum", 0.0)}
                for base, g in zip(self.base_lrs, groups)
            ],
            lr=1.0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "scheduler stepped before the optimizer" warnings
            parts = []
            for sub in self._schedulers:
                args, kwargs = sub._ctor_args
                kwargs = {k: v for k, v in kwargs.items() if k not in ("optimizer", "horizon")}
                args = args[1:] if args and args[0] is self.optimizer else args
                parts.append(getattr(stock_lr_scheduler, type(sub).__name__)(stand_in, *args, **kwargs))
            chain = stock_lr_scheduler.ChainedScheduler(parts, stand_in)
            driver = stock_lr_scheduler.SequentialLR(stand_in, [chain], []) if in_sequence else chain
            values = [[] for _ in stand_in.param_groups]
            part_values = [[[] for _ in stand_in.param_groups] for _ in parts]
            for t in range(self.horizon):
                if t:
                    driver.step()
                for column, g in zip(values, stand_in.param_groups):
                    column.append(float(g["lr"]))
                for part, columns in zip(parts, part_values):
                    for column, lr in zip(columns, part.get_last_lr()):
                        column.append(float(lr))
        self._simulated = ((self.horizon, in_sequence, tuple(self.base_lrs)), (values, part_values))
        return values, part_values

    def _grow_tables(self, epoch: int) -> bool:
        if self.mode == "table":
            return self._grow_horizon(epoch)
        return super()._grow_tables(epoch)

    def _describe(self):
        if self.mode == "table":
            table, rows = [], []
            for column in self._simulate()[0]:
                rows.append(S.table_row(1.0, len(table), self.horizon))
                table.extend(column)
            return rows, table, None
        comp = _Composer(len(self.base_lrs))
        descs = [sub._describe() for sub in self._schedulers]
        for g, base in enumerate(self.base_lrs):
            first = comp.n + len(comp.pieces)
            for desc in descs:
                row, _ = comp.take(desc, g)
                row[S.Col.BASE] = 1.0  # a factor: base_lr is the group's, once
                comp.add_piece(row, g)
            comp.groups[g] = S.product_row(base, len(descs), first)
        return comp.describe()


class PerGroupLR(_Composite):
    """Different schedules for different parameter groups, in one optimizer and one launch.

    ``PerGroupLR(optimizer, schedulers)``: ``schedulers[g]`` is a fused_lr scheduler of the same
    optimizer whose schedule ``param_groups[g]`` follows (the same scheduler may serve several
    groups). Example — backbone on cosine, head constant::

        opt = FusedSGD([{"params": backbone, "lr": 0.1}, {"params": head, "lr": 0.01}], momentum=0.9)
        cosine = CosineAnnealingLR(opt, T_max=100)
        flat = ConstantLR(opt, factor=1.0, total_iters=0)
        sched = PerGroupLR(opt, [cosine, flat])       # then sched.step() only

    The groups' rows (with any pieces of a SequentialLR / ChainedScheduler part, and momentum
    rows of a cycling part) form one description on one step counter, so the Triton kernel
    evaluates every group's own schedule in the same launch. Step only the PerGroupLR. Parts are
    built on the whole optimizer as torch schedulers are, with torch's construction side effects:
    a CyclicLR / OneCycleLR with ``cycle_momentum`` sets every group's momentum; PerGroupLR puts
    back the momentum of the groups that do not follow a cycling part.
    """

    def __init__(self, optimizer: Optimizer, schedulers) -> None:
        _check_optimizer(optimizer, "PerGroupLR")
        schedulers = list(schedulers)
        n = len(optimizer.param_groups)
        if len(schedulers) != n:
            raise ValueError(f"PerGroupLR needs one scheduler per param group: {n} groups, got {len(schedulers)} schedulers")
        _check_parts(
            "PerGroupLR", schedulers, optimizer, reject=(PerGroupLR,), label="the scheduler for group {i}", same_step=True
        )
        self._group_schedulers = schedulers
        unique: list = []
        for sub in schedulers:
            if not any(sub is u for u in unique):
                unique.append(sub)
        self._schedulers = unique
        # Momentum of groups that do not follow a cycling part: as before any cycling part was built.
        for g, sub in enumerate(schedulers):
            if not getattr(sub, "cycle_momentum", False):
                before = [u._momenta_before[g] for u in unique if getattr(u, "cycle_momentum", False)]
                if before:
                    set_momentum(optimizer.param_groups[g], before[0], uses_beta1(optimizer))
        self._init_from_parts(optimizer)
        self.base_lrs = [sub.base_lrs[g] for g, sub in enumerate(schedulers)]

    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        return self._group_schedulers[group]._edit_policy(group, step)

    def _torch_step_lrs(self, lrs: list[float], epoch: int, initial: bool = False) -> list[float]:
        return [sub._torch_step_lrs(lrs, epoch, initial)[g] for g, sub in enumerate(self._group_schedulers)]

    def _describe(self):
        comp = _Composer(len(self._group_schedulers))
        cache: dict[int, Any] = {}
        for g, sub in enumerate(self._group_schedulers):
            desc = cache.setdefault(id(sub), sub._describe())
            comp.groups[g], _ = comp.take(desc, g)
        return comp.describe()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.base_lrs = [sub.base_lrs[g] for g, sub in enumerate(self._group_schedulers)]


ChainedScheduler._MULTIPLICATIVE_PARTS = (
    StepLR,
    MultiStepLR,
    ExponentialLR,
    ConstantLR,
    LinearLR,
    PolynomialLR,
    MultiplicativeLR,
)

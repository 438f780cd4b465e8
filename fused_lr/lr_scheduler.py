"""Schedulers with torch.optim.lr_scheduler's names and signatures whose LR is computed on the device.

Each scheduler turns its arguments into rows of a :class:`fused_lr.schedules.DeviceSchedule`
(description + int64 step counter on the optimizer's device) and attaches it to a
:class:`fused_lr.FusedSGD`. ``step()`` advances the device counter and the device recomputes every
group's LR with the closed form ``fused_lr.schedules.lr_at`` (torch ops, or inside the Triton update
kernel): no value is read back to the host. The host keeps ``last_epoch`` itself and sets the float
``group["lr"]`` and ``get_last_lr()`` from a CPU mirror of the description, also without a sync.

torch's schedulers are recurrences over ``group["lr"]``; these are closed forms that reproduce them:

* The LR at every step equals stock's to float64 rounding (not bit for bit).
* An LR assigned to ``group["lr"]`` (or loaded with the optimizer's state) carries on as torch's
  recurrence carries it: each scheduler's ``_edit_policy`` says how (a ratio of a multiplicative
  schedule: an edit of the row; dropped at the next step of a schedule torch recomputes; otherwise
  torch's own scheduler followed on the host, ``_torch_step_lrs``).
* Several schedulers stepped on one optimizer compose as torch's chain (``_Stack``).
* Constructing with ``last_epoch=k`` gives the closed-form LR at ``k + 1`` (torch's chained
  ExponentialLR/StepLR keep the LR found in the optimizer). Resume with ``load_state_dict``.

LambdaLR callables run on the device one of two ways (see :class:`LambdaLR`).
"""

from __future__ import annotations

import bisect
import math
import numbers
import types
import warnings
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.optim.lr_scheduler as stock_lr_scheduler
from torch.optim.lr_scheduler import LRScheduler

from . import schedules as S
from .optimizer import FusedSGD

__all__ = [
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "LambdaLR",
    "MultiplicativeLR",
    "SequentialLR",
    "ReduceLROnPlateau",
    "WarmupCosineLR",
    "WarmupStableDecayLR",
    "InverseSqrtLR",
    "CyclicLR",
    "OneCycleLR",
    "ChainedScheduler",
    "PerGroupLR",
    "LRScheduler",
]


def _int_arg(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _real_arg(name: str, value: Any, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _lr_value(lr: Any) -> float:
    """An LR as a float (a tensor LR is read on the host: torch's schedulers read it too)."""
    return float(lr.detach().reshape(()).item()) if isinstance(lr, torch.Tensor) else float(lr)


def _build_twin(sched: Any) -> LRScheduler:
    """torch's scheduler of the same name and arguments on a stand-in optimizer whose groups start
    at ``sched.base_lrs`` (so the twin's base_lrs are the same)."""
    import inspect

    cls = getattr(stock_lr_scheduler, type(sched).__name__)
    groups = sched.optimizer.param_groups
    stand_in = torch.optim.SGD(
        [{"params": [torch.zeros(1)], "lr": base, "initial_lr": base, "momentum": g.get("momentum", 0.0)}
         for base, g in zip(sched.base_lrs, groups)],
        lr=1.0,
    )
    args, kwargs = sched._ctor_args
    bound = inspect.signature(type(sched).__init__).bind(sched, *args, **kwargs)
    bound.arguments.pop("self", None)
    bound.arguments["optimizer"] = stand_in
    bound.arguments.pop("horizon", None)
    bound.arguments["last_epoch"] = -1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**bound.arguments)


@torch.compiler.disable
def _host_work_outside_the_graph(fn: Callable, *args: Any) -> Any:
    return fn(*args)


def _host_work(fn: Callable, *args: Any) -> Any:
    """A scheduler's host work (Python floats, host copies of device state): inside a compiled
    region it runs outside the graph (``torch.compiler.disable``: tracing it would guard on every
    new float); eagerly it is a plain call (the disable wrapper costs microseconds per call)."""
    if torch.compiler.is_compiling():
        return _host_work_outside_the_graph(fn, *args)
    return fn(*args)


def _host_can_read(t: torch.Tensor) -> bool:
    """Whether reading ``t`` on the host is free (a CPU tensor: no device to wait for)."""
    return t.device.type == "cpu"


class _AsyncRead:
    """Device values copied to the host without waiting: on an accelerator, non-blocking copies
    into pinned memory and an event; ``poll()`` returns the values once the event has completed
    (``Event.query()`` never blocks), else None. On CPU the values are there at once."""

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        if tensors[0].device.type == "cpu":  # (a copy, so that later device ops do not change it)
            self._host = [t.clone() for t in tensors]
            self._event = None
            return
        self._host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        for h, t in zip(self._host, tensors):
            h.copy_(t, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()

    def poll(self) -> list | None:
        if self._event is not None and not self._event.query():
            return None
        return [h.tolist() if h.dim() else h.item() for h in self._host]


def _check_optimizer(optimizer: Any, scheduler: str) -> FusedSGD:
    if not isinstance(optimizer, FusedSGD):
        raise TypeError(
            f"fused_lr.lr_scheduler.{scheduler} needs a fused_lr.FusedSGD optimizer, got "
            f"{type(optimizer).__name__}; use torch.optim.lr_scheduler.{scheduler} for other optimizers"
        )
    return optimizer


class _FusedLRScheduler(LRScheduler):
    """Shared machinery: a closed-form device schedule behind torch's LRScheduler interface."""

    # Names of the constructor arguments saved in state_dict (besides torch's bookkeeping keys).
    _arg_names: tuple[str, ...] = ()
    # step() warns as torch's LRScheduler.step does (step called before optimizer.step; the epoch
    # argument, with torch's EPOCH_DEPRECATION_WARNING). A scheduler whose torch twin has its own
    # step() without those warnings (CosineAnnealingWarmRestarts) clears it.
    _stock_step_warnings = True

    def __new__(cls, *args: Any, **kwargs: Any):
        self = super().__new__(cls)
        # The constructor's arguments, as given: a tabulated ChainedScheduler rebuilds torch's twin.
        self._ctor_args = (args, kwargs)
        return self

    def __init__(self, optimizer: FusedSGD, last_epoch: int = -1) -> None:
        last_epoch = _int_arg("last_epoch", last_epoch, -1)
        if last_epoch >= 0:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when resuming "
                        "scheduler with last_epoch >= 0"
                    )
        self._sched: S.DeviceSchedule | None = None
        # Groups whose LR torch's recurrence would compute from an assigned value in a way no
        # edit column expresses: {group: step at which the closed form takes over again}. Each
        # step computes their LR on the host with torch's own scheduler (see _torch_step_lrs).
        self._host_driven: dict[int, float] = {}
        super().__init__(optimizer, last_epoch)

    # -------------------------------------------------------------- schedule description

    def _rows(self) -> list[list[float]]:
        """One description row per group, from ``self.base_lrs`` and the constructor arguments."""
        raise NotImplementedError

    def _describe(self):
        """``(rows, table, direct_fns)`` of the device schedule; most schedulers need rows only."""
        return self._rows(), None, None

    def _build_schedule(self) -> None:
        sched = S.DeviceSchedule(self.optimizer._lr_buf.device)
        rows, table, direct, *more = self._describe()
        sched.set_rows(rows, table, direct, n_groups=len(self.optimizer.param_groups),
                       momentum_rows=more[0] if more else None)
        self._sched = sched

    def _rebuild(self, keep_edits: bool = True) -> None:
        """Rebuild the description (grown tables, loaded arguments) at ``last_epoch``, keeping the
        edits of assigned LRs, and make it the optimizer's."""
        old = self._sched
        self._build_schedule()
        self._sched.set_step(max(self.last_epoch, 0))
        if keep_edits and old is not None:
            self._sched.set_edits(old.edits())
        owner = self.optimizer._lr_owner
        if isinstance(owner, _Stack) and owner.has(self):
            owner.rebuild()  # the composed description holds this one's rows
        elif owner is self or owner is None:
            self.optimizer._attach(self, self._sched)
        # (else: a part of a composite, or a scheduler another one replaced: its own description only)

    def _grow_tables(self, epoch: int) -> bool:
        """Extend host-tabulated values ahead of ``epoch``; True when the description changed."""
        return False

    def _check_step(self, epoch: int) -> None:
        """Raise (before anything changes) when stepping to ``epoch`` is invalid (OneCycleLR)."""

    def _write_momenta(self) -> None:
        """Set ``group["momentum"]`` of momentum-cycled groups for ``last_epoch`` (host floats, as
        torch does; the Triton kernel computes the same value on the device from the schedule)."""
        if self._sched is not None and self._sched.momentum_rows:
            for g, m in self._sched.host_momenta(max(self.last_epoch, 0)).items():
                self.optimizer.param_groups[g]["momentum"] = m

    # -------------------------------------------------------------- assigned LRs

    # How an LR assigned to group g at step k carries on under torch's recurrence for this
    # scheduler (_edit_policy): "mul" — torch multiplies the LR by per-step ratios of its closed
    # form, so the assigned value scales the schedule (an edit column: b = assigned / schedule);
    # "once" — torch recomputes the LR from base_lrs at every step, so the assignment lasts until
    # the next step; "host" — anything else: torch's own scheduler computes each later LR on the
    # host from the previous one. The second value is the step at which the closed form takes over
    # again (inf: never).
    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        return "once", step + 1

    # A value within this relative distance of the schedule's own LR is the schedule's LR: torch's
    # chained recurrences reach the closed forms' values only to float64 rounding (~1e-15 relative
    # per step, see tests/conftest.py LR_RTOL), so an LR loaded from a stock checkpoint is not an
    # edit. 1e-12 is far below any deliberate change of an LR.
    _SAME_LR_RTOL = 1e-12

    def _lrs_assigned(self, changes: list) -> None:
        """The user assigned ``group["lr"]`` (or loaded it): carry the values on as torch would,
        from ``last_epoch``. Called by the optimizer before an update and by ``step()`` before
        advancing; the values were checked there."""
        k = max(self.last_epoch, 0)
        current = self._sched.host_lrs(k)
        for g, value in changes:
            x = float(value.detach().reshape(()).item()) if isinstance(value, torch.Tensor) else float(value)
            if abs(x - current[g]) <= self._SAME_LR_RTOL * abs(current[g]):
                continue
            self._assign(g, k, x)
        if not self._sched.pending:  # (with a deferred step pending, the update kernel evaluates the edits)
            self._sched.write_lr(self.optimizer._lr_buf)

    def _assign(self, g: int, k: int, x: float) -> None:
        kind, stop = self._edit_policy(g, k)
        if kind == "mul":
            v = self._sched.raw_host_lrs(k)[g]
            if v != 0.0:
                self._sched.set_edit(g, k, stop, 0.0, x / v)
                self._host_driven.pop(g, None)
                return
            kind = "host"  # 0 times anything is 0: torch's ratios are followed on the host
        self._sched.set_edit(g, k, k + 1, x, 0.0)
        if kind == "host":
            self._host_driven[g] = stop
        else:
            self._host_driven.pop(g, None)

    def _drive_on_host(self, previous: list[float]) -> None:
        """At a new ``last_epoch``: the LRs of host-driven groups, from torch's own recurrence."""
        k = self.last_epoch
        for g, stop in list(self._host_driven.items()):
            if k >= stop:
                del self._host_driven[g]
        if not self._host_driven:
            return
        values = self._torch_step_lrs(previous, k)
        for g in self._host_driven:
            self._sched.set_edit(g, k, k + 1, values[g], 0.0)

    def _torch_step_lrs(self, lrs: list[float], epoch: int, initial: bool = False) -> list[float]:
        """The LRs torch's scheduler sets when it steps to ``epoch`` with the groups at ``lrs``
        (``initial``: its initial step, at construction)."""
        twin = self._twin()
        if twin is None:  # a closed form (torch recomputes it from base_lrs): the schedule's own values
            return self._sched.raw_host_lrs(epoch)
        for group, lr in zip(twin.optimizer.param_groups, lrs):
            group["lr"] = lr
        twin.last_epoch = epoch - 1
        twin._is_initial = initial or epoch == 0  # (torch's get_lr keeps the current LR there)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the stand-in optimizer never steps
                twin.step()
        finally:
            twin._is_initial = False
        return [float(group["lr"]) for group in twin.optimizer.param_groups]

    # torch schedulers whose step multiplies the previous LR (a twin is needed to follow them).
    _CHAINABLE = ("StepLR", "MultiStepLR", "ExponentialLR", "ConstantLR", "LinearLR", "PolynomialLR",
                  "CosineAnnealingLR", "MultiplicativeLR")

    def _twin(self):
        """torch's own scheduler with this one's arguments on a stand-in optimizer (built once), or
        None for schedulers whose torch twin recomputes from base_lrs at every step."""
        if type(self).__name__ not in self._CHAINABLE:
            return None
        twin = self.__dict__.get("_twin_sched")
        if twin is None:
            twin = self._twin_sched = _build_twin(self)
        return twin

    # -------------------------------------------------------------- stepping

    def step(self, epoch: int | None = None) -> None:
        """Advance the schedule by one (or to ``epoch``, deprecated as in torch) on the device."""
        if self._step_count == 1 and self._stock_step_warnings:
            if not hasattr(self.optimizer.step, "_wrapped_by_lr_sched"):
                warnings.warn(
                    "Seems like `optimizer.step()` has been overridden after learning rate scheduler "
                    "initialization. Please, make sure to call `optimizer.step()` before "
                    "`lr_scheduler.step()`. See more details at "
                    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate",
                    UserWarning,
                    stacklevel=2,
                )
            elif not getattr(self.optimizer, "_opt_called", False):
                warnings.warn(
                    "Detected call of `lr_scheduler.step()` before `optimizer.step()`. "
                    "In PyTorch 1.1.0 and later, you should call them in the opposite order: "
                    "`optimizer.step()` before `lr_scheduler.step()`.  Failure to do this "
                    "will result in PyTorch skipping the first value of the learning rate schedule. "
                    "See more details at "
                    "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate",
                    UserWarning,
                    stacklevel=2,
                )
        if epoch is not None:
            epoch = _int_arg("epoch", epoch, 0)
        self._check_step(self.last_epoch + 1 if epoch is None else epoch)
        opt = self.optimizer
        initial = self._sched is None
        # Everything is checked before anything changes (assigned LRs included). Inside
        # torch.compile the groups' float LRs are not read: a guard on them would recompile at
        # every new LR (an assignment made in a compiled region is taken at the next eager step).
        changes = [] if torch.compiler.is_compiling() else opt._lr_assignments()
        owner = opt._lr_owner
        if isinstance(owner, _Stack) and owner.has(self):
            owner.member_step(self, epoch, changes)  # one of several schedulers driving these LRs
            return
        # Assignments made while another scheduler (or none) drove the LRs: taken there first.
        opt._apply_lr_assignments(changes)
        if initial:
            self.base_lrs = [_lr_value(b) for b in self.base_lrs]
            self._build_schedule()
        elif owner is not self:
            # Another scheduler drives these LRs now (built after this one, or a composite made of
            # this one): stepping this one chains its recurrence onto theirs, as torch's do.
            if isinstance(self._join(), _Stack):
                opt._lr_owner.member_step(self, epoch, [])
                return
        self._step_count += 1
        sched = self._sched
        if epoch is None:
            self.last_epoch += 1
            if initial:
                sched.set_step(self.last_epoch)
                if isinstance(self._join(), _Stack):
                    opt._lr_owner.initial_step(self)
                    return
            elif opt._defers_schedule(sched):
                # Triton path: the next update kernel advances the counter and writes the LRs.
                sched.defer_advance()
            else:
                sched.advance()
        else:
            if self._stock_step_warnings:
                warnings.warn(stock_lr_scheduler.EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
            self.last_epoch = epoch
            sched.set_step(epoch)
            # torch's closed form at an explicit epoch: assigned LRs do not carry over.
            self._clear_edits()
        _host_work(self._finish_step, initial)

    def _finish_step(self, initial: bool) -> None:
        """The host's part of a step: grown tables, host-driven groups, the device LRs and the float
        ``group["lr"]`` values. Python floats computed on the host: inside a compiled region this
        runs eagerly (one graph break, where stock's scheduler step is never traced at all)."""
        opt = self.optimizer
        previous = [_lr_value(g["lr"]) for g in opt.param_groups]
        if self._grow_tables(self.last_epoch):
            self._rebuild()
        sched = self._sched
        if initial:
            self._start_from(previous)
        else:
            self._drive_on_host(previous)
        if not sched.pending:
            sched.write_lr(opt._lr_buf)
        self._publish()

    def _parts(self) -> list:
        """The schedulers this one is made of (composites), recursively."""
        out = []
        for sub in [*getattr(self, "_schedulers", ()), *getattr(self, "_group_schedulers", ())]:
            if not any(sub is o for o in out):
                out += [sub, *sub._parts()]
        return out

    def _multiplicative(self) -> bool:
        """Whether every step multiplies the LR by a ratio of the closed form (torch's recurrence
        for these schedulers): such schedulers compose into one closed-form product."""
        return False

    def _join(self):
        """Make this scheduler drive the optimizer's LRs: alone, or with the schedulers that drive
        them already (not this one's own parts), as torch chains schedulers stepped on one
        optimizer. Returns the new owner (this scheduler or a _Stack)."""
        opt = self.optimizer
        owner = opt._lr_owner
        parts = self._parts()
        members = owner.members if isinstance(owner, _Stack) else [] if owner is None else [owner]
        others = [m for m in members if m is not self and not any(m is p for p in parts)]
        if not others:
            opt._attach(self, self._sched)
            return self
        return _Stack(opt, others, self, owner)

    def _clear_edits(self) -> None:
        self._host_driven.clear()
        for g in self._sched.edits():
            self._sched.set_edit(g, 0.0, 0.0, 0.0, 1.0)

    def _start_from(self, lrs: list[float]) -> None:
        """The initial step, as torch's: it starts from the groups' current LRs. Those usually are
        ``base_lrs`` (nothing to do); an LR assigned after an earlier scheduler was built, or a
        construction with ``last_epoch=k``, gives torch's own initial-step value, carried on as an
        assigned LR."""
        k = self.last_epoch
        if k == 0 and all(abs(x - b) <= self._SAME_LR_RTOL * abs(b) for x, b in zip(lrs, self.base_lrs)):
            return
        torch_lrs = self._torch_step_lrs(lrs, k, initial=True)
        own = self._sched.raw_host_lrs(k)
        for g, (y, v) in enumerate(zip(torch_lrs, own)):
            if abs(y - v) <= self._SAME_LR_RTOL * abs(v):
                continue
            kind, stop = self._edit_policy(g, k)
            if kind == "mul" and v != 0.0:
                self._sched.set_edit(g, k, stop, 0.0, y / v)
                continue
            self._sched.set_edit(g, k, k + 1, y, 0.0)
            if kind != "once":
                self._host_driven[g] = stop

    def _publish(self) -> None:
        """``group["lr"]`` of every group from the host's closed form (no device read), as torch's
        step sets it; ``get_last_lr()`` returns the same values."""
        values = self._sched.host_lrs(max(self.last_epoch, 0))
        self.optimizer._publish_lrs(values)
        self._last_lr = [
            g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else v
            for g, v in zip(self.optimizer.param_groups, values)
        ]
        self._write_momenta()

    def preview(self, steps: int) -> S.DeviceSchedule:
        """A CPU copy of this schedule whose tabulated parts cover steps ``[0, steps)``, for
        ``fused_lr.schedule_values`` / ``plot_schedule``; the scheduler itself is left as it is."""
        owners = [self, *getattr(self, "_schedulers", ())]
        horizons = [(o, o.horizon) for o in owners if hasattr(o, "horizon")]
        try:
            self._grow_tables(steps)
            rows, table, direct, *more = self._describe()
        finally:
            for o, h in horizons:
                o.horizon = h
        sched = S.DeviceSchedule(torch.device("cpu"))
        sched.set_rows(rows, table, direct, n_groups=len(self.optimizer.param_groups),
                       momentum_rows=more[0] if more else None)
        return sched

    def _grow_horizon(self, epoch: int) -> bool:
        """Double ``self.horizon`` until ``epoch`` is below three quarters of it; True if it grew."""
        if epoch < self.horizon - self.horizon // 4:
            return False
        while epoch >= self.horizon - self.horizon // 4:
            self.horizon *= 2
        return True

    def get_lr(self) -> list[float]:
        """LRs at ``last_epoch`` from the closed form (host floats, no device read)."""
        return self.get_last_lr()

    def get_last_lr(self) -> list[float]:
        """The LR of every group set by the last ``step()`` (floats computed on the host: no sync;
        tensors, as torch returns them, for groups whose ``"lr"`` is a tensor)."""
        chain = self.__dict__.get("_chained_by")
        if chain is not None:  # a part of a ChainedScheduler reports the LR after its own step, as torch's parts do
            return chain._part_lr(self)
        return list(self._last_lr)

    @property
    def step_counter(self) -> torch.Tensor:
        """The int64 device tensor holding the schedule's step (``last_epoch``)."""
        return self._sched.counter

    # -------------------------------------------------------------- state_dict

    def state_dict(self) -> dict[str, Any]:
        """torch's keys and values (floats), so stock and fused state dicts interchange."""
        sd = {name: getattr(self, name) for name in self._arg_names}
        sd.update(
            base_lrs=list(self.base_lrs),
            last_epoch=self.last_epoch,
            _step_count=self._step_count,
            _is_initial=False,
            _get_lr_called_within_step=False,
            _last_lr=self.get_last_lr(),
        )
        return sd

    def _validate_args(self, values: dict[str, Any]) -> dict[str, Any]:
        """Checked constructor arguments (subclasses)."""
        return values

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a fused_lr or stock state dict of the same scheduler; checks before changing anything."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = [k for k in ("base_lrs", "last_epoch", *self._arg_names) if k not in state_dict]
        if missing:
            raise KeyError(f"{type(self).__name__} state_dict is missing {missing}")
        n = len(self.optimizer.param_groups)
        base_lrs = state_dict["base_lrs"]
        if len(base_lrs) != n:
            raise ValueError(f"state_dict has {len(base_lrs)} base_lrs, the optimizer has {n} param groups")
        base_lrs = [
            _real_arg("base_lrs", float(b) if isinstance(b, torch.Tensor) else b, nonnegative=True)
            for b in base_lrs
        ]
        last_epoch = _int_arg("last_epoch", state_dict["last_epoch"], -1)
        step_count = _int_arg("_step_count", state_dict.get("_step_count", last_epoch + 1), 0)
        args = self._validate_args({k: state_dict[k] for k in self._arg_names})
        for k, v in args.items():
            setattr(self, k, v)
        self.base_lrs = base_lrs
        self.last_epoch = last_epoch
        self._step_count = step_count
        self._host_driven = {}
        self._grow_tables(max(last_epoch, 0))
        self._rebuild(keep_edits=False)
        owner = self.optimizer._lr_owner
        if isinstance(owner, _Stack) and owner.has(self):
            owner.rebuild(keep_edits=False)
        self.optimizer._schedule.write_lr(self.optimizer._lr_buf)
        # torch's load leaves group["lr"] as it is: the next step continues from it, so the
        # optimizer hands it to this scheduler as an assigned LR (an edit only if it differs from
        # the schedule's value beyond rounding).
        self.optimizer._forget_seen_lrs()
        last = state_dict.get("_last_lr")
        self._last_lr = list(last) if isinstance(last, list) and len(last) == n else self._sched.host_lrs(max(last_epoch, 0))
        self._write_momenta()


class StepLR(_FusedLRScheduler):
    """Decays each group's LR by ``gamma`` every ``step_size`` epochs, on the device.

    ``lr(t) = base_lr * gamma ** floor(t / step_size)``. Same signature as
    ``torch.optim.lr_scheduler.StepLR``; ``step_size`` must be a positive integer and ``gamma > 0``.
    """

    _arg_names = ("step_size", "gamma")


    def _multiplicative(self) -> bool:
        return True

    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        return "mul", math.inf  # torch multiplies the previous LR by a ratio of the closed form
    def __init__(self, optimizer: FusedSGD, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "StepLR")
        args = self._validate_args({"step_size": step_size, "gamma": gamma})
        self.step_size, self.gamma = args["step_size"], args["gamma"]
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        return {
            "step_size": _int_arg("step_size", values["step_size"], 1),
            "gamma": _real_arg("gamma", values["gamma"], positive=True),
        }

    def _rows(self):
        return [S.step_row(b, self.step_size, self.gamma) for b in self.base_lrs]


class ExponentialLR(_FusedLRScheduler):
    """Decays each group's LR by ``gamma`` every epoch, on the device: ``lr(t) = base_lr * gamma ** t``.

    Same signature as ``torch.optim.lr_scheduler.ExponentialLR``; ``gamma > 0``. This is also the
    fused form of the manual decay loop ``lr *= (1 - decay_rate)``: ``gamma = 1 - decay_rate``.
    """

    _arg_names = ("gamma",)


    def _multiplicative(self) -> bool:
        return True

    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        return "mul", math.inf  # torch multiplies the previous LR by a ratio of the closed form
    def __init__(self, optimizer: FusedSGD, gamma: float, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "ExponentialLR")
        self.gamma = self._validate_args({"gamma": gamma})["gamma"]
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        return {"gamma": _real_arg("gamma", values["gamma"], positive=True)}

    def _rows(self):
        return [S.exponential_row(b, self.gamma) for b in self.base_lrs]


class MultiStepLR(_FusedLRScheduler):
    """Decays each group's LR by ``gamma`` at every milestone, on the device.

    ``lr(t) = base_lr * gamma ** (number of milestones <= t)``; a milestone repeated ``n`` times
    decays by ``gamma ** n``, as in torch. Same signature as ``torch.optim.lr_scheduler.MultiStepLR``;
    milestones must be non-negative integers in non-decreasing order, ``gamma > 0``.
    """

    _arg_names = ("milestones", "gamma")


    def _multiplicative(self) -> bool:
        return True

    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        return "mul", math.inf  # torch multiplies the previous LR by a ratio of the closed form
    def __init__(self, optimizer: FusedSGD, milestones, gamma: float = 0.1, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "MultiStepLR")
        args = self._validate_args({"milestones": milestones, "gamma": gamma})
        self.milestones, self.gamma = args["milestones"], args["gamma"]
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        raw = values["milestones"]
        if isinstance(raw, Counter):
            ms = sorted(raw.elements())
        else:
            try:
                ms = list(raw)
            except TypeError:
                raise TypeError(f"milestones must be a list of integers, got {raw!r}") from None
            for i, m in enumerate(ms):
                _int_arg(f"milestones[{i}]", m, 0)
            if any(b < a for a, b in zip(ms, ms[1:])):
                raise ValueError(f"milestones must be in non-decreasing order, got {ms}")
        for i, m in enumerate(ms):
            _int_arg(f"milestones[{i}]", m, 0)
        return {"milestones": Counter(int(m) for m in ms), "gamma": _real_arg("gamma", values["gamma"], positive=True)}

    def _describe(self):
        ms = [float(m) for m in sorted(self.milestones.elements())]
        rows = [S.multistep_row(b, self.gamma, 0, len(ms)) for b in self.base_lrs]
        return rows, ms, None


class ConstantLR(_FusedLRScheduler):
    """Multiplies each group's LR by ``factor`` until ``total_iters`` steps have passed, on the device.

    ``lr(t) = base_lr * (factor if t < total_iters else 1)``. Same signature as
    ``torch.optim.lr_scheduler.ConstantLR``; ``0 <= factor <= 1`` and ``total_iters >= 0``.
    As in torch, ``total_iters=0`` keeps the factor for ever (torch lifts it only on reaching
    ``total_iters`` after step 0).
    """

    _arg_names = ("factor", "total_iters")


    def _multiplicative(self) -> bool:
        return True

    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        return "mul", math.inf  # torch multiplies the previous LR by a ratio of the closed form
    def __init__(self, optimizer: FusedSGD, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "ConstantLR")
        args = self._validate_args({"factor": factor, "total_iters": total_iters})
        self.factor, self.total_iters = args["factor"], args["total_iters"]
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        factor = _real_arg("factor", values["factor"])
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"Constant multiplicative factor expected to be between 0 and 1, got {factor}")
        return {"factor": factor, "total_iters": _int_arg("total_iters", values["total_iters"], 0)}

    def _rows(self):
        # torch's ConstantLR applies the factor at step 0 and lifts it only when last_epoch reaches
        # total_iters on a later step, so with total_iters=0 the factor is never lifted: match that.
        total = self.total_iters if self.total_iters > 0 else math.inf
        return [S.constant_factor_row(b, self.factor, total) for b in self.base_lrs]


class LinearLR(_FusedLRScheduler):
    """Moves each group's LR factor linearly from ``start_factor`` to ``end_factor``, on the device.

    ``lr(t) = base_lr * (start + (end - start) * min(t, total_iters) / total_iters)`` — the usual
    warmup. Same signature as ``torch.optim.lr_scheduler.LinearLR``; ``0 < start_factor <= 1``,
    ``0 <= end_factor <= 1``, ``total_iters >= 1``.
    """

    _arg_names = ("start_factor", "end_factor", "total_iters")


    def _multiplicative(self) -> bool:
        return True

    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        return "mul", math.inf  # torch multiplies the previous LR by a ratio of the closed form
    def __init__(
        self,
        optimizer: FusedSGD,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer, "LinearLR")
        args = self._validate_args({"start_factor": start_factor, "end_factor": end_factor, "total_iters": total_iters})
        self.start_factor, self.end_factor, self.total_iters = args["start_factor"], args["end_factor"], args["total_iters"]
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        start = _real_arg("start_factor", values["start_factor"])
        end = _real_arg("end_factor", values["end_factor"])
        if not 0.0 < start <= 1.0:
            raise ValueError(f"Starting multiplicative factor expected to be greater than 0 and less or equal to 1, got {start}")
        if not 0.0 <= end <= 1.0:
            raise ValueError(f"Ending multiplicative factor expected to be between 0 and 1, got {end}")
        return {"start_factor": start, "end_factor": end, "total_iters": _int_arg("total_iters", values["total_iters"], 1)}

    def _rows(self):
        return [S.linear_row(b, self.start_factor, self.end_factor, self.total_iters) for b in self.base_lrs]


class PolynomialLR(_FusedLRScheduler):
    """Polynomial decay to zero over ``total_iters`` steps, on the device.

    ``lr(t) = base_lr * (1 - min(t, total_iters) / total_iters) ** power``. Same signature as
    ``torch.optim.lr_scheduler.PolynomialLR``; ``total_iters >= 1``, ``power >= 0``.
    """

    _arg_names = ("total_iters", "power")


    def _multiplicative(self) -> bool:
        return True

    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        return "mul", math.inf  # torch multiplies the previous LR by a ratio of the closed form
    def __init__(self, optimizer: FusedSGD, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "PolynomialLR")
        args = self._validate_args({"total_iters": total_iters, "power": power})
        self.total_iters, self.power = args["total_iters"], args["power"]
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        return {
            "total_iters": _int_arg("total_iters", values["total_iters"], 1),
            "power": _real_arg("power", values["power"], nonnegative=True),
        }

    def _rows(self):
        return [S.polynomial_row(b, self.total_iters, self.power) for b in self.base_lrs]


class CosineAnnealingLR(_FusedLRScheduler):
    r"""Cosine annealing on the device.

    ``lr(t) = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``, which past
    ``T_max`` rises again with period ``2 * T_max``, exactly as torch's recurrence does. Same
    signature as ``torch.optim.lr_scheduler.CosineAnnealingLR``; ``T_max > 0``, ``eta_min >= 0``.
    """

    _arg_names = ("T_max", "eta_min")


    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        # torch's recurrence scales (lr - eta_min) by a ratio of cosines, followed on the host with
        # torch's own scheduler, until the step after a trough, where torch adds the closed form's
        # increment to eta_min: the closed form again from there (steps s with s-1-T_max = 0 mod 2 T_max).
        # (An LR assigned at a trough itself is carried by that next step's addition: one more period.)
        period = 2 * self.T_max
        to_trough = (self.T_max - step) % period
        return "host", step + 1 + (to_trough if to_trough else period)
    def __init__(self, optimizer: FusedSGD, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "CosineAnnealingLR")
        args = self._validate_args({"T_max": T_max, "eta_min": eta_min})
        self.T_max, self.eta_min = args["T_max"], args["eta_min"]
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        t_max = values["T_max"]
        t_max = _real_arg("T_max", t_max, positive=True)
        if float(t_max).is_integer():
            t_max = int(t_max)
        return {"T_max": t_max, "eta_min": _real_arg("eta_min", values["eta_min"], nonnegative=True)}

    def _rows(self):
        return [S.cosine_row(b, self.T_max, self.eta_min) for b in self.base_lrs]


class CosineAnnealingWarmRestarts(_FusedLRScheduler):
    r"""Cosine annealing with warm restarts (SGDR), on the device.

    Cycle ``i`` lasts ``T_i = T_0 * T_mult**i`` epochs; within it
    ``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * T_cur / T_i)) / 2``. Same signature as
    ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`` (``T_0 >= 1``, integer ``T_mult >= 1``,
    ``eta_min >= 0``) and the same ``step``: ``step()`` advances one epoch, ``step(epoch)`` jumps to
    ``epoch``, fractional ones included (``scheduler.step(epoch + i / iters)``; later ``step()``
    calls keep the fraction, a later integer ``step(epoch)`` drops it), and neither warns (torch's
    ``step`` is its own, without LRScheduler's warnings).

    ``T_cur`` and ``T_i`` are torch's attributes, updated by each step as torch's are; assigning
    them changes the schedule from the next step on, as in torch (``T_cur >= 0``, ``T_i >= 1``).
    The device row is the closed form anchored at the last step that torch computed from scratch
    (construction, ``step(epoch)``, the step after an assignment, a load): between anchors torch's
    recurrence and the closed form agree. One difference remains: where torch's state holds
    ``T_cur >= T_i`` (its ``int(math.log(...))`` in ``step(epoch)`` can land one cycle short at an
    exact cycle start, giving ``eta_min``), the device starts the next cycle (``base_lr``) at that
    step; from the next step on both agree.
    """

    _arg_names = ("T_0", "T_mult", "eta_min")
    _stock_step_warnings = False

    def __init__(self, optimizer: FusedSGD, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "CosineAnnealingWarmRestarts")
        args = self._validate_args({"T_0": T_0, "T_mult": T_mult, "eta_min": eta_min})
        self.T_0, self.T_mult, self.eta_min = args["T_0"], args["T_mult"], args["eta_min"]
        # torch's state, as its __init__ sets it; the initial step updates it (see step()).
        self._T_i = self.T_0
        self._T_cur = last_epoch
        self._anchor = (0, 0, self.T_0)  # (step, T_cur, T_i) the device row starts from
        self._reanchor = True
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        return {
            "T_0": _int_arg("T_0", values["T_0"], 1),
            "T_mult": _int_arg("T_mult", values["T_mult"], 1),
            "eta_min": _real_arg("eta_min", values["eta_min"], nonnegative=True),
        }

    @property
    def T_cur(self) -> float:
        """Epochs since the last restart (torch's attribute; fractional after ``step(float)``)."""
        return self._T_cur

    @T_cur.setter
    def T_cur(self, value: float) -> None:
        self._T_cur = self._check_state("T_cur", value, 0)
        self._reanchor = True

    @property
    def T_i(self) -> float:
        """Length of the current cycle (torch's attribute)."""
        return self._T_i

    @T_i.setter
    def T_i(self, value: float) -> None:
        self._T_i = self._check_state("T_i", value, 1)
        self._reanchor = True

    @staticmethod
    def _check_state(name: str, value: Any, minimum: int) -> float:
        _real_arg(name, value)
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        return value

    def _next_state(self, epoch: float | None) -> tuple[int, float, float]:
        """torch 2.13's CosineAnnealingWarmRestarts.step, on (last_epoch, T_cur, T_i), changing nothing."""
        t_cur, t_i = self._T_cur, self._T_i
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            t_cur = t_cur + 1
            if t_cur >= t_i:
                t_cur = t_cur % t_i
                t_i = t_i * self.T_mult
        elif epoch >= self.T_0:
            if self.T_mult == 1:
                t_cur = epoch % self.T_0
            else:
                n = int(math.log((epoch / self.T_0 * (self.T_mult - 1) + 1), self.T_mult))
                t_cur = epoch - self.T_0 * (self.T_mult**n - 1) / (self.T_mult - 1)
                t_i = self.T_0 * self.T_mult ** (n)
        else:
            t_i = self.T_0
            t_cur = epoch
        return math.floor(epoch), t_cur, t_i

    def _row_params(self) -> tuple[float, float]:
        """(first cycle length, offset) of the row: ``e = t + offset`` runs through cycles of
        lengths ``p0 * T_mult**k``, placing step ``s`` of the anchor ``(s, T_cur, T_i)`` at ``T_cur``
        in a cycle of length ``T_i``. When ``T_i`` is one of ``T_0 * T_mult**n``, the cycles are
        torch's own series from ``T_0`` (the offset is the fractional part of the epoch in a plain
        run, so the row also describes every earlier step)."""
        s, c, i = self._anchor
        m = self.T_mult
        if m == 1:
            return float(i), float((c - s) % i)
        length, start = self.T_0, 0
        while length < i:
            start += length
            length *= m
        if length == i:
            return float(self.T_0), float(c + start - s)
        return float(i), float(c - s)

    def _rows(self):
        p0, offset = self._row_params()
        return [S.cosine_restarts_row(b, p0, self.T_mult, self.eta_min, offset) for b in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:
        """torch's step: one epoch, or to ``epoch`` (fractional allowed); no warnings, as torch's."""
        if epoch is not None:
            _real_arg("epoch", epoch)
            if epoch < 0:
                raise ValueError(f"Expected non-negative epoch, but got {epoch}")
        last, t_cur, t_i = self._next_state(epoch)
        if epoch is not None or self._reanchor:
            # torch computed this state from scratch (or from assigned values): the row starts here.
            self._anchor = (last, t_cur, t_i)
            if self._sched is not None:
                p0, offset = self._row_params()
                sched = self._sched
                for name, v in (("T_0", p0), ("offset", offset)):  # device data only
                    c = S.col(S.Kind.COSINE_RESTARTS, name)
                    sched.desc[:, c].fill_(v)
                    sched.desc_host[:, c] = v
                sched.invalidate()
        super().step(None if epoch is None else last)
        self._T_cur, self._T_i = t_cur, t_i
        self._reanchor = False

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["T_i"], sd["T_cur"] = self._T_i, self._T_cur
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a fused_lr or stock state dict: torch's ``T_cur`` / ``T_i`` at ``last_epoch`` anchor the row."""
        missing = [k for k in ("T_cur", "T_i", "last_epoch") if k not in state_dict]
        if missing:
            raise KeyError(f"CosineAnnealingWarmRestarts state_dict is missing {missing}")
        t_cur = self._check_state("T_cur", state_dict["T_cur"], 0)
        t_i = self._check_state("T_i", state_dict["T_i"], 1)
        last_epoch = _int_arg("last_epoch", state_dict["last_epoch"], -1)
        backup = (self._T_cur, self._T_i, self._anchor, self._reanchor)
        self._T_cur, self._T_i = t_cur, t_i
        self._anchor, self._reanchor = (max(last_epoch, 0), t_cur, t_i), False
        try:
            super().load_state_dict(state_dict)
        except Exception:
            self._T_cur, self._T_i, self._anchor, self._reanchor = backup
            raise


class LambdaLR(_FusedLRScheduler):
    """``lr(t) = base_lr * lr_lambda(t)`` with an arbitrary Python callable, kept on the device.

    Same signature as ``torch.optim.lr_scheduler.LambdaLR`` (one callable, or a list with one per
    group), plus the keyword-only ``horizon``. Each callable runs on the device one of two ways,
    decided once at construction (``scheduler.modes`` tells which, per group):

    * ``"device"`` — the callable is plain arithmetic (``lambda e: 0.95 ** e``,
      ``lambda e: 0.1 * 0.95 ** e``, ``lambda e: (1 - e / 100) ** 0.9``): it is called on the
      int64 device step counter (as a float64 tensor) at every ``step()``. No sync, capturable, and
      a callable that reads mutable state sees it at each step, as in torch. The check: the
      callable is evaluated on a tensor with every host read forbidden (``if``, ``min``/``max`` on
      the value, ``math.*``, indexing, ``int()``) and must agree with its Python evaluation at a
      set of probe epochs (0..4099) to 1e-12. A probe that raises (a callable defined only over
      the run) only means "not device mode".
    * ``"table"`` — anything else (``lambda e: 1.0 if e < 5 else 0.1``, ``math.cos``, lookups
      ``lambda e: table[e]``): the values live in a device table. As torch does, each ``step()``
      calls the callable at the new epoch (at construction: epoch 0) and its exception, if any,
      propagates before anything changes; a value that differs from the table's (a callable
      reading state that changed) replaces it, with one host-to-device copy of the description.
      Ahead of the host, the table holds the callable's values up to ``horizon`` epochs, as far as
      the callable succeeds: an epoch that raises there is not an error until a step reaches it.
      When ``last_epoch`` passes three quarters of the horizon, the table doubles. Under
      CUDA-graph replay the counter outruns the host: pass a ``horizon`` that covers the run (an
      explicit ``horizon`` is checked at construction: a callable that raises inside it is an
      error naming the epoch); past the tabulated values the last one is held.
    """

    _arg_names = ()

    def __init__(
        self,
        optimizer: FusedSGD,
        lr_lambda: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
        *,
        horizon: int | None = None,
    ) -> None:
        _check_optimizer(optimizer, type(self).__name__)
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"Expected {n} lr_lambdas, but got {len(lr_lambda)}")
            fns = list(lr_lambda)
        else:
            fns = [lr_lambda] * n
        for i, fn in enumerate(fns):
            if not callable(fn):
                raise TypeError(f"lr_lambda[{i}] must be callable, got {type(fn).__name__}")
        self.lr_lambdas = fns
        self.horizon = 1024 if horizon is None else _int_arg("horizon", horizon, 1)
        # An explicit horizon promises values for epochs [0, horizon) (graph replay reads them
        # without the host): the first tabulation (at construction) raises for a callable that
        # fails there.
        self._promised = 0 if horizon is None else self.horizon
        self._reset_tables()
        self.modes = self._choose_modes(fns)
        super().__init__(optimizer, last_epoch)
        self._promised = 0  # checked by the first tabulation; later ones (growth, loads) are lenient

    def _reset_tables(self) -> None:
        # id(callable) -> its values at epochs 0, 1, ... as far as known (NaN: an epoch skipped by
        # step(epoch), never read); id -> the epoch where evaluating ahead raised; whether a step
        # changed a value the device table already held.
        self._values: dict[int, list[float]] = {}
        self._stopped: dict[int, int] = {}
        self._changed = False

    @staticmethod
    def _choose_modes(fns) -> list[str]:
        modes: dict[int, str] = {}
        return [modes.setdefault(id(fn), "device" if S.lambda_runs_on_device(fn) else "table") for fn in fns]

    # -------------------------------------------------------------- tabulated callables

    def _next_value(self, fn: Callable, values: list[float], epoch: int) -> float:
        """The table's value at ``epoch`` (``len(values)`` when tabulating ahead)."""
        return float(fn(epoch))

    def _tabulate(self, fn: Callable, stop: int) -> list[float]:
        """``fn``'s values at epochs ``0 .. stop - 1`` as far as it succeeds (kept; no new calls
        for epochs already known, none past an epoch that raised until a step gets there)."""
        key = id(fn)
        values = self._values.setdefault(key, [])
        while len(values) < stop and key not in self._stopped:
            epoch = len(values)
            try:
                values.append(self._next_value(fn, values, epoch))
            except Exception as exc:  # noqa: BLE001 - torch raises only when a step reaches it
                if epoch < self._promised:
                    raise ValueError(
                        f"{type(self).__name__}: lr_lambda raised {type(exc).__name__} at epoch {epoch}, inside "
                        f"horizon={self._promised} (the epochs tabulated for the device ahead of the host): "
                        "pass a horizon the callable covers"
                    ) from exc
                self._stopped[key] = epoch
        return values

    def _step_value(self, fn: Callable, values: list[float], epoch: int) -> float | None:
        """torch's call at a step to ``epoch``: the value to keep, or None when torch makes none."""
        return float(fn(epoch))

    def _keep(self, fn: Callable, epoch: int, value: float) -> None:
        values = self._values.setdefault(id(fn), [])
        if epoch < len(values):
            old = values[epoch]
            if old != value and not (math.isnan(old) and math.isnan(value)):
                values[epoch] = value
                self._changed = True
            return
        values.extend([math.nan] * (epoch - len(values)))
        values.append(value)
        self._stopped.pop(id(fn), None)  # it succeeds here now: tabulate on from this epoch
        self._changed = True

    def _at_step(self, epoch: int, fns) -> None:
        """Call the tabulated callables at ``epoch`` as torch's step does now; every exception
        propagates (torch's) before any value is kept. Inside torch.compile the table ahead is used
        (as under graph replay): a host call on the traced step count would specialize on it."""
        if torch.compiler.is_compiling():
            return
        calls: dict[int, tuple[Callable, float | None]] = {}
        for fn in fns:
            if id(fn) not in calls:
                calls[id(fn)] = (fn, self._step_value(fn, self._values.setdefault(id(fn), []), epoch))
        for fn, value in calls.values():
            if value is not None:
                self._keep(fn, epoch, value)

    def _check_step(self, epoch: int) -> None:
        self._at_step(epoch, [fn for fn, mode in zip(self.lr_lambdas, self.modes) if mode == "table"])

    def _table_rows(self, table: list[float], fn: Callable, base: float) -> list[float]:
        values = self._tabulate(fn, self.horizon)
        offset = len(table)
        table.extend(values)
        return S.table_row(base, offset, len(values))

    def _describe(self):
        rows, table, direct = [], [], {}
        for g, (fn, base, mode) in enumerate(zip(self.lr_lambdas, self.base_lrs, self.modes)):
            if mode == "device":
                rows.append(S.direct_row(base, base * float(fn(max(self.last_epoch, 0)))))
                direct[g] = fn
            else:
                rows.append(self._table_rows(table, fn, base))
        return rows, table, direct

    def _grow_lambda_tables(self, epoch: int) -> bool:
        """Grow the horizon with ``epoch``; True when the description must be rebuilt."""
        grew = self._grow_horizon(epoch)
        changed, self._changed = self._changed, False
        return grew or changed

    def _grow_tables(self, epoch: int) -> bool:
        return "table" in self.modes and self._grow_lambda_tables(epoch)

    def state_dict(self) -> dict[str, Any]:
        """torch's format: ``lr_lambdas`` holds the ``__dict__`` of callable objects, None for functions."""
        sd = super().state_dict()
        sd["lr_lambdas"] = [
            None if isinstance(fn, types.FunctionType) else fn.__dict__.copy() for fn in self.lr_lambdas
        ]
        sd["horizon"] = self.horizon
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        lambdas = state_dict.get("lr_lambdas", [None] * len(self.lr_lambdas))
        if len(lambdas) != len(self.lr_lambdas):
            raise ValueError(f"state_dict has {len(lambdas)} lr_lambdas, this scheduler has {len(self.lr_lambdas)}")
        horizon = _int_arg("horizon", state_dict.get("horizon", self.horizon), 1)
        for fn, saved in zip(self.lr_lambdas, lambdas):
            if saved is not None:
                fn.__dict__.update(saved)
        self.horizon = horizon
        self._reset_tables()  # loaded callable state may change their values: tabulate afresh
        super().load_state_dict(state_dict)


# ---------------------------------------------------------------------------------------------
# ReduceLROnPlateau: the decision logic as device tensor ops
# ---------------------------------------------------------------------------------------------


class ReduceLROnPlateau(stock_lr_scheduler.ReduceLROnPlateau):
    """Reduce each group's LR when a metric stops improving; decisions made on the device.

    Same signature and decisions as ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode min/max,
    threshold_mode rel/abs, threshold, patience, cooldown, min_lr scalar or per group, eps, factor),
    plus the keyword-only ``monitor``: a callable that combines several metrics into one, run on
    the device (``ReduceLROnPlateau(opt, monitor=lambda loss, acc: loss * (1 - acc))`` then
    ``sched.step(val_loss, val_acc)``).

    ``step(metric)`` accepts a device tensor (never read back to the host: no sync) or a Python
    number. The plateau state (``best``, ``num_bad_epochs``, ``cooldown_counter``) lives in device
    tensors; reading it (the properties, ``get_last_lr()``, ``state_dict()``) copies it to the host,
    which syncs on an accelerator, and only then.

    The reduction applies to the LR currently in the optimizer (``opt.lr_tensor``), as torch's
    applies to ``group["lr"]``. NaN metrics are never "better", as in torch.

    Param groups added after construction (``opt.add_param_group``) are handled as torch handles
    them: with a scalar ``min_lr`` every group gets it (torch replaces ``min_lrs`` by
    ``[min_lr] * len(param_groups)`` at the first reduction; reading ``min_lrs`` here shows the same
    list, and reads the device while that reduction is unknown to the host). With a list ``min_lr``
    that no longer matches the groups, a step raises torch's ``RuntimeError`` when it would reduce,
    before anything changes (torch has already counted the bad epoch and advanced ``last_epoch``);
    assign ``min_lrs`` a list with one value per group, as torch's message says. Until then each
    step reads its decision back to the host (a sync on an accelerator) to know whether to raise.
    """

    def __init__(
        self,
        optimizer: FusedSGD,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: list[float] | float = 0,
        eps: float = 1e-8,
        *,
        monitor: Callable[..., Any] | None = None,
    ) -> None:
        _check_optimizer(optimizer, "ReduceLROnPlateau")
        n = len(optimizer.param_groups)
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r} is unknown! (expected 'min' or 'max')")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold mode {threshold_mode!r} is unknown! (expected 'rel' or 'abs')")
        factor = _real_arg("factor", factor)
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"Factor should be < 1.0 (and >= 0), got {factor}")
        patience = _int_arg("patience", patience, 0)
        cooldown = _int_arg("cooldown", cooldown, 0)
        threshold = _real_arg("threshold", threshold, nonnegative=True)
        eps = _real_arg("eps", eps, nonnegative=True)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n:
                raise ValueError(f"expected {n} min_lrs, got {len(min_lr)}")
            min_lrs = [_real_arg(f"min_lr[{i}]", v, nonnegative=True) for i, v in enumerate(min_lr)]
            default_min_lr = None
        else:
            default_min_lr = _real_arg("min_lr", min_lr, nonnegative=True)
            min_lrs = [default_min_lr] * n
        if monitor is not None and not callable(monitor):
            raise TypeError(f"monitor must be callable, got {type(monitor).__name__}")
        # Everything is checked: nothing below can fail on user input.
        self.optimizer = optimizer
        self.factor = factor
        self.patience = patience
        self.cooldown = cooldown
        self.eps = eps
        self.default_min_lr = default_min_lr
        self.min_lrs = min_lrs
        self.monitor = monitor
        self.last_epoch = 0
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        dev = optimizer.lr_tensor.device
        # Shape (1,), not 0-dim: torch 2.13's torch.compile drops in-place writes to a 0-dim float64
        # CPU tensor held by an object once that object's int attribute (last_epoch) has become
        # dynamic (it turns such tensors into symbolic Python floats and retraces without the write).
        self._best = torch.full((1,), self.mode_worse, dtype=torch.float64, device=dev)
        self._num_bad = torch.zeros((), dtype=torch.int64, device=dev)
        self._cooldown_counter = torch.zeros((), dtype=torch.int64, device=dev)
        self._metric = torch.zeros((), dtype=torch.float64, device=dev)
        self._min_lrs_t = torch.tensor(min_lrs, dtype=torch.float64, device=dev)
        # The host's copy of (best, num_bad_epochs, cooldown_counter), valid while every decision
        # was made from a metric the host could read; None after a decision on a device metric
        # until its asynchronous copy (_pending) has arrived.
        self._mirror: tuple[float, int, int] | None = (self.mode_worse, 0, 0)
        self._pending: _AsyncRead | None = None
        self._last_lr = [_lr_value(g["lr"]) for g in optimizer.param_groups]
        optimizer._lr_watchers.append(weakref.ref(self))
        # What _min_lrs_t was built from: (group count, min_lrs, default_min_lr). A step rebuilds it
        # when this changes (a group added, min_lrs assigned or edited in place).
        self._min_key = (n, tuple(min_lrs), default_min_lr)
        # After a group is added with a scalar min_lr: (group count, device flag "a reduction
        # happened since"). torch replaces min_lrs by [default_min_lr] * groups at that reduction;
        # the host learns of it when min_lrs is read.
        self._expand: tuple[int, torch.Tensor] | None = None
        # A list min_lr that no longer matches the groups: steps check (a host read) whether they
        # reduce, and raise torch's error if so.
        self._mismatch = False

    @property
    def min_lrs(self) -> list[float]:
        """torch's ``min_lrs`` list (one lower bound per group); edit it or assign it, as with torch."""
        if self._expand is not None:
            n, reduced = self._expand
            if bool(reduced.item()):  # reads the device: only while a group-count change is pending
                self._min_lrs = [self.default_min_lr] * n
                self._expand = None
        return self._min_lrs

    @min_lrs.setter
    def min_lrs(self, value) -> None:
        self._min_lrs = list(value)
        self._expand = None

    # torch's _reset() sets these attributes; here they are device tensors behind properties.
    def _reset(self) -> None:
        self._best.fill_(self.mode_worse)
        self._cooldown_counter.zero_()
        self._num_bad.zero_()
        self._mirror = (self.mode_worse, 0, 0)
        self._pending = None

    def _state(self) -> tuple[float, int, int]:
        """(best, num_bad_epochs, cooldown_counter): the host's copy when it is current, else read
        from the device (a sync on an accelerator, only after a decision on a device metric)."""
        self._refresh()
        if self._mirror is None:
            self._read_state()
        return self._mirror

    @property
    def best(self) -> float:
        """Best metric so far."""
        return self._state()[0]

    @property
    def num_bad_epochs(self) -> int:
        """Epochs without improvement."""
        return self._state()[1]

    @property
    def cooldown_counter(self) -> int:
        """Remaining cooldown epochs."""
        return self._state()[2]

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def get_last_lr(self) -> list[float]:
        """The LRs after the last ``step()`` (floats, no device read; see ``step`` for when they
        may lag behind the device)."""
        self._refresh()
        return list(self._last_lr)

    def _metric_value(self, metrics: tuple) -> float | None:
        """The metric as a host float when reading it costs nothing (a Python number, or a CPU
        tensor outside torch.compile), else None (a device tensor: never read back)."""
        if self.monitor is not None or len(metrics) != 1:
            return None
        (value,) = metrics
        if isinstance(value, torch.Tensor):
            if not _host_can_read(value) or torch.compiler.is_compiling():
                return None
            return float(value.detach().reshape(()).to(torch.float64))
        return float(value)

    def _metric_tensor(self, metrics: tuple) -> torch.Tensor:
        if self.monitor is not None:
            value = self.monitor(*metrics)
        else:
            (value,) = metrics
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"the metric must have one element, got shape {tuple(value.shape)}")
            return value.detach().reshape(()).to(device=self._metric.device, dtype=torch.float64)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"the metric must be a number or a 1-element tensor, got {value!r}")
        # fill_ passes the number as a kernel argument: a host-to-device write, not a sync.
        return self._metric.fill_(float(value))

    def step(self, metrics: Any, *more: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        """One plateau decision from ``metrics`` (or ``monitor(metrics, *more)``).

        The decision runs as device tensor ops (no sync, capturable). ``group["lr"]`` and
        ``get_last_lr()`` follow it as floats: exactly, with no device read, when the metric is a
        Python number or a CPU tensor (the host repeats torch's decision on its own copy of the
        state); with a metric on an accelerator they are refreshed from an asynchronous copy once
        it has arrived (checked at the next ``step()`` of the optimizer or of this scheduler), so
        they may lag by a step and never sync. ``opt.lr_tensor`` is always current.
        """
        if self.monitor is None and more:
            if len(more) == 1 and isinstance(more[0], numbers.Integral):
                epoch, more = more[0], ()  # torch's deprecated positional step(metrics, epoch)
            else:
                raise TypeError(
                    f"ReduceLROnPlateau.step got {1 + len(more)} metrics without a monitor to combine them; "
                    "pass monitor=callable at construction"
                )
        current = self._metric_tensor((metrics, *more))
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            epoch = _int_arg("epoch", epoch, 0)
            warnings.warn(stock_lr_scheduler.EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        opt = self.optimizer
        compiling = torch.compiler.is_compiling()
        changes = [] if compiling else opt._lr_assignments()  # checked before anything changes
        host_metric = self._metric_value((metrics, *more))
        self._check_min_lrs(current)
        self.last_epoch = epoch
        if changes:
            opt._apply_lr_assignments(changes)
        if opt._lr_owner is not None:
            _host_work(self._decide_composed, current)
            return
        self._decide(current)
        _host_work(self._after_decision, host_metric)

    def _decide_composed(self, current: torch.Tensor) -> None:
        """Another fused_lr scheduler drives these LRs (torch chains the two: a reduction scales the
        LR the other one left, and its recurrence carries the reduced LR on). The decision is made on
        the host, where the reduced LRs are handed to that scheduler as assigned LRs; a device
        metric is read for it (a sync on an accelerator, in this combination only)."""
        self._refresh()
        if self._mirror is None:
            best, num_bad, cooldown = self._best.item(), int(self._num_bad.item()), int(self._cooldown_counter.item())
            self._mirror = (float(best), num_bad, cooldown)
        self._decide_on_host(float(current))
        best, num_bad, cooldown = self._mirror
        self._best.fill_(best)
        self._num_bad.fill_(num_bad)
        self._cooldown_counter.fill_(cooldown)

    def _after_decision(self, host_metric: float | None) -> None:
        """The host's part of a step (eager even inside a compiled region: Python floats)."""
        self._refresh()
        if host_metric is not None and self._mirror is not None:
            self._decide_on_host(host_metric)
        elif _host_can_read(self._metric):
            self._read_state()  # on CPU the device is the host: reading it is free
        else:
            self._mirror = None
            self._pending = _AsyncRead([self.optimizer.lr_tensor, self._best, self._num_bad, self._cooldown_counter])

    def _decide_on_host(self, current: float) -> None:
        """torch's decision on the host's copy of the state (the same comparisons in float64)."""
        best, num_bad, cooldown = self._mirror
        if self._is_better_host(current, best):
            best, num_bad = current, 0
        else:
            num_bad += 1
        if cooldown > 0:
            cooldown -= 1
            num_bad = 0
        values = [_lr_value(g["lr"]) for g in self.optimizer.param_groups]
        if num_bad > self.patience:
            if len(self._min_lrs) != len(values) and self.default_min_lr is not None:
                # torch's _reduce_lr: [default_min_lr] * groups from the first reduction after a
                # group was added (the host knows it reduces: no device read).
                self._min_lrs, self._expand = [self.default_min_lr] * len(values), None
            for i, old in enumerate(values):
                new = max(old * self.factor, self._min_lrs[i])
                if old - new > self.eps:
                    values[i] = new
            cooldown, num_bad = self.cooldown, 0
        self._mirror = (best, num_bad, cooldown)
        self._set_lrs(values)

    def _is_better_host(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _set_lrs(self, values: list[float]) -> None:
        opt = self.optimizer
        owner = opt._lr_owner
        if owner is not None:
            current = [_lr_value(g["lr"]) for g in opt.param_groups]
            reduced = [(g, v) for g, (v, c) in enumerate(zip(values, current)) if v != c]
            if reduced:
                owner._lrs_assigned(reduced)  # carried on by the schedule, as torch's recurrence does
        seen = opt._lr_seen
        # A group the user assigned meanwhile keeps the assigned value (it takes effect next step).
        keep = [g["lr"] is not seen[i] for i, g in enumerate(opt.param_groups)]
        opt._publish_lrs([_lr_value(g["lr"]) if k else v for g, k, v in zip(opt.param_groups, keep, values)])
        for i, k in enumerate(keep):
            if k:
                seen[i] = None
        self._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in opt.param_groups]

    def _read_state(self, values=None) -> None:
        lrs, best, num_bad, cooldown = values if values is not None else (
            self.optimizer.lr_tensor.tolist(), self._best.item(), int(self._num_bad.item()),
            int(self._cooldown_counter.item()))
        if isinstance(best, list):
            best = best[0]
        self._mirror = (float(best), int(num_bad), int(cooldown))
        self._set_lrs([float(v) for v in lrs])

    def _refresh(self) -> None:
        """Take the asynchronous copy of a device decision once it has arrived (no waiting)."""
        pending = self.__dict__.get("_pending")
        if pending is not None:
            values = pending.poll()
            if values is not None:
                self._pending = None
                self._read_state(values)

    def _check_min_lrs(self, current: torch.Tensor) -> None:
        """Follow the groups and ``min_lrs`` as torch's ``_reduce_lr`` does, raising its error
        (before anything changes) when ``min_lrs`` does not match the groups and this step reduces."""
        n = len(self.optimizer._groups)  # (the alias: see FusedSGD._rebuild_group_data, torch.compile)
        if self._expand is not None and self._expand[0] != n:
            self.min_lrs  # an expansion pending for the previous group count: settle it (host read)
        key = (n, tuple(self._min_lrs), self.default_min_lr)
        if key != self._min_key:
            values = [_real_arg(f"min_lrs[{i}]", v, nonnegative=True) for i, v in enumerate(self._min_lrs)]
            mismatch = len(values) != n
            if mismatch and self.default_min_lr is not None:
                # torch uses [default_min_lr] * groups from the first reduction on.
                values = [_real_arg("default_min_lr", self.default_min_lr, nonnegative=True)] * n
                mismatch = False
            # A list that does not match is used only by a reducing step, which raises: pad it.
            values = (values + [0.0] * n)[:n]
        else:
            mismatch = self._mismatch
        if mismatch and bool(self._decisions(current)[2]):  # a host read, only in this state
            raise RuntimeError(
                f"The number of param groups in the `optimizer` ({n}) differs from when `ReduceLROnPlateau` "
                f"was initialized ({len(self._min_lrs)}), usually due to a new param group being added to the "
                "optimizer. Please modify the `min_lrs` field to match the length of the `optimizer` param groups."
            )
        if key != self._min_key:
            self._min_lrs_t = torch.tensor(values, dtype=torch.float64).to(self._metric.device)
            self._min_key = key
            self._mismatch = mismatch
            if len(self._min_lrs) != n and not mismatch and self._expand is None:
                self._expand = (n, torch.zeros((), dtype=torch.bool, device=self._metric.device))

    def _is_better_t(self, a: torch.Tensor) -> torch.Tensor:
        best = self._best[0]
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _decisions(self, current: torch.Tensor):
        """torch's step() decisions as tensor ops, changing nothing: (better, bad epochs after the
        step, reduce, in cooldown)."""
        better = self._is_better_t(current)
        num_bad = torch.where(better, torch.zeros_like(self._num_bad), self._num_bad + 1)
        in_cooldown = self._cooldown_counter > 0
        num_bad = torch.where(in_cooldown, torch.zeros_like(num_bad), num_bad)
        return better, num_bad, num_bad > self.patience, in_cooldown

    def _decide(self, current: torch.Tensor) -> None:
        """torch's step() as tensor ops: same comparisons, same float64 arithmetic."""
        better, num_bad, reduce, in_cooldown = self._decisions(current)
        self._best.copy_(torch.where(better, current, self._best[0]))
        self._cooldown_counter.sub_(in_cooldown.to(torch.int64))
        lr = self.optimizer.lr_tensor
        new_lr = torch.maximum(lr * self.factor, self._min_lrs_t)
        lr.copy_(torch.where(reduce & (lr - new_lr > self.eps), new_lr, lr))
        self._cooldown_counter.copy_(torch.where(reduce, torch.full_like(self._cooldown_counter, self.cooldown), self._cooldown_counter))
        self._num_bad.copy_(torch.where(reduce, torch.zeros_like(num_bad), num_bad))
        if self._expand is not None:
            self._expand[1].logical_or_(reduce)

    _STATE_KEYS = ("factor", "min_lrs", "patience", "cooldown", "eps", "last_epoch", "mode", "threshold",
                   "threshold_mode", "best", "cooldown_counter", "num_bad_epochs", "mode_worse", "default_min_lr")

    def state_dict(self) -> dict[str, Any]:
        """torch's keys and value types (reads the device state: a sync on an accelerator)."""
        sd = {k: getattr(self, k) for k in self._STATE_KEYS}
        sd["min_lrs"] = list(self.min_lrs)
        sd["_last_lr"] = self.get_last_lr()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a fused_lr or stock ReduceLROnPlateau state dict; checks before changing anything."""
        missing = [k for k in ("factor", "min_lrs", "patience", "cooldown", "eps", "last_epoch", "mode",
                               "threshold", "threshold_mode", "best", "cooldown_counter", "num_bad_epochs")
                   if k not in state_dict]
        if missing:
            raise KeyError(f"ReduceLROnPlateau state_dict is missing {missing}")
        probe = ReduceLROnPlateau(
            self.optimizer,
            mode=state_dict["mode"],
            factor=state_dict["factor"],
            patience=state_dict["patience"],
            threshold=state_dict["threshold"],
            threshold_mode=state_dict["threshold_mode"],
            cooldown=state_dict["cooldown"],
            eps=state_dict["eps"],
        )  # validates every argument without touching self
        # Any length, as torch loads it (saved before or after a group was added); a list that does
        # not match the groups behaves as in torch from the next step on (see the class docstring).
        min_lrs = [_real_arg(f"min_lrs[{i}]", v, nonnegative=True) for i, v in enumerate(state_dict["min_lrs"])]
        default_min_lr = state_dict.get("default_min_lr", None)
        if default_min_lr is not None:
            default_min_lr = _real_arg("default_min_lr", default_min_lr, nonnegative=True)
        last_epoch = _int_arg("last_epoch", state_dict["last_epoch"], 0)
        best = float(state_dict["best"])
        cooldown_counter = _int_arg("cooldown_counter", state_dict["cooldown_counter"], 0)
        num_bad = _int_arg("num_bad_epochs", state_dict["num_bad_epochs"], 0)
        for k in ("factor", "patience", "cooldown", "eps", "mode", "threshold", "threshold_mode", "mode_worse"):
            setattr(self, k, getattr(probe, k))
        self.min_lrs = min_lrs
        self.default_min_lr = default_min_lr
        self._min_key = None  # the next step builds the device bounds from min_lrs
        self._mismatch = False
        self.last_epoch = last_epoch
        self._best.fill_(best)
        self._cooldown_counter.fill_(cooldown_counter)
        self._num_bad.fill_(num_bad)
        self._mirror = (best, num_bad, cooldown_counter)
        self._pending = None
        last = state_dict.get("_last_lr")
        if isinstance(last, list) and len(last) == len(self.optimizer.param_groups):
            self._last_lr = [_lr_value(v) for v in last]


# ---------------------------------------------------------------------------------------------
# Schedules large-model training asks for (not in torch), with mid-run edits on the device
# ---------------------------------------------------------------------------------------------


def _ratio_arg(name: str, value: Any) -> float:
    value = _real_arg(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return value


class _EditableMixin:
    """Edits that change device data only: no recompilation, no graph recapture."""

    def _edit_column(self, name: str, value: float | torch.Tensor) -> None:
        """Set parameter ``name`` of every row (this scheduler's kind) to ``value`` on the device."""
        sched = self._sched
        col = S.col(self._kind, name)
        if isinstance(value, torch.Tensor):
            # A device value (e.g. the counter itself): copy on the device, no host read.
            sched.desc[:, col].copy_(value.reshape(()).to(torch.float64).expand(sched.desc.shape[0]))
        else:
            sched.desc[:, col].fill_(float(value))
        sched.invalidate()
        self._sched.write_lr(self.optimizer._lr_buf)
        self._publish()


class WarmupCosineLR(_EditableMixin, _FusedLRScheduler):
    r"""Linear warmup, then cosine decay to a floor: the usual large-model schedule.

    With ``W = warmup_steps``, ``T = total_steps`` and ``floor = base_lr * min_lr_ratio``::

        lr(t) = base_lr * t / W                                               t <  W
        lr(t) = floor + (base_lr - floor) * (1 + cos(pi * (t - W) / (T - W))) / 2   W <= t < T
        lr(t) = floor                                                         t >= T

    The peak ``base_lr`` is reached exactly at ``t = W``. ``set_total_steps(n)`` extends or
    shortens the horizon mid-run by editing device data only.
    """

    _arg_names = ("warmup_steps", "total_steps", "min_lr_ratio")
    _kind = S.Kind.WARMUP_COSINE

    def __init__(self, optimizer: FusedSGD, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "WarmupCosineLR")
        args = self._validate_args({"warmup_steps": warmup_steps, "total_steps": total_steps, "min_lr_ratio": min_lr_ratio})
        self.warmup_steps, self.total_steps, self.min_lr_ratio = args.values()
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        warmup = _int_arg("warmup_steps", values["warmup_steps"], 0)
        total = _int_arg("total_steps", values["total_steps"], 1)
        if warmup > total:
            raise ValueError(f"warmup_steps ({warmup}) must be <= total_steps ({total})")
        return {"warmup_steps": warmup, "total_steps": total, "min_lr_ratio": _ratio_arg("min_lr_ratio", values["min_lr_ratio"])}

    def _rows(self):
        return [S.warmup_cosine_row(b, self.warmup_steps, self.total_steps, self.min_lr_ratio) for b in self.base_lrs]

    def set_total_steps(self, total_steps: int) -> None:
        """Move the end of the cosine to ``total_steps`` (device data only)."""
        total = self._validate_args({"warmup_steps": self.warmup_steps, "total_steps": total_steps,
                                     "min_lr_ratio": self.min_lr_ratio})["total_steps"]
        self.total_steps = total
        self._sched.desc_host[:, S.col(self._kind, "total_steps")] = float(total)
        self._edit_column("total_steps", total)


class WarmupStableDecayLR(_EditableMixin, _FusedLRScheduler):
    r"""Warmup-stable-decay (WSD): linear warmup, a constant plateau, then a short cooldown.

    With ``W = warmup_steps``, cooldown start ``s = total_steps - decay_steps``, ``D = decay_steps``,
    ``floor = base_lr * min_lr_ratio`` and ``p = min((t - s) / D, 1)``::

        lr(t) = base_lr * t / W                      t < W
        lr(t) = base_lr                              W <= t < s
        lr(t) = base_lr - (base_lr - floor) * p      t >= s, decay_shape="linear"
        lr(t) = floor + (base_lr - floor) * (1 + cos(pi * p)) / 2        decay_shape="cosine"
        lr(t) = base_lr - (base_lr - floor) * sqrt(p)                    decay_shape="1-sqrt"

    Mid-run edits (device data only: no recompilation, no graph recapture):
    ``start_cooldown()`` starts the cooldown at the device's current step;
    ``set_total_steps(n)`` moves the cooldown so that it ends at ``n``.
    """

    _arg_names = ("warmup_steps", "total_steps", "decay_steps", "min_lr_ratio", "decay_shape")
    _kind = S.Kind.WSD

    def __init__(self, optimizer: FusedSGD, warmup_steps: int, total_steps: int, decay_steps: int,
                 min_lr_ratio: float = 0.0, decay_shape: str = "linear", last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "WarmupStableDecayLR")
        args = self._validate_args(dict(warmup_steps=warmup_steps, total_steps=total_steps, decay_steps=decay_steps,
                                        min_lr_ratio=min_lr_ratio, decay_shape=decay_shape))
        for k, v in args.items():
            setattr(self, k, v)
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        warmup = _int_arg("warmup_steps", values["warmup_steps"], 0)
        total = _int_arg("total_steps", values["total_steps"], 1)
        decay = _int_arg("decay_steps", values["decay_steps"], 0)
        if warmup + decay > total:
            raise ValueError(f"warmup_steps + decay_steps ({warmup} + {decay}) must be <= total_steps ({total})")
        shape = values["decay_shape"]
        if shape not in S.WSD_SHAPES:
            raise ValueError(f"decay_shape must be one of {sorted(S.WSD_SHAPES)}, got {shape!r}")
        return {"warmup_steps": warmup, "total_steps": total, "decay_steps": decay,
                "min_lr_ratio": _ratio_arg("min_lr_ratio", values["min_lr_ratio"]), "decay_shape": shape}

    def _rows(self):
        start = self.total_steps - self.decay_steps
        code = S.WSD_SHAPES[self.decay_shape]
        return [S.wsd_row(b, self.warmup_steps, start, self.decay_steps, self.min_lr_ratio, code) for b in self.base_lrs]

    def start_cooldown(self) -> None:
        """Start the cooldown now: its start becomes the device step counter (a device copy)."""
        self.total_steps = self.last_epoch + self.decay_steps  # the host's view, for state_dict
        self._sched.desc_host[:, S.col(self._kind, "decay_start")] = float(self.last_epoch)
        sched = self._sched
        # On the Triton path the counter may lag the host by deferred steps the next kernel applies.
        self._edit_column("decay_start", sched.counter + sched.pending if sched.pending else sched.counter)

    def set_total_steps(self, total_steps: int) -> None:
        """End the cooldown at ``total_steps`` (it starts ``decay_steps`` earlier)."""
        args = self._validate_args(dict(warmup_steps=self.warmup_steps, total_steps=total_steps,
                                        decay_steps=self.decay_steps, min_lr_ratio=self.min_lr_ratio,
                                        decay_shape=self.decay_shape))
        self.total_steps = args["total_steps"]
        start = float(self.total_steps - self.decay_steps)
        self._sched.desc_host[:, S.col(self._kind, "decay_start")] = start
        self._edit_column("decay_start", start)


class InverseSqrtLR(_FusedLRScheduler):
    r"""Linear warmup, then inverse-square-root decay (the Transformer schedule).

    ``lr(t) = base_lr * t / W`` for ``t < W``, then ``base_lr * sqrt(W / t)``: the peak ``base_lr``
    at ``t = W``. With ``warmup_steps=0``: ``base_lr / sqrt(max(t, 1))``.
    """

    _arg_names = ("warmup_steps",)

    def __init__(self, optimizer: FusedSGD, warmup_steps: int, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "InverseSqrtLR")
        self.warmup_steps = self._validate_args({"warmup_steps": warmup_steps})["warmup_steps"]
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        return {"warmup_steps": _int_arg("warmup_steps", values["warmup_steps"], 0)}

    def _rows(self):
        return [S.inverse_sqrt_row(b, self.warmup_steps) for b in self.base_lrs]


class MultiplicativeLR(LambdaLR):
    """Multiplies each group's LR by ``lr_lambda(epoch)`` at every step, on the device.

    ``lr(t) = base_lr * prod(lr_lambda(k) for k in 1..t)``. Same signature as
    ``torch.optim.lr_scheduler.MultiplicativeLR`` (one callable or one per group), plus
    ``horizon``. The running product is always tabulated (``modes`` is ``"table"`` for every
    group) as for :class:`LambdaLR`'s table mode: each step calls the callable at the new epoch as
    torch does (not at construction, as torch), ahead of the host the product is tabulated as far
    as the callable succeeds, and ``step(epoch)`` multiplies the current LR by
    ``lr_lambda(epoch)``, as torch's does (the table then continues from there).
    """


    def _multiplicative(self) -> bool:
        return True

    def _edit_policy(self, group: int, step: int) -> tuple[str, float]:
        return "mul", math.inf  # torch multiplies the previous LR by lr_lambda(epoch)
    @staticmethod
    def _choose_modes(fns) -> list[str]:
        return ["table"] * len(fns)

    def _next_value(self, fn, values, epoch):
        # The same float64 product torch's chained steps form, from the table's previous value.
        return 1.0 if epoch == 0 else values[epoch - 1] * float(fn(epoch))

    def _step_value(self, fn, values, epoch):
        if self._step_count == 0:
            return None  # torch's initial step keeps the LR and calls nothing
        return self._current(values) * float(fn(epoch))

    def _current(self, values: list[float]) -> float:
        """The product at the host's epoch (the last known one if the table stops short of it)."""
        if not values:
            return 1.0
        return values[min(max(self.last_epoch, 0), len(values) - 1)]

    def _keep(self, fn, epoch, value):
        values = self._values.setdefault(id(fn), [])
        if epoch < len(values) and values[epoch] == value:
            return  # the product tabulated ahead: torch's step lands on it
        # A different product from here (a jump, a changed value): later epochs follow from it.
        del values[epoch:]
        values.extend([math.nan] * (epoch - len(values)))
        values.append(value)
        self._stopped.pop(id(fn), None)
        self._changed = True


def _check_parts(name: str, schedulers, optimizer: FusedSGD, *, reject: tuple, label: str = "scheduler at index {i}",
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

    def __init__(self, optimizer: FusedSGD, schedulers, milestones, last_epoch: int = -1) -> None:
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
        optimizer._publish_lrs([_lr_value(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups])
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
        sched = S.DeviceSchedule(self.optimizer._lr_buf.device)
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
            self._sched.write_lr(self.optimizer._lr_buf)
            raise


# ---------------------------------------------------------------------------------------------
# Cycles: CyclicLR and OneCycleLR (with momentum cycling)
# ---------------------------------------------------------------------------------------------


def _per_group(name: str, optimizer: FusedSGD, value: Any, *, nonnegative: bool = True) -> list[float]:
    """torch's ``_format_param``: one value per group (a list must match the group count)."""
    n = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(value)} values, param_groups has {n}."
            )
        values = list(value)
    else:
        values = [value] * n
    out = []
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = float(v)
        out.append(_real_arg(f"{name}[{i}]" if isinstance(value, (list, tuple)) else name, v, nonnegative=nonnegative))
    return out


def _check_momentum_support(optimizer: FusedSGD) -> None:
    if "momentum" not in optimizer.defaults:
        raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` option enabled")


class _MomentumCycler:
    """Shared by CyclicLR and OneCycleLR: momentum rows after the group rows."""

    cycle_momentum: bool

    def _start_momentum_cycle(self, optimizer, max_momentums, base_momentums, last_epoch: int) -> None:
        """torch's construction side effect: every group starts at its max momentum."""
        self._momenta_before = [g["momentum"] for g in optimizer.param_groups]
        if last_epoch == -1:
            for m, b, group in zip(max_momentums, base_momentums, optimizer.param_groups):
                group["momentum"] = m
                group["max_momentum"] = m
                group["base_momentum"] = b

    def _momentum_desc(self, rows: list[list[float]], mom_rows: list[list[float]]):
        n = len(rows)
        return rows + mom_rows, None, None, {g: n + g for g in range(len(mom_rows))}


class CyclicLR(_MomentumCycler, _FusedLRScheduler):
    """torch's CyclicLR (triangular, triangular2, exp_range, custom ``scale_fn``) on the device.

    Same signature as ``torch.optim.lr_scheduler.CyclicLR`` plus the keyword-only ``horizon``.
    The three built-in modes are closed forms (``fused_lr.schedules.Kind.CYCLIC``): no host work
    at any step count. A custom ``scale_fn`` is evaluated on the host ahead of time for steps
    ``[0, horizon)`` (the table doubles when ``last_epoch`` passes three quarters of it; under
    CUDA-graph replay give a ``horizon`` that covers the run), so it must be a pure function.

    ``cycle_momentum`` (default True, as in torch) cycles ``momentum`` inversely to the LR: each
    scheduler step sets ``group["momentum"]`` on the host, as torch does, and the Triton kernel
    computes the same momentum on the device from the schedule, so a captured graph cycles it too.
    """

    def __init__(
        self,
        optimizer: FusedSGD,
        base_lr,
        max_lr,
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum=0.8,
        max_momentum=0.9,
        last_epoch: int = -1,
        *,
        horizon: int = 1024,
    ) -> None:
        _check_optimizer(optimizer, "CyclicLR")
        last_epoch = _int_arg("last_epoch", last_epoch, -1)
        base_lrs = _per_group("base_lr", optimizer, base_lr)
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        up = _real_arg("step_size_up", step_size_up, positive=True)
        down = up if step_size_down is None else _real_arg("step_size_down", step_size_down, nonnegative=True)
        if scale_fn is None and mode not in S.CYCLIC_MODES:
            raise ValueError(f"mode is invalid and scale_fn is None: mode={mode!r}, expected one of {list(S.CYCLIC_MODES)}")
        if scale_fn is not None and not callable(scale_fn):
            raise TypeError(f"scale_fn must be callable, got {type(scale_fn).__name__}")
        if scale_mode not in ("cycle", "iterations"):
            raise ValueError(f"scale_mode must be 'cycle' or 'iterations', got {scale_mode!r}")
        gamma = _real_arg("gamma", gamma, positive=True)
        if not isinstance(cycle_momentum, bool):
            raise TypeError(f"cycle_momentum must be a bool, got {cycle_momentum!r}")
        if cycle_momentum:
            _check_momentum_support(optimizer)
            base_momentums = _per_group("base_momentum", optimizer, base_momentum)
            max_momentums = _per_group("max_momentum", optimizer, max_momentum)
        self.horizon = _int_arg("horizon", horizon, 1)
        # Everything is valid: now the side effects torch has.
        if last_epoch == -1:
            optimizer._publish_lrs(base_lrs)
        self.max_lrs = max_lrs
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode if scale_fn is not None else ("iterations" if mode == "exp_range" else "cycle")
        self.cycle_momentum = cycle_momentum
        self.use_beta1 = False
        if cycle_momentum:
            self.base_momentums = base_momentums
            self.max_momentums = max_momentums
            self._start_momentum_cycle(optimizer, max_momentums, base_momentums, last_epoch)
        super().__init__(optimizer, last_epoch)
        if self.base_lrs != base_lrs:
            # torch's quirk: its initial step used the groups' pre-existing initial_lr; from here on
            # base_lr (torch assigns base_lrs after the initial step).
            self.base_lrs = base_lrs
            self._rebuild(keep_edits=False)
            self._sched.write_lr(self.optimizer._lr_buf)
            self._publish()

    # torch's formula, on the host, for a custom scale_fn (tabulated).
    def _host_value(self, t: int, base: float, peak: float) -> float:
        cycle = math.floor(1 + t / self.total_size)
        x = 1.0 + t / self.total_size - cycle
        if x <= self.step_ratio:
            f = x / self.step_ratio
        else:
            f = (x - 1) / (self.step_ratio - 1)
        scale = self._scale_fn_custom(cycle if self.scale_mode == "cycle" else t)
        return base + (peak - base) * f * scale

    def _describe(self):
        n = len(self.base_lrs)
        pairs = list(zip(self.base_lrs, self.max_lrs))
        mom_pairs = list(zip(self.max_momentums, self.base_momentums)) if self.cycle_momentum else []
        if self._scale_fn_custom is None:
            code = S.CYCLIC_MODES[self.mode]
            rows = [S.cyclic_row(b, m, self.total_size, self.step_ratio, code, self.gamma) for b, m in pairs]
            moms = [S.cyclic_row(b, m, self.total_size, self.step_ratio, code, self.gamma) for b, m in mom_pairs]
            return self._momentum_desc(rows, moms)
        table: list[float] = []
        rows = []
        for b, m in pairs + mom_pairs:
            offset = len(table)
            table.extend(self._host_value(t, b, m) for t in range(self.horizon))
            rows.append(S.table_row(1.0, offset, self.horizon))
        mom = {g: n + g for g in range(len(mom_pairs))}
        return rows, table, None, mom

    def _grow_tables(self, epoch: int) -> bool:
        return self._scale_fn_custom is not None and self._grow_horizon(epoch)

    _common_keys = ("max_lrs", "total_size", "step_ratio", "mode", "gamma", "scale_mode", "cycle_momentum")

    def state_dict(self) -> dict[str, Any]:
        """torch's keys (``_scale_fn_custom``: the ``__dict__`` of a callable object, else None)."""
        sd = super().state_dict()
        for k in self._common_keys:
            sd[k] = getattr(self, k)
        sd["use_beta1"] = False
        if self.cycle_momentum:
            sd["base_momentums"] = list(self.base_momentums)
            sd["max_momentums"] = list(self.max_momentums)
        fn = self._scale_fn_custom
        sd["_scale_fn_custom"] = None if fn is None or isinstance(fn, types.FunctionType) else fn.__dict__.copy()
        sd["horizon"] = self.horizon
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = [k for k in self._common_keys if k not in state_dict]
        if missing:
            raise KeyError(f"CyclicLR state_dict is missing {missing}")
        n = len(self.optimizer.param_groups)
        max_lrs = [_real_arg("max_lrs", float(v), nonnegative=True) for v in state_dict["max_lrs"]]
        if len(max_lrs) != n:
            raise ValueError(f"state_dict has {len(max_lrs)} max_lrs, the optimizer has {n} param groups")
        total = _real_arg("total_size", state_dict["total_size"], positive=True)
        ratio = _real_arg("step_ratio", state_dict["step_ratio"], positive=True)
        if ratio > 1:
            raise ValueError(f"step_ratio must be in (0, 1], got {ratio}")
        mode = state_dict["mode"]
        if self._scale_fn_custom is None and mode not in S.CYCLIC_MODES:
            raise ValueError(f"unknown CyclicLR mode {mode!r}")
        gamma = _real_arg("gamma", state_dict["gamma"], positive=True)
        cycle_momentum = bool(state_dict["cycle_momentum"])
        if cycle_momentum != self.cycle_momentum:
            raise ValueError(
                f"state_dict has cycle_momentum={cycle_momentum}, this CyclicLR has {self.cycle_momentum}"
            )
        moms = {}
        if cycle_momentum:
            for k in ("base_momentums", "max_momentums"):
                vals = [_real_arg(k, float(v), nonnegative=True) for v in state_dict[k]]
                if len(vals) != n:
                    raise ValueError(f"state_dict has {len(vals)} {k}, the optimizer has {n} param groups")
                moms[k] = vals
        horizon = _int_arg("horizon", state_dict.get("horizon", self.horizon), 1)
        backup = {k: getattr(self, k) for k in (*self._common_keys, "horizon", *moms)}
        self.max_lrs, self.total_size, self.step_ratio, self.mode, self.gamma = max_lrs, total, ratio, mode, gamma
        self.scale_mode = state_dict["scale_mode"]
        self.horizon = horizon
        for k, v in moms.items():
            setattr(self, k, v)
        try:
            super().load_state_dict(state_dict)
        except Exception:
            for k, v in backup.items():
                setattr(self, k, v)
            raise
        fn = state_dict.get("_scale_fn_custom")
        if fn is not None and self._scale_fn_custom is not None:
            self._scale_fn_custom.__dict__.update(fn)


class OneCycleLR(_MomentumCycler, _FusedLRScheduler):
    """torch's OneCycleLR (cos / linear anneal, two or three phases, momentum cycling) on the device.

    Same signature as ``torch.optim.lr_scheduler.OneCycleLR``; the LR at every step is a closed
    form (``fused_lr.schedules.Kind.ONE_CYCLE``) of the step counter. Stepping past
    ``total_steps`` raises torch's ``ValueError`` — before anything changes (torch has already
    advanced ``last_epoch`` when it raises). Under CUDA-graph replay the host cannot check, so the
    device goes on evaluating the last phase's formula. Momentum cycles as in :class:`CyclicLR`.
    ``initial_lr``, ``max_lr``, ``min_lr``, ``max_momentum`` and ``base_momentum`` are read from
    the param groups when the schedule is built (torch reads them at each step).
    """

    def __init__(
        self,
        optimizer: FusedSGD,
        max_lr,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum=0.85,
        max_momentum=0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        _check_optimizer(optimizer, "OneCycleLR")
        last_epoch = _int_arg("last_epoch", last_epoch, -1)
        if total_steps is not None:
            if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
                raise ValueError(f"Expected positive integer total_steps, but got {total_steps}")
            total = total_steps
        elif epochs is not None and steps_per_epoch is not None:
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
                raise ValueError(f"Expected positive integer epochs, but got {epochs}")
            if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
                raise ValueError(f"Expected positive integer steps_per_epoch, but got {steps_per_epoch}")
            total = epochs * steps_per_epoch
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        if not isinstance(pct_start, float) or not 0 <= pct_start <= 1:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got {anneal_strategy}")
        if not isinstance(three_phase, bool):
            raise TypeError(f"three_phase must be a bool, got {three_phase!r}")
        if not isinstance(cycle_momentum, bool):
            raise TypeError(f"cycle_momentum must be a bool, got {cycle_momentum!r}")
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        div_factor = _real_arg("div_factor", div_factor, positive=True)
        final_div_factor = _real_arg("final_div_factor", final_div_factor, positive=True)
        if cycle_momentum:
            _check_momentum_support(optimizer)
            max_momentums = _per_group("max_momentum", optimizer, max_momentum)
            base_momentums = _per_group("base_momentum", optimizer, base_momentum)
        if last_epoch >= 0:
            keys = ("initial_lr", "max_lr", "min_lr") + (("max_momentum", "base_momentum") if cycle_momentum else ())
            for i, group in enumerate(optimizer.param_groups):
                for k in keys:
                    if k not in group:
                        raise KeyError(f"param {k!r} is not specified in param_groups[{i}] when resuming OneCycleLR")
        pct_steps = float(pct_start * total)
        phases = self._phases(pct_steps, total, three_phase)
        self._check_phases(phases, total)
        self.total_steps = total
        self._pct_steps = pct_steps
        self._schedule_phases = phases
        self._anneal_func_type = anneal_strategy
        self.cycle_momentum = cycle_momentum
        self.use_beta1 = False
        if last_epoch == -1:
            for m, group in zip(max_lrs, optimizer.param_groups):
                group["initial_lr"] = m / div_factor
                group["max_lr"] = m
                group["min_lr"] = group["initial_lr"] / final_div_factor
        if cycle_momentum:
            self._start_momentum_cycle(optimizer, max_momentums, base_momentums, last_epoch)
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _phases(pct_steps: float, total: int, three_phase: bool) -> list[dict[str, Any]]:
        """torch's ``_schedule_phases`` (kept in state_dict in torch's format)."""
        if three_phase:
            return [
                {"end_step": pct_steps - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": 2 * pct_steps - 2, "start_lr": "max_lr", "end_lr": "initial_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
                {"end_step": total - 1, "start_lr": "initial_lr", "end_lr": "min_lr",
                 "start_momentum": "max_momentum", "end_momentum": "max_momentum"},
            ]
        return [
            {"end_step": pct_steps - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
             "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
            {"end_step": total - 1, "start_lr": "max_lr", "end_lr": "min_lr",
             "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
        ]

    def _describe(self):
        three = len(self._schedule_phases) == 3
        linear = self._anneal_func_type == "linear"
        groups = self.optimizer.param_groups
        rows = [
            S.one_cycle_row(g["initial_lr"], self.total_steps, self._pct_steps, g["max_lr"], g["min_lr"], three, linear)
            for g in groups
        ]
        moms = []
        if self.cycle_momentum:
            moms = [
                S.one_cycle_row(g["max_momentum"], self.total_steps, self._pct_steps, g["base_momentum"],
                                g["max_momentum"], three, linear)
                for g in groups
            ]
        return self._momentum_desc(rows, moms)

    @staticmethod
    def _check_phases(phases, total: int) -> None:
        """Refuse, at construction, a schedule on which torch divides by zero at some step <= total.

        torch evaluates phase i from ``start`` to ``end`` as ``(t - start) / (end - start)``. A
        phase of zero length is used when it is the first (at t = 0) or the last (at the first
        integer step past every earlier phase's end, if that is <= total_steps)."""
        start, reached = 0.0, []
        for i, phase in enumerate(phases):
            end = phase["end_step"]
            last = i == len(phases) - 1
            first_step = 0 if i == 0 else max(math.floor(max(reached)) + 1, 0)
            if end == start and (i == 0 or last) and first_step <= total:
                raise ValueError(
                    f"OneCycleLR phase {i} has zero length (it starts and ends at step {end}): torch divides "
                    f"by zero at step {first_step}; choose pct_start so that pct_start * total_steps != 1 "
                    f"(pct_start={phases[0]['end_step'] + 1} / total_steps={total} here)"
                )
            reached.append(end)
            start = end

    def _check_step(self, epoch: int) -> None:
        if epoch > self.total_steps:
            raise ValueError(
                f"Tried to step {epoch} times. The specified number of total steps is {self.total_steps}"
            )
        start = 0.0
        for i, phase in enumerate(self._schedule_phases):
            end = phase["end_step"]
            if epoch <= end or i == len(self._schedule_phases) - 1:
                if end == start:
                    raise ZeroDivisionError(
                        f"OneCycleLR phase {i} has no length (ends at step {end}, where it starts): "
                        f"torch divides by zero here too; change pct_start or total_steps"
                    )
                return
            start = end

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd.update(total_steps=self.total_steps, _schedule_phases=[dict(p) for p in self._schedule_phases],
                  _anneal_func_type=self._anneal_func_type, cycle_momentum=self.cycle_momentum, use_beta1=False)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = [k for k in ("total_steps", "_schedule_phases") if k not in state_dict]
        if missing:
            raise KeyError(f"OneCycleLR state_dict is missing {missing}")
        total = state_dict["total_steps"]
        if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
            raise ValueError(f"state_dict total_steps must be a positive integer, got {total!r}")
        phases = state_dict["_schedule_phases"]
        if not isinstance(phases, list) or len(phases) not in (2, 3):
            raise ValueError(f"state_dict _schedule_phases must be a list of 2 or 3 phases, got {phases!r}")
        # An old-format state dict (torch < 2.2) holds the bound method ``anneal_func`` and no
        # ``_anneal_func_type``. torch 2.13 loads it with ``__dict__.update``, which leaves the
        # constructed ``_anneal_func_type`` in place, and ``_anneal_func`` prefers that attribute:
        # the constructed strategy stays and ``anneal_func`` is never called. The same here.
        anneal = state_dict.get("_anneal_func_type", self._anneal_func_type)
        if anneal not in ("cos", "linear"):
            raise ValueError(f"unknown _anneal_func_type {anneal!r}")
        if bool(state_dict.get("cycle_momentum", self.cycle_momentum)) != self.cycle_momentum:
            raise ValueError("state_dict cycle_momentum differs from this OneCycleLR's")
        # torch stores phase ends; recover float(pct_start * total_steps) = end_step + 1 exactly.
        pct_steps = _one_cycle_pct_steps(float(phases[0]["end_step"]))
        backup = (self.total_steps, self._pct_steps, self._schedule_phases, self._anneal_func_type)
        self.total_steps, self._pct_steps = total, pct_steps
        self._schedule_phases = self._phases(pct_steps, total, len(phases) == 3)
        self._anneal_func_type = anneal
        try:
            super().load_state_dict(state_dict)
        except Exception:
            self.total_steps, self._pct_steps, self._schedule_phases, self._anneal_func_type = backup
            raise


def _one_cycle_pct_steps(end_step: float) -> float:
    """The float ``x`` with ``x - 1 == end_step`` closest to ``end_step + 1`` (x - 1 can round)."""
    x = end_step + 1.0
    for _ in range(64):
        if x - 1.0 == end_step:
            return x
        x = math.nextafter(x, math.inf if x - 1.0 < end_step else -math.inf)
    return end_step + 1.0


# ---------------------------------------------------------------------------------------------
# Composition: ChainedScheduler and PerGroupLR
# ---------------------------------------------------------------------------------------------


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

    def _init_from_parts(self, optimizer: FusedSGD) -> None:
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
        self._sched.write_lr(optimizer._lr_buf)
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


    def __init__(self, schedulers, optimizer: FusedSGD | None = None, *, horizon: int = 1024) -> None:
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
            [{"params": [torch.zeros(1)], "lr": base, "momentum": g["momentum"]} for base, g in zip(self.base_lrs, groups)],
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

    def __init__(self, optimizer: FusedSGD, schedulers) -> None:
        _check_optimizer(optimizer, "PerGroupLR")
        schedulers = list(schedulers)
        n = len(optimizer.param_groups)
        if len(schedulers) != n:
            raise ValueError(f"PerGroupLR needs one scheduler per param group: {n} groups, got {len(schedulers)} schedulers")
        _check_parts("PerGroupLR", schedulers, optimizer, reject=(PerGroupLR,), label="the scheduler for group {i}",
                     same_step=True)
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
                    optimizer.param_groups[g]["momentum"] = before[0]
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


ChainedScheduler._MULTIPLICATIVE_PARTS = (StepLR, MultiStepLR, ExponentialLR, ConstantLR, LinearLR, PolynomialLR, MultiplicativeLR)


# ---------------------------------------------------------------------------------------------
# Several schedulers stepped on one optimizer
# ---------------------------------------------------------------------------------------------


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

    def __init__(self, optimizer: FusedSGD, others: list, new: _FusedLRScheduler, previous: Any) -> None:
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
        sched = S.DeviceSchedule(opt._lr_buf.device)
        sched.set_rows(rows, table, direct, n_groups=n, momentum_rows=mom)
        self._sched = sched
        self._place_pieces()
        sched.sync()
        sched.set_step(self._t0)
        sched.set_edits({g: (-math.inf, math.inf, 0.0, b) for g, b in self._mul.items()})
        self._drive({})
        opt._attach(self, sched)

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
        floats = [_lr_value(g["lr"]) for g in self.optimizer.param_groups]
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
            self._sched.write_lr(self.optimizer._lr_buf)

    # -------------------------------------------------------------- members' steps

    def initial_step(self, member: _FusedLRScheduler) -> None:
        """``member`` was just built: its initial step, chained onto the others' LRs."""
        previous = [_lr_value(g["lr"]) for g in self.optimizer.param_groups]
        _host_work(self._after_member_step, member, previous, True)

    def member_step(self, member: _FusedLRScheduler, epoch: int | None, changes: list) -> None:
        opt = self.optimizer
        opt._apply_lr_assignments(changes)
        previous = [_lr_value(g["lr"]) for g in opt.param_groups]
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
            elif epoch is None and opt._defers_schedule(sched):
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
            sched.write_lr(self.optimizer._lr_buf)
        values = sched.host_lrs(self._t0)
        opt = self.optimizer
        opt._publish_lrs(values)
        member._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else v
                           for g, v in zip(opt.param_groups, values)]
        member._write_momenta()

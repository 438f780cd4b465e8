"""The machinery every fused_lr scheduler shares: argument checks, the closed-form device
schedule behind torch's LRScheduler interface (``_FusedLRScheduler``), how an assigned LR carries
on (edit policies, torch's own scheduler as the reference for recurrences), host work kept out of
compiled graphs."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.optim.lr_scheduler as stock_lr_scheduler
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .. import schedules as S
from .._lr_state import GroupLRs


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


_STACK: list = []  # the _Stack class, once imported (an import statement costs microseconds per step)


def _stack():
    """The class of several schedulers stepped on one optimizer (lr_scheduler/stack.py builds on
    this module, so it is imported when first needed)."""
    if not _STACK:
        from .stack import _Stack

        _STACK.append(_Stack)
    return _STACK[0]


def _check_optimizer(optimizer: Any, scheduler: str) -> torch.optim.Optimizer:
    """Any torch optimizer (torch's check and message): with a fused_lr optimizer the LR is computed
    in its update kernel; with another one, a tensor LR is written on the device and a float LR set
    on the host, as torch's schedulers set it."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
    return optimizer


def uses_beta1(optimizer: torch.optim.Optimizer) -> bool:
    """torch's rule for momentum cycling (CyclicLR, OneCycleLR): ``betas[0]`` where the optimizer
    has betas (Adam, AdamW...), else ``momentum``."""
    return "betas" in optimizer.defaults


def get_momentum(group: dict, beta1: bool) -> float:
    return group["betas"][0] if beta1 else group["momentum"]


def set_momentum(group: dict, value: float, beta1: bool) -> None:
    if beta1:
        group["betas"] = (value, *group["betas"][1:])
    else:
        group["momentum"] = value


class _FusedLRScheduler(LRScheduler):
    """Shared machinery: a closed-form device schedule behind torch's LRScheduler interface."""

    @property
    def _lrs(self) -> GroupLRs:
        """The optimizer's LR state (``fused_lr._lr_state``): group["lr"] and the device buffer."""
        return GroupLRs.of(self.optimizer)

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

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
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
        sched = S.DeviceSchedule(self._lrs.buf.device)
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
        owner = self._lrs.owner
        if isinstance(owner, _stack()) and owner.has(self):
            owner.rebuild()  # the composed description holds this one's rows
        elif owner is self or owner is None:
            self._lrs.attach(self, self._sched)
        # (else: a part of a composite, or a scheduler another one replaced: its own description only)

    def _grow_tables(self, epoch: int) -> bool:
        """Extend host-tabulated values ahead of ``epoch``; True when the description changed."""
        return False

    def _check_step(self, epoch: int) -> None:
        """Raise (before anything changes) when stepping to ``epoch`` is invalid (OneCycleLR)."""

    def _write_momenta(self) -> None:
        """Set ``group["momentum"]`` (or ``betas[0]``) of momentum-cycled groups for ``last_epoch``
        (host floats, as torch does; the Triton kernel computes the same value on the device from
        the schedule)."""
        if self._sched is not None and self._sched.momentum_rows:
            beta1 = uses_beta1(self.optimizer)
            for g, m in self._sched.host_momenta(max(self.last_epoch, 0)).items():
                set_momentum(self.optimizer.param_groups[g], m, beta1)

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
            self._lrs.write(self._sched)

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
        initial = self._sched is None
        # Everything is checked before anything changes (assigned LRs included). Inside
        # torch.compile the groups' float LRs are not read: a guard on them would recompile at
        # every new LR (an assignment made in a compiled region is taken at the next eager step).
        lrs = self._lrs
        changes = [] if torch.compiler.is_compiling() else lrs.assignments()
        owner = lrs.owner
        if isinstance(owner, _stack()) and owner.has(self):
            owner.member_step(self, epoch, changes)  # one of several schedulers driving these LRs
            return
        # Assignments made while another scheduler (or none) drove the LRs: taken there first.
        lrs.apply(changes)
        if initial:
            self.base_lrs = [_lr_value(b) for b in self.base_lrs]
            self._build_schedule()
        elif owner is not self:
            # Another scheduler drives these LRs now (built after this one, or a composite made of
            # this one): stepping this one chains its recurrence onto theirs, as torch's do.
            if isinstance(self._join(), _stack()):
                self._lrs.owner.member_step(self, epoch, [])
                return
        self._step_count += 1
        sched = self._sched
        if epoch is None:
            self.last_epoch += 1
            if initial:
                sched.set_step(self.last_epoch)
                if isinstance(self._join(), _stack()):
                    self._lrs.owner.initial_step(self)
                    return
            elif lrs.defers_schedule(sched):
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
        # (At construction a tensor LR is read, as torch's schedulers read it: the user may have
        # changed it in place. Later steps use the value the host last set: no device read.)
        if initial:
            previous = [_lr_value(g["lr"]) for g in self.optimizer.param_groups]
        else:  # (only host-driven groups read them: none in the common case)
            previous = self._lrs.current() if self._host_driven else None
        if self._grow_tables(self.last_epoch):
            self._rebuild()
        sched = self._sched
        if initial:
            self._start_from(previous)
        elif previous is not None:
            self._drive_on_host(previous)
        if not sched.pending:
            self._lrs.write(sched)
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
        owner = self._lrs.owner
        parts = self._parts()
        members = owner.members if isinstance(owner, _stack()) else [] if owner is None else [owner]
        others = [m for m in members if m is not self and not any(m is p for p in parts)]
        if not others:
            self._lrs.attach(self, self._sched)
            return self
        return _stack()(opt, others, self, owner)

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
        lrs = self._lrs
        lrs.publish(values)
        self._last_lr = list(values) if not lrs.has_tensor_lrs else [
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
        owner = self._lrs.owner
        if isinstance(owner, _stack()) and owner.has(self):
            owner.rebuild(keep_edits=False)
        self._lrs.write(self._lrs.schedule)
        # torch's load leaves group["lr"] as it is: the next step continues from it, so the
        # optimizer hands it to this scheduler as an assigned LR (an edit only if it differs from
        # the schedule's value beyond rounding).
        self._lrs.forget()
        last = state_dict.get("_last_lr")
        self._last_lr = list(last) if isinstance(last, list) and len(last) == n else self._sched.host_lrs(max(last_epoch, 0))
        self._write_momenta()


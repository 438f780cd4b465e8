"""LambdaLR and MultiplicativeLR: Python callables, on the device (plain arithmetic) or tabulated
on the host when torch would call them."""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from .. import schedules as S
from ._base import _check_optimizer, _FusedLRScheduler, _int_arg


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
        optimizer: Optimizer,
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

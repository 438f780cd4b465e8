"""CyclicLR and OneCycleLR (with momentum cycling), closed forms on the device."""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from .. import schedules as S
from .._lr_state import GroupLRs
from ._base import (
    _check_optimizer,
    _FusedLRScheduler,
    _int_arg,
    _real_arg,
    get_momentum,
    set_momentum,
    uses_beta1,
)


def _per_group(name: str, optimizer: Optimizer, value: Any, *, nonnegative: bool = True) -> list[float]:
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


def _check_momentum_support(optimizer) -> None:
    if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
        raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` option enabled")


class _MomentumCycler:
    """Shared by CyclicLR and OneCycleLR: momentum rows after the group rows."""

    cycle_momentum: bool

    def _start_momentum_cycle(self, optimizer, max_momentums, base_momentums, last_epoch: int) -> None:
        """torch's construction side effect: every group starts at its max momentum."""
        self.use_beta1 = uses_beta1(optimizer)
        self._momenta_before = [get_momentum(g, self.use_beta1) for g in optimizer.param_groups]
        if last_epoch == -1:
            for m, b, group in zip(max_momentums, base_momentums, optimizer.param_groups):
                set_momentum(group, m, self.use_beta1)
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
        optimizer: Optimizer,
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
            GroupLRs.of(optimizer).publish(base_lrs)
        self.max_lrs = max_lrs
        self.total_size = up + down
        self.step_ratio = up / self.total_size
        self.mode = mode
        self.gamma = gamma
        self._scale_fn_custom = scale_fn
        self.scale_mode = scale_mode if scale_fn is not None else ("iterations" if mode == "exp_range" else "cycle")
        self.cycle_momentum = cycle_momentum
        self.use_beta1 = uses_beta1(optimizer) if cycle_momentum else False
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
            self._lrs.write(self._sched)
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
        sd["use_beta1"] = self.use_beta1
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
        optimizer: Optimizer,
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
        self.use_beta1 = uses_beta1(optimizer) if cycle_momentum else False
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
                  _anneal_func_type=self._anneal_func_type, cycle_momentum=self.cycle_momentum, use_beta1=self.use_beta1)
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

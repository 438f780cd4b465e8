"""torch's closed-form schedulers on the device: StepLR, ExponentialLR, MultiStepLR, ConstantLR,
LinearLR, PolynomialLR, CosineAnnealingLR, CosineAnnealingWarmRestarts."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from torch.optim import Optimizer

from .. import schedules as S
from ._base import _check_optimizer, _FusedLRScheduler, _int_arg, _real_arg


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
    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
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
    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
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
    def __init__(self, optimizer: Optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1) -> None:
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
    def __init__(self, optimizer: Optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1) -> None:
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
        optimizer: Optimizer,
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
    def __init__(self, optimizer: Optimizer, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1) -> None:
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
    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
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

    def __init__(self, optimizer: Optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1) -> None:
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

"""Schedules large-model training asks for (not in torch), with mid-run edits of device data only:
WarmupCosineLR, WarmupStableDecayLR, InverseSqrtLR, CosineDecayLR (optax's cosine with an exponent)."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from .. import schedules as S
from ._base import _check_optimizer, _FusedLRScheduler, _int_arg, _real_arg


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
        self._lrs.write(self._sched)
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

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
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

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, decay_steps: int,
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
        self._edit_column("decay_start", sched.counter)  # (current on every path: scheduler steps advance it at once)

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

    def __init__(self, optimizer: Optimizer, warmup_steps: int, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "InverseSqrtLR")
        self.warmup_steps = self._validate_args({"warmup_steps": warmup_steps})["warmup_steps"]
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        return {"warmup_steps": _int_arg("warmup_steps", values["warmup_steps"], 0)}

    def _rows(self):
        return [S.inverse_sqrt_row(b, self.warmup_steps) for b in self.base_lrs]


class CosineDecayLR(_FusedLRScheduler):
    r"""optax's cosine decay with an exponent (``optax.cosine_decay_schedule``), on the device.

    With ``q = min(t, T_max) / T_max``::

        lr(t) = eta_min + (base_lr - eta_min) * ((1 + cos(pi * q)) / 2) ** exponent

    constant ``eta_min`` past ``T_max`` (optax's ``alpha`` is ``eta_min / base_lr``). With
    ``exponent=1`` it is ``CosineAnnealingLR`` up to ``T_max`` (which, unlike this one, rises again
    past ``T_max``). ``T_max >= 1``, ``eta_min >= 0``, ``exponent > 0``.
    """

    _arg_names = ("T_max", "eta_min", "exponent")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, exponent: float = 1.0,
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer, "CosineDecayLR")
        args = self._validate_args({"T_max": T_max, "eta_min": eta_min, "exponent": exponent})
        self.T_max, self.eta_min, self.exponent = args["T_max"], args["eta_min"], args["exponent"]
        super().__init__(optimizer, last_epoch)

    def _validate_args(self, values):
        return {
            "T_max": _int_arg("T_max", values["T_max"], 1),
            "eta_min": _real_arg("eta_min", values["eta_min"], nonnegative=True),
            "exponent": _real_arg("exponent", values["exponent"], positive=True),
        }

    def _rows(self):
        return [S.cosine_power_row(b, self.T_max, self.eta_min, self.exponent) for b in self.base_lrs]

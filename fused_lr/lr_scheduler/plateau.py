"""ReduceLROnPlateau: torch's decisions as device tensor ops, with the float LRs kept by the host."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.optim.lr_scheduler as stock_lr_scheduler
from torch.optim import Optimizer

from .._lr_state import GroupLRs
from ._base import _check_optimizer, _host_work, _int_arg, _lr_value, _real_arg


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

    @property
    def _lrs(self) -> GroupLRs:
        """The optimizer's LR state (``fused_lr._lr_state``): group["lr"] and the device buffer."""
        return GroupLRs.of(self.optimizer)

    def __init__(
        self,
        optimizer: Optimizer,
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
        dev = GroupLRs.of(optimizer).buf.device
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
        GroupLRs.of(optimizer).watch(self)
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
        compiling = torch.compiler.is_compiling()
        changes = [] if compiling else self._lrs.assignments()  # checked before anything changes
        host_metric = self._metric_value((metrics, *more))
        self._check_min_lrs(current)
        self.last_epoch = epoch
        if changes:
            self._lrs.apply(changes)
        if self._lrs.owner is not None:
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
        lrs = self._lrs
        if host_metric is not None and self._mirror is not None:
            self._decide_on_host(host_metric)
        elif _host_can_read(self._metric):
            self._read_state()  # on CPU the device is the host: reading it is free
        elif not lrs.device_reads_buf and not lrs.has_tensor_lrs:
            # A stock optimizer reading float LRs: nothing on the device would use the decision, so
            # the metric is read (one sync, as torch's ReduceLROnPlateau reads it) and the floats
            # are exact at once.
            self._read_state()
        else:
            if lrs.has_tensor_lrs:
                lrs.sync_tensor_lrs()  # tensor LRs take the decision on the device
            self._mirror = None
            self._pending = _AsyncRead([lrs.buf, self._best, self._num_bad, self._cooldown_counter])

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
        values = self._lrs.current()
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
        owner = self._lrs.owner
        if owner is not None:
            current = self._lrs.current()
            reduced = [(g, v) for g, (v, c) in enumerate(zip(values, current)) if v != c]
            if reduced:
                owner._lrs_assigned(reduced)  # carried on by the schedule, as torch's recurrence does
        seen = self._lrs.seen
        # A group the user assigned meanwhile keeps the assigned value (it takes effect next step).
        keep = [g["lr"] is not seen[i] for i, g in enumerate(opt.param_groups)]
        self._lrs.publish([_lr_value(g["lr"]) if k else v for g, k, v in zip(opt.param_groups, keep, values)])
        for i, k in enumerate(keep):
            if k:
                seen[i] = None
        self._last_lr = [g["lr"].clone() if isinstance(g["lr"], torch.Tensor) else g["lr"] for g in opt.param_groups]

    def _read_state(self, values=None) -> None:
        lrs, best, num_bad, cooldown = values if values is not None else (
            self._lrs.buf.tolist(), self._best.item(), int(self._num_bad.item()),
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
        n = len(self._lrs.groups)  # (the alias: see FusedSGD._rebuild_group_data, torch.compile)
        if self._expand is not None and self._expand[0] != n:
            _ = self.min_lrs  # an expansion pending for the previous group count: settle it (host read)
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
        lr = self._lrs.buf
        new_lr = torch.maximum(lr * self.factor, self._min_lrs_t)
        lr.copy_(torch.where(reduce & (lr - new_lr > self.eps), new_lr, lr))
        cooldown = torch.full_like(self._cooldown_counter, self.cooldown)
        self._cooldown_counter.copy_(torch.where(reduce, cooldown, self._cooldown_counter))
        self._num_bad.copy_(torch.where(reduce, torch.zeros_like(num_bad), num_bad))
        if self._expand is not None:
            self._expand[1].logical_or_(reduce)

    # torch's state_dict keys. A loaded dict needs all but the last two: mode_worse follows from mode,
    # default_min_lr is absent from state dicts of torch versions before it existed.
    _STATE_KEYS = ("factor", "min_lrs", "patience", "cooldown", "eps", "last_epoch", "mode", "threshold",
                   "threshold_mode", "best", "cooldown_counter", "num_bad_epochs", "mode_worse", "default_min_lr")
    _REQUIRED_KEYS = _STATE_KEYS[:-2]

    def state_dict(self) -> dict[str, Any]:
        """torch's keys and value types (reads the device state: a sync on an accelerator)."""
        sd = {k: getattr(self, k) for k in self._STATE_KEYS}
        sd["min_lrs"] = list(self.min_lrs)
        sd["_last_lr"] = self.get_last_lr()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a fused_lr or stock ReduceLROnPlateau state dict; checks before changing anything."""
        missing = [k for k in self._REQUIRED_KEYS if k not in state_dict]
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

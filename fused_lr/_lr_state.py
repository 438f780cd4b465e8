"""``GroupLRs``: every parameter group's learning rate of one optimizer, as torch users see it and
as the device sees it. The seam between an optimizer and fused_lr's schedulers.

* ``param_groups[i]["lr"]`` stays what the user gave: a Python float (schedulers set it from the
  host's closed forms, so reading it never syncs), or the user's tensor (schedulers copy the device
  buffer into it on the device, so a captured CUDA graph follows the schedule).
* ``buf`` is a float64 tensor on the parameters' device holding every group's LR as the device
  sees it: what fused_lr's kernels read (through the schedule, or directly without one) and what
  the schedules write without a host round trip.
* Assigned LRs: ``assignments()`` finds the groups whose ``"lr"`` the user assigned since fused_lr
  last set it (one identity check per group), ``apply()`` hands them to the attached scheduler
  (``owner``), which carries them on as torch's recurrence would, or writes them to ``buf``.

A fused_lr optimizer holds one (``optimizer._lrs``); any other torch optimizer driven by a fused_lr
scheduler gets one attached at the scheduler's construction (``GroupLRs.of``).
"""

from __future__ import annotations

import math
import numbers
import weakref
from typing import Any

import torch
from torch import Tensor

__all__ = ["GroupLRs", "lr_value"]

_UNSEEN = object()  # a group "lr" fused_lr has not seen yet (after a load): taken as assigned


def lr_value(lr: Any, group: int | None = None) -> float:
    """A group's LR as a float (a tensor LR is read: a sync on an accelerator)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            where = "" if group is None else f" (param group {group})"
            raise ValueError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)}{where}")
        return float(lr.detach().reshape(()).item())
    return float(lr)


def _checked_float(lr: Any, group: int) -> float:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"lr must be a real number, got {lr!r}")
    value = float(lr)
    if math.isnan(value) or value < 0.0 or math.isinf(value):
        raise ValueError(f"Invalid learning rate: {value} (param group {group})")
    return value


class GroupLRs:
    """The LRs of one optimizer's parameter groups (see the module docstring).

    ``defers``: a callable ``schedule -> bool``, whether the optimizer's update kernel applies a
    scheduler step (the Triton path's deferral; None: never). ``device_reads_buf``: whether the
    optimizer reads ``buf`` (fused_lr's optimizers do; a stock optimizer reads ``group["lr"]``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device | None = None, *,
                 defers=None, device_reads_buf: bool = True) -> None:
        self.optimizer = optimizer
        self.device = device
        self.defers = defers
        self.device_reads_buf = device_reads_buf
        self.buf: Tensor | None = None
        self.views: list[Tensor] = []  # 0-dim views of buf, one per group
        self.seen: list[Any] = []  # per group: the "lr" object fused_lr last set or read
        self.owner = None  # the fused_lr scheduler driving the LRs, when one is attached
        self.schedule = None  # its device schedule
        self.watchers: list = []  # weakrefs to ReduceLROnPlateau schedulers (asynchronous LR refresh)
        self.has_tensor_lrs = False  # some group's "lr" is a tensor (they follow buf on the device)
        self.host: list[float] = []  # per group: the LR as the host last set or read it

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer) -> GroupLRs:
        """The optimizer's GroupLRs: a fused_lr optimizer's own, else one attached to this stock
        optimizer the first time a fused_lr scheduler is built on it (on its parameters' device)."""
        lrs = optimizer.__dict__.get("_lrs")
        if lrs is None:
            device = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
            lrs = optimizer.__dict__["_lrs"] = cls(optimizer, device, device_reads_buf=False)
            lrs.rebuild()
        return lrs

    @property
    def groups(self) -> list:
        # A fused_lr optimizer's alias of param_groups (its docstring says why torch.compile needs it).
        groups = self.optimizer.__dict__.get("_groups")
        return groups if groups is not None else self.optimizer.param_groups

    # -------------------------------------------------------------- the groups' LRs

    def rebuild(self) -> None:
        """``buf`` from the groups' ``"lr"`` as they are now (at construction, groups added, loads;
        a tensor LR is read here: a sync on an accelerator, at those times only)."""
        groups = self.optimizer.param_groups
        values = [lr_value(g["lr"], i) for i, g in enumerate(groups)]
        device = self.device if self.device is not None else torch.device("cpu")
        self.buf = torch.tensor(values, dtype=torch.float64, device=device)
        self.views = [self.buf[i] for i in range(len(values))]
        self.seen = [g["lr"] for g in groups]
        self.host = values
        self.has_tensor_lrs = any(isinstance(g["lr"], Tensor) for g in groups)

    def assignments(self) -> list[tuple[int, float | Tensor]]:
        """The groups whose ``"lr"`` was assigned since fused_lr last set or read it, with the new
        value (a float, or a tensor LR), all checked before anything changes. One identity check
        per group when nothing changed; never reads the device."""
        for ref in self.watchers:
            watcher = ref()
            if watcher is not None:
                watcher._refresh()  # an asynchronous copy of a device decision that has arrived
        changes = []
        seen = self.seen
        for i, g in enumerate(self.optimizer.param_groups):
            lr = g["lr"]
            old = seen[i]
            if lr is old:
                continue
            if isinstance(lr, Tensor):
                if lr.numel() != 1:
                    raise ValueError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)} (param group {i})")
                changes.append((i, lr))
                continue
            value = _checked_float(lr, i)
            if not isinstance(old, Tensor) and value == old:
                seen[i] = lr  # the same value under another object: nothing to do
                continue
            changes.append((i, value))
        return changes

    def apply(self, changes: list[tuple[int, float | Tensor]]) -> None:
        """Make assigned LRs take effect: through the attached scheduler, which carries them on as
        torch's recurrence would, or straight into ``buf`` (a float is written without a host
        read; a tensor on the device is copied on the device)."""
        if not changes:
            return
        if self.owner is not None:
            self.owner._lrs_assigned(changes)
        else:
            for i, value in changes:
                if isinstance(value, Tensor):
                    self.views[i].copy_(value.detach().reshape(()))
                else:
                    self.views[i].fill_(value)
        for i, value in changes:
            self.seen[i] = self.optimizer.param_groups[i]["lr"]
            # (a new tensor LR object is read once here: a sync on an accelerator)
            self.host[i] = lr_value(value)
        self.has_tensor_lrs = any(isinstance(g["lr"], Tensor) for g in self.optimizer.param_groups)

    def follow_tensor_lrs(self) -> None:
        """Tensor LRs a user may change in place (``group["lr"].mul_(0.5)``): copied into ``buf``
        before every update that no scheduler drives (device to device)."""
        if self.owner is None:
            for i, g in enumerate(self.optimizer.param_groups):
                lr = g["lr"]
                if isinstance(lr, Tensor):
                    self.views[i].copy_(lr.detach().reshape(()))

    def publish(self, values: list[float]) -> None:
        """A scheduler's new LRs: a float ``"lr"`` is replaced by the host's value, as torch's
        schedulers set it; a tensor LR takes ``buf``'s value on the device (``buf`` was written on
        the device by the schedule, or by the update kernel that applies a deferred step:
        ``sync_tensor_lrs`` then)."""
        for i, (g, v) in enumerate(zip(self.optimizer.param_groups, values)):
            if not isinstance(g["lr"], Tensor):
                g["lr"] = v
            self.seen[i] = g["lr"]
        self.host = list(values)
        if self.has_tensor_lrs:
            self.sync_tensor_lrs()

    def sync_tensor_lrs(self) -> None:
        """Tensor LRs take ``buf``'s values, on the device (no sync; a captured graph replays it)."""
        for i, g in enumerate(self.optimizer.param_groups):
            lr = g["lr"]
            if isinstance(lr, Tensor):
                lr.detach().copy_(self.views[i].to(lr.device).reshape(lr.shape))

    def current(self) -> list[float]:
        """Every group's LR as the host knows it, without a device read: a float "lr" as it is, a
        tensor LR as fused_lr last set it (in-place edits of a tensor LR are seen by the device)."""
        return [g["lr"] if not isinstance(g["lr"], Tensor) else self.host[i]
                for i, g in enumerate(self.optimizer.param_groups)]

    def forget(self) -> None:
        """Take every group's current ``"lr"`` as assigned at the next step (after a load)."""
        self.seen = [_UNSEEN] * len(self.optimizer.param_groups)

    def attach(self, owner, schedule) -> None:
        """``owner`` (a fused_lr scheduler) now drives the LRs through ``schedule`` (a DeviceSchedule)."""
        self.owner = owner
        self.schedule = schedule

    def write(self, schedule) -> None:
        """``buf`` from ``schedule`` at its counter, on the device (where something reads it)."""
        if self.device_reads_buf or self.has_tensor_lrs:
            schedule.write_lr(self.buf)

    def watch(self, scheduler) -> None:
        self.watchers.append(weakref.ref(scheduler))

    def defers_schedule(self, schedule) -> bool:
        """Whether the optimizer's update kernel applies scheduler steps (the Triton path)."""
        return self.defers is not None and self.defers(schedule)

"""``FusedSGD``: torch.optim.SGD with its learning rates kept in device memory.

The optimizer is thin, as torch.optim's are: it validates, gathers each group's tensors and calls a
functional update (``fused_lr._torch_path.sgd_torch`` today; the Triton kernel where it is
available). Learning rates live in one float64 tensor on the parameters' device, ``_lr_buf``, and
``param_groups[i]["lr"]`` is a 0-dim view of element ``i``: the device schedule writes it without a
host round trip, reading it (``float(group["lr"])``) syncs only when the user asks.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _triton_path as _tp
from . import schedules as _schedules
from ._torch_path import sgd_torch

__all__ = ["FusedSGD"]


def _dtensor_type():
    """DTensor (FSDP2's fully_shard, tensor parallelism) if loaded: a DTensor parameter can only exist
    once torch.distributed.tensor is imported, and importing it here would add ~1 s to import fused_lr."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def _local(t: Tensor | None) -> Tensor | None:
    """A DTensor's local shard (shares its memory; SGD is elementwise, so updating shards is exact)."""
    dtensor = _dtensor_type()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def _like_param(local_buf: Tensor, p: Tensor) -> Tensor:
    """A momentum buffer made from local shards, wrapped as ``p`` is (a DTensor like torch.optim.SGD's)."""
    dtensor = _dtensor_type()
    if dtensor is not None and isinstance(p, dtensor):
        return dtensor.from_local(local_buf, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())
    return local_buf


_BACKENDS = ("auto", "torch", "triton")
# Hyper-parameters a FusedSGD group carries, in torch.optim.SGD's order.
_HYPER = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
# Keys torch.optim.SGD adds to its groups that mean nothing here (FusedSGD picks its primitive).
_STOCK_ONLY_KEYS = ("foreach", "fused", "differentiable")


def _as_float(name: str, value: Any) -> float:
    """A hyper-parameter as a Python float, or a clear error naming it."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"Invalid {name}: {value}")
    return value


def _validate_hyper(group: dict[str, Any], where: str) -> dict[str, Any]:
    """Checked copy of a group's hyper-parameters (torch.optim.SGD's rules, per group)."""
    out: dict[str, Any] = {}
    lr = _as_float("lr", group["lr"])
    if lr < 0.0 or math.isinf(lr):
        raise ValueError(f"Invalid learning rate: {lr}{where}")
    momentum = _as_float("momentum", group["momentum"])
    if momentum < 0.0 or math.isinf(momentum):
        raise ValueError(f"Invalid momentum value: {momentum}{where}")
    dampening = _as_float("dampening", group["dampening"])
    if math.isinf(dampening):
        raise ValueError(f"Invalid dampening value: {dampening}{where}")
    weight_decay = _as_float("weight_decay", group["weight_decay"])
    if weight_decay < 0.0 or math.isinf(weight_decay):
        raise ValueError(f"Invalid weight_decay value: {weight_decay}{where}")
    nesterov = group["nesterov"]
    maximize = group["maximize"]
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}{where}")
    if not isinstance(maximize, bool):
        raise TypeError(f"maximize must be a bool, got {maximize!r}{where}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            "Nesterov momentum requires a momentum and zero dampening "
            f"(got momentum={momentum}, dampening={dampening}){where}"
        )
    out.update(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        maximize=maximize,
    )
    return out


class _FastStep(NamedTuple):
    """What the Triton path's steady-state step relies on (see FusedSGD._fast_step)."""

    groups: tuple  # (id, len) of each group's params list
    params: list  # every parameter, in kernel order
    param_key: tuple  # their data_ptr()s
    schedule: Any  # the DeviceSchedule the plan ran with (or None)
    hyper: tuple  # the SGDHyper of each group
    plan: Any  # the cached launch plan (addresses, chunks, buffers)


class FusedSGD(Optimizer):
    r"""Stochastic gradient descent whose learning rate lives on the device.

    A drop-in replacement for :class:`torch.optim.SGD`: same arguments in the same order, same
    update, same ``state_dict`` format. Pair it with the schedulers of
    :mod:`fused_lr.lr_scheduler` (same names and signatures as :mod:`torch.optim.lr_scheduler`)
    and the learning rate is computed on the device from a step counter, without host syncs.

    Algorithm (torch's order, per parameter ``p`` with gradient ``g``)::

        g = -g                        if maximize
        g = g + weight_decay * p      if weight_decay != 0
        if momentum != 0:
            buf = g                   on the parameter's first step with momentum
            buf = momentum * buf + (1 - dampening) * g   afterwards
            g = g + momentum * buf    if nesterov else buf
        p = p - lr * g

    Args:
        params: parameters or parameter-group dicts (per-group ``lr``, ``momentum``,
            ``dampening``, ``weight_decay``, ``nesterov``, ``maximize``).
        lr, momentum, dampening, weight_decay, nesterov, maximize: as in torch.optim.SGD.
        foreach, fused: accepted for drop-in compatibility and ignored: FusedSGD always uses its
            own fused path.
        differentiable: must be False (FusedSGD's step is not differentiable).
        backend: ``"auto"`` (the Triton kernel for CUDA tensors when it is available, else the
            pure-PyTorch path), ``"torch"`` (the pure-PyTorch path), or ``"triton"`` (forced).

    All parameters must live on one device (the schedule's); parameters on the meta device and
    sparse gradients are refused with an error, before anything is modified.

    ``param_groups[i]["lr"]`` is a 0-dim float64 tensor on that device, kept current by the
    schedule. Read it with ``float(...)`` (a sync on an accelerator, when you ask), update it in
    place (``group["lr"] *= 0.9``, on the device) or assign a float (copied to the device at the
    next ``step()``).
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str = "auto",
    ) -> None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if differentiable:
            raise ValueError("FusedSGD does not support differentiable=True")
        defaults = _validate_hyper(
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
            ),
            "",
        )
        self.backend = backend
        self._device: torch.device | None = None
        self._lr_buf: Tensor | None = None
        self._lr_views: list[Tensor] = []
        self._schedule = None  # the fused_lr scheduler's device schedule, when one is attached
        self._identity = None  # Triton path without a closed-form schedule: rows that read lr_buf
        self._ticket = None  # Triton path: last-program-done ticket of the write-back
        self._plan_cache = None  # Triton path: address/chunk tables per parameter set
        self._uniform: list[bool] = []  # per group: the torch path's single-call fast path applies
        self._sharded: list[bool] = []  # per group: holds DTensors (updated through their local shards)
        self._buf_cache: dict[int, tuple] = {}  # per group: (state key, momentum buffers in param order)
        self._fast: _FastStep | None = None  # Triton path: the steady-state step, see _fast_step
        self._fast_steps = 0  # steps that took it (diagnostics, tests)
        self._lr_log: Tensor | None = None  # start_lr_log(): [capacity, groups] ring of the LRs used
        self._lr_log_pos: Tensor | None = None  # int64 device count of steps recorded
        super().__init__(params, defaults)
        self._impl = self._resolve_backend()

    # ------------------------------------------------------------------ groups and LR buffer

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, checking its hyper-parameters and parameters before anything changes."""
        self._fast = None
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the "
                "ordering of tensors in sets will change between runs. Please use a list instead."
            )
        else:
            params = list(params)
        merged = {k: param_group.get(k, self.defaults.get(k)) for k in _HYPER}
        where = f" (param group {len(self.param_groups)})"
        checked = _validate_hyper(merged, where)
        device = self._device
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, got {type(p).__name__}")
            if p.device.type == "meta":
                raise ValueError(
                    f"FusedSGD cannot optimize parameters on the meta device{where}: "
                    "materialize the model (e.g. module.to_empty(device=...)) first"
                )
            if not (p.is_floating_point() or p.is_complex()):
                raise TypeError(f"FusedSGD optimizes floating-point or complex tensors, got {p.dtype}{where}")
            if p.is_sparse:
                raise ValueError(f"FusedSGD does not support sparse parameters{where}")
            if device is None:
                device = p.device
            elif p.device != device:
                raise ValueError(
                    "FusedSGD keeps its learning rates and schedule on one device; "
                    f"got parameters on {device} and {p.device}{where}"
                )
        group = dict(param_group)
        group["params"] = params
        group.update(checked)
        super().add_param_group(group)
        self._device = device
        self._rebuild_lr_buf()
        self._uniform.append(self._is_uniform(params))
        self._sharded.append(self._has_dtensor(params))
        self._buf_cache.clear()
        if getattr(self, "_lr_log", None) is not None:
            self.start_lr_log(self._lr_log.shape[0])

    @staticmethod
    def _has_dtensor(params) -> bool:
        dtensor = _dtensor_type()
        return dtensor is not None and any(isinstance(p, dtensor) for p in params)

    @staticmethod
    def _is_uniform(params) -> bool:
        """One real dtype the stock fused kernel handles correctly: the torch path's fast path."""
        from ._torch_path import _FUSED_BROKEN, FUSED_DTYPES

        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            return False
        (dtype,) = dtypes
        return dtype in FUSED_DTYPES and (params[0].device.type, dtype) not in _FUSED_BROKEN

    def _rebuild_lr_buf(self) -> None:
        """One float64 LR tensor on the device; each group's "lr" is a 0-dim view of its slot."""
        values = [_as_float("lr", g["lr"]) for g in self.param_groups]
        device = self._device if self._device is not None else torch.device("cpu")
        self._lr_buf = torch.tensor(values, dtype=torch.float64, device=device)
        self._lr_views = [self._lr_buf[i] for i in range(len(values))]
        for g, view in zip(self.param_groups, self._lr_views):
            g["lr"] = view

    def _sync_assigned_lrs(self) -> None:
        """Copy LRs a user assigned to ``group["lr"]`` into the device buffer (no host read)."""
        for i, g in enumerate(self.param_groups):
            lr = g["lr"]
            view = self._lr_views[i]
            if lr is view:
                continue
            if isinstance(lr, Tensor):
                if lr.numel() != 1:
                    raise ValueError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)} (param group {i})")
                value = lr.reshape(())
            else:
                value = _as_float("lr", lr)
                if value < 0.0 or math.isinf(value):
                    raise ValueError(f"Invalid learning rate: {value} (param group {i})")
            # The view that was replaced keeps the LR it held, in its own memory, as a float or a
            # tensor taken from torch.optim.SGD's group would: code that swaps the LR out and later
            # puts the old object back (torch.distributed.checkpoint's _init_optim_state zeroes the
            # LRs around a step) gets the old LR back instead of the one assigned in between.
            view.set_(view.clone())
            view = self._lr_views[i] = self._lr_buf[i]
            if isinstance(value, Tensor):
                view.copy_(value)
            else:
                view.fill_(value)
            g["lr"] = view

    @property
    def lr_tensor(self) -> Tensor:
        """The float64 device tensor holding every group's current learning rate."""
        return self._lr_buf

    # ------------------------------------------------------------------ device-side LR log

    def start_lr_log(self, capacity: int = 4096) -> None:
        """Record the LR every group uses at each ``step()`` in a device ring buffer.

        The buffer (float64 ``[capacity, groups]``) and its step count live on the parameters'
        device; recording costs three tiny device ops per step (no host read, capturable; the
        Triton path records the LR its kernel used). Read it with :meth:`lr_log` (one sync).
        Restarting, or adding a param group, clears it.
        """
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        device = self._lr_buf.device
        self._lr_log = torch.zeros(capacity, len(self.param_groups), dtype=torch.float64, device=device)
        self._lr_log_pos = torch.zeros(1, dtype=torch.int64, device=device)

    def stop_lr_log(self) -> None:
        """Stop recording and free the buffer."""
        self._lr_log = self._lr_log_pos = None

    def lr_log(self) -> Tensor:
        """The recorded LRs, oldest first: a CPU float64 tensor ``[steps, groups]`` holding the
        last ``min(steps, capacity)`` steps. Reads the device once (a sync on a GPU)."""
        if self._lr_log is None:
            raise RuntimeError("no LR log is being recorded: call start_lr_log(capacity) first")
        log, count = self._lr_log.cpu(), int(self._lr_log_pos.item())
        cap = log.shape[0]
        if count <= cap:
            return log[:count]
        return torch.roll(log, -(count % cap), dims=0)

    def _record_lr(self) -> None:
        slot = torch.remainder(self._lr_log_pos, self._lr_log.shape[0])
        self._lr_log.index_copy_(0, slot, self._lr_buf.reshape(1, -1))
        self._lr_log_pos.add_(1)

    # ------------------------------------------------------------------ backend

    def _resolve_backend(self) -> str:
        device = self._device
        if self.backend == "torch":
            return "torch"
        if self.backend == "triton":
            if not _tp.triton_available(device):
                _tp._check_device(device)  # raises the specific reason
                raise RuntimeError(f"backend='triton' cannot run on {device}")
            return "triton"
        return "triton" if device.type == "cuda" and _tp.triton_available(device) else "torch"

    @property
    def implementation(self) -> str:
        """The update path in use: ``"triton"`` or ``"torch"``."""
        return self._impl

    def _defers_schedule(self, sched) -> bool:
        """Whether scheduler steps are left for the next update kernel to apply (Triton path)."""
        return self._impl == "triton" and _tp.kinds_supported(sched.kinds)

    # ------------------------------------------------------------------ step

    def _group_buffers(self, group: dict[str, Any], gi: int) -> list[Tensor | None]:
        """The group's momentum buffers in param order, cached between steps.

        The cache is dropped whenever FusedSGD itself changes the state (a new buffer, a load,
        a new group) or the state dict's size changes; a buffer tensor swapped into
        ``opt.state[p]`` by hand is not noticed (modify buffers in place, or use load_state_dict).
        """
        state = self.state
        if torch.compiler.is_compiling():
            # The cache saves eager Python work; in a traced step it would only add a guard on the
            # cache's contents and so one more recompile while the buffers are being created.
            return [state[p].get("momentum_buffer") if p in state else None for p in group["params"]]
        key = (id(state), len(state))
        cached = self._buf_cache.get(gi)
        if cached is not None and cached[0] == key:
            return cached[1]
        bufs = [state[p].get("momentum_buffer") if p in state else None for p in group["params"]]
        self._buf_cache[gi] = (key, bufs)
        return bufs

    def _collect(self, group: dict[str, Any], gi: int):
        ps = group["params"]
        grads = [p.grad for p in ps]
        use_momentum = group["momentum"] != 0
        all_bufs = self._group_buffers(group, gi) if use_momentum else None
        if all(g is not None for g in grads):
            params = ps
            bufs = list(all_bufs) if use_momentum else []
        else:
            keep = [i for i, g in enumerate(grads) if g is not None]
            params = [ps[i] for i in keep]
            grads = [grads[i] for i in keep]
            bufs = [all_bufs[i] for i in keep] if use_momentum else []
        for p, g in zip(params, grads):
            # torch checks device, dtype and shape when a grad is assigned; the dtype can differ
            # only through the grad_dtype opt-in.
            if g.is_sparse or g.dtype is not p.dtype:
                if g.is_sparse:
                    raise RuntimeError(
                        f"FusedSGD does not support sparse gradients (param group {gi}, shape {tuple(p.shape)})"
                    )
                raise RuntimeError(
                    f"gradient does not match its parameter in param group {gi}: grad "
                    f"{tuple(g.shape)} {g.dtype} on {g.device}, param {tuple(p.shape)} {p.dtype} on {p.device}"
                )
        return params, grads, bufs

    @torch.no_grad()
    def step(self, closure=None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Gather and check everything first: a bad gradient raises before any tensor changes.
        self._sync_assigned_lrs()
        if self._fast is None or not self._fast_step():
            work = [self._collect(group, gi) for gi, group in enumerate(self.param_groups)]
            if self._impl == "triton":
                self._step_triton(work)
            else:
                self._step_torch(work)
        if self._lr_log is not None:
            self._record_lr()
        return loss

    def _step_torch(self, work) -> None:
        for gi, (group, (params, grads, bufs)) in enumerate(zip(self.param_groups, work)):
            if not params:
                continue
            owners, sharded = params, self._sharded[gi]
            if sharded:
                # DTensors (FSDP2): torch has no sharding rule for _fused_sgd_, and none is needed:
                # SGD is elementwise, so each rank updates its own shards (views) in place.
                params, grads, bufs = ([_local(t) for t in ts] for ts in (params, grads, bufs))
            new_bufs = sgd_torch(
                params,
                grads,
                bufs,
                lr=self._lr_views[gi],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
                uniform=self._uniform[gi],
            )
            for p, b, old in zip(owners, new_bufs, bufs):
                if b is not old:
                    self.state[p]["momentum_buffer"] = _like_param(b, p) if sharded else b
                    self._buf_cache.pop(gi, None)

    def _step_triton(self, work) -> None:
        """One launch per dtype for every group; the LR is computed in the kernel from the schedule."""
        sched = self._schedule
        closed = sched is not None and _tp.kinds_supported(sched.kinds)
        mom_rows = sched.momentum_rows if closed else {}
        params, grads, bufs, first, gidx = [], [], [], [], []
        leftovers = []  # tensors the kernel does not take (non-contiguous, exotic dtypes): torch path
        for gi, (group, (ps, gs, bs)) in enumerate(zip(self.param_groups, work)):
            # A cycled momentum lives in the schedule: the group always has buffers.
            momentum = group["momentum"] != 0 or gi in mom_rows
            rest = ([], [], [])
            sharded = self._sharded[gi]
            for j, (owner, g) in enumerate(zip(ps, gs)):
                b = bs[j] if (momentum and bs) else None
                p = owner
                if sharded:  # DTensors: the kernel updates this rank's shards (see _step_torch)
                    p, g, b = _local(p), _local(g), _local(b)
                if not (p.is_contiguous() and g.is_contiguous() and (b is None or b.is_contiguous())) or not (
                    p.dtype in _tp.KERNEL_DTYPES or (p.is_complex() and p.real.dtype in _tp.KERNEL_DTYPES)
                ):
                    rest[0].append(owner), rest[1].append(gs[j]), rest[2].append(bs[j] if (momentum and bs) else None)
                    continue
                is_first = False
                if momentum and b is None:
                    b = torch.empty_like(p, memory_format=torch.contiguous_format)
                    self.state[owner]["momentum_buffer"] = _like_param(b, owner) if sharded else b
                    self._buf_cache.pop(gi, None)
                    is_first = True
                real = torch.view_as_real if p.is_complex() else (lambda t: t)
                params.append(real(p))
                grads.append(real(g))
                bufs.append(None if b is None else real(b))
                first.append(is_first)
                gidx.append(gi)
            leftovers.append(rest)
        advance = sched.pending if closed else 0
        if any(r[0] for r in leftovers):
            if closed and advance:
                sched.apply_pending(self._lr_buf)
                advance = 0
            self._step_torch(leftovers)
        if closed:
            desc, table, counter = sched.desc, sched.table, sched.counter
        else:
            ident = self._identity_schedule()
            ident.desc[:, 2].copy_(self._lr_buf)  # the kernel reads lr_buf through KIND_DIRECT rows
            desc, table, counter = ident.desc, ident.table, ident.counter
        if self._ticket is None:
            self._ticket = torch.zeros(1, dtype=torch.int32, device=self._device)
            self._plan_cache = _tp.SGDPlanCache()
        hyper = self._hyper(mom_rows)
        wrote = _tp.triton_sgd_step(
            params, grads, bufs, first, gidx, hyper, desc, table, counter,
            advance=advance,
            lr_out=self._lr_buf if (closed and advance) else None,
            ticket=self._ticket,
            cache=self._plan_cache,
        )
        if closed and advance:
            if wrote:
                sched.kernel_applied()
            else:
                sched.apply_pending(self._lr_buf)
        # Every parameter took the kernel, as real tensors: the next steps can skip the collection.
        self._fast = None
        all_in = len(params) == sum(len(g["params"]) for g in self.param_groups)
        if (
            params
            and all_in
            and not any(r[0] for r in leftovers)
            and not any(self._sharded)  # DTensor shards: the grads live on the DTensors, not the shards
            and not any(p.is_complex() for p in params)
        ):
            self._fast = _FastStep(
                groups=tuple((id(g["params"]), len(g["params"])) for g in self.param_groups),
                params=params,
                param_key=tuple(map(Tensor.data_ptr, params)),
                schedule=sched,
                hyper=hyper,
                plan=_tp.plan_for(self._plan_cache, params, bufs, gidx, hyper),
            )

    def _hyper(self, mom_rows) -> tuple:
        """Each group's hyper-parameters for the kernel (a cycled momentum: its schedule row)."""
        return tuple(
            _tp.SGDHyper(g["momentum"], g["dampening"], g["weight_decay"], g["nesterov"], g["maximize"])
            if gi not in mom_rows
            else _tp.SGDHyper(1.0, g["dampening"], g["weight_decay"], g["nesterov"], g["maximize"], mom_rows[gi])
            for gi, g in enumerate(self.param_groups)
        )

    def _fast_step(self) -> bool:
        """The Triton path's steady state in O(1) Python work per tensor: the same parameters, all
        with grads, buffers and hyper-parameters as at the last step. Checks, then launches the
        cached plan; returns False (having changed nothing) when anything differs, and the full
        step runs instead (which also raises the precise error for a bad gradient)."""
        f = self._fast
        groups = self.param_groups
        if len(groups) != len(f.groups) or any(
            id(g["params"]) != ident or len(g["params"]) != n for g, (ident, n) in zip(groups, f.groups)
        ):
            return False
        sched = self._schedule
        if sched is not f.schedule:
            return False
        closed = sched is not None and _tp.kinds_supported(sched.kinds)
        if self._hyper(sched.momentum_rows if closed else {}) != f.hyper:
            return False
        params = f.params
        grads = [p.grad for p in params]
        try:
            grad_key = tuple(map(Tensor.data_ptr, grads))  # TypeError on a None grad
            if tuple(map(Tensor.data_ptr, params)) != f.param_key:
                return False  # a parameter's storage was replaced (p.data = ..., .half())
        except (TypeError, RuntimeError):
            return False
        plan = f.plan
        if grad_key != plan.grad_key:
            for p, g in zip(params, grads):
                if g.is_sparse or g.dtype is not p.dtype or g.shape != p.shape or not g.is_contiguous():
                    return False
            _tp.set_plan_grads(plan, grads, params, grad_key)
        _tp.clear_first_steps(plan)
        if closed:
            desc, table, counter, advance = sched.desc, sched.table, sched.counter, sched.pending
        else:
            ident = self._identity_schedule()
            ident.desc[:, 2].copy_(self._lr_buf)
            desc, table, counter, advance = ident.desc, ident.table, ident.counter, 0
        wrote = _tp.launch_plan(
            plan, desc, table, counter,
            advance=advance,
            lr_out=self._lr_buf if advance else None,
            ticket=self._ticket,
            n_groups=len(groups),
        )
        if advance:
            if wrote:
                sched.kernel_applied()
            else:
                sched.apply_pending(self._lr_buf)
        self._fast_steps += 1
        return True

    def _identity_schedule(self):
        ident = self._identity
        if ident is None or ident.desc.shape[0] != len(self.param_groups):
            ident = _schedules.DeviceSchedule(self._device)
            ident.set_rows([_schedules.direct_row(0.0, 0.0) for _ in self.param_groups])
            self._identity = ident
        return ident

    # ------------------------------------------------------------------ state_dict

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.SGD's format: float ``lr`` (read from the device, on request)."""
        self._sync_assigned_lrs()  # an LR assigned since the last step is the group's LR, as in torch
        sd = super().state_dict()
        lrs = self._lr_buf.tolist()
        for i, g in enumerate(sd["param_groups"]):
            g["lr"] = lrs[i]
            if isinstance(g.get("initial_lr"), Tensor):
                g["initial_lr"] = g["initial_lr"].item()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a FusedSGD or torch.optim.SGD state dict; checks everything before changing anything."""
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' (an optimizer state_dict)")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, this optimizer has "
                f"{len(self.param_groups)}"
            )
        converted_groups = []
        id_to_param: dict[Any, Tensor] = {}
        for gi, (ours, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(ours["params"]):
                raise ValueError(
                    f"loaded state dict's param group {gi} has {len(saved['params'])} parameters, "
                    f"this optimizer's has {len(ours['params'])}"
                )
            g = {k: v for k, v in saved.items() if k not in _STOCK_ONLY_KEYS}
            merged = {k: g.get(k, self.defaults[k]) for k in _HYPER}
            g.update(_validate_hyper(merged, f" (loaded param group {gi})"))
            if isinstance(g.get("initial_lr"), Tensor):
                g["initial_lr"] = g["initial_lr"].item()
            converted_groups.append(g)
            id_to_param.update(zip(saved["params"], ours["params"]))
        for key, st in state_dict["state"].items():
            if key not in id_to_param:
                raise ValueError(f"loaded state dict has state for unknown parameter id {key!r}")
            buf = st.get("momentum_buffer") if isinstance(st, dict) else None
            p = id_to_param[key]
            if buf is not None and (not isinstance(buf, Tensor) or buf.shape != p.shape):
                shape = tuple(buf.shape) if isinstance(buf, Tensor) else type(buf).__name__
                raise ValueError(
                    f"loaded momentum_buffer for parameter id {key!r} has shape {shape}, "
                    f"the parameter has shape {tuple(p.shape)}"
                )
        converted = dict(state_dict)
        converted["param_groups"] = converted_groups
        super().load_state_dict(converted)
        # torch leaves a loaded momentum_buffer=None entry in place; FusedSGD treats it as "none yet".
        # The loaded LRs are used until the scheduler next steps, as with torch.optim.SGD.
        self._buf_cache.clear()
        self._fast = None  # new momentum buffers: the next step collects everything again
        self._rebuild_lr_buf()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for g in self.param_groups:
            for k in _STOCK_ONLY_KEYS:
                g.pop(k, None)
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("_schedule", None)
        self.__dict__.setdefault("_lr_log", None)
        self.__dict__.setdefault("_fast_steps", 0)
        self._fast = None
        self.__dict__.setdefault("_lr_log_pos", None)
        self.__dict__.setdefault("_impl", "torch")
        for name in ("_identity", "_ticket", "_plan_cache"):
            self.__dict__.setdefault(name, None)
        self.__dict__.setdefault("_uniform", [self._is_uniform(g["params"]) for g in self.param_groups])
        self.__dict__.setdefault("_sharded", [self._has_dtensor(g["params"]) for g in self.param_groups])
        self._buf_cache = {}
        if self.param_groups:
            self._device = self.param_groups[0]["params"][0].device
            self._rebuild_lr_buf()

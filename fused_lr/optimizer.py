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

from . import _compiled_op  # noqa: F401  (registers torch.ops.fused_lr.triton_sgd_update)
from . import _triton_path as _tp
from . import schedules as _schedules
from ._layout import flat_ok, is_dense, overlaps_itself, same_strides
from ._torch_path import grad_norm_torch, norm_dtype, scaled_grads, sgd_torch

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
_UNSEEN = object()  # a group "lr" fused_lr has not seen yet (after a load): taken as assigned
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


def _lr_value(lr: Any, group: int) -> float:
    """A group's LR as a float (a tensor LR is read: a sync on an accelerator)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)} (param group {group})")
        return float(lr.detach().reshape(()).item())
    return float(lr)


def _validate_clip(max_grad_norm: Any, norm_type: Any, error_if_nonfinite: Any) -> tuple[float | None, float, bool]:
    """Checked (max_grad_norm, norm_type, error_if_nonfinite); errors name the bad value."""
    if max_grad_norm is not None:
        if isinstance(max_grad_norm, Tensor):
            if max_grad_norm.numel() != 1:
                raise ValueError(f"Tensor max_grad_norm must be 1-element, got shape {tuple(max_grad_norm.shape)}")
            max_grad_norm = max_grad_norm.item()
        if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, numbers.Real):
            raise TypeError(f"max_grad_norm must be a real number or None, got {max_grad_norm!r}")
        max_grad_norm = float(max_grad_norm)
        if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm} (must be finite and > 0, or None to not clip)")
    if isinstance(norm_type, bool) or not isinstance(norm_type, (numbers.Real, str)):
        raise TypeError(f"norm_type must be 2.0 or float('inf'), got {norm_type!r}")
    try:
        p = float(norm_type)
    except ValueError:
        raise ValueError(f"Unsupported norm_type: {norm_type!r}; FusedSGD clips with the 2-norm or the inf-norm "
                         "(norm_type=2.0 or float('inf'))") from None
    if p not in (2.0, math.inf):
        raise ValueError(f"Unsupported norm_type: {norm_type!r}; FusedSGD clips with the 2-norm or the inf-norm "
                         "(norm_type=2.0 or float('inf'))")
    if not isinstance(error_if_nonfinite, bool):
        raise TypeError(f"error_if_nonfinite must be a bool, got {error_if_nonfinite!r}")
    return max_grad_norm, p, error_if_nonfinite


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
    norm_dtype: torch.dtype  # dtype of the total grad norm (clipping)


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
        max_grad_norm: clip the gradients as ``torch.nn.utils.clip_grad_norm_(all params,
            max_grad_norm, norm_type)`` would just before each step, fused into the step: the
            total norm of every gradient of every group is computed on the device and each
            gradient is multiplied by ``min(max_grad_norm / (norm + 1e-6), 1)`` inside the update
            (``p.grad`` itself is not modified). ``None`` (default): no clipping. Must be finite
            and > 0. With AMP the norm is that of the unscaled gradients.
        norm_type: ``2.0`` or ``float("inf")`` (``"inf"`` accepted).
        error_if_nonfinite: raise ``RuntimeError`` when the total norm is NaN or inf (as
            clip_grad_norm_ does), before anything is modified. This reads the norm on the host
            (one sync per step on an accelerator). A step AMP skips (``found_inf`` nonzero) does
            not raise. Without it a non-finite norm behaves as in torch: the coefficient is NaN
            (or 0 for an infinite norm) and multiplies the gradients.

    AMP: ``torch.amp.GradScaler.step(opt)`` hands ``FusedSGD`` its loss scale and inf flag
    (``_step_supports_amp_scaling``); ``step`` also takes them as ``grad_scale=`` / ``found_inf=``.
    The gradients are divided by ``grad_scale`` inside the update, and a step with ``found_inf != 0``
    changes no parameter and no momentum buffer (a parameter's skipped first step stays its first
    step). Schedulers are unaffected: a skipped step still applies pending scheduler steps.
    ``p.grad`` keeps the scaled gradient (torch's own unscale writes it back; FusedSGD does not).

    After a step with ``max_grad_norm`` set, ``last_grad_norm`` is a 0-dim device tensor (float32,
    float64 when a gradient is float64), a new tensor each step: the total norm of the unscaled
    gradients, read it when you choose to.

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
        max_grad_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = False,
    ) -> None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.max_grad_norm, self.norm_type, self.error_if_nonfinite = _validate_clip(
            max_grad_norm, norm_type, error_if_nonfinite
        )
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
        if isinstance(lr, Tensor):
            defaults["lr"] = lr  # torch's tensor-LR behaviour: the groups share this tensor
        self.backend = backend
        self._device: torch.device | None = None
        self._lr_buf: Tensor | None = None
        self._lr_views: list[Tensor] = []  # 0-dim views of _lr_buf, one per group
        self._lr_seen: list[Any] = []  # per group: the "lr" object fused_lr last set or read
        self._lr_owner = None  # the fused_lr scheduler driving the LRs, when one is attached
        self._lr_watchers: list = []  # weakrefs to ReduceLROnPlateau schedulers (asynchronous LR refresh)
        self._schedule = None  # its device schedule
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
        # Triton path: one int8 first-step flag per parameter (flattened param_groups order), on the
        # device, set when a momentum buffer is allocated and cleared by the kernel once the update
        # really happened (an AMP-skipped first step leaves it set). None until the first step.
        self._first_flags: Tensor | None = None
        # Slots whose flag may be 1 (set at allocation; known clear after a launch without found_inf):
        # while empty, the kernel is told not to clear flags, and takes no ticket for it.
        self._flags_maybe_set: set[int] = set()
        self._slot_of: dict[int, int] = {}
        self._max_norm_t: Tensor | None = None  # float64 [1] max_grad_norm on the device
        self._clip_out: dict[torch.dtype, tuple[Tensor, Tensor]] = {}  # norm dtype -> (norm_out, clip_coef)
        self.last_grad_norm: Tensor | None = None
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
        if isinstance(merged["lr"], Tensor):
            group["lr"] = merged["lr"]  # torch keeps a tensor LR as the tensor it was given
        super().add_param_group(group)
        self._groups = self.param_groups
        self._device = device
        self._rebuild_lr_buf()
        self._uniform.append(self._is_uniform(params))
        self._sharded.append(self._has_dtensor(params))
        self._buf_cache.clear()
        self._rebuild_slots()
        if getattr(self, "_lr_log", None) is not None:
            self.start_lr_log(self._lr_log.shape[0])

    @staticmethod
    def _has_dtensor(params) -> bool:
        dtensor = _dtensor_type()
        return dtensor is not None and any(isinstance(p, dtensor) for p in params)

    def _rebuild_slots(self) -> None:
        """Each parameter's first-step flag slot: its index in param_groups order (the index
        state_dict gives it); existing flags keep their values."""
        self._slot_of = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        flags = self.__dict__.get("_first_flags")
        if flags is not None and flags.numel() < len(self._slot_of):
            extra = torch.zeros(len(self._slot_of) - flags.numel(), dtype=torch.int8, device=flags.device)
            self._first_flags = torch.cat([flags, extra])

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
        """The float64 device tensor of every group's LR, from the groups' ``"lr"`` as they are now.

        ``group["lr"]`` stays what the user gave (a Python float, or a tensor as torch allows): the
        buffer is fused_lr's device copy, which the kernels and the schedules read and write. A
        tensor LR is read once here (a sync on an accelerator, at construction and loads only)."""
        values = [_lr_value(g["lr"], i) for i, g in enumerate(self.param_groups)]
        device = self._device if self._device is not None else torch.device("cpu")
        self._lr_buf = torch.tensor(values, dtype=torch.float64, device=device)
        self._lr_views = [self._lr_buf[i] for i in range(len(values))]
        self._lr_seen = [g["lr"] for g in self.param_groups]

    def _lr_assignments(self) -> list[tuple[int, float | Tensor]]:
        """The groups whose ``"lr"`` was assigned since fused_lr last set or read it, with the new
        value (a float, or a tensor LR), all checked before anything changes. Costs one identity
        comparison per group when nothing changed; never reads the device."""
        for ref in self._lr_watchers:
            watcher = ref()
            if watcher is not None:
                watcher._refresh()  # an asynchronous copy of a device decision that has arrived
        changes = []
        seen = self._lr_seen
        for i, g in enumerate(self.param_groups):
            lr = g["lr"]
            old = seen[i]
            if lr is old:
                continue
            if isinstance(lr, Tensor):
                if lr.numel() != 1:
                    raise ValueError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)} (param group {i})")
                changes.append((i, lr))
                continue
            value = _as_float("lr", lr)
            if value < 0.0 or math.isinf(value):
                raise ValueError(f"Invalid learning rate: {value} (param group {i})")
            if not isinstance(old, Tensor) and value == old:
                seen[i] = lr  # the same value under another object: nothing to do
                continue
            changes.append((i, value))
        return changes

    def _apply_lr_assignments(self, changes: list[tuple[int, float | Tensor]]) -> None:
        """Make assigned LRs take effect: through the attached fused_lr scheduler, which carries
        them on as torch's recurrence would, or straight into the device buffer (no scheduler, a
        stock one, ReduceLROnPlateau). A float is written without a host read; a tensor on the
        device is copied on the device."""
        if not changes:
            return
        owner = self._lr_owner
        if owner is not None:
            owner._lrs_assigned(changes)
        else:
            for i, value in changes:
                if isinstance(value, Tensor):
                    self._lr_views[i].copy_(value.detach().reshape(()))
                else:
                    self._lr_views[i].fill_(value)
        for i, _ in changes:
            self._lr_seen[i] = self.param_groups[i]["lr"]

    def _follow_tensor_lrs(self) -> None:
        """Tensor LRs a user may change in place (``group["lr"].mul_(0.5)``): copied into the
        device buffer before every update that no fused_lr scheduler drives (device to device)."""
        if self._lr_owner is None:
            for i, g in enumerate(self.param_groups):
                lr = g["lr"]
                if isinstance(lr, Tensor):
                    self._lr_views[i].copy_(lr.detach().reshape(()))

    def _publish_lrs(self, values: list[float]) -> None:
        """Set every group's ``"lr"`` to the scheduler's value, as torch's schedulers do: a float
        replaces a float, a tensor LR is filled in place (``fill_`` of a Python number: no sync)."""
        for i, (g, v) in enumerate(zip(self.param_groups, values)):
            lr = g["lr"]
            if isinstance(lr, Tensor):
                lr.fill_(v)
            else:
                g["lr"] = v
            self._lr_seen[i] = g["lr"]

    def _forget_seen_lrs(self) -> None:
        """Take every group's current ``"lr"`` as assigned at the next step (after a load)."""
        self._lr_seen = [_UNSEEN] * len(self.param_groups)

    def _attach(self, owner, schedule) -> None:
        """``owner`` (a fused_lr scheduler) now drives the LRs through ``schedule`` (a DeviceSchedule)."""
        self._lr_owner = owner
        self._schedule = schedule

    @property
    def lr_tensor(self) -> Tensor:
        """The float64 device tensor holding every group's learning rate as the device sees it:
        written by the schedule on the device (by the update kernel on the Triton path), so it is
        the truth where the host cannot know (CUDA-graph replays, a plateau decision on a device
        metric). Reading it is a sync on an accelerator."""
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
        return self._impl == "triton" and not torch.compiler.is_compiling() and _tp.kinds_supported(sched.kinds)

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

    def _collect_all(self) -> list:
        """(params with grads, their grads, their momentum buffers) of every group. Every grad is
        read before the state dict is looked at: inside torch.compile a parameter first reached
        as a key of ``self.state`` would have its grad guarded by identity, and a new grad object
        each step (``zero_grad(set_to_none=True)``) would then invalidate the compiled step."""
        groups = self._groups
        all_grads = [[p.grad for p in g["params"]] for g in groups]
        return [self._collect(g, gi, grads) for gi, (g, grads) in enumerate(zip(groups, all_grads))]

    def _collect(self, group: dict[str, Any], gi: int, grads: list):
        ps = group["params"]
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
            if not p.is_contiguous() and overlaps_itself(_local(p)):
                # torch's in-place update raises this mid-step; checked here, before any update.
                raise RuntimeError(
                    f"unsupported operation: more than one element of the written-to tensor refers to a single "
                    f"memory location: a parameter of param group {gi} (shape {tuple(p.shape)}, strides "
                    f"{tuple(_local(p).stride())}) shares memory between its elements; give it its own storage (clone it)"
                )
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

    # GradScaler.step(opt) hands the loss scale and the inf flag to step() (as the attributes
    # grad_scale / found_inf in torch 2.13) instead of unscaling the gradients itself.
    _step_supports_amp_scaling = True

    def _check_amp_tensor(self, t: Any, name: str) -> None:
        if t is None:
            return
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor or None, got {type(t).__name__}")
        if t.dtype != torch.float32 or t.numel() != 1 or t.device != self._device:
            raise ValueError(
                f"{name} must be a float32 tensor with one element on {self._device} (the parameters' "
                f"device), got {t.dtype} of shape {tuple(t.shape)} on {t.device}"
            )

    @torch.no_grad()
    def step(self, closure=None, *, grad_scale: Tensor | None = None, found_inf: Tensor | None = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
            grad_scale: float32 one-element tensor on the parameters' device, or None: the gradients
                are divided by it (AMP's loss scale). Defaults to the ``grad_scale`` attribute
                ``torch.amp.GradScaler.step`` sets.
            found_inf: float32 one-element tensor on the parameters' device, or None: when nonzero,
                no parameter and no momentum buffer changes. Defaults to the ``found_inf``
                attribute GradScaler sets.
        """
        if grad_scale is None:
            grad_scale = getattr(self, "grad_scale", None)
        if found_inf is None:
            found_inf = getattr(self, "found_inf", None)
        # Everything is checked before anything changes: the AMP tensors, then every gradient.
        self._check_amp_tensor(grad_scale, "grad_scale")
        self._check_amp_tensor(found_inf, "found_inf")
        # 0-dim views (same storage): a one-element [1] tensor is accepted too.
        grad_scale = None if grad_scale is None else grad_scale.reshape(())
        found_inf = None if found_inf is None else found_inf.reshape(())
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not torch.compiler.is_compiling():
            # (Inside torch.compile the float LRs are not read: a guard on them would recompile at
            # every new LR. Assignments made there are taken at the next eager step.)
            changes = self._lr_assignments()  # checked before anything changes
            self._apply_lr_assignments(changes)
            self._follow_tensor_lrs()
        # Inside torch.compile the update is traced as torch ops (the torch path's foreach form,
        # which the compiler fuses): the Triton launcher's host-side tables cannot be traced.
        compiling = torch.compiler.is_compiling()
        if compiling or not (self._fast is not None and self._fast_step(grad_scale, found_inf)):
            work = self._collect_all()
            # Clipping over DTensor shards needs the norm reduced across ranks, which the Triton
            # norm kernels do not do: such steps take the torch path (DTensor ops) whole.
            if compiling and self._impl == "triton" and self._step_triton_compiled(work, grad_scale, found_inf):
                pass  # the kernel, as an opaque op in the compiled graph
            elif (
                self._impl == "triton"
                and not compiling
                and not (self.max_grad_norm is not None and any(self._sharded))
            ):
                self._step_triton(work, grad_scale, found_inf)
            else:
                if self._impl == "triton" and self._schedule is not None and self._schedule.pending:
                    self._schedule.apply_pending(self._lr_buf)  # no kernel will apply the deferred step
                self._step_torch(work, grad_scale, found_inf)
        if self._lr_log is not None:
            self._record_lr()
        return loss

    # ------------------------------------------------------------------ clipping helpers

    def _max_norm_tensor(self) -> Tensor:
        if self._max_norm_t is None:
            self._max_norm_t = torch.tensor([self.max_grad_norm], dtype=torch.float64, device=self._device)
        return self._max_norm_t

    def _check_finite_norm(self, norm: Tensor, found_inf: Tensor | None) -> None:
        """error_if_nonfinite: a host read of the norm (and of found_inf), before any update."""
        if not self.error_if_nonfinite:
            return
        if found_inf is not None and float(found_inf) != 0:
            return  # AMP skips this step: the non-finite norm is expected
        value = float(norm)
        if not math.isfinite(value):
            raise RuntimeError(
                f"The total norm of order {self.norm_type} for gradients from `parameters` is non-finite "
                f"({value}), so it cannot be clipped. To disable this error and scale the gradients by the "
                "non-finite norm anyway, set `error_if_nonfinite=False`"
            )

    def _skip_on_host(self, work, found_inf: Tensor | None) -> tuple[bool, Tensor | None]:
        """Whether the torch path skips this step (decided on the host), and the found_inf to hand
        to torch's fused kernel (device-side skip).

        On CPU found_inf is read on the host (no sync exists there). On CUDA it stays on the device
        unless this step creates a momentum buffer: a device-skipped first step would leave that
        buffer unwritten (torch's own fused SGD stores it anyway, see the tests), so such a step,
        typically only the first, reads found_inf on the host (one sync).
        """
        if found_inf is None:
            return False, None
        new_bufs = any(
            b is None for group, (ps, _, bs) in zip(self._groups, work) if group["momentum"] != 0 for b in bs
        )
        if self._device.type != "cuda" or new_bufs:
            return float(found_inf) != 0, None
        return False, (found_inf != 0).to(torch.float32)

    # ------------------------------------------------------------------ torch path

    def _step_torch(self, work, grad_scale=None, found_inf=None, clip_coef=None, norm_done=False) -> None:
        """The pure-PyTorch path. ``clip_coef``/``norm_done``: the Triton path already computed the
        coefficient over every gradient (its kernel tensors and these)."""
        all_grads = [g for (_, gs, _) in work for g in gs]
        if self.max_grad_norm is not None and not norm_done:
            total = grad_norm_torch(all_grads, self.norm_type == math.inf).to(self._device)
            dtensor = _dtensor_type()
            if dtensor is not None and isinstance(total, dtensor):
                # FSDP2: the shards' norms are partial; full_tensor() reduces them across the ranks
                # (a collective on the device, no host sync), as clip_grad_norm_ does for DTensors.
                total = total.full_tensor()
            if grad_scale is not None:
                total = total / grad_scale
            self._check_finite_norm(total, found_inf)
            self.last_grad_norm = total
            clip_coef = (self.max_grad_norm / (total + 1e-6)).clamp(max=1.0)
        skip, device_found_inf = self._skip_on_host(work, found_inf)
        if skip:
            return
        for gi, (group, (params, grads, bufs)) in enumerate(zip(self._groups, work)):
            if not params:
                continue
            owners, sharded = params, self._sharded[gi]
            if sharded:
                # DTensors (FSDP2): torch has no sharding rule for _fused_sgd_, and none is needed:
                # SGD is elementwise, so each rank updates its own shards (views) in place.
                params, grads, bufs = ([_local(t) for t in ts] for ts in (params, grads, bufs))
            if grad_scale is not None or clip_coef is not None:
                grads = scaled_grads(grads, grad_scale, clip_coef)
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
                found_inf=device_found_inf,
            )
            for p, b, old in zip(owners, new_bufs, bufs):
                if b is not old:
                    self.state[p]["momentum_buffer"] = _like_param(b, p) if sharded else b
                    self._buf_cache.pop(gi, None)

    # ------------------------------------------------------------------ Triton path

    def _step_triton(self, work, grad_scale=None, found_inf=None) -> None:
        """One launch per dtype for every group; the LR is computed in the kernel from the schedule."""
        sched = self._schedule
        closed = sched is not None and _tp.kinds_supported(sched.kinds)
        mom_rows = sched.momentum_rows if closed else {}
        clipping = self.max_grad_norm is not None
        norm_inf = self.norm_type == math.inf
        params, grads, bufs, slots, gidx = [], [], [], [], []
        new_bufs = []  # (param, buffer, group): stored in the state only once the launch is under way
        leftovers = []  # tensors the kernel does not take (layouts it cannot walk flat, exotic dtypes): torch path
        for gi, (group, (ps, gs, bs)) in enumerate(zip(self._groups, work)):
            # A cycled momentum lives in the schedule: the group always has buffers.
            momentum = group["momentum"] != 0 or gi in mom_rows
            rest = ([], [], [])
            sharded = self._sharded[gi]
            for j, (owner, g) in enumerate(zip(ps, gs)):
                b = bs[j] if (momentum and bs) else None
                p = owner
                if sharded:  # DTensors: the kernel updates this rank's shards (see _step_torch)
                    p, g, b = _local(p), _local(g), _local(b)
                if not flat_ok(p, g, b) or not (
                    p.dtype in _tp.KERNEL_DTYPES or (p.is_complex() and p.real.dtype in _tp.KERNEL_DTYPES)
                ) or (clipping and norm_inf and p.is_complex()):
                    # The kernel walks parameter, gradient and buffer as flat arrays: a non-dense
                    # parameter, or a gradient or buffer with other strides (a gradient assigned by
                    # hand; autograd gives a dense parameter's gradient its strides), takes the
                    # torch path, which follows strides. (The inf-norm of a complex gradient is
                    # max |z|, not the real view's max component: the torch path computes it.)
                    rest[0].append(owner), rest[1].append(gs[j]), rest[2].append(bs[j] if (momentum and bs) else None)
                    continue
                if momentum and b is None:
                    # Zeros, not empty: if AMP skips this first step the buffer stays as allocated
                    # until the next real step (which is the first step: the flag stays set). A
                    # cycled momentum that is 0 on this step leaves it unwritten too (the kernel
                    # skips a zero momentum's buffer): zeros, never uninitialised memory. In the
                    # parameter's layout (dense here), so that the kernel walks all three flat.
                    b = (torch.zeros_like if (found_inf is not None or gi in mom_rows) else torch.empty_like)(
                        p, memory_format=torch.preserve_format
                    )
                    new_bufs.append((owner, b, gi, sharded))
                real = torch.view_as_real if p.is_complex() else (lambda t: t)
                params.append(real(p))
                grads.append(real(g))
                bufs.append(None if b is None else real(b))
                slots.append(self._slot_of[id(owner)])
                gidx.append(gi)
            leftovers.append(rest)
        has_leftovers = any(r[0] for r in leftovers)
        advance = sched.pending if closed else 0
        if not params:
            # Nothing for the kernel: the torch path does the whole step (and the clipping).
            if closed and advance:
                sched.apply_pending(self._lr_buf)
                sched.pending = 0
            self._step_torch(leftovers, grad_scale, found_inf)
            return
        if closed:
            desc, table, counter = sched.desc, sched.table, sched.counter
        else:
            ident = self._identity_schedule()
            ident.desc[:, 2].copy_(self._lr_buf)  # the kernel reads lr_buf through KIND_DIRECT rows
            desc, table, counter = ident.desc, ident.table, ident.counter
        if self._ticket is None:
            self._ticket = torch.zeros(1, dtype=torch.int32, device=self._device)
            self._plan_cache = _tp.SGDPlanCache()
        if self._first_flags is None:
            self._first_flags = torch.zeros(len(self._slot_of), dtype=torch.int8, device=self._device)
        clip = None
        if clipping:
            left_grads = [g for r in leftovers for g in r[1]]
            ndtype = norm_dtype(grads + left_grads)
            if ndtype not in self._clip_out:
                self._clip_out[ndtype] = (torch.zeros(1, dtype=ndtype, device=self._device),
                                          torch.zeros(1, dtype=torch.float64, device=self._device))
            norm_out, coef = self._clip_out[ndtype]
            extra = None
            if left_grads:
                # The leftovers' share of the norm, as one more partial: sum of squares or max.
                part = grad_norm_torch(left_grads, norm_inf).to(device=self._device, dtype=torch.float64)
                extra = (part if norm_inf else part * part).reshape(1)
            clip = _tp.ClipSpec(self._max_norm_tensor(), norm_inf, norm_out, coef, extra)
        hyper = self._hyper(mom_rows)
        before_update = None
        if clip is not None and self.error_if_nonfinite:
            before_update = lambda: self._check_finite_norm(clip.norm_out, found_inf)  # noqa: E731
        if new_bufs:
            # (Uploaded through pinned memory, asynchronously: no host sync on CUDA.)
            new_slots = [self._slot_of[id(p)] for p, _, _, _ in new_bufs]
            idx = _tp._upload(new_slots, torch.int64, self._device)
            flags_before = self._first_flags.clone() if before_update is not None else None
            self._first_flags.index_fill_(0, idx, 1)
            self._flags_maybe_set.update(new_slots)
        try:
            wrote = _tp.triton_sgd_step(
                params, grads, bufs, None, gidx, hyper, desc, table, counter,
                advance=advance,
                lr_out=self._lr_buf if (closed and advance) else None,
                ticket=self._ticket,
                cache=self._plan_cache,
                first_flags=self._first_flags,
                flag_slots=slots,
                grad_scale=grad_scale,
                found_inf=found_inf,
                clip=clip,
                before_update=before_update,
                clear_first=bool(self._flags_maybe_set),
            )
        except Exception:
            if new_bufs and before_update is not None:
                self._first_flags.copy_(flags_before)
                self._flags_maybe_set.difference_update(new_slots)
            raise
        if self._flags_maybe_set and found_inf is None:
            self._flags_maybe_set.difference_update(slots)  # the update happened: the kernel cleared them
        for owner, b, gi, sharded in new_bufs:
            self.state[owner]["momentum_buffer"] = _like_param(b, owner) if sharded else b
            self._buf_cache.pop(gi, None)
        if clip is not None:
            self.last_grad_norm = clip.norm_out.clone().reshape(())
        if closed and advance:
            if wrote:
                sched.kernel_applied()
            else:
                sched.apply_pending(self._lr_buf)
        if has_leftovers:
            # After the kernel: it wrote back the LR the step used, which the torch path reads.
            coef_t = None
            if clip is not None:
                coef_t = clip.clip_coef.reshape(()).to(clip.norm_out.dtype)
            self._step_torch(leftovers, grad_scale, found_inf, clip_coef=coef_t, norm_done=clip is not None)
        # Every parameter took the kernel, as real tensors: the next steps can skip the collection.
        self._fast = None
        all_in = len(params) == sum(len(g["params"]) for g in self._groups)
        if (
            params
            and all_in
            and not any(r[0] for r in leftovers)
            and not any(self._sharded)  # DTensor shards: the grads live on the DTensors, not the shards
            and not any(p.is_complex() for p in params)
        ):
            self._fast = _FastStep(
                groups=tuple((id(g["params"]), len(g["params"])) for g in self._groups),
                params=params,
                param_key=tuple(map(Tensor.data_ptr, params)),
                schedule=sched,
                hyper=hyper,
                plan=_tp.plan_for(self._plan_cache, params, bufs, gidx, hyper, slots),
                norm_dtype=norm_dtype(params),
            )

    def _step_triton_compiled(self, work, grad_scale, found_inf) -> bool:
        """Inside torch.compile: the Triton update as the custom op ``fused_lr::triton_sgd_update``
        (fused_lr._compiled_op), which the compiler keeps as one opaque, ordered call. Covers plain
        steps (no AMP, no clipping, no DTensors; real tensors of the kernel's dtypes, each parameter
        dense with its gradient and buffer in its layout); returns False for anything else, and the
        traced torch-op update runs instead."""
        if grad_scale is not None or found_inf is not None or self.max_grad_norm is not None or any(self._sharded):
            return False
        for group in self._groups:
            for p in group["params"]:
                if p.is_complex() or p.dtype not in _tp.KERNEL_DTYPES or not is_dense(p):
                    return False
        for ps, gs, bs in work:
            for j, (p, g) in enumerate(zip(ps, gs)):
                if not flat_ok(p, g, bs[j] if bs else None):
                    return False
        sched = self._schedule
        closed = sched is not None and _tp.kinds_supported(sched.kinds)
        mom_rows = sched.momentum_rows if closed else {}
        if closed and sched.pending:
            # A scheduler step deferred by an eager step before: no kernel in here applies it.
            sched.apply_pending(self._lr_buf)
        if self._ticket is None:
            self._ticket = torch.zeros(1, dtype=torch.int32, device=self._device)
            self._plan_cache = _tp.SGDPlanCache()
        if self._first_flags is None:
            self._first_flags = torch.zeros(len(self._slot_of), dtype=torch.int8, device=self._device)
        params, grads, bufs, slots, gidx = [], [], [], [], []
        for gi, (group, (ps, gs, bs)) in enumerate(zip(self._groups, work)):
            momentum = group["momentum"] != 0 or gi in mom_rows
            for j, (p, g) in enumerate(zip(ps, gs)):
                b = bs[j] if (momentum and bs) else None
                slot = self._slot_of[id(p)]
                if momentum and b is None:
                    b = torch.zeros_like(p, memory_format=torch.preserve_format)  # the parameter's layout
                    self.state[p]["momentum_buffer"] = b
                    self._buf_cache.pop(gi, None)
                    self._first_flags[slot] = 1  # buf = g on this first step (the kernel clears it)
                params.append(p)
                grads.append(g)
                bufs.append(b)
                slots.append(slot)
                gidx.append(gi)
        if not params:
            return True
        if closed:
            desc, table, counter = sched.desc, sched.table, sched.counter
        else:
            ident = self._identity_schedule()
            ident.desc[:, 2].copy_(self._lr_buf)
            desc, table, counter = ident.desc, ident.table, ident.counter
        hyper = [float(x) for h in self._hyper(mom_rows) for x in h]
        torch.ops.fused_lr.triton_sgd_update(
            params, grads, bufs, self._first_flags, self._ticket, desc, table, counter, hyper, gidx, slots, True
        )
        self._fast = None  # eager steps afterwards rebuild their plan (buffers may be new)
        return True

    def _hyper(self, mom_rows) -> tuple:
        """Each group's hyper-parameters for the kernel (a cycled momentum: its schedule row)."""
        return tuple(
            _tp.SGDHyper(g["momentum"], g["dampening"], g["weight_decay"], g["nesterov"], g["maximize"])
            if gi not in mom_rows
            else _tp.SGDHyper(1.0, g["dampening"], g["weight_decay"], g["nesterov"], g["maximize"], mom_rows[gi])
            for gi, g in enumerate(self._groups)
        )

    def _fast_step(self, grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> bool:
        """The Triton path's steady state in O(1) Python work per tensor: the same parameters, all
        with grads, buffers and hyper-parameters as at the last step (AMP and clipping included). Checks, then launches the
        cached plan; returns False (having changed nothing) when anything differs, and the full
        step runs instead (which also raises the precise error for a bad gradient)."""
        f = self._fast
        groups = self._groups
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
        if not _tp.plan_has_grads(plan, grads, grad_key):
            for p, g in zip(params, grads):
                if g.is_sparse or g.dtype is not p.dtype or g.shape != p.shape or not same_strides(g, p):
                    return False
            _tp.set_plan_grads(plan, grads, params, grad_key)
        clip = before_update = None
        if self.max_grad_norm is not None:
            if f.norm_dtype not in self._clip_out:
                return False
            norm_out, coef = self._clip_out[f.norm_dtype]
            clip = _tp.ClipSpec(self._max_norm_tensor(), self.norm_type == math.inf, norm_out, coef, None)
            if self.error_if_nonfinite:
                before_update = lambda: self._check_finite_norm(norm_out, found_inf)  # noqa: E731
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
            first_flags=self._first_flags,
            clear_first=bool(self._flags_maybe_set),
            grad_scale=grad_scale,
            found_inf=found_inf,
            clip=clip,
            before_update=before_update,
        )
        if self._flags_maybe_set and found_inf is None:
            self._flags_maybe_set.clear()  # the update happened for every parameter: flags cleared
        if clip is not None:
            self.last_grad_norm = clip.norm_out.clone().reshape(())
        if advance:
            if wrote:
                sched.kernel_applied()
            else:
                sched.apply_pending(self._lr_buf)
        self._fast_steps += 1
        return True

    def _identity_schedule(self):
        ident = self._identity
        if ident is None or ident.desc.shape[0] != len(self._groups):
            ident = _schedules.DeviceSchedule(self._device)
            ident.set_rows([_schedules.direct_row(0.0, 0.0) for _ in self._groups])
            self._identity = ident
        return ident

    # ------------------------------------------------------------------ state_dict

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.SGD's format; ``lr`` is each group's ``"lr"`` as it is (no device read)."""
        sd = super().state_dict()
        if self._first_flags is not None:
            # A buffer whose first step AMP skipped holds no history yet: report it as torch.optim.SGD
            # would have it (no buffer), so any loader starts it with buf = grad.
            flags = self._first_flags.tolist()
            for idx, st in sd["state"].items():
                if idx < len(flags) and flags[idx] and st.get("momentum_buffer") is not None:
                    sd["state"][idx] = {**st, "momentum_buffer": None}
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
            if isinstance(merged["lr"], Tensor):
                g["lr"] = merged["lr"]
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
        if self._lr_owner is not None:
            # The loaded LRs are what torch's schedulers would continue from: the attached scheduler
            # takes them as assigned LRs at its next step (after its own load_state_dict).
            self._forget_seen_lrs()
        if self._first_flags is not None:
            self._first_flags.zero_()  # loaded buffers carry history; missing ones get a flag when allocated
        self._flags_maybe_set = set()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for g in self.param_groups:
            for k in _STOCK_ONLY_KEYS:
                g.pop(k, None)
        self.__dict__.setdefault("backend", "auto")
        self.__dict__.setdefault("_schedule", None)
        self.__dict__.setdefault("_lr_owner", None)
        self._groups = self.param_groups
        self.__dict__.setdefault("_lr_watchers", [])
        self.__dict__.setdefault("_lr_log", None)
        self.__dict__.setdefault("_fast_steps", 0)
        self._fast = None
        self.__dict__.setdefault("_lr_log_pos", None)
        self.__dict__.setdefault("_impl", "torch")
        for name in ("_identity", "_ticket", "_plan_cache", "_first_flags", "_max_norm_t", "last_grad_norm"):
            self.__dict__.setdefault(name, None)
        self.__dict__.setdefault("max_grad_norm", None)
        self.__dict__.setdefault("norm_type", 2.0)
        self.__dict__.setdefault("error_if_nonfinite", False)
        self.__dict__.setdefault("_clip_out", {})
        self.__dict__.setdefault("_flags_maybe_set", set())
        self._rebuild_slots()
        self.__dict__.setdefault("_uniform", [self._is_uniform(g["params"]) for g in self.param_groups])
        self.__dict__.setdefault("_sharded", [self._has_dtensor(g["params"]) for g in self.param_groups])
        self._buf_cache = {}
        if self.param_groups:
            self._device = self.param_groups[0]["params"][0].device
            self._rebuild_lr_buf()

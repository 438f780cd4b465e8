"""``FusedSGD``: torch.optim.SGD with its learning rates kept in device memory.

The optimizer is thin, as torch.optim's are: it validates, gathers each group's tensors and calls a
functional update (``fused_lr._torch_path.sgd_torch`` today; the Triton kernel where it is
available). Learning rates live in one float64 tensor on the parameters' device, ``_lr_buf``, which
the device schedule writes without a host round trip; ``param_groups[i]["lr"]`` stays what torch
users know (a Python float, or their tensor), set by the schedulers from the host's closed forms.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
from collections import OrderedDict
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.sgd import sgd as _functional_sgd  # torch's functional SGD (the differentiable step)

from . import _compiled_op  # noqa: F401  (registers torch.ops.fused_lr.triton_sgd_update)
from . import _triton_path as _tp
from . import schedules as _schedules
from ._lr_state import GroupLRs
from ._layout import flat_ok, is_dense, overlaps_itself, same_strides
from ._torch_path import grad_norm_torch, norm_dtype, scaled_grads, sgd_torch, sparse_sgd

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
# Keys torch.optim.SGD adds to its groups that FusedSGD does not keep per group: it picks its own
# primitive (foreach, fused), and differentiable is optimizer-wide (defaults["differentiable"], which
# is also what torch.optim.SGD.step reads).
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


def _split_named(params: Any) -> tuple[list, list | None]:
    """A group's "params" as torch.optim.Optimizer.add_param_group reads them: a tensor, or an
    ordered collection of tensors or of (name, tensor) pairs (``model.named_parameters()``).
    Returns (tensors, names or None); the caller's objects are not modified. Errors are torch's."""
    if isinstance(params, Tensor):
        params = [params]
    elif isinstance(params, set):
        raise TypeError(
            "optimizer parameters need to be organized in ordered collections, but "
            "the ordering of tensors in sets will change between runs. Please use a list instead."
        )
    else:
        params = list(params)
    names = [p[0] for p in params if isinstance(p, tuple)]
    if not names:
        return params, None
    if len(names) != len(params):
        raise ValueError("all optimizer params should be with/without names. Some param names are missing")
    return [p[1] for p in params], names


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


def _grad_hypers(group: dict[str, Any]) -> dict[str, Tensor]:
    """The group's lr / weight_decay given as tensors that require grad (differentiable=True)."""
    return {k: group[k] for k in ("lr", "weight_decay") if isinstance(group.get(k), Tensor) and group[k].requires_grad}


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
            own fused path (``foreach=True, fused=True`` raise torch's error).
        differentiable: as torch.optim.SGD: the step runs torch's for-loop algorithm with autograd
            recording, on either backend (see ``_step_differentiable``).
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

    All parameters must live on one device (the schedule's). Parameters may be given as
    ``model.named_parameters()`` (``param_names``, as torch). Parameters on the meta device: the LR
    buffer and the backend are placed at the first step on a real device (``_place_on_device``).
    Sparse gradients take torch's for-loop algorithm (``_step_sparse``). Groups appended to or
    edited in ``param_groups`` directly are checked and adopted at the next ``step()`` or
    ``state_dict()`` (``_refresh_groups``).

    ``param_groups[i]["lr"]`` is a Python float (a tensor LR stays the tensor given), equal to
    stock's after every ``step()`` of the optimizer and of a fused_lr scheduler, computed on the
    host (no sync). Assign it as with torch: the next update uses it, and an attached fused_lr
    scheduler carries it on as torch's recurrence would. ``lr_tensor`` is the device's copy.
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
        if not isinstance(differentiable, bool):
            raise TypeError(f"differentiable must be a bool, got {differentiable!r}")
        if differentiable and self.max_grad_norm is not None:
            raise ValueError(
                "max_grad_norm (fused clipping) is not supported with differentiable=True: clip with "
                "torch.nn.utils.clip_grad_norm_ before step()"
            )
        given = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
        )
        defaults = _validate_hyper(given, "")
        # torch.optim.Optimizer reads defaults["differentiable"] (the leaf check of add_param_group,
        # __setstate__); FusedSGD keeps it optimizer-wide, as torch.optim.SGD.step does.
        defaults["differentiable"] = differentiable
        if differentiable:
            # A tensor lr / weight_decay that requires grad is what the step differentiates through:
            # kept as given (torch.optim.SGD keeps it in its defaults and groups).
            defaults.update({k: v for k, v in _grad_hypers(given).items()})
            # GradScaler then unscales the gradients itself and calls step() (as for stock
            # SGD(differentiable=True)): the differentiable step runs torch's for-loop algorithm.
            self._step_supports_amp_scaling = False
        if isinstance(lr, Tensor) and "lr" not in _grad_hypers(given):
            defaults["lr"] = lr  # torch's tensor-LR behaviour: the groups share this tensor
        self.backend = backend
        self._device: torch.device | None = None
        # The groups' LRs: group["lr"] and the device buffer the schedules write (fused_lr/_lr_state.py).
        self._lrs = GroupLRs(self, defers=self._defers_schedule)
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
        self._sparse_bufs = False  # a momentum buffer may be sparse (made by sparse gradients, or loaded)
        # differentiable=True: id(group) -> (group, the lr tensor given, which requires grad)
        self._grad_lrs: dict[int, tuple] = {}
        self._groups_sig: tuple = ()  # _groups_key() when the per-group data was last built
        super().__init__(params, defaults)
        # torch.optim.SGD's checks, in its order (after the parameters'), with its types and messages.
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self._impl = self._resolve_backend()

    # ------------------------------------------------------------------ groups and LR buffer

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch.optim.Optimizer.add_param_group: a tensor, a list of tensors or of (name, tensor)
        pairs (``param_names`` in the group, torch's errors for a mix), with the group's
        hyper-parameters and parameters checked before anything changes. The group added is a
        copy of ``param_group`` (torch appends the dict itself)."""
        self._refresh_groups()  # groups changed in param_groups directly since the last call
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params, names = _split_named(param_group["params"])
        merged = {k: param_group.get(k, self.defaults.get(k)) for k in _HYPER}
        where = f" (param group {len(self.param_groups)})"
        checked = _validate_hyper(merged, where)
        grad_hypers = _grad_hypers(merged) if self.defaults.get("differentiable") else {}
        if "weight_decay" in grad_hypers:
            checked["weight_decay"] = grad_hypers["weight_decay"]  # what the step differentiates through
        device = self._check_params(params, where, self._params_device())
        group = dict(param_group)
        group["params"] = params
        if names is not None:
            group["param_names"] = names
        group.update(checked)
        if isinstance(merged["lr"], Tensor) and "lr" not in grad_hypers:
            group["lr"] = merged["lr"]  # torch keeps a tensor LR as the tensor it was given
        super().add_param_group(group)  # torch's remaining checks (leaf, duplicates, names across groups)
        for k in _STOCK_ONLY_KEYS:
            group.pop(k, None)  # (differentiable is optimizer-wide: defaults["differentiable"])
        if "lr" in grad_hypers:
            self._grad_lrs[id(group)] = (group, grad_hypers["lr"])
        if device is not None and device.type != "meta":
            self._device = device  # meta parameters: placed at the first step, see _place_on_device
        self._rebuild_group_data()

    def _params_device(self) -> torch.device | None:
        """The device of the parameters already held (the meta device included), or None."""
        for g in self.param_groups:
            for p in g["params"]:
                return p.device
        return None

    @staticmethod
    def _check_params(params, where: str, device: torch.device | None) -> torch.device | None:
        """Check tensors a group would hold; returns the one device they share with ``device``."""
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params is " + torch.typename(p) + where)
            if not (p.is_floating_point() or p.is_complex()):
                raise TypeError(f"FusedSGD optimizes floating-point or complex tensors, got {p.dtype}{where}")
            if p.layout is not torch.strided:
                raise ValueError(f"FusedSGD does not support sparse parameters ({p.layout}){where}")
            if device is None:
                device = p.device
            elif p.device != device:
                raise ValueError(
                    "FusedSGD keeps its learning rates and schedule on one device; "
                    f"got parameters on {device} and {p.device}{where}"
                )
        return device

    def _rebuild_group_data(self) -> None:
        """Rebuild everything FusedSGD keeps per group from ``param_groups`` as it is now."""
        groups = self.param_groups
        # The step path reads the groups through this alias of the same list: inside torch.compile,
        # reading an Optimizer's `param_groups` attribute makes dynamo realize and guard every
        # value of every group (torch/_dynamo/variables/optimizer.py, _set_capturable), the float
        # LRs included, which would recompile at each new LR.
        self._groups = groups
        self._fast = None
        self._rebuild_lr_buf()
        self._uniform = [self._is_uniform(g["params"]) for g in groups]
        self._sharded = [self._has_dtensor(g["params"]) for g in groups]
        self._buf_cache.clear()
        self._rebuild_slots()
        kept = self._grad_lrs
        self._grad_lrs = {id(g): kept[id(g)] for g in groups if id(g) in kept and kept[id(g)][0] is g}
        if getattr(self, "_lr_log", None) is not None:
            self.start_lr_log(self._lr_log.shape[0])  # (clears it, as documented)
        self._groups_sig = self._groups_key()

    def _groups_key(self) -> tuple | None:
        """What identifies the group list (each group's dict, its params list and length), or None
        when a group is malformed: compared at each step() / state_dict() to notice groups that
        were appended to, removed from or edited in ``param_groups`` directly."""
        try:
            return tuple((id(g), id(g["params"]), len(g["params"])) for g in self.param_groups)
        except (TypeError, KeyError):
            return None

    def _refresh_groups(self, stepping: bool = False) -> None:
        """Adopt groups changed in ``param_groups`` directly (torch's own tests append groups, extend
        the list, or edit a group's "params"; torch.optim.SGD steps them as they are).

        One tuple of ids per call when nothing changed. Otherwise every group is checked before
        anything changes: a group lacking a hyper-parameter raises torch.optim.SGD's KeyError
        (stock raises it mid-step, after updating the groups before it; FusedSGD before any
        update), bad values and parameters FusedSGD's errors. Then the per-group data is rebuilt
        (LR buffer, caches, first-step flag slots, which follow their parameters). ``stepping``:
        a parameter in two groups is refused too (state_dict() packs such lists, as torch does).
        """
        key = self._groups_key()
        if key is not None and key == self._groups_sig:
            return
        groups = self.param_groups
        device, seen, duplicate = None, set(), False
        for gi, g in enumerate(groups):
            where = f" (param group {gi}, changed in param_groups directly)"
            if not isinstance(g, dict):
                raise TypeError(f"param_groups[{gi}] must be a dict, but got {type(g)}")
            missing = [k for k in ("params", "weight_decay", "momentum", "lr", "dampening", "nesterov", "maximize")
                       if k not in g]
            if missing:
                raise KeyError(
                    f"{missing[0]!r}: param group {gi} was put in param_groups directly without it (torch.optim.SGD "
                    "raises this KeyError in step() too); add_param_group() fills in the defaults"
                )
            if not isinstance(g["params"], list):
                raise TypeError(f"param_groups[{gi}]['params'] must be a list of tensors, got {type(g['params'])}")
            _validate_hyper(g, where)
            device = self._check_params(g["params"], where, device)
            for p in g["params"]:
                duplicate = duplicate or p in seen
                seen.add(p)
        if duplicate and stepping:
            raise ValueError("some parameters appear in more than one parameter group (param_groups changed directly)")
        if device is not None and device.type != "meta" and self._device is not None and device != self._device:
            raise ValueError(
                f"FusedSGD keeps its learning rates on {self._device}; the parameters now in param_groups are on {device}"
            )
        sched = self._schedule
        if sched is not None and sched.n_groups != len(groups):
            raise ValueError(
                f"param_groups now holds {len(groups)} groups, the attached fused_lr scheduler drives "
                f"{sched.n_groups}: create the scheduler after the groups are in place"
            )
        # Checked: normalize the hyper-parameters of every group as add_param_group does (floats;
        # the LR goes to the LR buffer below; tensors a differentiable step needs stay).
        differentiable = self.defaults.get("differentiable", False)
        for gi, g in enumerate(groups):
            checked = _validate_hyper(g, "")
            keep = _grad_hypers(g) if differentiable else {}
            if "lr" in keep and id(g) not in self._grad_lrs:
                self._grad_lrs[id(g)] = (g, keep["lr"])
            g.update({k: v for k, v in checked.items() if k != "lr" and k not in keep})
        self._rebuild_group_data()
        if duplicate:
            self._groups_sig = None  # checked again (and refused) by the next step()

    @staticmethod
    def _has_dtensor(params) -> bool:
        dtensor = _dtensor_type()
        return dtensor is not None and any(isinstance(p, dtensor) for p in params)

    def _rebuild_slots(self) -> None:
        """Each parameter's first-step flag slot: its index in param_groups order (the index
        state_dict gives it). Existing flags follow their parameters."""
        old = self.__dict__.get("_slot_of") or {}
        flat = [p for g in self.param_groups for p in g["params"]]
        new = {id(p): i for i, p in enumerate(flat)}
        self._slot_of = new
        flags = self.__dict__.get("_first_flags")
        if flags is None:
            return
        if all(new.get(pid) == i for pid, i in old.items()):
            # Parameters only added after the existing ones (add_param_group): flags stay in place.
            if flags.numel() < len(flat):
                extra = torch.zeros(len(flat) - flags.numel(), dtype=torch.int8, device=flags.device)
                self._first_flags = torch.cat([flags, extra])
            return
        # Groups edited in param_groups directly: each kept parameter takes its flag to its new slot.
        pairs = [(i, old[pid]) for pid, i in new.items() if pid in old and old[pid] < flags.numel()]
        moved = torch.zeros(len(flat), dtype=torch.int8, device=flags.device)
        if pairs:
            dst, src = (torch.tensor(ix, dtype=torch.int64, device=flags.device) for ix in zip(*pairs))
            moved[dst] = flags[src]
        self._first_flags = moved
        maybe = self.__dict__.get("_flags_maybe_set", set())
        self._flags_maybe_set = {new[pid] for pid, i in old.items() if i in maybe and pid in new}

    @staticmethod
    def _is_uniform(params) -> bool:
        """One real dtype the stock fused kernel handles correctly: the torch path's fast path."""
        from ._torch_path import _FUSED_BROKEN, FUSED_DTYPES

        dtypes = {p.dtype for p in params}
        if len(dtypes) != 1:
            return False
        (dtype,) = dtypes
        return dtype in FUSED_DTYPES and (params[0].device.type, dtype) not in _FUSED_BROKEN

    # The LR state lives in self._lrs (GroupLRs); these names are the step path's view of it.
    _lr_buf = property(lambda self: self._lrs.buf)
    _lr_views = property(lambda self: self._lrs.views)
    _schedule = property(lambda self: self._lrs.schedule)
    _lr_owner = property(lambda self: self._lrs.owner)

    def _rebuild_lr_buf(self) -> None:
        """The device LR buffer from the groups' ``"lr"`` as they are now (see GroupLRs.rebuild)."""
        self._lrs.device = self._device
        self._lrs.rebuild()

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
        if self.backend == "torch" or device is None:
            return "torch"  # (device None: meta parameters; chosen again once placed, _place_on_device)
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

    def _place_on_device(self) -> bool:
        """An optimizer built on meta-device parameters, as torch allows: at the first step where
        they live on a real device, put the LR buffer (and an LR log) there and choose the backend
        for it; momentum buffers are created there by the step itself. Returns False (placing
        nothing) while they are still on the meta device without gradients: torch.optim.SGD's step
        has nothing to do then either.

        The parameters must be the same tensor objects: ``module.to_empty(device=...)`` keeps them
        under ``torch.__future__.set_swap_module_params_on_conversion(True)``; by default it
        replaces meta parameters by new ones, which neither this optimizer nor torch's then sees.
        """
        device = self._params_device()
        if device is None or device.type == "meta":
            if any(p.grad is not None for g in self.param_groups for p in g["params"]):
                raise RuntimeError(
                    "FusedSGD.step(): the parameters are on the meta device; materialize them first "
                    "(e.g. module.to_empty(device=...) with torch.__future__.set_swap_module_params_on_conversion(True), "
                    "which keeps the parameter objects this optimizer holds)"
                )
            return False
        if self._schedule is not None and self._schedule.device != device:
            raise RuntimeError(
                f"a fused_lr scheduler was attached while the parameters were on the meta device (its "
                f"schedule lives on {self._schedule.device}, the parameters now on {device}): create "
                "the scheduler after materializing the parameters"
            )
        previous = self._device
        self._device = device
        try:
            impl = self._resolve_backend()
        except Exception:
            self._device = previous
            raise
        self._impl = impl
        self._rebuild_lr_buf()
        if self._lr_log is not None:
            self.start_lr_log(self._lr_log.shape[0])  # nothing recorded yet: no step ran
        return True

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
        """The group's parameters with a gradient, their grads and momentum buffers, as
        (params, grads, bufs, sparse): ``sparse`` is None, or the same three lists for the
        parameters whose gradient (or momentum buffer) is sparse, which the dense lists leave out."""
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
        any_sparse = False
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
                if g.is_sparse and g.dtype is p.dtype:
                    any_sparse = True
                    continue
                raise RuntimeError(
                    f"gradient does not match its parameter in param group {gi}: grad "
                    f"{tuple(g.shape)} {g.dtype} {g.layout} on {g.device}, param {tuple(p.shape)} {p.dtype} on {p.device}"
                )
        check_bufs = self._sparse_bufs and bufs
        if not (any_sparse or check_bufs):
            return params, grads, bufs, None
        sparse_at = {i for i, g in enumerate(grads) if g.is_sparse}
        if check_bufs:
            # A sparse momentum buffer (made by sparse gradients) meets a dense gradient: that
            # parameter goes with the sparse ones (_check_sparse raises torch's error for it).
            sparse_at |= {i for i, b in enumerate(bufs) if b is not None and b.is_sparse}
        if not sparse_at:
            return params, grads, bufs, None
        sparse_at = sorted(sparse_at)
        rest = sorted(set(range(len(params))) - set(sparse_at))
        pick = lambda xs, ix: [xs[i] for i in ix] if xs else []  # noqa: E731
        sparse = (pick(params, sparse_at), pick(grads, sparse_at), pick(bufs, sparse_at))
        return pick(params, rest), pick(grads, rest), pick(bufs, rest), sparse

    def _check_sparse(self, sparse) -> None:
        """Refuse, before any update, what torch.optim.SGD's for-loop cannot do with sparse
        gradients (it fails part-way through its step; the error types are torch's)."""
        if self.max_grad_norm is not None:
            raise RuntimeError(
                "fused clipping (max_grad_norm) does not support sparse gradients (torch.nn.utils."
                "clip_grad_norm_ cannot compute their norm either)"
            )
        for gi, (params, grads, bufs) in sparse:
            group = self.param_groups[gi]
            for j, (p, g) in enumerate(zip(params, grads)):
                b = bufs[j] if bufs else None
                where = f"(param group {gi}, shape {tuple(p.shape)})"
                if g.is_sparse and group["weight_decay"] != 0:
                    raise RuntimeError(
                        f"sparse gradients with weight_decay={group['weight_decay']} are not supported {where}: "
                        "torch.optim.SGD fails on them too (add(sparse, dense) is not supported)"
                    )
                if b is not None and b.is_sparse and not g.is_sparse:
                    raise RuntimeError(
                        f"a dense gradient for a parameter whose momentum buffer is sparse {where}: "
                        "torch.optim.SGD fails on it too (add(sparse, dense) is not supported)"
                    )
                if g.is_sparse and b is not None and not b.is_sparse and group["nesterov"]:
                    raise RuntimeError(
                        f"a sparse gradient with nesterov momentum and a dense momentum buffer {where}: "
                        "torch.optim.SGD fails on it too (add(sparse, dense) is not supported)"
                    )

    def _step_sparse(self, sparse, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        """Parameters with sparse gradients (``nn.Embedding(sparse=True)``): torch.optim.SGD's
        for-loop algorithm op for op (torch's fused and foreach kernels take no sparse tensors;
        a first momentum buffer is a sparse clone of the gradient, as in torch). The LR is the
        group's device truth, ``_lr_buf[gi]``: read on the host on CPU (free there: torch's own
        ``p.add_(g, alpha=-lr)``), kept on the device elsewhere (``p.add_(g * -lr)``, no sync).
        AMP: the gradient is divided by ``grad_scale``; a nonzero ``found_inf`` is read on the host
        (one sync on an accelerator, only on steps with sparse gradients) and skips the update."""
        if found_inf is not None and float(found_inf) != 0:
            return
        for gi, (params, grads, bufs) in sparse:
            group = self.param_groups[gi]
            momentum = group["momentum"]
            if grad_scale is not None:
                grads = [g / grad_scale for g in grads]
            if momentum != 0 and self._first_flags is not None:
                # A buffer the Triton path allocated on a step AMP skipped holds no history yet.
                for j, p in enumerate(params):
                    slot = self._slot_of[id(p)]
                    if slot in self._flags_maybe_set and bufs[j] is not None and int(self._first_flags[slot]):
                        bufs[j] = None
                        self._first_flags[slot] = 0
            lr = self._lr_views[gi]
            new_bufs = sparse_sgd(
                params,
                grads,
                bufs if momentum != 0 else [None] * len(params),
                lr=lr.item() if lr.device.type == "cpu" else lr,
                weight_decay=group["weight_decay"],
                momentum=momentum,
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
            )
            for p, b, old in zip(params, new_bufs, bufs):
                if b is not old:
                    self.state[p]["momentum_buffer"] = b
                    self._sparse_bufs = self._sparse_bufs or b.is_sparse
                    self._buf_cache.pop(gi, None)

    def _step_differentiable(self) -> None:
        """differentiable=True: torch.optim.SGD(differentiable=True)'s step, i.e. its for-loop
        algorithm (``torch.optim.sgd.sgd(..., foreach=False)``) recorded by autograd, on either
        backend. The LR is the tensor given that requires grad (what the step differentiates
        through), else the group's LR read from the device truth (``_lr_buf``; a host read)."""
        if self._impl == "triton" and self._schedule is not None and self._schedule.pending:
            self._schedule.apply_pending(self._lr_buf)  # no kernel will apply the deferred step
        work = []
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.is_leaf and p.requires_grad:
                    # torch raises this part-way through its step; FusedSGD before any update.
                    raise RuntimeError(
                        "a leaf Variable that requires grad is being used in an in-place operation. "
                        f"(differentiable=True updates the parameters in place with autograd recording; param group {gi} "
                        f"holds a leaf tensor of shape {tuple(p.shape)} that requires grad: optimize non-leaf tensors, "
                        "e.g. p.clone(), as torch.optim.SGD(differentiable=True) requires)"
                    )
            grads = [p.grad for p in params]
            bufs = [self.state[p].get("momentum_buffer") if p in self.state else None for p in params]
            if any(g.is_sparse for g in grads):
                self._check_sparse([(gi, (params, grads, bufs if group["momentum"] != 0 else []))])
            work.append((gi, group, params, grads, bufs))
        for gi, group, params, grads, bufs in work:
            kept = self._grad_lrs.get(id(group))
            momentum = group["momentum"]
            bufs = bufs if momentum != 0 else []
            _functional_sgd(
                params,
                grads,
                bufs,
                has_sparse_grad=any(g.is_sparse for g in grads),
                foreach=False,
                fused=False,
                weight_decay=group["weight_decay"],
                momentum=momentum,
                lr=kept[1] if kept is not None else self._lr_views[gi].item(),
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
            )
            for p, b in zip(params, bufs):
                self.state[p]["momentum_buffer"] = b
            self._buf_cache.pop(gi, None)

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
        # Everything is checked before anything changes: the groups, the AMP tensors, then every
        # gradient. (Rebuilding per-group data for groups edited in param_groups is no change.)
        if not torch.compiler.is_compiling():
            self._refresh_groups(stepping=True)  # (reads every group: not inside a compiled region)
        if self._device is None and not self._place_on_device():
            # Parameters still on the meta device, no gradient anywhere: nothing to update.
            if closure is not None:
                with torch.enable_grad():
                    return closure()
            return None
        differentiable = self.defaults.get("differentiable", False)
        if differentiable and (grad_scale is not None or found_inf is not None):
            raise ValueError(
                "grad_scale / found_inf are not supported with differentiable=True (GradScaler unscales the "
                "gradients itself for such an optimizer)"
            )
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
            changes = self._lrs.assignments()  # checked before anything changes
            self._lrs.apply(changes)
            self._lrs.follow_tensor_lrs()
            if self._schedule is not None and self._schedule.dirty:
                self._schedule.sync()  # (composed schedulers stepped out of lockstep)
        if differentiable:
            with torch.enable_grad():  # as torch.optim.SGD: grad mode on for a differentiable step
                self._step_differentiable()
            if self._lr_log is not None:
                self._record_lr()
            return loss
        # Inside torch.compile the update is traced as torch ops (the torch path's foreach form,
        # which the compiler fuses): the Triton launcher's host-side tables cannot be traced.
        compiling = torch.compiler.is_compiling()
        if compiling or not (self._fast is not None and self._fast_step(grad_scale, found_inf)):
            collected = self._collect_all()
            work = [c[:3] for c in collected]
            sparse = [(gi, c[3]) for gi, c in enumerate(collected) if c[3] is not None]
            if sparse:
                self._check_sparse(sparse)
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
            if sparse:
                # After the dense update: on the Triton path its kernel wrote back the LR the step used.
                self._step_sparse(sparse, grad_scale, found_inf)
        if self._lr_log is not None:
            self._record_lr()
        if self._lrs.has_tensor_lrs and self._lrs.owner is not None:
            self._lrs.sync_tensor_lrs()  # tensor LRs follow the LR the kernel wrote (a deferred step)
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

    @contextlib.contextmanager
    def _torch_hooks_off(self, *names: str):
        """torch.optim.Optimizer's (load_)state_dict without its hooks: FusedSGD runs them itself
        around its conversions, so that hooks see and change what torch's hooks see."""
        saved = {n: self.__dict__[n] for n in names}
        try:
            for n in names:
                self.__dict__[n] = OrderedDict()
            yield
        finally:
            self.__dict__.update(saved)

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """torch.optim.SGD's format; ``lr`` is each group's ``"lr"`` as it is (no device read).
        State-dict pre-hooks run first and post-hooks on the finished dict, as torch's do."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        self._refresh_groups()  # groups changed in param_groups directly are packed too
        with self._torch_hooks_off("_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks"):
            sd = super().state_dict()
        if self._first_flags is not None:
            # A buffer whose first step AMP skipped holds no history yet: report it as torch.optim.SGD
            # would have it (no buffer), so any loader starts it with buf = grad. (Keys that are not
            # parameter indices: state the user stored under other keys, packed as it is.)
            flags = self._first_flags.tolist()
            for idx, st in sd["state"].items():
                if (isinstance(idx, int) and idx < len(flags) and flags[idx] and isinstance(st, dict)
                        and st.get("momentum_buffer") is not None):
                    sd["state"][idx] = {**st, "momentum_buffer": None}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            hook_result = post_hook(self, sd)
            if hook_result is not None:
                sd = hook_result
        return sd

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a FusedSGD or torch.optim.SGD state dict; checks everything before changing anything.
        Load pre-hooks get a shallow copy and may return the dict to load; post-hooks run once
        everything is loaded (as torch's). State under keys that are not parameter indices is
        loaded as it is, as torch does."""
        if not isinstance(state_dict, dict):
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' (an optimizer state_dict)")
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            hook_result = pre_hook(self, state_dict)
            if hook_result is not None:
                state_dict = hook_result
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' (an optimizer state_dict)")
        self._refresh_groups()
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
        sparse_bufs = False
        for key, st in state_dict["state"].items():
            if key not in id_to_param:
                if not isinstance(key, int):
                    continue  # not a parameter's state: loaded as it is
                raise ValueError(f"loaded state dict has state for unknown parameter id {key!r}")
            buf = st.get("momentum_buffer") if isinstance(st, dict) else None
            p = id_to_param[key]
            if buf is not None and (not isinstance(buf, Tensor) or buf.shape != p.shape):
                shape = tuple(buf.shape) if isinstance(buf, Tensor) else type(buf).__name__
                raise ValueError(
                    f"loaded momentum_buffer for parameter id {key!r} has shape {shape}, "
                    f"the parameter has shape {tuple(p.shape)}"
                )
            sparse_bufs = sparse_bufs or (buf is not None and buf.is_sparse)
        converted = dict(state_dict)
        converted["param_groups"] = converted_groups
        with self._torch_hooks_off("_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks"):
            super().load_state_dict(converted)
        self._sparse_bufs = self._sparse_bufs or sparse_bufs
        # torch leaves a loaded momentum_buffer=None entry in place; FusedSGD treats it as "none yet".
        # The loaded LRs are used until the scheduler next steps, as with torch.optim.SGD.
        self._buf_cache.clear()
        self._fast = None  # new momentum buffers: the next step collects everything again
        self._rebuild_lr_buf()
        if self._lrs.owner is not None:
            # The loaded LRs are what torch's schedulers would continue from: the attached scheduler
            # takes them as assigned LRs at its next step (after its own load_state_dict).
            self._lrs.forget()
        if self._first_flags is not None:
            self._first_flags.zero_()  # loaded buffers carry history; missing ones get a flag when allocated
        self._flags_maybe_set = set()
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # FusedSGD's own settings travel with pickle and copy.deepcopy (torch.optim.Optimizer's
    # __getstate__ keeps only defaults, state and param_groups).
    _PICKLED = ("backend", "max_grad_norm", "norm_type", "error_if_nonfinite")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({name: getattr(self, name) for name in self._PICKLED})
        if self._grad_lrs:
            # (by group position: the copy's groups are new dicts)
            state["_grad_lr_list"] = [self._grad_lrs.get(id(g), (None, None))[1] for g in self.param_groups]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        grad_lr_list = state.pop("_grad_lr_list", None)
        super().__setstate__(state)
        for g in self.param_groups:
            for k in _STOCK_ONLY_KEYS:
                g.pop(k, None)
        self.__dict__.setdefault("backend", "auto")
        if self.defaults.get("differentiable"):
            self._step_supports_amp_scaling = False
        self.__dict__.setdefault("_sparse_bufs", any(
            isinstance(st, dict) and isinstance(st.get("momentum_buffer"), Tensor) and st["momentum_buffer"].is_sparse
            for st in self.state.values()
        ))
        if grad_lr_list is not None:
            self._grad_lrs = {id(g): (g, t) for g, t in zip(self.param_groups, grad_lr_list) if t is not None}
        else:
            # load_state_dict: the loaded groups are new dicts holding the loaded (float) LRs
            self.__dict__["_grad_lrs"] = {}
        self.__dict__.setdefault("_lrs", GroupLRs(self, defers=self._defers_schedule))
        self._groups = self.param_groups
        self.__dict__.setdefault("_lr_log", None)
        self.__dict__.setdefault("_fast_steps", 0)
        self._fast = None
        self.__dict__.setdefault("_lr_log_pos", None)
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
        device = self._params_device()
        # Meta parameters: None until placed at the first step (_place_on_device)
        self._device = None if device is None or device.type == "meta" else device
        if self.param_groups:
            self._rebuild_lr_buf()
        if "_impl" not in self.__dict__:  # unpickled: the backend is chosen for this process
            self._impl = self._resolve_backend()
        self._groups_sig = self._groups_key()

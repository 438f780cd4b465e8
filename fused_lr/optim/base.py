"""``FusedOptimizer``: what every fused_lr optimizer shares, on top of torch.optim.Optimizer.

An optimizer (``FusedSGD``) holds only what is its own: defaults and their validation, its state
tensors (its kernel spec's state lists), its hyper row for the kernel, and its update through its
functional forms. This class owns the rest: parameter groups (named parameters, groups edited in
``param_groups`` directly), the learning rates on the device and the schedule attachment, the backend
choice, the one ``step()`` router (closure, AMP arguments, fused clipping, the differentiable and
sparse routes, the torch path, the Triton path and its steady state, the compiled step), the
checkpoint format (torch's, with its hooks), pickling, meta-device placement and the device LR log.

Learning rates live in one float64 tensor on the parameters' device, ``_lr_buf``, which the device
schedule writes without a host round trip; ``param_groups[i]["lr"]`` stays what torch users know (a
Python float, or their tensor), set by the schedulers from the host's closed forms.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import _device, engine
from .._lr_state import GroupLRs
from ._args import split_named, validate_clip
from ._dtensor import has_dtensor
from ._routes import UpdateRoutes

__all__ = ["FusedOptimizer"]

_BACKENDS = ("auto", "torch", "triton")


CAPTURE_NONFINITE = (
    "fused_lr: error_if_nonfinite=True reads the gradient norm on the host, which a CUDA graph being captured "
    "cannot do. Construct the optimizer with error_if_nonfinite=False for a captured step (check "
    "opt.last_grad_norm after a replay instead, e.g. torch.isfinite(opt.last_grad_norm))."
)


class FusedOptimizer(UpdateRoutes, Optimizer):
    """The shared base of fused_lr's optimizers (see the module docstring).

    A subclass sets ``_kernel`` (its ``engine.KernelSpec``: its state lists), ``_hyper_keys`` (its
    group hyper-parameters in torch's argument order, ``"lr"`` first), ``_step_keys`` (the same in
    the order torch's step reads them) and ``_stock_name`` (the torch.optim class it replaces, for
    messages), and implements ``_check_hyper``, ``_keeps_state``, ``_hyper_row``,
    ``_update`` (the torch path), ``_update_differentiable`` and, for sparse gradients,
    ``_check_sparse_group`` and ``_update_sparse``.
    """

    _kernel: engine.KernelSpec
    _hyper_keys: tuple[str, ...]
    _step_keys: tuple[str, ...]
    _stock_name: str
    # Keys torch's optimizer adds to its groups that fused_lr does not keep per group: it picks its
    # own primitive (foreach, fused), and differentiable is optimizer-wide (defaults["differentiable"],
    # which is also what torch's step reads).
    _stock_only_keys = ("foreach", "fused", "differentiable")
    # Tensor hyper-parameters a differentiable step may differentiate through.
    _grad_keys = ("lr", "weight_decay")

    # ------------------------------------------------------------------ what a subclass provides

    def _check_hyper(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        """Checked copy of a group's hyper-parameters (Python numbers); errors end with ``where``."""
        raise NotImplementedError

    def _keeps_state(self, group: dict[str, Any]) -> bool:
        """Whether the group's parameters have state tensors."""
        raise NotImplementedError

    def _hyper_row(self, group: dict[str, Any], cycled_row: int) -> tuple:
        """The group's row for the kernel (``cycled_row`` >= 0: the schedule row cycling its momentum)."""
        raise NotImplementedError

    def _update(self, group, params, grads, states, *, lr: Tensor, uniform: bool, found_inf) -> list[list]:
        """The torch path's update of one group (``uniform``: ``_takes_single_call`` holds); returns
        the state lists after it (new tensors included)."""
        raise NotImplementedError

    def _update_differentiable(self, group, params, grads, states, *, lr) -> None:
        """torch's for-loop update with autograd recording; fills ``states`` in place as torch does."""
        raise NotImplementedError

    def _check_sparse_group(self, group, gi: int, params, grads, states) -> None:
        """Refuse, before any update, what torch's for-loop cannot do with these sparse gradients."""
        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")

    def _update_sparse(self, group, params, grads, states, *, lr) -> list[list]:
        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")

    def _takes_single_call(self, params) -> bool:
        return False

    # ------------------------------------------------------------------ construction

    def __init__(self, params, hyper: dict[str, Any], *, foreach, differentiable, fused, backend, max_grad_norm,
                 norm_type, error_if_nonfinite) -> None:
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.max_grad_norm, self.norm_type, self.error_if_nonfinite = validate_clip(
            max_grad_norm, norm_type, error_if_nonfinite, type(self).__name__
        )
        if not isinstance(differentiable, bool):
            raise TypeError(f"differentiable must be a bool, got {differentiable!r}")
        if differentiable and self.max_grad_norm is not None:
            raise ValueError(
                "max_grad_norm (fused clipping) is not supported with differentiable=True: clip with "
                "torch.nn.utils.clip_grad_norm_ before step()"
            )
        defaults = self._check_hyper(hyper, "")
        # torch.optim.Optimizer reads defaults["differentiable"] (the leaf check of add_param_group,
        # __setstate__); it is optimizer-wide, as in torch's step.
        defaults["differentiable"] = differentiable
        if differentiable:
            # A tensor hyper-parameter that requires grad is what the step differentiates through:
            # kept as given (torch keeps it in its defaults and groups).
            defaults.update(self._grad_hypers(hyper))
            # GradScaler then unscales the gradients itself and calls step() (as for stock
            # optimizers with differentiable=True): the differentiable step runs torch's for-loop.
            self._step_supports_amp_scaling = False
        if isinstance(hyper["lr"], Tensor) and "lr" not in self._grad_hypers(hyper):
            defaults["lr"] = hyper["lr"]  # torch's tensor-LR behaviour: the groups share this tensor
        self.backend = backend
        self._device: torch.device | None = None
        # The groups' LRs: group["lr"] and the device buffer the schedules write (fused_lr/_lr_state.py).
        self._lrs = GroupLRs(self, defers=self._defers_schedule)
        self._engine = engine.EngineState(self._kernel)  # the Triton path's device-side state
        self._uniform: list[bool] = []  # per group: the torch path's single-call fast path applies
        self._sharded: list[bool] = []  # per group: holds DTensors (updated through their local shards)
        self._state_cache: dict[int, tuple] = {}  # per group: (state key, state lists in param order)
        self._collected = None  # the torch path's last collection, reused while valid (_routes._Collected)
        self._lr_log: Tensor | None = None  # start_lr_log(): [capacity, groups] ring of the LRs used
        self._lr_log_pos: Tensor | None = None  # int64 device count of steps recorded
        self.last_grad_norm: Tensor | None = None
        self._sparse_state = False  # a state tensor may be sparse (made by sparse gradients, or loaded)
        # differentiable=True: id(group) -> (group, the lr tensor given, which requires grad)
        self._grad_lrs: dict[int, tuple] = {}
        self._groups_sig: tuple = ()  # _groups_key() when the per-group data was last built
        super().__init__(params, defaults)
        # torch's checks, in its order (after the parameters'), with its types and messages.
        if fused:
            if differentiable:
                raise RuntimeError("`fused` does not support `differentiable`")
            if foreach:
                raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self._impl = self._resolve_backend()

    def _grad_hypers(self, group: dict[str, Any]) -> dict[str, Tensor]:
        """The group's hyper-parameters given as tensors that require grad (differentiable=True)."""
        return {k: group[k] for k in self._grad_keys if isinstance(group.get(k), Tensor) and group[k].requires_grad}

    # ------------------------------------------------------------------ groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch.optim.Optimizer.add_param_group: a tensor, a list of tensors or of (name, tensor)
        pairs (``param_names`` in the group, torch's errors for a mix), with the group's
        hyper-parameters and parameters checked before anything changes. The group added is a
        copy of ``param_group`` (torch appends the dict itself)."""
        self._refresh_groups()  # groups changed in param_groups directly since the last call
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params, names = split_named(param_group["params"])
        merged = {k: param_group.get(k, self.defaults.get(k)) for k in self._hyper_keys}
        where = f" (param group {len(self.param_groups)})"
        checked = self._check_hyper(merged, where)
        grad_hypers = self._grad_hypers(merged) if self.defaults.get("differentiable") else {}
        # (What the step differentiates through: a tensor LR is kept in _grad_lrs, the others in the group.)
        checked.update({k: v for k, v in grad_hypers.items() if k != "lr"})
        device = self._check_params(params, where, self._params_device())
        group = dict(param_group)
        group["params"] = params
        if names is not None:
            group["param_names"] = names
        group.update(checked)
        if isinstance(merged["lr"], Tensor) and "lr" not in grad_hypers:
            group["lr"] = merged["lr"]  # torch keeps a tensor LR as the tensor it was given
        super().add_param_group(group)  # torch's remaining checks (leaf, duplicates, names across groups)
        for k in self._stock_only_keys:
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

    def _check_params(self, params, where: str, device: torch.device | None) -> torch.device | None:
        """Check tensors a group would hold; returns the one device they share with ``device``."""
        name = type(self).__name__
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params is " + torch.typename(p) + where)
            if not (p.is_floating_point() or p.is_complex()):
                raise TypeError(f"{name} optimizes floating-point or complex tensors, got {p.dtype}{where}")
            if p.layout is not torch.strided:
                raise ValueError(f"{name} does not support sparse parameters ({p.layout}){where}")
            if device is None:
                device = p.device
            elif p.device != device:
                raise ValueError(
                    f"{name} keeps its learning rates and schedule on one device; "
                    f"got parameters on {device} and {p.device}{where}"
                )
        return device

    def _rebuild_group_data(self) -> None:
        """Rebuild everything kept per group from ``param_groups`` as it is now."""
        groups = self.param_groups
        # The step path reads the groups through this alias of the same list: inside torch.compile,
        # reading an Optimizer's `param_groups` attribute makes dynamo realize and guard every
        # value of every group (torch/_dynamo/variables/optimizer.py, _set_capturable), the float
        # LRs included, which would recompile at each new LR.
        self._groups = groups
        self._engine.steady = None
        self._rebuild_lr_buf()
        self._uniform = [self._takes_single_call(g["params"]) for g in groups]
        self._sharded = [has_dtensor(g["params"]) for g in groups]
        self._state_cache.clear()
        self._collected = None
        self._engine.rebuild_slots([p for g in groups for p in g["params"]])
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
        the list, or edit a group's "params"; torch's optimizers step them as they are).

        One tuple of ids per call when nothing changed. Otherwise every group is checked before
        anything changes: a group lacking a hyper-parameter raises torch's KeyError (stock raises
        it mid-step, after updating the groups before it; fused_lr before any update), bad values
        and parameters fused_lr's errors. Then the per-group data is rebuilt (LR buffer, caches,
        first-step flag slots, which follow their parameters). ``stepping``: a parameter in two
        groups is refused too (state_dict() packs such lists, as torch does).
        """
        key = self._groups_key()
        if key is not None and key == self._groups_sig:
            return
        groups = self.param_groups
        device, seen, duplicate, checked = None, set(), False, []
        for gi, g in enumerate(groups):
            where = f" (param group {gi}, changed in param_groups directly)"
            if not isinstance(g, dict):
                raise TypeError(f"param_groups[{gi}] must be a dict, but got {type(g)}")
            missing = [k for k in ("params", *self._step_keys) if k not in g]
            if missing:
                raise KeyError(
                    f"{missing[0]!r}: param group {gi} was put in param_groups directly without it (torch.optim."
                    f"{self._stock_name} raises this KeyError in step() too); add_param_group() fills in the defaults"
                )
            if not isinstance(g["params"], list):
                raise TypeError(f"param_groups[{gi}]['params'] must be a list of tensors, got {type(g['params'])}")
            checked.append(self._check_hyper(g, where))
            device = self._check_params(g["params"], where, device)
            for p in g["params"]:
                duplicate = duplicate or p in seen
                seen.add(p)
        if duplicate and stepping:
            raise ValueError("some parameters appear in more than one parameter group (param_groups changed directly)")
        if device is not None and device.type != "meta" and self._device is not None and device != self._device:
            raise ValueError(
                f"{type(self).__name__} keeps its learning rates on {self._device}; the parameters now in "
                f"param_groups are on {device}"
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
        for g, values in zip(groups, checked):
            keep = self._grad_hypers(g) if differentiable else {}
            if "lr" in keep and id(g) not in self._grad_lrs:
                self._grad_lrs[id(g)] = (g, keep["lr"])
            g.update({k: v for k, v in values.items() if k != "lr" and k not in keep})
        self._rebuild_group_data()
        if duplicate:
            self._groups_sig = None  # checked again (and refused) by the next step()

    # ------------------------------------------------------------------ learning rates on the device

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

    def _defers_schedule(self, sched) -> bool:
        """Whether scheduler steps are left for the next update kernel to apply (Triton path)."""
        return self._impl == "triton" and not torch.compiler.is_compiling()

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

    # ------------------------------------------------------------------ backend and placement

    def _resolve_backend(self) -> str:
        device = self._device
        if self.backend == "torch" or device is None:
            return "torch"  # (device None: meta parameters; chosen again once placed, _place_on_device)
        if self.backend == "triton":
            if not engine.triton_available(device):
                engine.check_device(device)  # raises the specific reason
                raise RuntimeError(f"backend='triton' cannot run on {device}")
            return "triton"
        return "triton" if device.type == "cuda" and engine.triton_available(device) else "torch"

    @property
    def implementation(self) -> str:
        """The update path in use: ``"triton"`` or ``"torch"``."""
        return self._impl

    def _place_on_device(self) -> bool:
        """An optimizer built on meta-device parameters, as torch allows: at the first step where
        they live on a real device, put the LR buffer (and an LR log) there and choose the backend
        for it; state tensors are created there by the step itself. Returns False (placing
        nothing) while they are still on the meta device without gradients: torch's step has
        nothing to do then either.

        The parameters must be the same tensor objects: ``module.to_empty(device=...)`` keeps them
        under ``torch.__future__.set_swap_module_params_on_conversion(True)``; by default it
        replaces meta parameters by new ones, which neither this optimizer nor torch's then sees.
        """
        device = self._params_device()
        if device is None or device.type == "meta":
            if any(p.grad is not None for g in self.param_groups for p in g["params"]):
                raise RuntimeError(
                    f"{type(self).__name__}.step(): the parameters are on the meta device; materialize them first "
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

    # ------------------------------------------------------------------ step

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
                no parameter and no state tensor changes. Defaults to the ``found_inf`` attribute
                GradScaler sets.
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
        capturing = self._device is not None and _device.capturing(self._device)
        if capturing and self.error_if_nonfinite and self.max_grad_norm is not None:
            raise RuntimeError(CAPTURE_NONFINITE)
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
            with torch.enable_grad():  # as torch's step: grad mode on for a differentiable step
                self._step_differentiable()
            if self._lr_log is not None:
                self._record_lr()
            return loss
        # Inside torch.compile the update is traced as torch ops (the torch path's foreach form,
        # which the compiler fuses) unless the kernel can run as the engine's custom op: the
        # engine's host-side tables cannot be traced.
        compiling = torch.compiler.is_compiling()
        if compiling or not (self._engine.steady is not None and self._step_steady(grad_scale, found_inf)):
            eager_torch = self._impl == "torch" and not compiling
            collected = self._collect_cached() if eager_torch else self._collect_all()
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
                    self._schedule.end_update(False, self._lr_buf)  # no kernel will apply the deferred step
                self._step_torch(work, grad_scale, found_inf)
            if sparse:
                # After the dense update: on the Triton path its kernel wrote back the LR the step used.
                self._step_sparse(sparse, grad_scale, found_inf)
        if self._lr_log is not None:
            self._record_lr()
        if self._lrs.has_tensor_lrs and self._lrs.owner is not None:
            self._lrs.sync_tensor_lrs()  # tensor LRs follow the LR the kernel wrote (a deferred step)
        if self.__dict__.get("_warm_request") is not None and not compiling and not capturing:
            self.warmup(amp=self._warm_request)  # (asked for before the first step)
        return loss

    # ------------------------------------------------------------------ state_dict

    @contextlib.contextmanager
    def _torch_hooks_off(self, *names: str):
        """torch.optim.Optimizer's (load_)state_dict without its hooks: fused_lr runs them itself
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
        """torch's format; ``lr`` is each group's ``"lr"`` as it is (no device read). State-dict
        pre-hooks run first and post-hooks on the finished dict, as torch's do."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        self._refresh_groups()  # groups changed in param_groups directly are packed too
        with self._torch_hooks_off("_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks"):
            sd = super().state_dict()
        keys = self._kernel.state_lists
        flags = self._engine.flagged()
        # State allocated on a first step AMP skipped holds no history yet: report it as torch's
        # optimizer would have it (none), so any loader starts it afresh. (Keys that are not
        # parameter indices: state the user stored under other keys, packed as it is.)
        for idx, st in sd["state"].items():
            if (isinstance(idx, int) and idx < len(flags) and flags[idx] and isinstance(st, dict)
                    and any(st.get(k) is not None for k in keys)):
                sd["state"][idx] = {**st, **{k: None for k in keys}}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            hook_result = post_hook(self, sd)
            if hook_result is not None:
                sd = hook_result
        return sd

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a fused_lr or torch state dict of this optimizer; checks everything before changing
        anything. Load pre-hooks get a shallow copy and may return the dict to load; post-hooks run
        once everything is loaded (as torch's). State under keys that are not parameter indices is
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
            g = {k: v for k, v in saved.items() if k not in self._stock_only_keys}
            merged = {k: g.get(k, self.defaults[k]) for k in self._hyper_keys}
            g.update(self._check_hyper(merged, f" (loaded param group {gi})"))
            if isinstance(merged["lr"], Tensor):
                g["lr"] = merged["lr"]
            converted_groups.append(g)
            id_to_param.update(zip(saved["params"], ours["params"]))
        sparse_state = False
        for key, st in state_dict["state"].items():
            if key not in id_to_param:
                if not isinstance(key, int):
                    continue  # not a parameter's state: loaded as it is
                raise ValueError(f"loaded state dict has state for unknown parameter id {key!r}")
            p = id_to_param[key]
            for name in self._kernel.state_lists:
                t = st.get(name) if isinstance(st, dict) else None
                if t is not None and (not isinstance(t, Tensor) or t.shape != p.shape):
                    shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise ValueError(
                        f"loaded {name} for parameter id {key!r} has shape {shape}, "
                        f"the parameter has shape {tuple(p.shape)}"
                    )
                sparse_state = sparse_state or (t is not None and t.is_sparse)
        converted = dict(state_dict)
        converted["param_groups"] = converted_groups
        with self._torch_hooks_off("_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks"):
            super().load_state_dict(converted)
        self._sparse_state = self._sparse_state or sparse_state
        # torch leaves a loaded None state entry in place; fused_lr treats it as "none yet". The
        # loaded LRs are used until the scheduler next steps, as with torch's optimizer.
        self._state_cache.clear()
        self._collected = None
        self._engine.steady = None  # new state tensors: the next step collects everything again
        self._rebuild_lr_buf()
        if self._lr_owner is not None:
            # The loaded LRs are what torch's schedulers would continue from: the attached scheduler
            # takes them as assigned LRs at its next step (after its own load_state_dict).
            self._lrs.forget()
        self._engine.forget_flags()  # loaded state carries history; missing state gets a flag when allocated
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # fused_lr's own settings travel with pickle and copy.deepcopy (torch.optim.Optimizer's
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
        """Unpickling (a new object), and torch's load_state_dict (this object, new groups)."""
        grad_lr_list = state.pop("_grad_lr_list", None)
        super().__setstate__(state)
        for g in self.param_groups:
            for k in self._stock_only_keys:
                g.pop(k, None)
        defaults = dict(backend="auto", max_grad_norm=None, norm_type=2.0, error_if_nonfinite=False,
                        _lr_log=None, _lr_log_pos=None, last_grad_norm=None,
                        _engine=engine.EngineState(self._kernel))
        for name, value in defaults.items():
            self.__dict__.setdefault(name, value)
        self.__dict__.setdefault("_lrs", GroupLRs(self, defers=self._defers_schedule))
        if self.defaults.get("differentiable"):
            self._step_supports_amp_scaling = False
        self.__dict__.setdefault("_sparse_state", any(
            isinstance(st, dict) and any(isinstance(st.get(k), Tensor) and st[k].is_sparse for k in self._kernel.state_lists)
            for st in self.state.values()
        ))
        if grad_lr_list is not None:
            self._grad_lrs = {id(g): (g, t) for g, t in zip(self.param_groups, grad_lr_list) if t is not None}
        else:
            # load_state_dict: the loaded groups are new dicts holding the loaded (float) LRs
            self.__dict__["_grad_lrs"] = {}
        self._groups = self.param_groups
        self._engine.steady = None
        self._engine.rebuild_slots([p for g in self.param_groups for p in g["params"]])
        self.__dict__.setdefault("_uniform", [self._takes_single_call(g["params"]) for g in self.param_groups])
        self.__dict__.setdefault("_sharded", [has_dtensor(g["params"]) for g in self.param_groups])
        self._state_cache = {}
        self._collected = None
        device = self._params_device()
        # Meta parameters: None until placed at the first step (_place_on_device)
        self._device = None if device is None or device.type == "meta" else device
        if self.param_groups:
            self._rebuild_lr_buf()
        if "_impl" not in self.__dict__:  # unpickled: the backend is chosen for this process
            self._impl = self._resolve_backend()
        self._groups_sig = self._groups_key()

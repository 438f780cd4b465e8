"""What one optimizer keeps for the engine: ticket, plans, first-step flags, clipping buffers, steady state.

``EngineState`` is the device-side companion of a fused optimizer on the Triton path. It knows the
optimizer's kernel spec and nothing else about it; the optimizer hands it flat lists (parameters,
gradients, state lists, flag slots, group indices, hyper rows) and its device schedule.

First-step flags: one int8 flag per parameter (``slot_of``: its index in the flattened
``param_groups`` order, the index ``state_dict`` gives it), on the device, set when the parameter's
state tensors are allocated and cleared by the kernel once the update really happened (an
AMP-skipped first step leaves it set). ``flags_maybe_set`` holds the slots whose flag may be 1: while
it is empty the kernel is told not to clear flags, and takes no ticket for it.

Steady state: after a step in which every parameter took the kernel, the plan and what it relied on
are remembered (``Steady``); ``steady_update`` repeats such a step in O(1) Python work per tensor,
or declines (changing nothing) when anything differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .. import schedules as _schedules
from .._layout import same_strides
from .launch import ClipSpec, DeviceLR, launch, multi_tensor_update
from .plan import Plan, PlanCache, has_grads, set_grads, upload
from .spec import KernelSpec

__all__ = ["EngineState", "Steady"]

_DIRECT_LR = _schedules.col(_schedules.Kind.DIRECT, "lr")


class Steady(NamedTuple):
    """What a steady-state step relies on (see ``EngineState.steady_update``)."""

    groups: tuple  # (id, len) of each group's params list
    params: list  # every parameter, in kernel order
    param_key: tuple  # their data_ptr()s
    schedule: Any  # the DeviceSchedule the plan ran with (or None)
    hyper: tuple  # each group's hyper row
    plan: Plan  # the cached launch plan (addresses, chunks, buffers)
    norm_dtype: torch.dtype  # dtype of the total grad norm (clipping)


class EngineState:
    """The engine's per-optimizer state (see the module docstring); device tensors are made at
    the first update, on the parameters' device."""

    def __init__(self, spec: KernelSpec) -> None:
        self.spec = spec
        self.ticket: Tensor | None = None  # int32 [1]: the last-program-done ticket
        self.cache: PlanCache | None = None  # address/chunk tables per parameter set
        self.first_flags: Tensor | None = None  # int8 [n params]
        self.slot_of: dict[int, int] = {}  # id(param) -> its flag slot
        self.flags_maybe_set: set[int] = set()
        self.identity = None  # without a device schedule: KIND_DIRECT rows that read the LR buffer
        self.max_norm: Tensor | None = None  # float64 [1] max_grad_norm
        self.clip_out: dict[torch.dtype, tuple[Tensor, Tensor]] = {}  # norm dtype -> (norm_out, clip_coef)
        self.steady: Steady | None = None

    # ------------------------------------------------------------------ first-step flags

    def rebuild_slots(self, flat_params: Sequence[Tensor]) -> None:
        """Each parameter's flag slot is its index in ``flat_params``; existing flags follow their
        parameters."""
        old = self.slot_of
        new = {id(p): i for i, p in enumerate(flat_params)}
        self.slot_of = new
        flags = self.first_flags
        if flags is None:
            return
        if all(new.get(pid) == i for pid, i in old.items()):
            # Parameters only added after the existing ones (add_param_group): flags stay in place.
            if flags.numel() < len(flat_params):
                extra = torch.zeros(len(flat_params) - flags.numel(), dtype=torch.int8, device=flags.device)
                self.first_flags = torch.cat([flags, extra])
            return
        # Groups edited in param_groups directly: each kept parameter takes its flag to its new slot.
        pairs = [(i, old[pid]) for pid, i in new.items() if pid in old and old[pid] < flags.numel()]
        moved = torch.zeros(len(flat_params), dtype=torch.int8, device=flags.device)
        if pairs:
            dst, src = (torch.tensor(ix, dtype=torch.int64, device=flags.device) for ix in zip(*pairs))
            moved[dst] = flags[src]
        self.first_flags = moved
        self.flags_maybe_set = {new[pid] for pid, i in old.items() if i in self.flags_maybe_set and pid in new}

    def forget_flags(self) -> None:
        """Loaded state carries history: no flag is set (missing state gets one when allocated)."""
        if self.first_flags is not None:
            self.first_flags.zero_()
        self.flags_maybe_set = set()

    def take_first_step(self, p: Tensor) -> bool:
        """Whether ``p``'s state was allocated on steps AMP skipped (so holds no history yet); clears
        its flag. A host read of one flag, only for slots whose flag may be set."""
        slot = self.slot_of[id(p)]
        if self.first_flags is None or slot not in self.flags_maybe_set or not int(self.first_flags[slot]):
            return False
        self.first_flags[slot] = 0
        return True

    def flagged(self) -> list[int]:
        """The flags as host ints, by slot (one device read)."""
        return self.first_flags.tolist() if self.first_flags is not None else []

    def ensure(self, device: torch.device) -> None:
        """The ticket, the plan cache and the flags exist (made on ``device`` at the first update)."""
        if self.ticket is None:
            self.ticket = torch.zeros(1, dtype=torch.int32, device=device)
            self.cache = PlanCache()
        if self.first_flags is None:
            self.first_flags = torch.zeros(len(self.slot_of), dtype=torch.int8, device=device)

    # ------------------------------------------------------------------ LR and clipping arguments

    def device_lr(self, schedule, lr_buf: Tensor, n_groups: int) -> DeviceLR:
        """Where the kernel takes the LRs: the attached device schedule, with its deferred steps
        applied (the LRs it writes back land in ``lr_buf``); without one, rows that read ``lr_buf``.
        Pair with ``finish_schedule`` after the launches."""
        if schedule is not None:
            advance = schedule.begin_update()
            return DeviceLR(schedule.desc, schedule.table, schedule.counter, advance, lr_buf if advance else None)
        ident = self.identity
        if ident is None or ident.desc.shape[0] != n_groups:
            ident = _schedules.DeviceSchedule(lr_buf.device)
            ident.set_rows([_schedules.direct_row(0.0, 0.0) for _ in range(n_groups)])
            self.identity = ident
        ident.desc[:, _DIRECT_LR].copy_(lr_buf)  # the LR each KIND_DIRECT row gives
        return DeviceLR(ident.desc, ident.table, ident.counter)

    @staticmethod
    def finish_schedule(schedule, lr_buf: Tensor, lr: DeviceLR, wrote: bool) -> None:
        """After the launches: the schedule's deferred steps are applied (by the kernel's write-back,
        or here with torch ops when no launch wrote back)."""
        if schedule is not None and lr.advance:
            schedule.end_update(wrote, lr_buf)

    def clip_spec(self, device: torch.device, max_grad_norm: float, norm_inf: bool, norm_dtype: torch.dtype, *,
                  extra: Tensor | None = None, check=None, create: bool = True) -> ClipSpec | None:
        """The clipping arguments (see ``ClipSpec``), with this optimizer's output buffers for
        ``norm_dtype`` (None when they do not exist and ``create`` is False)."""
        if norm_dtype not in self.clip_out:
            if not create:
                return None
            self.clip_out[norm_dtype] = (torch.zeros(1, dtype=norm_dtype, device=device),
                                         torch.zeros(1, dtype=torch.float64, device=device))
        if self.max_norm is None:
            self.max_norm = torch.tensor([max_grad_norm], dtype=torch.float64, device=device)
        norm_out, coef = self.clip_out[norm_dtype]
        return ClipSpec(self.max_norm, norm_inf, norm_out, coef, extra, check)

    # ------------------------------------------------------------------ updates

    def update(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[list[Tensor | None]],
        slots: list[int],
        group_index: list[int],
        hyper: tuple,
        lr: DeviceLR,
        *,
        new_slots: list[int],
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        clip: ClipSpec | None,
    ) -> bool:
        """One launch per dtype over these lists; ``new_slots``: the flag slots of parameters whose
        state was just allocated (their first step). Returns whether a launch wrote back. If it
        raises, the flags are as they were."""
        device = params[0].device
        self.ensure(device)
        if new_slots:
            # (Uploaded through pinned memory, asynchronously: no host sync on CUDA.)
            idx = upload(new_slots, torch.int64, device)
            checked = clip is not None and clip.check is not None
            flags_before = self.first_flags.clone() if checked else None
            self.first_flags.index_fill_(0, idx, 1)
            self.flags_maybe_set.update(new_slots)
        try:
            wrote = multi_tensor_update(
                self.spec, params, grads, states, group_index, hyper, lr,
                ticket=self.ticket, first_flags=self.first_flags, flag_slots=slots, cache=self.cache,
                clear_first=bool(self.flags_maybe_set), grad_scale=grad_scale, found_inf=found_inf, clip=clip,
            )
        except Exception:
            if new_slots and checked:
                self.first_flags.copy_(flags_before)
                self.flags_maybe_set.difference_update(new_slots)
            raise
        if self.flags_maybe_set and found_inf is None:
            self.flags_maybe_set.difference_update(slots)  # the update happened: the kernel cleared them
        return wrote

    def remember(self, groups: Sequence[dict], params: list[Tensor], states, slots, group_index, hyper, schedule,
                 norm_dtype: torch.dtype) -> None:
        """Every parameter of ``groups`` took the kernel (as real tensors) in the update just made:
        the next steps may repeat it through ``steady_update``."""
        self.steady = Steady(
            groups=tuple((id(g["params"]), len(g["params"])) for g in groups),
            params=params,
            param_key=tuple(map(Tensor.data_ptr, params)),
            schedule=schedule,
            hyper=hyper,
            plan=self.cache.get(self.spec, params, states, tuple(group_index), hyper, tuple(slots)),
            norm_dtype=norm_dtype,
        )

    def steady_update(
        self,
        groups: Sequence[dict],
        hyper: tuple,
        schedule,
        lr_buf: Tensor,
        *,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        clip: ClipSpec | None,
    ) -> bool:
        """The remembered update again, if it still applies: the same groups and parameters, all with
        grads, the same schedule, hyper rows and buffers (AMP and clipping included; ``clip`` is
        built for ``steady.norm_dtype``). Checks, then launches the cached plan. Returns False
        (having changed nothing) when anything differs, and the full step must run instead (which
        also raises the precise error for a bad gradient)."""
        f = self.steady
        if len(groups) != len(f.groups) or any(
            id(g["params"]) != ident or len(g["params"]) != n for g, (ident, n) in zip(groups, f.groups)
        ):
            return False
        if schedule is not f.schedule or hyper != f.hyper:
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
        if not has_grads(plan, grads, grad_key):
            for p, g in zip(params, grads):
                if g.is_sparse or g.dtype is not p.dtype or g.shape != p.shape or not same_strides(g, p):
                    return False
            set_grads(plan, grads, params, grad_key)
        lr = self.device_lr(schedule, lr_buf, len(groups))
        wrote = launch(self.spec, plan, lr, self.ticket, self.first_flags, n_groups=len(groups),
                       clear_first=bool(self.flags_maybe_set), grad_scale=grad_scale, found_inf=found_inf, clip=clip)
        if self.flags_maybe_set and found_inf is None:
            self.flags_maybe_set.clear()  # the update happened for every parameter: flags cleared
        self.finish_schedule(schedule, lr_buf, lr, wrote)
        return True

"""What one optimizer keeps for the engine: ticket, plans, first-step flags, clipping buffers, steady state.

``EngineState`` is the device-side companion of a fused optimizer on the Triton path. It knows the
optimizer's kernel spec and nothing else about it; the optimizer hands it flat lists (parameters,
gradients, state lists, flag slots, group indices, hyper rows) and its device schedule.

First-step flags: one int8 flag per parameter (``slot_of``: its index in the flattened
``param_groups`` order, the index ``state_dict`` gives it), on the device, set when the parameter's
state tensors are allocated and cleared by the kernel once the update really happened (an
AMP-skipped first step leaves it set). ``flags_maybe_set`` holds the slots whose flag may be 1: while
it is empty the kernel is told not to clear flags, and takes no ticket for it. A step without AMP
empties it for the tensors it updated; with AMP (whether the step was skipped is known only on the
device) the flags are copied to the host asynchronously after the step, and the slots the copy saw
cleared are dropped once it has arrived (an event query, never a wait): steady-state AMP steps then
take no ticket and run no flag loop.

Steady state: after a step in which every parameter took the kernel, the plan and what it relied on
are remembered (``Steady``); ``steady_update`` repeats such a step in O(1) Python work per tensor
(each parameter's grad read and checked by identity, its address compared), or declines (changing
nothing) when anything differs. Changed hyper-parameters (a stock scheduler cycling a group's
momentum) only rewrite the plan's hyper table, asynchronously.

Schedules: a scheduler step on the Triton path advances the device counter at once (one tiny
launch, so a launch captured in a CUDA graph, or replayed, always reads the current counter) and
leaves the LR buffer to the next update kernel, which writes it back (``device_lr`` /
``finish_schedule``); inside a capture every launch writes it back.

CUDA graphs: whatever a captured launch references (ticket, flags, schedule tensors, the LR buffer,
the plan's tables) is pinned here or in the plan, so that it outlives the graph's replays.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import _device
from .. import schedules as _schedules
from .._layout import same_strides
from .launch import ClipSpec, DeviceLR, launch, multi_tensor_update
from .plan import Plan, PlanCache, has_grads, same_grads, set_grads, set_hyper
from .spec import KernelSpec

__all__ = ["EngineState", "Steady"]

_DIRECT_LR = _schedules.col(_schedules.Kind.DIRECT, "lr")
_GRAD = operator.attrgetter("grad")


class Steady:
    """What a steady-state step relies on (see ``EngineState.steady_update``)."""

    __slots__ = ("groups", "params", "param_key", "schedule", "keeps", "plan", "norm_dtype")

    def __init__(self, groups: tuple, params: list, schedule, keeps: tuple, plan: Plan, norm_dtype: torch.dtype) -> None:
        self.groups = groups  # (id, len) of each group's params list
        self.params = params  # every parameter, in kernel order
        self.param_key = tuple(map(Tensor.data_ptr, params))  # their addresses
        self.schedule = schedule  # the DeviceSchedule the plan ran with (or None)
        self.keeps = keeps  # which groups keep state (the plan's state tables depend on it)
        self.plan = plan  # the cached launch plan (addresses, chunks, buffers)
        self.norm_dtype = norm_dtype  # dtype of the total grad norm (clipping)


class _AsyncRead:
    """A device tensor copied to the host without waiting (pinned memory and an event on an
    accelerator; ``poll()`` gives the values once the event has completed, else None)."""

    def __init__(self, t: Tensor) -> None:
        if t.device.type == "cpu":
            self._host, self._event = t.clone(), None
            return
        self._host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        self._host.copy_(t, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()

    def poll(self) -> list | None:
        if self._event is not None and not self._event.query():
            return None
        return self._host.tolist()


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
        self._flag_read: _AsyncRead | None = None  # an AMP step's flags, on their way to the host
        self._set_since_read: set[int] = set()  # slots flagged after that read was issued
        self.identity = None  # without a device schedule: KIND_DIRECT rows that read the LR buffer
        self.max_norm: Tensor | None = None  # float64 [1] max_grad_norm
        self.clip_out: dict[torch.dtype, tuple[Tensor, Tensor]] = {}  # norm dtype -> (norm_out, clip_coef)
        self.steady: Steady | None = None
        self.pinned: dict[int, Tensor] = {}  # id -> tensor a captured launch references: never freed

    # ------------------------------------------------------------------ first-step flags

    def rebuild_slots(self, flat_params: Sequence[Tensor]) -> None:
        """Each parameter's flag slot is its index in ``flat_params``; existing flags follow their
        parameters."""
        old = self.slot_of
        new = {id(p): i for i, p in enumerate(flat_params)}
        self.slot_of = new
        self._flag_read = None  # (slots of the old numbering)
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
        self._flag_read = None

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

    def _flags_set(self, slots: Sequence[int]) -> None:
        self.flags_maybe_set.update(slots)
        if self._flag_read is not None:
            self._set_since_read.update(slots)

    def _poll_flags(self) -> None:
        """Drop the slots an arrived read of the flags saw cleared (flags go from 1 to 0 only in the
        kernel; the host sets them, and remembers those set after the read was issued)."""
        values = self._flag_read.poll()
        if values is None:
            return
        keep = self._set_since_read
        self.flags_maybe_set = {s for s in self.flags_maybe_set if s in keep or values[s]}
        self._flag_read = None

    def _after_amp_step(self, found_inf: Tensor | None) -> None:
        """After an update that AMP may have skipped (``found_inf`` given): read the flags later."""
        if found_inf is not None and self.flags_maybe_set and self._flag_read is None:
            if not _device.capturing(self.first_flags.device):
                self._flag_read = _AsyncRead(self.first_flags)
                self._set_since_read = set()

    def ensure(self, device: torch.device) -> None:
        """The ticket, the plan cache and the flags exist (made on ``device`` at the first update)."""
        if self.ticket is None:
            self.ticket = torch.zeros(1, dtype=torch.int32, device=device)
            self.cache = PlanCache()
        if self.first_flags is None:
            self.first_flags = torch.zeros(len(self.slot_of), dtype=torch.int8, device=device)

    # ------------------------------------------------------------------ LR and clipping arguments

    def device_lr(self, schedule, lr_buf: Tensor, n_groups: int, capturing: bool = False) -> DeviceLR:
        """Where the kernel takes the LRs: the attached device schedule at its counter (the kernel
        writes the LRs back into ``lr_buf`` when scheduler steps were taken since it was last
        written, and always inside a capture); without one, rows that read ``lr_buf``. Pair with
        ``finish_schedule`` after the launches."""
        if schedule is not None:
            stale = schedule.begin_update()
            return DeviceLR(schedule.desc, schedule.table, schedule.counter, 0,
                            lr_buf if (stale or capturing) else None)
        ident = self.identity
        if ident is None or ident.desc.shape[0] != n_groups:
            ident = _schedules.DeviceSchedule(lr_buf.device)
            ident.set_rows([_schedules.direct_row(0.0, 0.0) for _ in range(n_groups)])
            self.identity = ident
        ident.desc[:, _DIRECT_LR].copy_(lr_buf)  # the LR each KIND_DIRECT row gives
        return DeviceLR(ident.desc, ident.table, ident.counter)

    @staticmethod
    def finish_schedule(schedule, lr_buf: Tensor, lr: DeviceLR, wrote: bool, capturing: bool = False) -> None:
        """After the launches: ``lr_buf`` holds the LRs at the counter (written back by the kernel,
        or here with torch ops when no launch wrote back). Inside a capture the write-back runs only
        when the graph replays: eager steps still see ``lr_buf`` as stale."""
        if schedule is None or lr.lr_out is None or (capturing and wrote):
            return
        if schedule.pending or not wrote:
            schedule.end_update(wrote, lr_buf)

    def pin(self, lr: DeviceLR, *more: Tensor | None) -> None:
        """A launch is being captured: what it reads and writes outside its plan stays alive."""
        for t in (self.ticket, self.first_flags, *lr[:3], lr.lr_out, *more):
            if t is not None:
                self.pinned.setdefault(id(t), t)

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
        if self._flag_read is not None:
            self._poll_flags()
        capturing = _device.capturing(device)
        if capturing:
            self.pin(lr, grad_scale, found_inf, *(clip[:1] + clip[2:4] if clip is not None else ()))
        if new_slots:
            # (Uploaded through pinned memory, asynchronously: no host sync on CUDA.)
            idx = _device.upload(new_slots, torch.int64, device)
            checked = clip is not None and clip.check is not None
            flags_before = self.first_flags.clone() if checked else None
            self.first_flags.index_fill_(0, idx, 1)
            self._flags_set(new_slots)
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
        if self.flags_maybe_set:
            if found_inf is None:
                self.flags_maybe_set.difference_update(slots)  # the update happened: the kernel cleared them
            else:
                self._after_amp_step(found_inf)
        return wrote

    def latest_plan(self) -> Plan | None:
        """The plan of the most recent update (None before the first)."""
        plans = self.cache._plans if self.cache is not None else None
        return next(reversed(plans.values())) if plans else None

    def remember(self, groups: Sequence[dict], params: list[Tensor], states, slots, group_index, hyper, schedule,
                 norm_dtype: torch.dtype) -> None:
        """Every parameter of ``groups`` took the kernel (as real tensors) in the update just made:
        the next steps may repeat it through ``steady_update``."""
        plan = self.cache.get(self.spec, params, states, tuple(group_index), hyper, tuple(slots))
        self.steady = Steady(
            groups=tuple((id(g["params"]), len(g["params"])) for g in groups),
            params=params,
            schedule=schedule,
            keeps=tuple(map(self.spec.keeps_state, hyper)),
            plan=plan,
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
        grads, the same schedule, which groups keep state, the same buffers (AMP and clipping
        included; ``clip`` is built for ``steady.norm_dtype``). Checks, then launches the cached
        plan (new hyper rows rewrite its hyper table, new grads its grad table). Returns False
        (having changed nothing) when anything differs, and the full step must run instead (which
        also raises the precise error for a bad gradient)."""
        f = self.steady
        if len(groups) != len(f.groups) or any(
            id(g["params"]) != ident or len(g["params"]) != n for g, (ident, n) in zip(groups, f.groups)
        ):
            return False
        if schedule is not f.schedule:
            return False
        plan = f.plan
        new_hyper = hyper != plan.hyper
        if new_hyper and tuple(map(self.spec.keeps_state, hyper)) != f.keeps:
            return False  # state tensors join or leave the tables: the full step rebuilds them
        params = f.params
        if tuple(map(Tensor.data_ptr, params)) != f.param_key:
            return False  # a parameter's storage was replaced (p.data = ..., .half())
        if not same_grads(plan, map(_GRAD, params)):  # (one pass: the grads are read, not kept)
            grads = list(map(_GRAD, params))
            try:
                grad_key = tuple(map(Tensor.data_ptr, grads))  # TypeError on a None grad, RuntimeError on a sparse one
            except (TypeError, RuntimeError):
                return False
            if not has_grads(plan, grads, grad_key):
                for p, g in zip(params, grads):
                    if g.is_sparse or g.dtype is not p.dtype or g.shape != p.shape or not same_strides(g, p):
                        return False
                set_grads(plan, grads, params, grad_key)
        capturing = _device.capturing(plan.device)
        if new_hyper:
            set_hyper(plan, self.spec, hyper)  # (a stock scheduler cycling momentum: data, not a new plan)
        if self._flag_read is not None:
            self._poll_flags()
        lr = self.device_lr(schedule, lr_buf, len(groups), capturing)
        if capturing:
            self.pin(lr, grad_scale, found_inf, *(clip[:1] + clip[2:4] if clip is not None else ()))
        wrote = launch(self.spec, plan, lr, self.ticket, self.first_flags, n_groups=len(groups),
                       clear_first=bool(self.flags_maybe_set), grad_scale=grad_scale, found_inf=found_inf, clip=clip)
        if self.flags_maybe_set:
            if found_inf is None:
                self.flags_maybe_set.clear()  # the update happened for every parameter: flags cleared
            else:
                self._after_amp_step(found_inf)
        self.finish_schedule(schedule, lr_buf, lr, wrote, capturing)
        return True

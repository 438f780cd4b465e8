"""Launch plans: the device tables of one multi-tensor update, built once per parameter set.

A *plan* is keyed by (the parameters' addresses, sizes and strides, every state tensor's address,
the group index of each tensor, the groups' hyper rows, the first-step flag slots, the launch
configuration). Per storage dtype it holds the int64 address tables of the parameters and of each
state list, the sizes, the group index and flag slot of each tensor, and the chunk table (program id
-> tensor, first element); plus the float64 hyper-parameter table. Built the first time a key is
seen; a ``PlanCache`` keeps the last ``max_plans`` plans, so alternating parameter sets (a layer
frozen every other step) do not rebuild.

The gradient address table of a plan is rebuilt when the tuple of grad ``data_ptr()`` or the grads'
layouts change (``zero_grad(set_to_none=True)`` frees grads; the caching allocator usually hands the
same blocks back, and CUDA-graph replays always do). On CUDA the new table is uploaded
asynchronously from pinned memory: no host sync (but not inside a graph capture).

Layouts: a kernel walks every tensor as ``numel`` elements from its address, so each parameter must
be dense (contiguous in some dim order: channels_last and transposed tensors are) and its grad and
state tensors must share its strides (``fused_lr._layout``). The plan checks it when it is built and
when its grad table is set; a grad with other strides that comes back at a cached address (the
caching allocator reuses blocks) is caught by ``has_grads``, which compares layouts as well as
addresses. Not detected (document, don't do): a parameter whose shape or strides are changed in
place (``as_strided_``, ``t_``, a resize to the same element count) at the same address.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from .._layout import is_dense, same_strides
from . import runtime
from .spec import KernelSpec

__all__ = ["Plan", "PlanCache", "upload", "build_plan", "set_grads", "has_grads"]


class Launch:
    """The tables of one dtype's launch; all tensors live on the parameters' device.

    param_addrs, grad_addrs, numels: int64 [n]; state_addrs: one int64 [n] per state list;
    slots: int32 [n]; groups: int32 [n + 1 + n_absent]: each tensor's group, then the number of
    groups with no tensor in this launch and those groups (the kernels' finishing program stores
    their LRs); chunks: int64 [n_chunks, 3] = (tensor index within this launch, first element, end
    element), ``chunk_blocks`` blocks at most; partial_offset: this launch's first slot in the
    plan's norm partials.
    """

    __slots__ = ("dtype", "positions", "param_addrs", "state_addrs", "numels", "groups", "chunks", "n_chunks",
                 "chunk_blocks", "static_aligned", "grad_addrs", "grads_aligned", "slots", "partial_offset")

    def __init__(self, dtype: torch.dtype, positions: list[int]) -> None:
        self.dtype = dtype
        self.positions = positions  # indices of this dtype's tensors in the caller's flat lists


class Plan:
    """Every table of one update (one ``Launch`` per dtype) and the stand-in arguments for what a
    step does not use."""

    __slots__ = ("device", "launches", "hyper_table", "grad_key", "grad_strides", "contiguous",
                 "partials", "one32", "zero32", "one64", "zero64")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        # Stand-ins for grad_scale / found_inf / clip_coef / extra when a step does not use them
        # (read only by SCALED launches, so their values matter only there: scale 1, no inf,
        # coefficient 1, no extra partial).
        self.one32 = torch.ones(1, dtype=torch.float32, device=device)
        self.zero32 = torch.zeros(1, dtype=torch.float32, device=device)
        self.one64 = torch.ones(1, dtype=torch.float64, device=device)
        self.zero64 = torch.zeros(1, dtype=torch.float64, device=device)
        self.partials: Tensor | None = None  # float64 [total chunks]: the norm's partials, allocated once
        self.launches: list[Launch] = []
        self.hyper_table: Tensor | None = None
        self.grad_key: tuple[int, ...] | None = None
        self.grad_strides: tuple | None = None  # the grads' strides when grad_key was set
        self.contiguous = False  # every param is contiguous (then so must every grad be)


def upload(values, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A host list as a device tensor. On CUDA the copy goes through pinned memory and is
    asynchronous: a table rebuilt in a training loop (new grad addresses after
    ``zero_grad(set_to_none=True)``) costs no host sync. torch's pinned-memory allocator keeps the
    staging buffer alive until the copy has run."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def _aligned(addr: int) -> bool:
    return addr % runtime.mt_kernels.ALIGNMENT == 0


def build_plan(
    spec: KernelSpec,
    params: Sequence[Tensor],
    states: Sequence[Sequence[Tensor | None]],
    group_index: tuple[int, ...],
    hyper: tuple[tuple, ...],
    flag_slots: tuple[int, ...],
    cfg: dict[str, int],
) -> Plan:
    """The plan of one update: ``states[k][i]`` is ``params[i]``'s tensor of state list ``k``
    (required where its group keeps state), then of each scalar state; checked before anything
    is built."""
    device = params[0].device
    runtime.check_device(device)
    keeps = [spec.keeps_state(h) for h in hyper]
    n_lists = len(spec.state_lists)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(params):
        if p.device != device:
            raise ValueError(f"all tensors must be on one device: param {i} is on {p.device}, param 0 on {device}")
        if p.dtype not in runtime.KERNEL_DTYPES:
            raise TypeError(
                f"param {i}: dtype {p.dtype} is not supported by the Triton path "
                f"(float16, bfloat16, float32, float64; pass complex params as torch.view_as_real)"
            )
        if not is_dense(p):
            raise ValueError(
                f"param {i} (shape {tuple(p.shape)}, strides {p.stride()}) is not dense; the Triton path "
                "addresses tensors as flat arrays"
            )
        g = group_index[i]
        if not 0 <= g < len(hyper):
            raise ValueError(f"param {i}: group index {g} outside [0, {len(hyper)})")
        if keeps[g]:
            for k, (name, state) in enumerate(zip(spec.state_lists, states)):
                if not spec.kept(hyper[g], k):
                    continue  # (a list this group does not keep: address 0)
                b = state[i]
                if b is None:
                    raise ValueError(f"param {i}: its group keeps state but no {name} was given")
                if b.device != device or b.dtype != p.dtype or b.shape != p.shape or not same_strides(b, p):
                    raise ValueError(
                        f"param {i}: {name} must be a {p.dtype} tensor of shape {tuple(p.shape)} with the "
                        f"param's strides {p.stride()} on {device}, got {b.dtype} {tuple(b.shape)} strides "
                        f"{b.stride()} on {b.device}"
                    )
            for name, state in zip(spec.scalar_states, states[n_lists:]):
                t = state[i]
                if t is None or t.device != device or t.dtype != torch.float32 or t.numel() != 1:
                    got = "None" if t is None else f"{t.dtype} {tuple(t.shape)} on {t.device}"
                    raise ValueError(f"param {i}: {name} must be a one-element float32 tensor on {device}, got {got}")
        if p.numel() > 0:
            by_dtype.setdefault(p.dtype, []).append(i)
    if any(not isinstance(k, int) or k < 0 for k in flag_slots):
        raise ValueError("flag_slots must be non-negative ints (indices into first_flags)")

    plan = Plan(device)
    plan.contiguous = all(p.is_contiguous() for p in params)
    sms = runtime.sm_count(device)
    for dtype, positions in by_dtype.items():
        launch = Launch(dtype, positions)
        param_addrs = [params[i].data_ptr() for i in positions]
        state_addrs = [[state[i].data_ptr() if spec.kept(hyper[group_index[i]], k) else 0 for i in positions]
                       for k, state in enumerate(states)]
        numels = [params[i].numel() for i in positions]
        # Kernel shape (fused_lr.engine.runtime.chunk_blocks): the chunk size of this launch, each
        # tensor split into equal whole-block chunks; the group table ends with the groups this
        # launch has no tensor of (their LRs are stored by the finishing program).
        launch.chunk_blocks = runtime.chunk_blocks(numels, sms, cfg)
        chunks = _chunks(numels, cfg["BLOCK_SIZE"], launch.chunk_blocks)
        groups = [group_index[i] for i in positions]
        absent = sorted(set(range(len(hyper))) - set(groups))
        launch.param_addrs = torch.tensor(param_addrs, dtype=torch.int64, device=device)
        launch.state_addrs = tuple(torch.tensor(a, dtype=torch.int64, device=device) for a in state_addrs)
        launch.numels = torch.tensor(numels, dtype=torch.int64, device=device)
        launch.groups = torch.tensor(groups + [len(absent)] + absent, dtype=torch.int32, device=device)
        launch.chunks = torch.tensor(chunks, dtype=torch.int64, device=device).reshape(-1, 3)
        launch.n_chunks = len(chunks)
        # (Scalar states are read one element at a time: their addresses do not matter here.)
        launch.static_aligned = all(_aligned(a) for a in param_addrs + [a for s in state_addrs[:n_lists] for a in s])
        launch.grad_addrs = None
        launch.grads_aligned = False
        launch.slots = torch.tensor([flag_slots[i] for i in positions], dtype=torch.int32, device=device)
        launch.partial_offset = sum(x.n_chunks for x in plan.launches)
        plan.launches.append(launch)
    plan.partials = torch.zeros(max(1, sum(x.n_chunks for x in plan.launches)), dtype=torch.float64, device=device)

    width = spec.hyper_width()
    rows = [[float(x) for x in h] + [0.0] * (width - len(h)) for h in hyper]
    plan.hyper_table = torch.tensor(rows, dtype=torch.float64, device=device).reshape(-1, width)
    return plan


def _chunks(numels: Sequence[int], block: int, chunk_blocks: int) -> list[tuple[int, int, int]]:
    """``(tensor, start, end)`` of every chunk: each tensor in as few chunks of at most
    ``chunk_blocks`` blocks as it needs, of equal whole blocks (the last one takes the rest), so no
    program of a tensor is left with a sliver while another does a full chunk."""
    chunks = []
    for k, n in enumerate(numels):
        blocks = -(-n // block)
        per = -(-blocks // -(-blocks // chunk_blocks)) * block
        chunks.extend((k, start, min(start + per, n)) for start in range(0, n, per))
    return chunks


def set_grads(plan: Plan, grads: Sequence[Tensor], params: Sequence[Tensor], grad_key: tuple[int, ...]) -> None:
    """Point ``plan`` at these grads (checked: device, dtype, shape, the params' strides)."""
    for launch in plan.launches:
        addrs = []
        for i in launch.positions:
            g, p = grads[i], params[i]
            if g.device != plan.device or g.dtype != p.dtype or g.shape != p.shape or not same_strides(g, p):
                raise ValueError(
                    f"grad {i} must be a {p.dtype} tensor of shape {tuple(p.shape)} with the param's strides "
                    f"{p.stride()} on {plan.device}, got {g.dtype} {tuple(g.shape)} strides {g.stride()} on {g.device}"
                )
            addrs.append(g.data_ptr())
        launch.grad_addrs = upload(addrs, torch.int64, plan.device)
        launch.grads_aligned = all(_aligned(a) for a in addrs)
    plan.grad_key = grad_key
    plan.grad_strides = tuple(map(Tensor.stride, grads))


def has_grads(plan: Plan, grads: Sequence[Tensor], grad_key: tuple[int, ...]) -> bool:
    """Whether ``plan``'s grad table already holds these grads: the same addresses (``grad_key``)
    and the same layouts (a grad with other strides can come back at a recycled address). For a
    plan of contiguous params the check is ``is_contiguous`` (grads have their params' shapes, so
    that is the same layout); otherwise the strides themselves."""
    if grad_key != plan.grad_key:
        return False
    if plan.contiguous:
        return all(map(Tensor.is_contiguous, grads))
    return tuple(map(Tensor.stride, grads)) == plan.grad_strides


class PlanCache:
    """Plans of recent parameter sets; one per optimizer (plans hold device tables)."""

    def __init__(self, max_plans: int = 8) -> None:
        self.max_plans = max_plans
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()

    def get(self, spec: KernelSpec, params, states, group_index: tuple, hyper: tuple, flag_slots: tuple) -> Plan:
        """The plan of this exact update (``build_plan``'s arguments), built if it is not cached."""
        cfg = runtime.launch_config()
        key = (
            spec.name,
            tuple(map(Tensor.data_ptr, params)),
            tuple(map(Tensor.numel, params)),
            tuple(map(Tensor.stride, params)),  # the plan's grad check depends on the params' layouts
            tuple(tuple(0 if b is None else b.data_ptr() for b in state) for state in states),
            group_index,
            hyper,
            tuple(sorted(cfg.items())),
            flag_slots,
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = build_plan(spec, params, states, group_index, hyper, flag_slots, cfg)
            self._plans[key] = plan
            while len(self._plans) > self.max_plans:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan

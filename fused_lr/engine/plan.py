"""Launch plans: the device tables of one multi-tensor update, built once per parameter set.

A *plan* is keyed by (the parameters' addresses, sizes and strides, every state tensor's address,
the group index of each tensor, which groups keep state, the first-step flag slots, the launch
configuration). Per storage dtype it holds the int64 address tables of the parameters and of each
state list, the sizes, the group index and flag slot of each tensor, and the chunk table (program id
-> tensor, first element); plus the float64 hyper-parameter table. Built the first time a key is
seen; a ``PlanCache`` keeps the last ``max_plans`` plans, so alternating parameter sets (a layer
frozen every other step) do not rebuild.

Hyper-parameters are data, not part of the key: a plan's hyper table is rewritten in place when a
group's row changes (a stock ``OneCycleLR`` cycling ``group["momentum"]`` every step), by one
asynchronous copy from pinned memory; the tables are not rebuilt.

The gradient address table of a plan is rebuilt when the gradients change: the same tensor objects
as last time (weak references; ``zero_grad(set_to_none=False)``, CUDA-graph static gradients) need
no check at all; new objects at the same addresses with the same layouts (``zero_grad()``: the
caching allocator usually hands the same blocks back) reuse the table; otherwise a new table is
uploaded asynchronously from pinned memory: no host sync.

Alignment: the kernels' ``ALIGNED=True`` specialization needs every address of a tensor (parameter,
gradient, state) on a 16-byte boundary. A dtype's chunk table lists the chunks of such tensors
first, so one launch per dtype becomes two where some tensors are misaligned (a gradient that is a
bucket view, a parameter that is a view into a flat buffer): aligned tensors keep the vector path.

CUDA graphs (``fused_lr._device.capturing``): a plan is never built during a capture (that would
upload its tables with the capture running: ``PlanCache.get`` raises, naming the fix). A gradient
table that must change during a capture (torch's recipe: ``zero_grad(set_to_none=True)`` before
capture, so the captured backward allocates new gradients) is uploaded by a copy node of the graph
from pinned staging memory the plan set aside before the capture (``Plan.reserve``: pinned memory
cannot be allocated while capturing; enough for every grad, chunk and hyper table once; a new one is
set aside at the next eager launch), and is marked stale for eager steps (the copy runs only
when the graph replays). Every tensor a captured launch references is *pinned* to the plan
(``Plan.pin``): it is never freed or written in place afterwards, and a plan holding pinned tensors
is never evicted from its cache. Tables used on a stream other than the one they were allocated
on are recorded on it (``note_stream``), so the caching allocator does not hand their memory out
while a launch there may still read it.

Layouts: a kernel walks every tensor as ``numel`` elements from its address, so each parameter must
be dense (contiguous in some dim order: channels_last and transposed tensors are) and its grad and
state tensors must share its strides (``fused_lr._layout``). The plan checks it when it is built and
when its grad table is set; a grad with other strides that comes back at a cached address (the
caching allocator reuses blocks) is caught by ``has_grads``, which compares layouts as well as
addresses. Not detected (document, don't do): a parameter whose shape or strides are changed in
place (``as_strided_``, ``t_``, a resize to the same element count) at the same address, and a
gradient tensor whose storage is swapped in place (``p.grad.set_(...)``) while it stays ``p.grad``.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from itertools import repeat

import torch
from torch import Tensor

from .. import _device
from .._layout import is_dense, same_strides
from . import runtime
from .spec import KernelSpec

__all__ = ["Plan", "PlanCache", "build_plan", "set_grads", "set_hyper", "has_grads", "same_grads", "note_stream",
           "CAPTURE_BUILD"]

CAPTURE_BUILD = (
    "fused_lr: the Triton path has no launch plan for these parameters, states and groups yet, and "
    "cannot build one while a CUDA graph is being captured (its tables are uploaded from the host). "
    "Run the same step eagerly at least once before capturing (torch's recipe: a few warm-up "
    "iterations on a side stream), with the same parameters, gradients present and state created."
)


class Launch:
    """The tables of one dtype's launch; all tensors live on the parameters' device.

    param_addrs, grad_addrs, numels: int64 [n]; state_addrs: one int64 [n] per state list;
    slots: int32 [n]; groups: int32 [n + 1 + n_absent]: each tensor's group, then the number of
    groups with no tensor in this launch and those groups (the kernels' finishing program stores
    their LRs); chunks: int64 [n_chunks, 3] = (tensor index within this launch, first element, end
    element), ``chunk_blocks`` blocks at most, the chunks of tensors whose every address is aligned
    first; chunk_rows: the same rows in tensor order (host); parts: one ``(aligned, chunks view,
    programs, partial offset)`` per kernel launch (one, or two when some tensors are misaligned:
    both launches read the same tables, each its own rows of the chunk table; a kernel's finishing
    program does per-tensor work of the whole tables only in the second, or per chunk, as AdamW's
    step counts: see kernels/adamw.py); partial_offset: this dtype's first slot in the plan's norm
    partials.
    """

    __slots__ = ("dtype", "positions", "param_addrs", "state_addrs", "numels", "chunk_rows", "groups", "chunks",
                 "n_chunks", "chunk_blocks", "static_ok", "static_aligned", "grad_addrs", "slots", "partial_offset",
                 "order", "parts", "kwargs")

    def __init__(self, dtype: torch.dtype, positions: list[int]) -> None:
        self.dtype = dtype
        self.positions = positions  # indices of this dtype's tensors in the caller's flat lists
        self.grad_addrs: Tensor | None = None
        self.chunks: Tensor | None = None
        self.order: tuple | None = None  # per tensor: all its addresses aligned, when chunks was ordered
        self.parts: tuple = ()
        self.kwargs: dict | None = None  # compile-time arguments of its update and norm kernels (launch._part_kwargs)


class Plan:
    """Every table of one update (one ``Launch`` per dtype) and the stand-in arguments for what a
    step does not use."""

    __slots__ = ("device", "cfg", "launches", "hyper", "hyper_table", "grad_key", "grad_strides", "grad_refs", "grad_ids",
                 "contiguous", "partials", "one32", "zero32", "one64", "zero64", "pinned", "staging", "last_stream", "reserve",
                 "__weakref__")

    def __init__(self, device: torch.device, cfg: dict) -> None:
        self.device = device
        self.cfg = cfg  # the launch configuration the tables were built for
        # Stand-ins for grad_scale / found_inf / clip_coef / extra when a step does not use them
        # (read only by SCALED launches, so their values matter only there: scale 1, no inf,
        # coefficient 1, no extra partial).
        self.one32 = torch.ones(1, dtype=torch.float32, device=device)
        self.zero32 = torch.zeros(1, dtype=torch.float32, device=device)
        self.one64 = torch.ones(1, dtype=torch.float64, device=device)
        self.zero64 = torch.zeros(1, dtype=torch.float64, device=device)
        self.partials: Tensor | None = None  # float64 [total chunks]: the norm's partials, allocated once
        self.launches: list[Launch] = []
        self.hyper: tuple | None = None  # the rows hyper_table holds (None: stale, upload before use)
        self.hyper_table: Tensor | None = None
        self.grad_key: tuple[int, ...] | None = None
        self.grad_strides: tuple | None = None  # the grads' strides when grad_key was set
        self.grad_refs: list | None = None  # weak references to the grads of grad_key (None: compare addresses)
        self.grad_ids: list[int] = []  # their ids (equal ids while every reference is alive: the same objects)
        self.contiguous = False  # every param is contiguous (then so must every grad be)
        self.pinned: dict[int, Tensor] = {}  # id -> tensor a captured launch references: never freed
        self.staging: list[Tensor] = []  # pinned host tensors copy nodes of captured graphs read
        self.last_stream = None  # the stream of the last launch (CUDA)
        self.reserve: _device.Reserve | None = None  # pinned staging for the uploads of a capture

    def set_aside(self) -> None:
        """Outside a capture: pinned staging memory for the uploads a capture may make (every grad
        table, chunk table and the hyper table once), if there is none unused."""
        if self.device.type != "cuda" or (self.reserve is not None and self.reserve.used == 0):
            return
        words = sum(len(x.positions) + 3 * x.n_chunks + 8 for x in self.launches)  # (grads; chunk rows of 3)
        if self.hyper_table is not None:
            words += self.hyper_table.numel() + 8
        self.reserve = _device.Reserve(8 * words, self.device)

    def tensors(self) -> list[Tensor]:
        """Every device tensor a launch of this plan passes to a kernel."""
        out = [self.one32, self.zero32, self.one64, self.zero64, self.partials, self.hyper_table]
        for x in self.launches:
            out += [x.param_addrs, *x.state_addrs, x.numels, x.groups, x.slots, x.chunks, x.grad_addrs]
        return [t for t in out if t is not None]

    def pin(self) -> None:
        """A launch of this plan is being captured in a CUDA graph: everything it references stays
        alive and unwritten as long as the plan lives (the graph's replays read it)."""
        for t in self.tensors():
            self.pinned.setdefault(id(t), t)


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
    is built. Its tables are uploaded asynchronously (pinned memory): no host sync."""
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

    plan = Plan(device, cfg)
    plan.contiguous = all(p.is_contiguous() for p in params)
    sms = runtime.sm_count(device)
    offset = 0
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
        launch.chunk_rows = _chunks(numels, cfg["BLOCK_SIZE"], launch.chunk_blocks)
        groups = [group_index[i] for i in positions]
        absent = sorted(set(range(len(hyper))) - set(groups))
        launch.param_addrs = _device.upload(param_addrs, torch.int64, device)
        launch.state_addrs = tuple(_device.upload(a, torch.int64, device) for a in state_addrs)
        launch.numels = _device.upload(numels, torch.int64, device)
        launch.groups = _device.upload(groups + [len(absent)] + absent, torch.int32, device)
        launch.slots = _device.upload([flag_slots[i] for i in positions], torch.int32, device)
        launch.n_chunks = len(launch.chunk_rows)
        # Per tensor: its parameter and state-list addresses are aligned (its gradient is checked when
        # set; scalar states are read one element at a time: their addresses do not matter here).
        launch.static_ok = [_aligned(a) and all(_aligned(s[k]) for s in state_addrs[:n_lists])
                            for k, a in enumerate(param_addrs)]
        launch.static_aligned = all(launch.static_ok)
        launch.partial_offset = offset
        offset += launch.n_chunks
        plan.launches.append(launch)
    plan.partials = torch.zeros(max(1, offset), dtype=torch.float64, device=device)
    set_hyper(plan, spec, hyper)
    plan.set_aside()
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


def _order_chunks(plan: Plan, launch: Launch, ok: tuple, keep: list | None) -> None:
    """The chunk table with the chunks of fully aligned tensors first, and the launches it makes."""
    rows = [r for r in launch.chunk_rows if ok[r[0]]]
    n_aligned = len(rows)
    rows += [r for r in launch.chunk_rows if not ok[r[0]]]
    table = _device.upload(rows, torch.int64, plan.device, keep, plan.reserve).reshape(-1, 3)
    parts = []
    if n_aligned:
        parts.append((True, table[:n_aligned], n_aligned, launch.partial_offset))
    if len(rows) > n_aligned:
        parts.append((False, table[n_aligned:], len(rows) - n_aligned, launch.partial_offset + n_aligned))
    launch.chunks, launch.parts = table, tuple(parts)
    # A table uploaded inside a capture holds its values only once the graph replays: stale for eager steps.
    launch.order = None if keep is not None else ok


def set_grads(plan: Plan, grads: Sequence[Tensor], params: Sequence[Tensor], grad_key: tuple[int, ...]) -> None:
    """Point ``plan`` at these grads (checked: device, dtype, shape, the params' strides). Inside a
    CUDA-graph capture the tables are copy nodes of the graph (see the module docstring)."""
    for launch in plan.launches:
        for i in launch.positions:
            g, p = grads[i], params[i]
            if g.device != plan.device or g.dtype != p.dtype or g.shape != p.shape or not same_strides(g, p):
                raise ValueError(
                    f"grad {i} must be a {p.dtype} tensor of shape {tuple(p.shape)} with the param's strides "
                    f"{p.stride()} on {plan.device}, got {g.dtype} {tuple(g.shape)} strides {g.stride()} on {g.device}"
                )
    keep = plan.staging if _device.capturing(plan.device) else None
    for launch in plan.launches:
        addrs = [grads[i].data_ptr() for i in launch.positions]
        launch.grad_addrs = _device.upload(addrs, torch.int64, plan.device, keep, plan.reserve)
        ok = tuple(s and _aligned(a) for s, a in zip(launch.static_ok, addrs))
        if ok != launch.order:
            _order_chunks(plan, launch, ok, keep)
    if keep is not None:
        plan.grad_key = plan.grad_strides = plan.grad_refs = None  # graph-only tables: eager steps upload again
        return
    plan.grad_key = grad_key
    plan.grad_strides = tuple(map(Tensor.stride, grads))
    _watch(plan, grads)


def _watch(plan: Plan, grads: Sequence[Tensor]) -> None:
    """Weak references to ``grads`` for ``same_grads``; when one of them dies (``zero_grad()``
    freeing it), the plan stops comparing identities (its addresses are compared instead)."""
    plan_ref = weakref.ref(plan)
    refs: list = []

    def died(_ref) -> None:
        owner = plan_ref()
        if owner is not None and owner.grad_refs is refs:
            owner.grad_refs = None

    refs.extend(map(weakref.ref, grads, repeat(died)))
    plan.grad_ids = list(map(id, grads))
    plan.grad_refs = refs


def set_hyper(plan: Plan, spec: KernelSpec, hyper: tuple[tuple, ...]) -> None:
    """The plan's hyper table holds ``hyper`` (one row per group): rewritten in place by one
    asynchronous copy, or a new table where the old one is pinned by a graph or has another shape;
    inside a capture a graph-only table (stale for eager steps)."""
    width = spec.hyper_width()
    rows = [[float(x) for x in h] + [0.0] * (width - len(h)) for h in hyper]
    host = torch.tensor(rows, dtype=torch.float64).reshape(-1, width)
    table = plan.hyper_table
    if _device.capturing(plan.device):
        plan.hyper_table = _device.to_device(host, plan.device, plan.staging, plan.reserve)
        plan.hyper = None
        return
    if table is not None and table.shape == host.shape and id(table) not in plan.pinned:
        _device.copy_into(table, host)
    else:
        plan.hyper_table = _device.to_device(host, plan.device)
    plan.hyper = hyper




def same_grads(plan: Plan, grads: Iterable[Tensor | None]) -> bool:
    """Whether ``grads`` are the very tensor objects the grad table was set from (no other check
    needed: same objects, same addresses and layouts; see the module docstring). The references
    are alive whenever ``grad_refs`` is set, so a None grad never matches."""
    # (While grad_refs is set every grad it refers to is alive, so equal ids are the same objects;
    # a None grad's id is no tensor's.)
    return plan.grad_refs is not None and list(map(id, grads)) == plan.grad_ids


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


def note_stream(plan: Plan) -> None:
    """Before a launch on CUDA: when the current stream is not the last one this plan launched on,
    every table is recorded on it (``Tensor.record_stream``), so that none is handed out again by
    the caching allocator while a launch on this stream may still read it."""
    if plan.device.type != "cuda":
        return
    stream = torch.cuda.current_stream(plan.device)
    if stream == plan.last_stream:
        return
    for t in plan.tensors():
        t.record_stream(stream)
    plan.last_stream = stream


class PlanCache:
    """Plans of recent parameter sets; one per optimizer (plans hold device tables). Plans a CUDA
    graph references (``Plan.pinned``) are never evicted."""

    def __init__(self, max_plans: int = 8) -> None:
        self.max_plans = max_plans
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()

    def get(self, spec: KernelSpec, params, states, group_index: tuple, hyper: tuple, flag_slots: tuple) -> Plan:
        """The plan of this exact update (``build_plan``'s arguments), built if it is not cached;
        its hyper table holds ``hyper``."""
        cfg = runtime.launch_config()
        key = (
            spec.name,
            tuple(map(Tensor.data_ptr, params)),
            tuple(map(Tensor.numel, params)),
            tuple(map(Tensor.stride, params)),  # the plan's grad check depends on the params' layouts
            tuple(tuple(0 if b is None else b.data_ptr() for b in state) for state in states),
            group_index,
            tuple(map(spec.keeps_state, hyper)),  # which state addresses the tables hold
            tuple(sorted(cfg.items())),
            flag_slots,
        )
        plan = self._plans.get(key)
        if plan is None:
            if params and _device.capturing(params[0].device):
                raise RuntimeError(CAPTURE_BUILD)
            plan = build_plan(spec, params, states, group_index, hyper, flag_slots, cfg)
            self._plans[key] = plan
            self._evict()
        else:
            self._plans.move_to_end(key)
            if plan.hyper != hyper:
                set_hyper(plan, spec, hyper)
        return plan

    def _evict(self) -> None:
        free = [k for k, p in self._plans.items() if not p.pinned]
        while len(self._plans) > self.max_plans and free:
            del self._plans[free.pop(0)]

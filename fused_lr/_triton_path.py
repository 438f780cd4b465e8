"""The Triton update path: host side of ``fused_lr.kernels.sgd`` (launcher, tables, plan cache).

``triton_sgd_step`` applies one torch.optim.SGD step to a flat list of tensors from any number of
parameter groups, with each group's learning rate computed on the device from the schedule
description (``fused_lr.schedules``) and the step counter. It launches ``sgd_kernel`` once per
storage dtype and reads nothing back from the device.

Tables and what is rebuilt when (all of it host-side work plus one small host-to-device copy):

* A *plan* per (param addresses, sizes and strides, buffer addresses, group indices,
  hyper-parameters, launch configuration): per dtype, the int64 address tables of params and
  buffers, the sizes, the group index of each tensor, the chunk table (program id -> tensor, first
  element) and the float64 hyper-parameter table. Built the first time a fingerprint is seen; the last
  ``SGDPlanCache.max_plans`` plans are kept, so alternating parameter sets (a layer frozen every
  other step) do not rebuild.
* The gradient address table of a plan: rebuilt when the tuple of grad ``data_ptr()`` or the
  grads' layouts change (``zero_grad(set_to_none=True)`` frees grads; the caching allocator
  usually hands the same blocks back, and CUDA-graph replays always do). On CUDA the new table is
  uploaded asynchronously from pinned memory: no host sync (but not inside a graph capture).
* The first-step flags of a plan (host-flag mode, ``first_step`` given as host bools): rebuilt
  when the tuple of flags changes (the step after a parameter's first one, typically). In
  device-flag mode (``first_flags`` given, what FusedSGD uses) the flags live in the caller's
  device tensor, the plan holds only each tensor's slot in it, and the kernel clears a flag when
  the update happened, so a first step skipped by AMP (``found_inf``) stays a first step.
* Gradient clipping (``clip``): a partials launch per dtype over the plan's grad and chunk tables
  into the plan's float64 partials buffer, then one finalize program (``kernels/grad_norm.py``);
  the update launches then read the coefficient from device memory.

A steady-state call therefore does O(n) C-level work (``data_ptr()``/``numel()``/``stride()`` of
each tensor to form the fingerprints, ``is_contiguous()`` of each grad: ``map`` calls), a few
dict/tuple comparisons and one kernel launch per dtype; no per-tensor Python loop and no allocation.

Layouts: the kernel walks every tensor as ``numel`` elements from its address, so each parameter
must be dense (contiguous in some dim order: channels_last and transposed tensors are) and its grad
and buffer must share its strides (``fused_lr._layout``). The plan checks it when it is built and
when its grad table is set; a grad with other strides that comes back at a cached address (the
caching allocator reuses blocks) is caught by ``plan_has_grads``, which compares the grads' layouts
as well as their addresses.

Not detected by the fingerprints (document, don't do): a parameter whose shape or strides are
changed in place (``as_strided_``, ``t_``, a resize to the same element count) at the same address.

On CPU tensors the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before
``triton`` is first imported); on CUDA tensors they run compiled, and the interpreter must be off
(it cannot follow device addresses stored in the tables).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._layout import is_dense, same_strides

try:
    import triton
    import triton.language as tl

    from fused_lr.kernels import grad_norm as _norm_kernels
    from fused_lr.kernels import schedule as _schedule_kernels
    from fused_lr.kernels import sgd as _sgd_kernels
except ImportError:  # pragma: no cover - platforms without Triton use the torch path
    triton = None
    tl = None
    _norm_kernels = None
    _schedule_kernels = None
    _sgd_kernels = None

# Storage dtypes the kernel takes (complex tensors go through torch.view_as_real).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

__all__ = [
    "KERNEL_DTYPES",
    "SGDHyper",
    "ClipSpec",
    "SGDPlanCache",
    "triton_available",
    "kinds_supported",
    "triton_sgd_step",
    "kernel_specializations",
    "override_launch_config",
    "plan_for",
    "plan_has_grads",
    "set_plan_grads",
    "launch_plan",
]


class SGDHyper(NamedTuple):
    """One parameter group's SGD hyper-parameters (torch.optim.SGD's names and defaults)."""

    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False
    # >= 0: the kernel takes the momentum from this schedule row at each step (momentum is then only
    # a nonzero marker that the group has buffers).
    momentum_row: int = -1


class ClipSpec(NamedTuple):
    """Fused gradient clipping for ``triton_sgd_step`` (``torch.nn.utils.clip_grad_norm_``'s formula).

    max_norm: float64 [1] on the device. norm_inf: the inf-norm, else the 2-norm. norm_out: float32
    [1] (float64 [1] when any gradient is float64) receiving the total norm of the unscaled
    gradients. clip_coef: float64 [1] receiving the coefficient. extra: float64 [1] or None: one
    more partial (sum of squares, or max |g|) of gradients the kernels do not see.
    """

    max_norm: Tensor
    norm_inf: bool
    norm_out: Tensor
    clip_coef: Tensor
    extra: Tensor | None = None


def _torch_to_triton_dtype() -> dict[torch.dtype, Any]:
    return {
        torch.float16: tl.float16,
        torch.bfloat16: tl.bfloat16,
        torch.float32: tl.float32,
        torch.float64: tl.float64,
    }


def _interpreting() -> bool:
    """True when the kernels were created under ``TRITON_INTERPRET=1`` (at import time)."""
    return _sgd_kernels is not None and type(_sgd_kernels.sgd_kernel).__name__ == "InterpretedFunction"


def triton_available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton path can run on ``device``.

    ``None`` asks only whether Triton and the kernels import. A CUDA device needs the compiled
    kernels (interpreter off) and a visible GPU; a CPU device needs the interpreter
    (``TRITON_INTERPRET=1`` before ``triton`` was first imported).
    """
    if _sgd_kernels is None:
        return False
    if device is None:
        return True
    device = torch.device(device)
    if device.type == "cuda":
        return not _interpreting() and torch.cuda.is_available()
    if device.type == "cpu":
        return _interpreting()
    return False


def kinds_supported(kinds) -> bool:
    """Whether the Triton ``lr_at`` implements every schedule kind code in ``kinds`` (host-known,
    e.g. ``DeviceSchedule.kinds``); the launcher cannot check the device description without a sync."""
    return _schedule_kernels is not None and set(kinds) <= _schedule_kernels.SUPPORTED_KINDS


def _check_device(device: torch.device) -> None:
    if _sgd_kernels is None:
        raise RuntimeError("the Triton path needs the `triton` package, which failed to import")
    if device.type == "cpu":
        if not _interpreting():
            raise RuntimeError(
                "the Triton path runs on CPU tensors only under Triton's interpreter: set "
                "TRITON_INTERPRET=1 before `triton` is first imported, or use backend='torch'"
            )
    elif device.type == "cuda":
        if _interpreting():
            raise RuntimeError(
                "TRITON_INTERPRET=1 is set, so the Triton kernels are interpreted on the host, and "
                "the interpreter cannot follow CUDA addresses; use CPU tensors or unset it"
            )
    else:
        raise RuntimeError(f"the Triton path supports CUDA (and CPU under TRITON_INTERPRET=1), not {device}")


# --- Launch configuration -----------------------------------------------------------------------

_config_override: dict[str, int] | None = None


def _launch_config() -> dict:
    cfg = _sgd_kernels.launch_config()
    if _config_override:
        cfg.update(_config_override)
    return cfg


@contextlib.contextmanager
def override_launch_config(**overrides: int) -> Iterator[None]:
    """Tests only: run with other ``BLOCK_SIZE`` / ``CHUNK_BLOCKS`` / ``num_warps`` values
    (smaller blocks keep the interpreter fast). Plans built under an override are keyed by it."""
    global _config_override
    unknown = set(overrides) - set(_sgd_kernels.launch_config())
    if unknown:
        raise TypeError(f"unknown launch parameters {sorted(unknown)}")
    previous = _config_override
    _config_override = dict(overrides)
    try:
        yield
    finally:
        _config_override = previous


# --- Plans --------------------------------------------------------------------------------------


class _Launch:
    """The tables of one dtype's launch; all tensors live on the parameters' device.

    param_addrs, buf_addrs, grad_addrs, numels: int64 [n]; groups: int32 [n]; first_step: int8 [n];
    chunks: int64 [n_chunks, 2] = (tensor index within this launch, first element).
    """

    __slots__ = (
        "dtype", "positions", "param_addrs", "buf_addrs", "numels", "groups", "chunks", "n_chunks",
        "static_aligned", "grad_addrs", "grads_aligned", "first_step", "slots", "partial_offset",
    )

    def __init__(self, dtype: torch.dtype, positions: list[int]) -> None:
        self.dtype = dtype
        self.positions = positions  # indices of this dtype's tensors in the caller's flat lists


class _Plan:
    __slots__ = ("device", "launches", "hyper_table", "grad_key", "grad_strides", "contiguous", "first_key",
                 "spare_ticket", "partials", "one32", "zero32", "one64", "zero64")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        # Passed as ticket_ptr when no write-back is asked for (never touched then), so the
        # argument keeps its *i32 type and the compiled specialization is the same.
        self.spare_ticket = torch.zeros(1, dtype=torch.int32, device=device)
        # Stand-ins for grad_scale / found_inf / clip_coef / extra when a step does not use them
        # (read only by SCALED launches, so their values matter only there: scale 1, no inf,
        # coefficient 1, no extra partial).
        self.one32 = torch.ones(1, dtype=torch.float32, device=device)
        self.zero32 = torch.zeros(1, dtype=torch.float32, device=device)
        self.one64 = torch.ones(1, dtype=torch.float64, device=device)
        self.zero64 = torch.zeros(1, dtype=torch.float64, device=device)
        self.partials: Tensor | None = None  # float64 [total chunks]: the norm's partials, allocated once
        self.launches: list[_Launch] = []
        self.hyper_table: Tensor | None = None
        self.grad_key: tuple[int, ...] | None = None
        self.grad_strides: tuple | None = None  # the grads' strides when grad_key was set
        self.contiguous = False  # every param is contiguous (then so must every grad be)
        self.first_key: tuple[bool, ...] | None = None


def _upload(values, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A host list as a device tensor. On CUDA the copy goes through pinned memory and is
    asynchronous: a table rebuilt in a training loop (new grad addresses after
    ``zero_grad(set_to_none=True)``) costs no host sync. torch's pinned-memory allocator keeps the
    staging buffer alive until the copy has run."""
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def _aligned(addr: int) -> bool:
    return addr % _sgd_kernels.ALIGNMENT == 0


def _build_plan(
    params: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor | None],
    group_index: tuple[int, ...],
    hyper: tuple[SGDHyper, ...],
    cfg: dict[str, int],
    flag_slots: tuple[int, ...] | None = None,
) -> _Plan:
    device = params[0].device
    _check_device(device)
    dtype_map = _torch_to_triton_dtype()
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(params):
        if p.device != device:
            raise ValueError(f"all tensors must be on one device: param {i} is on {p.device}, param 0 on {device}")
        if p.dtype not in dtype_map:
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
        b = momentum_buffers[i]
        if hyper[g].momentum != 0:
            if b is None:
                raise ValueError(f"param {i}: its group has momentum {hyper[g].momentum} but no momentum buffer was given")
            if b.device != device or b.dtype != p.dtype or b.shape != p.shape or not same_strides(b, p):
                raise ValueError(
                    f"param {i}: momentum buffer must be a {p.dtype} tensor of shape {tuple(p.shape)} with the "
                    f"param's strides {p.stride()} on {device}, got {b.dtype} {tuple(b.shape)} strides "
                    f"{b.stride()} on {b.device}"
                )
        if p.numel() > 0:
            by_dtype.setdefault(p.dtype, []).append(i)

    if flag_slots is not None and any(not isinstance(k, int) or k < 0 for k in flag_slots):
        raise ValueError("flag_slots must be non-negative ints (indices into first_flags)")
    plan = _Plan(device)
    plan.contiguous = all(p.is_contiguous() for p in params)
    chunk = cfg["BLOCK_SIZE"] * cfg["CHUNK_BLOCKS"]
    for dtype, positions in by_dtype.items():
        launch = _Launch(dtype, positions)
        param_addrs = [params[i].data_ptr() for i in positions]
        buf_addrs = [
            momentum_buffers[i].data_ptr() if hyper[group_index[i]].momentum != 0 else 0 for i in positions
        ]
        numels = [params[i].numel() for i in positions]
        chunks = [(k, start) for k, n in enumerate(numels) for start in range(0, n, chunk)]
        launch.param_addrs = torch.tensor(param_addrs, dtype=torch.int64, device=device)
        launch.buf_addrs = torch.tensor(buf_addrs, dtype=torch.int64, device=device)
        launch.numels = torch.tensor(numels, dtype=torch.int64, device=device)
        launch.groups = torch.tensor([group_index[i] for i in positions], dtype=torch.int32, device=device)
        launch.chunks = torch.tensor(chunks, dtype=torch.int64, device=device).reshape(-1, 2)
        launch.n_chunks = len(chunks)
        launch.static_aligned = all(_aligned(a) for a in param_addrs + buf_addrs)
        launch.grad_addrs = None
        launch.grads_aligned = False
        launch.first_step = None
        # Each tensor's index into the first-step flags: the caller's slots (device-flag mode), or
        # its position in this launch's own flag table (host-flag mode).
        slots = [flag_slots[i] for i in positions] if flag_slots is not None else list(range(len(positions)))
        launch.slots = torch.tensor(slots, dtype=torch.int32, device=device)
        launch.partial_offset = sum(l.n_chunks for l in plan.launches)
        plan.launches.append(launch)
    plan.partials = torch.zeros(max(1, sum(l.n_chunks for l in plan.launches)), dtype=torch.float64, device=device)

    rows = []
    for h in hyper:
        row = [0.0] * _sgd_kernels.HYPER_WIDTH
        row[_sgd_kernels.HYPER_MOMENTUM] = float(h.momentum)
        # torch computes 1 - dampening in Python (float64) and rounds it once to the opmath type.
        row[_sgd_kernels.HYPER_ONE_MINUS_DAMPENING] = 1.0 - float(h.dampening)
        row[_sgd_kernels.HYPER_WEIGHT_DECAY] = float(h.weight_decay)
        row[_sgd_kernels.HYPER_NESTEROV] = 1.0 if h.nesterov else 0.0
        row[_sgd_kernels.HYPER_MAXIMIZE] = 1.0 if h.maximize else 0.0
        row[_sgd_kernels.HYPER_MOMENTUM_ROW] = float(h.momentum_row)
        rows.append(row)
    plan.hyper_table = torch.tensor(rows, dtype=torch.float64, device=device).reshape(-1, _sgd_kernels.HYPER_WIDTH)
    return plan


def _set_grads(plan: _Plan, grads: Sequence[Tensor], params: Sequence[Tensor], grad_key: tuple[int, ...]) -> None:
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
        launch.grad_addrs = _upload(addrs, torch.int64, plan.device)
        launch.grads_aligned = all(_aligned(a) for a in addrs)
    plan.grad_key = grad_key
    plan.grad_strides = tuple(map(Tensor.stride, grads))


def plan_has_grads(plan: _Plan, grads: Sequence[Tensor], grad_key: tuple[int, ...]) -> bool:
    """Whether ``plan``'s grad table already holds these grads: the same addresses (``grad_key``)
    and the same layouts (a grad with other strides can come back at a recycled address). For a
    plan of contiguous params the check is ``is_contiguous`` (grads have their params' shapes, so
    that is the same layout); otherwise the strides themselves."""
    if grad_key != plan.grad_key:
        return False
    if plan.contiguous:
        return all(map(Tensor.is_contiguous, grads))
    return tuple(map(Tensor.stride, grads)) == plan.grad_strides


def _set_first_step(plan: _Plan, first_key: tuple[bool, ...]) -> None:
    for launch in plan.launches:
        flags = [1 if first_key[i] else 0 for i in launch.positions]
        launch.first_step = _upload(flags, torch.int8, plan.device)
    plan.first_key = first_key


class SGDPlanCache:
    """Plans of recent parameter sets (see the module docstring); one per optimizer."""

    def __init__(self, max_plans: int = 8) -> None:
        self.max_plans = max_plans
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()
        self.builds = 0  # plans built so far (for tests and diagnostics)

    def clear(self) -> None:
        self._plans.clear()

    def get(
        self,
        params: Sequence[Tensor],
        momentum_buffers: Sequence[Tensor | None],
        group_index: tuple[int, ...],
        hyper: tuple[SGDHyper, ...],
        flag_slots: tuple[int, ...] | None = None,
    ) -> _Plan:
        cfg = _launch_config()
        key = (
            tuple(map(Tensor.data_ptr, params)),
            tuple(map(Tensor.numel, params)),
            tuple(map(Tensor.stride, params)),  # the plan's grad check depends on the params' layouts
            tuple(0 if b is None else b.data_ptr() for b in momentum_buffers),
            group_index,
            hyper,
            tuple(sorted(cfg.items())),
            flag_slots,
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = _build_plan(params, momentum_buffers, group_index, hyper, cfg, flag_slots)
            self.builds += 1
            self._plans[key] = plan
            while len(self._plans) > self.max_plans:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return plan


_default_cache = SGDPlanCache()


def triton_sgd_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor | None],
    first_step: Sequence[bool] | None,
    group_index: Sequence[int],
    hyper: Sequence[SGDHyper],
    desc: Tensor,
    table: Tensor,
    step: Tensor,
    *,
    advance: int = 0,
    lr_out: Tensor | None = None,
    ticket: Tensor | None = None,
    cache: SGDPlanCache | None = None,
    first_flags: Tensor | None = None,
    flag_slots: Sequence[int] | None = None,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    clip: ClipSpec | None = None,
    before_update: Any = None,
    clear_first: bool = True,
) -> bool:
    """One torch.optim.SGD step on every tensor of ``params``, in place, LR from the device schedule.

    Args:
        params: the parameters to update (only those with a grad this step), dense (contiguous in
            some dim order, see ``fused_lr._layout``), float16 / bfloat16 / float32 / float64, all on
            one device. Updated in place.
        grads: ``grads[i]`` is ``params[i]``'s gradient: same dtype, shape, device and strides.
            Never written.
        momentum_buffers: ``momentum_buffers[i]`` is ``params[i]``'s buffer. Required (allocated by
            the caller with the param's strides, e.g. ``torch.empty_like(p)``; its contents are
            ignored on the first step) when the tensor's group has momentum != 0, ignored (may be
            ``None``) otherwise. Updated in place.
        first_step: host-flag mode: host bools, ``first_step[i]`` true when ``params[i]`` has no
            momentum history yet: the kernel sets ``buf = g`` (torch's clone of the grad, no
            dampening) instead of ``momentum * buf + (1 - dampening) * g``. The caller clears it
            after the call. Ignored (pass ``None``) in device-flag mode.
        group_index: ``group_index[i]`` is the parameter group of ``params[i]``: the row of
            ``hyper`` and of ``desc``.
        hyper: one ``SGDHyper`` per group (``len(hyper) == desc.shape[0]``).
        desc: float64 ``[rows, DESC_WIDTH]`` schedule rows on the device (``fused_lr.schedules``):
            one per group (row ``g`` for group ``g``), then the pieces of composite schedules.
        table: float64 ``[table_len]`` tabulated multipliers on the device (``KIND_TABLE`` rows;
            pass any 1-element tensor when no row uses it).
        step: int64 ``[1]`` step counter on the device. The LR is taken at ``step + advance``.
        advance: scheduler steps taken on the host since the counter was last stored (deferred so
            that ``opt.step(); sched.step()`` costs one launch).
        lr_out: float64 ``[groups]`` on the device, or ``None``. When given, the step's final
            launch writes back: its last program stores ``step += advance`` and every group's LR
            at that step into ``lr_out`` (a last-program-done ticket, so no program still reads
            the counter when it changes). A step skipped by ``found_inf`` writes back too.
        ticket: int32 ``[1]`` zeros on the device, required with ``lr_out`` or ``first_flags``
            (one per optimizer).
        cache: where plans are kept; one per optimizer. ``None`` uses a module-level cache.
        first_flags: device-flag mode: int8 ``[n_slots]`` on the device, 1 while a tensor has no
            momentum history. The kernel reads ``first_flags[flag_slots[i]]`` for ``params[i]``
            and, after an update that happened, clears the flags of the updated tensors (not on a
            step skipped by ``found_inf``). The caller sets a flag when it allocates a buffer.
        flag_slots: with ``first_flags``: ``params[i]``'s index into it (host ints).
        clear_first: with ``first_flags``: False when the caller knows every flag of these tensors
            is already 0 (then no program takes a ticket unless it writes back: the steady state
            without AMP costs what it did before device flags).
        grad_scale: float32 ``[1]`` on the device or ``None``: AMP's loss scale; every gradient is
            divided by it (in the arithmetic type) before the update and the norm.
        found_inf: float32 ``[1]`` on the device or ``None``: when nonzero at run time, the kernels
            store no parameter and no buffer (the schedule still advances).
        clip: ``ClipSpec`` or ``None``: clip the unscaled gradients to ``clip.max_norm`` as
            ``torch.nn.utils.clip_grad_norm_`` does, without writing them; the norm and the
            coefficient land in ``clip.norm_out`` and ``clip.clip_coef``. For complex parameters
            passed as real views the inf-norm would be the max over components: route them elsewhere.
        before_update: a callable run on the host after the norm launches and before the update
            launches (FusedSGD's ``error_if_nonfinite`` check, which reads the norm); if it raises,
            nothing has been updated.

    Returns:
        True when a launch wrote back (``lr_out`` given and at least one non-empty tensor); when it
        returns False with ``lr_out`` given, the caller must advance the counter itself.

    Raises:
        RuntimeError: Triton cannot run on the tensors' device (CPU without ``TRITON_INTERPRET=1``,
            CUDA with it).
        ValueError / TypeError: inconsistent lists, devices, dtypes, sizes or layouts.
    """
    n = len(params)
    device_flags = first_flags is not None
    n_first = len(flag_slots) if device_flags and flag_slots is not None else (
        len(first_step) if first_step is not None else -1)
    if not (len(grads) == len(momentum_buffers) == n_first == len(group_index) == n):
        raise ValueError(
            f"params, grads, momentum_buffers, first_step (or flag_slots) and group_index must have one "
            f"entry per param: got {n}, {len(grads)}, {len(momentum_buffers)}, {n_first}, {len(group_index)}"
        )
    if n == 0:
        return False
    hyper = tuple(h if isinstance(h, SGDHyper) else SGDHyper(*h) for h in hyper)
    if desc.dim() != 2 or desc.shape[0] < len(hyper) or desc.dtype != torch.float64:
        raise ValueError(
            f"desc must be float64 [>= {len(hyper)} rows (groups, then pieces), DESC_WIDTH], got {desc.dtype} {tuple(desc.shape)}"
        )
    if not (table.dtype == torch.float64 and 1 <= table.numel() < 2**31 and table.is_contiguous()):
        raise ValueError("table must be a contiguous float64 tensor with 1 <= numel < 2**31")
    if step.dtype != torch.int64 or step.numel() != 1:
        raise ValueError(f"step must be an int64 tensor with one element, got {step.dtype} {tuple(step.shape)}")
    if lr_out is not None:
        if lr_out.dtype != torch.float64 or lr_out.numel() != len(hyper) or not lr_out.is_contiguous():
            raise ValueError(f"lr_out must be a contiguous float64 tensor of {len(hyper)} elements")
    if lr_out is not None or device_flags:
        if ticket is None or ticket.dtype != torch.int32 or ticket.numel() != 1:
            raise ValueError("lr_out and first_flags need ticket: an int32 tensor with one element, zero")
    if device_flags:
        if first_flags.dtype != torch.int8 or not first_flags.is_contiguous():
            raise ValueError(f"first_flags must be a contiguous int8 tensor, got {first_flags.dtype}")
        if flag_slots and max(flag_slots) >= first_flags.numel():  # (C-level: no per-tensor Python loop)
            raise ValueError(f"flag_slots must index first_flags ({first_flags.numel()} entries), got {max(flag_slots)}")
    for t, what, dtype in ((grad_scale, "grad_scale", torch.float32), (found_inf, "found_inf", torch.float32)):
        if t is not None and (t.dtype != dtype or t.numel() != 1):
            raise ValueError(f"{what} must be a {dtype} tensor with one element, got {t.dtype} {tuple(t.shape)}")
    if clip is not None:
        clip = ClipSpec(*clip)
        for t, what, dtypes in ((clip.max_norm, "clip.max_norm", (torch.float64,)),
                                (clip.norm_out, "clip.norm_out", (torch.float32, torch.float64)),
                                (clip.clip_coef, "clip.clip_coef", (torch.float64,)),
                                (clip.extra, "clip.extra", (torch.float64,))):
            if t is not None and (t.dtype not in dtypes or t.numel() != 1):
                raise ValueError(f"{what} must be a one-element {' or '.join(map(str, dtypes))} tensor, got {t.dtype} {tuple(t.shape)}")

    cache = _default_cache if cache is None else cache
    plan = cache.get(params, momentum_buffers, tuple(group_index), hyper,
                     tuple(flag_slots) if device_flags else None)
    extra_tensors = [(desc, "desc"), (table, "table"), (step, "step"), (grad_scale, "grad_scale"),
                     (found_inf, "found_inf"), (first_flags, "first_flags")]
    if clip is not None:
        extra_tensors += [(clip.max_norm, "clip.max_norm"), (clip.norm_out, "clip.norm_out"),
                          (clip.clip_coef, "clip.clip_coef"), (clip.extra, "clip.extra")]
    for t, what in extra_tensors:
        if t is not None and t.device != plan.device:
            raise ValueError(f"{what} is on {t.device}, params on {plan.device}")
    grad_key = tuple(map(Tensor.data_ptr, grads))
    if not plan_has_grads(plan, grads, grad_key):
        _set_grads(plan, grads, params, grad_key)
    if not device_flags:
        first_key = tuple(map(bool, first_step))
        if first_key != plan.first_key:
            _set_first_step(plan, first_key)
    return launch_plan(
        plan, desc, table, step,
        advance=advance, lr_out=lr_out, ticket=ticket, n_groups=len(hyper),
        first_flags=first_flags, clear_first=clear_first,
        grad_scale=grad_scale, found_inf=found_inf, clip=clip, before_update=before_update,
    )


def plan_for(cache: SGDPlanCache, params, momentum_buffers, group_index, hyper, flag_slots=None) -> _Plan:
    """The cached plan of this exact parameter set (what ``triton_sgd_step`` would launch)."""
    return cache.get(params, momentum_buffers, tuple(group_index), tuple(hyper),
                     None if flag_slots is None else tuple(flag_slots))


def set_plan_grads(plan: _Plan, grads: Sequence[Tensor], params: Sequence[Tensor], grad_key: tuple[int, ...]) -> None:
    """Point ``plan`` at these grads (checked: device, dtype, shape, the params' strides)."""
    _set_grads(plan, grads, params, grad_key)


def launch_plan(
    plan: _Plan,
    desc: Tensor,
    table: Tensor,
    step: Tensor,
    *,
    advance: int,
    lr_out: Tensor | None,
    ticket: Tensor | None,
    n_groups: int,
    first_flags: Tensor | None = None,
    clear_first: bool = True,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    clip: ClipSpec | None = None,
    before_update: Any = None,
) -> bool:
    """Launch ``plan`` (its grads, and host first-step flags when ``first_flags`` is None, already
    set; arguments checked); see ``triton_sgd_step`` for each argument."""
    device_flags = first_flags is not None
    cfg = _launch_config()
    dtype_map = _torch_to_triton_dtype()
    desc = desc if desc.is_contiguous() else desc.contiguous()
    scaled = grad_scale is not None or found_inf is not None or clip is not None
    scale_arg = grad_scale if grad_scale is not None else plan.one32
    inf_arg = found_inf if found_inf is not None else plan.zero32
    coef_arg = clip.clip_coef if clip is not None else plan.one64
    if clip is not None:
        for launch in plan.launches:
            tl_dtype = dtype_map[launch.dtype]
            _norm_kernels.grad_norm_partials_kernel[(launch.n_chunks,)](
                launch.grad_addrs,
                launch.numels,
                launch.chunks,
                plan.partials,
                launch.partial_offset,
                DTYPE=tl_dtype,
                COMPUTE_DTYPE=_sgd_kernels.compute_dtype(tl_dtype),
                ALIGNED=launch.grads_aligned,
                NORM_INF=bool(clip.norm_inf),
                BLOCK_SIZE=cfg["BLOCK_SIZE"],
                CHUNK_BLOCKS=cfg["CHUNK_BLOCKS"],
                num_warps=cfg["num_warps"],
            )
        _norm_kernels.grad_norm_finalize_kernel[(1,)](
            plan.partials,
            sum(l.n_chunks for l in plan.launches),
            clip.extra if clip.extra is not None else plan.zero64,
            scale_arg,
            clip.max_norm,
            clip.norm_out,
            clip.clip_coef,
            NORM_INF=bool(clip.norm_inf),
            NORM_DTYPE=dtype_map[clip.norm_out.dtype],
            BLOCK=_norm_kernels.FINALIZE_BLOCK,
            num_warps=cfg["num_warps"],
        )
    if before_update is not None:
        before_update()
    # Launches run in stream order: only the last one advances the counter, so the earlier ones
    # (other dtypes) read it unchanged.
    last = len(plan.launches) - 1
    for k, launch in enumerate(plan.launches):
        write_back = 1 if (lr_out is not None and k == last) else 0
        _sgd_kernels.sgd_kernel[(launch.n_chunks,)](
            launch.param_addrs,
            launch.grad_addrs,
            launch.buf_addrs,
            launch.numels,
            launch.groups,
            first_flags if device_flags else launch.first_step,
            launch.slots,
            launch.chunks,
            plan.hyper_table,
            step,
            desc,
            table,
            table.numel(),
            int(advance),
            lr_out if lr_out is not None else desc,
            ticket if ticket is not None else plan.spare_ticket,
            n_groups,
            write_back,
            len(launch.positions),
            1 if (device_flags and clear_first) else 0,
            scale_arg,
            inf_arg,
            coef_arg,
            DTYPE=dtype_map[launch.dtype],
            COMPUTE_DTYPE=_sgd_kernels.compute_dtype(dtype_map[launch.dtype]),
            ALIGNED=launch.static_aligned and launch.grads_aligned,
            SCALED=scaled,
            BLOCK_SIZE=cfg["BLOCK_SIZE"],
            CHUNK_BLOCKS=cfg["CHUNK_BLOCKS"],
            num_warps=cfg["num_warps"],
            enable_fp_fusion=cfg["enable_fp_fusion"],
        )
    return lr_out is not None and bool(plan.launches)


# --- Every specialization the launcher can produce (for the AOT compile test) ------------------

# Runtime argument types as the launcher passes them (pointers to its tables, table_numel < 2**31
# so Triton types it i32).
_SGD_SIGNATURE = {
    "param_addrs_ptr": "*i64",
    "grad_addrs_ptr": "*i64",
    "buf_addrs_ptr": "*i64",
    "numels_ptr": "*i64",
    "groups_ptr": "*i32",
    "first_step_ptr": "*i8",
    "slots_ptr": "*i32",
    "chunks_ptr": "*i64",
    "hyper_ptr": "*fp64",
    "step_ptr": "*i64",
    "desc_ptr": "*fp64",
    "table_ptr": "*fp64",
    "table_numel": "i32",
    "advance": "i32",
    "lr_out_ptr": "*fp64",
    "ticket_ptr": "*i32",
    "n_groups": "i32",
    "write_back": "i32",
    "n_tensors": "i32",
    "clear_first": "i32",
    "grad_scale_ptr": "*fp32",
    "found_inf_ptr": "*fp32",
    "clip_coef_ptr": "*fp64",
}
_PARTIALS_SIGNATURE = {
    "grad_addrs_ptr": "*i64",
    "numels_ptr": "*i64",
    "chunks_ptr": "*i64",
    "partials_ptr": "*fp64",
    "offset": "i32",
}
_FINALIZE_SIGNATURE = {
    "partials_ptr": "*fp64",
    "n_partials": "i32",
    "extra_ptr": "*fp64",
    "grad_scale_ptr": "*fp32",
    "max_norm_ptr": "*fp64",
    "norm_out_ptr": None,  # *fp32 or *fp64: the norm's dtype
    "clip_coef_ptr": "*fp64",
}


def kernel_specializations() -> list[dict[str, Any]]:
    """Every (kernel, constexpr) combination ``triton_sgd_step`` can launch, at the production
    launch configuration, as ``dict(name, kind, fn, signature, constexprs, options, dtype, aligned)``:
    ready for ``triton.compile(triton.compiler.ASTSource(fn, signature, constexprs), target=...,
    options=options)``. ``kind`` is ``"sgd"`` (the update), ``"norm_partials"`` or
    ``"norm_finalize"`` (fused gradient clipping); ``dtype`` is the storage dtype the kernel reads
    (the norm's dtype for the finalize kernel) and ``aligned`` is None where it does not apply.
    """
    if _sgd_kernels is None:
        return []
    cfg = _sgd_kernels.launch_config()
    options = {"num_warps": cfg["num_warps"], "enable_fp_fusion": cfg["enable_fp_fusion"]}
    specs = []

    def add(kind, name, fn, base_signature, constexprs, options, dtype, aligned):
        signature = dict(base_signature)
        signature.update({k: "constexpr" for k in constexprs})
        specs.append(dict(name=name, kind=kind, fn=fn, signature=signature, constexprs=constexprs,
                          options=dict(options), dtype=dtype, aligned=aligned))

    for torch_dtype, tl_dtype in _torch_to_triton_dtype().items():
        blocks = {"DTYPE": tl_dtype, "COMPUTE_DTYPE": _sgd_kernels.compute_dtype(tl_dtype)}
        sizes = {"BLOCK_SIZE": cfg["BLOCK_SIZE"], "CHUNK_BLOCKS": cfg["CHUNK_BLOCKS"]}
        for aligned in (True, False):
            for scaled in (False, True):
                add("sgd", f"sgd_kernel[{tl_dtype}, ALIGNED={aligned}, SCALED={scaled}]", _sgd_kernels.sgd_kernel,
                    _SGD_SIGNATURE, {**blocks, "ALIGNED": aligned, "SCALED": scaled, **sizes}, options,
                    torch_dtype, aligned)
            for norm_inf in (False, True):
                add("norm_partials", f"grad_norm_partials_kernel[{tl_dtype}, ALIGNED={aligned}, NORM_INF={norm_inf}]",
                    _norm_kernels.grad_norm_partials_kernel, _PARTIALS_SIGNATURE,
                    {**blocks, "ALIGNED": aligned, "NORM_INF": norm_inf, **sizes}, {"num_warps": cfg["num_warps"]},
                    torch_dtype, aligned)
    for norm_dtype in (torch.float32, torch.float64):
        tl_dtype = _torch_to_triton_dtype()[norm_dtype]
        finalize_signature = dict(_FINALIZE_SIGNATURE, norm_out_ptr="*fp64" if norm_dtype == torch.float64 else "*fp32")
        for norm_inf in (False, True):
            add("norm_finalize", f"grad_norm_finalize_kernel[{tl_dtype}, NORM_INF={norm_inf}]",
                _norm_kernels.grad_norm_finalize_kernel, finalize_signature,
                {"NORM_INF": norm_inf, "NORM_DTYPE": tl_dtype, "BLOCK": _norm_kernels.FINALIZE_BLOCK},
                {"num_warps": cfg["num_warps"]}, norm_dtype, None)
    return specs

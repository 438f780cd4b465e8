"""The Triton update path: host side of ``fused_lr.kernels.sgd`` (launcher, tables, plan cache).

``triton_sgd_step`` applies one torch.optim.SGD step to a flat list of tensors from any number of
parameter groups, with each group's learning rate computed on the device from the schedule
description (``fused_lr.schedules``) and the step counter. It launches ``sgd_kernel`` once per
storage dtype and reads nothing back from the device.

Tables and what is rebuilt when (all of it host-side work plus one small host-to-device copy):

* A *plan* per (param addresses, param sizes, buffer addresses, group indices, hyper-parameters,
  launch configuration): per dtype, the int64 address tables of params and buffers, the sizes, the
  group index of each tensor, the chunk table (program id -> tensor, first element) and the
  float64 hyper-parameter table. Built the first time a fingerprint is seen; the last
  ``SGDPlanCache.max_plans`` plans are kept, so alternating parameter sets (a layer frozen every
  other step) do not rebuild.
* The gradient address table of a plan: rebuilt when the tuple of grad ``data_ptr()`` changes
  (``zero_grad(set_to_none=True)`` frees grads; the caching allocator usually hands the same
  blocks back, and CUDA-graph replays always do). On CUDA the new table is uploaded
  asynchronously from pinned memory: no host sync (but not inside a graph capture).
* The first-step flags of a plan: rebuilt when the tuple of flags changes (the step after a
  parameter's first one, typically).

A steady-state call therefore does O(n) C-level work (``data_ptr()``/``numel()`` of each tensor to
form the fingerprints: three ``tuple(map(...))`` calls), a few dict/tuple comparisons and one
kernel launch per dtype; no per-tensor Python loop and no allocation.

Not detected by the fingerprints (document, don't do): a parameter resized in place to the same
element count at the same address, or a non-contiguous grad appearing at a cached address.

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

try:
    import triton
    import triton.language as tl

    from fused_lr.kernels import schedule as _schedule_kernels
    from fused_lr.kernels import sgd as _sgd_kernels
except ImportError:  # pragma: no cover - platforms without Triton use the torch path
    triton = None
    tl = None
    _schedule_kernels = None
    _sgd_kernels = None

# Storage dtypes the kernel takes (complex tensors go through torch.view_as_real).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

__all__ = [
    "KERNEL_DTYPES",
    "SGDHyper",
    "SGDPlanCache",
    "triton_available",
    "kinds_supported",
    "triton_sgd_step",
    "kernel_specializations",
    "override_launch_config",
    "plan_for",
    "set_plan_grads",
    "clear_first_steps",
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
        "static_aligned", "grad_addrs", "grads_aligned", "first_step",
    )

    def __init__(self, dtype: torch.dtype, positions: list[int]) -> None:
        self.dtype = dtype
        self.positions = positions  # indices of this dtype's tensors in the caller's flat lists


class _Plan:
    __slots__ = ("device", "launches", "hyper_table", "grad_key", "first_key", "spare_ticket")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        # Passed as ticket_ptr when no write-back is asked for (never touched then), so the
        # argument keeps its *i32 type and the compiled specialization is the same.
        self.spare_ticket = torch.zeros(1, dtype=torch.int32, device=device)
        self.launches: list[_Launch] = []
        self.hyper_table: Tensor | None = None
        self.grad_key: tuple[int, ...] | None = None
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
        if not p.is_contiguous():
            raise ValueError(f"param {i} is not contiguous; the Triton path addresses tensors as flat arrays")
        g = group_index[i]
        if not 0 <= g < len(hyper):
            raise ValueError(f"param {i}: group index {g} outside [0, {len(hyper)})")
        b = momentum_buffers[i]
        if hyper[g].momentum != 0:
            if b is None:
                raise ValueError(f"param {i}: its group has momentum {hyper[g].momentum} but no momentum buffer was given")
            if b.device != device or b.dtype != p.dtype or b.numel() != p.numel() or not b.is_contiguous():
                raise ValueError(
                    f"param {i}: momentum buffer must be a contiguous {p.dtype} tensor of {p.numel()} elements "
                    f"on {device}, got {b.dtype} {tuple(b.shape)} on {b.device}"
                )
        if p.numel() > 0:
            by_dtype.setdefault(p.dtype, []).append(i)

    plan = _Plan(device)
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
        plan.launches.append(launch)

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
            if g.device != plan.device or g.dtype != p.dtype or g.numel() != p.numel() or not g.is_contiguous():
                raise ValueError(
                    f"grad {i} must be a contiguous {p.dtype} tensor of {p.numel()} elements on {plan.device}, "
                    f"got {g.dtype} {tuple(g.shape)} on {g.device}"
                    + ("" if g.is_contiguous() else " (not contiguous)")
                )
            addrs.append(g.data_ptr())
        launch.grad_addrs = _upload(addrs, torch.int64, plan.device)
        launch.grads_aligned = all(_aligned(a) for a in addrs)
    plan.grad_key = grad_key


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
    ) -> _Plan:
        cfg = _launch_config()
        key = (
            tuple(map(Tensor.data_ptr, params)),
            tuple(map(Tensor.numel, params)),
            tuple(0 if b is None else b.data_ptr() for b in momentum_buffers),
            group_index,
            hyper,
            tuple(sorted(cfg.items())),
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = _build_plan(params, momentum_buffers, group_index, hyper, cfg)
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
    first_step: Sequence[bool],
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
) -> bool:
    """One torch.optim.SGD step on every tensor of ``params``, in place, LR from the device schedule.

    Args:
        params: the parameters to update (only those with a grad this step), contiguous, float16 /
            bfloat16 / float32 / float64, all on one device. Updated in place.
        grads: ``grads[i]`` is ``params[i]``'s gradient: same dtype, numel and device, contiguous.
        momentum_buffers: ``momentum_buffers[i]`` is ``params[i]``'s buffer. Required (allocated by
            the caller, e.g. ``torch.empty_like(p)``; its contents are ignored on the first step)
            when the tensor's group has momentum != 0, ignored (may be ``None``) otherwise. Updated
            in place.
        first_step: host bools, ``first_step[i]`` true when ``params[i]`` has no momentum history
            yet: the kernel sets ``buf = g`` (torch's clone of the grad, no dampening) instead of
            ``momentum * buf + (1 - dampening) * g``. The caller clears it after the call.
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
            the counter when it changes).
        ticket: int32 ``[1]`` zeros on the device, required with ``lr_out`` (one per optimizer).
        cache: where plans are kept; one per optimizer. ``None`` uses a module-level cache.

    Returns:
        True when a launch wrote back (``lr_out`` given and at least one non-empty tensor); when it
        returns False with ``lr_out`` given, the caller must advance the counter itself.

    Raises:
        RuntimeError: Triton cannot run on the tensors' device (CPU without ``TRITON_INTERPRET=1``,
            CUDA with it).
        ValueError / TypeError: inconsistent lists, devices, dtypes, sizes or layouts.
    """
    n = len(params)
    if not (len(grads) == len(momentum_buffers) == len(first_step) == len(group_index) == n):
        raise ValueError(
            f"params, grads, momentum_buffers, first_step and group_index must have one entry per "
            f"param: got {n}, {len(grads)}, {len(momentum_buffers)}, {len(first_step)}, {len(group_index)}"
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
        if ticket is None or ticket.dtype != torch.int32 or ticket.numel() != 1:
            raise ValueError("lr_out needs ticket: an int32 tensor with one element, zero")

    cache = _default_cache if cache is None else cache
    plan = cache.get(params, momentum_buffers, tuple(group_index), hyper)
    for t, what in ((desc, "desc"), (table, "table"), (step, "step")):
        if t.device != plan.device:
            raise ValueError(f"{what} is on {t.device}, params on {plan.device}")
    grad_key = tuple(map(Tensor.data_ptr, grads))
    if grad_key != plan.grad_key:
        _set_grads(plan, grads, params, grad_key)
    first_key = tuple(map(bool, first_step))
    if first_key != plan.first_key:
        _set_first_step(plan, first_key)
    return launch_plan(plan, desc, table, step, advance=advance, lr_out=lr_out, ticket=ticket, n_groups=len(hyper))


def plan_for(cache: SGDPlanCache, params, momentum_buffers, group_index, hyper) -> _Plan:
    """The cached plan of this exact parameter set (what ``triton_sgd_step`` would launch)."""
    return cache.get(params, momentum_buffers, tuple(group_index), tuple(hyper))


def set_plan_grads(plan: _Plan, grads: Sequence[Tensor], params: Sequence[Tensor], grad_key: tuple[int, ...]) -> None:
    """Point ``plan`` at these grads (checked: device, dtype, numel, contiguity) if they moved."""
    if grad_key != plan.grad_key:
        _set_grads(plan, grads, params, grad_key)


def clear_first_steps(plan: _Plan) -> None:
    """Mark every tensor of ``plan`` as past its first momentum step."""
    no_first = (False,) * sum(len(launch.positions) for launch in plan.launches)
    if plan.first_key != no_first:
        _set_first_step(plan, no_first)


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
) -> bool:
    """Launch ``plan`` (grads and first-step flags already set); see ``triton_sgd_step``."""
    cfg = _launch_config()
    dtype_map = _torch_to_triton_dtype()
    desc = desc if desc.is_contiguous() else desc.contiguous()
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
            launch.first_step,
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
            DTYPE=dtype_map[launch.dtype],
            COMPUTE_DTYPE=_sgd_kernels.compute_dtype(dtype_map[launch.dtype]),
            ALIGNED=launch.static_aligned and launch.grads_aligned,
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
}


def kernel_specializations() -> list[dict[str, Any]]:
    """Every (kernel, constexpr) combination ``triton_sgd_step`` can launch, at the production
    launch configuration, as ``dict(name, fn, signature, constexprs, options, dtype, aligned)``:
    ready for ``triton.compile(triton.compiler.ASTSource(fn, signature, constexprs), target=...,
    options=options)``.
    """
    if _sgd_kernels is None:
        return []
    cfg = _sgd_kernels.launch_config()
    specs = []
    for torch_dtype, tl_dtype in _torch_to_triton_dtype().items():
        for aligned in (True, False):
            constexprs = {
                "DTYPE": tl_dtype,
                "COMPUTE_DTYPE": _sgd_kernels.compute_dtype(tl_dtype),
                "ALIGNED": aligned,
                "BLOCK_SIZE": cfg["BLOCK_SIZE"],
                "CHUNK_BLOCKS": cfg["CHUNK_BLOCKS"],
            }
            signature = dict(_SGD_SIGNATURE)
            signature.update({k: "constexpr" for k in constexprs})
            specs.append(
                dict(
                    name=f"sgd_kernel[{tl_dtype}, ALIGNED={aligned}]",
                    fn=_sgd_kernels.sgd_kernel,
                    signature=signature,
                    constexprs=constexprs,
                    options={"num_warps": cfg["num_warps"], "enable_fp_fusion": cfg["enable_fp_fusion"]},
                    dtype=torch_dtype,
                    aligned=aligned,
                )
            )
    return specs

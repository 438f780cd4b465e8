"""SGD's functional forms: ``sgd`` (torch ops), ``sgd_loop`` (torch's for-loop) and ``sgd_triton`` (the kernel).

All three take torch's ``sgd(params, grads, momentum_buffers, *, lr, weight_decay, momentum,
dampening, nesterov, maximize)`` keywords; ``lr`` is where each reads the learning rate: a device
tensor (``sgd``), a float or a device tensor (``sgd_loop``), the device schedule (``sgd_triton``,
which computes it in the kernel). This module also registers SGD's kernel spec with the engine.

The torch path. ``sgd`` applies one SGD step to a list of tensors that share one parameter group's
hyper-parameters, with the learning rate given as a float64 tensor on the parameters' device
(a view into the optimizer's LR buffer, written by the device schedule). It never reads that tensor
back to the host on an accelerator.

Primitive: ``torch._fused_sgd_`` (the kernel behind ``torch.optim.SGD(fused=True)``), which exists
for CPU and CUDA and accepts a tensor LR. On CPU it reads the LR tensor on the host, which costs no
sync there. On CUDA it reads the LR from device memory as float32, so a float32 copy of the LR is
passed. Complex tensors go through ``torch.view_as_real``: every SGD operation is elementwise and
linear, so the real view gives exactly torch's complex result.

Exception: float16 / bfloat16 tensors on CPU. torch 2.13's CPU fused SGD kernel is wrong for them
(with or without momentum, on tensors of 16 elements or more: errors of ~0.4 on unit-scale values
after one step, against torch's own for-loop; tests/test_sgd_parity.py shows it), so they take
torch's for-loop algorithm instead (torch.optim.SGD's CPU default), op for op, with the LR read on
the host (free on CPU).

Layouts: the fused kernel walks each tensor as ``numel`` elements from its data pointer, which is
right only when parameter, gradient and buffer are dense with the same strides
(``fused_lr._layout.flat_ok``: channels_last and transposed tensors are). On CPU the kernel does it
for any layout: a sliced column's update lands on its neighbours (tests/test_layouts.py shows it).
So on CPU every other layout (non-dense views, gradients with other strides, expanded gradients)
takes the for-loop, which follows strides. On CUDA the kernel refuses such tensors, and the
for-loop would read the LR on the host (a sync): there they are updated through dense stand-ins
(``fused_lr._layout.flat_stand_ins``): copies in the parameter's layout, updated by the kernel, copied back.

Momentum buffers are created in the parameter's layout (``empty_like(param)``, as torch's fused SGD
makes them), dense even for a non-dense parameter. torch's for-loop clones the gradient instead;
autograd gives a dense parameter's gradient the parameter's strides, so the two agree in training,
and the values are the same copy either way. Only the parameter's layout keeps a parameter whose
gradient once had other strides (assigned by hand) on the flat path afterwards.

Momentum buffers follow torch: a parameter's first step with momentum sets ``buf = grad`` (after
maximize and weight decay). ``torch._fused_sgd_`` takes one ``is_first_step`` flag per call, so
tensors that already have a buffer and tensors stepping for the first time (a parameter that was
frozen, then unfrozen) are sent in two calls; stock fused SGD cannot mix them in one group.

The Triton path. ``sgd_triton`` updates the tensors of any number of groups in one launch per dtype
through the engine (``fused_lr.engine``) and ``kernels/sgd.py``: SGD's kernel spec names the
momentum buffers as its one state list and the columns of its hyper row (``hyper_row``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import _device, engine
from .._layout import contiguous_present, flat_ok, flat_stand_ins, real_view

__all__ = ["sgd", "sgd_loop", "sgd_triton", "SGD_KERNEL", "hyper_row", "takes_single_call"]

# Dtypes the stock fused kernel handles (AT_DISPATCH_FLOATING_TYPES_AND2(Half, BFloat16)).
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# (device type, dtype) pairs where torch._fused_sgd_ is wrong and the for-loop algorithm is used.
_FUSED_BROKEN = {("cpu", torch.float16), ("cpu", torch.bfloat16)}


def sgd_loop(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor | None],
    *,
    lr: float | Tensor,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
) -> list[Tensor]:
    """torch.optim.SGD's for-loop (its CPU default) op for op; the user's grads are never modified.

    Op for op matters in half precision: torch's foreach kernels round differently from the
    for-loop on some shapes (a 0-dim float16 buffer came out 1 ulp apart), and the for-loop is
    what torch.optim.SGD runs on CPU. It serves sparse gradients too (FusedSGD's sparse route): every op
    here takes them as torch's for-loop does.

    ``lr``: a float (torch's ``p.add_(g, alpha=-lr)``), or a 0-dim tensor on the params' device,
    applied as ``p.add_(g * -lr)`` without reading it on the host (``alpha`` would: a sync on an
    accelerator). The tensor form rounds ``g * lr`` to the grad's dtype before the add, so it may
    differ from the ``alpha`` form by about an ulp per step (FusedSGD uses it off CPU only).
    """
    out_bufs: list[Tensor] = []
    for i, (p, g) in enumerate(zip(params, grads)):
        g = g if not maximize else -g
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        if momentum != 0:
            b = bufs[i]
            if b is None:
                # torch clones g; the same values in the parameter's layout (see the module docstring).
                b = (torch.clone(g) if g.is_sparse else  # a sparse buffer, as torch's
                     torch.empty_like(p, memory_format=torch.preserve_format).copy_(g)).detach()
            else:
                b.mul_(momentum).add_(g, alpha=1 - dampening)
            out_bufs.append(b)
            g = g.add(b, alpha=momentum) if nesterov else b
        if isinstance(lr, Tensor):
            p.add_(g * -lr)
        else:
            p.add_(g, alpha=-lr)
    return out_bufs


def _foreach_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor | None],
    *,
    lr: Tensor,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
) -> list[Tensor]:
    """torch.optim.SGD's foreach algorithm with a tensor LR, for code traced by torch.compile.

    ``torch._fused_sgd_`` has no fake (meta) implementation in torch 2.13, so backends that trace
    through AOTAutograd (inductor, aot_eager) cannot compile it; these foreach ops they can, and
    inductor fuses them. The LR stays a graph input (``grads * -lr``, as stock SGD does when
    compiled with a tensor LR), so a new LR never recompiles. The user's grads are not modified.
    """
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    out: list[Tensor] = []
    if momentum != 0:
        old = [i for i, b in enumerate(bufs) if b is not None]
        if old:
            old_bufs = [bufs[i] for i in old]
            torch._foreach_mul_(old_bufs, momentum)
            torch._foreach_add_(old_bufs, [grads[i] for i in old], alpha=1 - dampening)
        out = [g.detach().clone() if b is None else b for g, b in zip(grads, bufs)]  # first step: buf = grad
        grads = torch._foreach_add(grads, out, alpha=momentum) if nesterov else out
    torch._foreach_add_(params, torch._foreach_mul(grads, -lr))
    return out


def _fused_call(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    *,
    lr: Tensor,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    is_first_step: bool,
    found_inf: Tensor | None = None,
) -> None:
    """``torch._fused_sgd_`` over tensors of any dtypes and layouts (see ``fused_lr._layout.flat_stand_ins``)."""
    if not params:
        return
    copy_back: list[tuple[Tensor, Tensor]] = []
    # Group by dtype: the fused kernel takes one dtype per call.
    by_dtype: dict[torch.dtype, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
    for i, p in enumerate(params):
        g, b = grads[i], (bufs[i] if bufs else None)
        if not flat_ok(p, g, b):
            p, g, (b,) = flat_stand_ins(p, g, [b], copy_back)
        entry = by_dtype.setdefault(p.dtype, ([], [], []))
        entry[0].append(p)
        entry[1].append(g)
        if bufs:
            entry[2].append(b)
    for ps, gs, bs in by_dtype.values():
        torch._fused_sgd_(
            ps,
            gs,
            bs,
            weight_decay=weight_decay,
            momentum=momentum,
            lr=lr,
            dampening=dampening,
            nesterov=nesterov,
            maximize=maximize,
            is_first_step=is_first_step,
            found_inf=found_inf,
        )
    for original, stand_in in copy_back:
        original.copy_(stand_in)


def sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor | None],
    *,
    lr: Tensor,
    weight_decay: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    uniform: bool = False,
    found_inf: Tensor | None = None,
) -> list[Tensor]:
    """One SGD step over ``params`` (one group, one device), in place.

    Args:
        params, grads: equal-length lists; grads dense, same shape/dtype/device as their params.
        momentum_buffers: one entry per param when ``momentum != 0`` (``None`` where the param has
            no buffer yet), else an empty list.
        lr: float64 tensor with one element on the params' device.
        found_inf: float32 one-element tensor, 1.0 to skip the step on the device (torch's fused
            kernel skips on exactly 1.0), or None. CUDA only, and only when every momentum
            buffer exists (a skipped first step would leave a new buffer unwritten): FusedSGD
            reads found_inf on the host instead in the other cases.
        uniform: the caller guarantees every param has one real dtype that the fused kernel
            handles correctly on this device (no complex, no split needed): with every momentum
            buffer present this is one direct kernel call, the steady-state fast path.

    Returns:
        The momentum buffers after the step (newly created ones included), in ``params`` order;
        an empty list when ``momentum == 0``.
    """
    if not params:
        return []
    on_cpu = _device.host_reads_free(lr.device)  # (the CUDA branch elsewhere: the LR stays on the device)
    if found_inf is not None and (on_cpu or any(b is None for b in momentum_buffers)):
        raise ValueError("sgd takes found_inf only on CUDA with every momentum buffer present")
    if torch.compiler.is_compiling():
        if found_inf is not None:
            raise NotImplementedError(
                "a device-side AMP skip (found_inf) inside torch.compile is not supported on the torch path; "
                "call GradScaler.step(opt) outside the compiled region"
            )
        return _foreach_sgd(
            params, grads, momentum_buffers if momentum != 0 else [], lr=lr.reshape(()), weight_decay=weight_decay,
            momentum=momentum, dampening=dampening, nesterov=nesterov, maximize=maximize,
        )
    bufs = momentum_buffers if momentum != 0 else []
    # The kernel reads a tensor LR as float32 on an accelerator (float64 on CPU): a float32 LR
    # (FusedSGD's persistent float32 LR buffer) is passed as it is, anything else converted.
    lr_arg = lr.reshape(()) if on_cpu or lr.dtype == torch.float32 else lr.reshape(()).to(torch.float32)
    # (Contiguous tensors of one shape share their strides: the kernel may walk them flat.)
    if uniform and contiguous_present(params, grads, bufs):
        torch._fused_sgd_(
            params,
            grads,
            momentum_buffers if momentum != 0 else [],
            weight_decay=float(weight_decay),
            momentum=float(momentum),
            lr=lr_arg,
            dampening=float(dampening),
            nesterov=bool(nesterov),
            maximize=bool(maximize),
            is_first_step=False,
            found_inf=found_inf,
        )
        return momentum_buffers if momentum != 0 else []
    # Split: on CPU (where reading the LR on the host costs no sync) the dtypes the fused kernel
    # gets wrong and the layouts it cannot walk flat take the for-loop algorithm.
    loop = [
        on_cpu and ((p.device.type, p.dtype) in _FUSED_BROKEN or not flat_ok(p, g, bufs[i] if bufs else None))
        for i, (p, g) in enumerate(zip(params, grads))
    ]
    if any(loop):
        idx_bad = [i for i, b in enumerate(loop) if b]
        idx_ok = [i for i, b in enumerate(loop) if not b]
        kw = dict(weight_decay=weight_decay, momentum=momentum, dampening=dampening, nesterov=nesterov, maximize=maximize)
        bad_bufs = sgd_loop(
            [params[i] for i in idx_bad],
            [grads[i] for i in idx_bad],
            [momentum_buffers[i] for i in idx_bad] if momentum != 0 else [None] * len(idx_bad),
            lr=float(lr),
            **kw,
        )
        ok_bufs = sgd(
            [params[i] for i in idx_ok],
            [grads[i] for i in idx_ok],
            [momentum_buffers[i] for i in idx_ok] if momentum != 0 else [],
            lr=lr,
            **kw,
        )
        if momentum == 0:
            return []
        merged: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
        for i, b in zip(idx_bad, bad_bufs):
            merged[i] = b
        for i, b in zip(idx_ok, ok_bufs):
            merged[i] = b
        return merged
    hp = dict(
        lr=lr_arg,
        weight_decay=float(weight_decay),
        momentum=float(momentum),
        dampening=float(dampening),
        nesterov=bool(nesterov),
        maximize=bool(maximize),
    )
    if momentum == 0:
        _fused_call([real_view(p) for p in params], [real_view(g) for g in grads], [], is_first_step=False,
                    found_inf=found_inf, **hp)
        return []

    out_bufs: list[Tensor] = []
    old_p, old_g, old_b = [], [], []
    new_p, new_g, new_b = [], [], []
    for p, g, b in zip(params, grads, momentum_buffers, strict=True):
        if b is None:
            b = torch.empty_like(p, memory_format=torch.preserve_format)
            new_p.append(real_view(p))
            new_g.append(real_view(g))
            new_b.append(real_view(b))
        else:
            old_p.append(real_view(p))
            old_g.append(real_view(g))
            old_b.append(real_view(b))
        out_bufs.append(b)
    _fused_call(old_p, old_g, old_b, is_first_step=False, found_inf=found_inf, **hp)
    _fused_call(new_p, new_g, new_b, is_first_step=True, **hp)
    return out_bufs


def takes_single_call(params: list[Tensor]) -> bool:
    """One real dtype that the stock fused kernel handles correctly: ``sgd``'s single-call fast
    path (its ``uniform``) may apply to these parameters."""
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        return False
    (dtype,) = dtypes
    return dtype in FUSED_DTYPES and (params[0].device.type, dtype) not in _FUSED_BROKEN


# --- The Triton path ----------------------------------------------------------------------------


def hyper_row(momentum: float, dampening: float, weight_decay: float, nesterov: bool, maximize: bool,
              momentum_row: int = -1) -> tuple[float, ...]:
    """One group's row of SGD's hyper table, in ``SGD_KERNEL.hyper_columns`` order. ``momentum_row``
    >= 0: the kernel takes the momentum from that schedule row at each step (CyclicLR / OneCycleLR
    cycling it); ``momentum`` is then only a nonzero marker that the group keeps buffers."""
    # torch computes 1 - dampening in Python (float64) and rounds it once to the opmath type.
    return (float(momentum), 1.0 - float(dampening), float(weight_decay), 1.0 if nesterov else 0.0,
            1.0 if maximize else 0.0, float(momentum_row))


_COLUMNS = ("momentum", "one_minus_dampening", "weight_decay", "nesterov", "maximize", "momentum_row")
_MOMENTUM, _MOMENTUM_ROW = _COLUMNS.index("momentum"), _COLUMNS.index("momentum_row")

SGD_KERNEL = engine.register(engine.KernelSpec(
    name="sgd",
    module="fused_lr.kernels.sgd",
    kernel="sgd_kernel",
    state_lists=("momentum_buffer",),
    hyper_columns=_COLUMNS,
    keeps_state=lambda row: row[_MOMENTUM] != 0,  # the group has buffers
    zero_state=lambda row: row[_MOMENTUM_ROW] >= 0,  # a cycled momentum may be 0 on a step: its buffer stays unwritten
))


def sgd_triton(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor | None],
    *,
    lr: engine.DeviceLR,
    weight_decay: float | Sequence[float],
    momentum: float | Sequence[float],
    dampening: float | Sequence[float],
    nesterov: bool | Sequence[bool],
    maximize: bool | Sequence[bool],
    momentum_row: int | Sequence[int] | None = None,
    group_index: Sequence[int] | None = None,
    first_flags: Tensor,
    flag_slots: Sequence[int],
    ticket: Tensor,
    cache: engine.PlanCache,
    clear_first: bool = True,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    clip: engine.ClipSpec | None = None,
) -> bool:
    """One torch.optim.SGD step of every tensor of ``params``, in place, in one launch per dtype,
    each group's LR computed in the kernel from the device schedule ``lr``.

    ``group_index`` None: one group, and the hyper-parameters are numbers. Otherwise
    ``group_index[i]`` is ``params[i]``'s group, and each hyper-parameter holds one value per group
    (``momentum_row``, see ``hyper_row``, may be None: no group cycles its momentum).
    ``momentum_buffers[i]`` is required (allocated with the param's strides; its contents ignored
    while ``first_flags[flag_slots[i]]`` is set: ``buf = g``) where the group's momentum is nonzero.
    The remaining arguments are the engine's (``fused_lr.engine.multi_tensor_update``). Returns
    whether a launch wrote back the schedule (``lr.lr_out`` given).
    """
    hypers = (momentum, dampening, weight_decay, nesterov, maximize)
    if group_index is None:
        group_index = [0] * len(params)
        columns = [[v] for v in hypers] + [[-1 if momentum_row is None else momentum_row]]
    else:
        columns = [list(v) for v in hypers]
        columns.append([-1] * len(columns[0]) if momentum_row is None else list(momentum_row))
    if len({len(c) for c in columns}) != 1:
        raise ValueError(f"every hyper-parameter must hold one value per group, got {[len(c) for c in columns]}")
    rows = [hyper_row(*values) for values in zip(*columns)]
    return engine.multi_tensor_update(
        SGD_KERNEL, params, grads, [momentum_buffers], group_index, rows, lr,
        ticket=ticket, first_flags=first_flags, flag_slots=flag_slots, cache=cache, clear_first=clear_first,
        grad_scale=grad_scale, found_inf=found_inf, clip=clip,
    )


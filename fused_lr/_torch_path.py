"""The pure-PyTorch update path: torch.optim.SGD's algorithm on the fastest stock primitive.

``sgd_torch`` applies one SGD step to a list of tensors that share one parameter group's
hyper-parameters, with the learning rate given as a float64 tensor on the parameters' device
(a view into the optimizer's LR buffer, written by the device schedule). It never reads that tensor
back to the host on an accelerator.

Primitive: ``torch._fused_sgd_`` (the kernel behind ``torch.optim.SGD(fused=True)``), which exists
for CPU and CUDA and accepts a tensor LR. On CPU it reads the LR tensor on the host, which costs no
sync there. On CUDA it reads the LR from device memory as float32, so a float32 copy of the LR is
passed. Complex tensors go through ``torch.view_as_real``: every SGD operation is elementwise and
linear, so the real view gives exactly torch's complex result.

Momentum buffers follow torch: a parameter's first step with momentum sets ``buf = grad`` (after
maximize and weight decay). ``torch._fused_sgd_`` takes one ``is_first_step`` flag per call, so
tensors that already have a buffer and tensors stepping for the first time (a parameter that was
frozen, then unfrozen) are sent in two calls; stock fused SGD cannot mix them in one group.
"""

from __future__ import annotations

from torch import Tensor
import torch

__all__ = ["sgd_torch", "FUSED_DTYPES"]

# Dtypes the stock fused kernel handles (AT_DISPATCH_FLOATING_TYPES_AND2(Half, BFloat16)).
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


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
) -> None:
    if not params:
        return
    # Group by dtype: the fused kernel takes one dtype per call.
    by_dtype: dict[torch.dtype, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
    for i, p in enumerate(params):
        entry = by_dtype.setdefault(p.dtype, ([], [], []))
        entry[0].append(p)
        entry[1].append(grads[i])
        if bufs:
            entry[2].append(bufs[i])
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
        )


def sgd_torch(
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
) -> list[Tensor]:
    """One SGD step over ``params`` (one group, one device), in place.

    Args:
        params, grads: equal-length lists; grads dense, same shape/dtype/device as their params.
        momentum_buffers: one entry per param when ``momentum != 0`` (``None`` where the param has
            no buffer yet), else an empty list.
        lr: float64 tensor with one element on the params' device.

    Returns:
        The momentum buffers after the step (newly created ones included), in ``params`` order;
        an empty list when ``momentum == 0``.
    """
    if not params:
        return []
    if lr.device.type == "cpu":
        lr_arg = lr.reshape(())
    else:
        # The CUDA fused kernel reads its tensor LR as float32 from device memory.
        lr_arg = lr.reshape(()).to(torch.float32)
    hp = dict(
        lr=lr_arg,
        weight_decay=float(weight_decay),
        momentum=float(momentum),
        dampening=float(dampening),
        nesterov=bool(nesterov),
        maximize=bool(maximize),
    )
    if momentum == 0:
        _fused_call([_real(p) for p in params], [_real(g) for g in grads], [], is_first_step=False, **hp)
        return []

    out_bufs: list[Tensor] = []
    old_p, old_g, old_b = [], [], []
    new_p, new_g, new_b = [], [], []
    for p, g, b in zip(params, grads, momentum_buffers, strict=True):
        if b is None:
            b = torch.empty_like(p, memory_format=torch.preserve_format)
            new_p.append(_real(p))
            new_g.append(_real(g))
            new_b.append(_real(b))
        else:
            old_p.append(_real(p))
            old_g.append(_real(g))
            old_b.append(_real(b))
        out_bufs.append(b)
    _fused_call(old_p, old_g, old_b, is_first_step=False, **hp)
    _fused_call(new_p, new_g, new_b, is_first_step=True, **hp)
    return out_bufs

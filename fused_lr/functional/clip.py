"""AMP unscaling and gradient clipping in torch ops, shared by every optimizer's torch path.

The update never writes the user's gradients. With a ``grad_scale`` and/or a clipping coefficient,
``scaled_grads`` makes one temporary copy, ``(g / grad_scale) * clip_coef`` (each op rounded once to
the grad's dtype, as GradScaler.unscale_ followed by clip_grad_norm_ round), and the update runs on
it. (Passing ``grad_scale`` to ``torch._fused_sgd_`` instead would write the unscaled gradient back
into ``p.grad``.) The Triton path needs no temporary: its kernel unscales and clips in registers;
``grad_norm_torch`` serves it for the gradients its kernels do not take.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["norm_dtype", "grad_norm_torch", "scaled_grads"]


def norm_dtype(grads: list[Tensor]) -> torch.dtype:
    """The dtype of the total gradient norm: float64 when a gradient is float64 / complex128
    (torch's clip_grad_norm_ stacks the per-tensor norms, which promotes), else float32. (torch
    keeps float16 / bfloat16 norms in half precision, where AMP-scaled norms overflow; fused_lr
    accumulates and returns them in float32.)"""
    return torch.float64 if any(g.dtype in (torch.float64, torch.complex128) for g in grads) else torch.float32


def grad_norm_torch(grads: list[Tensor], norm_inf: bool) -> Tensor:
    """Total norm of ``grads`` (0-dim, ``norm_dtype(grads)``), torch.nn.utils.get_total_norm's
    formula: per-tensor norms (``torch._foreach_norm``, accumulated in float32 / float64), then
    the norm of their stack. Device ops only: no host sync. NaN anywhere gives NaN, inf gives inf."""
    ord_ = float("inf") if norm_inf else 2.0
    out = norm_dtype(grads)
    if not grads:
        return torch.zeros((), dtype=out)
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    norms: list[Tensor] = []
    for dtype, gs in by_dtype.items():
        if dtype.is_complex:
            # |z| per element (the real view's inf-norm would be max(|re|, |im|)); float32/64 result.
            norms.extend(torch._foreach_norm(gs, ord_))
        else:
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            norms.extend(torch._foreach_norm(gs, ord_, dtype=acc))
    return torch.linalg.vector_norm(torch.stack([n.to(out) for n in norms]), ord_)


def scaled_grads(grads: list[Tensor], grad_scale: Tensor | None, clip_coef: Tensor | None) -> list[Tensor]:
    """New tensors ``(g / grad_scale) * clip_coef`` in each grad's dtype; the grads are not modified."""
    out = list(grads)
    if grad_scale is not None:
        out = list(torch._foreach_div(out, grad_scale))
    if clip_coef is not None:
        if grad_scale is not None:
            torch._foreach_mul_(out, clip_coef)
        else:
            out = list(torch._foreach_mul(out, clip_coef))
    # A 0-dim gradient and a 0-dim scale promote (float16 / 1-element float32 -> float32): the
    # value was computed in float32 either way, so casting back is the same single rounding.
    return [o if o.dtype == g.dtype else o.to(g.dtype) for o, g in zip(out, grads)]

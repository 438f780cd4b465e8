"""Adam's and AdamW's functional forms: ``adamw`` (torch ops) and ``adamw_triton`` (the kernel).

Both take torch's ``adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *,
amsgrad, beta1, beta2, lr, weight_decay, eps, maximize, decoupled_weight_decay)`` arguments
(``decoupled_weight_decay=True`` is AdamW, False Adam's L2 term); ``lr`` is where each reads the
learning rate: a device tensor (``adamw``), the device schedule (``adamw_triton``, which computes
it in the kernel, and the bias corrections from each tensor's step count). This module also
registers Adam's kernel spec with the engine. torch's own for-loop (``torch.optim.adam.adam``)
serves ``differentiable=True`` and is the reference the tests compare against.

The torch path. ``adamw`` applies one step to the tensors of one parameter group, with the learning
rate given as a float64 tensor on the parameters' device (a view into the optimizer's LR buffer,
written by the device schedule). It never reads that tensor back to the host on an accelerator.

Primitive: ``torch._fused_adamw_`` / ``torch._fused_adam_`` (the kernels behind
``torch.optim.AdamW(fused=True)``), which exist for CPU and CUDA, take a tensor LR and read each
tensor's step count from its ``state_steps`` tensor. On CPU the kernel reads the LR tensor on the
host (no sync exists there) and takes float64; on CUDA it reads it from device memory as float32,
so a float32 copy is passed. Unlike torch's fused SGD, torch 2.13's CPU fused Adam is right for
float16 / bfloat16 (it computes in float32; checked against a float32 for-loop in
tests/test_adamw_parity.py). Complex tensors go through ``torch.view_as_real``, as torch's own
Adam handles them: every operation is elementwise on the real and imaginary parts.

Step counts: as torch's fused Adam, ``state_steps`` (float32 one-element tensors on the parameters'
device) are incremented with one foreach add before the kernel, and on CUDA a step the kernel
skips on the device (``found_inf``) subtracts ``found_inf`` again, so that a skipped step does not
count. New state (``None`` entries) is created as torch creates it: zeros in the parameter's layout
and a zero step count.

Layouts: the fused kernel walks each tensor as ``numel`` elements from its data pointer, which is
right only when parameter, gradient and moments are dense with the same strides
(``fused_lr._layout.flat_ok``). Other layouts are updated through dense stand-ins: copies in the
parameter's layout, updated by the kernel, copied back (exact: copies do not round).

Inside ``torch.compile``: ``torch._fused_adamw_``'s tensor-LR overload has no fake (meta)
implementation in torch 2.13, so traced steps run ``_foreach_adamw``, torch's capturable foreach
algorithm with the LR as a graph input, which inductor fuses.

The Triton path. ``adamw_triton`` updates the tensors of any number of groups in one launch per
dtype through the engine (``fused_lr.engine``) and ``kernels/adamw.py``: the kernel spec names the
moments as its state lists (``max_exp_avg_sq`` kept only in amsgrad groups), the step counts as its
scalar state, and the columns of its hyper row (``hyper_row``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import _device, engine
from .._layout import contiguous_present, flat_ok, flat_stand_ins, real_view

__all__ = ["adamw", "adamw_triton", "ADAMW_KERNEL", "hyper_row", "takes_single_call"]

# Dtypes the stock fused kernel handles (AT_DISPATCH_FLOATING_TYPES_AND2(Half, BFloat16)).
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def new_states(params: Sequence[Tensor], exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad: bool):
    """The four state lists with torch's initial state where an entry is None: zero moments in
    the parameter's layout (``max_exp_avg_sq`` only with amsgrad) and a zero float32 step count on
    the parameter's device. Returns new lists; existing tensors are kept."""
    def fill(xs, make):
        return [make(p) if x is None else x for p, x in zip(params, xs)]

    def zeros(p):
        return torch.zeros_like(p, memory_format=torch.preserve_format)

    return (
        fill(exp_avgs, zeros),
        fill(exp_avg_sqs, zeros),
        fill(max_exp_avg_sqs, zeros) if amsgrad else [None] * len(params),
        fill(state_steps, lambda p: torch.zeros((), dtype=torch.float32, device=p.device)),
    )


def _foreach_adamw(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr: Tensor, beta1: float,
                   beta2: float, eps: float, weight_decay: float, amsgrad: bool, maximize: bool,
                   decoupled_weight_decay: bool) -> None:
    """torch's capturable foreach Adam algorithm (``_multi_tensor_adam`` with ``capturable=True``),
    in place, for code traced by torch.compile: the LR and the step counts stay tensors, so a new
    LR never recompiles; the user's grads are not modified. ``state_steps`` are already incremented."""
    params, grads, exp_avgs, exp_avg_sqs = ([real_view(t) for t in ts] for ts in (params, grads, exp_avgs, exp_avg_sqs))
    if amsgrad:
        max_exp_avg_sqs = [real_view(t) for t in max_exp_avg_sqs]
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        if decoupled_weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    bias_correction1 = torch._foreach_pow(beta1, state_steps)
    bias_correction2 = torch._foreach_pow(beta2, state_steps)
    torch._foreach_sub_(bias_correction1, 1)  # beta1 ** t - 1 = -(bias correction 1)
    torch._foreach_sub_(bias_correction2, 1)
    torch._foreach_neg_(bias_correction2)
    torch._foreach_div_(bias_correction1, lr)
    torch._foreach_reciprocal_(bias_correction1)  # -lr / (1 - beta1 ** t): the negated step size
    torch._foreach_sqrt_(bias_correction2)
    if amsgrad:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        denom = torch._foreach_sqrt(max_exp_avg_sqs)
    else:
        denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(denom, bias_correction1)
    torch._foreach_addcdiv_(params, exp_avgs, denom)


def _fused_calls(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, amsgrad: bool,
                 decoupled_weight_decay: bool, found_inf: Tensor | None, **hp) -> None:
    """``torch._fused_adam(w)_`` over tensors of any dtypes and layouts (one call per dtype)."""
    fn = torch._fused_adamw_ if decoupled_weight_decay else torch._fused_adam_
    copy_back: list[tuple[Tensor, Tensor]] = []
    by_dtype: dict[torch.dtype, list[list[Tensor]]] = {}
    for i, p in enumerate(params):
        g, moments = grads[i], [exp_avgs[i], exp_avg_sqs[i], max_exp_avg_sqs[i] if amsgrad else None]
        if not all(flat_ok(p, g, s) for s in moments):
            p, g, moments = flat_stand_ins(p, g, moments, copy_back)
        lists = by_dtype.setdefault(real_view(p).dtype, [[], [], [], [], [], []])
        for k, t in enumerate((p, g, *moments, state_steps[i])):
            if t is not None:
                lists[k].append(real_view(t) if k < 5 else t)
    for ps, gs, ms, vs, vmaxs, steps in by_dtype.values():
        fn(ps, gs, ms, vs, vmaxs, steps, amsgrad=amsgrad, found_inf=found_inf, **hp)
    for original, stand_in in copy_back:
        original.copy_(stand_in)


def adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor | None],
    exp_avg_sqs: list[Tensor | None],
    max_exp_avg_sqs: list[Tensor | None],
    state_steps: list[Tensor | None],
    *,
    lr: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled_weight_decay: bool = True,
    uniform: bool = False,
    found_inf: Tensor | None = None,
) -> list[list[Tensor | None]]:
    """One Adam (``decoupled_weight_decay=False``) or AdamW step over ``params`` (one group, one
    device), in place.

    Args:
        params, grads: equal-length lists; grads dense, same shape/dtype/device as their params.
        exp_avgs, exp_avg_sqs, state_steps: one entry per param (``None`` where the param has no
            state yet); max_exp_avg_sqs likewise with amsgrad, ignored without it. Step counts
            are float32 one-element tensors on the params' device.
        lr: float64 tensor with one element on the params' device.
        found_inf: float32 one-element tensor, 1.0 to skip the step on the device (torch's fused
            kernel skips on exactly 1.0), or None. CUDA only (FusedAdam reads found_inf on the
            host elsewhere).
        uniform: the caller guarantees every param has one real dtype the fused kernel handles
            (no complex): with every state present and everything contiguous this is one direct
            kernel call, the steady-state fast path.

    Returns:
        The state lists after the step (``exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps``;
        new tensors included; ``max_exp_avg_sqs`` all None without amsgrad), in ``params`` order.
    """
    if found_inf is not None and _device.host_reads_free(lr.device):
        raise ValueError("adamw takes found_inf only on CUDA")
    if not params:
        return [[], [], [], []]
    states = new_states(params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, amsgrad)
    m, v, vmax, steps = states
    hp = dict(beta1=float(beta1), beta2=float(beta2), eps=float(eps), weight_decay=float(weight_decay),
              amsgrad=bool(amsgrad), maximize=bool(maximize), decoupled_weight_decay=bool(decoupled_weight_decay))
    if torch.compiler.is_compiling():
        if found_inf is not None:
            raise NotImplementedError(
                "a device-side AMP skip (found_inf) inside torch.compile is not supported on the torch path; "
                "call GradScaler.step(opt) outside the compiled region"
            )
        torch._foreach_add_(steps, 1)
        _foreach_adamw(params, grads, m, v, vmax, steps, lr=lr.reshape(()), **hp)
        return [m, v, vmax, steps]
    on_cpu = _device.host_reads_free(lr.device)  # (the CUDA branch elsewhere: the LR stays on the device)
    if on_cpu:
        # (foreach on CPU 0-dim tensors loops in C++; a tensor 1 avoids wrapping the scalar each time, as torch does.)
        torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)
        lr_arg = lr.reshape(())
    else:
        torch._foreach_add_(steps, 1)
        lr_arg = lr.reshape(()).to(torch.float32)  # the CUDA kernel reads a tensor LR as float32
    if uniform and contiguous_present(params, grads, m, v, vmax if amsgrad else ()):
        fn = torch._fused_adamw_ if decoupled_weight_decay else torch._fused_adam_
        fn(params, grads, m, v, vmax if amsgrad else [], steps, lr=lr_arg, beta1=hp["beta1"], beta2=hp["beta2"],
           weight_decay=hp["weight_decay"], eps=hp["eps"], amsgrad=hp["amsgrad"], maximize=hp["maximize"],
           found_inf=found_inf)
    else:
        _fused_calls(params, grads, m, v, vmax, steps, amsgrad=hp["amsgrad"],
                     decoupled_weight_decay=hp["decoupled_weight_decay"], found_inf=found_inf, lr=lr_arg,
                     beta1=hp["beta1"], beta2=hp["beta2"], weight_decay=hp["weight_decay"], eps=hp["eps"],
                     maximize=hp["maximize"])
    if found_inf is not None:
        torch._foreach_sub_(steps, [found_inf] * len(steps))  # a skipped step does not count (as torch)
    return [m, v, vmax, steps]


def takes_single_call(params: list[Tensor]) -> bool:
    """One real dtype that the stock fused kernel handles: ``adamw``'s single-call fast path (its
    ``uniform``) may apply to these parameters."""
    dtypes = {p.dtype for p in params}
    return len(dtypes) == 1 and next(iter(dtypes)) in FUSED_DTYPES


# --- The Triton path ----------------------------------------------------------------------------


def hyper_row(beta1: float, beta2: float, eps: float, weight_decay: float, amsgrad: bool, maximize: bool,
              decoupled_weight_decay: bool, beta1_row: int = -1) -> tuple[float, ...]:
    """One group's row of Adam's hyper table, in ``ADAMW_KERNEL.hyper_columns`` order. ``beta1_row``
    >= 0: the kernel takes beta1 from that schedule row at each step (CyclicLR / OneCycleLR cycling
    it); ``beta1`` is then not read."""
    return (float(beta1), float(beta2), float(eps), float(weight_decay), 1.0 if amsgrad else 0.0,
            1.0 if maximize else 0.0, 1.0 if decoupled_weight_decay else 0.0, float(beta1_row))


_COLUMNS = ("beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize", "decoupled", "beta1_row")
_STATE_LISTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_AMSGRAD, _MAX = _COLUMNS.index("amsgrad"), _STATE_LISTS.index("max_exp_avg_sq")

ADAMW_KERNEL = engine.register(engine.KernelSpec(
    name="adamw",
    module="fused_lr.kernels.adamw",
    kernel="adamw_kernel",
    state_lists=_STATE_LISTS,
    hyper_columns=_COLUMNS,
    # Zeros with step 0 are Adam's state before any step (torch's initial state).
    zero_state=lambda row: True,
    scalar_states=("step",),
    keeps_list=lambda row, k: k != _MAX or row[_AMSGRAD] != 0,  # max_exp_avg_sq: amsgrad groups only
))


def adamw_triton(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor | None],
    state_steps: Sequence[Tensor],
    *,
    lr: engine.DeviceLR,
    beta1: float | Sequence[float],
    beta2: float | Sequence[float],
    eps: float | Sequence[float],
    weight_decay: float | Sequence[float],
    amsgrad: bool | Sequence[bool],
    maximize: bool | Sequence[bool],
    decoupled_weight_decay: bool | Sequence[bool] = True,
    beta1_row: int | Sequence[int] | None = None,
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
    """One torch.optim.Adam / AdamW step of every tensor of ``params``, in place, in one launch per
    dtype, each group's LR computed in the kernel from the device schedule ``lr`` and each tensor's
    bias corrections from its step count, which the launch advances (not on a step AMP skips).

    ``group_index`` None: one group, and the hyper-parameters are numbers. Otherwise
    ``group_index[i]`` is ``params[i]``'s group, and each hyper-parameter holds one value per group
    (``beta1_row``, see ``hyper_row``, may be None: no group cycles beta1). Every state tensor is
    required (zeros and a zero count for a new one: Adam's initial state); ``max_exp_avg_sqs[i]``
    only where the group has amsgrad. The remaining arguments are the engine's
    (``fused_lr.engine.multi_tensor_update``). Returns whether a launch wrote back the schedule.
    """
    hypers = (beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay)
    if group_index is None:
        group_index = [0] * len(params)
        columns = [[v] for v in hypers] + [[-1 if beta1_row is None else beta1_row]]
    else:
        columns = [list(v) for v in hypers]
        columns.append([-1] * len(columns[0]) if beta1_row is None else list(beta1_row))
    if len({len(c) for c in columns}) != 1:
        raise ValueError(f"every hyper-parameter must hold one value per group, got {[len(c) for c in columns]}")
    rows = [hyper_row(*values) for values in zip(*columns)]
    return engine.multi_tensor_update(
        ADAMW_KERNEL, params, grads, [exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps], group_index, rows, lr,
        ticket=ticket, first_flags=first_flags, flag_slots=flag_slots, cache=cache, clear_first=clear_first,
        grad_scale=grad_scale, found_inf=found_inf, clip=clip,
    )

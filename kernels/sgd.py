"""torch.optim.SGD's update as a multi-tensor kernel, learning rate computed on the device: ``sgd_kernel``.

One launch updates every tensor of one dtype, across parameter groups; the engine
(``fused_lr.engine``) builds the address, size and chunk tables and launches it with the common
arguments of ``kernels/multi_tensor.py`` (SGD's one state list: the momentum buffers). Each program

1. takes its chunk of one tensor and the tensor's group, first-step flag and addresses
   (``chunk_of``, ``tensor_ptr``);
2. computes its group's learning rate with ``lr_at`` (float64) from the device step counter
   (``group_lr``: on a step's final launch the group's first program also stores it for
   ``param_groups[i]["lr"]``), and its momentum the same way when the schedule cycles momentum
   (hyper column HYPER_MOMENTUM_ROW);
3. applies torch.optim.SGD's update in torch's order to every element of the chunk::

       g = -g                     if maximize
       g = g + weight_decay * p   if weight_decay != 0
       if momentum != 0:
           buf = g                                          on the tensor's first step
           buf = momentum * buf + (1 - dampening) * g       otherwise
           g = g + momentum * buf  if nesterov  else  buf
       p = p - lr * g

4. finishes the launch through the shared ticket (``finish_launch``).

Gradient scaling (``SCALED=True``; AMP's GradScaler and fused gradient clipping): each program
reads ``found_inf`` and, when it is nonzero, stores nothing at all (parameters and momentum
buffers keep their values; the schedule's write-back still happens). Otherwise every gradient is
first unscaled and clipped in the arithmetic type, ``g = (g / grad_scale) * clip_coef`` (the bits
of an IEEE division, as torch's fused kernels divide), before the update above. The division runs
as a multiplication by ``1 / grad_scale`` when that gives the same bits (a power-of-two scale, as
GradScaler's are: ``amp_reciprocal``); the program then runs a second copy of the loop.

First-step flags live in device memory and are indexed through ``slots_ptr``, so a flag can
outlive a launch: with ``clear_first`` set, the last program to finish clears this launch's flags
*only when the update happened* (``found_inf == 0``). A first step skipped by AMP therefore leaves
the flag set, and the next real step is the tensor's first step (``buf = g``), as with
torch.optim.SGD's for-loop, which never creates the buffer on a skipped step.

Arithmetic is float32 for float16 / bfloat16 / float32 tensors (torch's "opmath" type, as in
torch's own fused SGD kernel: the unrounded float32 buffer feeds the nesterov term, and parameter
and buffer are rounded to storage once per step) and float64 for float64 tensors. bfloat16 is
rounded to nearest-even by ``round_to_bf16`` (the hardware conversion when compiled).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .multi_tensor import (
    UNSCALE_DIVIDE,
    UNSCALE_NONE,
    UNSCALE_RECIPROCAL,
    amp_reciprocal,
    amp_scaling,
    chunk_of,
    finish_launch,
    full_blocks,
    group_lr,
    round_to_bf16,
    tensor_ptr,
    unscale,
)
from .schedule import lr_at

__all__ = [
    "HYPER_WIDTH",
    "HYPER_MOMENTUM",
    "HYPER_ONE_MINUS_DAMPENING",
    "HYPER_WEIGHT_DECAY",
    "HYPER_NESTEROV",
    "HYPER_MAXIMIZE",
    "HYPER_MOMENTUM_ROW",
    "sgd_kernel",
]

# Columns of the per-group hyper-parameter table (float64 [groups, HYPER_WIDTH]); the SGD kernel
# spec (fused_lr.functional.sgd) names them in this order, and the engine checks the two agree.
HYPER_WIDTH = 8
HYPER_MOMENTUM = 0
HYPER_ONE_MINUS_DAMPENING = 1  # 1 - dampening, computed on the host in float64 as torch does
HYPER_WEIGHT_DECAY = 2
HYPER_NESTEROV = 3  # 1.0 or 0.0
HYPER_MAXIMIZE = 4  # 1.0 or 0.0
HYPER_MOMENTUM_ROW = 5  # -1, or the schedule row whose value is the group's momentum (CyclicLR/OneCycleLR)
# The same values as compile-time constants for the kernel (jit code reads only constexpr globals).
_HYPER_WIDTH = tl.constexpr(HYPER_WIDTH)
_HYPER_MOMENTUM = tl.constexpr(HYPER_MOMENTUM)
_HYPER_ONE_MINUS_DAMPENING = tl.constexpr(HYPER_ONE_MINUS_DAMPENING)
_HYPER_WEIGHT_DECAY = tl.constexpr(HYPER_WEIGHT_DECAY)
_HYPER_NESTEROV = tl.constexpr(HYPER_NESTEROV)
_HYPER_MAXIMIZE = tl.constexpr(HYPER_MAXIMIZE)
_HYPER_MOMENTUM_ROW = tl.constexpr(HYPER_MOMENTUM_ROW)


@triton.jit
def _sgd_block(
    p_ptr,  # *DTYPE: the parameter's first element
    g_ptr,  # *DTYPE: the gradient's first element
    b_ptr,  # *DTYPE: the momentum buffer's first element (null when use_buf is false)
    offs,  # int64 [BLOCK_SIZE]: element offsets of this block
    end,  # int64 scalar: elements below this offset are updated (the rest is masked off)
    lr,  # compute-type scalar: learning rate
    momentum,  # compute-type scalar
    one_minus_dampening,  # compute-type scalar: 1 - dampening
    weight_decay,  # compute-type scalar
    nesterov,  # int1 scalar
    maximize,  # int1 scalar
    use_buf,  # int1 scalar: momentum != 0 (the buffer exists and is updated)
    first,  # int1 scalar: the tensor's first step (buf = g)
    read_buf,  # int1 scalar: use_buf and not first (the old buffer is read)
    grad_scale,  # compute-type scalar: the gradient is divided by it (UNSCALE != UNSCALE_NONE)
    inv_scale,  # compute-type scalar: 1 / grad_scale (UNSCALE_RECIPROCAL)
    clip_coef,  # compute-type scalar: the unscaled gradient is multiplied by it (UNSCALE != UNSCALE_NONE)
    DTYPE: tl.constexpr,  # storage dtype of p, g and buf
    COMPUTE_DTYPE: tl.constexpr,  # arithmetic type: compute_dtype(DTYPE)
    UNSCALE: tl.constexpr,  # how the gradient is unscaled and clipped first (multi_tensor.unscale)
):
    """One block of torch.optim.SGD's update; branch-free except for masks (see module docstring).

    Every mask is ``offs < bound`` with a scalar bound (``end``, or 0 to switch an operand off):
    when ``end`` is a multiple of the vector width the compiler sees each mask as constant across
    a vector, and this form also sidesteps the interpreter's failure on ``block_mask & scalar``.
    """
    mask = offs < end
    buf_read_mask = offs < tl.where(read_buf, end, 0)
    buf_write_mask = offs < tl.where(use_buf, end, 0)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    g = unscale(g, grad_scale, inv_scale, clip_coef, COMPUTE_DTYPE, UNSCALE)
    g = tl.where(maximize, -g, g)
    # torch skips weight decay when it is 0; selecting (not adding 0 * p) keeps inf params exact.
    g = tl.where(weight_decay != 0, g + weight_decay * p, g)
    buf_old = tl.load(b_ptr + offs, mask=buf_read_mask, other=0.0).to(COMPUTE_DTYPE)
    buf = tl.where(first, g, momentum * buf_old + one_minus_dampening * g)
    g = tl.where(use_buf, tl.where(nesterov, g + momentum * buf, buf), g)
    p = p - lr * g
    if DTYPE == tl.bfloat16:
        p_out = round_to_bf16(p)
        buf_out = round_to_bf16(buf)
    else:
        p_out = p.to(DTYPE)
        buf_out = buf.to(DTYPE)
    tl.store(p_ptr + offs, p_out, mask=mask)
    tl.store(b_ptr + offs, buf_out, mask=buf_write_mask)


@triton.jit
def _sgd_chunk(
    p_ptr, g_ptr, b_ptr,  # *DTYPE: the tensor's parameter, gradient and momentum buffer
    start,  # int64 scalar: first element of the chunk (a multiple of BLOCK_SIZE)
    end,  # int64 scalar: end of the chunk
    lr, momentum, one_minus_dampening, weight_decay, nesterov, maximize, use_buf, first, read_buf,
    grad_scale, inv_scale, clip_coef,  # as for _sgd_block
    DTYPE: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    UNSCALE: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    """Elements ``[start, end)``: the full blocks (the hot loop, vector accesses when aligned),
    then the partial rest, masked element by element."""
    n_full, full_end = full_blocks(start, end, BLOCK_SIZE)
    lanes = tl.arange(0, BLOCK_SIZE)
    for b in range(0, n_full):
        offs = start + b * BLOCK_SIZE + lanes
        _sgd_block(p_ptr, g_ptr, b_ptr, offs, full_end, lr, momentum, one_minus_dampening, weight_decay, nesterov,
                   maximize, use_buf, first, read_buf, grad_scale, inv_scale, clip_coef, DTYPE, COMPUTE_DTYPE, UNSCALE)
    if full_end < end:
        _sgd_block(p_ptr, g_ptr, b_ptr, full_end + lanes, end, lr, momentum, one_minus_dampening, weight_decay,
                   nesterov, maximize, use_buf, first, read_buf, grad_scale, inv_scale, clip_coef, DTYPE,
                   COMPUTE_DTYPE, UNSCALE)


@triton.jit(do_not_specialize=["table_numel", "advance", "n_groups", "write_back", "n_tensors", "clear_first"],
            do_not_specialize_on_alignment=["chunks_ptr"])
def sgd_kernel(
    param_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each parameter (dense, DTYPE)
    grad_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each gradient (the parameter's strides)
    buf_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each momentum buffer, 0 if its group has momentum 0
    numels_ptr,  # *int64 [n_tensors]: elements of each tensor
    groups_ptr,  # *int32 [n_tensors + 1 + n_absent]: each tensor's group (row of hyper and desc), n_absent, absent groups
    first_step_ptr,  # *int8 [n_flags]: 1 while a tensor has no momentum history (buf = g), indexed by slots_ptr
    slots_ptr,  # *int32 [n_tensors]: each tensor's index into first_step_ptr
    chunks_ptr,  # *int64 [n_programs, 3]: (tensor index, first element, end element) of each program's chunk
    hyper_ptr,  # *fp64 [n_groups, HYPER_WIDTH]: momentum, 1 - dampening, weight_decay, nesterov, maximize, momentum row
    step_ptr,  # *int64 [1]: the schedule's step counter t
    desc_ptr,  # *fp64 [n_groups, DESC_WIDTH]: schedule rows (see kernels/schedule.py)
    table_ptr,  # *fp64 [table_numel]: tabulated LR multipliers (KIND_TABLE rows)
    table_numel,  # int: elements behind table_ptr (>= 1)
    advance,  # int: scheduler steps taken since the counter was last stored; the LR is taken at *step_ptr + advance
    lr_out_ptr,  # *fp64 [n_groups]: receives every group's LR at that step (write_back only)
    ticket_ptr,  # *int32 [1]: 0 between launches; counts finished programs (write_back or clear_first only)
    n_groups,  # int: rows of lr_out
    write_back,  # int: 1 on a step's final launch: the LRs and (by the last program to finish) the advanced counter are stored
    n_tensors,  # int: tensors in this launch (entries of slots_ptr)
    clear_first,  # int: 1: the last program to finish clears the flags of this launch's tensors, unless the step was skipped
    grad_scale_ptr,  # *fp32 [1]: AMP's loss scale; gradients are divided by it (read only when SCALED)
    found_inf_ptr,  # *fp32 [1]: nonzero when a gradient is not finite: nothing is stored (read only when SCALED)
    clip_coef_ptr,  # *fp64 [1]: gradient-clipping coefficient applied after unscaling (read only when SCALED)
    DTYPE: tl.constexpr,  # storage dtype of params, grads and buffers: fp16, bf16, fp32 or fp64
    COMPUTE_DTYPE: tl.constexpr,  # arithmetic type, compute_dtype(DTYPE): fp64 for fp64, else fp32
    ALIGNED: tl.constexpr,  # every address is a multiple of ALIGNMENT bytes (enables 16-byte vectors)
    SCALED: tl.constexpr,  # read grad_scale, found_inf and clip_coef (AMP and/or clipping in use)
    BLOCK_SIZE: tl.constexpr,  # elements per block: each thread handles BLOCK_SIZE / (32 * num_warps) contiguous ones
    CHUNK_BLOCKS: tl.constexpr,  # the most blocks a chunk spans (the chunk table holds each chunk's end)
):
    """Apply one SGD step to chunk ``program_id(0)`` of the tensor table (see module docstring)."""
    tensor, chunk_start, chunk_end = chunk_of(chunks_ptr, numels_ptr, BLOCK_SIZE, CHUNK_BLOCKS)
    group = tl.load(groups_ptr + tensor)
    first_flag = tl.load(first_step_ptr + tl.load(slots_ptr + tensor))
    p_ptr = tensor_ptr(param_addrs_ptr, tensor, DTYPE, ALIGNED)
    g_ptr = tensor_ptr(grad_addrs_ptr, tensor, DTYPE, ALIGNED)
    b_ptr = tensor_ptr(buf_addrs_ptr, tensor, DTYPE, ALIGNED)

    hyper = hyper_ptr + group.to(tl.int64) * _HYPER_WIDTH
    # Like torch, round the float64 scalars (lr, momentum, 1 - dampening, weight_decay) once to the
    # arithmetic type (a no-op for float64 storage).
    step, lr = group_lr(step_ptr, advance, desc_ptr, table_ptr, table_numel, group, tensor, chunk_start, groups_ptr,
                        lr_out_ptr, write_back)
    lr = lr.to(COMPUTE_DTYPE)
    momentum = tl.load(hyper + _HYPER_MOMENTUM).to(COMPUTE_DTYPE)
    momentum_row = tl.load(hyper + _HYPER_MOMENTUM_ROW)
    if momentum_row >= 0:
        # A cycled momentum (CyclicLR / OneCycleLR): the schedule's momentum row at this step.
        momentum = lr_at(step, desc_ptr, table_ptr, table_numel, momentum_row.to(tl.int32)).to(COMPUTE_DTYPE)
    one_minus_dampening = tl.load(hyper + _HYPER_ONE_MINUS_DAMPENING).to(COMPUTE_DTYPE)
    weight_decay = tl.load(hyper + _HYPER_WEIGHT_DECAY).to(COMPUTE_DTYPE)
    nesterov = tl.load(hyper + _HYPER_NESTEROV) != 0
    maximize = tl.load(hyper + _HYPER_MAXIMIZE) != 0
    use_buf = momentum != 0
    first = first_flag != 0
    read_buf = use_buf & (first_flag == 0)

    grad_scale, clip_coef, updated = amp_scaling(grad_scale_ptr, found_inf_ptr, clip_coef_ptr, COMPUTE_DTYPE, SCALED)
    if SCALED:
        # A skipped step: an empty chunk, so no block runs and nothing is stored.
        chunk_end = tl.where(updated, chunk_end, chunk_start)
        inv_scale, exact = amp_reciprocal(grad_scale_ptr, COMPUTE_DTYPE)
        # One branch per program; each arm holds its own copy of the loop.
        if exact:
            _sgd_chunk(p_ptr, g_ptr, b_ptr, chunk_start, chunk_end, lr, momentum, one_minus_dampening, weight_decay,
                       nesterov, maximize, use_buf, first, read_buf, grad_scale, inv_scale, clip_coef, DTYPE,
                       COMPUTE_DTYPE, UNSCALE_RECIPROCAL, BLOCK_SIZE)
        else:
            _sgd_chunk(p_ptr, g_ptr, b_ptr, chunk_start, chunk_end, lr, momentum, one_minus_dampening, weight_decay,
                       nesterov, maximize, use_buf, first, read_buf, grad_scale, inv_scale, clip_coef, DTYPE,
                       COMPUTE_DTYPE, UNSCALE_DIVIDE, BLOCK_SIZE)
    else:
        _sgd_chunk(p_ptr, g_ptr, b_ptr, chunk_start, chunk_end, lr, momentum, one_minus_dampening, weight_decay,
                   nesterov, maximize, use_buf, first, read_buf, grad_scale, grad_scale, clip_coef, DTYPE,
                   COMPUTE_DTYPE, UNSCALE_NONE, BLOCK_SIZE)
    finish_launch(ticket_ptr, write_back, clear_first, updated, step, step_ptr, desc_ptr, table_ptr, table_numel,
                  lr_out_ptr, n_groups, groups_ptr, first_step_ptr, slots_ptr, n_tensors)

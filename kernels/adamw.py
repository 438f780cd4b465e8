"""torch.optim.Adam / AdamW's update as a multi-tensor kernel, LR and bias corrections computed on the device: ``adamw_kernel``.

One launch updates every tensor of one dtype, across parameter groups; the engine
(``fused_lr.engine``) builds the tables and launches it with the common arguments of
``kernels/multi_tensor.py``. Adam's state lists are ``exp_avg``, ``exp_avg_sq`` and
``max_exp_avg_sq`` (address 0 in groups without amsgrad), then one scalar state, ``step``: each
tensor's float32 step count, a one-element tensor on the device (``state["step"]``, as torch's
fused and capturable Adam keep it). Each program

1. takes its chunk of one tensor and the tensor's group and addresses (``chunk_of``, ``tensor_ptr``);
2. computes its group's learning rate with ``lr_at`` (float64) from the schedule's step counter
   (``group_lr``: on a step's final launch the group's first program also stores it for
   ``param_groups[i]["lr"]``), and ``beta1`` the same way when the schedule cycles it (hyper column HYPER_BETA1_ROW; torch's
   CyclicLR / OneCycleLR cycle ``betas[0]``); reads the tensor's step count ``s`` and takes
   ``t = s + 1`` (the step this update is), and computes the bias corrections in float64::

       bias_correction1 = 1 - beta1 ** t          step_size = lr / bias_correction1
       bias_correction2 = 1 - beta2 ** t          bias_correction2_sqrt = sqrt(bias_correction2)

   then rounds them, like every float64 scalar, once to the arithmetic type;
3. applies torch's update in the order of torch's for-loop (``_single_tensor_adam``) to every
   element of the chunk::

       g = -g                                      if maximize
       p = p * (1 - lr * weight_decay)             if decoupled (AdamW) and weight_decay != 0
       g = g + weight_decay * p                    if not decoupled (Adam) and weight_decay != 0
       m = lerp(m, g, 1 - beta1)                   (torch's lerp formula, by the weight's size)
       v = v * beta2 + (1 - beta2) * g * g
       vmax = max(vmax, v)                         if amsgrad
       denom = sqrt(vmax if amsgrad else v) / bias_correction2_sqrt + eps
       p = p + (-step_size) * (m / denom)

   (``sqrt`` and ``/`` are the IEEE ``sqrt.rn`` / ``div.rn`` on the GPU, as torch's kernels use:
   Triton's plain ``/`` and ``sqrt`` on float32 are approximate there);
4. finishes the launch (``_finish``): the program that takes the last ticket stores the schedule's
   counter and the LRs of the groups with no tensor in this launch (``store_schedule``, as
   ``finish_launch``), adds 1 to the step count of every tensor whose first chunk is in this launch
   unless AMP skipped the step (a dtype split by alignment into two launches advances each count
   once), and clears the launch's first-step flags.

The step counts are advanced by the last program, not by each program or before the launch: every
program of a tensor (a tensor larger than one chunk has several) must see the same count, and all
of them read it before they take their ticket (the atomic is acq_rel, so the reads cannot move past
it); the program that takes the last ticket therefore writes after every read. torch's own fused
Adam instead adds 1 with a foreach launch before its kernel and subtracts ``found_inf`` with another
after it: two more launches per step (more with many tensors), which this design saves.

First-step flags: Adam's state starts as zeros with ``step = 0`` (torch's initial state), so its
first step needs no special case and the kernel reads no flag. The engine still sets a flag when it
allocates state; ``_finish`` clears them whether or not AMP skipped the step, because a skipped
first step leaves exactly torch's initial state (zeros, ``step`` 0; torch's fused Adam leaves the
same), which is history enough.

Gradient scaling (``SCALED=True``; AMP's GradScaler and fused gradient clipping): each program reads
``found_inf`` and, when it is nonzero, stores nothing (parameters, moments and step counts keep their
values; the schedule's write-back still happens); otherwise every gradient is first unscaled and
clipped, ``g = (g / grad_scale) * clip_coef`` (the bits of an IEEE division, as torch's fused
kernels divide; a multiplication by ``1 / grad_scale`` when that gives the same bits, a
power-of-two scale: ``amp_reciprocal``, with a second copy of the loop, as kernels/sgd.py).

Arithmetic is float32 for float16 / bfloat16 / float32 tensors (torch's "opmath" type, as torch's
fused Adam) and float64 for float64 tensors; parameters and moments are rounded to storage once per
step (bfloat16 to nearest-even by ``round_to_bf16``: the hardware conversion when compiled).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .multi_tensor import (
    FLAG_BLOCK,
    UNSCALE_DIVIDE,
    UNSCALE_NONE,
    UNSCALE_RECIPROCAL,
    amp_reciprocal,
    amp_scaling,
    chunk_of,
    clear_first_flags,
    full_blocks,
    group_lr,
    round_to_bf16,
    store_schedule,
    tensor_ptr,
    unscale,
)
from .schedule import _powf, lr_at

__all__ = [
    "HYPER_WIDTH",
    "HYPER_BETA1",
    "HYPER_BETA2",
    "HYPER_EPS",
    "HYPER_WEIGHT_DECAY",
    "HYPER_AMSGRAD",
    "HYPER_MAXIMIZE",
    "HYPER_DECOUPLED",
    "HYPER_BETA1_ROW",
    "adamw_kernel",
]

# Columns of the per-group hyper-parameter table (float64 [groups, HYPER_WIDTH]); the kernel spec
# (fused_lr.functional.adamw) names them in this order, and the engine checks the two agree.
HYPER_WIDTH = 8
HYPER_BETA1 = 0
HYPER_BETA2 = 1
HYPER_EPS = 2
HYPER_WEIGHT_DECAY = 3
HYPER_AMSGRAD = 4  # 1.0 or 0.0: max_exp_avg_sq exists and is used
HYPER_MAXIMIZE = 5  # 1.0 or 0.0
HYPER_DECOUPLED = 6  # 1.0: AdamW's decoupled weight decay; 0.0: Adam's L2 term
HYPER_BETA1_ROW = 7  # -1, or the schedule row whose value is the group's beta1 (CyclicLR / OneCycleLR)
_HYPER_WIDTH = tl.constexpr(HYPER_WIDTH)
_HYPER_BETA1 = tl.constexpr(HYPER_BETA1)
_HYPER_BETA2 = tl.constexpr(HYPER_BETA2)
_HYPER_EPS = tl.constexpr(HYPER_EPS)
_HYPER_WEIGHT_DECAY = tl.constexpr(HYPER_WEIGHT_DECAY)
_HYPER_AMSGRAD = tl.constexpr(HYPER_AMSGRAD)
_HYPER_MAXIMIZE = tl.constexpr(HYPER_MAXIMIZE)
_HYPER_DECOUPLED = tl.constexpr(HYPER_DECOUPLED)
_HYPER_BETA1_ROW = tl.constexpr(HYPER_BETA1_ROW)
_FLAG_BLOCK = tl.constexpr(FLAG_BLOCK)


@triton.jit
def _div(a, b, COMPUTE_DTYPE: tl.constexpr):
    """IEEE ``a / b`` (float64 ``/`` already is; float32 ``/`` compiles to the approximate div.full.f32)."""
    if COMPUTE_DTYPE == tl.float64:
        out = a / b
    else:
        out = tl.div_rn(a, b)
    return out


@triton.jit
def _sqrt(x, COMPUTE_DTYPE: tl.constexpr):
    """IEEE ``sqrt(x)`` (float32 ``tl.sqrt`` compiles to the approximate sqrt.approx.f32)."""
    if COMPUTE_DTYPE == tl.float64:
        out = tl.sqrt(x)
    else:
        out = tl.sqrt_rn(x)
    return out


@triton.jit
def _store(ptr, x, mask, DTYPE: tl.constexpr):
    """Round ``x`` once to the storage dtype and store it."""
    if DTYPE == tl.bfloat16:
        tl.store(ptr, round_to_bf16(x), mask=mask)
    else:
        tl.store(ptr, x.to(DTYPE), mask=mask)


@triton.jit
def _adamw_block(
    p_ptr,  # *DTYPE: the parameter's first element
    g_ptr,  # *DTYPE: the gradient's first element
    m_ptr,  # *DTYPE: exp_avg's first element
    v_ptr,  # *DTYPE: exp_avg_sq's first element
    vmax_ptr,  # *DTYPE: max_exp_avg_sq's first element (null when amsgrad is false)
    offs,  # int64 [BLOCK_SIZE]: element offsets of this block
    end,  # int64 scalar: elements below this offset are updated (the rest is masked off)
    decay,  # compute-type scalar: 1 - lr * weight_decay (applied when decoupled and weight_decay != 0)
    weight_decay,  # compute-type scalar
    lerp_weight,  # compute-type scalar: 1 - beta1
    beta2,  # compute-type scalar
    one_minus_beta2,  # compute-type scalar: 1 - beta2
    eps,  # compute-type scalar
    neg_step_size,  # compute-type scalar: -lr / bias_correction1
    bias_correction2_sqrt,  # compute-type scalar
    amsgrad,  # int1 scalar
    maximize,  # int1 scalar
    decoupled_decay,  # int1 scalar: AdamW with weight_decay != 0 (p *= decay)
    l2,  # int1 scalar: Adam with weight_decay != 0 (g += weight_decay * p)
    grad_scale,  # compute-type scalar: the gradient is divided by it (UNSCALE != UNSCALE_NONE)
    inv_scale,  # compute-type scalar: 1 / grad_scale (UNSCALE_RECIPROCAL)
    clip_coef,  # compute-type scalar: the unscaled gradient is multiplied by it (UNSCALE != UNSCALE_NONE)
    DTYPE: tl.constexpr,  # storage dtype of p, g and the moments
    COMPUTE_DTYPE: tl.constexpr,  # arithmetic type: compute_dtype(DTYPE)
    UNSCALE: tl.constexpr,  # how the gradient is unscaled and clipped first (multi_tensor.unscale)
):
    """One block of Adam's update (see the module docstring); branch-free except for masks, each
    ``offs < bound`` with a scalar bound (constant across a vector when ``end`` is aligned)."""
    mask = offs < end
    max_mask = offs < tl.where(amsgrad, end, 0)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    vmax = tl.load(vmax_ptr + offs, mask=max_mask, other=0.0).to(COMPUTE_DTYPE)
    g = unscale(g, grad_scale, inv_scale, clip_coef, COMPUTE_DTYPE, UNSCALE)
    g = tl.where(maximize, -g, g)
    # torch skips weight decay when it is 0; selecting (not multiplying by 1 or adding 0 * p)
    # keeps inf parameters exact.
    p = tl.where(decoupled_decay, p * decay, p)
    g = tl.where(l2, g + weight_decay * p, g)
    # torch's lerp(m, g, w): m + w * (g - m) for |w| < 0.5, else g - (g - m) * (1 - w).
    m = tl.where(lerp_weight < 0.5, m + lerp_weight * (g - m), g - (g - m) * (1.0 - lerp_weight))
    v = v * beta2 + (one_minus_beta2 * g) * g
    vmax = tl.maximum(vmax, v)
    denom = _div(_sqrt(tl.where(amsgrad, vmax, v), COMPUTE_DTYPE), bias_correction2_sqrt, COMPUTE_DTYPE) + eps
    p = p + neg_step_size * _div(m, denom, COMPUTE_DTYPE)
    _store(p_ptr + offs, p, mask, DTYPE)
    _store(m_ptr + offs, m, mask, DTYPE)
    _store(v_ptr + offs, v, mask, DTYPE)
    _store(vmax_ptr + offs, vmax, max_mask, DTYPE)


@triton.jit
def _adamw_chunk(
    p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr,  # *DTYPE: the tensor's parameter, gradient and moments
    start,  # int64 scalar: first element of the chunk (a multiple of BLOCK_SIZE)
    end,  # int64 scalar: end of the chunk
    decay, weight_decay, lerp_weight, beta2, one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt,
    amsgrad, maximize, decoupled_decay, l2, grad_scale, inv_scale, clip_coef,  # as for _adamw_block
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
        _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, offs, full_end, decay, weight_decay, lerp_weight, beta2,
                     one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt, amsgrad, maximize, decoupled_decay, l2,
                     grad_scale, inv_scale, clip_coef, DTYPE, COMPUTE_DTYPE, UNSCALE)
    if full_end < end:
        _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, full_end + lanes, end, decay, weight_decay, lerp_weight,
                     beta2, one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt, amsgrad, maximize,
                     decoupled_decay, l2, grad_scale, inv_scale, clip_coef, DTYPE, COMPUTE_DTYPE, UNSCALE)


@triton.jit
def _finish(
    ticket_ptr,  # *int32 [1]: 0 between launches; counts finished programs
    write_back,  # int: 1: store the advanced counter and every group's LR
    clear_first,  # int: 1: clear this launch's first-step flags
    updated,  # int1 scalar: the update happened (not a step AMP skipped)
    step,  # int64 scalar: the schedule step the LRs were taken at (t + advance)
    step_ptr,  # *int64 [1]: the schedule's step counter
    desc_ptr,  # *fp64 [n_groups, DESC_WIDTH]: schedule rows
    table_ptr,  # *fp64 [table_numel]: tabulated LR multipliers
    table_numel,  # int: elements behind table_ptr
    lr_out_ptr,  # *fp64 [n_groups]: receives the LRs at ``step`` of the groups absent from this launch
    n_groups,  # int: rows of lr_out
    groups_ptr,  # *int32 [n_tensors + 1 + n_absent]: the tensors' groups, n_absent, the absent groups
    first_step_ptr,  # *int8 [n_flags]: first-step flags
    slots_ptr,  # *int32 [n_tensors]: each tensor's index into first_step_ptr
    state_step_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each tensor's float32 step count
    chunks_ptr,  # *int64 [n_programs, 3]: this launch's chunks (tensor index, first element, end element)
    n_tensors,  # int: tensors in this launch's tables
):
    """The last program to finish (every program reads its step count and the schedule counter
    before the acq_rel ticket, so none is still reading) writes back the schedule as
    ``finish_launch`` does (``store_schedule``), advances the step count of every tensor whose
    first chunk is in this launch unless the step was skipped, clears the first-step flags of the
    tensors of the launch's tables when told to, and resets the ticket. Unlike ``finish_launch``
    it always takes a ticket: the step counts advance at every step.

    Step counts follow the chunks, not the tables: a dtype split by alignment in two launches
    shares one set of tables, and each tensor's first chunk (element 0; every tensor of the tables
    has exactly one) is in exactly one of the two launches, so every count advances once, after
    every program of both launches has read it (the launches run in stream order)."""
    done = tl.atomic_add(ticket_ptr, 1)
    if done == tl.num_programs(0) - 1:
        if write_back != 0:
            store_schedule(step, step_ptr, desc_ptr, table_ptr, table_numel, lr_out_ptr, n_groups, groups_ptr,
                           n_tensors)
        lanes = tl.arange(0, _FLAG_BLOCK)
        n_programs = tl.where(updated, tl.num_programs(0), 0)
        for start in range(0, n_programs, _FLAG_BLOCK):
            idx = start + lanes
            row = chunks_ptr + 3 * idx.to(tl.int64)
            in_launch = idx < n_programs
            first = in_launch & (tl.load(row + 1, mask=in_launch, other=1) == 0)
            tensor = tl.load(row, mask=first, other=0)
            counts = tl.load(state_step_addrs_ptr + tensor, mask=first, other=0).to(tl.pointer_type(tl.float32))
            tl.store(counts, tl.load(counts, mask=first, other=0.0) + 1.0, mask=first)
        if clear_first != 0:
            clear_first_flags(first_step_ptr, slots_ptr, n_tensors)
        tl.store(ticket_ptr, 0)


@triton.jit(do_not_specialize=["table_numel", "advance", "n_groups", "write_back", "n_tensors", "clear_first"],
            do_not_specialize_on_alignment=["chunks_ptr"])
def adamw_kernel(
    param_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each parameter (dense, DTYPE)
    grad_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each gradient (the parameter's strides)
    exp_avg_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each exp_avg (the parameter's strides)
    exp_avg_sq_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each exp_avg_sq
    max_exp_avg_sq_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each max_exp_avg_sq, 0 where amsgrad is off
    state_step_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each tensor's step count (float32, one element)
    numels_ptr,  # *int64 [n_tensors]: elements of each tensor
    groups_ptr,  # *int32 [n_tensors + 1 + n_absent]: each tensor's group (row of hyper and desc), n_absent, the absent groups
    first_step_ptr,  # *int8 [n_flags]: first-step flags (not read: see the module docstring), indexed by slots_ptr
    slots_ptr,  # *int32 [n_tensors]: each tensor's index into first_step_ptr
    chunks_ptr,  # *int64 [n_programs, 3]: (tensor index, first element, end element) of each program's chunk
    hyper_ptr,  # *fp64 [n_groups, HYPER_WIDTH]: beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled, beta1 row
    step_ptr,  # *int64 [1]: the schedule's step counter (not the tensors' step counts)
    desc_ptr,  # *fp64 [n_groups, DESC_WIDTH]: schedule rows (see kernels/schedule.py)
    table_ptr,  # *fp64 [table_numel]: tabulated LR multipliers (KIND_TABLE rows)
    table_numel,  # int: elements behind table_ptr (>= 1)
    advance,  # int: scheduler steps taken since the counter was last stored; the LR is taken at *step_ptr + advance
    lr_out_ptr,  # *fp64 [n_groups]: receives every group's LR at that step (write_back only)
    ticket_ptr,  # *int32 [1]: 0 between launches; counts finished programs
    n_groups,  # int: rows of lr_out
    write_back,  # int: 1 on a step's final launch: the LRs and the advanced counter are stored
    n_tensors,  # int: tensors in this launch (entries of slots_ptr and state_step_addrs_ptr)
    clear_first,  # int: 1: the last program to finish clears the flags of this launch's tensors
    grad_scale_ptr,  # *fp32 [1]: AMP's loss scale; gradients are divided by it (read only when SCALED)
    found_inf_ptr,  # *fp32 [1]: nonzero when a gradient is not finite: nothing is stored (read only when SCALED)
    clip_coef_ptr,  # *fp64 [1]: gradient-clipping coefficient applied after unscaling (read only when SCALED)
    DTYPE: tl.constexpr,  # storage dtype of params, grads and moments: fp16, bf16, fp32 or fp64
    COMPUTE_DTYPE: tl.constexpr,  # arithmetic type, compute_dtype(DTYPE): fp64 for fp64, else fp32
    ALIGNED: tl.constexpr,  # every address is a multiple of ALIGNMENT bytes (enables 16-byte vectors)
    SCALED: tl.constexpr,  # read grad_scale, found_inf and clip_coef (AMP and/or clipping in use)
    BLOCK_SIZE: tl.constexpr,  # elements per block: each thread handles BLOCK_SIZE / (32 * num_warps) contiguous ones
    CHUNK_BLOCKS: tl.constexpr,  # the most blocks a chunk spans (the chunk table holds each chunk's end)
):
    """Apply one Adam / AdamW step to chunk ``program_id(0)`` of the tensor table (see module docstring)."""
    tensor, chunk_start, chunk_end = chunk_of(chunks_ptr, numels_ptr, BLOCK_SIZE, CHUNK_BLOCKS)
    group = tl.load(groups_ptr + tensor)
    p_ptr = tensor_ptr(param_addrs_ptr, tensor, DTYPE, ALIGNED)
    g_ptr = tensor_ptr(grad_addrs_ptr, tensor, DTYPE, ALIGNED)
    m_ptr = tensor_ptr(exp_avg_addrs_ptr, tensor, DTYPE, ALIGNED)
    v_ptr = tensor_ptr(exp_avg_sq_addrs_ptr, tensor, DTYPE, ALIGNED)
    vmax_ptr = tensor_ptr(max_exp_avg_sq_addrs_ptr, tensor, DTYPE, ALIGNED)
    # The step this update is: the tensor's count before it, plus one (exact in float32 below 2**24,
    # as torch's float32 count). Every program of the tensor reads the same count: _finish advances
    # it after the last one has read it.
    t = (tl.load(tensor_ptr(state_step_addrs_ptr, tensor, tl.float32, False)) + 1.0).to(tl.float64)

    hyper = hyper_ptr + group.to(tl.int64) * _HYPER_WIDTH
    # float64; on a write-back launch the group's first program stores it for param_groups[i]["lr"].
    step, lr = group_lr(step_ptr, advance, desc_ptr, table_ptr, table_numel, group, tensor, chunk_start, groups_ptr,
                        lr_out_ptr, write_back)
    beta1 = tl.load(hyper + _HYPER_BETA1)
    beta1_row = tl.load(hyper + _HYPER_BETA1_ROW)
    if beta1_row >= 0:
        # A cycled beta1 (CyclicLR / OneCycleLR): the schedule's momentum row at this step.
        beta1 = lr_at(step, desc_ptr, table_ptr, table_numel, beta1_row.to(tl.int32))
    beta2 = tl.load(hyper + _HYPER_BETA2)
    weight_decay = tl.load(hyper + _HYPER_WEIGHT_DECAY)
    # float64 scalars as torch computes them in Python, each rounded once to the arithmetic type.
    bias_correction1 = 1.0 - _powf(beta1, t)
    bias_correction2 = 1.0 - _powf(beta2, t)
    neg_step_size = (-(lr / bias_correction1)).to(COMPUTE_DTYPE)
    bias_correction2_sqrt = tl.sqrt(bias_correction2).to(COMPUTE_DTYPE)
    decay = (1.0 - lr * weight_decay).to(COMPUTE_DTYPE)
    lerp_weight = (1.0 - beta1).to(COMPUTE_DTYPE)
    one_minus_beta2 = (1.0 - beta2).to(COMPUTE_DTYPE)
    eps = tl.load(hyper + _HYPER_EPS).to(COMPUTE_DTYPE)
    amsgrad = tl.load(hyper + _HYPER_AMSGRAD) != 0
    maximize = tl.load(hyper + _HYPER_MAXIMIZE) != 0
    decoupled = tl.load(hyper + _HYPER_DECOUPLED) != 0
    decoupled_decay = decoupled & (weight_decay != 0)
    l2 = (weight_decay != 0) & (tl.load(hyper + _HYPER_DECOUPLED) == 0)

    grad_scale, clip_coef, updated = amp_scaling(grad_scale_ptr, found_inf_ptr, clip_coef_ptr, COMPUTE_DTYPE, SCALED)
    weight_decay_c = weight_decay.to(COMPUTE_DTYPE)
    beta2_c = beta2.to(COMPUTE_DTYPE)
    if SCALED:
        # A skipped step: an empty chunk, so no block runs and nothing is stored.
        chunk_end = tl.where(updated, chunk_end, chunk_start)
        inv_scale, exact = amp_reciprocal(grad_scale_ptr, COMPUTE_DTYPE)
        # One branch per program; each arm holds its own copy of the loop (as kernels/sgd.py).
        if exact:
            _adamw_chunk(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, chunk_start, chunk_end, decay, weight_decay_c,
                         lerp_weight, beta2_c, one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt, amsgrad,
                         maximize, decoupled_decay, l2, grad_scale, inv_scale, clip_coef, DTYPE, COMPUTE_DTYPE,
                         UNSCALE_RECIPROCAL, BLOCK_SIZE)
        else:
            _adamw_chunk(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, chunk_start, chunk_end, decay, weight_decay_c,
                         lerp_weight, beta2_c, one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt, amsgrad,
                         maximize, decoupled_decay, l2, grad_scale, inv_scale, clip_coef, DTYPE, COMPUTE_DTYPE,
                         UNSCALE_DIVIDE, BLOCK_SIZE)
    else:
        _adamw_chunk(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, chunk_start, chunk_end, decay, weight_decay_c, lerp_weight,
                     beta2_c, one_minus_beta2, eps, neg_step_size, bias_correction2_sqrt, amsgrad, maximize,
                     decoupled_decay, l2, grad_scale, grad_scale, clip_coef, DTYPE, COMPUTE_DTYPE, UNSCALE_NONE,
                     BLOCK_SIZE)
    _finish(ticket_ptr, write_back, clear_first, updated, step, step_ptr, desc_ptr, table_ptr, table_numel,
            lr_out_ptr, n_groups, groups_ptr, first_step_ptr, slots_ptr, state_step_addrs_ptr, chunks_ptr, n_tensors)

"""Fused multi-tensor SGD with the learning rate computed on the device: ``sgd_kernel``.

One launch updates every tensor of one dtype, across parameter groups: the launcher
(``fused_lr._triton_path``) builds int64 tables of the tensors' addresses and sizes and a chunk
table that gives each program one chunk of one tensor. Each program

1. reads its chunk's (tensor, offset) and the tensor's group, first-step flag and addresses;
2. computes its group's learning rate with ``lr_at`` (float64) from the device step counter, and
   its momentum the same way when the schedule cycles momentum (hyper column HYPER_MOMENTUM_ROW);
3. applies torch.optim.SGD's update in torch's order to every element of the chunk::

       g = -g                     if maximize
       g = g + weight_decay * p   if weight_decay != 0
       if momentum != 0:
           buf = g                                          on the tensor's first step
           buf = momentum * buf + (1 - dampening) * g       otherwise
           g = g + momentum * buf  if nesterov  else  buf
       p = p - lr * g

Gradient scaling (``SCALED=True``; AMP's GradScaler and fused gradient clipping): each program
reads ``found_inf`` and, when it is nonzero, stores nothing at all (parameters and momentum
buffers keep their values; the schedule's write-back still happens). Otherwise every gradient is
first unscaled and clipped in the arithmetic type, ``g = (g / grad_scale) * clip_coef`` (an IEEE
division, as torch's fused kernels divide), before the update above. ``grad_scale`` is 1 without
AMP and ``clip_coef`` is 1 without clipping, so either alone rounds exactly as it would by itself.

First-step flags live in device memory and are indexed through ``slots_ptr``, so a flag can
outlive a launch: with ``clear_first`` set, the last program to finish (the write-back ticket)
clears this launch's flags *only when the update happened* (``found_inf == 0``). A first step
skipped by AMP therefore leaves the flag set, and the next real step is the tensor's first step
(``buf = g``), as with torch.optim.SGD's for-loop, which never creates the buffer on a skipped
step. No program reads a flag after taking its ticket, so clearing cannot race a reader.

Arithmetic is float32 for float16 / bfloat16 / float32 tensors (torch's "opmath" type, as in
torch's own fused SGD kernel: the unrounded float32 buffer feeds the nesterov term, and parameter
and buffer are rounded to storage once per step) and float64 for float64 tensors. bfloat16 is
rounded to nearest-even by ``_round_to_bf16`` with integer ops: Triton's CPU interpreter
truncates on ``.to(tl.bfloat16)``, and the explicit rounding gives the same bits on the GPU and in
the interpreter.

Vectorization: the launcher promises (``ALIGNED=True``) that every address is a multiple of 16
bytes; chunk offsets are multiples of ``BLOCK_SIZE``. Full blocks are masked against a bound that
is itself a multiple of ``BLOCK_SIZE``, so the compiler knows the mask is constant across a vector
and emits 16-byte loads and stores; the last partial block of a tensor is masked element by element.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .schedule import lr_at

__all__ = [
    "BLOCK_SIZE",
    "CHUNK_BLOCKS",
    "NUM_WARPS",
    "ENABLE_FP_FUSION",
    "HYPER_WIDTH",
    "HYPER_MOMENTUM",
    "HYPER_ONE_MINUS_DAMPENING",
    "HYPER_WEIGHT_DECAY",
    "HYPER_NESTEROV",
    "HYPER_MAXIMIZE",
    "HYPER_MOMENTUM_ROW",
    "FLAG_BLOCK",
    "SUPPORTED_DTYPES",
    "ALIGNMENT",
    "compute_dtype",
    "launch_config",
    "sgd_kernel",
]

# --- Launch configuration: the one place block size, chunk size and warp count come from. ---
# BLOCK_SIZE = 1024 and num_warps = 4 are the Triton tutorials' defaults (01-vector-add uses
# BLOCK_SIZE=1024; 4 warps is Triton's default num_warps). A chunk of 64 blocks = 65536 elements
# is torch's multi_tensor_apply chunk size (kChunkSize in ATen/native/cuda/MultiTensorApply.cuh).
# None of the three is measured: no GPU was available when this was written. Measure before tuning.
BLOCK_SIZE = 1024
CHUNK_BLOCKS = 64
NUM_WARPS = 4
# Contract a*b + c into FMAs (Triton 3.9's default, made explicit because 3.10 flips it): torch's
# CUDA kernels are built with nvcc's default --fmad=true, so this keeps the GPU update's rounding
# closest to stock's there. (The interpreter never contracts; the tests account for that.)
ENABLE_FP_FUSION = True

# First-step flags cleared per iteration by the finishing program (a plain vector width; the loop
# runs once per launch on one program, over the launch's tensors: not performance-relevant).
FLAG_BLOCK = 128
_FLAG_BLOCK = tl.constexpr(FLAG_BLOCK)

# Bytes every parameter / grad / buffer address must be a multiple of for the ALIGNED=True
# specialization (one 16-byte vector load).
ALIGNMENT = 16
_ALIGNMENT = tl.constexpr(ALIGNMENT)

# Columns of the per-group hyper-parameter table (float64 [groups, HYPER_WIDTH]).
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

# The storage dtypes the kernel specializes for (Triton dtype names, as torch dtypes map to them).
SUPPORTED_DTYPES = ("fp16", "bf16", "fp32", "fp64")


def compute_dtype(dtype: tl.dtype) -> tl.dtype:
    """The arithmetic type for storage ``dtype``: float64 for float64, float32 otherwise."""
    return tl.float64 if dtype == tl.float64 else tl.float32


def launch_config() -> dict:
    """``BLOCK_SIZE``, ``CHUNK_BLOCKS``, ``num_warps`` and ``enable_fp_fusion`` of a production launch."""
    return {"BLOCK_SIZE": BLOCK_SIZE, "CHUNK_BLOCKS": CHUNK_BLOCKS, "num_warps": NUM_WARPS,
            "enable_fp_fusion": ENABLE_FP_FUSION}


@triton.jit
def _round_to_bf16(x):
    """float32 block -> bfloat16 block, rounded to nearest, ties to even (NaN stays NaN)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    half = (rounded >> 16).to(tl.uint16)
    half = tl.where(x != x, 0x7FC0, half).to(tl.uint16)
    return half.to(tl.bfloat16, bitcast=True)


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
    grad_scale,  # compute-type scalar: the gradient is divided by it (SCALED only)
    clip_coef,  # compute-type scalar: the unscaled gradient is multiplied by it (SCALED only)
    DTYPE: tl.constexpr,  # storage dtype of p, g and buf
    COMPUTE_DTYPE: tl.constexpr,  # arithmetic type: compute_dtype(DTYPE)
    SCALED: tl.constexpr,  # unscale and clip the gradient first
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
    if SCALED:
        # div_rn: Triton's `/` on float32 is the approximate div.full.f32 on NVIDIA GPUs (float64
        # `/` is already the IEEE div.rn.f64; div_rn takes float32 only).
        if COMPUTE_DTYPE == tl.float64:
            g = (g / grad_scale) * clip_coef
        else:
            g = tl.div_rn(g, grad_scale) * clip_coef
    g = tl.where(maximize, -g, g)
    # torch skips weight decay when it is 0; selecting (not adding 0 * p) keeps inf params exact.
    g = tl.where(weight_decay != 0, g + weight_decay * p, g)
    buf_old = tl.load(b_ptr + offs, mask=buf_read_mask, other=0.0).to(COMPUTE_DTYPE)
    buf = tl.where(first, g, momentum * buf_old + one_minus_dampening * g)
    g = tl.where(use_buf, tl.where(nesterov, g + momentum * buf, buf), g)
    p = p - lr * g
    if DTYPE == tl.bfloat16:
        p_out = _round_to_bf16(p)
        buf_out = _round_to_bf16(buf)
    else:
        p_out = p.to(DTYPE)
        buf_out = buf.to(DTYPE)
    tl.store(p_ptr + offs, p_out, mask=mask)
    tl.store(b_ptr + offs, buf_out, mask=buf_write_mask)


@triton.jit(do_not_specialize=["table_numel", "advance", "n_groups", "write_back", "n_tensors", "clear_first"])
def sgd_kernel(
    param_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each parameter (contiguous, DTYPE)
    grad_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each gradient (contiguous, DTYPE)
    buf_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each momentum buffer, 0 if its group has momentum 0
    numels_ptr,  # *int64 [n_tensors]: elements of each tensor
    groups_ptr,  # *int32 [n_tensors]: parameter-group index of each tensor (row of hyper and desc)
    first_step_ptr,  # *int8 [n_flags]: 1 while a tensor has no momentum history (buf = g), indexed by slots_ptr
    slots_ptr,  # *int32 [n_tensors]: each tensor's index into first_step_ptr
    chunks_ptr,  # *int64 [n_programs, 2]: (tensor index, first element) of each program's chunk
    hyper_ptr,  # *fp64 [n_groups, HYPER_WIDTH]: momentum, 1 - dampening, weight_decay, nesterov, maximize, momentum row
    step_ptr,  # *int64 [1]: the schedule's step counter t
    desc_ptr,  # *fp64 [n_groups, DESC_WIDTH]: schedule rows (see kernels/schedule.py)
    table_ptr,  # *fp64 [table_numel]: tabulated LR multipliers (KIND_TABLE rows)
    table_numel,  # int: elements behind table_ptr (>= 1)
    advance,  # int: scheduler steps taken since the counter was last stored; the LR is taken at *step_ptr + advance
    lr_out_ptr,  # *fp64 [n_groups]: receives every group's LR at that step (write_back only)
    ticket_ptr,  # *int32 [1]: 0 between launches; counts finished programs (write_back only)
    n_groups,  # int: rows of desc (and of lr_out)
    write_back,  # int: 1 on a step's final launch: the last program to finish stores the advanced counter and the LRs
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
    CHUNK_BLOCKS: tl.constexpr,  # blocks per chunk: chunk offsets are multiples of BLOCK_SIZE * CHUNK_BLOCKS
):
    """Apply one SGD step to chunk ``program_id(0)`` of the tensor table (see module docstring)."""
    pid = tl.program_id(0).to(tl.int64)
    tensor = tl.load(chunks_ptr + 2 * pid)
    chunk_start = tl.multiple_of(tl.load(chunks_ptr + 2 * pid + 1), BLOCK_SIZE)
    numel = tl.load(numels_ptr + tensor)
    group = tl.load(groups_ptr + tensor)
    first_flag = tl.load(first_step_ptr + tl.load(slots_ptr + tensor))

    p_addr = tl.load(param_addrs_ptr + tensor)
    g_addr = tl.load(grad_addrs_ptr + tensor)
    b_addr = tl.load(buf_addrs_ptr + tensor)
    p_ptr = p_addr.to(tl.pointer_type(DTYPE))
    g_ptr = g_addr.to(tl.pointer_type(DTYPE))
    b_ptr = b_addr.to(tl.pointer_type(DTYPE))
    if ALIGNED:
        # The hint must sit on the pointer: a hint on the int64 address does not survive the cast
        # (Triton 3.9's axis analysis starts int_to_ptr results over; checked in the PTX).
        p_ptr = tl.multiple_of(p_ptr, _ALIGNMENT)
        g_ptr = tl.multiple_of(g_ptr, _ALIGNMENT)
        b_ptr = tl.multiple_of(b_ptr, _ALIGNMENT)

    hyper = hyper_ptr + group.to(tl.int64) * _HYPER_WIDTH
    # Like torch, round the float64 scalars (lr, momentum, 1 - dampening, weight_decay) once to the
    # arithmetic type (a no-op for float64 storage).
    step = tl.load(step_ptr) + advance
    lr = lr_at(step, desc_ptr, table_ptr, table_numel, group).to(COMPUTE_DTYPE)
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

    chunk_end = tl.minimum(chunk_start + BLOCK_SIZE * CHUNK_BLOCKS, numel)
    if SCALED:
        grad_scale = tl.load(grad_scale_ptr).to(COMPUTE_DTYPE)
        clip_coef = tl.load(clip_coef_ptr).to(COMPUTE_DTYPE)
        updated = tl.load(found_inf_ptr) == 0
        # A skipped step: an empty chunk, so no block runs and nothing is stored.
        chunk_end = tl.where(updated, chunk_end, chunk_start)
    else:
        grad_scale = 1.0
        clip_coef = 1.0
        updated = True
    n_full = (chunk_end - chunk_start) // BLOCK_SIZE
    # A multiple of BLOCK_SIZE by construction: the hint lets full blocks use vector accesses.
    full_end = tl.multiple_of(chunk_start + n_full * BLOCK_SIZE, BLOCK_SIZE)
    lanes = tl.arange(0, BLOCK_SIZE)
    for b in range(0, n_full):
        offs = chunk_start + b * BLOCK_SIZE + lanes
        _sgd_block(p_ptr, g_ptr, b_ptr, offs, full_end, lr, momentum, one_minus_dampening,
                   weight_decay, nesterov, maximize, use_buf, first, read_buf, grad_scale, clip_coef,
                   DTYPE, COMPUTE_DTYPE, SCALED)
    if full_end < chunk_end:
        # The tensor's last, partial block: element-wise mask.
        offs = full_end + lanes
        _sgd_block(p_ptr, g_ptr, b_ptr, offs, chunk_end, lr, momentum, one_minus_dampening,
                   weight_decay, nesterov, maximize, use_buf, first, read_buf, grad_scale, clip_coef,
                   DTYPE, COMPUTE_DTYPE, SCALED)
    if (write_back != 0) | (clear_first != 0):
        # Finish the launch without racing the programs still reading the counter or the flags:
        # every program read them above, before taking a ticket (the atomic is acq_rel, so those
        # reads cannot move past it); the program that takes the last ticket advances the schedule
        # (the counter and the LRs for param_groups[i]["lr"]: a skipped AMP step advances it too),
        # clears the first-step flags of an update that happened, and resets the ticket for the
        # next launch (launches run in stream order, so one ticket serves them all; graph replays too).
        done = tl.atomic_add(ticket_ptr, 1)
        if done == tl.num_programs(0) - 1:
            if write_back != 0:
                for g in range(0, n_groups):
                    # As a tensor: the interpreter's range() yields Python ints, which lr_at cannot cast.
                    row = tl.program_id(0) * 0 + g
                    tl.store(lr_out_ptr + g, lr_at(step, desc_ptr, table_ptr, table_numel, row))
                tl.store(step_ptr, step)
            if (clear_first != 0) & updated:
                flag_lanes = tl.arange(0, _FLAG_BLOCK)
                for start in range(0, n_tensors, _FLAG_BLOCK):
                    idx = start + flag_lanes
                    slot = tl.load(slots_ptr + idx, mask=idx < n_tensors, other=0)
                    tl.store(first_step_ptr + slot, tl.zeros([_FLAG_BLOCK], dtype=tl.int8), mask=idx < n_tensors)
            tl.store(ticket_ptr, 0)

"""What every multi-tensor update kernel shares: the chunk walk, AMP scaling, the finishing ticket.

An update kernel (``kernels/sgd.py`` is one) updates every tensor of one storage dtype across all
parameter groups in one launch. The engine (``fused_lr.engine``) launches it with one grid program
per chunk and with these arguments, in this order (``fused_lr.engine.spec`` checks the order):

    param_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each parameter (dense, DTYPE)
    grad_addrs_ptr,   # *int64 [n_tensors]: data_ptr() of each gradient (the parameter's strides)
    <state>_addrs_ptr, ...  # *int64 [n_tensors] per state list of the optimizer (its kernel spec's
                      #   state_lists, in that order): 0 where the tensor's group keeps no state
    numels_ptr,       # *int64 [n_tensors]: elements of each tensor
    groups_ptr,       # *int32 [n_tensors]: parameter-group index of each tensor (row of hyper and desc)
    first_step_ptr,   # *int8 [n_flags]: 1 while a tensor has no state history yet, indexed by slots_ptr
    slots_ptr,        # *int32 [n_tensors]: each tensor's index into first_step_ptr
    chunks_ptr,       # *int64 [n_programs, 2]: (tensor index, first element) of each program's chunk
    hyper_ptr,        # *fp64 [n_groups, HYPER_WIDTH]: the optimizer's per-group hyper-parameters
    step_ptr,         # *int64 [1]: the schedule's step counter t
    desc_ptr,         # *fp64 [n_groups, DESC_WIDTH]: schedule rows (see kernels/schedule.py)
    table_ptr,        # *fp64 [table_numel]: tabulated LR multipliers (KIND_TABLE rows)
    table_numel,      # int: elements behind table_ptr (>= 1)
    advance,          # int: scheduler steps taken since the counter was stored; LRs are taken at t + advance
    lr_out_ptr,       # *fp64 [n_groups]: receives every group's LR at that step (write_back only)
    ticket_ptr,       # *int32 [1]: 0 between launches; counts finished programs
    n_groups,         # int: rows of desc (and of lr_out)
    write_back,       # int: 1 on a step's final launch: the last program stores the counter and the LRs
    n_tensors,        # int: tensors in this launch (entries of slots_ptr)
    clear_first,      # int: 1: the last program clears this launch's first-step flags, unless skipped
    grad_scale_ptr,   # *fp32 [1]: AMP's loss scale; gradients are divided by it (SCALED only)
    found_inf_ptr,    # *fp32 [1]: nonzero when a gradient is not finite: nothing is stored (SCALED only)
    clip_coef_ptr,    # *fp64 [1]: gradient-clipping coefficient, applied after unscaling (SCALED only)
    DTYPE, COMPUTE_DTYPE, ALIGNED, SCALED, BLOCK_SIZE, CHUNK_BLOCKS  # constexprs, see sgd_kernel

The helpers below are the optimizer-agnostic parts of such a kernel; the optimizer's own file holds
its block update and the per-group scalars it reads from ``hyper_ptr`` and the schedule.

Vectorization: the engine promises (``ALIGNED=True``) that every address is a multiple of
``ALIGNMENT`` bytes; chunk offsets are multiples of ``BLOCK_SIZE``. Full blocks are masked against a
bound that is itself a multiple of ``BLOCK_SIZE`` (``full_end``), so the compiler sees the mask as
constant across a vector and emits 16-byte loads and stores; a tensor's last partial block is masked
element by element.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .schedule import lr_at

__all__ = ["ALIGNMENT", "FLAG_BLOCK", "compute_dtype", "round_to_bf16", "chunk_of", "full_blocks", "tensor_ptr",
           "amp_scaling", "finish_launch"]

# Bytes every parameter / grad / state address must be a multiple of for the ALIGNED=True
# specialization (one 16-byte vector load).
ALIGNMENT = 16
_ALIGNMENT = tl.constexpr(ALIGNMENT)

# First-step flags cleared per iteration by the finishing program (a plain vector width; the loop
# runs once per launch on one program, over the launch's tensors: not performance-relevant).
FLAG_BLOCK = 128
_FLAG_BLOCK = tl.constexpr(FLAG_BLOCK)


def compute_dtype(dtype: tl.dtype) -> tl.dtype:
    """The arithmetic type for storage ``dtype``: float64 for float64, float32 otherwise (torch's
    "opmath" type, as in torch's own fused kernels)."""
    return tl.float64 if dtype == tl.float64 else tl.float32


@triton.jit
def round_to_bf16(x):
    """float32 block -> bfloat16 block, rounded to nearest, ties to even (NaN stays NaN).

    Triton's CPU interpreter truncates on ``.to(tl.bfloat16)``; these integer ops give the same bits
    on the GPU and in the interpreter."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    half = (rounded >> 16).to(tl.uint16)
    half = tl.where(x != x, 0x7FC0, half).to(tl.uint16)
    return half.to(tl.bfloat16, bitcast=True)


@triton.jit
def chunk_of(
    chunks_ptr,  # *int64 [n_programs, 2]: (tensor index, first element) of each program's chunk
    numels_ptr,  # *int64 [n_tensors]: elements of each tensor
    BLOCK_SIZE: tl.constexpr,  # elements per block
    CHUNK_BLOCKS: tl.constexpr,  # blocks per chunk
):
    """This program's chunk as ``(tensor, start, end)``: elements ``[start, end)`` of tensor
    ``tensor`` (int64 scalars; ``start`` is a multiple of ``BLOCK_SIZE``)."""
    pid = tl.program_id(0).to(tl.int64)
    tensor = tl.load(chunks_ptr + 2 * pid)
    start = tl.multiple_of(tl.load(chunks_ptr + 2 * pid + 1), BLOCK_SIZE)
    end = tl.minimum(start + BLOCK_SIZE * CHUNK_BLOCKS, tl.load(numels_ptr + tensor))
    return tensor, start, end


@triton.jit
def full_blocks(start, end, BLOCK_SIZE: tl.constexpr):
    """``(n_full, full_end)``: ``[start, full_end)`` is ``n_full`` whole blocks, ``[full_end, end)``
    the partial rest. ``full_end`` carries the multiple-of-``BLOCK_SIZE`` hint that lets the full
    blocks use vector accesses."""
    n_full = (end - start) // BLOCK_SIZE
    return n_full, tl.multiple_of(start + n_full * BLOCK_SIZE, BLOCK_SIZE)


@triton.jit
def tensor_ptr(
    addrs_ptr,  # *int64 [n_tensors]: an address table
    tensor,  # int64 scalar: index into it
    DTYPE: tl.constexpr,  # the tensor's storage dtype
    ALIGNED: tl.constexpr,  # the address is a multiple of ALIGNMENT bytes
):
    """The typed pointer to tensor ``tensor``'s first element."""
    ptr = tl.load(addrs_ptr + tensor).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        # The hint must sit on the pointer: a hint on the int64 address does not survive the cast
        # (Triton 3.9's axis analysis starts int_to_ptr results over; checked in the PTX).
        ptr = tl.multiple_of(ptr, _ALIGNMENT)
    return ptr


@triton.jit
def amp_scaling(
    grad_scale_ptr,  # *fp32 [1]: AMP's loss scale
    found_inf_ptr,  # *fp32 [1]: nonzero when a gradient is not finite
    clip_coef_ptr,  # *fp64 [1]: gradient-clipping coefficient
    COMPUTE_DTYPE: tl.constexpr,  # the arithmetic type
    SCALED: tl.constexpr,  # AMP and/or clipping in use; else nothing is read
):
    """``(grad_scale, clip_coef, updated)``: the gradient is to be divided by ``grad_scale`` then
    multiplied by ``clip_coef`` (both 1 without AMP and clipping, so either alone rounds exactly as
    it would by itself); ``updated`` is false on a step AMP skips, which stores nothing."""
    if SCALED:
        grad_scale = tl.load(grad_scale_ptr).to(COMPUTE_DTYPE)
        clip_coef = tl.load(clip_coef_ptr).to(COMPUTE_DTYPE)
        updated = tl.load(found_inf_ptr) == 0
    else:
        grad_scale = 1.0
        clip_coef = 1.0
        updated = True
    return grad_scale, clip_coef, updated


@triton.jit
def finish_launch(
    ticket_ptr,  # *int32 [1]: 0 between launches; counts finished programs
    write_back,  # int: 1: store the advanced counter and every group's LR
    clear_first,  # int: 1: clear this launch's first-step flags (when the update happened)
    updated,  # int1 scalar: the update happened (not a step AMP skipped)
    step,  # int64 scalar: the counter value the LRs were taken at (t + advance)
    step_ptr,  # *int64 [1]: the schedule's step counter
    desc_ptr,  # *fp64 [n_groups, DESC_WIDTH]: schedule rows
    table_ptr,  # *fp64 [table_numel]: tabulated LR multipliers
    table_numel,  # int: elements behind table_ptr
    lr_out_ptr,  # *fp64 [n_groups]: receives every group's LR at ``step``
    n_groups,  # int: rows of desc
    first_step_ptr,  # *int8 [n_flags]: first-step flags
    slots_ptr,  # *int32 [n_tensors]: each tensor's index into first_step_ptr
    n_tensors,  # int: tensors in this launch
):
    """Finish the launch without racing the programs still reading the counter or the flags.

    Every program reads them before calling this (the atomic is acq_rel, so those reads cannot move
    past it); the program that takes the last ticket advances the schedule (the counter and the
    LRs for ``param_groups[i]["lr"]``: a skipped AMP step advances it too), clears the first-step
    flags of an update that happened (a first step AMP skipped stays a first step), and resets the
    ticket for the next launch (launches run in stream order, so one ticket serves them all; CUDA
    graph replays too)."""
    if (write_back != 0) | (clear_first != 0):
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

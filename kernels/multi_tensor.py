"""What every multi-tensor update kernel shares: the chunk walk, the LR store, AMP unscaling, the finishing ticket.

An update kernel (``kernels/sgd.py`` is one) updates every tensor of one storage dtype across all
parameter groups in one launch. The engine (``fused_lr.engine``) launches it with one grid program
per chunk and with these arguments, in this order (``fused_lr.engine.spec`` checks the order):

    param_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each parameter (dense, DTYPE)
    grad_addrs_ptr,   # *int64 [n_tensors]: data_ptr() of each gradient (the parameter's strides)
    <state>_addrs_ptr, ...  # *int64 [n_tensors] per state list of the optimizer (its kernel spec's
                      #   state_lists, in that order): 0 where the tensor's group keeps no state
    numels_ptr,       # *int64 [n_tensors]: elements of each tensor
    groups_ptr,       # *int32 [n_tensors + 1 + n_absent]: parameter-group index of each tensor (row
                      #   of hyper and desc), then n_absent, then the groups with no tensor in this launch
    first_step_ptr,   # *int8 [n_flags]: 1 while a tensor has no state history yet, indexed by slots_ptr
    slots_ptr,        # *int32 [n_tensors]: each tensor's index into first_step_ptr
    chunks_ptr,       # *int64 [n_programs, 3]: (tensor index, first element, end element) of each program's chunk
    hyper_ptr,        # *fp64 [n_groups, HYPER_WIDTH]: the optimizer's per-group hyper-parameters
    step_ptr,         # *int64 [1]: the schedule's step counter t
    desc_ptr,         # *fp64 [n_groups, DESC_WIDTH]: schedule rows (see kernels/schedule.py)
    table_ptr,        # *fp64 [table_numel]: tabulated LR multipliers (KIND_TABLE rows)
    table_numel,      # int: elements behind table_ptr (>= 1)
    advance,          # int: scheduler steps taken since the counter was stored; LRs are taken at t + advance
    lr_out_ptr,       # *fp64 [n_groups]: receives every group's LR at that step (write_back only)
    ticket_ptr,       # *int32 [1]: 0 between launches; counts finished programs
    n_groups,         # int: rows of lr_out
    write_back,       # int: 1 on a step's final launch: the LRs and the advanced counter are stored
    n_tensors,        # int: tensors in this launch (entries of slots_ptr)
    clear_first,      # int: 1: the last program clears this launch's first-step flags, unless skipped
    grad_scale_ptr,   # *fp32 [1]: AMP's loss scale; gradients are divided by it (SCALED only)
    found_inf_ptr,    # *fp32 [1]: nonzero when a gradient is not finite: nothing is stored (SCALED only)
    clip_coef_ptr,    # *fp64 [1]: gradient-clipping coefficient, applied after unscaling (SCALED only)
    DTYPE, COMPUTE_DTYPE, ALIGNED, SCALED, BLOCK_SIZE, CHUNK_BLOCKS  # constexprs, see sgd_kernel

The helpers below are the optimizer-agnostic parts of such a kernel; the optimizer's own file holds
its block update and the per-group scalars it reads from ``hyper_ptr`` and the schedule. A kernel
uses them in this order::

    tensor, start, end = chunk_of(chunks_ptr, numels_ptr, BLOCK_SIZE, CHUNK_BLOCKS)
    group = tl.load(groups_ptr + tensor)
    step, lr = group_lr(step_ptr, advance, desc_ptr, table_ptr, table_numel, group, tensor, start,
                        groups_ptr, lr_out_ptr, write_back)      # float64 lr; stored by one program
    grad_scale, clip_coef, updated = amp_scaling(...)            # SCALED: also amp_reciprocal, unscale
    ... the blocks of [start, end) ...
    finish_launch(ticket_ptr, write_back, clear_first, updated, step, step_ptr, desc_ptr, table_ptr,
                  table_numel, lr_out_ptr, n_groups, groups_ptr, first_step_ptr, slots_ptr, n_tensors)

Chunks: the engine sizes them per launch (``fused_lr.engine.runtime.chunk_blocks``: smaller chunks
when a launch has too few to fill the GPU) and balances each tensor's chunks; every chunk starts at
a multiple of ``BLOCK_SIZE`` and spans at most ``CHUNK_BLOCKS`` blocks (``chunk_of`` enforces it).

Vectorization: the engine promises (``ALIGNED=True``) that every address is a multiple of
``ALIGNMENT`` bytes; chunk offsets are multiples of ``BLOCK_SIZE``. Full blocks are masked against a
bound that is itself a multiple of ``BLOCK_SIZE`` (``full_end``), so the compiler sees the mask as
constant across a vector and emits 16-byte loads and stores; a tensor's last partial block is masked
element by element.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton import knobs

from .schedule import lr_at

__all__ = ["ALIGNMENT", "FLAG_BLOCK", "UNSCALE_NONE", "UNSCALE_DIVIDE", "UNSCALE_RECIPROCAL", "compute_dtype",
           "round_to_bf16", "round_to_bf16_software", "chunk_of", "full_blocks", "tensor_ptr", "group_lr",
           "amp_scaling", "amp_reciprocal", "unscale", "store_schedule", "clear_first_flags", "finish_launch"]

# Bytes every parameter / grad / state address must be a multiple of for the ALIGNED=True
# specialization (one 16-byte vector load).
ALIGNMENT = 16
_ALIGNMENT = tl.constexpr(ALIGNMENT)

# First-step flags cleared (AdamW: step counts advanced) per iteration by the finishing program (a
# plain vector width; the loop runs once per launch on one program, over the launch's tensors or
# chunks: not performance-relevant).
FLAG_BLOCK = 128
_FLAG_BLOCK = tl.constexpr(FLAG_BLOCK)

# How ``unscale`` takes AMP's loss scale out of a gradient (a constexpr of the update loop; the
# kernel picks one per program, see ``amp_reciprocal``).
UNSCALE_NONE = tl.constexpr(0)  # SCALED=False: the gradient is used as loaded
UNSCALE_DIVIDE = tl.constexpr(1)  # g / grad_scale, IEEE division (torch's fused kernels divide)
UNSCALE_RECIPROCAL = tl.constexpr(2)  # g * (1 / grad_scale): the same bits when the scale is a power of two

# bfloat16 rounding: Triton's CPU interpreter rounds ``.to(tl.bfloat16)`` incorrectly (ties away
# from even, and mantissa carries are lost), so interpreted kernels round with integer operations;
# compiled kernels use the hardware conversion (``cvt.rn.bf16.f32``, round to nearest even on
# sm_80+: one instruction per element against ~16 for the integer version). Both give the same
# bits for every non-NaN float32 and a NaN for a NaN (tests/_triton_subprocess.py case_kernel_shape
# checks the integer version against torch's conversion; tests/test_triton_aot.py checks that the
# compiled bfloat16 kernels convert with cvt.rn.bf16.f32; tests/test_gpu.py checks the two against
# each other on all 2**32 inputs, on a GPU).
# Decided where Triton decides to interpret: when this module's ``@triton.jit`` functions are created.
_SOFTWARE_BF16 = tl.constexpr(bool(knobs.runtime.interpret))


def compute_dtype(dtype: tl.dtype) -> tl.dtype:
    """The arithmetic type for storage ``dtype``: float64 for float64, float32 otherwise (torch's
    "opmath" type, as in torch's own fused kernels)."""
    return tl.float64 if dtype == tl.float64 else tl.float32


@triton.jit
def round_to_bf16_software(x):
    """float32 block -> bfloat16 block, rounded to nearest, ties to even, in integer operations
    (NaN becomes the quiet NaN 0x7FC0: a NaN, as with any conversion, though NaN bits differ
    between them: the hardware gives 0x7FFF)."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    half = (rounded >> 16).to(tl.uint16)
    half = tl.where(x != x, 0x7FC0, half).to(tl.uint16)
    return half.to(tl.bfloat16, bitcast=True)


@triton.jit
def round_to_bf16(x):
    """float32 block -> bfloat16 block, rounded to nearest, ties to even: the hardware conversion
    in compiled kernels, ``round_to_bf16_software`` under the interpreter (see ``_SOFTWARE_BF16``)."""
    if _SOFTWARE_BF16:
        return round_to_bf16_software(x)
    else:
        return x.to(tl.bfloat16)


@triton.jit
def chunk_of(
    chunks_ptr,  # *int64 [n_programs, 3]: (tensor index, first element, end element) of each program's chunk
    numels_ptr,  # *int64 [n_tensors]: elements of each tensor (not read: the chunk table holds the ends)
    BLOCK_SIZE: tl.constexpr,  # elements per block
    CHUNK_BLOCKS: tl.constexpr,  # the most blocks a chunk spans
):
    """This program's chunk as ``(tensor, start, end)``: elements ``[start, end)`` of tensor
    ``tensor`` (int64 scalars; ``start`` is a multiple of ``BLOCK_SIZE``)."""
    row = chunks_ptr + 3 * tl.program_id(0).to(tl.int64)
    tensor = tl.load(row)
    start = tl.multiple_of(tl.load(row + 1), BLOCK_SIZE)
    end = tl.minimum(tl.load(row + 2), start + BLOCK_SIZE * CHUNK_BLOCKS)
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
def group_lr(
    step_ptr,  # *int64 [1]: the schedule's step counter t
    advance,  # int: scheduler steps taken since the counter was stored
    desc_ptr,  # *fp64 [n_groups, DESC_WIDTH]: schedule rows
    table_ptr,  # *fp64 [table_numel]: tabulated LR multipliers
    table_numel,  # int: elements behind table_ptr
    group,  # int32 scalar: this program's group (groups_ptr[tensor])
    tensor,  # int64 scalar: this program's tensor
    start,  # int64 scalar: the first element of this program's chunk
    groups_ptr,  # *int32 [n_tensors + ...]: each tensor's group
    lr_out_ptr,  # *fp64 [n_groups]: receives the group's LR (write_back only)
    write_back,  # int: 1 on the step's final launch
):
    """``(step, lr)``: the counter value this launch takes the LRs at (``t + advance``, int64) and
    group ``group``'s float64 learning rate there.

    On a write-back launch the group's first program stores ``lr`` in ``lr_out[group]``: the
    program of a tensor's first chunk whose tensor is the first of its group's run in the tensor
    table (exactly one program per group when the tensors are ordered by group, as the optimizers
    order them; otherwise a few programs store the same value). Nothing in a launch reads
    ``lr_out``, so the store needs no ordering against the other programs; ``finish_launch``
    stores the groups this launch has no tensor of."""
    step = tl.load(step_ptr) + advance
    lr = lr_at(step, desc_ptr, table_ptr, table_numel, group)
    if write_back != 0:
        previous = tl.load(groups_ptr + tl.maximum(tensor - 1, 0))
        if (start == 0) & ((tensor == 0) | (previous != group)):
            tl.store(lr_out_ptr + group, lr)
    return step, lr


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
def amp_reciprocal(
    grad_scale_ptr,  # *fp32 [1]: AMP's loss scale
    COMPUTE_DTYPE: tl.constexpr,  # the arithmetic type
):
    """``(inv_scale, exact)``: ``1 / grad_scale`` in the arithmetic type, and whether multiplying a
    gradient by it gives the bits dividing by ``grad_scale`` gives, for every gradient.

    It does when the scale is a normal float32 power of two, ``2**k`` with ``-126 <= k <= 127``
    (GradScaler's scales are: it starts at ``2**16`` and multiplies by 2 and 0.5): ``2**-k`` is then
    representable (``2**-127`` as a float32 subnormal), so ``g * 2**-k`` is the exact quotient
    rounded once, as IEEE division rounds it, subnormal and overflowing results included. Any other
    scale (not a power of two, subnormal, zero, inf, NaN) gives ``exact = False``: divide."""
    scale = tl.load(grad_scale_ptr)
    bits = scale.to(tl.uint32, bitcast=True)
    biased_exponent = (bits >> 23) & 0xFF
    exact = ((bits & 0x7FFFFF) == 0) & (biased_exponent != 0) & (biased_exponent != 0xFF)
    if COMPUTE_DTYPE == tl.float64:
        inv_scale = 1.0 / scale.to(tl.float64)  # float64 `/` is the IEEE div.rn.f64
    else:
        inv_scale = tl.div_rn(tl.full((), 1.0, tl.float32), scale)  # float32 `/` would be approximate on GPUs
    return inv_scale, exact


@triton.jit
def unscale(
    g,  # COMPUTE_DTYPE block: the gradient as loaded
    grad_scale,  # compute-type scalar: AMP's loss scale
    inv_scale,  # compute-type scalar: 1 / grad_scale (amp_reciprocal)
    clip_coef,  # compute-type scalar: clipping coefficient
    COMPUTE_DTYPE: tl.constexpr,  # the arithmetic type
    UNSCALE: tl.constexpr,  # UNSCALE_NONE, UNSCALE_DIVIDE or UNSCALE_RECIPROCAL
):
    """``(g / grad_scale) * clip_coef`` (``g`` itself for ``UNSCALE_NONE``): an IEEE division, or
    a multiplication by ``inv_scale`` where ``amp_reciprocal`` found it exact. Either way the bits
    are those of the division: one division per element costs as much as the rest of an SGD update."""
    if UNSCALE == UNSCALE_RECIPROCAL:
        g = (g * inv_scale) * clip_coef
    elif UNSCALE == UNSCALE_DIVIDE:
        # div_rn: Triton's `/` on float32 is the approximate div.full.f32 on NVIDIA GPUs (float64
        # `/` is already the IEEE div.rn.f64; div_rn takes float32 only).
        if COMPUTE_DTYPE == tl.float64:
            g = (g / grad_scale) * clip_coef
        else:
            g = tl.div_rn(g, grad_scale) * clip_coef
    return g


@triton.jit
def store_schedule(step, step_ptr, desc_ptr, table_ptr, table_numel, lr_out_ptr, n_groups, groups_ptr, n_tensors):
    """The finishing program's write-back of a schedule step (every update kernel's; arguments as
    ``finish_launch``'s): the LRs at ``step`` of the groups with no tensor in this launch
    (``group_lr`` stored the others) and the counter."""
    n_absent = tl.minimum(tl.load(groups_ptr + n_tensors), n_groups)
    for j in range(0, n_absent):
        group = tl.load(groups_ptr + n_tensors + 1 + j)
        tl.store(lr_out_ptr + group, lr_at(step, desc_ptr, table_ptr, table_numel, group))
    tl.store(step_ptr, step)


@triton.jit
def clear_first_flags(first_step_ptr, slots_ptr, n_tensors):
    """The finishing program clears the first-step flag of each of the launch tables' tensors
    (arguments as ``finish_launch``'s), ``FLAG_BLOCK`` at a time."""
    lanes = tl.arange(0, _FLAG_BLOCK)
    for start in range(0, n_tensors, _FLAG_BLOCK):
        idx = start + lanes
        slot = tl.load(slots_ptr + idx, mask=idx < n_tensors, other=0)
        tl.store(first_step_ptr + slot, tl.zeros([_FLAG_BLOCK], dtype=tl.int8), mask=idx < n_tensors)


@triton.jit
def finish_launch(
    ticket_ptr,  # *int32 [1]: 0 between launches; counts finished programs
    write_back,  # int: 1: store the advanced counter and the LRs of the groups absent from this launch
    clear_first,  # int: 1: clear this launch's first-step flags (when the update happened)
    updated,  # int1 scalar: the update happened (not a step AMP skipped)
    step,  # int64 scalar: the counter value the LRs were taken at (t + advance)
    step_ptr,  # *int64 [1]: the schedule's step counter
    desc_ptr,  # *fp64 [n_groups, DESC_WIDTH]: schedule rows
    table_ptr,  # *fp64 [table_numel]: tabulated LR multipliers
    table_numel,  # int: elements behind table_ptr
    lr_out_ptr,  # *fp64 [n_groups]: receives the LRs at ``step``
    n_groups,  # int: rows of lr_out
    groups_ptr,  # *int32 [n_tensors + 1 + n_absent]: the tensors' groups, n_absent, the absent groups
    first_step_ptr,  # *int8 [n_flags]: first-step flags
    slots_ptr,  # *int32 [n_tensors]: each tensor's index into first_step_ptr
    n_tensors,  # int: tensors in this launch
):
    """Finish the launch without racing the programs still reading the counter or the flags.

    Every program reads them before calling this (the atomic is acq_rel, so those reads cannot move
    past it); the program that takes the last ticket advances the schedule (it stores the counter
    and the LRs of the groups with no tensor in this launch, whose LRs no ``group_lr`` stored: a
    skipped AMP step advances it too), clears the first-step flags of an update that happened (a
    first step AMP skipped stays a first step), and resets the ticket for the next launch (launches
    run in stream order, so one ticket serves them all; CUDA graph replays too)."""
    if (write_back != 0) | (clear_first != 0):
        done = tl.atomic_add(ticket_ptr, 1)
        if done == tl.num_programs(0) - 1:
            if write_back != 0:
                store_schedule(step, step_ptr, desc_ptr, table_ptr, table_numel, lr_out_ptr, n_groups, groups_ptr,
                               n_tensors)
            if (clear_first != 0) & updated:
                clear_first_flags(first_step_ptr, slots_ptr, n_tensors)
            tl.store(ticket_ptr, 0)

"""Global gradient norm for fused gradient clipping: ``grad_norm_partials_kernel`` + ``grad_norm_finalize_kernel``.

``FusedSGD(max_grad_norm=...)`` clips like ``torch.nn.utils.clip_grad_norm_`` without a host sync and
without writing the gradients: these kernels compute the coefficient on the device and the update
kernel (``kernels/sgd.py``, ``SCALED=True``) multiplies each gradient by it while it updates.

1. ``grad_norm_partials_kernel``, one launch per storage dtype over the same tensor and chunk
   tables as the update (built by ``fused_lr.engine``, walked as in ``kernels/multi_tensor.py``):
   program ``i`` reduces its chunk of one gradient to one partial (sum of squares for
   ``norm_type=2``, max ``|g|`` for ``inf``), accumulated in the arithmetic type (float32 for
   float16 / bfloat16 / float32, float64 for float64), and stores it as float64 at ``partials[offset + i]``.
2. ``grad_norm_finalize_kernel``, one program: reduces every partial (plus one ``extra`` partial the
   host computed with torch ops for tensors the kernels do not take) in float64, then::

       total = sqrt(sum) (2-norm)  or  max (inf-norm), rounded to the norm's dtype
       total = total / grad_scale                     # the norm of the *unscaled* gradients
       clip_coef = max_norm / (total + 1e-6)          # in the norm's dtype, as torch does
       clip_coef = 1 if clip_coef > 1 else clip_coef  # torch's clamp(max=1.0): NaN stays NaN

   and stores ``total`` (the user-visible ``last_grad_norm``) and ``clip_coef`` (float64).

Non-finite gradients: a NaN anywhere makes the norm NaN (both norm types: the inf-norm tracks NaN
explicitly, because max() on the GPU drops NaN), an infinity makes it inf; the coefficient is then
NaN or 0 and the update multiplies by it, which is what clip_grad_norm_ does to the gradients.

Dividing the norm by ``grad_scale`` (instead of every element) gives the same norm up to one
rounding: ``||g / s|| = ||g|| / s`` exactly in real arithmetic, and bit for bit for the
power-of-two scales GradScaler uses (for the inf-norm, for any scale: rounding is monotone).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .multi_tensor import chunk_of, full_blocks, tensor_ptr

__all__ = ["FINALIZE_BLOCK", "grad_norm_partials_kernel", "grad_norm_finalize_kernel"]

# Partials reduced per iteration of the single finalize program (there is one partial per chunk of
# up to 65536 elements: ~400 for ResNet-50, ~2000 for GPT-2 small, so a handful of iterations; a
# launch given smaller chunks has fewer than 2 * PROGRAMS_PER_SM * SMs, fused_lr.engine.runtime).
FINALIZE_BLOCK = 1024


@triton.jit
def _partial_block(g_ptr, offs, end, acc, nan_seen, COMPUTE_DTYPE: tl.constexpr, NORM_INF: tl.constexpr):
    """Fold one block of gradient elements into the running per-lane accumulators."""
    g = tl.load(g_ptr + offs, mask=offs < end, other=0.0).to(COMPUTE_DTYPE)
    if NORM_INF:
        a = tl.abs(g)
        is_nan = a != a
        nan_seen = nan_seen | is_nan.to(tl.int32)
        acc = tl.maximum(acc, tl.where(is_nan, 0.0, a))
    else:
        acc = acc + g * g
    return acc, nan_seen


@triton.jit(do_not_specialize=["offset"], do_not_specialize_on_alignment=["chunks_ptr"])
def grad_norm_partials_kernel(
    grad_addrs_ptr,  # *int64 [n_tensors]: data_ptr() of each gradient (contiguous, DTYPE)
    numels_ptr,  # *int64 [n_tensors]: elements of each gradient
    chunks_ptr,  # *int64 [n_programs, 3]: (tensor index, first element, end element) of each program's chunk
    partials_ptr,  # *fp64 [offset + n_programs, ...]: receives this launch's partials
    offset,  # int: slot of program 0's partial in partials_ptr (launches of other dtypes use the others)
    DTYPE: tl.constexpr,  # storage dtype of the gradients: fp16, bf16, fp32 or fp64
    COMPUTE_DTYPE: tl.constexpr,  # accumulation type: fp64 for fp64, else fp32
    ALIGNED: tl.constexpr,  # every gradient address is a multiple of ALIGNMENT bytes (16-byte vector loads)
    NORM_INF: tl.constexpr,  # max |g| instead of the sum of squares
    BLOCK_SIZE: tl.constexpr,  # elements per block (the update kernel's)
    CHUNK_BLOCKS: tl.constexpr,  # the most blocks a chunk spans (the update kernel's: the chunk table is shared)
):
    """Reduce chunk ``program_id(0)`` of the gradient table to one float64 partial."""
    tensor, chunk_start, chunk_end = chunk_of(chunks_ptr, numels_ptr, BLOCK_SIZE, CHUNK_BLOCKS)
    g_ptr = tensor_ptr(grad_addrs_ptr, tensor, DTYPE, ALIGNED)
    n_full, full_end = full_blocks(chunk_start, chunk_end, BLOCK_SIZE)
    lanes = tl.arange(0, BLOCK_SIZE)
    acc = tl.zeros([BLOCK_SIZE], dtype=COMPUTE_DTYPE)
    nan_seen = tl.zeros([BLOCK_SIZE], dtype=tl.int32)
    for b in range(0, n_full):
        offs = chunk_start + b * BLOCK_SIZE + lanes
        acc, nan_seen = _partial_block(g_ptr, offs, full_end, acc, nan_seen, COMPUTE_DTYPE, NORM_INF)
    if full_end < chunk_end:
        acc, nan_seen = _partial_block(g_ptr, full_end + lanes, chunk_end, acc, nan_seen, COMPUTE_DTYPE, NORM_INF)
    if NORM_INF:
        partial = tl.max(acc, axis=0).to(tl.float64)
        partial = tl.where(tl.max(nan_seen, axis=0) != 0, float("nan"), partial)
    else:
        partial = tl.sum(acc, axis=0).to(tl.float64)
    tl.store(partials_ptr + offset + tl.program_id(0).to(tl.int64), partial)


@triton.jit(do_not_specialize=["n_partials"])
def grad_norm_finalize_kernel(
    partials_ptr,  # *fp64 [n_partials]: every partials launch's output
    n_partials,  # int: entries of partials_ptr to reduce
    extra_ptr,  # *fp64 [1]: one more partial (tensors the kernels do not take; 0 when none)
    grad_scale_ptr,  # *fp32 [1]: the gradients' loss scale (1 without AMP): the norm is divided by it
    max_norm_ptr,  # *fp64 [1]: max_grad_norm
    norm_out_ptr,  # *NORM_DTYPE [1]: receives the total norm of the unscaled gradients
    clip_coef_ptr,  # *fp64 [1]: receives min(max_norm / (norm + 1e-6), 1)
    NORM_INF: tl.constexpr,  # inf-norm partials (max) instead of sums of squares
    NORM_DTYPE: tl.constexpr,  # the norm's dtype: fp64 when a gradient is float64, else fp32
    BLOCK: tl.constexpr,  # partials per iteration (FINALIZE_BLOCK)
):
    """Total norm and clipping coefficient, on one program (see module docstring)."""
    lanes = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    nan_seen = tl.zeros([BLOCK], dtype=tl.int32)
    for start in range(0, n_partials, BLOCK):
        idx = start + lanes
        x = tl.load(partials_ptr + idx, mask=idx < n_partials, other=0.0)
        if NORM_INF:
            is_nan = x != x
            nan_seen = nan_seen | is_nan.to(tl.int32)
            acc = tl.maximum(acc, tl.where(is_nan, 0.0, x))
        else:
            acc = acc + x
    extra = tl.load(extra_ptr)
    if NORM_INF:
        total = tl.maximum(tl.max(acc, axis=0), tl.where(extra != extra, 0.0, extra))
        any_nan = (tl.max(nan_seen, axis=0) != 0) | (extra != extra)
        total = tl.where(any_nan, float("nan"), total)
    else:
        total = tl.sqrt(tl.sum(acc, axis=0) + extra)  # float64 sqrt is the IEEE sqrt.rn.f64
    total = total.to(NORM_DTYPE)
    if NORM_DTYPE == tl.float64:  # IEEE division either way (div_rn takes float32 only)
        total = total / tl.load(grad_scale_ptr).to(NORM_DTYPE)
    else:
        total = tl.div_rn(total, tl.load(grad_scale_ptr).to(NORM_DTYPE))
    # The constant in the norm's dtype: a bare 1e-6 would be a float32 literal (rounded) even in
    # float64 arithmetic, where torch adds the float64 1e-6.
    eps = tl.full([], 1e-6, NORM_DTYPE)
    if NORM_DTYPE == tl.float64:
        coef = tl.load(max_norm_ptr) / (total + eps)
    else:
        coef = tl.div_rn(tl.load(max_norm_ptr).to(NORM_DTYPE), total + eps)
    coef = tl.where(coef > 1.0, 1.0, coef)
    tl.store(norm_out_ptr, total)
    tl.store(clip_coef_ptr, coef.to(tl.float64))

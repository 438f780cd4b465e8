"""Tiny Triton kernels around kernels/multi_tensor.py's helpers, for ``case_kernel_shape`` in
tests/_triton_subprocess.py (interpreted) and tests/test_gpu.py (compiled). ``@triton.jit``
functions resolve names in their module's globals, hence a module of their own."""

from __future__ import annotations

import triton
import triton.language as tl
from fused_lr.kernels import multi_tensor as K


@triton.jit
def bf16_kernel(x_ptr, hw_ptr, sw_ptr, n, BLOCK: tl.constexpr):
    """``round_to_bf16`` (hardware conversion when compiled) and ``round_to_bf16_software`` of x."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(hw_ptr + offs, K.round_to_bf16(x), mask=offs < n)
    tl.store(sw_ptr + offs, K.round_to_bf16_software(x), mask=offs < n)


@triton.jit
def unscale_kernel(g_ptr, scale_ptr, clip_ptr, out_ptr, exact_ptr, n, COMPUTE_DTYPE: tl.constexpr,
                   BLOCK: tl.constexpr):
    """``(g / scale) * clip`` as the update kernels take it: the reciprocal branch where
    ``amp_reciprocal`` finds it exact, the division branch otherwise; ``exact`` stored too."""
    offs = tl.arange(0, BLOCK)
    g = tl.load(g_ptr + offs, mask=offs < n, other=0.0)
    grad_scale, clip_coef, updated = K.amp_scaling(scale_ptr, scale_ptr, clip_ptr, COMPUTE_DTYPE, True)
    inv_scale, exact = K.amp_reciprocal(scale_ptr, COMPUTE_DTYPE)
    if exact:
        out = K.unscale(g, grad_scale, inv_scale, clip_coef, COMPUTE_DTYPE, K.UNSCALE_RECIPROCAL)
    else:
        out = K.unscale(g, grad_scale, inv_scale, clip_coef, COMPUTE_DTYPE, K.UNSCALE_DIVIDE)
    tl.store(out_ptr + offs, out, mask=offs < n)
    tl.store(exact_ptr, exact.to(tl.int8))

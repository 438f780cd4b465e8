"""A toy update kernel with two state lists, to test the engine with an optimizer that is not SGD.

Registered as the kernel spec ``toy_accumulate`` (state lists ``sum`` and ``max``, one hyper column
``scale``); used by the ``engine_state_lists`` case of tests/_triton_subprocess.py, under Triton's
interpreter. Its update, per element, in the compute dtype (float32, float64 for float64)::

    g = g / grad_scale * clip_coef                      (SCALED only; nothing stored when found_inf)
    if scale != 0 (the group keeps state):
        sum = g,   max = |g|                            on the tensor's first step
        sum = sum + g,   max = maximum(max, |g|)        afterwards
        p = p - lr * (scale * sum)
    else:
        p = p - lr * g
"""

from __future__ import annotations

import triton
import triton.language as tl
from fused_lr.kernels.multi_tensor import amp_scaling, chunk_of, finish_launch, full_blocks, group_lr, tensor_ptr

from fused_lr import engine

HYPER_WIDTH = 1
HYPER_SCALE = 0
_HYPER_WIDTH = tl.constexpr(HYPER_WIDTH)
_HYPER_SCALE = tl.constexpr(HYPER_SCALE)


@triton.jit
def _block(p_ptr, g_ptr, s_ptr, m_ptr, offs, end, lr, scale, keep, first, grad_scale, clip_coef,
           DTYPE: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, SCALED: tl.constexpr):
    mask = offs < end
    state_mask = offs < tl.where(keep, end, 0)
    old_mask = offs < tl.where(keep, tl.where(first, 0, end), 0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    if SCALED:
        g = g / grad_scale * clip_coef
    s = tl.load(s_ptr + offs, mask=old_mask, other=0.0).to(COMPUTE_DTYPE)
    m = tl.load(m_ptr + offs, mask=old_mask, other=0.0).to(COMPUTE_DTYPE)
    s = tl.where(first, g, s + g)
    m = tl.where(first, tl.abs(g), tl.maximum(m, tl.abs(g)))
    p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    p = p - lr * tl.where(keep, scale * s, g)
    tl.store(p_ptr + offs, p.to(DTYPE), mask=mask)
    tl.store(s_ptr + offs, s.to(DTYPE), mask=state_mask)
    tl.store(m_ptr + offs, m.to(DTYPE), mask=state_mask)


@triton.jit(do_not_specialize=["table_numel", "advance", "n_groups", "write_back", "n_tensors", "clear_first"])
def accumulate_kernel(
    param_addrs_ptr, grad_addrs_ptr, sum_addrs_ptr, max_addrs_ptr,  # address tables: params, grads, 2 states
    numels_ptr, groups_ptr, first_step_ptr, slots_ptr, chunks_ptr, hyper_ptr, step_ptr, desc_ptr, table_ptr,
    table_numel, advance, lr_out_ptr, ticket_ptr, n_groups, write_back, n_tensors, clear_first, grad_scale_ptr,
    found_inf_ptr, clip_coef_ptr,  # the engine's common arguments (kernels/multi_tensor.py)
    DTYPE: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, SCALED: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, CHUNK_BLOCKS: tl.constexpr,
):
    tensor, start, end = chunk_of(chunks_ptr, numels_ptr, BLOCK_SIZE, CHUNK_BLOCKS)
    group = tl.load(groups_ptr + tensor)
    first = tl.load(first_step_ptr + tl.load(slots_ptr + tensor)) != 0
    p_ptr = tensor_ptr(param_addrs_ptr, tensor, DTYPE, ALIGNED)
    g_ptr = tensor_ptr(grad_addrs_ptr, tensor, DTYPE, ALIGNED)
    s_ptr = tensor_ptr(sum_addrs_ptr, tensor, DTYPE, ALIGNED)
    m_ptr = tensor_ptr(max_addrs_ptr, tensor, DTYPE, ALIGNED)
    step, lr = group_lr(step_ptr, advance, desc_ptr, table_ptr, table_numel, group, tensor, start, groups_ptr,
                        lr_out_ptr, write_back)
    lr = lr.to(COMPUTE_DTYPE)
    scale = tl.load(hyper_ptr + group.to(tl.int64) * _HYPER_WIDTH + _HYPER_SCALE).to(COMPUTE_DTYPE)
    keep = scale != 0
    grad_scale, clip_coef, updated = amp_scaling(grad_scale_ptr, found_inf_ptr, clip_coef_ptr, COMPUTE_DTYPE, SCALED)
    if SCALED:
        end = tl.where(updated, end, start)
    n_full, full_end = full_blocks(start, end, BLOCK_SIZE)
    lanes = tl.arange(0, BLOCK_SIZE)
    for b in range(0, n_full):
        _block(p_ptr, g_ptr, s_ptr, m_ptr, start + b * BLOCK_SIZE + lanes, full_end, lr, scale, keep, first,
               grad_scale, clip_coef, DTYPE, COMPUTE_DTYPE, SCALED)
    if full_end < end:
        _block(p_ptr, g_ptr, s_ptr, m_ptr, full_end + lanes, end, lr, scale, keep, first, grad_scale, clip_coef,
               DTYPE, COMPUTE_DTYPE, SCALED)
    finish_launch(ticket_ptr, write_back, clear_first, updated, step, step_ptr, desc_ptr, table_ptr, table_numel,
                  lr_out_ptr, n_groups, groups_ptr, first_step_ptr, slots_ptr, n_tensors)


SPEC = engine.register(engine.KernelSpec(
    name="toy_accumulate",
    module=__name__,
    kernel="accumulate_kernel",
    state_lists=("sum", "max"),
    hyper_columns=("scale",),
    keeps_state=lambda row: row[0] != 0,
))

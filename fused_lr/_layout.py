"""When an elementwise update may walk its tensors as flat arrays.

torch's fused SGD kernels and fused_lr's Triton kernel address a tensor as ``numel()`` consecutive
elements from ``data_ptr()``. That visits each of its elements exactly once, and nothing else, iff
the tensor is non-overlapping and dense: some permutation of its dims is contiguous (channels_last
and transposed tensors are; slices with gaps, ``as_strided`` views and expanded tensors are not).
torch's strides are never negative, so ``data_ptr()`` (the element at index 0) is then the lowest
address of exactly ``numel()`` elements. A parameter, its gradient and its momentum buffer may be
walked together (element k of each paired) iff they also have the same strides: the rule of torch's
own multi-tensor fast path (``check_fast_path_restrictions`` in ATen/native/ForeachUtils.h), which
ignores the strides of size-1 dims (they never move the address).

Everything else takes an algorithm that follows strides (see ``fused_lr.functional.sgd``).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import torch
from torch import Tensor

__all__ = ["is_dense", "same_strides", "flat_ok", "overlaps_itself", "real_view", "contiguous_present",
           "flat_stand_ins"]


def is_dense(t: Tensor) -> bool:
    """Non-overlapping and dense (ATen's ``is_non_overlapping_and_dense``, which Python does not
    expose): sorted by stride, the dims of size > 1 are contiguous."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def same_strides(a: Tensor, b: Tensor) -> bool:
    """Same memory order for two tensors of one shape: equal strides on every dim of size > 1."""
    sa, sb = a.stride(), b.stride()
    return sa == sb or all(x == y for n, x, y in zip(a.shape, sa, sb) if n != 1)


def flat_ok(p: Tensor, g: Tensor, b: Tensor | None = None) -> bool:
    """Whether parameter ``p``, gradient ``g`` and buffer ``b`` (None: one to be made in ``p``'s
    layout) can be updated as flat arrays of ``p.numel()`` elements each."""
    return is_dense(p) and same_strides(p, g) and (b is None or same_strides(p, b))


def overlaps_itself(t: Tensor) -> bool:
    """Some element is stored at another's address (a dim of size > 1 with stride 0): the case
    where torch refuses an in-place write ("more than one element of the written-to tensor refers
    to a single memory location")."""
    return any(st == 0 and n > 1 for n, st in zip(t.shape, t.stride()))


def real_view(t: Tensor) -> Tensor:
    """``t`` as real numbers: a complex tensor as ``torch.view_as_real`` (as torch's optimizers
    update complex parameters), any other as itself."""
    return torch.view_as_real(t) if t.is_complex() else t


def contiguous_present(*lists: Sequence[Tensor | None]) -> bool:
    """Every entry of ``lists`` is a contiguous tensor (a None, a state not made yet: False), in
    one pass at C level (the steady step's only per-tensor check in the torch path)."""
    try:
        return all(map(Tensor.is_contiguous, chain(*lists)))
    except TypeError:  # (a None)
        return False


def flat_stand_ins(p: Tensor, g: Tensor, states: Sequence[Tensor | None], copy_back: list) -> tuple[Tensor, Tensor, list]:
    """Parameter, gradient and states (None: absent) with one dense layout, for a kernel that walks
    them flat: each not already in it is copied into a new tensor in it (``p``'s own layout when it
    is dense, else a dense one). The stand-ins of ``p`` and of the states are appended to
    ``copy_back`` as (original, stand-in) pairs, to be copied back after the update (a step the
    kernel skips on ``found_inf`` copies back the unchanged values). Exact: copies do not round."""

    def stand_in(t: Tensor) -> Tensor:
        new = torch.empty_like(p, memory_format=torch.preserve_format).copy_(t)
        copy_back.append((t, new))
        return new

    if not is_dense(p):
        p = stand_in(p)
    if not same_strides(p, g):
        g = torch.empty_like(p, memory_format=torch.preserve_format).copy_(g)
    return p, g, [s if s is None or same_strides(p, s) else stand_in(s) for s in states]

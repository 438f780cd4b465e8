"""Where the Triton path can run, and the one launch configuration every engine launch uses
(block size, warps, floating-point contraction, and the chunk size of each launch).

On CPU tensors the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before
``triton`` is first imported); on CUDA tensors they run compiled, and the interpreter must be off
(it cannot follow device addresses stored in the tables).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

try:
    import triton.language as tl

    from fused_lr.kernels import grad_norm as norm_kernels
    from fused_lr.kernels import multi_tensor as mt_kernels
except ImportError:  # pragma: no cover - platforms without Triton use the torch path
    tl = None
    norm_kernels = None
    mt_kernels = None

__all__ = [
    "KERNEL_DTYPES",
    "triton_dtype",
    "interpreting",
    "triton_available",
    "check_device",
    "launch_config",
    "kernel_options",
    "override_launch_config",
    "sm_count",
    "chunk_blocks",
]

# --- Launch configuration: the one place block size, chunk size and warp count come from. ---
# BLOCK_SIZE = 1024 and num_warps = 4 are the Triton tutorials' defaults (01-vector-add uses
# BLOCK_SIZE=1024; 4 warps is Triton's default num_warps). The largest chunk, 64 blocks = 65536
# elements, is torch's multi_tensor_apply chunk size (kChunkSize in
# ATen/native/cuda/MultiTensorApply.cuh); a launch too small to fill the GPU with such chunks gets
# smaller ones (``chunk_blocks``, with its model). None of these is measured: no GPU was available
# when this was written. Measure before tuning (``override_launch_config`` takes every one of them).
BLOCK_SIZE = 1024
CHUNK_BLOCKS = 64
MIN_CHUNK_BLOCKS = 4
PROGRAMS_PER_SM = 4
NUM_WARPS = 4
# Contract a*b + c into FMAs (Triton 3.9's default, made explicit because 3.10 flips it): torch's
# CUDA kernels are built with nvcc's default --fmad=true, so this keeps the GPU update's rounding
# closest to stock's there. (The interpreter never contracts; the tests account for that.)
ENABLE_FP_FUSION = True

# Storage dtypes the kernels take (complex tensors go through torch.view_as_real).
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


_TRITON_DTYPES = {} if tl is None else dict(zip(KERNEL_DTYPES, (tl.float16, tl.bfloat16, tl.float32, tl.float64)))


def triton_dtype(dtype: torch.dtype) -> Any:
    """The Triton dtype of a storage dtype in ``KERNEL_DTYPES``."""
    return _TRITON_DTYPES[dtype]


def interpreting() -> bool:
    """True when the kernels were created under ``TRITON_INTERPRET=1`` (at import time)."""
    return norm_kernels is not None and type(norm_kernels.grad_norm_partials_kernel).__name__ == "InterpretedFunction"


def triton_available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton path can run on ``device``.

    ``None`` asks only whether Triton and the kernels import. A CUDA device needs the compiled
    kernels (interpreter off) and a visible GPU; a CPU device needs the interpreter.
    """
    if mt_kernels is None:
        return False
    if device is None:
        return True
    device = torch.device(device)
    if device.type == "cuda":
        return not interpreting() and torch.cuda.is_available()
    if device.type == "cpu":
        return interpreting()
    return False


def check_device(device: torch.device) -> None:
    """Raise the reason the Triton path cannot run on ``device``, if any."""
    if mt_kernels is None:
        raise RuntimeError("the Triton path needs the `triton` package, which failed to import")
    if device.type == "cpu":
        if not interpreting():
            raise RuntimeError(
                "the Triton path runs on CPU tensors only under Triton's interpreter: set "
                "TRITON_INTERPRET=1 before `triton` is first imported, or use backend='torch'"
            )
    elif device.type == "cuda":
        if interpreting():
            raise RuntimeError(
                "TRITON_INTERPRET=1 is set, so the Triton kernels are interpreted on the host, and "
                "the interpreter cannot follow CUDA addresses; use CPU tensors or unset it"
            )
    else:
        raise RuntimeError(f"the Triton path supports CUDA (and CPU under TRITON_INTERPRET=1), not {device}")


_PRODUCTION = {"BLOCK_SIZE": BLOCK_SIZE, "CHUNK_BLOCKS": CHUNK_BLOCKS, "MIN_CHUNK_BLOCKS": MIN_CHUNK_BLOCKS,
               "PROGRAMS_PER_SM": PROGRAMS_PER_SM, "num_warps": NUM_WARPS, "enable_fp_fusion": ENABLE_FP_FUSION}
_override: dict[str, int] | None = None


def launch_config(production: bool = False) -> dict:
    """``BLOCK_SIZE``, ``CHUNK_BLOCKS`` (the largest chunk), ``MIN_CHUNK_BLOCKS``, ``PROGRAMS_PER_SM``,
    ``num_warps`` and ``enable_fp_fusion`` of the next launch (``production``: without an
    ``override_launch_config`` in force)."""
    cfg = dict(_PRODUCTION)
    if _override and not production:
        cfg.update(_override)
    return cfg


# Registers per thread (ptxas ``.maxnreg``). Without a cap, ptxas kept values in local memory
# inside the hot loops of 14 update specializations (1 to 16 ``LDL``/``STL`` per block in their
# SASS, Triton 3.9, sm_80 and sm_90; our kernels call the non-inlined ``lr_at``) although they used
# only 56-96 registers; with a cap it allocates registers instead, and no hot loop spills
# (tests/test_triton_aot.py::test_registers_and_spills). 128 registers x 128 threads (4 warps)
# leaves room for 4 programs per SM (65536 registers on sm_80 and sm_90), the occupancy
# ``chunk_blocks`` plans for. float64 needs more: Adam's five operands hold 8 elements per thread
# in register pairs (and, unaligned, a 64-bit address each); capped at 128 its hot loops spilled
# 30-46 values per block, at 168 still 3-19 (unaligned); 255 (PTX's maximum) removes every spill,
# at a lower occupancy for float64 parameters. Not measured on a GPU.
MAX_REGISTERS = 128
MAX_REGISTERS_WIDE = 255


def kernel_options(cfg: dict, dtype: torch.dtype | None = None) -> dict:
    """The compile options of every engine kernel (update, norm partials, norm finalize) under
    launch configuration ``cfg`` for storage ``dtype`` (the norm's dtype for the finalize kernel):
    its warps, floating-point contraction and register cap, taken here so that no launch forgets
    one (Triton's defaults would apply silently)."""
    wide = dtype == torch.float64
    return {"num_warps": cfg["num_warps"], "enable_fp_fusion": cfg["enable_fp_fusion"],
            "maxnreg": MAX_REGISTERS_WIDE if wide else MAX_REGISTERS}


_SM_COUNTS: dict[int, int] = {}


def sm_count(device: torch.device) -> int | None:
    """Streaming multiprocessors of CUDA ``device`` (read once per device); None elsewhere."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    count = _SM_COUNTS.get(index)
    if count is None:
        count = _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return count


def chunk_blocks(numels: Sequence[int], sms: int | None, cfg: dict) -> int:
    """Blocks per chunk for one launch over tensors of ``numels`` elements on a GPU with ``sms``
    SMs: the largest of ``CHUNK_BLOCKS``, ``CHUNK_BLOCKS // 2``, ``// 4``, ... (none below
    ``MIN_CHUNK_BLOCKS``) that gives the launch at least ``PROGRAMS_PER_SM * sms`` programs, else
    the smallest; ``CHUNK_BLOCKS`` where ``sms`` is None (CPU, the interpreter).

    The model (on paper: no GPU has measured it yet). An update moves every byte once, so it runs
    at the speed of memory only with enough bytes in flight on every SM. A program has one block's
    loads in flight at a time (SGD with momentum, float32: 3 operands x 1024 elements x 4 bytes =
    12 KiB). Little's law with H100/H200 figures (3.3-4.8 TB/s x ~0.7 us of latency = 2.3-3.4 MB in
    flight, ~17-25 KiB per SM) asks for about 2 such programs per SM; each program also spends a prologue
    of dependent loads (its chunk row, its tensor's addresses, the schedule row, ``lr_at``) moving
    nothing, hence a target of 4 per SM. Programs are the chunks: torch's 65536-element chunk gives
    one 4M-element tensor 64 programs, fewer than an H200's 132 SMs (by this model about a third of
    the bandwidth); halving to 4096-element chunks gives it 1024. Below 4 blocks the prologue
    would weigh on every chunk, while a launch that small costs little anyway. Only the count of
    programs depends on the chunk: the kernels read each chunk's bounds from the chunk table.
    """
    largest = cfg["CHUNK_BLOCKS"]
    if not sms:
        return largest
    block, smallest, target = cfg["BLOCK_SIZE"], cfg["MIN_CHUNK_BLOCKS"], cfg["PROGRAMS_PER_SM"] * sms
    blocks = [-(-n // block) for n in numels if n > 0]
    chunk = largest
    while chunk // 2 >= smallest and sum(-(-b // chunk) for b in blocks) < target:
        chunk //= 2
    return chunk


@contextlib.contextmanager
def override_launch_config(**overrides: int) -> Iterator[None]:
    """Launch with other ``launch_config`` values inside the block (for tuning; the interpreter
    tests use smaller blocks to run faster). Plans built under an override are keyed by it."""
    global _override
    unknown = set(overrides) - set(_PRODUCTION)
    if unknown:
        raise TypeError(f"unknown launch parameters {sorted(unknown)}")
    previous = _override
    _override = dict(overrides)
    try:
        yield
    finally:
        _override = previous

"""Where the Triton path can run, and the one launch configuration every engine launch uses.

On CPU tensors the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before
``triton`` is first imported); on CUDA tensors they run compiled, and the interpreter must be off
(it cannot follow device addresses stored in the tables).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
    "override_launch_config",
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


_PRODUCTION = {"BLOCK_SIZE": BLOCK_SIZE, "CHUNK_BLOCKS": CHUNK_BLOCKS, "num_warps": NUM_WARPS,
               "enable_fp_fusion": ENABLE_FP_FUSION}
_override: dict[str, int] | None = None


def launch_config(production: bool = False) -> dict:
    """``BLOCK_SIZE``, ``CHUNK_BLOCKS``, ``num_warps`` and ``enable_fp_fusion`` of the next launch
    (``production``: without an ``override_launch_config`` in force)."""
    cfg = dict(_PRODUCTION)
    if _override and not production:
        cfg.update(_override)
    return cfg


@contextlib.contextmanager
def override_launch_config(**overrides: int) -> Iterator[None]:
    """Launch with other ``BLOCK_SIZE`` / ``CHUNK_BLOCKS`` / ``num_warps`` values inside the block
    (for tuning; the interpreter tests use smaller blocks to run faster). Plans built under an
    override are keyed by it."""
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

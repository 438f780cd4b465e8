"""Parameter sets as tensors: fp32 leaves with a gradient set once, shared by every method of a cell.

The shapes themselves (ResNet-50, GPT-2 small, many small, one large) are data in
``benchmarks/param_sets.py``; this module only turns shapes into tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Shape = tuple[int, ...]


def numel(shapes: list[Shape]) -> int:
    """Total number of elements over ``shapes``."""
    return sum(math.prod(s) for s in shapes)


@dataclass(frozen=True)
class ParamSet:
    """A named list of parameter shapes (one row of a comparison's table)."""

    name: str
    shapes: list[Shape]

    @property
    def numel(self) -> int:
        return numel(self.shapes)


def make_params(
    shapes: list[Shape], *, seed: int = 0, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """Leaf tensors of ``shapes`` (``dtype`` on ``device``) with ``.grad`` set once to random values."""
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.randn(s, generator=gen, dtype=dtype, device=device).requires_grad_(True)
        p.grad = torch.randn(s, generator=gen, dtype=dtype, device=device)
        params.append(p)
    return params

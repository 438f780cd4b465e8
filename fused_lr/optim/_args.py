"""Argument checks every fused optimizer shares (torch's error types; the bad value named)."""

from __future__ import annotations

import math
import numbers
from typing import Any

from torch import Tensor

__all__ = ["as_float", "split_named", "validate_clip"]


def as_float(name: str, value: Any, expected: str = "a real number", nan_ok: bool = False) -> float:
    """A hyper-parameter as a Python float (a one-element tensor is read), or a clear error naming it."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    value = float(value)
    if math.isnan(value) and not nan_ok:
        raise ValueError(f"Invalid {name}: {value}")
    return value


def split_named(params: Any) -> tuple[list, list | None]:
    """A group's "params" as torch.optim.Optimizer.add_param_group reads them: a tensor, or an
    ordered collection of tensors or of (name, tensor) pairs (``model.named_parameters()``).
    Returns (tensors, names or None); the caller's objects are not modified. Errors are torch's."""
    if isinstance(params, Tensor):
        params = [params]
    elif isinstance(params, set):
        raise TypeError(
            "optimizer parameters need to be organized in ordered collections, but "
            "the ordering of tensors in sets will change between runs. Please use a list instead."
        )
    else:
        params = list(params)
    names = [p[0] for p in params if isinstance(p, tuple)]
    if not names:
        return params, None
    if len(names) != len(params):
        raise ValueError("all optimizer params should be with/without names. Some param names are missing")
    return [p[1] for p in params], names


def validate_clip(max_grad_norm: Any, norm_type: Any, error_if_nonfinite: Any,
                  optimizer: str) -> tuple[float | None, float, bool]:
    """Checked (max_grad_norm, norm_type, error_if_nonfinite); errors name the bad value."""
    if max_grad_norm is not None:
        max_grad_norm = as_float("max_grad_norm", max_grad_norm, "a real number or None", nan_ok=True)
        if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm} (must be finite and > 0, or None to not clip)")
    if isinstance(norm_type, bool) or not isinstance(norm_type, (numbers.Real, str)):
        raise TypeError(f"norm_type must be 2.0 or float('inf'), got {norm_type!r}")
    unsupported = (f"Unsupported norm_type: {norm_type!r}; {optimizer} clips with the 2-norm or the inf-norm "
                   "(norm_type=2.0 or float('inf'))")
    try:
        p = float(norm_type)
    except ValueError:
        raise ValueError(unsupported) from None
    if p not in (2.0, math.inf):
        raise ValueError(unsupported)
    if not isinstance(error_if_nonfinite, bool):
        raise TypeError(f"error_if_nonfinite must be a bool, got {error_if_nonfinite!r}")
    return max_grad_norm, p, error_if_nonfinite

"""DTensor parameters (FSDP2's fully_shard, tensor parallelism): updates run on the local shards.

The fused updates are elementwise, so updating each rank's shard (a view sharing the DTensor's
memory) is exact; state tensors made from shards are wrapped back as their parameter is.
"""

from __future__ import annotations

import sys

from torch import Tensor

__all__ = ["dtensor_type", "local", "like_param", "has_dtensor"]


def dtensor_type():
    """DTensor if loaded: a DTensor parameter can only exist once torch.distributed.tensor is
    imported, and importing it here would add ~1 s to import fused_lr."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def local(t: Tensor | None) -> Tensor | None:
    """A DTensor's local shard (shares its memory), any other tensor (or None) as it is."""
    dtensor = dtensor_type()
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def like_param(local_state: Tensor, p: Tensor) -> Tensor:
    """A state tensor made from local shards, wrapped as ``p`` is (a DTensor like torch's)."""
    dtensor = dtensor_type()
    if dtensor is not None and isinstance(p, dtensor):
        return dtensor.from_local(local_state, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                  stride=p.stride())
    return local_state


def has_dtensor(params) -> bool:
    dtensor = dtensor_type()
    return dtensor is not None and any(isinstance(p, dtensor) for p in params)

"""Where fused_lr's host work meets the device: graph capture, free host reads, asynchronous uploads.

Every layer asks these questions the same way, through this module (always as
``_device.capturing(...)``, never a copied name, so that the tests' CPU simulations of a capture or of
an accelerator's code path reach every caller):

* ``capturing(device)``: is a CUDA graph being captured on the current stream? Then nothing may be
  read back, no pageable copy may be made, and whatever a captured launch references must outlive
  the graph (its replays read it).
* ``host_reads_free(device)``: may the host read a device value without a sync? True on CPU only.
  The torch path's code for accelerators (one persistent float32 LR buffer, AMP skips decided on
  the device) is chosen where it is False.
* ``to_device(host, device, keep)``: a host tensor on ``device`` without blocking the host (through
  pinned memory). While capturing, the pinned staging tensor is appended to ``keep``: the graph's
  copy node reads it at every replay, so it must never be freed or written again.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["capturing", "host_reads_free", "to_device", "upload", "copy_into"]


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on the current stream (``device`` is CUDA)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def host_reads_free(device: torch.device) -> bool:
    """Whether reading a value of ``device`` on the host costs no sync (a CPU tensor)."""
    return device.type == "cpu"


def to_device(host: Tensor, device: torch.device, keep: list | None = None) -> Tensor:
    """``host`` (a new CPU tensor the caller will not touch again) as a tensor on ``device``.

    CPU: ``host`` itself. CUDA: copied from pinned memory, asynchronously (torch's caching host
    allocator keeps the staging block until the copy has run), so a table rebuilt in a training
    loop costs no host sync. While capturing, the copy is a node of the graph: the staging tensor
    goes to ``keep`` (required then), whose owner must hold it as long as the graph may replay.
    """
    if device.type == "cpu":
        return host
    staged = host.pin_memory()
    if capturing(device):
        if keep is None:
            raise RuntimeError("an upload inside a CUDA-graph capture needs an owner for its staging tensor")
        keep.append(staged)
        out = torch.empty(host.shape, dtype=host.dtype, device=device)
        out.copy_(staged, non_blocking=True)
        return out
    return staged.to(device, non_blocking=True)


def upload(values, dtype: torch.dtype, device: torch.device, keep: list | None = None) -> Tensor:
    """A host list (or nested list) as a tensor on ``device`` (see ``to_device``)."""
    return to_device(torch.tensor(values, dtype=dtype), device, keep)


def copy_into(dst: Tensor, host: Tensor) -> None:
    """``dst.copy_(host)`` from a new host tensor without blocking the host (pinned, asynchronous
    on an accelerator). Not while capturing: the staging tensor would have no owner."""
    if dst.device.type == "cpu":
        dst.copy_(host)
    else:
        dst.copy_(host.pin_memory(), non_blocking=True)

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
* ``to_device(host, device, keep, reserve)``: a host tensor on ``device`` without blocking the host
  (through pinned memory). While capturing, pinned memory cannot be allocated (a potentially
  synchronizing call, refused in a capture), so the staging comes from ``reserve`` (a ``Reserve``:
  pinned memory its owner set aside before the capture), and the reserve's memory is appended to
  ``keep``: the graph's copy node reads it at every replay, so it must never be freed or written
  again (the owner sets aside a new reserve after the capture).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["capturing", "host_reads_free", "to_device", "upload", "copy_into", "Reserve", "CAPTURE_UPLOAD"]

CAPTURE_UPLOAD = (
    "fused_lr: a table must be uploaded from the host inside a CUDA-graph capture, and no pinned staging memory "
    "was set aside for it (or it is used up). Run the same step eagerly before capturing, with the gradients "
    "the captured step will have (opt.zero_grad(set_to_none=False) keeps their addresses)."
)


class Reserve:
    """Pinned host memory set aside (outside a capture) for the uploads of one capture: ``take``
    hands out 8-byte aligned pieces of it. Not on CPU (``buf`` None)."""

    def __init__(self, nbytes: int, device: torch.device) -> None:
        pinned = device.type == "cuda"
        self.buf = torch.empty(max(nbytes, 8), dtype=torch.uint8, pin_memory=True) if pinned else None
        self.used = 0

    def take(self, host: Tensor) -> Tensor | None:
        """``host``'s values in a piece of the reserve (a host-to-host copy: no device call), or
        None when it is too small."""
        nbytes = host.numel() * host.element_size()
        start = -(-self.used // 8) * 8
        if self.buf is None or start + nbytes > self.buf.numel():
            return None
        self.used = start + nbytes
        piece = self.buf[start : start + nbytes].view(host.dtype).view(host.shape)
        piece.copy_(host)
        return piece


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on the current stream (``device`` is CUDA)."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def host_reads_free(device: torch.device) -> bool:
    """Whether reading a value of ``device`` on the host costs no sync (a CPU tensor)."""
    return device.type == "cpu"


def to_device(host: Tensor, device: torch.device, keep: list | None = None, reserve: Reserve | None = None) -> Tensor:
    """``host`` (a new CPU tensor the caller will not touch again) as a tensor on ``device``.

    CPU: ``host`` itself. CUDA: copied from pinned memory, asynchronously (torch's caching host
    allocator keeps the staging block until the copy has run), so a table rebuilt in a training
    loop costs no host sync. While capturing, the copy is a node of the graph and its staging comes
    from ``reserve`` (required then, with ``keep``): the reserve's memory goes to ``keep``, whose
    owner must hold it as long as the graph may replay; ``CAPTURE_UPLOAD`` is raised where there
    is none (or it is used up).
    """
    if device.type == "cpu":
        return host
    if capturing(device):
        staged = reserve.take(host) if (reserve is not None and keep is not None) else None
        if staged is None:
            raise RuntimeError(CAPTURE_UPLOAD)
        if not any(k is reserve.buf for k in keep):
            keep.append(reserve.buf)
        out = torch.empty(host.shape, dtype=host.dtype, device=device)
        out.copy_(staged, non_blocking=True)
        return out
    return host.pin_memory().to(device, non_blocking=True)


def upload(values, dtype: torch.dtype, device: torch.device, keep: list | None = None,
           reserve: Reserve | None = None) -> Tensor:
    """A host list (or nested list) as a tensor on ``device`` (see ``to_device``)."""
    return to_device(torch.tensor(values, dtype=dtype), device, keep, reserve)


def copy_into(dst: Tensor, host: Tensor) -> None:
    """``dst.copy_(host)`` from a new host tensor without blocking the host (pinned, asynchronous
    on an accelerator). Not while capturing: the staging tensor would have no owner."""
    if dst.device.type == "cpu":
        dst.copy_(host)
    else:
        dst.copy_(host.pin_memory(), non_blocking=True)

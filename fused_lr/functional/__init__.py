"""Functional optimizer updates: one module per optimizer, one function per implementation.

``sgd``: ``sgd.sgd`` (torch ops, any device), ``sgd.sgd_loop`` (torch.optim.SGD's for-loop, sparse
gradients too), ``sgd.sgd_triton`` (one kernel launch per dtype for all groups, the LR computed on
the device), all with torch's keywords. ``adamw``: ``adamw.adamw`` (torch ops, Adam and AdamW) and
``adamw.adamw_triton`` (the kernel, LR and bias corrections computed on the device). ``clip``: the
AMP and clipping helpers every torch path shares. (As in torch.optim, the modules are not shadowed by their functions here.)
"""

from . import adamw, clip, sgd

__all__ = ["adamw", "clip", "sgd"]

"""The fused Triton SGD update as a custom op, so torch.compile can call the kernel.

Inside a compiled region the Triton launcher's host-side work (address tables, plan caches,
``data_ptr()``) cannot be traced. ``torch.ops.fused_lr.triton_sgd_update`` wraps one launch of
``fused_lr._triton_path.triton_sgd_step`` as an opaque operator that declares what it mutates
(parameters, momentum buffers, first-step flags, the ticket): the compiler keeps it in the graph,
in order, and at run time the launcher runs as in eager mode. The scheduler is not deferred inside
compiled regions (its counter advances with torch ops in the graph), so the op reads the LR at the
counter as it stands (``advance=0``) and writes nothing back.

(No ``from __future__ import annotations`` here: ``torch.library.custom_op`` reads the annotations
to build the operator schema.)
"""

from typing import List, Optional

import torch
from torch import Tensor

from . import _triton_path as _tp

# Launches through the op (at run time): tests check the compiled path really calls the kernel.
calls = 0


@torch.library.custom_op("fused_lr::triton_sgd_update", mutates_args=("params", "momentum_buffers", "first_flags", "ticket"))
def triton_sgd_update(
    params: List[Tensor],
    grads: List[Tensor],
    momentum_buffers: List[Optional[Tensor]],
    first_flags: Tensor,
    ticket: Tensor,
    desc: Tensor,
    table: Tensor,
    step: Tensor,
    hyper: List[float],
    group_index: List[int],
    slots: List[int],
    clear_first: bool,
) -> None:
    """One fused SGD update of ``params`` (see ``triton_sgd_step``); ``hyper`` is the flattened
    ``SGDHyper`` tuples (6 numbers per group)."""
    global calls
    calls += 1
    width = len(_tp.SGDHyper._fields)
    groups = [_tp.SGDHyper(*hyper[i : i + width]) for i in range(0, len(hyper), width)]
    groups = [h._replace(nesterov=bool(h.nesterov), maximize=bool(h.maximize), momentum_row=int(h.momentum_row)) for h in groups]
    _tp.triton_sgd_step(
        params, grads, list(momentum_buffers), None, group_index, groups, desc, table, step,
        advance=0, lr_out=None, ticket=ticket, cache=_CACHE,
        first_flags=first_flags, flag_slots=slots, clear_first=clear_first,
    )


@triton_sgd_update.register_fake
def _(params, grads, momentum_buffers, first_flags, ticket, desc, table, step, hyper, group_index, slots, clear_first):
    return None


# Plans for the op's launches (the inputs may be functionalization's copies: other addresses).
_CACHE = _tp.SGDPlanCache(max_plans=4)

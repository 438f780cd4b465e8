"""Any registered update kernel as one custom op, so torch.compile can call it.

Inside a compiled region the engine's host-side work (address tables, plan caches, ``data_ptr()``)
cannot be traced. ``torch.ops.fused_lr.multi_tensor_update`` wraps one ``multi_tensor_update`` of a
registered kernel spec (named by ``spec``) as an opaque operator that declares what it mutates
(parameters, state tensors, first-step flags, the ticket): the compiler keeps it in the graph, in
order, and at run time the engine runs as in eager mode. Schedulers are not deferred inside compiled
regions (their counter advances with torch ops in the graph), so the op reads the LR at the counter
as it stands (``advance=0``) and writes nothing back.

(No ``from __future__ import annotations`` here: ``torch.library.custom_op`` reads the annotations
to build the operator schema.)
"""


import torch
from torch import Tensor

from .launch import DeviceLR, multi_tensor_update
from .plan import PlanCache
from .spec import lookup

__all__ = ["multi_tensor_update_op"]

# Plans for the op's launches (the inputs may be functionalization's copies: other addresses).
_CACHE = PlanCache(max_plans=4)


@torch.library.custom_op("fused_lr::multi_tensor_update", mutates_args=("params", "states", "first_flags", "ticket"))
def multi_tensor_update_op(
    spec: str,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[Tensor],
    first_flags: Tensor,
    ticket: Tensor,
    desc: Tensor,
    table: Tensor,
    step: Tensor,
    hyper: list[float],
    group_index: list[int],
    slots: list[int],
    clear_first: bool,
) -> None:
    """One update of ``params`` by the kernel of the registered spec named ``spec`` (see
    ``multi_tensor_update``). ``states`` holds the spec's state lists one after the other (each
    ``len(params)`` long; then its scalar states'), any tensor (an empty placeholder) where the
    tensor's group does not keep that state (``spec.kept``: it becomes None here; a None in a
    mutated list argument is not supported by torch 2.13's functionalization); ``hyper`` the groups'
    hyper rows one after the other."""
    kernel = lookup(spec)
    n, width = len(params), len(kernel.hyper_columns)
    rows = [tuple(hyper[i : i + width]) for i in range(0, len(hyper), width)]
    state_lists = [[s if kernel.kept(rows[group_index[i]], k) else None for i, s in enumerate(states[k * n : (k + 1) * n])]
                   for k in range(kernel.n_tables())]
    multi_tensor_update(
        kernel, params, grads, state_lists, group_index, rows, DeviceLR(desc, table, step),
        ticket=ticket, first_flags=first_flags, flag_slots=slots, cache=_CACHE, clear_first=clear_first,
    )


@multi_tensor_update_op.register_fake
def _(spec, params, grads, states, first_flags, ticket, desc, table, step, hyper, group_index, slots, clear_first):
    return None

"""The multi-tensor engine: runs any registered update kernel over all of an optimizer's tensors.

It knows no optimizer (apex's ``multi_tensor_applier`` is the model). An optimizer registers a
``KernelSpec`` (its kernel, its state lists, its hyper-parameter columns) and hands the engine flat
lists; the engine does the rest:

* ``plan``: address tables for the parameters, the gradients and each state list, the chunk table,
  the hyper table; a cache of plans per parameter set and the refresh of the gradient table;
* ``launch``: argument checks, the fused-clipping norm launches, one update launch per dtype;
* ``state``: what each optimizer keeps for it (ticket, plans, first-step flags, clipping buffers,
  the steady-state step that repeats a plan in O(1) Python work per tensor);
* ``compiled``: the torch.compile custom op, for every registered spec;
* ``runtime``: where Triton can run, and the one launch configuration;
* ``spec``: the specs, the kernel calling convention (``kernels/multi_tensor.py``) and the list of
  every specialization, which the AOT test compiles.

Adding an optimizer's kernel: write ``kernels/<name>.py`` with its block update and a kernel taking
the common arguments (``kernels/multi_tensor.py``) and ``HYPER_<COLUMN>`` constants; register its
spec next to its functional form (``fused_lr/functional/<name>.py``); the optimizer class
(``fused_lr/optim/<name>.py``) names the spec and builds each group's hyper row.
"""

from . import compiled  # noqa: E402,F401  (registers torch.ops.fused_lr.multi_tensor_update)
from .launch import ClipSpec, DeviceLR, multi_tensor_update, warm_up
from .plan import PlanCache
from .runtime import KERNEL_DTYPES, check_device, interpreting, launch_config, override_launch_config, triton_available
from .spec import KernelSpec, kernel_specializations, lookup, register, registered
from .state import EngineState

__all__ = [
    "KernelSpec",
    "register",
    "registered",
    "lookup",
    "kernel_specializations",
    "ClipSpec",
    "DeviceLR",
    "multi_tensor_update",
    "warm_up",
    "PlanCache",
    "EngineState",
    "KERNEL_DTYPES",
    "check_device",
    "interpreting",
    "launch_config",
    "override_launch_config",
    "triton_available",
]

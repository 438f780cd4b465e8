"""Schedulers with torch.optim.lr_scheduler's names and signatures whose LR is computed on the device.

Each scheduler turns its arguments into rows of a :class:`fused_lr.schedules.DeviceSchedule`
(description + int64 step counter on the optimizer's device) and attaches it to a
:class:`fused_lr.FusedSGD` or of any torch optimizer. ``step()`` advances the device counter and the device recomputes every
group's LR with the closed form ``fused_lr.schedules.lr_at`` (torch ops, or inside the Triton update
kernel): no value is read back to the host. The host keeps ``last_epoch`` itself and sets the float
``group["lr"]`` and ``get_last_lr()`` from a CPU mirror of the description, also without a sync.

torch's schedulers are recurrences over ``group["lr"]``; these are closed forms that reproduce them:

* The LR at every step equals stock's to float64 rounding (not bit for bit).
* An LR assigned to ``group["lr"]`` (or loaded with the optimizer's state) carries on as torch's
  recurrence carries it: each scheduler's ``_edit_policy`` says how (a ratio of a multiplicative
  schedule: an edit of the row; dropped at the next step of a schedule torch recomputes; otherwise
  torch's own scheduler followed on the host, ``_torch_step_lrs``).
* Several schedulers stepped on one optimizer compose as torch's chain (``_Stack``).
* Constructing with ``last_epoch=k`` gives the closed-form LR at ``k + 1`` (torch's chained
  ExponentialLR/StepLR keep the LR found in the optimizer). Resume with ``load_state_dict``.

LambdaLR callables run on the device one of two ways (see :class:`LambdaLR`).
"""

from torch.optim.lr_scheduler import LRScheduler

from ._base import _FusedLRScheduler  # noqa: F401  (tests and composites reach it here)
from .closed_forms import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    ExponentialLR,
    LinearLR,
    MultiStepLR,
    PolynomialLR,
    StepLR,
)
from .composite import ChainedScheduler, PerGroupLR, SequentialLR
from .cycles import CyclicLR, OneCycleLR
from .lambdas import LambdaLR, MultiplicativeLR
from .large_model import (
    CosineDecayLR,
    InverseSqrtLR,
    WarmupCosineLR,
    WarmupStableDecayLR,
)
from .plateau import ReduceLROnPlateau
from .stack import _Stack  # noqa: F401

# The public classes live in fused_lr.lr_scheduler, whatever module defines them (messages, pickles).
for _cls in (StepLR, MultiStepLR, ConstantLR, LinearLR, ExponentialLR, PolynomialLR, CosineAnnealingLR,
             CosineAnnealingWarmRestarts, LambdaLR, MultiplicativeLR, SequentialLR, ReduceLROnPlateau, WarmupCosineLR,
             WarmupStableDecayLR, InverseSqrtLR, CosineDecayLR, CyclicLR, OneCycleLR, ChainedScheduler, PerGroupLR):
    _cls.__module__ = __name__

__all__ = [
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "LambdaLR",
    "MultiplicativeLR",
    "SequentialLR",
    "ReduceLROnPlateau",
    "WarmupCosineLR",
    "WarmupStableDecayLR",
    "InverseSqrtLR",
    "CosineDecayLR",
    "CyclicLR",
    "OneCycleLR",
    "ChainedScheduler",
    "PerGroupLR",
    "LRScheduler",
]

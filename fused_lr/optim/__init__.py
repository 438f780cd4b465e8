"""fused_lr's optimizers: torch.optim's arguments and behaviour, learning rates on the device.

``FusedOptimizer`` (``base``) holds what every optimizer shares; each optimizer module holds only
what is its own (``sgd``: ``FusedSGD``; ``adamw``: ``FusedAdamW`` and ``FusedAdam``).
"""

from .adamw import FusedAdam, FusedAdamW
from .base import FusedOptimizer
from .sgd import FusedSGD

__all__ = ["FusedOptimizer", "FusedSGD", "FusedAdamW", "FusedAdam"]

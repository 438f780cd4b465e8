"""``fused_lr.optimizer``: where ``FusedSGD`` was first importable from (``fused_lr.optim.sgd`` now)."""

from .optim.sgd import FusedSGD

__all__ = ["FusedSGD"]

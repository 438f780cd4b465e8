"""fused_lr: learning-rate-scheduled SGD and AdamW for PyTorch with the schedule on the device."""

from . import lr_scheduler, schedules
from .optim import FusedAdam, FusedAdamW, FusedSGD
from .plot import plot_schedule, schedule_values

__all__ = ["FusedSGD", "FusedAdamW", "FusedAdam", "lr_scheduler", "schedules", "plot_schedule", "schedule_values", "__version__"]
__version__ = "0.1.0"

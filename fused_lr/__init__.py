"""fused_lr: learning-rate-scheduled SGD for PyTorch with the schedule on the device."""

from . import lr_scheduler, schedules
from .optim import FusedSGD
from .plot import plot_schedule, schedule_values

__all__ = ["FusedSGD", "lr_scheduler", "schedules", "plot_schedule", "schedule_values", "__version__"]
__version__ = "0.1.0"

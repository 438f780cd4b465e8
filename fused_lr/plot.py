"""``plot_schedule``: draw the LR curve of a scheduler before training with it."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

__all__ = ["schedule_values", "plot_schedule"]


def schedule_values(scheduler: Any, steps: int) -> list[list[float]]:
    """LR of every group at steps ``0 .. steps-1``, without touching the scheduler or its optimizer.

    A fused_lr scheduler is evaluated from its description (the same closed form the device uses,
    on a CPU copy); any other scheduler (stock torch ones included) is stepped on a deep copy of
    itself and its optimizer. ReduceLROnPlateau depends on metrics and cannot be drawn ahead.
    """
    from .lr_scheduler import ReduceLROnPlateau, _FusedLRScheduler

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(scheduler, (ReduceLROnPlateau, torch.optim.lr_scheduler.ReduceLROnPlateau)):
        raise TypeError("ReduceLROnPlateau depends on the metrics it is given and cannot be drawn ahead")
    if isinstance(scheduler, _FusedLRScheduler):
        # The description with every tabulated part (lambdas, products, chains) grown to cover the
        # steps; device-mode lambdas are evaluated on the host, as get_last_lr() does.
        sched = scheduler.preview(steps)
        return [sched.host_lrs(t) for t in range(steps)]
    clone = copy.deepcopy(scheduler)
    out = []
    with warnings.catch_warnings():
        # Only the schedule is simulated, no optimizer step: silence torch's call-order warning.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            out.append([float(lr) for lr in clone.get_last_lr()])
            clone.step()
    return out


def plot_schedule(scheduler: Any, steps: int, *, ax=None, title: str | None = None, path: str | None = None):
    """Draw the LR of every parameter group over ``steps`` steps (matplotlib, the ``plot`` extra).

    Returns the matplotlib Axes; with ``path`` the figure is also saved there (PNG, SVG, ...).
    """
    try:
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("plot_schedule needs matplotlib: pip install 'fused-lr[plot]'") from e
    values = schedule_values(scheduler, steps)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    xs = list(range(steps))
    for g in range(len(values[0])):
        ax.plot(xs, [v[g] for v in values], label=f"group {g}")
    ax.set_xlabel("scheduler step")
    ax.set_ylabel("learning rate")
    ax.set_title(title or type(scheduler).__name__)
    ax.grid(alpha=0.3)
    if len(values[0]) > 1:
        ax.legend()
    if path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=110)
    return ax

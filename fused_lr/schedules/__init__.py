"""Device-resident learning-rate schedules: the schedule as data.

A schedule is one row of float64 numbers per parameter group (``rows``: its ``Kind``, named
columns, one factory per kind whose docstring gives the formula) plus an int64 step counter, both
on the parameters' device (``device.DeviceSchedule``). The LR at step ``t`` is one closed form of
that data, written twice: in torch ops here (``lr_at``; any device, never reads a value back to
the host) and as a Triton device function in ``fused_lr.kernels.schedule``; both are tested
against each other and against ``torch.optim.lr_scheduler``. ``lambdas`` decides whether a
LambdaLR callable runs on the device. Schedulers (``fused_lr.lr_scheduler``) build the rows.
"""

from .device import HOST_BLOCK, DeviceSchedule
from .lambdas import _ForbidHostReads, eval_lambda_on_device, lambda_runs_on_device
from .lr_at import lr_at, lr_table
from .rows import (
    CYCLIC_MODES,
    DESC_WIDTH,
    EDIT_COLS,
    PARAMS,
    WSD_SHAPES,
    Col,
    Kind,
    as_piece,
    col,
    constant_factor_row,
    constant_row,
    cosine_power_row,
    cosine_restarts_row,
    cosine_row,
    cyclic_row,
    direct_row,
    exponential_row,
    inverse_sqrt_row,
    linear_row,
    multistep_row,
    one_cycle_row,
    polynomial_row,
    product_row,
    sequential_row,
    shift_table,
    step_row,
    table_row,
    warmup_cosine_row,
    wsd_row,
)

__all__ = [
    "Kind",
    "Col",
    "DESC_WIDTH",
    "EDIT_COLS",
    "PARAMS",
    "col",
    "CYCLIC_MODES",
    "WSD_SHAPES",
    "constant_row",
    "step_row",
    "exponential_row",
    "cosine_row",
    "cosine_power_row",
    "table_row",
    "direct_row",
    "multistep_row",
    "constant_factor_row",
    "linear_row",
    "polynomial_row",
    "warmup_cosine_row",
    "wsd_row",
    "inverse_sqrt_row",
    "cosine_restarts_row",
    "sequential_row",
    "cyclic_row",
    "one_cycle_row",
    "product_row",
    "as_piece",
    "shift_table",
    "lr_at",
    "lr_table",
    "DeviceSchedule",
    "HOST_BLOCK",
    "lambda_runs_on_device",
    "eval_lambda_on_device",
    "_ForbidHostReads",
]

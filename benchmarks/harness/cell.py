"""One cell of a comparison: every method on one parameter set with one schedule, side by side.

Every method is built over the *same* parameter and gradient tensors (each optimizer keeps its own
momentum buffers), warmed up past one scheduler step (momentum buffers exist), then timed in
``repeats`` interleaved rounds (``timing``), each of a whole number of scheduler periods lasting
about ``target_s``. With a ``CopyProbe`` the copy is one more contender in every round and the cell's
bandwidth shares use it (``bandwidth``). A method whose build or run raises is kept with
``status="error"`` and its error text; the others go on. After timing (``extras``): the peak extra
memory of one iteration that includes a scheduler step (``memory``), and on CUDA launches and syncs
per iteration over one scheduler period (``launches``).

The cell is a dict with ``CELL_KEYS``; each method's result a dict with ``METHOD_KEYS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .bandwidth import SGD_MOMENTUM_FP32, CopyProbe, gbps
from .launches import cuda_counts
from .memory import peak_extra_bytes
from .methods import Schedule
from .params import ParamSet, make_params
from .timing import calls_per_round, error_text, interleaved_rounds, percentile, spread, sync

CELL_KEYS = ("set", "schedule", "tensors", "params", "bytes_per_step", "copy_gbps", "copy_round_s", "methods")
METHOD_KEYS = (
    "status", "error", "median_s", "p20_s", "p80_s", "round_s", "steps_per_round",
    "ratio", "gbps", "copy_share", "peak_extra_bytes", "launches_per_step", "memcpy_per_step",
    "syncs_per_step", "sync_calls_per_step", "compile_calls_s",
)


def summarize(
    round_s: dict[str, list[float]], bytes_per_step: int, copy_gbps: float | None, baselines: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per method, from per-round seconds: median, p20/p80, ratios to the baselines' medians
    (< 1: faster), bandwidth (``bytes_per_step / median``) and its share of ``copy_gbps``."""
    medians = {m: percentile(ts, 50) for m, ts in round_s.items() if ts}
    out: dict[str, dict[str, Any]] = {}
    for m, med in medians.items():
        bw = gbps(bytes_per_step, med)
        out[m] = dict(
            spread(round_s[m]),
            ratio={b: med / medians[b] for b in baselines if b in medians},
            gbps=bw,
            copy_share=(bw / copy_gbps) if copy_gbps else None,
        )
    return out


def empty_cell(param_set: ParamSet, schedule: str, bytes_per_param: int, methods: dict[str, dict]) -> dict[str, Any]:
    """A cell dict around ``methods`` results (every missing method key set to None)."""
    for res in methods.values():
        for k in METHOD_KEYS:
            res.setdefault(k, None)
    return dict(
        set=param_set.name,
        schedule=schedule,
        tensors=len(param_set.shapes),
        params=param_set.numel,
        bytes_per_step=bytes_per_param * param_set.numel,
        copy_gbps=None,
        copy_round_s=[],
        methods=methods,
    )


def measure(
    methods: Sequence[Any],
    param_set: ParamSet,
    schedule: Schedule,
    repeats: int,
    *,
    hyper: dict[str, Any],
    device: torch.device | str = "cpu",
    target_s: float = 0.1,
    bytes_per_param: int = SGD_MOMENTUM_FP32,
    copy_gbps: float | None = None,
    copy_probe: CopyProbe | None = None,
    params: list[torch.Tensor] | None = None,
    extras: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure ``methods`` (each with ``name``, ``baseline`` and ``build(params, schedule, device,
    hyper)``) side by side on ``param_set`` with ``schedule``: one result cell (module docstring).
    Without a ``copy_probe`` the bandwidth shares use ``copy_gbps``."""
    device = torch.device(device)
    tick = progress or (lambda _msg: None)
    if params is None:
        params = make_params(param_set.shapes, device=device)
    results: dict[str, dict[str, Any]] = {}
    runners, contenders = {}, {}
    every = schedule.every
    for m in methods:
        try:
            r = m.build(params, schedule, device, hyper)
            for _ in range(every + 2):  # momentum buffers exist, one scheduler step happened
                r.iteration()
            sync(device)
            contenders[m.name] = (r.iteration, calls_per_round(r.iteration, target_s, device, multiple=every))
            runners[m.name] = r
            results[m.name] = dict(status="ok", error=None, compile_calls_s=r.compile_calls_s)
        except Exception as e:  # noqa: BLE001 - recorded, shown as n/a
            results[m.name] = dict(status="error", error=error_text(e))
    tick("warm-up")
    if copy_probe is not None:
        contenders["copy"] = (copy_probe, calls_per_round(copy_probe, target_s / 2, device))
    round_s, errors = interleaved_rounds(contenders, repeats, device, tick)
    copy_s = round_s.pop("copy", [])
    errors.pop("copy", None)  # a failed probe leaves the cell without its own copy figure
    if copy_s:
        copy_gbps = gbps(copy_probe.nbytes, percentile(copy_s, 50))
    for name, err in errors.items():
        results[name].update(status="error", error=err)
        runners.pop(name)
    baselines = [m.name for m in methods if getattr(m, "baseline", False)]
    figures = summarize({n: round_s[n] for n in runners}, bytes_per_param * param_set.numel, copy_gbps, baselines)
    for name, fig in figures.items():
        results[name].update(fig, steps_per_round=contenders[name][1])
    if extras:
        for name, r in runners.items():
            try:
                while (r.i + 1) % every:  # the measured iteration includes a scheduler step
                    r.iteration()
                results[name]["peak_extra_bytes"] = peak_extra_bytes(r.iteration, device)
                if device.type == "cuda":
                    results[name].update(cuda_counts(r.iteration, every, device))
            except Exception as e:  # noqa: BLE001
                results[name]["extras_error"] = error_text(e)
        tick("memory")
    cell = empty_cell(param_set, schedule.name, bytes_per_param, results)
    cell.update(copy_gbps=copy_gbps, copy_round_s=copy_s)
    return cell

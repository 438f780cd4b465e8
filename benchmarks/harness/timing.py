"""Timing: seconds per call, rounds in alternating order, median and p20/p80 spread.

How a figure is made (the idea of Triton's ``do_bench(..., quantiles=[0.5, 0.2, 0.8])``, with
several contenders interleaved so that they see the same machine):

* warm-up is the caller's (a method runs past its first steps and one scheduler step first);
* ``calls_per_round``: how many back-to-back calls last about ``target_s`` (a multiple of
  ``multiple``, e.g. an epoch, so every round holds the same number of scheduler steps);
* ``interleaved_rounds``: ``repeats`` rounds; in each, every contender runs its calls back to back,
  in the order ABCD, DCBA, ABCD, ... (``round_order``): a load that drifts over the run weighs on
  all of them alike. One figure per contender and round: elapsed / calls;
* ``time_steps``: on CUDA a ``torch.cuda.Event`` pair around the calls, then a synchronize (the
  device's time, host launch overhead included when the device waits for the host); on CPU
  ``time.perf_counter``;
* ``spread``: median over the rounds and the p20-p80 range (numpy's linear interpolation).
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the device (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` over ``n`` back-to-back calls (CUDA: events, then synchronize)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n
    import time

    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def calls_per_round(fn: Callable[[], object], target_s: float, device: torch.device, multiple: int = 1) -> int:
    """Calls of ``fn`` lasting about ``target_s``, a multiple of ``multiple`` (at least one multiple);
    estimated from the faster of two timings of ``multiple`` calls."""
    est = min(time_steps(fn, multiple, device) for _ in range(2))
    return max(multiple, math.ceil(target_s / max(est, 1e-7) / multiple) * multiple)


def round_order(names: list[str], r: int) -> list[str]:
    """Contender order of round ``r``: ABCD, DCBA, ABCD, ..."""
    return list(names) if r % 2 == 0 else list(reversed(names))


def error_text(e: BaseException) -> str:
    """The one-paragraph text of an exception, for a result that failed (capped at 2,000 chars)."""
    text = "".join(traceback.format_exception_only(type(e), e)).strip()
    return text if len(text) <= 2000 else text[:2000] + " ..."


def interleaved_rounds(
    contenders: dict[str, tuple[Callable[[], object], int]],
    repeats: int,
    device: torch.device,
    tick: Callable[[str], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Time ``{name: (fn, calls)}`` in ``repeats`` alternating rounds.

    Returns seconds per call of each round, per name, and the error text of every contender that
    raised (its rounds are dropped; the others go on).
    """
    rounds: dict[str, list[float]] = {name: [] for name in contenders}
    errors: dict[str, str] = {}
    for r in range(repeats):
        for name in round_order(list(contenders), r):
            if name in errors:
                continue
            fn, calls = contenders[name]
            try:
                rounds[name].append(time_steps(fn, calls, device))
            except Exception as e:  # noqa: BLE001 - recorded, shown as n/a
                errors[name] = error_text(e)
                rounds[name] = []
        if tick:
            tick(f"round {r + 1}/{repeats}")
    return rounds, errors


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of ``xs``, ``q`` in [0, 100]."""
    s = sorted(xs)
    if not s:
        return math.nan
    k = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def spread(round_s: list[float]) -> dict[str, object]:
    """Median, p20 and p80 of per-round seconds, and the rounds themselves."""
    return dict(
        median_s=percentile(round_s, 50),
        p20_s=percentile(round_s, 20),
        p80_s=percentile(round_s, 80),
        round_s=list(round_s),
    )

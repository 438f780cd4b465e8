"""Behaviours of stock torch 2.13's schedulers that fused_lr reproduces, each run beside stock.

* The warnings each scheduler's ``step`` emits (torch's ``EPOCH_DEPRECATION_WARNING``; none from
  CosineAnnealingWarmRestarts).
* An old-format OneCycleLR state dict (``anneal_func``, no ``_anneal_func_type``) loads.

LRs are compared with conftest's ``LR_RTOL`` (closed forms vs torch's recurrences), read with
``float(...)`` so the comparisons hold whatever type ``group["lr"]`` has.
"""

from __future__ import annotations

import math
import os
import pathlib
import random
import subprocess
import sys
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as stock

import fused_lr
import fused_lr.lr_scheduler as fused
from fused_lr import schedules as S
from fused_lr.schedules import _ForbidHostReads

from conftest import assert_lrs_close

BASE = (0.1, 0.02)


def _pair(momentum=0.9):
    a = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": lr} for lr in BASE], momentum=momentum)
    b = fused_lr.FusedSGD([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": lr} for lr in BASE], momentum=momentum)
    return a, b


def _lrs(opt):
    return [float(g["lr"]) for g in opt.param_groups]


def _add_group(*opts, lr=0.05):
    for o in opts:
        o.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))], "lr": lr})


def _both(fa, fb):
    """Run ``fa`` (stock) and ``fb`` (fused); return their exceptions (or None)."""
    out = []
    for f in (fa, fb):
        try:
            f()
            out.append(None)
        except Exception as e:  # noqa: BLE001 - compared below
            out.append(e)
    return out


# ---------------------------------------------------------------- 5. step() warnings

def _stepped_warnings(sched, opt, calls, order_ok):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for call in calls:
            if order_ok:
                opt.step()
            if isinstance(sched, (stock.ReduceLROnPlateau,)):
                sched.step(1.0) if call is None else sched.step(1.0, call)
            else:
                sched.step() if call is None else sched.step(call)
    return [(w.category, str(w.message)) for w in caught]


WARNING_CASES = {
    "StepLR": lambda m, o: m.StepLR(o, 3),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, [2, 4]),
    "ConstantLR": lambda m, o: m.ConstantLR(o),
    "LinearLR": lambda m, o: m.LinearLR(o),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, 0.9),
    "PolynomialLR": lambda m, o: m.PolynomialLR(o),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, 5),
    "CosineAnnealingWarmRestarts": lambda m, o: m.CosineAnnealingWarmRestarts(o, 3),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lambda e: 0.9**e),
    "MultiplicativeLR": lambda m, o: m.MultiplicativeLR(o, lambda e: 0.9),
    "CyclicLR": lambda m, o: m.CyclicLR(o, 0.01, 0.1),
    "OneCycleLR": lambda m, o: m.OneCycleLR(o, 0.1, total_steps=20),
    "ReduceLROnPlateau": lambda m, o: m.ReduceLROnPlateau(o),
}


@pytest.mark.parametrize("name", list(WARNING_CASES))
@pytest.mark.parametrize("order_ok", [True, False], ids=["after-opt-step", "before-opt-step"])
def test_step_warnings_match_stock(name, order_ok):
    """The same warnings, in the same order, with the same text, for step() and step(epoch)
    (torch's EPOCH_DEPRECATION_WARNING; CosineAnnealingWarmRestarts' step warns about nothing)."""
    calls = [None, 2, None, 4]
    got = []
    for m in (stock, fused):
        a, b = _pair()
        opt = a if m is stock else b
        sched = WARNING_CASES[name](m, opt)
        got.append(_stepped_warnings(sched, opt, calls, order_ok))
    assert got[1] == got[0]
    deprecations = [msg for _, msg in got[0] if msg == stock.EPOCH_DEPRECATION_WARNING]
    assert len(deprecations) == (0 if name == "CosineAnnealingWarmRestarts" else 2)


# ---------------------------------------------------------------- 6. old-format OneCycleLR state dict

@pytest.mark.parametrize("constructed", ["cos", "linear"])
def test_one_cycle_old_format_state_dict_loads_as_torchs(constructed):
    """torch < 2.2 saved the bound method ``anneal_func`` and no ``_anneal_func_type``. torch 2.13
    loads it with ``__dict__.update``, keeping the strategy the scheduler was constructed with."""
    a, b = _pair()
    saved = stock.OneCycleLR(a, 1.0, total_steps=20, anneal_strategy="cos")
    for _ in range(5):
        a.step(), saved.step()
    sd = saved.state_dict()
    del sd["_anneal_func_type"]
    sd["anneal_func"] = saved._annealing_cos
    a2, b2 = _pair()
    sa = stock.OneCycleLR(a2, 1.0, total_steps=20, anneal_strategy=constructed)
    sb = fused.OneCycleLR(b2, 1.0, total_steps=20, anneal_strategy=constructed)
    sa.load_state_dict(dict(sd))
    sb.load_state_dict(dict(sd))
    assert sb._anneal_func_type == sa._anneal_func_type == constructed
    for t in range(6, 21):
        a2.step(), b2.step(), sa.step(), sb.step()
        assert_lrs_close(_lrs(b2), _lrs(a2), f"step {t}")
        assert_lrs_close([g["momentum"] for g in b2.param_groups], [g["momentum"] for g in a2.param_groups], f"momentum {t}")

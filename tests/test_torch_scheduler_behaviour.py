"""Behaviours of stock torch 2.13's schedulers that fused_lr reproduces, each run beside stock.

* ReduceLROnPlateau after ``opt.add_param_group``: torch's ``min_lrs`` handling (a scalar
  ``min_lr`` covers the new group; a list raises torch's error when a step would reduce).
* LambdaLR / MultiplicativeLR call their callables when torch does: a callable defined only over
  the run, one reading state that changes, one filled in by the loop; torch's exception at the
  step where torch raises it, with nothing changed.
* CosineAnnealingWarmRestarts: ``T_cur`` / ``T_i`` read and assigned as in torch, mixed
  ``step()`` / ``step(int)`` / ``step(float)`` sequences.
* SequentialLR with a ChainedScheduler part; each part of a ChainedScheduler reports torch's
  chained LR through ``get_last_lr()``.
* The warnings each scheduler's ``step`` emits (torch's ``EPOCH_DEPRECATION_WARNING``; none from
  CosineAnnealingWarmRestarts).
* An old-format OneCycleLR state dict (``anneal_func``, no ``_anneal_func_type``) loads.

LRs are compared with conftest's ``LR_RTOL`` (closed forms vs torch's recurrences), read with
``float(...)`` so the comparisons hold whatever type ``group["lr"]`` has. The Triton path of the
same behaviours runs under the interpreter in tests/_triton_behaviour_subprocess.py.
"""

from __future__ import annotations

import os
import pathlib
import random
import subprocess
import sys
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import assert_lrs_close

import fused_lr
import fused_lr.lr_scheduler as fused
from fused_lr import schedules as S

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


# ---------------------------------------------------------------- 1. ReduceLROnPlateau + add_param_group

# A metric that improves, then stalls: with patience=1 the LR is reduced every second step.
PLATEAU_METRICS = [1.0, 0.9, 0.95, 0.97, 0.99, 0.98, 1.0, 1.0, 1.0, 1.0]


def _plateau_state(s):
    return (_lrs(s.optimizer), s.num_bad_epochs, s.cooldown_counter, s.last_epoch, list(s.min_lrs))


@pytest.mark.parametrize("device_metric", [False, True])
def test_plateau_scalar_min_lr_covers_an_added_group(monkeypatch, device_metric):
    """torch: a scalar min_lr is replaced by [min_lr] * groups at the first reduction after the
    group was added; until then min_lrs keeps its old length. Decisions are the same float64
    comparisons and products on both sides: every value must be equal. ``device_metric``: the
    accelerator path (forced on CPU tensors), where neither the metric nor the device state is read
    back during a step."""
    from conftest import ForbidReadsOf

    if device_metric:
        monkeypatch.setattr(fused_lr.lr_scheduler.plateau, "_host_can_read", lambda t: False)
    a, b = _pair()
    sa = stock.ReduceLROnPlateau(a, patience=1, factor=0.5, min_lr=1e-2)
    sb = fused.ReduceLROnPlateau(b, patience=1, factor=0.5, min_lr=1e-2)
    for i, m in enumerate(PLATEAU_METRICS):
        if i == 2:
            _add_group(a, b)
        sa.step(m)
        metric = torch.tensor(m, dtype=torch.float64)
        if device_metric:
            with ForbidReadsOf(b.lr_tensor, sb._best, sb._num_bad, sb._cooldown_counter, sb._metric, metric):
                sb.step(metric)
            # The floats follow the device once its asynchronous copy has arrived (on CPU: at once),
            # which any read through the scheduler checks for.
            sb.get_last_lr()
        else:
            sb.step(metric)
        assert _plateau_state(sb) == _plateau_state(sa), f"step {i}"
    assert _lrs(b)[2] == 1e-2, "the bound applies to the added group"
    assert sb.state_dict()["min_lrs"] == sa.state_dict()["min_lrs"] == [1e-2] * 3


def test_plateau_list_min_lr_raises_torchs_error_only_when_it_reduces():
    a, b = _pair()
    sa = stock.ReduceLROnPlateau(a, patience=1, factor=0.5, min_lr=[1e-3, 1e-4])
    sb = fused.ReduceLROnPlateau(b, patience=1, factor=0.5, min_lr=[1e-3, 1e-4])
    for m in PLATEAU_METRICS[:2]:
        sa.step(m), sb.step(m)
    _add_group(a, b)
    ea, eb = _both(lambda: sa.step(0.95), lambda: sb.step(0.95))  # a bad epoch, no reduction yet: no error
    assert ea is None and eb is None
    assert _plateau_state(sb) == _plateau_state(sa)
    before = (_plateau_state(sb), sb.best)
    ea, eb = _both(lambda: sa.step(0.97), lambda: sb.step(0.97))  # would reduce: torch's RuntimeError
    assert type(ea) is type(eb) is RuntimeError and str(eb) == str(ea), (ea, eb)
    # Raised before anything changed (torch has counted the bad epoch and advanced last_epoch).
    assert (_plateau_state(sb), sb.best) == before
    # As torch's message says: give min_lrs one value per group (assigned, or edited in place).
    sa.min_lrs = [1e-3, 1e-4, 1e-2]
    sb.min_lrs.append(1e-2)
    sa.step(0.97), sb.step(0.97)
    assert _lrs(b) == _lrs(a) == [0.05, 0.01, 0.025]
    for m in PLATEAU_METRICS[4:]:
        sa.step(m), sb.step(m)
        assert _lrs(b) == _lrs(a)
    assert _lrs(b)[2] == 1e-2  # the new group's own bound
    assert sb.state_dict()["min_lrs"] == sa.state_dict()["min_lrs"]


def test_plateau_state_dict_with_mismatched_min_lrs_loads_as_torchs():
    """A stock state dict saved before a group was added (two min_lrs) loads into a scheduler of a
    three-group optimizer, as torch's does; the next reducing step raises torch's error."""
    a, b = _pair()
    sa = stock.ReduceLROnPlateau(a, patience=0, min_lr=[1e-3, 1e-4])
    sa.step(1.0)
    _add_group(a, b)
    sb = fused.ReduceLROnPlateau(b, patience=0)
    sb.load_state_dict(sa.state_dict())
    assert sb.min_lrs == [1e-3, 1e-4] and sb.default_min_lr is None
    ea, eb = _both(lambda: sa.step(2.0), lambda: sb.step(2.0))
    assert type(ea) is type(eb) is RuntimeError and str(eb) == str(ea)
    with pytest.raises(ValueError, match=r"min_lrs\[1\] must be >= 0, got -1.0"):
        sb.load_state_dict({**sa.state_dict(), "min_lrs": [1e-3, -1.0]})
    assert sb.min_lrs == [1e-3, 1e-4]


# ---------------------------------------------------------------- 2. LambdaLR / MultiplicativeLR call times

TABLE = [0.9**k for k in range(12)]  # defined over a 12-step run only


def _run_until_error(sa, sb, a, b, steps):
    """Step both until one raises; both must raise the same exception at the same step, and the
    fused scheduler must be unchanged by it. Returns the step that raised (or None)."""
    for t in range(1, steps):
        a.step(), b.step()
        before = (sb.last_epoch, _lrs(b), sb.get_last_lr())
        ea, eb = _both(sa.step, sb.step)
        if ea is not None or eb is not None:
            assert type(ea) is type(eb) and str(ea) == str(eb), (t, ea, eb)
            assert (sb.last_epoch, _lrs(b), sb.get_last_lr()) == before, f"step {t}: the failed step changed the scheduler"
            return t
        assert_lrs_close(_lrs(b), _lrs(a), f"step {t}")
        assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"step {t} get_last_lr")
    return None


@pytest.mark.parametrize("name", ["LambdaLR", "MultiplicativeLR"])
def test_callable_defined_over_the_run_only(name):
    """``lambda e: TABLE[e]`` works for the 11 steps torch takes, then raises torch's IndexError at
    the step where torch raises it (it used to raise at construction: tabulated up to 1024)."""
    a, b = _pair()
    sa, sb = getattr(stock, name)(a, lambda e: TABLE[e]), getattr(fused, name)(b, lambda e: TABLE[e])
    assert sb.modes == ["table", "table"]
    assert _run_until_error(sa, sb, a, b, 30) == len(TABLE)


def test_probe_that_raises_is_not_an_error():
    """Plain arithmetic defined only below epoch 100 (a device-mode probe epoch raises on the host):
    not device mode, no error, torch's ZeroDivisionError at step 100."""
    fn = lambda e: 1.0 / (100 - e)  # noqa: E731
    assert S.lambda_runs_on_device(fn) is False
    a, b = _pair()
    sa, sb = stock.LambdaLR(a, fn), fused.LambdaLR(b, fn)
    assert sb.modes == ["table", "table"]
    assert _run_until_error(sa, sb, a, b, 120) == 100


class _Scale:
    """A callable object reading state the training loop changes (torch calls it in step())."""

    def __init__(self):
        self.value = 1.0

    def __call__(self, epoch):
        return self.value


@pytest.mark.parametrize("name", ["LambdaLR", "MultiplicativeLR"])
def test_callable_reading_changing_state(name):
    fa, fb = _Scale(), _Scale()
    a, b = _pair()
    sa, sb = getattr(stock, name)(a, fa), getattr(fused, name)(b, fb)
    for t in range(1, 25):
        fa.value = fb.value = 1.0 / (1 + t % 4) + (0.5 if name == "MultiplicativeLR" else 0.0)
        a.step(), b.step(), sa.step(), sb.step()
        assert_lrs_close(_lrs(b), _lrs(a), f"{name} step {t}")
        assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"{name} step {t} get_last_lr")


def test_callable_filled_in_by_the_loop():
    """A lookup the loop extends before each step: valid at every epoch torch asks for, never ahead."""
    ta, tb = [1.0], [1.0]
    a, b = _pair()
    sa, sb = stock.LambdaLR(a, lambda e: ta[e]), fused.LambdaLR(b, lambda e: tb[e], horizon=None)
    for t in range(1, 30):
        ta.append(0.97**t), tb.append(0.97**t)
        a.step(), b.step(), sa.step(), sb.step()
        assert_lrs_close(_lrs(b), _lrs(a), f"step {t}")


def test_explicit_horizon_is_checked_at_construction():
    """Under CUDA-graph replay the device reads the table without the host: an explicit horizon the
    callable does not cover is an error naming the epoch, before the optimizer's LRs change."""
    _, b = _pair()
    before = _lrs(b)
    with pytest.raises(ValueError, match="raised IndexError at epoch 12, inside horizon=64") as info:
        fused.LambdaLR(b, lambda e: TABLE[e], horizon=64)
    assert isinstance(info.value.__cause__, IndexError)
    assert _lrs(b) == before
    fused.LambdaLR(b, lambda e: TABLE[e], horizon=12)  # covered: fine


def test_multiplicative_step_epoch_multiplies_the_current_lr():
    """torch's MultiplicativeLR.step(epoch) is chained: lr * lr_lambda(epoch), not the product up to epoch."""
    a, b = _pair()
    sa, sb = stock.MultiplicativeLR(a, lambda e: 0.9 - 0.01 * e), fused.MultiplicativeLR(b, lambda e: 0.9 - 0.01 * e)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation warning (compared in test_step_warnings_match_stock)
        for epoch in (None, None, 7, None, 3, None, 10, None):
            a.step(), b.step()
            (sa.step(), sb.step()) if epoch is None else (sa.step(epoch), sb.step(epoch))
            assert_lrs_close(_lrs(b), _lrs(a), f"after step({epoch})")


def test_sequential_lambda_piece_called_at_its_local_epochs():
    """A LambdaLR piece defined only over its stretch of the sequence works (torch never calls it
    past its milestone); one that fails inside its stretch raises when torch does."""
    for length, milestone in ((5, 5), (5, 8)):
        table = TABLE[:length]
        a, b = _pair()
        sa = stock.SequentialLR(a, [stock.LambdaLR(a, lambda e: table[e]), stock.StepLR(a, 3, 0.5)], [milestone])
        sb = fused.SequentialLR(b, [fused.LambdaLR(b, lambda e: table[e]), fused.StepLR(b, 3, 0.5)], [milestone])
        assert _run_until_error(sa, sb, a, b, 20) == (None if length == milestone else length)


# ---------------------------------------------------------------- 3. CosineAnnealingWarmRestarts

def _random_calls(rng, n, assign):
    calls = []
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            calls.append(None)
        elif r < 0.7:
            calls.append(rng.randint(0, 60))
        elif r < 0.85 or not assign:
            calls.append(rng.randint(0, 600) / 10)
        elif r < 0.93:
            calls.append(("T_cur", rng.choice([0, 1, 2.5, rng.randint(0, 10)])))
        else:
            calls.append(("T_i", rng.choice([1, 2, 4, 7, 12])))
    return calls


@pytest.mark.parametrize("assign", [False, True], ids=["steps", "steps-and-assignments"])
def test_warm_restarts_mixed_calls_match_stock(assign):
    """60 random sequences of step(), step(int), step(float) (and assignments of T_cur / T_i):
    LR, get_last_lr, last_epoch, T_cur and T_i as stock's after every call; no warning (torch's
    step emits none)."""
    for seed in range(60):
        rng = random.Random(seed)
        T_0, T_mult = rng.choice([1, 2, 3, 5]), rng.choice([1, 2, 3])
        a, b = _pair()
        sa = stock.CosineAnnealingWarmRestarts(a, T_0, T_mult, eta_min=1e-3)
        sb = fused.CosineAnnealingWarmRestarts(b, T_0, T_mult, eta_min=1e-3)
        torch_wraps_late = False
        for call in _random_calls(rng, 30, assign):
            where = f"seed {seed} (T_0={T_0}, T_mult={T_mult}) after {call}"
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                for s in (sa, sb):
                    if isinstance(call, tuple):
                        setattr(s, *call)
                    else:
                        s.step() if call is None else s.step(call)
            assert (sb.last_epoch, sb.T_cur, sb.T_i) == (sa.last_epoch, sa.T_cur, sa.T_i), where
            if not isinstance(call, tuple):
                # Where torch's state holds T_cur >= T_i (an assigned T_i, T_mult=1, then step(epoch)),
                # torch wraps one step late; the device wraps at once (documented). Skip that step.
                torch_wraps_late = sa.T_cur >= sa.T_i
            if not torch_wraps_late:
                assert_lrs_close(_lrs(b), _lrs(a), where)
                assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), where)


def test_warm_restarts_integer_epoch_drops_the_fraction():
    a, b = _pair()
    sa, sb = stock.CosineAnnealingWarmRestarts(a, 4, 2), fused.CosineAnnealingWarmRestarts(b, 4, 2)
    for call in (2.5, None, 7, None, None, 13.25, 13, None):
        (sa.step(), sb.step()) if call is None else (sa.step(call), sb.step(call))
        assert (sb.T_cur, sb.T_i, sb.last_epoch) == (sa.T_cur, sa.T_i, sa.last_epoch), call
        assert_lrs_close(_lrs(b), _lrs(a), f"after step({call})")
    assert sb.T_cur == sa.T_cur == 2  # step(13): T_cur = 13 - 4 - 8 = 1, then one step: no fraction


def test_warm_restarts_assigned_state_round_trips_through_state_dicts():
    """T_cur / T_i assigned mid-run, then state dicts both ways (stock -> fused, fused -> stock)."""
    a, b = _pair()
    sa, sb = stock.CosineAnnealingWarmRestarts(a, 3, 2, 1e-3), fused.CosineAnnealingWarmRestarts(b, 3, 2, 1e-3)
    for s in (sa, sb):
        s.step(), s.step(4.5), s.step()
        s.T_cur, s.T_i = 1, 10
        s.step(), s.step()
    a2, b2 = _pair()
    s_from_stock = fused.CosineAnnealingWarmRestarts(b2, 3, 2, 1e-3)
    s_from_stock.load_state_dict(sa.state_dict())
    a3, _ = _pair()
    s_stock_from_fused = stock.CosineAnnealingWarmRestarts(a3, 3, 2, 1e-3)
    s_stock_from_fused.load_state_dict(sb.state_dict())
    for t in range(25):
        for s in (sa, sb, s_from_stock, s_stock_from_fused):
            s.step()
        for s in (sb, s_from_stock, s_stock_from_fused):
            assert (s.T_cur, s.T_i, s.last_epoch) == (sa.T_cur, sa.T_i, sa.last_epoch), t
            assert_lrs_close(s.get_last_lr(), sa.get_last_lr(), f"{type(s).__module__} step {t}")


@pytest.mark.parametrize("name,value,match", [("T_cur", -1, "T_cur must be >= 0, got -1"),
                                              ("T_i", 0, "T_i must be >= 1, got 0"),
                                              ("T_i", float("nan"), "T_i must be finite")])
def test_warm_restarts_bad_assignment(name, value, match):
    _, b = _pair()
    s = fused.CosineAnnealingWarmRestarts(b, 3)
    with pytest.raises(ValueError, match=match):
        setattr(s, name, value)
    assert (s.T_cur, s.T_i) == (0, 3)


# ---------------------------------------------------------------- 4. ChainedScheduler parts, SequentialLR

CHAINS = {
    "product": lambda m, o: [m.ConstantLR(o, 0.5, total_iters=3), m.ExponentialLR(o, 0.9), m.StepLR(o, 4, 0.5)],
    "table": lambda m, o: [m.CosineAnnealingLR(o, 7, 1e-3), m.ExponentialLR(o, 0.95)],
}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_chained_parts_report_torchs_chained_lr(chain):
    """After a chain step torch's part i holds the LR with parts 0..i stepped (the last: the chain's)."""
    a, b = _pair()
    pa, pb = CHAINS[chain](stock, a), CHAINS[chain](fused, b)
    ca, cb = stock.ChainedScheduler(pa), fused.ChainedScheduler(pb, horizon=8)
    assert cb.mode == chain
    for t in range(20):
        if t:
            a.step(), b.step(), ca.step(), cb.step()
        for i, (x, y) in enumerate(zip(pa, pb)):
            assert_lrs_close(y.get_last_lr(), x.get_last_lr(), f"step {t} part {i}")
        assert_lrs_close(cb.get_last_lr(), ca.get_last_lr(), f"step {t} chain")
        assert_lrs_close(_lrs(b), _lrs(a), f"step {t} group lr")
    # The parts' state dicts carry the same _last_lr as stock's; so do they after a load.
    b2 = _pair()[1]
    cb2 = fused.ChainedScheduler(CHAINS[chain](fused, b2), horizon=8)
    cb2.load_state_dict(cb.state_dict())
    for x, y in zip(pa, cb2._schedulers):
        assert_lrs_close(y.state_dict()["_last_lr"], x.state_dict()["_last_lr"], "after load")


@pytest.mark.parametrize("chain", list(CHAINS))
def test_sequential_with_a_chained_scheduler_first(chain):
    """torch resets the LRs, undoes every part's initial step and steps the chain once outside the
    initial mode: its values are not the chain's own (ExponentialLR has decayed once at step 0).
    A small horizon makes the chain's table grow past its first size."""
    a, b = _pair()
    ca = stock.ChainedScheduler(CHAINS[chain](stock, a))
    cb = fused.ChainedScheduler(CHAINS[chain](fused, b), horizon=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stock's parts warn that they step before the optimizer did
        sa = stock.SequentialLR(a, [ca, stock.StepLR(a, 2, 0.1)], [12])
    sb = fused.SequentialLR(b, [cb, fused.StepLR(b, 2, 0.1)], [12])
    for t in range(30):
        if t:
            a.step(), b.step(), sa.step(), sb.step()
        assert_lrs_close(_lrs(b), _lrs(a), f"step {t}")
        assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"step {t} get_last_lr")


def test_sequential_with_a_later_chained_scheduler_raises_torchs_error_at_its_milestone():
    a, b = _pair()
    sa = stock.SequentialLR(a, [stock.StepLR(a, 2, 0.1), stock.ChainedScheduler(CHAINS["product"](stock, a))], [3])
    sb = fused.SequentialLR(b, [fused.StepLR(b, 2, 0.1), fused.ChainedScheduler(CHAINS["product"](fused, b))], [3])
    for t in (1, 2):
        a.step(), b.step(), sa.step(), sb.step()
        assert_lrs_close(_lrs(b), _lrs(a), f"step {t}")
    before = (sb.last_epoch, _lrs(b))
    ea, eb = _both(sa.step, sb.step)
    assert type(ea) is type(eb) is NotImplementedError, (ea, eb)
    assert "put the ChainedScheduler first" in str(eb)
    assert (sb.last_epoch, _lrs(b)) == before


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


# ---------------------------------------------------------------- the Triton path (interpreter)

def test_the_same_behaviours_on_the_triton_path():
    """Plateau after add_param_group, lambdas called when torch calls them (a stateful one, one that
    raises), warm restarts with assignments and fractional epochs, a chain first in a sequence:
    FusedSGD(backend="triton") under Triton's interpreter against stock, in a child process."""
    pytest.importorskip("triton")
    script = pathlib.Path(__file__).resolve().parent / "_triton_behaviour_subprocess.py"
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("all: ok"), proc.stdout[-3000:] + proc.stderr[-6000:]

"""``param_groups[i]["lr"]`` as torch users rely on it, beside stock torch on the torch path (the
Triton path runs the same checks under the interpreter in tests/_triton_behaviour_subprocess.py,
case ``assigned``).

* A float given is a float kept: after every ``opt.step()`` and ``sched.step()`` it equals stock's,
  so ``lrs.append(group["lr"])``, ``json.dumps``, ``round()``, CSV rows and state_dict hooks see
  what they see with torch.optim.SGD.
* An LR assigned to ``group["lr"]`` (manual decay, with or without a scheduler) is used by the next
  update and carries on as torch's recurrence carries it, for every scheduler; an LR assigned before
  a scheduler is built is what that scheduler starts from.
* A tensor LR stays the user's tensor, filled in place by schedulers, as torch does.

Tolerances: LRs to LR_RTOL (tests/conftest.py: closed forms vs torch's chained recurrences are two
float64 evaluations of the same number); parameters are float64 and compared to TRAJ_TOL[float64]:
fused_lr's CPU path runs torch's fused kernel (FMA contraction, ~1 ulp per op) against stock's
for-loop, and an LR that differs by rounding moves a parameter by rounding too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import TRAJ_TOL, assert_close, assert_lrs_close

import fused_lr
import fused_lr.lr_scheduler as fused

DTYPE = torch.float64
BASES = (0.1, 0.05)
STEPS = 16


def _params():
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(3, generator=g, dtype=DTYPE)) for _ in BASES]


def _pair(**kw):
    kw = dict(momentum=0.9, weight_decay=1e-2) | kw
    ps, qs = _params(), _params()
    a = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(ps, BASES)], foreach=False, **kw)
    b = fused_lr.FusedSGD([{"params": [q], "lr": lr} for q, lr in zip(qs, BASES)], backend="torch", **kw)
    return a, b


def _grads(t, opt):
    g = torch.Generator().manual_seed(100 + t)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.randn(p.shape, generator=g, dtype=DTYPE)


def _quiet(build, mod, opt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "stepped before the optimizer" warnings
        return build(mod, opt)


def _seq(m, o):
    return m.SequentialLR(o, [m.LinearLR(o, 0.2, total_iters=3), m.StepLR(o, 3, 0.5)], [4])


# Every scheduler with a torch twin: its kind of recurrence decides how an assigned LR carries on.
SCHEDULES = {
    "StepLR": lambda m, o: m.StepLR(o, 3, 0.5),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, [2, 5, 9], 0.5),
    "ConstantLR": lambda m, o: m.ConstantLR(o, 0.5, total_iters=5),
    "LinearLR": lambda m, o: m.LinearLR(o, 0.25, total_iters=6),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, 0.9),
    "PolynomialLR": lambda m, o: m.PolynomialLR(o, total_iters=6, power=2.0),
    "PolynomialLR-ends": lambda m, o: m.PolynomialLR(o, total_iters=4, power=1.0),  # 0, then the edit holds
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=5, eta_min=0.001),  # crosses a trough
    "CosineAnnealingWarmRestarts": lambda m, o: m.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lambda e: 0.9**e),
    "LambdaLR-table": lambda m, o: m.LambdaLR(o, lambda e: 1.0 if e < 6 else 0.3),
    "MultiplicativeLR": lambda m, o: m.MultiplicativeLR(o, lambda e: 0.95),
    "SequentialLR": _seq,
    "CyclicLR": lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=3),
    "OneCycleLR": lambda m, o: m.OneCycleLR(o, 0.2, total_steps=STEPS + 2),
    "ChainedScheduler-product": lambda m, o: m.ChainedScheduler([m.ExponentialLR(o, 0.9), m.MultiStepLR(o, [4, 8], 0.5)]),
    "ChainedScheduler-table": lambda m, o: m.ChainedScheduler([m.CosineAnnealingLR(o, 6), m.StepLR(o, 4, 0.5)]),
    "ReduceLROnPlateau": lambda m, o: m.ReduceLROnPlateau(o, patience=1, factor=0.5),
}

METRICS = [1.0, 0.9, 0.95, 0.97, 0.99, 0.8, 0.85, 0.9, 0.9, 0.9, 0.7, 0.75, 0.8, 0.8, 0.8, 0.8]


def _step_sched(s, t):
    if s is None:
        return
    if isinstance(s, (stock.ReduceLROnPlateau, fused.ReduceLROnPlateau)):
        s.step(METRICS[t % len(METRICS)])
    else:
        s.step()


def _lrs(opt):
    return [g["lr"] for g in opt.param_groups]


def _run_both(build, edits, steps=STEPS):
    """Stock and fused side by side; ``edits[(t, where)]`` assigns LRs ("before": after opt.step(),
    before sched.step(); "after": after sched.step()) as a function of the current ones."""
    a, b = _pair()
    sa, sb = _quiet(build, stock, a), _quiet(build, fused, b)
    assert _lrs(b) == pytest.approx(_lrs(a), rel=1e-12)
    for t in range(steps):
        for o in (a, b):
            _grads(t, o)
            o.step()
        assert_lrs_close(_lrs(b), _lrs(a), f"step {t}, after opt.step()")
        for where in ("before", "after"):
            if where == "after":
                for s in (sa, sb):
                    _step_sched(s, t)
                assert_lrs_close(_lrs(b), _lrs(a), f"step {t}, after sched.step()")
                if sa is not None:
                    assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"step {t}, get_last_lr()")
            edit = edits.get((t, where))
            if edit is not None:
                for o in (a, b):
                    for g, group in enumerate(o.param_groups):
                        new = edit(g, group["lr"])
                        if new is not None:
                            group["lr"] = new
        for i, (p, q) in enumerate(zip(a.param_groups, b.param_groups)):
            assert_close(q["params"][0], p["params"][0], what=f"step {t}, group {i} param", **TRAJ_TOL[DTYPE])
    assert all(type(v) is float for v in _lrs(b)), _lrs(b)
    return a, b, sa, sb


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_floats_follow_stock_with_assigned_lrs(name):
    """Each scheduler, with LRs assigned mid-run the two usual ways (decay both groups between the
    optimizer and scheduler steps; set one group after a scheduler step), on the torch path."""
    edits = {
        (3, "before"): lambda g, lr: lr * 0.5,
        (7, "after"): lambda g, lr: 0.03 if g == 1 else None,
        (11, "before"): lambda g, lr: lr * 1.5 if g == 0 else None,
    }
    _run_both(SCHEDULES[name], edits)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_floats_follow_stock_without_edits(name):
    _run_both(SCHEDULES[name], {})


def test_manual_decay_without_a_scheduler():
    """The seed tutorial's pattern: ``group["lr"] *= 0.9`` every step, no scheduler."""
    _run_both(lambda m, o: None, {(t, "after"): (lambda g, lr: lr * 0.9) for t in range(STEPS)})


def _run_no_sched(edits):
    a, b = _pair()
    for t in range(STEPS):
        for o in (a, b):
            _grads(t, o)
            o.step()
            e = edits.get(t)
            if e is not None:
                for g, group in enumerate(o.param_groups):
                    group["lr"] = e(g, group["lr"])
        assert _lrs(b) == _lrs(a)
        for p, q in zip(a.param_groups, b.param_groups):
            assert_close(q["params"][0], p["params"][0], what=f"step {t}", **TRAJ_TOL[DTYPE])


def test_assigned_lrs_without_a_scheduler():
    _run_no_sched({2: lambda g, lr: lr * 0.5, 5: lambda g, lr: 0.2, 9: lambda g, lr: lr if g else 0.0})


def test_everyday_logging_of_the_float():
    """``lrs.append(group["lr"])``, json, round(), a CSV row and a state_dict post-hook, as with stock."""
    logs = {}
    for name, (o, s) in zip(("stock", "fused"), (lambda a, b: ((a, _quiet(SCHEDULES["StepLR"], stock, a)),
                                                              (b, _quiet(SCHEDULES["StepLR"], fused, b))))(*_pair())):
        seen_by_hook = []
        o.register_state_dict_post_hook(lambda opt, sd: seen_by_hook.append(sd["param_groups"][0]["lr"]))
        lrs, rows = [], io.StringIO()
        writer = csv.writer(rows)
        for t in range(8):
            _grads(t, o)
            o.step()
            s.step()
            lr = o.param_groups[0]["lr"]
            lrs.append(lr)
            writer.writerow([t, lr])
            o.state_dict()
        logs[name] = (lrs, json.dumps(lrs), [round(v, 6) for v in lrs], rows.getvalue(), seen_by_hook)
    assert logs["fused"][0] == pytest.approx(logs["stock"][0], rel=1e-12)
    assert len(set(logs["fused"][0])) > 1, "every entry must keep its own step's LR"
    for k in (1, 2, 3, 4):
        assert logs["fused"][k] == logs["stock"][k]


def test_triton_lag_is_gone_after_sched_step():
    """On the Triton path the kernel applies a scheduler step at the next update, yet the float is
    current right after ``sched.step()`` (the host knows the step count): checked here with the
    scheduler's deferral forced on the torch path's optimizer would need Triton; the interpreter
    case 'assigned' checks it on the Triton path itself. Here: the float never reads the device."""
    _, b = _pair()
    s = fused.StepLR(b, 2, 0.5)
    from conftest import ForbidReadsOf

    for t in range(6):
        _grads(t, b)
        b.step()
        with ForbidReadsOf(b.lr_tensor, s._sched.counter, s._sched.desc):
            s.step()
        assert b.param_groups[0]["lr"] == pytest.approx(BASES[0] * 0.5 ** ((t + 1) // 2), rel=1e-15)


def test_lr_assigned_before_a_scheduler_is_where_it_starts():
    """torch's initial_lr rules: an LR assigned before the first scheduler becomes its base; an LR
    assigned after a first scheduler was built is where a second one's recurrence starts."""
    for build in (SCHEDULES["StepLR"], SCHEDULES["LambdaLR"], SCHEDULES["CosineAnnealingLR"], SCHEDULES["LinearLR"]):
        a, b = _pair()
        for o in (a, b):
            o.param_groups[0]["lr"] = 0.2
        sa, sb = _quiet(build, stock, a), _quiet(build, fused, b)
        assert sb.base_lrs == pytest.approx(sa.base_lrs, rel=1e-15)
        for t in range(8):
            for o, s in ((a, sa), (b, sb)):
                _grads(t, o)
                o.step()
                s.step()
            assert_lrs_close(_lrs(b), _lrs(a), f"{build} step {t}")
    # A later scheduler on an optimizer that already has initial_lr, after an assignment.
    for second in (SCHEDULES["LambdaLR"], SCHEDULES["CosineAnnealingLR"], SCHEDULES["ExponentialLR"]):
        a, b = _pair()
        firsts = [_quiet(SCHEDULES["StepLR"], m, o) for m, o in ((stock, a), (fused, b))]
        for o in (a, b):
            o.param_groups[1]["lr"] = 0.02
        sa, sb = _quiet(second, stock, a), _quiet(second, fused, b)
        del firsts  # the second scheduler alone drives the LRs from here (stepped alone)
        for t in range(8):
            for o, s in ((a, sa), (b, sb)):
                _grads(t, o)
                o.step()
                s.step()
            assert_lrs_close(_lrs(b), _lrs(a), f"second {second} step {t}")


def test_scheduler_only_resume_continues_from_the_current_lr():
    """torch's scheduler load leaves ``group["lr"]`` alone and its next step continues from it; a
    full resume (optimizer, then scheduler) continues the run exactly."""
    for name in ("StepLR", "CosineAnnealingLR", "SequentialLR", "LambdaLR"):
        build = SCHEDULES[name]
        a, b = _pair()
        sa, sb = _quiet(build, stock, a), _quiet(build, fused, b)
        for t in range(5):
            for o, s in ((a, sa), (b, sb)):
                _grads(t, o)
                o.step()
                s.step()
        a2, b2 = _pair()
        sa2, sb2 = _quiet(build, stock, a2), _quiet(build, fused, b2)
        sa2.load_state_dict(sa.state_dict())
        sb2.load_state_dict(sb.state_dict())
        for t in range(5, 14):
            for o, s in ((a2, sa2), (b2, sb2)):
                _grads(t, o)
                o.step()
                s.step()
            assert_lrs_close(_lrs(b2), _lrs(a2), f"{name}: scheduler-only resume, step {t}")


def test_tensor_lr_is_torchs_tensor_lr():
    """A tensor LR: group["lr"] stays that tensor (filled in place by a scheduler), get_last_lr()
    returns tensors, in-place edits take effect, as with torch.optim.SGD(lr=tensor)."""
    ps, qs = _params(), _params()
    lr_a, lr_b = torch.tensor(0.1, dtype=DTYPE), torch.tensor(0.1, dtype=DTYPE)
    a = torch.optim.SGD(ps, lr=lr_a, momentum=0.9, foreach=False)
    b = fused_lr.FusedSGD(qs, lr=lr_b, momentum=0.9)
    assert b.param_groups[0]["lr"] is lr_b
    for t in range(4):  # no scheduler: in-place decay
        for o, lr in ((a, lr_a), (b, lr_b)):
            _grads(t, o)
            o.step()
            lr.mul_(0.9)
        assert_close(qs[0], ps[0], what=f"tensor LR, in-place decay, step {t}", **TRAJ_TOL[DTYPE])
    sa, sb = stock.StepLR(a, 2, 0.5), fused.StepLR(b, 2, 0.5)
    for t in range(4, 10):
        for o, s in ((a, sa), (b, sb)):
            _grads(t, o)
            o.step()
            s.step()
        assert b.param_groups[0]["lr"] is lr_b and isinstance(sb.get_last_lr()[0], torch.Tensor)
        assert float(lr_b) == pytest.approx(float(lr_a), rel=1e-12)
        assert float(sb.get_last_lr()[0]) == pytest.approx(float(sa.get_last_lr()[0]), rel=1e-12)
        assert_close(qs[0], ps[0], what=f"tensor LR, StepLR, step {t}", **TRAJ_TOL[DTYPE])


def test_plateau_floats_with_a_float_metric_are_exact():
    """A float metric: the host repeats torch's decision, so the floats are exact at once."""
    a, b = _pair()
    sa, sb = stock.ReduceLROnPlateau(a, patience=0, factor=0.5, min_lr=[0.0, 0.02]), fused.ReduceLROnPlateau(
        b, patience=0, factor=0.5, min_lr=[0.0, 0.02])
    for _t in range(10):
        for s in (sa, sb):
            s.step(1.0)
        assert _lrs(b) == _lrs(a)
        assert sb.get_last_lr() == sa.get_last_lr()
        assert b.lr_tensor.tolist() == _lrs(a)


def test_invalid_assigned_lr_raises_before_anything_changes():
    _, b = _pair()
    s = fused.StepLR(b, 2, 0.5)
    _grads(0, b)
    before = [p.detach().clone() for g in b.param_groups for p in g["params"]]
    for bad, err in ((-0.1, ValueError), (math.inf, ValueError), ("x", TypeError), (float("nan"), ValueError)):
        b.param_groups[1]["lr"] = bad
        with pytest.raises(err, match="lr|learning rate"):
            b.step()
        with pytest.raises(err, match="lr|learning rate"):
            s.step()
        assert all(torch.equal(p, q) for p, q in zip(before, (p for g in b.param_groups for p in g["params"])))
        assert s.last_epoch == 0 and b.lr_tensor.tolist() == list(BASES)
    b.param_groups[1]["lr"] = 0.05


@pytest.mark.parametrize("name", ["StepLR", "ExponentialLR", "LinearLR", "CosineAnnealingLR", "LambdaLR", "ConstantLR"])
def test_constructed_with_last_epoch_continues_as_torch(name):
    """torch's other resume: the optimizer's state (with initial_lr), then a scheduler built with
    ``last_epoch=k``: its initial step starts from the LR found in the optimizer, as torch's does."""
    build = SCHEDULES[name]
    a, b = _pair()
    sa, sb = _quiet(build, stock, a), _quiet(build, fused, b)
    for t in range(5):
        for o, s in ((a, sa), (b, sb)):
            _grads(t, o)
            o.step()
            s.step()
    a2, b2 = _pair()
    a2.load_state_dict(a.state_dict())
    b2.load_state_dict(b.state_dict())
    kw = {"StepLR": (3, 0.5), "ExponentialLR": (0.9,), "LinearLR": (0.25, 1.0, 6), "CosineAnnealingLR": (5, 0.001),
          "LambdaLR": (lambda e: 0.9**e,), "ConstantLR": (0.5, 5)}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sa2 = getattr(stock, name)(a2, *kw, last_epoch=sa.last_epoch)
        sb2 = getattr(fused, name)(b2, *kw, last_epoch=sb.last_epoch)
    assert_lrs_close(_lrs(b2), _lrs(a2), f"{name} constructed with last_epoch")
    for t in range(5, 12):
        for o, s in ((a2, sa2), (b2, sb2)):
            _grads(t, o)
            o.step()
            s.step()
        assert_lrs_close(_lrs(b2), _lrs(a2), f"{name} constructed with last_epoch, step {t}")

"""Several schedulers stepped on one optimizer compose as torch's do (each step applies its
scheduler's recurrence to the LR the others left), on the torch path, beside stock: torch's own
compound cases (test_lrscheduler.py's test_compound_*), other stepping orders, assigned LRs,
ReduceLROnPlateau on top of a schedule, and resume. The Triton path runs the same kinds of cases
under the interpreter (tests/_triton_behaviour_subprocess.py, case ``composed``).

Tolerances as in tests/test_lr_floats.py: LR_RTOL for LRs (closed-form product vs torch's chained
products), TRAJ_TOL[float64] for parameters.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import TRAJ_TOL, assert_close, assert_lrs_close

import fused_lr
import fused_lr.lr_scheduler as fused

DTYPE = torch.float64
BASES = (0.1, 0.05)


def _pair():
    def params():
        g = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(3, generator=g, dtype=DTYPE)) for _ in BASES]

    kw = dict(momentum=0.9)
    a = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params(), BASES)], foreach=False, **kw)
    b = fused_lr.FusedSGD([{"params": [q], "lr": lr} for q, lr in zip(params(), BASES)], backend="torch", **kw)
    return a, b


def _grads(t, opt):
    g = torch.Generator().manual_seed(100 + t)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.randn(p.shape, generator=g, dtype=DTYPE)


def _lrs(o):
    return [g["lr"] for g in o.param_groups]


# torch's compound cases (test/optim/test_lrscheduler.py, test_compound_*), stepped in lockstep.
COMPOUNDS = {
    "step+multistep": lambda m, o: [m.StepLR(o, 3, 0.1), m.MultiStepLR(o, [2, 5, 9], 0.1)],
    "step+exp": lambda m, o: [m.StepLR(o, 3, 0.1), m.ExponentialLR(o, 0.9)],
    "exp+multistep": lambda m, o: [m.ExponentialLR(o, 0.9), m.MultiStepLR(o, [2, 5, 9], 0.1)],
    "exp+linear": lambda m, o: [m.ExponentialLR(o, 0.9), m.LinearLR(o, 0.2, total_iters=4)],
    "step+constant": lambda m, o: [m.StepLR(o, 3, 0.1), m.ConstantLR(o, 0.25, total_iters=4)],
    "linear+multistep": lambda m, o: [m.LinearLR(o, 0.2, total_iters=4), m.MultiStepLR(o, [2, 5, 9], 0.1)],
    "cosine+step": lambda m, o: [m.CosineAnnealingLR(o, 5, 1e-3), m.StepLR(o, 3, 0.1)],
    "cosine+multistep": lambda m, o: [m.CosineAnnealingLR(o, 5, 1e-3), m.MultiStepLR(o, [2, 5, 9], 0.1)],
    "cosine+linear": lambda m, o: [m.CosineAnnealingLR(o, 5, 1e-3), m.LinearLR(o, 0.2, total_iters=4)],
    "cosine+exp": lambda m, o: [m.CosineAnnealingLR(o, 5, 1e-3), m.ExponentialLR(o, 0.9)],
    "poly+exp": lambda m, o: [m.PolynomialLR(o, total_iters=6, power=2.0), m.ExponentialLR(o, 0.9)],
    "lambda+step": lambda m, o: [m.LambdaLR(o, lambda e: 0.95**e), m.StepLR(o, 3, 0.5)],
    "three": lambda m, o: [m.LinearLR(o, 0.5, total_iters=3), m.ExponentialLR(o, 0.95), m.MultiStepLR(o, [4, 8], 0.5)],
}

# Who steps when: ``order(t)`` lists the schedulers stepped after the update of step t.
ORDERS = {
    "lockstep": lambda t, n: range(n),
    "reversed": lambda t, n: reversed(range(n)),
    "last-every-third": lambda t, n: range(n) if t % 3 == 2 else range(n - 1),  # a per-epoch scheduler
    "first-left-behind": lambda t, n: range(1, n),  # the first one is never stepped again
}


def _run(build, order, steps=14, edits=None):
    a, b = _pair()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sa, sb = build(stock, a), build(fused, b)
    assert_lrs_close(_lrs(b), _lrs(a), "after construction")
    for t in range(steps):
        for o in (a, b):
            _grads(t, o)
            o.step()
        for i in order(t, len(sa)):
            sa[i].step()
            sb[i].step()
            assert_lrs_close(_lrs(b), _lrs(a), f"step {t}, after scheduler {i}")
            assert_lrs_close(sb[i].get_last_lr(), sa[i].get_last_lr(), f"step {t}, scheduler {i} get_last_lr")
        if edits and t in edits:
            for o in (a, b):
                o.param_groups[0]["lr"] = edits[t](o.param_groups[0]["lr"])
        for p, q in zip(a.param_groups, b.param_groups):
            assert_close(q["params"][0], p["params"][0], what=f"step {t} param", **TRAJ_TOL[DTYPE])
    assert all(type(v) is float for v in _lrs(b))
    return a, b, sa, sb


@pytest.mark.parametrize("name", list(COMPOUNDS))
def test_torchs_compound_schedulers(name):
    _run(COMPOUNDS[name], ORDERS["lockstep"])


@pytest.mark.parametrize("order", [o for o in ORDERS if o != "lockstep"])
@pytest.mark.parametrize("name", ["step+exp", "linear+multistep", "cosine+step", "three"])
def test_other_stepping_orders(name, order):
    _run(COMPOUNDS[name], ORDERS[order])


@pytest.mark.parametrize("name", ["step+exp", "cosine+step", "poly+exp"])
def test_assigned_lrs_in_a_composition(name):
    _run(COMPOUNDS[name], ORDERS["lockstep"], edits={3: lambda lr: lr * 0.5, 8: lambda lr: 0.02})


def test_product_stays_a_closed_form_on_the_device():
    """Multiplicative schedulers compose into one product row on the device: in lockstep no host
    work writes the LR (no edit columns), and the counter of the first scheduler drives it."""
    _, b = _pair()
    s1, s2 = fused.ExponentialLR(b, 0.9), fused.MultiStepLR(b, [3, 6], 0.5)
    owner = b._lr_owner
    assert isinstance(owner, fused._Stack) and owner.product
    for t in range(8):
        _grads(t, b)
        b.step()
        s1.step()
        s2.step()
    assert not owner._sched.edited
    assert int(owner._sched.counter.item()) == s1.last_epoch == 8
    expected = [base * 0.9**8 * 0.5**2 for base in BASES]
    assert b.lr_tensor.tolist() == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("first", ["StepLR", "LinearLR", "CosineAnnealingLR"])
def test_plateau_on_top_of_a_schedule(first):
    """torch's compound plateau cases: a schedule stepped every epoch with ReduceLROnPlateau
    reducing the LR it left; the schedule's recurrence carries the reduction on."""
    builds = {
        "StepLR": lambda m, o: m.StepLR(o, 4, 0.5),
        "LinearLR": lambda m, o: m.LinearLR(o, 0.25, total_iters=5),
        "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, 6, 1e-4),
    }
    a, b = _pair()
    sa = [builds[first](stock, a), stock.ReduceLROnPlateau(a, patience=1, factor=0.5)]
    sb = [builds[first](fused, b), fused.ReduceLROnPlateau(b, patience=1, factor=0.5)]
    metrics = [1.0, 0.9, 0.95, 0.97, 0.99, 0.8, 0.85, 0.9, 0.9, 0.9, 0.7, 0.75, 0.8, 0.8]
    for t, metric in enumerate(metrics):
        for o in (a, b):
            _grads(t, o)
            o.step()
        for s in (sa, sb):
            s[0].step()
            s[1].step(metric)
        assert_lrs_close(_lrs(b), _lrs(a), f"{first} + plateau, step {t}")
        for p, q in zip(a.param_groups, b.param_groups):
            assert_close(q["params"][0], p["params"][0], what=f"step {t} param", **TRAJ_TOL[DTYPE])
    assert _lrs(a)[0] < 0.1 * 0.5, "the run must reduce"


def test_resume_of_a_composition():
    """torch's recipe: the optimizer's state, then each scheduler's; the run continues as stock's."""
    build = COMPOUNDS["cosine+step"]
    a, b, sa, sb = _run(COMPOUNDS["step+exp"], ORDERS["lockstep"], steps=5)
    for name in ("step+exp", "cosine+step"):
        build = COMPOUNDS[name]
        a, b, sa, sb = _run(build, ORDERS["lockstep"], steps=5)
        a2, b2 = _pair()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sa2, sb2 = build(stock, a2), build(fused, b2)
        a2.load_state_dict(a.state_dict())
        b2.load_state_dict(b.state_dict())
        for x, y, xs, ys in zip(sa2, sb2, sa, sb):
            x.load_state_dict(xs.state_dict())
            y.load_state_dict(ys.state_dict())
        for t in range(5, 12):
            for o in (a2, b2):
                _grads(t, o)
                o.step()
            for x, y in zip(sa2, sb2):
                x.step()
                y.step()
            assert_lrs_close(_lrs(b2), _lrs(a2), f"{name} resumed, step {t}")


def test_a_composite_takes_over_its_parts():
    """SequentialLR / ChainedScheduler / PerGroupLR made of schedulers built on the optimizer: the
    composite drives the LRs alone (its parts' constructions composed only until then)."""
    _, b = _pair()
    parts = [fused.LinearLR(b, 0.2, total_iters=3), fused.CosineAnnealingLR(b, 6)]
    assert isinstance(b._lr_owner, fused._Stack)
    seq = fused.SequentialLR(b, parts, [3])
    assert b._lr_owner is seq
    other = fused.ExponentialLR(b, 0.9)
    assert isinstance(b._lr_owner, fused._Stack) and b._lr_owner.members == [seq, other]

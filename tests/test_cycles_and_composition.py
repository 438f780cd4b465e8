"""CyclicLR, OneCycleLR, ChainedScheduler, PerGroupLR and the device LR log, against stock torch.

Every LR (and cycled momentum) is compared with stock ``torch.optim.lr_scheduler`` on a stock
``torch.optim.SGD`` stepped beside it, at every step, with ``LR_RTOL`` (see conftest.py: both
sides are float64 evaluations of the same formula, so they differ by rounding only).
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import TRAJ_TOL, assert_close, assert_lrs_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fused_lr
import fused_lr.lr_scheduler as fused

BASE_LRS = (0.1, 0.05, 0.3)


def _optimizers(momentum=0.9):
    ps = [torch.nn.Parameter(torch.zeros(2)) for _ in BASE_LRS]
    qs = [torch.nn.Parameter(torch.zeros(2)) for _ in BASE_LRS]
    a = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(ps, BASE_LRS)], lr=1.0, momentum=momentum)
    b = fused_lr.FusedSGD([{"params": [q], "lr": lr} for q, lr in zip(qs, BASE_LRS)], lr=1.0, momentum=momentum)
    return a, b


def _momenta(opt):
    return [g["momentum"] for g in opt.param_groups]


def _assert_same_state(a, b, sa, sb, what):
    assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"{what}: get_last_lr")
    assert_lrs_close([float(g["lr"]) for g in b.param_groups], [g["lr"] for g in a.param_groups], f"{what}: group lr")
    assert_lrs_close(_momenta(b), _momenta(a), f"{what}: momentum")


def _run_side_by_side(build, steps, momentum=0.9):
    a, b = _optimizers(momentum)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stock's "step() before optimizer.step()" and similar
        sa, sb = build(stock, a), build(fused, b)
    _assert_same_state(a, b, sa, sb, "at construction")
    for t in range(1, steps + 1):
        a.step()
        b.step()
        sa.step()
        sb.step()
        _assert_same_state(a, b, sa, sb, f"step {t}")
    return a, b, sa, sb


CYCLIC = [
    dict(base_lr=0.01, max_lr=0.1, step_size_up=5),
    dict(base_lr=[0.01, 0.02, 0.001], max_lr=[0.1, 0.2, 0.05], step_size_up=4, step_size_down=7, mode="triangular2"),
    dict(base_lr=0.01, max_lr=0.1, step_size_up=3, mode="exp_range", gamma=0.97),
    dict(base_lr=0.1, max_lr=0.01, step_size_up=6),  # base above max: torch cycles downwards
    dict(base_lr=0.01, max_lr=0.1, step_size_up=5, step_size_down=0),  # a sawtooth
    dict(base_lr=0.01, max_lr=0.1, step_size_up=2.5, step_size_down=3.5),  # fractional sizes
    dict(base_lr=0.01, max_lr=0.1, step_size_up=4, cycle_momentum=False),
    dict(base_lr=0.01, max_lr=0.1, step_size_up=4, base_momentum=[0.5, 0.6, 0.7], max_momentum=0.95),
    dict(base_lr=0.01, max_lr=0.1, step_size_up=3, scale_fn=lambda x: 1 / (1 + x)),
    dict(base_lr=0.01, max_lr=0.1, step_size_up=3, scale_fn=lambda x: 0.99**x, scale_mode="iterations"),
]


@pytest.mark.parametrize("kwargs", CYCLIC, ids=[f"cyclic-{i}" for i in range(len(CYCLIC))])
def test_cyclic_lr_and_momentum_match_stock(kwargs):
    # 60 steps: several cycles of every config (sizes 5..11), past every turn.
    _run_side_by_side(lambda m, o: m.CyclicLR(o, **kwargs), 60)


def test_cyclic_custom_scale_fn_table_grows():
    """A custom scale_fn is tabulated ahead: past the first horizon the table doubles, still exact."""
    a, b, sa, sb = _run_side_by_side(
        lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=3, scale_fn=lambda x: 0.999**x, scale_mode="iterations",
                                **({"horizon": 16} if m is fused else {})),
        100,
    )
    assert sb.horizon >= 128


ONE_CYCLE = [
    dict(max_lr=0.5, total_steps=50),
    dict(max_lr=[0.5, 0.3, 1.0], total_steps=50, anneal_strategy="linear"),
    dict(max_lr=0.5, total_steps=77, three_phase=True),
    dict(max_lr=0.5, total_steps=77, three_phase=True, anneal_strategy="linear", pct_start=0.4),
    dict(max_lr=0.5, epochs=4, steps_per_epoch=9, pct_start=0.25, div_factor=10.0, final_div_factor=100.0),
    dict(max_lr=0.5, total_steps=40, cycle_momentum=False),
    dict(max_lr=0.5, total_steps=40, base_momentum=[0.8, 0.7, 0.6], max_momentum=[0.9, 0.95, 0.99]),
    dict(max_lr=0.5, total_steps=10, pct_start=0.05),  # a first phase ending before step 0
]


@pytest.mark.parametrize("kwargs", ONE_CYCLE, ids=[f"onecycle-{i}" for i in range(len(ONE_CYCLE))])
def test_one_cycle_lr_and_momentum_match_stock(kwargs):
    total = kwargs.get("total_steps") or kwargs["epochs"] * kwargs["steps_per_epoch"]
    _run_side_by_side(lambda m, o: m.OneCycleLR(o, **kwargs), total)  # up to last_epoch == total_steps


def test_one_cycle_past_total_steps_raises_before_changing_anything():
    a, b, sa, sb = _run_side_by_side(lambda m, o: m.OneCycleLR(o, 0.5, total_steps=12), 12)
    with pytest.raises(ValueError, match="Tried to step 13 times. The specified number of total steps is 12"):
        sa.step()
    lrs, epoch, counter = b.lr_tensor.clone(), sb.last_epoch, sb.step_counter.clone()
    with pytest.raises(ValueError, match="Tried to step 13 times. The specified number of total steps is 12"):
        sb.step()
    assert sb.last_epoch == epoch == 12
    assert torch.equal(b.lr_tensor, lrs) and torch.equal(sb.step_counter, counter)


def test_one_cycle_zero_length_phase_is_refused_where_torch_divides_by_zero():
    # pct_start * total_steps == 1: torch's first phase runs from step 0 to step 0.
    a, b = _optimizers()
    with pytest.raises(ZeroDivisionError):
        stock.OneCycleLR(a, 0.5, total_steps=10, pct_start=0.1)
    before = copy.deepcopy(b.param_groups[0])
    with pytest.raises(ValueError, match="zero length"):
        fused.OneCycleLR(b, 0.5, total_steps=10, pct_start=0.1)
    assert "max_lr" not in b.param_groups[0] and b.param_groups[0]["momentum"] == before["momentum"]


def _stock_raises_zero_division(kw) -> bool:
    a, _ = _optimizers()
    try:
        s = stock.OneCycleLR(a, **kw)
        for _ in range(kw["total_steps"]):
            a.step()
            s.step()
    except ZeroDivisionError:
        return True
    return False


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    total=st.integers(1, 60),
    pct=st.floats(0.0, 1.0),
    three=st.booleans(),
    anneal=st.sampled_from(["cos", "linear"]),
    div=st.floats(1.0, 100.0),
    final_div=st.floats(1.0, 1e5),
    cycle_momentum=st.booleans(),
)
def test_random_one_cycle_configurations_match_stock(total, pct, three, anneal, div, final_div, cycle_momentum):
    """200 random OneCycleLR configs (every phase layout incl. degenerate ones), every step."""
    kw = dict(max_lr=[0.5, 0.2, 1.0], total_steps=total, pct_start=pct, three_phase=three, anneal_strategy=anneal,
              div_factor=div, final_div_factor=final_div, cycle_momentum=cycle_momentum)
    if _stock_raises_zero_division(kw):
        _, b = _optimizers()
        with pytest.raises(ValueError, match="zero length"):
            fused.OneCycleLR(b, **kw)
        return
    _run_side_by_side(lambda m, o: m.OneCycleLR(o, **kw), total)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    up=st.integers(1, 12),
    down=st.one_of(st.none(), st.integers(0, 12)),
    mode=st.sampled_from(["triangular", "triangular2", "exp_range"]),
    gamma=st.floats(0.9, 1.0),
    lrs=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)),
    moms=st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.99)),
    cycle_momentum=st.booleans(),
    steps=st.integers(1, 80),
)
def test_random_cyclic_configurations_match_stock(up, down, mode, gamma, lrs, moms, cycle_momentum, steps):
    """200 random CyclicLR configs, LR and momentum at every step."""
    kw = dict(base_lr=lrs[0], max_lr=[lrs[1], lrs[1] / 2, lrs[1] * 2], step_size_up=up, step_size_down=down,
              mode=mode, gamma=gamma, cycle_momentum=cycle_momentum, base_momentum=moms[0], max_momentum=moms[1])
    _run_side_by_side(lambda m, o: m.CyclicLR(o, **kw), steps)


def test_momentum_cycling_trajectory_matches_stock_sgd():
    """Params and buffers under OneCycleLR's momentum cycling (nesterov, weight decay) vs stock SGD."""
    torch.manual_seed(0)
    ref = [torch.randn(5, 3), torch.randn(7)]
    ps = [torch.nn.Parameter(r.clone()) for r in ref]
    qs = [torch.nn.Parameter(r.clone()) for r in ref]
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    a = torch.optim.SGD([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.02}], foreach=False, **kw)
    b = fused_lr.FusedSGD([{"params": [qs[0]]}, {"params": [qs[1]], "lr": 0.02}], **kw)
    sa = stock.OneCycleLR(a, [0.2, 0.05], total_steps=30, three_phase=True)
    sb = fused.OneCycleLR(b, [0.2, 0.05], total_steps=30, three_phase=True)
    for t in range(30):
        g = [torch.randn_like(r) for r in ref]
        for p, q, gi in zip(ps, qs, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        a.step()
        b.step()
        sa.step()
        sb.step()
        for i, (p, q) in enumerate(zip(ps, qs)):
            assert_close(q, p, **TRAJ_TOL[torch.float32], what=f"step {t} param {i}")
            assert_close(b.state[q]["momentum_buffer"], a.state[p]["momentum_buffer"], **TRAJ_TOL[torch.float32],
                         what=f"step {t} buffer {i}")


CHAINS = [
    lambda m, o: [m.ConstantLR(o, factor=0.1, total_iters=2), m.ExponentialLR(o, gamma=0.9)],  # torch's doc example
    lambda m, o: [m.LinearLR(o, 0.1, total_iters=5), m.MultiStepLR(o, [3, 9, 9, 20], 0.5), m.StepLR(o, 7, 0.8)],
    lambda m, o: [m.PolynomialLR(o, total_iters=30, power=2.0), m.MultiplicativeLR(o, lambda e: 0.99)],
    lambda m, o: [m.ExponentialLR(o, gamma=0.95)],
]


@pytest.mark.parametrize("make", CHAINS, ids=[f"chain-{i}" for i in range(len(CHAINS))])
def test_chained_scheduler_matches_stock(make):
    a, b, sa, sb = _run_side_by_side(lambda m, o: m.ChainedScheduler(make(m, o)), 40)
    assert sb.mode == "product"


# Chains whose torch recurrence has no closed form: tabulated from torch's own schedulers.
TABLE_CHAINS = [
    lambda m, o: [m.LinearLR(o, 0.1, total_iters=5), m.CosineAnnealingLR(o, 20, eta_min=1e-3)],  # past T_max too
    lambda m, o: [m.LambdaLR(o, lambda e: 1.0 if e < 10 else 0.5), m.ExponentialLR(o, 0.99)],
    lambda m, o: [m.CosineAnnealingWarmRestarts(o, 7, 2, 1e-4), m.StepLR(o, 30, 0.5)],
    lambda m, o: [m.CyclicLR(o, 0.01, 0.1, step_size_up=9, cycle_momentum=False), m.MultiStepLR(o, [50, 90])],
]


@pytest.mark.parametrize("make", TABLE_CHAINS, ids=[f"table-chain-{i}" for i in range(len(TABLE_CHAINS))])
def test_tabulated_chained_scheduler_matches_stock_past_its_horizon(make):
    a, b, sa, sb = _run_side_by_side(
        lambda m, o: m.ChainedScheduler(make(m, o), **({"horizon": 32} if m is fused else {})), 150
    )
    assert sb.mode == "table" and sb.horizon >= 256  # the table grew twice or more


def test_chained_scheduler_refuses_what_it_cannot_run_on_the_device():
    _, b = _optimizers()
    with pytest.raises(ValueError, match="WarmupCosineLR.*no torch twin"):
        fused.ChainedScheduler([fused.ExponentialLR(b, 0.9), fused.WarmupCosineLR(b, 5, 50)])
    with pytest.raises(ValueError, match="cycles momentum"):
        fused.ChainedScheduler([fused.ExponentialLR(b, 0.9), fused.CyclicLR(b, 0.01, 0.1)])
    late = [fused.CosineAnnealingLR(b, 10), fused.ExponentialLR(b, 0.9)]
    b.step()
    for s in late:
        s.step()
    with pytest.raises(ValueError, match="at step 1"):
        fused.ChainedScheduler(late)
    lrs = b.lr_tensor.clone()
    sched = b._schedule
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        fused.ChainedScheduler([fused.ExponentialLR(b, 0.9), fused.ReduceLROnPlateau(b)])
    with pytest.raises(ValueError, match="at least one"):
        fused.ChainedScheduler([])
    _, other = _optimizers()
    with pytest.raises(ValueError, match="same optimizer"):
        fused.ChainedScheduler([fused.ExponentialLR(b, 0.9), fused.StepLR(other, 3)])
    assert b._schedule is not sched or torch.equal(b.lr_tensor, lrs)


def test_per_group_schedules_match_their_stock_equivalent():
    """Group 0 cosine, group 1 constant factor, group 2 linear warmup then step decay (SequentialLR)."""
    def build(m, o):
        if m is stock:  # stock has no per-group composition; LambdaLR's per-group lambdas give the same LRs
            return m.LambdaLR(o, [
                lambda e: (1 + math.cos(math.pi * e / 10)) / 2,
                lambda e: 0.5 if e < 5 else 1.0,
                lambda e: (0.1 + 0.9 * e / 4) if e < 4 else 0.5 ** ((e - 4) // 3),
            ])
        cos = m.CosineAnnealingLR(o, 10)
        flat = m.ConstantLR(o, 0.5, total_iters=5)
        seq = m.SequentialLR(o, [m.LinearLR(o, 0.1, total_iters=4), m.StepLR(o, 3, 0.5)], [4])
        return m.PerGroupLR(o, [cos, flat, seq])

    a, b, sa, sb = _run_side_by_side(build, 40)
    assert len(b._schedule.kinds) > 3  # several kinds in one description (one launch on the Triton path)


def test_per_group_with_a_cycling_part_restores_the_other_groups_momentum():
    def build(m, o):
        if m is stock:
            # Group 0 follows OneCycleLR (momentum cycled); groups 1, 2 keep momentum 0.9 and a constant LR.
            s = m.OneCycleLR(o, 0.5, total_steps=30)
            for g in o.param_groups[1:]:
                g["momentum"] = 0.9
            return _OnlyGroup0(s, o)
        one = m.OneCycleLR(o, 0.5, total_steps=30)
        flat = m.ConstantLR(o, 1.0, total_iters=0)
        return m.PerGroupLR(o, [one, flat, flat])

    _run_side_by_side(build, 30)


class _OnlyGroup0:
    """Stock reference for the test above: a stock scheduler driving group 0 only."""

    def __init__(self, sched, opt):
        self.s, self.o = sched, opt
        self.fixed = [(float(g["initial_lr"]), g["momentum"]) for g in opt.param_groups[1:]]
        self._pin()

    def _pin(self):
        for g, (lr, m) in zip(self.o.param_groups[1:], self.fixed):
            g["lr"], g["momentum"] = lr, m

    def step(self):
        self.s.step()
        self._pin()

    def get_last_lr(self):
        return [g["lr"] for g in self.o.param_groups]


def test_per_group_bad_input_changes_nothing():
    _, b = _optimizers()
    cos = fused.CosineAnnealingLR(b, 10)
    plateau = fused.ReduceLROnPlateau(b)
    cos.step()  # the cosine schedule is the optimizer's again
    sched, lrs = b._schedule, b.lr_tensor.clone()
    with pytest.raises(ValueError, match="one scheduler per param group: 3 groups, got 2"):
        fused.PerGroupLR(b, [cos, cos])
    with pytest.raises(TypeError, match="group 1"):
        fused.PerGroupLR(b, [cos, object(), cos])
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        fused.PerGroupLR(b, [cos, plateau, cos])
    assert b._schedule is sched and torch.equal(b.lr_tensor, lrs)


# ---------------------------------------------------------------------------------------------
# state_dict: exact resume mid-schedule, and loading stock state dicts
# ---------------------------------------------------------------------------------------------

RESUMABLE = {
    "cyclic": lambda m, o: m.CyclicLR(o, 0.01, [0.1, 0.2, 0.05], step_size_up=4, step_size_down=6, mode="triangular2"),
    "cyclic_exp": lambda m, o: m.CyclicLR(o, 0.01, 0.1, step_size_up=3, mode="exp_range", gamma=0.98),
    "onecycle": lambda m, o: m.OneCycleLR(o, [0.5, 0.3, 1.0], total_steps=40, three_phase=True),
    "onecycle_linear": lambda m, o: m.OneCycleLR(o, 0.5, total_steps=40, pct_start=0.33, anneal_strategy="linear"),
    "chained": lambda m, o: m.ChainedScheduler([m.ConstantLR(o, 0.5, total_iters=4), m.ExponentialLR(o, 0.93)]),
    "chained_table": lambda m, o: m.ChainedScheduler([m.LinearLR(o, 0.2, total_iters=6), m.CosineAnnealingLR(o, 9)]),
}


@pytest.mark.parametrize("name", RESUMABLE)
@pytest.mark.parametrize("source", ["fused", "stock"])
def test_resume_mid_schedule_from_a_state_dict(name, source):
    """Save at step 13 (from fused_lr, or from stock torch), load into fresh fused_lr objects built
    with other arguments' worth of state, continue: every LR and momentum equals stock's uninterrupted run."""
    build = RESUMABLE[name]
    a, b, sa, sb = _run_side_by_side(build, 13)
    sd = (sb if source == "fused" else sa).state_dict()
    opt_sd = (b if source == "fused" else a).state_dict()
    _, b2 = _optimizers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb2 = build(fused, b2)
    b2.load_state_dict(copy.deepcopy(opt_sd))
    sb2.load_state_dict(copy.deepcopy(sd))
    _assert_same_state(a, b2, sa, sb2, f"{name} from {source} after load")
    for t in range(14, 35 if "onecycle" not in name else 41):
        a.step()
        b2.step()
        sa.step()
        sb2.step()
        _assert_same_state(a, b2, sa, sb2, f"{name} from {source}, step {t}")


def test_per_group_resume():
    def build(o):
        return fused.PerGroupLR(o, [fused.CosineAnnealingLR(o, 10), fused.StepLR(o, 3, 0.5), fused.CosineAnnealingLR(o, 10)])

    _, b = _optimizers()
    s = build(b)
    for _ in range(7):
        b.step()
        s.step()
    sd, opt_sd = s.state_dict(), b.state_dict()
    _, b2 = _optimizers()
    s2 = build(b2)
    b2.load_state_dict(copy.deepcopy(opt_sd))  # torch's resume: the optimizer's LRs, then the scheduler
    s2.load_state_dict(copy.deepcopy(sd))
    for t in range(20):
        assert s2.get_last_lr() == s.get_last_lr(), t
        assert torch.equal(b2.lr_tensor, b.lr_tensor), t
        for o, sc in ((b, s), (b2, s2)):
            o.step()
            sc.step()


def test_failed_load_changes_nothing():
    _, b, _, sb = _run_side_by_side(RESUMABLE["onecycle"], 5)
    before, lrs, counter = sb.state_dict(), b.lr_tensor.clone(), sb.step_counter.clone()
    bad = sb.state_dict()
    bad["_anneal_func_type"] = "sideways"
    with pytest.raises(ValueError, match="sideways"):
        sb.load_state_dict(bad)
    assert sb.state_dict() == before and torch.equal(b.lr_tensor, lrs) and torch.equal(sb.step_counter, counter)


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error naming the value, nothing changed
# ---------------------------------------------------------------------------------------------

BAD = [
    (fused.CyclicLR, dict(base_lr=0.01, max_lr=0.1, mode="zigzag"), ValueError, "zigzag"),
    (fused.CyclicLR, dict(base_lr=0.01, max_lr=0.1, step_size_up=0), ValueError, "step_size_up"),
    (fused.CyclicLR, dict(base_lr=-0.01, max_lr=0.1), ValueError, "base_lr"),
    (fused.CyclicLR, dict(base_lr=[0.01, 0.02], max_lr=0.1), ValueError, "base_lr must have the same length"),
    (fused.CyclicLR, dict(base_lr=0.01, max_lr=0.1, scale_fn=lambda x: 1.0, scale_mode="epochs"), ValueError, "epochs"),
    (fused.CyclicLR, dict(base_lr=0.01, max_lr=0.1, max_momentum=float("nan")), ValueError, "max_momentum"),
    (fused.OneCycleLR, dict(max_lr=0.1, total_steps=0), ValueError, "total_steps, but got 0"),
    (fused.OneCycleLR, dict(max_lr=0.1), ValueError, "total_steps OR"),
    (fused.OneCycleLR, dict(max_lr=0.1, epochs=0, steps_per_epoch=3), ValueError, "epochs, but got 0"),
    (fused.OneCycleLR, dict(max_lr=0.1, total_steps=10, pct_start=1), ValueError, "pct_start, but got 1"),
    (fused.OneCycleLR, dict(max_lr=0.1, total_steps=10, pct_start=1.5), ValueError, "1.5"),
    (fused.OneCycleLR, dict(max_lr=0.1, total_steps=10, anneal_strategy="cosine"), ValueError, "cosine"),
    (fused.OneCycleLR, dict(max_lr=[0.1], total_steps=10), ValueError, "max_lr must have the same length"),
]


@pytest.mark.parametrize("cls,kwargs,exc,match", BAD, ids=[f"{c.__name__}-{i}" for i, (c, *_) in enumerate(BAD)])
def test_bad_constructor_arguments(cls, kwargs, exc, match):
    _, b = _optimizers()
    groups_before = [{k: (float(v) if k == "lr" else v) for k, v in g.items() if k != "params"} for g in b.param_groups]
    with pytest.raises(exc, match=match):
        cls(b, **kwargs)
    assert [{k: (float(v) if k == "lr" else v) for k, v in g.items() if k != "params"} for g in b.param_groups] == groups_before
    assert b._schedule is None


def test_stock_rejects_what_we_reject_where_torch_has_a_rule():
    """The same configurations fail in stock torch (we only add clearer messages)."""
    a, _ = _optimizers()
    with pytest.raises(ValueError):
        stock.CyclicLR(a, 0.01, 0.1, mode="zigzag")
    with pytest.raises(ValueError):
        stock.OneCycleLR(a, 0.1, total_steps=0)
    with pytest.raises(ValueError):
        stock.OneCycleLR(a, 0.1, total_steps=10, anneal_strategy="cosine")
    with pytest.raises(ValueError):
        stock.OneCycleLR(a, 0.1, total_steps=10, pct_start=1)


# ---------------------------------------------------------------------------------------------
# The device-side LR log
# ---------------------------------------------------------------------------------------------


def test_lr_log_records_the_lr_of_every_step_and_wraps():
    a, b = _optimizers()
    sa, sb = stock.OneCycleLR(a, 0.5, total_steps=40), fused.OneCycleLR(b, 0.5, total_steps=40)
    b.start_lr_log(capacity=16)
    used = []
    for _ in range(30):
        used.append([g["lr"] for g in a.param_groups])
        a.step()
        b.step()
        sa.step()
        sb.step()
    log = b.lr_log()
    assert log.shape == (16, 3) and log.dtype == torch.float64
    torch.testing.assert_close(log, torch.tensor(used[-16:], dtype=torch.float64), rtol=1e-12, atol=0)
    b.stop_lr_log()
    with pytest.raises(RuntimeError, match="start_lr_log"):
        b.lr_log()
    with pytest.raises(ValueError, match="capacity"):
        b.start_lr_log(0)


def test_lr_log_never_reads_the_host_during_steps():
    from fused_lr.schedules import _ForbidHostReads

    _, b = _optimizers()
    s = fused.CosineAnnealingLR(b, 10)
    b.start_lr_log(8)
    for q in (p for g in b.param_groups for p in g["params"]):
        q.grad = torch.ones_like(q)
    with _ForbidHostReads():
        for _ in range(3):
            b._record_lr()
    assert b.lr_log().shape == (3, 3)
    assert torch.equal(b.lr_log(), torch.tensor([s.get_last_lr()] * 3, dtype=torch.float64))

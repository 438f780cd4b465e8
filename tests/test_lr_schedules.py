"""LR sequences of fused_lr's schedulers against torch.optim.lr_scheduler, step by step."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import assert_lrs_close

import fused_lr
import fused_lr.lr_scheduler as fused
from fused_lr import schedules as S

BASE_LRS = (0.1, 0.05, 0.3)


def _optimizers():
    """Stock SGD and FusedSGD over three groups with different base LRs (layer-wise LRs)."""
    ps = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    qs = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    a = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(ps, BASE_LRS)], lr=1.0, momentum=0.9)
    b = fused_lr.FusedSGD([{"params": [q], "lr": lr} for q, lr in zip(qs, BASE_LRS)], lr=1.0, momentum=0.9)
    return a, b


def _lam_per_group():
    return [lambda e: 0.95**e, lambda e: 1.0 / (1 + e), lambda e: 1.0 if e < 7 else 0.25]


# (name, kwargs, steps): steps >= 3 periods and past every boundary.
CASES = [
    ("StepLR", dict(step_size=10, gamma=0.1), 35),
    ("StepLR", dict(step_size=3, gamma=0.5), 20),
    ("StepLR", dict(step_size=1, gamma=0.9), 12),
    ("ExponentialLR", dict(gamma=0.9), 60),
    ("ExponentialLR", dict(gamma=0.99), 400),
    ("ExponentialLR", dict(gamma=1.05), 30),
    ("CosineAnnealingLR", dict(T_max=10), 35),
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.01), 40),
    ("CosineAnnealingLR", dict(T_max=1), 6),
    ("CosineAnnealingLR", dict(T_max=100, eta_min=1e-4), 330),
    ("CosineAnnealingLR", dict(T_max=1000), 3100),
    ("LambdaLR", dict(lr_lambda=lambda e: 0.95**e), 50),
    ("LambdaLR", dict(lr_lambda=lambda e: e // 30), 100),
    ("LambdaLR", dict(lr_lambda=lambda e: min(1.0, (e + 1) / 5)), 30),
    ("LambdaLR", dict(lr_lambda=lambda e: 0.5 * (1 + math.cos(math.pi * e / 20))), 70),
    ("LambdaLR", dict(lr_lambda=_lam_per_group()), 40),
    ("MultiStepLR", dict(milestones=[3, 7, 15], gamma=0.1), 25),
    ("MultiStepLR", dict(milestones=[2, 2, 5], gamma=0.5), 12),  # a repeated milestone decays twice
    ("MultiStepLR", dict(milestones=[0, 30], gamma=0.3), 40),
    ("ConstantLR", dict(factor=0.25, total_iters=4), 15),
    ("ConstantLR", dict(), 15),
    ("LinearLR", dict(start_factor=0.1, total_iters=10), 30),
    ("LinearLR", dict(start_factor=1.0, end_factor=0.0, total_iters=7), 20),
    ("LinearLR", dict(), 15),
    ("PolynomialLR", dict(total_iters=10, power=2.0), 30),
    ("PolynomialLR", dict(total_iters=4, power=0.5), 12),
    ("PolynomialLR", dict(), 15),
    ("MultiplicativeLR", dict(lr_lambda=lambda e: 0.95), 40),
    ("MultiplicativeLR", dict(lr_lambda=[lambda e: 0.9, lambda e: 1.0 if e < 5 else 0.8, lambda e: 1 - 0.01 * (e % 3)]), 30),
    ("CosineAnnealingWarmRestarts", dict(T_0=5), 25),
    ("CosineAnnealingWarmRestarts", dict(T_0=2, T_mult=2, eta_min=1e-3), 70),
    ("CosineAnnealingWarmRestarts", dict(T_0=1, T_mult=3), 50),
]


@pytest.mark.parametrize("name,kwargs,steps", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_lr_sequence_matches_stock(name, kwargs, steps):
    a, b = _optimizers()
    sa = getattr(stock, name)(a, **kwargs)
    sb = getattr(fused, name)(b, **kwargs)
    assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"{name} at construction")
    for t in range(1, steps + 1):
        a.step()
        b.step()
        sa.step()
        sb.step()
        assert sb.last_epoch == sa.last_epoch == t
        expected = [g["lr"] for g in a.param_groups]
        # What the optimizer will use (the device tensor) and what the host reports.
        assert_lrs_close([float(g["lr"]) for g in b.param_groups], expected, f"{name} group lr at step {t}")
        assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"{name} get_last_lr at step {t}")
    assert sb.base_lrs == sa.base_lrs
    assert [g["initial_lr"] for g in b.param_groups] == [g["initial_lr"] for g in a.param_groups]


def test_lambda_modes_are_reported():
    _, b = _optimizers()
    s = fused.LambdaLR(b, [lambda e: 0.95**e, lambda e: 1.0 if e < 3 else 0.5, lambda e: math.cos(e)])
    assert s.modes == ["device", "table", "table"]


def test_lambda_table_grows_past_horizon():
    a, b = _optimizers()
    fn = lambda e: 1.0 / (1 + (e // 7))  # noqa: E731  floor-division on an int: runs on the device
    fn_table = lambda e: 1.0 if e < 3 else 1.0 / (1 + (e // 7))  # noqa: E731  a branch: tabulated
    sa = stock.LambdaLR(a, [fn, fn_table, fn_table])
    sb = fused.LambdaLR(b, [fn, fn_table, fn_table], horizon=8)
    assert sb.modes == ["device", "table", "table"]
    for t in range(1, 70):
        a.step()
        b.step()
        sa.step()
        sb.step()
        assert_lrs_close([float(g["lr"]) for g in b.param_groups], [g["lr"] for g in a.param_groups], f"step {t}")
    assert sb.horizon >= 70


def test_step_with_explicit_epoch_uses_closed_form():
    a, b = _optimizers()
    sa = stock.StepLR(a, step_size=3, gamma=0.5)
    sb = fused.StepLR(b, step_size=3, gamma=0.5)
    for epoch in (5, 9, 2, 14):
        with pytest.warns(UserWarning):
            sa.step(epoch)
        with pytest.warns(UserWarning):
            sb.step(epoch)
        assert_lrs_close([float(g["lr"]) for g in b.param_groups], [g["lr"] for g in a.param_groups], f"epoch {epoch}")


@pytest.mark.parametrize("T_0,T_mult", [(5, 1), (2, 2), (3, 3)])
def test_warm_restarts_fractional_epochs(T_0, T_mult):
    """torch's documented pattern: scheduler.step(epoch + i / iters) inside the epoch loop."""
    a, b = _optimizers()
    sa = stock.CosineAnnealingWarmRestarts(a, T_0, T_mult, eta_min=1e-3)
    sb = fused.CosineAnnealingWarmRestarts(b, T_0, T_mult, eta_min=1e-3)
    iters = 7
    # torch's CosineAnnealingWarmRestarts.step(epoch) is its own and never warns: neither may ours
    # (tests/test_torch_scheduler_behaviour.py compares every scheduler's warnings with stock's).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for epoch in range(12):
            for i in range(iters):
                a.step(), b.step()
                sa.step(epoch + i / iters)
                sb.step(epoch + i / iters)
                where = f"epoch {epoch}+{i}/{iters}"
                assert_lrs_close([float(g["lr"]) for g in b.param_groups], [g["lr"] for g in a.param_groups], where)
    for _ in range(5):  # plain steps afterwards keep the fraction, as torch's do
        sa.step()
        sb.step()
        assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), "plain step after fractional epochs")


def test_warns_when_scheduler_steps_before_optimizer():
    _, b = _optimizers()
    s = fused.StepLR(b, step_size=2)
    with pytest.warns(UserWarning, match="before `optimizer.step\\(\\)`"):
        s.step()


def test_no_warning_in_the_right_order():
    import warnings

    _, b = _optimizers()
    s = fused.CosineAnnealingLR(b, T_max=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b.step()
        s.step()


@pytest.mark.parametrize(
    "row,steps",
    [
        (S.step_row(0.1, 30, 0.1), [0, 29, 30, 31, 10**6, 10**12]),
        (S.exponential_row(0.1, 0.999), [0, 1, 1000, 10**5]),
        (S.cosine_row(0.1, 1000, 1e-5), [0, 500, 1000, 2000, 10**9 + 7, 10**15 + 3]),
    ],
)
def test_closed_forms_at_giant_steps(row, steps):
    """Giant counters: no overflow, and the closed form keeps full float64 precision."""
    desc = torch.tensor([row], dtype=torch.float64)
    kind, base, p0, p1 = S.Kind(int(row[S.Col.KIND])), row[S.Col.BASE], row[S.Col.P0], row[S.Col.P1]
    for t in steps:
        got = S.lr_at(torch.tensor([t]), desc).item()
        if kind == S.Kind.STEP:
            want = base * p1 ** (t // int(p0))
        elif kind == S.Kind.EXPONENTIAL:
            want = base * p0**t
        else:
            # Exact reduction modulo the 2*T_max period in Python integers, then the formula.
            want = p1 + (base - p1) * (1 + math.cos(math.pi * (t % int(2 * p0)) / p0)) / 2
        assert got == pytest.approx(want, rel=1e-12, abs=1e-300), (t, got, want)


def test_lr_at_never_reads_the_host():
    """lr_at runs with every host read forbidden (what would be a sync on CUDA)."""
    desc = torch.tensor(
        [
            S.step_row(0.1, 3, 0.5),
            S.exponential_row(0.2, 0.9),
            S.cosine_row(0.3, 5, 0.0),
            S.table_row(0.4, 0, 3),
            S.direct_row(0.5, 0.25),
            S.constant_row(0.6),
        ],
        dtype=torch.float64,
    )
    table = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    with S._ForbidHostReads():
        out = S.lr_at(torch.tensor([4]), desc, table)
    expected = [0.1 * 0.5, 0.2 * 0.9**4, 0.3 * (1 + math.cos(math.pi * 4 / 5)) / 2, 0.4 * 0.25, 0.25, 0.6]
    for got, want in zip(out.tolist(), expected):
        assert got == pytest.approx(want, rel=1e-14)


def test_scheduler_step_never_reads_the_host():
    """A whole training step (optimizer + scheduler) with host reads forbidden: no sync would occur."""
    _, b = _optimizers()
    s = fused.LambdaLR(b, lambda e: 0.1 * 0.95**e)
    for g in b.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    b.step()
    s.step()
    # The CPU fused kernel itself reads its LR on the host (free on CPU), so check the scheduler's
    # device work in isolation here; the GPU tests check the whole step with sync debug mode.
    with S._ForbidHostReads():
        s._sched.advance()
        s._sched.write_lr(b.lr_tensor)
    assert b.lr_tensor.tolist() == pytest.approx([lr * 0.1 * 0.95**2 for lr in BASE_LRS], rel=1e-14)


def test_scheduler_device_path_never_reads_the_host(monkeypatch):
    """The scheduler's device work (the GPU path, forced on CPU tensors) for closed forms, a
    product, a sequence and momentum cycling, with host reads forbidden."""
    monkeypatch.setattr(S.DeviceSchedule, "_host_answers", lambda self: False)  # the device path, on CPU tensors
    builds = [
        lambda o: fused.CosineAnnealingLR(o, 10),
        lambda o: fused.ChainedScheduler([fused.ConstantLR(o, 0.5, total_iters=2), fused.MultiStepLR(o, [3, 5])]),
        lambda o: fused.SequentialLR(o, [fused.LinearLR(o, 0.1, total_iters=2), fused.StepLR(o, 3)], [2]),
        lambda o: fused.OneCycleLR(o, 0.5, total_steps=20),
    ]
    for build in builds:
        _, b = _optimizers()
        s = build(b)
        with S._ForbidHostReads():
            for _ in range(4):
                s._sched.advance()
                s._sched.write_lr(b.lr_tensor)
        expected = S.lr_at(torch.tensor([4]), s._sched.desc, s._sched.table, n_groups=3)
        assert torch.equal(b.lr_tensor, expected), type(s).__name__


@pytest.mark.parametrize("name,kwargs,steps", CASES[::3], ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES[::3])])
def test_cpu_shortcut_equals_the_device_path_bit_for_bit(monkeypatch, name, kwargs, steps):
    """On a CPU device the LR comes from host blocks (lr_table); the device path (lr_at per step)
    must give the very same bits, every step."""
    runs = []
    for shortcut in (True, False):
        if not shortcut:
            monkeypatch.setattr(S.DeviceSchedule, "_host_answers", lambda self: False)
        _, b = _optimizers()
        s = getattr(fused, name)(b, **kwargs)
        lrs = []
        for _ in range(steps):
            b.step()
            s.step()
            lrs.append(b.lr_tensor.clone())
        runs.append(torch.stack(lrs))
    assert torch.equal(runs[0], runs[1])


# ---------------------------------------------------------------- random configurations (hypothesis)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_base_lrs = st.lists(st.floats(1e-5, 10.0), min_size=1, max_size=3)
_configs = st.one_of(
    st.tuples(st.just("StepLR"), st.fixed_dictionaries({"step_size": st.integers(1, 40), "gamma": st.floats(0.01, 2.0)})),
    st.tuples(st.just("ExponentialLR"), st.fixed_dictionaries({"gamma": st.floats(0.5, 1.1)})),
    st.tuples(
        st.just("MultiStepLR"),
        st.fixed_dictionaries(
            {"milestones": st.lists(st.integers(0, 120), max_size=6).map(sorted), "gamma": st.floats(0.05, 1.5)}
        ),
    ),
    st.tuples(st.just("ConstantLR"), st.fixed_dictionaries({"factor": st.floats(0.01, 1.0), "total_iters": st.integers(0, 60)})),
    st.tuples(
        st.just("LinearLR"),
        st.fixed_dictionaries(
            {"start_factor": st.floats(0.01, 1.0), "end_factor": st.floats(0.0, 1.0), "total_iters": st.integers(1, 100)}
        ),
    ),
    st.tuples(
        st.just("CosineAnnealingWarmRestarts"),
        st.fixed_dictionaries({"T_0": st.integers(1, 30), "T_mult": st.integers(1, 3), "eta_min": st.floats(0.0, 1e-3)}),
    ),
    st.tuples(st.just("PolynomialLR"), st.fixed_dictionaries({"total_iters": st.integers(1, 100), "power": st.floats(0.0, 3.0)})),
    st.tuples(
        st.just("CosineAnnealingLR"),
        st.fixed_dictionaries({"T_max": st.integers(1, 200), "eta_min": st.one_of(st.just(0.0), st.floats(0.0, 1e-3))}),
    ),
)


# 400 examples x up to 150 steps each: each of the 8 schedulers drawn ~50 times with random
# periods, milestones, factors and base LRs (one to three groups); runs in about ten seconds.
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=_configs, base_lrs=_base_lrs, steps=st.integers(1, 150))
def test_random_configurations_match_stock(config, base_lrs, steps):
    name, kwargs = config
    ps = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    qs = [torch.nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    a = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(ps, base_lrs)])
    b = fused_lr.FusedSGD([{"params": [q], "lr": lr} for q, lr in zip(qs, base_lrs)])
    sa = getattr(stock, name)(a, **kwargs)
    sb = getattr(fused, name)(b, **kwargs)
    for t in range(steps):
        a.step()
        b.step()
        sa.step()
        sb.step()
        assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"{name}{kwargs} at step {t + 1}", scale=max(base_lrs))
    assert_lrs_close(
        [float(g["lr"]) for g in b.param_groups],
        [g["lr"] for g in a.param_groups],
        f"{name}{kwargs} after {steps}",
        scale=max(base_lrs),
    )


# ---------------------------------------------------------------- SequentialLR (composition on the device)


SEQUENCES = {
    "warmup-cosine": lambda M, o: M.SequentialLR(o, [M.LinearLR(o, 0.01, total_iters=5), M.CosineAnnealingLR(o, 20, 1e-4)], [5]),
    "constant-exp-step": lambda M, o: M.SequentialLR(
        o, [M.ConstantLR(o, 0.5, total_iters=3), M.ExponentialLR(o, 0.9), M.StepLR(o, 4, 0.5)], [4, 12]
    ),
    "lambda-multistep": lambda M, o: M.SequentialLR(o, [M.LambdaLR(o, lambda e: 0.9**e), M.MultiStepLR(o, [2, 5], 0.1)], [6]),
    "restarts-poly": lambda M, o: M.SequentialLR(
        o, [M.CosineAnnealingWarmRestarts(o, 3, 2), M.PolynomialLR(o, total_iters=10, power=2.0)], [9]
    ),
    # A tabulated lambda piece run far past its horizon (8): the table must grow with the run.
    "warmup-lambda-table": lambda M, o: M.SequentialLR(
        o,
        [
            M.LinearLR(o, 0.1, total_iters=3),
            M.LambdaLR(o, lambda e: 0.99**e if e < 30 else 0.5, **({"horizon": 8} if M is fused else {})),
        ],
        [3],
    ),
}


def _build_quietly(build, module, opt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns about sub-scheduler order; not ours to test
        return build(module, opt)


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_sequential_matches_stock(name):
    a, b = _optimizers()
    sa = _build_quietly(SEQUENCES[name], stock, a)
    sb = _build_quietly(SEQUENCES[name], fused, b)
    for t in range(45):
        assert_lrs_close([float(g["lr"]) for g in b.param_groups], [g["lr"] for g in a.param_groups], f"{name} step {t}")
        assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"{name} get_last_lr step {t}")
        a.step(), b.step(), sa.step(), sb.step()


def test_sequential_state_dict_resume_and_stock_interchange():
    build = SEQUENCES["warmup-cosine"]
    a, b = _optimizers()
    sa = _build_quietly(build, stock, a)
    sb = _build_quietly(build, fused, b)
    for _ in range(8):
        a.step(), b.step(), sa.step(), sb.step()
    a2, b2 = _optimizers()
    b3 = _optimizers()[1]
    s_from_stock = _build_quietly(build, fused, b2)
    s_from_fused = _build_quietly(build, fused, b3)
    # torch's resume recipe: the optimizer's state (its LRs), then the scheduler's.
    b2.load_state_dict(a.state_dict())
    b3.load_state_dict(b.state_dict())
    s_from_stock.load_state_dict(sa.state_dict())
    s_from_fused.load_state_dict(sb.state_dict())
    for t in range(25):
        a.step(), b2.step(), b3.step()
        for s in (sa, s_from_stock, s_from_fused):
            s.step()
        assert_lrs_close(s_from_stock.get_last_lr(), sa.get_last_lr(), f"from stock, step {t}")
        assert_lrs_close(s_from_fused.get_last_lr(), sa.get_last_lr(), f"from fused, step {t}")
        assert_lrs_close(b2.lr_tensor.tolist(), [g["lr"] for g in a.param_groups], f"device lr, step {t}")

"""Warmup-cosine, warmup-stable-decay and inverse-sqrt: formulas, boundaries, edits, resume.

torch has no stock equivalent, so each is compared with an independent plain-Python evaluation of
the formula in its docstring, and with the properties users rely on (peak exactly at the end of
warmup, monotone phases, the floor, giant step counts).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ForbidReadsOf

import fused_lr
import fused_lr.lr_scheduler as fused
from fused_lr import schedules as S

BASES = (1.0, 0.3)


def _opt():
    return fused_lr.FusedSGD([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": b} for b in BASES])


def ref_warmup_cosine(base, t, W, T, ratio):
    floor = base * ratio
    if t < W:
        return base * t / W
    if t >= T:
        return floor
    return floor + (base - floor) * (1 + math.cos(math.pi * (t - W) / (T - W))) / 2


def ref_wsd(base, t, W, T, D, ratio, shape):
    floor = base * ratio
    s = T - D
    if t < W:
        return base * t / W
    if t < s:
        return base
    p = 1.0 if D == 0 else min((t - s) / D, 1.0)
    if shape == "linear":
        return base - (base - floor) * p
    if shape == "cosine":
        return floor + (base - floor) * (1 + math.cos(math.pi * p)) / 2
    return base - (base - floor) * math.sqrt(p)


def ref_inverse_sqrt(base, t, W):
    if t < W:
        return base * t / W
    return base * math.sqrt(W / t) if W > 0 else base / math.sqrt(max(t, 1))


def _run(sched, opt, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(sched.get_last_lr())
        device = opt.lr_tensor.tolist()
        assert device == pytest.approx(lrs[-1], rel=1e-15, abs=0), "device and host LRs disagree"
        opt.step()
        sched.step()
    return lrs


CASES = [
    (
        "WarmupCosineLR",
        dict(warmup_steps=10, total_steps=50, min_lr_ratio=0.1),
        lambda b, t: ref_warmup_cosine(b, t, 10, 50, 0.1),
    ),
    ("WarmupCosineLR", dict(warmup_steps=0, total_steps=7, min_lr_ratio=0.0), lambda b, t: ref_warmup_cosine(b, t, 0, 7, 0.0)),
    ("WarmupCosineLR", dict(warmup_steps=5, total_steps=5, min_lr_ratio=0.2), lambda b, t: ref_warmup_cosine(b, t, 5, 5, 0.2)),
    *[
        (
            "WarmupStableDecayLR",
            dict(warmup_steps=4, total_steps=40, decay_steps=10, min_lr_ratio=0.05, decay_shape=sh),
            (lambda sh: lambda b, t: ref_wsd(b, t, 4, 40, 10, 0.05, sh))(sh),
        )
        for sh in ("linear", "cosine", "1-sqrt")
    ],
    (
        "WarmupStableDecayLR",
        dict(warmup_steps=0, total_steps=9, decay_steps=0),
        lambda b, t: ref_wsd(b, t, 0, 9, 0, 0.0, "linear"),
    ),
    ("InverseSqrtLR", dict(warmup_steps=8), lambda b, t: ref_inverse_sqrt(b, t, 8)),
    ("InverseSqrtLR", dict(warmup_steps=0), lambda b, t: ref_inverse_sqrt(b, t, 0)),
]


@pytest.mark.parametrize("name,kwargs,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_formula_step_by_step(name, kwargs, ref):
    opt = _opt()
    sched = getattr(fused, name)(opt, **kwargs)
    total = kwargs.get("total_steps", 40)
    for t, lrs in enumerate(_run(sched, opt, total + 15)):
        # float64 evaluations of the same formula in a different order of operations: a few ulp.
        assert lrs == pytest.approx([ref(b, t) for b in BASES], rel=1e-13, abs=1e-300), f"step {t}"


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("WarmupCosineLR", dict(warmup_steps=10, total_steps=60, min_lr_ratio=0.1)),
        ("WarmupStableDecayLR", dict(warmup_steps=10, total_steps=60, decay_steps=20, min_lr_ratio=0.1, decay_shape="1-sqrt")),
        ("InverseSqrtLR", dict(warmup_steps=10)),
    ],
)
def test_boundaries_and_monotone_phases(name, kwargs):
    opt = _opt()
    sched = getattr(fused, name)(opt, **kwargs)
    lrs = [lr[0] for lr in _run(sched, opt, 80)]
    W = kwargs["warmup_steps"]
    assert lrs[0] == 0.0
    assert lrs[W] == BASES[0], "the peak is reached exactly at the end of warmup"
    assert all(a < b for a, b in zip(lrs[:W], lrs[1 : W + 1])), "strictly increasing during warmup"
    after = lrs[W:]
    assert all(b <= a for a, b in zip(after, after[1:])), "non-increasing after warmup"
    if "min_lr_ratio" in kwargs:
        floor = BASES[0] * kwargs["min_lr_ratio"]
        assert min(after) >= floor - 1e-15
        assert lrs[kwargs["total_steps"]] == pytest.approx(floor, rel=1e-15)
        assert lrs[-1] == pytest.approx(floor, rel=1e-15), "the floor holds past the horizon"


@pytest.mark.parametrize(
    "row,expected",
    [
        (S.warmup_cosine_row(1.0, 100, 10_000, 0.1), lambda t: 0.1),
        (S.wsd_row(1.0, 100, 9_000, 1_000, 0.01, 2), lambda t: 0.01),
        (S.inverse_sqrt_row(1.0, 4000), lambda t: math.sqrt(4000 / t)),
    ],
)
def test_giant_step_counts(row, expected):
    desc = torch.tensor([row], dtype=torch.float64)
    for t in (10**6, 10**12, 2**62):
        got = S.lr_at(torch.tensor([t]), desc).item()
        assert math.isfinite(got)
        assert got == pytest.approx(expected(t), rel=1e-12), t


def test_wsd_start_cooldown_now_edits_device_data_only(monkeypatch):
    # The device path (what runs on a GPU), on CPU tensors: the CPU shortcut is switched off.
    monkeypatch.setattr(S.DeviceSchedule, "_host_answers", lambda self: False)
    opt = _opt()
    sched = fused.WarmupStableDecayLR(opt, warmup_steps=2, total_steps=1000, decay_steps=8, decay_shape="linear")
    desc_before = sched._sched.desc
    _run(sched, opt, 20)  # in the stable phase now
    assert sched.get_last_lr() == list(BASES)
    with ForbidReadsOf(sched._sched.desc, sched._sched.counter, sched._sched.table, opt.lr_tensor):
        sched.start_cooldown()
    assert sched._sched.desc is desc_before, "an edit must not reallocate the description (graphs hold its address)"
    lrs = [lr[0] for lr in _run(sched, opt, 12)]
    assert lrs == pytest.approx([ref_wsd(1.0, 20 + k, 2, 28, 8, 0.0, "linear") for k in range(12)], rel=1e-13, abs=1e-300)
    assert sched.total_steps == 28


def test_extend_horizon_mid_run():
    opt = _opt()
    sched = fused.WarmupCosineLR(opt, warmup_steps=5, total_steps=50, min_lr_ratio=0.0)
    _run(sched, opt, 20)
    sched.set_total_steps(200)
    lrs = [lr[0] for lr in _run(sched, opt, 200)]
    assert lrs == pytest.approx([ref_warmup_cosine(1.0, 20 + k, 5, 200, 0.0) for k in range(200)], rel=1e-13, abs=1e-300)
    other = fused.WarmupStableDecayLR(_opt(), 0, 100, 10)
    other.set_total_steps(300)
    assert other._sched.desc[0, 3].item() == 290.0


@pytest.mark.parametrize("name,kwargs", [c[:2] for c in CASES[:5]])
def test_state_dict_resume(name, kwargs):
    a, b = _opt(), _opt()
    sa = getattr(fused, name)(a, **kwargs)
    sb = getattr(fused, name)(b, **kwargs)
    _run(sa, a, 17)
    sb.load_state_dict(sa.state_dict())
    assert _run(sa, a, 30) == _run(sb, b, 30)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda o: fused.WarmupCosineLR(o, 10, 5), "warmup_steps \\(10\\) must be <= total_steps \\(5\\)"),
        (lambda o: fused.WarmupCosineLR(o, 0, 0), "total_steps must be >= 1, got 0"),
        (lambda o: fused.WarmupCosineLR(o, 0, 10, min_lr_ratio=1.5), "min_lr_ratio must be between 0 and 1, got 1.5"),
        (
            lambda o: fused.WarmupStableDecayLR(o, 5, 10, 6),
            "warmup_steps \\+ decay_steps \\(5 \\+ 6\\) must be <= total_steps \\(10\\)",
        ),
        (lambda o: fused.WarmupStableDecayLR(o, 0, 10, 2, decay_shape="exp"), "decay_shape must be one of"),
        (lambda o: fused.InverseSqrtLR(o, -1), "warmup_steps must be >= 0, got -1"),
    ],
)
def test_bad_arguments(make, match):
    opt = _opt()
    before = opt.lr_tensor.clone()
    with pytest.raises(ValueError, match=match):
        make(opt)
    assert torch.equal(before, opt.lr_tensor)
    assert all("initial_lr" not in g for g in opt.param_groups)


# ---------------------------------------------------------------- CosineDecayLR (optax's cosine with an exponent)


def ref_optax_cosine_decay(init_value, count, decay_steps, alpha, exponent):
    """optax.cosine_decay_schedule's formula, as optax documents it (alpha: the final fraction)."""
    count = min(count, decay_steps)
    cosine_decay = 0.5 * (1 + math.cos(math.pi * count / decay_steps))
    return init_value * ((1 - alpha) * cosine_decay**exponent + alpha)


@pytest.mark.parametrize("T_max,eta_ratio,exponent", [(20, 0.0, 1.0), (20, 0.1, 2.5), (7, 0.01, 0.5)])
def test_cosine_decay_matches_optax_formula(T_max, eta_ratio, exponent):
    """``CosineDecayLR(T_max, eta_min=base * alpha, exponent)`` is optax's cosine_decay_schedule
    (its formula evaluated in Python floats, a different association: a few ulp, rel 1e-13); the
    peak at t = 0, eta_min from T_max on, non-increasing in between."""
    opt = fused_lr.FusedSGD([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": 1.0}])
    sched = fused.CosineDecayLR(opt, T_max, eta_min=eta_ratio, exponent=exponent)
    lrs = [lr[0] for lr in _run(sched, opt, T_max + 10)]
    want = [ref_optax_cosine_decay(1.0, t, T_max, eta_ratio, exponent) for t in range(T_max + 10)]
    assert lrs == pytest.approx(want, rel=1e-13, abs=1e-300)
    assert lrs[0] == 1.0 and lrs[T_max:] == [pytest.approx(eta_ratio, abs=1e-16)] * 10
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))


def test_cosine_decay_with_exponent_one_is_cosine_annealing_up_to_T_max():
    """With exponent 1, torch's CosineAnnealingLR (stock, stepped beside it) up to T_max."""
    ps = [torch.nn.Parameter(torch.ones(1)) for _ in range(2)]
    a = torch.optim.SGD([ps[0]], lr=0.1)
    b = fused_lr.FusedSGD([ps[1]], lr=0.1)
    sa, sb = torch.optim.lr_scheduler.CosineAnnealingLR(a, 12, eta_min=1e-3), fused.CosineDecayLR(b, 12, 1e-3)
    for t in range(12):
        from conftest import assert_lrs_close

        assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"step {t}")
        a.step(), b.step(), sa.step(), sb.step()


def test_cosine_decay_bad_arguments_and_resume():
    opt = _opt()
    for kwargs, match in (
        (dict(T_max=0), "T_max must be >= 1"),
        (dict(T_max=5, exponent=0.0), "exponent must be > 0"),
        (dict(T_max=5, eta_min=-1.0), "eta_min must be >= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            fused.CosineDecayLR(opt, **kwargs)
    a, b = _opt(), _opt()
    sa, sb = fused.CosineDecayLR(a, 9, 0.01, 2.0), fused.CosineDecayLR(b, 9, 0.01, 2.0)
    _run(sa, a, 4)
    b.load_state_dict(a.state_dict())
    sb.load_state_dict(sa.state_dict())
    assert _run(sb, b, 8) == _run(sa, a, 8)

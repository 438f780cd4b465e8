"""Checkpoints: every scheduler through torch.save / torch.load(weights_only=True), exact resume, stock
checkpoints (ReduceLROnPlateau, SequentialLR) continued by fused_lr, and DCP's state-dict helpers.

tests/test_sgd_parity.py already resumes the closed-form schedulers of its SCHEDULERS table through a
weights_only round trip and migrates their stock checkpoints; this file covers every other
scheduler class and the stock ReduceLROnPlateau / SequentialLR checkpoints.

"Exactly" means bit for bit: a resumed FusedSGD + scheduler runs the same ops on the same values as
the uninterrupted one. Against stock (float64): TRAJ_TOL (tests/conftest.py), LRs LR_RTOL.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import TRAJ_TOL, assert_close, assert_lrs_close

import fused_lr
import fused_lr.lr_scheduler as fused

DTYPE = torch.float64
SHAPES = [(), (5,), (3, 4)]
OPT_KW = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)
SAVE_AT, STEPS = 7, 20


class Warmup:
    """A callable object with state: LambdaLR saves its ``__dict__`` (torch's format)."""

    def __init__(self, steps):
        self.steps = steps

    def __call__(self, e):
        return min(1.0, (e + 1) / self.steps)


def _seq(M, o):
    return M.SequentialLR(o, [M.LinearLR(o, 0.1, total_iters=4), M.CosineAnnealingLR(o, 8, 1e-3)], [4])


# Every scheduler class of fused_lr.lr_scheduler: (builder, has a stock twin). Each crosses a
# boundary before SAVE_AT and another after it.
BUILDERS = {
    "StepLR": (lambda M, o: M.StepLR(o, 3, 0.5), True),
    "MultiStepLR": (lambda M, o: M.MultiStepLR(o, [4, 9, 9, 14], 0.5), True),
    "ConstantLR": (lambda M, o: M.ConstantLR(o, 0.5, total_iters=9), True),
    "LinearLR": (lambda M, o: M.LinearLR(o, 0.2, total_iters=12), True),
    "ExponentialLR": (lambda M, o: M.ExponentialLR(o, 0.9), True),
    "PolynomialLR": (lambda M, o: M.PolynomialLR(o, total_iters=15, power=2.0), True),
    "CosineAnnealingLR": (lambda M, o: M.CosineAnnealingLR(o, 6, 1e-3), True),
    "CosineAnnealingWarmRestarts": (lambda M, o: M.CosineAnnealingWarmRestarts(o, 3, 2, 1e-3), True),
    "LambdaLR-device": (lambda M, o: M.LambdaLR(o, lambda e: 0.93**e), True),
    "LambdaLR-object": (lambda M, o: M.LambdaLR(o, Warmup(10)), True),
    "MultiplicativeLR": (lambda M, o: M.MultiplicativeLR(o, lambda e: 0.9 if e % 3 else 1.0), True),
    "SequentialLR": (_seq, True),
    "ReduceLROnPlateau": (lambda M, o: M.ReduceLROnPlateau(o, patience=1, cooldown=1, factor=0.5), True),
    "WarmupCosineLR": (lambda M, o: fused.WarmupCosineLR(o, 4, 16, 0.1), False),
    "WarmupStableDecayLR": (lambda M, o: fused.WarmupStableDecayLR(o, 3, 18, 6, decay_shape="1-sqrt"), False),
    "InverseSqrtLR": (lambda M, o: fused.InverseSqrtLR(o, 4), False),
}
METRICS = [1.0, 0.9, 0.95, 0.97, 0.8, 0.85, 0.86, 0.87, 0.7, 0.75, 0.76, 0.77, 0.78, 0.6, 0.65, 0.66, 0.67, 0.68, 0.69, 0.7]


def _params():
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=DTYPE)) for s in SHAPES]


def _groups(ps):
    return [dict(params=ps[:2]), dict(params=ps[2:], lr=0.03)]


def _grads(t):
    g = torch.Generator().manual_seed(100 + t)
    return [torch.randn(s, generator=g, dtype=DTYPE) for s in SHAPES]


def _build(builder, M, opt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SequentialLR's sub-scheduler order warning
        return builder(M, opt)


def _step(ps, opt, sched, t):
    for p, g in zip(ps, _grads(t)):
        p.grad = g.clone()
    opt.step()
    if isinstance(sched, (stock.ReduceLROnPlateau, fused.ReduceLROnPlateau)):
        sched.step(METRICS[t])
    else:
        sched.step()


def _weights_only_roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _state(ps, opt):
    return (
        [p.detach().clone() for p in ps],
        [opt.state[p]["momentum_buffer"].clone() for p in ps],
        [float(g["lr"]) for g in opt.param_groups],
    )


def _run_with_checkpoint(make_opt_a, Ma, make_opt_b, Mb, builder):
    """Train with (opt A, scheduler from Ma) to SAVE_AT, checkpoint through a weights_only round trip,
    load into fresh (opt B, scheduler from Mb), continue to STEPS. Returns the states after each step."""
    ps = _params()
    opt = make_opt_a(_groups(ps))
    sched = _build(builder, Ma, opt)
    out = []
    for t in range(STEPS):
        if t == SAVE_AT:
            ckpt = _weights_only_roundtrip(
                {"params": [p.detach() for p in ps], "opt": opt.state_dict(), "sched": sched.state_dict()}
            )
            ps = [torch.nn.Parameter(v.clone()) for v in ckpt["params"]]
            opt = make_opt_b(_groups(ps))
            sched = _build(builder, Mb, opt)
            opt.load_state_dict(ckpt["opt"])
            sched.load_state_dict(ckpt["sched"])
        _step(ps, opt, sched, t)
        out.append(_state(ps, opt))
    return out


def _fused_opt(groups):
    return fused_lr.FusedSGD(groups, **OPT_KW)


def _stock_opt(groups):
    return torch.optim.SGD(groups, foreach=False, **OPT_KW)


def _uninterrupted(make_opt, M, builder):
    ps = _params()
    opt = make_opt(_groups(ps))
    sched = _build(builder, M, opt)
    out = []
    for t in range(STEPS):
        _step(ps, opt, sched, t)
        out.append(_state(ps, opt))
    return out


def _assert_same_run(got, expected, what, exact):
    for t, ((ps, bs, lrs), (eps, ebs, elrs)) in enumerate(zip(got, expected)):
        if exact:
            assert all(torch.equal(a, b) for a, b in zip(ps + bs, eps + ebs)), f"{what}: step {t} differs"
            assert lrs == elrs, f"{what}: step {t} LRs {lrs} vs {elrs}"
        else:
            for i, (a, b) in enumerate(zip(ps + bs, eps + ebs)):
                assert_close(a, b, what=f"{what}: step {t} tensor {i}", **TRAJ_TOL[DTYPE])
            assert_lrs_close(lrs, elrs, f"{what}: step {t}")


@pytest.mark.parametrize("key", list(BUILDERS))
def test_weights_only_resume_is_exact_and_follows_stock(key):
    builder, has_stock = BUILDERS[key]
    resumed = _run_with_checkpoint(_fused_opt, fused, _fused_opt, fused, builder)
    _assert_same_run(resumed, _uninterrupted(_fused_opt, fused, builder), f"{key} resumed vs uninterrupted", exact=True)
    if has_stock:
        _assert_same_run(resumed, _uninterrupted(_stock_opt, stock, builder), f"{key} resumed vs stock", exact=False)
    assert len({lrs[0] for _, _, lrs in resumed[SAVE_AT:]}) > 1, f"{key}: the LR should change after the resume"


@pytest.mark.parametrize("key", ["ReduceLROnPlateau", "SequentialLR", "LambdaLR-object", "CosineAnnealingWarmRestarts"])
def test_stock_checkpoint_continues_on_stock_trajectory(key):
    """torch.optim.SGD + stock scheduler, checkpointed mid-run (weights_only), continued by FusedSGD +
    the fused_lr scheduler: the rest of the run is stock's uninterrupted one."""
    builder, _ = BUILDERS[key]
    migrated = _run_with_checkpoint(_stock_opt, stock, _fused_opt, fused, builder)
    _assert_same_run(migrated, _uninterrupted(_stock_opt, stock, builder), f"{key} stock -> fused", exact=False)


def test_scheduler_state_dicts_hold_only_plain_values():
    """Nothing in a state_dict needs pickle beyond weights_only's allow-list: no callables, no
    device tensors (the device state is read back into floats and ints, as torch's are)."""

    def walk(x, where):
        if isinstance(x, dict):
            for k, v in x.items():
                assert isinstance(k, (str, int)), f"{where}: key {k!r}"
                walk(v, f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{where}[{i}]")
        else:
            assert x is None or isinstance(x, (bool, int, float, str)), f"{where}: {type(x).__name__}"

    for key, (builder, _) in BUILDERS.items():
        opt = _fused_opt(_groups(_params()))
        sched = _build(builder, fused, opt)
        _step(opt.param_groups[0]["params"] + opt.param_groups[1]["params"], opt, sched, 0)
        walk(sched.state_dict(), key)


def test_dcp_state_dict_helpers_keep_the_lr():
    """torch.distributed.checkpoint.state_dict.get_optimizer_state_dict on a fresh optimizer runs a
    step with the LR swapped to 0 and puts the old LR object back: the LR must come back, as stock's
    does (it used to stay 0 in FusedSGD, whose group LR is a view of its device buffer)."""
    dcp_sd = pytest.importorskip("torch.distributed.checkpoint.state_dict")
    runs = []
    for make in (_stock_opt, _fused_opt):
        model = torch.nn.Linear(3, 2).to(DTYPE)
        torch.manual_seed(0)
        torch.nn.init.normal_(model.weight), torch.nn.init.zeros_(model.bias)
        opt = make(model.parameters())
        sched = (stock if make is _stock_opt else fused).StepLR(opt, 2, 0.5)
        sd = dcp_sd.get_optimizer_state_dict(model, opt)
        assert sd["param_groups"][0]["lr"] == 0.1
        for _t in range(5):
            opt.zero_grad()
            model(torch.ones(4, 3, dtype=DTYPE)).sum().backward()
            opt.step()
            sched.step()
        runs.append(([p.detach().clone() for p in model.parameters()], [float(g["lr"]) for g in opt.param_groups]))
    (pa, la), (pb, lb) = runs
    for a, b in zip(pa, pb):
        assert_close(b, a, what="after DCP's get_optimizer_state_dict", **TRAJ_TOL[DTYPE])
    assert_lrs_close(lb, la, "after DCP's get_optimizer_state_dict")


def test_replaced_lr_object_keeps_its_value():
    """The semantics behind the DCP fix: an LR object taken from a group and put back later carries
    the LR it had when it was replaced, as a float taken from torch.optim.SGD's group would."""
    opt = _fused_opt([torch.nn.Parameter(torch.ones(2, dtype=DTYPE))])
    old = opt.param_groups[0]["lr"]
    opt.param_groups[0]["lr"] = 0.0
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.0  # an assigned LR is the group's LR
    opt.param_groups[0]["lr"] = old
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.1
    assert float(opt.lr_tensor[0]) == 0.1

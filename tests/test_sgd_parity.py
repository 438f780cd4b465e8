"""FusedSGD + fused scheduler against torch.optim.SGD + stock scheduler: params and momentum buffers.

The pattern of torch's own test_optim: several groups with their own hyper-parameters, odd sizes,
a 0-dim parameter, a gradient set to None on one step, a parameter frozen then unfrozen (its first
momentum step comes late), a parameter that never gets a gradient, and the state compared with the
parameters at every step.
"""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import TRAJ_TOL, assert_close

import fused_lr
import fused_lr.lr_scheduler as fused

SHAPES = [(), (1,), (7,), (3, 5), (127,), (2, 3, 4), (1025,)]
STEPS = 25
NONE_GRAD_STEP = 5  # parameter 1 gets no gradient on this step
UNFREEZE_STEP = 9  # parameter 4 has no gradient before this step


def _make_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]


def _groups(params, opts):
    """Two groups with their own lr / momentum / weight_decay; the last param never has a grad."""
    g0 = dict(params=params[:4])
    g1 = dict(params=params[4:], lr=0.03)
    if opts["momentum"] and not opts["nesterov"]:
        g1["momentum"] = 0.5
    if opts["weight_decay"]:
        g1["weight_decay"] = 3e-3
    return [g0, g1]


def _grads(step, params, dtype):
    g = torch.Generator().manual_seed(1000 + step)
    out = [torch.randn(p.shape, generator=g, dtype=dtype) for p in params]
    out[-1] = None  # never gets a gradient
    if step == NONE_GRAD_STEP:
        out[1] = None
    if step < UNFREEZE_STEP:
        out[4] = None
    return out


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def _option_combos():
    combos = []
    for momentum, dampening, nesterov, wd, maximize in itertools.product(
        (0.0, 0.9), (0.0, 0.3), (False, True), (0.0, 1e-2), (False, True)
    ):
        if nesterov and (momentum == 0 or dampening != 0):
            continue
        combos.append(dict(momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=wd, maximize=maximize))
    return combos


COMBOS = _option_combos()


def _combo_id(c):
    return "m{momentum}-d{dampening}-n{nesterov:d}-wd{weight_decay}-max{maximize:d}".format(**c)


SCHEDULERS = {
    "step": ("StepLR", dict(step_size=4, gamma=0.5)),
    "exp": ("ExponentialLR", dict(gamma=0.93)),
    "cosine": ("CosineAnnealingLR", dict(T_max=8, eta_min=1e-3)),
    "lambda": ("LambdaLR", dict(lr_lambda=lambda e: 0.95**e)),
    "lambda_table": ("LambdaLR", dict(lr_lambda=lambda e: 1.0 if e < 6 else 0.2)),
    "multistep": ("MultiStepLR", dict(milestones=[4, 9, 9, 20], gamma=0.5)),
    "constant": ("ConstantLR", dict(factor=0.5, total_iters=6)),
    "linear": ("LinearLR", dict(start_factor=0.2, total_iters=10)),
    "poly": ("PolynomialLR", dict(total_iters=20, power=1.5)),
    "restarts": ("CosineAnnealingWarmRestarts", dict(T_0=3, T_mult=2, eta_min=1e-3)),
    "multiplicative": ("MultiplicativeLR", dict(lr_lambda=lambda e: 0.93 if e % 2 else 0.99)),
}


def _compare_states(pa, oa, pb, ob, dtype, what):
    tol = TRAJ_TOL[dtype]
    for i, (p, q) in enumerate(zip(pa, pb)):
        assert_close(q, p, what=f"{what}: param {i} {tuple(p.shape)}", **tol)
        ba = oa.state.get(p, {}).get("momentum_buffer")
        bb = ob.state.get(q, {}).get("momentum_buffer")
        assert (ba is None) == (bb is None), f"{what}: param {i} momentum buffer presence {ba is None} vs {bb is None}"
        if ba is not None:
            assert_close(bb, ba, what=f"{what}: momentum buffer {i}", **tol)


def _run_pair(opts, dtype, sched_key, steps=STEPS, seed=0):
    pa = _make_params(dtype, seed)
    pb = copy.deepcopy(pa)
    oa = torch.optim.SGD(_groups(pa, opts), lr=0.1, foreach=False, **opts)
    ob = fused_lr.FusedSGD(_groups(pb, opts), lr=0.1, backend="torch", **opts)
    name, kw = SCHEDULERS[sched_key]
    sa = getattr(stock, name)(oa, **kw)
    sb = getattr(fused, name)(ob, **kw)
    for t in range(steps):
        grads = _grads(t, pa, dtype)
        _set_grads(pa, grads)
        _set_grads(pb, grads)
        oa.step()
        ob.step()
        sa.step()
        sb.step()
        _compare_states(pa, oa, pb, ob, dtype, f"{sched_key} {_combo_id(opts)} {dtype} step {t}")
    return pa, oa, sa, pb, ob, sb


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("opts", COMBOS, ids=[_combo_id(c) for c in COMBOS])
def test_every_option_combination_matches_stock(opts, dtype):
    _run_pair(opts, dtype, "step")


RICH = dict(momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-2, maximize=False)


@pytest.mark.parametrize("sched_key", list(SCHEDULERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_every_scheduler_matches_stock(sched_key, dtype):
    _run_pair(RICH, dtype, sched_key, steps=30)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("opts", [RICH, dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=1e-2, maximize=True),
                                  dict(momentum=0.9, dampening=0.3, nesterov=False, weight_decay=0.0, maximize=True)],
                         ids=["nesterov-wd", "no-momentum-max", "dampening-max"])
def test_half_precision_matches_stock_forloop(opts, dtype):
    _run_pair(opts, dtype, "cosine")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_stock_cpu_fused_sgd_is_wrong_for_half_precision(dtype):
    """Why FusedSGD does not use torch's CPU fused kernel for float16/bfloat16 (torch 2.13): one
    plain step (momentum 0) already differs from torch's own for-loop by ~0.4 on unit-scale values."""
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, generator=g).to(dtype))
    q = torch.nn.Parameter(p.detach().clone())
    grad = torch.randn(64, generator=g).to(dtype)
    p.grad, q.grad = grad.clone(), grad.clone()
    torch.optim.SGD([p], lr=0.1, fused=True).step()
    torch.optim.SGD([q], lr=0.1, foreach=False).step()
    if (p.float() - q.float()).abs().max() < 0.05:
        pytest.skip("this torch's CPU fused SGD is right for half precision: "
                    "the foreach workaround in fused_lr.functional.sgd can go")
    assert (p.float() - q.float()).abs().max() > 0.1


def test_frozen_then_unfrozen_param_gets_first_step_buffer():
    """The late param's first momentum step sets buf = grad, as torch's for-loop does.

    Stock SGD(fused=True) raises a TypeError on this pattern (a None buffer beside existing ones);
    FusedSGD, which runs the same fused kernel, sends the late tensor in a first-step call.
    """
    pa, oa, _, pb, ob, _ = _run_pair(
        dict(momentum=0.9, dampening=0.3, nesterov=False, weight_decay=0.0, maximize=False),
        torch.float32,
        "step",
        steps=UNFREEZE_STEP + 1,
    )
    late_a, late_b = pa[4], pb[4]
    assert oa.state[late_a]["momentum_buffer"] is not None
    assert_close(
        ob.state[late_b]["momentum_buffer"], oa.state[late_a]["momentum_buffer"], what="late buffer", **TRAJ_TOL[torch.float32]
    )
    # The parameter that never had a gradient has no state and did not move.
    assert pb[-1] not in ob.state
    stock_fused = torch.optim.SGD(
        [torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9, fused=True
    )
    p0, p1 = stock_fused.param_groups[0]["params"]
    p0.grad = torch.ones(2)
    stock_fused.step()
    p1.grad = torch.ones(2)
    with pytest.raises(TypeError):
        stock_fused.step()


def test_complex_params_match_stock():
    g = torch.Generator().manual_seed(3)
    pa = [
        torch.nn.Parameter(torch.randn(5, dtype=torch.complex64, generator=g)),
        torch.nn.Parameter(torch.randn(3, dtype=torch.float32, generator=g)),
    ]
    pb = copy.deepcopy(pa)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)
    oa = torch.optim.SGD(pa, foreach=False, **kw)
    ob = fused_lr.FusedSGD(pb, **kw)
    sa, sb = stock.ExponentialLR(oa, 0.9), fused.ExponentialLR(ob, 0.9)
    for _t in range(20):
        grads = [torch.randn(p.shape, dtype=p.dtype, generator=g) for p in pa]
        _set_grads(pa, grads)
        _set_grads(pb, grads)
        oa.step(), ob.step(), sa.step(), sb.step()
    for p, q in zip(pa, pb):
        assert_close(q, p, what=f"complex trajectory {p.dtype}", **TRAJ_TOL[p.dtype])
        assert_close(ob.state[q]["momentum_buffer"], oa.state[p]["momentum_buffer"], what="complex buffer", **TRAJ_TOL[p.dtype])


def test_same_kernel_as_stock_fused_is_bitwise_equal():
    """Against stock SGD(fused=True) (the same CPU kernel), fp32 trajectories agree bit for bit."""
    pa = _make_params(torch.float32)
    pb = copy.deepcopy(pa)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)
    oa = torch.optim.SGD(pa[:-1], fused=True, **kw)
    ob = fused_lr.FusedSGD(pb[:-1], **kw)
    sa, sb = stock.StepLR(oa, 3, 0.5), fused.StepLR(ob, 3, 0.5)
    for _t in range(12):
        grads = [torch.randn(p.shape) for p in pa[:-1]]
        _set_grads(pa[:-1], grads)
        _set_grads(pb[:-1], grads)
        oa.step(), ob.step(), sa.step(), sb.step()
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)


# ---------------------------------------------------------------- state_dict: resume and migrate


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("sched_key", list(SCHEDULERS))
def test_state_dict_midway_continues_exactly(sched_key):
    opts = RICH
    dtype = torch.float32
    name, kw = SCHEDULERS[sched_key]
    # Uninterrupted run.
    ref = _make_params(dtype)
    o_ref = fused_lr.FusedSGD(_groups(ref, opts), lr=0.1, **opts)
    s_ref = getattr(fused, name)(o_ref, **kw)
    # Interrupted run: 12 steps, checkpoint, fresh objects, load, continue.
    run = _make_params(dtype)
    o_run = fused_lr.FusedSGD(_groups(run, opts), lr=0.1, **opts)
    s_run = getattr(fused, name)(o_run, **kw)
    for t in range(STEPS):
        if t == 12:
            ckpt = _roundtrip(
                {"model": [p.detach().clone() for p in run], "opt": o_run.state_dict(), "sched": s_run.state_dict()}
            )
            run = [torch.nn.Parameter(v) for v in ckpt["model"]]
            o_run = fused_lr.FusedSGD(_groups(run, opts), lr=0.1, **opts)
            s_run = getattr(fused, name)(o_run, **kw)
            o_run.load_state_dict(ckpt["opt"])
            s_run.load_state_dict(ckpt["sched"])
            assert s_run.last_epoch == s_ref.last_epoch
        grads = _grads(t, ref, dtype)
        _set_grads(ref, grads)
        _set_grads(run, grads)
        o_ref.step(), o_run.step(), s_ref.step(), s_run.step()
    for p, q in zip(ref, run):
        assert torch.equal(p, q), "resumed trajectory differs from the uninterrupted one"
    assert s_run.get_last_lr() == s_ref.get_last_lr()


@pytest.mark.parametrize("sched_key", [k for k in SCHEDULERS if k != "lambda_table"])
def test_migrate_from_stock_checkpoint_midway(sched_key):
    """Train with torch.optim.SGD + stock scheduler, checkpoint, continue with fused_lr."""
    opts = RICH
    dtype = torch.float64
    name, kw = SCHEDULERS[sched_key]
    pa = _make_params(dtype)
    oa = torch.optim.SGD(_groups(pa, opts), lr=0.1, foreach=False, **opts)
    sa = getattr(stock, name)(oa, **kw)
    pb = None
    for t in range(STEPS):
        if t == 12:
            ckpt = _roundtrip({"model": [p.detach().clone() for p in pa], "opt": oa.state_dict(), "sched": sa.state_dict()})
            pb = [torch.nn.Parameter(v) for v in ckpt["model"]]
            ob = fused_lr.FusedSGD(_groups(pb, opts), lr=0.1, **opts)
            sb = getattr(fused, name)(ob, **kw)
            ob.load_state_dict(ckpt["opt"])
            sb.load_state_dict(ckpt["sched"])
        grads = _grads(t, pa, dtype)
        _set_grads(pa, grads)
        oa.step()
        sa.step()
        if pb is not None:
            _set_grads(pb, grads)
            ob.step()
            sb.step()
            _compare_states(pa, oa, pb, ob, dtype, f"migrated {sched_key} step {t}")


def test_fused_checkpoint_loads_into_stock():
    """The reverse migration: FusedSGD's state_dict is torch.optim.SGD's format."""
    opts = RICH
    pb = _make_params(torch.float64)
    ob = fused_lr.FusedSGD(_groups(pb, opts), lr=0.1, **opts)
    sb = fused.StepLR(ob, 4, 0.5)
    pa = None
    for t in range(STEPS):
        if t == 12:
            ckpt = _roundtrip({"model": [p.detach().clone() for p in pb], "opt": ob.state_dict(), "sched": sb.state_dict()})
            pa = [torch.nn.Parameter(v) for v in ckpt["model"]]
            oa = torch.optim.SGD(_groups(pa, opts), lr=0.1, foreach=False, **opts)
            sa = stock.StepLR(oa, 4, 0.5)
            oa.load_state_dict(ckpt["opt"])
            sa.load_state_dict(ckpt["sched"])
        grads = _grads(t, pb, torch.float64)
        _set_grads(pb, grads)
        ob.step()
        sb.step()
        if pa is not None:
            _set_grads(pa, grads)
            oa.step()
            sa.step()
            _compare_states(pa, oa, pb, ob, torch.float64, f"reverse migration step {t}")


def test_state_dict_format_is_stock():
    p = [torch.nn.Parameter(torch.ones(3))]
    q = copy.deepcopy(p)
    oa = torch.optim.SGD(p, lr=0.1, momentum=0.9)
    ob = fused_lr.FusedSGD(q, lr=0.1, momentum=0.9)
    stock.StepLR(oa, 2)
    fused.StepLR(ob, 2)
    p[0].grad = torch.ones(3)
    q[0].grad = torch.ones(3)
    oa.step()
    ob.step()
    a, b = oa.state_dict(), ob.state_dict()
    assert set(b["param_groups"][0]) == set(a["param_groups"][0]) - {"foreach", "fused", "differentiable"}
    assert type(b["param_groups"][0]["lr"]) is float
    assert type(b["param_groups"][0]["initial_lr"]) is float
    assert set(b["state"][0]) == set(a["state"][0]) == {"momentum_buffer"}


# ---------------------------------------------------------------- the ways users set learning rates


def _tutorial_pair(dtype=torch.float32):
    torch.manual_seed(0)
    ma = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(dtype)
    mb = copy.deepcopy(ma)
    return ma, mb


def _train(model, opt, sched, steps, per_epoch=1, manual=None):
    g = torch.Generator().manual_seed(7)
    for t in range(steps):
        x = torch.randn(8, 6, generator=g, dtype=next(model.parameters()).dtype)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None and (t + 1) % per_epoch == 0:
            sched.step()
        if manual is not None:
            manual(opt)


TUTORIALS = {
    "StepLR(step_size=10, gamma=0.1)": (
        lambda o: stock.StepLR(o, step_size=10, gamma=0.1),
        lambda o: fused.StepLR(o, step_size=10, gamma=0.1),
    ),
    "LambdaLR(0.1 * 0.95 ** epoch)": (
        lambda o: stock.LambdaLR(o, lambda epoch: 0.1 * 0.95**epoch),
        lambda o: fused.LambdaLR(o, lambda epoch: 0.1 * 0.95**epoch),
    ),
    "CosineAnnealingLR(T_max=10)": (
        lambda o: stock.CosineAnnealingLR(o, T_max=10),
        lambda o: fused.CosineAnnealingLR(o, T_max=10),
    ),
}


@pytest.mark.parametrize("name", list(TUTORIALS))
def test_tutorial_examples(name):
    make_a, make_b = TUTORIALS[name]
    ma, mb = _tutorial_pair()
    oa = torch.optim.SGD(ma.parameters(), lr=0.1, momentum=0.9, foreach=False)
    ob = fused_lr.FusedSGD(mb.parameters(), lr=0.1, momentum=0.9)
    _train(ma, oa, make_a(oa), 35)
    _train(mb, ob, make_b(ob), 35)
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert_close(q, p, what=name, **TRAJ_TOL[torch.float32])


def test_manual_decay_expressed_with_fused_lr():
    """Stock manual decay `lr *= (1 - decay_rate)` each step == fused ExponentialLR(1 - decay_rate),
    and == the same manual decay applied to FusedSGD's groups (a float, as in torch)."""
    decay_rate = 0.05

    def manual(opt):
        for group in opt.param_groups:
            group["lr"] *= 1 - decay_rate

    ma, mb = _tutorial_pair()
    mc = copy.deepcopy(mb)
    oa = torch.optim.SGD(ma.parameters(), lr=0.1, momentum=0.9, foreach=False)
    ob = fused_lr.FusedSGD(mb.parameters(), lr=0.1, momentum=0.9)
    oc = fused_lr.FusedSGD(mc.parameters(), lr=0.1, momentum=0.9)
    _train(ma, oa, None, 30, manual=manual)
    _train(mb, ob, fused.ExponentialLR(ob, gamma=1 - decay_rate), 30)
    _train(mc, oc, None, 30, manual=manual)
    assert type(oc.param_groups[0]["lr"]) is float
    assert oc.param_groups[0]["lr"] == oa.param_groups[0]["lr"]  # the same float operations
    for p, q, r in zip(ma.parameters(), mb.parameters(), mc.parameters()):
        assert_close(q, p, what="ExponentialLR vs manual decay", **TRAJ_TOL[torch.float32])
        assert_close(r, p, what="manual decay on FusedSGD vs on SGD", **TRAJ_TOL[torch.float32])
    assert float(ob.param_groups[0]["lr"]) == pytest.approx(oa.param_groups[0]["lr"], rel=1e-12)


def test_assigning_a_float_lr_takes_effect():
    ma, mb = _tutorial_pair()
    oa = torch.optim.SGD(ma.parameters(), lr=0.1, foreach=False)
    ob = fused_lr.FusedSGD(mb.parameters(), lr=0.1)
    for o in (oa, ob):
        o.param_groups[0]["lr"] = 0.02
    _train(ma, oa, None, 5)
    _train(mb, ob, None, 5)
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert_close(q, p, what="assigned lr", **TRAJ_TOL[torch.float32])
    assert float(ob.param_groups[0]["lr"]) == 0.02


def test_stock_scheduler_drives_fused_sgd():
    """A stock torch scheduler attached to FusedSGD still works (host-written LR)."""
    ma, mb = _tutorial_pair()
    oa = torch.optim.SGD(ma.parameters(), lr=0.1, momentum=0.9, foreach=False)
    ob = fused_lr.FusedSGD(mb.parameters(), lr=0.1, momentum=0.9)
    _train(ma, oa, stock.MultiStepLR(oa, milestones=[3, 7], gamma=0.3), 12)
    _train(mb, ob, stock.MultiStepLR(ob, milestones=[3, 7], gamma=0.3), 12)
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert_close(q, p, what="stock scheduler on FusedSGD", **TRAJ_TOL[torch.float32])


def test_zero_grad_and_hooks_are_inherited():
    p = torch.nn.Parameter(torch.ones(3))
    o = fused_lr.FusedSGD([p], lr=0.1)
    calls = []
    o.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    o.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    p.grad = torch.ones(3)
    o.step()
    assert calls == ["pre", "post"]
    o.zero_grad()
    assert p.grad is None
    p.grad = torch.ones(3)
    o.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))


def test_closure_is_called_and_its_loss_returned():
    p = torch.nn.Parameter(torch.tensor([2.0]))
    o = fused_lr.FusedSGD([p], lr=0.1)

    def closure():
        o.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = o.step(closure)
    assert loss.item() == 4.0
    assert p.item() == pytest.approx(2.0 - 0.1 * 4.0)

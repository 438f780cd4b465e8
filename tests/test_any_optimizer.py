"""fused_lr's schedulers drive any torch optimizer (Adam, AdamW, SGD, RMSprop), beside the same
optimizer driven by torch's own scheduler: the LR at every step equals stock's, with float LRs
(set on the host, as torch's schedulers set them) and with tensor LRs (written on the device: no
host read, so a captured CUDA graph follows the schedule); momentum cycling uses ``betas[0]`` where
the optimizer has betas, as torch's CyclicLR / OneCycleLR do.

Tolerances: LR_RTOL for LRs (closed forms vs torch's chained recurrences, tests/conftest.py);
parameters float64, TRAJ_TOL[float64]: both sides run the very same stock optimizer, and LRs that
differ by rounding move a parameter by rounding. Tensor LRs: stock keeps the tensor's dtype (float32
here, like a typical fused/capturable setup): stock's recurrence rounds it to float32 at every
step, fused_lr's closed form once, so they drift apart by up to ~0.5 ulp per step (see the test).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import TRAJ_TOL, ForbidReadsOf, assert_close, assert_lrs_close

import fused_lr.lr_scheduler as fused

DTYPE = torch.float64
OPTIMIZERS = {
    "Adam": lambda ps, **kw: torch.optim.Adam(ps, foreach=False, **kw),
    "AdamW": lambda ps, **kw: torch.optim.AdamW(ps, foreach=False, weight_decay=0.01, **kw),
    "SGD": lambda ps, **kw: torch.optim.SGD(ps, momentum=0.9, foreach=False, **kw),
    "RMSprop": lambda ps, **kw: torch.optim.RMSprop(ps, foreach=False, **kw),
}
SCHEDULES = {
    "StepLR": lambda m, o: m.StepLR(o, 3, 0.5),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, [2, 5], 0.5),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, 0.9),
    "LinearLR": lambda m, o: m.LinearLR(o, 0.2, total_iters=4),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, 5, 1e-4),
    "CosineAnnealingWarmRestarts": lambda m, o: m.CosineAnnealingWarmRestarts(o, 3, 2),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lambda e: 1.0 / (1 + e)),
    "SequentialLR": lambda m, o: m.SequentialLR(o, [m.LinearLR(o, 0.1, total_iters=3), m.ExponentialLR(o, 0.9)], [3]),
    "OneCycleLR": lambda m, o: m.OneCycleLR(o, 0.01, total_steps=20),
    "CyclicLR": lambda m, o: m.CyclicLR(o, 1e-3, 1e-2, step_size_up=3),
    "ReduceLROnPlateau": lambda m, o: m.ReduceLROnPlateau(o, patience=1, factor=0.5),
}
METRICS = [1.0, 0.9, 0.95, 0.97, 0.99, 0.8, 0.85, 0.9, 0.9, 0.9, 0.7, 0.75]


def _params():
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, generator=g, dtype=DTYPE)) for _ in range(2)]


def _groups(ps, lrs=(0.01, 0.005)):
    return [{"params": [p], "lr": lr} for p, lr in zip(ps, lrs)]


def _grads(t, opt):
    g = torch.Generator().manual_seed(100 + t)
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.randn(p.shape, generator=g, dtype=DTYPE)


def _step(s, t):
    if isinstance(s, (stock.ReduceLROnPlateau, fused.ReduceLROnPlateau)):
        s.step(METRICS[t % len(METRICS)])
    else:
        s.step()


def _momenta(o):
    return [g["betas"][0] if "betas" in g else g.get("momentum") for g in o.param_groups]


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_float_lrs_follow_stock(opt_name, name):
    make = OPTIMIZERS[opt_name]
    a, b = make(_groups(_params())), make(_groups(_params()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sa, sb = SCHEDULES[name](stock, a), SCHEDULES[name](fused, b)
    for t in range(12):
        for o, s in ((a, sa), (b, sb)):
            _grads(t, o)
            o.step()
            _step(s, t)
        lrs = [g["lr"] for g in b.param_groups]
        assert all(type(v) is float for v in lrs), lrs
        assert_lrs_close(lrs, [g["lr"] for g in a.param_groups], f"{opt_name} {name} step {t}")
        assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"{opt_name} {name} get_last_lr step {t}")
        ma, mb = _momenta(a), _momenta(b)
        assert mb == pytest.approx(ma, rel=1e-12), f"{opt_name} {name} momentum/betas[0] step {t}"
        for p, q in zip(a.param_groups, b.param_groups):
            assert_close(q["params"][0], p["params"][0], what=f"{opt_name} {name} step {t}", **TRAJ_TOL[DTYPE])


@pytest.mark.parametrize("name", ["StepLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau"])
def test_tensor_lrs_are_written_on_the_device(name):
    """Adam with a tensor LR (torch accepts one; fused/capturable Adam needs one on the GPU): the
    schedule writes it in place on the device each step and never reads it back."""
    lr_a, lr_b = torch.tensor(0.01), torch.tensor(0.01)
    a = torch.optim.Adam(_params(), lr=lr_a, foreach=False)
    b = torch.optim.Adam(_params(), lr=lr_b, foreach=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sa, sb = SCHEDULES[name](stock, a), SCHEDULES[name](fused, b)
    lrs = fused._base.GroupLRs.of(b)
    for t in range(12):
        for o, _s in ((a, sa), (b, sb)):
            _grads(t, o)
            o.step()
        _step(sa, t)
        with ForbidReadsOf(lr_b, lrs.buf):
            _step(sb, t)
        assert b.param_groups[0]["lr"] is lr_b
        # Stock's recurrence runs on the float32 tensor, rounding it at every step (~0.5 ulp, 6e-8
        # relative, each); fused_lr rounds its float64 closed form once.
        assert float(lr_b) == pytest.approx(float(lr_a), rel=(t + 2) * 6e-8), f"{name} step {t}"
        # Adam moves a parameter by at most ~lr (0.01) per step, so LRs (t + 2) * 6e-8 apart move
        # the parameters apart by at most the sum of those over the steps so far.
        for p, q in zip(a.param_groups, b.param_groups):
            assert_close(q["params"][0], p["params"][0], what=f"tensor lr {name} step {t}", rtol=0.0,
                         atol=sum(k + 2 for k in range(t + 1)) * 6e-8 * 0.01)


def test_assigned_lrs_and_composition_on_a_stock_optimizer():
    """Manual decay under a scheduler and two schedulers stepped together, on torch.optim.AdamW."""
    a, b = (OPTIMIZERS["AdamW"](_groups(_params())) for _ in range(2))
    sa = [stock.ExponentialLR(a, 0.9), stock.MultiStepLR(a, [3, 6], 0.5)]
    sb = [fused.ExponentialLR(b, 0.9), fused.MultiStepLR(b, [3, 6], 0.5)]
    for t in range(10):
        for o, ss in ((a, sa), (b, sb)):
            _grads(t, o)
            o.step()
            for s in ss:
                s.step()
            if t == 4:
                o.param_groups[0]["lr"] *= 0.5
        assert_lrs_close([g["lr"] for g in b.param_groups], [g["lr"] for g in a.param_groups], f"step {t}")
        for p, q in zip(a.param_groups, b.param_groups):
            assert_close(q["params"][0], p["params"][0], what=f"step {t}", **TRAJ_TOL[DTYPE])


def test_not_an_optimizer_is_torchs_error():
    with pytest.raises(TypeError, match="is not an Optimizer"):
        fused.StepLR(object(), 3)
    with pytest.raises(ValueError, match="momentum or beta1"):
        fused.CyclicLR(torch.optim.Adagrad(_params()), 1e-3, 1e-2)


@pytest.mark.parametrize("tensor_lr", [False, True])
def test_plateau_with_a_device_metric_on_a_stock_optimizer(monkeypatch, tensor_lr):
    """The accelerator path (forced on CPU tensors): a stock optimizer reading float LRs gets the
    decision at once (the metric is read, as torch's ReduceLROnPlateau reads it); a tensor LR gets
    it on the device, never read back."""
    import fused_lr.lr_scheduler.plateau as plateau_module

    monkeypatch.setattr(plateau_module, "_host_can_read", lambda t: False)
    lr_b = torch.tensor(0.01, dtype=DTYPE) if tensor_lr else 0.01
    a = torch.optim.Adam(_params(), lr=0.01, foreach=False)
    b = torch.optim.Adam(_params(), lr=lr_b, foreach=False)
    sa, sb = stock.ReduceLROnPlateau(a, patience=0, factor=0.5), fused.ReduceLROnPlateau(b, patience=0, factor=0.5)
    for t in range(6):
        metric = torch.tensor(1.0, dtype=DTYPE)
        sa.step(float(metric))
        if tensor_lr:
            with ForbidReadsOf(lr_b, metric):
                sb.step(metric)
        else:
            sb.step(metric)
        assert float(b.param_groups[0]["lr"]) == a.param_groups[0]["lr"], f"step {t}"
    assert a.param_groups[0]["lr"] == 0.01 * 0.5**5

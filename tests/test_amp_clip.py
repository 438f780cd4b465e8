"""AMP (GradScaler) and fused gradient clipping on the pure-PyTorch path, against stock torch.

References are stock torch.optim.SGD(foreach=False) (the for-loop: torch.optim.SGD's CPU default)
driven the stock way: ``GradScaler.step`` (which unscales the gradients and skips the step on the
host) and ``torch.nn.utils.clip_grad_norm_`` before the step. Tolerances: tests/conftest.py's
TRAJ_TOL (fp32/fp64: fused vs for-loop rounding, summed over the trajectory; fp16/bf16: the same
for-loop ops in the same dtype, so bit-identical). The Triton kernels run the same checks under
the interpreter in tests/_triton_optimizer_subprocess.py (cases "amp", "clip").
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.optim.lr_scheduler as stock_sched
from conftest import TRAJ_TOL, assert_close

import fused_lr
import fused_lr.lr_scheduler as fused_sched

SHAPES = [(), (7,), (33,), (4, 5)]
INF = float("inf")


def make_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)) for s in SHAPES]


def groups(ps, **extra):
    return [
        {"params": ps[:2], **extra},
        {"params": ps[2:], "lr": 0.05, "momentum": 0.5, "dampening": 0.2, "weight_decay": 1e-2, "nesterov": False},
    ]


def inputs(step, ps, poison=False, scale=1.0):
    """Per-parameter inputs x with loss = sum(p * x): grad = x (times the loss scale).
    Magnitudes grow with the step so clipping is active on some steps and not on others."""
    g = torch.Generator().manual_seed(1000 + step)
    xs = [torch.randn(p.shape, generator=g, dtype=torch.float64).mul(scale * (0.2 + 0.5 * step)).to(p.dtype) for p in ps]
    if poison:
        xs[2].view(-1)[3] = INF
    return xs


def backward(ps, xs, scaler=None):
    loss = sum((p * x).sum() for p, x in zip(ps, xs))
    (scaler.scale(loss) if scaler is not None else loss).backward()


def compare(opt_a, ps_a, opt_b, ps_b, tol, what):
    for i, (a, b) in enumerate(zip(ps_a, ps_b)):
        assert_close(a, b, **tol, what=f"{what}: param {i}")
        ba = opt_a.state.get(a, {}).get("momentum_buffer")
        bb = opt_b.state.get(b, {}).get("momentum_buffer")
        assert (ba is None) == (bb is None), f"{what}: buffer presence of param {i}: {ba is not None} vs {bb is not None}"
        if ba is not None:
            assert_close(ba, bb, **tol, what=f"{what}: buffer {i}")


# ---------------------------------------------------------------------------------------- AMP


def test_stock_fused_sgd_skipped_first_step_is_wrong_in_this_torch():
    """The problem FusedSGD avoids, shown on stock torch 2.13 (CPU): SGD(fused=True) under
    GradScaler allocates its momentum buffers on a first step that found_inf then skips, stores
    them, and treats them as history on the next step. The for-loop never creates them. With
    dampening, even a zero-filled buffer gives momentum * 0 + (1 - dampening) * g instead of g."""
    ref = make_params(torch.float32)
    results = {}
    for kind, flags in (("fused", dict(fused=True)), ("forloop", dict(foreach=False))):
        ps = copy.deepcopy(ref)
        opt = torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.5, **flags)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for t in range(2):
            opt.zero_grad()
            backward(ps, inputs(t, ps, poison=t == 0), scaler)
            scaler.step(opt)
            scaler.update()
            if t == 0:
                results[kind + "_state_after_skip"] = len(opt.state)
        results[kind] = [p.detach().clone() for p in ps]
    assert results["forloop_state_after_skip"] == 0  # the for-loop created nothing on the skipped step
    assert results["fused_state_after_skip"] == len(ref)  # stock fused stored buffers it never wrote
    # The stored buffers are uninitialised memory: the difference is large, or NaN when that memory
    # happened to hold NaN bits (seen in CI). Either way stock fused does not match the for-loop.
    worst = max((a - b).abs().max().item() for a, b in zip(results["fused"], results["forloop"]))
    assert not worst <= 1e-3, f"stock fused SGD matched the for-loop after a skipped first step (max diff {worst})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gradscaler_parity_with_stock(dtype):
    """GradScaler.step(FusedSGD) vs GradScaler.step(stock SGD): a skipped *first* step, a later skipped
    step, the scale growing and backing off, several groups (momentum, dampening, nesterov, weight decay),
    and a scheduler stepped every iteration (torch's loop: it advances on skipped steps too)."""
    ref = make_params(dtype)
    a_ps, f_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    a = torch.optim.SGD(groups(a_ps), foreach=False, **kw)
    f = fused_lr.FusedSGD(groups(f_ps), backend="torch", **kw)
    sa, sf = stock_sched.StepLR(a, 3, 0.5), fused_sched.StepLR(f, 3, 0.5)
    # Power-of-two scales (GradScaler's): stock unscales by multiplying with 1/scale, FusedSGD divides
    # by scale; both are exact here, so the comparison isolates the optimizer.
    sc_a = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    sc_f = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    skipped = 0
    for t in range(10):
        poison = t in (0, 4)
        for ps, opt, sc in ((a_ps, a, sc_a), (f_ps, f, sc_f)):
            opt.zero_grad()
            backward(ps, inputs(t, ps, poison), sc)
            sc.step(opt)
            sc.update()
        sa.step()
        sf.step()
        skipped += poison
        assert sc_a.get_scale() == sc_f.get_scale()
        if t == 0:
            assert len(f.state) == 0, "a skipped first step created momentum buffers"
        compare(f, f_ps, a, a_ps, TRAJ_TOL[dtype], f"{dtype} step {t}")
        assert sf.get_last_lr() == sa.get_last_lr()
    assert skipped == 2 and sc_f.get_scale() != 2.0**8


def test_float16_gradscaler_against_manual_unscale():
    """float16 params: stock GradScaler refuses to unscale float16 gradients for stock optimizers
    ("Attempting to unscale FP16 gradients"), so the reference unscales by hand, torch's way
    (multiply by the float32 reciprocal, rounded once to float16), then steps stock SGD."""
    ref = make_params(torch.float16)
    a_ps, f_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)
    a = torch.optim.SGD(groups(a_ps), foreach=False, **kw)
    f = fused_lr.FusedSGD(groups(f_ps), backend="torch", **kw)
    sc = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    sc.scale(torch.ones(()))  # initializes the scaler's scale
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        for p in a_ps:
            p.grad = torch.ones_like(p)
        sc.unscale_(a)
    for t in range(6):
        poison = t in (0, 3)
        scale = torch.tensor(2.0**8)
        for ps in (a_ps, f_ps):
            for p, x in zip(ps, inputs(t, ps, poison)):
                p.grad = (x.float() * scale).half()
        f.step(grad_scale=scale, found_inf=torch.tensor(1.0 if poison else 0.0))
        if not poison:
            inv = scale.double().reciprocal().float()
            for p in a_ps:
                p.grad = (p.grad.float() * inv).half()
            a.step()
        compare(f, f_ps, a, a_ps, TRAJ_TOL[torch.float16], f"float16 step {t}")


def test_explicit_kwargs_non_power_of_two_scale_and_grads_untouched():
    """step(grad_scale=, found_inf=) directly, with a scale that is not a power of two: the update
    sees g / scale (one float32 rounding, as torch's fused kernels divide); p.grad is not modified."""
    ref = make_params(torch.float32)
    a_ps, f_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    a = torch.optim.SGD(groups(a_ps), lr=0.1, momentum=0.9, foreach=False)
    f = fused_lr.FusedSGD(groups(f_ps), lr=0.1, momentum=0.9, backend="torch")
    scale = torch.tensor([3.0])  # a one-element [1] tensor works as well as a 0-dim one
    for t in range(5):
        xs = inputs(t, ref)
        for p, x in zip(f_ps, xs):
            p.grad = x * 3.0
        for p, x in zip(a_ps, xs):
            p.grad = (x * 3.0) / scale.reshape(())
        before = [p.grad.clone() for p in f_ps]
        f.step(grad_scale=scale, found_inf=torch.zeros(1))
        a.step()
        assert all(torch.equal(p.grad, b) for p, b in zip(f_ps, before)), "p.grad was modified"
        compare(f, f_ps, a, a_ps, TRAJ_TOL[torch.float32], f"step {t}")


def test_skipped_step_changes_nothing_and_first_step_stays_first():
    ps = make_params(torch.float32)
    f = fused_lr.FusedSGD(groups(ps), lr=0.1, momentum=0.9, dampening=0.3, backend="torch")
    sched = fused_sched.ExponentialLR(f, 0.5)
    for p, x in zip(ps, inputs(0, ps)):
        p.grad = x
    before = [p.detach().clone() for p in ps]
    f.step(grad_scale=torch.tensor(1.0), found_inf=torch.tensor(1.0))
    sched.step()  # the schedule advances regardless, as torch's does after a skipped step
    assert all(torch.equal(p, b) for p, b in zip(ps, before)) and len(f.state) == 0
    assert sched.last_epoch == 1 and abs(float(f.param_groups[0]["lr"]) - 0.05) < 1e-15
    # The next real step is each parameter's first: buf = g (no dampening), as in the for-loop.
    ref = [torch.nn.Parameter(b.clone()) for b in before]
    a = torch.optim.SGD(groups(ref), lr=0.1, momentum=0.9, dampening=0.3, foreach=False)
    for g in a.param_groups:
        g["lr"] *= 0.5
    for p, q in zip(ref, ps):
        p.grad = q.grad.clone()
    f.step()
    a.step()
    compare(f, ps, a, ref, TRAJ_TOL[torch.float32], "first real step")


# ---------------------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("norm_type", [2.0, INF])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clipping_parity_with_clip_grad_norm(dtype, norm_type):
    ref = make_params(dtype)
    a_ps, f_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    max_norm = 3.0
    a = torch.optim.SGD(groups(a_ps), foreach=False, **kw)
    f = fused_lr.FusedSGD(groups(f_ps), backend="torch", max_grad_norm=max_norm, norm_type=norm_type, **kw)
    clipped = 0
    for t in range(12):
        xs = inputs(t, ref)
        if t == 5:
            xs[1] = None  # a parameter without a gradient this step: left out of the norm, as in torch
        for ps in (a_ps, f_ps):
            for p, x in zip(ps, xs):
                p.grad = None if x is None else x.clone()
        total = torch.nn.utils.clip_grad_norm_([p for p in a_ps if p.grad is not None], max_norm, norm_type)
        a.step()
        f.step()
        clipped += bool(total > max_norm)
        assert f.last_grad_norm.dtype == total.dtype and f.last_grad_norm.shape == ()
        # Norms: per-tensor norms then the norm of the stack, the same reduction as torch's; both
        # sum in a different order at most -> a few ulp.
        assert_close(f.last_grad_norm, total, rtol=8 * torch.finfo(dtype).eps, atol=0.0, what=f"norm step {t}")
        compare(f, f_ps, a, a_ps, TRAJ_TOL[dtype], f"{dtype} norm {norm_type} step {t}")
    assert 0 < clipped < 12, f"clipping was active on {clipped}/12 steps: the test would not exercise both sides"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_clipping_half_precision(dtype):
    """float16 / bfloat16: FusedSGD computes the norm in float32 (torch keeps it in half precision,
    where AMP-scaled norms overflow). The reference is torch's own clip_grad_norm_ on float32 copies
    of the gradients for the coefficient, applied to the half gradients with torch's _foreach_mul_
    (clip_grad_norm_'s own op), then stock SGD: the same ops in the same dtypes -> bit-identical."""
    ref = make_params(dtype)
    a_ps, f_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    max_norm = 2.0
    a = torch.optim.SGD(groups(a_ps), lr=0.1, momentum=0.9, foreach=False)
    f = fused_lr.FusedSGD(groups(f_ps), lr=0.1, momentum=0.9, backend="torch", max_grad_norm=max_norm)
    for t in range(8):
        xs = inputs(t, ref)
        for ps in (a_ps, f_ps):
            for p, x in zip(ps, xs):
                p.grad = x.clone()
        copies = [p.grad.float().requires_grad_() for p in a_ps]
        for c in copies:
            c.grad = c.detach().clone()
        total = torch.nn.utils.clip_grad_norm_(copies, max_norm)
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_([p.grad for p in a_ps], coef)
        a.step()
        f.step()
        assert_close(f.last_grad_norm, total, rtol=8 * torch.finfo(torch.float32).eps, atol=0.0, what=f"norm step {t}")
        compare(f, f_ps, a, a_ps, TRAJ_TOL[dtype], f"{dtype} step {t}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clipping_with_gradscaler_matches_torch_recipe(dtype):
    """torch's recipe: scaler.unscale_(opt); clip_grad_norm_(...); scaler.step(opt). FusedSGD: only
    scaler.step(opt); the norm is that of the unscaled gradients. Includes skipped steps (first one too)."""
    ref = make_params(dtype)
    a_ps, f_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    max_norm = 2.5
    a = torch.optim.SGD(groups(a_ps), lr=0.1, momentum=0.9, foreach=False)
    f = fused_lr.FusedSGD(groups(f_ps), lr=0.1, momentum=0.9, backend="torch", max_grad_norm=max_norm)
    sc_a = torch.amp.GradScaler("cpu", init_scale=2.0**6, growth_interval=3)
    sc_f = torch.amp.GradScaler("cpu", init_scale=2.0**6, growth_interval=3)
    for t in range(9):
        poison = t in (0, 5)
        a.zero_grad(), f.zero_grad()
        xs = inputs(t, ref, poison)
        backward(a_ps, xs, sc_a)
        backward(f_ps, xs, sc_f)
        sc_a.unscale_(a)
        if dtype == torch.float32:
            total = torch.nn.utils.clip_grad_norm_(a_ps, max_norm)
        else:  # FusedSGD's float32 norm (see test_clipping_half_precision), torch's clip ops
            total = torch.nn.utils.get_total_norm([p.grad.float() for p in a_ps])
            torch._foreach_mul_([p.grad for p in a_ps], torch.clamp(max_norm / (total + 1e-6), max=1.0))
        sc_a.step(a)
        sc_f.step(f)
        sc_a.update(), sc_f.update()
        if poison:
            assert not math.isfinite(float(f.last_grad_norm))
        else:
            assert_close(f.last_grad_norm, total, rtol=8 * torch.finfo(torch.float32).eps, atol=0.0, what=f"norm {t}")
        compare(f, f_ps, a, a_ps, TRAJ_TOL[dtype], f"{dtype} step {t}")


@pytest.mark.parametrize("bad", [float("nan"), INF])
@pytest.mark.parametrize("norm_type", [2.0, INF])
def test_nonfinite_norm_behaves_like_torch(bad, norm_type):
    """error_if_nonfinite=False: torch multiplies the gradients by the NaN (or 0) coefficient and steps;
    so does FusedSGD, NaNs in the same places."""
    ref = make_params(torch.float32)
    a_ps, f_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    a = torch.optim.SGD(groups(a_ps), lr=0.1, momentum=0.9, foreach=False)
    f = fused_lr.FusedSGD(groups(f_ps), lr=0.1, momentum=0.9, backend="torch", max_grad_norm=1.0, norm_type=norm_type)
    xs = inputs(1, ref)
    xs[1][2] = bad
    for ps in (a_ps, f_ps):
        for p, x in zip(ps, xs):
            p.grad = x.clone()
    total = torch.nn.utils.clip_grad_norm_(a_ps, 1.0, norm_type)
    a.step()
    f.step()
    assert torch.equal(f.last_grad_norm.isnan(), total.isnan()) and torch.equal(f.last_grad_norm.isinf(), total.isinf())
    for p, q in zip(f_ps, a_ps):
        assert torch.equal(p.isnan(), q.isnan()), "NaN pattern differs from torch"
        assert_close(torch.nan_to_num(p), torch.nan_to_num(q), **TRAJ_TOL[torch.float32], what="finite part")
    assert any(p.isnan().any() for p in f_ps)  # the case is not vacuous


def test_error_if_nonfinite_raises_before_anything_changes():
    ps = make_params(torch.float32)
    f = fused_lr.FusedSGD(groups(ps), lr=0.1, momentum=0.9, backend="torch", max_grad_norm=1.0, error_if_nonfinite=True)
    sched = fused_sched.StepLR(f, 1, 0.5)
    for p, x in zip(ps, inputs(0, ps)):
        p.grad = x
    f.step()
    sched.step()
    snap = ([p.detach().clone() for p in ps], {p: s["momentum_buffer"].clone() for p, s in f.state.items()},
            sched.last_epoch, f.lr_tensor.clone())
    ps[2].grad[0] = float("nan")
    with pytest.raises(RuntimeError, match=r"total norm of order 2.0 for gradients from `parameters` is non-finite \(nan\)"):
        f.step()
    assert all(torch.equal(p, b) for p, b in zip(ps, snap[0]))
    assert all(torch.equal(f.state[p]["momentum_buffer"], b) for p, b in snap[1].items())
    assert sched.last_epoch == snap[2] and torch.equal(f.lr_tensor, snap[3])
    # A step AMP skips anyway does not raise (its norm is expected to be non-finite), and changes nothing.
    f.step(grad_scale=torch.tensor(4.0), found_inf=torch.tensor(1.0))
    assert all(torch.equal(p, b) for p, b in zip(ps, snap[0]))


def test_no_clipping_when_under_the_limit_is_bit_identical():
    """max_grad_norm above the norm: the coefficient is exactly 1 and the step equals an unclipped one."""
    ref = make_params(torch.float32)
    a_ps, f_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    a = fused_lr.FusedSGD(groups(a_ps), lr=0.1, momentum=0.9, backend="torch")
    f = fused_lr.FusedSGD(groups(f_ps), lr=0.1, momentum=0.9, backend="torch", max_grad_norm=1e6)
    for t in range(4):
        for ps in (a_ps, f_ps):
            for p, x in zip(ps, inputs(t, ref)):
                p.grad = x
        a.step(), f.step()
    compare(f, f_ps, a, a_ps, dict(rtol=0.0, atol=0.0), "unclipped")


def test_torch_recipe_unscale_then_clip_then_step_works_with_fused_sgd():
    """The stock recipe on FusedSGD (no max_grad_norm): scaler.unscale_(opt) unscales in place, so
    GradScaler.step hands FusedSGD grad_scale=None and only found_inf; results match stock SGD."""
    ref = make_params(torch.float32)
    a_ps, f_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    a = torch.optim.SGD(groups(a_ps), lr=0.1, momentum=0.9, foreach=False)
    f = fused_lr.FusedSGD(groups(f_ps), lr=0.1, momentum=0.9, backend="torch")
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**5) for _ in range(2)]
    for t in range(6):
        xs = inputs(t, ref, poison=t in (0, 3))
        for ps, opt, sc in ((a_ps, a, scalers[0]), (f_ps, f, scalers[1])):
            opt.zero_grad()
            backward(ps, xs, sc)
            sc.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(ps, 2.0)
            sc.step(opt)
            sc.update()
        compare(f, f_ps, a, a_ps, TRAJ_TOL[torch.float32], f"step {t}")
    assert len(f.state) == len(a.state) > 0

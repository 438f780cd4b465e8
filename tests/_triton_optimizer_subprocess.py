"""FusedSGD(backend="triton") end to end under Triton's CPU interpreter, run in a child process.

Run by tests/test_triton_optimizer.py as ``python tests/_triton_optimizer_subprocess.py CASE``
(TRITON_INTERPRET=1 must be set before triton is imported, so it cannot run inside the pytest
process). Exits 0 when every check of CASE passes; prints the first failure otherwise.

Each case trains the same parameters three ways, side by side:
* stock torch.optim.SGD(foreach=False) + the stock torch scheduler (the promise: "matches torch");
* FusedSGD(backend="torch") + the fused_lr scheduler (the reference path, itself tested vs stock);
* FusedSGD(backend="triton") + the fused_lr scheduler (the kernel, one launch per step).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    if "triton" in sys.modules:  # pragma: no cover
        raise SystemExit("triton was imported before TRITON_INTERPRET=1 was set")
    os.environ["TRITON_INTERPRET"] = "1"

import copy
import io
import math
import pickle
import weakref

import torch
import torch.optim.lr_scheduler as stock
from fused_lr.kernels import sgd as K

import fused_lr
import fused_lr.lr_scheduler as fused
from fused_lr import engine

# fp32 against stock's for-loop: the kernel does the same float32 operations but may differ by the
# rounding of lr (float64 -> float32 once) and, unlike the for-loop, keeps the nesterov term's
# buffer unrounded (as torch's fused kernel does): ~1 ulp per step, summed over ~25 steps
# -> rtol 1e-5 (the same bound as the torch-path parity tests, see tests/conftest.py).
FP32 = dict(rtol=1e-5, atol=1e-6)
# bf16 kernel vs the torch path, which on CPU runs torch's bf16 for-loop (each op rounded to bf16;
# the kernel computes in fp32 and rounds once per step). The two round differently by up to ~1
# bf16 ulp (2**-8 relative) per step, and the differences random-walk over the 24 steps: bound
# 8 ulp of the value's scale (|values| here are O(1)). The kernel's bf16 arithmetic itself is
# checked bit for bit against an fp32-math reference in tests/_triton_subprocess.py.
BF16 = dict(scaled=8 * 2**-8)
# fp16 kernel vs the torch path: the same argument as BF16 with float16's unit roundoff (2**-11).
FP16 = dict(scaled=8 * 2**-11)

# Steps each optimizer took through the Triton path's steady state (_step_steady returned True),
# counted by wrapping the method for the whole run.
_STEADY_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_step_steady = fused_lr.FusedSGD._step_steady


def _counted_step_steady(self, *args, **kwargs):
    took = _step_steady(self, *args, **kwargs)
    _STEADY_STEPS[self] = _STEADY_STEPS.get(self, 0) + took
    return took


fused_lr.FusedSGD._step_steady = _counted_step_steady


def steady_steps(opt) -> int:
    return _STEADY_STEPS.get(opt, 0)


SHAPES = [(), (1,), (127,), (1025,), (3, 5)]
STEPS = 24


def check_close(a, b, tol, what):
    if a.is_complex():  # compare both parts (a plain .double() would drop the imaginary one)
        a, b = torch.view_as_real(a.detach()), torch.view_as_real(b.detach())
    a, b = a.detach().double(), b.detach().double()
    if "scaled" in tol:
        # |a - b| <= tol * max|b|: ulps of the tensor's scale (momentum buffers sum ~10 grads).
        bound = tol["scaled"] * max(b.abs().max().item(), 1.0)
        if (a - b).abs().max().item() > bound:
            raise AssertionError(f"{what}: max |diff| {(a - b).abs().max().item():.3e} beyond {bound:.3e}")
        return
    if not torch.allclose(a, b, **tol):
        diff = (a - b).abs().max().item()
        raise AssertionError(f"{what}: max |diff| {diff:.3e} beyond {tol}")


def make_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]
    ps.append(torch.nn.Parameter(torch.randn(4, generator=g, dtype=torch.complex64)))  # via view_as_real
    return ps


def groups(ps):
    return [
        {"params": ps[:3]},
        {"params": ps[3:], "lr": 0.05, "momentum": 0.5, "weight_decay": 1e-3, "nesterov": False, "dampening": 0.1},
    ]


def grads_for(step, ps):
    g = torch.Generator().manual_seed(100 + step)
    out = [torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) if not p.is_complex()
           else torch.randn(p.shape, generator=g, dtype=p.dtype) for p in ps]
    if step == 5:
        out[1] = None  # a None grad mid-run
    if step < 7:
        out[4] = None  # frozen, then unfrozen: its first momentum step comes late
    return out


SCHEDULERS = {
    "step": (lambda o: stock.StepLR(o, 4, 0.5), lambda o: fused.StepLR(o, 4, 0.5)),
    "cosine": (lambda o: stock.CosineAnnealingLR(o, 6, 1e-3), lambda o: fused.CosineAnnealingLR(o, 6, 1e-3)),
    "multistep": (lambda o: stock.MultiStepLR(o, [3, 9, 9]), lambda o: fused.MultiStepLR(o, [3, 9, 9])),
    "linear": (lambda o: stock.LinearLR(o, 0.1, total_iters=8), lambda o: fused.LinearLR(o, 0.1, total_iters=8)),
    "sequential": (lambda o: stock.SequentialLR(o, [stock.LinearLR(o, 0.1, total_iters=4), stock.CosineAnnealingLR(o, 10)], [4]),
                   lambda o: fused.SequentialLR(o, [fused.LinearLR(o, 0.1, total_iters=4), fused.CosineAnnealingLR(o, 10)], [4])),
    "restarts": (lambda o: stock.CosineAnnealingWarmRestarts(o, 2, 2, 1e-3),
                 lambda o: fused.CosineAnnealingWarmRestarts(o, 2, 2, 1e-3)),
    "lambda_device": (lambda o: stock.LambdaLR(o, lambda e: 0.9**e), lambda o: fused.LambdaLR(o, lambda e: 0.9**e)),
    "lambda_table": (lambda o: stock.LambdaLR(o, lambda e: 1.0 if e < 5 else 0.3),
                     lambda o: fused.LambdaLR(o, lambda e: 1.0 if e < 5 else 0.3, horizon=8)),
    # Momentum cycling: the kernel computes each step's momentum from the schedule's momentum rows.
    "cyclic": (lambda o: stock.CyclicLR(o, 0.01, [0.1, 0.2], step_size_up=3, step_size_down=5, mode="triangular2"),
               lambda o: fused.CyclicLR(o, 0.01, [0.1, 0.2], step_size_up=3, step_size_down=5, mode="triangular2")),
    "onecycle": (lambda o: stock.OneCycleLR(o, [0.3, 0.1], total_steps=30, three_phase=True),
                 lambda o: fused.OneCycleLR(o, [0.3, 0.1], total_steps=30, three_phase=True)),
    "chained": (lambda o: stock.ChainedScheduler([stock.ConstantLR(o, 0.5, total_iters=3), stock.ExponentialLR(o, 0.9)]),
                lambda o: fused.ChainedScheduler([fused.ConstantLR(o, 0.5, total_iters=3), fused.ExponentialLR(o, 0.9)])),
    # Group 0 on cosine, group 1 on a constant factor: stock has no per-group form but LambdaLR's
    # per-group lambdas, which give the same LRs.
    "per_group": (lambda o: stock.LambdaLR(o, [lambda e: (1 + math.cos(math.pi * e / 10)) / 2, lambda e: 0.5 if e < 5 else 1.0]),
                  lambda o: fused.PerGroupLR(o, [fused.CosineAnnealingLR(o, 10), fused.ConstantLR(o, 0.5, total_iters=5)])),
    # Group 0 on OneCycleLR (its momentum row relocated after the pieces), group 1 constant with its
    # own momentum 0.5 (put back by PerGroupLR after OneCycleLR's construction changed it).
    "per_group_cycle": (lambda o: _PinGroup1(stock.OneCycleLR(o, [0.3, 0.1], total_steps=30), o, lr=0.1 / 25, momentum=0.5),
                        lambda o: fused.PerGroupLR(o, [fused.OneCycleLR(o, [0.3, 0.1], total_steps=30),
                                                       fused.ConstantLR(o, 1.0, total_iters=0)])),
    "stock_on_fused": (lambda o: stock.ExponentialLR(o, 0.9), lambda o: stock.ExponentialLR(o, 0.9)),
    "none": (lambda o: None, lambda o: None),
}


def _set(ps, gs):
    """Fresh copies of ``gs`` as the grads of ``ps`` (None stays None)."""
    for p, g in zip(ps, gs):
        p.grad = None if g is None else g.clone()


class _PinGroup1:
    """Stock reference: a stock scheduler driving group 0 only; group 1 keeps a fixed lr and momentum."""

    def __init__(self, sched, opt, lr, momentum):
        self.s, self.o, self.fixed = sched, opt, (lr, momentum)
        self._pin()

    def _pin(self):
        self.o.param_groups[1]["lr"], self.o.param_groups[1]["momentum"] = self.fixed

    def step(self):
        self.s.step()
        self._pin()

    def get_last_lr(self):
        return [g["lr"] for g in self.o.param_groups]


class CountLaunches:
    """Counts sgd_kernel launches (the interpreter's grid-indexing entry point)."""

    def __init__(self):
        self.n = 0
        self._orig = type(K.sgd_kernel).__getitem__

    def __enter__(self):
        counter = self

        def getitem(fn, grid):
            if fn is K.sgd_kernel:
                counter.n += 1
            return counter._orig(fn, grid)

        type(K.sgd_kernel).__getitem__ = getitem
        return self

    def __exit__(self, *exc):
        type(K.sgd_kernel).__getitem__ = self._orig


class NoTorchOps(torch.overrides.TorchFunctionMode):
    """Fails on any torch operation but ``allowed`` ones (names), which it records: proves a call
    does no other device work."""

    def __init__(self, allowed=()):
        super().__init__()
        self.allowed, self.seen = set(allowed), []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", func)
        if name not in self.allowed:
            raise AssertionError(f"unexpected torch op {name}")
        self.seen.append(name)
        return func(*args, **(kwargs or {}))


def run_scheduler(name, dtype=torch.float32):
    make_stock, make_fused = SCHEDULERS[name]
    ref = make_params(dtype)
    a_ps, t_ps, k_ps = (copy.deepcopy(ref) for _ in range(3))
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    stock_opt = torch.optim.SGD(groups(a_ps), foreach=False, **kw)
    torch_opt = fused_lr.FusedSGD(groups(t_ps), backend="torch", **kw)
    kern_opt = fused_lr.FusedSGD(groups(k_ps), backend="triton", **kw)
    assert kern_opt.implementation == "triton" and torch_opt.implementation == "torch"
    sa, st, sk = make_stock(stock_opt), make_fused(torch_opt), make_fused(kern_opt)
    manual = name == "none"
    closed_form = isinstance(sk, fused._FusedLRScheduler)
    # The device-side LR log: a ring smaller than the run on the kernel path (it wraps), a large
    # one on the torch path; both must hold the LRs stock used at each step.
    kern_opt.start_lr_log(8)
    torch_opt.start_lr_log(64)
    used_history = []
    for t in range(STEPS):
        gs = grads_for(t, ref)
        for ps in (a_ps, t_ps, k_ps):
            _set(ps, gs)
        used = [g["lr"] for g in stock_opt.param_groups]
        used_history.append(used)
        stock_opt.step()
        torch_opt.step()
        with CountLaunches() as launches:
            kern_opt.step()
        dtypes = {(q.real if q.is_complex() else q).dtype for q, g in zip(k_ps, gs) if g is not None}
        assert launches.n == len(dtypes), f"step {t}: {launches.n} kernel launches, expected one per dtype {dtypes}"
        # After the step, the kernel path's group["lr"] holds the LR it used (written by the kernel).
        got = kern_opt.lr_tensor.tolist()
        assert all(abs(x - y) <= 1e-12 * abs(y) for x, y in zip(got, used)), f"step {t}: lr used {got} vs stock {used}"
        if sa is not None:
            sa.step()
            grows = "table" in getattr(sk, "modes", ()) and sk.last_epoch + 1 >= sk.horizon - sk.horizon // 4
            if closed_form and not sk._sched.direct_fns and not grows and not sk._sched.momentum_rows:
                before = int(sk.step_counter.item())
                with NoTorchOps(allowed={"add_"}) as ops:
                    sk.step()  # one tiny launch (the counter, capturable); the next kernel writes the LRs
                assert ops.seen == ["add_"] and sk._sched.pending == 1, ops.seen
                assert int(sk.step_counter.item()) == before + 1
            elif closed_form and sk._sched.momentum_rows:
                # Deferred too; group["momentum"] is set on the host from the CPU mirror of the
                # schedule (CPU tensor ops, no device work), as torch sets it.
                sk.step()
                assert sk._sched.pending == 1
            elif closed_form:
                # A device-mode lambda is evaluated (torch ops) at the step the kernel will use; a
                # growing LambdaLR table is re-uploaded (and the counter set) at this step.
                sk.step()
                assert sk._sched.pending == (0 if grows else 1)
            else:
                sk.step()
            st.step()
            if closed_form:
                assert sk.get_last_lr() == st.get_last_lr()
                moms = [[g["momentum"] for g in o.param_groups] for o in (stock_opt, torch_opt, kern_opt)]
                assert moms[1] == moms[2] and all(abs(a - b) <= 1e-15 for a, b in zip(moms[0], moms[1])), moms
        if manual:
            for o in (stock_opt, torch_opt, kern_opt):
                for g in o.param_groups:
                    g["lr"] *= 0.95  # manual decay, in place on the device for FusedSGD
        tol = FP32 if dtype == torch.float32 else BF16
        for i, (p, q, r) in enumerate(zip(a_ps, t_ps, k_ps)):
            check_close(r, q, tol, f"{name} step {t} param {i}: triton vs torch path")
            if dtype == torch.float32:
                check_close(r, p, tol, f"{name} step {t} param {i}: triton vs stock")
            bk = kern_opt.state.get(r, {}).get("momentum_buffer")
            bt = torch_opt.state.get(q, {}).get("momentum_buffer")
            assert (bk is None) == (bt is None), f"{name} step {t} param {i}: buffer presence"
            if bk is not None:
                check_close(bk, bt, tol, f"{name} step {t} buffer {i}")
    for opt, keep in ((kern_opt, 8), (torch_opt, 64)):
        log, want = opt.lr_log(), torch.tensor(used_history[-keep:], dtype=torch.float64)
        assert log.shape == want.shape and torch.allclose(log, want, rtol=1e-12, atol=0), f"{name}: LR log {log} vs {want}"
    if closed_form:
        kern_opt.step()  # writes back the LRs of the last scheduler step
        assert not sk._sched.pending and int(sk.step_counter.item()) == sk.last_epoch == STEPS
    # Without AMP every first-step flag was cleared by the kernel, and the host knows it (so later
    # launches skip the flag-clearing ticket).
    assert int(kern_opt._engine.first_flags.sum()) == 0 and not kern_opt._engine.flags_maybe_set


def case_schedulers():
    for name in SCHEDULERS:
        run_scheduler(name)


def case_bf16():
    run_scheduler("cosine", torch.bfloat16)


def case_plateau():
    ps = make_params(torch.float32)
    a_ps, k_ps = copy.deepcopy(ps), copy.deepcopy(ps)
    a = torch.optim.SGD(groups(a_ps), lr=0.1, momentum=0.9, foreach=False)
    k = fused_lr.FusedSGD(groups(k_ps), lr=0.1, momentum=0.9, backend="triton")
    sa = stock.ReduceLROnPlateau(a, patience=1, factor=0.5)
    sk = fused.ReduceLROnPlateau(k, patience=1, factor=0.5)
    metrics = [1.0, 0.9, 0.95, 0.97, 0.96, 0.8, 0.85, 0.86, 0.87]
    for t, m in enumerate(metrics):
        gs = grads_for(t + 10, ps)
        for qs in (a_ps, k_ps):
            _set(qs, gs)
        a.step()
        k.step()
        sa.step(m)
        sk.step(torch.tensor(m))
        assert sk.get_last_lr() == sa.get_last_lr(), (t, sk.get_last_lr(), sa.get_last_lr())
        for p, q in zip(a_ps, k_ps):
            check_close(q, p, FP32, f"plateau step {t}")


def case_resume():
    """A state_dict taken mid-run on the Triton path (with a deferred step pending) resumes exactly."""
    ps = make_params(torch.float32)
    full, part = copy.deepcopy(ps), copy.deepcopy(ps)
    kw = dict(lr=0.1, momentum=0.9)
    o_full = fused_lr.FusedSGD(groups(full), backend="triton", **kw)
    s_full = fused.CosineAnnealingLR(o_full, 7)
    o_part = fused_lr.FusedSGD(groups(part), backend="triton", **kw)
    s_part = fused.CosineAnnealingLR(o_part, 7)
    for t in range(16):
        if t == 9:
            buf = io.BytesIO()
            torch.save({"p": [p.detach().clone() for p in part], "o": o_part.state_dict(), "s": s_part.state_dict()}, buf)
            buf.seek(0)
            ck = torch.load(buf, weights_only=True)
            part = [torch.nn.Parameter(v) for v in ck["p"]]
            o_part = fused_lr.FusedSGD(groups(part), backend="triton", **kw)
            s_part = fused.CosineAnnealingLR(o_part, 7)
            o_part.load_state_dict(ck["o"])
            s_part.load_state_dict(ck["s"])
        gs = grads_for(t, ps)
        for qs in (full, part):
            _set(qs, gs)
        o_full.step(), o_part.step(), s_full.step(), s_part.step()
    for p, q in zip(full, part):
        assert torch.equal(p, q), "resumed Triton-path trajectory differs"


def case_epoch_schedule():
    """StepLR stepped once per 'epoch' of 3 optimizer steps: the counter advances once per epoch."""
    ps = make_params(torch.float32)
    a_ps, k_ps = copy.deepcopy(ps), copy.deepcopy(ps)
    a = torch.optim.SGD(groups(a_ps), lr=0.1, momentum=0.9, foreach=False)
    k = fused_lr.FusedSGD(groups(k_ps), lr=0.1, momentum=0.9, backend="triton")
    sa, sk = stock.StepLR(a, 2, 0.1), fused.StepLR(k, 2, 0.1)
    for epoch in range(6):
        for it in range(3):
            gs = grads_for(epoch * 3 + it, ps)
            for qs in (a_ps, k_ps):
                _set(qs, gs)
            a.step()
            k.step()
        sa.step()
        sk.step()
        for p, q in zip(a_ps, k_ps):
            check_close(q, p, FP32, f"epoch {epoch}")
    assert sk.get_last_lr() == sa.get_last_lr()


def case_edits():
    """WarmupStableDecayLR.start_cooldown() and set_total_steps() mid-run on the Triton path (with a
    deferred scheduler step pending) give the torch path's LRs and params at every step."""
    ps = make_params(torch.float32)
    t_ps, k_ps = copy.deepcopy(ps), copy.deepcopy(ps)
    t = fused_lr.FusedSGD(groups(t_ps), lr=0.1, momentum=0.9, backend="torch")
    k = fused_lr.FusedSGD(groups(k_ps), lr=0.1, momentum=0.9, backend="triton")
    st = fused.WarmupStableDecayLR(t, warmup_steps=2, total_steps=1000, decay_steps=6, decay_shape="cosine")
    sk = fused.WarmupStableDecayLR(k, warmup_steps=2, total_steps=1000, decay_steps=6, decay_shape="cosine")
    for step in range(24):
        if step == 10:
            assert sk._sched.pending == 1  # the edit must account for the step the kernel has not applied
            st.start_cooldown()
            sk.start_cooldown()
        if step == 13:
            st.set_total_steps(40)
            sk.set_total_steps(40)
        gs = grads_for(step, ps)
        for qs in (t_ps, k_ps):
            _set(qs, gs)
        t.step()
        k.step()
        assert k.lr_tensor.tolist() == t.lr_tensor.tolist(), f"step {step}: {k.lr_tensor.tolist()} vs {t.lr_tensor.tolist()}"
        st.step()
        sk.step()
        for p, q in zip(t_ps, k_ps):
            check_close(q, p, FP32, f"edits step {step}")
    assert sk.get_last_lr() == st.get_last_lr()


def case_fast_path():
    """The steady-state step (cached plan, no per-tensor collection) against the torch path through
    everything that must make it fall back: new grad tensors, a None grad, a replaced parameter
    storage, a changed momentum, a loaded state dict, an added group, a bad grad (which must raise
    with nothing changed)."""
    ps = make_params(torch.float32)[:5]  # real tensors only (complex params take the full step)
    t_ps, k_ps = copy.deepcopy(ps), copy.deepcopy(ps)
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3)
    t = fused_lr.FusedSGD(groups(t_ps), backend="torch", **kw)
    k = fused_lr.FusedSGD(groups(k_ps), backend="triton", **kw)
    st, sk = fused.CosineAnnealingLR(t, 7), fused.CosineAnnealingLR(k, 7)
    fast_expected = 0

    def one(step, fresh_grads=False):
        gs = grads_for(step + 20, ps)
        gs = [torch.randn(p.shape) if g is None else g for p, g in zip(ps, gs)]
        for qs in (t_ps, k_ps):
            for p, g in zip(qs, gs):
                if fresh_grads or p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.copy_(g)
        t.step()
        k.step()
        st.step()
        sk.step()
        for i, (p, q) in enumerate(zip(t_ps, k_ps)):
            check_close(q, p, FP32, f"fast path step {step} param {i}")
            bt, bk = t.state[p].get("momentum_buffer"), k.state[q].get("momentum_buffer")
            if bt is not None:
                check_close(bk, bt, FP32, f"fast path step {step} buffer {i}")

    one(0)  # full step: builds the plan
    for step in range(1, 4):
        one(step)
        fast_expected += 1
    assert steady_steps(k) == fast_expected, (steady_steps(k), fast_expected)
    one(4, fresh_grads=True)  # new grad addresses: still the fast path, grads re-pointed
    fast_expected += 1
    assert steady_steps(k) == fast_expected
    for o in (t, k):  # a None grad: the full step
        o.param_groups[0]["params"][1].grad = None
    t.step(), k.step()
    assert steady_steps(k) == fast_expected
    one(5)  # grads back: the full step once (buffers exist), then fast again
    one(6)
    fast_expected += 1
    assert steady_steps(k) == fast_expected
    for qs in (t_ps, k_ps):  # a replaced storage
        qs[2].data = qs[2].data.clone()
    one(7)
    assert steady_steps(k) == fast_expected, "a replaced parameter storage must not take the cached plan"
    one(8)
    fast_expected += 1
    plan, n_plans = k._engine.steady.plan, len(k._engine.cache._plans)
    for o in (t, k):
        o.param_groups[1]["momentum"] = 0.7
    one(9)  # (checked against the torch path: the new momentum is used)
    fast_expected += 1
    assert steady_steps(k) == fast_expected, "a changed momentum is data: the fast path rewrites the hyper table"
    assert k._engine.steady.plan is plan and len(k._engine.cache._plans) == n_plans, "a changed momentum rebuilt the plan"
    k.load_state_dict(k.state_dict())
    t.load_state_dict(t.state_dict())
    one(10)
    assert steady_steps(k) == fast_expected, "a loaded state dict must rebuild"
    # A bad grad once the fast path is established: a clear error, nothing changed.
    one(11)
    one(12)
    fast_expected += 2
    assert steady_steps(k) == fast_expected
    before = [q.detach().clone() for q in k_ps]
    bufs = [k.state[q]["momentum_buffer"].clone() for q in k_ps]
    counter = sk.step_counter.clone()
    good = k_ps[3].grad
    k_ps[3].grad_dtype = None  # torch's opt-in for a grad of another dtype
    k_ps[3].grad = torch.zeros(k_ps[3].shape, dtype=torch.float64)
    try:
        k.step()
    except RuntimeError as e:
        assert "does not match its parameter" in str(e), e
    else:
        raise AssertionError("a float64 grad on a float32 param must raise")
    assert all(torch.equal(a, q) for a, q in zip(before, k_ps)), "a failed step changed a parameter"
    assert all(torch.equal(a, k.state[q]["momentum_buffer"]) for a, q in zip(bufs, k_ps)), "a failed step changed a buffer"
    assert torch.equal(counter, sk.step_counter)
    k_ps[3].grad = good
    return f"{steady_steps(k)} fast steps"


CASES = {
    "fast_path": case_fast_path,
    "edits": case_edits,
    "schedulers": case_schedulers,
    "bf16": case_bf16,
    "plateau": case_plateau,
    "resume": case_resume,
    "epoch_schedule": case_epoch_schedule,
}

# --- AMP and clipping --------------------------------------------------------------------------

# Total gradient norms, kernel vs torch (clip_grad_norm_ or the torch path): both sum float32 squares
# (torch: _foreach_norm per tensor, then the norm of the stack; the kernel: per-lane float32 sums over
# a chunk's blocks, a tree over lanes, then float64 over chunks) in different orders. For sums of
# non-negative terms each order is within ~(depth) * 2**-24 relative of the exact value, depth
# < 16 for these sizes: ~1e-6 at most; the square root halves it. rtol 1e-6.
NORM_RTOL = dict(rtol=1e-6, atol=0.0)
AMP_STEPS = 10
POISONED = (0, 7)  # an inf gradient: the very first step, and param 4's first step (it is frozen before 7)


def _amp_grads(t, ps, scale):
    gs = grads_for(t, ps)
    out = [None if g is None else g * scale for g in gs]
    if t in POISONED:
        out[2].view(-1)[5] = float("inf")
    return out


def run_amp(dtype, max_grad_norm=None, norm_type=2.0, ref=None):
    """GradScaler.step on stock SGD (for-loop), FusedSGD torch path and FusedSGD Triton
    path, with a StepLR stepped every iteration (deferred on the Triton path, including across
    skipped steps). With max_grad_norm, stock uses torch's recipe (unscale_, clip_grad_norm_, step).
    No complex parameter: torch 2.13's GradScaler cannot check complex gradients on CPU
    (_amp_foreach_non_finite_check_and_unscale_cpu is not implemented for ComplexFloat)."""
    ref = make_params(dtype)[:5] if ref is None else ref
    a_ps, t_ps, k_ps = (copy.deepcopy(ref) for _ in range(3))
    kw = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    clip_kw = dict(max_grad_norm=max_grad_norm, norm_type=norm_type)
    stock_opt = torch.optim.SGD(groups(a_ps), foreach=False, **kw)
    torch_opt = fused_lr.FusedSGD(groups(t_ps), backend="torch", **kw, **clip_kw)
    kern_opt = fused_lr.FusedSGD(groups(k_ps), backend="triton", **kw, **clip_kw)
    opts = (stock_opt, torch_opt, kern_opt)
    scheds = (stock.StepLR(stock_opt, 3, 0.5), fused.StepLR(torch_opt, 3, 0.5), fused.StepLR(kern_opt, 3, 0.5))
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3) for _ in opts]
    # torch rounds a bfloat16 gradient's norm to bfloat16 (fused_lr keeps it in float32), so with
    # clipping and bfloat16 params the clipped gradients differ from stock's by ~2**-8 relative:
    # then only the torch path (same float32 norm) is the reference. Stock GradScaler refuses to
    # unscale float16 gradients for stock optimizers: float16 is compared with the torch path only.
    vs_stock = (max_grad_norm is None or all(p.dtype != torch.bfloat16 for p in ref)) and all(
        p.dtype != torch.float16 for p in ref)
    for t in range(AMP_STEPS):
        scale = scalers[1].get_scale()
        gs = _amp_grads(t, ref, scale)
        for ps, sc in zip((a_ps, t_ps, k_ps), scalers):
            sc.scale(torch.ones(()))  # (GradScaler wants a scale() call per iteration before step)
            _set(ps, gs)
        if vs_stock:
            if max_grad_norm is not None:
                scalers[0].unscale_(stock_opt)
                total = torch.nn.utils.clip_grad_norm_([p for p in a_ps if p.grad is not None], max_grad_norm, norm_type)
            scalers[0].step(stock_opt)
        scalers[1].step(torch_opt)
        with CountLaunches() as launches:
            scalers[2].step(kern_opt)
        active = scalers if vs_stock else scalers[1:]
        for sc in active:
            sc.update()
        assert len({sc.get_scale() for sc in active}) == 1
        dtypes = {(q.real if q.is_complex() else q).dtype for q, g in zip(k_ps, gs) if g is not None}
        assert launches.n == len(dtypes), f"step {t}: {launches.n} update launches, expected {len(dtypes)}"
        for s in scheds:
            s.step()
        if max_grad_norm is not None:
            nk, nt = kern_opt.last_grad_norm, torch_opt.last_grad_norm
            if t in POISONED:
                assert not math.isfinite(float(nk)) and not math.isfinite(float(nt)), (t, nk, nt)
            else:
                check_close(nk, nt, NORM_RTOL, f"norm step {t}: triton vs torch path")
                if vs_stock:
                    check_close(nk, total, NORM_RTOL, f"norm step {t}: triton vs clip_grad_norm_")
        if t == 0:
            # The skipped first step: no buffer on the torch path; on the Triton path a zero buffer whose
            # first-step flag is still set, which state_dict reports as no buffer (torch.optim.SGD's state).
            assert len(torch_opt.state) == 0
            sd = kern_opt.state_dict()
            assert all(st.get("momentum_buffer") is None for st in sd["state"].values()), sd["state"]
            assert int(kern_opt._engine.first_flags.sum()) == sum(g is not None for g in gs)
        for i, (p, q, r) in enumerate(zip(a_ps, t_ps, k_ps)):
            tol = {torch.bfloat16: BF16, torch.float16: FP16}.get(r.dtype, FP32)  # (float64: FP32 is looser than needed)
            check_close(r, q, tol, f"amp {dtype} step {t} param {i}: triton vs torch path")
            if vs_stock:
                check_close(r, p, tol, f"amp {dtype} step {t} param {i}: triton vs stock")
            bk = kern_opt.state_dict()["state"].get(i, {}).get("momentum_buffer")
            bt = torch_opt.state.get(q, {}).get("momentum_buffer")
            assert (bk is None) == (bt is None), f"amp step {t} param {i}: buffer presence {bk is not None} vs {bt is not None}"
            if bk is not None:
                check_close(bk, bt, tol, f"amp step {t} buffer {i}")
    # Under AMP the host learns which flags the kernel cleared from an asynchronous read of the
    # flags (taken after an AMP step, looked at when it has arrived): once every tensor had a real
    # step, steady steps take no ticket and run no flag loop.
    eng = kern_opt._engine
    if eng._flag_read is not None:
        eng._poll_flags()
    assert int(eng.first_flags.sum()) == 0 and not eng.flags_maybe_set, eng.flags_maybe_set
    print(f"amp {dtype} clip={max_grad_norm}: {steady_steps(kern_opt)} of {AMP_STEPS} steps took the steady-state path")
    assert steady_steps(kern_opt) > 0, "the steady-state path must serve GradScaler steps too"
    kern_opt.step(found_inf=torch.ones(1))  # a skipped step still applies the last deferred scheduler step
    assert int(scheds[2].step_counter.item()) == scheds[2].last_epoch == AMP_STEPS
    assert scheds[2].get_last_lr() == scheds[0].get_last_lr()
    return vs_stock


def case_amp():
    run_amp(torch.float32)


def case_amp_bf16():
    run_amp(torch.bfloat16)


def case_amp_fp16():
    """float16 params (scaled gradients up to 2**8 * |g|), with and without clipping: vs the torch path."""
    assert not run_amp(torch.float16)
    assert not run_amp(torch.float16, max_grad_norm=1.0)


def case_amp_mixed():
    """float32, bfloat16 and float64 params in the same groups: one launch per dtype, each with its
    own first-step flags cleared by its own last program (one shared ticket, stream order)."""
    g = torch.Generator().manual_seed(3)
    dtypes = [torch.float32, torch.bfloat16, torch.float64, torch.float32, torch.bfloat16]
    ref = [torch.nn.Parameter(torch.randn(s, generator=g).to(d)) for s, d in zip(SHAPES, dtypes)]
    assert run_amp(torch.float32, ref=ref)
    assert not run_amp(torch.float32, max_grad_norm=1.0, ref=ref)  # vs the torch path only (bf16 norms)


def case_clip():
    for norm_type in (2.0, float("inf")):
        run_amp(torch.float32, max_grad_norm=1.5, norm_type=norm_type)


def case_clip_plain():
    """Clipping without AMP vs clip_grad_norm_ + stock SGD; a NaN gradient (torch: NaN params, same
    places); error_if_nonfinite raising before anything changes (params, buffers, flags, counter)."""
    ref = make_params(torch.float32)
    for norm_type in (2.0, float("inf")):
        # The complex parameter (index 5): in the kernels under the 2-norm (real view), on the torch
        # path under the inf-norm (max |z|), joining the kernels' norm as the extra partial.
        a_ps, k_ps = copy.deepcopy(ref), copy.deepcopy(ref)
        a = torch.optim.SGD(groups(a_ps), lr=0.1, momentum=0.9, foreach=False)
        k = fused_lr.FusedSGD(groups(k_ps), lr=0.1, momentum=0.9, backend="triton", max_grad_norm=2.0, norm_type=norm_type)
        sa, sk = stock.CosineAnnealingLR(a, 5), fused.CosineAnnealingLR(k, 5)
        for t in range(6):
            gs = [None if g is None else 3 * g for g in grads_for(t, ref)]
            if norm_type == float("inf") and t % 2:
                gs[5] = gs[5] * 10  # the complex gradient holds the largest |g| on these steps
            _set(a_ps, gs), _set(k_ps, gs)
            total = torch.nn.utils.clip_grad_norm_([p for p in a_ps if p.grad is not None], 2.0, norm_type)
            a.step(), k.step(), sa.step(), sk.step()
            check_close(k.last_grad_norm, total, NORM_RTOL, f"clip {norm_type} norm step {t}")
            for i, (p, r) in enumerate(zip(a_ps, k_ps)):
                check_close(r, p, FP32, f"clip {norm_type} step {t} param {i}")
    gs = grads_for(8, ref)
    gs[3].view(-1)[0] = float("nan")
    _set(a_ps, gs), _set(k_ps, gs)
    torch.nn.utils.clip_grad_norm_(a_ps, 2.0)
    a.step(), k.step()
    assert math.isnan(float(k.last_grad_norm))
    for p, r in zip(a_ps, k_ps):
        assert torch.equal(p.isnan(), r.isnan()), "NaN pattern differs from torch"

    ps = make_params(torch.float32)
    k = fused_lr.FusedSGD(groups(ps), lr=0.1, momentum=0.9, backend="triton", max_grad_norm=2.0, error_if_nonfinite=True)
    sk = fused.StepLR(k, 1, 0.5)
    _set(ps, grads_for(9, ps))
    ps[4].grad = None  # param 4 gets its first step below, in the step that raises
    k.step()
    sk.step()  # deferred: pending until the next launch
    snap = ([p.detach().clone() for p in ps], {i: st["momentum_buffer"].clone() for i, st in k.state_dict()["state"].items()},
            k._engine.first_flags.clone(), int(sk.step_counter.item()), len(k.state))
    gs = grads_for(10, ps)
    gs[0] = gs[0] * float("inf")
    _set(ps, gs)
    try:
        k.step()
    except RuntimeError as e:
        assert "non-finite" in str(e), e
    else:
        raise AssertionError("error_if_nonfinite did not raise")
    assert all(torch.equal(p, q) for p, q in zip(ps, snap[0])), "a parameter changed"
    assert torch.equal(k._engine.first_flags, snap[2]) and int(sk.step_counter.item()) == snap[3] and len(k.state) == snap[4]
    assert {i: st["momentum_buffer"] for i, st in k.state_dict()["state"].items()}.keys() == snap[1].keys()
    assert sk._sched.pending == 1


def case_api():
    """tests/_optimizer_api_cases.py on the Triton backend (tests/test_optimizer_api.py runs them
    on the torch backend)."""
    import _optimizer_api_cases as api

    for check in api.CHECKS.values():
        check("triton")


def case_optim_db():
    """tests/_optim_db_cases.py on the Triton backend: every SGD input of torch's optimizer test
    data (3 steps, tiny parameters; the scheduler inputs run on the torch backend only, they drive
    the same LR buffer the kernel reads) and every error input. The data comes pickled from the
    parent (FUSED_LR_OPTIM_DB: a file path), else it is imported here (~10 s)."""
    import _optim_db_cases as db

    path = os.environ.get("FUSED_LR_OPTIM_DB")
    if path:
        with open(path, "rb") as f:
            data = pickle.load(f)
    else:
        data = db.torch_data(with_schedulers=False)
    assert db.run_optim_inputs("triton", data, steps=3) == len(data["inputs"]) == 27
    assert db.check_error_inputs("triton", data) == 7


CASES["api"] = case_api
CASES["optim_db"] = case_optim_db
CASES.update({"amp": case_amp, "amp_bf16": case_amp_bf16, "amp_mixed": case_amp_mixed, "amp_fp16": case_amp_fp16,
              "clip": case_clip, "clip_plain": case_clip_plain})


# --- Layouts ---------------------------------------------------------------------------------------


def case_layouts():
    """Every parameter and gradient layout of tests/_layout_cases.py on the Triton path vs stock
    torch.optim.SGD(foreach=False), with the canary check around every parameter and gradient:
    dense layouts (channels_last, transposed, a size-1 dim's odd stride, 0-dim) run in the kernel
    with their gradients and buffers walked flat, the rest (non-dense parameters, gradients or
    buffers with other strides) take the torch path. Gradients rotate through the layouts, so a
    parameter moves between the kernel and the torch path from step to step. Dense parameters with
    autograd-like gradients stay on the steady-state fast path, which notices a gradient with other
    strides at a cached address."""
    import _layout_cases as L
    from conftest import TRAJ_TOL

    def close_for(dtype):
        # fp32 / fp64: the kernel rounds like torch's fused kernel (see FP32 above; fp64 the same
        # argument with its eps: conftest's TRAJ_TOL). bf16: BF16 above, against stock's bf16 for-loop
        # (what the torch path runs on CPU).
        tol = BF16 if dtype == torch.bfloat16 else TRAJ_TOL[dtype]
        return lambda actual, expected, what: check_close(actual, expected, tol, what)

    def triton(groups, **kw):
        opt = fused_lr.FusedSGD(groups, backend="triton", **kw)
        assert opt.implementation == "triton"
        return opt

    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for config in L.CONFIGS.values():
            L.run(triton, dtype, "rotate", config, close_for(dtype))
    for dtype in (torch.float32, torch.bfloat16):
        with CountLaunches() as launches:
            _, _, b, ob = L.run(triton, dtype, "like_param", L.CONFIGS["nesterov"], close_for(dtype), names=L.DENSE)
        assert launches.n == L.STEPS, f"{launches.n} launches in {L.STEPS} steps: a dense layout left the kernel"
        assert steady_steps(ob) == L.STEPS - 1, f"{steady_steps(ob)} fast steps: dense layouts fell off the fast path"
        for name, p in zip(b.names, b.params):
            buf = ob.state[p]["momentum_buffer"]
            assert buf.stride() == p.stride(), f"{name}: buffer strides {buf.stride()} vs param {p.stride()}"

    # A gradient with other strides at the address the cached plan holds: the fast path must see it.
    close = close_for(torch.float32)
    a_p, b_p = (torch.nn.Parameter(torch.randn(3, 3, generator=torch.Generator().manual_seed(7))) for _ in range(2))
    oa = torch.optim.SGD([a_p], lr=0.1, momentum=0.9, foreach=False)
    ob = triton([b_p], lr=0.1, momentum=0.9)
    store = torch.randn(3, 3, generator=torch.Generator().manual_seed(8))
    # Steps 1, 2, 5 and 6 take the fast path; steps 3 and 4 must notice the transposed gradient (same
    # address) and take the torch path (the cached plan stays valid for step 5).
    for t, grad in enumerate((store, store, store, store.t(), store.t(), store, store)):
        a_p.grad, b_p.grad = grad.clone(memory_format=torch.preserve_format), grad
        oa.step()
        ob.step()
        close(b_p, a_p, f"grad strides {grad.stride()} at one address, step {t}")
        close(ob.state[b_p]["momentum_buffer"], oa.state[a_p]["momentum_buffer"], f"buffer, step {t}")
    assert steady_steps(ob) == 4, steady_steps(ob)

    # A parameter whose elements share memory (stride 0): refused before the kernel updates the other.
    ps = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(1).expand(3))]
    for p in ps:
        p.grad = torch.ones(3)
    opt = triton([dict(params=ps[:1]), dict(params=ps[1:])], lr=0.1, momentum=0.9)
    try:
        opt.step()
    except RuntimeError as e:
        assert "more than one element of the written-to tensor" in str(e), e
    else:
        raise AssertionError("a parameter whose elements share memory was updated")
    assert torch.equal(ps[0].detach(), torch.ones(3)) and not opt.state, "something changed before the error"


CASES["layouts"] = case_layouts


if __name__ == "__main__":
    assert engine.interpreting(), "the kernels are not interpreted"
    with engine.override_launch_config(BLOCK_SIZE=128, CHUNK_BLOCKS=4):
        for case in sys.argv[1:]:
            CASES[case]()
            print(f"{case}: ok")

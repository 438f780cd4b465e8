"""FusedAdamW / FusedAdam (torch path) + fused scheduler against torch.optim.AdamW / Adam + stock scheduler.

The pattern of tests/test_sgd_parity.py: several groups with their own hyper-parameters, odd sizes,
a 0-dim and a complex parameter, a gradient set to None on one step, a parameter frozen then
unfrozen (its first step, and so its bias corrections, come late), a parameter that never gets a
gradient, and the state (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) compared with the
parameters at every step, against both of stock's CPU implementations: the for-loop (its default)
and foreach. The Triton kernel runs the same comparisons under the interpreter
(tests/test_adamw_triton.py).

Tolerances: tests/conftest.py's TRAJ_TOL. Its argument holds for Adam too: fused_lr's torch path
runs torch's fused Adam kernel, whose float32 arithmetic may differ from the for-loop's by an ulp or
two per operation (FMA contraction; torch's lerp formula; ``sqrt(v) / c`` vs a reciprocal), and
Adam's update normalizes the gradient (``m / sqrt(v)`` is O(1), the step is O(lr)), so each step's
error stays a few ulp of the values involved and the errors add up over the 14-22 steps without
growing: well inside 1e-5 relative (fp32) and 1e-12 (fp64).
"""

from __future__ import annotations

import copy
import io
import itertools

import _layout_cases as L
import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import TRAJ_TOL, assert_close

import fused_lr
import fused_lr.lr_scheduler as fused

SHAPES = [(), (1,), (7,), (3, 5), (127,), (2, 3, 4), (1025,)]
STEPS = 14  # crosses StepLR(4)'s boundaries three times, after the None grad and the unfreezing
NONE_GRAD_STEP = 5  # parameter 1 gets no gradient on this step
UNFREEZE_STEP = 9  # parameter 4 has no gradient before this step
KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
PAIRS = {"adamw": (torch.optim.AdamW, fused_lr.FusedAdamW), "adam": (torch.optim.Adam, fused_lr.FusedAdam)}
COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _make_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]
    # A complex parameter (torch updates it through its real view), then one that never gets a grad.
    ps.insert(-1, torch.nn.Parameter(torch.randn(6, generator=g, dtype=COMPLEX.get(dtype, dtype))))
    return ps


def _groups(params, opts):
    """Two groups with their own lr / betas / eps / weight_decay; the last param never has a grad."""
    g1 = dict(params=params[4:], lr=3e-3, betas=(0.8, 0.99), eps=1e-6)
    if opts["weight_decay"]:
        g1["weight_decay"] = 0.05
    return [dict(params=params[:4]), g1]


def _grads(step, params):
    g = torch.Generator().manual_seed(1000 + step)
    out = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    out[-1] = None  # never gets a gradient
    if step == NONE_GRAD_STEP:
        out[1] = None
    if step < UNFREEZE_STEP:
        out[4] = None
    return out


def _set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


COMBOS = [dict(amsgrad=a, maximize=m, weight_decay=wd)
          for a, m, wd in itertools.product((False, True), (False, True), (0.0, 0.1))]


def _combo_id(c):
    return "ams{amsgrad:d}-max{maximize:d}-wd{weight_decay}".format(**c)


def _compare_states(pa, oa, pb, ob, tol, what):
    for i, (p, q) in enumerate(zip(pa, pb)):
        assert_close(q, p, what=f"{what}: param {i} {tuple(p.shape)}", **tol)
        sa, sb = oa.state.get(p, {}), ob.state.get(q, {})
        for key in KEYS:
            a, b = sa.get(key), sb.get(key)
            assert (a is None) == (b is None), f"{what}: param {i} {key} presence {a is not None} vs {b is not None}"
            if a is not None:
                assert_close(b, a, what=f"{what}: param {i} {key}", **tol)
        if "step" in sb:
            assert sb["step"].dtype == torch.float32 and sb["step"].dim() == 0 and sb["step"].device == q.device


SCHEDULERS = {
    "step": ("StepLR", dict(step_size=4, gamma=0.5)),
    "exp": ("ExponentialLR", dict(gamma=0.93)),
    "cosine": ("CosineAnnealingLR", dict(T_max=8, eta_min=1e-4)),
    "lambda": ("LambdaLR", dict(lr_lambda=lambda e: 0.95**e)),
    "multistep": ("MultiStepLR", dict(milestones=[4, 9, 9, 20], gamma=0.5)),
    "linear": ("LinearLR", dict(start_factor=0.2, total_iters=10)),
    "poly": ("PolynomialLR", dict(total_iters=20, power=1.5)),
    "restarts": ("CosineAnnealingWarmRestarts", dict(T_0=3, T_mult=2, eta_min=1e-4)),
    # betas[0] cycled inversely to the LR, as torch cycles it for Adam
    "onecycle": ("OneCycleLR", dict(max_lr=0.02, total_steps=24, three_phase=True)),
    "cyclic": ("CyclicLR", dict(base_lr=1e-3, max_lr=0.02, step_size_up=4, mode="triangular2",
                                base_momentum=0.8, max_momentum=0.95)),
}


def _run_pair(name, opts, dtype, sched_key, steps=STEPS):
    """Stock for-loop, stock foreach and fused_lr's torch path side by side, compared every step."""
    stock_cls, fused_cls = PAIRS[name]
    pa = _make_params(dtype)
    pf, pb = copy.deepcopy(pa), copy.deepcopy(pa)
    oa = stock_cls(_groups(pa, opts), lr=0.01, foreach=False, **opts)
    of = stock_cls(_groups(pf, opts), lr=0.01, foreach=True, **opts)
    ob = fused_cls(_groups(pb, opts), lr=0.01, backend="torch", **opts)
    sched_name, kw = SCHEDULERS[sched_key]
    scheds = [getattr(stock, sched_name)(oa, **kw), getattr(stock, sched_name)(of, **kw),
              getattr(fused, sched_name)(ob, **kw)]
    tol = TRAJ_TOL[dtype]
    for t in range(steps):
        grads = _grads(t, pa)
        for ps, opt in ((pa, oa), (pf, of), (pb, ob)):
            _set_grads(ps, grads)
            opt.step()
        for s in scheds:
            s.step()
        what = f"{name} {sched_key} {_combo_id(opts)} {dtype} step {t}"
        _compare_states(pa, oa, pb, ob, tol, f"{what} vs for-loop")
        _compare_states(pf, of, pb, ob, tol, f"{what} vs foreach")
        for ga, gb in zip(oa.param_groups, ob.param_groups):
            assert abs(ga["lr"] - gb["lr"]) <= 1e-12 * ga["lr"], f"{what}: lr {gb['lr']} vs {ga['lr']}"
            assert gb["betas"][0] == pytest.approx(ga["betas"][0], rel=1e-12), f"{what}: beta1"
    return pa, oa, scheds[0], pb, ob, scheds[2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("opts", COMBOS, ids=[_combo_id(c) for c in COMBOS])
@pytest.mark.parametrize("name", list(PAIRS))
def test_every_option_combination_matches_stock(name, opts, dtype):
    _run_pair(name, opts, dtype, "step")


RICH = dict(amsgrad=True, maximize=False, weight_decay=0.1)


@pytest.mark.parametrize("sched_key", list(SCHEDULERS))
@pytest.mark.parametrize("name", list(PAIRS))
def test_every_scheduler_matches_stock(name, sched_key):
    _run_pair(name, RICH, torch.float32, sched_key, steps=22)


def _stock_state_keys(opt):
    return {i: sorted(st) for i, st in opt.state_dict()["state"].items()}


@pytest.mark.parametrize("stock_flags", [dict(foreach=False), dict(fused=True)], ids=["forloop", "fused"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_state_dict_interchanges_with_stock_both_ways_mid_schedule(name, stock_flags):
    """Stock -> fused_lr and fused_lr -> stock mid-schedule (optimizer and scheduler state dicts,
    through torch.save), then both continue in lockstep with an uninterrupted stock run. Stock's
    default Adam keeps ``step`` on the CPU, its fused Adam on the parameters' device: both load."""
    stock_cls, fused_cls = PAIRS[name]
    opts = dict(amsgrad=True, weight_decay=0.1)
    tol = TRAJ_TOL[torch.float32]
    ref = _make_params(torch.float32)
    if stock_flags.get("fused"):
        ref = [p for p in ref if not p.is_complex()]  # torch's fused Adam refuses complex parameters
    sched = ("CosineAnnealingLR", dict(T_max=12, eta_min=1e-4))

    def make(cls, ps, **kw):
        opt = cls(_groups(ps, opts), lr=0.01, **opts, **kw)
        mod = fused if issubclass(cls, fused_lr.optim.FusedOptimizer) else stock
        return opt, getattr(mod, sched[0])(opt, **sched[1])

    def save(*objs):
        buf = io.BytesIO()
        torch.save([o.state_dict() for o in objs], buf)
        buf.seek(0)
        return torch.load(buf, weights_only=True)

    for direction in ("stock->fused", "fused->stock"):
        p_ref, p_first, p_second = copy.deepcopy(ref), copy.deepcopy(ref), copy.deepcopy(ref)
        o_ref, s_ref = make(stock_cls, p_ref, foreach=False)
        if direction == "stock->fused":
            o1, s1 = make(stock_cls, p_first, **stock_flags)
            o2, s2 = make(fused_cls, p_second, backend="torch")
        else:
            o1, s1 = make(fused_cls, p_first, backend="torch")
            o2, s2 = make(stock_cls, p_second, **stock_flags)
        for t in range(20):
            if t == 7:
                sd_opt, sd_sched = save(o1, s1)
                with torch.no_grad():
                    for a, b in zip(p_first, p_second):
                        b.copy_(a)
                o2.load_state_dict(sd_opt)
                s2.load_state_dict(sd_sched)
                assert _stock_state_keys(o2) == _stock_state_keys(o1), direction
                for p in p_second:
                    st = o2.state.get(p)
                    if st and isinstance(o2, fused_lr.optim.FusedOptimizer):
                        # loaded steps live on the parameter's device, float32, as torch's fused Adam's
                        assert st["step"].dtype == torch.float32 and st["step"].device == p.device
            live_ps, live_o, live_s = (p_first, o1, s1) if t < 7 else (p_second, o2, s2)
            grads = _grads(t, p_ref)
            for ps, o, s in ((p_ref, o_ref, s_ref), (live_ps, live_o, live_s)):
                _set_grads(ps, grads)
                o.step()
                s.step()
            if t >= 7:
                stock_side = o2 if direction == "fused->stock" else o_ref
                fused_side = o2 if direction == "stock->fused" else o1
                assert not isinstance(stock_side, fused_lr.optim.FusedOptimizer) and fused_side is not None
                _compare_states(p_ref, o_ref, p_second, o2, tol, f"{name} {direction} {stock_flags} step {t}")
    # The state dict's groups carry torch's keys (lr, betas, eps, weight_decay, amsgrad, maximize,
    # capturable, decoupled_weight_decay, params), without the primitive flags fused_lr chooses itself.
    o_f, _ = make(fused_cls, copy.deepcopy(ref), backend="torch")
    o_s, _ = make(stock_cls, copy.deepcopy(ref), foreach=False)
    fused_keys = set(o_f.state_dict()["param_groups"][0])
    assert fused_keys == set(o_s.state_dict()["param_groups"][0]) - {"foreach", "fused", "differentiable"}


def test_differentiable_updates_through_torchs_for_loop():
    """differentiable=True: torch's for-loop recorded by autograd; parameters and the gradients with
    respect to the initial values match stock's."""
    results = []
    for cls in (torch.optim.AdamW, fused_lr.FusedAdamW):
        roots = [torch.randn(s, generator=torch.Generator().manual_seed(3), requires_grad=True) for s in ((4,), ())]
        params = [r.clone() for r in roots]
        opt = cls(params, lr=0.05, weight_decay=0.1, differentiable=True)
        for t in range(3):
            for p in params:
                p.grad = torch.full(p.shape, 0.5 + t)
            opt.step()
        out = sum((p * (i + 1)).sum() for i, p in enumerate(params))
        results.append(([p.detach() for p in params], torch.autograd.grad(out, roots)))
    for a, b in zip(*(r[0] + list(r[1]) for r in results)):
        assert_close(b, a, what="differentiable", **TRAJ_TOL[torch.float32])


# ---------------------------------------------------------------------------------------- AMP


@pytest.mark.parametrize("name", list(PAIRS))
def test_gradscaler_skipped_steps_match_stock_forloop(name):
    """GradScaler.step(fused) vs GradScaler.step(stock for-loop): a skipped *first* step and a later
    skipped step leave parameters, moments and ``step`` exactly as stock's (nothing created on the
    first, nothing changed on the second), and the steps between match to TRAJ_TOL."""
    stock_cls, fused_cls = PAIRS[name]
    ref = _make_params(torch.float32)[:4]
    pa, pb = copy.deepcopy(ref), copy.deepcopy(ref)
    oa = stock_cls(pa, lr=0.01, weight_decay=0.1, amsgrad=True, foreach=False)
    ob = fused_cls(pb, lr=0.01, weight_decay=0.1, amsgrad=True, backend="torch")
    sa, sb = stock.StepLR(oa, 3, 0.5), fused.StepLR(ob, 3, 0.5)
    # Power-of-two scales: stock unscales by multiplying with 1/scale, fused_lr divides: both exact.
    sca = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    scb = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
    for t in range(8):
        poison = t in (0, 4)
        before = [(p.detach().clone(), {k: v.clone() for k, v in ob.state.get(p, {}).items()}) for p in pb]
        g = torch.Generator().manual_seed(500 + t)
        xs = [torch.randn(p.shape, generator=g) for p in ref]
        if poison:
            xs[2].view(-1)[0] = float("inf")
        for ps, opt, sc in ((pa, oa, sca), (pb, ob, scb)):
            opt.zero_grad()
            sc.scale(sum((p * x).sum() for p, x in zip(ps, xs))).backward()
            sc.step(opt)
            sc.update()
        sa.step()
        sb.step()
        if poison:
            for p, (value, state) in zip(pb, before):
                assert torch.equal(p.detach(), value), f"{name} step {t}: a skipped step changed a parameter"
                now = ob.state.get(p, {})
                assert sorted(now) == sorted(state), f"{name} step {t}: a skipped step changed the state's keys"
                for k, v in state.items():
                    assert torch.equal(now[k], v), f"{name} step {t}: a skipped step changed {k}"
        _compare_states(pa, oa, pb, ob, TRAJ_TOL[torch.float32], f"{name} amp step {t}")
    assert float(ob.state[pb[0]]["step"]) == 6  # 8 steps, 2 skipped


# ---------------------------------------------------------------------------------------- dtypes and layouts


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_half_precision_steps_are_float32_math_rounded_once(name, dtype):
    """torch's CPU fused Adam (fused_lr's torch path) on float16 / bfloat16 computes in float32 and
    rounds each result once: each step matches stock's for-loop run in float32 on the float32
    values of the same state, rounded to the storage dtype, within one unit in the last place of
    the storage dtype (an ulp of float32 difference may flip a rounding), and is mostly exact."""
    stock_cls, fused_cls = PAIRS[name]
    ps = [p for p in _make_params(dtype)[:-1] if not p.is_complex()]
    opt = fused_cls(ps, lr=0.01, weight_decay=0.1, amsgrad=True, backend="torch")
    exact = total = 0
    for t in range(6):
        grads = _grads(t, ps + ps[:1])[:-1]  # (_grads drops the last one's)
        mirror = [torch.nn.Parameter(p.detach().float()) for p in ps]
        ref = stock_cls(mirror, lr=0.01, weight_decay=0.1, amsgrad=True, foreach=False)
        for p, m in zip(ps, mirror):
            if p in opt.state:
                ref.state[m] = {k: v.float() if k != "step" else v.clone().cpu() for k, v in opt.state[p].items()}
        _set_grads(ps, grads)
        _set_grads(mirror, [None if g is None else g.float() for g in grads])
        opt.step()
        ref.step()
        for i, (p, m) in enumerate(zip(ps, mirror)):
            pairs = [(p.detach(), m.detach())]
            if p in opt.state:
                pairs += [(opt.state[p][k], ref.state[m][k]) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")]
            for got, want in pairs:
                want = want.to(dtype)
                ulp = torch.finfo(dtype).eps * want.float().abs().clamp_min(torch.finfo(dtype).tiny)
                diff = (got.float() - want.float()).abs()
                assert bool((diff <= ulp).all()), f"{name} {dtype} step {t} param {i}: max diff {diff.max().item()}"
                exact += int((diff == 0).sum())
                total += diff.numel()
    assert exact >= 0.99 * total, f"{name} {dtype}: only {exact}/{total} elements rounded exactly as float32 math"


@pytest.mark.parametrize("grad_layout", ["like_param", "rotate"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_every_layout_matches_stock(name, grad_layout):
    """tests/_layout_cases.py with Adam: slices, as_strided views, transposed, channels_last and 0-dim
    parameters, gradients in every layout; nothing outside a parameter written, state compared."""
    stock_cls, fused_cls = PAIRS[name]

    def make(groups, **kw):
        return fused_cls(groups, backend="torch", **kw)

    def close(actual, expected, what):
        assert_close(actual, expected, what=what, **TRAJ_TOL[torch.float32])

    L.run(make, torch.float32, grad_layout, dict(weight_decay=0.1, amsgrad=True, maximize=True), close,
          stock=stock_cls, keys=KEYS)


def test_stock_error_types_for_bad_arguments():
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        e = torch.nn.Embedding(4, 3, sparse=True)
        opt = fused_lr.FusedAdamW(e.parameters(), backend="torch")
        e(torch.tensor([1])).sum().backward()
        opt.step()
    for bad, match in ((dict(eps=-1.0), "Invalid epsilon value: -1.0"), (dict(betas=(0.5, 1.0)), "index 1: 1.0"),
                       (dict(lr=-0.1), "Invalid learning rate: -0.1"), (dict(betas=(0.9,)), "betas must be a pair")):
        with pytest.raises((ValueError, TypeError), match=match):
            fused_lr.FusedAdam([p], **bad)
    with pytest.raises(RuntimeError, match="`fused` and `foreach` cannot be `True` together"):
        fused_lr.FusedAdamW([p], foreach=True, fused=True)
    # a param group's own bad value names the group, before anything is added
    opt = fused_lr.FusedAdamW([p])
    with pytest.raises(ValueError, match=r"index 0: 1.5 \(param group 1\)"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "betas": (1.5, 0.9)})
    assert len(opt.param_groups) == 1


# ---------------------------------------------------------------------------------------- clipping, torch.compile


@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
@pytest.mark.parametrize("name", list(PAIRS))
def test_fused_clipping_matches_clip_grad_norm_then_stock(name, norm_type):
    """max_grad_norm: the same as torch.nn.utils.clip_grad_norm_ followed by stock's step (a None
    grad on one step is left out of the norm, as in torch); the norm itself to a few ulp (per-tensor
    norms, then the norm of the stack: torch's reduction, summed in another order at most)."""
    stock_cls, fused_cls = PAIRS[name]
    max_norm = {2.0: 7.0, float("inf"): 2.5}[norm_type]  # (the gradients' norms straddle it)
    ref = [p for p in _make_params(torch.float32) if not p.is_complex()]
    pa, pb = copy.deepcopy(ref), copy.deepcopy(ref)
    opts = dict(amsgrad=True, weight_decay=0.1)
    oa = stock_cls(_groups(pa, opts), lr=0.01, foreach=False, **opts)
    ob = fused_cls(_groups(pb, opts), lr=0.01, backend="torch", max_grad_norm=max_norm, norm_type=norm_type, **opts)
    clipped = 0
    for t in range(12):
        grads = _grads(t, pa)
        _set_grads(pa, grads)
        _set_grads(pb, grads)
        total = torch.nn.utils.clip_grad_norm_([p for p in pa if p.grad is not None], max_norm, norm_type)
        oa.step()
        ob.step()
        clipped += bool(total > max_norm)
        assert_close(ob.last_grad_norm, total, rtol=8 * torch.finfo(torch.float32).eps, atol=0.0, what=f"norm {t}")
        _compare_states(pa, oa, pb, ob, TRAJ_TOL[torch.float32], f"{name} clip {norm_type} step {t}")
    assert 0 < clipped < 12, f"clipping active on {clipped}/12 steps: the test would not exercise both sides"


@pytest.mark.parametrize("name", list(PAIRS))
def test_compiled_train_step_follows_stock_without_recompiling(name):
    """torch.compile (aot_eager, as tests/test_compile.py, which argues the backend) of a whole
    training step with the torch path + StepLR: after two warm-up calls (the first creates the
    state) no recompile across four schedule boundaries; every step as stock eager."""
    stock_cls, fused_cls = PAIRS[name]
    torch._dynamo.reset()
    try:
        torch.manual_seed(0)
        ma = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
        mb = copy.deepcopy(ma)
        oa = stock_cls(ma.parameters(), lr=0.01, weight_decay=0.1, amsgrad=True, foreach=False)
        ob = fused_cls(mb.parameters(), lr=0.01, weight_decay=0.1, amsgrad=True, backend="torch")
        sa, sb = stock.StepLR(oa, 3, 0.5), fused.StepLR(ob, 3, 0.5)
        batches = [(torch.randn(6, 4, generator=torch.Generator().manual_seed(t)),
                    torch.randn(6, 2, generator=torch.Generator().manual_seed(100 + t))) for t in range(14)]

        @torch.compile(backend="aot_eager")
        def train_step(x, y):
            ob.zero_grad()
            torch.nn.functional.mse_loss(mb(x), y).backward()
            ob.step()
            sb.step()

        for t, (x, y) in enumerate(batches):
            oa.zero_grad()
            torch.nn.functional.mse_loss(ma(x), y).backward()
            oa.step()
            sa.step()
            if t < 2:
                train_step(x, y)
            else:
                with torch.compiler.set_stance("fail_on_recompile"):
                    train_step(x, y)
            _compare_states(list(ma.parameters()), oa, list(mb.parameters()), ob, TRAJ_TOL[torch.float32],
                            f"{name} compiled step {t}")
            assert abs(ob.param_groups[0]["lr"] - oa.param_groups[0]["lr"]) <= 1e-12 * oa.param_groups[0]["lr"]
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("name", list(PAIRS))
def test_named_parameters_deepcopy_and_pickle(name):
    """Named parameters: the state dict carries stock's ``param_names`` and loads into stock and
    back; a deepcopy and a pickle round trip of a stepped optimizer continue as the original."""
    import pickle

    stock_cls, fused_cls = PAIRS[name]
    torch.manual_seed(0)
    ma = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    mb = copy.deepcopy(ma)
    oa = stock_cls(ma.named_parameters(), lr=0.01, amsgrad=True, foreach=False)
    ob = fused_cls(mb.named_parameters(), lr=0.01, amsgrad=True, backend="torch")
    pa, pb = list(ma.parameters()), list(mb.parameters())
    for t in range(3):
        grads = _grads(t, pa + pa[:1])[:-1]
        _set_grads(pa, grads)
        _set_grads(pb, grads)
        oa.step()
        ob.step()
    # (Copies, as a checkpoint would hold: a live state dict shares the optimizers' tensors.)
    sa, sb = copy.deepcopy(oa.state_dict()), copy.deepcopy(ob.state_dict())
    assert sa["param_groups"][0]["param_names"] == sb["param_groups"][0]["param_names"] == [n for n, _ in ma.named_parameters()]
    # fused -> stock and stock -> fused, then all continue in lockstep with a deepcopy and a pickle copy
    mc, md = copy.deepcopy(mb), copy.deepcopy(ma)
    oc = stock_cls(mc.named_parameters(), lr=0.01, amsgrad=True, foreach=False)
    oc.load_state_dict(sb)
    od = fused_cls(md.named_parameters(), lr=0.01, amsgrad=True, backend="torch")
    od.load_state_dict(sa)
    me, oe = copy.deepcopy((mb, ob))
    mf, of = pickle.loads(pickle.dumps((mb, ob)))
    runs = [(list(m.parameters()), o) for m, o in ((mb, ob), (mc, oc), (md, od), (me, oe), (mf, of))]
    for t in range(3, 6):
        grads = _grads(t, pa + pa[:1])[:-1]
        for ps, o in [(pa, oa), *runs]:
            _set_grads(ps, grads)
            o.step()
        for i, (ps, o) in enumerate(runs):
            _compare_states(pa, oa, ps, o, TRAJ_TOL[torch.float32], f"{name} copy {i} step {t}")

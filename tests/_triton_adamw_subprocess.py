"""FusedAdamW / FusedAdam(backend="triton") end to end under Triton's CPU interpreter, in a child process.

Run by tests/test_adamw_triton.py as ``python tests/_triton_adamw_subprocess.py CASE...``
(TRITON_INTERPRET=1 must be set before triton is imported, so it cannot run inside the pytest
process). Exits 0 when every check of every CASE passes; prints the first failure otherwise.

Each trajectory case trains the same parameters side by side with
* stock torch.optim.AdamW / Adam, for-loop (its default) and foreach, + the stock scheduler;
* FusedAdamW / FusedAdam(backend="torch") + the fused_lr scheduler (the reference path);
* FusedAdamW / FusedAdam(backend="triton") + the fused_lr scheduler (the kernel, one launch per
  dtype per step, counted),
comparing parameters and every state tensor (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``) after every step. The launch config is shrunk (BLOCK_SIZE=128, CHUNK_BLOCKS=4:
512-element chunks), so the 1025-element parameter spans three chunks (two full, one partial).

Tolerances (tests/conftest.py's TRAJ_TOL, whose argument holds for Adam: see
tests/test_adamw_parity.py): the kernel does torch's for-loop operations in float32 (float64 for
float64), with the step size, bias corrections and decay computed in float64 and rounded once,
where the for-loop rounds the Python-float scalars once too; the differences are an ulp or two per
step (FMA contraction on the GPU, the order of ``lr / bc1``), and Adam's normalized update keeps
them from growing. bf16 is compared with the torch path (torch's CPU fused Adam: float32 math,
rounded once to bf16 per step, as the kernel) within BF16 below.
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
import itertools
import math
import pickle

import torch
import torch.optim.lr_scheduler as stock
from conftest import TRAJ_TOL
from fused_lr.kernels import adamw as K

import fused_lr
import fused_lr.lr_scheduler as fused
from fused_lr import engine

# bf16 kernel vs the torch path: both compute in float32 and round once per step to bf16, but the
# float32 results may differ by an ulp (operation order), which flips a bf16 rounding now and then
# (one bf16 ulp, 2**-8 relative); such flips feed back through the moments and random-walk over
# the steps: bound 8 bf16 ulp of the tensor's scale.
BF16 = dict(scaled=8 * 2**-8)
KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
PAIRS = {"adamw": (torch.optim.AdamW, fused_lr.FusedAdamW), "adam": (torch.optim.Adam, fused_lr.FusedAdam)}
SHAPES = [(), (1,), (127,), (1025,), (3, 5)]
STEPS = 12
NONE_GRAD_STEP = 5  # parameter 1 gets no gradient on this step
UNFREEZE_STEP = 7  # parameter 4 has no gradient before this step: its bias corrections start late


def check_close(a, b, tol, what):
    if a.is_complex():
        a, b = torch.view_as_real(a.detach()), torch.view_as_real(b.detach())
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    if "scaled" in tol:
        bound = tol["scaled"] * max(b.abs().max().item() if b.numel() else 0.0, 1.0)
        diff = (a - b).abs().max().item() if a.numel() else 0.0
        assert diff <= bound, f"{what}: max |diff| {diff:.3e} beyond {bound:.3e}"
        return
    if not torch.allclose(a, b, **tol):
        raise AssertionError(f"{what}: max |diff| {(a - b).abs().max().item():.3e} beyond {tol}")


def make_params(dtype, seed=0, complex_param=True):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]
    if complex_param:  # updated through its real view, as torch's Adam
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        ps.append(torch.nn.Parameter(torch.randn(4, generator=g, dtype=cdtype)))
    return ps


def groups(ps, wd):
    """Two groups with their own lr / betas / eps (and weight decay, when the run uses any)."""
    g1 = dict(params=ps[3:], lr=3e-3, betas=(0.8, 0.99), eps=1e-6)
    if wd:
        g1["weight_decay"] = 0.05
    return [dict(params=ps[:3]), g1]


def grads_for(step, ps):
    g = torch.Generator().manual_seed(100 + step)
    out = [torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) if not p.is_complex()
           else torch.randn(p.shape, generator=g, dtype=p.dtype) for p in ps]
    if step == NONE_GRAD_STEP:
        out[1] = None
    if step < UNFREEZE_STEP:
        out[4] = None
    return out


def _set(ps, gs):
    for p, g in zip(ps, gs):
        p.grad = None if g is None else g.clone()


class CountLaunches:
    """Counts adamw_kernel launches (the interpreter's grid-indexing entry point) and records the
    ``ALIGNED`` argument of each."""

    def __init__(self):
        self.n = 0
        self.aligned = []
        self._orig = type(K.adamw_kernel).__getitem__

    def __enter__(self):
        counter = self

        def getitem(fn, grid):
            launch = counter._orig(fn, grid)
            if fn is not K.adamw_kernel:
                return launch
            counter.n += 1

            def run(*args, **kwargs):
                counter.aligned.append(kwargs.get("ALIGNED"))
                return launch(*args, **kwargs)

            return run

        type(K.adamw_kernel).__getitem__ = getitem
        return self

    def __exit__(self, *exc):
        type(K.adamw_kernel).__getitem__ = self._orig


def compare(refs, ref_opt, ps, opt, tol, what):
    for i, (p, q) in enumerate(zip(refs, ps)):
        check_close(q, p, tol, f"{what}: param {i}")
        sa, sb = ref_opt.state.get(p, {}), opt.state.get(q, {})
        for key in KEYS:
            a, b = sa.get(key), sb.get(key)
            assert (a is None) == (b is None), f"{what}: param {i} {key} presence {a is not None} vs {b is not None}"
            if a is not None:
                check_close(b, a, tol, f"{what}: param {i} {key}")
        if "step" in sb:
            s = sb["step"]
            assert s.dtype == torch.float32 and s.dim() == 0 and s.device == q.device, f"{what}: param {i} step {s!r}"


SCHEDULERS = {
    "step": (lambda o: stock.StepLR(o, 4, 0.5), lambda o: fused.StepLR(o, 4, 0.5)),
    "cosine": (lambda o: stock.CosineAnnealingLR(o, 6, 1e-4), lambda o: fused.CosineAnnealingLR(o, 6, 1e-4)),
    # Group 0 on cosine, group 1 on a constant factor, in one launch: stock's per-group form is
    # LambdaLR with per-group lambdas, which give the same LRs.
    "per_group": (lambda o: stock.LambdaLR(o, [lambda e: (1 + math.cos(math.pi * e / 10)) / 2, lambda e: 0.5 if e < 5 else 1.0]),
                  lambda o: fused.PerGroupLR(o, [fused.CosineAnnealingLR(o, 10), fused.ConstantLR(o, 0.5, total_iters=5)])),
    # betas[0] cycled inversely to the LR (torch's CyclicLR / OneCycleLR on Adam): the kernel takes
    # beta1 from the schedule's momentum row at each step.
    "onecycle": (lambda o: stock.OneCycleLR(o, [0.02, 0.01], total_steps=16, three_phase=True),
                 lambda o: fused.OneCycleLR(o, [0.02, 0.01], total_steps=16, three_phase=True)),
    "cyclic": (lambda o: stock.CyclicLR(o, 1e-3, [0.02, 0.01], step_size_up=3, step_size_down=4, mode="triangular2",
                                        base_momentum=0.8, max_momentum=0.95),
               lambda o: fused.CyclicLR(o, 1e-3, [0.02, 0.01], step_size_up=3, step_size_down=4, mode="triangular2",
                                        base_momentum=0.8, max_momentum=0.95)),
}


def run(name, opts, dtype=torch.float32, sched="step", steps=STEPS, group_fn=None):
    """Stock for-loop, stock foreach, the torch path and the kernel, compared after every step;
    one kernel launch per dtype per step; every group's LR and beta1 as stock's. ``group_fn(ps)``:
    the param groups (default ``groups``)."""
    stock_cls, fused_cls = PAIRS[name]
    wd = opts.get("weight_decay", 0.0)
    group_fn = group_fn or (lambda ps: groups(ps, wd))
    ref = make_params(dtype, complex_param=dtype != torch.bfloat16)
    pa, pf, pt, pk = (copy.deepcopy(ref) for _ in range(4))
    kw = dict(lr=0.01, **opts)
    oa = stock_cls(group_fn(pa), foreach=False, **kw)
    of = stock_cls(group_fn(pf), foreach=True, **kw)
    ot = fused_cls(group_fn(pt), backend="torch", **kw)
    ok = fused_cls(group_fn(pk), backend="triton", **kw)
    assert ok.implementation == "triton" and ot.implementation == "torch"
    make_stock, make_fused = SCHEDULERS[sched]
    scheds = [make_stock(oa), make_stock(of), make_fused(ot), make_fused(ok)]
    tol = BF16 if dtype == torch.bfloat16 else TRAJ_TOL[dtype]
    for t in range(steps):
        gs = grads_for(t, ref)
        for ps in (pa, pf, pt):
            _set(ps, gs)
        _set(pk, gs)
        used = [g["lr"] for g in oa.param_groups]
        for o in (oa, of, ot):
            o.step()
        with CountLaunches() as launches:
            ok.step()
        dtypes = {(q.real if q.is_complex() else q).dtype for q, g in zip(pk, gs) if g is not None}
        assert launches.n == len(dtypes), f"step {t}: {launches.n} launches, expected one per dtype {dtypes}"
        got = ok.lr_tensor.tolist()
        assert all(abs(x - y) <= 1e-12 * abs(y) for x, y in zip(got, used)), f"step {t}: lr used {got} vs stock {used}"
        for s in scheds:
            s.step()
        what = f"{name} {opts} {dtype} {sched} step {t}"
        compare(pt, ot, pk, ok, tol, f"{what}: triton vs torch path")
        if dtype != torch.bfloat16:
            compare(pa, oa, pk, ok, tol, f"{what}: triton vs stock for-loop")
            compare(pf, of, pk, ok, tol, f"{what}: triton vs stock foreach")
        for ga, gk in zip(oa.param_groups, ok.param_groups):
            assert abs(ga["lr"] - gk["lr"]) <= 1e-12 * ga["lr"], f"{what}: lr {gk['lr']} vs {ga['lr']}"
            assert abs(ga["betas"][0] - gk["betas"][0]) <= 1e-12, f"{what}: beta1 {gk['betas']} vs {ga['betas']}"
    return ok


COMBOS = [dict(amsgrad=a, maximize=m, weight_decay=wd)
          for a, m, wd in itertools.product((False, True), (False, True), (0.0, 0.1))]


def combo_groups(offset):
    """One group per parameter, parameter i with option combination COMBOS[(i + offset) % 8] and
    its own LR: every combination in one launch (the kernel reads them per group)."""
    def make(ps):
        return [dict(params=[p], lr=0.01 * (1 + 0.25 * i), **COMBOS[(i + offset) % len(COMBOS)]) for i, p in enumerate(ps)]
    return make


def case_combos():
    """Every (amsgrad, maximize, weight_decay) combination as per-parameter groups of one optimizer
    (each parameter size meets two or three of them), AdamW and Adam, fp32 twice and fp64 once."""
    for name in PAIRS:
        for dtype, offset in ((torch.float32, 0), (torch.float32, 3), (torch.float64, 6)):
            run(name, {}, dtype, group_fn=combo_groups(offset))


def case_schedulers():
    """Per-group schedules in one launch and the momentum-cycling schedulers (betas[0] cycled)."""
    for name, sched in (("adamw", "per_group"), ("adamw", "onecycle"), ("adam", "cosine"), ("adam", "cyclic")):
        run(name, dict(amsgrad=True, weight_decay=0.1), sched=sched, steps=16 if sched != "cosine" else STEPS)


def case_bf16():
    for name in PAIRS:
        run(name, dict(amsgrad=True, weight_decay=0.1), torch.bfloat16)


def case_amp():
    """GradScaler.step(kernel optimizer) vs GradScaler.step(stock for-loop): a skipped *first* step
    and a later skipped step leave parameters, moments and ``step`` bit for bit as before (the
    kernel stores nothing and does not advance ``step``; stock creates no state on a skipped first
    step, fused_lr keeps torch's initial state: zeros and step 0, which state_dict reports as is),
    and the steps between match stock to TRAJ_TOL. Power-of-two scales: both unscale exactly."""
    for name in PAIRS:
        stock_cls, fused_cls = PAIRS[name]
        ref = make_params(torch.float32, complex_param=False)
        pa, pk = copy.deepcopy(ref), copy.deepcopy(ref)
        oa = stock_cls(pa, lr=0.01, weight_decay=0.1, amsgrad=True, foreach=False)
        ok = fused_cls(pk, lr=0.01, weight_decay=0.1, amsgrad=True, backend="triton")
        sa, sk = stock.StepLR(oa, 3, 0.5), fused.StepLR(ok, 3, 0.5)
        sca = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
        sck = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=2)
        for t in range(7):
            poison = t in (0, 4)
            before = [(p.detach().clone(), {k: v.clone() for k, v in ok.state.get(p, {}).items()}) for p in pk]
            g = torch.Generator().manual_seed(500 + t)
            xs = [torch.randn(p.shape, generator=g) for p in ref]
            if poison:
                xs[2].view(-1)[0] = float("inf")
            for ps, opt, sc in ((pa, oa, sca), (pk, ok, sck)):
                opt.zero_grad()
                sc.scale(sum((p * x).sum() for p, x in zip(ps, xs))).backward()
                sc.step(opt)
                sc.update()
            sa.step()
            sk.step()
            if poison:
                for i, (p, (value, state)) in enumerate(zip(pk, before)):
                    assert torch.equal(p.detach(), value), f"{name} step {t}: a skipped step changed param {i}"
                    now = ok.state.get(p, {})
                    if t == 0:  # torch's initial state (stock has none yet)
                        assert all(float(now[k].abs().max()) == 0 for k in now if now[k].numel()), f"param {i}: {now}"
                        assert float(now["step"]) == 0
                    else:
                        assert sorted(now) == sorted(state)
                        for k, v in state.items():
                            assert torch.equal(now[k], v), f"{name} step {t}: a skipped step changed {k} of param {i}"
            else:
                compare(pa, oa, pk, ok, TRAJ_TOL[torch.float32], f"{name} amp step {t}")
        assert float(ok.state[pk[0]]["step"]) == float(oa.state[pa[0]]["step"]) == 5  # 7 steps, 2 skipped


def _roundtrip(*objs):
    buf = io.BytesIO()
    torch.save([o.state_dict() for o in objs], buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def case_resume():
    """state_dicts interchange with stock mid-schedule, both ways: stock (for-loop) -> kernel and
    kernel -> stock at step 5 of a cosine schedule (optimizer and scheduler state through
    torch.save), then both continue beside an uninterrupted stock run."""
    for name in PAIRS:
        stock_cls, fused_cls = PAIRS[name]
        ref = make_params(torch.float32, complex_param=False)
        kw = dict(lr=0.01, amsgrad=True, weight_decay=0.1)

        def make(cls, ps, **extra):
            opt = cls(groups(ps, True), **kw, **extra)
            mod = fused if issubclass(cls, fused_lr.optim.FusedOptimizer) else stock
            return opt, mod.CosineAnnealingLR(opt, 8, 1e-4)

        for first, second in ((stock_cls, fused_cls), (fused_cls, stock_cls)):
            extra = {c: (dict(backend="triton") if c is fused_cls else dict(foreach=False)) for c in (first, second)}
            p_ref, p1, p2 = (copy.deepcopy(ref) for _ in range(3))
            o_ref, s_ref = make(stock_cls, p_ref, foreach=False)
            o1, s1 = make(first, p1, **extra[first])
            o2, s2 = make(second, p2, **extra[second])
            for t in range(10):
                if t == 5:
                    sd_opt, sd_sched = _roundtrip(o1, s1)
                    with torch.no_grad():
                        for a, b in zip(p1, p2):
                            b.copy_(a)
                    o2.load_state_dict(sd_opt)
                    s2.load_state_dict(sd_sched)
                live = (p1, o1, s1) if t < 5 else (p2, o2, s2)
                gs = grads_for(t, ref)
                for ps, o, s in ((p_ref, o_ref, s_ref), live):
                    _set(ps, gs)
                    o.step()
                    s.step()
                what = f"{name} {first.__name__} -> {second.__name__} step {t}"
                compare(p_ref, o_ref, live[0], live[1], TRAJ_TOL[torch.float32], what)


def case_layouts():
    """tests/_layout_cases.py with Adam on the kernel: slices, as_strided views, transposed,
    channels_last and 0-dim parameters with gradients in every layout (rotating), nothing outside
    a parameter written, parameters and state vs stock's for-loop; dense layouts stay in the kernel
    (one launch per step) with moments in the parameter's strides."""
    import _layout_cases as L

    def close(actual, expected, what):
        check_close(actual, expected, TRAJ_TOL[torch.float32], what)

    for name in PAIRS:
        stock_cls, fused_cls = PAIRS[name]

        def triton(groups, fused_cls=fused_cls, **kw):
            opt = fused_cls(groups, backend="triton", **kw)
            assert opt.implementation == "triton"
            return opt

        config = dict(weight_decay=0.1, amsgrad=True, maximize=True)
        L.run(triton, torch.float32, "rotate", config, close, stock=stock_cls, keys=KEYS)
        with CountLaunches() as launches:
            _, _, b, ob = L.run(triton, torch.float32, "like_param", config, close, names=L.DENSE, stock=stock_cls,
                                keys=KEYS)
        assert launches.n == L.STEPS, f"{launches.n} launches in {L.STEPS} steps: a dense layout left the kernel"
        for pname, p in zip(b.names, b.params):
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                assert ob.state[p][key].stride() == p.stride(), f"{pname}: {key} strides"


def case_misaligned():
    """An aligned and a misaligned (4 bytes past a 16-byte boundary) float32 parameter in one
    dtype: two kernel launches per step, the aligned tensor's with ALIGNED=True (the vector path)
    and the misaligned one's with ALIGNED=False, sharing the dtype's tables; each ``step`` count
    advances once a step (the finishing programs follow the chunks: kernels/adamw.py ``_finish``),
    parameters and state vs stock's for-loop every step, AMP-skipped steps included."""
    for name, (stock_cls, fused_cls) in PAIRS.items():
        torch.manual_seed(3)
        # 1300 and 700 elements: 3 and 2 chunks of 512 (the launch config of this file's main).
        a0, b0 = torch.randn(1300), torch.randn(700)
        storage = torch.zeros(701)
        storage[1:] = b0
        ours = [torch.nn.Parameter(a0.clone()), torch.nn.Parameter(storage[1:])]
        assert ours[0].data_ptr() % 16 == 0 and ours[1].data_ptr() % 16 == 4
        refs = [torch.nn.Parameter(a0.clone()), torch.nn.Parameter(b0.clone())]
        kw = dict(lr=0.01, weight_decay=0.1, amsgrad=True)
        ref_opt, opt = stock_cls(refs, foreach=False, **kw), fused_cls(ours, backend="triton", **kw)
        with CountLaunches() as launches:
            for step in range(5):
                gs = [torch.randn_like(p) for p in refs]
                _set(refs, gs)
                _set(ours, gs)
                if step == 2:  # AMP found an inf: nothing changes, the step counts included
                    opt.step(grad_scale=torch.ones(1), found_inf=torch.ones(1))
                else:
                    ref_opt.step()
                    opt.step()
                compare(refs, ref_opt, ours, opt, TRAJ_TOL[torch.float32], f"{name} misaligned, step {step}")
        assert launches.aligned == [True, False] * 5, f"{name}: launches {launches.aligned} in 5 steps"


def case_optim_db():
    """tests/_optim_db_cases.py on the kernel: every AdamW and Adam input of torch's optimizer test
    data (3 steps) and every error input. The data comes pickled from the parent
    (FUSED_LR_OPTIM_DB: a file path holding {name: data})."""
    import _optim_db_cases as db

    with open(os.environ["FUSED_LR_OPTIM_DB"], "rb") as f:
        datas = pickle.load(f)
    for name, data in datas.items():
        assert db.run_optim_inputs("triton", data, steps=3) == len(data["inputs"]) == 15, name
        assert db.check_error_inputs("triton", data) == 12, name


def case_bad_input():
    """A bad parameter among good ones: the error names it, raised before anything is changed."""
    for name in PAIRS:
        _, fused_cls = PAIRS[name]
        ps = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(1).expand(3))]
        for p in ps:
            p.grad = torch.ones(3)
        opt = fused_cls([dict(params=ps[:1]), dict(params=ps[1:])], lr=0.1, backend="triton")
        try:
            opt.step()
        except RuntimeError as e:
            assert "more than one element of the written-to tensor" in str(e), e
        else:
            raise AssertionError("a parameter whose elements share memory was updated")
        assert torch.equal(ps[0].detach(), torch.ones(3)) and not opt.state, "something changed before the error"


def case_clip():
    """max_grad_norm on the kernel (norm kernels + the clipped update) vs clip_grad_norm_ + stock's
    for-loop, 2-norm and inf-norm, with a None grad on one step; the norm to a few ulp."""
    for name, norm_type, max_norm in (("adamw", 2.0, 33.5), ("adam", float("inf"), 3.5)):  # straddled
        stock_cls, fused_cls = PAIRS[name]
        ref = make_params(torch.float32, complex_param=False)
        pa, pk = copy.deepcopy(ref), copy.deepcopy(ref)
        oa = stock_cls(groups(pa, True), lr=0.01, amsgrad=True, weight_decay=0.1, foreach=False)
        ok = fused_cls(groups(pk, True), lr=0.01, amsgrad=True, weight_decay=0.1, backend="triton",
                       max_grad_norm=max_norm, norm_type=norm_type)
        clipped = 0
        for t in range(10):
            gs = grads_for(t, ref)
            _set(pa, gs)
            _set(pk, gs)
            total = torch.nn.utils.clip_grad_norm_([p for p in pa if p.grad is not None], max_norm, norm_type)
            oa.step()
            ok.step()
            clipped += bool(total > max_norm)
            check_close(ok.last_grad_norm, total, dict(rtol=8 * 2**-23, atol=0.0), f"{name} norm step {t}")
            compare(pa, oa, pk, ok, TRAJ_TOL[torch.float32], f"{name} clip {norm_type} step {t}")
        assert 0 < clipped < 10, f"{name}: clipping active on {clipped}/10 steps"


def case_compile():
    """FusedAdamW(backend="triton") inside torch.compile (aot_eager): the update is the kernel
    through the custom op (counted), the scheduler step traced as torch ops; eager kernel steps
    before and after; every step as stock eager; no recompile after the warm-up. Twice: amsgrad
    with StepLR, and without amsgrad (a state list the groups do not keep) with OneCycleLR cycling
    betas[0] every step."""
    from fused_lr.engine import compiled as C

    calls = []
    update = C.multi_tensor_update
    C.multi_tensor_update = lambda *a, **k: (calls.append(1), update(*a, **k))[1]
    try:
        for name, amsgrad in itertools.product(PAIRS, (True, False)):
            stock_cls, fused_cls = PAIRS[name]
            torch._dynamo.reset()
            torch.manual_seed(0)
            ma = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
            mb = copy.deepcopy(ma)
            oa = stock_cls(ma.parameters(), lr=0.01, weight_decay=0.1, amsgrad=amsgrad, foreach=False)
            ob = fused_cls(mb.parameters(), lr=0.01, weight_decay=0.1, amsgrad=amsgrad, backend="triton")
            if amsgrad:
                sa, sb = stock.StepLR(oa, 3, 0.5), fused.StepLR(ob, 3, 0.5)
            else:
                sa, sb = stock.OneCycleLR(oa, 0.02, total_steps=16), fused.OneCycleLR(ob, 0.02, total_steps=16)

            def step(x, y, mb=mb, ob=ob, sb=sb):
                ob.zero_grad()
                torch.nn.functional.mse_loss(mb(x), y).backward()
                ob.step()
                sb.step()

            compiled = torch.compile(step, backend="aot_eager")
            before = len(calls)
            for t in range(11):
                g = torch.Generator().manual_seed(t)
                x, y = torch.randn(6, 4, generator=g), torch.randn(6, 2, generator=g)
                oa.zero_grad()
                torch.nn.functional.mse_loss(ma(x), y).backward()
                oa.step()
                sa.step()
                if t < 2 or t == 10:
                    step(x, y)
                elif t < 4:
                    compiled(x, y)
                else:
                    with torch.compiler.set_stance("fail_on_recompile"):
                        compiled(x, y)
                compare(list(ma.parameters()), oa, list(mb.parameters()), ob, TRAJ_TOL[torch.float32],
                        f"{name} amsgrad={amsgrad} compiled step {t}")
                assert ob.param_groups[0]["betas"] == oa.param_groups[0]["betas"], f"{name} step {t}: betas"
            assert len(calls) - before == 8, f"{name}: {len(calls) - before} custom-op updates in 8 compiled steps"
    finally:
        C.multi_tensor_update = update
        torch._dynamo.reset()


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}


if __name__ == "__main__":
    assert engine.interpreting(), "the kernels are not interpreted"
    with engine.override_launch_config(BLOCK_SIZE=128, CHUNK_BLOCKS=4):
        for case in sys.argv[1:]:
            CASES[case]()
            print(f"{case}: ok", flush=True)

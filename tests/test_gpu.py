"""GPU-only checks (skipped without CUDA): parity on the device, no host syncs, CUDA-graph capture.

Run them wherever a GPU is available: `pytest tests/test_gpu.py`.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import assert_close

import fused_lr
import fused_lr.lr_scheduler as fused

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# On CUDA, torch's fused SGD kernel (which the torch path uses) reads its tensor LR as float32, while
# the stock for-loop reference multiplies by a float64 Python LR: the LR itself differs by up to
# 2^-24 relative, on top of FMA contraction (~1-2 ulp per step); over 30 steps ~1e-5 relative.
CUDA_FP32_TOL = dict(rtol=2e-5, atol=2e-6)

BACKENDS = ["torch", "triton"]


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(33, 65), torch.nn.ReLU(), torch.nn.Linear(65, 7)).cuda()


def _sched_pairs():
    return {
        "step": (lambda o: stock.StepLR(o, 5, 0.5), lambda o: fused.StepLR(o, 5, 0.5)),
        "cosine": (lambda o: stock.CosineAnnealingLR(o, 8, 1e-3), lambda o: fused.CosineAnnealingLR(o, 8, 1e-3)),
        "lambda": (lambda o: stock.LambdaLR(o, lambda e: 0.95**e), lambda o: fused.LambdaLR(o, lambda e: 0.95**e)),
        # momentum cycled on the device (Triton path) / on the host (torch path)
        "onecycle": (lambda o: stock.OneCycleLR(o, 0.2, total_steps=40, three_phase=True),
                     lambda o: fused.OneCycleLR(o, 0.2, total_steps=40, three_phase=True)),
        "cyclic": (lambda o: stock.CyclicLR(o, 0.01, 0.1, step_size_up=4, mode="triangular2"),
                   lambda o: fused.CyclicLR(o, 0.01, 0.1, step_size_up=4, mode="triangular2")),
        "chained": (lambda o: stock.ChainedScheduler([stock.ConstantLR(o, 0.5, total_iters=3), stock.ExponentialLR(o, 0.9)]),
                    lambda o: fused.ChainedScheduler([fused.ConstantLR(o, 0.5, total_iters=3), fused.ExponentialLR(o, 0.9)])),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sched", list(_sched_pairs()))
def test_cuda_parity_with_stock(backend, sched):
    ma = _model()
    mb = copy.deepcopy(ma)
    oa = torch.optim.SGD(ma.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True, foreach=False)
    ob = fused_lr.FusedSGD(mb.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True, backend=backend)
    make_a, make_b = _sched_pairs()[sched]
    sa, sb = make_a(oa), make_b(ob)
    x = torch.randn(16, 33, device="cuda")
    for _ in range(30):
        for m, o, s in ((ma, oa, sa), (mb, ob, sb)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
            s.step()
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert_close(q, p, what=f"cuda {sched}", **CUDA_FP32_TOL)


def test_one_kernel_launch_per_step_on_the_triton_path():
    """opt.step() + sched.step() (per-iteration cosine) in steady state: exactly one update kernel,
    and the scheduler's one tiny counter increment (capturable: see the capture tests)."""
    m = _model()
    o = fused_lr.FusedSGD(m.parameters(), lr=0.1, momentum=0.9, backend="triton")
    assert o.implementation == "triton"
    s = fused.CosineAnnealingLR(o, T_max=10)
    m(torch.randn(16, 33, device="cuda")).sum().backward()
    for _ in range(3):
        o.step()
        s.step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            o.step()
            s.step()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 10 and sum("sgd_kernel" in k for k in kernels) == 5, kernels
    assert s._sched.pending == 1  # the last sched.step()'s LRs wait for the next kernel
    o.step()  # ...which writes them back (each group's first program)
    assert int(s.step_counter.item()) == s.last_epoch
    assert o.lr_tensor.tolist() == pytest.approx(s.get_last_lr(), rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_host_sync_in_steady_state(backend):
    m = _model()
    o = fused_lr.FusedSGD(m.parameters(), lr=0.1, momentum=0.9, backend=backend)
    s = fused.CosineAnnealingLR(o, T_max=10)
    x = torch.randn(16, 33, device="cuda")
    m(x).sum().backward()
    o.step()  # warm-up: creates momentum buffers
    s.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            o.zero_grad()  # set_to_none: new grad tensors, possibly new addresses (tables re-uploaded)
            m(x).square().mean().backward()
            o.step()
            s.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


GRAPH_CASES = [(b, s) for b in BACKENDS for s in ("step", "cosine")] + [
    # Momentum cycling in a graph needs the Triton path: the kernel computes the momentum from the
    # schedule; the torch path passes group["momentum"] as a host float, frozen at capture.
    ("triton", "onecycle"),
]


@pytest.mark.parametrize("backend,sched", GRAPH_CASES)
def test_cuda_graph_replays_follow_the_schedule(backend, sched):
    """Capture forward+backward+opt.step()+sched.step(); 30 replays == 30 eager steps; the device
    LR log recorded during the replays equals the eager one."""
    make = {
        "step": lambda o: fused.StepLR(o, 4, 0.5),
        "cosine": lambda o: fused.CosineAnnealingLR(o, 7, 1e-3),
        "onecycle": lambda o: fused.OneCycleLR(o, 0.2, total_steps=100),
    }[sched]
    m_eager = _model()
    m_graph = copy.deepcopy(m_eager)
    static_x = torch.randn(16, 33, device="cuda")

    o_e = fused_lr.FusedSGD(m_eager.parameters(), lr=0.1, momentum=0.9, backend=backend)
    s_e = make(o_e)
    o_g = fused_lr.FusedSGD(m_graph.parameters(), lr=0.1, momentum=0.9, backend=backend)
    s_g = make(o_g)

    def step(m, o, s):
        o.zero_grad(set_to_none=False)
        m(static_x).square().mean().backward()
        o.step()
        s.step()

    # Warm up on a side stream (torch's recipe), then capture one whole training step.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(m_eager, o_e, s_e)
            step(m_graph, o_g, s_g)
    torch.cuda.current_stream().wait_stream(side)
    o_e.start_lr_log(64)
    o_g.start_lr_log(64)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(m_graph, o_g, s_g)
    for _ in range(30):
        graph.replay()
        step(m_eager, o_e, s_e)
    torch.cuda.synchronize()
    # Capture records without running: both sides have now taken 3 + 30 steps.
    for p, q in zip(m_eager.parameters(), m_graph.parameters()):
        assert_close(q, p, what=f"graph vs eager {sched}", rtol=1e-6, atol=1e-7)
    assert_close(o_g.lr_tensor, o_e.lr_tensor, what="lr after replays", rtol=1e-12, atol=0.0)
    assert_close(o_g.lr_log(), o_e.lr_log(), what="LR log of the replays", rtol=1e-12, atol=0.0)
    assert o_e.lr_log().shape[0] == 30


@pytest.mark.parametrize("backend", BACKENDS)
def test_amp_and_clipping_no_host_sync_and_parity(backend):
    """GradScaler("cuda") + max_grad_norm: results vs torch's recipe (unscale_, clip_grad_norm_, step on
    the for-loop SGD), including a skipped first step; steady-state steps with no host sync."""
    ma = _model()
    mb = copy.deepcopy(ma)
    oa = torch.optim.SGD(ma.parameters(), lr=0.1, momentum=0.9, foreach=False)
    ob = fused_lr.FusedSGD(mb.parameters(), lr=0.1, momentum=0.9, backend=backend, max_grad_norm=0.5)
    sa, sb = stock.StepLR(oa, 4, 0.5), fused.StepLR(ob, 4, 0.5)
    sc_a, sc_b = (torch.amp.GradScaler("cuda", init_scale=2.0**10, growth_interval=3) for _ in range(2))
    x = torch.randn(16, 33, device="cuda")

    def step_b(poison):
        ob.zero_grad()
        loss = mb(x).square().mean() * (float("inf") if poison else 1.0)
        sc_b.scale(loss).backward()
        sc_b.step(ob)
        sc_b.update()
        sb.step()

    for t in range(12):
        poison = t in (0, 6)
        oa.zero_grad()
        loss = ma(x).square().mean() * (float("inf") if poison else 1.0)
        sc_a.scale(loss).backward()
        sc_a.unscale_(oa)
        total = torch.nn.utils.clip_grad_norm_(ma.parameters(), 0.5)
        sc_a.step(oa)
        sc_a.update()
        sa.step()
        if t < 2:
            step_b(poison)  # warm-up: buffers, plans, compiled kernels
        else:
            torch.cuda.set_sync_debug_mode("error")
            try:
                step_b(poison)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        if not poison:
            assert_close(ob.last_grad_norm, total, rtol=1e-5, atol=0.0, what=f"norm step {t}")
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert_close(q, p, what="amp + clip", **CUDA_FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_train_step_follows_stock_without_recompiling(backend):
    """torch.compile (inductor) of a whole training step with FusedSGD + CosineAnnealingLR on CUDA:
    after two warm-up calls no recompile across schedule boundaries, results as stock eager."""
    ma = _model()
    mb = copy.deepcopy(ma)
    oa = torch.optim.SGD(ma.parameters(), lr=0.1, momentum=0.9, foreach=False)
    ob = fused_lr.FusedSGD(mb.parameters(), lr=0.1, momentum=0.9, backend=backend)
    sa, sb = stock.CosineAnnealingLR(oa, 5, 1e-3), fused.CosineAnnealingLR(ob, 5, 1e-3)
    x = torch.randn(16, 33, device="cuda")
    torch._dynamo.reset()

    @torch.compile
    def step():
        ob.zero_grad()
        mb(x).square().mean().backward()
        ob.step()
        sb.step()

    for t in range(14):
        oa.zero_grad()
        ma(x).square().mean().backward()
        oa.step()
        sa.step()
        if t < 2:
            step()
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                step()
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert_close(q, p, what=f"compiled {backend}", **CUDA_FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", ["nesterov", "damped_max"])
def test_every_layout_on_cuda(backend, config):
    """tests/_layout_cases.py on CUDA: every parameter and gradient layout vs stock's for-loop, nothing
    outside a parameter written (the torch path updates what its fused kernel refuses through dense
    stand-ins; the Triton path walks dense layouts flat and hands the rest to the torch path)."""
    import _layout_cases as L

    def make(groups, **kw):
        return fused_lr.FusedSGD(groups, backend=backend, **kw)

    def close(actual, expected, what):
        assert_close(actual, expected, what=what, **CUDA_FP32_TOL)

    L.run(make, torch.float32, "rotate", L.CONFIGS[config], close, device="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_dense_parameters_cost_no_host_sync(backend):
    """Sliced and strided parameters (autograd-like gradients) in steady state: no host sync (the
    torch path's for-loop would read the LR on the host; the dense stand-ins do not)."""
    import _layout_cases as L

    world = L.World(torch.float32, device="cuda")
    opt = fused_lr.FusedSGD(L.groups(world), lr=0.1, momentum=0.9, backend=backend)
    sched = fused.CosineAnnealingLR(opt, T_max=10)
    for t in range(L.STEPS):
        world.set_grads([torch.randn(p.shape, device="cuda") for p in world.params], ["like_param"] * len(world.params))
        if t < 2:
            opt.step()
            sched.step()
            torch.cuda.synchronize()
            continue
        torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
            sched.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    world.check_untouched("steady state")


def _graph_pair(backend, sched_make):
    m_eager = _model()
    m_graph = copy.deepcopy(m_eager)
    o_e = fused_lr.FusedSGD(m_eager.parameters(), lr=0.1, momentum=0.9, backend=backend)
    o_g = fused_lr.FusedSGD(m_graph.parameters(), lr=0.1, momentum=0.9, backend=backend)
    return m_eager, m_graph, o_e, o_g, sched_make(o_e), sched_make(o_g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_graph_of_opt_step_only_with_eager_scheduler_steps(backend):
    """Only ``opt.step()`` captured, ``sched.step()`` eager after each replay: the replays follow
    the schedule (no LR frozen at capture, none advanced twice), as eager steps do."""
    m_e, m_g, o_e, o_g, s_e, s_g = _graph_pair(backend, lambda o: fused.CosineAnnealingLR(o, 7, 1e-3))
    x = torch.randn(16, 33, device="cuda")

    def grads(m):
        for p in m.parameters():
            p.grad = None if p.grad is None else p.grad.zero_()
        m(x).square().mean().backward()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for m, o, s in ((m_e, o_e, s_e), (m_g, o_g, s_g)):
                grads(m)
                o.step()
                s.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    grads(m_g)
    with torch.cuda.graph(graph):
        o_g.step()
    for _ in range(20):
        grads(m_g)
        graph.replay()
        s_g.step()
        grads(m_e)
        o_e.step()
        s_e.step()
    torch.cuda.synchronize()
    for p, q in zip(m_e.parameters(), m_g.parameters()):
        assert_close(q, p, what="opt.step graph vs eager", rtol=1e-6, atol=1e-7)
    # The device state, not only the host's floats: the same counter, the same LRs in the buffer.
    assert int(s_g.step_counter) == int(s_e.step_counter) == s_e.last_epoch
    assert_close(o_g.lr_tensor, o_e.lr_tensor, what="LR buffer, graph vs eager", rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_graph_recipe_with_grads_set_to_none_before_capture(backend):
    """torch's documented recipe: ``zero_grad(set_to_none=True)`` before capture, so the captured
    backward allocates new gradients (new addresses; the Triton path's grad table is uploaded by
    a copy node the plan owns); then replays match eager steps."""
    m_e, m_g, o_e, o_g, s_e, s_g = _graph_pair(backend, lambda o: fused.StepLR(o, 4, 0.5))
    static_x = torch.randn(16, 33, device="cuda")

    def step(m, o, s):
        m(static_x).square().mean().backward()
        o.step()
        s.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            for m, o, s in ((m_e, o_e, s_e), (m_g, o_g, s_g)):
                o.zero_grad(set_to_none=True)
                step(m, o, s)
    torch.cuda.current_stream().wait_stream(side)
    o_g.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(m_g, o_g, s_g)
    for _ in range(12):
        graph.replay()
        o_e.zero_grad(set_to_none=True)
        step(m_e, o_e, s_e)
    torch.cuda.synchronize()
    for p, q in zip(m_e.parameters(), m_g.parameters()):
        assert_close(q, p, what="set_to_none recipe graph vs eager", rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_error_if_nonfinite_under_capture_is_a_clear_error(backend):
    m = _model()
    o = fused_lr.FusedSGD(m.parameters(), lr=0.1, momentum=0.9, backend=backend, max_grad_norm=1.0,
                          error_if_nonfinite=True)
    m(torch.randn(4, 33, device="cuda")).sum().backward()
    o.step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="error_if_nonfinite=False"):
        with torch.cuda.graph(graph):
            o.step()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", BACKENDS)
def test_parameters_on_cuda1_with_cuda0_current(backend):
    """Launches go to the parameters' device, not the current one: cuda:1 parameters stepped with
    cuda:0 current match stock on cuda:1, and cuda:0 stays current."""
    torch.cuda.set_device(0)
    ma = _model().to("cuda:1")
    mb = copy.deepcopy(ma)
    oa = torch.optim.SGD(ma.parameters(), lr=0.1, momentum=0.9, foreach=False)
    ob = fused_lr.FusedSGD(mb.parameters(), lr=0.1, momentum=0.9, backend=backend, max_grad_norm=10.0)
    sa, sb = stock.CosineAnnealingLR(oa, 8), fused.CosineAnnealingLR(ob, 8)
    x = torch.randn(16, 33, device="cuda:1")
    for _ in range(10):
        for m, o, s in ((ma, oa, sa), (mb, ob, sb)):
            o.zero_grad()
            m(x).square().mean().backward()
            if o is oa:
                torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)
            o.step()
            s.step()
        assert torch.cuda.current_device() == 0
    torch.cuda.synchronize(1)
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert_close(q, p, what="cuda:1", **CUDA_FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stock_onecycle_momentum_changes_rebuild_nothing_and_never_sync(backend):
    """A stock OneCycleLR sets group["momentum"] every step: the Triton path rewrites its hyper
    table (no new plan), and no step syncs the host; parity with stock SGD."""
    ma = _model()
    mb = copy.deepcopy(ma)
    oa = torch.optim.SGD(ma.parameters(), lr=0.1, momentum=0.9, foreach=False)
    ob = fused_lr.FusedSGD(mb.parameters(), lr=0.1, momentum=0.9, backend=backend)
    sa = stock.OneCycleLR(oa, 0.2, total_steps=40)
    sb = stock.OneCycleLR(ob, 0.2, total_steps=40)
    x = torch.randn(16, 33, device="cuda")

    def step(m, o, s):
        o.zero_grad(set_to_none=False)
        m(x).square().mean().backward()
        o.step()
        s.step()

    for _ in range(3):
        step(ma, oa, sa)
        step(mb, ob, sb)
    plans = dict(ob._engine.cache._plans) if ob._engine.cache is not None else {}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(20):
            step(mb, ob, sb)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for _ in range(20):
        step(ma, oa, sa)
    if backend == "triton":
        assert dict(ob._engine.cache._plans) == plans, "a momentum change built a new plan"
    for p, q in zip(ma.parameters(), mb.parameters()):
        assert_close(q, p, what="stock OneCycleLR", **CUDA_FP32_TOL)


def test_warmup_compiles_what_later_steps_select():
    """After ``opt.warmup(amp=True)``, AMP steps and a misaligned gradient (a bucket view) compile
    nothing more: the variants were compiled up front."""
    from fused_lr.kernels import sgd as K

    def compiled():
        return sum(len(c[0]) for c in K.sgd_kernel.device_caches.values())

    m = _model()
    o = fused_lr.FusedSGD(m.parameters(), lr=0.1, momentum=0.9, backend="triton")
    x = torch.randn(16, 33, device="cuda")
    m(x).sum().backward()
    o.step()
    variants = o.warmup(amp=True)
    assert {v[2] for v in variants} == {True, False} and {v[3] for v in variants} == {True, False}, variants
    before = compiled()
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(2):
        o.zero_grad()
        scaler.scale(m(x).square().mean()).backward()
        scaler.step(o)
        scaler.update()
    p = next(m.parameters())
    g = torch.empty(p.numel() + 1, device="cuda")[1:].view_as(p)  # 4 bytes off the 16-byte alignment
    g.copy_(p.grad)
    p.grad = g
    o.step()
    torch.cuda.synchronize()
    assert compiled() == before, "a step compiled a variant warmup() should have compiled"
def test_bf16_hardware_conversion_matches_software_rounding_on_every_float32():
    """Compiled round_to_bf16 (cvt.rn.bf16.f32) vs round_to_bf16_software (what the interpreter
    runs) and vs torch's CUDA conversion, on all 2**32 float32 bit patterns: the same bits, except
    that a NaN only has to give a NaN (NaN bits differ between conversions)."""
    pytest.importorskip("triton")
    import _shape_kernels as SK

    n, block = 1 << 28, 1 << 12
    hw = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    sw = torch.empty_like(hw)
    for start in range(0, 1 << 32, n):
        x = torch.arange(start, start + n, dtype=torch.int64, device="cuda").to(torch.int32).view(torch.float32)
        SK.bf16_kernel[(n // block,)](x, hw, sw, n, BLOCK=block)
        nan = x.isnan()
        for name, got in (("hardware", hw), ("software", sw)):
            assert torch.equal(got.isnan(), nan), f"{name}: NaN-ness differs in [{start:#x}, {start + n:#x})"
        want = x.to(torch.bfloat16).view(torch.int16)
        for name, got in (("hardware", hw), ("software", sw)):
            bad = (got.view(torch.int16) != want) & ~nan
            assert not bool(bad.any()), f"{name}: {int(bad.sum())} bits differ from torch in [{start:#x}, {start + n:#x})"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unscale_branches_match_torch_division_on_cuda(dtype):
    """Compiled unscaling: the reciprocal branch (power-of-two scales) and the division branch
    (other scales) give the bits of torch's CUDA ``(g / scale) * clip``."""
    pytest.importorskip("triton")
    import _shape_kernels as SK
    import triton

    from fused_lr.engine import runtime

    info = torch.finfo(dtype)
    magnitudes = 2.0 ** torch.randint(-40, 40, (1 << 16,), device="cuda")
    edges = torch.tensor([0.0, info.tiny, info.tiny / 8, info.max, float("inf")], device="cuda", dtype=torch.float64)
    g = torch.cat([torch.randn(1 << 16, device="cuda", dtype=torch.float64) * magnitudes, edges]).to(dtype)
    powers = [2.0**k for k in (-126, -1, 0, 16, 127)]
    for scale_value in powers + [2.0**-127, 3.0, 0.1, 65535.0]:
        scale = torch.tensor([scale_value], dtype=torch.float32, device="cuda")
        clip = torch.tensor([0.37], dtype=torch.float64, device="cuda")
        out, exact = torch.empty_like(g), torch.zeros(1, dtype=torch.int8, device="cuda")
        SK.unscale_kernel[(1,)](g, scale, clip, out, exact, g.numel(), COMPUTE_DTYPE=runtime.triton_dtype(dtype),
                                BLOCK=triton.next_power_of_2(g.numel()))
        assert bool(exact) == (scale_value in powers), scale_value
        want = (g / scale.to(dtype)) * clip.to(dtype)
        bad = (out != want) & ~(out.isnan() & want.isnan())
        assert not bool(bad.any()), f"scale {scale_value}: {int(bad.sum())} elements differ from torch's division"


def test_few_chunks_get_smaller_chunks_on_cuda():
    """One 4M-element tensor: torch's 65536-element chunks would give 64 programs, fewer than the
    SMs; the launch takes smaller chunks (runtime.chunk_blocks) and still follows stock SGD."""
    from fused_lr.engine import plan as P
    from fused_lr.engine import runtime

    cfg = runtime.launch_config()
    sms = runtime.sm_count(torch.device("cuda"))
    blocks = runtime.chunk_blocks([4 << 20], sms, cfg)
    assert blocks < cfg["CHUNK_BLOCKS"] and len(P._chunks([4 << 20], cfg["BLOCK_SIZE"], blocks)) >= min(
        cfg["PROGRAMS_PER_SM"] * sms, (4 << 20) // (cfg["BLOCK_SIZE"] * cfg["MIN_CHUNK_BLOCKS"]))
    torch.manual_seed(0)
    pa = torch.nn.Parameter(torch.randn(4 << 20, device="cuda"))
    pb = torch.nn.Parameter(pa.detach().clone())
    oa = torch.optim.SGD([pa], lr=0.1, momentum=0.9, foreach=False)
    ob = fused_lr.FusedSGD([pb], lr=0.1, momentum=0.9, backend="triton")
    for _ in range(3):
        g = torch.randn_like(pa)
        pa.grad, pb.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert_close(pb, pa, what="4M-element tensor, smaller chunks", **CUDA_FP32_TOL)


# ---------------------------------------------------------------------------------------- AdamW / Adam

ADAM_PAIRS = {"adamw": (torch.optim.AdamW, fused_lr.FusedAdamW), "adam": (torch.optim.Adam, fused_lr.FusedAdam)}
ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
# CUDA_FP32_TOL's argument holds for Adam: torch's fused Adam (the torch path) reads its tensor LR
# as float32 and contracts into FMAs; the kernel rounds the float64 step size once; Adam's
# normalized update keeps the per-step differences (an ulp or two) from growing.


def _adam_compare(ma, oa, mb, ob, what):
    for i, (p, q) in enumerate(zip(ma.parameters(), mb.parameters())):
        assert_close(q, p, what=f"{what}: param {i}", **CUDA_FP32_TOL)
        for key in ADAM_KEYS:
            a, b = oa.state[p].get(key), ob.state[q].get(key)
            assert (a is None) == (b is None), f"{what}: param {i} {key} presence"
            if a is not None:
                assert_close(b.to(a.device), a, what=f"{what}: param {i} {key}", **CUDA_FP32_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sched", ["step", "cosine", "onecycle"])
@pytest.mark.parametrize("name", list(ADAM_PAIRS))
def test_adam_cuda_parity_with_stock(name, sched, backend):
    """FusedAdamW / FusedAdam (amsgrad, weight decay, two groups) + fused scheduler vs stock's
    for-loop + stock scheduler on CUDA, parameters and state; OneCycleLR cycles betas[0]."""
    stock_cls, fused_cls = ADAM_PAIRS[name]
    ma = _model()
    mb = copy.deepcopy(ma)

    def groups(m):
        ps = list(m.parameters())
        return [dict(params=ps[:2]), dict(params=ps[2:], lr=3e-3, weight_decay=0.05)]

    oa = stock_cls(groups(ma), lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=False)
    ob = fused_cls(groups(mb), lr=1e-2, weight_decay=0.1, amsgrad=True, backend=backend)
    assert ob.implementation == backend
    make_a, make_b = {
        "step": (lambda o: stock.StepLR(o, 5, 0.5), lambda o: fused.StepLR(o, 5, 0.5)),
        "cosine": (lambda o: stock.CosineAnnealingLR(o, 8, 1e-4), lambda o: fused.CosineAnnealingLR(o, 8, 1e-4)),
        "onecycle": (lambda o: stock.OneCycleLR(o, [0.02, 0.01], total_steps=40, three_phase=True),
                     lambda o: fused.OneCycleLR(o, [0.02, 0.01], total_steps=40, three_phase=True)),
    }[sched]
    sa, sb = make_a(oa), make_b(ob)
    x = torch.randn(16, 33, device="cuda")
    for _ in range(30):
        for m, o, s in ((ma, oa, sa), (mb, ob, sb)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
            s.step()
    _adam_compare(ma, oa, mb, ob, f"cuda {name} {sched} {backend}")
    for ga, gb in zip(oa.param_groups, ob.param_groups):
        assert gb["betas"][0] == pytest.approx(ga["betas"][0], rel=1e-12)


def test_adamw_one_launch_per_dtype_and_no_host_sync():
    """Steady state on the Triton path: one adamw_kernel per dtype per step (fp32 model + a bf16
    parameter: two), and the scheduler's one counter increment per step (capturable: see the
    capture tests); nothing else on the device, and no host sync."""
    m = _model()
    extra = torch.nn.Parameter(torch.randn(300, device="cuda", dtype=torch.bfloat16))
    o = fused_lr.FusedAdamW([*m.parameters(), extra], lr=1e-3, amsgrad=True, backend="triton")
    s = fused.CosineAnnealingLR(o, T_max=10)
    x = torch.randn(16, 33, device="cuda")

    def step():
        m(x).square().mean().backward()
        extra.grad = torch.ones_like(extra)
        o.step()
        s.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(4):
            o.step()
            s.step()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 12 and sum("adamw_kernel" in k for k in kernels) == 8, kernels
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            o.zero_grad()
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert float(o.state[extra]["step"]) == 3 + 4 + 4


def test_adamw_misaligned_gradient_splits_the_launch_and_matches_stock():
    """A gradient 4 bytes off the 16-byte alignment (as a DDP bucket view can be): two adamw_kernel
    launches per step (the aligned tensors' on the vector path), every ``step`` advanced once a
    step, parameters and state as stock's for-loop."""
    ma = _model()
    mb = copy.deepcopy(ma)
    oa = torch.optim.AdamW(ma.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=False)
    ob = fused_lr.FusedAdamW(mb.parameters(), lr=1e-2, weight_decay=0.1, amsgrad=True, backend="triton")
    x = torch.randn(16, 33, device="cuda")

    def misalign(m):
        p = next(m.parameters())
        g = torch.empty(p.numel() + 1, device="cuda")[1:].view_as(p)
        g.copy_(p.grad)
        p.grad = g

    for _ in range(6):
        for m, o in ((ma, oa), (mb, ob)):
            o.zero_grad()
            m(x).square().mean().backward()
            misalign(m)
            o.step()
    _adam_compare(ma, oa, mb, ob, "misaligned gradient")
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        ob.step()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert sum("adamw_kernel" in k for k in kernels) == 2, kernels
    assert all(float(ob.state[p]["step"]) == 7 for p in mb.parameters())


@pytest.mark.parametrize("backend,sched", [("torch", "step"), ("triton", "step"), ("triton", "onecycle")])
def test_adamw_cuda_graph_replays_cross_schedule_boundaries(backend, sched):
    """Capture forward+backward+opt.step()+sched.step() with FusedAdamW; 30 replays (StepLR(4):
    seven boundaries; OneCycleLR: betas[0] cycled by the kernel) == 30 eager steps, parameters,
    moments, step counts and the device LR log."""
    make = {"step": lambda o: fused.StepLR(o, 4, 0.5), "onecycle": lambda o: fused.OneCycleLR(o, 0.01, total_steps=100)}[sched]
    m_eager = _model()
    m_graph = copy.deepcopy(m_eager)
    static_x = torch.randn(16, 33, device="cuda")
    o_e = fused_lr.FusedAdamW(m_eager.parameters(), lr=1e-2, amsgrad=True, backend=backend, capturable=True)
    o_g = fused_lr.FusedAdamW(m_graph.parameters(), lr=1e-2, amsgrad=True, backend=backend, capturable=True)
    s_e, s_g = make(o_e), make(o_g)

    def step(m, o, s):
        o.zero_grad(set_to_none=False)
        m(static_x).square().mean().backward()
        o.step()
        s.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(m_eager, o_e, s_e)
            step(m_graph, o_g, s_g)
    torch.cuda.current_stream().wait_stream(side)
    o_e.start_lr_log(64)
    o_g.start_lr_log(64)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(m_graph, o_g, s_g)
    for _ in range(30):
        graph.replay()
        step(m_eager, o_e, s_e)
    torch.cuda.synchronize()
    for i, (p, q) in enumerate(zip(m_eager.parameters(), m_graph.parameters())):
        assert_close(q, p, what=f"graph vs eager {sched} param {i}", rtol=1e-6, atol=1e-7)
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert_close(o_g.state[q][key], o_e.state[p][key], what=f"{key} {i}", rtol=1e-6, atol=1e-7)
        assert float(o_g.state[q]["step"]) == float(o_e.state[p]["step"]) == 33
    assert_close(o_g.lr_log(), o_e.lr_log(), what="LR log of the replays", rtol=1e-12, atol=0.0)
    assert o_e.lr_log().shape[0] == 30

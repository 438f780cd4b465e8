"""torch.compile (CPU, torch path): a compiled training step with FusedSGD + a fused_lr scheduler.

The LR is a device tensor read inside the graph, so crossing a schedule boundary changes data, not
a guard: after the warm-up steps (the first creates the momentum buffers, the second turns the
scheduler's step count into a dynamic int) the rest of the run must not recompile, which
``torch.compiler.set_stance("fail_on_recompile")`` enforces. Every step is compared with stock
torch.optim.SGD + the stock scheduler run eagerly.

Backend: "aot_eager" traces through AOTAutograd, functionalization and fake tensors as inductor
(torch.compile's default) does, without inductor's C++ compile time (~25 s for the first graph on 2
cores, too slow for this suite; the inductor runs of the same tests are in docs/torch_compile.md).
It catches what the "eager" backend does not: ``torch._fused_sgd_`` has no fake implementation in
torch 2.13 (FusedSGD now runs torch's foreach algorithm when traced), and in-place writes to 0-dim
float64 CPU tensors were dropped from the graph once ``last_epoch`` had become a dynamic int
(ReduceLROnPlateau's best metric; now a 1-element tensor).

Tolerance: TRAJ_TOL[float32] (tests/conftest.py). Under compile the update runs torch's foreach
algorithm (``p += grad * -lr``), which rounds ``grad * lr`` once more than the for-loop's
``p.add_(grad, alpha=-lr)``: ~1 ulp per step, the case conftest's bound is argued for.
"""

from __future__ import annotations

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import TRAJ_TOL, assert_close, assert_lrs_close

import fused_lr
import fused_lr.lr_scheduler as fused

WARMUP = 2  # steps allowed to compile; the rest may not recompile
STEPS = 14
OPT_KW = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch: dynamo's caches (and recompile limit) are per code object."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))


def _groups(model):
    return [dict(params=model[0].parameters()), dict(params=model[2].parameters(), lr=0.05)]


def _batch(t):
    g = torch.Generator().manual_seed(t)
    return torch.randn(6, 4, generator=g), torch.randn(6, 2, generator=g)


BATCHES = [_batch(t) for t in range(STEPS)]


def _sequential(mod, opt):
    warm = mod.LinearLR(opt, start_factor=0.1, total_iters=3)
    cos = mod.CosineAnnealingLR(opt, T_max=6, eta_min=1e-3)
    return mod.SequentialLR(opt, [warm, cos], milestones=[3])


# Every schedule crosses at least two boundaries after the warm-up steps.
SCHEDULES = {
    "step": lambda mod, opt: mod.StepLR(opt, step_size=4, gamma=0.5),
    "cosine": lambda mod, opt: mod.CosineAnnealingLR(opt, T_max=5, eta_min=1e-3),  # past T_max too
    "multistep": lambda mod, opt: mod.MultiStepLR(opt, milestones=[5, 8, 11], gamma=0.5),
    "lambda_device": lambda mod, opt: mod.LambdaLR(opt, lr_lambda=lambda e: 0.9**e),
    "sequential": _sequential,
    "plateau": lambda mod, opt: mod.ReduceLROnPlateau(opt, patience=1, factor=0.5),
}


def _loss(model, t):
    return torch.nn.functional.mse_loss(model(BATCHES[t][0]), BATCHES[t][1])


def _compare(model_a, opt_a, model_b, opt_b, what):
    tol = TRAJ_TOL[torch.float32]
    for i, (p, q) in enumerate(zip(model_a.parameters(), model_b.parameters())):
        assert_close(q, p, what=f"{what}: param {i}", **tol)
        assert_close(opt_b.state[q]["momentum_buffer"], opt_a.state[p]["momentum_buffer"], what=f"{what}: buffer {i}", **tol)
    assert_lrs_close([float(g["lr"]) for g in opt_b.param_groups], [float(g["lr"]) for g in opt_a.param_groups], what)


def _stock_step(model, opt, sched, t, plateau):
    opt.zero_grad()
    loss = _loss(model, t)
    loss.backward()
    opt.step()
    # A metric that stalls, so ReduceLROnPlateau does reduce within the run.
    sched.step(float(loss.detach()) if t < 4 else 1.0) if plateau else sched.step()


@pytest.mark.parametrize("key", list(SCHEDULES))
def test_compiled_train_step_follows_stock_without_recompiling(key):
    plateau = key == "plateau"
    ma, mb = _model(), _model()
    oa = torch.optim.SGD(_groups(ma), foreach=False, **OPT_KW)
    ob = fused_lr.FusedSGD(_groups(mb), **OPT_KW)
    sa, sb = SCHEDULES[key](stock, oa), SCHEDULES[key](fused, ob)

    @torch.compile(backend="aot_eager")
    def train_step(x, y, stalled):
        ob.zero_grad()
        loss = torch.nn.functional.mse_loss(mb(x), y)
        loss.backward()
        ob.step()
        if plateau:  # the metric stays a tensor: no host read, no recompile
            sb.step(torch.where(stalled, torch.ones_like(loss), loss.detach()))
        else:
            sb.step()

    lrs_seen = set()
    for t in range(STEPS):
        _stock_step(ma, oa, sa, t, plateau)
        args = (*BATCHES[t], torch.tensor(t >= 4))
        if t < WARMUP:
            train_step(*args)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                train_step(*args)
        _compare(ma, oa, mb, ob, f"{key} step {t}")
        lrs_seen.add(round(oa.param_groups[0]["lr"], 12))
    assert len(lrs_seen) >= 3, f"{key}: the run should cross schedule boundaries, saw LRs {lrs_seen}"


def test_compiled_opt_step_with_eager_scheduler():
    """The plain pattern: ``torch.compile(opt.step)``, the scheduler stepped eagerly; a new LR
    never recompiles. (Not fullgraph=True: LRScheduler wraps ``opt.step`` in a function that dynamo
    never traces, for stock optimizers too; FusedSGD.step itself is one graph, see below.)"""
    ma, mb = _model(), _model()
    oa = torch.optim.SGD(_groups(ma), foreach=False, **OPT_KW)
    ob = fused_lr.FusedSGD(_groups(mb), **OPT_KW)
    sa, sb = stock.StepLR(oa, step_size=2, gamma=0.5), fused.StepLR(ob, step_size=2, gamma=0.5)
    compiled_step = torch.compile(ob.step, backend="aot_eager")
    for t in range(10):
        for m, o in ((ma, oa), (mb, ob)):
            o.zero_grad()
            _loss(m, t).backward()
        oa.step()
        if t < 2:  # 0: no momentum buffers yet; 1: buffers exist
            compiled_step()
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                compiled_step()
        sa.step()
        sb.step()
        _compare(ma, oa, mb, ob, f"compiled opt.step, step {t}")


def test_no_graph_breaks_inside_step():
    """torch._dynamo.explain: FusedSGD.step and the scheduler's step trace without a graph break
    (what a compiled training step still breaks on is torch's: zero_grad, backward, and the
    optimizer-step wrapper that LRScheduler installs, as with stock optimizers)."""
    model = _model()
    opt = fused_lr.FusedSGD(_groups(model), **OPT_KW)
    sched = fused.CosineAnnealingLR(opt, T_max=5)
    _loss(model, 0).backward()
    opt.step()  # buffers exist: the steady-state trace
    step_report = torch._dynamo.explain(opt.step)()
    sched_report = torch._dynamo.explain(sched.step)()
    assert step_report.graph_break_count == 0, [b.reason for b in step_report.break_reasons]
    assert sched_report.graph_break_count == 0, [b.reason for b in sched_report.break_reasons]
    assert step_report.graph_count == 1


def test_triton_backend_inside_a_compiled_step():
    """FusedSGD(backend="triton") (CPU tensors, Triton's interpreter, in a child process): eager
    steps use the kernel; inside torch.compile the update is the kernel called through the custom op
    fused_lr::triton_sgd_update and the scheduler step is traced as torch ops; the compiled step
    follows stock and does not recompile after its warm-up."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    script = Path(__file__).resolve().parent / "_compile_triton_subprocess.py"
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-4000:]

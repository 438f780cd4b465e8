"""The torch path's accelerator (CUDA) code, exercised on CPU: ``fused_lr._device.host_reads_free``
answers False, so FusedSGD takes the code it takes on a GPU (the LR stays a device tensor). What a
step issues is counted at the aten level (each non-view op is one launch on a GPU); the host-time
figures are in ``benchmarks/host_overhead.py`` (never timed here).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

import fused_lr
import fused_lr.lr_scheduler as fused
from fused_lr import _device

# Ops that only make views (no launch on a GPU).
_VIEWS = {"aten.select.int", "aten.slice.Tensor", "aten.view.default", "aten.unbind.int", "aten.detach.default",
          "aten.alias.default", "aten.reshape.default", "aten._reshape_alias.default", "aten.as_strided.default"}
# The CUDA branch reads the LR as float32 (torch's fused kernel on CUDA does): the LR differs from
# stock's float64 by up to 2^-24 relative, on top of the FMA argument of conftest's TRAJ_TOL;
# over 20 steps ~1e-5 relative (the same bound as tests/test_gpu.py's CUDA_FP32_TOL).
CUDA_BRANCH_TOL = dict(rtol=2e-5, atol=2e-6)


class Launches(TorchDispatchMode):
    """The non-view aten ops issued inside (each one launch on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) not in _VIEWS and not str(func).startswith("profiler."):  # (the optimizer's profiler ranges)
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def accelerator_branch(monkeypatch):
    monkeypatch.setattr(_device, "host_reads_free", lambda device: False)


CLOSED_FORMS = {
    "cosine": lambda m, o: m.CosineAnnealingLR(o, 100),
    "onecycle": lambda m, o: m.OneCycleLR(o, 0.2, total_steps=200, three_phase=True),
    "step": lambda m, o: m.StepLR(o, 3, 0.5),
    "chained": lambda m, o: m.ChainedScheduler([m.ConstantLR(o, 0.5, total_iters=3), m.ExponentialLR(o, 0.9)]),
    "sequential": lambda m, o: m.SequentialLR(o, [m.LinearLR(o, 0.1, total_iters=4), m.CosineAnnealingLR(o, 50)],
                                              milestones=[4]),
}


def _groups(ps):
    return [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05, "momentum": 0.5, "weight_decay": 1e-3}]


@pytest.mark.parametrize("name", list(CLOSED_FORMS))
def test_torch_path_cuda_branch_steady_step_launch_counts_and_parity(accelerator_branch, name):
    """Steady state: ``opt.step()`` is one fused-kernel call per group plus one copy (the
    persistent float32 LR buffer); a closed-form scheduler step is at most 2 launches (the
    counter, the LR buffer); parameters match stock SGD + the stock scheduler."""
    g = torch.Generator().manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(7, 5), (33,), (4, 3, 2), (130,)]]
    a_ps, k_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    a = torch.optim.SGD(_groups(a_ps), lr=0.1, momentum=0.9, foreach=False)
    k = fused_lr.FusedSGD(_groups(k_ps), lr=0.1, momentum=0.9, backend="torch")
    sa, sk = CLOSED_FORMS[name](stock, a), CLOSED_FORMS[name](fused, k)
    for t in range(20):
        grads = [torch.randn(p.shape, generator=g) for p in ref]
        for ps in (a_ps, k_ps):
            for p, gr in zip(ps, grads):
                p.grad = gr.clone()
        a.step()
        with Launches() as opt_ops:
            k.step()
        sa.step()
        with Launches() as sched_ops:
            sk.step()
        if t >= 2:  # (the first steps create the momentum buffers)
            kernels = [op for op in opt_ops.ops if "_fused_sgd_" in op]
            assert len(kernels) == 2 and len(opt_ops.ops) == 3, f"step {t}: {opt_ops.ops}"
            assert len(sched_ops.ops) <= 2, f"step {t}: scheduler step issued {sched_ops.ops}"
        for i, (p, q) in enumerate(zip(a_ps, k_ps)):
            assert_close(q, p, what=f"{name} step {t} param {i}", **CUDA_BRANCH_TOL)


def test_torch_path_steady_step_reuses_its_collection_and_notices_changes(accelerator_branch, monkeypatch):
    """Gradients kept between steps (``zero_grad(set_to_none=False)``, accumulation in place): a
    steady step reuses the last step's collection (no per-parameter walk: ``_collect_all`` is not
    called) and is one fused-kernel call per group plus the LR copy. Each change the walk would see
    is noticed, and the parameters match stock SGD + the stock scheduler throughout: a grad set to
    None, a grad replaced by a new tensor, a parameter's storage replaced (``p.data = ...``), an
    assigned LR, a momentum switched off (state kept or not), a loaded state dict."""
    g = torch.Generator().manual_seed(1)
    ref = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(7, 5), (33,), (4, 3, 2), (130,)]]
    a_ps, k_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    a = torch.optim.SGD(_groups(a_ps), lr=0.1, momentum=0.9, foreach=False)
    k = fused_lr.FusedSGD(_groups(k_ps), lr=0.1, momentum=0.9, backend="torch")
    sa, sk = stock.CosineAnnealingLR(a, 50), fused.CosineAnnealingLR(k, 50)
    walks = []
    collect_all = k._collect_all
    monkeypatch.setattr(k, "_collect_all", lambda: walks.append(1) or collect_all())
    for ps in (a_ps, k_ps):
        for p in ps:
            p.grad = torch.zeros_like(p)
    for t in range(16):
        grads = [torch.randn(p.shape, generator=g) for p in ref]
        for ps in (a_ps, k_ps):
            for p, gr in zip(ps, grads):
                if p.grad is not None:
                    p.grad.copy_(gr)  # the same grad objects
        changed = True
        if t == 4:
            for ps in (a_ps, k_ps):
                ps[1].grad = None  # not updated this step (stock skips it too)
        elif t == 5:
            for ps in (a_ps, k_ps):
                ps[1].grad = grads[1].clone()  # back, as a new tensor
        elif t == 7:
            for ps in (a_ps, k_ps):
                ps[2].grad = grads[2].clone() * 2  # a new grad object in place of a live one
        elif t == 9:
            for ps in (a_ps, k_ps):
                ps[0].data = ps[0].data.clone()  # new storage (its momentum buffer is kept)
        elif t == 10:
            for opt in (a, k):
                opt.param_groups[1]["lr"] = 0.01  # an assigned LR
            changed = False  # (no tensor changed: the collection is reused, the LR taken)
        elif t == 11:
            for opt in (a, k):
                opt.param_groups[1]["momentum"] = 0.0
        elif t == 13:
            for opt in (a, k):
                opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        else:
            changed = False
        walks.clear()
        a.step()
        with Launches() as opt_ops:
            k.step()
        sa.step()
        sk.step()
        if t >= 2 and not changed and t not in (5, 8, 12, 14):  # (a step after a change collects afresh once)
            assert not walks, f"step {t}: the steady step walked the parameters"
            if t != 10:  # (an assigned LR is written into the schedule: its own ops)
                kernels = [op for op in opt_ops.ops if "_fused_sgd_" in op]
                assert len(kernels) == 2 and len(opt_ops.ops) == 3, f"step {t}: {opt_ops.ops}"
        if changed:
            assert walks, f"step {t}: a change was not noticed"
        for i, (p, q) in enumerate(zip(a_ps, k_ps)):
            assert_close(q, p, what=f"step {t} param {i}", **CUDA_BRANCH_TOL)


def test_torch_path_keeps_no_collection_while_grads_are_new_each_step(accelerator_branch):
    """``zero_grad()`` (set_to_none) before every backward: a kept collection would never serve a
    step, so after one that served none the optimizer stops keeping one (it tries again later);
    parameters match stock SGD throughout."""
    g = torch.Generator().manual_seed(2)
    ref = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(7, 5), (33,), (130,)]]
    a_ps, k_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    a = torch.optim.SGD(a_ps, lr=0.1, momentum=0.9, foreach=False)
    k = fused_lr.FusedSGD(k_ps, lr=0.1, momentum=0.9, backend="torch")
    kept = []
    for t in range(8):
        grads = [torch.randn(p.shape, generator=g) for p in ref]
        for opt, ps in ((a, a_ps), (k, k_ps)):
            opt.zero_grad()
            for p, gr in zip(ps, grads):
                p.grad = gr.clone()
            opt.step()
        kept.append(k._collected is not None)
        for i, (p, q) in enumerate(zip(a_ps, k_ps)):
            assert_close(q, p, what=f"step {t} param {i}", **CUDA_BRANCH_TOL)
    assert not any(kept[3:]), kept

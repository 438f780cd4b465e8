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

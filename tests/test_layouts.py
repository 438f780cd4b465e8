"""Every parameter and gradient layout gets torch's for-loop result on the torch path, and nothing
outside a parameter's own elements is ever written (cases and canaries: tests/_layout_cases.py; the
Triton path's run of the same cases: the "layouts" case of tests/_triton_optimizer_subprocess.py).

Layouts: a contiguous view inside a larger storage (control), a column and a block of a matrix and an
``as_strided`` view (non-dense), a transposed matrix, a channels_last 4-D weight and a size-1 dim with
an arbitrary stride (dense, permuted), a 0-dim view; gradients laid out like autograd's, contiguous,
permuted, expanded (stride 0) and as views into larger storages; each alone, and rotating so a
parameter's gradient changes layout every step.
"""

from __future__ import annotations

import _layout_cases as L
import pytest
import torch
from conftest import TRAJ_TOL, assert_close

import fused_lr
from fused_lr.functional import sgd as functional_sgd

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}


def _close(dtype):
    # TRAJ_TOL: the flat tensors run torch's fused kernel (fp32 / fp64; FMA-contracted, see
    # conftest), the others torch's for-loop itself; bf16 runs the for-loop op for op (bit-equal).
    def close(actual, expected, what):
        assert_close(actual, expected, what=what, **TRAJ_TOL[dtype])

    return close


def _torch_fused(groups, **kw):
    return fused_lr.FusedSGD(groups, backend="torch", **kw)


@pytest.mark.parametrize("config", list(L.CONFIGS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("grad_layout", [*L.GRAD_LAYOUTS, "rotate"])
def test_every_layout_matches_stock_forloop_and_writes_only_its_parameter(grad_layout, dtype, config):
    dtype = DTYPES[dtype]
    _, _, b, ob = L.run(_torch_fused, dtype, grad_layout, L.CONFIGS[config], _close(dtype))
    if L.CONFIGS[config]["momentum"]:
        # Momentum buffers take the parameter's layout (torch's fused SGD: empty_like(param)), dense
        # even for a non-dense parameter.
        for name, p in zip(b.names, b.params):
            buf = ob.state[p]["momentum_buffer"]
            if name in L.DENSE:
                assert buf.stride() == p.stride(), f"{name}: buffer strides {buf.stride()} vs param {p.stride()}"
            else:
                assert buf.is_contiguous(), f"{name}: buffer strides {buf.stride()}"


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_dense_layouts_take_the_fused_kernel(dtype, monkeypatch):
    """Dense parameters (channels_last, transposed, ...) with gradients and buffers in their layout
    are walked flat by torch's fused kernel: the for-loop is never called for them."""
    dtype = DTYPES[dtype]

    def no_loop(*args, **kwargs):
        raise AssertionError("a dense layout fell back to the for-loop")

    monkeypatch.setattr(functional_sgd, "sgd_loop", no_loop)
    calls = []
    real = torch._fused_sgd_
    monkeypatch.setattr(torch, "_fused_sgd_", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    L.run(_torch_fused, dtype, "like_param", L.CONFIGS["nesterov"], _close(dtype), names=L.DENSE)
    assert calls, "torch._fused_sgd_ was never called"


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
@pytest.mark.parametrize("grad_layout", [*L.GRAD_LAYOUTS, "rotate"])
def test_fused_call_stages_any_layout_through_dense_stand_ins(grad_layout, dtype):
    """``_fused_call`` (what CUDA runs for every layout: its fused kernel refuses the ones it cannot
    walk flat, and reading the LR for the for-loop would sync) gives the for-loop's result for every
    layout and writes only the parameters and buffers, here on CPU, where the kernel is the same
    algorithm."""
    dtype = DTYPES[dtype]
    close = _close(dtype)
    config = L.CONFIGS["damped_max"]
    a, b = L.World(dtype), L.World(dtype)
    oa = torch.optim.SGD(a.params, lr=0.1, foreach=False, **config)
    lr = torch.tensor(0.1, dtype=torch.float64)
    hp = dict(lr=lr, weight_decay=config["weight_decay"], momentum=config["momentum"],
              dampening=config["dampening"], nesterov=False, maximize=True)
    bufs = [None] * len(b.params)
    for t in range(L.STEPS):
        layouts = L.grad_layouts(grad_layout, t, len(a.params))
        for w in (a, b):
            w.set_grads(L.grad_values(t, w), layouts)
        oa.step()
        stepping = [i for i, p in enumerate(b.params) if p.grad is not None]
        calls = [(False, [i for i in stepping if bufs[i] is not None]), (True, [i for i in stepping if bufs[i] is None])]
        for i in calls[1][1]:  # as sgd makes them
            bufs[i] = torch.empty_like(b.params[i], memory_format=torch.preserve_format)
        with torch.no_grad():
            for first, idx in calls:
                functional_sgd._fused_call([b.params[i] for i in idx], [b.params[i].grad for i in idx],
                                        [bufs[i] for i in idx], is_first_step=first, **hp)
        b.check_untouched(f"_fused_call, grads {grad_layout} step {t}")
        for name, p, q, buf in zip(a.names, a.params, b.params, bufs):
            close(q, p, f"step {t}: param {name}")
            if buf is not None:
                close(buf, oa.state[p]["momentum_buffer"], f"step {t}: buffer of {name}")


def test_overlapping_parameter_is_refused_before_anything_changes():
    """A parameter whose elements share memory (stride 0): stock's in-place update raises; FusedSGD
    raises the same error before updating any parameter."""
    def params():
        return [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(1).expand(3))]

    stock_ps = params()
    for p in stock_ps:
        p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        torch.optim.SGD(stock_ps, lr=0.1, foreach=False).step()
    ps = params()
    for p in ps:
        p.grad = torch.ones(3)
    # The shared-memory parameter in the second group: the first must not be updated before the error.
    # (The Triton path: the "layouts" interpreter case.)
    opt = fused_lr.FusedSGD([dict(params=ps[:1]), dict(params=ps[1:])], lr=0.1, momentum=0.9, backend="torch")
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        opt.step()
    assert torch.equal(ps[0].detach(), torch.ones(3)), "the other parameter was updated before the error"
    assert not opt.state, "a momentum buffer was created before the error"


def test_compiled_step_follows_stock_for_every_layout():
    """Inside torch.compile the torch path traces torch's foreach algorithm, whose ops follow strides:
    every layout matches stock and writes only its parameter (aot_eager: AOTAutograd and
    functionalization as inductor traces them; see tests/test_compile.py)."""
    torch._dynamo.reset()

    def compiled(groups, **kw):
        opt = fused_lr.FusedSGD(groups, backend="torch", **kw)
        opt.step = torch.compile(opt.step, backend="aot_eager")
        return opt

    try:
        L.run(compiled, torch.float32, "contiguous", L.CONFIGS["nesterov"], _close(torch.float32))
    finally:
        torch._dynamo.reset()

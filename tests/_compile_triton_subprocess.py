"""FusedSGD(backend="triton") inside torch.compile, on CPU tensors under Triton's interpreter (set
before triton is imported, hence a child process; run by tests/test_compile.py).

Inside a compiled region the update is the Triton kernel called through the custom op
``fused_lr::multi_tensor_update`` (opaque to the compiler) and the scheduler advances its counter
with torch ops; eager steps before and after use the kernel with its deferred scheduler step.
The compiled training step must follow stock torch.optim.SGD + the stock scheduler (eager) and
must not recompile after its warm-up steps. Prints "ok".
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.optim.lr_scheduler as stock  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import TRAJ_TOL, assert_close, assert_lrs_close  # noqa: E402
from test_compile import OPT_KW  # noqa: E402  (the in-process compile tests' model and data)
from test_compile import _batch as batch  # noqa: E402
from test_compile import _groups as groups  # noqa: E402
from test_compile import _model as model  # noqa: E402

import fused_lr  # noqa: E402
import fused_lr.lr_scheduler as fused  # noqa: E402

STEPS, WARMUP, EAGER_FIRST = 12, 2, 2  # eager, compiled warm-up, compiled without recompiles, eager


def run(make, opt_kw=OPT_KW):
    torch._dynamo.reset()
    ma, mb = model(), model()
    oa = torch.optim.SGD(groups(ma), foreach=False, **opt_kw)
    ob = fused_lr.FusedSGD(groups(mb), backend="triton", **opt_kw)
    assert ob.implementation == "triton"
    sa, sb = make(stock, oa), make(fused, ob)

    def step(x, y):
        ob.zero_grad()
        torch.nn.functional.mse_loss(mb(x), y).backward()
        ob.step()
        sb.step()

    compiled = torch.compile(step, backend="aot_eager")
    for t in range(STEPS + 1):
        x, y = batch(t)
        oa.zero_grad()
        torch.nn.functional.mse_loss(ma(x), y).backward()
        oa.step()
        sa.step()
        if t < EAGER_FIRST or t == STEPS:
            # Eager (before the compiled steps and after them): the Triton kernel, with the
            # scheduler step deferred into it.
            step(x, y)
        elif t < EAGER_FIRST + WARMUP:
            compiled(x, y)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                compiled(x, y)
        for i, (p, q) in enumerate(zip(ma.parameters(), mb.parameters())):
            assert_close(q, p, what=f"step {t} param {i}", **TRAJ_TOL[torch.float32])
        assert_lrs_close(sb.get_last_lr(), sa.get_last_lr(), f"step {t}")


from fused_lr.engine import compiled as _compiled  # noqa: E402

# Runs of the custom op's implementation, counted by wrapping the engine update it makes.
op_calls = 0
_update = _compiled.multi_tensor_update


def _counted_update(*args, **kwargs):
    global op_calls
    op_calls += 1
    return _update(*args, **kwargs)


_compiled.multi_tensor_update = _counted_update

# (momentum 0: no state is kept, the op gets placeholders for the buffers; torch 2.13's
# functionalization fails on a None in a mutated list argument.)
NO_MOMENTUM = {**OPT_KW, "momentum": 0.0, "nesterov": False}
for make, opt_kw in ((lambda m, o: m.StepLR(o, step_size=3, gamma=0.5), OPT_KW),
                     (lambda m, o: m.CosineAnnealingLR(o, T_max=4, eta_min=1e-3), OPT_KW),
                     (lambda m, o: m.StepLR(o, step_size=3, gamma=0.5), NO_MOMENTUM)):
    before = op_calls
    run(make, opt_kw)
    # Every compiled step ran the Triton kernel through the custom op (none fell back to torch ops).
    assert op_calls - before == STEPS - EAGER_FIRST, (op_calls - before, STEPS - EAGER_FIRST)
print("ok")

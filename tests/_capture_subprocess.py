"""CUDA-graph capture of the Triton path, emulated on CPU under Triton's interpreter (a child process:
TRITON_INTERPRET=1 must be set before triton is imported). Run by tests/test_capture.py as
``python tests/_capture_subprocess.py CASE...``; prints "CASE: ok" per case.

``Graph`` emulates what a CUDA graph does with the work issued while it is captured: nothing runs
then (ops that write tensors made before the capture are not executed, Triton launches are only
recorded), every aten op and launch is recorded with its arguments, and ``replay()`` runs them
again, reading the tensors made before the capture at replay time (as a graph reads fixed
addresses) and Python scalars as they were at capture (as a graph freezes kernel arguments).
Tensors the capture made belong to the graph (its private pool). A tensor made before the capture
that the graph reads is held only weakly (by storage): if fused_lr lets it be freed, ``replay``
fails, as a real replay would read freed memory. Host reads of device values during the capture
fail (``.item()``), as they would on CUDA. ``fused_lr._device.capturing`` answers True inside
``Graph.capture()``: every layer asks that function.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    if "triton" in sys.modules:  # pragma: no cover
        raise SystemExit("triton was imported before TRITON_INTERPRET=1 was set")
    os.environ["TRITON_INTERPRET"] = "1"

import contextlib
import copy
import gc
import itertools

import torch
import torch.optim.lr_scheduler as stock
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

import fused_lr
import fused_lr.lr_scheduler as fused
from fused_lr import _device, engine

# The kernel against stock's for-loop, float32, ~12 steps: the bound of
# tests/_triton_optimizer_subprocess.py (FP32, same argument, fewer steps).
FP32 = dict(rtol=1e-5, atol=1e-6)
SHAPES = [(7, 5), (33,), (4, 3, 2), (130,)]
KW = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, nesterov=True)


class _Persistent:
    """A tensor made before the capture, as the graph holds it: by address (a weak reference)."""

    __slots__ = ("storage", "meta", "what")

    def __init__(self, t: torch.Tensor, what: str) -> None:
        self.storage = StorageWeakRef(t.untyped_storage())
        self.meta = (t.dtype, t.storage_offset(), t.shape, t.stride())
        self.what = what

    def get(self):
        if self.storage.expired():
            raise AssertionError(f"the captured graph reads a tensor that was freed ({self.what})")
        dtype, offset, shape, stride = self.meta
        storage = torch.UntypedStorage._new_with_weak_ptr(self.storage.cdata)
        return torch.empty(0, dtype=dtype).set_(storage, offset, shape, stride)


class Graph(TorchDispatchMode):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list = []  # (kind, fn, args, kwargs, outputs)
        self.made: dict[int, torch.Tensor] = {}  # id -> tensor made during the capture (graph-owned)
        self.active = False

    # ------------------------------------------------------------ recording
    def _wrap(self, x, what):
        if isinstance(x, torch.Tensor):
            if id(x) in self.made:
                return ("made", id(x))
            return ("old", _Persistent(x, what))
        return ("const", x)

    def _args(self, args, kwargs, what):
        return (tree_map(lambda x: self._wrap(x, what), args), tree_map(lambda x: self._wrap(x, what), kwargs))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default):
            raise AssertionError(f"a host read of a device value during the capture ({func})")
        written = [a.name for a in func._schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        named = dict(zip([a.name for a in func._schema.arguments], args), **kwargs)
        old_written = [named[n] for n in written if isinstance(named.get(n), torch.Tensor) and id(named[n]) not in self.made]
        rec = self._args(args, kwargs, str(func))
        if old_written:
            # Writes memory made before the capture: does not run now (it runs at each replay).
            out = old_written[0] if func._schema.returns else None
            self.nodes.append(("op", func, *rec, None))
            return out
        out = func(*args, **kwargs)
        flat = out if isinstance(out, (tuple, list)) else [out]
        for t in flat:
            if isinstance(t, torch.Tensor):
                self.made[id(t)] = t
        self.nodes.append(("op", func, *rec, [id(t) if isinstance(t, torch.Tensor) else None for t in flat]))
        return out

    def launch(self, kernel, grid, args, kwargs):
        self.nodes.append(("launch", (kernel, grid), *self._args(args, kwargs, f"launch of {kernel}"), None))

    @contextlib.contextmanager
    def capture(self):
        self.active = True
        try:
            with self:
                yield self
        finally:
            self.active = False

    # ------------------------------------------------------------ replay
    def replay(self) -> None:
        """Every recorded node again; results land in the tensors the capture made (graph memory)."""

        def get(x):
            kind, v = x
            return self.made[v] if kind == "made" else v.get() if kind == "old" else v

        def unwrap(tree):
            return tree_map(get, tree, is_leaf=_is_ref)

        for kind, fn, args, kwargs, outs in self.nodes:
            a, k = unwrap(args), unwrap(kwargs)
            if kind == "launch":
                kernel, grid = fn
                _REAL_GETITEM(kernel, grid)(*a, **k)
                continue
            out = fn(*a, **k)
            flat = out if isinstance(out, (tuple, list)) else [out]
            for i, t in zip(outs or (), flat):
                if i is not None and self.made[i] is not t:
                    self.made[i].copy_(t)


def _is_ref(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and x[0] in ("made", "old", "const")


GRAPH: Graph | None = None
_REAL_GETITEM = None


def _install() -> None:
    """Route ``_device.capturing`` and every Triton launch through the current ``GRAPH``."""
    global _REAL_GETITEM
    from fused_lr.kernels import sgd as K

    cls = type(K.sgd_kernel)
    _REAL_GETITEM = cls.__getitem__

    def getitem(fn, grid):
        g = GRAPH
        if g is None or not g.active:
            return _REAL_GETITEM(fn, grid)
        return lambda *args, **kwargs: g.launch(fn, grid, args, kwargs)

    cls.__getitem__ = getitem
    _device.capturing = lambda device: GRAPH is not None and GRAPH.active


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def grads(t, ps):
    g = torch.Generator().manual_seed(1000 + t)
    return [torch.randn(p.shape, generator=g) for p in ps]


def check(a_ps, k_ps, k, a, what, lr=True):
    for i, (p, q) in enumerate(zip(a_ps, k_ps)):
        torch.testing.assert_close(q.detach(), p.detach(), **FP32, msg=lambda m, i=i: f"{what}: param {i}: {m}")
    if not lr:
        return
    want = [float(g["lr"]) for g in a.param_groups]
    got = k.lr_tensor.tolist()
    assert all(abs(x - y) <= 1e-12 * abs(y) for x, y in zip(got, want)), f"{what}: lr {got} vs stock {want}"


def _pair(make_sched):
    ref = make_params()
    a_ps, k_ps = copy.deepcopy(ref), copy.deepcopy(ref)
    a = torch.optim.SGD([{"params": a_ps[:2]}, {"params": a_ps[2:], "lr": 0.05}], foreach=False, **KW)
    k = fused_lr.FusedSGD([{"params": k_ps[:2]}, {"params": k_ps[2:], "lr": 0.05}], backend="triton", **KW)
    assert k.implementation == "triton"
    return a_ps, k_ps, a, k, make_sched(stock, a), make_sched(fused, k)


def _cosine(mod, opt):
    return mod.CosineAnnealingLR(opt, T_max=7, eta_min=0.01)


def _warm_up(a_ps, k_ps, a, k, sa, sk, steps=3):
    for t in range(steps):
        gs = grads(t, a_ps)
        for ps in (a_ps, k_ps):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
        a.step(), k.step()
        sa.step(), sk.step()


def case_whole_step():
    """torch's recipe, whole step captured: warm-up steps, ``zero_grad(set_to_none=True)``, then the
    capture makes new gradients (a backward in the graph's pool), ``opt.step()`` and
    ``sched.step()``; each replay is one training step. The LR neither freezes nor double-advances:
    every replay matches stock stepping eagerly (params, and the LR the next step uses)."""
    global GRAPH
    a_ps, k_ps, a, k, sa, sk = _pair(_cosine)
    _warm_up(a_ps, k_ps, a, k, sa, sk)
    check(a_ps, k_ps, k, a, "warm-up", lr=False)  # (the LR buffer: written by the next kernel)
    k.zero_grad(set_to_none=True)
    static_src = [torch.zeros_like(p) for p in k_ps]  # the graph's input (the batch)
    GRAPH = g = Graph()
    with g.capture():
        for p, s in zip(k_ps, static_src):
            p.grad = s * 1.0  # a new gradient, in the graph's pool
        k.step()
        sk.step()
    for t in range(3, 13):  # past T_max: the cosine turns around
        gs = grads(t, a_ps)
        for p, gr in zip(a_ps, gs):
            p.grad = gr.clone()
        used = [float(x["lr"]) for x in a.param_groups]
        a.step(), sa.step()
        for s, gr in zip(static_src, gs):
            s.copy_(gr)
        g.replay()
        check(a_ps, k_ps, k, a, f"whole-step replay {t}", lr=False)
        got = k.lr_tensor.tolist()  # the LR the replayed launch used, written back by it
        assert all(abs(x - y) <= 1e-12 * abs(y) for x, y in zip(got, used)), f"replay {t}: lr {got} vs {used}"
    GRAPH = None


def case_opt_step_only():
    """Only ``opt.step()`` captured, ``sched.step()`` eager after each replay (gradients static,
    ``zero_grad(set_to_none=False)``): the scheduler step advances the device counter the
    captured launch reads, and the replay writes back the LR it used."""
    global GRAPH
    a_ps, k_ps, a, k, sa, sk = _pair(_cosine)
    _warm_up(a_ps, k_ps, a, k, sa, sk)
    GRAPH = g = Graph()
    with g.capture():
        k.step()
    for t in range(3, 13):
        gs = grads(t, a_ps)
        for p, q, gr in zip(a_ps, k_ps, gs):
            p.grad = gr.clone()
            q.grad.copy_(gr)
        used = [float(x["lr"]) for x in a.param_groups]
        a.step()
        g.replay()
        got = k.lr_tensor.tolist()  # the LR the replayed launch used, written back by it
        assert all(abs(x - y) <= 1e-12 * abs(y) for x, y in zip(got, used)), f"replay {t}: lr {got} vs {used}"
        sa.step(), sk.step()
        for i, (p, q) in enumerate(zip(a_ps, k_ps)):
            torch.testing.assert_close(q.detach(), p.detach(), **FP32, msg=lambda m, i=i: f"replay {t} param {i}: {m}")
    GRAPH = None


def case_ownership():
    """What a captured launch reads outlives the eager work after the capture: new gradient
    objects (a new grad table), changed hyper-parameters (a new hyper table), many other
    parameter sets (plan cache eviction). The graph still replays correctly; and the emulator
    does catch a freed tensor (so its passing means something)."""
    global GRAPH
    a_ps, k_ps, a, k, sa, sk = _pair(_cosine)
    _warm_up(a_ps, k_ps, a, k, sa, sk)
    GRAPH = g = Graph()
    with g.capture():
        k.step()
    GRAPH = None
    # Eager churn: new grads elsewhere in memory, a momentum change, other parameter sets.
    for t in range(3):
        for q in k_ps:
            q.grad = torch.randn(q.numel() + 64)[64:].view(q.shape)
        k.param_groups[0]["momentum"] = 0.8 if t % 2 else 0.9
        k.step()
    k.param_groups[0]["momentum"] = 0.9
    subsets = [c for r in (1, 2, 3) for c in itertools.combinations(range(len(k_ps)), r)]
    assert len(subsets) > k._engine.cache.max_plans
    for sub in subsets:  # other parameter sets (grads on some params only): more than the cache holds
        for i, q in enumerate(k_ps):
            q.grad = torch.ones_like(q) if i in sub else None
        k.step()
    gc.collect()
    g.replay()  # reads only live tensors (the emulator fails otherwise)

    # The emulator's own check: a captured op on a tensor freed afterwards fails the replay.
    h = Graph()
    x = torch.ones(3)
    GRAPH = h
    with h.capture():
        x.add_(1)
    GRAPH = None
    del x
    gc.collect()
    try:
        h.replay()
    except AssertionError as e:
        assert "freed" in str(e), e
    else:
        raise AssertionError("the emulator did not catch a freed tensor")


def case_capture_errors():
    """Work a capture cannot hold is refused with an error naming the fix, before anything changes:
    a plan that does not exist yet (no eager step), state made at a first step, error_if_nonfinite."""
    global GRAPH
    ps = make_params()
    k = fused_lr.FusedSGD(ps, backend="triton", **KW)
    for p in ps:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in ps]
    GRAPH = g = Graph()
    try:
        with g.capture():
            k.step()
    except RuntimeError as e:
        assert "CUDA graph" in str(e) and ("eagerly" in str(e) or "warm-up" in str(e)), e
    else:
        raise AssertionError("a first step with new state was captured")
    finally:
        GRAPH = None
    assert all(torch.equal(p, b) for p, b in zip(ps, before)) and not k.state, "the refused step changed something"

    k = fused_lr.FusedSGD(ps, backend="triton", max_grad_norm=1.0, error_if_nonfinite=True, **KW)
    k.step()
    GRAPH = g = Graph()
    try:
        with g.capture():
            k.step()
    except RuntimeError as e:
        assert "error_if_nonfinite=False" in str(e), e
    else:
        raise AssertionError("error_if_nonfinite under capture did not raise")
    finally:
        GRAPH = None


def case_device_guard():
    """Every Triton launch (update and norm kernels) is issued with the parameters' CUDA device
    current, whichever device was current before, and the previous one is current again after
    the step. Simulated: the plans claim ``cuda:1`` and ``torch.cuda.current_device`` /
    ``torch.cuda.device`` are stubs that track a fake current device; each launch records it."""
    from fused_lr.kernels import sgd as K

    from fused_lr.engine import launch as launch_mod

    current = [0]
    seen = []

    class FakeDevice:
        def __init__(self, device):
            self.index = torch.device(device).index

        def __enter__(self):
            self.prev, current[0] = current[0], self.index

        def __exit__(self, *exc):
            current[0] = self.prev

    cls = type(K.sgd_kernel)
    inner = cls.__getitem__

    def getitem(fn, grid):
        seen.append((fn.__name__ if hasattr(fn, "__name__") else str(fn), current[0]))
        return inner(fn, grid)

    saved = (torch.cuda.current_device, torch.cuda.device, launch_mod.note_stream, cls.__getitem__)
    torch.cuda.current_device, torch.cuda.device = lambda: current[0], FakeDevice
    launch_mod.note_stream = lambda plan: None  # (streams of a fake device)
    cls.__getitem__ = getitem
    try:
        ps = make_params()
        k = fused_lr.FusedSGD(ps, backend="triton", max_grad_norm=1.0, **KW)
        sk = fused.CosineAnnealingLR(k, T_max=5)
        for t in range(3):
            for p, gr in zip(ps, grads(t, ps)):  # the same grad objects (the plan's grad table stays)
                p.grad = gr if p.grad is None else p.grad.copy_(gr)
            if t == 1:  # from now on the plans claim cuda:1 (built on CPU, launched "there")
                for plan in k._engine.cache._plans.values():
                    plan.device = torch.device("cuda", 1)
                    plan.reserve = _device.Reserve(8, torch.device("cpu"))  # (unused: no pinned memory here)
            seen.clear()
            k.step()
            sk.step()
            assert current[0] == 0, "the step left another device current"
            want = 1 if t else 0
            assert seen and all(dev == want for _, dev in seen), f"step {t}: launches under {seen}"
            assert len({name for name, _ in seen}) >= 3, seen  # update and both norm kernels
    finally:
        torch.cuda.current_device, torch.cuda.device, launch_mod.note_stream, cls.__getitem__ = saved


def case_hyper_is_data():
    """A stock OneCycleLR on the Triton path (it sets group["lr"] and group["momentum"] every
    step): the launch plan is built once, steady steps create no device tensor from host values
    (``torch.tensor(..., device=...)``: a blocking upload on CUDA), the hyper table is rewritten in
    place by one copy, and the parameters match stock's."""
    from fused_lr.engine import plan as plan_mod

    a_ps, k_ps, a, k, _, _ = _pair(lambda mod, opt: None)
    sa, sk = stock.OneCycleLR(a, 0.2, total_steps=30), stock.OneCycleLR(k, 0.2, total_steps=30)
    builds, made, copies = [], [], []
    real_build, real_tensor, real_copy = plan_mod.build_plan, torch.tensor, _device.copy_into

    def tensor(*args, **kwargs):
        if kwargs.get("device") is not None:
            made.append(kwargs["device"])
        return real_tensor(*args, **kwargs)

    plan_mod.build_plan = lambda *args, **kw: builds.append(1) or real_build(*args, **kw)
    _device.copy_into = lambda dst, host: copies.append(dst.shape) or real_copy(dst, host)
    try:
        for t in range(12):
            for ps in (a_ps, k_ps):
                for p, gr in zip(ps, grads(t, ps)):
                    p.grad = gr
            if t >= 2:
                torch.tensor = tensor
            n_copies = len(copies)
            a.step(), k.step()
            torch.tensor = real_tensor
            sa.step(), sk.step()
            if t >= 2:
                assert len(copies) - n_copies <= 1, f"step {t}: {copies[n_copies:]}"
            for i, (p, q) in enumerate(zip(a_ps, k_ps)):
                torch.testing.assert_close(q.detach(), p.detach(), **FP32, msg=lambda m, i=i: f"step {t} param {i}: {m}")
    finally:
        plan_mod.build_plan, torch.tensor, _device.copy_into = real_build, real_tensor, real_copy
    assert len(builds) == 1, f"{len(builds)} plans built"
    assert not made, f"steady steps made device tensors from host values: {made}"
    assert copies, "the hyper table was never rewritten (momentum changes every step)"


def case_warmup():
    """``opt.warmup()`` lists (compiles, on a GPU) every variant the steps can select and launches
    nothing; asked for before the first step, it runs right after it."""
    from fused_lr.optim import _routes

    def make(**kw):
        ps = make_params() + [torch.nn.Parameter(torch.randn(9, dtype=torch.float64))]
        return ps, fused_lr.FusedSGD(ps, backend="triton", **KW, **kw)

    calls = []
    real = _routes.engine.warm_up
    _routes.engine.warm_up = lambda *a, **k: calls.append(k) or real(*a, **k)
    try:
        for kw, amp in (({}, True), ({"max_grad_norm": 1.0}, False)):
            ps, k = make(**kw)
            assert k.warmup(amp=amp) == [] and not calls  # no plan yet: deferred
            for p, gr in zip(ps, grads(0, ps)):
                p.grad = gr.to(p.dtype)
            k.step()
            assert len(calls) == 1, calls  # made right after the first step
            calls.clear()
            before = ([p.detach().clone() for p in ps], k._engine.first_flags.clone(), k._engine.ticket.clone())
            got = k.warmup(amp=amp)
            after = ([p.detach() for p in ps], k._engine.first_flags, k._engine.ticket)
            assert all(torch.equal(x, y) for x, y in zip(before[0], after[0])) and torch.equal(before[1], after[1])
            assert torch.equal(before[2], after[2]), "warmup launched something"
            dtypes = {"fp32", "fp64"}
            update = {(d, a, s) for n, d, a, s in got if n == "sgd_kernel"}
            scaled = (False, True) if amp and "max_grad_norm" not in kw else (True,) if kw else (False,)
            want = {(d, a, s) for d in dtypes for a in (True, False) for s in scaled}
            assert update == want, (update, want)
            norms = {(n, d, a) for n, d, a, _ in got if n != "sgd_kernel"}
            if kw:
                assert norms == {("grad_norm_partials_kernel", d, a) for d in dtypes for a in (True, False)} | {
                    ("grad_norm_finalize_kernel", "fp64", None)}, norms  # (the norm of fp32 and fp64 grads: fp64)
            else:
                assert not norms, norms
            calls.clear()
    finally:
        _routes.engine.warm_up = real
    try:
        k.warmup(amp=1)
    except TypeError as e:
        assert "amp must be a bool" in str(e)
    else:
        raise AssertionError("warmup(amp=1) did not raise")


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}

if __name__ == "__main__":
    assert engine.interpreting(), "the kernels are not interpreted"
    _install()
    with engine.override_launch_config(BLOCK_SIZE=32, CHUNK_BLOCKS=2):
        for case in sys.argv[1:] or list(CASES):
            CASES[case]()
            print(f"{case}: ok", flush=True)

"""torch.optim.Optimizer API checks of FusedSGD beside stock torch.optim.SGD (and, in
``check_adam_groups_edited_directly_and_hooks``, of FusedAdamW beside torch.optim.AdamW), for either backend.

Each ``check_*`` function takes the backend ("torch" or "triton") and raises AssertionError on the
first difference. tests/test_optimizer_api.py runs them for backend="torch" in the pytest process;
tests/_triton_optimizer_subprocess.py runs them for backend="triton" under Triton's interpreter in a
child process (TRITON_INTERPRET=1 must be set before triton is imported). Not collected by pytest
(no ``test_`` prefix).
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import torch
import torch.optim.lr_scheduler as stock
from conftest import TRAJ_TOL, assert_close
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import fused_lr
import fused_lr.lr_scheduler as fused

TOL = TRAJ_TOL[torch.float32]


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _grads_for(step, params, seed=0):
    g = torch.Generator().manual_seed(100 * seed + step)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def _set(params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def _buf(opt, p):
    b = opt.state[p].get("momentum_buffer") if p in opt.state else None
    return None if b is None else (b.to_dense() if b.is_sparse else b)


def _compare(a_params, a_opt, b_params, b_opt, what, tol=TOL):
    """Parameters and momentum buffers of stock (a) and fused_lr (b), pairwise."""
    for i, (p, q) in enumerate(zip(a_params, b_params)):
        assert_close(q, p, **tol, what=f"{what}: param {i}")
        ba, bb = _buf(a_opt, p), _buf(b_opt, q)
        assert (ba is None) == (bb is None), f"{what}: param {i} momentum buffer {ba is None=} {bb is None=}"
        if ba is not None:
            assert_close(bb, ba, **tol, what=f"{what}: param {i} momentum buffer")


def _step_both(a, ap, b, bp, steps, what, seed=0, none_at=None):
    for t in range(steps):
        gs = _grads_for(t, ap, seed)
        if none_at is not None and t == none_at[0]:
            gs[none_at[1]] = None
        _set(ap, gs), _set(bp, gs)
        a.step(), b.step()
        _compare(ap, a, bp, b, f"{what} step {t}")


def _error(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return e
    raise AssertionError(f"{fn} did not raise")


def _snapshot(opt):
    """What a failed call must leave untouched (sparse tensors compared dense)."""
    dense = lambda t: t.to_dense() if t.is_sparse else t  # noqa: E731
    return (
        [p.detach().clone() for g in opt.param_groups for p in g["params"]],
        {id(k): {n: dense(v).clone() if isinstance(v, torch.Tensor) else v for n, v in s.items()}
         for k, s in opt.state.items()},
        [float(g["lr"]) if "lr" in g else None for g in opt.param_groups],
        len(opt.param_groups),
    )


def _assert_unchanged(opt, snap, what):
    now = _snapshot(opt)
    assert now[3] == snap[3] and now[2] == snap[2], f"{what}: groups or LRs changed"
    assert all(torch.equal(a, b) for a, b in zip(snap[0], now[0])), f"{what}: a parameter changed"
    assert snap[1].keys() == now[1].keys(), f"{what}: the state gained or lost entries"
    for k, s in snap[1].items():
        for n, v in s.items():
            w = now[1][k][n]
            assert torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w, f"{what}: state {n} changed"


# ---------------------------------------------------------------- named parameters


def check_named_parameters(backend):
    ma, mb = _model(), _model()
    a = torch.optim.SGD(ma.named_parameters(), lr=0.1, momentum=0.9)
    b = fused_lr.FusedSGD(mb.named_parameters(), lr=0.1, momentum=0.9, backend=backend)
    assert b.param_groups[0]["param_names"] == a.param_groups[0]["param_names"] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    _step_both(a, list(ma.parameters()), b, list(mb.parameters()), 3, "named", none_at=(1, 1))
    sa, sb = a.state_dict(), b.state_dict()
    assert sb["param_groups"][0]["param_names"] == sa["param_groups"][0]["param_names"]
    assert set(sb["param_groups"][0]) == set(sa["param_groups"][0]) - {"foreach", "fused", "differentiable"}

    # Named groups with their own hyper-parameters.
    ma, mb = _model(), _model()
    named = lambda m: list(m.named_parameters())  # noqa: E731
    a = torch.optim.SGD([{"params": named(ma)[:2], "lr": 0.05}, {"params": named(ma)[2:]}], lr=0.1, momentum=0.5)
    b = fused_lr.FusedSGD([{"params": named(mb)[:2], "lr": 0.05}, {"params": named(mb)[2:]}], lr=0.1, momentum=0.5,
                          backend=backend)
    assert [g["param_names"] for g in b.param_groups] == [g["param_names"] for g in a.param_groups]
    _step_both(a, list(ma.parameters()), b, list(mb.parameters()), 2, "named groups")

    # torch's errors for a mix, same type and message; nothing added.
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    for params in ([("w", p), q], [{"params": [p], "lr": 1e-2}, {"params": [("w", q)]}]):
        ea = _error(lambda: torch.optim.SGD(params, lr=0.1))
        eb = _error(lambda: fused_lr.FusedSGD(params, lr=0.1, backend=backend))
        assert type(eb) is type(ea) is ValueError and str(eb) == str(ea), (ea, eb)
    for opt in (torch.optim.SGD([p], lr=0.1), fused_lr.FusedSGD([p], lr=0.1, backend=backend)):
        snap = _snapshot(opt)
        e = _error(lambda: opt.add_param_group({"params": [("w", q)]}))
        assert type(e) is ValueError and "cannot add param group with names" in str(e), e
        if isinstance(opt, fused_lr.FusedSGD):
            _assert_unchanged(opt, snap, "named group refused")

    # Loading named <-> unnamed state dicts, as torch: names in the loaded dict win, else kept.
    def loaded_names(cls, named_src, named_dst):
        ms, md = _model(), _model()
        src = cls(ms.named_parameters() if named_src else ms.parameters(), lr=0.1, momentum=0.9,
                  **({} if cls is torch.optim.SGD else {"backend": backend}))
        dst = cls(md.named_parameters() if named_dst else md.parameters(), lr=0.2,
                  **({} if cls is torch.optim.SGD else {"backend": backend}))
        dst.load_state_dict(src.state_dict())
        return dst.param_groups[0].get("param_names"), float(dst.param_groups[0]["lr"])

    for named_src in (True, False):
        for named_dst in (True, False):
            want = loaded_names(torch.optim.SGD, named_src, named_dst)
            got = loaded_names(fused_lr.FusedSGD, named_src, named_dst)
            assert got == want, f"load named={named_src} into named={named_dst}: {got} vs torch {want}"
    # A stepped stock named state dict loaded into an unnamed FusedSGD: the same trajectory on.
    ma, mb = _model(), _model()
    a = torch.optim.SGD(ma.named_parameters(), lr=0.1, momentum=0.9)
    pa = list(ma.parameters())
    _set(pa, _grads_for(7, pa))
    a.step()
    with torch.no_grad():
        for q, p in zip(mb.parameters(), pa):
            q.copy_(p)
    b = fused_lr.FusedSGD(mb.parameters(), lr=0.3, momentum=0.9, backend=backend)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # (a shallow load shares the buffers)
    assert b.param_groups[0]["param_names"] == a.param_groups[0]["param_names"]
    _step_both(a, list(ma.parameters()), b, list(mb.parameters()), 2, "stock named dict loaded")


# ---------------------------------------------------------------- groups edited in param_groups directly


def _stock_like(group, **over):
    """A complete group for direct appends: the keys of ``group`` (torch's include foreach/fused/...)."""
    out = {k: v for k, v in group.items() if k not in ("params", "param_names")}
    out["lr"] = float(out["lr"])
    out.update(over)
    return out


def _edit_groups_directly(a, ap, b, bp, step_both, over, before, first_lr):
    """Stock ``a`` and fused ``b`` (parameters ``ap`` / ``bp``, one group) stepped ``before``
    times, then both ``param_groups`` edited directly, stepped and compared after each edit
    (``step_both``): a group appended with every key (torch's own tests do this; its
    hyper-parameters from the first group's, ``over`` on top), packed as torch packs it; a
    parameter appended to a group's list; a group's list replaced; a group removed (``first_lr``:
    the first group's LR, as built). The state
    (and, on the Triton path, the first-step flags) follows its parameters. Returns the appended
    parameters of ``b`` (group, list)."""
    step_both(a, ap, b, bp, before, "before")
    xa, xb = torch.nn.Parameter(torch.ones(5)), torch.nn.Parameter(torch.ones(5))
    a.param_groups.append({"params": [xa], **_stock_like(a.param_groups[0], **over)})
    b.param_groups.append({"params": [xb], **_stock_like(b.param_groups[0], **over)})
    step_both(a, ap + [xa], b, bp + [xb], 3, "appended group")
    sa, sb = a.state_dict(), b.state_dict()
    assert [float(g["lr"]) for g in sb["param_groups"]] == [g["lr"] for g in sa["param_groups"]] == [first_lr, over["lr"]]
    assert [g["params"] for g in sb["param_groups"]] == [g["params"] for g in sa["param_groups"]]
    assert sb["state"].keys() == sa["state"].keys()
    ya, yb = torch.nn.Parameter(torch.full((3,), 2.0)), torch.nn.Parameter(torch.full((3,), 2.0))
    a.param_groups[0]["params"].append(ya)
    b.param_groups[0]["params"].append(yb)
    step_both(a, ap + [xa, ya], b, bp + [xb, yb], 2, "param appended to a group")
    a.param_groups[0]["params"] = a.param_groups[0]["params"][2:]
    b.param_groups[0]["params"] = b.param_groups[0]["params"][2:]
    step_both(a, ap + [xa, ya], b, bp + [xb, yb], 2, "group's params replaced")
    del a.param_groups[0], b.param_groups[0]
    step_both(a, [xa], b, [xb], 2, "first group removed")
    assert [float(g["lr"]) for g in b.param_groups] == [over["lr"]]
    return xb, yb


def check_groups_edited_directly(backend):
    def pair():
        ma, mb = _model(), _model()
        a = torch.optim.SGD(ma.parameters(), lr=0.1, momentum=0.9)
        b = fused_lr.FusedSGD(mb.parameters(), lr=0.1, momentum=0.9, backend=backend)
        return a, list(ma.parameters()), b, list(mb.parameters())

    _edit_groups_directly(*pair(), _step_both, dict(lr=0.5, momentum=0.3, nesterov=True, dampening=0.0), before=1,
                          first_lr=0.1)

    # torch's own test_state_dict: the group list extended by itself, then packed.
    a, ap, b, bp = pair()
    _step_both(a, ap, b, bp, 1, "before extend")
    a.param_groups.extend(a.param_groups)
    b.param_groups.extend(b.param_groups)
    ga, gb = a.state_dict()["param_groups"][-1], b.state_dict()["param_groups"][-1]
    assert gb["params"] == ga["params"] and float(gb["lr"]) == ga["lr"], (ga, gb)
    snap = _snapshot(b)
    e = _error(b.step)  # a parameter in two groups: refused before anything changes
    assert type(e) is ValueError and "more than one parameter group" in str(e), e
    _assert_unchanged(b, snap, "duplicate groups refused")

    # A group lacking a key: torch's KeyError (stock raises it in step() after updating the groups
    # before it); FusedSGD raises it before anything changes. Bad values: FusedSGD's ValueError.
    for bad, err in (({"params": [torch.nn.Parameter(torch.ones(2))]}, KeyError),
                     ({"params": [torch.nn.Parameter(torch.ones(2))], **_stock_like(b.param_groups[0], lr=-1.0)}, ValueError),
                     ({"params": [torch.nn.Parameter(torch.ones(2, dtype=torch.int64), requires_grad=False)],
                       **_stock_like(b.param_groups[0])}, TypeError)):
        a, ap, b, bp = pair()
        _step_both(a, ap, b, bp, 1, "before a bad group")
        if err is KeyError:
            a.param_groups.append(dict(bad))
            _set(ap, _grads_for(5, ap))
            assert type(_error(a.step)) is KeyError
        b.param_groups.append(bad)
        _set(bp, _grads_for(5, bp))
        snap = _snapshot(b)
        e = _error(b.step)
        assert type(e) is err, e
        if err is KeyError:
            assert "weight_decay" in str(e) and "add_param_group" in str(e), e
        _assert_unchanged(b, snap, f"bad direct group ({err.__name__})")
        e = _error(b.state_dict)
        assert type(e) is err, e


# ---------------------------------------------------------------- state keys and hooks


def check_state_keys_and_hooks(backend, stock_cls=torch.optim.SGD, fused_cls=fused_lr.FusedSGD, hyper=None):
    """(With ``stock_cls``/``fused_cls``/``hyper``: the same for another optimizer pair.)"""
    hyper = dict(lr=0.1, momentum=0.9) if hyper is None else hyper

    def make(cls):
        m = _model()
        kw = {} if cls is stock_cls else {"backend": backend}
        opt = cls(m.parameters(), **hyper, **kw)
        ps = list(m.parameters())
        _set(ps, _grads_for(0, ps))
        opt.step()
        return opt, ps

    seen = {}
    for cls in (stock_cls, fused_cls):
        opt, _ = make(cls)
        opt.state["note"] = {"epoch": 3}  # state under a key that is not a parameter
        log = seen[cls] = []
        opt.register_state_dict_pre_hook(lambda o: (log.append("pre"), o.param_groups[0].__setitem__("lr", 0.3)))
        opt.register_state_dict_post_hook(
            lambda o, sd: log.append(("post", type(sd["param_groups"][0]["lr"]).__name__, sd["param_groups"][0]["lr"])))

        def swap_in(o, sd):
            log.append(("post2", "note" in sd["state"]))
            return {**sd, "extra": 1}

        opt.register_state_dict_post_hook(swap_in)
        sd = opt.state_dict()
        log.append(("sd", sorted(map(str, sd["state"])), sd.get("extra"), float(sd["param_groups"][0]["lr"])))
        sd = copy.deepcopy(sd)

        def load_pre(o, d):
            log.append(("load_pre", float(o.param_groups[0]["lr"])))
            d = copy.deepcopy(d)
            d["param_groups"][0]["lr"] = 0.25
            return d

        opt.register_load_state_dict_pre_hook(load_pre)
        opt.register_load_state_dict_post_hook(
            lambda o: log.append(("load_post", float(o.param_groups[0]["lr"]), o.state.get("note")))
        )
        opt.load_state_dict(sd)
        log.append(("after", float(opt.param_groups[0]["lr"]), opt.state["note"]))
    assert seen[fused_cls] == seen[stock_cls], f"fused {seen[fused_cls]}\nstock {seen[stock_cls]}"
    assert ("post", "float", 0.3) in seen[stock_cls]

    # The non-parameter key survives a round trip through torch.save, both ways between the two.
    for src_cls, dst_cls in ((fused_cls, stock_cls), (stock_cls, fused_cls)):
        src, _ = make(src_cls)
        src.state["note"] = {"epoch": 7}
        buf = io.BytesIO()
        torch.save(src.state_dict(), buf)
        buf.seek(0)
        dst, _ = make(dst_cls)
        dst.load_state_dict(torch.load(buf, weights_only=True))
        assert dst.state["note"] == {"epoch": 7} and "note" in dst.state_dict()["state"]

    # A load pre-hook returning something that is not a state dict: a clear error, nothing changed.
    opt, _ = make(fused_cls)
    opt.register_load_state_dict_pre_hook(lambda o, d: {"state": {}})
    snap = _snapshot(opt)
    e = _error(lambda: opt.load_state_dict(opt.state_dict()))
    assert type(e) is ValueError and "param_groups" in str(e), e
    _assert_unchanged(opt, snap, "bad load pre-hook")


# ---------------------------------------------------------------- copy.deepcopy and pickle


def check_deepcopy_and_pickle(backend):
    for what, twin in (("deepcopy", copy.deepcopy), ("pickle", lambda o: pickle.loads(pickle.dumps(o)))):
        m = _model()
        opt = fused_lr.FusedSGD(
            m.parameters(), lr=0.1, momentum=0.9, backend=backend, max_grad_norm=0.5, norm_type="inf", error_if_nonfinite=True
        )
        ps = list(m.parameters())
        _set(ps, _grads_for(0, ps))
        opt.step()
        c = twin(opt)
        got = (c.backend, c.max_grad_norm, c.norm_type, c.error_if_nonfinite, c.implementation)
        assert got == (backend, 0.5, float("inf"), True, backend), f"{what}: {got}"
        assert {k for k in vars(opt) if not k.startswith("_")} == {k for k in vars(c) if not k.startswith("_")}
        # The copy steps its own parameters as the original steps its: the same trajectory.
        cps = [p for g in c.param_groups for p in g["params"]]
        for t in range(1, 3):
            gs = [3 * g for g in _grads_for(t, ps)]  # large enough for the clipping to act
            _set(ps, gs), _set(cps, gs)
            opt.step(), c.step()
            for i, (p, q) in enumerate(zip(ps, cps)):
                assert_close(q, p, rtol=0.0, atol=0.0, what=f"{what} step {t} param {i}")
            assert torch.equal(c.last_grad_norm, opt.last_grad_norm)


# ---------------------------------------------------------------- sparse gradients


def _embedding_pair(backend, seed=0, fused_only=None, **kw):
    torch.manual_seed(seed)
    ea = torch.nn.Embedding(7, 3, sparse=True)
    la = torch.nn.Linear(3, 2)
    eb, lb = copy.deepcopy(ea), copy.deepcopy(la)
    a = torch.optim.SGD([{"params": ea.parameters()}, {"params": la.parameters(), "lr": 0.05}], lr=0.1, **kw)
    b = fused_lr.FusedSGD(
        [{"params": eb.parameters()}, {"params": lb.parameters(), "lr": 0.05}],
        lr=0.1,
        backend=backend,
        **kw,
        **(fused_only or {}),
    )
    return (ea, la, a), (eb, lb, b)


def _embedding_step(emb, lin, opt, t):
    opt.zero_grad()
    idx = torch.tensor([[1, 2, 1], [t % 7, 5, 2]])
    lin(emb(idx)).pow(2).sum().backward()


def check_sparse_gradients(backend):
    configs = [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.3},
        {"momentum": 0.9, "nesterov": True},
        {"maximize": True, "momentum": 0.5},
    ]
    for kw in configs:
        (ea, la, a), (eb, lb, b) = _embedding_pair(backend, **kw)
        sa, sb = stock.StepLR(a, 2, 0.5), fused.StepLR(b, 2, 0.5)  # the LR the schedule sets
        for t in range(4):
            _embedding_step(ea, la, a, t), _embedding_step(eb, lb, b, t)
            assert eb.weight.grad.is_sparse
            a.step(), b.step()
            sa.step(), sb.step()
            _compare([*ea.parameters(), *la.parameters()], a, [*eb.parameters(), *lb.parameters()], b, f"sparse {kw} step {t}")
            if kw.get("momentum"):
                assert b.state[eb.weight]["momentum_buffer"].is_sparse  # a sparse clone, as torch's
        sd = b.state_dict()
        assert sd["state"][0]["momentum_buffer"].is_sparse if kw.get("momentum") else 0 not in sd["state"]

    # A sparse momentum buffer in a state dict: FusedSGD's loads into stock and steps the same there.
    # (No scheduler here: on the Triton path a scheduler step is applied by the next launch, and
    # the LR a state_dict() reports in between is the previous one, a separate matter.)
    _, (eb, lb, b) = _embedding_pair(backend, momentum=0.9)
    (ec, lc, c), _ = _embedding_pair(backend, momentum=0.9)
    for t in range(2):
        _embedding_step(eb, lb, b, t)
        b.step()
    ec.load_state_dict(eb.state_dict()), lc.load_state_dict(lb.state_dict())
    c.load_state_dict(copy.deepcopy(b.state_dict()))  # (a shallow load shares the buffers)
    for t in range(2, 4):
        _embedding_step(ec, lc, c, t), _embedding_step(eb, lb, b, t)
        c.step(), b.step()
        _compare(
            [*ec.parameters(), *lc.parameters()], c, [*eb.parameters(), *lb.parameters()], b, f"sparse loaded into stock step {t}"
        )

    # AMP: the loss scale divides the sparse gradient; a found inf skips the step.
    (ea, la, a), (eb, lb, b) = _embedding_pair(backend, momentum=0.9)
    for t in range(3):
        _embedding_step(ea, la, a, t), _embedding_step(eb, lb, b, t)
        scale = torch.tensor([1024.0])
        for p in (*eb.parameters(), *lb.parameters()):
            p.grad = p.grad * scale.reshape(())
        if t == 1:
            snap = _snapshot(b)
            b.step(grad_scale=scale, found_inf=torch.ones(1))
            _assert_unchanged(b, snap, "sparse step with found_inf")
        else:
            a.step()
            b.step(grad_scale=scale, found_inf=torch.zeros(1))
        _compare([*ea.parameters(), *la.parameters()], a, [*eb.parameters(), *lb.parameters()], b, f"sparse AMP step {t}")

    # What stock fails on part-way through its step: the same error type, before anything changes.
    for kw, match in (({"weight_decay": 0.1}, "weight_decay"), ({"momentum": 0.9, "nesterov": True}, "nesterov")):
        (ea, la, a), (eb, lb, b) = _embedding_pair(backend, **kw)
        if "nesterov" in kw:  # a dense buffer from a dense step first, then a sparse gradient
            for emb, lin, opt in ((ea, la, a), (eb, lb, b)):
                _embedding_step(emb, lin, opt, 0)
                emb.weight.grad = emb.weight.grad.to_dense()
                opt.step()
        _embedding_step(ea, la, a, 1), _embedding_step(eb, lb, b, 1)
        assert type(_error(a.step)) is RuntimeError
        snap = _snapshot(b)
        e = _error(b.step)
        assert type(e) is RuntimeError and match in str(e), e
        _assert_unchanged(b, snap, f"sparse refused {kw}")
    _, (eb, lb, b) = _embedding_pair(backend, fused_only={"max_grad_norm": 1.0})
    _embedding_step(eb, lb, b, 0)
    snap = _snapshot(b)
    e = _error(b.step)
    assert type(e) is RuntimeError and "clip_grad_norm_" in str(e), e
    _assert_unchanged(b, snap, "sparse with clipping")


# ---------------------------------------------------------------- meta-device parameters


def check_meta_parameters(backend, stock_cls=torch.optim.SGD, fused_cls=fused_lr.FusedSGD, hyper=None, step_both=None):
    """(With ``stock_cls``/``fused_cls``/``hyper``/``step_both``: the same for another optimizer pair.)"""
    hyper = dict(lr=0.1, momentum=0.9) if hyper is None else hyper
    step_both = _step_both if step_both is None else step_both
    swap = torch.__future__.get_swap_module_params_on_conversion()
    try:
        # Kept parameter objects (swap_tensors): the fused optimizer places itself at the first step.
        torch.__future__.set_swap_module_params_on_conversion(True)
        models, opts = [], []
        for cls in (stock_cls, fused_cls):
            with torch.device("meta"):
                m = _model()
            kw = {} if cls is stock_cls else {"backend": backend}
            opt = cls([{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": 0.05}], **hyper, **kw)
            if cls is fused_cls:
                assert float(opt.param_groups[1]["lr"]) == 0.05 and opt.state_dict()["param_groups"][1]["lr"] == 0.05
                snap = [float(g["lr"]) for g in opt.param_groups]
                assert opt.step() is None and [float(g["lr"]) for g in opt.param_groups] == snap  # no grads: nothing to do
            m.to_empty(device="cpu")
            with torch.no_grad():
                for p, v in zip(m.parameters(), _model(seed=3).parameters()):
                    p.copy_(v)
            models.append(m), opts.append(opt)
        (ma, mb), (a, b) = models, opts
        step_both(a, list(ma.parameters()), b, list(mb.parameters()), 3, "meta, then to_empty")
        assert b.implementation == backend and b.lr_tensor.device.type == "cpu"
        # Gradients on parameters still on the meta device: a clear error.
        torch.__future__.set_swap_module_params_on_conversion(False)
        with torch.device("meta"):
            m = _model()
        opt = fused_cls(m.parameters(), **hyper, backend=backend)
        m(torch.ones(2, 3, device="meta")).sum().backward()
        e = _error(opt.step)
        assert type(e) is RuntimeError and "meta device" in str(e), e
        # Replaced parameter objects (to_empty's default): stock's and FusedSGD's steps both see
        # the old meta parameters, without gradients, and change nothing.
        outs = []
        for cls in (stock_cls, fused_cls):
            with torch.device("meta"):
                m = _model()
            kw = {} if cls is stock_cls else {"backend": backend}
            opt = cls(m.parameters(), **hyper, **kw)
            m.to_empty(device="cpu")
            with torch.no_grad():
                for p, v in zip(m.parameters(), _model(seed=3).parameters()):
                    p.copy_(v)
            m(torch.ones(2, 3)).sum().backward()
            opt.step()
            outs.append([p.detach().clone() for p in m.parameters()])
        assert all(torch.equal(p, q) for p, q in zip(*outs))
        assert all(torch.equal(p, q) for p, q in zip(outs[1], _model(seed=3).parameters()))
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


# ---------------------------------------------------------------- differentiable=True


def _diff_run(cls, kwargs, backend, leaves, steps=2):
    """torch's _diff_fn pattern: the parameter a clone of a leaf, gradients that require grad."""
    p0, g0, b0 = leaves
    p = p0.clone()
    kw = dict(kwargs)
    if cls is fused_lr.FusedSGD:
        kw["backend"] = backend
    opt = cls([p], **kw)
    if b0 is not None:
        opt.state[p]["momentum_buffer"] = b0.clone()
    for t in range(steps):
        p.grad = g0.clone() * (t + 1)
        opt.step()
    outs = (p,) + ((opt.state[p]["momentum_buffer"],) if kw.get("momentum") else ())
    return outs, opt


def check_differentiable(backend):
    with warnings.catch_warnings():
        # The parameters are non-leaf clones (torch's pattern); both optimizers read their .grad.
        warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf")
        _check_differentiable(backend)


def _check_differentiable(backend):
    torch.manual_seed(0)
    leaves = [torch.rand(6, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    wd = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    cases = [
        (dict(lr=0.5, momentum=0.9, differentiable=True), True),
        (dict(lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.1, differentiable=True), True),
        (dict(lr=0.5, momentum=0.9, dampening=0.3, maximize=True, differentiable=True), False),
        (dict(lr=lr, weight_decay=wd, differentiable=True), False),  # gradients w.r.t. lr and weight_decay
    ]
    for kwargs, with_buf in cases:
        inputs = leaves + [t for t in (kwargs["lr"], kwargs.get("weight_decay")) if isinstance(t, torch.Tensor)]
        results = []
        for cls in (torch.optim.SGD, fused_lr.FusedSGD):
            outs, _ = _diff_run(cls, kwargs, backend, (leaves[0], leaves[1], leaves[2] if with_buf else None))
            loss = sum((o * (i + 1)).sum() for i, o in enumerate(outs))
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
            results.append(([o.detach() for o in outs], grads))
        (oa, ga), (ob, gb) = results
        tol = TRAJ_TOL[torch.float64]
        for i, (x, y) in enumerate(zip(oa, ob)):
            assert_close(y, x, **tol, what=f"differentiable {kwargs} output {i}")
        for i, (x, y) in enumerate(zip(ga, gb)):
            assert (x is None) == (y is None), f"differentiable {kwargs}: grad {i} {x} vs {y}"
            if x is not None:
                assert_close(y, x, **tol, what=f"differentiable {kwargs} d/d input {i}")
    # copy.deepcopy keeps the tensor LR the step differentiates through (the copy's own tensor).
    # (A leaf that does not require grad: non-leaf tensors do not deepcopy, in torch either.)
    opt = fused_lr.FusedSGD([leaves[0].detach().clone()], lr=lr, momentum=0.9, differentiable=True, backend=backend)
    twin = copy.deepcopy(opt)
    for o in (opt, twin):
        (q,) = o.param_groups[0]["params"]
        q.grad = leaves[1].detach().clone()
        o.step()
    (q,), (r,) = opt.param_groups[0]["params"], twin.param_groups[0]["params"]
    d_opt = torch.autograd.grad(q.sum(), lr)[0]
    d_twin = torch.autograd.grad(r.sum(), twin.defaults["lr"])[0]
    assert twin.defaults["lr"] is not lr and torch.equal(d_twin, d_opt) and float(d_opt) != 0
    # The schedule sets the LR of a differentiable step too (a float LR: the device truth).
    p = leaves[0].clone()
    opt = fused_lr.FusedSGD([p], lr=0.5, differentiable=True, backend=backend)
    sched = fused.StepLR(opt, 1, 0.1)
    opt.step()  # no gradient yet: changes nothing (and keeps the scheduler's order check quiet)
    sched.step()
    p.grad = leaves[1].clone()
    opt.step()
    assert_close(p, leaves[0] - 0.05 * leaves[1], **TRAJ_TOL[torch.float64], what="differentiable step after sched.step()")
    # A leaf that requires grad: torch's RuntimeError, before anything changes.
    q = torch.nn.Parameter(torch.ones(3))
    opt = fused_lr.FusedSGD([q], lr=0.1, momentum=0.9, differentiable=True, backend=backend)
    opt.state[q]["momentum_buffer"] = torch.ones(3)
    q.grad = torch.ones(3)
    snap = _snapshot(opt)
    e = _error(opt.step)
    assert type(e) is RuntimeError and "leaf Variable that requires grad" in str(e), e
    _assert_unchanged(opt, snap, "differentiable leaf")
    sq = torch.nn.Parameter(torch.ones(3))
    stock_opt = torch.optim.SGD([sq], lr=0.1, differentiable=True)
    sq.grad = torch.ones(3)
    assert type(_error(stock_opt.step)) is RuntimeError
    # GradScaler unscales itself for a differentiable optimizer (as for stock SGD(differentiable=True)).
    assert opt._step_supports_amp_scaling is False and copy.deepcopy(opt)._step_supports_amp_scaling is False


# ---------------------------------------------------------------- foreach / fused flags


def check_cliquey_flags(backend):
    p = torch.nn.Parameter(torch.ones(2))
    for kw in (dict(foreach=True, fused=True), dict(differentiable=True, fused=True)):
        ea = _error(lambda: torch.optim.SGD([p], lr=0.1, **kw))
        eb = _error(lambda: fused_lr.FusedSGD([p], lr=0.1, backend=backend, **kw))
        assert type(eb) is type(ea) is RuntimeError and str(eb) == str(ea), (kw, ea, eb)


# ---------------------------------------------------------------- Adam / AdamW

ADAM_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def _compare_adam(a_params, a_opt, b_params, b_opt, what, tol=TOL):
    """Parameters and every Adam state tensor of stock (a) and fused_lr (b), pairwise."""
    for i, (p, q) in enumerate(zip(a_params, b_params)):
        assert_close(q, p, **tol, what=f"{what}: param {i}")
        sa, sb = a_opt.state.get(p, {}), b_opt.state.get(q, {})
        for key in ADAM_KEYS:
            x, y = sa.get(key), sb.get(key)
            assert (x is None) == (y is None), f"{what}: param {i} {key} presence {x is not None} vs {y is not None}"
            if x is not None:
                assert_close(y, x, **tol, what=f"{what}: param {i} {key}")


def _step_both_adam(a, ap, b, bp, steps, what, seed=0):
    for t in range(steps):
        gs = _grads_for(t, ap, seed)
        _set(ap, gs), _set(bp, gs)
        a.step(), b.step()
        _compare_adam(ap, a, bp, b, f"{what} step {t}")


def check_adam_groups_edited_directly_and_hooks(backend):
    """FusedAdamW beside torch.optim.AdamW (for-loop) with ``param_groups`` edited directly: a
    group appended with every key, a parameter appended to a group (its state starts at step 0
    while the others go on), a group's list replaced, a group removed: every state tensor
    (``step``, moments, ``max_exp_avg_sq``) follows its parameter, and state_dict packs as
    torch's. Then step pre/post hooks (global and per optimizer) see what torch's see, and a pre
    hook's replaced arguments reach the step."""
    kw = dict(lr=0.01, weight_decay=0.1, amsgrad=True)

    def pair():
        ma, mb = _model(), _model()
        a = torch.optim.AdamW(ma.parameters(), foreach=False, **kw)
        b = fused_lr.FusedAdamW(mb.parameters(), backend=backend, **kw)
        return a, list(ma.parameters()), b, list(mb.parameters())

    a, ap, b, bp = pair()
    over = dict(lr=0.05, betas=(0.8, 0.99), amsgrad=False, weight_decay=0.0)
    _, yb = _edit_groups_directly(a, ap, b, bp, _step_both_adam, over, before=2, first_lr=0.01)
    # A parameter appended to a group starts at step 0: 2 steps there, 2 after its list was replaced;
    # the first parameter took 2 + 3 + 2 steps before its group's list dropped it.
    assert float(b.state[yb]["step"]) == 4 and float(b.state[bp[0]]["step"]) == 7

    # Step hooks: the same calls in the same order, with the arguments a pre hook substituted.
    seen = {}
    a, ap, b, bp = pair()
    for name, opt, ps in (("stock", a, ap), ("fused", b, bp)):
        log = seen[name] = []
        handles = [
            register_optimizer_step_pre_hook(lambda o, args, kwargs: log.append("global pre")),
            register_optimizer_step_post_hook(lambda o, args, kwargs: log.append("global post")),
            opt.register_step_pre_hook(lambda o, args, kwargs: (log.append(("pre", len(args), dict(kwargs))),
                                                                (args, {"closure": lambda: log.append("closure") or 1.5}))[1]),
            opt.register_step_post_hook(lambda o, args, kwargs: log.append(("post", sorted(kwargs)))),
        ]
        try:
            _set(ps, _grads_for(0, ps))
            log.append(("loss", opt.step()))
            handles[2].remove()
            _set(ps, _grads_for(1, ps))
            log.append(("loss", opt.step()))
        finally:
            for h in handles:
                h.remove()
    assert seen["fused"] == seen["stock"], f"fused {seen['fused']}\nstock {seen['stock']}"
    assert ("loss", 1.5) in seen["stock"] and seen["stock"].count("closure") == 1
    _compare_adam(ap, a, bp, b, "after hooked steps")


ADAM_HYPER = dict(lr=0.01, weight_decay=0.1, amsgrad=True)


def check_adam_state_keys_and_hooks(backend):
    """``check_state_keys_and_hooks`` with FusedAdamW beside torch.optim.AdamW."""
    check_state_keys_and_hooks(backend, torch.optim.AdamW, fused_lr.FusedAdamW, ADAM_HYPER)


def check_adam_meta_parameters(backend):
    """``check_meta_parameters`` with FusedAdamW beside torch.optim.AdamW (every Adam state compared)."""
    check_meta_parameters(backend, torch.optim.AdamW, fused_lr.FusedAdamW, ADAM_HYPER, _step_both_adam)


CHECKS = {
    "named_parameters": check_named_parameters,
    "groups_edited_directly": check_groups_edited_directly,
    "state_keys_and_hooks": check_state_keys_and_hooks,
    "deepcopy_and_pickle": check_deepcopy_and_pickle,
    "sparse_gradients": check_sparse_gradients,
    "meta_parameters": check_meta_parameters,
    "differentiable": check_differentiable,
    "cliquey_flags": check_cliquey_flags,
    "adam_groups_edited_directly_and_hooks": check_adam_groups_edited_directly_and_hooks,
    "adam_state_keys_and_hooks": check_adam_state_keys_and_hooks,
    "adam_meta_parameters": check_adam_meta_parameters,
}

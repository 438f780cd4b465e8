"""Bad input raises a clear error naming the bad value, before anything is modified."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.optim.lr_scheduler as stock

import fused_lr
import fused_lr.lr_scheduler as fused


def _snapshot(opt):
    """Everything a failed call must leave untouched: params, state, groups (LRs read as floats)."""
    params = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    state = {id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()} for p, s in opt.state.items()}
    groups = [
        {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in g.items() if k != "params"}
        for g in opt.param_groups
    ]
    return params, state, groups, opt._lr_buf.clone()


def _assert_unchanged(opt, snap):
    params, state, groups, lr_buf = snap
    now = _snapshot(opt)
    for a, b in zip(params, now[0]):
        assert torch.equal(a, b), "a parameter changed"
    assert state.keys() == now[1].keys(), "optimizer state gained or lost entries"
    for k in state:
        for name, v in state[k].items():
            w = now[1][k][name]
            assert (torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w), f"state {name} changed"
    assert groups == now[2], "param_groups changed"
    assert torch.equal(lr_buf, now[3]), "the device LR buffer changed"


def _stepped_opt(**kw):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3))]
    opt = fused_lr.FusedSGD([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.05}], lr=0.1, momentum=0.9, **kw)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    return ps, opt


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=-0.1), "Invalid learning rate: -0.1"),
        (dict(lr=float("nan")), "Invalid lr: nan"),
        (dict(momentum=-0.5), "Invalid momentum value: -0.5"),
        (dict(weight_decay=-1e-4), "Invalid weight_decay value: -0.0001"),
        (dict(nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
        (dict(nesterov=True, momentum=0.9, dampening=0.1), "dampening=0.1"),
        (dict(lr=torch.tensor([0.1, 0.2])), "Tensor lr must be 1-element"),
        (dict(backend="cuda"), "backend must be one of"),
        (dict(differentiable=True, max_grad_norm=1.0), "max_grad_norm .* differentiable=True"),
        (dict(differentiable=1), "differentiable must be a bool"),
    ],
)
def test_optimizer_constructor_rejects(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fused_lr.FusedSGD([torch.nn.Parameter(torch.ones(2))], **{"lr": 0.1, **kwargs})


def test_bad_param_group_is_rejected_before_it_is_added():
    ps, opt = _stepped_opt()
    snap = _snapshot(opt)
    extra = torch.nn.Parameter(torch.ones(2))
    for bad, match in [
        (dict(lr=-1.0), "Invalid learning rate: -1.0 \\(param group 2\\)"),
        (dict(momentum=-1.0), "Invalid momentum value"),
        (dict(nesterov=True, momentum=0.0), "Nesterov"),
        (dict(weight_decay=-2.0), "Invalid weight_decay value: -2.0"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.add_param_group({"params": [extra], **bad})
        assert len(opt.param_groups) == 2
        _assert_unchanged(opt, snap)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt.add_param_group({"params": [ps[0]]})
    _assert_unchanged(opt, snap)


def test_integer_params_are_rejected():
    with pytest.raises(TypeError, match="torch.int64"):
        fused_lr.FusedSGD([torch.zeros(3, dtype=torch.int64)], lr=0.1)


def test_unsupported_sparse_gradient_raises_before_any_update():
    """What torch.optim.SGD's for-loop fails on part-way through its step (sparse gradients with
    weight decay; a dense gradient meeting a sparse momentum buffer): FusedSGD raises the same
    error type before anything changes."""
    ps, opt = _stepped_opt(weight_decay=0.1)
    snap = _snapshot(opt)
    ps[0].grad = torch.randn(4)  # a valid dense grad in the first group...
    ps[1].grad = torch.randn(3).to_sparse()  # ...and a sparse one in the second
    with pytest.raises(RuntimeError, match="sparse gradients with weight_decay=0.1 are not supported \\(param group 1"):
        opt.step()
    _assert_unchanged(opt, snap)

    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = fused_lr.FusedSGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.sparse_coo_tensor([[0, 2]], torch.ones(2, 2), (3, 2), check_invariants=True)
    opt.step()  # the momentum buffer is a sparse clone of the gradient, as in torch
    assert opt.state[p]["momentum_buffer"].is_sparse
    before = (p.detach().clone(), opt.state[p]["momentum_buffer"].to_dense())
    p.grad = torch.randn(3, 2)
    with pytest.raises(RuntimeError, match="dense gradient for a parameter whose momentum buffer is sparse"):
        opt.step()
    assert torch.equal(p, before[0]) and torch.equal(opt.state[p]["momentum_buffer"].to_dense(), before[1])
    ref = torch.optim.SGD([p2 := torch.nn.Parameter(p.detach().clone())], lr=0.1, momentum=0.9)
    ref.state[p2]["momentum_buffer"] = opt.state[p]["momentum_buffer"].clone()
    p2.grad = p.grad.clone()
    with pytest.raises(RuntimeError, match="add\\(sparse, dense\\) is not supported"):
        ref.step()  # stock: the same error type


def test_mismatched_gradient_raises_before_any_update():
    ps, opt = _stepped_opt()
    snap = _snapshot(opt)
    ps[0].grad = torch.randn(4)
    ps[1].grad_dtype = None  # torch's opt-in to a gradient dtype that differs from the param's
    ps[1].grad = torch.randn(3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="gradient does not match its parameter in param group 1"):
        opt.step()
    _assert_unchanged(opt, snap)


def test_assigned_negative_lr_raises_before_any_update():
    ps, opt = _stepped_opt()
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.param_groups[1]["lr"] = -0.5
    params_before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match="Invalid learning rate: -0.5 \\(param group 1\\)"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(params_before, ps))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda sd: sd["param_groups"].pop(), "has 1 parameter groups, this optimizer has 2"),
        (lambda sd: sd["param_groups"][1]["params"].append(99), "param group 1 has 2 parameters"),
        (lambda sd: sd["param_groups"][0].__setitem__("lr", -3.0), "Invalid learning rate: -3.0 \\(loaded param group 0\\)"),
        (lambda sd: sd["param_groups"][1].__setitem__("momentum", -1.0), "Invalid momentum value"),
        (
            lambda sd: sd["state"][0].__setitem__("momentum_buffer", torch.zeros(5)),
            "has shape \\(5,\\), the parameter has shape \\(4,\\)",
        ),
        (lambda sd: sd["state"].__setitem__(42, {"momentum_buffer": torch.zeros(1)}), "unknown parameter id 42"),
        (lambda sd: sd.pop("state"), "'state' and 'param_groups'"),
    ],
)
def test_load_state_dict_rejects_mismatch_without_mutation(mutate, match):
    ps, opt = _stepped_opt()
    other_ps, other = _stepped_opt()
    for p in other_ps:
        p.grad = torch.randn_like(p)
    other.step()
    sd = copy.deepcopy(other.state_dict())
    mutate(sd)
    snap = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    _assert_unchanged(opt, snap)


# ---------------------------------------------------------------- schedulers


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda o: fused.StepLR(o, step_size=0), ValueError, "step_size must be >= 1, got 0"),
        (lambda o: fused.StepLR(o, step_size=-3), ValueError, "step_size must be >= 1, got -3"),
        (lambda o: fused.StepLR(o, step_size=2.5), TypeError, "step_size must be an integer, got 2.5"),
        (lambda o: fused.StepLR(o, step_size=3, gamma=0.0), ValueError, "gamma must be > 0, got 0.0"),
        (lambda o: fused.StepLR(o, step_size=3, gamma=-0.1), ValueError, "gamma must be > 0, got -0.1"),
        (lambda o: fused.ExponentialLR(o, gamma=0), ValueError, "gamma must be > 0, got 0"),
        (lambda o: fused.ExponentialLR(o, gamma=float("inf")), ValueError, "gamma must be finite"),
        (lambda o: fused.CosineAnnealingLR(o, T_max=0), ValueError, "T_max must be > 0, got 0"),
        (lambda o: fused.CosineAnnealingLR(o, T_max=-5), ValueError, "T_max must be > 0, got -5"),
        (lambda o: fused.CosineAnnealingLR(o, T_max=10, eta_min=-1e-3), ValueError, "eta_min must be >= 0"),
        (lambda o: fused.LambdaLR(o, lr_lambda=0.95), TypeError, "lr_lambda\\[0\\] must be callable, got float"),
        (lambda o: fused.LambdaLR(o, lr_lambda=[lambda e: 1.0]), ValueError, "Expected 2 lr_lambdas, but got 1"),
        (lambda o: fused.LambdaLR(o, lr_lambda=[lambda e: 1.0, "x"]), TypeError, "lr_lambda\\[1\\] must be callable, got str"),
        (lambda o: fused.LambdaLR(o, lr_lambda=lambda e: 1.0, horizon=0), ValueError, "horizon must be >= 1"),
        (lambda o: fused.StepLR(o, step_size=3, last_epoch=-2), ValueError, "last_epoch must be >= -1, got -2"),
        (lambda o: fused.StepLR(o, step_size=3, last_epoch=4), KeyError, "initial_lr"),
        (lambda o: fused.MultiStepLR(o, milestones=[5, 3]), ValueError, "non-decreasing order, got \\[5, 3\\]"),
        (lambda o: fused.MultiStepLR(o, milestones=[-1, 3]), ValueError, "milestones\\[0\\] must be >= 0, got -1"),
        (lambda o: fused.MultiStepLR(o, milestones=[2.5]), TypeError, "milestones\\[0\\] must be an integer"),
        (lambda o: fused.MultiStepLR(o, milestones=5), TypeError, "milestones must be a list of integers"),
        (lambda o: fused.MultiStepLR(o, milestones=[1], gamma=0), ValueError, "gamma must be > 0"),
        (lambda o: fused.ConstantLR(o, factor=1.5), ValueError, "between 0 and 1, got 1.5"),
        (lambda o: fused.ConstantLR(o, total_iters=-1), ValueError, "total_iters must be >= 0, got -1"),
        (lambda o: fused.LinearLR(o, start_factor=0.0), ValueError, "greater than 0 and less or equal to 1, got 0.0"),
        (lambda o: fused.LinearLR(o, end_factor=2.0), ValueError, "between 0 and 1, got 2.0"),
        (lambda o: fused.LinearLR(o, total_iters=0), ValueError, "total_iters must be >= 1, got 0"),
        (lambda o: fused.PolynomialLR(o, total_iters=0), ValueError, "total_iters must be >= 1, got 0"),
        (lambda o: fused.PolynomialLR(o, power=-1.0), ValueError, "power must be >= 0"),
        (lambda o: fused.CosineAnnealingWarmRestarts(o, T_0=0), ValueError, "T_0 must be >= 1, got 0"),
        (lambda o: fused.MultiplicativeLR(o, lr_lambda=0.95), TypeError, "lr_lambda\\[0\\] must be callable, got float"),
        (lambda o: fused.MultiplicativeLR(o, lr_lambda=[lambda e: 1.0] * 3), ValueError, "Expected 2 lr_lambdas, but got 3"),
        (lambda o: fused.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=1.5), TypeError, "T_mult must be an integer"),
        (lambda o: fused.CosineAnnealingWarmRestarts(o, T_0=2, eta_min=-1.0), ValueError, "eta_min must be >= 0"),
    ],
)
def test_scheduler_constructor_rejects_without_mutation(make, exc, match):
    ps, opt = _stepped_opt()
    snap = _snapshot(opt)
    with pytest.raises(exc, match=match):
        make(opt)
    _assert_unchanged(opt, snap)
    assert all("initial_lr" not in g for g in opt.param_groups)
    assert opt._schedule is None


_ARGS = {
    "StepLR": (3,),
    "MultiStepLR": ([2, 4],),
    "ConstantLR": (),
    "LinearLR": (),
    "ExponentialLR": (0.9,),
    "PolynomialLR": (),
    "LambdaLR": (lambda e: 1.0,),
    "MultiplicativeLR": (lambda e: 0.9,),
    "CosineAnnealingLR": (10,),
    "CosineAnnealingWarmRestarts": (10,),
    "ReduceLROnPlateau": (),
}


class _NotAnOptimizer:
    param_groups = [{"params": [], "lr": 0.1}]
    defaults = {"lr": 0.1}


@pytest.mark.parametrize("name", list(_ARGS))
def test_scheduler_requires_an_optimizer(name):
    """torch's error for anything that is not a torch.optim.Optimizer (any optimizer is driven:
    tests/test_any_optimizer.py), raised before anything changes."""
    args = _ARGS[name]
    opt = _NotAnOptimizer()
    with pytest.raises(TypeError, match="_NotAnOptimizer is not an Optimizer"):
        getattr(fused, name)(opt, *args)
    assert "initial_lr" not in opt.param_groups[0]


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda sd: sd.pop("step_size"), KeyError, "missing \\['step_size'\\]"),
        (lambda sd: sd.__setitem__("step_size", 0), ValueError, "step_size must be >= 1, got 0"),
        (lambda sd: sd.__setitem__("gamma", -1.0), ValueError, "gamma must be > 0"),
        (lambda sd: sd.__setitem__("base_lrs", [0.1]), ValueError, "1 base_lrs, the optimizer has 2"),
        (lambda sd: sd.__setitem__("last_epoch", -7), ValueError, "last_epoch must be >= -1"),
    ],
)
def test_scheduler_load_state_dict_rejects_without_mutation(mutate, exc, match):
    ps, opt = _stepped_opt()
    s = fused.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        opt.step()
        s.step()
    donor_ps, donor = _stepped_opt()
    sd = stock.StepLR(donor, step_size=4, gamma=0.3).state_dict()
    mutate(sd)
    before = (s.step_size, s.gamma, list(s.base_lrs), s.last_epoch, s._step_count, s.get_last_lr(), opt._lr_buf.clone())
    with pytest.raises(exc, match=match):
        s.load_state_dict(sd)
    after = (s.step_size, s.gamma, list(s.base_lrs), s.last_epoch, s._step_count, s.get_last_lr(), opt._lr_buf.clone())
    assert before[:-1] == after[:-1]
    assert torch.equal(before[-1], after[-1])


def _stepped(sched):
    sched.step()
    return sched


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (
            lambda o: fused.SequentialLR(o, [fused.StepLR(o, 2), fused.ExponentialLR(o, 0.9)], []),
            ValueError,
            "number of schedulers 2 and the number of milestones to be equal to 0",
        ),
        (
            lambda o: fused.SequentialLR(o, [fused.StepLR(o, 2), fused.ExponentialLR(o, 0.9), fused.StepLR(o, 3)], [5, 3]),
            ValueError,
            "strictly increasing, got \\[5, 3\\]",
        ),
        (
            lambda o: fused.SequentialLR(o, [fused.StepLR(o, 2), fused.ReduceLROnPlateau(o)], [3]),
            ValueError,
            "does not support `ReduceLROnPlateau`",
        ),
        (
            lambda o: fused.SequentialLR(o, [fused.StepLR(o, 2), torch.optim.lr_scheduler.StepLR(o, 3)], [3]),
            TypeError,
            "scheduler at index 1 is a torch.optim.lr_scheduler.StepLR",
        ),
        (
            lambda o: fused.SequentialLR(o, [fused.StepLR(o, 2), fused.StepLR(_stepped_opt()[1], 3)], [3]),
            ValueError,
            "same optimizer",
        ),
        (lambda o: fused.SequentialLR(o, [], []), ValueError, "at least one scheduler"),
        # A per-group part (its own piece rows) used to crash with an IndexError while building. (A
        # ChainedScheduler part is accepted, as torch's: tests/test_torch_scheduler_behaviour.py.)
        (
            lambda o: fused.SequentialLR(o, [fused.StepLR(o, 2), fused.PerGroupLR(o, [fused.StepLR(o, 2)] * 2)], [3]),
            TypeError,
            "scheduler at index 1 is a fused_lr.lr_scheduler.PerGroupLR",
        ),
        # The chain is re-run by torch's own schedulers from their construction: fresh parts only.
        (
            lambda o: fused.SequentialLR(
                o, [fused.ChainedScheduler([_stepped(fused.ExponentialLR(o, 0.9))]), fused.StepLR(o, 2)], [3]
            ),
            ValueError,
            "the ChainedScheduler at index 0: scheduler at index 0 is at step 1",
        ),
    ],
)
def test_sequential_rejects(make, exc, match):
    ps, opt = _stepped_opt()
    with pytest.raises(exc, match=match):
        make(opt)


# ---------------------------------------------------------------- AMP and clipping


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(max_grad_norm=0.0), ValueError, "Invalid max_grad_norm: 0.0"),
        (dict(max_grad_norm=-1), ValueError, "Invalid max_grad_norm: -1.0"),
        (dict(max_grad_norm=float("nan")), ValueError, "Invalid max_grad_norm: nan"),
        (dict(max_grad_norm=float("inf")), ValueError, "Invalid max_grad_norm: inf"),
        (dict(max_grad_norm=True), TypeError, "max_grad_norm must be a real number or None, got True"),
        (dict(max_grad_norm="1"), TypeError, "max_grad_norm must be a real number or None, got '1'"),
        (dict(max_grad_norm=torch.ones(2)), ValueError, "Tensor max_grad_norm must be 1-element"),
        (dict(max_grad_norm=1.0, norm_type=1), ValueError, "Unsupported norm_type: 1;"),
        (dict(max_grad_norm=1.0, norm_type=3.0), ValueError, "Unsupported norm_type: 3.0;"),
        (dict(max_grad_norm=1.0, norm_type="fro"), ValueError, "Unsupported norm_type: 'fro';"),
        (dict(max_grad_norm=1.0, norm_type=True), TypeError, "norm_type must be 2.0 or float\\('inf'\\), got True"),
        (dict(max_grad_norm=1.0, error_if_nonfinite=1), TypeError, "error_if_nonfinite must be a bool, got 1"),
    ],
)
def test_clipping_arguments_are_rejected(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fused_lr.FusedSGD([torch.nn.Parameter(torch.ones(2))], lr=0.1, **kwargs)


def test_clipping_arguments_accepted_forms():
    p = torch.nn.Parameter(torch.ones(2))
    assert fused_lr.FusedSGD([p], lr=0.1, max_grad_norm=1, norm_type="inf").norm_type == float("inf")
    assert fused_lr.FusedSGD([p], lr=0.1, max_grad_norm=torch.tensor(0.5)).max_grad_norm == 0.5


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (
            dict(grad_scale=torch.tensor(2.0, dtype=torch.float64)),
            ValueError,
            r"grad_scale must be a float32 tensor with one element on cpu \(the parameters' device\), "
            r"got torch.float64 of shape \(\) on cpu",
        ),
        (dict(grad_scale=torch.ones(2)), ValueError, r"grad_scale must be .* got torch.float32 of shape \(2,\)"),
        (dict(grad_scale=torch.ones(1, device="meta")), ValueError, r"grad_scale must be .* on meta"),
        (dict(grad_scale=2.0), TypeError, "grad_scale must be a tensor or None, got float"),
        (dict(found_inf=torch.zeros(1, dtype=torch.int32)), ValueError, "found_inf must be a float32 tensor .* got torch.int32"),
        (dict(found_inf=torch.zeros(1, device="meta")), ValueError, r"found_inf must be .* on meta"),
    ],
)
@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
def test_bad_amp_tensors_raise_before_anything_changes(kwargs, exc, match, max_grad_norm):
    ps, opt = _stepped_opt(max_grad_norm=max_grad_norm)
    sched = fused.StepLR(opt, 1, 0.5)
    opt.step()
    sched.step()
    counter = int(sched.step_counter.item())
    last_norm = opt.last_grad_norm
    for p in ps:
        p.grad = torch.randn_like(p)
    snap = _snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.step(**kwargs)
    _assert_unchanged(opt, snap)
    assert int(sched.step_counter.item()) == counter and sched.last_epoch == 1
    assert opt.last_grad_norm is last_norm
    # The same tensors handed over the GradScaler way (attributes set on the optimizer).
    for name, value in kwargs.items():
        setattr(opt, name, value)
    try:
        with pytest.raises(exc, match=match):
            opt.step()
    finally:
        for name in kwargs:
            delattr(opt, name)
    _assert_unchanged(opt, snap)
    opt.step()  # and the optimizer still works

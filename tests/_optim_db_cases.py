"""torch's own optimizer test data (torch.testing._internal.common_optimizers, issue 10 section 5)
run through FusedSGD beside stock torch.optim.SGD (and FusedAdamW / FusedAdam beside torch.optim.AdamW
/ Adam: ``torch_data(name=...)``, issue 13), for either backend.

* ``run_optim_inputs``: every SGD input torch's tests build for device "cpu"
  (``_get_optim_inputs_including_global_cliquey_kwargs``: each input of ``optim_inputs_func_sgd``
  with the cliquey flags off, then with ``differentiable`` and ``fused`` each on; torch leaves
  ``foreach`` out on CPU, and so do we), optionally under each of SGD's ``scheduler_inputs`` (stock
  schedulers, built by torch's lambdas on each optimizer). Parameters and momentum buffers are
  compared after every step; for ``differentiable`` inputs the parameters are non-leaf clones of
  leaves (torch's ``_diff_fn`` pattern) and the gradients of the result with respect to those
  leaves and to the gradients are compared too.
* ``check_error_inputs``: every SGD error input (``optim_error_inputs_func_sgd``) on both optimizers.

Used by tests/test_optim_db.py and tests/test_adamw_optim_db.py (torch backend) and
tests/_triton_optimizer_subprocess.py / tests/_triton_adamw_subprocess.py (Triton backend under
the interpreter). Not collected by pytest (no ``test_`` prefix). Importing torch's
test data costs ~10 s (it imports torch's whole OpInfo database): ``torch_data()`` does it once in
the pytest process, and the child process gets the (picklable) inputs from it.
"""

from __future__ import annotations

import copy
import re
import warnings

import torch
from conftest import TRAJ_TOL, assert_close
from torch.optim.lr_scheduler import ReduceLROnPlateau

import fused_lr

DTYPE = torch.float32
# name -> (stock class, fused class name, the per-parameter state keys compared after every step).
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, "FusedSGD", ("momentum_buffer",)),
    "adamw": (torch.optim.AdamW, "FusedAdamW", ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
    "adam": (torch.optim.Adam, "FusedAdam", ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
}
SHAPES = ((4, 3), (4,), ())  # a weight, a bias, a 0-dim parameter
# The group's LR after the steps (stock schedulers on both optimizers): both evaluate the same
# Python float recurrences; fused_lr keeps the result in its float64 LR buffer: equal to rounding.
LR_RTOL = 1e-12
# Except with a tensor LR: stock keeps it in the tensor given (float32 in torch's data) and each
# scheduler write rounds it to float32 (relative 2**-24) before the next recurrence reads it;
# FusedSGD's buffer is float64. Over the 3 steps here: below 3 * 2**-24 * 2 ~ 3.6e-7 (the factor
# 2 for the rounding of the product read back), so 4e-7. (The parameter tolerances cover the effect
# on the update: lr * g changes by the same relative amount.)
TENSOR_LR_RTOL = {torch.float32: 4e-7, torch.float64: LR_RTOL}


def torch_data(with_schedulers=True, name="sgd"):
    """The entries of torch's optimizer test data for optimizer ``name`` (see OPTIMIZERS) for device
    "cpu": ``name``, ``inputs`` [(desc, kwargs)], ``errors`` [(desc, params, kwargs, raised at
    step?, error type, regex)], and (unless ``with_schedulers`` is False: they are lambdas, which
    do not pickle) ``schedulers``."""
    from torch.testing._internal.common_optimizers import (
        OptimizerErrorEnum,
        _get_optim_inputs_including_global_cliquey_kwargs,
        optim_db,
    )

    info = next(i for i in optim_db if i.optim_cls is OPTIMIZERS[name][0])
    data = {
        "name": name,
        "inputs": [(i.desc, i.kwargs) for i in _get_optim_inputs_including_global_cliquey_kwargs("cpu", DTYPE, info)],
        "errors": [
            (e.optimizer_error_input.desc, e.optimizer_error_input.params, e.optimizer_error_input.kwargs,
             e.error_on == OptimizerErrorEnum.STEP_ERROR, e.error_type, e.error_regex)
            for e in info.optim_error_inputs_func(device="cpu", dtype=DTYPE)
        ],
    }
    if with_schedulers:
        data["schedulers"] = list(info.scheduler_inputs)
    return data


def _leaves():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g, dtype=DTYPE) for s in SHAPES]
    grads = [[torch.randn(s, generator=g, dtype=DTYPE) for s in SHAPES] for _ in range(4)]
    return params, grads


def _classes(data):
    stock, fused, keys = OPTIMIZERS[data.get("name", "sgd")]
    return stock, getattr(fused_lr, fused), keys


def _run(cls, kwargs, backend, sched_fns, steps, leaves, keys=("momentum_buffer",)):
    """Step one optimizer over the fixed data; returns its parameters, state and autograd inputs."""
    kwargs = copy.deepcopy(kwargs)  # a tensor lr is filled by stock schedulers: one per optimizer
    is_fused = issubclass(cls, fused_lr.optim.FusedOptimizer)
    if is_fused:
        kwargs["backend"] = backend
    differentiable = kwargs.get("differentiable", False)
    values, grads = leaves
    if differentiable:
        # torch's _diff_fn: non-leaf parameters (in-place updates of leaves that require grad are
        # refused) and gradients that require grad.
        roots = [v.clone().requires_grad_() for v in values]
        params = [r.clone() for r in roots]
        groots = [[g.clone().requires_grad_() for g in gs] for gs in grads]
    else:
        roots, groots = None, None
        params = [torch.nn.Parameter(v.clone()) for v in values]
    opt = cls(params, **kwargs)
    scheds = [fn(opt) for fn in sched_fns]
    history = []
    for t in range(steps):
        for i, p in enumerate(params):
            g = groots[t][i].clone() if differentiable else grads[t][i].clone()
            p.grad = None if (t == 1 and i == 1) else g  # a None gradient on one step, as torch's tests
        opt.step()
        for s in scheds:
            s.step(1.0) if isinstance(s, ReduceLROnPlateau) else s.step()
        states = [[opt.state[p].get(k) if p in opt.state else None for k in keys] for p in params]
        history.append(([p.detach().clone() for p in params],
                        [[None if b is None else b.detach().clone() for b in st] for st in states]))
    autograd = None
    if differentiable:
        out = sum((p * (i + 1)).sum() for i, p in enumerate(params))
        inputs = roots + [g for gs in groots[:steps] for g in gs]
        try:
            autograd = torch.autograd.grad(out, inputs, allow_unused=True)
        except RuntimeError as e:
            # torch's differentiable amsgrad overwrites max_exp_avg_sq in place, which a backward
            # through two steps cannot get past (stock raises it too): the same error is expected.
            autograd = f"RuntimeError: {str(e).split(':')[0]}"
    if is_fused:
        assert opt.implementation == backend
        # Not differentiable: the Triton backend's steps ran its kernel (its launch plans exist).
        assert differentiable or backend != "triton" or opt._engine.cache is not None
    return history, autograd, [float(g["lr"]) for g in opt.param_groups]


def run_optim_inputs(backend, data, steps=3):
    """Every input of ``data`` (alone, and under every scheduler input it holds): the fused
    optimizer against stock, parameters and every state tensor (Adam's ``step`` included, which
    stock keeps on the CPU and fused_lr on the parameters' device) after every step. Returns how
    many (input, scheduler) runs were compared."""
    tol = TRAJ_TOL[DTYPE]
    stock_cls, fused_cls, keys = _classes(data)
    leaves = _leaves()
    runs = 0
    sched_sets = [("no scheduler", [])]
    sched_sets += [(f"scheduler input {k}", fns) for k, fns in enumerate(data.get("schedulers", []))]
    with warnings.catch_warnings():
        # differentiable inputs: both optimizers read .grad of the non-leaf parameters.
        warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf")
        for desc, kwargs in data["inputs"]:
            for sched_desc, fns in sched_sets:
                what = f"{desc} {kwargs} ({sched_desc})"
                a_hist, a_grad, a_lrs = _run(stock_cls, kwargs, backend, fns, steps, leaves, keys)
                b_hist, b_grad, b_lrs = _run(fused_cls, kwargs, backend, fns, steps, leaves, keys)
                for t, ((ap, ast), (bp, bst)) in enumerate(zip(a_hist, b_hist)):
                    for i in range(len(SHAPES)):
                        assert_close(bp[i], ap[i], **tol, what=f"{what} step {t} param {i}")
                        for key, ab, bb in zip(keys, ast[i], bst[i]):
                            assert (ab is None) == (bb is None), f"{what} step {t} param {i}: {key} presence"
                            if ab is not None:
                                assert_close(bb, ab, **tol, what=f"{what} step {t} param {i} {key}")
                lr_rtol = LR_RTOL
                if isinstance(kwargs.get("lr"), torch.Tensor):
                    lr_rtol = TENSOR_LR_RTOL[kwargs["lr"].dtype]
                assert abs(b_lrs[0] - a_lrs[0]) <= lr_rtol * abs(a_lrs[0]), f"{what}: lr {b_lrs} vs {a_lrs}"
                if isinstance(a_grad, str) or isinstance(b_grad, str):
                    assert a_grad == b_grad, f"{what}: backward {b_grad!r}, stock's {a_grad!r}"
                elif a_grad is not None:
                    for i, (x, y) in enumerate(zip(a_grad, b_grad)):
                        assert (x is None) == (y is None), f"{what}: d/d input {i} presence"
                        if x is not None:
                            assert_close(y, x, **tol, what=f"{what}: d/d input {i}")
                runs += 1
    return runs


def _outcome(cls, error, backend):
    """(exception or warning type, message) of building (and, for a step error, stepping) ``cls``."""
    _, params, kwargs, on_step, error_type, _ = error
    params, kwargs = copy.deepcopy(params), copy.deepcopy(kwargs)
    if issubclass(cls, fused_lr.optim.FusedOptimizer):
        kwargs["backend"] = backend
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            opt = cls(params, **kwargs)
            if on_step:
                opt.step()
        except Exception as e:  # noqa: BLE001 - the type is what is compared
            return type(e), str(e)
    for w in caught:
        if issubclass(w.category, error_type):
            return w.category, str(w.message)
    return None, None


# Error inputs whose fused_lr message differs from stock's (the type is the same, and torch's
# regex matches both), and why; the same for every optimizer.
MESSAGE_DIFFERS = {
    # fused_lr names the bad value: "Tensor lr must be 1-element, got shape (2,)".
    "Tensor lr must be 1-element",
}


def check_error_inputs(backend, data):
    """Every error input: the same exception (or warning) type from both, torch's regex matching
    the fused optimizer's message (torch's own test_errors criterion), and the messages that
    differ from stock's exactly MESSAGE_DIFFERS. Returns how many inputs ran."""
    differ = set()
    stock_cls, fused_cls, _ = _classes(data)
    name = fused_cls.__name__
    for error in data["errors"]:
        desc, _, _, _, etype, regex = error
        (st, sm), (ft, fm) = _outcome(stock_cls, error, backend), _outcome(fused_cls, error, backend)
        assert st is etype, f"{desc}: stock gave {st} ({sm!r}), torch's data expects {etype}"
        assert ft is st, f"{desc}: {name} gave {ft} ({fm!r}), stock {st} ({sm!r})"
        assert re.search(regex, fm), f"{desc}: {name}'s message {fm!r} does not match torch's regex {regex!r}"
        if fm != sm:
            differ.add(desc)
    assert differ == MESSAGE_DIFFERS, f"messages that differ from stock's: {differ}"
    return len(data["errors"])

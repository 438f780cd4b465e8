"""``FusedSGD``: torch.optim.SGD with its learning rates kept in device memory.

Only what is SGD's lives here: its arguments and their validation, its momentum buffers (the one
state list of its kernel spec), its hyper row for the kernel and its updates through
``fused_lr.functional.sgd``. Everything else (groups, LRs and schedules, backends, the step router,
checkpoints) is ``FusedOptimizer``'s.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor
from torch.optim.sgd import sgd as _torch_sgd  # torch's functional SGD (the differentiable step)

from ..functional import sgd as F  # the module (as torch.optim.sgd)
from ._args import as_float
from .base import FusedOptimizer

__all__ = ["FusedSGD"]


class FusedSGD(FusedOptimizer):
    r"""Stochastic gradient descent whose learning rate lives on the device.

    A drop-in replacement for :class:`torch.optim.SGD`: same arguments in the same order, same
    update, same ``state_dict`` format. Pair it with the schedulers of
    :mod:`fused_lr.lr_scheduler` (same names and signatures as :mod:`torch.optim.lr_scheduler`)
    and the learning rate is computed on the device from a step counter, without host syncs.

    Algorithm (torch's order, per parameter ``p`` with gradient ``g``)::

        g = -g                        if maximize
        g = g + weight_decay * p      if weight_decay != 0
        if momentum != 0:
            buf = g                   on the parameter's first step with momentum
            buf = momentum * buf + (1 - dampening) * g   afterwards
            g = g + momentum * buf    if nesterov else buf
        p = p - lr * g

    Args:
        params: parameters or parameter-group dicts (per-group ``lr``, ``momentum``,
            ``dampening``, ``weight_decay``, ``nesterov``, ``maximize``).
        lr, momentum, dampening, weight_decay, nesterov, maximize: as in torch.optim.SGD.
        foreach, fused: accepted for drop-in compatibility and ignored: FusedSGD always uses its
            own fused path (``foreach=True, fused=True`` raise torch's error).
        differentiable: as torch.optim.SGD: the step runs torch's for-loop algorithm with autograd
            recording, on either backend.
        backend: ``"auto"`` (the Triton kernel for CUDA tensors when it is available, else the
            pure-PyTorch path), ``"torch"`` (the pure-PyTorch path), or ``"triton"`` (forced).
        max_grad_norm: clip the gradients as ``torch.nn.utils.clip_grad_norm_(all params,
            max_grad_norm, norm_type)`` would just before each step, fused into the step: the
            total norm of every gradient of every group is computed on the device and each
            gradient is multiplied by ``min(max_grad_norm / (norm + 1e-6), 1)`` inside the update
            (``p.grad`` itself is not modified). ``None`` (default): no clipping. Must be finite
            and > 0. With AMP the norm is that of the unscaled gradients.
        norm_type: ``2.0`` or ``float("inf")`` (``"inf"`` accepted).
        error_if_nonfinite: raise ``RuntimeError`` when the total norm is NaN or inf (as
            clip_grad_norm_ does), before anything is modified. This reads the norm on the host
            (one sync per step on an accelerator). A step AMP skips (``found_inf`` nonzero) does
            not raise. Without it a non-finite norm behaves as in torch: the coefficient is NaN
            (or 0 for an infinite norm) and multiplies the gradients.

    AMP: ``torch.amp.GradScaler.step(opt)`` hands ``FusedSGD`` its loss scale and inf flag
    (``_step_supports_amp_scaling``); ``step`` also takes them as ``grad_scale=`` / ``found_inf=``.
    The gradients are divided by ``grad_scale`` inside the update, and a step with ``found_inf != 0``
    changes no parameter and no momentum buffer (a parameter's skipped first step stays its first
    step). Schedulers are unaffected: a skipped step still applies pending scheduler steps.
    ``p.grad`` keeps the scaled gradient (torch's own unscale writes it back; FusedSGD does not).

    After a step with ``max_grad_norm`` set, ``last_grad_norm`` is a 0-dim device tensor (float32,
    float64 when a gradient is float64), a new tensor each step: the total norm of the unscaled
    gradients, read it when you choose to.

    All parameters must live on one device (the schedule's). Parameters may be given as
    ``model.named_parameters()`` (``param_names``, as torch). Parameters on the meta device: the LR
    buffer and the backend are placed at the first step on a real device. Sparse gradients take
    torch's for-loop algorithm. Groups appended to or edited in ``param_groups`` directly are
    checked and adopted at the next ``step()`` or ``state_dict()``.

    ``param_groups[i]["lr"]`` is a Python float (a tensor LR stays the tensor given), equal to
    stock's after every ``step()`` of the optimizer and of a fused_lr scheduler, computed on the
    host (no sync). Assign it as with torch: the next update uses it, and an attached fused_lr
    scheduler carries it on as torch's recurrence would. ``lr_tensor`` is the device's copy.
    """

    _kernel = F.SGD_KERNEL
    _hyper_keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
    _step_keys = ("weight_decay", "momentum", "lr", "dampening", "nesterov", "maximize")
    _stock_name = "SGD"

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = False,
    ) -> None:
        hyper = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                     maximize=maximize)
        super().__init__(params, hyper, foreach=foreach, differentiable=differentiable, fused=fused, backend=backend,
                         max_grad_norm=max_grad_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite)

    def _check_hyper(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        """Checked copy of a group's hyper-parameters (torch.optim.SGD's rules, per group)."""
        lr = as_float("lr", group["lr"])
        if lr < 0.0 or math.isinf(lr):
            raise ValueError(f"Invalid learning rate: {lr}{where}")
        momentum = as_float("momentum", group["momentum"])
        if momentum < 0.0 or math.isinf(momentum):
            raise ValueError(f"Invalid momentum value: {momentum}{where}")
        dampening = as_float("dampening", group["dampening"])
        if math.isinf(dampening):
            raise ValueError(f"Invalid dampening value: {dampening}{where}")
        weight_decay = as_float("weight_decay", group["weight_decay"])
        if weight_decay < 0.0 or math.isinf(weight_decay):
            raise ValueError(f"Invalid weight_decay value: {weight_decay}{where}")
        nesterov, maximize = group["nesterov"], group["maximize"]
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {nesterov!r}{where}")
        if not isinstance(maximize, bool):
            raise TypeError(f"maximize must be a bool, got {maximize!r}{where}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "Nesterov momentum requires a momentum and zero dampening "
                f"(got momentum={momentum}, dampening={dampening}){where}"
            )
        return dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                    maximize=maximize)

    def _keeps_state(self, group: dict[str, Any]) -> bool:
        return group["momentum"] != 0

    def _hyper_row(self, group: dict[str, Any], cycled_row: int) -> tuple:
        # A cycled momentum is read from its schedule row; 1.0 marks that the group has buffers.
        momentum = group["momentum"] if cycled_row < 0 else 1.0
        return F.hyper_row(momentum, group["dampening"], group["weight_decay"], group["nesterov"], group["maximize"],
                           cycled_row)

    def _takes_single_call(self, params) -> bool:
        return F.takes_single_call(params)

    def _hypers(self, group: dict[str, Any]) -> dict[str, Any]:
        return {k: group[k] for k in ("weight_decay", "momentum", "dampening", "nesterov", "maximize")}

    def _update(self, group, params, grads, states, *, lr, uniform, found_inf) -> list[list]:
        (bufs,) = states
        return [F.sgd(params, grads, bufs, lr=lr, uniform=uniform, found_inf=found_inf, **self._hypers(group))]

    def _update_sparse(self, group, params, grads, states, *, lr) -> list[list]:
        (bufs,) = states
        return [F.sgd_loop(params, grads, bufs, lr=lr, **self._hypers(group))]

    def _update_differentiable(self, group, params, grads, states, *, lr) -> None:
        (bufs,) = states
        _torch_sgd(params, grads, bufs, has_sparse_grad=any(g.is_sparse for g in grads), foreach=False, fused=False,
                   lr=lr, **self._hypers(group))

    def _check_sparse_group(self, group, gi: int, params, grads, states) -> None:
        """torch.optim.SGD's for-loop fails part-way through its step on these; FusedSGD refuses
        them before any update, with torch's error types."""
        (bufs,) = states
        for j, (p, g) in enumerate(zip(params, grads)):
            b = bufs[j] if bufs else None
            where = f"(param group {gi}, shape {tuple(p.shape)})"
            if g.is_sparse and group["weight_decay"] != 0:
                raise RuntimeError(
                    f"sparse gradients with weight_decay={group['weight_decay']} are not supported {where}: "
                    "torch.optim.SGD fails on them too (add(sparse, dense) is not supported)"
                )
            if b is not None and b.is_sparse and not g.is_sparse:
                raise RuntimeError(
                    f"a dense gradient for a parameter whose momentum buffer is sparse {where}: "
                    "torch.optim.SGD fails on it too (add(sparse, dense) is not supported)"
                )
            if g.is_sparse and b is not None and not b.is_sparse and group["nesterov"]:
                raise RuntimeError(
                    f"a sparse gradient with nesterov momentum and a dense momentum buffer {where}: "
                    "torch.optim.SGD fails on it too (add(sparse, dense) is not supported)"
                )

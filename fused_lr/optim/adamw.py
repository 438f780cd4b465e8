"""``FusedAdamW`` and ``FusedAdam``: torch.optim.AdamW / Adam with their learning rates kept in device memory.

Only what is Adam's lives here: its arguments and their validation, its state (the moments and the
per-parameter ``step``, its kernel spec's state lists and scalar state), its hyper row for the
kernel and its updates through ``fused_lr.functional.adamw``. Everything else (groups, LRs and
schedules, backends, the step router, checkpoints) is ``FusedOptimizer``'s.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam as _torch_adam  # torch's functional Adam (the differentiable step)

from .. import _device
from ..functional import adamw as F  # the module (as torch.optim.adam)
from ._args import as_float
from .base import FusedOptimizer

__all__ = ["FusedAdam", "FusedAdamW"]


class FusedAdam(FusedOptimizer):
    r"""Adam whose learning rate, and whose bias corrections, are computed on the device.

    A drop-in replacement for :class:`torch.optim.Adam`: same arguments in the same order, same
    update, same ``state_dict`` format (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``).
    Pair it with the schedulers of :mod:`fused_lr.lr_scheduler` and the learning rate is computed
    on the device from a step counter, without host syncs; on the Triton path the LR and the bias
    corrections are computed inside the update kernel, which also advances each ``step``.

    Algorithm (torch's order, per parameter ``p`` with gradient ``g`` and step count ``t`` after
    the increment)::

        g = -g                                  if maximize
        p = p * (1 - lr * weight_decay)         if decoupled_weight_decay (AdamW)
        g = g + weight_decay * p                otherwise, if weight_decay != 0 (Adam's L2 term)
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v)                     if amsgrad (v below is then vmax)
        p = p - lr / (1 - beta1 ** t) * m / (sqrt(v) / sqrt(1 - beta2 ** t) + eps)

    Args:
        params: parameters or parameter-group dicts (per-group ``lr``, ``betas``, ``eps``,
            ``weight_decay``, ``amsgrad``, ``maximize``, ``capturable``).
        lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay: as in
            torch.optim.Adam (tensor ``betas`` are read once, as floats).
        foreach, fused, capturable: accepted for drop-in compatibility (with torch's errors for
            invalid combinations) and otherwise ignored: every step is capturable and
            sync-free on an accelerator, through FusedAdam's own fused path. ``capturable`` is
            kept in each group, as torch keeps it, so that state dicts carry it.
        differentiable: as torch.optim.Adam: the step runs torch's for-loop algorithm with autograd
            recording, on either backend.
        backend, max_grad_norm, norm_type, error_if_nonfinite: as in :class:`fused_lr.FusedSGD`.

    State: ``state[p]["step"]`` is a float32 0-dim tensor on the parameter's device (where torch's
    fused and capturable Adam keep it; a state dict from torch's default Adam, which keeps it on
    the CPU, is moved there when loaded), ``exp_avg`` and ``exp_avg_sq`` (and ``max_exp_avg_sq``
    with amsgrad) in the parameter's layout. A state dict loads into torch.optim.Adam / AdamW and
    back unchanged, mid-schedule.

    AMP: ``torch.amp.GradScaler.step(opt)`` hands the loss scale and the inf flag over, as with
    torch's fused Adam: the gradients are divided by the scale inside the update, and a step with
    ``found_inf != 0`` changes no parameter, no moment and no ``step`` (a skipped first step
    leaves zeros and ``step`` 0, torch's initial state, as torch's fused Adam leaves it).
    ``p.grad`` keeps the scaled gradient (torch's fused Adam writes the unscaled one back).

    Everything else (groups, named parameters, the float ``param_groups[i]["lr"]``, ``lr_tensor``,
    clipping, meta parameters, ``last_grad_norm``) is as documented for :class:`fused_lr.FusedSGD`.
    Sparse gradients are refused, as torch's Adam refuses them.
    """

    _kernel = F.ADAMW_KERNEL
    _hyper_keys = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "capturable", "decoupled_weight_decay")
    # In the order torch's step reads them (beta1, beta2 = group["betas"] first).
    _step_keys = ("betas", "capturable", "amsgrad", "lr", "weight_decay", "eps", "maximize", "decoupled_weight_decay")
    _stock_name = "Adam"
    _decoupled: bool | None = None  # AdamW: always True; Adam: the argument

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = False,
    ) -> None:
        _check_stock_tensor_rules(lr, betas, foreach, capturable)
        hyper = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                     capturable=capturable, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, hyper, foreach=foreach, differentiable=differentiable, fused=fused, backend=backend,
                         max_grad_norm=max_grad_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite)

    def _check_hyper(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        """Checked copy of a group's hyper-parameters (torch.optim.Adam's rules, per group)."""
        # (Messages show the values as given, as torch's do.)
        lr = as_float("lr", group["lr"])
        if lr < 0.0 or math.isinf(lr):
            raise ValueError(f"Invalid learning rate: {group['lr']}{where}")
        eps = as_float("eps", group["eps"])
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {group['eps']}{where}")
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}{where}")
        beta1, beta2 = (as_float(f"betas[{i}]", b) for i, b in enumerate(betas))
        for i, b in enumerate((beta1, beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}{where}")
        weight_decay = as_float("weight_decay", group["weight_decay"])
        if not 0.0 <= weight_decay or math.isinf(weight_decay):
            raise ValueError(f"Invalid weight_decay value: {group['weight_decay']}{where}")
        flags = {k: group[k] for k in ("amsgrad", "maximize", "capturable", "decoupled_weight_decay")}
        for k, v in flags.items():
            if not isinstance(v, bool):
                raise TypeError(f"{k} must be a bool, got {v!r}{where}")
        if self._decoupled is not None:
            flags["decoupled_weight_decay"] = self._decoupled  # AdamW (as torch's AdamW.__setstate__ sets it)
        return dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, **flags)

    def _keeps_state(self, group: dict[str, Any]) -> bool:
        return True

    def _hyper_row(self, group: dict[str, Any], cycled_row: int) -> tuple:
        # A cycled beta1 is read from its schedule row (the host value would change the plan key).
        beta1 = group["betas"][0] if cycled_row < 0 else 0.0
        return F.hyper_row(beta1, group["betas"][1], group["eps"], group["weight_decay"], group["amsgrad"],
                           group["maximize"], group["decoupled_weight_decay"], cycled_row)

    def _takes_single_call(self, params) -> bool:
        return F.takes_single_call(params)

    def _hypers(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    amsgrad=group["amsgrad"], maximize=group["maximize"],
                    decoupled_weight_decay=group["decoupled_weight_decay"])

    def _update(self, group, params, grads, states, *, lr, uniform, found_inf) -> list[list]:
        return F.adamw(params, grads, *states, lr=lr, uniform=uniform, found_inf=found_inf, **self._hypers(group))

    def _update_differentiable(self, group, params, grads, states, *, lr) -> None:
        hypers = self._hypers(group)
        fresh = F.new_states(params, *states, hypers["amsgrad"])
        for s, new in zip(states, fresh):
            s[:] = new  # (torch fills the caller's lists; so does this route's caller expect)
        _torch_adam(params, grads, *states[:2], states[2] if hypers["amsgrad"] else [], states[3], foreach=False,
                    capturable=False, differentiable=True, fused=False, has_complex=any(p.is_complex() for p in params),
                    lr=lr, **hypers)

    def _check_sparse_group(self, group, gi: int, params, grads, states) -> None:
        raise RuntimeError("Adam does not support sparse gradients, please consider SparseAdam instead")

    def _skip_on_host(self, work, found_inf: Tensor | None) -> tuple[bool, Tensor | None]:
        """As ``FusedOptimizer._skip_on_host``, without the host read on CUDA for new state: Adam's
        new state is zeros and step 0, which a step skipped on the device leaves exactly as torch's
        initial state."""
        if found_inf is None:
            return False, None
        if _device.host_reads_free(self._device):
            return float(found_inf) != 0, None
        return False, (found_inf != 0).to(torch.float32)

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``FusedOptimizer.load_state_dict``; then each ``step`` becomes a float32 0-dim tensor on
        its parameter's device (torch's default Adam keeps it on the CPU; torch's fused and
        capturable Adam load it onto the device the same way)."""
        super().load_state_dict(state_dict)
        moved = False
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                step = st.get("step") if isinstance(st, dict) else None
                if step is None:
                    continue
                if not isinstance(step, Tensor):
                    step = torch.tensor(float(step), dtype=torch.float32)
                if step.dtype != torch.float32 or step.device != p.device or step.dim() != 0:
                    st["step"] = step.detach().reshape(()).to(dtype=torch.float32, device=p.device)
                    moved = True
        if moved:
            self._state_cache.clear()


class FusedAdamW(FusedAdam):
    r"""AdamW (decoupled weight decay) whose learning rate and bias corrections are computed on the device.

    A drop-in replacement for :class:`torch.optim.AdamW`: same arguments in the same order, same
    update, same ``state_dict`` format; everything else as :class:`FusedAdam` with
    ``decoupled_weight_decay=True``::

        p = p * (1 - lr * weight_decay)
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        p = p - lr / (1 - beta1 ** t) * m / (sqrt(v) / sqrt(1 - beta2 ** t) + eps)
    """

    _stock_name = "AdamW"
    _decoupled = True

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str = "auto",
        max_grad_norm: float | None = None,
        norm_type: float = 2.0,
        error_if_nonfinite: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
                         backend=backend, max_grad_norm=max_grad_norm, norm_type=norm_type,
                         error_if_nonfinite=error_if_nonfinite)


def _check_stock_tensor_rules(lr: Any, betas: Any, foreach: Any, capturable: Any) -> None:
    """torch.optim.Adam's constructor rules for tensor hyper-parameters, with its errors, in its
    order (FusedAdam itself takes tensor LRs and betas with any flags; a drop-in must refuse what
    torch refuses)."""
    if isinstance(lr, Tensor):
        if foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if lr.numel() != 1:
            raise ValueError(f"Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
    if isinstance(betas, (tuple, list)) and len(betas) == 2:
        kinds = {isinstance(b, Tensor) for b in betas}
        if len(kinds) != 1 or not all(isinstance(b, (float, Tensor)) for b in betas):
            raise ValueError("betas must be either both floats or both Tensors")
        if kinds == {True}:
            for i, b in enumerate(betas):
                if not capturable and foreach:
                    raise ValueError(f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True")
                if b.numel() != 1:
                    raise ValueError(f"Tensor betas[{i}] must be 1-element")
